//! Parity of MiniGPT-4 (Vicuna v0 and LLaMA-2 variants) with its own reference code
//! (Vision-CAIR/MiniGPT-4 at d94738a, transformers 4.30, torch 2.0) on tiny random-weight
//! models saved in the released file layouts (`eva_vit_g.pth`, the BLIP-2 Q-Former
//! checkpoint, `pretrained_minigpt4*.pth`, an HF LLaMA folder): pixel values, ViT,
//! `ln_vision`, Q-Former and projected image embeddings, the demo's prompts and their
//! per-segment tokens, prompt logits and 12 greedy tokens through the public API.
//! Fixtures: tools/fixtures/minigpt4/make_fixtures.py.
//!
//! Also the GPU check: `VLM_TEST_DEVICE`, `VLM_TEST_DTYPE` and `VLM_FIXTURES` as in
//! qwen_parity.rs.

use std::path::PathBuf;

use serde_json::Value;
use vlm_contract::files::ModelDir;
use vlm_contract::{Family, GenerationOptions, Image, Request};
use vlm_models::minigpt4::MiniGpt4;

mod common;
use common::fixture::{step_logits_rel_err, Fixture};
use common::{
    cpu_f32, full_precision, ids, max_abs_diff, rel_err, rel_tol, skip_unless_f32, Failures,
    PIXEL_TOL,
};

const VARIANTS: &[&str] = &["vicuna0", "llama2"];

fn fixture(variant: &str) -> Fixture {
    Fixture::load("minigpt4", variant)
}

fn images(fx: &Fixture, case: &Value) -> Vec<Image> {
    case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Image::open(fx.dir.join("images").join(p.as_str().unwrap())).unwrap())
        .collect()
}

/// The demo's Chat flow is a chat request (images uploaded, then the question); the
/// model's own `generate` path is a raw prompt.
fn request(fx: &Fixture, case: &Value, options: GenerationOptions) -> Request {
    let images = images(fx, case);
    if case["path"] == "chat" {
        Request::chat(images, case["question"].as_str().unwrap(), options)
    } else {
        Request::raw(images, case["prompt"].as_str().unwrap(), options)
    }
}

/// Greedy options matching the case's reference call (the demo's repetition penalty
/// where the case kept it).
fn options(case: &Value) -> GenerationOptions {
    let penalty = case["generate_kwargs"]["repetition_penalty"]
        .as_f64()
        .unwrap_or(1.0) as f32;
    GenerationOptions {
        repetition_penalty: Some(penalty),
        return_logits: true,
        ..GenerationOptions::greedy(12)
    }
}

fn check_internals(variant: &str) {
    let fx = fixture(variant);
    let mut f = Failures::default();
    let model = MiniGpt4::load(&ModelDir::local(&fx.model_dir()).unwrap(), &cpu_f32()).unwrap();
    for key in ["a", "b"] {
        let image = Image::open(fx.dir.join(format!("images/{key}.png"))).unwrap();
        let pixels = model.preprocess(&image);
        let d = max_abs_diff(&pixels, &fx.goldens[&format!("pixel_values.{key}")]);
        f.check(d <= PIXEL_TOL, || {
            format!("{variant}/{key}: pixel_values max abs diff {d}")
        });
        let features = model.image_features(&[&pixels]).unwrap();
        let mut parts = vec![
            ("vit", &features.vit),
            ("ln_vision", &features.ln_vision),
            ("image_embeds", &features.embeds),
        ];
        if let Some(q) = &features.qformer {
            parts.push(("qformer", q));
        }
        for (name, got) in parts {
            let want = &fx.goldens[&format!("{name}.{key}")];
            let e = rel_err(got, want);
            f.check(e <= rel_tol(), || {
                format!("{variant}/{key}: {name} rel err {e}")
            });
        }
    }
    for case in &fx.cases {
        let name = case["name"].as_str().unwrap();
        let inputs = model.prepare(&request(&fx, case, options(case))).unwrap();
        f.check(inputs.prompt == case["prompt"].as_str().unwrap(), || {
            format!(
                "{variant}/{name}: prompt {:?} != {}",
                inputs.prompt, case["prompt"]
            )
        });
        let want_segments: Vec<Vec<u32>> = case["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| ids(&s["ids"]))
            .collect();
        f.check(inputs.segments == want_segments, || {
            format!(
                "{variant}/{name}: segment ids {:?} != {want_segments:?}",
                inputs.segments
            )
        });
        let prompt_len = case["prompt_len"].as_u64().unwrap() as usize;
        f.check(inputs.input_ids.len() == prompt_len, || {
            format!(
                "{variant}/{name}: prompt length {} != {prompt_len}",
                inputs.input_ids.len()
            )
        });
        if let Some(want) = fx.goldens.get(&format!("{name}.prompt_logits")) {
            let logits = model.prompt_logits(&inputs).unwrap();
            let e = rel_err(&logits, want);
            f.check(e <= rel_tol(), || {
                format!("{variant}/{name}: prompt logits rel err {e}")
            });
        }
    }
    f.assert_none();
}

fn check_generate(variant: &str) {
    let fx = fixture(variant);
    let model = vlm_models::load(&fx.model_path(), &cpu_f32()).unwrap();
    let mut f = Failures::default();
    for case in &fx.cases {
        let name = case["name"].as_str().unwrap();
        let out = model.generate(&request(&fx, case, options(case))).unwrap();
        f.check(
            !full_precision() || out.token_ids == ids(&case["greedy_tokens"]),
            || {
                format!(
                    "{variant}/{name}: greedy tokens {:?} != {}",
                    out.token_ids, case["greedy_tokens"]
                )
            },
        );
        if full_precision() {
            let answer = case["answer"].as_str().unwrap();
            f.check(out.text.trim() == answer.trim(), || {
                format!("{variant}/{name}: answer {:?} != {answer:?}", out.text)
            });
        }
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
fn vicuna0_matches_reference_internals() {
    check_internals("vicuna0");
}

#[test]
fn llama2_matches_reference_internals() {
    check_internals("llama2");
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
            .map(|c| request(&fx, c, options(c)))
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

/// `describe` sends the demo's question through the demo's conversation; `relate` puts
/// every photo into one conversation, as uploading several images in the demo does.
#[test]
fn describe_and_relate_follow_the_demo() {
    if skip_unless_f32() {
        return;
    }
    for v in VARIANTS {
        let fx = fixture(v);
        let model = vlm_models::load(&fx.model_path(), &cpu_f32()).unwrap();
        let info = model.info();
        assert_eq!((info.family, info.native_multi_image), ("minigpt4", false));
        let case = |n: &str| fx.case(n);
        let describe = case("describe");
        let image = Image::open(fx.dir.join("images/a.png")).unwrap();
        let request = model
            .describe_request(&image, &GenerationOptions::greedy(12))
            .unwrap();
        let out = model.generate(&request).unwrap();
        assert_eq!(
            out.token_ids,
            ids(&describe["greedy_tokens"]),
            "{v}: describe"
        );
        let two = case("two_images");
        let photos = images(&fx, two);
        let out = model
            .relate_with(
                &photos,
                Some(two["question"].as_str().unwrap()),
                &GenerationOptions::greedy(12),
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(out.token_ids, ids(&two["greedy_tokens"]), "{v}: relate");
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vlm-minigpt4-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `vlm convert-minigpt4`: the released .pth files merged into one safetensors file load
/// to the same model.
#[test]
fn merged_safetensors_loads_like_the_pth_files() {
    if skip_unless_f32() {
        return;
    }
    for v in VARIANTS {
        let fx = fixture(v);
        let dir = temp_dir(&format!("convert-{v}"));
        let merged = dir.join("minigpt4.safetensors");
        let n = vlm_models::minigpt4::convert_to_safetensors(&fx.model_dir(), &merged).unwrap();
        assert!(n > 10, "{v}: {n} tensors");
        let mut config: Value = serde_json::from_str(
            &std::fs::read_to_string(fx.model_dir().join("config.json")).unwrap(),
        )
        .unwrap();
        let obj = config.as_object_mut().unwrap();
        for key in ["vision_weights", "qformer_weights", "projection_weights"] {
            obj.remove(key);
        }
        obj.insert("weights".into(), "minigpt4.safetensors".into());
        let llm = fx.model_dir().join("llm");
        obj.insert("language_model".into(), llm.to_str().unwrap().into());
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let model = vlm_models::load(dir.to_str().unwrap(), &cpu_f32()).unwrap();
        let case = fx.case("describe");
        let out = model.generate(&request(&fx, case, options(case))).unwrap();
        assert_eq!(out.token_ids, ids(&case["greedy_tokens"]), "{v}: merged");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A tensor the model needs that no file holds is an error that names it (the
/// reference would silently keep a random initialisation).
#[test]
fn missing_tensors_are_named() {
    let fx = fixture("vicuna0");
    let dir = temp_dir("missing");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.model_dir().join("config.json")).unwrap())
            .unwrap();
    let obj = config.as_object_mut().unwrap();
    let src = fx.model_dir();
    for key in ["vision_weights", "qformer_weights"] {
        let name = obj[key].as_str().unwrap().to_string();
        std::fs::copy(src.join(&name), dir.join(&name)).unwrap();
    }
    // The ViT file stands in for the MiniGPT-4 checkpoint: it has no llama_proj.
    let vit = obj["vision_weights"].clone();
    obj.insert("projection_weights".into(), vit);
    obj.insert(
        "language_model".into(),
        src.join("llm").to_str().unwrap().into(),
    );
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let err = match vlm_models::load(dir.to_str().unwrap(), &cpu_f32()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("loaded without llama_proj"),
    };
    assert!(err.contains("tensor llama_proj."), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
