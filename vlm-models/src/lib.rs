//! # vlm-models
//!
//! The model families of `vlm`, each in its own folder behind
//! [`vlm_core::Family`], and [`load`], which reads config.json and picks the family.
//!
//! | family | model types | folder |
//! |---|---|---|
//! | Qwen-VL | `qwen2_vl`, `qwen2_5_vl`, `qwen3_vl` | [`qwen_vl`] |
//!
//! BLIP-2 and MiniGPT-4 are not implemented yet (see docs/models.md).

pub mod layers;
pub mod qwen_vl;
mod registry;

pub use registry::{load, load_dir, supported_model_types};
pub use vlm_core::model::LoadOptions;
