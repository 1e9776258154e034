//! Self-attention of one decoder layer: fused q/k/v projection, RoPE, the per-request KV
//! cache, GQA and the output projection; at decode through the fused CUDA kernels
//! (crate::kernels) where they apply.
//!
//! GQA without copying: the query heads that share a key/value head are folded into the
//! row dimension, so one matmul per group reads the cached K/V in place.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::DecoderConfig;
use super::kv_cache::LayerKvCache;
use crate::kernels::{self, CacheLen, Heads};
use crate::layers::{softmax_f32_acc, AttentionMask, Linear, RmsNorm};
use crate::quant::Quantizer;

/// How a layer's attention sees which positions to attend.
#[derive(Clone, Copy)]
pub(super) enum Masking<'a> {
    /// A mask (none: everything cached is visible) for the unfused attention.
    Additive(Option<&'a AttentionMask>),
    /// One new token per sequence through the fused CUDA kernels, each sequence skipping
    /// its left padding (`[batch]` u32; none: no padding); `len` is the caches' length
    /// after this step.
    FusedDecode {
        pad: Option<&'a Tensor>,
        len: CacheLen<'a>,
    },
}

pub(super) struct Attention {
    /// q, k and v in one projection; the attention scale 1/√d is folded into q (into
    /// q_norm for Qwen3, whose RMSNorm would undo a scale applied before it).
    qkv: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    /// A prompt's q/k/v through `kernels::prefill_qkv` (`RuntimeOptions::prefill_kernels`).
    prefill_kernel: bool,
}

impl Attention {
    fn heads(&self) -> Heads {
        Heads {
            q: self.num_heads,
            kv: self.num_kv_heads,
            dim: self.head_dim,
        }
    }

    /// Whether the q/k/v projection takes its input already quantized
    /// ([`kernels::Q8Input`]).
    pub(super) fn takes_q8(&self) -> bool {
        self.qkv.takes_q8()
    }

    /// The decode step through the fused kernels: the projection (from `q8` where it
    /// holds `x` quantized), the attention (which also writes the new key and value into
    /// the caches), the output projection (from the attention's own Q8_1 blocks where it
    /// takes them).
    #[allow(clippy::too_many_arguments)]
    fn forward_fused_decode(
        &self,
        x: &Tensor,
        q8: Option<&kernels::Q8Input>,
        cos: &Tensor,
        sin: &Tensor,
        pad: Option<&Tensor>,
        len: CacheLen<'_>,
        cache: &mut LayerKvCache,
    ) -> Result<Tensor> {
        let b = x.dim(0)?;
        let counters = cache.slice_counters().cloned();
        let (k_cache, v_cache, pos) = cache
            .claim(1)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        if pos + 1 != len.value {
            candle_core::bail!(
                "decode step: the cache holds {pos} positions, the step says {}",
                len.value - 1
            );
        }
        let dtype = k_cache.dtype();
        let qkv = self.qkv.forward_q8_unbiased(x, q8)?.to_dtype(dtype)?;
        let bias = self.qkv.bias().map(|b| b.to_dtype(dtype)).transpose()?;
        let (cos, sin) = (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?);
        let heads = self.heads();
        // The attention writes the new key and value into the caches itself.
        let (out, out_q8) = kernels::decode_attention_q8(
            &qkv,
            bias.as_ref(),
            &cos,
            &sin,
            self.q_norm.as_ref().map(RmsNorm::head_norm),
            &heads,
            k_cache,
            v_cache,
            len,
            pad,
            self.o_proj.takes_q8(),
            kernels::NewKv::Write {
                k_norm: self.k_norm.as_ref().map(RmsNorm::head_norm),
            },
            counters.as_ref(),
            self.qkv.runtime(),
        )?;
        self.o_proj
            .forward_q8(&out.reshape((b, 1, heads.q * heads.dim))?, out_q8.as_ref())
    }

    /// A prompt's (or an unfused step's) q `[b, heads, l, d]` and everything cached after
    /// appending its keys and values, `[b, kv_heads, len, d]` each: candle's ops.
    fn prompt_qkv(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: &mut LayerKvCache,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, l, _) = x.dims3()?;
        let d = self.head_dim;
        let (nq, nkv) = (self.num_heads, self.num_kv_heads);
        // Split into heads first, then narrow: views. (A narrow of the last dim, then a
        // reshape, copied each of q, k and v once more than the transposes below do: 84 of
        // a batch-8 prefill's 169 copies, run 48's profile.)
        let qkv = self.qkv.forward(x)?.reshape((b, l, nq + 2 * nkv, d))?;
        let mut q = qkv.narrow(2, 0, nq)?;
        let mut k = qkv.narrow(2, nq, nkv)?;
        let v = qkv.narrow(2, nq + nkv, nkv)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            // Contiguous, for candle's one-launch norm (the same values as before the split
            // became views).
            q = qn.forward(&q.contiguous()?)?;
            k = kn.forward(&k.contiguous()?)?;
        }
        // candle's fused rotate-half RoPE: one kernel instead of narrow/neg/cat/mul/add.
        let q = candle_nn::rotary_emb::rope(&q.transpose(1, 2)?.contiguous()?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k.transpose(1, 2)?.contiguous()?, cos, sin)?;
        let v = v.transpose(1, 2)?;
        let (k, v) = cache
            .append(&k, &v)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((q, k, v))
    }

    /// [`Self::prompt_qkv`] with one launch of `kernels::prefill_qkv` after the projection
    /// (the same bits): the norms, RoPE, the heads' layout and the cache writes of ~10 of
    /// candle's launches.
    fn prompt_qkv_fused(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: &mut LayerKvCache,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let l = x.dim(1)?;
        // The projection adds its bias itself: a prompt of up to 16 rows takes the gemv
        // kernels, which add it before rounding (the kernel's bias would round twice).
        let qkv = self.qkv.forward(x)?;
        let (k_cache, v_cache, pos) = cache
            .claim(l)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let q = kernels::prefill_qkv(
            &qkv,
            None,
            cos,
            sin,
            self.q_norm.as_ref().map(RmsNorm::head_norm),
            self.k_norm.as_ref().map(RmsNorm::head_norm),
            &self.heads(),
            k_cache,
            v_cache,
            pos,
        )?;
        let len = pos + l;
        Ok((q, k_cache.narrow(2, 0, len)?, v_cache.narrow(2, 0, len)?))
    }

    pub(super) fn new(cfg: &DecoderConfig, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (nq, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let scale = (d as f64).powf(-0.5);
        let (q_norm, k_norm, q_factor) = if cfg.qk_norm {
            (
                Some(RmsNorm::new(d, cfg.rms_norm_eps, vb.pp("q_norm"))?.scaled(scale)?),
                Some(RmsNorm::new(d, cfg.rms_norm_eps, vb.pp("k_norm"))?),
                1.0,
            )
        } else {
            (None, None, scale)
        };
        let qkv = q.fused(
            h,
            &[
                (nq * d, q_factor, vb.pp("q_proj")),
                (nkv * d, 1.0, vb.pp("k_proj")),
                (nkv * d, 1.0, vb.pp("v_proj")),
            ],
            cfg.qkv_bias,
        )?;
        let runtime = q.runtime();
        Ok(Self {
            qkv,
            o_proj: q.linear(nq * d, h, false, vb.pp("o_proj"))?,
            q_norm,
            k_norm,
            num_heads: nq,
            num_kv_heads: nkv,
            head_dim: d,
            // Not in f32: there its RoPE differed from candle's rope in the last bits on an
            // H100 (run 49; ptxas fuses a product of each pair into an FMA as it likes).
            prefill_kernel: runtime.prefill_kernels
                && kernels::enabled(&runtime, vb.device(), vb.dtype())
                && matches!(vb.dtype(), DType::BF16 | DType::F16)
                && d.is_multiple_of(2)
                && d <= 256,
        })
    }

    /// The layer's attention over `x` (at a decode step through the fused kernels, from
    /// `q8` where it holds `x` quantized).
    pub(super) fn forward(
        &self,
        x: &Tensor,
        q8: Option<&kernels::Q8Input>,
        cos: &Tensor,
        sin: &Tensor,
        masking: Masking<'_>,
        cache: &mut LayerKvCache,
    ) -> Result<Tensor> {
        let mask = match masking {
            Masking::FusedDecode { pad, len } => {
                return self.forward_fused_decode(x, q8, cos, sin, pad, len, cache)
            }
            Masking::Additive(mask) => mask,
        };
        let (b, l, _) = x.dims3()?;
        let d = self.head_dim;
        // The kernel's grid takes up to 65,535 positions and sequences.
        let fits = cos.dims() == [b, l, d / 2] && cos.dtype() == x.dtype() && b.max(l) <= 65_535;
        let (q, k, v) = if self.prefill_kernel && fits {
            self.prompt_qkv_fused(x, cos, sin, cache)?
        } else {
            self.prompt_qkv(x, cos, sin, cache)?
        };
        let kv_len = k.dim(2)?;
        if let Some(AttentionMask::Causal { pad }) = mask {
            if l > 1 && kernels::flash_applies(self.qkv.runtime(), x.device(), q.dtype(), d) {
                // Scores never materialised: [b, heads, l, kv_len] per layer at batch 8 is
                // 28 × 8 × 1026² values (run 21's profile: most of the prefill's softmax).
                let out = kernels::prefill_flash_attention(&q, &k, &v, pad.as_ref())?;
                return self.o_proj.forward(&out);
            }
        }

        let rep = self.num_heads / self.num_kv_heads;
        // [b, heads, l, d] → [b, kv_heads, rep·l, d]: query head h uses kv head h / rep.
        let q = q
            .contiguous()?
            .reshape((b, self.num_kv_heads, rep * l, d))?;
        let scores = q.matmul(&k.t()?)?.reshape((b, self.num_heads, l, kv_len))?;
        let probs = match mask {
            Some(m) => m.softmax(self.qkv.runtime(), &scores)?,
            None => softmax_f32_acc(self.qkv.runtime(), &scores)?,
        };
        let probs = probs.reshape((b, self.num_kv_heads, rep * l, kv_len))?;
        let out = probs
            .matmul(&v)?
            .reshape((b, self.num_heads, l, d))?
            .transpose(1, 2)?
            .reshape((b, l, self.num_heads * d))?;
        self.o_proj.forward(&out)
    }
}
