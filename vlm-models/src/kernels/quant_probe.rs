//! Whether candle's quantized matmul kernels give right answers on a card.
//!
//! candle compiles its quantized products (MMVQ for up to 8 rows, MMQ above) into a static
//! library of machine code for the one architecture in `CUDA_COMPUTE_CAP`, with no PTX the
//! driver could recompile, and launches them without checking the launch. On a card of
//! another generation (a build for 7.5 or 8.0 on a Hopper card) nothing runs and the
//! output is whatever its fresh allocation held: runs 32-33 (docs/benchmarks.md) saw
//! Int8/Int4 answers whose error changed from run to run. Our float kernels are PTX and
//! are not affected, and neither are candle's dequantize kernels.
//!
//! So before a quantized layer is used on a CUDA device, one small product per device and
//! activation dtype, through candle's own entry point, is checked against the host; a
//! layer whose kernels fail dequantizes its weight for a float GEMM instead (right
//! answers, a slower decode), and the load log says how to rebuild.

#[cfg(any(feature = "cuda", test))]
use candle_core::quantized::{GgmlDType, QMatMul};
#[cfg(any(feature = "cuda", test))]
use candle_core::{DType, Device, Module, Result, Tensor};

/// The probe's weight: outputs × inputs (inputs a multiple of every block size).
#[cfg(any(feature = "cuda", test))]
const OUT: usize = 64;
#[cfg(any(feature = "cuda", test))]
const IN: usize = 256;
/// Rows of the products: 1 takes MMVQ, 16 takes MMQ.
#[cfg(any(feature = "cuda", test))]
const ROWS: [usize; 2] = [1, 16];
/// Relative L2 error allowed: Q8_0 weights and Q8_1 activations (bf16 too) stay under 1%;
/// a product that never ran is off by ~100%.
#[cfg(any(feature = "cuda", test))]
const TOLERANCE: f32 = 0.05;

/// Whether `product` (candle's quantized matmul on `device`, in practice) computes
/// `x Wᵀ` for activations in `dtype`, within [`TOLERANCE`] of the host's f32 product.
#[cfg(any(feature = "cuda", test))]
pub(crate) fn product_is_right(
    device: &Device,
    dtype: DType,
    product: impl Fn(&QMatMul, &Tensor) -> Result<Tensor>,
) -> Result<bool> {
    let host = Device::Cpu;
    // Signed weights, positive inputs: each output is a sum of many terms of both signs,
    // so outputs that were never written (often zeros) or belong to another column are
    // ~100% off, never within the tolerance.
    let w = Tensor::from_vec(pattern(OUT * IN, 0.1, -0.05), (OUT, IN), &host)?;
    let reference = crate::quant::quantize_rows(&w, GgmlDType::Q8_0, &host)?.dequantize(&host)?;
    let weight = QMatMul::from_qtensor(crate::quant::quantize_rows(&w, GgmlDType::Q8_0, device)?)?;
    for rows in ROWS {
        let x = Tensor::from_vec(pattern(rows * IN, 1.0, 0.5), (rows, IN), &host)?;
        let expected = x.matmul(&reference.t()?)?.flatten_all()?.to_vec1::<f32>()?;
        let got = product(&weight, &x.to_dtype(dtype)?.to_device(device)?)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        if !close(&expected, &got) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// candle's own quantized matmul, the path the probe checks.
#[cfg(any(feature = "cuda", test))]
pub(crate) fn candle_product(weight: &QMatMul, x: &Tensor) -> Result<Tensor> {
    weight.forward(x)
}

/// `n` values in `[offset, offset + scale)`, spread without a period a kernel's tiling
/// could hide.
#[cfg(any(feature = "cuda", test))]
fn pattern(n: usize, scale: f32, offset: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (i.wrapping_mul(7919) % 1009) as f32 / 1009.0 * scale + offset)
        .collect()
}

/// Same length, all finite, and a relative L2 error under [`TOLERANCE`].
#[cfg(any(feature = "cuda", test))]
fn close(expected: &[f32], got: &[f32]) -> bool {
    if expected.len() != got.len() || got.iter().any(|v| !v.is_finite()) {
        return false;
    }
    let (mut err, mut norm) = (0f64, 0f64);
    for (e, g) in expected.iter().zip(got) {
        err += f64::from(e - g).powi(2);
        norm += f64::from(*e).powi(2);
    }
    norm > 0.0 && (err / norm).sqrt() < f64::from(TOLERANCE)
}

/// Whether candle's quantized kernels, built with `CUDA_COMPUTE_CAP` = `built` and the
/// extra nvcc flags `extra` (`NVCC_APPEND_FLAGS`), can run on a card of compute capability
/// `card`. Machine code for sm_XY runs on X.Y and the later minors of X; from 9.0 candle's
/// builder asks for the arch-specific sm_XYa, which runs on X.Y alone. PTX that `extra`
/// adds (`-gencode=arch=compute_AB,code=compute_AB`) runs on A.B and every later card.
/// `None`: `built` is empty (the build asked the card it ran on), so nothing is known.
pub fn build_runs_on(built: &str, extra: &str, card: (u32, u32)) -> Option<bool> {
    let built = built.trim().trim_start_matches("sm_").replace('.', "");
    let (cap, specific) = parse_arch(&built)?;
    let sass = if specific || cap >= 90 {
        cap == card_number(card)
    } else {
        cap / 10 == card.0 && cap % 10 <= card.1
    };
    let ptx = extra
        .split_whitespace()
        .filter_map(|flag| flag.split_once(",code=").map(|(_, codes)| codes))
        .flat_map(|codes| codes.trim_matches(['[', ']']).split(','))
        .filter_map(|code| parse_arch(code.strip_prefix("compute_")?))
        .any(|(cap, specific)| {
            if specific {
                cap == card_number(card)
            } else {
                cap <= card_number(card)
            }
        });
    Some(sass || ptx)
}

/// `75` → (75, false); `90a` → (90, true): the number, and whether a suffix makes the
/// code specific to that one architecture.
fn parse_arch(s: &str) -> Option<(u32, bool)> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    Some((digits.parse().ok()?, digits.len() < s.len()))
}

fn card_number((major, minor): (u32, u32)) -> u32 {
    major * 10 + minor
}

/// `CUDA_COMPUTE_CAP` and `NVCC_APPEND_FLAGS` as this build saw them (build.rs records
/// both, empty when unset).
const BUILT_COMPUTE_CAP: Option<&str> = option_env!("VLM_BUILT_CUDA_COMPUTE_CAP");
const BUILT_NVCC_APPEND_FLAGS: Option<&str> = option_env!("VLM_BUILT_NVCC_APPEND_FLAGS");

/// [`build_runs_on`] for this build (what `CUDA_COMPUTE_CAP` and `NVCC_APPEND_FLAGS` were
/// when it compiled).
pub fn this_build_runs_on(card: (u32, u32)) -> Option<bool> {
    build_runs_on(
        BUILT_COMPUTE_CAP.unwrap_or(""),
        BUILT_NVCC_APPEND_FLAGS.unwrap_or(""),
        card,
    )
}

#[cfg(feature = "cuda")]
pub(crate) use cuda::kernels_run;

#[cfg(feature = "cuda")]
mod cuda {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use candle_core::cuda_backend::DeviceId;
    use candle_core::{DType, Device, Result};

    type Verdicts = Mutex<HashMap<(DeviceId, DType), bool>>;
    static VERDICTS: OnceLock<Verdicts> = OnceLock::new();

    /// [`super::product_is_right`] for candle's kernels on `device`, once per device and
    /// dtype; a failure is logged with what to do.
    pub(crate) fn kernels_run(device: &candle_core::CudaDevice, dtype: DType) -> Result<bool> {
        let verdicts = VERDICTS.get_or_init(Default::default);
        let key = (device.id(), dtype);
        let known = verdicts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&key)
            .copied();
        if let Some(verdict) = known {
            return Ok(verdict);
        }
        let on = Device::Cuda(device.clone());
        let verdict = super::product_is_right(&on, dtype, super::candle_product)?;
        if !verdict {
            let (card, cap) = match vlm_contract::device::compute_capability(&on) {
                Some((major, minor)) => (format!("{major}.{minor}"), format!("{major}{minor}")),
                None => ("unknown".to_string(), "unknown".to_string()),
            };
            let built = super::BUILT_COMPUTE_CAP.unwrap_or("");
            let built = if built.is_empty() {
                "another card".to_string()
            } else {
                format!("CUDA_COMPUTE_CAP={built}")
            };
            tracing::warn!(
                target: crate::load_log::TARGET,
                "candle's Int8/Int4 kernels in this build were compiled for {built} and give \
                 wrong results on {} (compute capability {card}); quantized layers there \
                 dequantize their weights for a float GEMM instead: right answers, a slower \
                 decode and more memory. For full speed rebuild with CUDA_COMPUTE_CAP={cap}, or \
                 build once for several cards with NVCC_APPEND_FLAGS adding PTX \
                 (docs/troubleshooting.md, \"Old and small GPUs\")",
                vlm_contract::device::device_name(&on),
            );
        }
        verdicts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(key, verdict);
        Ok(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_rs_records_what_the_build_was_made_for() {
        // Read under another name than build.rs wrote, the check of which cards the
        // build runs on was silently skipped (the GPU check of 2026-12-06).
        assert!(
            BUILT_COMPUTE_CAP.is_some(),
            "VLM_BUILT_CUDA_COMPUTE_CAP unset"
        );
        assert!(
            BUILT_NVCC_APPEND_FLAGS.is_some(),
            "VLM_BUILT_NVCC_APPEND_FLAGS unset"
        );
    }

    #[test]
    fn candles_host_product_passes_the_probe_in_every_dtype() {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            assert!(
                product_is_right(&Device::Cpu, dtype, candle_product).unwrap(),
                "{dtype:?}"
            );
        }
    }

    #[test]
    fn a_product_that_never_ran_fails_the_probe() {
        // Zeros (a fresh allocation), another column's values (leftovers of an earlier
        // product: plausible magnitudes, wrong places), NaN.
        type Wrong = fn(Tensor) -> Result<Tensor>;
        let wrongs: [(&str, Wrong); 3] = [
            ("zeros", |y| y.zeros_like()),
            ("stale", |y| y.roll(1, 1)),
            ("nan", |y| y.affine(0.0, f64::NAN)),
        ];
        for (name, wrong) in wrongs {
            let product = |w: &QMatMul, x: &Tensor| wrong(candle_product(w, x)?);
            assert!(
                !product_is_right(&Device::Cpu, DType::F32, product).unwrap(),
                "{name}"
            );
        }
    }

    #[test]
    fn which_builds_run_on_which_cards() {
        let ptx75 = "-gencode=arch=compute_75,code=compute_75";
        let cases = [
            ("75", "", (7, 5), Some(true)),
            ("75", "", (8, 6), Some(false)),
            ("75", "", (9, 0), Some(false)),
            ("75", ptx75, (9, 0), Some(true)),
            ("75", ptx75, (6, 1), Some(false)),
            ("80", "", (8, 6), Some(true)),
            ("86", "", (8, 0), Some(false)),
            ("80", "", (9, 0), Some(false)),
            (
                "80",
                "-O3 -gencode=arch=compute_80,code=[sm_80,compute_80]",
                (12, 0),
                Some(true),
            ),
            ("90", "", (9, 0), Some(true)),
            ("sm_90a", "", (10, 0), Some(false)),
            (
                "90",
                "-gencode=arch=compute_90a,code=compute_90a",
                (10, 0),
                Some(false),
            ),
            ("", ptx75, (9, 0), None),
        ];
        for (built, extra, card, want) in cases {
            assert_eq!(
                build_runs_on(built, extra, card),
                want,
                "{built} {extra} {card:?}"
            );
        }
    }

    #[test]
    fn close_needs_a_small_relative_error() {
        assert!(close(&[1.0, 2.0], &[1.01, 1.99]));
        assert!(!close(&[1.0, 2.0], &[1.2, 1.8]));
        assert!(!close(&[1.0, 2.0], &[1.0]));
        assert!(!close(&[0.0, 0.0], &[0.0, 0.0]));
        assert!(!close(&[1.0, 2.0], &[f32::INFINITY, 2.0]));
    }
}
