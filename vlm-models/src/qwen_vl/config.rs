//! config.json of Qwen2-VL, Qwen2.5-VL and Qwen3-VL, normalised into one shape.
//!
//! Mirrors transformers' `Qwen2VLConfig`, `Qwen2_5_VLConfig` and `Qwen3VLConfig`. Released
//! checkpoints spell the same thing several ways: text fields at the top level (2-VL,
//! 2.5-VL) or under `text_config` (3-VL, and anything saved by transformers 5), RoPE
//! settings under `rope_scaling` or `rope_parameters`. We read all of them.

use serde_json::Value;
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

fn get<'a>(sources: &[&'a Value], key: &str) -> Option<&'a Value> {
    sources
        .iter()
        .find_map(|s| s.get(key).filter(|v| !v.is_null()))
}

fn req_usize(sources: &[&Value], key: &str) -> Result<usize> {
    get(sources, key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| Error::bad_file("config.json", format!("missing or non-integer \"{key}\"")))
}

fn positive(sources: &[&Value], key: &str) -> Result<usize> {
    match req_usize(sources, key)? {
        0 => Err(Error::bad_file(
            "config.json",
            format!("\"{key}\" must be at least 1"),
        )),
        n => Ok(n),
    }
}

fn opt_usize(sources: &[&Value], key: &str, default: usize) -> usize {
    get(sources, key)
        .and_then(Value::as_u64)
        .map_or(default, |v| v as usize)
}

fn usize_list(sources: &[&Value], key: &str) -> Vec<usize> {
    get(sources, key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|v| v as usize)
                .collect()
        })
        .unwrap_or_default()
}

fn act(sources: &[&Value], key: &str, default: &str) -> Result<Act> {
    let name = get(sources, key).and_then(Value::as_str).unwrap_or(default);
    Act::from_name(name).map_err(|m| Error::bad_file("config.json", m))
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

impl QwenVlConfig {
    /// Parses config.json's text.
    pub fn from_json(text: &str) -> Result<Self> {
        let root: Value =
            serde_json::from_str(text).map_err(|e| Error::bad_file("config.json", e))?;
        let model_type = root
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let generation = QwenGeneration::from_model_type(&model_type).ok_or_else(|| {
            Error::bad_file(
                "config.json",
                format!("model_type \"{model_type}\" is not a Qwen-VL model"),
            )
        })?;
        let empty = Value::Null;
        let text_cfg = root.get("text_config").unwrap_or(&empty);
        // text_config wins; the top level fills in what it lacks (old-style configs).
        let t = [text_cfg, &root];
        let vision_cfg = root
            .get("vision_config")
            .ok_or_else(|| Error::bad_file("config.json", "missing \"vision_config\""))?;
        let v = [vision_cfg];

        let rope = get(&t, "rope_parameters")
            .or_else(|| get(&t, "rope_scaling"))
            .unwrap_or(&empty);
        let section = rope
            .get("mrope_section")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|x| x as usize)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_else(|| match generation {
                QwenGeneration::Qwen3 => vec![24, 20, 20],
                _ => vec![16, 24, 24],
            });
        let mrope_section: [usize; 3] = section
            .try_into()
            .map_err(|_| Error::bad_file("config.json", "mrope_section must have three entries"))?;
        let rope_theta = rope
            .get("rope_theta")
            .and_then(Value::as_f64)
            .or_else(|| get(&t, "rope_theta").and_then(Value::as_f64))
            .unwrap_or(1_000_000.0);

        let hidden_size = req_usize(&t, "hidden_size")?;
        let num_attention_heads = positive(&t, "num_attention_heads")?;
        let is3 = generation == QwenGeneration::Qwen3;
        let text = TextConfig {
            vocab_size: req_usize(&t, "vocab_size")?,
            hidden_size,
            intermediate_size: req_usize(&t, "intermediate_size")?,
            num_hidden_layers: req_usize(&t, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: opt_usize(&t, "num_key_value_heads", num_attention_heads),
            head_dim: opt_usize(&t, "head_dim", hidden_size / num_attention_heads),
            rms_norm_eps: get(&t, "rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6),
            rope_theta,
            mrope_section,
            mrope_interleaved: rope
                .get("mrope_interleaved")
                .and_then(Value::as_bool)
                .unwrap_or(is3),
            qkv_bias: if is3 {
                get(&t, "attention_bias")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            } else {
                true
            },
            qk_norm: is3,
            hidden_act: act(&t, "hidden_act", "silu")?,
            max_position_embeddings: opt_usize(&t, "max_position_embeddings", 32768),
            // the top-level flag is the one transformers applies for these models
            tie_word_embeddings: get(&[&root, text_cfg], "tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };

        // Qwen2-VL's config says in_chans, later ones in_channels.
        let in_channels = get(&v, "in_channels")
            .or_else(|| get(&v, "in_chans"))
            .and_then(Value::as_u64)
            .unwrap_or(3) as usize;
        let vision = match generation {
            QwenGeneration::Qwen2 => {
                let embed_dim = req_usize(&v, "embed_dim")?;
                let mlp_ratio = get(&v, "mlp_ratio").and_then(Value::as_f64).unwrap_or(4.0);
                VisionConfig {
                    depth: req_usize(&v, "depth")?,
                    hidden_size: embed_dim,
                    out_hidden_size: opt_usize(&v, "hidden_size", hidden_size),
                    num_heads: positive(&v, "num_heads")?,
                    intermediate_size: (embed_dim as f64 * mlp_ratio) as usize,
                    hidden_act: act(&v, "hidden_act", "quick_gelu")?,
                    patch_size: opt_usize(&v, "patch_size", 14),
                    temporal_patch_size: opt_usize(&v, "temporal_patch_size", 2),
                    spatial_merge_size: opt_usize(&v, "spatial_merge_size", 2),
                    in_channels,
                    window_size: 0,
                    fullatt_block_indexes: vec![],
                    num_position_embeddings: 0,
                    deepstack_visual_indexes: vec![],
                }
            }
            QwenGeneration::Qwen25 | QwenGeneration::Qwen3 => VisionConfig {
                depth: req_usize(&v, "depth")?,
                hidden_size: req_usize(&v, "hidden_size")?,
                out_hidden_size: opt_usize(&v, "out_hidden_size", hidden_size),
                num_heads: positive(&v, "num_heads")?,
                intermediate_size: req_usize(&v, "intermediate_size")?,
                hidden_act: act(
                    &v,
                    "hidden_act",
                    if is3 { "gelu_pytorch_tanh" } else { "silu" },
                )?,
                patch_size: opt_usize(&v, "patch_size", if is3 { 16 } else { 14 }),
                temporal_patch_size: opt_usize(&v, "temporal_patch_size", 2),
                spatial_merge_size: opt_usize(&v, "spatial_merge_size", 2),
                in_channels,
                window_size: opt_usize(&v, "window_size", 112),
                fullatt_block_indexes: usize_list(&v, "fullatt_block_indexes"),
                num_position_embeddings: opt_usize(&v, "num_position_embeddings", 2304),
                deepstack_visual_indexes: usize_list(&v, "deepstack_visual_indexes"),
            },
        };

        let token = |key: &str, default: u32| -> u32 {
            get(&[&root, text_cfg], key)
                .and_then(Value::as_u64)
                .map_or(default, |x| x as u32)
        };
        let mut eos_token_ids = ids(get(&[&root, text_cfg], "eos_token_id"));
        eos_token_ids.dedup();
        check_consistency(&text, &vision, generation)?;
        Ok(Self {
            generation,
            model_type,
            vision,
            text,
            image_token_id: token("image_token_id", 151655),
            vision_start_token_id: token("vision_start_token_id", 151652),
            vision_end_token_id: token("vision_end_token_id", 151653),
            eos_token_ids,
        })
    }
}

impl TextConfig {
    /// Refuses sizes that are zero where the model divides by them, or beyond any real
    /// checkpoint (see [`crate::weights::MAX_CONFIG_SIZE`]); MiniGPT-4's LLaMA uses it too.
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
