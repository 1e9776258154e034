//! Fused CUDA kernels for the decoder: at one new token per sequence, candle would issue
//! a launch per small op and the host, not the GPU, would set the pace (see
//! docs/benchmarks.md). A few kernels replace ~15 launches per layer:
//!
//! - [`write_kv`]: bias, per-head key norm (Qwen3) and RoPE of the new key, written with
//!   its value into the preallocated cache in place;
//! - [`decode_attention`]: the same for the query, then attention over the cache with GQA
//!   read in place and left padding skipped; [`decode_attention_q8`] with [`NewKv::Write`]
//!   also prepares and writes the new key and value itself, as the decoder runs it;
//! - [`prefill_qkv`]: a prompt's q, k and v from the fused projection (bias, per-head
//!   norms, RoPE, the heads' layout, the cache writes) in one launch, with
//!   [`RuntimeOptions::prefill_kernels`];
//! - [`silu_mul`]: `silu(gate) · up` from the fused gate/up projection (every step,
//!   prefill included); [`silu_mul_q8`] also writes the product as the down projection's
//!   Q8_1 input ([`Q8Input`]);
//! - [`add_rms_norm`]: a residual add and the RMSNorm after it, optionally writing the
//!   normed rows as a quantized projection's Q8_1 input;
//! - [`gemv`]: `x Wᵀ + b` for a batch-1 decode step's projections (up to 8 rows with
//!   [`RuntimeOptions::gemv_max_rows`]), one warp per output column.
//!
//! For the Qwen-VL vision towers (`vision.cu`):
//! - [`vision_qkv`]: the fused q/k/v projection split into heads, RoPE on q and k, the
//!   scale on q;
//! - [`segment_attention`]: attention within each short segment (Qwen2.5-VL's windows),
//!   every segment and head in one launch.
//!
//! On the tensor cores (`attention.cu`, cards of compute capability 8.0 and above, bf16
//! and f16):
//! - [`segment_flash_attention`]: attention within segments of any length (a whole image,
//!   or its windows) without materialising the scores;
//! - [`prefill_flash_attention`]: the decoder's causal prefill over the KV cache, GQA
//!   read in place, left padding skipped.
//!
//! For every family's layers (`ops.cu`):
//! - [`add_bias`]: a linear layer's bias (candle's broadcast add is slow on CUDA);
//! - [`softmax`]: softmax over the last dimension, optionally with the causal and
//!   left-padding masks computed in the kernel instead of added as a tensor;
//! - [`gated_silu`]: `silu(gate + b) · (up + b)` from two unbiased projections;
//! - with [`RuntimeOptions::prefill_kernels`], [`add_bias`], [`gated_silu`] and
//!   [`silu_mul`] take eight values a thread in 16-byte accesses (`*_wide`), for the
//!   prefill's and vision tower's many rows;
//! - [`device_argmax`]: greedy decoding's pick and the logits' finiteness check, many
//!   blocks to a row (candle's argmax reduces a row in one block).
//!
//! They exist with the `cuda` feature only; [`available`] says whether a model may use
//! them, and the unfused path (the CPU path, and the reference in the GPU check) stays the
//! definition of what they compute. [`RuntimeOptions::fused_kernels`] off turns them off,
//! to measure what they bring with one binary. Every decision here takes the
//! [`RuntimeOptions`] of the model that asks, so models loaded with different options
//! share a process; [`RuntimeOptions::early_launch`] alone belongs to the device
//! ([`apply_device_settings`]): with it, on compute capability 9.0 and up, the decode
//! step's kernels start while the kernel before them finishes (`early_launch.rs`).

use candle_core::{DType, Device, Result, Tensor};
use vlm_contract::RuntimeOptions;

#[cfg(feature = "cuda")]
mod cuda;
pub mod dequant_slices;
#[cfg(feature = "cuda")]
mod device_picks;
#[cfg(feature = "cuda")]
mod early_launch;
#[cfg(feature = "cuda")]
mod graph;
#[cfg(feature = "cuda")]
mod pinned;
#[cfg(feature = "cuda")]
mod quant_matvec;
mod quant_probe;
#[cfg(feature = "cuda")]
mod step_uploads;
pub use quant_probe::{build_runs_on, this_build_runs_on};

/// Head counts and size of a decoder's attention.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Query heads.
    pub q: usize,
    /// Key/value heads (divides `q`).
    pub kv: usize,
    /// Head size.
    pub dim: usize,
}

/// A per-head RMSNorm (Qwen3's q/k norms): weight `[dim]` and epsilon.
#[derive(Debug, Clone, Copy)]
pub struct HeadNorm<'a> {
    /// Weight, in the kernels' dtype.
    pub weight: &'a Tensor,
    /// Epsilon.
    pub eps: f64,
}

/// Applies `runtime`'s device-wide kernel settings to a model's `device` at load:
/// [`RuntimeOptions::early_launch`] on turns early launches on for every model on it.
pub fn apply_device_settings(device: &Device, runtime: &RuntimeOptions) {
    #[cfg(feature = "cuda")]
    if let (Device::Cuda(dev), true) = (device, runtime.early_launch) {
        early_launch::turn_on(dev);
    }
    #[cfg(not(feature = "cuda"))]
    let _ = (device, runtime);
}

/// Whether the kernels serve tensors in `dtype` on `device`: a CUDA build on a CUDA device,
/// f32/bf16/f16, [`RuntimeOptions::fused_kernels`] on.
pub fn enabled(runtime: &RuntimeOptions, device: &Device, dtype: DType) -> bool {
    cfg!(feature = "cuda")
        && device.is_cuda()
        && matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
        && runtime.fused_kernels
}

/// Whether the decode kernels serve a decoder of `head_dim` in `dtype` on `device`:
/// [`enabled`], head sizes 16 to 256 in powers of two (the tiny test models have 16, so the
/// GPU check runs the kernels against the goldens).
pub fn available(runtime: &RuntimeOptions, device: &Device, dtype: DType, head_dim: usize) -> bool {
    enabled(runtime, device, dtype) && matches!(head_dim, 16 | 32 | 64 | 128 | 256)
}

/// Rows [`gemv`] takes at most.
pub const GEMV_ROWS: usize = 8;

/// Most rows for which [`gemv`] runs under `runtime`: [`RuntimeOptions::gemv_max_rows`],
/// at most [`GEMV_ROWS`]. On an H200 (runs 14 and 15) it decoded 3-5% faster than cuBLAS
/// at one row and made batch-8 generation 15-30% slower, so more rows are opt-in.
pub fn gemv_row_limit(runtime: &RuntimeOptions) -> usize {
    runtime.gemv_max_rows.min(GEMV_ROWS)
}

/// Whether [`gemv`] takes `x Wᵀ (+ bias)` for `x [m, k]` and a float weight `w [n, k]`:
/// the fused kernels available, at most [`gemv_row_limit`] rows, k a multiple of 8, one
/// dtype, `w` contiguous from a 16-byte boundary.
pub fn gemv_applies(
    runtime: &RuntimeOptions,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> bool {
    few_row_operands(runtime, x, w, bias)
        .is_some_and(|m| (1..=gemv_row_limit(runtime)).contains(&m))
}

/// The rows of `x` where the few-row products ([`gemv`], [`mma_gemv`]) can take `x Wᵀ (+
/// bias)`: the fused kernels available, one dtype, k matching and a multiple of 8, `w`
/// contiguous from a 16-byte boundary.
fn few_row_operands(
    runtime: &RuntimeOptions,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> Option<usize> {
    let (Ok((m, k)), Ok((_, wk))) = (x.dims2(), w.dims2()) else {
        return None;
    };
    let fits = enabled(runtime, w.device(), w.dtype())
        && x.dtype() == w.dtype()
        && bias.is_none_or(|b| b.dtype() == w.dtype())
        && k == wk
        && k % 8 == 0
        && w.is_contiguous()
        && w.layout().start_offset().is_multiple_of(8);
    fits.then_some(m)
}

/// `x Wᵀ (+ bias)` for `x [m ≤ GEMV_ROWS, k]` and `w [n, k]` → `[m, n]`. Launched early
/// ([`RuntimeOptions::early_launch`]), the kernel requests `w` before waiting for the
/// kernel ahead of it in the stream (see `early_launch.rs`): `w` is a weight, not the
/// output of the launch just before this one.
pub fn gemv(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::gemv(&x.contiguous()?, w, bias);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (x, w, bias);
        no_cuda()
    }
}

/// Rows [`mma_gemv`] takes at most: a batch of 32 sequences' decode step.
pub const MMA_GEMV_ROWS: usize = 32;

/// Whether [`mma_gemv`] takes `x Wᵀ (+ bias)`: a build for compute capability 8.0 and
/// above, bf16 or f16, 2 to [`RuntimeOptions::mma_gemv_max_rows`] (at most
/// [`MMA_GEMV_ROWS`]) rows of operands as [`gemv_applies`] wants them.
pub fn mma_gemv_applies(
    runtime: &RuntimeOptions,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> bool {
    cfg!(vlm_flash)
        && matches!(w.dtype(), DType::BF16 | DType::F16)
        && few_row_operands(runtime, x, w, bias)
            .is_some_and(|m| (2..=runtime.mma_gemv_max_rows.min(MMA_GEMV_ROWS)).contains(&m))
}

/// `x Wᵀ (+ bias)` for `x [m ≤ MMA_GEMV_ROWS, k]` and `w [n, k]` → `[m, n]` on the tensor
/// cores, for operands [`mma_gemv_applies`] accepts at any row count (the models call it
/// from 2 rows: [`gemv`] keeps one). Launched early as [`gemv`] is.
pub fn mma_gemv(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let wide = x.dim(0)? > MMA_GEMV_NARROW_ROWS;
    mma_gemv_tiles(x, w, bias, wide)
}

/// Most rows for which [`mma_gemv`] gives each warp one 16-output tile; above (only where
/// [`RuntimeOptions::mma_gemv_max_rows`] is raised past its default), two, so that each of
/// x's fragments feeds two products. At 32 rows neither beat cuBLAS on Qwen2.5-VL-7B's
/// gate/up and down projections (H100, run 46).
pub const MMA_GEMV_NARROW_ROWS: usize = 16;

/// [`mma_gemv`] with one 16-output tile a warp, or two (`wide`), whatever the rows: to
/// measure each.
pub fn mma_gemv_tiles(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, wide: bool) -> Result<Tensor> {
    #[cfg(all(feature = "cuda", vlm_flash))]
    return cuda::mma_gemv(&x.contiguous()?, w, bias, wide);
    #[cfg(not(all(feature = "cuda", vlm_flash)))]
    {
        let _ = (x, w, bias, wide);
        no_flash()
    }
}

#[cfg(not(feature = "cuda"))]
fn no_cuda<T>() -> Result<T> {
    candle_core::bail!("the fused kernels need a build with the cuda feature")
}

/// `silu(gate) · up` for `gate_up [.., 2·inter]` (gate first) → `[.., inter]`; `wide`
/// ([`RuntimeOptions::prefill_kernels`]): eight values a thread in 16-byte accesses where
/// the shapes and addresses allow (the same values).
pub fn silu_mul(gate_up: &Tensor, inter: usize, wide: bool) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::silu_mul(&gate_up.contiguous()?, inter, None, wide);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (gate_up, inter, wide);
        no_cuda()
    }
}

/// A decode step's activations already in the Q8_1 blocks a quantized projection reads,
/// written by the kernel that made them ([`add_rms_norm`], [`silu_mul_q8`]) instead of by
/// a quantize launch of the projection's own: ~110 launches fewer per step of a 28-layer
/// int4 model. Consumed by the next projection of the thread ([`Linear::forward_q8`]);
/// nothing may quantize in between (the blocks live in the thread's scratch).
///
/// [`Linear::forward_q8`]: crate::layers::Linear::forward_q8
pub struct Q8Input {
    #[cfg(feature = "cuda")]
    inner: quant_matvec::Q8Activations,
    #[cfg(not(feature = "cuda"))]
    _never: std::convert::Infallible,
}

/// Whether a decode step's projection of `w` for activations in `dtype` on `device` takes
/// [`Q8Input`]: graphs on (whose per-thread scratch the blocks live in), a block type with
/// an MMVQ kernel.
pub fn takes_q8(
    runtime: &RuntimeOptions,
    device: &Device,
    w: &candle_core::quantized::QTensor,
    dtype: DType,
) -> bool {
    #[cfg(feature = "cuda")]
    {
        graphs_enabled(runtime, device) && quant_matvec::has_kernels(w, dtype)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (runtime, device, w, dtype);
        false
    }
}

/// The residual add and the RMSNorm after it in one launch, as a decode step's layers
/// meet them: `(x + delta, norm(x + delta))`, or `(x, norm(x))` without `delta`; with
/// `q8`, the normed values also as a [`Q8Input`] (for at most
/// [`QUANT_MATVEC_ROWS`] rows; `None` beyond). Same values as candle's add and norm.
pub fn add_rms_norm(
    x: &Tensor,
    delta: Option<&Tensor>,
    norm: HeadNorm<'_>,
    q8: bool,
) -> Result<(Tensor, Tensor, Option<Q8Input>)> {
    #[cfg(feature = "cuda")]
    {
        let x = x.contiguous()?;
        let delta = delta.map(Tensor::contiguous).transpose()?;
        let blocks = if q8 {
            quant_matvec::Q8Activations::for_values(x.device(), x.dims(), x.dtype())?
        } else {
            None
        };
        let (sum, normed) = cuda::add_rms_norm(&x, delta.as_ref(), norm, blocks.as_ref(), false)?;
        Ok((sum, normed, blocks.map(|inner| Q8Input { inner })))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (x, delta, norm, q8);
        no_cuda()
    }
}

/// [`add_rms_norm`] for a prompt's or the vision tower's many rows, without the Q8_1
/// blocks: rows of 1,024 to 4,096 values take 256 threads each (four rows an SM), the same
/// bits ([`RuntimeOptions::prefill_kernels`]).
pub fn add_rms_norm_prompt(
    x: &Tensor,
    delta: Option<&Tensor>,
    norm: HeadNorm<'_>,
) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    {
        let x = x.contiguous()?;
        let delta = delta.map(Tensor::contiguous).transpose()?;
        cuda::add_rms_norm(&x, delta.as_ref(), norm, None, true)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (x, delta, norm);
        no_cuda()
    }
}

/// [`silu_mul`] with the product also as a [`Q8Input`] for the down projection (at most
/// [`QUANT_MATVEC_ROWS`] rows; `None` beyond, or off CUDA).
pub fn silu_mul_q8(gate_up: &Tensor, inter: usize) -> Result<(Tensor, Option<Q8Input>)> {
    #[cfg(feature = "cuda")]
    {
        let gate_up = gate_up.contiguous()?;
        let mut dims = gate_up.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = inter;
        }
        match quant_matvec::Q8Activations::for_values(gate_up.device(), &dims, gate_up.dtype())? {
            Some(inner) => {
                let out = cuda::silu_mul(&gate_up, inter, Some(&inner), false)?;
                Ok((out, Some(Q8Input { inner })))
            }
            None => Ok((cuda::silu_mul(&gate_up, inter, None, false)?, None)),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (gate_up, inter);
        no_cuda()
    }
}

/// `x Wᵀ` from activations already quantized ([`Q8Input`]) → `[.., n]` in their dtype;
/// `None` when `w` does not fit them (another k, a block type without a kernel).
pub fn quant_matvec_q8(
    q8: &Q8Input,
    w: &candle_core::quantized::QTensor,
) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        if !q8.inner.fits(w) {
            return Ok(None);
        }
        quant_matvec::matvec_q8(&q8.inner, w).map(Some)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = w;
        match q8._never {}
    }
}

/// The cache length after a decode step's write, as the decode kernels take it: `value`
/// from the host, or, for a step captured in a CUDA graph, read by the kernels from
/// `on_device` when they run, so that each replay writes and attends where that step's
/// buffer says (`value` is then what it holds at capture, for the bounds checks).
#[derive(Debug, Clone, Copy)]
pub struct CacheLen<'a> {
    /// `[1]` u32 on the kernels' device, for a captured step.
    pub on_device: Option<&'a Tensor>,
    /// The length now.
    pub value: usize,
}

/// Writes the new token's key and value into `k_cache`/`v_cache` (`[b, kv, cap, dim]`) at
/// position `len - 1`, from the fused projection `qkv` (`[b, (q + 2 kv)·dim]`, before its
/// `bias`), with the key's RoPE (`cos`/`sin` `[b, dim/2]`) and optional norm.
#[allow(clippy::too_many_arguments)]
pub fn write_kv(
    qkv: &Tensor,
    bias: Option<&Tensor>,
    cos: &Tensor,
    sin: &Tensor,
    k_norm: Option<HeadNorm<'_>>,
    heads: &Heads,
    k_cache: &Tensor,
    v_cache: &Tensor,
    len: CacheLen<'_>,
) -> Result<()> {
    #[cfg(feature = "cuda")]
    return cuda::write_kv(
        &qkv.contiguous()?,
        bias,
        &cos.contiguous()?,
        &sin.contiguous()?,
        k_norm,
        heads,
        k_cache,
        v_cache,
        len,
    );
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (qkv, bias, cos, sin, k_norm, heads, k_cache, v_cache, len);
        no_cuda()
    }
}

/// A prompt's q, k and v in one launch, what the unfused prefill computes bit for bit:
/// from the fused projection `qkv` (`[b, l, (q + 2 kv)·dim]`, plus `bias` if given), the
/// optional per-head norms (Qwen3), RoPE from `cos`/`sin` (`[b, l, dim/2]`); returns q as
/// `[b, q, l, dim]` and writes k and v into `k_cache`/`v_cache` (`[b, kv, cap, dim]`) at
/// positions `pos .. pos + l`. dim even, at most 256.
#[allow(clippy::too_many_arguments)]
pub fn prefill_qkv(
    qkv: &Tensor,
    bias: Option<&Tensor>,
    cos: &Tensor,
    sin: &Tensor,
    q_norm: Option<HeadNorm<'_>>,
    k_norm: Option<HeadNorm<'_>>,
    heads: &Heads,
    k_cache: &Tensor,
    v_cache: &Tensor,
    pos: usize,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::prefill_qkv(
        &qkv.contiguous()?,
        bias,
        &cos.contiguous()?,
        &sin.contiguous()?,
        q_norm,
        k_norm,
        heads,
        k_cache,
        v_cache,
        pos,
    );
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (
            qkv, bias, cos, sin, q_norm, k_norm, heads, k_cache, v_cache, pos,
        );
        no_cuda()
    }
}

/// Where [`decode_attention_q8`] finds the new token's key and value.
#[derive(Debug, Clone, Copy)]
pub enum NewKv<'a> {
    /// Already in the caches at `len - 1`: [`write_kv`] put them there.
    Cached,
    /// Prepared from `qkv` by the attention itself, as [`write_kv`] prepares them (with the
    /// key's norm, if any), attended from there and written into the caches at `len - 1`:
    /// one launch a layer fewer, and the cached rows read while the step's projection
    /// still runs. The same bits as `write_kv` and then [`NewKv::Cached`].
    Write {
        /// Qwen3's per-head key norm.
        k_norm: Option<HeadNorm<'a>>,
    },
}

/// Attention of the new token's query (prepared from `qkv` like the key in [`write_kv`];
/// its scale is in the weights) over the first `len` cached positions, skipping the
/// first `pad[b]` (`[b]` u32) of each sequence. Returns `[b, q·dim]`.
#[allow(clippy::too_many_arguments)]
pub fn decode_attention(
    qkv: &Tensor,
    bias: Option<&Tensor>,
    cos: &Tensor,
    sin: &Tensor,
    q_norm: Option<HeadNorm<'_>>,
    heads: &Heads,
    k_cache: &Tensor,
    v_cache: &Tensor,
    len: CacheLen<'_>,
    pad: Option<&Tensor>,
) -> Result<Tensor> {
    Ok(decode_attention_q8(
        qkv,
        bias,
        cos,
        sin,
        q_norm,
        heads,
        k_cache,
        v_cache,
        len,
        pad,
        false,
        NewKv::Cached,
        None,
        &RuntimeOptions::default(),
    )?
    .0)
}

/// [`decode_attention`]; with `q8`, the output also as the output projection's
/// [`Q8Input`] where it can be (heads of at least 32 values, at most 8 rows), which spares
/// that projection its own quantize launch. With `slice_counters` (`[b · q]` u32, zeros
/// between calls, as the decoder's KV caches hold them) the last block of each head merges
/// the key slices, where a second launch did. `runtime` gives the blocks the key slices aim
/// for ([`RuntimeOptions::decode_slice_blocks`]).
#[allow(clippy::too_many_arguments)]
pub fn decode_attention_q8(
    qkv: &Tensor,
    bias: Option<&Tensor>,
    cos: &Tensor,
    sin: &Tensor,
    q_norm: Option<HeadNorm<'_>>,
    heads: &Heads,
    k_cache: &Tensor,
    v_cache: &Tensor,
    len: CacheLen<'_>,
    pad: Option<&Tensor>,
    q8: bool,
    new_kv: NewKv<'_>,
    slice_counters: Option<&Tensor>,
    runtime: &RuntimeOptions,
) -> Result<(Tensor, Option<Q8Input>)> {
    #[cfg(feature = "cuda")]
    {
        let blocks = if q8 && heads.dim >= 32 {
            let dims = [qkv.dim(0)?, 1, heads.q * heads.dim];
            quant_matvec::Q8Activations::for_values(qkv.device(), &dims, k_cache.dtype())?
        } else {
            None
        };
        let out = cuda::decode_attention(
            &qkv.contiguous()?,
            bias,
            &cos.contiguous()?,
            &sin.contiguous()?,
            q_norm,
            heads,
            k_cache,
            v_cache,
            len,
            pad,
            blocks.as_ref(),
            new_kv,
            slice_counters,
            runtime,
        )?;
        Ok((out, blocks.map(|inner| Q8Input { inner })))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (
            qkv,
            bias,
            cos,
            sin,
            q_norm,
            heads,
            k_cache,
            v_cache,
            len,
            pad,
            q8,
            new_kv,
            slice_counters,
            runtime,
        );
        no_cuda()
    }
}

/// Rows [`quant_matvec`] takes at most.
pub const QUANT_MATVEC_ROWS: usize = 8;

/// `x Wᵀ` for a quantized `w` and `x [.., k]` of at most 8 rows on CUDA (a decode step's
/// projections), with the activations' scratch owned by the calling thread (candle's
/// own path shares one per device; see quant_matvec.rs). `None`: graphs are off, or the
/// shapes, block type or device are not these kernels': use candle's matmul.
pub fn quant_matvec(
    runtime: &RuntimeOptions,
    x: &Tensor,
    w: &candle_core::quantized::QTensor,
) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        // Only with graphs, which need the per-thread scratch; eager steps keep candle's
        // path.
        if !graphs_enabled(runtime, x.device()) || !quant_matvec::applies(x, w) {
            return Ok(None);
        }
        quant_matvec::matvec(x, w).map(Some)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (runtime, x, w);
        Ok(None)
    }
}

/// Rows from which a quantized projection on CUDA dequantizes its weight and runs a float
/// GEMM under `runtime` ([`RuntimeOptions::quant_gemm_rows`], raised to one more than the
/// matvec's [`QUANT_MATVEC_ROWS`]); `None`: never. By default prefills and batches (hundreds
/// of rows and more) take the dequantized GEMM and decode steps (a row per sequence) keep
/// the quantized matvec: run 28 (H200, Qwen2.5-VL-7B int4, 1024×768) 0.398 → 0.337 s per
/// photo, batch 8 3.84 → 6.04 photos/s, peak 9,361 → 8,273 MiB; decode unchanged.
pub fn quant_gemm_threshold(runtime: &RuntimeOptions) -> Option<usize> {
    let rows = runtime.quant_gemm_rows;
    (rows > 0).then_some(rows.max(QUANT_MATVEC_ROWS + 1))
}

static QUANT_GEMM_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many projections [`quantized_gemm`] has run in this process.
pub fn quant_gemm_calls() -> usize {
    QUANT_GEMM_CALLS.load(std::sync::atomic::Ordering::Relaxed)
}

/// `x Wᵀ` for a quantized `w` and `x [.., k]` of many rows on CUDA, through the whole weight
/// dequantized for this call (f16, then the activations' dtype) and cuBLAS's GEMM:
/// candle's quantized matmul for many rows quantizes the activations and runs MMQ
/// kernels, 3.6× slower than bf16 for Qwen2.5-VL-7B's prefill at int4 (111 vs 31 ms, run
/// 23), while dequantizing the weights costs one pass over them. Whole weights, not
/// [`dequant_slices`]: slices made the 7B's prefill 9.6% slower for 322 MiB less at the
/// peak and did not lower the 2B's (run 38); the projections that dequantize on every call
/// ([`dequantized_projection`]) keep them. `None`:
/// fewer rows than [`quant_gemm_threshold`] (or none), not CUDA, or a block type candle
/// cannot dequantize there.
pub fn quantized_gemm(
    runtime: &RuntimeOptions,
    x: &Tensor,
    w: &candle_core::quantized::QTensor,
) -> Result<Option<Tensor>> {
    match quant_gemm_threshold(runtime) {
        Some(threshold) if x.device().is_cuda() => dequantized_gemm(x, w, threshold, 0),
        _ => Ok(None),
    }
}

/// Whether candle's quantized matmul kernels give right answers on `device` for
/// activations in `dtype` (quant_probe.rs says why they may not): checked once per CUDA
/// device and dtype, always true elsewhere.
pub fn quant_kernels_run(device: &Device, dtype: DType) -> Result<bool> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        return quant_probe::kernels_run(cuda, dtype);
    }
    let _ = (device, dtype);
    Ok(true)
}

/// `x Wᵀ` through `w` dequantized for this call and a float GEMM, at any number of rows,
/// a slice of [`RuntimeOptions::dequant_slice_values`] at a time ([`dequant_slices`]): how
/// a layer computes where [`quant_kernels_run`] is false. `None`: `w`'s block type is not
/// one the dequantizer takes.
pub fn dequantized_projection(
    runtime: &RuntimeOptions,
    x: &Tensor,
    w: &candle_core::quantized::QTensor,
) -> Result<Option<Tensor>> {
    dequantized_gemm(x, w, 1, runtime.dequant_slice_values)
}

/// [`quantized_gemm`] on any device, from `threshold` rows, in slices of at most
/// `slice_values` weight values (0: the whole weight).
fn dequantized_gemm(
    x: &Tensor,
    w: &candle_core::quantized::QTensor,
    threshold: usize,
    slice_values: usize,
) -> Result<Option<Tensor>> {
    let dims = x.dims();
    let Some(&k) = dims.last() else {
        return Ok(None);
    };
    let rows = x.elem_count() / k.max(1);
    if rows < threshold || !dequant_slices::dequantizes(w.dtype()) {
        return Ok(None);
    }
    let (n, _) = w.shape().dims2()?;
    let slice_values = if slice_values == 0 {
        usize::MAX
    } else {
        slice_values
    };
    let y = dequant_slices::dequantized_matmul(&x.reshape((rows, k))?, w, slice_values)?;
    QUANT_GEMM_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out: Vec<usize> = dims[..dims.len() - 1].iter().copied().chain([n]).collect();
    y.reshape(out).map(Some)
}

thread_local! {
    /// Set when candle's quantized matmul ran on CUDA on this thread (see
    /// [`note_shared_quant_scratch`]).
    static SHARED_QUANT_SCRATCH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Records that candle's own quantized matmul ran on CUDA: it uses a scratch shared by
/// every thread that another thread may replace, so a CUDA graph must not capture it.
pub fn note_shared_quant_scratch(device: &Device) {
    if device.is_cuda() {
        SHARED_QUANT_SCRATCH.with(|s| s.set(true));
    }
}

/// What the decode-step graphs did in this process, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Steps captured.
    pub captured: usize,
    /// Steps replayed from a capture.
    pub replayed: usize,
    /// Captures that failed (those requests went on without graphs).
    pub failed: usize,
    /// Greedy picks made on the device for a step queued ahead of the host
    /// ([`DevicePicks`]).
    pub picked_ahead: usize,
    /// Steps captured by the calling thread (a request that reuses a kept graph captures
    /// none: decoder/step_kits.rs).
    pub captured_on_this_thread: usize,
}

mod graph_counters {
    use std::sync::atomic::AtomicUsize;
    pub static CAPTURED: AtomicUsize = AtomicUsize::new(0);
    pub static REPLAYED: AtomicUsize = AtomicUsize::new(0);
    pub static FAILED: AtomicUsize = AtomicUsize::new(0);
    pub static PICKED_AHEAD: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        pub static CAPTURED_HERE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
}

/// The counters of [`GraphStats`].
pub fn graph_stats() -> GraphStats {
    use std::sync::atomic::Ordering::Relaxed;
    GraphStats {
        captured: graph_counters::CAPTURED.load(Relaxed),
        replayed: graph_counters::REPLAYED.load(Relaxed),
        failed: graph_counters::FAILED.load(Relaxed),
        picked_ahead: graph_counters::PICKED_AHEAD.load(Relaxed),
        captured_on_this_thread: graph_counters::CAPTURED_HERE.with(|c| c.get()),
    }
}

/// Whether decode steps on `device` are captured as CUDA graphs and replayed: where the
/// fused decode kernels run, with [`RuntimeOptions::cuda_graphs`] on. On an H200 (run 21,
/// docs/benchmarks.md) they decoded Qwen2.5-VL-7B at 218 instead of 196 tok/s in bf16 and
/// 309 instead of 254 at int4.
pub fn graphs_enabled(runtime: &RuntimeOptions, device: &Device) -> bool {
    runtime.cuda_graphs && enabled(runtime, device, DType::F32)
}

/// A decode step captured as a CUDA graph, replayed for later steps (see graph.rs).
pub struct StepGraph {
    #[cfg(feature = "cuda")]
    graph: graph::Graph,
}

impl StepGraph {
    /// Captures the work `body` enqueues on `device` (it does not run: replay it) into a
    /// graph that leaves `body`'s result in `out`, which must have its shape and dtype. On
    /// failure nothing is kept, the failure is counted and, the first time, reported on
    /// stderr; the caller goes on without a graph.
    pub fn capture(
        device: &Device,
        out: Tensor,
        body: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Self> {
        use std::sync::atomic::Ordering::Relaxed;
        SHARED_QUANT_SCRATCH.with(|s| s.set(false));
        #[cfg(feature = "cuda")]
        let captured = graph::capture(device, out, body).and_then(|graph| {
            if SHARED_QUANT_SCRATCH.with(|s| s.get()) {
                candle_core::bail!(
                    "the step has quantized projections of more than 8 rows, whose scratch \
                     candle shares between threads"
                );
            }
            Ok(Self { graph })
        });
        #[cfg(not(feature = "cuda"))]
        let captured: Result<Self> = {
            let _ = (device, out, body);
            no_cuda()
        };
        match &captured {
            Ok(_) => {
                graph_counters::CAPTURED_HERE.with(|c| c.set(c.get() + 1));
                graph_counters::CAPTURED.fetch_add(1, Relaxed)
            }
            Err(e) => {
                if graph_counters::FAILED.fetch_add(1, Relaxed) == 0 {
                    eprintln!(
                        "vlm: capturing a decode step as a CUDA graph failed ({e}); \
                         decoding without graphs (RuntimeOptions::cuda_graphs off, \
                         VLM_CUDA_GRAPH=0 for the vlm CLI, skips the attempt)"
                    );
                }
                0
            }
        };
        captured
    }

    /// Runs the captured step; returns its logits: a copy, or with `copy` off the graph's
    /// own output buffer, which the next replay rewrites (for a caller that has queued its
    /// reads of them by then).
    pub fn replay(&self, copy: bool) -> Result<Tensor> {
        graph_counters::REPLAYED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        #[cfg(feature = "cuda")]
        return self.graph.replay(copy);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = copy;
            no_cuda()
        }
    }
}

/// Kept alive around an eager decode step before a capture: candle then keeps the small
/// layout uploads its kernels make, which the capture reuses (it cannot upload).
pub struct UploadCache {
    #[cfg(feature = "cuda")]
    _guard: Option<Box<dyn std::any::Any>>,
}

impl UploadCache {
    /// On for CUDA devices.
    pub fn new(device: &Device) -> Self {
        #[cfg(feature = "cuda")]
        return Self {
            _guard: match device {
                Device::Cuda(dev) => Some(Box::new(dev.enable_cuda_graph_htod_cache())),
                _ => None,
            },
        };
        #[cfg(not(feature = "cuda"))]
        {
            let _ = device;
            Self {}
        }
    }
}

/// What one of [`StepUploads::upload`]'s writes holds.
#[cfg(feature = "cuda")]
pub use step_uploads::Values as UploadValues;

/// What one of [`StepUploads::upload`]'s writes holds.
#[cfg(not(feature = "cuda"))]
pub enum UploadValues<'a> {
    U32(&'a [u32]),
    F32(&'a [f32]),
}

/// The inputs a captured decode graph reads (token ids, cache length, RoPE rows), written
/// before each step through page-locked memory (kernels/step_uploads.rs): the copies are
/// queued without waiting for the step before them to finish.
pub struct StepUploads {
    #[cfg(feature = "cuda")]
    stage: step_uploads::Stage,
}

impl StepUploads {
    /// Room for `bytes` of uploads a step, on the CUDA `device`.
    pub fn new(device: &Device, bytes: usize) -> Result<Self> {
        #[cfg(feature = "cuda")]
        return Ok(Self {
            stage: step_uploads::Stage::new(device, bytes)?,
        });
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (device, bytes);
            no_cuda()
        }
    }

    /// Writes each tensor's values into it in place (contiguous CUDA tensors; f32 values
    /// converted to the tensor's f32, bf16 or f16), queued on the stream.
    pub fn upload(&mut self, writes: &[(&Tensor, UploadValues<'_>)]) -> Result<()> {
        #[cfg(feature = "cuda")]
        return self.stage.upload(writes);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = writes;
            no_cuda()
        }
    }
}

/// Threads per block of [`segment_attention`] (four warps).
const SEGMENT_THREADS: usize = 128;
/// Shared memory a block may take without raising the function's limit.
const SHARED_BYTES: usize = 48 * 1024;

fn segment_attention_shared_bytes(max_len: usize, head_dim: usize) -> usize {
    let warps = SEGMENT_THREADS / 32;
    4 * (2 * max_len * (head_dim + 1) + warps * (head_dim + max_len))
}

/// Row segments `[start, end)` that follow each other from row 0 (an image's patches, or
/// its windows), with their boundaries on the device for [`segment_attention`].
pub struct Segments {
    // Read by the CUDA launcher only.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    bounds: Tensor,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    rows: usize,
    count: usize,
    max_len: usize,
}

impl Segments {
    /// Checks that `ranges` tile `0..end` in order and puts their boundaries on `device`.
    pub fn new(ranges: &[(usize, usize)], device: &Device) -> Result<Self> {
        let mut bounds = Vec::with_capacity(ranges.len() + 1);
        bounds.push(0u32);
        let mut end = 0;
        for &(s, e) in ranges {
            if s != end || e < s {
                candle_core::bail!(
                    "segments must follow each other from row 0: {s}..{e} after {end}"
                );
            }
            end = e;
            bounds.push(e as u32);
        }
        Ok(Self {
            bounds: Tensor::new(bounds, device)?,
            rows: end,
            count: ranges.len(),
            max_len: ranges.iter().map(|(s, e)| e - s).max().unwrap_or(0),
        })
    }

    /// Whether [`segment_attention`] takes these segments at `head_dim`: the longest fits
    /// in a block's shared memory (Qwen2.5-VL's windows of 64 patches at head size 80 do;
    /// a whole image does not).
    pub fn fit_kernel(&self, head_dim: usize) -> bool {
        self.count > 0 && segment_attention_shared_bytes(self.max_len, head_dim) <= SHARED_BYTES
    }
}

/// The vision attention's inputs from the fused projection `qkv [n, 3·heads·d]` (before
/// its `bias`): q, k and v as `[heads, n, d]`, rotate-half RoPE on q and k from f32 tables
/// `cos`/`sin [n, d]`, q multiplied by `scale`.
pub fn vision_qkv(
    qkv: &Tensor,
    bias: Option<&Tensor>,
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
    scale: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    return cuda::vision_qkv(
        &qkv.contiguous()?,
        bias,
        &cos.contiguous()?,
        &sin.contiguous()?,
        heads,
        scale,
    );
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (qkv, bias, cos, sin, heads, scale);
        no_cuda()
    }
}

/// Softmax attention of `q` (scaled), `k`, `v` (`[heads, n, d]`) within each of
/// `segments` ([`Segments::fit_kernel`] must hold); returns `[n, heads·d]`.
pub fn segment_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: &Segments,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::segment_attention(q, k, v, segments);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (q, k, v, segments);
        no_cuda()
    }
}

/// The masks [`softmax`] computes for attention scores `[b, h, q, kv]`: query j (at
/// position kv − q + j) sees keys up to itself, after sequence b's first `pad[b]` keys.
#[derive(Debug, Clone, Copy)]
pub struct CausalMask<'a> {
    /// Left padding per sequence, `[b]` u32; none when nothing is padded.
    pub pad: Option<&'a Tensor>,
}

/// Whether [`segment_flash_attention`] and [`prefill_flash_attention`] take `dtype` and
/// `head_dim` on `device`: [`enabled`], bf16 or f16 (f32 keeps the unfused path, the
/// reference), head sizes that are multiples of 8 up to 128, a build for compute
/// capability 8.0 or above, [`RuntimeOptions::flash_attention`] on (off: to measure them
/// with one binary).
pub fn flash_applies(
    runtime: &RuntimeOptions,
    device: &Device,
    dtype: DType,
    head_dim: usize,
) -> bool {
    cfg!(vlm_flash)
        && runtime.flash_attention
        && enabled(runtime, device, dtype)
        && matches!(dtype, DType::BF16 | DType::F16)
        && head_dim.is_multiple_of(8)
        && (8..=128).contains(&head_dim)
}

/// Softmax attention of `q` (scaled), `k`, `v` (`[heads, n, d]`) within each of
/// `segments`, of any length, on the tensor cores ([`flash_applies`] must hold); returns
/// `[n, heads·d]` as [`segment_attention`] does.
pub fn segment_flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: &Segments,
) -> Result<Tensor> {
    #[cfg(all(feature = "cuda", vlm_flash))]
    return cuda::segment_flash_attention(q, k, v, segments);
    #[cfg(not(all(feature = "cuda", vlm_flash)))]
    {
        let _ = (q, k, v, segments);
        no_flash()
    }
}

/// A prefill's causal attention on the tensor cores ([`flash_applies`] must hold): `q`
/// `[b, heads, l, d]` (scaled), `k`, `v` `[b, kv_heads, kv_len, d]` (views of the KV
/// cache: rows may be strided), query head h reading kv head h / (heads / kv_heads).
/// Query i, at position kv_len − l + i, sees the keys up to itself after sequence b's
/// first `pad[b]` (`[b]` u32; none: no padding). Returns `[b, l, heads·d]`, the layout
/// the output projection reads.
pub fn prefill_flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pad: Option<&Tensor>,
) -> Result<Tensor> {
    #[cfg(all(feature = "cuda", vlm_flash))]
    return cuda::prefill_flash_attention(q, k, v, pad);
    #[cfg(not(all(feature = "cuda", vlm_flash)))]
    {
        let _ = (q, k, v, pad);
        no_flash()
    }
}

#[cfg(not(all(feature = "cuda", vlm_flash)))]
fn no_flash<T>() -> Result<T> {
    candle_core::bail!(
        "flash attention needs a build with the cuda feature for compute capability 8.0 or \
         above (CUDA_COMPUTE_CAP)"
    )
}

/// Greedy decoding's pick from `[batch, vocab]` logits: each row's first largest value and
/// whether the row is finite. Our two launches where the kernels serve the logits
/// ([`enabled`]), else the contract's candle ops ([`argmax_on_device`]). Ties go to the
/// first maximum, as on the host and in torch; candle's CUDA argmax does not always.
///
/// [`argmax_on_device`]: vlm_contract::sampling::argmax_on_device
pub fn device_argmax(
    runtime: &RuntimeOptions,
    logits: &Tensor,
) -> vlm_contract::Result<vlm_contract::sampling::DeviceArgmax> {
    #[cfg(feature = "cuda")]
    if enabled(runtime, logits.device(), logits.dtype()) && logits.rank() == 2 {
        let (ids, finite) = cuda::argmax_rows(logits)?;
        return Ok(vlm_contract::sampling::DeviceArgmax { ids, finite });
    }
    let _ = runtime;
    vlm_contract::sampling::argmax_on_device(logits)
}

/// Greedy picks made on the device, for a decode loop that runs a step ahead of the host
/// (decoder/run_ahead.rs): each pick writes its ids where the next step reads them and is
/// copied to the host asynchronously; at most two are queued and not yet read.
pub struct DevicePicks {
    #[cfg(feature = "cuda")]
    picks: device_picks::Picks,
}

impl DevicePicks {
    /// For `[rows, vocab]` logits on `device`, where the fused kernels serve `dtype`
    /// logits; `None` elsewhere. The k-th pick queued is step k's, and `held` says which
    /// rows leave the end-of-sequence ids out of it.
    pub fn new(
        runtime: &RuntimeOptions,
        device: &Device,
        dtype: DType,
        (rows, vocab): (usize, usize),
        held: &vlm_contract::sampling::HeldEnd,
    ) -> Result<Option<Self>> {
        #[cfg(feature = "cuda")]
        if enabled(runtime, device, dtype) {
            let picks = device_picks::Picks::new(device, rows, vocab, held)?;
            return Ok(Some(Self { picks }));
        }
        let _ = (runtime, device, dtype, rows, vocab, held);
        Ok(None)
    }

    /// Whether these picks serve `[rows, vocab]` logits.
    pub fn fits(&self, rows: usize, vocab: usize) -> bool {
        #[cfg(feature = "cuda")]
        return self.picks.fits(rows, vocab);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (rows, vocab);
            false
        }
    }

    /// Ready for another request's picks, from its step 0, leaving out what `held` says
    /// (a pick the request before left queued is waited for and dropped).
    pub fn restart(
        &mut self,
        device: &Device,
        held: &vlm_contract::sampling::HeldEnd,
    ) -> Result<()> {
        #[cfg(feature = "cuda")]
        return self.picks.restart(device, held);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (device, held);
            no_cuda()
        }
    }

    /// Queues the pick from `logits` (`[rows, vocab]`, contiguous): each row's first
    /// largest value's index into `ids` (`[rows]` u32) and into a host copy.
    pub fn queue(&mut self, logits: &Tensor, ids: &Tensor) -> Result<()> {
        graph_counters::PICKED_AHEAD.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        #[cfg(feature = "cuda")]
        return self.picks.queue(logits, ids);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (logits, ids);
            no_cuda()
        }
    }

    /// Waits for the oldest queued pick to reach the host: its ids, and whether each row
    /// was finite.
    pub fn wait(&mut self) -> Result<(Vec<u32>, Vec<bool>)> {
        #[cfg(feature = "cuda")]
        return self.picks.wait();
        #[cfg(not(feature = "cuda"))]
        no_cuda()
    }
}

/// `x + bias` for `x [.., n]` and `bias [n]` of one dtype; `wide` as for [`silu_mul`].
pub fn add_bias(x: &Tensor, bias: &Tensor, wide: bool) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::add_bias(&x.contiguous()?, &bias.contiguous()?, wide);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (x, bias, wide);
        no_cuda()
    }
}

/// Softmax over the last dimension, in f32, rounded once; with `mask`, masked scores get
/// the additive mask's value added first (so it computes what the unfused path does).
pub fn softmax(x: &Tensor, mask: Option<&CausalMask<'_>>) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::softmax(&x.contiguous()?, mask);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (x, mask);
        no_cuda()
    }
}

/// `silu(gate + gate_bias) · (up + up_bias)` for `gate`, `up [.., n]` and biases `[n]`;
/// `wide` as for [`silu_mul`].
pub fn gated_silu(
    gate: &Tensor,
    up: &Tensor,
    gate_bias: Option<&Tensor>,
    up_bias: Option<&Tensor>,
    wide: bool,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::gated_silu(
        &gate.contiguous()?,
        &up.contiguous()?,
        gate_bias,
        up_bias,
        wide,
    );
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (gate, up, gate_bias, up_bias, wide);
        no_cuda()
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{DType, Device, Module, Tensor};
    use vlm_contract::RuntimeOptions;

    /// What two models loaded with different options would ask at once, from two threads:
    /// each gets its own answer (the switches were process-wide before).
    #[test]
    fn each_runtime_options_value_decides_for_itself() {
        use super::{gemv_row_limit, quant_gemm_threshold};
        let defaults = RuntimeOptions::default();
        let tuned = defaults.with_gemv_max_rows(0).with_quant_gemm_rows(3);
        let decide = |o: &RuntimeOptions| (gemv_row_limit(o), quant_gemm_threshold(o));
        std::thread::scope(|s| {
            let a = s.spawn(|| decide(&defaults));
            let b = s.spawn(|| decide(&tuned));
            assert_eq!(a.join().unwrap(), (1, Some(64)));
            // Below the matvec's rows the GEMM starts right after them.
            assert_eq!(b.join().unwrap(), (0, Some(9)));
        });
        let all = defaults.with_gemv_max_rows(100).with_quant_gemm_rows(0);
        assert_eq!(decide(&all), (super::GEMV_ROWS, None));
        assert_eq!(decide(&defaults.with_quant_gemm_rows(200)).1, Some(200));
    }

    /// On the CPU no option turns a CUDA path on.
    #[test]
    fn the_cpu_takes_no_cuda_path_under_any_options() {
        let cpu = Device::Cpu;
        for o in [
            RuntimeOptions::default(),
            RuntimeOptions::default().with_gemv_max_rows(8),
            RuntimeOptions::default().with_fused_kernels(false),
        ] {
            assert!(!super::enabled(&o, &cpu, DType::F32));
            assert!(!super::graphs_enabled(&o, &cpu));
            assert!(!super::flash_applies(&o, &cpu, DType::BF16, 64));
            let x = Tensor::zeros((1, 16), DType::F32, &cpu).unwrap();
            let w = Tensor::zeros((4, 16), DType::F32, &cpu).unwrap();
            assert!(!super::gemv_applies(&o, &x, &w, None));
        }
    }

    #[test]
    fn dequantized_gemm_computes_what_the_quantized_matmul_does() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (48, 256), &dev).unwrap();
        let q = std::sync::Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
        let x = Tensor::randn(0f32, 1.0, (2, 20, 256), &dev).unwrap();
        let want = QMatMul::from_arc(q.clone()).unwrap().forward(&x).unwrap();
        let got = super::dequantized_gemm(&x, &q, 9, 0)
            .unwrap()
            .expect("40 rows");
        assert_eq!(got.dims(), &[2, 20, 48]);
        let diff = (got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // candle's CPU matmul rounds the activations to 8 bits; the GEMM does not.
        assert!(diff / scale < 0.02, "{diff} of {scale}");
        assert!(
            super::dequantized_gemm(&x.narrow(1, 0, 4).unwrap(), &q, 9, 0)
                .unwrap()
                .is_none()
        );
    }
}
