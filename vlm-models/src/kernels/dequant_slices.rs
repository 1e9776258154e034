//! `x Wᵀ` for a quantized `W` through float GEMMs over slices of its rows, each slice
//! dequantized just before its product.
//!
//! Dequantizing a whole weight held it twice beside the model for the call (candle's f16,
//! then the activations' dtype): for Qwen3-VL-2B at int4 the fused gate/up's 100 MB was 40%
//! of what a 1024×768 photo added to the weights, 543 MB for Qwen2.5-VL-7B, and 1.2 GB for
//! the 2B's LM head where the quantized kernels do not run (run 36, docs/benchmarks.md).
//! Slices of at most `RuntimeOptions::dequant_slice_values` values (8M by default) cap
//! that at ~32 MB for any model, and each slice's GEMM is still thousands of columns wide.
//! Only the projections that dequantize on every call take slices: where candle's quantized
//! kernels run, a prefill's GEMM was 9.6% slower in slices (run 38) and takes whole weights.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Tensor};

/// Whether [`dequantized_matmul`] takes weights of this block type: those with a CUDA
/// dequantize kernel in candle (and so a CPU one).
pub fn dequantizes(dtype: GgmlDType) -> bool {
    use GgmlDType as G;
    matches!(
        dtype,
        G::Q4_0
            | G::Q4_1
            | G::Q5_0
            | G::Q5_1
            | G::Q8_0
            | G::Q2K
            | G::Q3K
            | G::Q4K
            | G::Q5K
            | G::Q6K
            | G::Q8K
    )
}

/// Rows of an `[n, k]` weight per slice: the most that hold about `slice_values` values,
/// but never fewer than [`MIN_SLICE_ROWS`], evened out over the slices it takes and, from 64
/// rows, rounded up to a multiple of 64. A slice's product is a column block of the output:
/// cuBLAS's bf16 GEMM took 3× the time on Qwen2.5-VL-7B's 2,229-row slices of gate/up and
/// 399-row slices of down (run 37: prefill 71 → 209 ms), its fast kernels wanting aligned
/// leading dimensions, and a narrow block leaves most of the card's SMs without a tile.
pub fn rows_per_slice(n: usize, k: usize, slice_values: usize) -> usize {
    const ALIGN: usize = 64;
    // Budgets below 1M values (tests) slice as finely as they ask.
    let floor = if slice_values >= 1 << 20 {
        MIN_SLICE_ROWS
    } else {
        1
    };
    let most = (slice_values / k.max(1)).max(floor).clamp(1, n.max(1));
    let slices = n.div_ceil(most);
    let even = n.div_ceil(slices.max(1));
    if most >= ALIGN {
        even.next_multiple_of(ALIGN).min(n)
    } else {
        even
    }
}

/// The narrowest slice [`rows_per_slice`] makes for a budget of 1M values or more: the
/// width of Qwen3-VL-2B's down-projection slices in run 37, which were no slower than the
/// whole weight.
pub const MIN_SLICE_ROWS: usize = 1024;

/// The narrowest slice that keeps a `rows`-row product's GEMM at two waves of 128×128
/// tiles on `device`'s SMs (a multiple of 64): for Qwen2.5-VL-7B's 1,026-row prefill on a
/// 132-SM card, 4,224 rows. 1 for few rows (a decode step through the fallback reads the
/// weight once whatever the slices) and off CUDA.
fn gemm_min_rows(device: &Device, rows: usize) -> usize {
    if rows < 64 {
        return 1;
    }
    let sms: usize = match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute as A;
            dev.cuda_stream()
                .context()
                .attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .unwrap_or(0)
                .max(0) as usize
        }
        _ => 0,
    };
    (2 * sms * 128 * 128)
        .div_ceil(rows)
        .next_multiple_of(64)
        .max(1)
}

/// `x Wᵀ` for `x [rows, k]` and a quantized `w [n, k]`, in `x`'s dtype: `w`'s rows
/// dequantized `rows_per_slice(n, k, slice_values)` at a time, or more where the GEMM of
/// `rows` rows needs wider slices to fill the card (`gemm_min_rows`). On CUDA and the
/// CPU; other devices dequantize the whole weight.
pub fn dequantized_matmul(x: &Tensor, w: &QTensor, slice_values: usize) -> Result<Tensor> {
    let (n, k) = w.shape().dims2()?;
    let (rows, xk) = x.dims2()?;
    if xk != k {
        candle_core::bail!(
            "dequantized matmul: weight {:?} against input {:?}",
            w.shape(),
            x.shape()
        );
    }
    let step = rows_per_slice(n, k, slice_values).max(gemm_min_rows(x.device(), rows).min(n));
    let sliceable = matches!(x.device(), Device::Cpu | Device::Cuda(_));
    if step >= n || !sliceable {
        let weight = dequantize_rows(w, 0, n, x.dtype(), x.device())?;
        return x.matmul(&weight.t()?);
    }
    let out = Tensor::zeros((rows, n), x.dtype(), x.device())?;
    for first in (0..n).step_by(step) {
        let count = step.min(n - first);
        let part = dequantize_rows(w, first, count, x.dtype(), x.device())?;
        out.slice_set(&x.matmul(&part.t()?)?, 1, first)?;
    }
    Ok(out)
}

/// Rows `first..first + count` of `w [n, k]`, dequantized into `dtype` on `device`: bf16
/// straight from the blocks where [`dequantize_rows_bf16`] has a kernel, else candle's
/// dequantization (f32, or f16 then a cast).
pub fn dequantize_rows(
    w: &QTensor,
    first: usize,
    count: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let (n, k) = w.shape().dims2()?;
    if first + count > n || count == 0 {
        candle_core::bail!("rows {first}..{} of a weight of {n}", first + count);
    }
    if dtype == DType::BF16 {
        if let Some(rows) = dequantize_rows_bf16(w, first, count, device)? {
            return Ok(rows);
        }
    }
    if first == 0 && count == n {
        // candle's own path, and the only one on devices other than CUDA and the CPU.
        return match dtype {
            DType::F32 => w.dequantize(device),
            _ => w.dequantize_f16(device)?.to_dtype(dtype),
        };
    }
    let block = w.dtype().block_size();
    if !k.is_multiple_of(block) {
        candle_core::bail!("a row of {k} values is not whole {block}-value blocks");
    }
    let row_bytes = k / block * w.dtype().type_size();
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => cuda::dequantize_rows(w, first * row_bytes, (count, k), dtype, device),
        Device::Cpu => {
            let data = w.data()?;
            let part = &data[first * row_bytes..(first + count) * row_bytes];
            let storage = candle_core::quantized::QStorage::from_data(
                std::borrow::Cow::Borrowed(part),
                device,
                w.dtype(),
            )?;
            let part = QTensor::new(storage, (count, k))?;
            match dtype {
                DType::F32 => part.dequantize(device),
                _ => part.dequantize_f16(device)?.to_dtype(dtype),
            }
        }
        _ => candle_core::bail!("slices of a quantized weight on {device:?}"),
    }
}

/// Rows `first..first + count` of `w [n, k]` dequantized straight to bf16 on CUDA by our
/// kernels (kernels/dequant.cu: Q8_0, Q4_0, Q4_K, Q6_K), without candle's f16 copy and the
/// cast pass after it; `None` for other block types, devices, or builds without CUDA.
pub fn dequantize_rows_bf16(
    w: &QTensor,
    first: usize,
    count: usize,
    device: &Device,
) -> Result<Option<Tensor>> {
    let (n, k) = w.shape().dims2()?;
    if first + count > n || count == 0 {
        candle_core::bail!("rows {first}..{} of a weight of {n}", first + count);
    }
    let block = w.dtype().block_size();
    #[cfg(feature = "cuda")]
    if device.is_cuda()
        && k.is_multiple_of(block)
        && crate::kernels::cuda::bf16_kernels(w.dtype()).is_some()
    {
        let row_bytes = k / block * w.dtype().type_size();
        return crate::kernels::cuda::dequantize_bf16(w, first * row_bytes, (count, k), device)
            .map(Some);
    }
    let _ = (block, k, device);
    Ok(None)
}

/// Rows `ids` (u32) of the quantized embedding table `w [vocab, hidden]` looked up
/// straight to bf16 on CUDA (kernels/dequant.cu), `[ids, hidden]`; `None` where
/// [`dequantize_rows_bf16`] has no kernel. candle's lookup writes f32 and needs a cast
/// after it, and it is the last of a quantized model's calls into candle's quantized PTX
/// module, whose load takes card memory of its own.
pub fn lookup_rows_bf16(w: &QTensor, ids: &Tensor) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if ids.device().is_cuda()
        && ids.dtype() == DType::U32
        && crate::kernels::cuda::bf16_kernels(w.dtype()).is_some()
    {
        let (_, hidden) = w.shape().dims2()?;
        if hidden.is_multiple_of(w.dtype().block_size()) {
            return crate::kernels::cuda::embed_bf16(w, &ids.contiguous()?).map(Some);
        }
    }
    let _ = (w, ids);
    Ok(None)
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{kernels, WrapErr};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{bail, DType, Device, Result, Tensor};

    /// `rows × k` values from `offset` bytes into `w`'s blocks (whole rows of `k`)
    /// through candle's dequantize kernels, in `dtype`: its f32 kernel for f32, its f16
    /// kernel otherwise (what `QTensor::dequantize_f16` runs).
    pub(super) fn dequantize_rows(
        w: &QTensor,
        offset: usize,
        (rows, k): (usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let values = rows * k;
        let half = dtype != DType::F32;
        let Some((name, threads, blocks, count_arg)) = launch_shape(w.dtype(), values, half) else {
            bail!("no CUDA dequantize kernel for {:?}", w.dtype());
        };
        // Every value is written by the kernel.
        let out = crate::kernels::cuda::empty_on(
            device,
            if half { DType::F16 } else { DType::F32 },
            (rows, k).into(),
        )?;
        crate::kernels::cuda::with_addresses(&[Some(&out)], |dev, p| {
            let stream = dev.cuda_stream();
            let (src, _src_sync) = w.device_ptr_with_guard(&stream)?;
            let src = src as u64 + offset as u64;
            let func = dev.get_or_load_func(name, &kernels::QUANTIZED)?;
            let mut a = func.builder();
            a.arg(&src).arg(&p[0]);
            let count_arg = count_arg.map(|c| c as i32);
            if let Some(c) = &count_arg {
                a.arg(c);
            }
            let cfg = LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (threads as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the kernel reads whole blocks of `values` values from `src`, inside
            // `w`'s buffer (the caller checked the rows), and writes `values` values to
            // `dst`, which holds that many; the grid is candle's own for this kernel.
            unsafe { a.launch(cfg) }.w()?;
            Ok(())
        })?;
        if half && dtype != DType::F16 {
            out.to_dtype(dtype)
        } else {
            Ok(out)
        }
    }

    /// candle's dequantize kernel for `dtype` into f16 (`half`) or f32 and its launch for
    /// `values` values: name, threads per block, blocks, and the count argument the
    /// non-K kernels take (as `QCudaStorage::dequantize_f16` launches them).
    fn launch_shape(
        dtype: GgmlDType,
        values: usize,
        half: bool,
    ) -> Option<(&'static str, usize, usize, Option<usize>)> {
        use GgmlDType as G;
        let blocks = values.div_ceil(256);
        // candle's CUDA_DEQUANTIZE_BLOCK_SIZE for Q5_0/Q5_1.
        let q5 = (256, values.div_ceil(2 * 256), Some(values));
        let (f16_name, f32_name, (threads, blocks, count)) = match dtype {
            G::Q4_0 => (
                "dequantize_block_q4_0_f16",
                "dequantize_block_q4_0_f32",
                (32, blocks, Some(values / 32)),
            ),
            G::Q4_1 => (
                "dequantize_block_q4_1_f16",
                "dequantize_block_q4_1_f32",
                (32, blocks, Some(values / 32)),
            ),
            G::Q5_0 => ("dequantize_block_q5_0_f16", "dequantize_block_q5_0_f32", q5),
            G::Q5_1 => ("dequantize_block_q5_1_f16", "dequantize_block_q5_1_f32", q5),
            G::Q8_0 => (
                "dequantize_block_q8_0_f16",
                "dequantize_block_q8_0_f32",
                (32, blocks, Some(values / 32)),
            ),
            G::Q2K => (
                "dequantize_block_q2_K_f16",
                "dequantize_block_q2_K_f32",
                (64, blocks, None),
            ),
            G::Q3K => (
                "dequantize_block_q3_K_f16",
                "dequantize_block_q3_K_f32",
                (64, blocks, None),
            ),
            G::Q4K => (
                "dequantize_block_q4_K_f16",
                "dequantize_block_q4_K_f32",
                (32, blocks, None),
            ),
            G::Q5K => (
                "dequantize_block_q5_K_f16",
                "dequantize_block_q5_K_f32",
                (64, blocks, None),
            ),
            G::Q6K => (
                "dequantize_block_q6_K_f16",
                "dequantize_block_q6_K_f32",
                (64, blocks, None),
            ),
            G::Q8K => (
                "dequantize_block_q8_K_f16",
                "dequantize_block_q8_K_f32",
                (32, blocks, None),
            ),
            _ => return None,
        };
        Some((
            if half { f16_name } else { f32_name },
            threads,
            blocks,
            count,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::Module;

    #[test]
    fn slices_cover_the_rows_evenly_within_the_budget() {
        assert_eq!(rows_per_slice(12288, 2048, 8 << 20), 4096);
        assert_eq!(rows_per_slice(2048, 6144, 8 << 20), 1024);
        assert_eq!(rows_per_slice(100, 10, 1 << 20), 100);
        assert_eq!(rows_per_slice(10, 100, 1), 1);
        // Qwen2.5-VL-7B's gate/up and down: multiples of 64 rows.
        assert_eq!(rows_per_slice(37_888, 3584, 8 << 20), 2240);
        assert_eq!(rows_per_slice(3584, 18_944, 8 << 20), 896);
        for (n, k, budget) in [
            (151_936, 2048, 8 << 20),
            (37_888, 3584, 8 << 20),
            (3584, 18_944, 8 << 20),
            (97, 32, 640),
        ] {
            let step = rows_per_slice(n, k, budget);
            // Within the budget but for the rounding to 64 rows and the narrowest slice.
            assert!(
                step * k <= budget + 63 * k || step <= MIN_SLICE_ROWS,
                "{n} {k}: {step} rows"
            );
            assert!(
                step.is_multiple_of(64) || step < 64 || step == n,
                "{n} {k}: {step} rows"
            );
            // As few slices as the budget allows.
            assert!(
                n.div_ceil(step) <= n.div_ceil(budget / k),
                "{n} {k}: {step} rows"
            );
        }
    }

    /// Slices give what the whole weight gives, in each block type our policies write and
    /// at a slice size that leaves a short last slice.
    #[test]
    fn a_sliced_product_equals_the_whole_one() {
        let dev = Device::Cpu;
        let (n, k, rows) = (97, 512, 5);
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (rows, k), &dev).unwrap();
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let whole = dequantized_matmul(&x, &q, usize::MAX).unwrap();
            let sliced = dequantized_matmul(&x, &q, 20 * k).unwrap();
            assert_eq!(sliced.dims(), &[rows, n]);
            let diff = (&sliced - &whole)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "{dtype:?}: {diff}");
            // And both what the dequantized weight gives through candle's matmul.
            let dq = q.dequantize(&dev).unwrap();
            let want = QMatMul::Tensor(dq).forward(&x).unwrap();
            let diff = (&whole - &want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "{dtype:?} whole: {diff}");
        }
    }

    #[test]
    fn rows_out_of_range_are_an_error() {
        let w = Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        assert!(dequantize_rows(&q, 3, 2, DType::F32, &Device::Cpu).is_err());
        assert!(dequantize_rows(&q, 1, 0, DType::F32, &Device::Cpu).is_err());
        let rows = dequantize_rows(&q, 1, 3, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(rows.dims(), &[3, 32]);
    }
}
