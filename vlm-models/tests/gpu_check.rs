//! The GPU check in one binary: every family's parity tests, the quantization tests, the
//! fused-kernel tests and the out-of-memory test, run by `benches/gpu/run.sh` with `VLM_TEST_DEVICE=cuda`. One binary
//! instead of five (~9 MB each, xz-packed) leaves room for vlm-bench and its assets in the
//! 64 MiB a lent GPU machine carries, so the check and the benchmarks run in one call.
//! Built only with the `cuda` feature; on the CPU each file runs as its own test target.

// Each file declares `mod common` for its own target; gathered here, common/mod.rs is
// loaded once per file, which is what those files need.
#![allow(clippy::duplicate_mod)]

#[path = "blip2_parity.rs"]
mod blip2_parity;
#[path = "image_cache.rs"]
mod image_cache;
#[path = "kernels.rs"]
mod kernels;
#[path = "minigpt4_parity.rs"]
mod minigpt4_parity;
#[path = "out_of_memory.rs"]
mod out_of_memory;
#[path = "quantization.rs"]
mod quantization;
#[path = "qwen_parity.rs"]
mod qwen_parity;
