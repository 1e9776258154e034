//! config.json of Qwen2-VL, Qwen2.5-VL and Qwen3-VL, normalised into one shape.
//!
//! Mirrors transformers' `Qwen2VLConfig`, `Qwen2_5_VLConfig` and `Qwen3VLConfig`. Released
//! checkpoints spell the same thing several ways: text fields at the top level (2-VL,
//! 2.5-VL) or under `text_config` (3-VL, and anything saved by transformers 5), RoPE
//! settings under `rope_scaling` or `rope_parameters`. We read all of them, through serde
//! mirrors of the file (`RawConfig`) that are then normalised.

use serde::Deserialize;
use vlm_contract::{Error, Result};

use crate::layers::Act;

/// Which generation of the family a checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QwenGeneration {
    /// Qwen2-VL: LayerNorm + QuickGELU vision blocks, full attention.
    Qwen2,
    /// Qwen2.5-VL: RMSNorm + SwiGLU vision blocks, window attention.
    Qwen25,
    /// Qwen3-VL: learned, interpolated position embeddings, DeepStack, Qwen3 text.
    Qwen3,
}

impl QwenGeneration {
    /// From config.json's `model_type`.
    pub fn from_model_type(t: &str) -> Option<Self> {
        match t {
            "qwen2_vl" => Some(Self::Qwen2),
            "qwen2_5_vl" => Some(Self::Qwen25),
            "qwen3_vl" => Some(Self::Qwen3),
            _ => None,
        }
    }
}

/// The vision tower's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    /// Number of blocks.
    pub depth: usize,
    /// Width of the blocks (`embed_dim` in Qwen2-VL, `hidden_size` later).
    pub hidden_size: usize,
    /// Width after the patch merger (= the language model's hidden size).
    pub out_hidden_size: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// MLP activation.
    pub hidden_act: Act,
    /// Pixels per patch side.
    pub patch_size: usize,
    /// Frames per patch (an image is its own frame twice).
    pub temporal_patch_size: usize,
    /// Patches merged per side by the merger.
    pub spatial_merge_size: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Qwen2.5-VL: window side in pixels.
    pub window_size: usize,
    /// Qwen2.5-VL: blocks with full attention (the others use windows).
    pub fullatt_block_indexes: Vec<usize>,
    /// Qwen3-VL: size of the learned position table (a square grid).
    pub num_position_embeddings: usize,
    /// Qwen3-VL: blocks whose output feeds DeepStack.
    pub deepstack_visual_indexes: Vec<usize>,
}

/// The language model's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
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
    /// Rotary frequency slots given to the temporal, height and width position streams.
    pub mrope_section: [usize; 3],
    /// Qwen3-VL interleaves the three streams slot by slot instead of in blocks.
    pub mrope_interleaved: bool,
    /// Bias on q/k/v projections (Qwen2: yes; Qwen3: `attention_bias`).
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

/// Everything the model needs from config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct QwenVlConfig {
    /// The generation.
    pub generation: QwenGeneration,
    /// `model_type` as written.
    pub model_type: String,
    /// Vision tower.
    pub vision: VisionConfig,
    /// Language model.
    pub text: TextConfig,
    /// `<|image_pad|>`.
    pub image_token_id: u32,
    /// `<|vision_start|>`.
    pub vision_start_token_id: u32,
    /// `<|vision_end|>`.
    pub vision_end_token_id: u32,
    /// EOS ids named in config.json (fallback when generation_config.json has none).
    pub eos_token_ids: Vec<u32>,
}

/// config.json as written: every field optional (a missing one gets transformers' default
/// or a [`missing`] error below), unknown keys ignored as transformers ignores them.
/// Text fields live at the top level in Qwen2-VL and Qwen2.5-VL releases and under
/// `text_config` in Qwen3-VL and anything saved by transformers 5.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    model_type: Option<String>,
    text_config: Option<RawText>,
    vision_config: Option<RawVision>,
    #[serde(flatten)]
    top: RawText,
}

/// Text-side fields, at the top level or under `text_config`. The token ids and
/// `tie_word_embeddings` are read here too, because both places occur.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawText {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<RawRope>,
    rope_scaling: Option<RawRope>,
    attention_bias: Option<bool>,
    hidden_act: Option<String>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    image_token_id: Option<u32>,
    vision_start_token_id: Option<u32>,
    vision_end_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
}

/// `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct RawRope {
    mrope_section: Option<Vec<usize>>,
    mrope_interleaved: Option<bool>,
    rope_theta: Option<f64>,
}

/// `vision_config`: Qwen2-VL's names (`embed_dim`, `mlp_ratio`, `in_chans`, `hidden_size`
/// for the merger's output) and the later ones (`hidden_size`, `out_hidden_size`,
/// `in_channels`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawVision {
    depth: Option<usize>,
    embed_dim: Option<usize>,
    mlp_ratio: Option<f64>,
    hidden_size: Option<usize>,
    out_hidden_size: Option<usize>,
    num_heads: Option<usize>,
    intermediate_size: Option<usize>,
    hidden_act: Option<String>,
    patch_size: Option<usize>,
    temporal_patch_size: Option<usize>,
    spatial_merge_size: Option<usize>,
    in_channels: Option<usize>,
    in_chans: Option<usize>,
    window_size: Option<usize>,
    fullatt_block_indexes: Option<Vec<usize>>,
    num_position_embeddings: Option<usize>,
    deepstack_visual_indexes: Option<Vec<usize>>,
}

/// `eos_token_id`: one id or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// Defaults of transformers' `Qwen2VLConfig`, `Qwen2_5_VLConfig` and `Qwen3VLConfig` for
/// fields a checkpoint may leave out.
mod defaults {
    pub const RMS_NORM_EPS: f64 = 1e-6;
    pub const ROPE_THETA: f64 = 1_000_000.0;
    pub const MROPE_SECTION_QWEN2: [usize; 3] = [16, 24, 24];
    pub const MROPE_SECTION_QWEN3: [usize; 3] = [24, 20, 20];
    pub const TEXT_ACT: &str = "silu";
    pub const MAX_POSITION_EMBEDDINGS: usize = 32768;
    pub const IN_CHANNELS: usize = 3;
    pub const MLP_RATIO: f64 = 4.0;
    pub const VISION_ACT_QWEN2: &str = "quick_gelu";
    pub const VISION_ACT_QWEN25: &str = "silu";
    pub const VISION_ACT_QWEN3: &str = "gelu_pytorch_tanh";
    pub const PATCH_SIZE: usize = 14;
    pub const PATCH_SIZE_QWEN3: usize = 16;
    pub const TEMPORAL_PATCH_SIZE: usize = 2;
    pub const SPATIAL_MERGE_SIZE: usize = 2;
    pub const WINDOW_SIZE: usize = 112;
    pub const NUM_POSITION_EMBEDDINGS: usize = 2304;
    pub const IMAGE_TOKEN_ID: u32 = 151655;
    pub const VISION_START_TOKEN_ID: u32 = 151652;
    pub const VISION_END_TOKEN_ID: u32 = 151653;
}

/// The error for a required field that config.json lacks.
fn missing(key: &str) -> Error {
    Error::bad_file(
        "config.json",
        format!("missing \"{key}\"; the checkpoint's config.json must set it"),
    )
}

/// `value`, or the error naming `key` when it is absent.
fn required<T>(value: Option<T>, key: &str) -> Result<T> {
    value.ok_or_else(|| missing(key))
}

/// A required size the model divides by.
fn positive(value: Option<usize>, key: &str) -> Result<usize> {
    match required(value, key)? {
        0 => Err(Error::bad_file(
            "config.json",
            format!("\"{key}\" must be at least 1"),
        )),
        n => Ok(n),
    }
}

fn act(name: Option<&str>, default: &str) -> Result<Act> {
    Act::from_name(name.unwrap_or(default)).map_err(|m| Error::bad_file("config.json", m))
}

impl QwenVlConfig {
    /// Parses config.json's text.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| Error::bad_file("config.json", e))?;
        let model_type = raw.model_type.unwrap_or_default();
        let generation = QwenGeneration::from_model_type(&model_type).ok_or_else(|| {
            Error::bad_file(
                "config.json",
                format!("model_type \"{model_type}\" is not a Qwen-VL model"),
            )
        })?;
        let nested = raw.text_config.unwrap_or_default();
        let top = raw.top;
        // text_config wins; the top level fills in what it lacks (old-style configs).
        macro_rules! text {
            ($field:ident) => {
                nested.$field.clone().or_else(|| top.$field.clone())
            };
        }
        // ...except for these, where the top-level value is the one transformers applies.
        macro_rules! top_first {
            ($field:ident) => {
                top.$field.clone().or_else(|| nested.$field.clone())
            };
        }
        let v = raw.vision_config.ok_or_else(|| missing("vision_config"))?;

        let rope = nested
            .rope_parameters
            .as_ref()
            .or(top.rope_parameters.as_ref())
            .or(nested.rope_scaling.as_ref())
            .or(top.rope_scaling.as_ref());
        let is3 = generation == QwenGeneration::Qwen3;
        let mrope_section: [usize; 3] = match rope.and_then(|r| r.mrope_section.clone()) {
            Some(section) => section.try_into().map_err(|_| {
                Error::bad_file("config.json", "mrope_section must have three entries")
            })?,
            None if is3 => defaults::MROPE_SECTION_QWEN3,
            None => defaults::MROPE_SECTION_QWEN2,
        };
        let rope_theta = rope
            .and_then(|r| r.rope_theta)
            .or(text!(rope_theta))
            .unwrap_or(defaults::ROPE_THETA);

        let hidden_size = required(text!(hidden_size), "hidden_size")?;
        let num_attention_heads = positive(text!(num_attention_heads), "num_attention_heads")?;
        let text = TextConfig {
            vocab_size: required(text!(vocab_size), "vocab_size")?,
            hidden_size,
            intermediate_size: required(text!(intermediate_size), "intermediate_size")?,
            num_hidden_layers: required(text!(num_hidden_layers), "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: text!(num_key_value_heads).unwrap_or(num_attention_heads),
            head_dim: text!(head_dim).unwrap_or(hidden_size / num_attention_heads),
            rms_norm_eps: text!(rms_norm_eps).unwrap_or(defaults::RMS_NORM_EPS),
            rope_theta,
            mrope_section,
            mrope_interleaved: rope.and_then(|r| r.mrope_interleaved).unwrap_or(is3),
            // Qwen2's attention always has q/k/v biases; Qwen3's follows attention_bias.
            qkv_bias: !is3 || text!(attention_bias).unwrap_or(false),
            qk_norm: is3,
            hidden_act: act(text!(hidden_act).as_deref(), defaults::TEXT_ACT)?,
            max_position_embeddings: text!(max_position_embeddings)
                .unwrap_or(defaults::MAX_POSITION_EMBEDDINGS),
            tie_word_embeddings: top_first!(tie_word_embeddings).unwrap_or(false),
        };

        let in_channels = v
            .in_channels
            .or(v.in_chans)
            .unwrap_or(defaults::IN_CHANNELS);
        let vision = match generation {
            QwenGeneration::Qwen2 => {
                let embed_dim = required(v.embed_dim, "vision_config.embed_dim")?;
                let mlp_ratio = v.mlp_ratio.unwrap_or(defaults::MLP_RATIO);
                VisionConfig {
                    depth: required(v.depth, "vision_config.depth")?,
                    hidden_size: embed_dim,
                    out_hidden_size: v.hidden_size.unwrap_or(hidden_size),
                    num_heads: positive(v.num_heads, "vision_config.num_heads")?,
                    intermediate_size: (embed_dim as f64 * mlp_ratio) as usize,
                    hidden_act: act(v.hidden_act.as_deref(), defaults::VISION_ACT_QWEN2)?,
                    patch_size: v.patch_size.unwrap_or(defaults::PATCH_SIZE),
                    temporal_patch_size: v
                        .temporal_patch_size
                        .unwrap_or(defaults::TEMPORAL_PATCH_SIZE),
                    spatial_merge_size: v
                        .spatial_merge_size
                        .unwrap_or(defaults::SPATIAL_MERGE_SIZE),
                    in_channels,
                    window_size: 0,
                    fullatt_block_indexes: vec![],
                    num_position_embeddings: 0,
                    deepstack_visual_indexes: vec![],
                }
            }
            QwenGeneration::Qwen25 | QwenGeneration::Qwen3 => VisionConfig {
                depth: required(v.depth, "vision_config.depth")?,
                hidden_size: required(v.hidden_size, "vision_config.hidden_size")?,
                out_hidden_size: v.out_hidden_size.unwrap_or(hidden_size),
                num_heads: positive(v.num_heads, "vision_config.num_heads")?,
                intermediate_size: required(
                    v.intermediate_size,
                    "vision_config.intermediate_size",
                )?,
                hidden_act: act(
                    v.hidden_act.as_deref(),
                    if is3 {
                        defaults::VISION_ACT_QWEN3
                    } else {
                        defaults::VISION_ACT_QWEN25
                    },
                )?,
                patch_size: v.patch_size.unwrap_or(if is3 {
                    defaults::PATCH_SIZE_QWEN3
                } else {
                    defaults::PATCH_SIZE
                }),
                temporal_patch_size: v
                    .temporal_patch_size
                    .unwrap_or(defaults::TEMPORAL_PATCH_SIZE),
                spatial_merge_size: v.spatial_merge_size.unwrap_or(defaults::SPATIAL_MERGE_SIZE),
                in_channels,
                window_size: v.window_size.unwrap_or(defaults::WINDOW_SIZE),
                fullatt_block_indexes: v.fullatt_block_indexes.unwrap_or_default(),
                num_position_embeddings: v
                    .num_position_embeddings
                    .unwrap_or(defaults::NUM_POSITION_EMBEDDINGS),
                deepstack_visual_indexes: v.deepstack_visual_indexes.unwrap_or_default(),
            },
        };

        let mut eos_token_ids = match top_first!(eos_token_id) {
            Some(TokenIds::One(id)) => vec![id],
            Some(TokenIds::Many(ids)) => ids,
            None => vec![],
        };
        eos_token_ids.dedup();
        check_consistency(&text, &vision, generation)?;
        Ok(Self {
            generation,
            model_type,
            vision,
            text,
            image_token_id: top_first!(image_token_id).unwrap_or(defaults::IMAGE_TOKEN_ID),
            vision_start_token_id: top_first!(vision_start_token_id)
                .unwrap_or(defaults::VISION_START_TOKEN_ID),
            vision_end_token_id: top_first!(vision_end_token_id)
                .unwrap_or(defaults::VISION_END_TOKEN_ID),
            eos_token_ids,
        })
    }
}

impl TextConfig {
    /// Refuses sizes that are zero where the model divides by them, or beyond any real
    /// checkpoint (see [`crate::weights::MAX_CONFIG_SIZE`]).
    /// `file` names the config in the error.
    pub fn check_sizes(&self, file: &str) -> Result<()> {
        let t = self;
        let [s0, s1, s2] = t.mrope_section;
        crate::weights::check_config_sizes(
            file,
            &[
                ("vocab_size", t.vocab_size, 1),
                ("hidden_size", t.hidden_size, 1),
                ("intermediate_size", t.intermediate_size, 1),
                ("num_hidden_layers", t.num_hidden_layers, 0),
                ("num_attention_heads", t.num_attention_heads, 1),
                ("num_key_value_heads", t.num_key_value_heads, 1),
                ("head_dim", t.head_dim, 1),
                ("mrope_section", s0, 0),
                ("mrope_section", s1, 0),
                ("mrope_section", s2, 0),
                ("max_position_embeddings", t.max_position_embeddings, 1),
            ],
        )?;
        if !t.num_attention_heads.is_multiple_of(t.num_key_value_heads) {
            return Err(Error::bad_file(
                file,
                format!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                    t.num_attention_heads, t.num_key_value_heads
                ),
            ));
        }
        Ok(())
    }
}

/// Settings that would otherwise fail deep inside a forward pass, or silently compute
/// something else.
fn check_consistency(t: &TextConfig, v: &VisionConfig, generation: QwenGeneration) -> Result<()> {
    let bad = |m: String| Err(Error::bad_file("config.json", m));
    t.check_sizes("config.json")?;
    // Qwen2-VL names the vision width embed_dim and its output width hidden_size.
    let (width, out_width, mlp_width) = match generation {
        QwenGeneration::Qwen2 => (
            "vision_config.embed_dim",
            "vision_config.hidden_size",
            "vision_config.embed_dim * mlp_ratio",
        ),
        _ => (
            "vision_config.hidden_size",
            "vision_config.out_hidden_size",
            "vision_config.intermediate_size",
        ),
    };
    crate::weights::check_config_sizes(
        "config.json",
        &[
            ("vision_config.depth", v.depth, 0),
            (width, v.hidden_size, 1),
            (out_width, v.out_hidden_size, 1),
            ("vision_config.num_heads", v.num_heads, 1),
            (mlp_width, v.intermediate_size, 1),
            ("vision_config.patch_size", v.patch_size, 1),
            (
                "vision_config.temporal_patch_size",
                v.temporal_patch_size,
                1,
            ),
            ("vision_config.spatial_merge_size", v.spatial_merge_size, 1),
            ("vision_config.in_channels", v.in_channels, 1),
            ("vision_config.window_size", v.window_size, 0),
            (
                "vision_config.num_position_embeddings",
                v.num_position_embeddings,
                0,
            ),
        ],
    )?;
    let slots: usize = t.mrope_section.iter().sum();
    if slots != t.head_dim / 2 {
        return bad(format!(
            "mrope_section {:?} covers {slots} rotary frequencies but head_dim {} has {}",
            t.mrope_section,
            t.head_dim,
            t.head_dim / 2
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN25_7B: &str = r#"{"model_type":"qwen2_5_vl","hidden_size":3584,"intermediate_size":18944,
      "num_attention_heads":28,"num_hidden_layers":28,"num_key_value_heads":4,"rms_norm_eps":1e-06,
      "rope_theta":1000000.0,"tie_word_embeddings":false,"vocab_size":152064,"eos_token_id":151645,
      "image_token_id":151655,"max_position_embeddings":128000,
      "vision_config":{"depth":32,"hidden_act":"silu","hidden_size":1280,"intermediate_size":3420,"num_heads":16,
        "in_chans":3,"out_hidden_size":3584,"patch_size":14,"spatial_merge_size":2,"window_size":112,
        "fullatt_block_indexes":[7,15,23,31],"temporal_patch_size":2},
      "rope_scaling":{"type":"mrope","mrope_section":[16,24,24]}}"#;

    #[test]
    fn parses_old_style_qwen25_config() {
        let c = QwenVlConfig::from_json(QWEN25_7B).unwrap();
        assert_eq!(c.generation, QwenGeneration::Qwen25);
        assert_eq!(c.text.head_dim, 128);
        assert_eq!(c.text.mrope_section, [16, 24, 24]);
        assert!(!c.text.mrope_interleaved && c.text.qkv_bias && !c.text.qk_norm);
        assert_eq!(c.vision.fullatt_block_indexes, vec![7, 15, 23, 31]);
        assert_eq!(c.eos_token_ids, vec![151645]);
    }

    #[test]
    fn inconsistent_configs_are_refused_at_load() {
        let zero_heads =
            QWEN25_7B.replace("\"num_attention_heads\":28", "\"num_attention_heads\":0");
        let err = QwenVlConfig::from_json(&zero_heads)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("num_attention_heads") && err.contains("at least 1"),
            "{err}"
        );
        let bad_rope = QWEN25_7B.replace("[16,24,24]", "[16,24,20]");
        let err = QwenVlConfig::from_json(&bad_rope).unwrap_err().to_string();
        assert!(err.contains("mrope_section"), "{err}");
        let bad_gqa = QWEN25_7B.replace("\"num_key_value_heads\":4", "\"num_key_value_heads\":5");
        assert!(QwenVlConfig::from_json(&bad_gqa).is_err());
    }

    #[test]
    fn a_missing_required_key_is_named_with_the_file() {
        for (key, json) in [
            (
                "vocab_size",
                QWEN25_7B.replace("\"vocab_size\":152064,", ""),
            ),
            (
                "vision_config.intermediate_size",
                QWEN25_7B.replace("\"intermediate_size\":3420,", ""),
            ),
        ] {
            let err = QwenVlConfig::from_json(&json).unwrap_err();
            assert!(matches!(err, Error::BadFile { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("missing \"{key}\"")) && msg.contains("config.json"),
                "{msg}"
            );
        }
        // A key present as null counts as missing, as before.
        let null = QWEN25_7B.replace("\"hidden_size\":3584,", "\"hidden_size\":null,");
        let msg = QwenVlConfig::from_json(&null).unwrap_err().to_string();
        assert!(msg.contains("missing \"hidden_size\""), "{msg}");
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let known = QwenVlConfig::from_json(QWEN25_7B).unwrap();
        let extra = QWEN25_7B
            .replacen('{', r#"{"architectures":["Qwen2_5_VLForConditionalGeneration"],"torch_dtype":"bfloat16","use_sliding_window":false,"#, 1)
            .replace("\"depth\":32,", "\"depth\":32,\"tokens_per_second\":2,\"future_field\":{\"a\":[1,2]},")
            .replace("\"type\":\"mrope\",", "\"type\":\"mrope\",\"rope_type\":\"default\",");
        assert_eq!(QwenVlConfig::from_json(&extra).unwrap(), known);
    }

    #[test]
    fn real_configs_from_assets_parse() {
        let Some(root) = std::env::var_os("VLM_ASSETS") else {
            eprintln!("VLM_ASSETS is not set: skipping the real-config check (.ci/run sets it)");
            return;
        };
        let root = std::path::PathBuf::from(root).join("qwen-vl");
        for (dir, gen, layers) in [
            ("Qwen2.5-VL-7B-Instruct", QwenGeneration::Qwen25, 28),
            ("Qwen2.5-VL-3B-Instruct", QwenGeneration::Qwen25, 36),
            ("Qwen3-VL-8B-Instruct", QwenGeneration::Qwen3, 36),
        ] {
            let text = std::fs::read_to_string(root.join(dir).join("config.json")).unwrap();
            let c = QwenVlConfig::from_json(&text).unwrap();
            assert_eq!(c.generation, gen, "{dir}");
            assert_eq!(c.text.num_hidden_layers, layers, "{dir}");
            if gen == QwenGeneration::Qwen3 {
                assert!(c.text.mrope_interleaved && c.text.qk_norm && !c.text.qkv_bias);
                assert_eq!(c.text.rope_theta, 5_000_000.0);
                assert_eq!(c.vision.deepstack_visual_indexes, vec![8, 16, 24]);
                assert_eq!(c.vision.patch_size, 16);
            }
        }
    }
}
