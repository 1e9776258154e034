//! # vlm-compare
//!
//! The founders' one-hour model evaluation as one call: for each model, load time,
//! first-call time, per-photo latency (p50/p95 at batch 1), throughput at batch N, time to
//! first token, decode speed, peak GPU memory (the driver's count, through NVML), weights,
//! cost per hour and per 1,000 photos; describe (zh and en), questions, and relate per
//! trip; quality against references when given (VQA exact and contains match, caption
//! chrF); a cheap-then-strong cascade row. [`compare`] returns plain [`Results`];
//! [`write_report`] writes `report.md`, `report.html` and `results.json`.
//!
//! The `vlm compare` command and Python's `vlm.compare` both call this crate, so the
//! comparison is written once.
//!
//! ```no_run
//! let options = vlm_compare::CompareOptions {
//!     models: vec!["Qwen/Qwen2.5-VL-3B-Instruct".into(), "Salesforce/blip2-opt-2.7b".into()],
//!     photos: "photos/".into(),
//!     price_per_hour: Some(5.8),
//!     ..vlm_compare::CompareOptions::default()
//! };
//! let results = vlm_compare::compare(&options, &mut |_| {})?;
//! vlm_compare::write_report(&results, &options, std::path::Path::new("report/"))?;
//! # Ok::<(), vlm_compare::CompareError>(())
//! ```

pub mod gpu_memory;
pub mod inputs;
pub mod metrics;
pub mod quality;
pub mod report_html;
pub mod report_md;
pub mod results;
mod run;
pub mod table;

use std::path::{Path, PathBuf};

use vlm_core::model::LoadOptions;
use vlm_core::{DeviceChoice, Language};

use gpu_memory::GpuMeter;
use inputs::Inputs;
pub use results::Results;
use results::{Settings, TripInfo, RESULTS_VERSION};
use run::{language_code, run_model, Plan};

/// What to compare and on what.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Model folders or hub ids, in table order.
    pub models: Vec<String>,
    /// A folder of photos (not recursive).
    pub photos: PathBuf,
    /// A folder of trip folders: each subfolder's photos are related as one trip.
    pub trips: Option<PathBuf>,
    /// q.jsonl: `{"question": ...}` for every photo or `{"photo": ..., "question": ...}`.
    pub questions: Option<PathBuf>,
    /// refs.jsonl: `{"photo", "caption", "language"?}` or `{"photo", "question", "answer"}`.
    pub references: Option<PathBuf>,
    /// The rented card's price per hour; `None` leaves costs out.
    pub price_per_hour: Option<f64>,
    pub currency: String,
    /// The card's name, for the report (e.g. "A10G").
    pub card: Option<String>,
    /// Photos per forward pass for the throughput and question runs.
    pub batch_size: usize,
    pub max_new_tokens: usize,
    /// The describe languages.
    pub languages: Vec<Language>,
    /// `(cheap, strong)`: each a `--model` value or its short name.
    pub cascade: Option<(String, String)>,
    /// Mean token log-probability under which the cascade routes a photo to the strong model.
    pub threshold: f64,
    /// Device, dtype, quantization and pixel budget of every model.
    pub load: LoadOptions,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            models: vec![],
            photos: PathBuf::new(),
            trips: None,
            questions: None,
            references: None,
            price_per_hour: None,
            currency: "CNY".into(),
            card: None,
            batch_size: 4,
            max_new_tokens: 128,
            languages: vec![Language::Chinese, Language::English],
            cascade: None,
            threshold: -1.0,
            load: LoadOptions::default(),
        }
    }
}

/// Where a comparison is: `done` of `total` steps (a load, a call, a batched item).
#[derive(Debug, Clone)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    /// The model running now (its short name).
    pub model: String,
}

/// Why a comparison could not run (a model that fails is a row, not this).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompareError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    BadLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("no photo could be read in {0} (jpg, png, webp, gif, bmp, tiff); pass a folder of photos with --photos")]
    NoPhotos(PathBuf),
    #[error("{0}")]
    InvalidOption(String),
    #[error("writing the report: {0}")]
    Report(String),
}

/// Runs the comparison. A model that fails to load is a row with its error; photos that
/// fail are listed; `on_progress` is called after each step.
pub fn compare(
    options: &CompareOptions,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Results, CompareError> {
    check(options)?;
    let inputs = Inputs::read(
        &options.photos,
        options.trips.as_deref(),
        options.questions.as_deref(),
        options.references.as_deref(),
    )?;
    let names = table_names(&options.models);
    let cascade = options
        .cascade
        .as_ref()
        .map(|(cheap, strong)| {
            Ok((
                model_index(cheap, options, &names)?,
                model_index(strong, options, &names)?,
            ))
        })
        .transpose()?;

    // Open the meter before this process makes a CUDA context, then one empty device kept
    // for the whole run, so that the context is measured once and apart from the models.
    let (mut meter, _context) = match resolved_device(options.load.device) {
        Some(ordinal) => (
            GpuMeter::open(ordinal),
            DeviceChoice::Cuda(ordinal).open().ok(),
        ),
        None => (
            GpuMeter::not_measured("not measured (the models run on the CPU)"),
            None,
        ),
    };
    if _context.is_some() {
        meter.measure_context();
    }

    let plan = Plan {
        inputs: &inputs,
        languages: &options.languages,
        batch_size: options.batch_size,
        max_new_tokens: options.max_new_tokens,
    };
    let total = plan.steps() * options.models.len();
    let mut done = 0;
    let mut models = Vec::with_capacity(options.models.len());
    for (i, spec) in options.models.iter().enumerate() {
        let logprobs = cascade.is_some_and(|(cheap, _)| cheap == i);
        let name = names[i].clone();
        let mut tick = |n: usize| {
            done += n;
            on_progress(&Progress {
                done,
                total,
                model: name.clone(),
            });
        };
        models.push(run_model(
            spec,
            &names[i],
            &options.load,
            &plan,
            &meter,
            logprobs,
            &mut tick,
        ));
    }

    let languages: Vec<String> = options
        .languages
        .iter()
        .map(|l| language_code(*l).to_string())
        .collect();
    let mut notes = Vec::new();
    for m in &mut models {
        if let Some(metrics) = &mut m.metrics {
            metrics.cost_per_hour = options.price_per_hour;
            metrics.cost_per_1000_photos = options.price_per_hour.and_then(|p| {
                metrics
                    .throughput_photos_per_s
                    .map(|t| quality::cost_per_1000(p, 1.0 / t))
            });
        }
        m.quality = quality::score(&m.outputs, &inputs.references, &languages);
    }
    if options.price_per_hour.is_none() {
        notes.push("no --price-per-hour: the cost columns are omitted".into());
    }
    if options.references.is_none() {
        notes.push("no --references: outputs are shown side by side, unscored".into());
    }
    let photos: Vec<String> = inputs.photos.iter().map(|p| p.name.clone()).collect();
    let cascade = cascade.map(|(cheap, strong)| {
        quality::cascade(
            &models[cheap],
            &models[strong],
            options.threshold,
            &photos,
            &inputs.references,
            &languages,
            options.price_per_hour,
        )
    });
    Ok(Results {
        version: RESULTS_VERSION,
        settings: Settings {
            batch_size: options.batch_size,
            max_new_tokens: options.max_new_tokens,
            device: options.load.device.to_string(),
            dtype: options.load.dtype.to_string(),
            quantization: options.load.quantization.as_str().to_string(),
            price_per_hour: options.price_per_hour,
            currency: options.currency.clone(),
            card: options.card.clone(),
            languages,
        },
        photos,
        failed_photos: inputs.failed_photos,
        trips: inputs
            .trips
            .iter()
            .map(|t| TripInfo {
                trip: t.name.clone(),
                photos: t.photos.iter().map(|p| p.name.clone()).collect(),
            })
            .collect(),
        unknown_references: inputs.unknown_references,
        gpu_memory: meter.info(),
        models,
        cascade,
        notes,
    })
}

/// Writes `dir/results.json`, `dir/report.md` and `dir/report.html` (thumbnails of the
/// photos under `options.photos` inline).
pub fn write_report(
    results: &Results,
    options: &CompareOptions,
    dir: &Path,
) -> Result<(), CompareError> {
    let io = |source| CompareError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let json =
        serde_json::to_string_pretty(results).map_err(|e| CompareError::Report(e.to_string()))?;
    std::fs::write(dir.join("results.json"), json).map_err(io)?;
    std::fs::write(dir.join("report.md"), report_md::render(results)).map_err(io)?;
    let html = report_html::render(results, &options.photos, options.trips.as_deref());
    std::fs::write(dir.join("report.html"), html).map_err(io)?;
    Ok(())
}

fn check(options: &CompareOptions) -> Result<(), CompareError> {
    let bad = |m: &str| Err(CompareError::InvalidOption(m.into()));
    if options.models.is_empty() {
        return bad("no model to compare: pass --model DIR at least once");
    }
    if options.batch_size == 0 {
        return bad("--batch-size must be at least 1");
    }
    if options.max_new_tokens == 0 {
        return bad("--max-new-tokens must be at least 1");
    }
    if options.languages.is_empty() {
        return bad("give at least one describe language (zh, en)");
    }
    if let Some(p) = options.price_per_hour {
        if !(p.is_finite() && p >= 0.0) {
            return bad("--price-per-hour must be a number >= 0");
        }
    }
    if !options.threshold.is_finite() {
        return bad(
            "--threshold must be a finite number (a mean token log-probability, e.g. -1.0)",
        );
    }
    Ok(())
}

/// Short names for the tables: each model's shortest tail of path parts that no other
/// model shares (fixtures are all called `model`: `qwen2_vl/model`, `opt/model`).
fn table_names(models: &[String]) -> Vec<String> {
    let parts: Vec<Vec<&str>> = models
        .iter()
        .map(|m| {
            m.trim_end_matches(['/', '\\'])
                .split(['/', '\\'])
                .filter(|p| !p.is_empty())
                .collect()
        })
        .collect();
    let tail = |i: usize, k: usize| {
        let p = &parts[i];
        p[p.len().saturating_sub(k)..].join("/")
    };
    (0..models.len())
        .map(|i| {
            let most = parts[i].len().max(1);
            (1..=most)
                .map(|k| tail(i, k))
                .find(|name| {
                    (0..models.len())
                        .all(|j| j == i || tail(j, name.matches('/').count() + 1) != *name)
                })
                .unwrap_or_else(|| models[i].clone())
        })
        .collect()
}

fn model_index(
    which: &str,
    options: &CompareOptions,
    names: &[String],
) -> Result<usize, CompareError> {
    options
        .models
        .iter()
        .position(|m| m == which)
        .or_else(|| names.iter().position(|n| n == which))
        .ok_or_else(|| {
            CompareError::InvalidOption(format!(
                "--cascade names \"{which}\", which is not one of the --model values ({})",
                names.join(", ")
            ))
        })
}

/// The CUDA ordinal the models will run on, `None` for the CPU.
fn resolved_device(device: DeviceChoice) -> Option<usize> {
    match device {
        DeviceChoice::Cpu => None,
        DeviceChoice::Cuda(n) => Some(n),
        DeviceChoice::Auto => vlm_core::cuda_available().then_some(0),
    }
}

/// Parses `CHEAP:STRONG` (split at the last colon, so a Windows drive letter in CHEAP
/// survives).
pub fn parse_cascade(spec: &str) -> Result<(String, String), CompareError> {
    match spec.rsplit_once(':') {
        Some((cheap, strong)) if !cheap.is_empty() && !strong.is_empty() => {
            Ok((cheap.to_string(), strong.to_string()))
        }
        _ => Err(CompareError::InvalidOption(format!(
            "--cascade \"{spec}\" must be CHEAP:STRONG, two of the --model values"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_stay_apart() {
        let names = table_names(&[
            "fx/qwen2_vl/model".into(),
            "fx/opt/model/".into(),
            "/tmp/x/missing".into(),
        ]);
        assert_eq!(names, ["qwen2_vl/model", "opt/model", "missing"]);
        assert_eq!(table_names(&["a/m".into(), "a/m".into()]), ["a/m", "a/m"]);
        assert_eq!(table_names(&["Qwen/Qwen2-VL-2B".into()]), ["Qwen2-VL-2B"]);
    }

    #[test]
    fn cascade_specs_split_at_the_last_colon() {
        assert_eq!(parse_cascade("a:b").unwrap(), ("a".into(), "b".into()));
        assert!(parse_cascade("ab").is_err());
        assert!(parse_cascade("a:").is_err());
    }
}
