//! `locate` through the public API: boxes in the photo's pixels on the Qwen fixtures
//! (random weights: the boxes are meaningless, their format and range are not), a typed
//! error on families without grounding, and Qwen2-VL's box-token grammar against the real
//! tokenizer (the tiny fixtures' vocabularies lack the box tokens).

mod common;

use std::path::{Path, PathBuf};

use vlm_contract::constraint::{Grammars, OutputConstraint};
use vlm_contract::{Error, GenerationOptions, Image};
use vlm_models::qwen_vl::grounding::Grounding;
use vlm_models::qwen_vl::QwenGeneration;

use common::cpu_f32;

fn fixture(family: &str, variant: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(family)
        .join(variant)
}

#[test]
fn qwen25_and_qwen3_boxes_lie_in_the_photo() {
    for variant in ["qwen2_5_vl", "qwen3_vl"] {
        let dir = fixture("qwen", variant);
        let model = vlm_models::load(dir.join("model").to_str().unwrap(), &cpu_f32()).unwrap();
        assert!(model.info().grounding);
        let image = Image::open(dir.join("images/a.png")).unwrap();
        for seed in 0..3 {
            let opts = GenerationOptions {
                sampling: Some(vlm_contract::Sampling::Sample {
                    temperature: 1.0,
                    top_p: 1.0,
                    top_k: 0,
                }),
                seed,
                ..GenerationOptions::greedy(120)
            };
            let found = model.locate(&image, "the cake", &opts).unwrap();
            for d in &found {
                let [x1, y1, x2, y2] = d.bbox;
                assert!(
                    0.0 <= x1 && x1 <= x2 && x2 <= image.width() as f32,
                    "{variant}: {d:?}"
                );
                assert!(
                    0.0 <= y1 && y1 <= y2 && y2 <= image.height() as f32,
                    "{variant}: {d:?}"
                );
            }
        }
    }
}

#[test]
fn qwen2_without_box_tokens_says_so() {
    // The tiny Qwen2-VL fixture's vocabulary has no box tokens.
    let dir = fixture("qwen", "qwen2_vl");
    let model = vlm_models::load(dir.join("model").to_str().unwrap(), &cpu_f32()).unwrap();
    let image = Image::open(dir.join("images/a.png")).unwrap();
    let err = model
        .locate(&image, "the cake", &GenerationOptions::greedy(8))
        .unwrap_err();
    assert!(matches!(err, Error::NotSupported { .. }), "{err}");
    assert!(err.to_string().contains("<|box_start|>"), "{err}");
}

#[test]
fn families_without_grounding_say_so() {
    let dir = fixture("blip2", "opt");
    let model = vlm_models::load(dir.join("model").to_str().unwrap(), &cpu_f32()).unwrap();
    assert!(!model.info().grounding);
    let image = Image::open(dir.join("images/a.png")).unwrap();
    let err = model
        .locate(&image, "the cake", &GenerationOptions::greedy(8))
        .unwrap_err();
    assert!(matches!(err, Error::NotSupported { .. }), "{err}");
    assert_eq!(err.kind(), vlm_contract::ErrorKind::BadInput);
}

#[test]
fn qwen2_box_grammar_takes_the_real_tokenizers_answer() {
    let Some(assets) = common::assets("the box grammar on the real Qwen2.5-VL tokenizer") else {
        return;
    };
    // Qwen2.5-VL's tokenizer carries Qwen2-VL's box tokens with the same ids.
    let tokenizer = tokenizers::Tokenizer::from_file(
        assets.join("qwen-vl/Qwen2.5-VL-7B-Instruct/tokenizer.json"),
    )
    .unwrap();
    let image = Image::from_rgb(8, 8, vec![0; 192]).unwrap();
    let request = Grounding::new(QwenGeneration::Qwen2).request(
        &image,
        "the cake",
        (28, 28),
        &GenerationOptions::greedy(64),
    );
    let grammar = OutputConstraint::Grammar(request.options.grammar.clone().unwrap());
    let im_end = tokenizer.token_to_id("<|im_end|>").unwrap();
    let mut c = Grammars::default()
        .compile(&tokenizer, &[im_end], &grammar)
        .unwrap();
    let answer =
        "<|object_ref_start|>the cake<|object_ref_end|><|box_start|>(120,305),(498,777)<|box_end|>";
    let ids = tokenizer.encode(answer, false).unwrap().get_ids().to_vec();
    let vocab = tokenizer.get_vocab_size(true);
    for &id in &ids {
        let mut row = vec![0.0; vocab];
        c.apply(&mut row).unwrap();
        assert!(
            row[id as usize].is_finite(),
            "{:?} masked",
            tokenizer.id_to_token(id)
        );
        c.commit(id).unwrap();
    }
    assert!(c.is_accepting());
    let text = tokenizer.decode(&ids, false).unwrap();
    let found = Grounding::new(QwenGeneration::Qwen2).parse(
        &text,
        &Image::from_rgb(2000, 1000, vec![0; 6_000_000]).unwrap(),
        (28, 28),
    );
    assert_eq!(found[0].label, "the cake");
    assert_eq!(found[0].bbox, [240.0, 305.0, 996.0, 777.0]);
}
