//! Turning generated tokens into text pieces that never split a UTF-8 character and never
//! show the beginning of a stop string that is about to be cut.
//!
//! Byte-level BPE (Qwen, OPT) and byte-fallback SentencePiece (LLaMA) both spell one
//! Chinese character with several tokens; decoding a prefix of them gives U+FFFD. We
//! decode the whole sequence each step and only release text once it no longer ends in a
//! replacement character: decoding all tokens (not token by token) also keeps
//! SentencePiece's leading-space rules right.

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

/// Incremental detokenizer with stop-string handling. `D` decodes a full id sequence.
pub struct TextStream<D> {
    decode: D,
    tokens: Vec<u32>,
    /// Longest decoded text that did not end in a replacement character.
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
        let full = (self.decode)(&self.tokens)?;
        if full.ends_with(REPLACEMENT) {
            return Ok(StreamStep::default());
        }
        self.stable = full;
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
}
