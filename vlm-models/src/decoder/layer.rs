//! One pre-norm decoder layer: `x + attn(norm(x))`, then `x + mlp(norm(x))`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{Attention, Masking};
use super::config::DecoderConfig;
use super::kv_cache::LayerKvCache;
use super::mlp::Mlp;
use crate::layers::{AddNorm, RmsNorm};
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

    /// `[b, l, hidden]` in, appending this layer's keys and values to `cache`: `x` plus the
    /// previous layer's MLP output `delta` (none for the first layer) in, this layer's
    /// residual and MLP output out, which the next layer (or the final norm) adds with its
    /// norm. Each add and the norm after it run as `norms` says ([`RmsNorm::add_forward`]);
    /// at a decode step's [`AddNorm::Step`] the norm hands the projections their input
    /// quantized where they take it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward(
        &self,
        x: &Tensor,
        delta: Option<&Tensor>,
        cos: &Tensor,
        sin: &Tensor,
        masking: Masking<'_>,
        cache: &mut LayerKvCache,
        norms: AddNorm,
    ) -> Result<(Tensor, Tensor)> {
        let q8 = norms == AddNorm::Step && matches!(masking, Masking::FusedDecode { .. });
        let (x, normed, q8_in) =
            self.input_layernorm
                .add_forward(x, delta, norms, q8 && self.self_attn.takes_q8())?;
        let attn = self
            .self_attn
            .forward(&normed, q8_in.as_ref(), cos, sin, masking, cache)?;
        let (x1, normed, q8_in) = self.post_attention_layernorm.add_forward(
            &x,
            Some(&attn),
            norms,
            q8 && self.mlp.takes_q8(),
        )?;
        let mlp = if q8 {
            self.mlp.forward_q8(&normed, q8_in.as_ref())?
        } else {
            self.mlp.forward(&normed)?
        };
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
