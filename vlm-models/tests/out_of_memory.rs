//! Out of GPU memory, on purpose: a request far too large for the card fails with a typed
//! error that says what to lower, and the same model then answers a normal request with the
//! reference's tokens. Part of the GPU check (gathered by gpu_check.rs, run by
//! benches/gpu/run.sh with `VLM_TEST_DEVICE=cuda`); there is nothing to exhaust on the CPU.

mod common;

use vlm_contract::{DeviceChoice, ErrorKind, GenerationOptions, Image, Prompt, Request};

use common::fixture::Fixture;
use common::{cpu_f32, ids, messages, skip, skip_unless_f32};

/// The pixel budget the fixture's 256×192 photo is upscaled into: 8960×6720, 307,200
/// patches (76,800 tokens, within the 128k context). Qwen2.5-VL's full-attention vision
/// block then asks for one head's 307,200² f32 scores, ~377 GB, in one allocation, which
/// fails at once on any card (an H200 has 141 GB) instead of filling memory slowly. What is
/// resident before that is ~2 GB (1.4 GB of pixel values, the tiny model's activations).
const HUGE_MIN_PIXELS: usize = 60_000_000;
const HUGE_MAX_PIXELS: usize = 70_000_000;

#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs a CUDA card to run out of: the GPU check (benches/gpu/run.sh) runs this"
)]
fn out_of_memory_is_a_typed_error_and_the_model_takes_the_next_call() {
    if !matches!(cpu_f32().device, DeviceChoice::Cuda(_)) {
        skip("runs a CUDA card out of memory: set VLM_TEST_DEVICE=cuda");
        return;
    }
    // The normal request afterwards is compared token for token with the reference.
    if skip_unless_f32() {
        return;
    }
    let fx = Fixture::load("qwen", "qwen2_5_vl");
    let model = vlm_models::load(&fx.model_path(), &cpu_f32()).unwrap();
    let case = fx.case("single_image");
    let request = |options: GenerationOptions| Request {
        images: vec![Image::open(fx.dir.join(case["images"][0].as_str().unwrap())).unwrap()],
        prompt: Prompt::Chat(messages(&case["messages"])),
        options,
    };

    let huge = GenerationOptions {
        min_pixels: Some(HUGE_MIN_PIXELS),
        max_pixels: Some(HUGE_MAX_PIXELS),
        ..GenerationOptions::greedy(12)
    };
    let err = match model.generate(&request(huge)) {
        Ok(out) => panic!(
            "a {HUGE_MIN_PIXELS}-pixel image fit on the card ({} prompt tokens)",
            out.prompt_tokens
        ),
        Err(e) => e,
    };
    assert!(
        err.is_out_of_memory(),
        "want out of memory, got a {:?} error: {err}",
        err.kind()
    );
    assert_eq!(err.kind(), ErrorKind::Device, "{err}");
    let advice = err.to_string();
    assert!(
        ["batch size", "max_pixels", "int4", "unharmed"]
            .iter()
            .all(|a| advice.contains(a)),
        "the message should say what to lower: {advice}"
    );

    let out = model
        .generate(&request(GenerationOptions::greedy(12)))
        .unwrap();
    assert_eq!(
        out.token_ids,
        ids(&case["greedy_tokens"]),
        "the model after running out of memory"
    );
}
