//! What a comparison found, as plain records: `OUT/results.json`, the reports' input, and
//! what `vlm.compare(...)` returns to Python. Every number here was measured or computed
//! from measurements; what was not measured is `null` with a note saying why.

use serde::{Deserialize, Serialize};

/// Bumped when a key changes meaning.
pub const RESULTS_VERSION: u32 = 1;

/// The whole comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub version: u32,
    pub settings: Settings,
    /// Photos every model ran on, by name (file name under `--photos`).
    pub photos: Vec<String>,
    /// Photos (and trip photos) that could not be read, with why.
    pub failed_photos: Vec<FailedPhoto>,
    /// Trip folders under `--trips`, with their photos.
    pub trips: Vec<TripInfo>,
    /// References (refs.jsonl lines) for photos that are not in the photos folder.
    pub unknown_references: Vec<UnknownReference>,
    /// How GPU memory was counted, or why it was not.
    pub gpu_memory: GpuMemoryInfo,
    /// One row per `--model`, in order; a model that failed to load holds its error.
    pub models: Vec<ModelResult>,
    /// The `--cascade` row, when asked for.
    pub cascade: Option<CascadeResult>,
    /// What the reader must know to read the numbers (omitted columns and why).
    pub notes: Vec<String>,
}

/// The settings the numbers depend on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub batch_size: usize,
    pub max_new_tokens: usize,
    pub device: String,
    pub dtype: String,
    pub quantization: String,
    /// The card's price per hour (`--price-per-hour`); `null`: costs are not computed.
    pub price_per_hour: Option<f64>,
    pub currency: String,
    pub card: Option<String>,
    /// The describe prompts' languages, in order.
    pub languages: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedPhoto {
    pub photo: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TripInfo {
    pub trip: String,
    pub photos: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownReference {
    /// 1-based line of refs.jsonl.
    pub line: usize,
    pub photo: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GpuMemoryInfo {
    /// `"process"` (NVML's count for this process), `"device"` (the whole card's use minus
    /// what was in use before the comparison started: another process's changes count
    /// too), or `null` when not measured.
    pub source: Option<String>,
    /// The card, as NVML names it.
    pub card: Option<String>,
    /// Bytes an empty CUDA device of this process holds (context, cuBLAS handles),
    /// reported apart from each model's peak.
    pub cuda_context_bytes: Option<u64>,
    /// Why memory was not measured, e.g. "not measured (no NVML)".
    pub note: Option<String>,
}

/// One model's row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelResult {
    /// `--model` as given.
    pub model: String,
    /// A short name for tables: the folder's or hub id's last part.
    pub name: String,
    /// Why the model did not run (it failed to load); then everything else is empty.
    pub error: Option<String>,
    pub info: Option<ModelInfoRecord>,
    pub metrics: Option<Metrics>,
    /// Against the references; `null` without references.
    pub quality: Option<Quality>,
    /// Every output, in task order (describe, vqa, relate).
    pub outputs: Vec<Output>,
}

/// What was loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfoRecord {
    pub family: String,
    pub model_type: String,
    pub device: String,
    pub dtype: String,
    pub quantization: String,
    pub parameters: u64,
    /// Whether several photos go into one conversation; when not, relate captions each
    /// photo and relates the captions.
    pub native_multi_image: bool,
}

/// What was measured for one model. Times in seconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    /// `vlm_core::load`: reading, converting and moving the weights.
    pub load_s: f64,
    /// The first describe call after loading (kernels compiled and buffers allocated for
    /// the first time); not among the latency samples.
    pub first_call_s: f64,
    /// Wall time of one describe call at batch 1, over every photo and language.
    pub latency_p50_s: Option<f64>,
    pub latency_p95_s: Option<f64>,
    pub latency_samples: usize,
    /// Photos described per second at `throughput_batch_size` (English prompt).
    pub throughput_photos_per_s: Option<f64>,
    pub throughput_batch_size: usize,
    /// Median over the batch-1 calls of preprocessing + vision tower + prefill.
    pub time_to_first_token_s: Option<f64>,
    /// Decode tokens over decode time, summed over the batch-1 calls.
    pub decode_tokens_per_s: Option<f64>,
    /// Highest GPU memory while this model was loaded and ran, as the driver counts it,
    /// minus the CUDA context (`gpu_memory.cuda_context_bytes`); `null` when not measured.
    pub peak_gpu_memory_bytes: Option<u64>,
    /// Why `peak_gpu_memory_bytes` is null.
    pub gpu_memory_note: Option<String>,
    /// Bytes of weights the model holds on its device.
    pub weights_bytes: u64,
    /// `--price-per-hour` (the card's, the same for every model); `null` without a price.
    pub cost_per_hour: Option<f64>,
    /// price × (1,000 photos ÷ throughput) ÷ 3,600 s; `null` without a price.
    pub cost_per_1000_photos: Option<f64>,
}

/// Scores against the references (only tasks that have references are scored).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Quality {
    /// Share of reference answers the normalised model answer equals.
    pub vqa_exact_match: Option<f64>,
    /// Share of reference answers contained in the normalised model answer.
    pub vqa_contains_match: Option<f64>,
    /// Reference answers scored (a failed answer counts as wrong).
    pub vqa_scored: usize,
    /// Corpus chrF (0-100) of the descriptions against reference captions of the same
    /// language.
    pub caption_chrf: Option<f64>,
    pub captions_scored: usize,
}

/// One output of one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Output {
    /// `describe`, `vqa` or `relate`.
    pub task: String,
    /// The photo (describe, vqa) or the trip folder (relate).
    pub subject: String,
    /// `zh` / `en` for describe.
    pub language: Option<String>,
    pub question: Option<String>,
    pub text: Option<String>,
    pub error: Option<String>,
    /// Generated tokens.
    pub tokens: Option<usize>,
    /// Mean token log-probability (only for the cascade's cheap model).
    pub mean_logprob: Option<f64>,
    /// relate only: `native` (one conversation) or `captions` (each photo captioned,
    /// then the captions related).
    pub multi_image: Option<String>,
}

/// `--cascade CHEAP:STRONG --threshold T`: the cheap model answers; photos whose mean
/// token log-probability (over the cheap model's outputs for the photo) is under T go to
/// the strong model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CascadeResult {
    pub cheap: String,
    pub strong: String,
    pub threshold: f64,
    /// Why the row could not be computed (a model did not run); then the rest is empty.
    pub error: Option<String>,
    pub routed_photos: Vec<String>,
    /// routed photos ÷ photos.
    pub routed_share: Option<f64>,
    /// Seconds per photo: the cheap model's, plus the strong one's for the routed share
    /// (each from its measured throughput).
    pub seconds_per_photo: Option<f64>,
    pub cost_per_1000_photos: Option<f64>,
    pub quality: Option<Quality>,
}
