//! Helpers shared by the fixture-driven tests.

#![allow(dead_code)] // each test binary uses its own subset

pub mod fixture;
pub mod hostile;

use candle_core::{DType, Tensor};
use serde_json::Value;
use vlm_contract::model::LoadOptions;
use vlm_contract::{Content, DTypeChoice, DeviceChoice, Message, Role};

/// HF chat messages (`{"role", "content": str | [{"type": "image"|"text", ...}]}`) as ours.
pub fn messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let role = match m["role"].as_str().unwrap() {
                "system" => Role::System,
                "assistant" => Role::Assistant,
                _ => Role::User,
            };
            let content = match &m["content"] {
                Value::String(s) => vec![Content::Text(s.clone())],
                parts => parts
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| match c["type"].as_str().unwrap() {
                        "image" => Content::Image,
                        _ => Content::Text(c["text"].as_str().unwrap().to_string()),
                    })
                    .collect(),
            };
            Message { role, content }
        })
        .collect()
}

/// Reference tolerance on float32 logits and features: max |a-b| / max |b|.
pub const REL_TOL_F32: f32 = 1e-4;
/// Half precision: f16 keeps 11 mantissa bits, bf16 8; through the vision tower and two
/// decoder layers with large random weights, bf16 logits drift by up to ~8% of their range
/// on the CPU (measured), f16 by under 2%.
pub const REL_TOL_F16: f32 = 2e-2;
pub const REL_TOL_BF16: f32 = 1.5e-1;
/// Pixel values are the same arithmetic on the same uint8 pixels.
pub const PIXEL_TOL: f32 = 1e-5;
/// The dtype under test (`VLM_TEST_DTYPE`, default f32).
pub fn test_dtype() -> DTypeChoice {
    std::env::var("VLM_TEST_DTYPE").map_or(DTypeChoice::F32, |s| DTypeChoice::parse(&s).unwrap())
}

/// Half precision cannot reproduce f32 greedy choices whose margins are ~1e-2, so there
/// only logits and features are compared (decode steps only up to the first token, after
/// which the sequences may differ), with [`REL_TOL_F16`] / [`REL_TOL_BF16`].
pub fn full_precision() -> bool {
    test_dtype() == DTypeChoice::F32
}

pub fn rel_tol() -> f32 {
    match test_dtype() {
        DTypeChoice::F16 => REL_TOL_F16,
        DTypeChoice::BF16 => REL_TOL_BF16,
        _ => REL_TOL_F32,
    }
}

/// CPU and f32 unless `VLM_TEST_DEVICE` / `VLM_TEST_DTYPE` say otherwise; the GPU paths as
/// the `VLM_*` switches say (the GPU check runs again under each, benches/gpu/run.sh).
pub fn cpu_f32() -> LoadOptions {
    let device = std::env::var("VLM_TEST_DEVICE")
        .map_or(DeviceChoice::Cpu, |s| DeviceChoice::parse(&s).unwrap());
    LoadOptions {
        device,
        dtype: test_dtype(),
        runtime: vlm_contract::RuntimeOptions::from_env(),
        ..Default::default()
    }
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let got = got
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let want = want
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    got.iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

pub fn max_abs_diff(got: &[f32], want: &Tensor) -> f32 {
    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(got.len(), want.len(), "length mismatch");
    got.iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
}

/// Collects failed checks so one run reports every mismatch of a variant.
#[derive(Default)]
pub struct Failures(pub Vec<String>);

impl Failures {
    pub fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.0.push(msg());
        }
    }

    pub fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} mismatch(es):\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// Reports a test that cannot run here and lets it pass, or fails it under
/// `VLM_REQUIRE_ALL_TESTS=1` (.ci/run sets it, with everything the tests need installed:
/// there a skip means something went missing). The line goes straight to stderr, past the
/// test harness's capture, so that `cargo test` shows it; with `VLM_SKIP_LOG` set (scripts/test.sh)
/// it is also appended to that file, which counts the skips of the whole run.
pub fn skip(reason: &str) {
    use std::io::Write;
    if std::env::var_os("VLM_REQUIRE_ALL_TESTS").is_some_and(|v| v == "1") {
        panic!("VLM_REQUIRE_ALL_TESTS=1, but this test cannot run: {reason}");
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let line = format!("SKIPPED {test}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(log) = std::env::var_os("VLM_SKIP_LOG") {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = file.write_all(line.as_bytes());
        }
    }
}

/// `$VLM_ASSETS` (the real tokenizer and config files, never in the repository), or a
/// [`skip`] saying that `what` needs it.
pub fn assets(what: &str) -> Option<std::path::PathBuf> {
    let assets = std::env::var_os("VLM_ASSETS").map(std::path::PathBuf::from);
    if assets.is_none() {
        skip(&format!(
            "VLM_ASSETS is not set, so {what} cannot run: set it to the shared assets folder \
             (.ci/run uses ../shared/assets)"
        ));
    }
    assets
}

/// Whether an f32-only check must [`skip`]: half precision cannot reproduce f32 greedy
/// choices (see [`full_precision`]), so token comparisons run only in f32.
pub fn skip_unless_f32() -> bool {
    if full_precision() {
        return false;
    }
    skip(&format!(
        "compares greedy tokens, which only f32 reproduces (VLM_TEST_DTYPE={:?}; the f32 \
         pass of the GPU check runs it)",
        test_dtype()
    ));
    true
}
