//! Int8 and Int4 on every family's parity fixture (CPU): logits against the float32
//! reference goldens within stated bounds, the greedy-token agreement, the bytes `info()`
//! reports, and the quantized-folder round trip (save, reload without quantizing, same
//! tokens). The measured numbers are in docs/quantization.md. `VLM_TEST_DEVICE=cuda` runs
//! the same checks on CUDA (part of the GPU check).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;
use vlm_contract::model::LoadOptions;
use vlm_contract::{
    DTypeChoice, DeviceChoice, GenerationOptions, Image, Prompt, Quantization, Request,
    RuntimeOptions,
};

mod common;
use common::{ids, messages, rel_err, skip};

/// Worst relative error of the first generated step's logits (max |a-b| / max |b|, the
/// prompt is the same) allowed against the float32 reference. Measured (2026-11-27, CPU):
/// int8 0.016-0.091, int4 0.149-0.540. These tiny models are a harsh case: 32-64 wide
/// layers with weights scaled up for clear greedy margins, every layer 4-bit (Q4_0: the
/// layers are narrower than Q4_K's 256-wide blocks), and candle's CPU kernels quantize
/// the activations to 8 bits too. On a real-size layer the output error is 0.6% (Q8_0) and
/// 6.5% (Q4_K) of its range (quant.rs unit tests).
const INT8_BOUND: f32 = 0.12;
const INT4_BOUND: f32 = 0.7;
/// Each quantization with its bound.
const BOUNDS: [(Quantization, f32); 2] = [
    (Quantization::Int8, INT8_BOUND),
    (Quantization::Int4, INT4_BOUND),
];

fn fixtures() -> PathBuf {
    std::env::var_os("VLM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
}

struct Family {
    name: &'static str,
    dir: PathBuf,
}

fn families() -> Vec<Family> {
    let f = fixtures();
    let mut out = vec![];
    for v in ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"] {
        out.push(Family {
            name: v,
            dir: f.join("qwen").join(v),
        });
    }
    for v in ["opt", "t5"] {
        out.push(Family {
            name: v,
            dir: f.join("blip2").join(v),
        });
    }
    for v in ["vicuna0", "llama2"] {
        out.push(Family {
            name: v,
            dir: f.join("minigpt4").join(v),
        });
    }
    out
}

/// Every case of a fixture as a request (the three fixture formats).
fn requests(fam: &Family) -> Vec<(String, Request, Vec<u32>)> {
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(fam.dir.join("cases.json")).unwrap())
            .unwrap();
    let opts = GenerationOptions {
        return_logits: true,
        repetition_penalty: Some(1.0),
        ..GenerationOptions::greedy(12)
    };
    meta["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap().to_string();
            let req = if let Some(img) = c.get("image").and_then(Value::as_str) {
                // BLIP-2: one image, raw prompt
                let image = Image::open(fam.dir.join(img)).unwrap();
                Request::raw(
                    vec![image],
                    c["prompt"].as_str().unwrap_or(""),
                    opts.clone(),
                )
            } else if c.get("path").is_some() {
                // MiniGPT-4: the demo's chat flow or a raw prompt
                let images: Vec<Image> = c["images"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| Image::open(fam.dir.join("images").join(p.as_str().unwrap())).unwrap())
                    .collect();
                let penalty = c["generate_kwargs"]["repetition_penalty"]
                    .as_f64()
                    .unwrap_or(1.0) as f32;
                let o = GenerationOptions {
                    repetition_penalty: Some(penalty),
                    ..opts.clone()
                };
                if c["path"] == "chat" {
                    Request::chat(images, c["question"].as_str().unwrap(), o)
                } else {
                    Request::raw(images, c["prompt"].as_str().unwrap(), o)
                }
            } else {
                let images: Vec<Image> = c["images"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| Image::open(fam.dir.join(p.as_str().unwrap())).unwrap())
                    .collect();
                match c.get("raw_prompt") {
                    Some(raw) => Request::raw(images, raw.as_str().unwrap(), opts.clone()),
                    None => Request {
                        images,
                        prompt: Prompt::Chat(messages(&c["messages"])),
                        options: opts.clone(),
                    },
                }
            };
            (name, req, ids(&c["greedy_tokens"]))
        })
        .collect()
}

/// f32 activations on the CPU, or on CUDA with `VLM_TEST_DEVICE=cuda` (the GPU check), the
/// GPU paths as the `VLM_*` switches say.
fn options(q: Quantization) -> LoadOptions {
    let device = std::env::var("VLM_TEST_DEVICE")
        .map_or(DeviceChoice::Cpu, |s| DeviceChoice::parse(&s).unwrap());
    LoadOptions {
        device,
        dtype: DTypeChoice::F32,
        quantization: q,
        runtime: RuntimeOptions::from_env(),
        ..Default::default()
    }
}

/// (worst relative logit error, share of greedy tokens equal to the reference's).
fn measure(fam: &Family, q: Quantization) -> (f32, f32, u64) {
    measure_with(fam, &options(q))
}

/// [`measure`] of a model loaded with `options`.
fn measure_with(fam: &Family, options: &LoadOptions) -> (f32, f32, u64) {
    let goldens =
        candle_core::safetensors::load(fam.dir.join("goldens.safetensors"), &Device::Cpu).unwrap();
    let model = vlm_models::load(fam.dir.join("model").to_str().unwrap(), options).unwrap();
    let (mut worst, mut same, mut total) = (0f32, 0usize, 0usize);
    for (name, req, want) in requests(fam) {
        // Teacher-forced: the reference's tokens are not forced, so compare the first
        // step (same prompt) exactly and count agreement of the greedy continuation.
        let out = model.generate(&req).unwrap();
        let steps = out.logits.unwrap();
        let first = Tensor::from_vec(steps[0].clone(), (1, steps[0].len()), &Device::Cpu).unwrap();
        let want_first = goldens[&format!("{name}.step_logits")]
            .narrow(0, 0, 1)
            .unwrap();
        worst = worst.max(rel_err(&first, &want_first));
        same += out
            .token_ids
            .iter()
            .zip(&want)
            .take_while(|(a, b)| a == b)
            .count();
        total += want.len();
    }
    (worst, same as f32 / total as f32, model.info().weight_bytes)
}

#[test]
fn int8_and_int4_stay_within_bounds_on_every_family() {
    let mut report = String::new();
    let mut failures = vec![];
    for fam in families() {
        let float_bytes = vlm_models::load(
            fam.dir.join("model").to_str().unwrap(),
            &options(Quantization::None),
        )
        .unwrap()
        .info()
        .weight_bytes;
        for (q, bound) in BOUNDS {
            let (err, agree, bytes) = measure(&fam, q);
            report.push_str(&format!(
                "{:10} {:5} first-step logits rel err {err:.4}, greedy agreement {:.0}%, weights {bytes} B (f32 {float_bytes} B)\n",
                fam.name,
                q.as_str(),
                agree * 100.0
            ));
            if err > bound {
                failures.push(format!(
                    "{} {}: rel err {err} > {bound}",
                    fam.name,
                    q.as_str()
                ));
            }
            if bytes >= float_bytes {
                failures.push(format!(
                    "{} {}: {bytes} B not below f32's {float_bytes} B",
                    fam.name,
                    q.as_str()
                ));
            }
        }
    }
    eprintln!("{report}");
    assert!(failures.is_empty(), "{}\n{report}", failures.join("\n"));
}

/// With `RuntimeOptions::quant_kernels` off (`VLM_QUANT_KERNELS=0`), the path a card gets
/// whose build cannot run candle's quantized kernels: every quantized projection, decode
/// steps included, dequantizes its weight for a float GEMM, and every family still answers
/// within its bounds.
#[test]
fn every_family_answers_with_candles_quantized_kernels_off() {
    use vlm_models::kernels::quant_gemm_calls;
    let mut failures = vec![];
    for fam in families() {
        for (q, bound) in BOUNDS {
            let off = options(q).runtime.with_quant_kernels(false);
            let before = quant_gemm_calls();
            let (err, agree, _) = measure_with(&fam, &options(q).with_runtime(off));
            let calls = quant_gemm_calls() - before;
            eprintln!(
                "{} {} with the quantized kernels off: rel err {err:.4}, greedy agreement {:.0}%, {calls} dequantized projections",
                fam.name,
                q.as_str(),
                agree * 100.0
            );
            if calls == 0 {
                failures.push(format!(
                    "{} {}: no projection dequantized",
                    fam.name,
                    q.as_str()
                ));
            }
            if err > bound {
                failures.push(format!(
                    "{} {}: rel err {err} > {bound}",
                    fam.name,
                    q.as_str()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vlm-quant-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Saving a quantized folder and loading it again gives the same model without
/// quantizing: same tensors (so the same logits, bit for bit), same reported bytes.
#[test]
fn quantized_folder_round_trip_on_every_family() {
    let all = families();
    // qwen3_vl: transformers 5's `model.language_model.*` layout, its embedding quantized.
    for name in ["qwen2_5_vl", "qwen3_vl", "t5", "vicuna0", "llama2"] {
        let fam = all.iter().find(|f| f.name == name).unwrap();
        let src = fam.dir.join("model");
        let dst = temp_dir(name);
        let opts = options(Quantization::Int4);
        let report = vlm_models::save_quantized(src.to_str().unwrap(), &dst, &opts).unwrap();
        assert!(
            report.info.quantized_tensors > 0,
            "{name}: nothing quantized"
        );
        assert!(dst.join("model.gguf").is_file() && dst.join("quantization.json").is_file());
        let weights_copied = walk(&dst).into_iter().any(|p| {
            let n = p.to_string_lossy();
            n.ends_with(".safetensors") || n.ends_with(".pth") || n.ends_with(".bin")
        });
        assert!(
            !weights_copied,
            "{name}: original weights copied into the quantized folder"
        );

        let fresh = vlm_models::load(src.to_str().unwrap(), &opts).unwrap();
        // Loading the folder needs no quantization option: it loads as saved.
        let saved = vlm_models::load(dst.to_str().unwrap(), &options(Quantization::None)).unwrap();
        let (a, b) = (fresh.info(), saved.info());
        assert_eq!(b.quantization, Quantization::Int4, "{name}");
        assert_eq!(a.weight_bytes, b.weight_bytes, "{name}: weight bytes");
        assert_eq!(
            a.weight_bytes, report.info.weight_bytes,
            "{name}: reported bytes"
        );
        for (case, req, _) in requests(fam) {
            let x = fresh.generate(&req).unwrap();
            let y = saved.generate(&req).unwrap();
            assert_eq!(x.token_ids, y.token_ids, "{name}/{case}: tokens");
            assert_eq!(x.logits, y.logits, "{name}/{case}: logits");
        }
        std::fs::remove_dir_all(&dst).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// In f16 the quantizer's host f32 copy of a tied embedding (read to make the quantized
/// head) must not be counted or saved in place of the model's f16 embedding.
#[test]
fn tied_embedding_is_counted_once_in_half_precision() {
    let src = fixtures().join("blip2/opt/model"); // tied head, no lm_head.weight in the file
    let dst = temp_dir("tied-f16");
    let opts = LoadOptions {
        dtype: DTypeChoice::F16,
        ..options(Quantization::Int8)
    };
    let report = vlm_models::save_quantized(src.to_str().unwrap(), &dst, &opts).unwrap();
    let fresh = vlm_models::load(src.to_str().unwrap(), &opts)
        .unwrap()
        .info();
    let saved = vlm_models::load(dst.to_str().unwrap(), &opts)
        .unwrap()
        .info();
    assert_eq!(fresh.weight_bytes, report.info.weight_bytes);
    assert_eq!(saved.weight_bytes, report.info.weight_bytes);
    std::fs::remove_dir_all(&dst).unwrap();
}

/// The dequantize-then-GEMM path for many-row quantized projections on CUDA
/// (`RuntimeOptions::quant_gemm_rows`) against candle's quantized matmul, two models of one
/// checkpoint loaded side by side with different thresholds: the same tokens' first-step
/// logits within a few percent of each other (candle's MMQ also rounds the activations to
/// 8 bits), and each within the family's bound of the float reference.
#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "the dequantized GEMM is CUDA only: the GPU check (benches/gpu/run.sh) runs this"
)]
fn dequantized_gemm_agrees_with_the_quantized_matmul() {
    if !matches!(options(Quantization::None).device, DeviceChoice::Cuda(_)) {
        skip("the dequantized GEMM runs on CUDA only: set VLM_TEST_DEVICE=cuda");
        return;
    }
    use vlm_models::kernels::quant_gemm_calls;
    let mut failures = vec![];
    for fam in families() {
        for (q, bound) in BOUNDS {
            let with_rows = |rows: usize| {
                let runtime = options(q).runtime.with_quant_gemm_rows(rows);
                options(q).with_runtime(runtime)
            };
            let load = |rows: usize| {
                vlm_models::load(fam.dir.join("model").to_str().unwrap(), &with_rows(rows)).unwrap()
            };
            let (mmq_model, gemm_model) = (load(0), load(9));
            // Every case's first-step logits, one row each.
            let first = |model: &dyn vlm_contract::VisionLanguageModel| {
                let firsts: Vec<Vec<f32>> = requests(&fam)
                    .into_iter()
                    .map(|(_, req, _)| model.generate(&req).unwrap().logits.unwrap().swap_remove(0))
                    .collect();
                let vocab = firsts[0].len();
                Tensor::from_vec(firsts.concat(), (firsts.len(), vocab), &Device::Cpu).unwrap()
            };
            let mmq = first(mmq_model.as_ref());
            let before = quant_gemm_calls();
            let gemm = first(gemm_model.as_ref());
            if quant_gemm_calls() == before {
                failures.push(format!(
                    "{} {}: no projection took the GEMM",
                    fam.name,
                    q.as_str()
                ));
            }
            let e = rel_err(&gemm, &mmq);
            eprintln!(
                "{} {}: dequantized GEMM vs quantized matmul rel err {e:.4}",
                fam.name,
                q.as_str()
            );
            if e > 0.1 {
                failures.push(format!(
                    "{} {}: rel err {e} between the paths",
                    fam.name,
                    q.as_str()
                ));
            }
            let (err, _, _) = measure_with(&fam, &with_rows(9));
            if err > bound {
                failures.push(format!(
                    "{} {} through the GEMM: rel err {err} > {bound} against the float reference",
                    fam.name,
                    q.as_str()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// On CUDA, candle's quantized kernels pass their check (vlm_models::kernels::
/// quant_kernels_run) exactly where this build's machine code or PTX can run on the card:
/// the check decides whether quantized layers dequantize, so it must neither miss a card
/// the kernels fail on (wrong answers) nor send a card they run on down the slow path.
#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "checks candle's CUDA kernels: the GPU check (benches/gpu/run.sh) runs this"
)]
fn quantized_kernels_check_matches_what_the_build_runs_on() {
    let DeviceChoice::Cuda(ordinal) = options(Quantization::None).device else {
        skip("candle's quantized CUDA kernels need a GPU: set VLM_TEST_DEVICE=cuda");
        return;
    };
    let device = Device::new_cuda(ordinal).unwrap();
    let card =
        vlm_contract::device::compute_capability(&device).expect("a CUDA device's capability");
    let Some(expected) = vlm_models::kernels::this_build_runs_on(card) else {
        skip("built without CUDA_COMPUTE_CAP: which cards its kernels run on is not recorded");
        return;
    };
    for dtype in [
        candle_core::DType::F32,
        common::test_dtype().resolve(&device),
    ] {
        let verdict = vlm_models::kernels::quant_kernels_run(&device, dtype).unwrap();
        eprintln!(
            "compute capability {card:?}, {dtype:?}: candle's quantized kernels run: {verdict}"
        );
        assert_eq!(
            verdict, expected,
            "{dtype:?} on compute capability {card:?}"
        );
    }
}
