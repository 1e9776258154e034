//! The one generation loop: prepare → prefill → pick → decode step → stop → text.

use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};

use crate::options::ResolvedOptions;
use crate::sampling::{argmax_on_device, Sampler};
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
}

impl Sequence<'_> {
    fn eos_suppressed(&self) -> bool {
        self.generated.len() < self.options.min_new_tokens && !self.options.eos_token_ids.is_empty()
    }
}

/// Runs `requests` as one batch. With `on_text` (single requests only), final text pieces
/// are handed out as they are made.
pub fn run_generation<F: Family>(
    family: &F,
    requests: &[Request],
    on_text: Option<&mut dyn FnMut(&str)>,
) -> Result<Vec<Generation>> {
    let prepared = Prepared::new(family, requests)?;
    run_prepared(family, requests, prepared, on_text)
}

/// A batch's requests after `Family::prepare` (the CPU part: templates, tokens, image
/// preprocessing), ready for the device.
pub struct Prepared<F: Family> {
    inputs: Vec<F::Inputs>,
    time: Duration,
}

impl<F: Family> Prepared<F> {
    /// Prepares every request (on up to one thread per core), timed.
    pub fn new(family: &F, requests: &[Request]) -> Result<Self> {
        let t = Instant::now();
        let inputs = prepare_all(family, requests)?;
        Ok(Self {
            inputs,
            time: t.elapsed(),
        })
    }
}

/// Runs a batch prepared from `requests` (which give each sequence its options).
pub fn run_prepared<F: Family>(
    family: &F,
    requests: &[Request],
    prepared: Prepared<F>,
    mut on_text: Option<&mut dyn FnMut(&str)>,
) -> Result<Vec<Generation>> {
    let defaults = family.generation_defaults();
    let info = family.info();
    let tokenizer = family.tokenizer();
    let Prepared {
        inputs: prepared,
        time: prepare_time,
    } = prepared;
    if prepared.len() != requests.len() {
        return Err(Error::Generation(format!(
            "{} prepared inputs for {} requests",
            prepared.len(),
            requests.len()
        )));
    }
    let mut inputs = Vec::with_capacity(requests.len());
    let mut seqs = Vec::with_capacity(requests.len());
    for (i, (request, prepared)) in requests.iter().zip(prepared).enumerate() {
        let options = request.options.resolve(defaults)?;
        let ids = family.input_ids(&prepared).to_vec();
        let history = family.penalty_history(&prepared);
        if ids.len() + options.max_new_tokens > info.max_context {
            return Err(Error::PromptTooLong {
                tokens: ids.len(),
                new_tokens: options.max_new_tokens,
                max: info.max_context,
            });
        }
        let decode: Decoder = Box::new(move |ids: &[u32]| {
            tokenizer
                .decode(ids, true)
                .map_err(|e| Error::Tokenizer(e.to_string()))
        });
        seqs.push(Sequence {
            sampler: Sampler::new(&options, i),
            prompt_tokens: ids.len(),
            history,
            generated: Vec::new(),
            stream: TextStream::new(decode, options.stop_strings.clone()),
            finish: None,
            logits: options.return_logits.then(Vec::new),
            options,
        });
        inputs.push(prepared);
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

    let t_decode = Instant::now();
    for step in 0..max_steps {
        let picked = pick_tokens(&mut seqs, &logits)?;
        for (seq, &token) in seqs.iter_mut().zip(&picked) {
            if seq.finish.is_some() {
                continue;
            }
            if seq.options.eos_token_ids.contains(&token) {
                seq.finish = Some(FinishReason::Eos);
                continue;
            }
            seq.generated.push(token);
            seq.history.push(token);
            let piece = seq.stream.push(token)?;
            if let Some(cb) = on_text.as_deref_mut() {
                if !piece.text.is_empty() {
                    cb(&piece.text);
                }
            }
            if let Some(stop) = piece.stopped_at {
                if seq.generated.len() >= seq.options.min_new_tokens {
                    seq.finish = Some(FinishReason::StopString(stop));
                }
            } else if seq.generated.len() >= seq.options.max_new_tokens {
                seq.finish = Some(FinishReason::Length);
            }
        }
        if seqs.iter().all(|s| s.finish.is_some()) {
            break;
        }
        // Finished sequences keep stepping with a dummy token until the batch is done;
        // their outputs are ignored.
        logits = family.decode(&picked, &mut state)?;
        timings.decode_steps = step + 1;
    }
    timings.decode = t_decode.elapsed();

    let mut out = Vec::with_capacity(seqs.len());
    for mut seq in seqs {
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
            timings,
            logits: seq.logits,
        });
    }
    Ok(out)
}

/// `family.prepare` of every request, in order. A batch's requests are prepared on up to
/// one thread per core: image preprocessing is CPU work that would otherwise run one photo
/// after another on one core while the GPU waits (a 1024×768 photo takes tens of ms).
fn prepare_all<F: Family>(family: &F, requests: &[Request]) -> Result<Vec<F::Inputs>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(requests.len());
    if threads <= 1 {
        return requests.iter().map(|r| family.prepare(r)).collect();
    }
    let per_thread = requests.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = requests
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|r| family.prepare(r))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(requests.len());
        for worker in workers {
            let part = worker
                .join()
                .map_err(|_| Error::Generation("preparing a request panicked".into()))??;
            out.extend(part);
        }
        Ok(out)
    })
}

fn pick_tokens(seqs: &mut [Sequence<'_>], logits: &Tensor) -> Result<Vec<u32>> {
    // Plain greedy decoding only needs the argmax: compute it on the device and copy back
    // the ids, not the vocabulary-sized rows.
    let device_argmax = seqs
        .iter()
        .all(|s| s.logits.is_none() && !s.sampler.needs_host_logits(false));
    let mut picked = if device_argmax {
        argmax_on_device(logits)?
    } else {
        vec![0; seqs.len()]
    };
    let mut rows: Option<Vec<Vec<f32>>> = None;
    for (i, seq) in seqs.iter_mut().enumerate() {
        if seq.finish.is_some() {
            picked[i] = seq.history.last().copied().unwrap_or(0);
            continue;
        }
        // Under min_new_tokens an end-of-sequence argmax must be replaced by the best
        // other token, which needs the row.
        let suppress = if seq.eos_suppressed() {
            seq.options.eos_token_ids.clone()
        } else {
            vec![]
        };
        if device_argmax && !suppress.contains(&picked[i]) {
            continue;
        }
        if rows.is_none() {
            rows = Some(logits.to_dtype(DType::F32)?.to_vec2()?);
        }
        let mut row = rows.as_ref().map(|r| r[i].clone()).unwrap_or_default();
        if let Some(all) = seq.logits.as_mut() {
            all.push(row.clone());
        }
        picked[i] = seq.sampler.pick(&mut row, &seq.history, &suppress);
    }
    Ok(picked)
}
