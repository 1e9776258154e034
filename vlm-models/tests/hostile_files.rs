//! The hostile-file corpus (tests/fixtures/hostile, written by tools/fixtures/hostile.py;
//! its README lists what each file attacks): each file is put where a loader reads it,
//! in a mirror of a fixture model folder, and must give a typed error whose message names
//! the problem, never a panic, an abort or a huge allocation.

mod common;

use std::path::{Path, PathBuf};

use common::hostile::TempDir;
use vlm_contract::files::ModelDir;
use vlm_contract::{Error, Image, ImageError};
use vlm_models::tokenizer::SentencePieceModel;
use vlm_models::LoadOptions;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn hostile(name: &str) -> Vec<u8> {
    let path = fixtures().join("hostile").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Loads a mirror of `model` whose `rel` is the hostile file `name`.
fn load_with(model: &str, rel: &str, name: &str) -> Error {
    let src = fixtures().join(model);
    let dir = TempDir::mirror(&src, "corpus");
    dir.replace(rel, &hostile(name));
    let md = ModelDir::local(dir.path()).unwrap();
    match vlm_models::load_dir(&md, &LoadOptions::default()) {
        Ok(_) => panic!("{name} as {model}/{rel} loaded"),
        Err(e) => e,
    }
}

/// A saved Int8 quantized folder of the Qwen2-VL fixture, with `model.gguf` replaced.
fn load_quantized_with(gguf: &str) -> Error {
    let dir = TempDir::new("corpus-quantized");
    let saved = dir.path().join("q");
    let options = LoadOptions {
        quantization: vlm_contract::Quantization::Int8,
        ..Default::default()
    };
    let src = fixtures().join("qwen/qwen2_vl/model");
    vlm_models::save_quantized(src.to_str().unwrap(), &saved, &options).unwrap();
    std::fs::write(saved.join("model.gguf"), hostile(gguf)).unwrap();
    let md = ModelDir::local(&saved).unwrap();
    match vlm_models::load_dir(&md, &LoadOptions::default()) {
        Ok(_) => panic!("{gguf} as model.gguf loaded"),
        Err(e) => e,
    }
}

fn assert_says(e: &Error, name: &str, words: &[&str]) {
    let text = e.to_string();
    for w in words {
        assert!(text.contains(w), "{name}: {text:?} lacks {w:?}");
    }
}

const QWEN: &str = "qwen/qwen2_vl/model";
const MINIGPT4: &str = "minigpt4/vicuna0/model";

#[test]
fn hostile_safetensors_are_refused() {
    for (name, words) in [
        ("header_length_2e63.safetensors", &["model.safetensors"][..]),
        ("header_length_past_end.safetensors", &["model.safetensors"]),
        ("offsets_past_end.safetensors", &["model.safetensors"]),
        ("shape_overflow.safetensors", &["model.safetensors"]),
    ] {
        let e = load_with(QWEN, "model.safetensors", name);
        assert!(
            matches!(e, Error::BadFile { .. } | Error::Weights(_)),
            "{name}: {e}"
        );
        assert_says(&e, name, words);
    }
}

#[test]
fn hostile_gguf_is_refused() {
    for (name, words) in [
        (
            "tensor_count_2e60.gguf",
            &["model.gguf", "tensor_count"][..],
        ),
        ("alignment_zero.gguf", &["model.gguf", "malformed"]),
        (
            "empty_tensor.gguf",
            &["model.gguf", "model.norm.weight", "damaged"],
        ),
        (
            "dims_overflow.gguf",
            &["model.gguf", "model.norm.weight", "damaged"],
        ),
    ] {
        let e = load_quantized_with(name);
        assert!(matches!(e, Error::BadFile { .. }), "{name}: {e}");
        assert_says(&e, name, words);
    }
}

#[test]
fn hostile_pth_checkpoints_are_refused() {
    for (name, words) in [
        (
            "long1_overflow.pth",
            &["pretrained_minigpt4.pth", "torch.save"][..],
        ),
        (
            "short_rebuild_args.pth",
            &["pretrained_minigpt4.pth", "torch.save"],
        ),
        (
            "huge_shape.pth",
            &["pretrained_minigpt4.pth", "w.weight", "more data than"],
        ),
        (
            "unicode_length_4g.pth",
            &["pretrained_minigpt4.pth", "torch.save"],
        ),
    ] {
        let e = load_with(MINIGPT4, "pretrained_minigpt4.pth", name);
        assert!(matches!(e, Error::BadFile { .. }), "{name}: {e}");
        assert_says(&e, name, words);
    }
    // Read on a stack sized from the pickle (it aborted the process before): a list holds
    // no tensors, so the load stops at the first tensor the checkpoint should have had.
    let e = load_with(MINIGPT4, "pretrained_minigpt4.pth", "nested_lists.pth");
    assert_eq!(e.kind(), vlm_contract::ErrorKind::ModelFiles, "{e}");
    assert!(e.to_string().contains("pretrained_minigpt4.pth"), "{e}");
}

#[test]
fn hostile_configs_are_refused() {
    for (name, words) in [
        ("qwen_zero_heads.json", &["num_attention_heads"][..]),
        ("qwen_huge_hidden.json", &["embed_dim"]),
        ("qwen_mrope_overflow.json", &["mrope_section"]),
        ("qwen_zero_patch.json", &["patch_size"]),
    ] {
        let e = load_with(QWEN, "config.json", name);
        assert!(matches!(e, Error::BadFile { .. }), "{name}: {e}");
        assert_says(&e, name, words);
    }
}

#[test]
fn a_shard_index_cannot_leave_the_folder() {
    let e = load_with(
        QWEN,
        "model.safetensors.index.json",
        "index_escapes_folder.json",
    );
    assert!(matches!(e, Error::BadFile { .. }), "{e}");
    assert_says(
        &e,
        "index_escapes_folder.json",
        &["outside the model folder"],
    );
}

#[test]
fn a_quantization_json_of_wrong_types_is_refused() {
    let e = load_with(QWEN, "quantization.json", "quantization_wrong_types.json");
    assert!(matches!(e, Error::BadFile { .. }), "{e}");
    assert_says(&e, "quantization_wrong_types.json", &["quantization.json"]);
}

#[test]
fn hostile_images_are_refused_from_the_header() {
    let e = Image::from_bytes(&hostile("png_65535x65535.png")).unwrap_err();
    assert!(matches!(e, ImageError::TooManyPixels { .. }), "{e}");
    assert!(e.to_string().contains("65535x65535"), "{e}");
    let e = Image::from_bytes(&hostile("tiff_65535x65535.tiff")).unwrap_err();
    assert!(matches!(e, ImageError::TooManyPixels { .. }), "{e}");
    let e = Image::from_bytes(&hostile("png_zero_width.png")).unwrap_err();
    assert!(matches!(e, ImageError::ZeroSize { .. }), "{e}");
}

#[test]
fn a_sentencepiece_length_past_the_end_is_refused() {
    let Err(e) = SentencePieceModel::from_bytes(&hostile("length_2e62.model")) else {
        panic!("length_2e62.model parsed");
    };
    assert!(matches!(e, Error::Tokenizer(_)), "{e}");
    assert!(e.to_string().contains("SentencePiece"), "{e}");
}

/// Every file in the folder is exercised above, and each is small.
#[test]
fn the_corpus_is_complete_and_small() {
    let used = [
        "header_length_2e63.safetensors",
        "header_length_past_end.safetensors",
        "offsets_past_end.safetensors",
        "shape_overflow.safetensors",
        "tensor_count_2e60.gguf",
        "alignment_zero.gguf",
        "empty_tensor.gguf",
        "dims_overflow.gguf",
        "long1_overflow.pth",
        "short_rebuild_args.pth",
        "huge_shape.pth",
        "unicode_length_4g.pth",
        "qwen_zero_heads.json",
        "qwen_huge_hidden.json",
        "qwen_mrope_overflow.json",
        "qwen_zero_patch.json",
        "index_escapes_folder.json",
        "quantization_wrong_types.json",
        "png_65535x65535.png",
        "png_zero_width.png",
        "tiff_65535x65535.tiff",
        "nested_lists.pth",
        "length_2e62.model",
    ];
    let dir = fixtures().join("hostile");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "README.md" {
            continue;
        }
        assert!(used.contains(&name.as_str()), "{name} is not tested");
        assert!(
            entry.metadata().unwrap().len() < 50_000,
            "{name} is too big"
        );
    }
}
