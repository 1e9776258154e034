//! The one error type of `vlm-core`, grouped by cause so that callers (and the Python
//! bindings) can tell "fix your input" from "fix your files" from "fix your machine".

use std::path::PathBuf;

/// Convenience alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Broad cause of an [`Error`]: what the user should look at first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The image, question, prompt or options passed in.
    BadInput,
    /// The model folder or hub files: missing, unreadable, inconsistent or unsupported.
    ModelFiles,
    /// The device: CUDA missing, out of memory, unknown device string.
    Device,
    /// Anything that failed while running a model that was loaded fine.
    Runtime,
    /// The caller stopped the call ([`crate::CancelFlag`]).
    Cancelled,
}

/// Everything that can go wrong in `vlm`.
///
/// Every message says what to do next. Match on [`Error::kind`] for coarse handling:
///
/// ```
/// use vlm_contract::{Error, ErrorKind};
///
/// let err = Error::EmptyQuestion;
/// assert_eq!(err.kind(), ErrorKind::BadInput);
/// assert!(err.to_string().contains("question"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- bad input -------------------------------------------------------------------
    /// The image could not be read, decoded or accepted.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),

    /// `ask` was called with an empty (or whitespace-only) question.
    #[error("the question is empty: pass the text you want the model to answer about the image")]
    EmptyQuestion,

    /// `relate` (or a request) got no image where at least one is needed.
    #[error("no image was given: {what} needs at least one image")]
    NoImages {
        /// The call that needed the images.
        what: &'static str,
    },

    /// More images than the model takes in one call.
    #[error("{given} images were given but this model takes at most {max} in one call: split them into groups of {max}")]
    TooManyImages {
        /// Images passed.
        given: usize,
        /// What the model takes.
        max: usize,
    },

    /// The prompt does not fit the model's context window.
    #[error("the prompt is {tokens} tokens (with {new_tokens} new tokens requested) but the model's context is {max} tokens: use fewer or smaller images, a shorter prompt or a smaller max_new_tokens")]
    PromptTooLong {
        /// Prompt tokens after image placeholder expansion.
        tokens: usize,
        /// Tokens requested for generation.
        new_tokens: usize,
        /// The model's maximum sequence length.
        max: usize,
    },

    /// A raw prompt's image placeholders and the images passed disagree.
    #[error("the prompt has {placeholders} image placeholder(s) ({placeholder}) but {images} image(s) were given: pass one image per placeholder")]
    PlaceholderMismatch {
        /// Placeholders found in the prompt.
        placeholders: usize,
        /// Images passed.
        images: usize,
        /// The family's placeholder text.
        placeholder: String,
    },

    /// A generation option, device string, dtype or other setting is out of range.
    #[error("invalid option {name}: {message}")]
    InvalidOption {
        /// The option's name as the user spelt it.
        name: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },

    /// The model cannot do what was asked (e.g. `locate` on a family without grounding).
    #[error("{model_type} cannot {what}: {hint}")]
    NotSupported {
        /// config.json's `model_type`.
        model_type: String,
        /// The call.
        what: &'static str,
        /// Which models can.
        hint: &'static str,
    },

    // ---- model files -----------------------------------------------------------------
    /// A file the model needs is not in the folder.
    #[error("{path} is missing: {hint}")]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
        /// What the file is and where it comes from.
        hint: String,
    },

    /// A model file exists but cannot be read or parsed.
    #[error("cannot read {path}: {message}")]
    BadFile {
        /// The offending file.
        path: PathBuf,
        /// The parser's complaint.
        message: String,
    },

    /// config.json names a model type no family handles.
    #[error("model_type \"{model_type}\" is not supported; supported model types: {}", supported.join(", "))]
    UnsupportedModel {
        /// The config's `model_type`.
        model_type: String,
        /// Every model type a family registered.
        supported: Vec<&'static str>,
    },

    /// A tensor the model needs is absent from the weights, or has the wrong shape.
    #[error("weights do not match the config: {0}; check that config.json and the safetensors files come from the same checkpoint")]
    Weights(String),

    /// Downloading from the hub failed (offline, unknown repo, gated model).
    #[error("could not fetch {repo} from the Hugging Face hub ({message}); without a network, download the repo elsewhere and pass its local folder instead")]
    Hub {
        /// The repo id.
        repo: String,
        /// What hf-hub said.
        message: String,
    },

    /// The tokenizer failed to load, encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The chat template failed to render.
    #[error("chat template: {0}; pass a raw prompt in the model's own format instead, or fix the template file")]
    Template(String),

    // ---- device ----------------------------------------------------------------------
    /// The requested device is not available or not compiled in.
    #[error("device: {0}")]
    Device(String),

    // ---- runtime ---------------------------------------------------------------------
    /// A tensor operation failed.
    #[error("tensor operation failed: {}{}", candle_message(.0), out_of_memory_hint(.0))]
    Candle(#[from] candle_core::Error),

    /// Generation stopped for a reason other than bad input.
    #[error("generation failed: {0}")]
    Generation(String),

    /// A step's logits held NaN or infinite values: the activations overflowed (half
    /// precision) or the weights are broken. Later tokens would be noise, so the call stops.
    #[error("the model's logits at decode step {step} (0: the prompt's) are NaN or infinite while running in {dtype}: {}", non_finite_hint(dtype))]
    NonFiniteLogits {
        /// The decode step whose logits were bad; 0 is the prompt's (the first new token).
        step: usize,
        /// The dtype the model runs in (`ModelInfo::dtype`).
        dtype: String,
    },

    /// The call's [`crate::CancelFlag`] was set (Ctrl-C in Python).
    #[error("cancelled: the call was stopped before it finished; the model is unharmed and takes the next call")]
    Cancelled,
}

impl Error {
    /// The broad cause: see [`ErrorKind`].
    pub fn kind(&self) -> ErrorKind {
        use Error::*;
        match self {
            Image(_)
            | EmptyQuestion
            | NoImages { .. }
            | TooManyImages { .. }
            | PromptTooLong { .. }
            | PlaceholderMismatch { .. }
            | InvalidOption { .. }
            | NotSupported { .. } => ErrorKind::BadInput,
            MissingFile { .. }
            | BadFile { .. }
            | UnsupportedModel { .. }
            | Weights(_)
            | Hub { .. }
            | Tokenizer(_)
            | Template(_) => ErrorKind::ModelFiles,
            Device(_) => ErrorKind::Device,
            Candle(e) if is_device_error(e) => ErrorKind::Device,
            Candle(_) | Generation(_) | NonFiniteLogits { .. } => ErrorKind::Runtime,
            Cancelled => ErrorKind::Cancelled,
        }
    }

    /// An error for another request of the same failed batch: the same message and
    /// [`ErrorKind`] (errors are not `Clone`: they hold the sources' errors).
    pub fn for_another_request(&self) -> Error {
        match self.kind() {
            ErrorKind::Cancelled => Error::Cancelled,
            ErrorKind::Device => Error::Device(self.to_string()),
            ErrorKind::BadInput => Error::invalid_option("request", self.to_string()),
            ErrorKind::ModelFiles => Error::Weights(self.to_string()),
            _ => Error::Generation(self.to_string()),
        }
    }

    /// Whether the device ran out of memory (the call can be retried with a smaller batch,
    /// pixel budget or `max_new_tokens`; the model itself is unharmed).
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            Error::Candle(e) => is_out_of_memory(e),
            Error::Device(text) | Error::Generation(text) => text.contains(OOM_ADVICE),
            _ => false,
        }
    }

    /// Shorthand for [`Error::InvalidOption`].
    pub fn invalid_option(name: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidOption {
            name,
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::BadFile`].
    pub fn bad_file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::BadFile {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

/// candle's message without the backtrace it appends when RUST_BACKTRACE is set (users,
/// Python ones too, should see what failed, not candle's call stack).
pub fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        other => other.to_string(),
    }
}

/// The likely cause of NaN or infinite logits, and what to try.
fn non_finite_hint(dtype: &str) -> String {
    let weights = "if f32 gives the same, the weights hold NaN or infinities: check the model \
                   files (download them again, or redo the conversion that made them)";
    match dtype {
        "f16" => format!(
            "f16 overflows past 65504, which large activations reach: load with dtype bf16 \
             (or f32 on cards without bf16); {weights}"
        ),
        "bf16" => format!("load with dtype f32 to rule out rounding; {weights}"),
        _ => format!("the weights are the likely cause; {weights}"),
    }
}

/// What to lower when the GPU is out of memory, most effective first.
const OOM_ADVICE: &str = "the GPU is out of memory";

fn is_out_of_memory(e: &candle_core::Error) -> bool {
    let text = e.to_string();
    text.contains("OUT_OF_MEMORY") || text.contains("out of memory")
}

fn out_of_memory_hint(e: &candle_core::Error) -> String {
    if is_out_of_memory(e) {
        format!(
            "; {OOM_ADVICE}: lower the batch size, the pixel budget (max_pixels) or \
             max_new_tokens, or load with quantization int8/int4; the model is unharmed and \
             takes the next call"
        )
    } else {
        String::new()
    }
}

/// candle reports CUDA failures (out of memory, no device) as generic errors; their text
/// is the only signal we have.
fn is_device_error(e: &candle_core::Error) -> bool {
    let text = e.to_string();
    text.contains("CUDA_ERROR") || text.contains("out of memory") || text.contains("cuda")
}

#[cfg(test)]
mod tests {
    #[test]
    fn out_of_memory_says_what_to_lower_and_survives_batch_fan_out() {
        let cuda = candle_core::Error::Msg(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        );
        let err = super::Error::from(cuda);
        assert!(err.is_out_of_memory());
        assert_eq!(err.kind(), super::ErrorKind::Device);
        let text = err.to_string();
        assert!(
            text.contains("batch size") && text.contains("max_pixels") && text.contains("int4"),
            "{text}"
        );
        // The other requests of a failed batch get a copy that still says so.
        assert!(err.for_another_request().is_out_of_memory());
        let other = super::Error::from(candle_core::Error::Msg("shape mismatch".into()));
        assert!(!other.is_out_of_memory() && !other.to_string().contains("out of memory"));
    }

    use super::*;

    #[test]
    fn kinds_group_by_cause() {
        assert_eq!(Error::EmptyQuestion.kind(), ErrorKind::BadInput);
        assert_eq!(
            Error::UnsupportedModel {
                model_type: "x".into(),
                supported: vec!["qwen2_vl"]
            }
            .kind(),
            ErrorKind::ModelFiles
        );
        assert_eq!(Error::Device("no cuda".into()).kind(), ErrorKind::Device);
        assert_eq!(Error::Generation("x".into()).kind(), ErrorKind::Runtime);
    }

    #[test]
    fn unsupported_model_lists_supported_types() {
        let e = Error::UnsupportedModel {
            model_type: "llava".into(),
            supported: vec!["qwen2_vl", "qwen2_5_vl", "qwen3_vl"],
        };
        let msg = e.to_string();
        assert!(msg.contains("\"llava\""), "{msg}");
        assert!(msg.contains("qwen2_vl, qwen2_5_vl, qwen3_vl"), "{msg}");
    }

    #[test]
    fn non_finite_logits_name_the_cause_for_the_dtype() {
        let f16 = Error::NonFiniteLogits {
            step: 3,
            dtype: "f16".into(),
        };
        assert_eq!(f16.kind(), ErrorKind::Runtime);
        let msg = f16.to_string();
        assert!(
            msg.contains("step 3") && msg.contains("NaN") && msg.contains("bf16"),
            "{msg}"
        );
        let f32 = Error::NonFiniteLogits {
            step: 0,
            dtype: "f32".into(),
        }
        .to_string();
        assert!(
            f32.contains("model files") && !f32.contains("65504"),
            "{f32}"
        );
    }

    #[test]
    fn too_many_images_says_what_to_do() {
        let msg = Error::TooManyImages { given: 5, max: 4 }.to_string();
        assert!(
            msg.contains("5 images") && msg.contains("groups of 4"),
            "{msg}"
        );
    }
}
