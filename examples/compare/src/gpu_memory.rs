//! GPU memory as the driver counts it, through NVML (nvml-wrapper opens libnvidia-ml at
//! run time, so nothing here needs a GPU to build). Where NVML cannot be opened, memory is
//! "not measured (no NVML)", never guessed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::{Device, Nvml};

use crate::results::GpuMemoryInfo;

/// How often the peak is sampled while a model runs: a decode step of a small model takes
/// a few ms, a batch's activations live for tens of ms or more.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// How memory is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// NVML lists this process with its bytes.
    Process,
    /// NVML does not see this process (a container's process ids): the card's used memory
    /// minus what was used before the comparison began.
    Device,
}

/// Reads one card's memory.
pub struct GpuMeter {
    nvml: Option<Nvml>,
    index: Option<NvmlIndex>,
    note: Option<String>,
    source: Option<Source>,
    /// The card's used bytes before this process opened a CUDA context.
    baseline: u64,
    /// What an empty CUDA device of this process holds, in the same count as samples.
    context: Option<u64>,
}

#[derive(Debug, Clone)]
enum NvmlIndex {
    Index(u32),
    Uuid(String),
}

impl GpuMeter {
    /// A meter that measures nothing and says why.
    pub fn not_measured(note: impl Into<String>) -> Self {
        Self {
            nvml: None,
            index: None,
            note: Some(note.into()),
            source: None,
            baseline: 0,
            context: None,
        }
    }

    /// Opens NVML for CUDA device `ordinal`, before this process makes a CUDA context.
    pub fn open(ordinal: usize) -> Self {
        let nvml = match Nvml::init() {
            Ok(nvml) => nvml,
            Err(e) => return Self::not_measured(format!("not measured (no NVML: {e})")),
        };
        let index = nvml_index(ordinal);
        let mut meter = Self {
            nvml: Some(nvml),
            index: Some(index),
            note: None,
            source: None,
            baseline: 0,
            context: None,
        };
        match meter.device().and_then(|d| d.memory_info().ok()) {
            Some(info) => meter.baseline = info.used,
            None => {
                return Self::not_measured(format!(
                    "not measured (NVML has no device for cuda:{ordinal})"
                ))
            }
        }
        meter
    }

    fn device(&self) -> Option<Device<'_>> {
        let nvml = self.nvml.as_ref()?;
        match self.index.as_ref()? {
            NvmlIndex::Index(i) => nvml.device_by_index(*i).ok(),
            NvmlIndex::Uuid(u) => nvml.device_by_uuid(u.as_str()).ok(),
        }
    }

    /// This process's bytes when NVML lists it.
    fn process_bytes(device: &Device<'_>) -> Option<u64> {
        let pid = std::process::id();
        let processes = device.running_compute_processes().ok()?;
        processes
            .iter()
            .find(|p| p.pid == pid)
            .and_then(|p| match p.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => Some(bytes),
                UsedGpuMemory::Unavailable => None,
            })
    }

    /// Call once a CUDA device of this process is open and nothing else is loaded: picks
    /// how to count and takes the context's size.
    pub fn measure_context(&mut self) {
        let Some(device) = self.device() else { return };
        let (source, bytes) = match Self::process_bytes(&device) {
            Some(bytes) => (Source::Process, Some(bytes)),
            None => (
                Source::Device,
                device
                    .memory_info()
                    .ok()
                    .map(|m| m.used.saturating_sub(self.baseline)),
            ),
        };
        self.source = Some(source);
        self.context = bytes;
    }

    /// One sample in the chosen count, the context included.
    fn sample(&self) -> Option<u64> {
        let device = self.device()?;
        match self.source? {
            Source::Process => Self::process_bytes(&device),
            Source::Device => device
                .memory_info()
                .ok()
                .map(|m| m.used.saturating_sub(self.baseline)),
        }
    }

    /// Runs `f` while sampling; returns its result and the highest sample minus the
    /// context (`None` when not measured).
    pub fn peak_during<R>(&self, f: impl FnOnce() -> R) -> (R, Option<u64>) {
        if self.source.is_none() {
            return (f(), None);
        }
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let sampler = scope.spawn(|| {
                let mut peak: Option<u64> = None;
                loop {
                    if let Some(s) = self.sample() {
                        peak = Some(peak.map_or(s, |p| p.max(s)));
                    }
                    if stop.load(Ordering::Relaxed) {
                        return peak;
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
            });
            let out = f();
            stop.store(true, Ordering::Relaxed);
            let peak = sampler.join().ok().flatten();
            let context = self.context.unwrap_or(0);
            (out, peak.map(|p| p.saturating_sub(context)))
        })
    }

    /// Why a model's peak is null, when it is.
    pub fn note(&self) -> Option<String> {
        match (&self.note, self.source) {
            (Some(note), _) => Some(note.clone()),
            (None, None) => Some("not measured (no CUDA device was opened)".into()),
            (None, Some(_)) => None,
        }
    }

    /// For results.json.
    pub fn info(&self) -> GpuMemoryInfo {
        GpuMemoryInfo {
            source: self.source.map(|s| {
                match s {
                    Source::Process => "process",
                    Source::Device => "device",
                }
                .to_string()
            }),
            card: self.device().and_then(|d| d.name().ok()),
            cuda_context_bytes: self.context,
            note: self.note(),
        }
    }
}

/// NVML's handle for CUDA device `ordinal`: CUDA_VISIBLE_DEVICES renumbers the cards
/// CUDA sees (by index or UUID); without it the orders agree on machines whose cards are
/// all of one model (CUDA puts the fastest first, NVML orders by PCI bus).
fn nvml_index(ordinal: usize) -> NvmlIndex {
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let entry = visible
        .as_deref()
        .and_then(|v| v.split(',').nth(ordinal).map(str::trim).map(String::from));
    match entry {
        Some(e) if e.starts_with("GPU-") || e.starts_with("MIG-") => NvmlIndex::Uuid(e),
        Some(e) => e
            .parse()
            .map_or(NvmlIndex::Index(ordinal as u32), NvmlIndex::Index),
        None => NvmlIndex::Index(ordinal as u32),
    }
}
