//! # vlm-models
//!
//! The model families of `vlm`, each in its own folder behind
//! [`vlm_contract::Family`], and [`load`], which reads config.json and picks the family.
//!
//! | family | model types | folder |
//! |---|---|---|
//! | Qwen-VL | `qwen2_vl`, `qwen2_5_vl`, `qwen3_vl` | [`qwen_vl`] |
//! | BLIP-2 (OPT, Flan-T5) | `blip-2` | [`blip2`] |
//! | MiniGPT-4 (Vicuna v0, LLaMA-2-chat) | `minigpt4` | [`minigpt4`] |

// Library code returns typed errors: a panic would cross into apps (and the Python
// bindings) as a crash. Tests may unwrap.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod blip2;
mod decoder;
pub mod image_cache;
#[doc(hidden)]
pub mod kernels;
pub mod layers;
mod load_log;
pub mod minigpt4;
pub mod preprocess;
mod progress;
pub mod quant;
pub mod quantized_folder;
pub mod qwen_vl;
mod registry;
#[doc(hidden)]
pub mod tokenizer;
pub mod weights;

pub use registry::{load, load_dir, save_quantized, supported_model_types};
pub use vlm_contract::model::LoadOptions;
