//! The real LLaMA `tokenizer.model` (Vicuna v0 and LLaMA-2-chat use the same file; from
//! $VLM_ASSETS, which .ci/run sets) tokenizes MiniGPT-4's prompts exactly as the reference
//! does (transformers 4.30's slow LlamaTokenizer, segment by segment, BOS on the first).
//! Goldens: tools/fixtures/minigpt4/make_fixtures.py → tests/fixtures/minigpt4/tokenizer_real.json.

mod common;

use std::path::Path;

use serde_json::Value;
use vlm_contract::{GenerationOptions, Image, Request};
use vlm_models::minigpt4::{load_tokenizer, tokenize_segments, Conversation, Variant};

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn real_llama_tokenizer_matches_minigpt4_segments() {
    let Some(assets) = common::assets("the real LLaMA tokenizer checks") else {
        return;
    };
    let goldens: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/minigpt4/tokenizer_real.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let tokenizer = load_tokenizer(&assets.join("minigpt4/llama-tokenizer")).unwrap();
    let bos = goldens["stop_words"]["bos_token_id"].as_u64().unwrap() as u32;
    let mut checked = 0;
    for (variant, template) in goldens["templates"].as_object().unwrap() {
        for (name, case) in template["prompts"].as_object().unwrap() {
            let prompt = case["prompt"].as_str().unwrap();
            let want: Vec<Vec<u32>> = case["segments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| ids(&s["ids"]))
                .collect();
            let got = tokenize_segments(&tokenizer, bos, prompt).unwrap();
            assert_eq!(got, want, "{variant}/{name}: segment ids");
            checked += 1;
        }
        // The demo's describe prompt, built from our conversation template.
        let conv = Conversation::of(if variant == "vicuna0" {
            Variant::Vicuna0
        } else {
            Variant::Llama2
        });
        let photo = Image::from_rgb(2, 2, vec![0; 12]).unwrap();
        let request = Request::chat(
            vec![photo],
            "Describe this image in detail.",
            GenerationOptions::default(),
        );
        assert_eq!(
            conv.prompt(&request).unwrap(),
            template["prompts"]["describe"]["prompt"].as_str().unwrap(),
            "{variant}: describe prompt"
        );
    }
    assert!(checked >= 8, "{checked}");
    // The demo stops on "###": pieces ▁### (835) and ## # (2277 29937).
    let stops: Vec<Vec<u32>> = goldens["stop_words"]["demo_stop_words_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    for stop in stops {
        let text = tokenizer.decode(&stop, false).unwrap();
        assert!(text.contains('#'), "{stop:?} → {text:?}");
    }
}
