//! # vlm-contract
//!
//! The model-independent half of `vlm`: the [`VisionLanguageModel`] trait with its
//! `describe` / `ask` / `relate` surface, typed requests and options, decoded
//! [`Image`]s, the one generation loop every family shares, and the error type.
//!
//! Model families live in `vlm-models`, which builds on this crate. Apps depend on
//! `vlm-core`, which re-exports everything here together with `load`.
//!
//! Design (see docs/architecture.md): a loaded model is immutable and `Send + Sync`;
//! everything that changes while generating (KV cache, positions) lives in per-request
//! state created by the generation loop, so one model serves many threads at once.

// Library code returns typed errors: a panic would cross into apps (and the Python
// bindings) as a crash. Tests may unwrap.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

// The modules marked `doc(hidden)` are what model code implements or drives (the family
// trait, the generation loop's internals): public so that vlm-models can
// use them, outside the API apps see (docs/rust.md; CHANGELOG's policy). Model-side
// helpers (resizers, chat templates, SentencePiece) live in vlm-models.
pub mod cache_stats;
pub mod cancel;
pub mod constraint;
pub mod device;
pub mod devices;
pub mod error;
#[doc(hidden)]
pub mod family;
pub mod files;
#[doc(hidden)]
pub mod generate;
pub mod grounding;
pub mod image;
pub mod model;
pub mod options;
pub mod quant;
pub mod request;
pub mod runtime;
pub mod sampling;
pub mod stream;

pub use cache_stats::CacheStats;
pub use cancel::CancelFlag;
pub use constraint::OutputConstraint;
pub use device::{DTypeChoice, DeviceChoice};
pub use devices::{cuda_available, devices, DeviceInfo, DeviceKind};
pub use error::{Error, ErrorKind, Result};
#[doc(hidden)]
pub use family::{Family, FamilyModel, PrefillOutput};
pub use grounding::Detection;
pub use image::{Image, ImageError, ImageLimits};
pub use model::{LoadOptions, ModelInfo, PreparedBatch, VisionLanguageModel};
pub use options::{GenerationDefaults, GenerationOptions, Language, Sampling};
pub use quant::Quantization;
pub use request::{Content, FinishReason, Generation, Message, Prompt, Request, Role, Timings};
pub use runtime::RuntimeOptions;
