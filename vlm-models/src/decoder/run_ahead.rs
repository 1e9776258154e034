//! Greedy decoding with the device a step ahead of the host (`Family::start_run_ahead`):
//! each step's pick is made on the device into the ids buffer the next step reads, so the
//! host queues step n+1 before it waits for step n's ids, and the GPU runs through the
//! host's stop checks, streamed text and launches instead of waiting for them.

use candle_core::{bail, Result, Tensor};
use vlm_contract::sampling::{DeviceArgmax, HeldEnd};

use super::decode_step::StepIds;
use super::model::Decoder;
use super::state::DecoderState;
use crate::kernels::DevicePicks;

impl Decoder {
    /// Queues greedy's pick from `logits` (the prefill's `[batch, vocab]`) into the first
    /// step's ids and a host copy; this and every later pick leave out what `held` says.
    /// `false` where steps are not replayed graphs (the CPU, `VLM_CUDA_GRAPH=0`, batches of
    /// quantized projections above 8 rows) or [`vlm_contract::RuntimeOptions::run_ahead`]
    /// is off: the loop then steps in turn.
    pub fn start_run_ahead(
        &self,
        logits: &Tensor,
        held: &HeldEnd,
        state: &mut DecoderState,
    ) -> Result<bool> {
        let b = state.next_position.len();
        if !self.runtime.run_ahead || !self.graph_steps(b) || logits.dims2()?.0 != b {
            return Ok(false);
        }
        let vocab = logits.dim(1)?;
        // A kit's picks (decoder/step_kits.rs) keep their page-locked slots.
        let mut picks = match state.picks.take() {
            Some(mut p) if p.fits(b, vocab) => {
                p.restart(&self.device, held)?;
                p
            }
            _ => {
                let dtype = logits.dtype();
                match DevicePicks::new(&self.runtime, &self.device, dtype, (b, vocab), held)? {
                    Some(p) => p,
                    None => return Ok(false),
                }
            }
        };
        let step = match &mut state.step {
            Some(s) => s,
            None => state.step.insert(self.new_fused_step(b)?),
        };
        picks.queue(&logits.contiguous()?, &step.ids()?)?;
        state.picks = Some(picks);
        Ok(true)
    }

    /// Queues one step fed the ids the device picked last, and that step's own pick.
    pub fn queue_next_step(&self, state: &mut DecoderState) -> Result<()> {
        if state.picks.is_none() {
            bail!("queue_next_step without start_run_ahead");
        }
        // The graph's own logits buffer: the pick below is queued before the next replay
        // rewrites it, so the copy a caller holding them would need is skipped.
        let logits = self.graph_decode_step(StepIds::OnDevice, state, false)?;
        for p in state.next_position.iter_mut() {
            *p += 1;
        }
        let ids = state.step.as_ref().map(|s| s.ids()).transpose()?;
        let (Some(picks), Some(ids)) = (state.picks.as_mut(), ids) else {
            bail!("the step's buffers are missing after a graph step");
        };
        picks.queue(&logits, &ids)
    }

    /// Waits for the oldest queued pick to reach the host and returns it.
    pub fn wait_for_pick(&self, state: &mut DecoderState) -> Result<DeviceArgmax> {
        let Some(picks) = state.picks.as_mut() else {
            bail!("wait_for_pick without start_run_ahead");
        };
        let (ids, finite) = picks.wait()?;
        Ok(DeviceArgmax { ids, finite })
    }
}
