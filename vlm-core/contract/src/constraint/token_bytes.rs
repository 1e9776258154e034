//! The bytes each token id stands for, read from the tokenizer the family really decodes
//! with: the constraint's trie is built from them.
//!
//! Two vocabulary conventions cover every family:
//! - **byte-level BPE** (Qwen-VL, BLIP-2's OPT): each byte is written as one printable
//!   character (GPT-2's table: printable Latin-1 stands for itself, the other 68 bytes
//!   for U+0100 onwards in byte order);
//! - **SentencePiece** (MiniGPT-4's LLaMA through vlm-models' `tokenizer/sentencepiece.rs`, BLIP-2's Flan-T5):
//!   `▁` (U+2581) stands for a space and, with byte fallback, `<0xNN>` for the byte NN.
//!
//! Special added tokens (`<|im_end|>`, `</s>`) get llguidance's marker byte in front so
//! that no text can spell them; a grammar names them as `<|box_start|>`.

use tokenizers::{DecoderWrapper, Tokenizer};
use toktrie::TokTrie;

use crate::{Error, Result};

/// SentencePiece's visible space.
const SP_SPACE: char = '\u{2581}';

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Convention {
    ByteLevel,
    SentencePiece { byte_fallback: bool },
}

/// The bytes of every id below the tokenizer's vocabulary size (empty: an id the
/// tokenizer has no piece for, never allowed).
pub fn token_bytes(tokenizer: &Tokenizer) -> Result<Vec<Vec<u8>>> {
    let convention = convention(tokenizer)?;
    let size = tokenizer.get_vocab_size(true);
    let added = tokenizer.get_added_tokens_decoder();
    let byte_of_char = byte_level_table();
    let mut out = Vec::with_capacity(size);
    for id in 0..size as u32 {
        if let Some(token) = added.get(&id) {
            let mut bytes = Vec::with_capacity(token.content.len() + 1);
            if token.special {
                bytes.push(TokTrie::SPECIAL_TOKEN_MARKER);
            }
            bytes.extend_from_slice(token.content.as_bytes());
            out.push(bytes);
            continue;
        }
        let Some(piece) = tokenizer.id_to_token(id) else {
            out.push(Vec::new());
            continue;
        };
        let bytes = match convention {
            Convention::ByteLevel => piece
                .chars()
                .map(&byte_of_char)
                .collect::<Option<Vec<u8>>>()
                // A piece outside the byte table cannot come out of the byte-level
                // decoder as text: leave it out of the trie.
                .unwrap_or_default(),
            Convention::SentencePiece { byte_fallback } => match fallback_byte(&piece) {
                Some(b) if byte_fallback => vec![b],
                _ => piece.replace(SP_SPACE, " ").into_bytes(),
            },
        };
        out.push(bytes);
    }
    Ok(out)
}

/// Which convention the tokenizer's decoder follows.
fn convention(tokenizer: &Tokenizer) -> Result<Convention> {
    fn walk(d: &DecoderWrapper, level: &mut bool, fallback: &mut bool, sp: &mut bool) {
        match d {
            DecoderWrapper::ByteLevel(_) => *level = true,
            DecoderWrapper::ByteFallback(_) => *fallback = true,
            DecoderWrapper::Metaspace(_) | DecoderWrapper::Replace(_) => *sp = true,
            DecoderWrapper::Sequence(s) => {
                for d in s.get_decoders() {
                    walk(d, level, fallback, sp);
                }
            }
            _ => {}
        }
    }
    let (mut level, mut fallback, mut sp) = (false, false, false);
    if let Some(d) = tokenizer.get_decoder() {
        walk(d, &mut level, &mut fallback, &mut sp);
    }
    if level {
        Ok(Convention::ByteLevel)
    } else if sp || fallback {
        Ok(Convention::SentencePiece {
            byte_fallback: fallback,
        })
    } else {
        Err(Error::Tokenizer(format!(
            "constrained decoding needs a byte-level BPE or SentencePiece tokenizer; this one \
             decodes with {:?}: generate without json_schema/regex/choices",
            tokenizer.get_decoder()
        )))
    }
}

/// `<0xNN>` → NN.
fn fallback_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

/// GPT-2's byte-level alphabet, inverted: the character a byte-level piece uses → the byte.
/// Every character of the alphabet is below U+0144, so a flat table serves.
fn byte_level_table() -> impl Fn(char) -> Option<u8> {
    let mut table = [None; 0x144];
    let mut next = 0x100usize;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            b as usize
        } else {
            next += 1;
            next - 1
        };
        table[c] = Some(b);
    }
    move |c| table.get(c as usize).copied().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet_round_trips_every_byte() {
        let byte_of = byte_level_table();
        assert_eq!(byte_of('a'), Some(b'a'));
        // 'Ġ' (U+0120) is the space in GPT-2's table, 'Ċ' (U+010A) the newline.
        assert_eq!(byte_of('\u{120}'), Some(b' '));
        assert_eq!(byte_of('\u{10A}'), Some(b'\n'));
        assert_eq!(byte_of('\u{2581}'), None);
    }

    #[test]
    fn fallback_pieces_are_bytes() {
        assert_eq!(fallback_byte("<0x0A>"), Some(b'\n'));
        assert_eq!(fallback_byte("<0xE4>"), Some(0xE4));
        assert_eq!(fallback_byte("<0x0>"), None);
        assert_eq!(fallback_byte("▁the"), None);
    }
}
