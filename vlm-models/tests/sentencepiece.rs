//! The SentencePiece loader against the real LLaMA tokenizer.model (from $VLM_ASSETS,
//! which .ci/run sets to ../shared/assets): llama.cpp's tokenizer test vectors, the
//! MiniGPT-4 reference ids, and goldens from the `sentencepiece` library
//! (tools/fixtures/sentencepiece_goldens.py → tests/fixtures/sentencepiece_llama.json).
//! The same fixture holds three tiny BPE models trained by that script for the normalizer
//! flags LLaMA does not use; their test runs without $VLM_ASSETS.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;
use tokenizers::Tokenizer;
use vlm_contract::Error;
use vlm_models::tokenizer::sentencepiece::{ModelType, PieceType};
use vlm_models::tokenizer::{sentencepiece_tokenizer, SentencePieceModel};

/// llama.cpp's separator between the strings of a `.inp` vocab test file.
const GGML_SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn llama_model() -> Option<PathBuf> {
    let path = common::assets("the real LLaMA tokenizer.model checks")?
        .join("minigpt4/llama-tokenizer/tokenizer.model");
    assert!(
        path.is_file(),
        "VLM_ASSETS is set but {} is missing",
        path.display()
    );
    Some(path)
}

fn reference(name: &str) -> PathBuf {
    let assets = PathBuf::from(std::env::var_os("VLM_ASSETS").expect("checked by llama_model"));
    assets.join("minigpt4/reference").join(name)
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    tokenizer
        .encode(text, false)
        .unwrap_or_else(|e| panic!("encoding {text:?}: {e}"))
        .get_ids()
        .to_vec()
}

fn ids_of(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an id list")
        .iter()
        .map(|v| v.as_u64().expect("an id") as u32)
        .collect()
}

#[test]
fn reads_the_llama_model_proto() {
    let Some(path) = llama_model() else { return };
    let start = Instant::now();
    let model = SentencePieceModel::load(&path).unwrap();
    let parsed = start.elapsed();
    let tokenizer = model.to_tokenizer().unwrap();
    eprintln!(
        "parse {parsed:?}, parse + build {:?} (release builds must stay under ~100 ms)",
        start.elapsed()
    );
    assert_eq!(model.pieces.len(), 32000);
    assert_eq!(model.model_type, ModelType::Bpe);
    assert!(model.byte_fallback);
    assert_eq!(
        (model.unk_id, model.bos_id, model.eos_id, model.pad_id),
        (0, Some(1), Some(2), None)
    );
    assert_eq!(model.pieces[1].piece, "<s>");
    assert_eq!(model.pieces[2].kind, PieceType::Control);
    assert_eq!(model.pieces[3].piece, "<0x00>");
    assert_eq!(model.pieces[3].kind, PieceType::Byte);
    assert_eq!(model.pieces[29871].piece, "▁");
    // LLaMA's normalizer: identity, dummy prefix, extra whitespace kept, spaces escaped.
    let n = &model.normalizer;
    assert_eq!(n.name, "identity");
    assert!(n.precompiled_charsmap.is_empty());
    assert!(n.add_dummy_prefix && !n.remove_extra_whitespaces && n.escape_whitespaces);
    assert_eq!(tokenizer.get_vocab_size(true), 32000);
    assert_eq!(tokenizer.token_to_id("</s>"), Some(2));
}

#[test]
fn matches_llama_cpp_vocab_test_vectors() {
    let Some(path) = llama_model() else { return };
    let tokenizer = sentencepiece_tokenizer(&path).unwrap();
    let inp = std::fs::read_to_string(reference("ggml-vocab-llama-spm.gguf.inp")).unwrap();
    let out = std::fs::read_to_string(reference("ggml-vocab-llama-spm.gguf.out")).unwrap();
    let texts: Vec<&str> = inp
        .strip_suffix(GGML_SEPARATOR)
        .unwrap_or(&inp)
        .split(GGML_SEPARATOR)
        .collect();
    let expected: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(texts.len(), 46);
    assert_eq!(texts.len(), expected.len());
    let failures: Vec<String> = texts
        .iter()
        .zip(&expected)
        .filter(|(text, want)| encode(&tokenizer, text) != **want)
        .map(|(text, want)| {
            format!(
                "{text:?}: got {:?}, want {want:?}",
                encode(&tokenizer, text)
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        texts.len(),
        failures.join("\n")
    );
}

#[test]
fn matches_the_minigpt4_reference_ids() {
    let Some(path) = llama_model() else { return };
    let model = SentencePieceModel::load(&path).unwrap();
    let tokenizer = model.to_tokenizer().unwrap();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(reference("expected_ids.json")).unwrap())
            .unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let add_bos = case
            .get("add_bos")
            .or_else(|| reference.get("add_bos"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut got = encode(&tokenizer, text);
        if add_bos {
            got.insert(0, model.bos_id.unwrap());
        }
        assert_eq!(got, ids_of(&case["ids"]), "{text:?}");
    }
}

#[test]
fn matches_sentencepiece_goldens() {
    let Some(path) = llama_model() else { return };
    let goldens = goldens();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        goldens["tokenizer_bytes"].as_u64().unwrap(),
        "{} is not the tokenizer.model the goldens were made from",
        path.display()
    );
    let model = SentencePieceModel::load(&path).unwrap();
    let tokenizer = model.to_tokenizer().unwrap();
    assert_eq!(model.bos_id.map(u64::from), goldens["bos_id"].as_u64());
    assert_eq!(model.eos_id.map(u64::from), goldens["eos_id"].as_u64());
    assert_eq!(u64::from(model.unk_id), goldens["unk_id"].as_u64().unwrap());
    let cases = goldens["cases"].as_array().unwrap();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    check_cases(&model, &tokenizer, cases, "llama");
}

#[test]
fn matches_sentencepiece_on_trained_tiny_models() {
    let goldens = goldens();
    let trained = goldens["trained_models"].as_array().unwrap();
    assert_eq!(trained.len(), 3);
    for entry in trained {
        let name = entry["name"].as_str().unwrap();
        let bytes = base64_decode(entry["model_base64"].as_str().unwrap());
        let model = SentencePieceModel::from_bytes(&bytes).unwrap();
        let flags = &entry["flags"];
        let n = &model.normalizer;
        assert_eq!(model.model_type, ModelType::Bpe, "{name}");
        assert_eq!(n.name, "identity", "{name}");
        assert_eq!(
            Some(n.add_dummy_prefix),
            flags["add_dummy_prefix"].as_bool()
        );
        assert_eq!(
            Some(n.remove_extra_whitespaces),
            flags["remove_extra_whitespaces"].as_bool()
        );
        assert_eq!(Some(model.byte_fallback), flags["byte_fallback"].as_bool());
        let tokenizer = model.to_tokenizer().unwrap();
        check_cases(&model, &tokenizer, entry["cases"].as_array().unwrap(), name);
    }
}

fn goldens() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sentencepiece_llama.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Encode ids and pieces must equal sentencepiece's; so must decode, with and without
/// BOS/EOS around the ids (sentencepiece drops control pieces), except for ids holding
/// `<unk>`, which sentencepiece decodes to " ⁇ " and `decode(ids, true)` drops.
fn check_cases(model: &SentencePieceModel, tokenizer: &Tokenizer, cases: &[Value], label: &str) {
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids_of(&case["ids"]);
        let encoding = tokenizer.encode(text, false).unwrap();
        assert_eq!(encoding.get_ids(), want, "{label}: ids of {text:?}");
        let pieces: Vec<&str> = case["pieces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(encoding.get_tokens(), pieces, "{label}: pieces of {text:?}");
        if want.contains(&model.unk_id) {
            continue;
        }
        let decoded = case["decoded"].as_str().unwrap();
        assert_eq!(
            tokenizer.decode(&want, true).unwrap(),
            decoded,
            "{label}: decode of {text:?}"
        );
        let framed: Vec<u32> = model
            .bos_id
            .into_iter()
            .chain(want)
            .chain(model.eos_id)
            .collect();
        assert_eq!(
            tokenizer.decode(&framed, true).unwrap(),
            decoded,
            "{label}: decode of {text:?} between BOS and EOS"
        );
    }
}

/// Standard base64 (RFC 4648, with padding), for the fixture's model bytes.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .expect("base64 character") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn bad_paths_name_the_file() {
    let missing = Path::new("/nonexistent/llama/tokenizer.model");
    let err = sentencepiece_tokenizer(missing).unwrap_err();
    assert!(matches!(err, Error::MissingFile { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("/nonexistent/llama/tokenizer.model"));

    // A file that is not a ModelProto (this test's own fixture JSON).
    let json =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sentencepiece_llama.json");
    let err = sentencepiece_tokenizer(&json).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::BadFile { .. }), "{msg}");
    assert!(
        msg.contains("sentencepiece_llama.json") && msg.contains("not a valid SentencePiece"),
        "{msg}"
    );
}
