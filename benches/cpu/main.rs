//! Criterion benches of the CPU hot paths: decoding a photo, each family's image
//! preprocessing of a 1024×768 photo, and a few greedy tokens through the tiny random
//! fixture models (vlm-models/tests/fixtures) in f32. The photo is made in memory from a
//! deterministic pattern, so nothing is read but the committed fixtures.
//!
//! `cargo bench -p vlm-bench --bench cpu` (add `-- decode` etc. to filter). Figures and
//! their machine are in docs/benchmarks.md; GPU figures come from `vlm-bench` instead.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use vlm_core::files::ModelDir;
use vlm_core::model::LoadOptions;
use vlm_core::{DTypeChoice, DeviceChoice};

mod decode;
mod forward;
mod photo;
mod preprocess;
#[path = "../synthetic_photo.rs"]
mod synthetic_photo;

/// A tiny random fixture model folder, e.g. `qwen/qwen2_5_vl/model`.
fn fixture(relative: &str) -> ModelDir {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../vlm-models/tests/fixtures")
        .join(relative);
    ModelDir::local(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

fn cpu_f32() -> LoadOptions {
    LoadOptions {
        device: DeviceChoice::Cpu,
        dtype: DTypeChoice::F32,
        ..Default::default()
    }
}

/// Few samples and short windows: the slowest bench takes tens of milliseconds, and the
/// whole run must stay well under two minutes on a 2-core machine. 3 s fits criterion's
/// 1 + 2 + … + 10 = 55 iterations of a 50 ms bench. Command-line flags such as
/// `--measurement-time` or `--quick` still override these.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .nresamples(10_000)
}

criterion_group! {
    name = cpu;
    config = config();
    targets = decode::bench, preprocess::bench, forward::bench
}
criterion_main!(cpu);
