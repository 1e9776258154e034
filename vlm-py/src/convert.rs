//! Python arguments → Rust values: images, generation options, prompts. Everything here
//! runs with the GIL held and only copies; decoding and generation happen after, with the
//! GIL released.

use std::path::PathBuf;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use vlm_core::{
    Content, GenerationOptions, Image, ImageError, Language, Message, Prompt, Request, Role,
    Sampling,
};

use crate::errors::{invalid_option, to_pyerr, Failure};

/// An image as Python handed it over, not yet decoded.
pub enum ImageSource {
    /// A file to open.
    Path(PathBuf),
    /// An encoded file in memory (JPEG, PNG, ...).
    Encoded(Vec<u8>),
    /// Raw RGB8 pixels, rows top to bottom (from PIL or numpy).
    Rgb {
        width: u32,
        height: u32,
        data: Vec<u8>,
    },
}

impl ImageSource {
    /// Decodes the image (call with the GIL released: this is the slow part).
    pub fn decode(self) -> Result<Image, ImageError> {
        match self {
            ImageSource::Path(path) => Image::open(path),
            ImageSource::Encoded(bytes) => Image::from_bytes(&bytes),
            ImageSource::Rgb {
                width,
                height,
                data,
            } => Image::from_rgb(width, height, data),
        }
    }
}

/// Decodes every source, in order.
pub fn decode_all(sources: Vec<ImageSource>) -> Result<Vec<Image>, Failure> {
    sources
        .into_iter()
        .map(|s| s.decode().map_err(Failure::from))
        .collect()
}

fn is_path_like(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")?)
}

/// One image argument. PIL images, numpy arrays and memoryviews go through the Python
/// helper `vlm._images.to_rgb`, which keeps PIL and numpy optional.
pub fn image_source(obj: &Bound<'_, PyAny>) -> PyResult<ImageSource> {
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        return Ok(ImageSource::Encoded(bytes.as_bytes().to_vec()));
    }
    if let Ok(bytes) = obj.cast::<PyByteArray>() {
        return Ok(ImageSource::Encoded(bytes.to_vec()));
    }
    if is_path_like(obj)? {
        return Ok(ImageSource::Path(obj.extract::<PathBuf>()?));
    }
    let converted = obj
        .py()
        .import("vlm._images")?
        .call_method1("to_rgb", (obj,))?;
    if let Ok(bytes) = converted.cast::<PyBytes>() {
        return Ok(ImageSource::Encoded(bytes.as_bytes().to_vec()));
    }
    let (width, height, data): (u32, u32, Bound<'_, PyBytes>) = converted.extract()?;
    Ok(ImageSource::Rgb {
        width,
        height,
        data: data.as_bytes().to_vec(),
    })
}

/// `images` as most methods take it: one image, a list or tuple of images, or `None`.
pub fn image_sources(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<ImageSource>> {
    let Some(obj) = obj else { return Ok(vec![]) };
    if let Ok(list) = obj.cast::<PyList>() {
        return list.iter().map(|item| image_source(&item)).collect();
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        return tuple.iter().map(|item| image_source(&item)).collect();
    }
    Ok(vec![image_source(obj)?])
}

/// The single image of `describe` / `ask`: one image, or a list or tuple holding one.
pub fn single_image(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<ImageSource> {
    let mut sources = image_sources(Some(obj))?;
    if sources.len() != 1 {
        return Err(invalid_option(
            py,
            "image",
            format!(
                "{what} takes one image, {} were given; use relate or generate for several",
                sources.len()
            ),
        ));
    }
    Ok(sources.remove(0))
}

/// The argument of a batch call must be a collection of items, not one image.
pub fn reject_single_image(obj: &Bound<'_, PyAny>, method: &str) -> PyResult<()> {
    if is_path_like(obj)? || obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyByteArray>()
    {
        return Err(PyTypeError::new_err(format!(
            "{method} takes an iterable of items (e.g. a list of paths), not a single \
             {}; use describe or ask for one image",
            obj.get_type().name()?
        )));
    }
    Ok(())
}

/// The generation keyword arguments every method takes (`**gen`).
pub const GENERATION_KWARGS: &[&str] = &[
    "max_new_tokens",
    "min_new_tokens",
    "greedy",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "seed",
    "stop",
    "max_pixels",
    "min_pixels",
    "json_schema",
    "regex",
    "choices",
];

fn describe_type(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".into())
}

/// An int option: TypeError for a non-int, InputError for an int out of range.
fn int_option<T: for<'a, 'py> FromPyObject<'a, 'py>>(
    value: &Bound<'_, PyAny>,
    name: &'static str,
    range: &str,
) -> PyResult<T> {
    if !value.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int, not {}",
            describe_type(value)
        )));
    }
    value
        .extract::<T>()
        .map_err(|_| invalid_option(value.py(), name, format!("{value} must be {range}")))
}

fn float_option(value: &Bound<'_, PyAny>, name: &'static str) -> PyResult<f32> {
    if !(value.is_instance_of::<PyFloat>() || value.is_instance_of::<PyInt>()) {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a float, not {}",
            describe_type(value)
        )));
    }
    Ok(value.extract::<f64>()? as f32)
}

fn stop_option(value: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let wrong = || {
        PyTypeError::new_err(format!(
            "stop must be a str or a list of str, not {}",
            describe_type(value)
        ))
    };
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(vec![s.to_string()]);
    }
    if !(value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>()) {
        return Err(wrong());
    }
    value
        .try_iter()?
        .map(|item| {
            let item = item?;
            item.cast::<PyString>()
                .map(|s| s.to_string())
                .map_err(|_| wrong())
        })
        .collect()
}

/// `json_schema=`: a dict (a JSON Schema), a JSON string, or anything with
/// `model_json_schema()` (a pydantic model class), as a JSON value through `json.dumps`.
fn json_schema_option(value: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let py = value.py();
    let schema = if value.hasattr("model_json_schema")? {
        value.call_method0("model_json_schema")?
    } else {
        value.clone()
    };
    let text: String = if let Ok(s) = schema.cast::<PyString>() {
        s.to_string()
    } else if schema.is_instance_of::<PyDict>() || schema.is_instance_of::<pyo3::types::PyBool>() {
        py.import("json")?
            .call_method1("dumps", (schema,))?
            .extract()?
    } else {
        return Err(PyTypeError::new_err(format!(
            "json_schema must be a dict (a JSON Schema), a JSON string or a pydantic model \
             class, not {}",
            describe_type(&schema)
        )));
    };
    serde_json::from_str(&text).map_err(|e| {
        pyo3::exceptions::PyValueError::new_err(format!("json_schema is not valid JSON: {e}"))
    })
}

/// The generation options of `**gen` and `language`. Keys whose value is `None` count as
/// not given, so callers can pass options through.
pub fn generation_options(
    py: Python<'_>,
    method: &str,
    gen: Option<&Bound<'_, PyDict>>,
    language: Option<&str>,
) -> PyResult<GenerationOptions> {
    // Every call can be stopped with Ctrl-C (errors::interruptible sets the flag).
    let mut options = GenerationOptions {
        cancel: Some(vlm_core::CancelFlag::new()),
        ..GenerationOptions::default()
    };
    if let Some(language) = language {
        options.language = Language::parse(language).map_err(|e| to_pyerr(py, e.into()))?;
    }
    let Some(gen) = gen else { return Ok(options) };
    let (mut greedy, mut temperature, mut top_p, mut top_k) = (None, None, None, None);
    for (key, value) in gen.iter() {
        let key: String = key.extract()?;
        if value.is_none() {
            if !GENERATION_KWARGS.contains(&key.as_str()) {
                return Err(unknown_kwarg(method, &key));
            }
            continue;
        }
        match key.as_str() {
            "max_new_tokens" => {
                options.max_new_tokens = Some(int_option(&value, "max_new_tokens", ">= 1")?)
            }
            "min_new_tokens" => {
                options.min_new_tokens = int_option(&value, "min_new_tokens", ">= 0")?
            }
            "greedy" => {
                if !value.is_instance_of::<pyo3::types::PyBool>() {
                    return Err(PyTypeError::new_err(format!(
                        "greedy must be a bool, not {}",
                        describe_type(&value)
                    )));
                }
                greedy = Some(value.extract::<bool>()?);
            }
            "temperature" => temperature = Some(float_option(&value, "temperature")?),
            "top_p" => top_p = Some(float_option(&value, "top_p")?),
            "top_k" => top_k = Some(int_option::<usize>(&value, "top_k", ">= 0")?),
            "repetition_penalty" => {
                options.repetition_penalty = Some(float_option(&value, "repetition_penalty")?)
            }
            "seed" => options.seed = int_option(&value, "seed", "in 0..2**64")?,
            "stop" => options.stop_strings = stop_option(&value)?,
            "max_pixels" => options.max_pixels = Some(int_option(&value, "max_pixels", ">= 1")?),
            "min_pixels" => options.min_pixels = Some(int_option(&value, "min_pixels", ">= 0")?),
            "json_schema" => options.json_schema = Some(json_schema_option(&value)?),
            "regex" => {
                options.regex = Some(
                    value
                        .cast::<PyString>()
                        .map_err(|_| {
                            PyTypeError::new_err(format!(
                                "regex must be a str, not {}",
                                describe_type(&value)
                            ))
                        })?
                        .to_string(),
                )
            }
            "choices" => {
                options.choices = stop_option(&value).map_err(|_| {
                    PyTypeError::new_err(format!(
                        "choices must be a list of str, not {}",
                        describe_type(&value)
                    ))
                })?
            }
            other => return Err(unknown_kwarg(method, other)),
        }
    }
    let sampling_given = temperature.is_some() || top_p.is_some() || top_k.is_some();
    options.sampling = match greedy {
        Some(true) if sampling_given => {
            return Err(invalid_option(
                py,
                "greedy",
                "greedy=True picks the most likely token, so temperature, top_p and top_k do \
                 not apply; drop them or pass greedy=False",
            ))
        }
        Some(true) => Some(Sampling::Greedy),
        // Unset sampling parameters are neutral (temperature 1, no top-p or top-k cut).
        Some(false) | None if sampling_given || greedy == Some(false) => Some(Sampling::Sample {
            temperature: temperature.unwrap_or(1.0),
            top_p: top_p.unwrap_or(1.0),
            top_k: top_k.unwrap_or(0),
        }),
        _ => None,
    };
    Ok(options)
}

fn unknown_kwarg(method: &str, key: &str) -> PyErr {
    PyTypeError::new_err(format!(
        "{method}() got an unexpected keyword argument '{key}'; generation options are: {}",
        GENERATION_KWARGS.join(", ")
    ))
}

/// The text side of `generate` / `stream`, before the images are decoded.
pub enum PromptArg {
    /// One user turn: the images, then this text.
    Text(String),
    /// A prompt in the model's own format.
    Raw(String),
    /// A conversation.
    Messages(Vec<Message>),
}

impl PromptArg {
    /// The request for `images`.
    pub fn into_request(self, images: Vec<Image>, options: GenerationOptions) -> Request {
        match self {
            PromptArg::Text(text) => Request::chat(images, text, options),
            PromptArg::Raw(text) => Request::raw(images, text, options),
            PromptArg::Messages(messages) => Request {
                images,
                prompt: Prompt::Chat(messages),
                options,
            },
        }
    }
}

const MESSAGES_FORMAT: &str = "a message is a dict {\"role\": \"system\" | \"user\" | \
    \"assistant\", \"content\": str | list}, the content list holding str, {\"type\": \"text\", \
    \"text\": str} or {\"type\": \"image\"} (the next image of `images`)";

fn message_error(detail: impl std::fmt::Display) -> PyErr {
    PyTypeError::new_err(format!("{detail}: {MESSAGES_FORMAT}"))
}

fn content_item(item: &Bound<'_, PyAny>) -> PyResult<Content> {
    if let Ok(s) = item.cast::<PyString>() {
        return Ok(Content::Text(s.to_string()));
    }
    let item = item
        .cast::<PyDict>()
        .map_err(|_| message_error(format!("a content item is a {}", describe_type(item))))?;
    let kind: String = item
        .get_item("type")?
        .ok_or_else(|| message_error("a content item has no \"type\""))?
        .extract()?;
    match kind.as_str() {
        "image" => Ok(Content::Image),
        "text" => {
            let text = item
                .get_item("text")?
                .ok_or_else(|| message_error("a text item has no \"text\""))?;
            Ok(Content::Text(text.extract()?))
        }
        other => Err(message_error(format!(
            "content type \"{other}\" is unknown"
        ))),
    }
}

fn message(obj: &Bound<'_, PyAny>) -> PyResult<Message> {
    let dict = obj
        .cast::<PyDict>()
        .map_err(|_| message_error(format!("a message is a {}", describe_type(obj))))?;
    let role: String = match dict.get_item("role")? {
        Some(r) => r.extract()?,
        None => return Err(message_error("a message has no \"role\"")),
    };
    let role = match role.as_str() {
        "system" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => return Err(message_error(format!("role \"{other}\" is unknown"))),
    };
    let content = dict
        .get_item("content")?
        .ok_or_else(|| message_error("a message has no \"content\""))?;
    let content = if let Ok(s) = content.cast::<PyString>() {
        vec![Content::Text(s.to_string())]
    } else if content.is_instance_of::<PyList>() || content.is_instance_of::<PyTuple>() {
        content
            .try_iter()?
            .map(|item| content_item(&item?))
            .collect::<PyResult<_>>()?
    } else {
        return Err(message_error(format!(
            "a message's content is a {}",
            describe_type(&content)
        )));
    };
    Ok(Message { role, content })
}

/// `prompt` of `generate` / `stream`: a str (one user turn, or with `raw` the model's own
/// format) or a list of messages.
pub fn prompt_arg(prompt: &Bound<'_, PyAny>, raw: bool) -> PyResult<PromptArg> {
    if let Ok(s) = prompt.cast::<PyString>() {
        let s = s.to_string();
        return Ok(if raw {
            PromptArg::Raw(s)
        } else {
            PromptArg::Text(s)
        });
    }
    if raw {
        return Err(PyTypeError::new_err(format!(
            "raw=True takes the prompt as a str in the model's own format, not a {}",
            describe_type(prompt)
        )));
    }
    if prompt.is_instance_of::<PyList>() || prompt.is_instance_of::<PyTuple>() {
        let messages = prompt
            .try_iter()?
            .map(|m| message(&m?))
            .collect::<PyResult<Vec<_>>>()?;
        return Ok(PromptArg::Messages(messages));
    }
    Err(PyTypeError::new_err(format!(
        "prompt must be a str or a list of messages, not {}",
        describe_type(prompt)
    )))
}
