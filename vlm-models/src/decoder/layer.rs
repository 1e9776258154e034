//! One pre-norm decoder layer: `x + attn(norm(x))`, then `x + mlp(norm(x))`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{Attention, Masking};
use super::config::DecoderConfig;
use super::kv_cache::LayerKvCache;
use super::mlp::Mlp;
use crate::kernels::{self, CacheLen};
use crate::layers::RmsNorm;
use crate::quant::Quantizer;

pub(super) struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    pub(super) fn new(cfg: &DecoderConfig, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        Ok(Self {
            input_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("input_layernorm"),
            )?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"), q)?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp::new(cfg, vb.pp("mlp"), q)?,
        })
    }

    /// `[b, l, hidden]` → `[b, l, hidden]`, appending this layer's keys and values to
    /// `cache`.
    pub(super) fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        masking: Masking<'_>,
        cache: &mut LayerKvCache,
    ) -> Result<Tensor> {
        let attn =
            self.self_attn
                .forward(&self.input_layernorm.forward(x)?, cos, sin, masking, cache)?;
        let x1 = (x + attn)?;
        &x1 + self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x1)?)?
    }

    /// A decode step through the fused kernels: `x` plus the previous layer's MLP output
    /// `delta` (none for the first layer) in → this layer's residual and MLP output out,
    /// which the next layer (or the final norm) adds in the same launch as its norm
    /// ([`kernels::add_rms_norm`]), handing the projections their input quantized where
    /// they take it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_fused_step(
        &self,
        x: &Tensor,
        delta: Option<&Tensor>,
        cos: &Tensor,
        sin: &Tensor,
        pad: Option<&Tensor>,
        len: CacheLen<'_>,
        cache: &mut LayerKvCache,
    ) -> Result<(Tensor, Tensor)> {
        let (x, normed, q8) = kernels::add_rms_norm(
            x,
            delta,
            self.input_layernorm.head_norm(),
            self.self_attn.takes_q8(),
        )?;
        let attn =
            self.self_attn
                .forward_fused_decode(&normed, q8.as_ref(), cos, sin, pad, len, cache)?;
        let (x1, normed, q8) = kernels::add_rms_norm(
            &x,
            Some(&attn),
            self.post_attention_layernorm.head_norm(),
            self.mlp.takes_q8(),
        )?;
        let mlp = self.mlp.forward_q8(&normed, q8.as_ref())?;
        Ok((x1, mlp))
    }

    /// Whether the layer's projections are quantized.
    pub(super) fn is_quantized(&self) -> bool {
        self.mlp.is_quantized()
    }

    /// Whether the layer's quantized projections dequantize their weights every time.
    pub(super) fn dequantizes(&self) -> bool {
        self.mlp.dequantizes()
    }
}
