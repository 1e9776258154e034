//! `vlm.compare`: the `vlm compare` evaluation from Python. The work is the vlm-compare
//! crate's (the CLI calls the same function); this only converts arguments and returns
//! results.json's records as Python dicts and lists.

use std::path::PathBuf;

use pyo3::prelude::*;
use vlm_compare::{CompareError, CompareOptions};
use vlm_core::model::LoadOptions;
use vlm_core::{DTypeChoice, DeviceChoice, Error, Language, Quantization};

use crate::errors::{invalid_option, to_pyerr, without_gil, Failure};

fn checked<T>(py: Python<'_>, parsed: vlm_core::Result<T>) -> PyResult<T> {
    parsed.map_err(|e| to_pyerr(py, e.into()))
}

fn input_error(e: CompareError) -> Failure {
    Failure::Vlm(Error::invalid_option("compare", e.to_string()))
}

/// Compares models on a folder of photos, as `vlm compare` does: per model load time,
/// first-call time, latency p50/p95 at batch 1, throughput at `batch_size`, time to first
/// token, decode tokens/s, peak GPU memory (NVML; None with a note on the CPU), weights,
/// and with `price_per_hour` the cost per hour and per 1,000 photos; describe (zh and en),
/// questions (`questions`: a q.jsonl path, or a default pair) and relate per trip folder;
/// with `references` (refs.jsonl) VQA exact/contains match and caption chrF.
/// `cascade=(cheap, strong)` with `threshold` adds the cheap-then-strong row. With
/// `report`, writes report.md, report.html and results.json there.
///
/// Returns results.json as plain dicts and lists. A model that fails to load is a row
/// with its "error"; unreadable photos are in "failed_photos".
#[pyfunction]
#[pyo3(
    signature = (models, photos, *, trips=None, questions=None, references=None, price_per_hour=None, currency="CNY".to_string(), card=None, batch_size=4, max_new_tokens=128, languages=None, cascade=None, threshold=None, device=None, dtype=None, quant=None, vision_quant=None, max_pixels=None, min_pixels=None, report=None),
    text_signature = "(models, photos, *, trips=None, questions=None, references=None, price_per_hour=None, currency='CNY', card=None, batch_size=4, max_new_tokens=128, languages=('zh', 'en'), cascade=None, threshold=None, device='auto', dtype='auto', quant=None, vision_quant=None, max_pixels=None, min_pixels=None, report=None)"
)]
#[allow(clippy::too_many_arguments)]
pub fn compare<'py>(
    py: Python<'py>,
    models: Vec<PathBuf>,
    photos: PathBuf,
    trips: Option<PathBuf>,
    questions: Option<PathBuf>,
    references: Option<PathBuf>,
    price_per_hour: Option<f64>,
    currency: String,
    card: Option<String>,
    batch_size: usize,
    max_new_tokens: usize,
    languages: Option<Vec<String>>,
    cascade: Option<(String, String)>,
    threshold: Option<f64>,
    device: Option<String>,
    dtype: Option<String>,
    quant: Option<String>,
    vision_quant: Option<String>,
    max_pixels: Option<usize>,
    min_pixels: Option<usize>,
    report: Option<PathBuf>,
) -> PyResult<Bound<'py, PyAny>> {
    if cascade.is_some() != threshold.is_some() {
        return Err(invalid_option(
            py,
            "cascade",
            "cascade=(cheap, strong) and threshold= go together",
        ));
    }
    let languages = match languages {
        None => CompareOptions::default().languages,
        Some(list) => list
            .iter()
            .map(|l| checked(py, Language::parse(l)))
            .collect::<PyResult<_>>()?,
    };
    let models = models
        .into_iter()
        .map(|m| m.to_string_lossy().into_owned())
        .collect();
    let options = CompareOptions {
        models,
        photos,
        trips,
        questions,
        references,
        price_per_hour,
        currency,
        card,
        batch_size,
        max_new_tokens,
        languages,
        cascade,
        threshold: threshold.unwrap_or(CompareOptions::default().threshold),
        load: LoadOptions {
            device: checked(py, DeviceChoice::parse(device.as_deref().unwrap_or("auto")))?,
            dtype: checked(py, DTypeChoice::parse(dtype.as_deref().unwrap_or("auto")))?,
            quantization: checked(py, Quantization::parse(quant.as_deref().unwrap_or("none")))?,
            vision_quantization: vision_quant
                .as_deref()
                .map(|q| checked(py, Quantization::parse(q)))
                .transpose()?,
            max_pixels,
            min_pixels,
            runtime: vlm_core::RuntimeOptions::from_env(),
            ..LoadOptions::default()
        },
    };
    let json = without_gil(py, || {
        let results = vlm_compare::compare(&options, &mut |_| {}).map_err(input_error)?;
        if let Some(dir) = &report {
            vlm_compare::write_report(&results, &options, dir).map_err(input_error)?;
        }
        serde_json::to_string(&results)
            .map_err(|e| Failure::Vlm(Error::Generation(format!("results to JSON: {e}"))))
    })?;
    py.import("json")?.call_method1("loads", (json,))
}
