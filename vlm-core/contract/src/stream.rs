//! Turning generated tokens into text pieces that never split a UTF-8 character and never
//! show the beginning of a stop string that is about to be cut.
//!
//! Byte-level BPE (Qwen, OPT) and byte-fallback SentencePiece (LLaMA) both spell one
//! Chinese character with several tokens; decoding a prefix of them gives U+FFFD, so text
//! is only released once the decoded tail no longer ends in a replacement character.
//!
//! Each step decodes a short window, not the whole sequence (which made a long answer
//! quadratic): the tokens since the last release plus the ones released with it, which
//! serve as context. The context's own text is known (`window_prefix`) and is cut off the
//! window's, so tokenizers that treat the first token specially (SentencePiece drops its
//! leading space) give the same text as a full decode: the context, not the new token,
//! is first. A window that does not extend its context's text (a tokenizer we did not
//! foresee) falls back to decoding the whole sequence, and [`TextStream::finish`] always
//! decodes the whole sequence once, so the final answer is exactly the full decode.

use crate::Result;

const REPLACEMENT: char = '\u{FFFD}';

/// What one new token added.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamStep {
    /// Text that is now final and can be shown.
    pub text: String,
    /// Set when the text now contains this stop string (everything from it on is dropped).
    pub stopped_at: Option<String>,
}

/// Incremental detokenizer with stop-string handling. `D` decodes an id sequence (any
/// slice of the generated ids, not only a prefix).
pub struct TextStream<D> {
    decode: D,
    tokens: Vec<u32>,
    /// First token of the window decoded each step.
    window_start: usize,
    /// Text of `tokens[window_start..released]`, the window's context.
    window_prefix: String,
    /// Tokens whose text is in `stable`.
    released: usize,
    /// Text of `tokens[..released]`: the longest decoded text that did not end in a
    /// replacement character.
    stable: String,
    /// Bytes of `stable` already handed out.
    emitted: usize,
    stop_strings: Vec<String>,
    stopped: bool,
}

impl<D: FnMut(&[u32]) -> Result<String>> TextStream<D> {
    /// A stream that decodes with `decode` and stops at any of `stop_strings`.
    pub fn new(decode: D, stop_strings: Vec<String>) -> Self {
        Self {
            decode,
            tokens: Vec::new(),
            window_start: 0,
            window_prefix: String::new(),
            released: 0,
            stable: String::new(),
            emitted: 0,
            stop_strings,
            stopped: false,
        }
    }

    /// Adds one token; returns the text that became final.
    pub fn push(&mut self, token: u32) -> Result<StreamStep> {
        if self.stopped {
            return Ok(StreamStep::default());
        }
        self.tokens.push(token);
        if !self.extend_stable()? {
            return Ok(StreamStep::default());
        }
        if let Some((pos, stop)) = self.find_stop() {
            self.stopped = true;
            let text = self.take_until(pos);
            return Ok(StreamStep {
                text,
                stopped_at: Some(stop),
            });
        }
        let safe_end = self.stable.len() - self.stop_prefix_len();
        Ok(StreamStep {
            text: self.take_until(safe_end),
            stopped_at: None,
        })
    }

    /// Appends the text of the tokens since the last release to `stable`, unless it still
    /// ends in an incomplete character; returns whether it did.
    fn extend_stable(&mut self) -> Result<bool> {
        let window = (self.decode)(&self.tokens[self.window_start..])?;
        if window.ends_with(REPLACEMENT) {
            return Ok(false);
        }
        match window.strip_prefix(self.window_prefix.as_str()) {
            Some(new) => self.stable.push_str(new),
            None => self.stable = (self.decode)(&self.tokens)?,
        }
        // The tokens just released become the next window's context, unless they decode
        // to nothing on their own (a lone space piece, a skipped special token): a first
        // token's leading space would then be stripped from the next token's text.
        let context = (self.decode)(&self.tokens[self.released..])?;
        if context.is_empty() {
            self.window_prefix = window;
        } else {
            self.window_start = self.released;
            self.window_prefix = context;
        }
        self.released = self.tokens.len();
        Ok(true)
    }

    /// Ends the stream: releases whatever was held back (an incomplete character at the
    /// very end is released as U+FFFD, as a lossy decode would show it).
    pub fn finish(&mut self) -> Result<String> {
        if self.stopped {
            return Ok(String::new());
        }
        self.stable = (self.decode)(&self.tokens)?;
        let end = self.stable.len();
        Ok(self.take_until(end))
    }

    /// All text released so far plus what `finish` would release: the final answer.
    pub fn text(&self) -> &str {
        if self.stopped {
            &self.stable[..self.emitted]
        } else {
            &self.stable
        }
    }

    fn take_until(&mut self, end: usize) -> String {
        // `stable` can be re-decoded differently in rare tokenizer corner cases; never
        // hand out a piece that does not start on a character boundary.
        let mut start = self.emitted.min(end);
        while !self.stable.is_char_boundary(start) {
            start -= 1;
        }
        let piece = self.stable[start..end].to_string();
        self.emitted = end.max(self.emitted);
        piece
    }

    fn find_stop(&self) -> Option<(usize, String)> {
        // A stop string can only appear in text not yet released, or straddle its start.
        let longest = self.stop_strings.iter().map(String::len).max()?;
        let mut from = self.emitted.saturating_sub(longest);
        while !self.stable.is_char_boundary(from) {
            from -= 1;
        }
        self.stop_strings
            .iter()
            .filter_map(|s| {
                self.stable[from..]
                    .find(s.as_str())
                    .map(|p| (from + p, s.clone()))
            })
            .min_by_key(|(p, _)| *p)
    }

    /// Length of the longest suffix of `stable` that starts some stop string: held back
    /// until we know whether the stop string completes.
    fn stop_prefix_len(&self) -> usize {
        let text = &self.stable[self.emitted.min(self.stable.len())..];
        let mut best = 0;
        for stop in &self.stop_strings {
            for (i, _) in text.char_indices() {
                let suffix = &text[i..];
                if suffix.len() > best && stop.starts_with(suffix) {
                    best = suffix.len();
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per byte, decoded lossily: the worst case for a streaming decoder.
    fn byte_decoder(vocab: Vec<u8>) -> impl FnMut(&[u32]) -> Result<String> {
        move |ids: &[u32]| {
            let bytes: Vec<u8> = ids.iter().map(|&i| vocab[i as usize]).collect();
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
    }

    fn run(text: &str, stops: &[&str]) -> (Vec<String>, Option<String>) {
        let bytes = text.as_bytes().to_vec();
        let ids: Vec<u32> = (0..bytes.len() as u32).collect();
        let mut stream = TextStream::new(
            byte_decoder(bytes),
            stops.iter().map(|s| s.to_string()).collect(),
        );
        let mut pieces = vec![];
        let mut stopped = None;
        for id in ids {
            let step = stream.push(id).unwrap();
            if !step.text.is_empty() {
                pieces.push(step.text);
            }
            if step.stopped_at.is_some() {
                stopped = step.stopped_at;
                break;
            }
        }
        let rest = stream.finish().unwrap();
        if !rest.is_empty() {
            pieces.push(rest);
        }
        (pieces, stopped)
    }

    #[test]
    fn chinese_split_at_every_byte_streams_whole_characters() {
        let text = "照片中主菜是红烧肉，旁边有清蒸鱼和炒青菜。🎉 ok";
        let (pieces, _) = run(text, &[]);
        for p in &pieces {
            assert!(
                !p.contains(REPLACEMENT),
                "piece {p:?} holds a broken character"
            );
        }
        assert_eq!(pieces.concat(), text);
        // every byte was its own token, so each character came out as soon as it completed
        assert_eq!(pieces.len(), text.chars().count());
    }

    #[test]
    fn stop_string_is_cut_and_never_shown() {
        let (pieces, stopped) = run("答案是红烧肉###Human: 下一个", &["###"]);
        assert_eq!(stopped.as_deref(), Some("###"));
        assert_eq!(pieces.concat(), "答案是红烧肉");
        assert!(pieces.iter().all(|p| !p.contains('#')));
    }

    #[test]
    fn partial_stop_string_is_released_when_it_does_not_complete() {
        let (pieces, stopped) = run("a#b##c", &["###"]);
        assert_eq!(stopped, None);
        assert_eq!(pieces.concat(), "a#b##c");
    }

    #[test]
    fn earliest_of_several_stop_strings_wins() {
        let (pieces, stopped) = run("one</s>two###", &["###", "</s>"]);
        assert_eq!(stopped.as_deref(), Some("</s>"));
        assert_eq!(pieces.concat(), "one");
    }

    /// SentencePiece-like pieces: `▁` is a space, the decoded text loses one leading space
    /// (as LLaMA's `Strip` decoder and Metaspace do), id 0 is a skipped special token, and
    /// `<0xNN>` pieces are raw bytes.
    fn sentencepiece_decoder(
        vocab: &'static [&'static str],
        decoded_tokens: std::rc::Rc<std::cell::Cell<usize>>,
    ) -> impl FnMut(&[u32]) -> Result<String> {
        move |ids: &[u32]| {
            decoded_tokens.set(decoded_tokens.get() + ids.len());
            let mut bytes = Vec::new();
            for &id in ids.iter().filter(|&&id| id != 0) {
                let piece = vocab[id as usize];
                match piece.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')) {
                    Some(hex) => bytes.push(u8::from_str_radix(hex, 16).unwrap()),
                    None => bytes.extend(piece.replace('▁', " ").into_bytes()),
                }
            }
            let text = String::from_utf8_lossy(&bytes).into_owned();
            Ok(text.strip_prefix(' ').unwrap_or(&text).to_string())
        }
    }

    #[test]
    fn streamed_pieces_are_the_full_decode_with_sentencepiece_spaces() {
        const VOCAB: &[&str] = &[
            "</s>",
            "▁",
            "▁照片",
            "中",
            "<0xE7>",
            "<0xBA>",
            "<0xA2>",
            "▁🎉",
            "▁ok",
            "▁a",
            "b",
        ];
        // 红 is E7 BA A2; a lone `▁` and a special token sit right before words, where a
        // window that started on them would strip the word's space.
        let ids = [2, 3, 4, 5, 6, 1, 8, 0, 9, 10, 7, 4, 5, 6, 1, 0, 9];
        let decoded = std::rc::Rc::new(std::cell::Cell::new(0));
        let mut full = sentencepiece_decoder(VOCAB, decoded.clone());
        let want = full(&ids).unwrap();
        let mut stream = TextStream::new(sentencepiece_decoder(VOCAB, decoded.clone()), vec![]);
        let mut pieces = vec![];
        for id in ids {
            pieces.push(stream.push(id).unwrap().text);
        }
        let streamed = pieces.concat();
        pieces.push(stream.finish().unwrap());
        assert_eq!(streamed, want);
        assert_eq!(pieces.concat(), want);
        assert_eq!(stream.text(), want);
        assert_eq!(want, "照片中红  ok ab 🎉红  a");
    }

    #[test]
    fn each_step_decodes_a_bounded_window() {
        const VOCAB: &[&str] = &["</s>", "▁word", "<0xE7>", "<0xBA>", "<0xA2>"];
        let ids: Vec<u32> = (0..3000).map(|i| [1, 2, 3, 4][i % 4]).collect();
        let decoded = std::rc::Rc::new(std::cell::Cell::new(0));
        let mut stream = TextStream::new(sentencepiece_decoder(VOCAB, decoded.clone()), vec![]);
        for &id in &ids {
            stream.push(id).unwrap();
        }
        // Re-decoding the whole sequence each step would be ~4.5 million token decodes.
        assert!(
            decoded.get() < 10 * ids.len(),
            "{} tokens decoded for {} pushed",
            decoded.get(),
            ids.len()
        );
    }
}
