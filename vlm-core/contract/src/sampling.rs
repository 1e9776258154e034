//! Picking the next token from logits: greedy or sampled, with HF's repetition penalty
//! and min-new-tokens rule, applied in the order HF transformers applies them
//! (penalty, EOS suppression, temperature, top-k, top-p).

use std::collections::HashSet;

use candle_core::{DType, Tensor, D};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::options::{ResolvedOptions, Sampling};
use crate::Result;

/// Per-sequence sampler state.
pub struct Sampler {
    sampling: Sampling,
    repetition_penalty: f32,
    rng: StdRng,
}

impl Sampler {
    /// A sampler for `options`, seeded with `options.seed + index` so that sequences of one
    /// batch do not share random draws.
    pub fn new(options: &ResolvedOptions, index: usize) -> Self {
        Self {
            sampling: options.sampling,
            repetition_penalty: options.repetition_penalty,
            rng: StdRng::seed_from_u64(options.seed.wrapping_add(index as u64)),
        }
    }

    /// Whether this sampler needs the logits on the host; if not, argmax can run on the
    /// device and only the id crosses over.
    pub fn needs_host_logits(&self, suppress: bool) -> bool {
        suppress || self.repetition_penalty != 1.0 || !matches!(self.sampling, Sampling::Greedy)
    }

    /// Picks a token from host logits. `history` is every token so far (prompt included,
    /// as HF applies the penalty); `suppress` lists ids that may not be picked now.
    pub fn pick(&mut self, logits: &mut [f32], history: &[u32], suppress: &[u32]) -> u32 {
        if self.repetition_penalty != 1.0 {
            let seen: HashSet<u32> = history.iter().copied().collect();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l < 0.0 {
                        *l * self.repetition_penalty
                    } else {
                        *l / self.repetition_penalty
                    };
                }
            }
        }
        for &id in suppress {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        match self.sampling {
            Sampling::Greedy => argmax(logits),
            Sampling::Sample {
                temperature,
                top_p,
                top_k,
            } => sample(logits, temperature, top_p, top_k, &mut self.rng),
        }
    }
}

/// First index of the largest value (ties go to the lower id, like torch.argmax).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

fn sample(logits: &[f32], temperature: f32, top_p: f32, top_k: usize, rng: &mut StdRng) -> u32 {
    let mut order: Vec<usize> = (0..logits.len())
        .filter(|&i| logits[i].is_finite())
        .collect();
    if order.is_empty() {
        return argmax(logits);
    }
    order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if top_k > 0 && top_k < order.len() {
        // HF keeps every token tied with the k-th one.
        let kth = logits[order[top_k - 1]];
        order.retain(|&i| logits[i] >= kth);
    }
    let max = logits[order[0]] / temperature;
    let mut probs: Vec<f32> = order
        .iter()
        .map(|&i| (logits[i] / temperature - max).exp())
        .collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if top_p < 1.0 {
        // HF's rule: drop the tokens whose cumulative probability, counted from the least
        // likely, stays at or below 1 - top_p; always keep the most likely one.
        let mut keep = probs.len();
        let mut tail = 0.0;
        for (i, p) in probs.iter().enumerate().rev() {
            tail += p;
            if tail <= 1.0 - top_p && i > 0 {
                keep = i;
            } else {
                break;
            }
        }
        probs.truncate(keep);
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let r: f32 = rng.random();
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if r < acc {
            return order[i] as u32;
        }
    }
    order[probs.len() - 1] as u32
}

/// Each row's argmax over the last dimension of `[batch, vocab]` logits, computed on their
/// device, and whether the row is finite. Both come back in one copy of two numbers per
/// row: the check adds no wait for the device to the step. On CUDA, candle's argmax keeps
/// the first of tied maxima only among values its threads compare directly (an H100 picked
/// column 151,036 over 7 in run 42); the model crates' own kernel always picks the first.
pub fn argmax_on_device(logits: &Tensor) -> Result<DeviceArgmax> {
    // Ids stay below 2^24 (vocabularies are ~150k), so they are exact as f32.
    let ids = logits.argmax_keepdim(D::Minus1)?.to_dtype(DType::F32)?;
    // A row's f32 sum is finite exactly when each of its values is: logits are many orders
    // of magnitude below f32's range, so only a NaN or an infinity makes it non-finite.
    let sums = logits.to_dtype(DType::F32)?.sum_keepdim(D::Minus1)?;
    let rows = Tensor::cat(&[ids, sums], 1)?.to_vec2::<f32>()?;
    Ok(DeviceArgmax {
        ids: rows.iter().map(|r| r[0] as u32).collect(),
        finite: rows.iter().map(|r| r[1].is_finite()).collect(),
    })
}

/// What greedy's pick must leave out while the device runs ahead of the host
/// ([`crate::Family::start_run_ahead`]): sequence `i`'s pick for step `s` (0: the token
/// the prefill's logits give) may not be any of `eos_ids` while `s < until[i]`, its
/// `min_new_tokens`. A held pick is the first largest value among the other ids, as
/// [`Sampler::pick`] makes it with those ids suppressed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldEnd {
    /// The end-of-sequence ids (shared by the batch).
    pub eos_ids: Vec<u32>,
    /// Per sequence, the first step whose pick may end it.
    pub until: Vec<usize>,
}

/// What [`argmax_on_device`] brings back.
pub struct DeviceArgmax {
    /// Each row's first largest value's index.
    pub ids: Vec<u32>,
    /// Whether each row is free of NaN and infinities.
    pub finite: Vec<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{GenerationDefaults, GenerationOptions};

    fn sampler(sampling: Sampling, penalty: f32) -> Sampler {
        let opts = GenerationOptions {
            sampling: Some(sampling),
            repetition_penalty: Some(penalty),
            ..Default::default()
        }
        .resolve(&GenerationDefaults::default())
        .unwrap();
        Sampler::new(&opts, 0)
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn repetition_penalty_follows_hf_signs() {
        let mut s = sampler(Sampling::Greedy, 2.0);
        // token 0 (2.0) was seen: becomes 1.0 and loses to token 1 (1.5)
        let mut logits = [2.0, 1.5, -1.0];
        assert_eq!(s.pick(&mut logits, &[0, 2], &[]), 1);
        assert_eq!(logits, [1.0, 1.5, -2.0]);
    }

    #[test]
    fn suppressed_tokens_are_never_picked() {
        let mut s = sampler(Sampling::Greedy, 1.0);
        assert_eq!(s.pick(&mut [5.0, 1.0, 0.0], &[], &[0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_is_reproducible() {
        let mut s = sampler(
            Sampling::Sample {
                temperature: 1.0,
                top_p: 1.0,
                top_k: 1,
            },
            1.0,
        );
        for _ in 0..20 {
            assert_eq!(s.pick(&mut [0.0, 0.5, 0.4], &[], &[]), 1);
        }
        let draw = |seed| {
            let opts = GenerationOptions {
                sampling: Some(Sampling::Sample {
                    temperature: 1.0,
                    top_p: 1.0,
                    top_k: 0,
                }),
                seed,
                ..Default::default()
            }
            .resolve(&GenerationDefaults::default())
            .unwrap();
            let mut s = Sampler::new(&opts, 0);
            (0..32)
                .map(|_| s.pick(&mut [0.0; 8], &[], &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // probabilities ~ [0.84, 0.11, 0.04, 0.01]: top_p 0.8 keeps only the first
        let mut s = sampler(
            Sampling::Sample {
                temperature: 1.0,
                top_p: 0.8,
                top_k: 0,
            },
            1.0,
        );
        for _ in 0..50 {
            assert_eq!(s.pick(&mut [4.0, 2.0, 1.0, -0.5], &[], &[]), 0);
        }
    }
}
