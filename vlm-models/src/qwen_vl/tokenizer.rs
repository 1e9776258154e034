//! The Qwen tokenizer: tokenizer.json when the folder has one, else rebuilt from
//! vocab.json + merges.txt + tokenizer_config.json (what some mirrors and older snapshots
//! ship), with the structure every Qwen2/2.5/3(-VL) tokenizer.json has: NFC, the Qwen2
//! split regex, byte-level BPE, and the added tokens at their configured ids.

use serde_json::{json, Value};
use tokenizers::Tokenizer;
use vlm_contract::files::ModelDir;
use vlm_contract::{Error, Result};

/// The pre-tokenizer regex of Qwen2 and later (tokenizer.json's `Split` pattern).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Loads the folder's tokenizer (see the module docs).
pub fn load_tokenizer(dir: &ModelDir) -> Result<Tokenizer> {
    if dir.path("tokenizer.json").is_file() || !dir.path("vocab.json").is_file() {
        return dir.tokenizer();
    }
    from_vocab_and_merges(dir)
}

/// Rebuilds the tokenizer from vocab.json, merges.txt and tokenizer_config.json's
/// `added_tokens_decoder`.
pub fn from_vocab_and_merges(dir: &ModelDir) -> Result<Tokenizer> {
    let vocab: Value = dir.read_json("vocab.json", "vocab.json holds the BPE vocabulary")?;
    let merges_path = dir.require("merges.txt", "merges.txt holds the BPE merges")?;
    let merges_text =
        std::fs::read_to_string(&merges_path).map_err(|e| Error::bad_file(&merges_path, e))?;
    let merges: Vec<&str> = merges_text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty() && !l.starts_with("#version"))
        .collect();
    let config: Value = dir.read_json(
        "tokenizer_config.json",
        "tokenizer_config.json lists the special tokens (needed without tokenizer.json)",
    )?;
    let mut added: Vec<(u64, Value)> = config
        .get("added_tokens_decoder")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(id, t)| {
                    let id = id.parse::<u64>().ok()?;
                    let mut t = t.clone();
                    t.as_object_mut()?.insert("id".into(), json!(id));
                    Some((id, t))
                })
                .collect()
        })
        .unwrap_or_default();
    added.sort_by_key(|(id, _)| *id);
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added.into_iter().map(|(_, t)| t).collect::<Vec<_>>(),
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
            byte_level
        ]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
            "vocab": vocab, "merges": merges
        }
    });
    spec.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| Error::Tokenizer(format!("rebuilding from vocab.json and merges.txt: {e}")))
}
