//! The real Qwen2.5-VL-7B and Qwen3-VL-8B tokenizer, chat template and preprocessor files
//! (from $VLM_ASSETS, which .ci/run sets) give the reference processor's prompt ids.
//! Goldens: tools/fixtures/qwen_vl.py → tests/fixtures/qwen/real_prompts.json.

use std::path::Path;

use serde_json::Value;
use vlm_contract::files::ModelDir;
use vlm_contract::{GenerationOptions, Image, Prompt, Request};

mod common;
use common::messages;
use vlm_models::qwen_vl::processor::smart_resize;
use vlm_models::qwen_vl::{QwenProcessor, QwenVlConfig};

#[test]
fn real_chat_templates_and_tokenizers_match_the_reference() {
    let Some(assets) = common::assets("the real-tokenizer checks") else {
        return;
    };
    let goldens: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen/real_prompts.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let w = goldens["image"]["width"].as_u64().unwrap() as u32;
    let h = goldens["image"]["height"].as_u64().unwrap() as u32;
    let photo = Image::from_rgb(w, h, vec![128; (w * h * 3) as usize]).unwrap();
    let mut checked = 0;
    for (name, model) in goldens["models"].as_object().unwrap() {
        let dir = ModelDir::local(&assets.join(model["asset_folder"].as_str().unwrap())).unwrap();
        let config =
            QwenVlConfig::from_json(&std::fs::read_to_string(dir.path("config.json")).unwrap())
                .unwrap();
        let processor = QwenProcessor::from_model_dir(&dir, config.image_token_id).unwrap();
        for case in model["cases"].as_array().unwrap() {
            let n = case["num_images"].as_u64().unwrap() as usize;
            let request = Request {
                images: vec![photo.clone(); n],
                prompt: Prompt::Chat(messages(&case["messages"])),
                options: GenerationOptions::default(),
            };
            let case_name = case["name"].as_str().unwrap();
            assert_eq!(
                processor.prompt_text(&request).unwrap(),
                case["prompt_text"].as_str().unwrap(),
                "{name}/{case_name}: prompt text"
            );
            let inputs = processor.process(&request).unwrap();
            let want: Vec<u32> = case["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(inputs.input_ids, want, "{name}/{case_name}: input ids");
            checked += 1;
        }
        let factor = processor.config.patch_size * processor.config.merge_size;
        for row in model["smart_resize_table"].as_array().unwrap() {
            let g = |k: &str| row[k].as_u64().unwrap() as usize;
            let got = smart_resize(
                g("height"),
                g("width"),
                factor,
                processor.config.min_pixels(),
                processor.config.max_pixels(),
            )
            .unwrap();
            assert_eq!(
                got,
                (g("resized_height"), g("resized_width")),
                "{name}: smart_resize of {}x{}",
                g("width"),
                g("height")
            );
        }
    }
    assert!(checked >= 10, "only {checked} prompts checked");
}

#[test]
fn tokenizer_rebuilt_from_vocab_and_merges_matches_tokenizer_json() {
    let Some(assets) = common::assets("the real-tokenizer checks") else {
        return;
    };
    let dir = ModelDir::local(&assets.join("qwen-vl/Qwen2.5-VL-7B-Instruct")).unwrap();
    let rebuilt = vlm_models::qwen_vl::tokenizer::from_vocab_and_merges(&dir).unwrap();
    let reference = dir.tokenizer().unwrap();
    assert_eq!(rebuilt.get_vocab_size(true), reference.get_vocab_size(true));
    // llama.cpp's tokenizer test vectors for Qwen2 (ids without special tokens)
    let inputs =
        std::fs::read_to_string(assets.join("qwen-vl/reference/ggml-vocab-qwen2.gguf.inp"))
            .unwrap();
    let outputs =
        std::fs::read_to_string(assets.join("qwen-vl/reference/ggml-vocab-qwen2.gguf.out"))
            .unwrap();
    let texts: Vec<&str> = inputs.split("\n__ggml_vocab_test__\n").collect();
    let expected: Vec<Vec<u32>> = outputs
        .lines()
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect();
    assert!(texts.len() >= 40, "{} vectors", texts.len());
    for (text, want) in texts.iter().zip(&expected) {
        let got = rebuilt.encode(*text, false).unwrap().get_ids().to_vec();
        assert_eq!(&got, want, "rebuilt tokenizer on {text:?}");
        assert_eq!(
            reference.encode(*text, false).unwrap().get_ids(),
            &got[..],
            "tokenizer.json on {text:?}"
        );
    }
    let special = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>照片中主菜是什么?<|im_end|>\n";
    assert_eq!(
        rebuilt.encode(special, true).unwrap().get_ids(),
        reference.encode(special, true).unwrap().get_ids()
    );
    assert_eq!(
        rebuilt.decode(&[151644, 872, 198], false).unwrap(),
        "<|im_start|>user\n"
    );
}
