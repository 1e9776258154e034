//! `vlm.load` and `vlm.Model`: each method extracts its arguments, then runs the Rust API
//! with the GIL released.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use vlm_core::model::LoadOptions;
use vlm_core::{DTypeChoice, DeviceChoice, PreparedBatch, Quantization, VisionLanguageModel};

use crate::convert::{
    decode_all, generation_options, image_source, image_sources, prompt_arg, reject_single_image,
    single_image, ImageSource,
};
use crate::errors::{catch, invalid_option, panic_message, to_pyerr, without_gil, Failure};
use crate::stream::{StreamJob, TextStream};
use crate::types::{info_dict, PyGeneration};

fn parse<T>(py: Python<'_>, parsed: vlm_core::Result<T>) -> PyResult<T> {
    parsed.map_err(|e| to_pyerr(py, e.into()))
}

/// Loads a model from a local folder (Hugging Face layout) or a hub id.
///
/// device: "auto" (CUDA when built with it and present, else CPU), "cpu", "cuda", "cuda:N".
/// dtype: "auto" (bf16 on CUDA, f32 on CPU), "f32", "f16", "bf16".
/// quant: None, "int8" or "int4" (the language model's linear layers; docs/quantization.md).
/// vision_quant: the vision tower's quantization (default: "int8" when quant is set).
/// revision: branch, tag or commit, for hub ids.
/// A folder written by save_quantized() loads as it was saved.
#[pyfunction]
#[pyo3(
    signature = (model, device=None, dtype=None, quant=None, *, vision_quant=None, revision=None),
    text_signature = "(model, device='auto', dtype='auto', quant=None, *, vision_quant=None, revision=None)"
)]
pub fn load(
    py: Python<'_>,
    model: PathBuf,
    device: Option<String>,
    dtype: Option<String>,
    quant: Option<String>,
    vision_quant: Option<String>,
    revision: Option<String>,
) -> PyResult<Model> {
    let path_or_id = utf8(py, model, "model")?;
    let options = load_options(py, device, dtype, quant, vision_quant, revision)?;
    let inner = without_gil(py, || Ok(vlm_models::load(&path_or_id, &options)?))?;
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
        Ok(vlm_models::save_quantized(&path_or_id, &output, &options)?)
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
    })
}

/// Every config.json model_type that load() handles.
#[pyfunction]
pub fn supported_model_types() -> Vec<&'static str> {
    vlm_models::supported_model_types()
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
    /// quantization, device, weight_bytes, max_images, native_multi_image, max_context.
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
        without_gil(py, || Ok(model.describe(&source.decode()?, &options)?))
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
        without_gil(py, || {
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
        without_gil(py, || {
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
        let generation = without_gil(py, || {
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
    /// order. images: any iterable of images (e.g. sorted(Path("photos").glob("*.jpg"))),
    /// decoded batch_size at a time: the next batch is decoded and preprocessed while the
    /// model runs the current one. progress=True shows a tqdm bar when tqdm is installed.
    #[pyo3(signature = (images, batch_size=8, progress=false, *, language=None, **gen))]
    fn describe_batch(
        &self,
        py: Python<'_>,
        images: &Bound<'_, PyAny>,
        batch_size: usize,
        progress: bool,
        language: Option<String>,
        gen: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Vec<String>> {
        reject_single_image(images)?;
        if batch_size == 0 {
            return Err(invalid_option(py, "batch_size", "must be at least 1"));
        }
        let options = generation_options(py, "describe_batch", gen, language.as_deref())?;
        let total = images.len().ok();
        let bar = if progress {
            ProgressBar::open(py, total)?
        } else {
            None
        };
        let mut items = images.try_iter()?;
        let mut out = Vec::with_capacity(total.unwrap_or(0));
        let model = &*self.inner;
        // Only one batch of images beyond the running one is decoded at a time: a folder of
        // 10,000 photos never sits in memory as pixels.
        let mut next_chunk = || -> PyResult<Vec<ImageSource>> {
            items
                .by_ref()
                .take(batch_size)
                .map(|item| image_source(&item?))
                .collect()
        };
        // The CPU work of a batch (file decoding, chat template, image preprocessing), done
        // on another thread while the device runs the batch before it.
        let prepare = |sources: Vec<ImageSource>| -> Result<PreparedBatch, Failure> {
            let requests = decode_all(sources)?
                .iter()
                .map(|image| model.describe_request(image, &options))
                .collect::<vlm_core::Result<Vec<_>>>()?;
            Ok(model.prepare_batch(requests)?)
        };
        let first = next_chunk()?;
        let mut current = if first.is_empty() {
            None
        } else {
            Some(without_gil(py, || prepare(first))?)
        };
        while let Some(batch) = current.take() {
            let n = batch.len();
            let sources = next_chunk()?;
            let (texts, next) = without_gil(py, || {
                Ok(std::thread::scope(|scope| {
                    let worker =
                        (!sources.is_empty()).then(|| scope.spawn(|| catch(|| prepare(sources))));
                    let texts = model.run_batch(batch);
                    let next = worker.map(|w| {
                        w.join().unwrap_or_else(|payload| {
                            Err(Failure::Panic(panic_message(payload.as_ref())))
                        })
                    });
                    (texts, next)
                }))
            })?;
            let texts = parse(py, texts)?;
            out.extend(texts.into_iter().map(|g| g.text));
            if let Some(bar) = &bar {
                bar.update(py, n)?;
            }
            // Ctrl-C between batches.
            py.check_signals()?;
            current = next.transpose().map_err(|f| to_pyerr(py, f))?;
        }
        Ok(out)
    }

    fn __repr__(&self) -> String {
        let info = self.inner.info();
        format!(
            "<vlm.Model {} on {}, {}, {} parameters>",
            info.model_type, info.device, info.dtype, info.parameters
        )
    }
}

/// A tqdm bar, closed when dropped (also when describe_batch raises).
struct ProgressBar(Py<PyAny>);

impl ProgressBar {
    /// The bar, or None (with a warning) when tqdm is not installed.
    fn open(py: Python<'_>, total: Option<usize>) -> PyResult<Option<Self>> {
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
        kwargs.set_item("desc", PyString::new(py, "describe"))?;
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
