//! The image-encoding cache, every family on its tiny fixture model: a call that finds a
//! photo's encoding in the cache gives exactly the tokens of a call that encodes it, a
//! batch holding one photo twice encodes it once, and the counters say so.

use std::path::{Path, PathBuf};

use vlm_contract::model::LoadOptions;
use vlm_contract::{GenerationOptions, Image, VisionLanguageModel};

mod common;
use common::{cpu_f32, full_precision};

fn fixtures() -> PathBuf {
    std::env::var_os("VLM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
}

/// (model folder, a photo, another photo) of every family's fixture.
fn cases() -> Vec<(PathBuf, PathBuf, PathBuf)> {
    let root = fixtures();
    let mut out = Vec::new();
    for (family, variant) in [
        ("qwen", "qwen2_vl"),
        ("qwen", "qwen2_5_vl"),
        ("qwen", "qwen3_vl"),
        ("blip2", "opt"),
        ("blip2", "t5"),
        ("minigpt4", "vicuna0"),
        ("minigpt4", "llama2"),
    ] {
        let dir = root.join(family).join(variant);
        out.push((
            dir.join("model"),
            dir.join("images/a.png"),
            dir.join("images/b.png"),
        ));
    }
    out
}

fn load(dir: &Path, options: &LoadOptions) -> Box<dyn VisionLanguageModel> {
    vlm_models::load(dir.to_str().unwrap(), options).unwrap()
}

fn tokens(model: &dyn VisionLanguageModel, request: &vlm_contract::Request) -> Vec<u32> {
    model.generate(request).unwrap().token_ids
}

#[test]
fn a_cache_hit_gives_the_tokens_of_a_miss_in_every_family() {
    let opts = GenerationOptions::greedy(6);
    let question = "What is in the picture?";
    for (dir, a, b) in cases() {
        let name = dir.display().to_string();
        let plain = load(&dir, &cpu_f32());
        let cached = load(
            &dir,
            &LoadOptions {
                image_cache_bytes: 64 << 20,
                ..cpu_f32()
            },
        );
        assert_eq!(
            plain.cache_stats().capacity_bytes,
            0,
            "{name}: off by default"
        );
        let photo = Image::open(&a).unwrap();
        // Decoded again: the key is the pixels, not the object.
        let same_photo = Image::open(&a).unwrap();
        let other = Image::open(&b).unwrap();

        let want_describe = tokens(&*plain, &plain.describe_request(&photo, &opts).unwrap());
        let want_ask = tokens(
            &*plain,
            &plain.ask_request(&photo, question, &opts).unwrap(),
        );
        let want_other = tokens(&*plain, &plain.describe_request(&other, &opts).unwrap());

        let first = cached
            .generate(&cached.describe_request(&photo, &opts).unwrap())
            .unwrap();
        assert_eq!(first.token_ids, want_describe, "{name}: miss");
        assert_eq!(first.timings.image_cache_hits, 0, "{name}");
        let s = cached.cache_stats();
        assert_eq!((s.hits, s.misses, s.entries), (0, 1, 1), "{name}");
        assert!(s.bytes > 0 && s.bytes <= s.capacity_bytes, "{name}: {s:?}");

        let second = cached
            .generate(&cached.ask_request(&same_photo, question, &opts).unwrap())
            .unwrap();
        assert_eq!(second.token_ids, want_ask, "{name}: hit");
        assert_eq!(second.timings.image_cache_hits, 1, "{name}");
        let s = cached.cache_stats();
        assert_eq!((s.hits, s.misses, s.entries), (1, 1, 1), "{name}");

        // A batch holding a new photo twice (and the cached one) encodes the new one once.
        let batch = cached
            .generate_batch(&[
                cached.describe_request(&other, &opts).unwrap(),
                cached.describe_request(&other, &opts).unwrap(),
                cached.describe_request(&photo, &opts).unwrap(),
            ])
            .unwrap();
        // In half precision a padded batch may round differently from a single request
        // (the parity tests compare logits there); the encodings themselves are the same.
        if full_precision() {
            assert_eq!(batch[0].token_ids, want_other, "{name}: batch, encoded");
            assert_eq!(batch[1].token_ids, want_other, "{name}: batch, same photo");
            assert_eq!(batch[2].token_ids, want_describe, "{name}: batch, cached");
        }
        assert_eq!(
            batch[0].token_ids, batch[1].token_ids,
            "{name}: one encoding, two uses"
        );
        let hits: Vec<usize> = batch.iter().map(|g| g.timings.image_cache_hits).collect();
        assert_eq!(hits, vec![0, 1, 1], "{name}");
        let s = cached.cache_stats();
        assert_eq!((s.hits, s.misses, s.entries), (3, 2, 2), "{name}");
    }
}

#[test]
fn a_different_pixel_budget_is_a_different_encoding() {
    let dir = fixtures().join("qwen/qwen2_5_vl");
    let model = load(
        &dir.join("model"),
        &LoadOptions {
            image_cache_bytes: 64 << 20,
            ..cpu_f32()
        },
    );
    let photo = Image::open(dir.join("images/a.png")).unwrap();
    let small = GenerationOptions {
        max_pixels: Some(4 * 28 * 28),
        ..GenerationOptions::greedy(2)
    };
    let a = model
        .generate(&model.describe_request(&photo, &small).unwrap())
        .unwrap();
    let b = model
        .generate(
            &model
                .describe_request(&photo, &GenerationOptions::greedy(2))
                .unwrap(),
        )
        .unwrap();
    assert!(
        a.prompt_tokens < b.prompt_tokens,
        "{} vs {}",
        a.prompt_tokens,
        b.prompt_tokens
    );
    assert_eq!(b.timings.image_cache_hits, 0);
    assert_eq!(model.cache_stats().entries, 2);
}

#[test]
fn a_zero_byte_cache_is_off_not_an_error() {
    let dir = fixtures().join("qwen/qwen2_vl");
    let model = load(
        &dir.join("model"),
        &LoadOptions {
            image_cache_bytes: 0,
            ..cpu_f32()
        },
    );
    let photo = Image::open(dir.join("images/a.png")).unwrap();
    let opts = GenerationOptions::greedy(2);
    for _ in 0..2 {
        let g = model
            .generate(&model.describe_request(&photo, &opts).unwrap())
            .unwrap();
        assert_eq!(g.timings.image_cache_hits, 0);
    }
    assert_eq!(model.cache_stats(), vlm_contract::CacheStats::default());
}
