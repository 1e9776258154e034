//! What this build can run on: [`cuda_available`] and [`devices`] (the CPU and every
//! visible CUDA GPU, with their memory), and why `device=auto` would fall back to the CPU.
//!
//! ```
//! for d in vlm_contract::devices() {
//!     println!("{} {} {:?} bytes free", d.kind.as_str(), d.name, d.free_memory);
//! }
//! ```

/// What kind of device a [`DeviceInfo`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceKind {
    /// The host processor.
    Cpu,
    /// An NVIDIA GPU through CUDA.
    Cuda,
}

impl DeviceKind {
    /// `"cpu"` or `"cuda"`, as `--device` spells them.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

/// One device vlm can run on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceInfo {
    /// The N of `cuda:N`; 0 for the CPU.
    pub index: usize,
    /// CPU or CUDA.
    pub kind: DeviceKind,
    /// The processor's or the card's model name (`"cpu"` when the system does not say).
    pub name: String,
    /// Bytes of memory the device has (the host's RAM for the CPU), when known.
    pub total_memory: Option<u64>,
    /// Bytes free now (the host's available RAM for the CPU), when known.
    pub free_memory: Option<u64>,
    /// A GPU's (major, minor) CUDA compute capability, e.g. (9, 0) for an H200; `None` for
    /// the CPU. Below (8, 0) `dtype=auto` runs in f16 (no bf16 on those cards).
    pub compute_capability: Option<(u32, u32)>,
}

impl DeviceInfo {
    /// The name `--device` / `device=` takes for it: `cpu` or `cuda:N`.
    pub fn device_arg(&self) -> String {
        match self.kind {
            DeviceKind::Cpu => "cpu".into(),
            DeviceKind::Cuda => format!("cuda:{}", self.index),
        }
    }
}

/// Whether this build has CUDA support and the driver sees at least one GPU.
pub fn cuda_available() -> bool {
    cuda_unavailable_reason().is_none()
}

/// Why `device=auto` would run on the CPU: `None` when a CUDA GPU can be used. The text
/// says what to do about it.
pub fn cuda_unavailable_reason() -> Option<String> {
    #[cfg(feature = "cuda")]
    {
        match candle_core::cuda_backend::cudarc::driver::CudaContext::device_count() {
            Ok(n) if n > 0 => None,
            Ok(_) => Some(
                "no CUDA device is visible (the driver reports 0 GPUs); check nvidia-smi and CUDA_VISIBLE_DEVICES"
                    .into(),
            ),
            Err(e) => Some(format!(
                "no CUDA device is visible ({e}); check nvidia-smi and CUDA_VISIBLE_DEVICES"
            )),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        Some(NOT_COMPILED.into())
    }
}

/// The fallback reason of a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
const NOT_COMPILED: &str = "this build of vlm was compiled without the `cuda` feature; \
rebuild with `--features cuda` (Python: MATURIN_PEP517_ARGS=\"--features cuda\" pip install ./vlm-py) \
to run on a GPU";

/// The CPU, then every visible CUDA device (in a build with the `cuda` feature).
/// Memory the system does not report is `None`; devices the driver lists but cannot open
/// are listed with what could be read.
pub fn devices() -> Vec<DeviceInfo> {
    std::iter::once(cpu_info()).chain(cuda_devices()).collect()
}

/// The CPU, from /proc/cpuinfo and /proc/meminfo where they exist (Linux).
fn cpu_info() -> DeviceInfo {
    let name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| cpu_model_name(&text))
        .unwrap_or_else(|| "cpu".into());
    let (total_memory, free_memory) = std::fs::read_to_string("/proc/meminfo")
        .map(|text| host_memory(&text))
        .unwrap_or((None, None));
    DeviceInfo {
        index: 0,
        kind: DeviceKind::Cpu,
        name,
        total_memory,
        free_memory,
        compute_capability: None,
    }
}

/// The first `model name` of /proc/cpuinfo (x86); ARM kernels have none.
fn cpu_model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        let value = value.trim();
        (key.trim() == "model name" && !value.is_empty()).then(|| value.to_string())
    })
}

/// (MemTotal, MemAvailable) of /proc/meminfo in bytes (the file counts kB). MemAvailable,
/// not MemFree: the page cache the kernel gives back on demand is memory a model can use.
fn host_memory(meminfo: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        meminfo.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
            kib.checked_mul(1024)
        })
    };
    (field("MemTotal"), field("MemAvailable"))
}

#[cfg(not(feature = "cuda"))]
fn cuda_devices() -> Vec<DeviceInfo> {
    Vec::new()
}

#[cfg(feature = "cuda")]
fn cuda_devices() -> Vec<DeviceInfo> {
    use candle_core::cuda_backend::cudarc::driver::CudaContext;
    let count = match CudaContext::device_count() {
        Ok(n) => usize::try_from(n).unwrap_or(0),
        Err(_) => return vec![],
    };
    (0..count)
        .map(|index| {
            // The primary context, the one candle's devices share: asking through it
            // creates no second context and costs no memory once a model is loaded.
            let ctx = CudaContext::new(index).ok();
            let name = ctx
                .as_ref()
                .and_then(|c| c.name().ok())
                .unwrap_or_else(|| format!("cuda:{index}"));
            let (free, total) = ctx
                .as_ref()
                .and_then(|c| c.mem_get_info().ok())
                .map_or((None, None), |(f, t)| (Some(f as u64), Some(t as u64)));
            DeviceInfo {
                index,
                kind: DeviceKind::Cuda,
                name,
                total_memory: total,
                free_memory: free,
                compute_capability: ctx
                    .as_ref()
                    .and_then(|c| c.compute_capability().ok())
                    .and_then(|(ma, mi)| Some((u32::try_from(ma).ok()?, u32::try_from(mi).ok()?))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7R13 Processor\nflags\t\t: fpu\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7R13 Processor\n";
    const MEMINFO: &str =
        "MemTotal:       24683792 kB\nMemFree:        17158780 kB\nMemAvailable:   23042192 kB\n";

    #[test]
    fn reads_the_cpu_model_name() {
        assert_eq!(
            cpu_model_name(CPUINFO).as_deref(),
            Some("AMD EPYC 7R13 Processor")
        );
        // aarch64 kernels print no model name.
        assert_eq!(cpu_model_name("processor\t: 0\nBogoMIPS\t: 50.00\n"), None);
    }

    #[test]
    fn reads_total_and_available_memory_in_bytes() {
        assert_eq!(
            host_memory(MEMINFO),
            (Some(24_683_792 * 1024), Some(23_042_192 * 1024))
        );
        assert_eq!(host_memory("garbage"), (None, None));
    }

    #[test]
    fn the_cpu_is_always_listed_first() {
        let all = devices();
        let cpu = &all[0];
        assert_eq!(cpu.kind, DeviceKind::Cpu);
        assert_eq!(cpu.device_arg(), "cpu");
        assert!(!cpu.name.is_empty());
        if std::path::Path::new("/proc/meminfo").is_file() {
            let (total, free) = (cpu.total_memory.unwrap(), cpu.free_memory.unwrap());
            assert!(total > 0 && free <= total, "{total} {free}");
        }
        assert!(all[1..].iter().all(|d| d.kind == DeviceKind::Cuda));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_the_cuda_feature_only_the_cpu_and_a_reason() {
        assert!(!cuda_available());
        assert_eq!(devices().len(), 1);
        let reason = cuda_unavailable_reason().unwrap();
        assert!(reason.contains("--features cuda"), "{reason}");
    }
}
