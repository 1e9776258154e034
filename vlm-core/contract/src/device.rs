//! Device and dtype choices as users spell them (`cuda:1`, `bf16`, `auto`).

use candle_core::{DType, Device};

use crate::{Error, Result, RuntimeOptions};

/// Memory in use on CUDA device `ordinal` as the driver counts it (every process's, this
/// one's context included) and the card's total, in bytes. `None` in a build without CUDA
/// or when the device cannot be opened.
pub fn gpu_memory(ordinal: usize) -> Option<(usize, usize)> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::{result, CudaContext};
        // The primary context: the one candle's devices use.
        let ctx = CudaContext::new(ordinal).ok()?;
        ctx.bind_to_thread().ok()?;
        let (free, total) = result::mem_get_info().ok()?;
        Some((total - free, total))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ordinal;
        None
    }
}

/// The most bytes CUDA device `ordinal`'s memory pool had handed out at once since the last
/// call (or since the context was made), and resets that mark so the next call measures
/// from now. candle allocates every tensor from this pool, so it is the peak of live tensors
/// alone: not the CUDA context, module code or cuBLAS's workspaces, which `nvidia-smi` adds.
/// `None` in a build without CUDA or when the pool cannot be read. Resets every mark
/// [`gpu_memory_breakdown`] reads.
pub fn pool_high_water(ordinal: usize) -> Option<u64> {
    gpu_memory_breakdown(ordinal).map(|m| m.pool_used_high)
}

/// Where a process's GPU memory is, in bytes, for finding what a model costs beyond its
/// tensors. "Now" is the moment of the call, "peak" the most since the previous call (or
/// since the context was made): each call resets the peaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuMemoryBreakdown {
    /// The driver's count for the whole card now: every process, contexts included.
    pub card_used: u64,
    /// Mapped by the device's memory pool now, which candle allocates every tensor from.
    pub pool_reserved: u64,
    /// The pool's peak mapping: live tensors plus what freed ones left mapped.
    pub pool_reserved_high: u64,
    /// Held by live tensors now.
    pub pool_used: u64,
    /// The peak of live tensors.
    pub pool_used_high: u64,
    /// Mapped for CUDA graphs' own allocations now (the decode steps' temporaries).
    pub graph_reserved: u64,
    /// The graphs' peak mapping.
    pub graph_reserved_high: u64,
    /// Stack bytes per GPU thread the context reserves for kernels (`CU_LIMIT_STACK_SIZE`),
    /// reserved for every thread the card can run at once.
    pub stack_per_thread: u64,
}

/// [`GpuMemoryBreakdown`] of CUDA device `ordinal` now, with its peaks since the previous
/// call, which this call resets. `None` in a build without CUDA or when the device cannot
/// be opened.
pub fn gpu_memory_breakdown(ordinal: usize) -> Option<GpuMemoryBreakdown> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::{result, sys, CudaContext};
        use sys::CUgraphMem_attribute as G;
        use sys::CUmemPool_attribute as P;
        let ctx = CudaContext::new(ordinal).ok()?;
        ctx.bind_to_thread().ok()?;
        let (free, total) = result::mem_get_info().ok()?;
        let mut m = GpuMemoryBreakdown {
            card_used: (total - free) as u64,
            ..Default::default()
        };
        // SAFETY: the pool and device are the open context's; every attribute read here is
        // a u64 (the stack limit a usize), and setting a high mark to 0 is how the driver
        // resets it.
        unsafe {
            let pool = result::device::get_mem_pool(ctx.cu_device()).ok()?;
            let read = |attr: P| {
                let mut v: u64 = 0;
                result::mem_pool::get_attribute(pool, attr, (&mut v as *mut u64).cast()).ok()?;
                Some(v)
            };
            m.pool_reserved = read(P::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?;
            m.pool_reserved_high = read(P::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?;
            m.pool_used = read(P::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?;
            m.pool_used_high = read(P::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?;
            for attr in [
                P::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
                P::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            ] {
                let mut zero: u64 = 0;
                let _ = result::mem_pool::set_attribute(pool, attr, (&mut zero as *mut u64).cast());
            }
            let dev = ctx.cu_device();
            let graph = |attr: G| {
                let mut v: u64 = 0;
                sys::cuDeviceGetGraphMemAttribute(dev, attr, (&mut v as *mut u64).cast())
                    .result()
                    .ok()
                    .map(|_| v)
            };
            m.graph_reserved = graph(G::CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT).unwrap_or(0);
            m.graph_reserved_high = graph(G::CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH).unwrap_or(0);
            for attr in [
                G::CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH,
                G::CU_GRAPH_MEM_ATTR_USED_MEM_HIGH,
            ] {
                let mut zero: u64 = 0;
                let _ =
                    sys::cuDeviceSetGraphMemAttribute(dev, attr, (&mut zero as *mut u64).cast());
            }
            let mut stack: usize = 0;
            if sys::cuCtxGetLimit(&mut stack, sys::CUlimit::CU_LIMIT_STACK_SIZE)
                .result()
                .is_ok()
            {
                m.stack_per_thread = stack as u64;
            }
        }
        Some(m)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ordinal;
        None
    }
}

/// Starts (`true`) or stops collection by an attached CUDA profiler (Nsight Compute's
/// `--profile-from-start off`), so that a profile holds only the region between. Returns
/// whether the driver took the call: false in a build without CUDA.
pub fn cuda_profiler(ordinal: usize, start: bool) -> bool {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::{
            profiler_start, profiler_stop, CudaContext,
        };
        let Ok(ctx) = CudaContext::new(ordinal) else {
            return false;
        };
        if ctx.bind_to_thread().is_err() {
            return false;
        }
        if start {
            profiler_start()
        } else {
            profiler_stop()
        }
        .is_ok()
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (ordinal, start);
        false
    }
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The first CUDA device when this build has CUDA and one is present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl DeviceChoice {
    /// Parses `auto`, `cpu`, `cuda`, `cuda:N` (also `gpu`).
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(Error::invalid_option(
                    "device",
                    format!("\"{s}\" is not a device; use auto, cpu, cuda or cuda:N"),
                )),
            },
        }
    }

    /// Opens the device, then applies the device-wide settings of `runtime` (the CUDA
    /// pool's [`RuntimeOptions::cuda_pool_keep`]).
    pub fn open_with(self, runtime: &RuntimeOptions) -> Result<Device> {
        let device = self.open()?;
        if runtime.cuda_pool_keep {
            keep_pool_memory(&device);
        }
        Ok(device)
    }

    /// Opens the device.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => match auto_cuda() {
                Ok(device) => {
                    tracing::debug!(target: "vlm::device", "device=auto: running on cuda:0");
                    Ok(device)
                }
                Err(reason) => {
                    // A silent fallback made a CUDA build on a machine whose driver was
                    // missing look like a 50x slower GPU; say it once per load.
                    tracing::warn!(target: "vlm::device", "device=auto runs on the CPU: {reason}");
                    Ok(Device::Cpu)
                }
            },
            Self::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(Error::Device(
                        "this build of vlm has no CUDA support: rebuild with `--features cuda` (Python: pip install with the cuda option), or use device=cpu".into(),
                    ));
                }
                let device = Device::new_cuda(n).map_err(|e| {
                    Error::Device(format!(
                        "cannot open cuda:{n} ({e}); check nvidia-smi and CUDA_VISIBLE_DEVICES"
                    ))
                })?;
                Ok(device)
            }
        }
    }
}

/// CUDA device 0 for `device=auto`, or why it cannot be used (what to do about it included).
fn auto_cuda() -> std::result::Result<Device, String> {
    if !candle_core::utils::cuda_is_available() {
        return Err(crate::devices::cuda_unavailable_reason().unwrap_or_default());
    }
    Device::new_cuda(0).map_err(|e| {
        format!(
            "no CUDA device is visible ({}); check nvidia-smi and CUDA_VISIBLE_DEVICES",
            crate::error::candle_message(&e)
        )
    })
}

/// Tells the driver to keep the memory that stream-ordered frees return to the device's
/// pool (candle allocates every tensor with `cuMemAllocAsync`); [`DeviceChoice::open_with`]
/// calls it for [`RuntimeOptions::cuda_pool_keep`]. By default the pool gives it all back
/// to the OS at each synchronisation, which a decode step does once per token and the
/// vision tower and prefill allocate hundreds of MB after, so each of those allocations
/// maps fresh pages. Opt-in until measured on a GPU (predicted: batch-8 vision and prefill
/// faster; the process then holds its peak, as PyTorch's caching allocator does). Returns
/// whether the setting took (false on the CPU).
pub fn keep_pool_memory(device: &Device) -> bool {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::{result, sys};
        let Device::Cuda(dev) = device else {
            return false;
        };
        let stream = dev.cuda_stream();
        let ctx = stream.context();
        if ctx.bind_to_thread().is_err() {
            return false;
        }
        let mut keep: u64 = u64::MAX;
        // SAFETY: the device comes from an open context; the attribute takes a u64.
        unsafe {
            result::device::get_mem_pool(ctx.cu_device()).is_ok_and(|pool| {
                result::mem_pool::set_attribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    (&mut keep as *mut u64).cast(),
                )
                .is_ok()
            })
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        false
    }
}

/// As `--device` spells it: `auto`, `cpu`, `cuda:N`.
impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Floating-point precision of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypeChoice {
    /// bf16 on CUDA (f16 below compute capability 8.0), f32 on the CPU (candle's CPU
    /// half-precision matmuls are slow).
    #[default]
    Auto,
    /// 32-bit float: the reference precision of the parity tests.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16: what the Qwen checkpoints were trained in.
    BF16,
}

impl DTypeChoice {
    /// Parses `auto`, `f32`/`float32`, `f16`/`float16`/`half`, `bf16`/`bfloat16`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "f32" | "float32" | "float" => Ok(Self::F32),
            "f16" | "float16" | "half" | "fp16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            other => Err(Error::invalid_option(
                "dtype",
                format!("\"{other}\" is not a dtype; use auto, f32, f16 or bf16"),
            )),
        }
    }

    /// The dtype to use on `device`. `Auto` on a GPU is bf16 from compute capability 8.0
    /// (Ampere) and f16 below it: older cards (Pascal 6.x, Volta 7.0, Turing 7.5) have no
    /// bf16 arithmetic, and candle's CUDA kernels leave their bf16 versions out of builds
    /// for those cards.
    pub fn resolve(self, device: &Device) -> DType {
        match self {
            Self::Auto if device.is_cuda() => auto_gpu_dtype(compute_capability(device)),
            Self::Auto => DType::F32,
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
        }
    }
}

/// `dtype=auto` on a GPU of compute capability `cap` (`None`: unknown, taken as a current
/// card).
fn auto_gpu_dtype(cap: Option<(u32, u32)>) -> DType {
    match cap {
        Some((major, _)) if major < 8 => DType::F16,
        _ => DType::BF16,
    }
}

/// The (major, minor) compute capability of a CUDA `device`; `None` on the CPU or when the
/// driver does not say.
pub fn compute_capability(device: &Device) -> Option<(u32, u32)> {
    #[cfg(feature = "cuda")]
    {
        if let Device::Cuda(cuda) = device {
            let (major, minor) = cuda.cuda_stream().context().compute_capability().ok()?;
            return Some((u32::try_from(major).ok()?, u32::try_from(minor).ok()?));
        }
    }
    let _ = device;
    None
}

/// As `--dtype` spells it: `auto`, `f32`, `f16`, `bf16`.
impl std::fmt::Display for DTypeChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        })
    }
}

/// The device's name as `info()` reports it.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_strings() {
        assert_eq!(DeviceChoice::parse("CPU").unwrap(), DeviceChoice::Cpu);
        assert_eq!(DeviceChoice::parse("cuda").unwrap(), DeviceChoice::Cuda(0));
        assert_eq!(
            DeviceChoice::parse("cuda:3").unwrap(),
            DeviceChoice::Cuda(3)
        );
        for spelled in ["auto", "cpu", "cuda:3"] {
            assert_eq!(DeviceChoice::parse(spelled).unwrap().to_string(), spelled);
        }
        let err = DeviceChoice::parse("cuda:x").unwrap_err().to_string();
        assert!(err.contains("cuda:N"), "{err}");
    }

    #[test]
    fn auto_dtype_is_f32_on_cpu() {
        assert_eq!(DTypeChoice::Auto.resolve(&Device::Cpu), DType::F32);
        assert_eq!(compute_capability(&Device::Cpu), None);
        assert_eq!(DTypeChoice::parse("bfloat16").unwrap(), DTypeChoice::BF16);
        assert!(DTypeChoice::parse("int4").is_err());
    }

    /// Runs `f` with a subscriber that writes every event at debug and above to a string.
    fn logged(f: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = buffer.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn auto_on_a_cpu_build_warns_why_it_runs_on_the_cpu() {
        let log = logged(|| {
            assert!(matches!(DeviceChoice::Auto.open().unwrap(), Device::Cpu));
        });
        assert!(log.contains("WARN"), "{log}");
        assert!(log.contains("vlm::device"), "{log}");
        assert!(
            log.contains("device=auto runs on the CPU") && log.contains("--features cuda"),
            "{log}"
        );
        let quiet = logged(|| {
            DeviceChoice::Cpu.open().unwrap();
        });
        assert!(quiet.is_empty(), "{quiet}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let err = DeviceChoice::Cuda(0).open().unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Device);
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }

    #[test]
    fn auto_on_a_gpu_is_bf16_from_ampere_and_f16_before() {
        // GTX 1050 (6.1), V100 (7.0), T4 (7.5): f16; A100 (8.0), RTX 4090 (8.9), H200 (9.0): bf16.
        for cap in [(6, 1), (7, 0), (7, 5)] {
            assert_eq!(auto_gpu_dtype(Some(cap)), DType::F16, "{cap:?}");
        }
        for cap in [(8, 0), (8, 9), (9, 0), (12, 0)] {
            assert_eq!(auto_gpu_dtype(Some(cap)), DType::BF16, "{cap:?}");
        }
        assert_eq!(auto_gpu_dtype(None), DType::BF16);
    }
}
