//! Constraints over the real vocabularies (from $VLM_ASSETS, which .ci/run sets): the
//! token bytes of Qwen's byte-level BPE, OPT's, and LLaMA's SentencePiece must let the
//! tokenizer's own encoding of a valid answer (Chinese included) through, step by step.
//! Prints the per-token mask time (a measurement, not a limit).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use tokenizers::Tokenizer;
use vlm_contract::constraint::{Grammars, OutputConstraint};

fn assets() -> Option<PathBuf> {
    common::assets("the real-vocabulary checks")
}

const ANSWER: &str =
    r#"{"caption": "一家人在吃红烧肉 and fish", "people": 5, "tags": ["dinner", "家庭"]}"#;

fn schema() -> OutputConstraint {
    OutputConstraint::JsonSchema(json!({
        "type": "object",
        "properties": {
            "caption": {"type": "string"},
            "people": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"type": "string"}}
        },
        "required": ["caption", "people", "tags"],
        "additionalProperties": false
    }))
}

/// Walks the tokenizer's encoding of [`ANSWER`] through the constraint; returns the mask
/// times.
fn walk(name: &str, tokenizer: &Tokenizer, eos: u32) -> Vec<Duration> {
    let t = Instant::now();
    let words = vlm_contract::constraint::token_bytes(tokenizer).unwrap();
    eprintln!(
        "{name}: {} token byte strings read in {:?}",
        words.len(),
        t.elapsed()
    );
    let t = Instant::now();
    let grammars = Grammars::default();
    let mut c = grammars
        .compile(tokenizer, &[eos], &schema())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!(
        "{name}: vocabulary index and first mask in {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let _second = grammars.compile(tokenizer, &[eos], &schema()).unwrap();
    eprintln!("{name}: a request's schema compiled in {:?}", t.elapsed());
    let mut ids = tokenizer.encode(ANSWER, false).unwrap().get_ids().to_vec();
    // SentencePiece's dummy-prefix space in front of the first piece is not part of the
    // answer: the model writes the piece without it.
    if let Some(bare) = tokenizer
        .id_to_token(ids[0])
        .and_then(|p| p.strip_prefix('\u{2581}').map(str::to_string))
    {
        ids[0] = tokenizer.token_to_id(&bare).unwrap();
    }
    let vocab = tokenizer.get_vocab_size(true);
    let mut times = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let mut row = vec![0.0f32; vocab];
        let t = Instant::now();
        c.compute_mask().unwrap();
        times.push(t.elapsed());
        c.apply(&mut row).unwrap();
        assert!(
            row[id as usize].is_finite(),
            "{name}: token {i} ({:?}) of the tokenizer's own encoding is masked",
            tokenizer.id_to_token(id)
        );
        let done = c.commit(id).unwrap();
        assert_eq!(done, i + 1 == ids.len(), "{name}: ended at token {i}");
    }
    let mut row = vec![0.0f32; vocab];
    c.apply(&mut row).unwrap();
    let allowed: Vec<usize> = (0..vocab).filter(|&i| row[i].is_finite()).collect();
    assert_eq!(
        allowed,
        vec![eos as usize],
        "{name}: only EOS after the answer"
    );
    let total: Duration = times.iter().sum();
    eprintln!(
        "{name}: {} tokens, mask {:?} per token on average, {:?} at most",
        times.len(),
        total / times.len() as u32,
        times.iter().max().unwrap()
    );
    times
}

#[test]
fn real_vocabularies_let_their_own_encoding_through() {
    let Some(assets) = assets() else { return };
    let qwen =
        Tokenizer::from_file(assets.join("qwen-vl/Qwen3-VL-8B-Instruct/tokenizer.json")).unwrap();
    let im_end = qwen.token_to_id("<|im_end|>").unwrap();
    walk("Qwen3-VL", &qwen, im_end);
    let opt = Tokenizer::from_file(assets.join("blip2/blip2-opt-2.7b/tokenizer.json")).unwrap();
    walk("OPT", &opt, 2);
    let llama = vlm_models::tokenizer::sentencepiece_tokenizer(
        &assets.join("minigpt4/llama-tokenizer/tokenizer.model"),
    )
    .unwrap();
    walk("LLaMA (SentencePiece)", &llama, 2);
}
