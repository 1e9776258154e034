//! What the decoder needs to know, whichever config.json it came from: Qwen-VL's text
//! config ([`DecoderConfig::from_qwen`]) or a LLaMA folder's config.json
//! ([`LlamaConfig`], [`DecoderConfig::from_llama`]).

use std::path::Path;

use serde::Deserialize;
use vlm_contract::{Error, Result};

use super::rope::RopeKind;
use crate::layers::Act;
use crate::qwen_vl::config::TextConfig;

/// The decoder's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA).
    pub num_key_value_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// How positions become rotary angles.
    pub rope: RopeKind,
    /// Bias on q/k/v projections (Qwen2: yes; LLaMA, Qwen3: `attention_bias`).
    pub qkv_bias: bool,
    /// Qwen3: RMSNorm over each head of q and k.
    pub qk_norm: bool,
    /// MLP activation.
    pub hidden_act: Act,
    /// Longest supported sequence.
    pub max_position_embeddings: usize,
    /// LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
}

impl DecoderConfig {
    /// Qwen2 / Qwen3's text model: M-RoPE, interleaved in Qwen3-VL.
    pub fn from_qwen(t: &TextConfig) -> Self {
        let section = t.mrope_section;
        Self {
            vocab_size: t.vocab_size,
            hidden_size: t.hidden_size,
            intermediate_size: t.intermediate_size,
            num_hidden_layers: t.num_hidden_layers,
            num_attention_heads: t.num_attention_heads,
            num_key_value_heads: t.num_key_value_heads,
            head_dim: t.head_dim,
            rms_norm_eps: t.rms_norm_eps,
            rope_theta: t.rope_theta,
            rope: if t.mrope_interleaved {
                RopeKind::InterleavedMRope { section }
            } else {
                RopeKind::MRope { section }
            },
            qkv_bias: t.qkv_bias,
            qk_norm: t.qk_norm,
            hidden_act: t.hidden_act,
            max_position_embeddings: t.max_position_embeddings,
            tie_word_embeddings: t.tie_word_embeddings,
        }
    }

    /// A LLaMA decoder (plain RoPE, no q/k/v bias, no q/k norms). `file` names the
    /// config in errors.
    pub fn from_llama(c: &LlamaConfig, file: &str) -> Result<Self> {
        let bad = |m: String| Error::bad_file(file, m);
        if c.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(bad(
                "rope_scaling is set, and the decoder has plain RoPE only: use a checkpoint \
                 trained without RoPE scaling"
                    .into(),
            ));
        }
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(bad(
                "hidden_size is not divisible by num_attention_heads".into()
            ));
        }
        let config = Self {
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            head_dim: c.hidden_size / c.num_attention_heads,
            rms_norm_eps: c.rms_norm_eps,
            rope_theta: c.rope_theta,
            rope: RopeKind::Plain,
            qkv_bias: false,
            qk_norm: false,
            hidden_act: Act::from_name(&c.hidden_act).map_err(bad)?,
            max_position_embeddings: c.max_position_embeddings,
            tie_word_embeddings: c.tie_word_embeddings,
        };
        config.check_sizes(file)?;
        Ok(config)
    }

    /// Refuses sizes that are zero where the decoder divides by them, or beyond any real
    /// checkpoint (see [`crate::weights::MAX_CONFIG_SIZE`]). `file` names the config in
    /// the error.
    pub fn check_sizes(&self, file: &str) -> Result<()> {
        crate::weights::check_config_sizes(
            file,
            &[
                ("vocab_size", self.vocab_size, 1),
                ("hidden_size", self.hidden_size, 1),
                ("intermediate_size", self.intermediate_size, 1),
                ("num_hidden_layers", self.num_hidden_layers, 0),
                ("num_attention_heads", self.num_attention_heads, 1),
                ("num_key_value_heads", self.num_key_value_heads, 1),
                ("head_dim", self.head_dim, 1),
                ("max_position_embeddings", self.max_position_embeddings, 1),
            ],
        )?;
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(Error::bad_file(
                file,
                format!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            ));
        }
        Ok(())
    }
}

/// The config.json fields of a LLaMA-architecture language model the decoder and the
/// tokenizer need (transformers' `LlamaConfig`).
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads; none: as many as query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Longest supported sequence.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// LM head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// MLP activation's name.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Refused when set: the decoder has no scaled RoPE.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// BOS id, when the tokenizer does not name `<s>`.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// EOS id, when the tokenizer does not name `</s>`.
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

// transformers' `LlamaConfig` defaults.
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}
fn default_max_positions() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}

impl LlamaConfig {
    /// Reads `path` (a config.json).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::bad_file(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::bad_file(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA: &str = r#"{"vocab_size":32000,"hidden_size":4096,"intermediate_size":11008,
      "num_hidden_layers":32,"num_attention_heads":32,"rms_norm_eps":1e-05}"#;

    #[test]
    fn llama_is_plain_rope_without_biases() {
        let l: LlamaConfig = serde_json::from_str(LLAMA).unwrap();
        let c = DecoderConfig::from_llama(&l, "config.json").unwrap();
        assert_eq!((c.head_dim, c.num_key_value_heads), (128, 32));
        assert_eq!(c.rope, RopeKind::Plain);
        assert!(!c.qkv_bias && !c.qk_norm && c.hidden_act == Act::Silu);
        assert_eq!((c.rope_theta, c.max_position_embeddings), (10000.0, 2048));
    }

    #[test]
    fn llama_configs_the_decoder_cannot_run_are_refused() {
        let scaled = LLAMA.replace('}', r#","rope_scaling":{"type":"linear","factor":2.0}}"#);
        let l: LlamaConfig = serde_json::from_str(&scaled).unwrap();
        let err = DecoderConfig::from_llama(&l, "config.json").unwrap_err();
        assert!(err.to_string().contains("rope_scaling"), "{err}");
        let gqa = LLAMA.replace('}', r#","num_key_value_heads":5}"#);
        let l: LlamaConfig = serde_json::from_str(&gqa).unwrap();
        let err = DecoderConfig::from_llama(&l, "config.json").unwrap_err();
        assert!(err.to_string().contains("num_key_value_heads"), "{err}");
        let odd = LLAMA.replace("\"num_attention_heads\":32", "\"num_attention_heads\":30");
        let l: LlamaConfig = serde_json::from_str(&odd).unwrap();
        assert!(DecoderConfig::from_llama(&l, "config.json").is_err());
    }
}
