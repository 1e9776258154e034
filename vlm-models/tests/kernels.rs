//! The fused CUDA decode kernels against a plain-Rust f32 reference of what the unfused
//! path computes: bias, per-head RMSNorm, rotate-half RoPE, the cache write, GQA attention
//! with left padding, silu·up, and the few-row projection (gemv). Real head sizes (the parity fixtures cover 16 through the
//! whole model), batches with padding, Qwen2 (bias) and Qwen3 (norms) layouts.
//!
//! CUDA only: part of the GPU check (`benches/gpu/run.sh`); ignored in CPU builds.

use candle_core::{DType, Device, Tensor};
use vlm_models::kernels::{self, HeadNorm, Heads};

struct Case {
    batch: usize,
    heads: Heads,
    cap: usize,
    /// Positions cached before the step.
    len: usize,
    pad: Vec<u32>,
    bias: bool,
    norms: bool,
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Bias, norm and RoPE of one head, as the unfused path computes it.
fn prepare(
    x: &[f32],
    bias: Option<&[f32]>,
    norm: Option<&[f32]>,
    cos: &[f32],
    sin: &[f32],
) -> Vec<f32> {
    let d = x.len();
    let mut v: Vec<f32> = (0..d).map(|i| x[i] + bias.map_or(0.0, |b| b[i])).collect();
    if let Some(w) = norm {
        let ms = v.iter().map(|a| a * a).sum::<f32>() / d as f32;
        let r = 1.0 / (ms + 1e-6).sqrt();
        for (a, w) in v.iter_mut().zip(w) {
            *a *= r * w;
        }
    }
    let h = d / 2;
    let mut out = vec![0.0; d];
    for i in 0..h {
        out[i] = v[i] * cos[i] - v[i + h] * sin[i];
        out[i + h] = v[i + h] * cos[i] + v[i] * sin[i];
    }
    out
}

/// A tensor's values as f32, flattened.
fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs() / scale))
}

fn run(case: &Case, dtype: DType, tol: f32) {
    let dev = Device::new_cuda(0).expect("a CUDA device");
    let Heads {
        q: nq,
        kv: nkv,
        dim: d,
    } = case.heads;
    let (b, cap, len) = (case.batch, case.cap, case.len);
    let width = (nq + 2 * nkv) * d;
    let qkv = values(b * width, 1);
    let bias = case.bias.then(|| values(width, 2));
    let qn: Option<Vec<f32>> = case
        .norms
        .then(|| values(d, 3).iter().map(|v| 1.0 + 0.5 * v).collect());
    let kn: Option<Vec<f32>> = case
        .norms
        .then(|| values(d, 4).iter().map(|v| 1.0 + 0.5 * v).collect());
    let angles = values(b * d / 2, 5);
    let cos: Vec<f32> = angles.iter().map(|a| (3.0 * a).cos()).collect();
    let sin: Vec<f32> = angles.iter().map(|a| (3.0 * a).sin()).collect();
    let mut kc = values(b * nkv * cap * d, 6);
    let mut vc = values(b * nkv * cap * d, 7);

    let t = |v: &[f32], shape: &[usize]| {
        Tensor::from_vec(v.to_vec(), shape, &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    // What the kernels see is the input rounded to `dtype`: the reference starts there too.
    let round = |v: &[f32]| -> Vec<f32> {
        f32s(
            &Tensor::from_vec(v.to_vec(), v.len(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        )
    };
    let qkv_t = t(&qkv, &[b, 1, width]);
    let bias_t = bias.as_ref().map(|v| t(v, &[width]));
    let (cos_t, sin_t) = (t(&cos, &[b, 1, d / 2]), t(&sin, &[b, 1, d / 2]));
    let qn_t = qn.as_ref().map(|v| t(v, &[d]));
    let kn_t = kn.as_ref().map(|v| t(v, &[d]));
    let kc_t = t(&kc, &[b, nkv, cap, d]);
    let vc_t = t(&vc, &[b, nkv, cap, d]);
    let pad_t = Tensor::new(case.pad.clone(), &dev).unwrap();
    fn norm(w: &Option<Tensor>) -> Option<HeadNorm<'_>> {
        w.as_ref().map(|weight| HeadNorm { weight, eps: 1e-6 })
    }

    kernels::write_kv(
        &qkv_t,
        bias_t.as_ref(),
        &cos_t,
        &sin_t,
        norm(&kn_t),
        &case.heads,
        &kc_t,
        &vc_t,
        len,
    )
    .unwrap();
    let out = kernels::decode_attention(
        &qkv_t,
        bias_t.as_ref(),
        &cos_t,
        &sin_t,
        norm(&qn_t),
        &case.heads,
        &kc_t,
        &vc_t,
        len + 1,
        Some(&pad_t),
    )
    .unwrap();

    // The reference, from the same rounded inputs.
    let (qkv, cos, sin) = (round(&qkv), round(&cos), round(&sin));
    let bias = bias.map(|v| round(&v));
    let (qn, kn) = (qn.map(|v| round(&v)), kn.map(|v| round(&v)));
    kc = round(&kc);
    vc = round(&vc);
    let mut want_out = vec![0f32; b * nq * d];
    for bi in 0..b {
        let row = &qkv[bi * width..(bi + 1) * width];
        let (c, s) = (
            &cos[bi * d / 2..(bi + 1) * d / 2],
            &sin[bi * d / 2..(bi + 1) * d / 2],
        );
        let slot = |h: usize| &row[h * d..(h + 1) * d];
        let bslot = |h: usize| bias.as_ref().map(|v| &v[h * d..(h + 1) * d]);
        for kh in 0..nkv {
            let k = prepare(slot(nq + kh), bslot(nq + kh), kn.as_deref(), c, s);
            let v: Vec<f32> = (0..d)
                .map(|i| slot(nq + nkv + kh)[i] + bslot(nq + nkv + kh).map_or(0.0, |x| x[i]))
                .collect();
            let at = ((bi * nkv + kh) * cap + len) * d;
            // The caches hold `dtype`.
            kc[at..at + d].copy_from_slice(&round(&k));
            vc[at..at + d].copy_from_slice(&round(&v));
        }
        for h in 0..nq {
            let q = round(&prepare(slot(h), bslot(h), qn.as_deref(), c, s));
            let kh = h / (nq / nkv);
            let keys = case.pad[bi] as usize..len + 1;
            let scores: Vec<f32> = keys
                .clone()
                .map(|p| {
                    let at = ((bi * nkv + kh) * cap + p) * d;
                    (0..d).map(|i| q[i] * kc[at + i]).sum()
                })
                .collect();
            let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = scores.iter().map(|x| (x - m).exp()).collect();
            let z: f32 = e.iter().sum();
            for (w, p) in e.iter().zip(keys) {
                let at = ((bi * nkv + kh) * cap + p) * d;
                for i in 0..d {
                    want_out[(bi * nq + h) * d + i] += w / z * vc[at + i];
                }
            }
        }
    }

    let (got_k, got_v, got_out) = (f32s(&kc_t), f32s(&vc_t), f32s(&out));
    let what = format!(
        "{dtype:?} b={b} heads={nq}/{nkv} d={d} len={len} pad={:?} bias={} norms={}",
        case.pad, case.bias, case.norms
    );
    let ek = max_rel_err(&got_k, &kc);
    let ev = max_rel_err(&got_v, &vc);
    let eo = max_rel_err(&got_out, &want_out);
    println!("{what}: cache k {ek:.2e}, v {ev:.2e}, attention {eo:.2e}");
    assert!(
        ek < tol && ev < tol && eo < tol,
        "{what}: k {ek}, v {ev}, out {eo} (tolerance {tol})"
    );
}

fn cases() -> Vec<Case> {
    let h = |q, kv, dim| Heads { q, kv, dim };
    vec![
        // Qwen2.5-VL-7B's attention, one sequence.
        Case {
            batch: 1,
            heads: h(28, 4, 128),
            cap: 1100,
            len: 1037,
            pad: vec![0],
            bias: true,
            norms: false,
        },
        // Qwen3-VL's q/k norms, a padded batch.
        Case {
            batch: 3,
            heads: h(32, 8, 128),
            cap: 300,
            len: 203,
            pad: vec![0, 17, 150],
            bias: false,
            norms: true,
        },
        // The tiny fixtures' size; a cache whose keys fit one sweep.
        Case {
            batch: 2,
            heads: h(4, 2, 16),
            cap: 24,
            len: 5,
            pad: vec![2, 0],
            bias: true,
            norms: true,
        },
        Case {
            batch: 2,
            heads: h(8, 8, 64),
            cap: 64,
            len: 40,
            pad: vec![0, 39],
            bias: true,
            norms: false,
        },
        Case {
            batch: 1,
            heads: h(16, 2, 256),
            cap: 80,
            len: 70,
            pad: vec![0],
            bias: false,
            norms: false,
        },
        Case {
            batch: 1,
            heads: h(4, 1, 32),
            cap: 8,
            len: 0,
            pad: vec![0],
            bias: false,
            norms: true,
        },
    ]
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn fused_decode_kernels_match_the_reference_in_f32() {
    for case in cases() {
        run(&case, DType::F32, 1e-5);
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn fused_decode_kernels_match_the_reference_in_half_precision() {
    for case in cases() {
        run(&case, DType::BF16, 2e-2);
        run(&case, DType::F16, 3e-3);
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn silu_mul_matches_the_reference() {
    let dev = Device::new_cuda(0).expect("a CUDA device");
    for (rows, inter, dtype, tol) in [
        (1, 18944, DType::F32, 1e-6),
        (37, 300, DType::F32, 1e-6),
        (5, 4864, DType::BF16, 1e-2),
        (3, 96, DType::F16, 2e-3),
    ] {
        let x = values(rows * 2 * inter, 9);
        let xt = Tensor::from_vec(x, (rows, 1, 2 * inter), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let x = f32s(&xt);
        let got = f32s(&kernels::silu_mul(&xt, inter).unwrap());
        let want: Vec<f32> = (0..rows * inter)
            .map(|i| {
                let (r, c) = (i / inter, i % inter);
                let (g, u) = (x[r * 2 * inter + c], x[r * 2 * inter + inter + c]);
                g / (1.0 + (-g).exp()) * u
            })
            .collect();
        let e = max_rel_err(&got, &want);
        println!("silu_mul {dtype:?} {rows}×{inter}: {e:.2e}");
        assert!(e < tol, "silu_mul {dtype:?} {rows}×{inter}: {e}");
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn gemv_matches_the_reference() {
    let dev = Device::new_cuda(0).expect("a CUDA device");
    // (rows, k, n): the 7B's o_proj and down_proj shapes, a k that leaves lanes idle, and a
    // column count that is not a multiple of the 8 columns of a block.
    for (m, k, n) in [
        (1, 3584, 3584),
        (8, 18944, 64),
        (3, 136, 37),
        (5, 520, 1003),
    ] {
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2), (DType::F16, 2e-3)] {
            for with_bias in [false, true] {
                let t = |v: Vec<f32>, shape: &[usize]| {
                    Tensor::from_vec(v, shape, &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                };
                let (x, w) = (t(values(m * k, 11), &[m, k]), t(values(n * k, 12), &[n, k]));
                let b = with_bias.then(|| t(values(n, 13), &[n]));
                let got = f32s(&kernels::gemv(&x, &w, b.as_ref()).unwrap());
                let (xs, ws) = (f32s(&x), f32s(&w));
                let bs = b.as_ref().map(f32s);
                let want: Vec<f32> = (0..m * n)
                    .map(|i| {
                        let (r, c) = (i / n, i % n);
                        let dot: f32 = (0..k).map(|j| xs[r * k + j] * ws[c * k + j]).sum();
                        dot + bs.as_ref().map_or(0.0, |b| b[c])
                    })
                    .collect();
                let e = max_rel_err(&got, &want);
                println!("gemv {dtype:?} m={m} k={k} n={n} bias={with_bias}: {e:.2e}");
                assert!(e < tol, "gemv {dtype:?} m={m} k={k} n={n}: {e}");
            }
        }
    }
}
