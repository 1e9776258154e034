//! The real blip2-opt-2.7b config, tokenizer and processor files (from $VLM_ASSETS, which
//! .ci/run sets) give the reference processor's ids: 32 `<image>` ids, then the prompt
//! with `</s>` as BOS. Goldens: tools/fixtures/blip2.py → tests/fixtures/blip2/real_prompts.json.
//!
//! No real Flan-T5 tokenizer is available here (see ../shared/assets/SOURCES.md), so the
//! T5 side is covered by the tiny fixtures only.

mod common;

use std::path::Path;

use serde_json::Value;
use vlm_contract::files::ModelDir;
use vlm_contract::{GenerationOptions, Image, Request};
use vlm_models::blip2::{Blip2Config, Blip2Processor, TextConfig};

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn real_opt_processor_matches_the_reference() {
    let Some(assets) = common::assets("the real BLIP-2 tokenizer checks") else {
        return;
    };
    let goldens: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/blip2/real_prompts.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let dir = ModelDir::local(&assets.join(goldens["asset_folder"].as_str().unwrap())).unwrap();
    let config =
        Blip2Config::from_json(&std::fs::read_to_string(dir.path("config.json")).unwrap()).unwrap();
    assert_eq!(config.num_query_tokens, 32);
    assert_eq!(config.image_token_id, Some(50265));
    match &config.text {
        TextConfig::Opt(o) => {
            assert_eq!(
                (o.hidden_size, o.num_hidden_layers, o.vocab_size),
                (2560, 32, 50304)
            );
            assert_eq!(o.eos_token_id, Some(50118));
        }
        other => panic!("expected OPT, got {other:?}"),
    }
    let processor =
        Blip2Processor::from_model_dir(&dir, config.num_query_tokens, config.image_token_id)
            .unwrap();
    let photo = Image::from_rgb(64, 48, vec![128; 64 * 48 * 3]).unwrap();
    let cases = goldens["cases"].as_array().unwrap();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let prompt = case["prompt"].as_str().unwrap_or("");
        let inputs = processor
            .process(&Request::raw(
                vec![photo.clone()],
                prompt,
                GenerationOptions::default(),
            ))
            .unwrap();
        // No text: transformers' generate builds the ids itself; ours equal them.
        let want = if case["input_ids"].is_null() {
            ids(&case["generate_builds_input_ids"])
        } else {
            ids(&case["input_ids"])
        };
        assert_eq!(inputs.input_ids, want, "{name}: input ids");
        assert_eq!(inputs.image_slots, 32, "{name}: image slots");
        if let Some(text_ids) = case.get("tokenizer_ids").filter(|v| !v.is_null()) {
            let enc = processor.tokenizer().encode(prompt, true).unwrap();
            assert_eq!(
                enc.get_ids(),
                ids(text_ids).as_slice(),
                "{name}: tokenizer ids"
            );
            let decoded = processor.tokenizer().decode(enc.get_ids(), true).unwrap();
            assert_eq!(
                decoded,
                case["decode_skip_special"].as_str().unwrap(),
                "{name}: decode"
            );
        }
    }
    assert!(cases.len() >= 5);

    // Independent vectors from the asset set (tokenizers library on the real files).
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(assets.join("blip2/reference/expected_ids.json")).unwrap(),
    )
    .unwrap();
    for case in expected["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let enc = processor.tokenizer().encode(text, true).unwrap();
        assert_eq!(enc.get_ids(), ids(&case["ids"]).as_slice(), "{text:?}");
    }
}
