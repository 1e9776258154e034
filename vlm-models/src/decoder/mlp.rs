//! The decoder's feed-forward block: `down(act(gate) · up)`, gate and up in one
//! projection, `silu(gate) · up` in one CUDA kernel where the kernels apply.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::config::DecoderConfig;
use crate::kernels;
use crate::layers::{Act, Linear};
use crate::quant::Quantizer;

pub(super) struct Mlp {
    /// gate and up in one projection.
    gate_up: Linear,
    down_proj: Linear,
    act: Act,
    intermediate: usize,
    /// silu(gate)·up in one CUDA kernel.
    fused_silu: bool,
}

impl Mlp {
    pub(super) fn new(cfg: &DecoderConfig, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_up: q.fused(
                h,
                &[(i, 1.0, vb.pp("gate_proj")), (i, 1.0, vb.pp("up_proj"))],
                false,
            )?,
            down_proj: q.linear(i, h, false, vb.pp("down_proj"))?,
            act: cfg.hidden_act,
            intermediate: i,
            fused_silu: cfg.hidden_act == Act::Silu
                && kernels::enabled(&q.runtime(), vb.device(), vb.dtype()),
        })
    }
}

impl Mlp {
    /// Whether the projections are quantized (the decoder's are all or none).
    pub(super) fn is_quantized(&self) -> bool {
        self.down_proj.is_quantized()
    }

    /// Whether the quantized projections dequantize their weights for every product
    /// (layers::Linear::dequantizes; all or none, as for the quantization).
    pub(super) fn dequantizes(&self) -> bool {
        self.down_proj.dequantizes()
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up.forward(x)?;
        if self.fused_silu {
            return self
                .down_proj
                .forward(&kernels::silu_mul(&gate_up, self.intermediate)?);
        }
        let gate = gate_up.narrow(D::Minus1, 0, self.intermediate)?;
        let up = gate_up.narrow(D::Minus1, self.intermediate, self.intermediate)?;
        self.down_proj.forward(&(self.act.forward(&gate)? * up)?)
    }
}
