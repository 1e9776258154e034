//! Rust results → Python objects: [`PyGeneration`], [`PyTimings`] and the info dict.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use vlm_core::{Generation, ModelInfo, Timings};

/// Where the time of one generation went, in seconds.
#[pyclass(frozen, get_all, module = "vlm", name = "Timings")]
pub struct PyTimings {
    /// On the CPU: the prompt's tokens and the images' preprocessing.
    preprocess: f64,
    /// The vision tower.
    image_encode: f64,
    /// The language model over the prompt, up to the first token's logits.
    prefill: f64,
    /// All decode steps after the first token.
    decode: f64,
    /// Tokens produced by the decode steps (the first token comes from prefill).
    decode_steps: usize,
    /// This call's images whose encoding came from the image cache (or an earlier copy
    /// of the same photo in the batch).
    image_cache_hits: usize,
}

#[pymethods]
impl PyTimings {
    /// Seconds until the first token: preprocessing, image encoding and prefill.
    #[getter]
    fn time_to_first_token(&self) -> f64 {
        self.preprocess + self.image_encode + self.prefill
    }

    /// Decode speed in tokens per second (0.0 when there were no decode steps).
    #[getter]
    fn decode_tokens_per_second(&self) -> f64 {
        if self.decode_steps == 0 || self.decode == 0.0 {
            0.0
        } else {
            self.decode_steps as f64 / self.decode
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Timings(preprocess={:.4}, image_encode={:.4}, prefill={:.4}, decode={:.4}, decode_steps={}, image_cache_hits={})",
            self.preprocess,
            self.image_encode, self.prefill, self.decode, self.decode_steps, self.image_cache_hits
        )
    }
}

impl From<Timings> for PyTimings {
    fn from(t: Timings) -> Self {
        PyTimings {
            preprocess: t.preprocess.as_secs_f64(),
            image_encode: t.image_encode.as_secs_f64(),
            prefill: t.prefill.as_secs_f64(),
            decode: t.decode.as_secs_f64(),
            decode_steps: t.decode_steps,
            image_cache_hits: t.image_cache_hits,
        }
    }
}

/// The result of one generation.
#[pyclass(frozen, get_all, module = "vlm", name = "Generation")]
pub struct PyGeneration {
    /// Decoded text (special tokens skipped, a stop string cut off).
    text: String,
    /// Generated token ids, end-of-sequence token excluded.
    token_ids: Vec<u32>,
    /// Prompt length in tokens, after image placeholders were expanded.
    prompt_tokens: usize,
    /// Why generation ended: "eos", "length" or "stop".
    finish_reason: String,
    /// The stop string that ended generation (finish_reason "stop"), else None.
    stop_string: Option<String>,
    /// Where the time went.
    timings: Py<PyTimings>,
    /// With return_logits=True: float32 logits of every step (entry 0: the prompt's last
    /// position), else None.
    logits: Option<Vec<Vec<f32>>>,
}

#[pymethods]
impl PyGeneration {
    fn __repr__(&self) -> String {
        format!(
            "Generation(text={:?}, finish_reason={:?}, token_ids=<{} tokens>, prompt_tokens={})",
            self.text,
            self.finish_reason,
            self.token_ids.len(),
            self.prompt_tokens
        )
    }

    fn __str__(&self) -> String {
        self.text.clone()
    }
}

impl PyGeneration {
    pub fn new(py: Python<'_>, g: Generation) -> PyResult<Self> {
        let finish_reason = g.finish_reason.as_str();
        let stop_string = g.finish_reason.stop_string().map(str::to_string);
        Ok(PyGeneration {
            text: g.text,
            token_ids: g.token_ids,
            prompt_tokens: g.prompt_tokens,
            finish_reason: finish_reason.to_string(),
            stop_string,
            timings: Py::new(py, PyTimings::from(g.timings))?,
            logits: g.logits,
        })
    }
}

/// `Model.info`: a plain dict (typed as the `ModelInfo` TypedDict in the stubs).
pub fn info_dict<'py>(py: Python<'py>, info: &ModelInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("family", info.family)?;
    d.set_item("model_type", &info.model_type)?;
    d.set_item("parameters", info.parameters)?;
    d.set_item("dtype", &info.dtype)?;
    d.set_item("quantization", info.quantization.as_str())?;
    d.set_item("device", &info.device)?;
    d.set_item("weight_bytes", info.weight_bytes)?;
    d.set_item("max_images", info.max_images)?;
    d.set_item("native_multi_image", info.native_multi_image)?;
    d.set_item("max_context", info.max_context)?;
    d.set_item(
        "fixed_image_size",
        info.fixed_image_size.map(|[h, w]| (h, w)),
    )?;
    d.set_item("grounding", info.grounding)?;
    Ok(d)
}

/// `Model.cache_stats()`: a plain dict.
pub fn cache_stats_dict<'py>(
    py: Python<'py>,
    stats: &vlm_core::CacheStats,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("hits", stats.hits)?;
    d.set_item("misses", stats.misses)?;
    d.set_item("bytes", stats.bytes)?;
    d.set_item("entries", stats.entries)?;
    d.set_item("capacity_bytes", stats.capacity_bytes)?;
    Ok(d)
}
