//! Page-locked host memory paired with the event of the last copy that reads or writes it:
//! the two halves of the decode step's uploads (step_uploads.rs) and the two slots of the
//! picks made ahead (device_picks.rs). Its owner records the event after each copy and
//! waits on it before touching the memory again; dropping it waits too, so that a copy
//! still queued never lands in freed memory.

use candle_core::cuda_backend::cudarc::driver::{result, sys, CudaEvent};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, Result};

pub(super) struct PinnedSlot {
    host: *mut u8,
    event: CudaEvent,
}

// SAFETY: the host memory is owned by this value alone (allocated in `new`, freed in
// `drop`); its owners use it from one thread at a time, as a request's decoder state is.
unsafe impl Send for PinnedSlot {}

impl PinnedSlot {
    /// `bytes` of page-locked memory in `dev`'s context. `write_combined` for memory the
    /// host only writes and the device reads over PCIe; plain where the host reads it.
    pub(super) fn new(dev: &CudaDevice, bytes: usize, write_combined: bool) -> Result<Self> {
        // The event first: should the allocation fail, the event frees itself.
        let event = dev.cuda_stream().context().new_event(None).w()?;
        let flags = if write_combined {
            sys::CU_MEMHOSTALLOC_WRITECOMBINED
        } else {
            0
        };
        // SAFETY: a fresh allocation of `bytes`, freed in `drop`.
        let host = unsafe { result::malloc_host(bytes, flags) }.w()? as *mut u8;
        Ok(Self { host, event })
    }

    /// The start of the memory.
    pub(super) fn host(&self) -> *mut u8 {
        self.host
    }

    /// The event its owner records after each copy that uses the memory.
    pub(super) fn event(&self) -> &CudaEvent {
        &self.event
    }
}

impl Drop for PinnedSlot {
    fn drop(&mut self) {
        // A copy still queued (the step the host ran ahead with, when its batch ended
        // earlier; the last step's uploads) must be done with the memory before it goes.
        let _ = self.event.synchronize();
        // SAFETY: allocated in `new`; no copy uses it any more.
        let _ = unsafe { result::free_host(self.host as _) };
    }
}
