//! A prompt batch of text segments with image rows between them (MiniGPT-4's
//! `<ImageHere>` layout), laid out as the decoder's input.

use candle_core::{Result, Tensor};

use super::model::Decoder;
use super::state::DecoderState;

/// Where each row of a left-padded batch comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentLayout {
    /// `batch · len` token ids, 0 at padding and image rows.
    pub ids: Vec<u32>,
    /// Per row: `< batch · len`, its own token's embedding; `batch · len + j`, image row `j`.
    pub source: Vec<u32>,
    /// Left padding of each sequence.
    pub pad: Vec<usize>,
    /// The padded length.
    pub len: usize,
}

impl SegmentLayout {
    /// `prompts[s]` is sequence `s`'s text segments; `tokens_per_image` image rows go
    /// between each two consecutive segments, taken from the image rows in order.
    pub fn new(prompts: &[&[Vec<u32>]], tokens_per_image: usize) -> Self {
        let length = |segments: &[Vec<u32>]| {
            segments.iter().map(Vec::len).sum::<usize>()
                + segments.len().saturating_sub(1) * tokens_per_image
        };
        let b = prompts.len();
        let len = prompts.iter().map(|p| length(p)).max().unwrap_or(0);
        let pad: Vec<usize> = prompts.iter().map(|p| len - length(p)).collect();
        let mut ids = Vec::with_capacity(b * len);
        let mut source = Vec::with_capacity(b * len);
        let mut next_image_row = (b * len) as u32;
        for (segments, &p) in prompts.iter().zip(&pad) {
            for _ in 0..p {
                source.push(ids.len() as u32);
                ids.push(0u32);
            }
            for (i, seg) in segments.iter().enumerate() {
                if i > 0 {
                    for _ in 0..tokens_per_image {
                        source.push(next_image_row);
                        next_image_row += 1;
                        ids.push(0);
                    }
                }
                for &id in seg {
                    source.push(ids.len() as u32);
                    ids.push(id);
                }
            }
        }
        Self {
            ids,
            source,
            pad,
            len,
        }
    }
}

impl Decoder {
    /// Prefills a plain-RoPE prompt batch laid out by `layout`, its image positions taking
    /// the rows of `image_rows` (`[images · tokens_per_image, hidden]`, in order): the
    /// final hidden states `[batch, len, hidden]` and the state to decode up to
    /// `max_new_tokens` more tokens from.
    pub fn prefill_segments(
        &self,
        layout: SegmentLayout,
        image_rows: Option<&Tensor>,
        max_new_tokens: usize,
    ) -> Result<(Tensor, DecoderState)> {
        let SegmentLayout {
            ids,
            source,
            pad,
            len,
        } = layout;
        let b = pad.len();
        let ids = Tensor::from_vec(ids, b * len, &self.device)?;
        let source = Tensor::from_vec(source, b * len, &self.device)?;
        let embeds = self.embed_with_images(&ids, image_rows, &source, (b, len))?;
        self.prefill_plain(embeds, pad, max_new_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_left_padded_with_image_rows_between() {
        let a = vec![vec![1, 2], vec![3]];
        let b = vec![vec![4]];
        let l = SegmentLayout::new(&[&a, &b], 2);
        assert_eq!((l.len, l.pad.clone()), (5, vec![0, 4]));
        assert_eq!(l.ids, vec![1, 2, 0, 0, 3, 0, 0, 0, 0, 4]);
        // rows 2 and 3 of sequence 0 are image rows 0 and 1 (10 + j)
        assert_eq!(l.source, vec![0, 1, 10, 11, 4, 5, 6, 7, 8, 9]);
    }
}
