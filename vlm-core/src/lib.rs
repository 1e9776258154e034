//! # vlm-core
//!
//! Vision-language models on [candle](https://github.com/huggingface/candle): describe a
//! photo, answer a question about it, or tell the story of several, with Qwen2-VL,
//! Qwen2.5-VL, Qwen3-VL, BLIP-2 or MiniGPT-4, on the CPU or a CUDA GPU (feature `cuda`),
//! in f32/bf16/f16 or quantized to Int8/Int4.
//!
//! This is the one crate an app adds. It holds the contract (the
//! [`VisionLanguageModel`] trait, [`Request`]s and [`GenerationOptions`], decoded
//! [`Image`]s, [`Generation`]s and the [`Error`] type) and [`load`], which reads a model
//! folder (or a Hugging Face hub id) and picks the family.
//!
//! ```no_run
//! use vlm_core::{GenerationOptions, Image, LoadOptions, VisionLanguageModel};
//!
//! fn main() -> vlm_core::Result<()> {
//!     let model = vlm_core::load("Qwen/Qwen2.5-VL-3B-Instruct", &LoadOptions::default())?;
//!     let photo = Image::open("dinner.jpg")?;
//!     let caption = model.describe(&photo, &GenerationOptions::default())?;
//!     println!("{caption}");
//!     Ok(())
//! }
//! ```
//!
//! A loaded model is immutable and `Send + Sync`: share it across threads (`Arc`) and
//! call it from each; per-request state lives in the generation loop.
//!
//! Behind this crate, `vlm-contract` holds the contract and `vlm-models` the model
//! families; their internals are not part of the public API.

// Library code returns typed errors: a panic would cross into apps (and the Python
// bindings) as a crash. Tests may unwrap.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub use vlm_contract::*;
pub use vlm_models::{load, load_dir, save_quantized, supported_model_types};

/// What [`save_quantized`] wrote.
pub use vlm_models::quantized_folder::SaveReport;

/// candle, whose `Device`, `DType` and `Tensor` appear in a few advanced signatures.
pub use candle_core as candle;

/// MiniGPT-4's release checkpoints (`.pth`) and their conversion to safetensors.
pub mod minigpt4 {
    pub use vlm_models::minigpt4::convert_to_safetensors;
}

// docs/rust.md's examples compile as doctests, so the guide cannot drift from the code.
#[cfg(doctest)]
#[doc = include_str!("../../docs/rust.md")]
struct RustGuide;
