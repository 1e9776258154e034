//! Parity of the Qwen-VL family with the reference (HF transformers 5.17) on tiny
//! random-weight models: processor outputs, vision features, M-RoPE positions, prompt
//! logits and 12 greedy tokens, through the public API. Fixtures: tools/fixtures/qwen_vl.py.
//!
//! The same tests are the GPU check (benches/gpu/README.md): `VLM_TEST_DEVICE=cuda` runs
//! them on CUDA, `VLM_TEST_DTYPE=bf16|f16` in half precision with the looser tolerances
//! below, and `VLM_FIXTURES` points at the fixture folder when the binary runs elsewhere.

use serde_json::Value;
use vlm_contract::files::ModelDir;
use vlm_contract::{
    DeviceChoice, Family, GenerationOptions, Image, LoadOptions, Prompt, Quantization, Request,
};
use vlm_models::qwen_vl::QwenVl;

mod common;
use common::fixture::{step_logits_rel_err, steps_tensor, Fixture};
use common::{
    cpu_f32, full_precision, ids, max_abs_diff, messages, rel_err, rel_tol, skip, skip_unless_f32,
    Failures, PIXEL_TOL,
};

const VARIANTS: &[&str] = &["qwen2_vl", "qwen2_5_vl", "qwen3_vl"];

fn fixture(variant: &str) -> Fixture {
    Fixture::load("qwen", variant)
}

/// The request a fixture case describes, built with the public types.
fn request(fx: &Fixture, case: &Value, options: GenerationOptions) -> Request {
    let images: Vec<Image> = case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Image::open(fx.dir.join(p.as_str().unwrap())).unwrap())
        .collect();
    if let Some(raw) = case.get("raw_prompt") {
        return Request::raw(images, raw.as_str().unwrap(), options);
    }
    let messages = messages(&case["messages"]);
    Request {
        images,
        prompt: Prompt::Chat(messages),
        options,
    }
}

/// Processor, rope index, vision features and prompt logits against the goldens.
fn check_internals(variant: &str) {
    let fx = fixture(variant);
    let mut f = Failures::default();
    let model = QwenVl::load(&ModelDir::local(&fx.model_dir()).unwrap(), &cpu_f32()).unwrap();
    for case in &fx.cases {
        let name = case["name"].as_str().unwrap();
        let g = |k: &str| {
            fx.goldens
                .get(&format!("{name}.{k}"))
                .unwrap_or_else(|| panic!("{variant}/{name}: no golden {k}"))
        };
        let prepared = model
            .prepare(&request(&fx, case, GenerationOptions::greedy(12)))
            .unwrap();
        let inputs = prepared.inputs();
        f.check(inputs.input_ids == ids(&case["input_ids"]), || {
            format!("{variant}/{name}: input_ids differ")
        });
        let grids: Vec<Vec<usize>> = inputs.images.iter().map(|i| i.grid_thw.to_vec()).collect();
        let want_grids = common::fixture::grids(&case["image_grid_thw"]);
        f.check(grids == want_grids, || {
            format!("{variant}/{name}: image_grid_thw {grids:?} != {want_grids:?}")
        });
        if !inputs.images.is_empty() {
            let pixels: Vec<f32> = inputs
                .images
                .iter()
                .flat_map(|i| i.pixel_values.iter().copied())
                .collect();
            let d = max_abs_diff(&pixels, g("pixel_values"));
            f.check(d <= PIXEL_TOL, || {
                format!("{variant}/{name}: pixel_values max abs diff {d}")
            });
            let features = model.image_features(&prepared).unwrap().unwrap();
            let e = rel_err(&features.embeds, g("image_embeds"));
            f.check(e <= rel_tol(), || {
                format!("{variant}/{name}: image_embeds rel err {e}")
            });
            for (i, ds) in features.deepstack.iter().enumerate() {
                let e = rel_err(ds, g(&format!("deepstack.{i}")));
                f.check(e <= rel_tol(), || {
                    format!("{variant}/{name}: deepstack.{i} rel err {e}")
                });
            }
        }
        let want_pos: Vec<i64> = g("position_ids").flatten_all().unwrap().to_vec1().unwrap();
        let got_pos: Vec<i64> = prepared
            .rope_index()
            .positions
            .iter()
            .flatten()
            .copied()
            .collect();
        f.check(got_pos == want_pos, || {
            format!("{variant}/{name}: M-RoPE positions differ")
        });
        let want_delta: Vec<i64> = g("rope_deltas").flatten_all().unwrap().to_vec1().unwrap();
        f.check(prepared.rope_index().delta == want_delta[0], || {
            format!(
                "{variant}/{name}: rope delta {} != {}",
                prepared.rope_index().delta,
                want_delta[0]
            )
        });
        let logits = model.prompt_logits(&prepared).unwrap();
        let e = rel_err(&logits, g("prompt_logits"));
        f.check(e <= rel_tol(), || {
            format!("{variant}/{name}: prompt logits rel err {e}")
        });
    }
    f.assert_none();
}

/// Greedy tokens and per-step logits through `vlm_models::load` + `generate`.
fn check_generate(variant: &str) {
    let fx = fixture(variant);
    let model = vlm_models::load(&fx.model_path(), &cpu_f32()).unwrap();
    let opts = GenerationOptions {
        return_logits: true,
        ..GenerationOptions::greedy(12)
    };
    let mut f = Failures::default();
    for case in &fx.cases {
        let name = case["name"].as_str().unwrap();
        let out = model.generate(&request(&fx, case, opts.clone())).unwrap();
        f.check(
            !full_precision() || out.token_ids == ids(&case["greedy_tokens"]),
            || {
                format!(
                    "{variant}/{name}: greedy tokens {:?} != {}",
                    out.token_ids, case["greedy_tokens"]
                )
            },
        );
        f.check(
            out.prompt_tokens == case["prompt_len"].as_u64().unwrap() as usize,
            || format!("{variant}/{name}: prompt length"),
        );
        let e = step_logits_rel_err(
            &out.logits.unwrap(),
            &fx.goldens[&format!("{name}.step_logits")],
        );
        f.check(e <= rel_tol(), || {
            format!("{variant}/{name}: step logits rel err {e}")
        });
    }
    f.assert_none();
}

/// A batch of every case gives each case's one-at-a-time tokens (left padding, masks,
/// per-sequence positions and rope deltas).
fn check_batch(variant: &str) {
    if skip_unless_f32() {
        return;
    }
    let fx = fixture(variant);
    let model = vlm_models::load(&fx.model_path(), &cpu_f32()).unwrap();
    let requests: Vec<Request> = fx
        .cases
        .iter()
        .map(|c| request(&fx, c, GenerationOptions::greedy(12)))
        .collect();
    let outs = model.generate_batch(&requests).unwrap();
    for (case, out) in fx.cases.iter().zip(outs) {
        assert_eq!(
            out.token_ids,
            ids(&case["greedy_tokens"]),
            "{variant}/{}: batched tokens",
            case["name"]
        );
    }
}

#[test]
fn qwen2_vl_matches_reference_internals() {
    check_internals("qwen2_vl");
}

#[test]
fn qwen2_5_vl_matches_reference_internals() {
    check_internals("qwen2_5_vl");
}

#[test]
fn qwen3_vl_matches_reference_internals() {
    check_internals("qwen3_vl");
}

#[test]
fn greedy_generation_matches_reference() {
    for v in VARIANTS {
        check_generate(v);
    }
}

#[test]
fn batched_generation_equals_one_at_a_time() {
    for v in VARIANTS {
        check_batch(v);
    }
}

#[test]
fn ask_in_chinese_uses_the_chat_template() {
    if skip_unless_f32() {
        return;
    }
    for v in VARIANTS {
        let fx = fixture(v);
        let case = fx.case("chinese_question");
        let model = vlm_models::load(&fx.model_path(), &cpu_f32()).unwrap();
        let image = Image::open(fx.dir.join("images/single.png")).unwrap();
        let tokenizer =
            tokenizers::Tokenizer::from_file(fx.dir.join("model/tokenizer.json")).unwrap();
        let want = tokenizer
            .decode(&ids(&case["greedy_tokens"]), true)
            .unwrap();
        let got = model
            .ask(&image, "照片中主菜是什么?", &GenerationOptions::greedy(12))
            .unwrap();
        assert_eq!(got, want, "{v}: ask text");
    }
}

/// Threads share one loaded model (docs/rust.md): every call keeps its own state, so calls
/// made at once give what one call alone gives. On CUDA the threads issue on their own
/// streams, share the model's cuBLAS handle and capture their own decode graphs; at Int4
/// they also take candle's quantized kernels or, with `VLM_QUANT_KERNELS=0`, the fallback.
#[test]
fn threads_sharing_one_model_get_what_one_call_gets() {
    if skip_unless_f32() {
        return;
    }
    let fx = fixture("qwen2_5_vl");
    let case = &fx.cases[0];
    let req = request(&fx, case, GenerationOptions::greedy(12));
    for quantization in [Quantization::None, Quantization::Int4] {
        let options = LoadOptions {
            quantization,
            ..cpu_f32()
        };
        let model = vlm_models::load(&fx.model_path(), &options).unwrap();
        let alone = model.generate(&req).unwrap().token_ids;
        if quantization == Quantization::None {
            assert_eq!(alone, ids(&case["greedy_tokens"]), "one call");
        }
        std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..3)
                            .map(|_| model.generate(&req).map(|g| g.token_ids))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for (t, thread) in threads.into_iter().enumerate() {
                for (i, got) in thread.join().unwrap().into_iter().enumerate() {
                    assert_eq!(
                        got.unwrap(),
                        alone,
                        "{quantization:?}: thread {t}, call {i}"
                    );
                }
            }
        });
    }
}

#[test]
fn streaming_pieces_concatenate_to_the_answer() {
    if skip_unless_f32() {
        return;
    }
    let fx = fixture("qwen2_5_vl");
    let model = vlm_models::load(&fx.model_path(), &cpu_f32()).unwrap();
    let case = &fx.cases[0];
    let req = request(&fx, case, GenerationOptions::greedy(12));
    let mut pieces = Vec::new();
    let out = model
        .generate_stream(&req, &mut |p| pieces.push(p.to_string()))
        .unwrap();
    assert_eq!(pieces.concat(), out.text);
    assert_eq!(out.token_ids, ids(&case["greedy_tokens"]));
}

#[test]
fn info_describes_the_loaded_model() {
    let model = vlm_models::load(&fixture("qwen3_vl").model_path(), &cpu_f32()).unwrap();
    let info = model.info();
    let device = match cpu_f32().device {
        DeviceChoice::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".to_string(),
    };
    assert_eq!(
        (info.family, info.model_type.as_str(), info.device.as_str()),
        ("qwen_vl", "qwen3_vl", device.as_str())
    );
    assert!(info.native_multi_image);
    let bytes_per_weight = if full_precision() { 4 } else { 2 };
    assert_eq!(info.weight_bytes, info.parameters * bytes_per_weight);
    assert!(info.parameters > 10_000, "{}", info.parameters);
}

#[test]
fn placeholder_count_must_match_images() {
    let fx = fixture("qwen2_vl");
    let model = vlm_models::load(&fx.model_path(), &cpu_f32()).unwrap();
    let req = Request::raw(
        vec![],
        "<|vision_start|><|image_pad|><|vision_end|>hi",
        GenerationOptions::greedy(2),
    );
    let err = model.generate(&req).unwrap_err();
    assert!(
        matches!(err, vlm_contract::Error::PlaceholderMismatch { .. }),
        "{err}"
    );
    let empty = model.ask(
        &Image::open(fx.dir.join("images/single.png")).unwrap(),
        "  ",
        &GenerationOptions::greedy(2),
    );
    assert!(matches!(empty, Err(vlm_contract::Error::EmptyQuestion)));
}

/// `RuntimeOptions::prefill_kernels` (the wide bias/SiLU kernels, the residual adds in the
/// RMSNorms' launches for the prefill and Qwen2.5-VL's vision blocks) changes launches,
/// never values: tokens and every step's logits bit for bit against the default, single
/// requests and a padded batch. On CUDA this runs those kernels (the tiny models' widths
/// are multiples of 8); elsewhere the option only reorders candle's adds and norms.
#[test]
fn prefill_kernels_give_the_defaults_bits() {
    for v in VARIANTS {
        let fx = fixture(v);
        let load = |on: bool| {
            let runtime = cpu_f32().runtime.with_prefill_kernels(on);
            let options = cpu_f32().with_runtime(runtime);
            vlm_models::load(&fx.model_path(), &options).unwrap()
        };
        let (plain, wide) = (load(false), load(true));
        let opts = GenerationOptions {
            return_logits: true,
            ..GenerationOptions::greedy(6)
        };
        let requests: Vec<Request> = fx
            .cases
            .iter()
            .map(|c| request(&fx, c, opts.clone()))
            .collect();
        let logits = |g: &vlm_contract::Generation| -> Vec<Vec<u32>> {
            let steps = g.logits.as_ref().unwrap();
            steps
                .iter()
                .map(|s| s.iter().map(|x| x.to_bits()).collect())
                .collect()
        };
        for (want, got) in plain
            .generate_batch(&requests)
            .unwrap()
            .iter()
            .zip(&wide.generate_batch(&requests).unwrap())
            .chain([(
                &plain.generate(&requests[0]).unwrap(),
                &wide.generate(&requests[0]).unwrap(),
            )])
        {
            assert_eq!(got.token_ids, want.token_ids, "{v}: tokens");
            assert!(logits(got) == logits(want), "{v}: logits differ");
        }
    }
}

/// On CUDA, decode steps after the second are replays of a captured graph: they must give
/// what eager steps give (tokens, and logits to rounding) for single requests and a padded
/// batch, and must have run. Elsewhere there are no graphs to compare.
#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "decode graphs are CUDA only: the GPU check (benches/gpu/run.sh) runs this"
)]
fn decode_graphs_replay_what_eager_steps_compute() {
    if !matches!(cpu_f32().device, DeviceChoice::Cuda(_)) {
        skip("decode graphs are CUDA only: set VLM_TEST_DEVICE=cuda");
        return;
    }
    use vlm_models::kernels::graph_stats;
    for v in VARIANTS {
        let fx = fixture(v);
        // Two models of one checkpoint in one process, graphs on for one only.
        let load = |graphs: bool| {
            let runtime = cpu_f32().runtime.with_cuda_graphs(graphs);
            let options = cpu_f32().with_runtime(runtime);
            vlm_models::load(&fx.model_path(), &options).unwrap()
        };
        let (eager_model, graph_model) = (load(false), load(true));
        let opts = GenerationOptions {
            return_logits: true,
            ..GenerationOptions::greedy(12)
        };
        let requests: Vec<Request> = fx
            .cases
            .iter()
            .map(|c| request(&fx, c, opts.clone()))
            .collect();
        let run = |model: &dyn vlm_contract::VisionLanguageModel| {
            let one = model.generate(&requests[0]).unwrap();
            let batch = model.generate_batch(&requests).unwrap();
            (one, batch)
        };
        let (eager, eager_batch) = run(eager_model.as_ref());
        let before = graph_stats();
        let (graph, graph_batch) = run(graph_model.as_ref());
        let after = graph_stats();
        assert_eq!(after.failed, before.failed, "{v}: a capture failed");
        assert!(
            after.replayed > before.replayed,
            "{v}: no decode step was replayed from a graph"
        );
        assert_eq!(graph.token_ids, eager.token_ids, "{v}: tokens");
        let logits = |g: &vlm_contract::Generation| steps_tensor(g.logits.as_ref().unwrap());
        let e = rel_err(&logits(&graph), &logits(&eager));
        assert!(
            e <= 1e-5,
            "{v}: graph logits rel err {e} against eager steps"
        );
        for (g, e) in graph_batch.iter().zip(&eager_batch) {
            assert_eq!(g.token_ids, e.token_ids, "{v}: batched tokens");
        }
    }
}

/// On CUDA, greedy calls run the device a step ahead of the host (each step's pick made on
/// the device, where the next step reads it): they must give what steps in turn give
/// (tokens, text, finish reasons) for single requests, a padded batch, a stop string and
/// an end-of-sequence before the length, and must have run ahead.
#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "running ahead is CUDA only: the GPU check (benches/gpu/run.sh) runs this"
)]
fn greedy_run_ahead_gives_what_steps_in_turn_give() {
    if !matches!(cpu_f32().device, DeviceChoice::Cuda(_)) {
        skip("running ahead is CUDA only: set VLM_TEST_DEVICE=cuda");
        return;
    }
    use vlm_models::kernels::graph_stats;
    for v in VARIANTS {
        let fx = fixture(v);
        let load = |ahead: bool| {
            let runtime = cpu_f32().runtime.with_run_ahead(ahead);
            let options = cpu_f32().with_runtime(runtime);
            vlm_models::load(&fx.model_path(), &options).unwrap()
        };
        let (in_turn, ahead) = (load(false), load(true));
        let plain = GenerationOptions::greedy(12);
        // A stop string that ends the first case's answer a few tokens in: its first ASCII
        // letter or digit after the third character.
        let first = in_turn
            .generate(&request(&fx, &fx.cases[0], plain.clone()))
            .unwrap();
        let stop = first
            .text
            .chars()
            .skip(3)
            .find(|c| c.is_ascii_alphanumeric());
        let mut variants = vec![plain.clone()];
        if let Some(c) = stop {
            variants.push(GenerationOptions {
                stop_strings: vec![c.to_string()],
                ..plain.clone()
            });
        }
        for opts in variants {
            let requests: Vec<Request> = fx
                .cases
                .iter()
                .map(|c| request(&fx, c, opts.clone()))
                .collect();
            let before = graph_stats();
            let got = ahead.generate_batch(&requests).unwrap();
            let one = ahead.generate(&requests[0]).unwrap();
            assert!(
                graph_stats().picked_ahead > before.picked_ahead,
                "{v}: nothing was picked ahead"
            );
            let want = in_turn.generate_batch(&requests).unwrap();
            let want_one = in_turn.generate(&requests[0]).unwrap();
            if !opts.stop_strings.is_empty() {
                assert!(
                    matches!(one.finish_reason, vlm_contract::FinishReason::StopString(_)),
                    "{v}: {:?} did not end at {:?}",
                    one.text,
                    opts.stop_strings
                );
            }
            for (g, w) in got.iter().chain([&one]).zip(want.iter().chain([&want_one])) {
                assert_eq!(g.token_ids, w.token_ids, "{v} {opts:?}: tokens");
                assert_eq!(g.text, w.text, "{v}: text");
                assert_eq!(g.finish_reason, w.finish_reason, "{v}: finish");
                assert_eq!(g.timings.decode_steps, w.timings.decode_steps, "{v}: steps");
            }
        }
    }
}

/// On CUDA, a request that ends leaves its KV caches and captured decode graph to the next
/// request of the same batch size and cache size (rounded up to 128 positions) on the same
/// thread, which replays that graph from its first step: every case run in turn, twice,
/// gives the tokens of eager steps, and the thread captures only where the cache size
/// changes from one call to the next (never with `reuse_graphs` off: every call captures).
#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "decode graphs are CUDA only: the GPU check (benches/gpu/run.sh) runs this"
)]
fn a_kept_graph_replays_for_the_next_request_of_its_shape() {
    if !matches!(cpu_f32().device, DeviceChoice::Cuda(_)) {
        skip("decode graphs are CUDA only: set VLM_TEST_DEVICE=cuda");
        return;
    }
    use vlm_models::kernels::graph_stats;
    const NEW: usize = 12;
    for v in VARIANTS {
        let fx = fixture(v);
        let load = |graphs: bool, reuse: bool| {
            let runtime = cpu_f32()
                .runtime
                .with_cuda_graphs(graphs)
                .with_reuse_graphs(reuse);
            let options = cpu_f32().with_runtime(runtime);
            vlm_models::load(&fx.model_path(), &options).unwrap()
        };
        let eager = load(false, true);
        let requests: Vec<Request> = fx
            .cases
            .iter()
            .chain(&fx.cases)
            .map(|c| request(&fx, c, GenerationOptions::greedy(NEW)))
            .collect();
        for reuse in [true, false] {
            let graphs = load(true, reuse);
            let before = graph_stats().captured_on_this_thread;
            let (mut want_captures, mut last) = (0, None);
            for r in &requests {
                let got = graphs.generate(r).unwrap();
                let want = eager.generate(r).unwrap();
                assert_eq!(got.token_ids, want.token_ids, "{v} reuse {reuse}: tokens");
                let capacity = (got.prompt_tokens + NEW).div_ceil(128);
                if !reuse || last != Some(capacity) {
                    want_captures += 1;
                }
                last = Some(capacity);
            }
            assert_eq!(
                graph_stats().captured_on_this_thread - before,
                want_captures,
                "{v} reuse {reuse}: captures over {} calls",
                requests.len()
            );
        }
    }
}
