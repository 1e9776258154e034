//! Constrained decoding: output that always follows a JSON Schema, a regular expression,
//! a list of choices or a Lark grammar (docs/structured-output.md).
//!
//! The grammar is compiled by [llguidance](https://github.com/guidance-ai/llguidance)
//! against a trie of the model's vocabulary, built once per model from the tokenizer the
//! family decodes with ([`token_bytes`]). Each request gets its own [`Constraint`] (per
//! request state, like the KV cache): before every pick it masks the logits of the tokens
//! the grammar forbids, and the picked token advances it. The mask for the next step is
//! computed while the device runs the step (`generate.rs`).

mod token_bytes;

use std::sync::{Arc, OnceLock};

use llguidance::api::{StopReason, TopLevelGrammar};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;
use tokenizers::Tokenizer;
use toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::{Error, Result};

pub use token_bytes::token_bytes;

/// What the output must follow, as resolved from [`crate::GenerationOptions`].
#[derive(Debug, Clone, PartialEq)]
pub enum OutputConstraint {
    /// JSON that validates against this JSON Schema.
    JsonSchema(Value),
    /// Text matching this regular expression as a whole (Rust `regex` syntax).
    Regex(String),
    /// Exactly one of these strings.
    Choices(Vec<String>),
    /// A grammar in llguidance's Lark dialect (special tokens written `<|name|>`).
    Grammar(String),
}

impl OutputConstraint {
    /// The option's name as the user spells it, for error messages.
    pub fn option_name(&self) -> &'static str {
        match self {
            OutputConstraint::JsonSchema(_) => "json_schema",
            OutputConstraint::Regex(_) => "regex",
            OutputConstraint::Choices(_) => "choices",
            OutputConstraint::Grammar(_) => "grammar",
        }
    }

    fn grammar(&self) -> Result<TopLevelGrammar> {
        Ok(match self {
            OutputConstraint::JsonSchema(schema) => {
                TopLevelGrammar::from_json_schema(with_layout(schema)?)
            }
            OutputConstraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
            OutputConstraint::Choices(choices) => {
                let alternatives: Vec<String> = choices.iter().map(|c| regex_escape(c)).collect();
                TopLevelGrammar::from_regex(&alternatives.join("|"))
            }
            OutputConstraint::Grammar(lark) => TopLevelGrammar::from_lark(lark.clone()),
        })
    }
}

/// Writes the JSON in one line with `, ` and `: ` (the layout Qwen and LLaMA chat models
/// write themselves) unless the schema sets llguidance's `x-guidance` options itself:
/// with free whitespace a model can spend its whole budget on blank lines.
fn with_layout(schema: &Value) -> Result<Value> {
    match schema {
        Value::Object(map) => {
            let mut map = map.clone();
            map.entry("x-guidance").or_insert_with(|| {
                serde_json::json!({
                    "whitespace_flexible": false,
                    "item_separator": ", ",
                    "key_separator": ": ",
                })
            });
            Ok(Value::Object(map))
        }
        Value::Bool(_) => Ok(schema.clone()),
        other => Err(Error::invalid_option(
            "json_schema",
            format!(
                "a JSON Schema is an object (or true/false), not {}: pass e.g. {{\"type\": \"object\"}}",
                kind_of(other)
            ),
        )),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Escapes the characters that mean something in a regular expression.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The vocabulary as llguidance sees it: bytes per token and the EOS ids.
struct Vocabulary {
    trie: TokTrie,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    // Only used for forced tokens, which the loop does not take (it picks one token per
    // step from the masked logits): greedy tokenization over the trie is enough.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// A model's grammar compiler, built on first use (the vocabulary trie and llguidance's
/// token slices take tens of milliseconds for a 150k vocabulary) and shared by every
/// request after.
#[derive(Default)]
pub struct Grammars {
    factory: OnceLock<std::result::Result<Arc<ParserFactory>, String>>,
}

impl Grammars {
    fn factory(&self, tokenizer: &Tokenizer, eos: &[u32]) -> Result<Arc<ParserFactory>> {
        self.factory
            .get_or_init(|| build_factory(tokenizer, eos).map_err(|e| e.to_string()))
            .clone()
            .map_err(Error::Tokenizer)
    }

    /// Compiles `constraint` for one request: a grammar the library cannot take, and a
    /// grammar whose first token the vocabulary cannot write, fail here, before any
    /// device work.
    pub fn compile(
        &self,
        tokenizer: &Tokenizer,
        eos: &[u32],
        constraint: &OutputConstraint,
    ) -> Result<Constraint> {
        let factory = self.factory(tokenizer, eos)?;
        let name = constraint.option_name();
        let parser = factory
            .create_parser(constraint.grammar()?)
            .map_err(|e| Error::invalid_option(name, format!("{e:#}")))?;
        let mut constraint = Constraint {
            matcher: Matcher::new(Ok(parser)),
            mask: None,
            eos: eos.to_vec(),
            name,
        };
        let unwritable = match constraint.compute_mask() {
            Ok(()) => constraint.mask.as_ref().is_some_and(|m| m.is_zero()),
            Err(_) if constraint.vocabulary_ran_out() => true,
            Err(e) => return Err(e),
        };
        if unwritable {
            return Err(Error::invalid_option(
                name,
                "this model's vocabulary has no token that starts the required output (BLIP-2 \
                 Flan-T5's has no `{`, `}` or `\"`, for example): use a schema the model can \
                 write, or another model",
            ));
        }
        Ok(constraint)
    }
}

fn build_factory(tokenizer: &Tokenizer, eos: &[u32]) -> Result<Arc<ParserFactory>> {
    let Some(&first_eos) = eos.first() else {
        return Err(Error::Tokenizer(
            "constrained decoding needs the model's end-of-sequence token, and its \
             generation_config.json / config.json name none"
                .into(),
        ));
    };
    let words = token_bytes(tokenizer)?;
    let info = TokRxInfo::new(words.len() as u32, first_eos);
    if eos.iter().any(|&e| e as usize >= words.len()) {
        return Err(Error::Tokenizer(format!(
            "the EOS ids {eos:?} are outside the tokenizer's {} tokens",
            words.len()
        )));
    }
    let trie = TokTrie::from(&info, &words).with_eos_tokens(eos);
    let env: TokEnv = Arc::new(Vocabulary { trie });
    let mut factory = ParserFactory::new_simple(&env)
        .map_err(|e| Error::Tokenizer(format!("building the constraint's token index: {e:#}")))?;
    factory.quiet();
    Ok(Arc::new(factory))
}

/// Sets the logits of the ids `mask` forbids to -inf (ids past the mask too); returns
/// whether any allowed logit is left finite.
fn mask_row(mask: &SimpleVob, row: &mut [f32]) -> bool {
    let mut any = false;
    // 32 tokens per mask word; most words of a JSON state's mask are all zero.
    let words = mask.as_slice();
    for (chunk, logits) in row.chunks_mut(32).enumerate() {
        let word = match words.get(chunk) {
            Some(&w) if chunk * 32 < mask.len() => w,
            _ => 0,
        };
        if word == 0 {
            logits.fill(f32::NEG_INFINITY);
            continue;
        }
        for (bit, logit) in logits.iter_mut().enumerate() {
            if word & (1 << bit) != 0 {
                any |= *logit != f32::NEG_INFINITY;
            } else {
                *logit = f32::NEG_INFINITY;
            }
        }
    }
    any
}

/// One request's constraint: the parser state and the mask of the next step.
pub struct Constraint {
    matcher: Matcher,
    mask: Option<SimpleVob>,
    eos: Vec<u32>,
    name: &'static str,
}

impl Constraint {
    /// Computes the mask of the next step (the slow part, run beside the device step).
    pub fn compute_mask(&mut self) -> Result<()> {
        if self.mask.is_none() {
            let mask = self
                .matcher
                .compute_mask_or_eos()
                .map_err(|e| self.failed(e))?;
            self.mask = Some(mask);
        }
        Ok(())
    }

    /// Sets every token the grammar forbids now to -inf in `row`, the logits of the next
    /// token (ids past the tokenizer's vocabulary, which a model's padded head has, are
    /// never allowed).
    pub fn apply(&mut self, row: &mut [f32]) -> Result<()> {
        self.compute_mask()?;
        let Some(mask) = self.mask.as_ref() else {
            return Err(self.failed("no mask was computed"));
        };
        let any = mask_row(mask, row);
        if !any {
            return Err(Error::Generation(format!(
                "{}: the model's vocabulary has no token for what the constraint needs next; \
                 use a schema the model can write",
                self.name
            )));
        }
        Ok(())
    }

    /// Advances the grammar by the picked token. Returns true when the output is complete
    /// (the grammar accepts and allows nothing more but the end).
    pub fn commit(&mut self, token: u32) -> Result<bool> {
        self.mask = None;
        if self.eos.contains(&token) {
            return Ok(true);
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| self.failed(e))?;
        Ok(self.matcher.is_stopped())
    }

    /// Whether the grammar accepts the output as it is.
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    /// Whether the grammar stopped because no token of the vocabulary can continue it.
    fn vocabulary_ran_out(&self) -> bool {
        // llguidance reports it as the stop reason, or, once the matcher has turned into
        // its error state, only in the error's text.
        self.matcher.stop_reason() == StopReason::NoExtensionBias
            || self
                .matcher
                .get_error()
                .is_some_and(|e| e.contains("NoExtensionBias"))
    }

    fn failed(&self, e: impl std::fmt::Display) -> Error {
        if self.vocabulary_ran_out() {
            return Error::Generation(format!(
                "{}: the model's vocabulary has no token for what the constraint needs next; \
                 use a schema the model can write",
                self.name
            ));
        }
        Error::Generation(format!("{} constraint: {e}", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_keeps_exactly_the_allowed_ids() {
        let mut mask = SimpleVob::alloc(70);
        for id in [0, 31, 32, 64, 69] {
            mask.allow_token(id);
        }
        // A padded head: 75 logits for a 70-token vocabulary.
        let mut row = vec![1.0f32; 75];
        assert!(mask_row(&mask, &mut row));
        let kept: Vec<usize> = (0..75).filter(|&i| row[i].is_finite()).collect();
        assert_eq!(kept, [0, 31, 32, 64, 69]);
        let mut none = vec![f32::NEG_INFINITY; 75];
        assert!(!mask_row(&mask, &mut none));
    }

    #[test]
    fn choices_are_literal() {
        assert_eq!(regex_escape("a.b (c)"), "a\\.b \\(c\\)");
        assert_eq!(regex_escape("猫"), "猫");
    }

    #[test]
    fn layout_is_added_unless_the_schema_sets_it() {
        let s = with_layout(&serde_json::json!({"type": "object"})).unwrap();
        assert_eq!(s["x-guidance"]["key_separator"], ": ");
        let own =
            serde_json::json!({"type": "object", "x-guidance": {"whitespace_flexible": true}});
        assert_eq!(with_layout(&own).unwrap(), own);
        assert!(with_layout(&serde_json::json!([1])).is_err());
    }
}
