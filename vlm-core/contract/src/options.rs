//! Generation options, and the model's own defaults from generation_config.json.

use std::path::Path;

use serde::Deserialize;

use crate::constraint::OutputConstraint;
use crate::{CancelFlag, Error, Result};

/// Used when neither the caller nor generation_config.json says how many tokens to make:
/// long enough for a detailed photo description, short enough to bound a batch job.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 512;

/// How the next token is picked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Always the most likely token (deterministic).
    Greedy,
    /// Sample from the distribution after temperature, top-k and top-p (applied in that
    /// order, as HF transformers does).
    Sample {
        /// Divides the logits; must be > 0.
        temperature: f32,
        /// Keep the smallest set of tokens whose probability reaches `top_p` (1.0 = off).
        top_p: f32,
        /// Keep the `top_k` most likely tokens (0 = off).
        top_k: usize,
    },
}

/// The language of the default prompts of `describe` and `relate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Language {
    /// Chinese for `ask` questions written in Chinese, English otherwise; `describe` and
    /// `relate` without an instruction use English.
    #[default]
    Auto,
    /// English prompts.
    English,
    /// Simplified Chinese prompts.
    Chinese,
}

impl Language {
    /// Parses `en`, `english`, `zh`, `chinese`, `zh-cn`, `auto` (any case).
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Language::Auto),
            "en" | "english" => Ok(Language::English),
            "zh" | "zh-cn" | "zh-hans" | "chinese" | "中文" => Ok(Language::Chinese),
            other => Err(Error::invalid_option(
                "language",
                format!("\"{other}\" is not a language vlm has prompts for; use en or zh"),
            )),
        }
    }

    /// Resolves `Auto` against a piece of user text: Chinese if it holds any CJK ideograph.
    pub fn resolve(self, text: &str) -> Language {
        match self {
            Language::Auto if text.chars().any(is_cjk) => Language::Chinese,
            Language::Auto => Language::English,
            other => other,
        }
    }
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0xF900..=0xFAFF | 0x20000..=0x2A6DF)
}

/// What the caller asks of one generation. Unset fields fall back to the model's
/// [`GenerationDefaults`] (its generation_config.json).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationOptions {
    /// Most tokens to generate (default: generation_config.json, else 512).
    pub max_new_tokens: Option<usize>,
    /// End-of-sequence tokens and stop strings are ignored until this many tokens exist;
    /// benchmarks set `min_new_tokens == max_new_tokens` to force a fixed length.
    pub min_new_tokens: usize,
    /// Greedy or sampling (default: generation_config.json's do_sample & co.).
    pub sampling: Option<Sampling>,
    /// HF-style repetition penalty (> 1 discourages repeats; default from the model).
    pub repetition_penalty: Option<f32>,
    /// Seed of the sampler (ignored by greedy decoding).
    pub seed: u64,
    /// Generation stops when the text ends with any of these; the stop string is cut off.
    pub stop_strings: Vec<String>,
    /// Prompt language of `describe` / `relate`.
    pub language: Language,
    /// Keep the logits of every step in [`crate::Generation::logits`] (for tests and
    /// analysis; costs one vocabulary-sized copy per token).
    pub return_logits: bool,
    /// Keep each generated token's log-probability in
    /// [`crate::Generation::token_logprobs`]: the log-softmax of the model's own logits at
    /// the picked token, before repetition penalty and temperature (a confidence score,
    /// e.g. to route unsure answers to a stronger model). Costs one reduction over the
    /// vocabulary per step, on the device; the tokens are the same with or without it.
    pub return_logprobs: bool,
    /// Smallest area, in pixels, an image of this call is resized to: `min_pixels` of
    /// Qwen-VL's `smart_resize`. `None`: the model's load option, else the checkpoint's
    /// preprocessor_config.json. Families with a fixed input size (BLIP-2, MiniGPT-4:
    /// 224×224, see [`crate::ModelInfo::fixed_image_size`]) ignore pixel budgets.
    pub min_pixels: Option<usize>,
    /// Largest area, in pixels, an image of this call is resized to: `max_pixels` of
    /// Qwen-VL's `smart_resize`, the knob that bounds the image tokens (a merged token
    /// covers 28×28 pixels on Qwen2/2.5-VL, 32×32 on Qwen3-VL). `None`: as `min_pixels`.
    pub max_pixels: Option<usize>,
    /// Stops the call when set from another thread ([`crate::Error::Cancelled`]).
    pub cancel: Option<CancelFlag>,
    /// Constrain the output to JSON that validates against this JSON Schema (an object,
    /// e.g. `{"type": "object", "properties": {...}}`; docs/structured-output.md lists
    /// what is supported). Decoding masks every token that would break it, so the text
    /// always parses when `finish_reason` is `Eos`; with `Length` it is the unfinished
    /// prefix. An unsupported keyword is an [`crate::Error::InvalidOption`] naming it.
    /// With a constraint, stop strings and `min_new_tokens` are ignored: the grammar
    /// decides where the output ends.
    pub json_schema: Option<serde_json::Value>,
    /// Constrain the whole output to match this regular expression (Rust `regex` syntax,
    /// anchored at both ends).
    pub regex: Option<String>,
    /// Constrain the output to exactly one of these strings (empty: no constraint).
    pub choices: Vec<String>,
    /// Constrain the output to a grammar in llguidance's Lark dialect
    /// (<https://github.com/guidance-ai/llguidance/blob/main/docs/syntax.md>); special
    /// tokens are written `<|name|>`. At most one of `json_schema`, `regex`, `choices`
    /// and `grammar` may be set.
    pub grammar: Option<String>,
}

impl GenerationOptions {
    /// Greedy decoding of at most `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens: Some(max_new_tokens),
            sampling: Some(Sampling::Greedy),
            ..Self::default()
        }
    }

    /// Checks ranges and fills in the model's defaults.
    pub fn resolve(&self, defaults: &GenerationDefaults) -> Result<ResolvedOptions> {
        let max_new_tokens = self
            .max_new_tokens
            .or(defaults.max_new_tokens)
            .unwrap_or(DEFAULT_MAX_NEW_TOKENS);
        if max_new_tokens == 0 {
            return Err(Error::invalid_option(
                "max_new_tokens",
                "must be at least 1",
            ));
        }
        if self.min_new_tokens > max_new_tokens {
            return Err(Error::invalid_option(
                "min_new_tokens",
                format!(
                    "{} is larger than max_new_tokens {max_new_tokens}",
                    self.min_new_tokens
                ),
            ));
        }
        let sampling = self.sampling.unwrap_or(defaults.sampling);
        if let Sampling::Sample {
            temperature, top_p, ..
        } = sampling
        {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(Error::invalid_option(
                    "temperature",
                    format!("{temperature} must be a finite number > 0; use greedy decoding for deterministic output"),
                ));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(Error::invalid_option(
                    "top_p",
                    format!("{top_p} must be in (0, 1]"),
                ));
            }
        }
        let repetition_penalty = self
            .repetition_penalty
            .unwrap_or(defaults.repetition_penalty);
        if !(repetition_penalty.is_finite() && repetition_penalty > 0.0) {
            return Err(Error::invalid_option(
                "repetition_penalty",
                format!("{repetition_penalty} must be > 0 (1.0 = off)"),
            ));
        }
        let constraint = self.constraint()?;
        if self.stop_strings.iter().any(String::is_empty) {
            return Err(Error::invalid_option(
                "stop_strings",
                "an empty stop string would stop at once",
            ));
        }
        Ok(ResolvedOptions {
            max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            sampling,
            repetition_penalty,
            seed: self.seed,
            stop_strings: self
                .stop_strings
                .iter()
                .chain(&defaults.stop_strings)
                .cloned()
                .collect(),
            eos_token_ids: defaults.eos_token_ids.clone(),
            return_logits: self.return_logits,
            return_logprobs: self.return_logprobs,
            cancel: self.cancel.clone(),
            constraint,
        })
    }

    /// The one output constraint set, if any.
    fn constraint(&self) -> Result<Option<OutputConstraint>> {
        let mut set = Vec::new();
        if let Some(schema) = &self.json_schema {
            set.push(OutputConstraint::JsonSchema(schema.clone()));
        }
        if let Some(rx) = &self.regex {
            set.push(OutputConstraint::Regex(rx.clone()));
        }
        if !self.choices.is_empty() {
            set.push(OutputConstraint::Choices(self.choices.clone()));
        }
        if let Some(g) = &self.grammar {
            set.push(OutputConstraint::Grammar(g.clone()));
        }
        if set.len() > 1 {
            let names: Vec<_> = set.iter().map(OutputConstraint::option_name).collect();
            return Err(Error::invalid_option(
                set[1].option_name(),
                format!(
                    "{} are all set; the output follows one constraint: keep one",
                    names.join(" and ")
                ),
            ));
        }
        Ok(set.pop())
    }
}

/// Options with every default filled in, as the generation loop uses them.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedOptions {
    /// See [`GenerationOptions::max_new_tokens`].
    pub max_new_tokens: usize,
    /// See [`GenerationOptions::min_new_tokens`].
    pub min_new_tokens: usize,
    /// See [`GenerationOptions::sampling`].
    pub sampling: Sampling,
    /// See [`GenerationOptions::repetition_penalty`].
    pub repetition_penalty: f32,
    /// See [`GenerationOptions::seed`].
    pub seed: u64,
    /// See [`GenerationOptions::stop_strings`].
    pub stop_strings: Vec<String>,
    /// Tokens that end the sequence.
    pub eos_token_ids: Vec<u32>,
    /// See [`GenerationOptions::return_logits`].
    pub return_logits: bool,
    /// See [`GenerationOptions::return_logprobs`].
    pub return_logprobs: bool,
    /// See [`GenerationOptions::cancel`].
    pub cancel: Option<CancelFlag>,
    /// What the output must follow: [`GenerationOptions::json_schema`] & co.
    pub constraint: Option<OutputConstraint>,
}

impl ResolvedOptions {
    /// Whether this call's [`CancelFlag`] was set.
    pub fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(CancelFlag::is_cancelled)
    }
}

/// A model's own defaults, read from generation_config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationDefaults {
    /// Tokens that end a sequence.
    pub eos_token_ids: Vec<u32>,
    /// Token used to pad batches (falls back to the first EOS id).
    pub pad_token_id: Option<u32>,
    /// Greedy unless the config says do_sample.
    pub sampling: Sampling,
    /// 1.0 unless the config says otherwise.
    pub repetition_penalty: f32,
    /// The config's max_new_tokens, if any.
    pub max_new_tokens: Option<usize>,
    /// Stop strings of the model's own conversation format (e.g. MiniGPT-4's `###`),
    /// applied in addition to the caller's.
    pub stop_strings: Vec<String>,
}

impl Default for GenerationDefaults {
    fn default() -> Self {
        Self {
            eos_token_ids: vec![],
            pad_token_id: None,
            sampling: Sampling::Greedy,
            repetition_penalty: 1.0,
            max_new_tokens: None,
            stop_strings: vec![],
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<u32> {
        match self {
            OneOrMany::One(x) => vec![x],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Default)]
struct GenerationConfigFile {
    eos_token_id: Option<OneOrMany>,
    pad_token_id: Option<u32>,
    do_sample: Option<bool>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    repetition_penalty: Option<f32>,
    max_new_tokens: Option<usize>,
}

impl GenerationDefaults {
    /// Reads generation_config.json; `fallback_eos` (usually from config.json) is used when
    /// the file is absent or names no EOS token.
    pub fn from_file(path: &Path, fallback_eos: &[u32]) -> Result<Self> {
        let file: GenerationConfigFile = if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::bad_file(path, e))?;
            serde_json::from_str(&text).map_err(|e| Error::bad_file(path, e))?
        } else {
            GenerationConfigFile::default()
        };
        Ok(Self::from_parts(file, fallback_eos))
    }

    /// Parses the JSON text of a generation_config.json.
    pub fn from_json(text: &str, fallback_eos: &[u32]) -> Result<Self> {
        let file: GenerationConfigFile =
            serde_json::from_str(text).map_err(|e| Error::bad_file("generation_config.json", e))?;
        Ok(Self::from_parts(file, fallback_eos))
    }

    fn from_parts(file: GenerationConfigFile, fallback_eos: &[u32]) -> Self {
        let eos_token_ids = file
            .eos_token_id
            .map(OneOrMany::into_vec)
            .unwrap_or_else(|| fallback_eos.to_vec());
        // HF treats do_sample with a near-zero temperature (Qwen2.5-VL ships 1e-6) as
        // effectively greedy; sampling at that temperature only adds float noise.
        let sampling = match (
            file.do_sample.unwrap_or(false),
            file.temperature.unwrap_or(1.0),
        ) {
            (true, t) if t > 1e-3 => Sampling::Sample {
                temperature: t,
                top_p: file.top_p.unwrap_or(1.0),
                top_k: file.top_k.unwrap_or(0),
            },
            _ => Sampling::Greedy,
        };
        Self {
            eos_token_ids,
            pad_token_id: file.pad_token_id,
            sampling,
            repetition_penalty: file.repetition_penalty.unwrap_or(1.0),
            max_new_tokens: file.max_new_tokens,
            stop_strings: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen3_generation_config_gives_sampling_defaults() {
        let d = GenerationDefaults::from_json(
            r#"{"bos_token_id":151643,"pad_token_id":151643,"do_sample":true,"eos_token_id":[151645,151643],
                "top_k":20,"top_p":0.8,"repetition_penalty":1.0,"temperature":0.7}"#,
            &[],
        )
        .unwrap();
        assert_eq!(d.eos_token_ids, vec![151645, 151643]);
        assert_eq!(
            d.sampling,
            Sampling::Sample {
                temperature: 0.7,
                top_p: 0.8,
                top_k: 20
            }
        );
    }

    #[test]
    fn near_zero_temperature_is_greedy() {
        let d = GenerationDefaults::from_json(
            r#"{"do_sample":true,"temperature":1e-6,"eos_token_id":5}"#,
            &[],
        )
        .unwrap();
        assert_eq!(d.sampling, Sampling::Greedy);
        assert_eq!(d.eos_token_ids, vec![5]);
    }

    #[test]
    fn option_validation() {
        let d = GenerationDefaults::default();
        let bad = [
            GenerationOptions {
                max_new_tokens: Some(0),
                ..Default::default()
            },
            GenerationOptions {
                max_new_tokens: Some(4),
                min_new_tokens: 5,
                ..Default::default()
            },
            GenerationOptions {
                sampling: Some(Sampling::Sample {
                    temperature: 0.0,
                    top_p: 1.0,
                    top_k: 0,
                }),
                ..Default::default()
            },
            GenerationOptions {
                sampling: Some(Sampling::Sample {
                    temperature: 0.7,
                    top_p: 1.5,
                    top_k: 0,
                }),
                ..Default::default()
            },
            GenerationOptions {
                repetition_penalty: Some(-1.0),
                ..Default::default()
            },
            GenerationOptions {
                stop_strings: vec![String::new()],
                ..Default::default()
            },
        ];
        for o in bad {
            let err = o.resolve(&d).unwrap_err();
            assert!(
                matches!(err, Error::InvalidOption { .. }),
                "{o:?} gave {err}"
            );
        }
        let ok = GenerationOptions::greedy(12).resolve(&d).unwrap();
        assert_eq!(ok.max_new_tokens, 12);
        assert_eq!(
            GenerationOptions::default()
                .resolve(&d)
                .unwrap()
                .max_new_tokens,
            DEFAULT_MAX_NEW_TOKENS
        );
    }

    #[test]
    fn language_follows_the_question() {
        assert_eq!(
            Language::Auto.resolve("照片中主菜是什么?"),
            Language::Chinese
        );
        assert_eq!(
            Language::Auto.resolve("What is the main dish?"),
            Language::English
        );
        assert_eq!(Language::English.resolve("照片"), Language::English);
        assert_eq!(Language::parse("ZH").unwrap(), Language::Chinese);
        assert!(Language::parse("klingon").is_err());
    }
}
