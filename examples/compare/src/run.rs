//! Measuring one model: load, a first call, describe at batch 1 (latency), describe at
//! batch N (throughput), the questions, and relate over each trip.

use std::time::{Duration, Instant};

use vlm_core::model::LoadOptions;
use vlm_core::{Generation, GenerationOptions, Language, Request, VisionLanguageModel};

use crate::gpu_memory::GpuMeter;
use crate::inputs::Inputs;
use crate::metrics::percentile;
use crate::results::{Metrics, ModelInfoRecord, ModelResult, Output};

/// What every model runs, the same for all.
pub(crate) struct Plan<'a> {
    pub inputs: &'a Inputs,
    pub languages: &'a [Language],
    pub batch_size: usize,
    pub max_new_tokens: usize,
}

impl Plan<'_> {
    /// Progress steps one model takes (load, first call, each call or batched item).
    pub fn steps(&self) -> usize {
        let photos = self.inputs.photos.len();
        2 + photos * self.languages.len()
            + photos
            + self.inputs.questions.len()
            + self.inputs.trips.len()
    }
}

/// Runs `spec` (`name` in tables) through the plan. `logprobs` keeps each output's mean token log-probability
/// (the cascade's cheap model); `tick(n)` reports n more steps done.
pub(crate) fn run_model(
    spec: &str,
    name: &str,
    load: &LoadOptions,
    plan: &Plan<'_>,
    meter: &GpuMeter,
    logprobs: bool,
    tick: &mut dyn FnMut(usize),
) -> ModelResult {
    let mut done = 0;
    let mut count = |n: usize| {
        done += n;
        tick(n);
    };
    let (measured, peak) = meter.peak_during(|| measure(spec, load, plan, logprobs, &mut count));
    // A model that stopped early still moves the bar to its end.
    tick(plan.steps().saturating_sub(done));
    let name = name.to_string();
    match measured {
        Err(error) => ModelResult {
            model: spec.to_string(),
            name,
            error: Some(error),
            info: None,
            metrics: None,
            quality: None,
            outputs: vec![],
        },
        Ok(mut m) => {
            m.metrics.peak_gpu_memory_bytes = peak;
            if peak.is_none() {
                m.metrics.gpu_memory_note = Some(if m.info.device == "cpu" {
                    "not measured (the model ran on the CPU)".into()
                } else {
                    meter.note().unwrap_or_else(|| "not measured".into())
                });
            }
            ModelResult {
                model: spec.to_string(),
                name,
                error: None,
                info: Some(m.info),
                metrics: Some(m.metrics),
                quality: None,
                outputs: m.outputs,
            }
        }
    }
}

struct Measured {
    info: ModelInfoRecord,
    metrics: Metrics,
    outputs: Vec<Output>,
}

fn measure(
    spec: &str,
    load: &LoadOptions,
    plan: &Plan<'_>,
    logprobs: bool,
    tick: &mut dyn FnMut(usize),
) -> Result<Measured, String> {
    let photos = &plan.inputs.photos;
    let t = Instant::now();
    let model = vlm_core::load(spec, load).map_err(|e| e.to_string())?;
    let load_s = t.elapsed().as_secs_f64();
    tick(1);
    let info = model.info();
    let options = |language| GenerationOptions {
        language,
        return_logprobs: logprobs,
        ..GenerationOptions::greedy(plan.max_new_tokens)
    };
    let first_language = plan.languages.first().copied().unwrap_or(Language::English);

    // The first call pays for what is done once (kernels, allocations): kept apart.
    let t = Instant::now();
    let first = model
        .describe_request(&photos[0].image, &options(first_language))
        .and_then(|r| model.generate(&r));
    let first_call_s = t.elapsed().as_secs_f64();
    tick(1);
    if let Err(e) = first {
        return Err(format!("the first call failed: {e}"));
    }

    let mut outputs = Vec::new();
    let mut latencies = Vec::new();
    let mut first_token = Vec::new();
    let (mut decode_steps, mut decode_time) = (0, Duration::ZERO);
    for photo in photos {
        for &language in plan.languages {
            let t = Instant::now();
            let result = model
                .describe_request(&photo.image, &options(language))
                .and_then(|r| model.generate(&r));
            let wall = t.elapsed().as_secs_f64();
            if let Ok(g) = &result {
                latencies.push(wall);
                first_token.push(g.timings.time_to_first_token().as_secs_f64());
                decode_steps += g.timings.decode_steps;
                decode_time += g.timings.decode;
            }
            let mut out = output("describe", &photo.name, result);
            out.language = Some(language_code(language).into());
            outputs.push(out);
            tick(1);
        }
    }

    // Throughput: the same describe requests, batch_size per forward pass.
    let english = options(Language::English);
    let mut requests = photos
        .iter()
        .map(|p| model.describe_request(&p.image, &english));
    let t = Instant::now();
    let mut reported = 0;
    let batched = model.generate_batches(&mut requests, plan.batch_size, &mut |n| {
        tick(n - reported);
        reported = n;
    });
    let batch_wall = t.elapsed().as_secs_f64();
    let batched_ok = batched.iter().filter(|r| r.is_ok()).count();
    let throughput = (batched_ok > 0 && batch_wall > 0.0).then(|| batched_ok as f64 / batch_wall);

    outputs.extend(vqa(&*model, plan, &options(Language::Auto), tick));
    outputs.extend(relate(&*model, plan, &options(first_language), tick));

    let metrics = Metrics {
        load_s,
        first_call_s,
        latency_p50_s: percentile(&latencies, 0.5),
        latency_p95_s: percentile(&latencies, 0.95),
        latency_samples: latencies.len(),
        throughput_photos_per_s: throughput,
        throughput_batch_size: plan.batch_size,
        time_to_first_token_s: percentile(&first_token, 0.5),
        decode_tokens_per_s: (decode_steps > 0 && !decode_time.is_zero())
            .then(|| decode_steps as f64 / decode_time.as_secs_f64()),
        peak_gpu_memory_bytes: None,
        gpu_memory_note: None,
        weights_bytes: info.weight_bytes,
        cost_per_hour: None,
        cost_per_1000_photos: None,
    };
    let info = ModelInfoRecord {
        family: info.family.to_string(),
        model_type: info.model_type,
        device: info.device,
        dtype: info.dtype,
        quantization: info.quantization.as_str().to_string(),
        parameters: info.parameters,
        native_multi_image: info.native_multi_image,
    };
    Ok(Measured {
        info,
        metrics,
        outputs,
    })
}

fn vqa(
    model: &dyn VisionLanguageModel,
    plan: &Plan<'_>,
    options: &GenerationOptions,
    tick: &mut dyn FnMut(usize),
) -> Vec<Output> {
    let photos = &plan.inputs.photos;
    let questions = &plan.inputs.questions;
    let mut requests = questions.iter().map(|q| -> vlm_core::Result<Request> {
        let photo = photos
            .iter()
            .find(|p| p.name == q.photo)
            .ok_or_else(|| vlm_core::Error::Generation(format!("no photo {}", q.photo)))?;
        model.ask_request(&photo.image, &q.question, options)
    });
    let mut reported = 0;
    let results = model.generate_batches(&mut requests, plan.batch_size, &mut |n| {
        tick(n - reported);
        reported = n;
    });
    questions
        .iter()
        .zip(results)
        .map(|(q, result)| {
            let mut out = output("vqa", &q.photo, result);
            out.question = Some(q.question.clone());
            out
        })
        .collect()
}

fn relate(
    model: &dyn VisionLanguageModel,
    plan: &Plan<'_>,
    options: &GenerationOptions,
    tick: &mut dyn FnMut(usize),
) -> Vec<Output> {
    let native = model.info().native_multi_image;
    plan.inputs
        .trips
        .iter()
        .map(|trip| {
            let images: Vec<_> = trip.photos.iter().map(|p| p.image.clone()).collect();
            let result = model.relate_with(&images, None, options, &mut |_| {});
            let mut out = output("relate", &trip.name, result);
            out.multi_image = Some(if native { "native" } else { "captions" }.into());
            tick(1);
            out
        })
        .collect()
}

fn output(task: &str, subject: &str, result: vlm_core::Result<Generation>) -> Output {
    let (text, error, tokens, mean_logprob) = match result {
        Ok(g) => {
            let lp = g.mean_logprob().map(f64::from);
            (Some(g.text), None, Some(g.token_ids.len()), lp)
        }
        Err(e) => (None, Some(e.to_string()), None, None),
    };
    Output {
        task: task.into(),
        subject: subject.into(),
        language: None,
        question: None,
        text,
        error,
        tokens,
        mean_logprob,
        multi_image: None,
    }
}

/// `zh` / `en`, as results.json writes languages.
pub(crate) fn language_code(language: Language) -> &'static str {
    match language {
        Language::Chinese => "zh",
        _ => "en",
    }
}
