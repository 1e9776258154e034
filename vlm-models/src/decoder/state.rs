//! A request's decoding state: what the decoder remembers between steps.

use candle_core::{Device, Result, Tensor};

use super::decode_step::FusedStep;
use super::kv_cache::LayerKvCache;
use super::step_kits::{Kit, KitHome, PromptCaches};
use crate::kernels::DevicePicks;
use crate::layers::padding_on_device;

/// Per-batch decoding state of a [`super::Decoder`]: KV caches and where each sequence's
/// positions continue.
pub struct DecoderState {
    /// Greedy picks made on the device while the host runs a step behind
    /// (decoder/run_ahead.rs). First, so that it is dropped first: it waits for the step
    /// still queued when a batch ended, before the caches and graph that step uses go.
    pub(super) picks: Option<DevicePicks>,
    /// One per layer.
    pub(crate) caches: Vec<LayerKvCache>,
    /// Next position of each sequence (the three M-RoPE streams agree after the prompt).
    pub(crate) next_position: Vec<i64>,
    /// Left padding of each sequence in the cache.
    pub(crate) pad: Vec<usize>,
    /// `pad` on the device as the fused kernels read it, made on the first fused step.
    pad_on_device: Option<Tensor>,
    /// The fused steps' input buffers and graph, made on the first fused step or taken
    /// from a kit (decoder/step_kits.rs).
    pub(super) step: Option<FusedStep>,
    /// Where the caches, step and picks go when the request ends, for the next request
    /// of the same shape on this thread.
    home: Option<KitHome>,
}

impl DecoderState {
    /// The state after a prompt: its caches, each sequence's next position and padding.
    pub(crate) fn new(caches: PromptCaches, next_position: Vec<i64>, pad: Vec<usize>) -> Self {
        let PromptCaches {
            layers,
            step,
            picks,
            home,
        } = caches;
        Self {
            picks,
            caches: layers,
            next_position,
            pad,
            pad_on_device: None,
            step,
            home,
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

impl Drop for DecoderState {
    fn drop(&mut self) {
        let (Some(home), Some(step)) = (self.home.take(), self.step.take()) else {
            return;
        };
        // Only a step with a captured graph saves the next request anything.
        if !step.has_graph() {
            return;
        }
        let mut caches = std::mem::take(&mut self.caches);
        for cache in &mut caches {
            cache.truncate(0);
        }
        home.kits.put(Kit {
            key: home.key,
            caches,
            step,
            picks: self.picks.take(),
        });
    }
}
