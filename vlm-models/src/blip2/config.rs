//! config.json of BLIP-2 (`model_type: "blip-2"`), mirroring transformers' `Blip2Config`
//! with its sub-configs `Blip2VisionConfig`, `Blip2QFormerConfig` and the language model's
//! `OPTConfig` or `T5Config`. Released configs omit most sizes, so every default here is
//! transformers' default (the BLIP-2 ViT-g/14 and BERT-base Q-Former sizes).

use serde::Deserialize;
use vlm_contract::{Error, Result};

use crate::layers::Act;

/// The EVA ViT's settings (shared with MiniGPT-4).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    /// Width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Blocks.
    pub num_hidden_layers: usize,
    /// Heads.
    pub num_attention_heads: usize,
    /// Input side in pixels (square).
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// MLP activation name.
    pub hidden_act: String,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// q and v biases (k has none).
    pub qkv_bias: bool,
    /// Input channels.
    pub num_channels: usize,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 1408,
            intermediate_size: 6144,
            num_hidden_layers: 39,
            num_attention_heads: 16,
            image_size: 224,
            patch_size: 14,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-6,
            qkv_bias: true,
            num_channels: 3,
        }
    }
}

impl VisionConfig {
    /// Refuses sizes a damaged config could hold: zero where the ViT divides by them,
    /// beyond [`crate::weights::MAX_CONFIG_SIZE`], an image that is not whole patches,
    /// heads that do not divide the width (MiniGPT-4's ViT is checked here too).
    pub fn validate(&self) -> Result<()> {
        crate::weights::check_config_sizes(
            "config.json",
            &[
                ("vision_config.hidden_size", self.hidden_size, 1),
                ("vision_config.intermediate_size", self.intermediate_size, 1),
                ("vision_config.num_hidden_layers", self.num_hidden_layers, 0),
                (
                    "vision_config.num_attention_heads",
                    self.num_attention_heads,
                    1,
                ),
                ("vision_config.image_size", self.image_size, 1),
                ("vision_config.patch_size", self.patch_size, 1),
                ("vision_config.num_channels", self.num_channels, 1),
            ],
        )?;
        if !self.image_size.is_multiple_of(self.patch_size) {
            return Err(bad(format!(
                "vision image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            )));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(bad(format!(
                "vision hidden size {} is not divisible by its {} attention heads",
                self.hidden_size, self.num_attention_heads
            )));
        }
        Act::from_name(&self.hidden_act).map_err(bad)?;
        Ok(())
    }

    /// Patches per image plus the class token.
    pub fn num_positions(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

/// The Q-Former's settings (a BERT encoder whose queries cross-attend to the image).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct QFormerConfig {
    /// Width.
    pub hidden_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Heads.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Feed-forward activation name.
    pub hidden_act: String,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Every n-th layer (from layer 0) cross-attends to the image.
    pub cross_attention_frequency: usize,
    /// Width of the image features (always the ViT's width: transformers overrides it).
    pub encoder_hidden_size: usize,
}

impl Default for QFormerConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-12,
            cross_attention_frequency: 2,
            encoder_hidden_size: 1408,
        }
    }
}

impl QFormerConfig {
    /// As [`VisionConfig::validate`], for the Q-Former.
    pub fn validate(&self) -> Result<()> {
        crate::weights::check_config_sizes(
            "config.json",
            &[
                ("qformer_config.hidden_size", self.hidden_size, 1),
                (
                    "qformer_config.num_hidden_layers",
                    self.num_hidden_layers,
                    0,
                ),
                (
                    "qformer_config.num_attention_heads",
                    self.num_attention_heads,
                    1,
                ),
                (
                    "qformer_config.intermediate_size",
                    self.intermediate_size,
                    1,
                ),
                (
                    "qformer_config.cross_attention_frequency",
                    self.cross_attention_frequency,
                    1,
                ),
            ],
        )?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(bad(format!(
                "qformer hidden size {} is not divisible by its {} attention heads",
                self.hidden_size, self.num_attention_heads
            )));
        }
        Act::from_name(&self.hidden_act).map_err(bad)?;
        Ok(())
    }
}

/// OPT's settings (`OPTConfig`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct OptConfig {
    /// Rows of the embedding matrix (may exceed the tokenizer's size).
    pub vocab_size: usize,
    /// Width.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Feed-forward width.
    pub ffn_dim: usize,
    /// Heads.
    pub num_attention_heads: usize,
    /// Feed-forward activation name.
    pub activation_function: String,
    /// Learned positions (the table has 2 more rows: OPT's position offset).
    pub max_position_embeddings: usize,
    /// Pre-norm (every released size but 350m).
    pub do_layer_norm_before: bool,
    /// Embedding width when it differs from `hidden_size` (OPT-350m projects in and out).
    pub word_embed_proj_dim: Option<usize>,
    /// Biases on every projection.
    pub enable_bias: bool,
    /// LayerNorms have weight and bias.
    pub layer_norm_elementwise_affine: bool,
    /// Old checkpoints without the final LayerNorm.
    #[serde(rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    /// BOS (`</s>`, 2).
    pub bos_token_id: Option<u32>,
    /// EOS (BLIP-2 OPT: 50118, the newline token).
    pub eos_token_id: Option<u32>,
    /// LM head is the embedding matrix.
    pub tie_word_embeddings: bool,
}

impl Default for OptConfig {
    fn default() -> Self {
        Self {
            vocab_size: 50272,
            hidden_size: 768,
            num_hidden_layers: 12,
            ffn_dim: 3072,
            num_attention_heads: 12,
            activation_function: "relu".into(),
            max_position_embeddings: 2048,
            do_layer_norm_before: true,
            word_embed_proj_dim: None,
            enable_bias: true,
            layer_norm_elementwise_affine: true,
            remove_final_layer_norm: false,
            bos_token_id: Some(2),
            eos_token_id: Some(2),
            tie_word_embeddings: true,
        }
    }
}

impl OptConfig {
    /// Embedding width.
    pub fn embed_dim(&self) -> usize {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }
}

/// T5's settings (`T5Config`; Flan-T5 in BLIP-2).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct T5Config {
    /// Rows of the embedding matrix.
    pub vocab_size: usize,
    /// Width.
    pub d_model: usize,
    /// Per-head width.
    pub d_kv: usize,
    /// Feed-forward width.
    pub d_ff: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Decoder layers (default: `num_layers`).
    pub num_decoder_layers: Option<usize>,
    /// Heads.
    pub num_heads: usize,
    /// Relative-position buckets.
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which positions share a bucket.
    pub relative_attention_max_distance: usize,
    /// RMS norm epsilon.
    pub layer_norm_epsilon: f64,
    /// `relu`, `gated-gelu` (Flan-T5), `gated-silu`, ...
    pub feed_forward_proj: String,
    /// LM head is the embedding matrix (then the decoder output is scaled by d_model^-½).
    pub tie_word_embeddings: bool,
    /// transformers 5 states the output scaling on its own (and may write
    /// `tie_word_embeddings: true` for an untied Flan-T5 whose `lm_head` it saves).
    pub scale_decoder_outputs: Option<bool>,
    /// First decoder input (`<pad>`, 0).
    pub decoder_start_token_id: u32,
    /// `</s>`.
    pub eos_token_id: Option<u32>,
}

impl Default for T5Config {
    fn default() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_decoder_layers: None,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
            tie_word_embeddings: true,
            scale_decoder_outputs: None,
            decoder_start_token_id: 0,
            eos_token_id: Some(1),
        }
    }
}

impl T5Config {
    /// (gated, activation) from `feed_forward_proj`, as transformers parses it.
    pub fn feed_forward(&self) -> Result<(bool, Act)> {
        let (gated, name) = match self.feed_forward_proj.strip_prefix("gated-") {
            Some(rest) => (true, rest),
            None => (false, self.feed_forward_proj.as_str()),
        };
        // transformers maps "gated-gelu" to the tanh approximation (`gelu_new`).
        let act = match name {
            "gelu" if gated => Act::GeluTanh,
            "relu" => Act::Relu,
            other => Act::from_name(other).map_err(|e| Error::bad_file("config.json", e))?,
        };
        Ok((gated, act))
    }
}

/// The language model under the Q-Former.
#[derive(Debug, Clone, PartialEq)]
pub enum TextConfig {
    /// Decoder-only OPT (blip2-opt-2.7b, -6.7b).
    Opt(OptConfig),
    /// Encoder-decoder Flan-T5 (blip2-flan-t5-xl, -xxl).
    T5(T5Config),
}

/// Everything the model needs from config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct Blip2Config {
    /// The ViT.
    pub vision: VisionConfig,
    /// The Q-Former.
    pub qformer: QFormerConfig,
    /// The language model.
    pub text: TextConfig,
    /// Learned queries, and image tokens per image in the prompt.
    pub num_query_tokens: usize,
    /// `<image>`: placeholder ids the image embeddings replace (None in checkpoints from
    /// before transformers 4.47; then the embeddings go in front of the prompt).
    pub image_token_id: Option<u32>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    vision_config: Option<VisionConfig>,
    #[serde(default)]
    qformer_config: Option<QFormerConfig>,
    #[serde(default)]
    text_config: Option<serde_json::Value>,
    #[serde(default = "default_queries")]
    num_query_tokens: usize,
    #[serde(default, alias = "image_token_id")]
    image_token_index: Option<u32>,
}

fn default_queries() -> usize {
    32
}

fn bad(message: impl std::fmt::Display) -> Error {
    Error::bad_file("config.json", message)
}

impl Blip2Config {
    /// Parses config.json text.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(bad)?;
        let vision = raw.vision_config.unwrap_or_default();
        let mut qformer = raw.qformer_config.unwrap_or_default();
        qformer.encoder_hidden_size = vision.hidden_size;
        let text_value = raw.text_config.unwrap_or_else(|| serde_json::json!({}));
        let text_type = text_value
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("opt");
        let text = match text_type {
            "opt" => TextConfig::Opt(serde_json::from_value(text_value.clone()).map_err(bad)?),
            "t5" => TextConfig::T5(serde_json::from_value(text_value.clone()).map_err(bad)?),
            other => {
                return Err(bad(format!(
                "text_config.model_type \"{other}\" is not supported for BLIP-2 (opt and t5 are)"
            )))
            }
        };
        let config = Self {
            vision,
            qformer,
            text,
            num_query_tokens: raw.num_query_tokens,
            image_token_id: raw.image_token_index,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        self.vision.validate()?;
        self.qformer.validate()?;
        let size = |key, value, min| (key, value, min);
        match &self.text {
            TextConfig::Opt(o) => {
                crate::weights::check_config_sizes(
                    "config.json",
                    &[
                        size("num_query_tokens", self.num_query_tokens, 1),
                        size("text_config.vocab_size", o.vocab_size, 1),
                        size("text_config.hidden_size", o.hidden_size, 1),
                        size("text_config.num_hidden_layers", o.num_hidden_layers, 0),
                        size("text_config.ffn_dim", o.ffn_dim, 1),
                        size("text_config.num_attention_heads", o.num_attention_heads, 1),
                        size(
                            "text_config.max_position_embeddings",
                            o.max_position_embeddings,
                            1,
                        ),
                        size("text_config.word_embed_proj_dim", o.embed_dim(), 1),
                    ],
                )?;
                if !o.hidden_size.is_multiple_of(o.num_attention_heads) {
                    return Err(bad(
                        "OPT hidden_size is not divisible by num_attention_heads",
                    ));
                }
            }
            TextConfig::T5(t) => crate::weights::check_config_sizes(
                "config.json",
                &[
                    size("num_query_tokens", self.num_query_tokens, 1),
                    size("text_config.vocab_size", t.vocab_size, 1),
                    size("text_config.d_model", t.d_model, 1),
                    size("text_config.d_kv", t.d_kv, 1),
                    size("text_config.d_ff", t.d_ff, 1),
                    size("text_config.num_layers", t.num_layers, 0),
                    size(
                        "text_config.num_decoder_layers",
                        t.num_decoder_layers.unwrap_or(t.num_layers),
                        0,
                    ),
                    size("text_config.num_heads", t.num_heads, 1),
                    size(
                        "text_config.relative_attention_num_buckets",
                        t.relative_attention_num_buckets,
                        1,
                    ),
                    size(
                        "text_config.relative_attention_max_distance",
                        t.relative_attention_max_distance,
                        1,
                    ),
                ],
            )?,
        }
        Ok(())
    }

    /// The language model's width (what the projection maps the queries to).
    pub fn text_hidden_size(&self) -> usize {
        match &self.text {
            TextConfig::Opt(o) => o.embed_dim(),
            TextConfig::T5(t) => t.d_model,
        }
    }

    /// Longest sequence the language model takes (T5: no hard limit; its relative
    /// positions extrapolate, 512 is its training length).
    pub fn max_context(&self) -> usize {
        match &self.text {
            TextConfig::Opt(o) => o.max_position_embeddings,
            TextConfig::T5(_) => 512,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_opt_config_gets_transformers_defaults() {
        let text = r#"{"model_type": "blip-2", "num_query_tokens": 32, "image_token_index": 50265,
            "qformer_config": {"model_type": "blip_2_qformer"},
            "text_config": {"model_type": "opt", "hidden_size": 2560, "ffn_dim": 10240,
                            "num_attention_heads": 32, "num_hidden_layers": 32,
                            "vocab_size": 50304, "eos_token_id": 50118, "word_embed_proj_dim": 2560},
            "vision_config": {"model_type": "blip_2_vision_model", "dropout": 0.0}}"#;
        let c = Blip2Config::from_json(text).unwrap();
        assert_eq!(c.vision.num_hidden_layers, 39);
        assert_eq!(c.vision.num_positions(), 257);
        assert_eq!(c.qformer.encoder_hidden_size, 1408);
        assert_eq!(c.qformer.layer_norm_eps, 1e-12);
        assert_eq!(c.image_token_id, Some(50265));
        match &c.text {
            TextConfig::Opt(o) => {
                assert_eq!(o.eos_token_id, Some(50118));
                assert_eq!(o.max_position_embeddings, 2048);
            }
            _ => panic!("expected OPT"),
        }
    }

    #[test]
    fn flan_t5_feed_forward_is_gated_tanh_gelu() {
        let text = r#"{"text_config": {"model_type": "t5", "feed_forward_proj": "gated-gelu", "d_model": 2048}}"#;
        let c = Blip2Config::from_json(text).unwrap();
        match &c.text {
            TextConfig::T5(t) => assert_eq!(t.feed_forward().unwrap(), (true, Act::GeluTanh)),
            _ => panic!("expected T5"),
        }
        assert_eq!(c.text_hidden_size(), 2048);
    }

    #[test]
    fn unknown_language_model_is_named() {
        let err = Blip2Config::from_json(r#"{"text_config": {"model_type": "llama"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("llama"), "{err}");
    }
}
