//! With the `cuda` feature, compiles the fused kernels (src/kernels/decode.cu for the
//! decoder step and decode_mma.cu for its attention on the tensor cores, vision.cu for the
//! vision towers, ops.cu for every family's layers, dequant.cu for quantized weights to
//! bf16) to PTX with nvcc; the driver JIT-compiles that PTX for the card it runs on.
//!
//! nvcc is `$NVCC`, else `$CUDA_ROOT/bin/nvcc` / `$CUDA_HOME/bin/nvcc`, else `nvcc` on PATH.
//! The virtual architecture is `compute_$CUDA_COMPUTE_CAP` (as candle-kernels reads it),
//! default 80: PTX for compute_80 runs on every later card (Ampere, Ada, Hopper).

use std::path::PathBuf;
use std::process::Command;

/// The kernel sources, each compiled to `$OUT_DIR/<name>.ptx`.
const KERNEL_FILES: [&str; 5] = ["decode", "vision", "ops", "dequant", "quant_matvec"];
/// Kernels on the tensor cores' mma.sync (compute capability 8.0 and above), built with
/// the `vlm_flash` cfg set when the target architecture has them.
const MMA_FILES: [&str; 3] = ["attention", "mma_gemv", "decode_mma"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(vlm_flash)");
    for file in KERNEL_FILES.iter().chain(&MMA_FILES) {
        println!("cargo:rerun-if-changed=src/kernels/{file}.cu");
    }
    println!("cargo:rerun-if-changed=src/kernels/common.cuh");
    println!("cargo:rerun-if-changed=src/kernels/mma.cuh");
    println!("cargo:rerun-if-changed=src/kernels/decode_shared.cuh");
    for var in [
        "NVCC",
        "CUDA_ROOT",
        "CUDA_HOME",
        "CUDA_COMPUTE_CAP",
        "NVCC_APPEND_FLAGS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    // Named by the warning of a card the quantized kernels do not run on
    // (src/kernels/quant_probe.rs); empty when the build detected the card itself. Recorded
    // without the cuda feature too, so that a CPU test sees the names match.
    // NVCC_APPEND_FLAGS: nvcc reads it on every call, candle's kernels included; it is how
    // a build adds PTX to them for later cards (docs/troubleshooting.md).
    for var in ["CUDA_COMPUTE_CAP", "NVCC_APPEND_FLAGS"] {
        let value = std::env::var(var).unwrap_or_default();
        println!("cargo:rustc-env=VLM_BUILT_{var}={}", value.trim());
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| {
            ["CUDA_ROOT", "CUDA_HOME"].iter().find_map(|v| {
                let p = PathBuf::from(std::env::var_os(v)?).join("bin/nvcc");
                p.exists().then_some(p)
            })
        })
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .map(|c| c.trim().replace('.', ""))
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "80".into());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mma = cap.parse::<u32>().is_ok_and(|c| c >= 80);
    if mma {
        println!("cargo:rustc-cfg=vlm_flash");
    }
    let files = KERNEL_FILES.iter().chain(MMA_FILES.iter().filter(|_| mma));
    for file in files {
        let source = format!("src/kernels/{file}.cu");
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("--gpu-architecture=compute_{cap}"))
            .arg(&source)
            .arg("-o")
            .arg(out_dir.join(format!("{file}.ptx")))
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "the cuda feature compiles CUDA kernels with nvcc, and {} could not be run ({e}): \
                     install the CUDA toolkit, or set NVCC or CUDA_ROOT",
                    nvcc.display()
                )
            });
        assert!(status.success(), "nvcc failed on {source} ({status})");
    }
}
