//! The decode step's small uploads (token ids, cache length, RoPE rows) through page-locked
//! host memory.
//!
//! A copy from ordinary (pageable) memory may wait for the stream to drain before it
//! stages the bytes (CUDA's documented behaviour for pageable transfers): harmless when the
//! host steps in turn, but it would hold the host back by a whole step when it queues the
//! next step while the device runs the one before (decoder/run_ahead.rs). A copy from
//! page-locked memory is only queued. The memory is split into two halves used by turns,
//! each with an event recorded after its copies: a half is written again only once the
//! copies that read it have run.

use candle_core::cuda_backend::cudarc::driver::result;
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, DType, Device, Result, Tensor};

use super::cuda::with_addresses;
use super::pinned::PinnedSlot;

/// What one upload writes: converted to the tensor's dtype on the way.
pub enum Values<'a> {
    U32(&'a [u32]),
    F32(&'a [f32]),
}

pub(super) struct Stage {
    /// Write-combined: the host only writes them, and the device reads them over PCIe.
    halves: [PinnedSlot; 2],
    /// Bytes in each half.
    bytes: usize,
    /// The half the next step writes.
    next: usize,
}

impl Stage {
    /// Room for `bytes` of uploads a step.
    pub(super) fn new(device: &Device, bytes: usize) -> Result<Self> {
        let Device::Cuda(dev) = device else {
            bail!("staged uploads need a CUDA device");
        };
        // Rounded up so that every upload can start 16-byte aligned.
        let bytes = bytes.div_ceil(16) * 16 + 64;
        let halves = [
            PinnedSlot::new(dev, bytes, true)?,
            PinnedSlot::new(dev, bytes, true)?,
        ];
        Ok(Self {
            halves,
            bytes,
            next: 0,
        })
    }

    /// Writes each tensor's values (contiguous CUDA tensors, converted to their dtype:
    /// f32, bf16, f16 or u32) through the next half, queued on the stream.
    pub(super) fn upload(&mut self, writes: &[(&Tensor, Values<'_>)]) -> Result<()> {
        let slot = &self.halves[self.next];
        // The copies that last read this half (two steps ago) must have run.
        slot.event().synchronize().w()?;
        let mut offset = 0;
        for (t, values) in writes {
            let n = match values {
                Values::U32(v) => v.len(),
                Values::F32(v) => v.len(),
            };
            if t.elem_count() != n {
                bail!("upload: {n} values into {:?}", t.shape());
            }
            let size = t.dtype().size_in_bytes();
            if offset + n * size > self.bytes {
                bail!(
                    "upload: {} bytes a step where {} were set up",
                    offset + n * size,
                    self.bytes
                );
            }
            // SAFETY: [offset, offset + n·size) lies in the half (checked above), no copy
            // reads it (its event), and each case writes n values of the dtype's size.
            unsafe {
                let at = slot.host().add(offset);
                match (values, t.dtype()) {
                    (Values::U32(v), DType::U32) => write(at, v.iter().copied()),
                    (Values::F32(v), DType::F32) => write(at, v.iter().copied()),
                    (Values::F32(v), DType::BF16) => {
                        write(at, v.iter().map(|&x| half::bf16::from_f32(x)))
                    }
                    (Values::F32(v), DType::F16) => {
                        write(at, v.iter().map(|&x| half::f16::from_f32(x)))
                    }
                    (_, d) => bail!("upload: these values into a {d:?} tensor"),
                }
            }
            with_addresses(&[Some(t)], |dev, p| {
                let stream = dev.cuda_stream();
                // SAFETY: the source is the n·size bytes written above, page-locked and left
                // alone until this half's event (recorded below) has passed; `t` is
                // contiguous and holds them at p[0].
                unsafe {
                    let src = std::slice::from_raw_parts(slot.host().add(offset), n * size);
                    result::memcpy_htod_async(p[0], src, stream.cu_stream())
                }
                .w()?;
                Ok(())
            })?;
            offset += (n * size).div_ceil(16) * 16;
        }
        if let Some((t, _)) = writes.first() {
            with_addresses(&[Some(*t)], |dev, _| {
                slot.event().record(&dev.cuda_stream()).w()
            })?;
        }
        self.next ^= 1;
        Ok(())
    }
}

/// Writes `values` one after another from `at`.
///
/// # Safety
/// `at` must be valid for writing as many `T` as `values` yields, aligned for `T`.
unsafe fn write<T>(at: *mut u8, values: impl Iterator<Item = T>) {
    let at = at as *mut T;
    for (i, v) in values.enumerate() {
        at.add(i).write(v);
    }
}
