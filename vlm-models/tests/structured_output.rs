//! Constrained decoding on every family's tiny random model: free output of random weights
//! is garbage, so JSON that parses and validates can only come from the constraint.

mod common;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use vlm_contract::{Error, FinishReason, GenerationOptions, Image, Request, VisionLanguageModel};

use common::cpu_f32;

/// (family folder, variant) of every fixture.
const FIXTURES: &[(&str, &str)] = &[
    ("qwen", "qwen2_vl"),
    ("qwen", "qwen2_5_vl"),
    ("qwen", "qwen3_vl"),
    ("blip2", "opt"),
    ("minigpt4", "vicuna0"),
    ("minigpt4", "llama2"),
];

fn fixture_dir(family: &str, variant: &str) -> PathBuf {
    std::env::var_os("VLM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
        .join(family)
        .join(variant)
}

fn load(family: &str, variant: &str) -> (Box<dyn VisionLanguageModel>, Image) {
    let dir = fixture_dir(family, variant);
    let model = vlm_models::load(dir.join("model").to_str().unwrap(), &cpu_f32()).unwrap();
    let image = Image::open(dir.join("images/a.png")).unwrap();
    (model, image)
}

/// The album's record of a photo: objects, arrays, enums, integers, numbers, nesting.
fn photo_record() -> Value {
    json!({
        "type": "object",
        "properties": {
            "caption": {"type": "string", "maxLength": 12},
            "scene": {"enum": ["indoor", "outdoor", "unknown"]},
            "people": {"type": "integer", "minimum": 0, "maximum": 20},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.25},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
            "place": {
                "type": "object",
                "properties": {"indoors": {"type": "boolean"}, "city": {"type": "string", "maxLength": 6}},
                "required": ["indoors", "city"],
                "additionalProperties": false
            }
        },
        "required": ["caption", "scene", "people", "confidence", "tags", "place"],
        "additionalProperties": false
    })
}

/// What the test schemas use of JSON Schema, checked independently of llguidance.
fn validate(value: &Value, schema: &Value, path: &str) -> Result<(), String> {
    let fail = |what: &str| Err(format!("{path}: {what} (value {value})"));
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            return fail("not one of the enum");
        }
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(map) = value.as_object() else {
                return fail("not an object");
            };
            let props = schema["properties"].as_object().unwrap();
            for key in schema["required"].as_array().into_iter().flatten() {
                if !map.contains_key(key.as_str().unwrap()) {
                    return fail(&format!("missing {key}"));
                }
            }
            for (k, v) in map {
                match props.get(k) {
                    Some(s) => validate(v, s, &format!("{path}.{k}"))?,
                    None if schema["additionalProperties"] == json!(false) => {
                        return fail(&format!("extra key {k}"))
                    }
                    None => {}
                }
            }
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                return fail("not an array");
            };
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if items.len() as u64 > max {
                    return fail("too many items");
                }
            }
            for (i, v) in items.iter().enumerate() {
                validate(v, &schema["items"], &format!("{path}[{i}]"))?;
            }
        }
        Some("string") => {
            let Some(s) = value.as_str() else {
                return fail("not a string");
            };
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if s.chars().count() as u64 > max {
                    return fail("too long");
                }
            }
        }
        Some(t @ ("integer" | "number")) => {
            let Some(n) = value.as_f64() else {
                return fail("not a number");
            };
            if t == "integer" && !(value.is_i64() || value.is_u64()) {
                return fail("not an integer");
            }
            let min = schema.get("minimum").and_then(Value::as_f64);
            let max = schema.get("maximum").and_then(Value::as_f64);
            if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                return fail("out of range");
            }
            if let Some(step) = schema.get("multipleOf").and_then(Value::as_f64) {
                if ((n / step).round() * step - n).abs() > 1e-9 {
                    return fail("not a multiple");
                }
            }
        }
        Some("boolean") if !value.is_boolean() => return fail("not a boolean"),
        _ => {}
    }
    Ok(())
}

fn options_with(schema: Value) -> GenerationOptions {
    GenerationOptions {
        json_schema: Some(schema),
        ..GenerationOptions::greedy(96)
    }
}

/// For the fixtures with a 64- or 128-token context: the same constructs in fewer bytes.
fn small_record() -> Value {
    json!({
        "type": "object",
        "properties": {
            "a": {"enum": ["x", "y"]},
            "b": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 1},
            "c": {"type": "object", "properties": {"d": {"type": "boolean"}}, "required": ["d"], "additionalProperties": false}
        },
        "required": ["a", "b", "c"],
        "additionalProperties": false
    })
}

/// Every token the fixture's context leaves after the prompt.
fn budget(model: &dyn VisionLanguageModel, request: &Request) -> usize {
    let g = model.generate(request).unwrap();
    model.info().max_context - g.prompt_tokens
}

#[test]
fn schema_constrained_output_validates_on_every_family() {
    for &(family, variant) in FIXTURES {
        let (model, image) = load(family, variant);
        let probe = model
            .describe_request(&image, &GenerationOptions::greedy(1))
            .unwrap();
        let room = budget(model.as_ref(), &probe).min(160);
        let schema = if room >= 160 {
            photo_record()
        } else {
            small_record()
        };
        let greedy = GenerationOptions {
            json_schema: Some(schema.clone()),
            ..GenerationOptions::greedy(room)
        };
        let sampled = GenerationOptions {
            sampling: Some(vlm_contract::Sampling::Sample {
                temperature: 1.0,
                top_p: 1.0,
                top_k: 0,
            }),
            seed: 3,
            ..greedy.clone()
        };
        for (how, opts) in [("greedy", greedy), ("sampled", sampled)] {
            let g = model
                .generate(&model.describe_request(&image, &opts).unwrap())
                .unwrap();
            assert_eq!(
                g.finish_reason,
                FinishReason::Eos,
                "{variant} {how}: did not finish within {room} tokens: {:?}",
                g.text
            );
            let value: Value = serde_json::from_str(&g.text)
                .unwrap_or_else(|e| panic!("{variant} {how}: {e}: {:?}", g.text));
            validate(&value, &schema, variant).unwrap_or_else(|e| panic!("{variant} {how}: {e}"));
        }
    }
}

#[test]
fn t5_writes_what_its_vocabulary_can_and_names_what_it_cannot() {
    let (model, image) = load("blip2", "t5");
    // Digits are in the tiny T5 vocabulary.
    let schema = json!({"type": "integer", "minimum": 0, "maximum": 999});
    let g = model
        .generate(
            &model
                .describe_request(&image, &options_with(schema.clone()))
                .unwrap(),
        )
        .unwrap();
    let value: Value = serde_json::from_str(&g.text).unwrap();
    validate(&value, &schema, "t5").unwrap();
    // `{` is not (nor in the real Flan-T5's): a typed error before any device work.
    let err = model
        .generate(
            &model
                .describe_request(&image, &options_with(photo_record()))
                .unwrap(),
        )
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::InvalidOption {
                name: "json_schema",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn regex_and_choices_constrain_the_whole_output() {
    let (model, image) = load("qwen", "qwen2_5_vl");
    let choices = vec![
        "a cat".to_string(),
        "a dog".into(),
        "nothing (empty)".into(),
    ];
    let opts = GenerationOptions {
        choices: choices.clone(),
        ..GenerationOptions::greedy(32)
    };
    let g = model
        .generate(&model.ask_request(&image, "what?", &opts).unwrap())
        .unwrap();
    assert!(choices.contains(&g.text), "{:?}", g.text);
    assert_eq!(g.finish_reason, FinishReason::Eos);

    let opts = GenerationOptions {
        regex: Some(r"[0-9]{4}-[0-9]{2}-[0-9]{2}".into()),
        ..GenerationOptions::greedy(32)
    };
    let g = model
        .generate(&model.ask_request(&image, "when?", &opts).unwrap())
        .unwrap();
    let bytes = g.text.as_bytes();
    assert_eq!(bytes.len(), 10, "{:?}", g.text);
    assert!(
        bytes[4] == b'-'
            && bytes[7] == b'-'
            && g.text.replace('-', "").chars().all(|c| c.is_ascii_digit())
    );
}

#[test]
fn bad_schemas_are_typed_errors_naming_the_construct() {
    let (model, image) = load("qwen", "qwen2_vl");
    let run = |schema: Value| {
        model
            .generate(
                &model
                    .ask_request(&image, "x", &options_with(schema))
                    .unwrap(),
            )
            .unwrap_err()
    };
    let err = run(json!({"type": "object", "if": {"type": "object"}}));
    assert!(
        matches!(
            err,
            Error::InvalidOption {
                name: "json_schema",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("if"), "{err}");
    let err = run(json!({"type": "strnig"}));
    assert!(err.to_string().contains("strnig"), "{err}");
    let err = run(json!([1, 2]));
    assert!(
        matches!(
            err,
            Error::InvalidOption {
                name: "json_schema",
                ..
            }
        ),
        "{err}"
    );
    // Two constraints at once.
    let opts = GenerationOptions {
        regex: Some("a".into()),
        ..options_with(json!({"type": "string"}))
    };
    let err = model
        .generate(&model.ask_request(&image, "x", &opts).unwrap())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidOption { .. }), "{err}");
}

#[test]
fn too_few_tokens_end_with_length_and_the_unfinished_text() {
    let (model, image) = load("qwen", "qwen3_vl");
    let opts = GenerationOptions {
        json_schema: Some(photo_record()),
        ..GenerationOptions::greedy(5)
    };
    let g = model
        .generate(&model.ask_request(&image, "x", &opts).unwrap())
        .unwrap();
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert!(
        "{\"caption\": \"".starts_with(&g.text) || g.text.starts_with("{\"caption\": \""),
        "{:?}",
        g.text
    );
    assert!(serde_json::from_str::<Value>(&g.text).is_err());
}

#[test]
fn a_batch_mixes_constrained_and_free_requests_as_one_at_a_time() {
    let (model, image) = load("qwen", "qwen2_5_vl");
    let free = GenerationOptions::greedy(12);
    let requests = vec![
        model.ask_request(&image, "free", &free).unwrap(),
        model
            .ask_request(
                &image,
                "json",
                &GenerationOptions {
                    max_new_tokens: Some(160),
                    ..options_with(photo_record())
                },
            )
            .unwrap(),
        model
            .ask_request(
                &image,
                "json",
                &options_with(json!({"type": "array", "items": {"type": "integer", "maximum": 99}, "maxItems": 4})),
            )
            .unwrap(),
    ];
    let batch = model.generate_batch(&requests).unwrap();
    for (request, b) in requests.iter().zip(&batch) {
        let one = model.generate(request).unwrap();
        assert_eq!(one.token_ids, b.token_ids);
        assert_eq!(one.text, b.text);
    }
    serde_json::from_str::<Value>(&batch[1].text).unwrap();
    serde_json::from_str::<Value>(&batch[2].text).unwrap();
}
