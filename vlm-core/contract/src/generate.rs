//! The one generation loop: prepare → prefill → pick → decode step → stop → text.

use std::time::{Duration, Instant};

use candle_core::{DType, Tensor, D};
use rayon::prelude::*;

use crate::constraint::{Constraint, Grammars};
use crate::options::ResolvedOptions;
use crate::sampling::{DeviceArgmax, HeldEnd, Sampler};
use crate::stream::TextStream;
use crate::{Error, Family, FinishReason, Generation, Request, Result, Timings};

/// Decodes a whole id sequence to text.
type Decoder<'t> = Box<dyn FnMut(&[u32]) -> Result<String> + 't>;

struct Sequence<'t> {
    options: ResolvedOptions,
    sampler: Sampler,
    /// Prompt and generated ids: the history the repetition penalty looks at.
    history: Vec<u32>,
    prompt_tokens: usize,
    generated: Vec<u32>,
    stream: TextStream<Decoder<'t>>,
    finish: Option<FinishReason>,
    logits: Option<Vec<Vec<f32>>>,
    logprobs: Option<Vec<f32>>,
    /// The output's grammar (json_schema & co.), when the request has one.
    constraint: Option<Constraint>,
}

impl Sequence<'_> {
    fn eos_suppressed(&self) -> bool {
        // A constrained output ends where its grammar does.
        self.constraint.is_none()
            && self.generated.len() < self.options.min_new_tokens
            && !self.options.eos_token_ids.is_empty()
    }
}

/// Runs `requests` as one batch. With `on_text` (single requests only), final text pieces
/// are handed out as they are made.
pub fn run_generation<F: Family>(
    family: &F,
    grammars: &Grammars,
    requests: &[Request],
    on_text: Option<&mut dyn FnMut(&str)>,
) -> Result<Vec<Generation>> {
    let prepared = Prepared::new(family, grammars, requests)?;
    run_prepared(family, prepared, on_text)
}

/// One request after `Family::prepare`, with its options checked and resolved.
struct PreparedItem<F: Family> {
    inputs: F::Inputs,
    options: ResolvedOptions,
    constraint: Option<Constraint>,
}

/// A batch's requests after `Family::prepare` (the CPU part: templates, tokens, image
/// preprocessing), ready for the device.
pub struct Prepared<F: Family> {
    items: Vec<PreparedItem<F>>,
    time: Duration,
}

impl<F: Family> Prepared<F> {
    /// Prepares every request (on up to one thread per core), timed; the first request
    /// that fails fails the batch.
    pub fn new(family: &F, grammars: &Grammars, requests: &[Request]) -> Result<Self> {
        let t = Instant::now();
        let refs: Vec<&Request> = requests.iter().collect();
        let items = prepare_all(family, grammars, &refs)
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            items,
            time: t.elapsed(),
        })
    }

    /// Prepares the requests among `items` and keeps every failure in its place: the
    /// second value has one entry per item, `Some(error)` where that item failed (its own
    /// error, or one while preparing it), `None` where it is in the batch.
    pub fn from_items(
        family: &F,
        grammars: &Grammars,
        items: Vec<Result<Request>>,
    ) -> (Self, Vec<Option<Error>>) {
        let t = Instant::now();
        let refs: Vec<&Request> = items.iter().filter_map(|i| i.as_ref().ok()).collect();
        let mut prepared = prepare_all(family, grammars, &refs).into_iter();
        let mut kept = Vec::with_capacity(refs.len());
        let mut slots = Vec::with_capacity(items.len());
        for item in items {
            let outcome = item.and_then(|_| {
                prepared
                    .next()
                    .unwrap_or_else(|| Err(Error::Generation("a request was not prepared".into())))
            });
            match outcome {
                Ok(p) => {
                    kept.push(p);
                    slots.push(None);
                }
                Err(e) => slots.push(Some(e)),
            }
        }
        let batch = Self {
            items: kept,
            time: t.elapsed(),
        };
        (batch, slots)
    }
}

/// Checks one request's options, prepares it and checks that it fits the context of
/// `max` tokens.
fn prepare_one<F: Family>(
    family: &F,
    grammars: &Grammars,
    request: &Request,
    max: usize,
) -> Result<PreparedItem<F>> {
    // Options first: a wrong option should not cost an image's preprocessing.
    let options = request.options.resolve(family.generation_defaults())?;
    // A schema is compiled (and its first mask computed) here, on the CPU half, so a bad
    // one fails only its own request and costs the device nothing.
    let constraint = options
        .constraint
        .as_ref()
        .map(|c| grammars.compile(family.tokenizer(), &options.eos_token_ids, c))
        .transpose()?;
    let inputs = family.prepare(request)?;
    let tokens = family.input_ids(&inputs).len();
    if tokens + options.max_new_tokens > max {
        return Err(Error::PromptTooLong {
            tokens,
            new_tokens: options.max_new_tokens,
            max,
        });
    }
    Ok(PreparedItem {
        inputs,
        options,
        constraint,
    })
}

/// Runs a prepared batch.
pub fn run_prepared<F: Family>(
    family: &F,
    prepared: Prepared<F>,
    mut on_text: Option<&mut dyn FnMut(&str)>,
) -> Result<Vec<Generation>> {
    let tokenizer = family.tokenizer();
    let Prepared {
        items,
        time: prepare_time,
    } = prepared;
    let mut inputs = Vec::with_capacity(items.len());
    let mut seqs = Vec::with_capacity(items.len());
    for (
        i,
        PreparedItem {
            inputs: prepared,
            options,
            constraint,
        },
    ) in items.into_iter().enumerate()
    {
        let ids = family.input_ids(&prepared).to_vec();
        let history = family.penalty_history(&prepared);
        let decode: Decoder = Box::new(move |ids: &[u32]| {
            tokenizer
                .decode(ids, true)
                .map_err(|e| Error::Tokenizer(e.to_string()))
        });
        // A constrained output ends where its grammar does: a stop string inside a JSON
        // string must not cut it.
        let stop_strings = match constraint {
            Some(_) => vec![],
            None => options.stop_strings.clone(),
        };
        seqs.push(Sequence {
            sampler: Sampler::new(&options, i),
            prompt_tokens: ids.len(),
            history,
            generated: Vec::new(),
            stream: TextStream::new(decode, stop_strings),
            finish: None,
            logits: options.return_logits.then(Vec::new),
            logprobs: options.return_logprobs.then(Vec::new),
            options,
            constraint,
        });
        inputs.push(prepared);
    }
    if seqs.is_empty() {
        return Ok(vec![]);
    }
    let cancelled = |seqs: &[Sequence<'_>]| seqs.iter().any(|s| s.options.cancelled());
    if cancelled(&seqs) {
        return Err(Error::Cancelled);
    }

    let t_prefill = Instant::now();
    let refs: Vec<&F::Inputs> = inputs.iter().collect();
    let max_steps = seqs
        .iter()
        .map(|s| s.options.max_new_tokens)
        .max()
        .unwrap_or(0);
    let prefill = family.prefill(&refs, max_steps)?;
    // The device runs behind the host: without waiting here, the prompt's work would be
    // counted in the first decode step.
    prefill.logits.device().synchronize()?;
    let mut logits = prefill.logits;
    let mut state = prefill.state;
    let mut timings = Timings {
        preprocess: prepare_time,
        image_encode: prefill.image_encode,
        prefill: t_prefill.elapsed().saturating_sub(prefill.image_encode),
        ..Timings::default()
    };

    let image_cache_hits = prefill.image_cache_hits;

    let dtype = family.info().dtype;
    let t_decode = Instant::now();
    let ahead = match held_end(&seqs) {
        Some(held) if max_steps > 0 => family.start_run_ahead(&logits, &held, &mut state)?,
        _ => false,
    };
    for step in 0..max_steps {
        // Between steps, so that a cancelled call ends within one step's time.
        if cancelled(&seqs) {
            return Err(Error::Cancelled);
        }
        let non_finite = || Error::NonFiniteLogits {
            step,
            dtype: dtype.clone(),
        };
        let (picked, launched) = if ahead {
            // The step after this one is queued before this one's ids are looked at: the
            // device runs it while the host checks them. When they end the batch, that
            // step's work is dropped (one step of device time).
            let t_queue = Instant::now();
            if step + 1 < max_steps {
                family.queue_next_step(&mut state)?;
            }
            let launched = t_queue.elapsed();
            let got = family.wait_for_pick(&mut state)?;
            let unfinished = |i: &usize| seqs[*i].finish.is_none();
            if (0..seqs.len()).filter(unfinished).any(|i| !got.finite[i]) {
                return Err(non_finite());
            }
            (got.ids, launched)
        } else {
            let picked = pick_tokens(&mut seqs, &logits, |l| family.device_argmax(l)).map_err(
                |e| match e {
                    Picking::NonFinite => non_finite(),
                    Picking::Failed(e) => e,
                },
            )?;
            (picked, Duration::ZERO)
        };
        let t_host = Instant::now();
        let logprobs = if seqs.iter().any(|s| s.logprobs.is_some()) {
            picked_logprobs(&logits, &picked)?
        } else {
            vec![]
        };
        take_tokens(&mut seqs, &picked, &logprobs, &mut on_text)?;
        if seqs.iter().all(|s| s.finish.is_some()) {
            break;
        }
        let bookkeeping = t_host.elapsed();
        if !ahead {
            // Finished sequences keep stepping with a dummy token until the batch is done;
            // their outputs are ignored.
            logits = decode_step(family, &picked, &mut state, &mut seqs)?;
        }
        let host = t_host.elapsed() + launched;
        timings.decode_host += host;
        // Where the host's time between steps goes (RUST_LOG=vlm::decode_host=trace; the
        // family's own trace splits the step call further).
        tracing::trace!(
            target: "vlm::decode_host",
            "step {step}: {} µs on the host, {} µs of it before the step call (stop checks, streamed text){}",
            host.as_micros(),
            bookkeeping.as_micros(),
            if ahead { ", the device a step ahead" } else { "" }
        );
        timings.decode_steps = step + 1;
    }
    timings.decode = t_decode.elapsed();

    let mut out = Vec::with_capacity(seqs.len());
    for (i, mut seq) in seqs.into_iter().enumerate() {
        let rest = seq.stream.finish()?;
        if let Some(cb) = on_text.as_deref_mut() {
            if !rest.is_empty() {
                cb(&rest);
            }
        }
        out.push(Generation {
            text: seq.stream.text().to_string(),
            token_ids: seq.generated,
            prompt_tokens: seq.prompt_tokens,
            finish_reason: seq.finish.unwrap_or(FinishReason::Length),
            timings: Timings {
                image_cache_hits: image_cache_hits.get(i).copied().unwrap_or(0),
                ..timings
            },
            logits: seq.logits,
            token_logprobs: seq.logprobs,
        });
    }
    Ok(out)
}

/// [`prepare_one`] of every request, in order. A batch's requests are prepared on rayon's
/// global pool: image preprocessing is CPU work that would otherwise run one photo after
/// another on one core while the GPU waits (a 1024×768 photo takes tens of ms).
fn prepare_all<F: Family>(
    family: &F,
    grammars: &Grammars,
    requests: &[&Request],
) -> Vec<Result<PreparedItem<F>>> {
    let max = family.info().max_context;
    let prepare = |r: &&Request| {
        // A panic in one request's preparation fails that request, not the whole batch.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            prepare_one(family, grammars, r, max)
        }))
        .unwrap_or_else(|_| {
            Err(Error::Generation(
                "preparing a request panicked; this is a bug in vlm: please report it".into(),
            ))
        })
    };
    if requests.len() <= 1 {
        return requests.iter().map(prepare).collect();
    }
    requests.par_iter().map(prepare).collect()
}

/// Each row's log-softmax at its picked token, computed on the logits' device so that only
/// one number per sequence crosses over.
fn picked_logprobs(logits: &Tensor, picked: &[u32]) -> Result<Vec<f32>> {
    let logits = logits.to_dtype(DType::F32)?;
    let shifted = logits.broadcast_sub(&logits.max_keepdim(D::Minus1)?)?;
    let log_total = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let ids = Tensor::new(picked, logits.device())?.unsqueeze(1)?;
    let chosen = shifted.gather(&ids, D::Minus1)?;
    Ok(chosen.broadcast_sub(&log_total)?.squeeze(1)?.to_vec1()?)
}

/// Why [`pick_tokens`] picked nothing.
enum Picking {
    /// A running sequence's row held NaN or an infinity.
    NonFinite,
    Failed(Error),
}

impl From<Error> for Picking {
    fn from(e: Error) -> Self {
        Picking::Failed(e)
    }
}

impl From<candle_core::Error> for Picking {
    fn from(e: candle_core::Error) -> Self {
        Picking::Failed(e.into())
    }
}

/// Whether every sequence decodes greedily with nothing but the ids needed on the host,
/// and if so what its picks leave out: then the device can pick each next token itself and
/// run a step ahead of the host ([`Family::start_run_ahead`]). Sampling, repetition
/// penalties, returned logits or logprobs and output grammars need the rows on the host.
/// `min_new_tokens` only holds off the end-of-sequence ids, which the device can leave out
/// of its picks: a sequence's pick at step `s` is held while `s` is below it, since each
/// running sequence has exactly `s` tokens then (the hold [`Sequence::eos_suppressed`]
/// applies in turn).
fn held_end(seqs: &[Sequence<'_>]) -> Option<HeldEnd> {
    let plain = seqs.iter().all(|s| {
        s.logits.is_none()
            && s.logprobs.is_none()
            && s.constraint.is_none()
            && !s.sampler.needs_host_logits(false)
    });
    if !plain {
        return None;
    }
    let holds =
        |s: &&Sequence<'_>| s.options.min_new_tokens > 0 && !s.options.eos_token_ids.is_empty();
    let eos_ids = seqs
        .iter()
        .find(holds)
        .map(|s| s.options.eos_token_ids.clone())
        .unwrap_or_default();
    // One list of end ids for the device: a batch whose held sequences differ steps in turn.
    if seqs
        .iter()
        .filter(holds)
        .any(|s| s.options.eos_token_ids != eos_ids)
    {
        return None;
    }
    Some(HeldEnd {
        eos_ids,
        until: seqs
            .iter()
            .map(|s| {
                if holds(&s) {
                    s.options.min_new_tokens
                } else {
                    0
                }
            })
            .collect(),
    })
}

/// Appends each unfinished sequence's picked token (and logprob), streams its text, and
/// decides whether it ends here: end-of-sequence, its grammar's end, a stop string, or
/// its length.
fn take_tokens(
    seqs: &mut [Sequence<'_>],
    picked: &[u32],
    logprobs: &[f32],
    on_text: &mut Option<&mut dyn FnMut(&str)>,
) -> Result<()> {
    for (i, (seq, &token)) in seqs.iter_mut().zip(picked).enumerate() {
        if seq.finish.is_some() {
            continue;
        }
        if seq.options.eos_token_ids.contains(&token) {
            seq.finish = Some(FinishReason::Eos);
            continue;
        }
        seq.generated.push(token);
        seq.history.push(token);
        if let (Some(all), Some(&lp)) = (seq.logprobs.as_mut(), logprobs.get(i)) {
            all.push(lp);
        }
        let complete = match seq.constraint.as_mut() {
            Some(c) => c.commit(token)?,
            None => false,
        };
        let piece = seq.stream.push(token)?;
        if let Some(cb) = on_text.as_deref_mut() {
            if !piece.text.is_empty() {
                cb(&piece.text);
            }
        }
        if complete {
            // The grammar allows nothing but the end: stop as the model's EOS would.
            seq.finish = Some(FinishReason::Eos);
        } else if let Some(stop) = piece.stopped_at {
            if seq.generated.len() >= seq.options.min_new_tokens {
                seq.finish = Some(FinishReason::StopString(stop));
            }
        } else if seq.generated.len() >= seq.options.max_new_tokens {
            seq.finish = Some(FinishReason::Length);
        }
    }
    Ok(())
}

fn pick_tokens(
    seqs: &mut [Sequence<'_>],
    logits: &Tensor,
    device_argmax: impl FnOnce(&Tensor) -> Result<DeviceArgmax>,
) -> std::result::Result<Vec<u32>, Picking> {
    // Plain greedy decoding only needs the argmax: compute it on the device and copy back
    // the ids, not the vocabulary-sized rows.
    let on_device = seqs.iter().all(|s| {
        s.logits.is_none() && s.constraint.is_none() && !s.sampler.needs_host_logits(false)
    });
    let (mut picked, finite) = if on_device {
        let got = device_argmax(logits)?;
        (got.ids, Some(got.finite))
    } else {
        (vec![0; seqs.len()], None)
    };
    let mut rows: Option<Vec<Vec<f32>>> = None;
    for (i, seq) in seqs.iter_mut().enumerate() {
        if seq.finish.is_some() {
            picked[i] = seq.history.last().copied().unwrap_or(0);
            continue;
        }
        if finite.as_ref().is_some_and(|f| !f[i]) {
            return Err(Picking::NonFinite);
        }
        // Under min_new_tokens an end-of-sequence argmax must be replaced by the best
        // other token, which needs the row.
        let suppress = if seq.eos_suppressed() {
            seq.options.eos_token_ids.clone()
        } else {
            vec![]
        };
        if on_device && !suppress.contains(&picked[i]) {
            continue;
        }
        if rows.is_none() {
            rows = Some(logits.to_dtype(DType::F32)?.to_vec2()?);
        }
        let mut row = rows.as_ref().map(|r| r[i].clone()).unwrap_or_default();
        if !row.iter().all(|x| x.is_finite()) {
            return Err(Picking::NonFinite);
        }
        if let Some(all) = seq.logits.as_mut() {
            all.push(row.clone());
        }
        if let Some(constraint) = seq.constraint.as_mut() {
            constraint.apply(&mut row)?;
        }
        picked[i] = seq.sampler.pick(&mut row, &seq.history, &suppress);
    }
    Ok(picked)
}

/// One decode step. With constrained sequences, their next masks are computed on another
/// thread while this one runs the step: on CUDA the step is mostly waiting for the device,
/// and llguidance's mask (tens to hundreds of microseconds for a 150k vocabulary) is then
/// off the critical path. Without constraints this is `family.decode`, unchanged.
fn decode_step<F: Family>(
    family: &F,
    picked: &[u32],
    state: &mut F::State,
    seqs: &mut [Sequence<'_>],
) -> Result<Tensor> {
    let mut pending: Vec<&mut Constraint> = seqs
        .iter_mut()
        .filter(|s| s.finish.is_none())
        .filter_map(|s| s.constraint.as_mut())
        .collect();
    if pending.is_empty() {
        return family.decode(picked, state);
    }
    std::thread::scope(|scope| {
        let masks = scope.spawn(move || pending.iter_mut().try_for_each(|c| c.compute_mask()));
        let logits = family.decode(picked, state);
        let masks = masks.join().unwrap_or_else(|_| {
            Err(Error::Generation(
                "computing a constraint's mask panicked; this is a bug in vlm: please report it"
                    .into(),
            ))
        });
        let logits = logits?;
        masks?;
        Ok(logits)
    })
}
