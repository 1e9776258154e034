//! The shared generation loop, driven by a scripted family: end-of-sequence,
//! min_new_tokens, stop strings, length limits, batching and streaming, independent of
//! any real model.

use std::collections::HashMap;
use std::time::Duration;

use candle_core::{Device, Tensor};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::Tokenizer;
use vlm_contract::sampling::{argmax_on_device, DeviceArgmax, HeldEnd};
use vlm_contract::{
    CancelFlag, Error, ErrorKind, Family, FamilyModel, FinishReason, GenerationDefaults,
    GenerationOptions, ModelInfo, PrefillOutput, Quantization, Request, Result, Sampling,
    VisionLanguageModel,
};

const VOCAB: &[&str] = &["a", "b", "c", "d", "<eos>", "[UNK]"];
const EOS: u32 = 4;
/// Always the runner-up: what greedy picks when the scripted token is suppressed.
const RUNNER_UP: u32 = 3;

/// Each request's raw prompt is a script: the token it will prefer at each step,
/// e.g. "a b <eos> c".
struct Scripted {
    tokenizer: Tokenizer,
    defaults: GenerationDefaults,
    max_context: usize,
    /// Sets the flag at this decode step, as another thread would (Ctrl-C).
    cancel_at: std::sync::Mutex<Option<(usize, CancelFlag)>>,
    /// At this step (0: prefill), the first sequence's logit of "b" becomes this value, as
    /// a model whose activations overflowed would give.
    poison_at: std::sync::Mutex<Option<(usize, f32)>>,
    /// Runs greedy batches a step ahead as a GPU family does: each queued step is fed the
    /// pick made "on the device" from the step before, and the picks reach the loop one
    /// step late.
    run_ahead: std::sync::atomic::AtomicBool,
    /// Every decode step's input tokens, in order.
    fed: std::sync::Mutex<Vec<Vec<u32>>>,
    /// Calls that ran ahead.
    ran_ahead: std::sync::atomic::AtomicUsize,
}

struct Prepared {
    ids: Vec<u32>,
    script: Vec<u32>,
}

struct State {
    scripts: Vec<Vec<u32>>,
    step: usize,
    /// Run ahead: the picks queued and not yet returned, oldest first.
    picks: std::collections::VecDeque<DeviceArgmax>,
    /// Run ahead: what the picks leave out, and how many were made.
    held: HeldEnd,
    picked: usize,
}

/// The device's pick as a GPU family makes it: greedy's, leaving the end ids out of held
/// rows, with each whole row's finiteness.
fn pick_ahead(logits: &Tensor, state: &mut State) -> Result<DeviceArgmax> {
    let mut got = argmax_on_device(logits)?;
    for (i, mut row) in logits.to_vec2::<f32>()?.into_iter().enumerate() {
        if state.picked < state.held.until[i] {
            for &e in &state.held.eos_ids {
                row[e as usize] = f32::NEG_INFINITY;
            }
            got.ids[i] = vlm_contract::sampling::argmax(&row);
        }
    }
    state.picked += 1;
    Ok(got)
}

fn logits_for(scripts: &[Vec<u32>], step: usize) -> Result<Tensor> {
    let mut rows = Vec::new();
    for s in scripts {
        let mut row = vec![0f32; VOCAB.len()];
        row[RUNNER_UP as usize] = 1.0;
        row[*s.get(step).unwrap_or(&0) as usize] = 5.0;
        rows.extend(row);
    }
    Ok(Tensor::from_vec(
        rows,
        (scripts.len(), VOCAB.len()),
        &Device::Cpu,
    )?)
}

impl Scripted {
    fn logits(&self, scripts: &[Vec<u32>], step: usize) -> Result<Tensor> {
        let logits = logits_for(scripts, step)?;
        match *self.poison_at.lock().unwrap() {
            Some((at, value)) if at == step => {
                let mut bad = logits.zeros_like()?.to_vec2::<f32>()?;
                bad[0][1] = value;
                let bad = Tensor::new(bad, &Device::Cpu)?;
                // Adding NaN or an infinity spoils that one logit and keeps the others.
                Ok((logits + bad)?)
            }
            _ => Ok(logits),
        }
    }
}

impl Family for Scripted {
    type Inputs = Prepared;
    type State = State;

    fn info(&self) -> ModelInfo {
        ModelInfo {
            family: "scripted",
            model_type: "scripted".into(),
            parameters: 0,
            dtype: "f32".into(),
            quantization: Quantization::None,
            device: "cpu".into(),
            weight_bytes: 0,
            max_images: Some(0),
            native_multi_image: false,
            max_context: self.max_context,
            fixed_image_size: None,
            grounding: false,
        }
    }

    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn generation_defaults(&self) -> &GenerationDefaults {
        &self.defaults
    }

    fn prepare(&self, request: &Request) -> Result<Prepared> {
        let vlm_contract::Prompt::Raw(text) = &request.prompt else {
            return Err(Error::Generation(
                "scripted family takes raw prompts".into(),
            ));
        };
        let script: Vec<u32> = text
            .split_whitespace()
            .map(|w| VOCAB.iter().position(|v| *v == w).unwrap() as u32)
            .collect();
        Ok(Prepared {
            ids: vec![0; script.len()],
            script,
        })
    }

    fn input_ids<'a>(&self, inputs: &'a Prepared) -> &'a [u32] {
        &inputs.ids
    }

    fn prefill(&self, batch: &[&Prepared], _max_new_tokens: usize) -> Result<PrefillOutput<State>> {
        let scripts: Vec<Vec<u32>> = batch.iter().map(|p| p.script.clone()).collect();
        Ok(PrefillOutput {
            logits: self.logits(&scripts, 0)?,
            state: State {
                scripts,
                step: 0,
                picks: Default::default(),
                held: HeldEnd::default(),
                picked: 0,
            },
            image_encode: Duration::ZERO,
            image_cache_hits: vec![],
        })
    }

    fn decode(&self, tokens: &[u32], state: &mut State) -> Result<Tensor> {
        assert_eq!(
            tokens.len(),
            state.scripts.len(),
            "one token per sequence, finished ones included"
        );
        state.step += 1;
        self.fed.lock().unwrap().push(tokens.to_vec());
        if let Some((step, flag)) = &*self.cancel_at.lock().unwrap() {
            if *step == state.step {
                flag.cancel();
            }
        }
        self.logits(&state.scripts, state.step)
    }

    fn start_run_ahead(&self, logits: &Tensor, held: &HeldEnd, state: &mut State) -> Result<bool> {
        if !self.run_ahead.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        self.ran_ahead
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        state.held = held.clone();
        let pick = pick_ahead(logits, state)?;
        state.picks.push_back(pick);
        Ok(true)
    }

    fn queue_next_step(&self, state: &mut State) -> Result<()> {
        let ids = state.picks.back().expect("a pick to feed").ids.clone();
        let logits = self.decode(&ids, state)?;
        let pick = pick_ahead(&logits, state)?;
        state.picks.push_back(pick);
        assert!(state.picks.len() <= 2, "at most one step ahead");
        Ok(())
    }

    fn wait_for_pick(&self, state: &mut State) -> Result<DeviceArgmax> {
        Ok(state.picks.pop_front().expect("a queued pick"))
    }
}

fn model(max_context: usize) -> FamilyModel<Scripted> {
    let vocab: HashMap<String, u32> = VOCAB
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32))
        .collect();
    let word_level: WordLevel =
        serde_json::from_value(serde_json::json!({ "vocab": vocab, "unk_token": "[UNK]" }))
            .unwrap();
    let mut tokenizer = Tokenizer::new(word_level);
    tokenizer
        .add_special_tokens([tokenizers::AddedToken::from("<eos>", true)])
        .unwrap();
    let defaults = GenerationDefaults {
        eos_token_ids: vec![EOS],
        ..GenerationDefaults::default()
    };
    FamilyModel::new(Scripted {
        tokenizer,
        defaults,
        max_context,
        cancel_at: Default::default(),
        poison_at: Default::default(),
        run_ahead: Default::default(),
        fed: Default::default(),
        ran_ahead: Default::default(),
    })
}

fn run(script: &str, options: GenerationOptions) -> vlm_contract::Generation {
    model(1000)
        .generate(&Request::raw(vec![], script, options))
        .unwrap()
}

#[test]
fn end_of_sequence_stops_and_is_not_returned() {
    let g = run("a b <eos> c", GenerationOptions::greedy(10));
    assert_eq!(g.token_ids, vec![0, 1]);
    assert_eq!(g.finish_reason, FinishReason::Eos);
    assert_eq!(g.text, "a b");
}

#[test]
fn min_new_tokens_suppresses_eos_until_reached() {
    let opts = GenerationOptions {
        min_new_tokens: 4,
        ..GenerationOptions::greedy(4)
    };
    let g = run("a b <eos> c", opts);
    assert_eq!(g.token_ids, vec![0, 1, RUNNER_UP, 2]);
    assert_eq!(g.finish_reason, FinishReason::Length);
}

#[test]
fn max_new_tokens_ends_with_length() {
    let g = run("a b c a b c", GenerationOptions::greedy(3));
    assert_eq!(g.token_ids, vec![0, 1, 2]);
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert_eq!(
        g.timings.decode_steps, 2,
        "the first token comes from prefill"
    );
    assert!(
        !g.timings.decode_host.is_zero() && g.timings.decode_host <= g.timings.decode,
        "the host's share of the steps: {:?} of {:?}",
        g.timings.decode_host,
        g.timings.decode
    );
}

#[test]
fn stop_string_cuts_the_text() {
    let opts = GenerationOptions {
        stop_strings: vec!["c".into()],
        ..GenerationOptions::greedy(10)
    };
    let g = run("a b c d", opts);
    assert_eq!(g.finish_reason, FinishReason::StopString("c".into()));
    assert_eq!(g.text, "a b ");
    assert_eq!(g.token_ids, vec![0, 1, 2]);
}

#[test]
fn batch_sequences_finish_independently_and_match_single_runs() {
    let m = model(1000);
    let requests = vec![
        Request::raw(vec![], "a <eos> b", GenerationOptions::greedy(5)),
        Request::raw(vec![], "b c d a b c", GenerationOptions::greedy(5)),
        Request::raw(vec![], "c c c c c c", GenerationOptions::greedy(2)),
    ];
    let batch = m.generate_batch(&requests).unwrap();
    for (req, got) in requests.iter().zip(&batch) {
        let single = m.generate(req).unwrap();
        assert_eq!(got.token_ids, single.token_ids);
        assert_eq!(got.finish_reason, single.finish_reason);
    }
    assert_eq!(batch[0].token_ids, vec![0]);
    assert_eq!(batch[1].token_ids, vec![1, 2, 3, 0, 1]);
    assert_eq!(batch[2].token_ids, vec![2, 2]);
}

#[test]
fn batches_prepared_ahead_give_what_each_batch_gives_in_order() {
    let m = model(1000);
    let scripts = ["a b", "b c d", "c <eos>", "d d d", "a"];
    let requests: Vec<Request> = scripts
        .iter()
        .map(|s| Request::raw(vec![], *s, GenerationOptions::greedy(3)))
        .collect();
    let mut done = Vec::new();
    let got: Vec<_> = m
        .generate_batches(&mut requests.clone().into_iter().map(Ok), 2, &mut |n| {
            done.push(n)
        })
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(done, vec![2, 4, 5]);
    let expected: Vec<Vec<u32>> = requests
        .chunks(2)
        .flat_map(|c| m.generate_batch(c).unwrap())
        .map(|g| g.token_ids)
        .collect();
    assert_eq!(
        got.iter().map(|g| g.token_ids.clone()).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(got[2].token_ids, vec![2]);
    assert!(m
        .generate_batches(&mut std::iter::empty(), 2, &mut |_| {})
        .is_empty());
}

#[test]
fn a_batch_of_ten_with_two_broken_items_gives_eight_results_and_two_errors_in_order() {
    let m = model(1000);
    let items: Vec<Result<Request>> = (0..10)
        .map(|i| match i {
            // A photo that failed to load before it became a request ...
            3 => Err(Error::Image(vlm_contract::ImageError::ZeroSize {
                input: "broken.jpg".into(),
                width: 0,
                height: 0,
            })),
            // ... and one the family cannot prepare (the scripted family takes raw prompts).
            8 => Ok(Request::chat(vec![], "hello", GenerationOptions::greedy(2))),
            _ => Ok(Request::raw(vec![], "a b", GenerationOptions::greedy(2))),
        })
        .collect();
    let mut done = Vec::new();
    let got = m.generate_batches(&mut items.into_iter(), 4, &mut |n| done.push(n));
    assert_eq!(done, vec![4, 8, 10]);
    assert_eq!(got.len(), 10);
    for (i, r) in got.iter().enumerate() {
        match (i, r) {
            (3, Err(e)) => assert_eq!(e.kind(), ErrorKind::BadInput, "{e}"),
            (8, Err(e)) => assert!(e.to_string().contains("raw prompts"), "{e}"),
            (_, Ok(g)) => assert_eq!(g.token_ids, vec![0, 1]),
            (i, other) => panic!("item {i}: {other:?}"),
        }
    }
}

#[test]
fn items_are_pulled_one_batch_ahead_of_the_device() {
    let m = model(1000);
    let pulled = std::sync::atomic::AtomicUsize::new(0);
    let mut items = (0..100).map(|_| {
        pulled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Request::raw(vec![], "a", GenerationOptions::greedy(1)))
    });
    let mut first_seen_after = None;
    m.generate_each(&mut items, 5, &mut |i, r| {
        r.unwrap();
        if i == 0 {
            first_seen_after = Some(pulled.load(std::sync::atomic::Ordering::SeqCst));
        }
    });
    // The first batch, and at most the one prepared while it ran.
    assert!(first_seen_after.unwrap() <= 10, "{first_seen_after:?}");
    assert_eq!(pulled.load(std::sync::atomic::Ordering::SeqCst), 100);
}

#[test]
fn a_cancelled_call_stops_between_decode_steps_and_the_model_stays_usable() {
    let m = model(1000);
    let flag = CancelFlag::new();
    *m.family().cancel_at.lock().unwrap() = Some((2, flag.clone()));
    let opts = GenerationOptions {
        cancel: Some(flag.clone()),
        ..GenerationOptions::greedy(6)
    };
    let err = m
        .generate(&Request::raw(vec![], "a b c d a b", opts.clone()))
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert_eq!(err.kind(), ErrorKind::Cancelled);

    // A batch job stops after the batch that was cancelled: nothing more is pulled.
    let pulled = std::sync::atomic::AtomicUsize::new(0);
    let mut items = (0..20).map(|_| {
        pulled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Request::raw(vec![], "a b c d a b", opts.clone()))
    });
    let got = m.generate_batches(&mut items, 2, &mut |_| {});
    assert!(
        got.iter().all(|r| matches!(r, Err(Error::Cancelled))),
        "{got:?}"
    );
    assert!(got.len() <= 2, "{}", got.len());
    assert!(pulled.load(std::sync::atomic::Ordering::SeqCst) <= 4);

    // The same model, a call without the flag: unharmed.
    *m.family().cancel_at.lock().unwrap() = None;
    let g = m
        .generate(&Request::raw(vec![], "a b c", GenerationOptions::greedy(3)))
        .unwrap();
    assert_eq!(g.token_ids, vec![0, 1, 2]);
}

/// NaN or infinite logits stop the call with an error naming the step and the likely cause,
/// whether the argmax ran on the device or the row came to the host (sampling, returned
/// logits); the model then takes the next call.
#[test]
fn non_finite_logits_stop_with_a_typed_error_and_the_model_stays_usable() {
    let m = model(1000);
    let cases = [
        (2, f32::NAN, GenerationOptions::greedy(6)),
        (
            0,
            f32::INFINITY,
            GenerationOptions {
                return_logits: true,
                ..GenerationOptions::greedy(6)
            },
        ),
        (
            3,
            f32::NEG_INFINITY,
            GenerationOptions {
                sampling: Some(Sampling::Sample {
                    temperature: 1.0,
                    top_p: 1.0,
                    top_k: 0,
                }),
                seed: 7,
                ..GenerationOptions::greedy(6)
            },
        ),
    ];
    for (at, value, opts) in cases {
        *m.family().poison_at.lock().unwrap() = Some((at, value));
        let batch = [
            Request::raw(vec![], "a b c d a b", opts.clone()),
            Request::raw(vec![], "c d a b c d", opts.clone()),
        ];
        let err = m.generate_batch(&batch).unwrap_err();
        match &err {
            Error::NonFiniteLogits { step, dtype } => {
                assert_eq!((*step, dtype.as_str()), (at, "f32"), "{value}")
            }
            other => panic!("{value} at step {at}: want NonFiniteLogits, got {other}"),
        }
        assert_eq!(err.kind(), ErrorKind::Runtime);
        let msg = err.to_string();
        assert!(
            msg.contains("NaN or infinite") && msg.contains("model files"),
            "{msg}"
        );
        *m.family().poison_at.lock().unwrap() = None;
        let g = m
            .generate(&Request::raw(vec![], "a b c", GenerationOptions::greedy(3)))
            .unwrap();
        assert_eq!(g.token_ids, vec![0, 1, 2]);
    }
}

/// A sequence that already ended keeps stepping with dummy tokens: its rows are not
/// looked at, so whatever they hold ends nothing.
#[test]
fn a_finished_sequence_does_not_check_its_dummy_rows() {
    let m = model(1000);
    *m.family().poison_at.lock().unwrap() = Some((2, f32::NAN));
    let batch = [
        Request::raw(vec![], "a <eos>", GenerationOptions::greedy(4)),
        Request::raw(vec![], "a b c d", GenerationOptions::greedy(4)),
    ];
    let out = m.generate_batch(&batch).unwrap();
    assert_eq!(out[0].token_ids, vec![0]);
    assert_eq!(out[1].token_ids, vec![0, 1, 2, 3]);
}

#[test]
fn a_prepared_batch_runs_as_generate_would() {
    let m = model(1000);
    let requests = vec![Request::raw(vec![], "b a", GenerationOptions::greedy(2))];
    let batch = m.prepare_batch(requests.clone()).unwrap();
    assert_eq!(batch.len(), 1);
    let ran = m.run_batch(batch).unwrap();
    assert_eq!(
        ran[0].token_ids,
        m.generate(&requests[0]).unwrap().token_ids
    );
}

#[test]
fn streamed_pieces_add_up_to_the_text() {
    let m = model(1000);
    let mut pieces = Vec::new();
    let g = m
        .generate_stream(
            &Request::raw(vec![], "a b c d", GenerationOptions::greedy(4)),
            &mut |p| pieces.push(p.to_string()),
        )
        .unwrap();
    assert_eq!(pieces.concat(), g.text);
    assert!(pieces.len() >= 3, "{pieces:?}");
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let opts = |seed| GenerationOptions {
        max_new_tokens: Some(6),
        sampling: Some(Sampling::Sample {
            temperature: 5.0,
            top_p: 1.0,
            top_k: 0,
        }),
        seed,
        ..GenerationOptions::default()
    };
    let a = run("a b c d a b", opts(1));
    assert_eq!(a.token_ids, run("a b c d a b", opts(1)).token_ids);
}

#[test]
fn prompt_longer_than_the_context_is_refused() {
    let err = model(4)
        .generate(&Request::raw(vec![], "a b c", GenerationOptions::greedy(2)))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::PromptTooLong {
                tokens: 3,
                new_tokens: 2,
                max: 4
            }
        ),
        "{err}"
    );
}

#[test]
fn relate_without_images_is_refused() {
    let err = model(100)
        .relate(&[], None, &GenerationOptions::greedy(2))
        .unwrap_err();
    assert!(matches!(err, Error::NoImages { .. }), "{err}");
}

#[test]
fn model_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<FamilyModel<Scripted>>();
    let shared: std::sync::Arc<dyn VisionLanguageModel> = std::sync::Arc::new(model(100));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let m = shared.clone();
            std::thread::spawn(move || {
                m.generate(&Request::raw(vec![], "a b c", GenerationOptions::greedy(3)))
                    .unwrap()
                    .token_ids
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), vec![0, 1, 2]);
    }
}

#[test]
fn logprobs_are_the_log_softmax_of_the_picked_tokens_and_change_nothing() {
    let plain = run("a b c a b c", GenerationOptions::greedy(3));
    assert_eq!(plain.token_logprobs, None);
    assert_eq!(plain.mean_logprob(), None);
    let opts = GenerationOptions {
        return_logprobs: true,
        return_logits: true,
        ..GenerationOptions::greedy(3)
    };
    let g = run("a b c a b c", opts);
    assert_eq!(g.token_ids, plain.token_ids, "the same tokens");
    let logprobs = g.token_logprobs.clone().expect("logprobs were asked for");
    let logits = g.logits.clone().expect("logits were asked for");
    assert_eq!(logprobs.len(), g.token_ids.len());
    for ((row, &token), &lp) in logits.iter().zip(&g.token_ids).zip(&logprobs) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_total = row.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
        let expected = row[token as usize] - log_total;
        assert!((lp - expected).abs() < 1e-5, "{lp} vs {expected}");
        assert!(lp <= 0.0);
    }
    let mean = logprobs.iter().sum::<f32>() / logprobs.len() as f32;
    assert_eq!(g.mean_logprob(), Some(mean));
}

/// What one call gives, with the tokens its decode steps were fed.
fn outcome(
    m: &FamilyModel<Scripted>,
    requests: &[Request],
    ahead: bool,
) -> (Result<Vec<vlm_contract::Generation>>, Vec<Vec<u32>>) {
    m.family()
        .run_ahead
        .store(ahead, std::sync::atomic::Ordering::SeqCst);
    m.family().fed.lock().unwrap().clear();
    let got = m.generate_batch(requests);
    let fed = std::mem::take(&mut *m.family().fed.lock().unwrap());
    (got, fed)
}

/// Greedy decoding with the device a step ahead (the picks reach the loop one step late)
/// gives what picking and stepping one after the other gives: tokens, text, finish
/// reasons, step counts, errors at the same step. Where a batch ends before its length,
/// it has queued one step more, fed the picks of that step (never a finished sequence's
/// dummy: those rows are ignored either way); where the length ends it, none.
#[test]
fn greedy_run_ahead_gives_what_stepping_in_turn_gives() {
    let m = model(1000);
    let greedy = GenerationOptions::greedy;
    let stop_c = GenerationOptions {
        stop_strings: vec!["c".into()],
        ..greedy(10)
    };
    let min = |min_new_tokens, max| GenerationOptions {
        min_new_tokens,
        ..greedy(max)
    };
    let cases: Vec<(Vec<Request>, usize)> = vec![
        (vec![Request::raw(vec![], "a b <eos> c", greedy(10))], 1),
        (vec![Request::raw(vec![], "a b c a b c", greedy(3))], 0),
        (vec![Request::raw(vec![], "a b c d", stop_c)], 1),
        (vec![Request::raw(vec![], "a", greedy(1))], 0),
        (
            vec![
                Request::raw(vec![], "a <eos> b", greedy(5)),
                Request::raw(vec![], "b c d a b c", greedy(5)),
                Request::raw(vec![], "c c c c c c", greedy(2)),
            ],
            0,
        ),
        (
            vec![
                Request::raw(vec![], "a <eos> b", greedy(5)),
                Request::raw(vec![], "b c <eos> d", greedy(5)),
            ],
            1,
        ),
        // min_new_tokens: the end held off (the runner-up picked instead) until reached,
        // per sequence.
        (vec![Request::raw(vec![], "a b <eos> c", min(4, 4))], 0),
        (
            vec![Request::raw(vec![], "a <eos> <eos> c <eos> d", min(3, 10))],
            1,
        ),
        (
            vec![
                Request::raw(vec![], "a <eos> <eos> c <eos> d", min(3, 10)),
                Request::raw(vec![], "b <eos> c d", greedy(10)),
                Request::raw(vec![], "<eos> <eos> a", min(1, 10)),
            ],
            1,
        ),
    ];
    for (requests, extra) in cases {
        let (want, fed_in_turn) = outcome(&m, &requests, false);
        let (got, fed_ahead) = outcome(&m, &requests, true);
        let (want, got) = (want.unwrap(), got.unwrap());
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(g.token_ids, w.token_ids, "{requests:?}");
            assert_eq!(g.text, w.text);
            assert_eq!(g.finish_reason, w.finish_reason);
            assert_eq!(g.timings.decode_steps, w.timings.decode_steps);
        }
        assert_eq!(fed_ahead.len(), fed_in_turn.len() + extra, "{requests:?}");
        // Step k is fed each sequence's k-th token until the sequence ends.
        for (k, (a, t)) in fed_ahead.iter().zip(&fed_in_turn).enumerate() {
            for (i, w) in want.iter().enumerate() {
                if let Some(&token) = w.token_ids.get(k) {
                    assert_eq!((a[i], t[i]), (token, token), "{requests:?} step {k}");
                }
            }
        }
    }
    assert_eq!(
        m.family()
            .ran_ahead
            .load(std::sync::atomic::Ordering::SeqCst),
        9
    );

    // Errors: a NaN at step 2 and a cancel during step 2 end the call as they do in turn.
    let nan = [
        Request::raw(vec![], "a b c d a b", greedy(6)),
        Request::raw(vec![], "c d a b c d", greedy(6)),
    ];
    *m.family().poison_at.lock().unwrap() = Some((2, f32::NAN));
    for ahead in [false, true] {
        match outcome(&m, &nan, ahead).0 {
            Err(Error::NonFiniteLogits { step: 2, .. }) => {}
            other => panic!("ahead {ahead}: {other:?}"),
        }
    }
    *m.family().poison_at.lock().unwrap() = None;
    for ahead in [false, true] {
        let flag = CancelFlag::new();
        let cancellable = [Request::raw(
            vec![],
            "a b c d a b",
            GenerationOptions {
                cancel: Some(flag.clone()),
                ..greedy(6)
            },
        )];
        *m.family().cancel_at.lock().unwrap() = Some((2, flag));
        assert!(matches!(
            outcome(&m, &cancellable, ahead).0,
            Err(Error::Cancelled)
        ));
    }
}

/// Sampling, repetition penalties, returned logits or logprobs and output grammars need
/// each step's rows on the host: those calls step in turn.
#[test]
fn calls_that_need_the_rows_do_not_run_ahead() {
    let m = model(1000);
    m.family()
        .run_ahead
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let greedy = GenerationOptions::greedy(4);
    let options = [
        GenerationOptions {
            return_logprobs: true,
            ..greedy.clone()
        },
        GenerationOptions {
            return_logits: true,
            ..greedy.clone()
        },
        GenerationOptions {
            repetition_penalty: Some(1.5),
            ..greedy.clone()
        },
        GenerationOptions {
            sampling: Some(Sampling::Sample {
                temperature: 1.0,
                top_p: 1.0,
                top_k: 0,
            }),
            ..greedy.clone()
        },
    ];
    for opts in options {
        let g = m
            .generate(&Request::raw(vec![], "a b c d", opts.clone()))
            .unwrap();
        assert_eq!(g.token_ids.len(), 4, "{opts:?}");
    }
    assert_eq!(
        m.family()
            .ran_ahead
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // A plain greedy call in a mixed batch keeps the batch in turn too.
    let mixed = [
        Request::raw(vec![], "a b", greedy.clone()),
        Request::raw(
            vec![],
            "a b",
            GenerationOptions {
                return_logprobs: true,
                ..greedy.clone()
            },
        ),
    ];
    m.generate_batch(&mixed).unwrap();
    m.generate(&Request::raw(vec![], "a b", greedy)).unwrap();
    assert_eq!(
        m.family()
            .ran_ahead
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}
