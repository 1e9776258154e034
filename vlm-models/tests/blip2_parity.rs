//! Parity of BLIP-2 (OPT and Flan-T5 language models) with the reference (HF
//! transformers 5.17) on tiny random-weight models: pixel values, ViT, Q-Former and
//! projection outputs, prompt logits (T5: encoder output and first decoder step) and 12
//! greedy tokens, through the public API. Fixtures: tools/fixtures/blip2.py.
//!
//! Also the GPU check: `VLM_TEST_DEVICE`, `VLM_TEST_DTYPE` and `VLM_FIXTURES` as in
//! qwen_parity.rs.

use std::path::Path;

use serde_json::Value;
use vlm_contract::files::ModelDir;
use vlm_contract::{Family, GenerationOptions, Image, Request};
use vlm_models::blip2::Blip2;

mod common;
use common::fixture::{step_logits_rel_err, Fixture};
use common::{
    cpu_f32, full_precision, ids, max_abs_diff, rel_err, rel_tol, skip_unless_f32, Failures,
    PIXEL_TOL,
};

const VARIANTS: &[&str] = &["opt", "t5"];

fn fixture(variant: &str) -> Fixture {
    Fixture::load("blip2", variant)
}

/// The case as a raw prompt: BLIP-2's own format is the text after the image.
fn request(fx: &Fixture, case: &Value, options: GenerationOptions) -> Request {
    let image = Image::open(fx.dir.join(case["image"].as_str().unwrap())).unwrap();
    Request::raw(vec![image], case["prompt"].as_str().unwrap_or(""), options)
}

fn image_key(case: &Value) -> String {
    let path = case["image"].as_str().unwrap();
    Path::new(path)
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn check_internals(variant: &str) {
    let fx = fixture(variant);
    let mut f = Failures::default();
    let model = Blip2::load(&ModelDir::local(&fx.model_dir()).unwrap(), &cpu_f32()).unwrap();
    for case in &fx.cases {
        let name = case["name"].as_str().unwrap();
        let g = |k: &str| {
            fx.goldens
                .get(&format!("{name}.{k}"))
                .unwrap_or_else(|| panic!("{variant}/{name}: no golden {k}"))
        };
        let inputs = model
            .prepare(&request(&fx, case, GenerationOptions::greedy(12)))
            .unwrap();
        f.check(inputs.input_ids == ids(&case["input_ids"]), || {
            format!(
                "{variant}/{name}: input_ids {:?} != {}",
                inputs.input_ids, case["input_ids"]
            )
        });
        let pixels = inputs.pixel_values.as_ref().unwrap();
        let d = max_abs_diff(
            pixels,
            &fx.goldens[&format!("pixel_values.{}", image_key(case))],
        );
        f.check(d <= PIXEL_TOL, || {
            format!("{variant}/{name}: pixel_values max abs diff {d}")
        });
        let features = model.image_features(&[pixels]).unwrap();
        for (key, got) in [
            ("vision", &features.vision),
            ("qformer", &features.qformer),
            ("image_embeds", &features.embeds),
        ] {
            let e = rel_err(got, g(key));
            f.check(e <= rel_tol(), || {
                format!("{variant}/{name}: {key} rel err {e}")
            });
        }
        let (logits, encoder) = model.prompt_logits(&inputs).unwrap();
        let e = rel_err(&logits, g("prompt_logits"));
        f.check(e <= rel_tol(), || {
            format!("{variant}/{name}: prompt logits rel err {e}")
        });
        if let Some(enc) = encoder {
            let want = g("encoder_hidden");
            let e = rel_err(&enc.reshape(want.dims()).unwrap(), want);
            f.check(e <= rel_tol(), || {
                format!("{variant}/{name}: encoder output rel err {e}")
            });
        }
    }
    f.assert_none();
}

fn check_generate(variant: &str) {
    let fx = fixture(variant);
    let model = vlm_models::load(&fx.model_path(), &cpu_f32()).unwrap();
    let opts = GenerationOptions {
        return_logits: true,
        ..GenerationOptions::greedy(12)
    };
    let mut f = Failures::default();
    for case in &fx.cases {
        let name = case["name"].as_str().unwrap();
        let out = model.generate(&request(&fx, case, opts.clone())).unwrap();
        f.check(
            !full_precision() || out.token_ids == ids(&case["greedy_tokens"]),
            || {
                format!(
                    "{variant}/{name}: greedy tokens {:?} != {}",
                    out.token_ids, case["greedy_tokens"]
                )
            },
        );
        let e = step_logits_rel_err(
            &out.logits.unwrap(),
            &fx.goldens[&format!("{name}.step_logits")],
        );
        f.check(e <= rel_tol(), || {
            format!("{variant}/{name}: step logits rel err {e}")
        });
    }
    f.assert_none();
}

#[test]
fn opt_matches_reference_internals() {
    check_internals("opt");
}

#[test]
fn t5_matches_reference_internals() {
    check_internals("t5");
}

#[test]
fn greedy_generation_matches_reference() {
    for v in VARIANTS {
        check_generate(v);
    }
}

#[test]
fn batched_generation_equals_one_at_a_time() {
    if skip_unless_f32() {
        return;
    }
    for v in VARIANTS {
        let fx = fixture(v);
        let model = vlm_models::load(&fx.model_path(), &cpu_f32()).unwrap();
        let requests: Vec<Request> = fx
            .cases
            .iter()
            .map(|c| request(&fx, c, GenerationOptions::greedy(12)))
            .collect();
        let outs = model.generate_batch(&requests).unwrap();
        for (case, out) in fx.cases.iter().zip(outs) {
            assert_eq!(
                out.token_ids,
                ids(&case["greedy_tokens"]),
                "{v}/{}: batched tokens",
                case["name"]
            );
        }
    }
}

/// `describe` is BLIP-2's plain captioning and `ask` its `Question: … Answer:` prompt.
#[test]
fn describe_and_ask_use_blip2_prompts() {
    if skip_unless_f32() {
        return;
    }
    for v in VARIANTS {
        let fx = fixture(v);
        let model = vlm_models::load(&fx.model_path(), &cpu_f32()).unwrap();
        let tokenizer =
            tokenizers::Tokenizer::from_file(fx.dir.join("model/tokenizer.json")).unwrap();
        let case = |n: &str| fx.case(n);
        let text = |c: &Value| tokenizer.decode(&ids(&c["greedy_tokens"]), true).unwrap();
        let image = Image::open(fx.dir.join("images/a.png")).unwrap();
        let opts = GenerationOptions::greedy(12);
        let caption = case("caption");
        if caption["prompt"].is_null() && caption["input_ids"] != Value::Null {
            assert_eq!(
                model.describe(&image, &opts).unwrap(),
                text(caption),
                "{v}: describe"
            );
        }
        let question = case("question");
        assert_eq!(
            model.ask(&image, "what is in the picture?", &opts).unwrap(),
            text(question),
            "{v}: ask"
        );
    }
}

#[test]
fn relate_captions_each_photo_then_relates_them() {
    let fx = fixture("opt");
    let model = vlm_models::load(&fx.model_path(), &cpu_f32()).unwrap();
    let info = model.info();
    assert_eq!(
        (info.family, info.max_images, info.native_multi_image),
        ("blip2", Some(1), false)
    );
    let a = Image::open(fx.dir.join("images/a.png")).unwrap();
    let b = Image::open(fx.dir.join("images/b.png")).unwrap();
    let out = model
        .relate_with(
            &[a.clone(), b.clone()],
            None,
            &GenerationOptions::greedy(4),
            &mut |_| {},
        )
        .unwrap();
    assert!(out.prompt_tokens > 8, "the captions are in the prompt");
    let two = Request::raw(vec![a, b], "", GenerationOptions::greedy(2));
    assert!(matches!(
        model.generate(&two),
        Err(vlm_contract::Error::TooManyImages { given: 2, max: 1 })
    ));
}

/// transformers 5 saves Flan-T5 with `tie_word_embeddings: true` and
/// `scale_decoder_outputs: false` next to its untied `lm_head`; that config loads to the
/// same model.
#[test]
fn transformers5_t5_config_loads_the_same_model() {
    if skip_unless_f32() {
        return;
    }
    let fx = fixture("t5");
    let dir = std::env::temp_dir().join(format!("vlm-blip2-t5cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fx.dir.join("model")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::copy(
        fx.dir.join("model/config.transformers5.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let model = vlm_models::load(dir.to_str().unwrap(), &cpu_f32()).unwrap();
    let case = &fx.cases[0];
    let out = model
        .generate(&request(&fx, case, GenerationOptions::greedy(12)))
        .unwrap();
    assert_eq!(out.token_ids, ids(&case["greedy_tokens"]));
    std::fs::remove_dir_all(&dir).unwrap();
}
