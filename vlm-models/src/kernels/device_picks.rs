//! Greedy picks made on the device and brought to the host without stopping the stream:
//! how the decode loop runs a step ahead of the host (decoder/run_ahead.rs).
//!
//! Each pick writes its token ids where the next step reads them, and its (id, finite)
//! pairs into one of two page-locked host slots by an asynchronous copy that records an
//! event. The host waits on that event alone, while the step queued after the pick runs:
//! a synchronous copy would drain the stream and leave the GPU idle for the host's stop
//! checks, streamed text and next launch (161-242 µs of a 1.38 ms Qwen3-VL-2B int4 step,
//! run 43).

use std::collections::VecDeque;

use candle_core::cuda_backend::cudarc::driver::result;
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, Device, Result, Tensor};
use vlm_contract::sampling::HeldEnd;

use super::cuda::{with_addresses, ArgmaxScratch};
use super::pinned::PinnedSlot;

pub(super) struct Picks {
    /// Page-locked `[rows, 2]` u32 each (plain, not write-combined: the host reads them).
    /// First, so that it is dropped first: a copy still queued lands before the device
    /// buffers it reads go.
    slots: [PinnedSlot; 2],
    argmax: ArgmaxScratch,
    /// `[rows + eos ids]` u32: each row's min_new_tokens, then the end-of-sequence ids
    /// its picks leave out below it (ops.cu's `argmax_partial`); none when no row holds.
    hold: Option<Tensor>,
    /// Picks queued so far: the next one is for this step.
    step: usize,
    rows: usize,
    /// Slots with a copy queued and not yet read, oldest first.
    queued: VecDeque<usize>,
}

impl Picks {
    pub(super) fn new(device: &Device, rows: usize, vocab: usize, held: &HeldEnd) -> Result<Self> {
        let Device::Cuda(dev) = device else {
            bail!("device picks need a CUDA device");
        };
        if held.until.len() != rows {
            bail!(
                "device picks: {} min_new_tokens for {rows} rows",
                held.until.len()
            );
        }
        let argmax = ArgmaxScratch::new(device, rows, vocab)?;
        let hold = hold_buffer(device, held)?;
        let slots = [
            PinnedSlot::new(dev, rows * 2 * 4, false)?,
            PinnedSlot::new(dev, rows * 2 * 4, false)?,
        ];
        Ok(Self {
            argmax,
            hold,
            step: 0,
            rows,
            slots,
            queued: VecDeque::with_capacity(2),
        })
    }

    /// Whether these picks serve `[rows, vocab]` logits.
    pub(super) fn fits(&self, rows: usize, vocab: usize) -> bool {
        self.rows == rows && self.argmax.n() == vocab
    }

    /// Ready for another request's picks, from its step 0, leaving out what `held` says:
    /// a pick still queued by the request before is waited for and dropped.
    pub(super) fn restart(&mut self, device: &Device, held: &HeldEnd) -> Result<()> {
        if held.until.len() != self.rows {
            bail!(
                "device picks: {} min_new_tokens for {} rows",
                held.until.len(),
                self.rows
            );
        }
        while let Some(slot) = self.queued.pop_front() {
            self.slots[slot].event().synchronize().w()?;
        }
        self.hold = hold_buffer(device, held)?;
        self.step = 0;
        Ok(())
    }

    /// Queues the pick from `logits` `[rows, vocab]` for the next step (the first: step 0):
    /// the ids into `ids` (`[rows]` u32), the (id, finite) pairs copied to a free host slot.
    pub(super) fn queue(&mut self, logits: &Tensor, ids: &Tensor) -> Result<()> {
        let Some(slot) = (0..2).find(|s| !self.queued.contains(s)) else {
            bail!("device picks: two picks are queued and not yet read");
        };
        self.argmax
            .launch(logits, Some(ids), self.hold.as_ref(), self.step)?;
        let n = self.rows * 2;
        let host = &self.slots[slot];
        with_addresses(&[Some(&self.argmax.out)], |dev, p| {
            let stream = dev.cuda_stream();
            // SAFETY: the slot holds `n` u32 and no copy into it is pending (`queued`); the
            // source is the `[rows, 2]` result the argmax above writes, in stream order.
            let dst = unsafe { std::slice::from_raw_parts_mut(host.host() as *mut u32, n) };
            unsafe { result::memcpy_dtoh_async(dst, p[0], stream.cu_stream()) }.w()?;
            host.event().record(&stream).w()?;
            Ok(())
        })?;
        self.queued.push_back(slot);
        self.step += 1;
        Ok(())
    }

    /// Waits for the oldest queued pick's copy and returns its ids and whether each row was
    /// finite.
    pub(super) fn wait(&mut self) -> Result<(Vec<u32>, Vec<bool>)> {
        let Some(slot) = self.queued.pop_front() else {
            bail!("device picks: no pick is queued");
        };
        let host = &self.slots[slot];
        host.event().synchronize().w()?;
        // SAFETY: the copy into the slot has completed (its event), and nothing writes to it
        // until it is queued again.
        let pairs = unsafe { std::slice::from_raw_parts(host.host() as *const u32, self.rows * 2) };
        Ok((
            pairs.chunks(2).map(|p| p[0]).collect(),
            pairs.chunks(2).map(|p| p[1] == 1).collect(),
        ))
    }
}

/// The `[rows + eos ids]` u32 buffer ops.cu's `argmax_partial` reads: each row's
/// min_new_tokens, then the end-of-sequence ids; none when no row holds them off.
fn hold_buffer(device: &Device, held: &HeldEnd) -> Result<Option<Tensor>> {
    if held.eos_ids.is_empty() || held.until.iter().all(|&u| u == 0) {
        return Ok(None);
    }
    let values: Vec<u32> = held
        .until
        .iter()
        .map(|&u| u32::try_from(u).unwrap_or(u32::MAX))
        .chain(held.eos_ids.iter().copied())
        .collect();
    let n = values.len();
    Ok(Some(Tensor::from_vec(values, n, device)?))
}
