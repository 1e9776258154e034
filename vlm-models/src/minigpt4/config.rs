//! The small config.json of a MiniGPT-4 folder. MiniGPT-4 was released as separate
//! PyTorch files plus a Vicuna / LLaMA-2-chat HF folder, configured by YAML files in its
//! repository (eval_configs/minigpt4_eval.yaml, minigpt4/configs/models/*.yaml); this
//! file names the parts. The released models' sizes are the defaults, so a real folder's
//! config.json needs only the file names:
//!
//! ```json
//! {
//!   "model_type": "minigpt4",
//!   "variant": "vicuna0",
//!   "language_model": "vicuna-7b",
//!   "vision_weights": "eva_vit_g.pth",
//!   "qformer_weights": "blip2_pretrained_flant5xxl.pth",
//!   "projection_weights": "pretrained_minigpt4.pth"
//! }
//! ```
//!
//! `weights` may name one merged safetensors file (`vlm convert`) instead of the three
//! `.pth` files. Paths are relative to the folder.

use serde::Deserialize;
use vlm_contract::{Error, Result};

use crate::blip2::config::{QFormerConfig, VisionConfig};

/// Which release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// MiniGPT-4 with Vicuna v0 (7B or 13B): EVA ViT → Q-Former → `llama_proj`;
    /// conversation `CONV_VISION_Vicuna0` (`###Human: ` / `###Assistant: `).
    Vicuna0,
    /// MiniGPT-4 for LLaMA-2-chat 7B: no Q-Former; 4 adjacent patch features concatenated
    /// → `llama_proj`; conversation `CONV_VISION_LLama2` (`<s>[INST] ` / ` [/INST] `).
    Llama2,
}

fn default_image_size() -> usize {
    224
}

fn default_queries() -> usize {
    32
}

/// `ln_vision` is torch's LayerNorm with its default epsilon (BLIP-2's HF port uses 1e-6).
fn default_ln_vision_eps() -> f64 {
    1e-5
}

/// config.json of a MiniGPT-4 folder.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MiniGpt4Config {
    /// Which release.
    pub variant: Variant,
    /// The Vicuna / LLaMA-2-chat HF folder.
    pub language_model: String,
    /// `eva_vit_g.pth` (the bare ViT state dict).
    #[serde(default)]
    pub vision_weights: Option<String>,
    /// `blip2_pretrained_flant5xxl.pth` (Vicuna v0: Q-Former, `ln_vision` and a ViT copy).
    #[serde(default)]
    pub qformer_weights: Option<String>,
    /// `pretrained_minigpt4*.pth` (`llama_proj`).
    #[serde(default)]
    pub projection_weights: Option<String>,
    /// One safetensors file with every tensor under the reference's own names
    /// (`visual_encoder.*`, `ln_vision.*`, `query_tokens`, `Qformer.*`, `llama_proj.*`).
    #[serde(default)]
    pub weights: Option<String>,
    /// Input side in pixels.
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    /// Q-Former queries (Vicuna v0).
    #[serde(default = "default_queries")]
    pub num_query_tokens: usize,
    /// EVA ViT sizes (default: ViT-g/14).
    #[serde(default)]
    pub vision_config: Option<VisionConfig>,
    /// Q-Former sizes (default: BERT-base with cross-attention every 2 layers).
    #[serde(default)]
    pub qformer_config: Option<QFormerConfig>,
    /// `ln_vision` epsilon.
    #[serde(default = "default_ln_vision_eps")]
    pub ln_vision_eps: f64,
}

impl MiniGpt4Config {
    /// The config.json of a MiniGPT-4 folder.
    pub fn read(dir: &vlm_contract::files::ModelDir) -> Result<Self> {
        Self::from_json(&dir.read_text("config.json", "config.json names the MiniGPT-4 parts")?)
    }

    /// Parses config.json text.
    pub fn from_json(text: &str) -> Result<Self> {
        let c: Self = serde_json::from_str(text).map_err(|e| Error::bad_file("config.json", e))?;
        if c.weights.is_none() && c.projection_weights.is_none() {
            return Err(Error::bad_file(
                "config.json",
                "name the MiniGPT-4 checkpoint: \"projection_weights\": \"pretrained_minigpt4.pth\" (with \"vision_weights\" and, for vicuna0, \"qformer_weights\"), or \"weights\": a merged safetensors file",
            ));
        }
        if c.weights.is_none() && c.vision_weights.is_none() {
            return Err(Error::bad_file(
                "config.json",
                "\"vision_weights\" (eva_vit_g.pth) is missing",
            ));
        }
        if c.variant == Variant::Vicuna0 && c.weights.is_none() && c.qformer_weights.is_none() {
            return Err(Error::bad_file(
                "config.json",
                "the vicuna0 variant needs \"qformer_weights\" (blip2_pretrained_flant5xxl.pth)",
            ));
        }
        let v = c.vision();
        v.validate()?;
        c.qformer().validate()?;
        crate::weights::check_config_sizes(
            "config.json",
            &[("num_query_tokens", c.num_query_tokens, 1)],
        )?;
        if c.variant == Variant::Llama2 && !(v.num_positions() - 1).is_multiple_of(4) {
            return Err(Error::bad_file(
                "config.json",
                "the llama2 variant groups patches by 4: the patch count must be a multiple of 4",
            ));
        }
        Ok(c)
    }

    /// The ViT's settings (image size from `image_size`).
    pub fn vision(&self) -> VisionConfig {
        let mut v = self.vision_config.clone().unwrap_or_default();
        v.image_size = self.image_size;
        v
    }

    /// The Q-Former's settings (its image width is the ViT's).
    pub fn qformer(&self) -> QFormerConfig {
        let mut q = self.qformer_config.clone().unwrap_or_default();
        q.encoder_hidden_size = self.vision().hidden_size;
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_sizes_are_the_defaults() {
        let c = MiniGpt4Config::from_json(
            r#"{"model_type": "minigpt4", "variant": "vicuna0", "language_model": "vicuna",
                "vision_weights": "eva_vit_g.pth", "qformer_weights": "blip2.pth",
                "projection_weights": "pretrained_minigpt4.pth"}"#,
        )
        .unwrap();
        let v = c.vision();
        assert_eq!(
            (v.hidden_size, v.num_hidden_layers, v.intermediate_size),
            (1408, 39, 6144)
        );
        assert_eq!(c.qformer().encoder_hidden_size, 1408);
        assert_eq!(c.num_query_tokens, 32);
        assert_eq!(c.ln_vision_eps, 1e-5);
    }

    #[test]
    fn missing_parts_are_named() {
        let err = MiniGpt4Config::from_json(
            r#"{"variant": "vicuna0", "language_model": "v", "vision_weights": "e.pth",
                "projection_weights": "p.pth"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("qformer_weights"), "{err}");
    }
}
