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
    /// That kernel eight values a thread (`RuntimeOptions::prefill_kernels`).
    wide: bool,
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
            wide: q.runtime().prefill_kernels,
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

impl Mlp {
    /// Whether the gate/up projection takes its input already quantized
    /// ([`kernels::Q8Input`]).
    pub(super) fn takes_q8(&self) -> bool {
        self.gate_up.takes_q8()
    }

    /// A decode step's MLP from `x`, or from `q8` where it holds `x` quantized; the
    /// activation's product goes to the down projection quantized as well where it takes
    /// that.
    pub(super) fn forward_q8(&self, x: &Tensor, q8: Option<&kernels::Q8Input>) -> Result<Tensor> {
        let gate_up = self.gate_up.forward_q8(x, q8)?;
        if self.fused_silu && self.down_proj.takes_q8() {
            let (act, q8) = kernels::silu_mul_q8(&gate_up, self.intermediate)?;
            return self.down_proj.forward_q8(&act, q8.as_ref());
        }
        self.down(gate_up)
    }

    fn down(&self, gate_up: Tensor) -> Result<Tensor> {
        if self.fused_silu {
            return self.down_proj.forward(&kernels::silu_mul(
                &gate_up,
                self.intermediate,
                self.wide,
            )?);
        }
        let gate = gate_up.narrow(D::Minus1, 0, self.intermediate)?;
        let up = gate_up.narrow(D::Minus1, self.intermediate, self.intermediate)?;
        self.down_proj.forward(&(self.act.forward(&gate)? * up)?)
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down(self.gate_up.forward(x)?)
    }
}
