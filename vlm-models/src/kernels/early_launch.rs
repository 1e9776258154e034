//! Launches of the decode step's kernels that may start before the kernel ahead of them in
//! the stream has ended (programmatic dependent launch, compute capability 9.0 and up).
//!
//! A decode step of Qwen3-VL-2B is ~290 small launches: each waited for the one before to
//! drain and for its own blocks to come up, then for its first weights to arrive. Launched
//! this way, a kernel's blocks come up while the previous kernel finishes, request the
//! weights (which no kernel of the step writes), and wait in `wait_for_inputs()` (common.cuh)
//! for the earlier kernels' results. Every kernel launched here must call that in every
//! thread before reading what an earlier kernel wrote and before it ends: a kernel that
//! could end early would let the one after it read results not yet written.
//!
//! Only where a model on the device was loaded with `RuntimeOptions::early_launch` on, and
//! the card has compute capability 9.0 or more; otherwise the same kernels are launched the
//! ordinary way (their waits compile to nothing below 9.0 and return at once there).
//! Run 43 (H200) measured no gain from it (docs/benchmarks.md), hence off by default.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::Mutex;

use candle_core::cuda_backend::cudarc::driver::{sys, CudaFunction, CudaStream, DeviceRepr};
use candle_core::cuda_backend::cudarc::driver::{DriverError, LaunchConfig};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, Result};

/// A kernel's arguments, each borrowed until the launch (the driver copies them then).
pub(super) struct Args<'a> {
    values: Vec<*mut c_void>,
    borrowed: PhantomData<&'a ()>,
}

impl<'a> Args<'a> {
    pub(super) fn new() -> Self {
        Self {
            values: Vec::with_capacity(20),
            borrowed: PhantomData,
        }
    }

    pub(super) fn arg<T: DeviceRepr>(&mut self, value: &'a T) -> &mut Self {
        self.values.push(value as *const T as *mut c_void);
        self
    }

    /// Launches `func` on `dev`'s stream, early where [`early_launch`] says so.
    ///
    /// # Safety
    /// The arguments match the kernel's parameters in number, order and type, the
    /// addresses among them are live device buffers of the sizes the kernel reads and
    /// writes, and the kernel calls `wait_for_inputs()` as this module's comment says.
    pub(super) unsafe fn launch(
        mut self,
        dev: &CudaDevice,
        func: &CudaFunction,
        cfg: LaunchConfig,
    ) -> Result<()> {
        let stream = dev.cuda_stream();
        let early = early_launch(dev);
        launch_on(&stream, func, cfg, &mut self.values, early).w()
    }
}

unsafe fn launch_on(
    stream: &CudaStream,
    func: &CudaFunction,
    cfg: LaunchConfig,
    args: &mut [*mut c_void],
    early: bool,
) -> std::result::Result<(), DriverError> {
    stream.context().bind_to_thread()?;
    // SAFETY: all-zero is a valid attribute (an id of 0 is "ignore"); the fields are set
    // below.
    let mut attr: sys::CUlaunchAttribute = std::mem::zeroed();
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream.cu_stream(),
        attrs: &mut attr,
        numAttrs: u32::from(early),
    };
    // SAFETY: the caller vouches for the arguments (see Args::launch); `config` and `attr`
    // outlive the call, which copies them.
    sys::cuLaunchKernelEx(
        &config,
        func.cu_function(),
        args.as_mut_ptr(),
        std::ptr::null_mut(),
    )
    .result()
}

/// The device ordinals on which a model asked for early launches, with whether the card
/// takes them (compute capability 9.0 or more, asked once: the launch path is the decode's
/// host time).
static DEVICES: Mutex<Vec<(usize, bool)>> = Mutex::new(Vec::new());

/// Whether kernels on `dev` are launched early.
pub(super) fn early_launch(dev: &CudaDevice) -> bool {
    let ordinal = dev.cuda_stream().context().ordinal();
    let devices = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    devices.iter().any(|&(o, early)| o == ordinal && early)
}

/// Launches on `dev` early from now on, for every model on it, where the card takes it.
pub(super) fn turn_on(dev: &CudaDevice) {
    let stream = dev.cuda_stream();
    let ordinal = stream.context().ordinal();
    let mut devices = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    if devices.iter().any(|(o, _)| *o == ordinal) {
        return;
    }
    let major = stream
        .context()
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        .unwrap_or(0);
    devices.push((ordinal, major >= 9));
}
