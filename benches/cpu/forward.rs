//! `describe` of the 1024×768 photo on the tiny random fixture models (2-layer towers and
//! decoders, hidden sizes 32-64) in f32 on the CPU, a fixed number of greedy tokens:
//! preprocessing, vision tower, prefill and decode steps through the shared generation
//! loop. The models are far too small for the figures to say anything about real sizes;
//! they catch overheads per call and per token (tensor set-up, sampling, detokenizing).

use std::hint::black_box;

use criterion::Criterion;
use vlm_core::{GenerationOptions, Sampling};

use crate::{cpu_f32, fixture, photo};

/// New tokens per call, forced (min = max) so every model does the same work.
const TOKENS: usize = 8;

pub fn bench(c: &mut Criterion) {
    let photo = photo::synthetic_photo();
    let options = GenerationOptions {
        max_new_tokens: Some(TOKENS),
        min_new_tokens: TOKENS,
        sampling: Some(Sampling::Greedy),
        repetition_penalty: Some(1.0),
        ..GenerationOptions::default()
    };
    let mut group = c.benchmark_group("forward");
    for (name, folder) in [
        ("qwen2_5_vl", "qwen/qwen2_5_vl/model"),
        ("blip2_opt", "blip2/opt/model"),
        ("minigpt4_vicuna0", "minigpt4/vicuna0/model"),
    ] {
        let model = vlm_models::load_dir(&fixture(folder), &cpu_f32()).expect("loads");
        let request = model.describe_request(&photo, &options).expect("request");
        let tokens = model.generate(&request).expect("generates").token_ids.len();
        assert_eq!(tokens, TOKENS, "{name}: forced length");
        group.bench_function(format!("{name}_tiny_describe_{TOKENS}_tokens"), |b| {
            b.iter(|| model.generate(black_box(&request)).expect("generates"))
        });
    }
    group.finish();
}
