//! The generation loop's incremental detokenizer over real tokenizers: the streamed pieces
//! of a Chinese and emoji answer concatenate to exactly the full decode, for byte-level
//! BPE (Qwen, OPT), T5's Unigram and LLaMA's byte-fallback SentencePiece.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;
use vlm_contract::stream::TextStream;
use vlm_contract::{Error, Result};

const ANSWERS: &[&str] = &[
    "照片中主菜是红烧肉，旁边有清蒸鱼和炒青菜。🎉 A family dinner: 一家人 😀👨‍👩‍👧 ok",
    "  leading spaces, 混合 text\nand a new line ✓ 🍜🍜  ",
];

fn fixture_tokenizer(folder: &str) -> Tokenizer {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(folder)
        .join("model/tokenizer.json");
    Tokenizer::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Streams `ids` one at a time; returns the pieces `push` released and what `finish` did.
fn stream(tokenizer: &Tokenizer, ids: &[u32]) -> (Vec<String>, String) {
    let decode = |ids: &[u32]| -> Result<String> {
        tokenizer
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    };
    let mut stream = TextStream::new(decode, vec![]);
    let pieces = ids
        .iter()
        .map(|&id| stream.push(id).unwrap().text)
        .collect();
    (pieces, stream.finish().unwrap())
}

fn check(name: &str, tokenizer: &Tokenizer) {
    for answer in ANSWERS {
        let ids = tokenizer.encode(*answer, false).unwrap().get_ids().to_vec();
        let full = tokenizer.decode(&ids, true).unwrap();
        let (pieces, rest) = stream(tokenizer, &ids);
        for piece in &pieces {
            assert!(!piece.contains('\u{FFFD}'), "{name}: piece {piece:?}");
        }
        assert_eq!(pieces.concat(), full, "{name}: streamed text of {answer:?}");
        assert_eq!(rest, "", "{name}: text held back to the end of {answer:?}");
    }
}

#[test]
fn streamed_pieces_concatenate_to_the_full_decode() {
    for (name, folder) in [
        ("Qwen2-VL fixture", "qwen/qwen2_vl"),
        ("Qwen3-VL fixture", "qwen/qwen3_vl"),
        ("OPT fixture", "blip2/opt"),
        ("T5 fixture", "blip2/t5"),
    ] {
        check(name, &fixture_tokenizer(folder));
    }
}

#[test]
fn streamed_pieces_of_real_vocabularies_concatenate_to_the_full_decode() {
    let Some(assets) = std::env::var_os("VLM_ASSETS").map(PathBuf::from) else {
        eprintln!("VLM_ASSETS is not set: skipping the real-vocabulary streams (.ci/run sets it)");
        return;
    };
    let qwen =
        Tokenizer::from_file(assets.join("qwen-vl/Qwen3-VL-8B-Instruct/tokenizer.json")).unwrap();
    check("Qwen3-VL", &qwen);
    let opt = Tokenizer::from_file(assets.join("blip2/blip2-opt-2.7b/tokenizer.json")).unwrap();
    check("OPT", &opt);
    let llama = vlm_models::tokenizer::sentencepiece_tokenizer(
        &assets.join("minigpt4/llama-tokenizer/tokenizer.model"),
    )
    .unwrap();
    check("LLaMA (SentencePiece)", &llama);
}
