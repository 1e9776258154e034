//! A request's decoding state: what the decoder remembers between steps.

use candle_core::{Device, Result, Tensor};

use super::decode_step::FusedStep;
use super::kv_cache::LayerKvCache;
use crate::layers::padding_on_device;

/// Per-batch decoding state of a [`super::Decoder`]: KV caches and where each sequence's
/// positions continue.
pub struct DecoderState {
    /// One per layer.
    pub(crate) caches: Vec<LayerKvCache>,
    /// Next position of each sequence (the three M-RoPE streams agree after the prompt).
    pub(crate) next_position: Vec<i64>,
    /// Left padding of each sequence in the cache.
    pub(crate) pad: Vec<usize>,
    /// `pad` on the device as the fused kernels read it, made on the first fused step.
    pad_on_device: Option<Tensor>,
    /// The fused steps' input buffers and graph, made on the first fused step.
    pub(super) step: Option<FusedStep>,
}

impl DecoderState {
    /// The state after a prompt: its caches, each sequence's next position and padding.
    pub(crate) fn new(caches: Vec<LayerKvCache>, next_position: Vec<i64>, pad: Vec<usize>) -> Self {
        Self {
            caches,
            next_position,
            pad,
            pad_on_device: None,
            step: None,
        }
    }

    /// The padding as a `[batch]` u32 tensor, or none when no sequence is padded.
    pub(super) fn pad_on_device(&mut self, device: &Device) -> Result<Option<Tensor>> {
        if self.pad_on_device.is_none() {
            self.pad_on_device = padding_on_device(&self.pad, device)?;
        }
        Ok(self.pad_on_device.clone())
    }
}
