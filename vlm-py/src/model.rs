//! `vlm.load` and `vlm.Model`: each method extracts its arguments, then runs the Rust API
//! with the GIL released.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use vlm_core::model::LoadOptions;
use vlm_core::{DTypeChoice, DeviceChoice, Quantization, VisionLanguageModel};

use crate::batch::{self, BatchResults, Job, OnError, Task};
use crate::convert::{
    decode_all, generation_options, image_sources, prompt_arg, reject_single_image, single_image,
};
use crate::errors::{interruptible, invalid_option, to_pyerr, without_gil};
use crate::stream::{StreamJob, TextStream};
use crate::types::{cache_stats_dict, info_dict, PyGeneration};

fn parse<T>(py: Python<'_>, parsed: vlm_core::Result<T>) -> PyResult<T> {
    parsed.map_err(|e| to_pyerr(py, e.into()))
}

/// Loads a model from a local folder (Hugging Face layout) or a hub id.
///
/// device: "auto" (CUDA when built with it and present, else CPU), "cpu", "cuda", "cuda:N".
/// dtype: "auto" (bf16 on CUDA from compute capability 8.0, f16 on older GPUs, f32 on CPU), "f32", "f16", "bf16".
/// quant: None, "int8" or "int4" (the language model's linear layers; docs/quantization.md).
/// vision_quant: the vision tower's quantization (default: "int8" when quant is set).
/// revision: branch, tag or commit, for hub ids.
/// max_pixels / min_pixels: Qwen-VL's pixel budget for every call (default: the
/// checkpoint's; a call's own max_pixels= overrides it). A 12 MP phone photo is ~15,500
/// image tokens at the released default; docs/models.md recommends a budget for albums.
/// image_cache_mb: MB of image encodings kept on the device so that a second call about
/// the same photo skips the vision tower (0: off).
/// A folder written by save_quantized() loads as it was saved.
#[pyfunction]
#[pyo3(
    signature = (model, device=None, dtype=None, quant=None, *, vision_quant=None, revision=None, max_pixels=None, min_pixels=None, image_cache_mb=0),
    text_signature = "(model, device='auto', dtype='auto', quant=None, *, vision_quant=None, revision=None, max_pixels=None, min_pixels=None, image_cache_mb=0)"
)]
#[allow(clippy::too_many_arguments)]
pub fn load(
    py: Python<'_>,
    model: PathBuf,
    device: Option<String>,
    dtype: Option<String>,
    quant: Option<String>,
    vision_quant: Option<String>,
    revision: Option<String>,
    max_pixels: Option<usize>,
    min_pixels: Option<usize>,
    image_cache_mb: u64,
) -> PyResult<Model> {
    let path_or_id = utf8(py, model, "model")?;
    let mut options = load_options(py, device, dtype, quant, vision_quant, revision)?;
    options.max_pixels = max_pixels;
    options.min_pixels = min_pixels;
    options.image_cache_bytes = image_cache_mb.saturating_mul(1 << 20);
    let inner = without_gil(py, || Ok(vlm_core::load(&path_or_id, &options)?))?;
    Ok(Model {
        inner: Arc::from(inner),
    })
}

/// Quantizes a model once and writes a folder that load() reads without quantizing again
/// (model.gguf, quantization.json, and the source's config and tokenizer files). Returns
/// the bytes of weights the quantized model holds.
#[pyfunction]
#[pyo3(
    signature = (model, output, quant="int4", *, vision_quant=None, dtype=None, revision=None),
    text_signature = "(model, output, quant='int4', *, vision_quant=None, dtype='f16', revision=None)"
)]
pub fn save_quantized(
    py: Python<'_>,
    model: PathBuf,
    output: PathBuf,
    quant: &str,
    vision_quant: Option<String>,
    dtype: Option<String>,
    revision: Option<String>,
) -> PyResult<u64> {
    let path_or_id = utf8(py, model, "model")?;
    let options = load_options(
        py,
        Some("cpu".into()),
        Some(dtype.unwrap_or_else(|| "f16".into())),
        Some(quant.to_string()),
        vision_quant,
        revision,
    )?;
    let report = without_gil(py, || {
        Ok(vlm_core::save_quantized(&path_or_id, &output, &options)?)
    })?;
    Ok(report.info.weight_bytes)
}

fn utf8(py: Python<'_>, path: PathBuf, what: &'static str) -> PyResult<String> {
    path.into_os_string().into_string().map_err(|p| {
        invalid_option(
            py,
            what,
            format!("{p:?} is not valid UTF-8; rename the folder or pass a hub id"),
        )
    })
}

fn load_options(
    py: Python<'_>,
    device: Option<String>,
    dtype: Option<String>,
    quant: Option<String>,
    vision_quant: Option<String>,
    revision: Option<String>,
) -> PyResult<LoadOptions> {
    Ok(LoadOptions {
        device: parse(py, DeviceChoice::parse(device.as_deref().unwrap_or("auto")))?,
        dtype: parse(py, DTypeChoice::parse(dtype.as_deref().unwrap_or("auto")))?,
        quantization: parse(py, Quantization::parse(quant.as_deref().unwrap_or("none")))?,
        vision_quantization: match vision_quant.as_deref() {
            Some(v) => Some(parse(py, Quantization::parse(v))?),
            None => None,
        },
        revision,
        // The VLM_* switches of the README, as the vlm CLI reads them.
        runtime: vlm_core::RuntimeOptions::from_env(),
        ..LoadOptions::default()
    })
}

/// Every config.json model_type that load() handles.
#[pyfunction]
pub fn supported_model_types() -> Vec<&'static str> {
    vlm_core::supported_model_types()
}

/// A loaded vision-language model. Get one with vlm.load().
///
/// A Model is immutable and thread-safe: share one between threads; every call releases
/// the GIL while it runs, so calls from several threads run at the same time.
#[pyclass(frozen, module = "vlm", name = "Model")]
pub struct Model {
    inner: Arc<dyn VisionLanguageModel>,
}

#[pymethods]
impl Model {
    /// What was loaded and where, as a dict: family, model_type, parameters, dtype,
    /// quantization, device, weight_bytes, max_images, native_multi_image, max_context,
    /// fixed_image_size, grounding (whether locate() works).
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        info_dict(py, &self.inner.info())
    }

    /// Describes a photo in detail. language: "en", "zh" or None (English).
    #[pyo3(signature = (image, *, language=None, **gen))]
    fn describe(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        language: Option<String>,
        gen: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        let source = single_image(py, image, "describe")?;
        let options = generation_options(py, "describe", gen, language.as_deref())?;
        let model = &*self.inner;
        interruptible(py, options.cancel.as_ref(), || {
            Ok(model.describe(&source.decode()?, &options)?)
        })
    }

    /// Finds `what` in a photo: a list of {"label": str, "bbox": [x1, y1, x2, y2]} with
    /// the box in the photo's own pixels (EXIF orientation applied). Qwen-VL models only;
    /// others raise vlm.InputError.
    #[pyo3(signature = (image, what, **gen))]
    fn locate<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        what: String,
        gen: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, pyo3::types::PyList>> {
        let source = single_image(py, image, "locate")?;
        let options = generation_options(py, "locate", gen, None)?;
        let model = &*self.inner;
        let found = interruptible(py, options.cancel.as_ref(), || {
            Ok(model.locate(&source.decode()?, &what, &options)?)
        })?;
        let list = pyo3::types::PyList::empty(py);
        for d in found {
            let item = PyDict::new(py);
            item.set_item("label", d.label)?;
            item.set_item("bbox", d.bbox.to_vec())?;
            list.append(item)?;
        }
        Ok(list)
    }

    /// Answers a question about a photo; the answer's language follows the question.
    #[pyo3(signature = (image, question, **gen))]
    fn ask(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        question: String,
        gen: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        let source = single_image(py, image, "ask")?;
        let options = generation_options(py, "ask", gen, None)?;
        let model = &*self.inner;
        interruptible(py, options.cancel.as_ref(), || {
            Ok(model.ask(&source.decode()?, &question, &options)?)
        })
    }

    /// Relates several photos (tells the story of one trip or event). instruction replaces
    /// the default wording; language ("en", "zh") picks the default wording's language.
    #[pyo3(signature = (images, instruction=None, *, language=None, **gen))]
    fn relate(
        &self,
        py: Python<'_>,
        images: &Bound<'_, PyAny>,
        instruction: Option<String>,
        language: Option<String>,
        gen: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        let sources = image_sources(Some(images))?;
        let options = generation_options(py, "relate", gen, language.as_deref())?;
        let model = &*self.inner;
        interruptible(py, options.cancel.as_ref(), || {
            let images = decode_all(sources)?;
            Ok(model.relate(&images, instruction.as_deref(), &options)?)
        })
    }

    /// Runs one prompt and returns the full Generation.
    ///
    /// images: one image, a list of images, or None. prompt: a str (one user turn after
    /// the images), a list of chat messages, or with raw=True a str in the model's own
    /// format with one image placeholder per image.
    #[pyo3(signature = (images, prompt, *, raw=false, return_logits=false, **gen))]
    fn generate(
        &self,
        py: Python<'_>,
        images: Option<&Bound<'_, PyAny>>,
        prompt: &Bound<'_, PyAny>,
        raw: bool,
        return_logits: bool,
        gen: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyGeneration> {
        let sources = image_sources(images)?;
        let prompt = prompt_arg(prompt, raw)?;
        let mut options = generation_options(py, "generate", gen, None)?;
        options.return_logits = return_logits;
        let model = &*self.inner;
        let cancel = options.cancel.clone();
        let generation = interruptible(py, cancel.as_ref(), || {
            let request = prompt.into_request(decode_all(sources)?, options);
            Ok(model.generate(&request)?)
        })?;
        PyGeneration::new(py, generation)
    }

    /// Streams text pieces as they are generated; iterate over the returned TextStream.
    ///
    /// With prompt: like generate(images, prompt). With question: like ask(image,
    /// question). With neither: describe for one image, relate for several.
    #[pyo3(signature = (images, prompt=None, *, question=None, raw=false, language=None, **gen))]
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        py: Python<'_>,
        images: Option<&Bound<'_, PyAny>>,
        prompt: Option<&Bound<'_, PyAny>>,
        question: Option<String>,
        raw: bool,
        language: Option<String>,
        gen: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<TextStream> {
        let options = generation_options(py, "stream", gen, language.as_deref())?;
        let sources = image_sources(images)?;
        let prompt = match (prompt, &question) {
            (Some(_), Some(_)) => {
                return Err(invalid_option(
                    py,
                    "question",
                    "pass either prompt or question, not both",
                ))
            }
            (Some(prompt), None) => Some(prompt_arg(prompt, raw)?),
            (None, _) => None,
        };
        if prompt.is_none() && question.is_some() && sources.len() != 1 {
            let message = format!(
                "a question is about one image, {} were given",
                sources.len()
            );
            return Err(invalid_option(py, "images", message));
        }
        if prompt.is_none() && sources.is_empty() {
            let message = "without a prompt or question, stream describes one image or relates \
                           several; pass at least one";
            return Err(invalid_option(py, "images", message));
        }
        // Images are decoded now, so a bad image raises here rather than at the first next().
        let images = without_gil(py, || decode_all(sources))?;
        let job: StreamJob = match (prompt, question) {
            (Some(prompt), _) => {
                let request = prompt.into_request(images, options);
                Box::new(move |model, on_text| model.generate_stream(&request, on_text))
            }
            (None, Some(question)) => Box::new(move |model, on_text| {
                let request = model.ask_request(&images[0], &question, &options)?;
                model.generate_stream(&request, on_text)
            }),
            (None, None) if images.len() == 1 => Box::new(move |model, on_text| {
                let request = model.describe_request(&images[0], &options)?;
                model.generate_stream(&request, on_text)
            }),
            (None, None) => {
                Box::new(move |model, on_text| model.relate_with(&images, None, &options, on_text))
            }
        };
        TextStream::start(py, Arc::clone(&self.inner), job)
    }

    /// Describes many photos, batch_size per forward pass; returns the descriptions in
    /// order. images: any iterable of images (e.g. sorted(Path("photos").glob("*.jpg")), or
    /// a generator over a million paths: it is read one batch ahead, so memory stays
    /// bounded); the next batch is decoded and preprocessed while the model runs the
    /// current one. on_error="raise" raises the first failure; "return" puts the exception
    /// object in the failed photo's place and the others complete. An exception of the
    /// iterable itself comes after the items before it ran (see docs/python.md).
    /// full=True returns Generation objects instead of text. progress=True shows a tqdm
    /// bar when tqdm is installed. Ctrl-C stops the call within one decode step.
    #[pyo3(signature = (images, batch_size=8, progress=false, *, language=None, on_error="raise", full=false, **gen))]
    #[allow(clippy::too_many_arguments)]
    fn describe_batch(
        &self,
        py: Python<'_>,
        images: &Bound<'_, PyAny>,
        batch_size: usize,
        progress: bool,
        language: Option<String>,
        on_error: &str,
        full: bool,
        gen: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        self.run_list(
            py,
            "describe_batch",
            Task::Describe,
            images,
            batch_size,
            progress,
            language,
            on_error,
            full,
            gen,
        )
    }

    /// Answers one question per photo, batch_size per forward pass: items is any iterable
    /// of (image, question) pairs; results and options as in describe_batch.
    #[pyo3(signature = (items, batch_size=8, progress=false, *, on_error="raise", full=false, **gen))]
    #[allow(clippy::too_many_arguments)]
    fn ask_batch(
        &self,
        py: Python<'_>,
        items: &Bound<'_, PyAny>,
        batch_size: usize,
        progress: bool,
        on_error: &str,
        full: bool,
        gen: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        self.run_list(
            py,
            "ask_batch",
            Task::Ask,
            items,
            batch_size,
            progress,
            None,
            on_error,
            full,
            gen,
        )
    }

    /// Like describe_batch (task="describe", items are images) or ask_batch (task="ask",
    /// items are (image, question) pairs), but returns an iterator that yields each result
    /// in input order as soon as its batch finishes, so results can be saved while the rest
    /// runs. close() (or dropping the iterator) stops the job.
    #[pyo3(signature = (items, task="describe", *, batch_size=8, language=None, on_error="raise", full=false, **gen))]
    #[allow(clippy::too_many_arguments)]
    fn map(
        &self,
        py: Python<'_>,
        items: &Bound<'_, PyAny>,
        task: &str,
        batch_size: usize,
        language: Option<String>,
        on_error: &str,
        full: bool,
        gen: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<BatchResults> {
        let task = Task::parse(task)
            .ok_or_else(|| invalid_option(py, "task", "use \"describe\" or \"ask\""))?;
        let (job, on_error) =
            self.start_job(py, "map", task, items, batch_size, language, on_error, gen)?;
        Ok(BatchResults::new(job, on_error, full))
    }

    /// The image cache's counters since load: hits, misses, bytes, entries and
    /// capacity_bytes (all 0 when the model was loaded without image_cache_mb).
    fn cache_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        cache_stats_dict(py, &self.inner.cache_stats())
    }

    fn __repr__(&self) -> String {
        let info = self.inner.info();
        format!(
            "<vlm.Model {} on {}, {}, {} parameters>",
            info.model_type, info.device, info.dtype, info.parameters
        )
    }
}

impl Model {
    /// Checks a batch call's arguments and starts its job.
    #[allow(clippy::too_many_arguments)]
    fn start_job(
        &self,
        py: Python<'_>,
        method: &str,
        task: Task,
        items: &Bound<'_, PyAny>,
        batch_size: usize,
        language: Option<String>,
        on_error: &str,
        gen: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<(Job, OnError)> {
        reject_single_image(items, method)?;
        if batch_size == 0 {
            return Err(invalid_option(py, "batch_size", "must be at least 1"));
        }
        let on_error = OnError::parse(on_error)
            .ok_or_else(|| invalid_option(py, "on_error", "use \"raise\" or \"return\""))?;
        let options = generation_options(py, method, gen, language.as_deref())?;
        let job = Job::start(
            py,
            Arc::clone(&self.inner),
            items,
            task,
            options,
            batch_size,
        )?;
        Ok((job, on_error))
    }

    /// describe_batch and ask_batch: a job run to the end into a list.
    #[allow(clippy::too_many_arguments)]
    fn run_list(
        &self,
        py: Python<'_>,
        method: &str,
        task: Task,
        items: &Bound<'_, PyAny>,
        batch_size: usize,
        progress: bool,
        language: Option<String>,
        on_error: &str,
        full: bool,
        gen: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let total = items.len().ok();
        let (job, on_error) =
            self.start_job(py, method, task, items, batch_size, language, on_error, gen)?;
        let bar = if progress {
            ProgressBar::open(py, total, method)?
        } else {
            None
        };
        let mut tick = |py: Python<'_>| match &bar {
            Some(bar) => bar.update(py, 1),
            None => Ok(()),
        };
        batch::collect(py, job, on_error, full, &mut tick)
    }
}

/// A tqdm bar, closed when dropped (also when a batch call raises).
struct ProgressBar(Py<PyAny>);

impl ProgressBar {
    /// The bar, or None (with a warning) when tqdm is not installed.
    fn open(py: Python<'_>, total: Option<usize>, what: &str) -> PyResult<Option<Self>> {
        let tqdm = match py.import("tqdm.auto") {
            Ok(m) => m,
            Err(_) => {
                let warning = py.get_type::<pyo3::exceptions::PyUserWarning>();
                PyErr::warn(
                    py,
                    &warning,
                    c"progress=True shows a progress bar only when tqdm is installed: pip install tqdm",
                    1,
                )?;
                return Ok(None);
            }
        };
        let kwargs = PyDict::new(py);
        kwargs.set_item("total", total)?;
        kwargs.set_item("desc", PyString::new(py, what))?;
        kwargs.set_item("unit", "photo")?;
        let bar = tqdm.getattr("tqdm")?.call((), Some(&kwargs))?;
        Ok(Some(ProgressBar(bar.unbind())))
    }

    fn update(&self, py: Python<'_>, n: usize) -> PyResult<()> {
        self.0.call_method1(py, "update", (n,))?;
        Ok(())
    }
}

impl Drop for ProgressBar {
    fn drop(&mut self) {
        Python::attach(|py| {
            if let Err(e) = self.0.call_method0(py, "close") {
                e.write_unraisable(py, None);
            }
        });
    }
}
