//! `vlm-bench`: the photo-album article's table for one model folder: load time, per-photo
//! describe latency with a fixed number of generated tokens, time to first token split into
//! image encoding and prefill, decode tokens/s, photos/s at several batch sizes, and cost per
//! 1,000 photos. Peak GPU memory is sampled outside (benches/gpu/run.sh) with nvidia-smi.
//!
//! Meant for real-size configs with random weights (benches/gpu/make_random_model.py), so
//! every number is about speed, never about answer quality.

#[path = "../synthetic_photo.rs"]
mod synthetic_photo;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use synthetic_photo::synthetic_photo;
use vlm_core::model::LoadOptions;
use vlm_core::{
    DTypeChoice, DeviceChoice, Generation, GenerationOptions, Quantization, Request, Sampling,
    Timings,
};

#[derive(Parser)]
#[command(name = "vlm-bench")]
struct Args {
    /// Model folder.
    #[arg(long)]
    model: String,
    #[arg(long, default_value = "cuda")]
    device: String,
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Tokens generated per photo (forced: min = max).
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Batch sizes for the throughput rows (1 is always measured).
    #[arg(long, value_delimiter = ',', default_value = "8")]
    batches: Vec<usize>,
    /// Timed repetitions at batch 1 (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, default_value_t = 1024)]
    width: u32,
    #[arg(long, default_value_t = 768)]
    height: u32,
    /// Qwen-VL pixel budget: largest image area (default: the checkpoint's).
    #[arg(long)]
    max_pixels: Option<usize>,
    /// Qwen-VL pixel budget: smallest image area (default: the checkpoint's).
    #[arg(long)]
    min_pixels: Option<usize>,
    /// Price of the GPU per hour, for the cost column.
    #[arg(long, default_value_t = 5.8)]
    price_per_hour: f64,
    /// Where to write the synthetic photo (so the baseline uses the same pixels).
    #[arg(long)]
    save_photo: Option<PathBuf>,
    /// Where to write the JSON results.
    #[arg(long)]
    json: Option<PathBuf>,
    /// none, int8 or int4 (the language model; see docs/quantization.md).
    #[arg(long, default_value = "none")]
    quant: String,
    /// The vision tower's quantization (default: the policy: int8 when quantizing).
    #[arg(long)]
    vision_quant: Option<String>,
    /// Quantize into this folder first (timed), then benchmark the model loaded from it
    /// (the load time reported is that folder's).
    #[arg(long)]
    save_quantized: Option<PathBuf>,
    /// Profile one describe call of `--profile-tokens` tokens after the warm-up: the CUDA
    /// profiler is started before it and stopped after (for `ncu --profile-from-start off`),
    /// and its wall-clock split is printed. Then exits.
    #[arg(long)]
    profile: bool,
    #[arg(long, default_value_t = 2)]
    profile_tokens: usize,
    /// Photos in the profiled call (one batch).
    #[arg(long, default_value_t = 1)]
    profile_batch: usize,
    /// Per batch size above 1, also time a library of this many batches through
    /// `generate_batches`, which prepares each batch while the device runs the one
    /// before (0: not measured).
    #[arg(long, default_value_t = 4)]
    library_batches: usize,
}

/// One throughput row: a batch's photos/s and its wall time split as `Timings` does
/// (preprocess, image encode, prefill, decode; ms for the whole batch).
struct BatchRow {
    batch: usize,
    /// Batches run one after another through `generate_batches` (1: one batch alone).
    batches: usize,
    photos_per_s: f64,
    split_ms: [f64; 4],
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A batch's wall time split as `BatchRow::split_ms` holds it.
fn split_ms(t: &Timings) -> [f64; 4] {
    [
        ms(t.preprocess),
        ms(t.image_encode),
        ms(t.prefill),
        ms(t.decode),
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Log events to stderr where `RUST_LOG` asks for them (e.g. `RUST_LOG=vlm::decode_host=trace`
/// for the decode's host time step by step); stdout stays the tables.
fn init_logging() {
    let Ok(spec) = std::env::var("RUST_LOG") else {
        return;
    };
    match tracing_subscriber::EnvFilter::try_new(&spec) {
        Ok(filter) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .without_time()
            .init(),
        Err(e) => eprintln!("warning: RUST_LOG={spec:?} is not a log filter ({e}); no logging"),
    }
}

fn main() -> vlm_core::Result<()> {
    init_logging();
    let args = Args::parse();
    let load_opts = LoadOptions {
        device: DeviceChoice::parse(&args.device)?,
        dtype: DTypeChoice::parse(&args.dtype)?,
        quantization: Quantization::parse(&args.quant)?,
        vision_quantization: args
            .vision_quant
            .as_deref()
            .map(Quantization::parse)
            .transpose()?,
        min_pixels: args.min_pixels,
        max_pixels: args.max_pixels,
        // The VARIANTS of benches/gpu/run.sh: one binary measured under each switch.
        runtime: vlm_core::RuntimeOptions::from_env(),
        ..Default::default()
    };
    let mut source = args.model.clone();
    if let Some(dst) = &args.save_quantized {
        let t = Instant::now();
        let report = vlm_models::save_quantized(&args.model, dst, &load_opts)?;
        eprintln!(
            "quantized {} → {} in {:.1} s: {} quantized + {} float tensors, {:.2} GB held, {:.2} GB file",
            args.model,
            dst.display(),
            t.elapsed().as_secs_f64(),
            report.info.quantized_tensors,
            report.info.float_tensors,
            report.info.weight_bytes as f64 / 1e9,
            report.file_bytes as f64 / 1e9
        );
        source = dst.to_string_lossy().into_owned();
    }
    // The driver's count of GPU memory in use: what the context alone takes, then weights.
    let ordinal = match load_opts.device {
        DeviceChoice::Cuda(n) => Some(n),
        _ => None,
    };
    // Per stage: the card's count now, and the pool's peaks over the stage (each read
    // resets them). The pool's live-tensor peak is what the tensors cost; the card's count
    // beyond the context, the pool's mapping and the graphs' is module code, cuBLAS's
    // workspaces and the kernels' stack, which run.sh's nvidia-smi peak includes.
    let memory = |stage: &str| {
        let Some(m) = ordinal.and_then(vlm_core::device::gpu_memory_breakdown) else {
            return;
        };
        let mib = |b: u64| b >> 20;
        eprintln!("GPU memory in use {stage}: {} MiB", mib(m.card_used));
        eprintln!(
            "  pool now {} MiB mapped, {} MiB live; peaks {stage}: {} MiB mapped, {} MiB live; CUDA graphs {} MiB (peak {} MiB); not pooled: {} MiB; stack {} B per GPU thread",
            mib(m.pool_reserved),
            mib(m.pool_used),
            mib(m.pool_reserved_high),
            mib(m.pool_used_high),
            mib(m.graph_reserved),
            mib(m.graph_reserved_high),
            mib(m.card_used.saturating_sub(m.pool_reserved + m.graph_reserved)),
            m.stack_per_thread
        );
    };
    memory("before loading (CUDA context)");
    let t = Instant::now();
    let model = vlm_models::load(&source, &load_opts)?;
    let load_s = t.elapsed().as_secs_f64();
    let info = model.info();
    eprintln!(
        "loaded {} ({} params, {}, quant {}, {:.2} GB of weights) in {load_s:.2} s",
        info.model_type,
        info.parameters,
        info.dtype,
        info.quantization.as_str(),
        info.weight_bytes as f64 / 1e9
    );

    memory("after loading");
    let photo = synthetic_photo(args.width, args.height);
    if let Some(p) = &args.save_photo {
        photo
            .as_rgb()
            .save(p)
            .map_err(|e| vlm_core::Error::Generation(format!("saving the photo: {e}")))?;
    }
    let forced = |n: usize| GenerationOptions {
        max_new_tokens: Some(n),
        min_new_tokens: n,
        sampling: Some(Sampling::Greedy),
        repetition_penalty: Some(1.0),
        ..GenerationOptions::default()
    };
    // First call: includes the driver's PTX JIT on a fresh machine and cuBLAS set-up.
    let t = Instant::now();
    model.generate(&model.describe_request(&photo, &forced(2))?)?;
    let first_call_s = t.elapsed().as_secs_f64();
    memory("after the first describe call (2 tokens)");

    if args.profile {
        let request = model.describe_request(&photo, &forced(args.profile_tokens))?;
        let requests: Vec<Request> = (0..args.profile_batch.max(1))
            .map(|_| request.clone())
            .collect();
        if requests.len() > 1 {
            model.generate_batch(&requests)?; // warm the batched shapes
        }
        let ordinal = ordinal.unwrap_or(0);
        let started = vlm_core::device::cuda_profiler(ordinal, true);
        let t = Instant::now();
        let g = model.generate_batch(&requests)?.swap_remove(0);
        let wall = t.elapsed().as_secs_f64();
        vlm_core::device::cuda_profiler(ordinal, false);
        println!(
            "profiled call of {} photo(s) (profiler {}): {:.1} ms wall: preprocess {:.1} ms, image encode {:.1} ms, prefill {:.1} ms, {} decode steps {:.1} ms",
            requests.len(),
            if started { "on" } else { "not attached" },
            wall * 1e3,
            ms(g.timings.preprocess),
            ms(g.timings.image_encode),
            ms(g.timings.prefill),
            g.timings.decode_steps,
            ms(g.timings.decode)
        );
        return Ok(());
    }
    let request = model.describe_request(&photo, &forced(args.tokens))?;
    let mut walls = Vec::new();
    let mut gens: Vec<Generation> = Vec::new();
    for _ in 0..args.runs.max(1) {
        let t = Instant::now();
        let g = model.generate(&request)?;
        walls.push(t.elapsed().as_secs_f64());
        assert_eq!(g.token_ids.len(), args.tokens, "forced length not honoured");
        gens.push(g);
    }
    memory(&format!(
        "after the batch-1 describe calls ({} tokens)",
        args.tokens
    ));
    let per_photo_s = median(walls.clone());
    let pick = |f: &dyn Fn(&Generation) -> f64| median(gens.iter().map(f).collect());
    let preprocess_ms = pick(&|g| g.timings.preprocess.as_secs_f64() * 1e3);
    let image_ms = pick(&|g| g.timings.image_encode.as_secs_f64() * 1e3);
    let prefill_ms = pick(&|g| g.timings.prefill.as_secs_f64() * 1e3);
    let decode_tps = pick(&|g| g.timings.decode_tokens_per_second());
    // Host time between a step's ids arriving and the next step's launch, per step: on
    // CUDA the GPU's idle time in the decode.
    let host_us_per_step =
        pick(&|g| g.timings.decode_host.as_secs_f64() * 1e6 / g.timings.decode_steps.max(1) as f64);
    let prompt_tokens = gens[0].prompt_tokens;

    // Per batch: photos/s and where the batch's wall time went (one `Timings` per batch).
    let mut rows = vec![BatchRow {
        batch: 1,
        batches: 1,
        photos_per_s: 1.0 / per_photo_s,
        split_ms: [
            preprocess_ms,
            image_ms,
            prefill_ms,
            median(gens.iter().map(|g| ms(g.timings.decode)).collect()),
        ],
    }];
    for &b in args.batches.iter().filter(|&&b| b > 1) {
        let requests: Vec<Request> = (0..b).map(|_| request.clone()).collect();
        model.generate_batch(&requests[..b.min(2)])?; // warm the batched shapes
        let t = Instant::now();
        let outs = model.generate_batch(&requests)?;
        let wall = t.elapsed().as_secs_f64();
        assert!(outs.iter().all(|g| g.token_ids.len() == args.tokens));
        rows.push(BatchRow {
            batch: b,
            batches: 1,
            photos_per_s: b as f64 / wall,
            split_ms: split_ms(&outs[0].timings),
        });
        // A library: every batch after the first is prepared while the one before runs.
        let k = args.library_batches;
        if k > 0 {
            let library: Vec<Request> = (0..b * k).map(|_| request.clone()).collect();
            let t = Instant::now();
            let outs = model
                .generate_batches(&mut library.iter().cloned().map(Ok), b, &mut |_| {})
                .into_iter()
                .collect::<vlm_core::Result<Vec<_>>>()?;
            let wall = t.elapsed().as_secs_f64();
            assert!(outs.iter().all(|g| g.token_ids.len() == args.tokens));
            rows.push(BatchRow {
                batch: b,
                batches: k,
                photos_per_s: library.len() as f64 / wall,
                // The last batch's: its preprocessing overlapped the batch before.
                split_ms: split_ms(&outs[outs.len() - 1].timings),
            });
        }
    }

    memory("after the batched calls");
    let graphs = vlm_models::kernels::graph_stats();
    eprintln!(
        "decode steps as CUDA graphs: {} captured, {} replayed, {} captures failed; {} picks made on the device ahead of the host",
        graphs.captured, graphs.replayed, graphs.failed, graphs.picked_ahead
    );
    println!("| model | device | dtype | load s | first call s | prompt tok | preprocess ms | image ms | prefill ms | decode tok/s | s/photo (b=1) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {load_s:.2} | {first_call_s:.2} | {prompt_tokens} | {preprocess_ms:.1} | {image_ms:.1} | {prefill_ms:.1} | {decode_tps:.1} | {per_photo_s:.3} |",
        info.model_type, info.device, info.dtype
    );
    println!("decode host time: {host_us_per_step:.1} µs per step (between a step's ids arriving and the next launch; on CUDA the GPU waits meanwhile)");
    println!();
    println!(
        "| batch | photos/s | cost per 1,000 photos at {:.2}/h | batch ms: preprocess | image | prefill | decode |",
        args.price_per_hour
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let [pre, img, fill, dec] = r.split_ms;
        let batch = if r.batches > 1 {
            format!("{} × {} (pipelined)", r.batch, r.batches)
        } else {
            r.batch.to_string()
        };
        println!(
            "| {batch} | {:.2} | {:.3} | {pre:.1} | {img:.1} | {fill:.1} | {dec:.1} |",
            r.photos_per_s,
            args.price_per_hour * 1000.0 / r.photos_per_s / 3600.0
        );
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "model_type": info.model_type, "device": info.device, "dtype": info.dtype,
            "parameters": info.parameters, "weight_bytes": info.weight_bytes,
            "image": [args.width, args.height], "tokens": args.tokens, "prompt_tokens": prompt_tokens,
            "min_pixels": args.min_pixels, "max_pixels": args.max_pixels,
            "load_s": load_s, "first_call_s": first_call_s, "per_photo_s": per_photo_s,
            "per_photo_runs_s": walls, "preprocess_ms": preprocess_ms, "image_encode_ms": image_ms, "prefill_ms": prefill_ms,
            "decode_tokens_per_s": decode_tps, "decode_host_us_per_step": host_us_per_step,
            "throughput": rows.iter().map(|r| serde_json::json!({
                "batch": r.batch, "batches": r.batches, "photos_per_s": r.photos_per_s,
                "preprocess_ms": r.split_ms[0], "image_encode_ms": r.split_ms[1],
                "prefill_ms": r.split_ms[2], "decode_ms": r.split_ms[3],
            })).collect::<Vec<_>>(),
            "price_per_hour": args.price_per_hour,
            "decode_graphs": {"captured": graphs.captured, "replayed": graphs.replayed, "failed": graphs.failed},
        });
        std::fs::write(
            path,
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        )
        .map_err(|e| vlm_core::Error::Generation(format!("writing {}: {e}", path.display())))?;
    }
    Ok(())
}
