//! Fused CUDA kernels for the decoder: at one new token per sequence, candle would issue
//! a launch per small op and the host, not the GPU, would set the pace (see
//! docs/benchmarks.md). Three kernels replace ~15 launches per layer:
//!
//! - [`write_kv`]: bias, per-head key norm (Qwen3) and RoPE of the new key, written with
//!   its value into the preallocated cache in place;
//! - [`decode_attention`]: the same for the query, then attention over the cache with GQA
//!   read in place and left padding skipped;
//! - [`silu_mul`]: `silu(gate) · up` from the fused gate/up projection (every step,
//!   prefill included);
//! - [`gemv`]: `x Wᵀ + b` for up to 8 rows (a decode step's projections), one warp per
//!   output column. **Opt-in (`VLM_GEMV=1`) until a GPU check has run it**: written and
//!   compiled, with its test in `tests/kernels.rs`, after the last device time of its session.
//!
//! They exist with the `cuda` feature only; [`available`] says whether a model may use
//! them, and the unfused path (the CPU path, and the reference in the GPU check) stays the
//! definition of what they compute. `VLM_FUSED_KERNELS=0` turns them off, to measure what
//! they bring with one binary.

use candle_core::{DType, Device, Result, Tensor};

#[cfg(feature = "cuda")]
mod cuda;

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

fn turned_off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var("VLM_FUSED_KERNELS").is_ok_and(|v| v.trim() == "0"))
}

/// Whether the kernels serve tensors in `dtype` on `device`: a CUDA build on a CUDA device,
/// f32/bf16/f16, not turned off.
pub fn enabled(device: &Device, dtype: DType) -> bool {
    cfg!(feature = "cuda")
        && device.is_cuda()
        && matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
        && !turned_off()
}

/// Whether the decode kernels serve a decoder of `head_dim` in `dtype` on `device`:
/// [`enabled`], head sizes 16 to 256 in powers of two (the tiny test models have 16, so the
/// GPU check runs the kernels against the goldens).
pub fn available(device: &Device, dtype: DType, head_dim: usize) -> bool {
    enabled(device, dtype) && matches!(head_dim, 16 | 32 | 64 | 128 | 256)
}

/// Whether [`gemv`] takes `x Wᵀ (+ bias)` for `x [m, k]` and a float weight `w [n, k]`: the
/// fused kernels available, `VLM_GEMV=1`, m ≤ 8, k a multiple of 8, one dtype, `w`
/// contiguous.
pub fn gemv_applies(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var("VLM_GEMV").is_ok_and(|v| v.trim() == "1"));
    let (Ok((m, k)), Ok((_, wk))) = (x.dims2(), w.dims2()) else {
        return false;
    };
    on && enabled(w.device(), w.dtype())
        && x.dtype() == w.dtype()
        && bias.is_none_or(|b| b.dtype() == w.dtype())
        && (1..=8).contains(&m)
        && k == wk
        && k % 8 == 0
        && w.is_contiguous()
        && w.layout().start_offset() % 8 == 0
}

/// `x Wᵀ (+ bias)` for `x [m ≤ 8, k]` and `w [n, k]` → `[m, n]`.
pub fn gemv(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::gemv(&x.contiguous()?, w, bias);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (x, w, bias);
        no_cuda()
    }
}

#[cfg(not(feature = "cuda"))]
fn no_cuda<T>() -> Result<T> {
    candle_core::bail!("the fused kernels need a build with the cuda feature")
}

/// `silu(gate) · up` for `gate_up [.., 2·inter]` (gate first) → `[.., inter]`.
pub fn silu_mul(gate_up: &Tensor, inter: usize) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::silu_mul(&gate_up.contiguous()?, inter);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (gate_up, inter);
        no_cuda()
    }
}

/// Writes the new token's key and value into `k_cache`/`v_cache` (`[b, kv, cap, dim]`) at
/// position `pos`, from the fused projection `qkv` (`[b, (q + 2 kv)·dim]`, before its
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
    pos: usize,
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
        pos,
    );
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (qkv, bias, cos, sin, k_norm, heads, k_cache, v_cache, pos);
        no_cuda()
    }
}

/// Attention of the new token's query (prepared from `qkv` like the key in [`write_kv`];
/// its scale is in the weights) over the first `kv_len` cached positions, skipping the
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
    kv_len: usize,
    pad: Option<&Tensor>,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return cuda::decode_attention(
        &qkv.contiguous()?,
        bias,
        &cos.contiguous()?,
        &sin.contiguous()?,
        q_norm,
        heads,
        k_cache,
        v_cache,
        kv_len,
        pad,
    );
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (
            qkv, bias, cos, sin, q_norm, heads, k_cache, v_cache, kv_len, pad,
        );
        no_cuda()
    }
}
