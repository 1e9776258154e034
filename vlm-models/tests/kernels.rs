//! The fused CUDA decode kernels against a plain-Rust f32 reference of what the unfused
//! path computes: bias, per-head RMSNorm, rotate-half RoPE, the cache write, GQA attention
//! with left padding, silu·up, and the few-row projection (gemv). Real head sizes (the parity fixtures cover 16 through the
//! whole model), batches with padding, Qwen2 (bias) and Qwen3 (norms) layouts; decode
//! attention's keys in one slice, in the default slices and in as many as they allow, on
//! the CUDA cores and on the tensor cores.
//!
//! CUDA only: part of the GPU check (`benches/gpu/run.sh`); ignored in CPU builds.

mod common;

use candle_core::{DType, Device, Tensor};
use vlm_contract::RuntimeOptions;
use vlm_models::kernels::{self, CacheLen, HeadNorm, Heads};

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

/// Values' bit patterns, for checks that two kernels agree exactly (signed zeros and
/// NaNs included).
fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs() / scale))
}

/// One step of `case` through the kernels, the cache length from the host or, with
/// `device_len`, from a device buffer (the variants a captured CUDA graph replays).
fn run(case: &Case, dtype: DType, tol: f32, device_len: bool) {
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
    let (kc_before, vc_before) = (kc.clone(), vc.clone());
    let counters = Tensor::zeros(b * nq, DType::U32, &dev).unwrap();
    let pad_t = Tensor::new(case.pad.clone(), &dev).unwrap();
    fn norm(w: &Option<Tensor>) -> Option<HeadNorm<'_>> {
        w.as_ref().map(|weight| HeadNorm { weight, eps: 1e-6 })
    }

    let len_t = Tensor::new(&[len as u32 + 1], &dev).unwrap();
    let cache_len = CacheLen {
        on_device: device_len.then_some(&len_t),
        value: len + 1,
    };
    kernels::write_kv(
        &qkv_t,
        bias_t.as_ref(),
        &cos_t,
        &sin_t,
        norm(&kn_t),
        &case.heads,
        &kc_t,
        &vc_t,
        cache_len,
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
        cache_len,
        Some(&pad_t),
    )
    .unwrap();
    // decode_attention_q8 over these inputs and the caches given, launched as `runtime`
    // says; `write`: it prepares and writes the new key and value itself (NewKv::Write),
    // else reads them from the caches.
    let attend = |kc: &Tensor,
                  vc: &Tensor,
                  q8: bool,
                  write: bool,
                  counters: Option<&Tensor>,
                  runtime: &RuntimeOptions| {
        let new_kv = if write {
            kernels::NewKv::Write {
                k_norm: norm(&kn_t),
            }
        } else {
            kernels::NewKv::Cached
        };
        kernels::decode_attention_q8(
            &qkv_t,
            bias_t.as_ref(),
            &cos_t,
            &sin_t,
            norm(&qn_t),
            &case.heads,
            kc,
            vc,
            cache_len,
            Some(&pad_t),
            q8,
            new_kv,
            counters,
            runtime,
        )
        .unwrap()
    };
    // Fresh copies of the caches as they were before the step.
    let fresh = || {
        (
            t(&kc_before, &[b, nkv, cap, d]),
            t(&vc_before, &[b, nkv, cap, d]),
        )
    };
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
        "{dtype:?} b={b} heads={nq}/{nkv} d={d} len={len} pad={:?} bias={} norms={} device len={device_len}",
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

    // decode_attention is decode_attention_q8 with the default options.
    let defaults = f32s(&attend(&kc_t, &vc_t, false, false, None, &RuntimeOptions::default()).0);
    assert_eq!(defaults, got_out, "{what}: decode_attention's bits");

    // Key slices for the default number of blocks, for one block a head (one slice) and
    // for as many as the keys allow (RuntimeOptions::decode_slice_blocks); on the CUDA
    // cores and, for every batch, on the tensor cores (RuntimeOptions::mma_decode_min_batch:
    // a kernel of its own where the heads suit it, else the same one). Each variant below
    // gives its layout's bits.
    let default_blocks = RuntimeOptions::default().decode_slice_blocks;
    let layouts = [false, true]
        .into_iter()
        .flat_map(|mma| [default_blocks, 1, 1 << 20].map(|blocks| (mma, blocks)));
    for (mma, blocks) in layouts {
        let runtime = RuntimeOptions::default()
            .with_decode_slice_blocks(blocks)
            .with_mma_decode_min_batch(usize::from(mma));
        let what = format!("{what}, {blocks} blocks aimed for, tensor cores {mma}");
        let cached = f32s(&attend(&kc_t, &vc_t, false, false, None, &runtime).0);
        let e = max_rel_err(&cached, &want_out);
        println!("{what}: attention {e:.2e}");
        assert!(e < tol, "{what}: out {e} (tolerance {tol})");

        // The attention that prepares and writes the new key and value itself: the same
        // bits, in its output and in the caches.
        let (kc_fused, vc_fused) = fresh();
        let fused = attend(&kc_fused, &vc_fused, false, true, None, &runtime).0;
        assert_eq!(
            f32s(&fused),
            cached,
            "{what}: the attention writing the key"
        );
        assert_eq!(f32s(&kc_fused), got_k, "{what}: the key it wrote");
        assert_eq!(f32s(&vc_fused), got_v, "{what}: the value it wrote");
        // And the one whose last block per head merges the key slices.
        let (kc_counted, vc_counted) = fresh();
        let counted = attend(
            &kc_counted,
            &vc_counted,
            false,
            true,
            Some(&counters),
            &runtime,
        )
        .0;
        assert_eq!(
            f32s(&counted),
            cached,
            "{what}: slices merged by their last block"
        );
        assert_eq!(
            f32s(&kc_counted),
            got_k,
            "{what}: the key, slices merged so"
        );
        assert_eq!(
            f32s(&vc_counted),
            got_v,
            "{what}: the value, slices merged so"
        );
        let left: Vec<u32> = counters.to_vec1().unwrap();
        assert!(
            left.iter().all(|&c| c == 0),
            "{what}: counters left at {left:?}"
        );

        // The output also written as the output projection's Q8_1 input (by the attention
        // with one slice, by the combine with several; zero blocks past q·dim where candle
        // pads the row): the projection reading them gives the bits it gives quantizing the
        // output itself.
        if d >= 32 {
            use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
            use vlm_models::layers::Linear;
            let k = nq * d;
            let (again, q8) = attend(&kc_t, &vc_t, true, false, None, &runtime);
            assert_eq!(
                f32s(&again),
                cached,
                "{what}: the output next to its blocks"
            );
            let q8 = q8.expect("blocks for at most 8 rows");
            let (merged, merged_q8) = attend(&kc_t, &vc_t, true, false, Some(&counters), &runtime);
            assert_eq!(f32s(&merged), cached, "{what}: merged by the last block");
            let merged_q8 = merged_q8.expect("blocks for at most 8 rows");
            let block = if k % 256 == 0 {
                GgmlDType::Q4K
            } else {
                GgmlDType::Q8_0
            };
            let w = Tensor::from_vec(values(96 * k, 8), (96, k), &Device::Cpu).unwrap();
            let w = QTensor::quantize_onto(&w, block, &dev).unwrap();
            let proj = Linear::quantized(
                QMatMul::from_qtensor(w).unwrap(),
                dtype,
                None,
                RuntimeOptions::default(),
            )
            .unwrap();
            if proj.takes_q8() {
                let x = again.reshape((b, 1, k)).unwrap();
                let from_blocks = f32s(&proj.forward_q8(&x, Some(&q8)).unwrap());
                let own = f32s(&proj.forward_q8(&x, None).unwrap());
                assert_eq!(from_blocks, own, "{what}: {block:?} o_proj from the blocks");
                let from_merged = f32s(&proj.forward_q8(&x, Some(&merged_q8)).unwrap());
                assert_eq!(
                    from_merged, own,
                    "{what}: {block:?} o_proj, slices merged by the last block"
                );
            }
        }
    }
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
        // Keys split into slices for the card (decode_combine), a sequence padded to
        // a third of them.
        Case {
            batch: 2,
            heads: h(16, 2, 128),
            cap: 1200,
            len: 1100,
            pad: vec![0, 700],
            bias: true,
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
        // Groups of 6 (Qwen2-VL-2B) at a batch of 8; a group of 2 at head size 64 with the
        // norms.
        Case {
            batch: 8,
            heads: h(12, 2, 128),
            cap: 1040,
            len: 1000,
            pad: vec![0, 0, 5, 130, 0, 999, 64, 1],
            bias: true,
            norms: false,
        },
        Case {
            batch: 2,
            heads: h(16, 8, 64),
            cap: 300,
            len: 260,
            pad: vec![3, 0],
            bias: false,
            norms: true,
        },
        // Groups of 16, all the tensor-core kernel's rows, over keys that end mid-tile.
        Case {
            batch: 2,
            heads: h(32, 2, 64),
            cap: 160,
            len: 150,
            pad: vec![0, 77],
            bias: true,
            norms: true,
        },
    ]
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn fused_decode_kernels_match_the_reference_in_f32() {
    for case in cases() {
        run(&case, DType::F32, 1e-5, false);
        run(&case, DType::F32, 1e-5, true);
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn fused_decode_kernels_match_the_reference_in_half_precision() {
    for case in cases() {
        run(&case, DType::BF16, 2e-2, false);
        run(&case, DType::F16, 3e-3, true);
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
        // A prefill's rows, more packs than one block row of the wide kernel's grid.
        (1026, 1024, DType::BF16, 1e-2),
    ] {
        let x = values(rows * 2 * inter, 9);
        let xt = Tensor::from_vec(x, (rows, 1, 2 * inter), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let x = f32s(&xt);
        let got = f32s(&kernels::silu_mul(&xt, inter, false).unwrap());
        // The wide kernel (or, 300 not a multiple of 8, the one it falls back to): the
        // same bits.
        let wide = f32s(&kernels::silu_mul(&xt, inter, true).unwrap());
        assert_eq!(
            bits(&wide),
            bits(&got),
            "silu_mul wide {dtype:?} {rows}×{inter}"
        );
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

/// `x Wᵀ (+ bias)` in f32 on the host, for `x [m, k]` and `w [n, k]`: what the few-row
/// products compute.
fn product_reference(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Vec<f32> {
    let ((m, k), (n, _)) = (x.dims2().unwrap(), w.dims2().unwrap());
    let (xs, ws) = (f32s(x), f32s(w));
    let bs = bias.map(f32s);
    (0..m * n)
        .map(|i| {
            let (r, c) = (i / n, i % n);
            let dot: f32 = (0..k).map(|j| xs[r * k + j] * ws[c * k + j]).sum();
            dot + bs.as_ref().map_or(0.0, |b| b[c])
        })
        .collect()
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
                // The weight first: gemv requests it before waiting for the kernel ahead
                // of it (kernels::gemv), which must not be the one that writes it.
                let w = t(values(n * k, 12), &[n, k]);
                let x = t(values(m * k, 11), &[m, k]);
                let b = with_bias.then(|| t(values(n, 13), &[n]));
                let got = f32s(&kernels::gemv(&x, &w, b.as_ref()).unwrap());
                let want = product_reference(&x, &w, b.as_ref());
                let e = max_rel_err(&got, &want);
                println!("gemv {dtype:?} m={m} k={k} n={n} bias={with_bias}: {e:.2e}");
                assert!(e < tol, "gemv {dtype:?} m={m} k={k} n={n}: {e}");
            }
        }
    }
}

/// `[start, end)` ranges of segments of the given lengths, one after the other.
fn segments_of(lengths: &[usize]) -> Vec<(usize, usize)> {
    let mut start = 0;
    lengths
        .iter()
        .map(|&l| {
            start += l;
            (start - l, start)
        })
        .collect()
}

/// Qwen2.5-VL's windows over a 1024×768 photo (1036×756 after smart_resize: 37×27 merge
/// units, windows of 4×4 units): per row of windows nine of 64 patches and one of 16, the
/// last row 48 and 12; 3996 patches in all.
fn qwen25_window_lengths() -> Vec<usize> {
    let mut l = Vec::new();
    for _ in 0..6 {
        l.extend([64; 9]);
        l.push(16);
    }
    l.extend([48; 9]);
    l.push(12);
    l
}

fn run_vision(heads: usize, d: usize, lengths: &[usize], dtype: DType, tol: f32) {
    let dev = Device::new_cuda(0).expect("a CUDA device");
    let ranges = segments_of(lengths);
    let n: usize = lengths.iter().sum();
    let width = 3 * heads * d;
    let t = |v: Vec<f32>, shape: &[usize], dt: DType| {
        Tensor::from_vec(v, shape, &dev)
            .unwrap()
            .to_dtype(dt)
            .unwrap()
    };
    let qkv = t(values(n * width, 21), &[n, width], dtype);
    let bias = t(values(width, 22), &[width], dtype);
    // Rotary angles that differ between the halves of a row, as Qwen's 2-D rotary does.
    let angles: Vec<f32> = values(n * d, 23).iter().map(|a| 4.0 * a).collect();
    let cos = t(
        angles.iter().map(|a| a.cos()).collect(),
        &[n, d],
        DType::F32,
    );
    let sin = t(
        angles.iter().map(|a| a.sin()).collect(),
        &[n, d],
        DType::F32,
    );
    let scale = (d as f32).powf(-0.5);
    let (q, k, v) = kernels::vision_qkv(&qkv, Some(&bias), &cos, &sin, heads, scale).unwrap();

    // The reference, from the same rounded inputs, rounding where the unfused path stores.
    let round = |v: Vec<f32>| -> Vec<f32> { f32s(&t(v, &[n * d], dtype).flatten_all().unwrap()) };
    let (x, b, c, s) = (f32s(&qkv), f32s(&bias), f32s(&cos), f32s(&sin));
    let half = d / 2;
    let mut want = [
        vec![0f32; n * heads * d],
        vec![0f32; n * heads * d],
        vec![0f32; n * heads * d],
    ];
    for r in 0..n {
        for (which, w) in want.iter_mut().enumerate() {
            for h in 0..heads {
                let off = which * heads * d + h * d;
                let xs: Vec<f32> = (0..d)
                    .map(|i| x[r * width + off + i] + b[off + i])
                    .collect();
                for i in 0..d {
                    let y = if which == 2 {
                        xs[i]
                    } else if i < half {
                        xs[i] * c[r * d + i] - xs[i + half] * s[r * d + i]
                    } else {
                        xs[i] * c[r * d + i] + xs[i - half] * s[r * d + i]
                    };
                    w[(h * n + r) * d + i] = y;
                }
            }
        }
    }
    let rounded: Vec<Vec<f32>> = want
        .into_iter()
        .map(|w| {
            w.chunks(n * d)
                .flat_map(|c| round(c.to_vec()))
                .collect::<Vec<f32>>()
        })
        .collect();
    let want_q = rounded[0]
        .chunks(n * d)
        .flat_map(|c| round(c.iter().map(|v| v * scale).collect()))
        .collect::<Vec<f32>>();
    let what = format!("{dtype:?} heads={heads} d={d} n={n}");
    let (eq, ek, ev) = (
        max_rel_err(&f32s(&q), &want_q),
        max_rel_err(&f32s(&k), &rounded[1]),
        max_rel_err(&f32s(&v), &rounded[2]),
    );
    println!("vision_qkv {what}: q {eq:.2e}, k {ek:.2e}, v {ev:.2e}");
    assert!(
        eq < tol && ek < tol && ev < tol,
        "vision_qkv {what}: {eq} {ek} {ev} (tolerance {tol})"
    );

    let segments = kernels::Segments::new(&ranges, &dev).unwrap();
    assert!(
        segments.fit_kernel(d),
        "{what}: the segments should fit the kernel"
    );
    let got = f32s(&kernels::segment_attention(&q, &k, &v, &segments).unwrap());
    let want_out = segment_reference(&f32s(&q), &f32s(&k), &f32s(&v), heads, n, d, &ranges);
    let eo = max_rel_err(&got, &want_out);
    println!(
        "segment_attention {what}, {} segments: {eo:.2e}",
        ranges.len()
    );
    assert!(eo < tol, "segment_attention {what}: {eo} (tolerance {tol})");
    if kernels::flash_applies(&RuntimeOptions::default(), &dev, dtype, d) {
        let got = f32s(&kernels::segment_flash_attention(&q, &k, &v, &segments).unwrap());
        let ef = max_rel_err(&got, &want_out);
        println!("segment_flash_attention {what}: {ef:.2e}");
        assert!(
            ef < tol,
            "segment_flash_attention {what}: {ef} (tolerance {tol})"
        );
    }
}

/// Softmax attention within `ranges` of q (scaled), k, v `[heads, n, d]`, in f32:
/// `[n, heads, d]`.
fn segment_reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: usize,
    n: usize,
    d: usize,
    ranges: &[(usize, usize)],
) -> Vec<f32> {
    let mut out = vec![0f32; n * heads * d];
    for &(start, end) in ranges {
        for h in 0..heads {
            let row = |t: &[f32], r: usize| -> Vec<f32> {
                t[(h * n + r) * d..(h * n + r + 1) * d].to_vec()
            };
            for i in start..end {
                let qi = row(q, i);
                let scores: Vec<f32> = (start..end)
                    .map(|j| row(k, j).iter().zip(&qi).map(|(a, b)| a * b).sum())
                    .collect();
                let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|x| (x - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for (w, j) in e.iter().zip(start..end) {
                    for c in 0..d {
                        out[(i * heads + h) * d + c] += w / z * v[(h * n + j) * d + c];
                    }
                }
            }
        }
    }
    out
}

/// The flash kernel over whole images (segments longer than a block's 64 rows and
/// not multiples of it), at the head sizes of Qwen2/2.5-VL (80) and Qwen3-VL (72).
fn run_segment_flash(heads: usize, d: usize, lengths: &[usize], dtype: DType, tol: f32) {
    let dev = Device::new_cuda(0).expect("a CUDA device");
    let n: usize = lengths.iter().sum();
    let ranges = segments_of(lengths);
    let t = |seed: u64, scale: f32| {
        let v: Vec<f32> = values(heads * n * d, seed)
            .iter()
            .map(|x| x * scale)
            .collect();
        Tensor::from_vec(v, (heads, n, d), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    // Scores of a few units: softmax rows that are neither flat nor one-hot.
    let (q, k, v) = (t(31, 0.6), t(32, 0.6), t(33, 1.0));
    let want = segment_reference(&f32s(&q), &f32s(&k), &f32s(&v), heads, n, d, &ranges);
    let segments = kernels::Segments::new(&ranges, &dev).unwrap();
    let got = f32s(&kernels::segment_flash_attention(&q, &k, &v, &segments).unwrap());
    let e = max_rel_err(&got, &want);
    println!("segment_flash_attention {dtype:?} heads={heads} d={d} lengths={lengths:?}: {e:.2e}");
    assert!(
        e < tol,
        "segment_flash_attention {dtype:?} d={d} {lengths:?}: {e} (tolerance {tol})"
    );
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn segment_flash_attention_matches_the_reference() {
    let dev = Device::new_cuda(0).expect("a CUDA device");
    for (dtype, tol) in [(DType::BF16, 2e-2), (DType::F16, 3e-3)] {
        if !kernels::flash_applies(&RuntimeOptions::default(), &dev, dtype, 80) {
            common::skip("flash attention is not built for this card (build.sh's CUDA targets)");
            return;
        }
        // A whole 1024×768 photo (3996 patches) next to a small one, and odd lengths.
        run_segment_flash(2, 80, &[3996, 130], dtype, tol);
        run_segment_flash(3, 72, &[1, 64, 65, 200], dtype, tol);
        run_segment_flash(2, 16, &[7, 129], dtype, tol);
        run_segment_flash(2, 64, &[1000, 17], dtype, tol);
        run_segment_flash(1, 128, &[300], dtype, tol);
    }
}

/// One prefill through [`kernels::prefill_flash_attention`] against an f32 reference: `b`
/// sequences of `l` queries after `offset` cached positions, padding `pad`, GQA `heads` over
/// `kv_heads`, K/V read as views of a cache with room for `cap` positions.
#[allow(clippy::too_many_arguments)]
fn run_prefill_flash(
    b: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
    l: usize,
    offset: usize,
    pad: &[u32],
    dtype: DType,
    tol: f32,
) {
    let dev = Device::new_cuda(0).expect("a CUDA device");
    let kv_len = offset + l;
    let cap = kv_len + 24;
    let q_vals: Vec<f32> = values(b * heads * l * d, 41)
        .iter()
        .map(|x| x * 0.6)
        .collect();
    let q = Tensor::from_vec(q_vals, (b, heads, l, d), &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let cache = |seed: u64, scale: f32| {
        let v: Vec<f32> = values(b * kv_heads * cap * d, seed)
            .iter()
            .map(|x| x * scale)
            .collect();
        Tensor::from_vec(v, (b, kv_heads, cap, d), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    let (kc, vc) = (cache(42, 0.6), cache(43, 1.0));
    let (k, v) = (
        kc.narrow(2, 0, kv_len).unwrap(),
        vc.narrow(2, 0, kv_len).unwrap(),
    );
    let pad_t = pad
        .iter()
        .any(|&p| p > 0)
        .then(|| Tensor::new(pad, &dev).unwrap());
    let got = f32s(&kernels::prefill_flash_attention(&q, &k, &v, pad_t.as_ref()).unwrap());

    let (qs, ks, vs) = (f32s(&q), f32s(&kc), f32s(&vc));
    let rep = heads / kv_heads;
    let mut want = vec![0f32; b * l * heads * d];
    let mut visible_rows = 0;
    for s in 0..b {
        for h in 0..heads {
            let hk = h / rep;
            for i in 0..l {
                let lo = pad[s] as usize;
                let hi = offset + i; // inclusive
                if lo > hi {
                    continue; // a padding query sees nothing: zeros
                }
                visible_rows += 1;
                let qi = &qs[((s * heads + h) * l + i) * d..][..d];
                let key = |t: &[f32], j: usize| -> Vec<f32> {
                    t[((s * kv_heads + hk) * cap + j) * d..][..d].to_vec()
                };
                let scores: Vec<f32> = (lo..=hi)
                    .map(|j| key(&ks, j).iter().zip(qi).map(|(a, b)| a * b).sum())
                    .collect();
                let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|x| (x - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for (w, j) in e.iter().zip(lo..=hi) {
                    let vj = key(&vs, j);
                    for c in 0..d {
                        want[((s * l + i) * heads + h) * d + c] += w / z * vj[c];
                    }
                }
            }
        }
    }
    assert!(visible_rows > 0);
    let e = max_rel_err(&got, &want);
    let what =
        format!("{dtype:?} b={b} heads={heads}/{kv_heads} d={d} l={l} offset={offset} pad={pad:?}");
    println!("prefill_flash_attention {what}: {e:.2e}");
    assert!(
        e < tol,
        "prefill_flash_attention {what}: {e} (tolerance {tol})"
    );
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn prefill_flash_attention_matches_the_reference() {
    let dev = Device::new_cuda(0).expect("a CUDA device");
    for (dtype, tol) in [(DType::BF16, 2e-2), (DType::F16, 3e-3)] {
        if !kernels::flash_applies(&RuntimeOptions::default(), &dev, dtype, 128) {
            common::skip("flash attention is not built for this card (build.sh's CUDA targets)");
            return;
        }
        // Qwen2.5-VL-7B's 28 query heads over 4 kv heads, one sequence of 150 tokens.
        run_prefill_flash(1, 28, 4, 128, 150, 0, &[0], dtype, tol);
        // A padded batch after cached positions (a second turn); a pad longer than a tile.
        run_prefill_flash(3, 4, 2, 128, 100, 5, &[0, 7, 70], dtype, tol);
        // The tiny fixtures' head size.
        run_prefill_flash(2, 4, 2, 16, 33, 0, &[3, 0], dtype, tol);
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn vision_kernels_match_the_reference() {
    let windows = qwen25_window_lengths();
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 2e-2), (DType::F16, 3e-3)] {
        // Qwen2.5-VL-7B's vision attention (16 heads of 80) over its windows.
        run_vision(16, 80, &windows, dtype, tol);
        // The tiny fixtures' head size, a one-patch segment, lengths that are not multiples
        // of a warp, one longer than the kernel's 64 patches of the real windows.
        run_vision(2, 16, &[1, 33, 200, 5, 64], dtype, tol);
    }
    // A whole image of 3996 patches does not fit; the matmul path takes it.
    let dev = Device::new_cuda(0).expect("a CUDA device");
    assert!(!kernels::Segments::new(&[(0, 3996)], &dev)
        .unwrap()
        .fit_kernel(80));
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn add_bias_matches_the_reference() {
    let dev = Device::new_cuda(0).expect("a CUDA device");
    // The vision MLP's [3996, 3420], a decode row, and more rows than a grid's 65,535;
    // the prefill's q/k/v of Qwen2.5-VL-7B (the wide kernel's shape; 3420 and 3 fall back).
    for (rows, n) in [(3996, 3420), (1, 4608), (70_000, 3), (1026, 4608)] {
        for (dtype, tol) in [(DType::F32, 1e-6), (DType::BF16, 1e-2), (DType::F16, 2e-3)] {
            let x = Tensor::from_vec(values(rows * n, 31), (rows, n), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let b = Tensor::from_vec(values(n, 32), n, &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let got = f32s(&kernels::add_bias(&x, &b, false).unwrap());
            let wide = f32s(&kernels::add_bias(&x, &b, true).unwrap());
            assert_eq!(
                bits(&wide),
                bits(&got),
                "add_bias wide {dtype:?} {rows}×{n}"
            );
            let (xs, bs) = (f32s(&x), f32s(&b));
            let want: Vec<f32> = (0..rows * n).map(|i| xs[i] + bs[i % n]).collect();
            let e = max_rel_err(&got, &want);
            println!("add_bias {dtype:?} {rows}×{n}: {e:.2e}");
            assert!(e < tol, "add_bias {dtype:?} {rows}×{n}: {e}");
        }
    }
}

/// The wide kernels' 16-byte accesses need 16-byte aligned rows: a tensor that starts
/// one value into its buffer takes the one-value-a-thread kernels, with the same values.
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn wide_kernels_fall_back_where_rows_are_not_aligned() {
    let dev = Device::new_cuda(0).expect("a CUDA device");
    let (rows, n) = (9, 64);
    let at_one = |seed, len: usize, shape: (usize, usize)| {
        Tensor::from_vec(values(len + 1, seed), len + 1, &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap()
            .narrow(0, 1, len)
            .unwrap()
            .reshape(shape)
            .unwrap()
    };
    let x = at_one(61, rows * 2 * n, (rows, 2 * n));
    assert_eq!(x.layout().start_offset(), 1);
    let b = at_one(62, 2 * n, (1, 2 * n)).flatten_all().unwrap();
    let (gx, ux) = (
        f32s(&x.narrow(1, 0, n).unwrap()),
        f32s(&x.narrow(1, n, n).unwrap()),
    );
    let (xs, bs) = (f32s(&x), f32s(&b));
    let got = f32s(&kernels::add_bias(&x, &b, true).unwrap());
    assert_eq!(
        bits(&got),
        bits(&f32s(&kernels::add_bias(&x, &b, false).unwrap()))
    );
    let want: Vec<f32> = (0..rows * 2 * n).map(|i| xs[i] + bs[i % (2 * n)]).collect();
    assert!(max_rel_err(&got, &want) < 1e-2);
    let got = f32s(&kernels::silu_mul(&x, n, true).unwrap());
    assert_eq!(
        bits(&got),
        bits(&f32s(&kernels::silu_mul(&x, n, false).unwrap()))
    );
    let want: Vec<f32> = (0..rows * n)
        .map(|i| gx[i] / (1.0 + (-gx[i]).exp()) * ux[i])
        .collect();
    assert!(max_rel_err(&got, &want) < 1e-2);
    let (g, u) = (
        at_one(63, rows * n, (rows, n)),
        at_one(64, rows * n, (rows, n)),
    );
    let got = f32s(&kernels::gated_silu(&g, &u, None, None, true).unwrap());
    assert_eq!(
        bits(&got),
        bits(&f32s(
            &kernels::gated_silu(&g, &u, None, None, false).unwrap()
        ))
    );
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn softmax_with_the_causal_mask_matches_the_additive_mask() {
    let dev = Device::new_cuda(0).expect("a CUDA device");
    // (batch, heads, queries, keys, padding): a prompt, a padded batch, a decode step over
    // a cache, and rows of the vision tower's length without a mask.
    for (b, h, q, kv, pad) in [
        (1, 4, 37, 37, vec![0u32]),
        (3, 2, 20, 20, vec![0, 5, 19]),
        (2, 3, 1, 300, vec![0, 120]),
        (1, 2, 7, 3996, vec![0]),
    ] {
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2), (DType::F16, 2e-3)] {
            let x = Tensor::from_vec(
                values(b * h * q * kv, 41).iter().map(|v| 8.0 * v).collect(),
                (b, h, q, kv),
                &dev,
            )
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
            let xs = f32s(&x);
            let pad_t = Tensor::new(pad.clone(), &dev).unwrap();
            let mask = kernels::CausalMask { pad: Some(&pad_t) };
            let masked = f32s(&kernels::softmax(&x, Some(&mask)).unwrap());
            let plain = f32s(&kernels::softmax(&x, None).unwrap());
            let (mut want_masked, mut want_plain) = (Vec::new(), Vec::new());
            for (r, row) in xs.chunks(kv).enumerate() {
                let (bi, j) = (r / (h * q), r % q);
                let soft = |s: Vec<f32>| {
                    let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f32 = e.iter().sum();
                    e.into_iter().map(|x| x / z).collect::<Vec<f32>>()
                };
                let add: Vec<f32> = (0..kv)
                    .map(|k| {
                        let hidden = k < pad[bi] as usize || k > kv - q + j;
                        row[k] + if hidden { -3.0e4 } else { 0.0 }
                    })
                    .collect();
                want_masked.extend(soft(add));
                want_plain.extend(soft(row.to_vec()));
            }
            // Rows of padding queries see no key: any finite distribution will do there.
            let real = |v: &[f32]| -> Vec<f32> {
                v.chunks(kv)
                    .enumerate()
                    .filter(|(r, _)| (r % q) + kv - q >= pad[r / (h * q)] as usize)
                    .flat_map(|(_, c)| c.to_vec())
                    .collect()
            };
            let what = format!("{dtype:?} b={b} h={h} q={q} kv={kv} pad={pad:?}");
            let em = max_rel_err(&real(&masked), &real(&want_masked));
            let ep = max_rel_err(&plain, &want_plain);
            println!("softmax {what}: masked {em:.2e}, plain {ep:.2e}");
            assert!(masked.iter().all(|v| v.is_finite()), "{what}: not finite");
            assert!(em < tol && ep < tol, "softmax {what}: {em} {ep}");
        }
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn gated_silu_matches_the_reference() {
    let dev = Device::new_cuda(0).expect("a CUDA device");
    // Qwen2.5-VL's vision MLP (padded to 3424), and a shape without biases.
    for (rows, n, biased) in [(3996, 3424, true), (7, 40, false)] {
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2), (DType::F16, 2e-3)] {
            let t = |seed, shape: &[usize]| {
                Tensor::from_vec(values(shape.iter().product(), seed), shape, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let (g, u) = (t(51, &[rows, n]), t(52, &[rows, n]));
            let (gb, ub) = (t(53, &[n]), t(54, &[n]));
            let (gb, ub) = if biased {
                (Some(&gb), Some(&ub))
            } else {
                (None, None)
            };
            let got = f32s(&kernels::gated_silu(&g, &u, gb, ub, false).unwrap());
            let wide = f32s(&kernels::gated_silu(&g, &u, gb, ub, true).unwrap());
            assert_eq!(
                bits(&wide),
                bits(&got),
                "gated_silu wide {dtype:?} {rows}×{n}"
            );
            let (gs, us) = (f32s(&g), f32s(&u));
            let (gbs, ubs) = (gb.map(f32s), ub.map(f32s));
            let want: Vec<f32> = (0..rows * n)
                .map(|i| {
                    let x = gs[i] + gbs.as_ref().map_or(0.0, |b| b[i % n]);
                    x / (1.0 + (-x).exp()) * (us[i] + ubs.as_ref().map_or(0.0, |b| b[i % n]))
                })
                .collect();
            let e = max_rel_err(&got, &want);
            println!("gated_silu {dtype:?} {rows}×{n}: {e:.2e}");
            assert!(e < tol, "gated_silu {dtype:?} {rows}×{n}: {e}");
        }
    }
}

/// A quantized weight dequantized on the GPU a slice of rows at a time (candle's kernels
/// launched at an offset into its blocks) gives the product the CPU gives from the whole
/// weight: every block type our quantization writes, each activation dtype, slices that
/// leave a short last one.
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn dequantized_slices_match_the_whole_weight_on_the_cpu() {
    use candle_core::quantized::{GgmlDType, QTensor};
    use kernels::dequant_slices::{dequantize_rows, dequantized_matmul};
    let dev = Device::new_cuda(0).expect("a CUDA device");
    let (n, k, rows) = (300, 768, 7);
    let w = Tensor::from_vec(values(n * k, 31), (n, k), &Device::Cpu).unwrap();
    let x = Tensor::from_vec(values(rows * k, 32), (rows, k), &Device::Cpu).unwrap();
    for block in [
        GgmlDType::Q8_0,
        GgmlDType::Q4_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ] {
        let cpu = QTensor::quantize(&w, block).unwrap();
        let gpu = QTensor::quantize_onto(&w, block, &dev).unwrap();
        let want_w = f32s(&cpu.dequantize(&Device::Cpu).unwrap());
        // A middle slice of rows, in each dtype the dequantizer writes.
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let got = f32s(&dequantize_rows(&gpu, 37, 101, dtype, &dev).unwrap());
            let want = &want_w[37 * k..138 * k];
            let e = max_rel_err(&got, want);
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-2 };
            assert!(e < tol, "{block:?} rows 37..138 in {dtype:?}: {e}");
        }
        let want = f32s(
            &x.matmul(&cpu.dequantize(&Device::Cpu).unwrap().t().unwrap())
                .unwrap(),
        );
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 2e-2), (DType::F16, 5e-3)] {
            let xg = x.to_device(&dev).unwrap().to_dtype(dtype).unwrap();
            for slice in [usize::MAX, 64 * k, 7 * k] {
                let got = f32s(&dequantized_matmul(&xg, &gpu, slice).unwrap());
                let e = max_rel_err(&got, &want);
                println!("dequantized slices {block:?} {dtype:?} slice {slice}: {e:.2e}");
                assert!(e < tol, "{block:?} {dtype:?} slices of {slice} values: {e}");
            }
        }
    }
}

/// The residual add and RMSNorm in one launch give candle's add and norm bit for bit
/// (a decode step's tokens must not move): each dtype, hidden sizes on both sides of the
/// norm's 1,024-value block switch, several rows, with and without the add. The prompt's
/// launch (`add_rms_norm_prompt`, `prefill_kernels`) too, on the same shapes and a
/// prefill's many rows: 1,024 to 4,096 values take 256 threads standing in for candle's
/// 1,024 (the 7B decoder's 3,584, Qwen2.5-VL's vision blocks' 1,280, both ends of the
/// range), 5,120 and rows under 1,024 the decode step's kernel.
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn add_rms_norm_gives_candles_add_and_norm_exactly() {
    let dev = Device::new_cuda(0).expect("a CUDA device");
    // 5,120: wider than the registers hold (4 columns a thread), through the loop.
    let shapes = [(1, 2048), (3, 3584), (2, 896), (5, 64), (1, 5120)];
    let prompts = [
        (300, 3584),
        (1030, 1280),
        (64, 1024),
        (70, 4096),
        (65, 5120),
    ];
    for (rows, n) in shapes.into_iter().chain(prompts) {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let t = |seed, len, shape: (usize, usize, usize)| {
                Tensor::from_vec(values(len, seed), shape, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let x = (t(41, rows * n, (rows, 1, n)) * 4.0).unwrap();
            let delta = t(42, rows * n, (rows, 1, n));
            let w = t(43, n, (1, 1, n)).flatten_all().unwrap();
            let norm = HeadNorm {
                weight: &w,
                eps: 1e-6,
            };
            let (sum, normed, q8) = kernels::add_rms_norm(&x, Some(&delta), norm, false).unwrap();
            assert!(q8.is_none());
            let want_sum = (&x + &delta).unwrap();
            let want = candle_nn::ops::rms_norm(&want_sum, &w, 1e-6).unwrap();
            assert_eq!(f32s(&sum), f32s(&want_sum), "sum {dtype:?} {rows}×{n}");
            assert_eq!(f32s(&normed), f32s(&want), "norm {dtype:?} {rows}×{n}");
            let (prompt_sum, prompt_normed) =
                kernels::add_rms_norm_prompt(&x, Some(&delta), norm).unwrap();
            assert_eq!(bits(&f32s(&prompt_sum)), bits(&f32s(&want_sum)));
            assert_eq!(
                bits(&f32s(&prompt_normed)),
                bits(&f32s(&want)),
                "prompt norm {dtype:?} {rows}×{n}"
            );
            let (same, normed, _) = kernels::add_rms_norm(&x, None, norm, false).unwrap();
            let want = candle_nn::ops::rms_norm(&x, &w, 1e-6).unwrap();
            assert_eq!(f32s(&same), f32s(&x));
            assert_eq!(
                f32s(&normed),
                f32s(&want),
                "norm alone {dtype:?} {rows}×{n}"
            );
            let (_, normed) = kernels::add_rms_norm_prompt(&x, None, norm).unwrap();
            assert_eq!(
                bits(&f32s(&normed)),
                bits(&f32s(&want)),
                "prompt norm alone {dtype:?} {rows}×{n}"
            );
        }
    }
}

/// A prompt's q/k/v in one launch give what the unfused prefill's candle ops give, bit for
/// bit: the bias kernel, the per-head norms (candle's rmsnorm on contiguous heads), candle's
/// rope on `[b, heads, l, d]`, the cache append. Heads of 128 (every real decoder), 64 and
/// 16 (the tiny models': RoPE partners in other lanes), with and without bias and norms,
/// into caches that already hold positions (a second prompt chunk) and have room after.
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn prefill_qkv_gives_the_unfused_bits() {
    let dev = Device::new_cuda(0).expect("a CUDA device");
    // (b, l, nq, nkv, d, bias, norms, cached positions before, capacity)
    let cases = [
        (2, 37, 7, 1, 128, true, false, 0, 50),
        (1, 300, 4, 2, 128, false, true, 5, 320),
        (3, 9, 4, 4, 64, true, true, 0, 9),
        (2, 11, 4, 2, 16, true, false, 2, 20),
    ];
    for (b, l, nq, nkv, d, biased, normed, before, cap) in cases {
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            let t = |seed, shape: &[usize]| {
                Tensor::from_vec(values(shape.iter().product(), seed), shape, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let width = (nq + 2 * nkv) * d;
            let qkv = (t(71, &[b, l, width]) * 3.0).unwrap();
            let bias = t(72, &[width]);
            let bias = biased.then_some(&bias);
            let (cos, sin) = (t(73, &[b, l, d / 2]), t(74, &[b, l, d / 2]));
            let (qw, kw) = (t(75, &[d]), t(76, &[d]));
            let norm = |w| HeadNorm {
                weight: w,
                eps: 1e-6,
            };
            let (q_norm, k_norm) = if normed {
                (Some(norm(&qw)), Some(norm(&kw)))
            } else {
                (None, None)
            };
            let old = t(77, &[b, nkv, cap, d]);
            let caches = || (old.copy().unwrap(), old.copy().unwrap());
            // The unfused prefill (decoder/attention.rs, prompt_qkv).
            let (want_k, want_v) = caches();
            let y = match bias {
                Some(bias) => kernels::add_bias(&qkv, bias, false).unwrap(),
                None => qkv.clone(),
            };
            let y = y.reshape((b, l, nq + 2 * nkv, d)).unwrap();
            let (mut q, mut k) = (y.narrow(2, 0, nq).unwrap(), y.narrow(2, nq, nkv).unwrap());
            let v = y.narrow(2, nq + nkv, nkv).unwrap();
            if normed {
                let rms = |x: &Tensor, w: &Tensor| {
                    candle_nn::ops::rms_norm(&x.contiguous().unwrap(), w, 1e-6).unwrap()
                };
                (q, k) = (rms(&q, &qw), rms(&k, &kw));
            }
            let rope = |x: &Tensor| {
                let x = x.transpose(1, 2).unwrap().contiguous().unwrap();
                candle_nn::rotary_emb::rope(&x, &cos, &sin).unwrap()
            };
            let (want_q, k) = (rope(&q), rope(&k));
            let v = v.transpose(1, 2).unwrap().contiguous().unwrap();
            want_k.slice_set(&k, 2, before).unwrap();
            want_v.slice_set(&v, 2, before).unwrap();
            // The kernel.
            let (got_k, got_v) = caches();
            let heads = Heads {
                q: nq,
                kv: nkv,
                dim: d,
            };
            let got_q = kernels::prefill_qkv(
                &qkv, bias, &cos, &sin, q_norm, k_norm, &heads, &got_k, &got_v, before,
            )
            .unwrap();
            let what =
                format!("{dtype:?} b {b} l {l} heads {nq}/{nkv}×{d} bias {biased} norms {normed}");
            assert_eq!(got_q.dims(), &[b, nq, l, d], "{what}");
            assert_eq!(bits(&f32s(&got_q)), bits(&f32s(&want_q)), "q {what}");
            assert_eq!(bits(&f32s(&got_k)), bits(&f32s(&want_k)), "k cache {what}");
            assert_eq!(bits(&f32s(&got_v)), bits(&f32s(&want_v)), "v cache {what}");
        }
    }
}

/// A quantized projection fed the Q8_1 blocks the norm or the MLP product wrote gives the
/// bits it gives when it quantizes its input itself: each activation dtype, a k that
/// candle pads (1,280 → 1,536), one row and several.
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn q8_inputs_give_the_projection_its_own_quantization() {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::Module;
    use vlm_models::layers::Linear;
    let dev = Device::new_cuda(0).expect("a CUDA device");
    let runtime = RuntimeOptions::default();
    let (n, k) = (384, 1280);
    let wf = Tensor::from_vec(values(n * k, 51), (n, k), &Device::Cpu).unwrap();
    let up = Tensor::from_vec(values(2 * k * k, 52), (2 * k, k), &Device::Cpu).unwrap();
    for block in [GgmlDType::Q4K, GgmlDType::Q8_0] {
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            let linear = |w: &Tensor| {
                let q = QTensor::quantize_onto(w, block, &dev).unwrap();
                Linear::quantized(QMatMul::from_qtensor(q).unwrap(), dtype, None, runtime).unwrap()
            };
            let (proj, gate_up) = (linear(&wf), linear(&up));
            if !proj.takes_q8() {
                // candle's quantized kernels do not run on this card (a build for another
                // one): the layers dequantize and no blocks are handed over.
                assert!(proj.dequantizes(), "{block:?} {dtype:?}: neither path");
                println!("q8 inputs: {block:?} {dtype:?} dequantizes here, skipped");
                continue;
            }
            for rows in [1, 3] {
                let x = Tensor::from_vec(values(rows * k, 53), (rows, 1, k), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let w = Tensor::from_vec(values(k, 54), k, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let norm = HeadNorm {
                    weight: &w,
                    eps: 1e-6,
                };
                let (_, normed, q8) = kernels::add_rms_norm(&x, None, norm, true).unwrap();
                let q8 = q8.expect("blocks for at most 8 rows");
                let got = f32s(&proj.forward_q8(&normed, Some(&q8)).unwrap());
                let want = f32s(&proj.forward_q8(&normed, None).unwrap());
                assert_eq!(got, want, "norm's blocks {block:?} {dtype:?} rows {rows}");
                // The MLP's product: gate_up [rows, 1, 2k] → silu·up [rows, 1, k], which
                // `proj` reads as a down projection.
                let g = gate_up.forward(&normed).unwrap();
                let (act, q8) = kernels::silu_mul_q8(&g, k).unwrap();
                let q8 = q8.expect("blocks for at most 8 rows");
                assert_eq!(f32s(&act), f32s(&kernels::silu_mul(&g, k, false).unwrap()));
                let got = f32s(&proj.forward_q8(&act, Some(&q8)).unwrap());
                let want = f32s(&proj.forward_q8(&act, None).unwrap());
                assert_eq!(
                    got, want,
                    "product's blocks {block:?} {dtype:?} rows {rows}"
                );
            }
        }
    }
}

/// The largest error of `got` against `want` in units of one bf16 rounding of `want`
/// (2⁻⁸ relative, plus slack near zero): at most 1 for values rounded once.
fn bf16_rounding(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / (w.abs() * 2f32.powi(-8) + 1e-6))
        .fold(0f32, f32::max)
}

/// Weights dequantized straight to bf16 (dequant.cu) hold the CPU's f32 values rounded
/// once: every element within a bf16 step (2⁻⁸ relative, plus slack near zero), for every
/// block type with such a kernel, the whole weight and a slice at an offset.
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn bf16_dequantization_rounds_the_cpu_values_once() {
    use candle_core::quantized::{GgmlDType, QTensor};
    use kernels::dequant_slices::dequantize_rows_bf16;
    let dev = Device::new_cuda(0).expect("a CUDA device");
    let (n, k) = (96, 512);
    let w = (Tensor::from_vec(values(n * k, 61), (n, k), &Device::Cpu).unwrap() * 3.0).unwrap();
    for block in [
        GgmlDType::Q8_0,
        GgmlDType::Q4_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ] {
        let cpu = QTensor::quantize(&w, block).unwrap();
        let gpu = QTensor::quantize_onto(&w, block, &dev).unwrap();
        let want = f32s(&cpu.dequantize(&Device::Cpu).unwrap());
        for (first, count) in [(0, n), (17, 40)] {
            let got = dequantize_rows_bf16(&gpu, first, count, &dev)
                .unwrap()
                .expect("a bf16 kernel for this block type");
            assert_eq!(got.dtype(), DType::BF16);
            assert_eq!(got.dims(), &[count, k]);
            let worst = bf16_rounding(&f32s(&got), &want[first * k..(first + count) * k]);
            println!(
                "bf16 dequantization {block:?} rows {first}+{count}: worst {worst:.2} of the bound"
            );
            assert!(
                worst <= 1.0,
                "{block:?} rows {first}+{count}: {worst} of the bound"
            );
        }
    }
}

/// A quantized embedding lookup straight to bf16 (dequant.cu) gives the CPU's f32 rows
/// rounded once, in the order of the ids, repeats included; an id past the table gives
/// zeros instead of reading outside it.
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn bf16_lookup_gives_the_cpu_rows_rounded_once() {
    use candle_core::quantized::{GgmlDType, QTensor};
    use kernels::dequant_slices::lookup_rows_bf16;
    let dev = Device::new_cuda(0).expect("a CUDA device");
    let (n, k) = (96, 512);
    let w = (Tensor::from_vec(values(n * k, 67), (n, k), &Device::Cpu).unwrap() * 3.0).unwrap();
    let picked: Vec<u32> = vec![5, 95, 0, 5, 3, 17];
    let ids = Tensor::new(picked.as_slice(), &dev).unwrap();
    for block in [
        GgmlDType::Q8_0,
        GgmlDType::Q4_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ] {
        let cpu = QTensor::quantize(&w, block).unwrap();
        let gpu = QTensor::quantize_onto(&w, block, &dev).unwrap();
        let table = f32s(&cpu.dequantize(&Device::Cpu).unwrap());
        let got = lookup_rows_bf16(&gpu, &ids)
            .unwrap()
            .expect("a bf16 kernel for this block type");
        assert_eq!(got.dtype(), DType::BF16);
        assert_eq!(got.dims(), &[picked.len(), k]);
        let got = f32s(&got);
        let want: Vec<f32> = picked
            .iter()
            .flat_map(|&id| {
                table[id as usize * k..(id as usize + 1) * k]
                    .iter()
                    .copied()
            })
            .collect();
        let worst = bf16_rounding(&got, &want);
        println!("bf16 lookup {block:?}: worst {worst:.2} of the bound");
        assert!(worst <= 1.0, "{block:?}: {worst} of the bound");
        let outside = Tensor::new(&[n as u32, 3], &dev).unwrap();
        let rows = f32s(&lookup_rows_bf16(&gpu, &outside).unwrap().unwrap());
        assert!(
            rows[..k].iter().all(|v| *v == 0.0),
            "{block:?}: id {n} not zeros"
        );
        assert_eq!(
            &rows[k..],
            &got[4 * k..5 * k],
            "{block:?}: row 3 depends on its neighbour id"
        );
    }
}

/// The Q4_K and Q6_K matvecs of a decode step (quant_matvec.cu: a warp per output row) give what
/// candle's MMVQ gives from the same Q8_1 activations, up to the order of the f32 sums
/// (one rounding of the output dtype), and both what the host's f32 product of the
/// dequantized weight gives, up to the activations' 8 bits: each activation dtype, 1 to 8
/// rows, a row count that leaves warps idle, and k of 1, 5 (padded by candle to 6) and 14
/// super-blocks (a last step with half the lanes idle).
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn quantized_matvec_agrees_with_candles_mmvq() {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::Module;
    let dev = Device::new_cuda(0).expect("a CUDA device");
    let runtime = RuntimeOptions::default();
    let n = 100;
    for (block, k) in [GgmlDType::Q4K, GgmlDType::Q6K]
        .into_iter()
        .flat_map(|b| [256, 1280, 3584].map(|k| (b, k)))
    {
        let wf = Tensor::from_vec(values(n * k, 71), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize_onto(&wf, block, &dev).unwrap();
        let host = QTensor::quantize(&wf, block)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let candle =
            QMatMul::from_qtensor(QTensor::quantize_onto(&wf, block, &dev).unwrap()).unwrap();
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            for rows in [1, 3, 8] {
                let xf = Tensor::from_vec(values(rows * k, 72), (rows, k), &Device::Cpu).unwrap();
                let x = xf.to_dtype(dtype).unwrap().to_device(&dev).unwrap();
                let got = kernels::quant_matvec(&runtime, &x, &q)
                    .unwrap()
                    .expect("the decode matvec takes ≤ 8 rows");
                assert_eq!(got.dims(), &[rows, n]);
                assert_eq!(got.dtype(), dtype);
                let want = candle.forward(&x).unwrap();
                let (got, want) = (f32s(&got), f32s(&want));
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                let worst = got
                    .iter()
                    .zip(&want)
                    .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
                let ulp = match dtype {
                    DType::BF16 => 2f32.powi(-7),
                    DType::F16 => 2f32.powi(-9),
                    _ => 1e-4,
                };
                println!(
                    "{block:?} matvec k {k} {dtype:?} rows {rows}: worst {worst:.3e} of {scale:.3e}"
                );
                assert!(
                    worst <= ulp * scale,
                    "{block:?} k {k} {dtype:?} rows {rows}: {worst} against candle's MMVQ (scale {scale})"
                );
                let reference = f32s(&xf.matmul(&host.t().unwrap()).unwrap());
                let off = got
                    .iter()
                    .zip(&reference)
                    .fold(0f32, |m, (g, r)| m.max((g - r).abs()));
                assert!(
                    off <= 0.03 * scale,
                    "{block:?} k {k} {dtype:?} rows {rows}: {off} off the host's product"
                );
            }
        }
    }
}

/// Picks made ahead of the host (kernels::DevicePicks) are the device argmax's: each writes
/// its ids into the tensor the next step reads, and reaches the host in the order queued,
/// its non-finite rows flagged; a third pick before one is read is refused, as is a wait
/// with nothing queued.
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn picks_made_ahead_reach_the_host_in_order_and_feed_the_next_step() {
    let dev = Device::new_cuda(0).expect("a CUDA device");
    let runtime = RuntimeOptions::default();
    let (rows, vocab) = (3, 151_936);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let none_held = vlm_contract::sampling::HeldEnd {
            eos_ids: vec![],
            until: vec![0; rows],
        };
        let mut picks = kernels::DevicePicks::new(&runtime, &dev, dtype, (rows, vocab), &none_held)
            .unwrap()
            .expect("the fused kernels serve this dtype");
        let ids = Tensor::zeros(rows, DType::U32, &dev).unwrap();
        let logits: Vec<Tensor> = (0..3)
            .map(|k| {
                let mut x = values(rows * vocab, 80 + k);
                x[vocab + 1000 * k as usize] = 9.0;
                if k == 1 {
                    x[2 * vocab + 5] = f32::NAN;
                }
                Tensor::from_vec(x, (rows, vocab), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            })
            .collect();
        let want: Vec<_> = logits
            .iter()
            .map(|l| kernels::device_argmax(&runtime, l).unwrap())
            .collect();
        picks.queue(&logits[0], &ids).unwrap();
        picks.queue(&logits[1], &ids).unwrap();
        assert!(
            picks.queue(&logits[2], &ids).is_err(),
            "a third pick queued"
        );
        let first = picks.wait().unwrap();
        assert_eq!(
            (first.0, first.1),
            (want[0].ids.clone(), want[0].finite.clone())
        );
        // The ids tensor holds the last pick queued, for the next step to read.
        assert_eq!(ids.to_vec1::<u32>().unwrap(), want[1].ids, "{dtype:?}");
        picks.queue(&logits[2], &ids).unwrap();
        let second = picks.wait().unwrap();
        assert_eq!(second.0, want[1].ids, "{dtype:?}");
        assert_eq!(second.1, vec![true, true, false], "{dtype:?}: the NaN row");
        let third = picks.wait().unwrap();
        assert_eq!(third.0[1], 2000, "{dtype:?}");
        assert_eq!(
            (third.0, third.1),
            (want[2].ids.clone(), want[2].finite.clone())
        );
        assert!(picks.wait().is_err(), "a wait with nothing queued");
    }
}

/// Under min_new_tokens a pick made ahead leaves the end-of-sequence ids out of the rows
/// still held at its step, as the host's `Sampler::pick` does with them suppressed (the
/// first largest of the other ids), and counts them for the finite flag; rows no longer
/// held, or never, pick them.
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn picks_made_ahead_leave_the_end_out_while_held() {
    use vlm_contract::sampling::{argmax, HeldEnd};
    let dev = Device::new_cuda(0).expect("a CUDA device");
    let runtime = RuntimeOptions::default();
    let (rows, vocab) = (3, 151_936);
    let eos = [151_645u32, 151_643, 2_000];
    let held = HeldEnd {
        eos_ids: eos.to_vec(),
        until: vec![2, 0, 1],
    };
    let mut x = values(rows * vocab, 90);
    for r in 0..rows {
        // Every row's largest value at an end id, its runner-up twice (the first wins).
        x[r * vocab + eos[r] as usize] = 9.0;
        x[r * vocab + 77] = 8.0;
        x[r * vocab + 5_000] = 8.0;
    }
    // A NaN at row 0's other end id: the row is not finite even though the id is left out.
    let mut with_nan = x.clone();
    with_nan[eos[1] as usize] = f32::NAN;
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let mut picks = kernels::DevicePicks::new(&runtime, &dev, dtype, (rows, vocab), &held)
            .unwrap()
            .expect("the fused kernels serve this dtype");
        let ids = Tensor::zeros(rows, DType::U32, &dev).unwrap();
        let logits = Tensor::from_vec(x.clone(), (rows, vocab), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        // Step 0: rows 0 and 2 held; step 1: row 0; step 2: none.
        let mut got = vec![];
        for _ in 0..3 {
            picks.queue(&logits, &ids).unwrap();
            got.push(picks.wait().unwrap().0);
        }
        let end = |r: usize| eos[r];
        assert_eq!(got[0], vec![77, end(1), 77], "{dtype:?} step 0");
        assert_eq!(got[1], vec![77, end(1), end(2)], "{dtype:?} step 1");
        assert_eq!(got[2], vec![end(0), end(1), end(2)], "{dtype:?} step 2");
        // The host's pick with the end ids suppressed agrees.
        let rows_f32 = f32s(&logits);
        let mut row0 = rows_f32[..vocab].to_vec();
        for &e in &eos {
            row0[e as usize] = f32::NEG_INFINITY;
        }
        assert_eq!(argmax(&row0), 77);

        let mut picks = kernels::DevicePicks::new(&runtime, &dev, dtype, (rows, vocab), &held)
            .unwrap()
            .expect("the fused kernels serve this dtype");
        let nan = Tensor::from_vec(with_nan.clone(), (rows, vocab), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        picks.queue(&nan, &ids).unwrap();
        let (first, finite) = picks.wait().unwrap();
        assert_eq!(
            finite,
            vec![false, true, true],
            "{dtype:?}: NaN at a held id"
        );
        assert_eq!(first[0], 77, "{dtype:?}");
    }
}

/// Greedy decoding's pick on the device (ops.cu's two argmax launches) gives what the
/// host's `argmax` gives, and candle's ops away from ties: the first of tied
/// maxima (a tie placed across two blocks' chunks and one inside a block), a maximum in a
/// row's last, partial chunk, several rows, f32/bf16/f16, and a row with a NaN or an
/// infinity reported as not finite while its neighbours are.
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn device_argmax_picks_the_first_maximum_and_flags_non_finite_rows() {
    use vlm_contract::sampling::{argmax, argmax_on_device};
    let dev = Device::new_cuda(0).expect("a CUDA device");
    let runtime = RuntimeOptions::default();
    for vocab in [151_936usize, 1_000, 2_049] {
        let rows = 4;
        let mut x = values(rows * vocab, 71);
        // Row 0: a tie between columns in two different 1,024-column chunks (when the row
        // has two) and a later, smaller value; row 1: a tie inside one chunk; row 2: the
        // maximum in the last column; row 3: a maximum in the middle.
        let (a, b) = (7, vocab - 900);
        x[a] = 5.0;
        x[b] = 5.0;
        x[vocab + 300] = 4.0;
        x[vocab + 301] = 4.0;
        x[2 * vocab + vocab - 1] = 6.0;
        // Row 3's maximum alone: in bf16 hundreds of the values in [-1, 1) round to the
        // largest, a tie candle's pick may break either way.
        x[3 * vocab + vocab / 3] = 5.5;
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let t = Tensor::from_vec(x.clone(), (rows, vocab), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let host: Vec<u32> = f32s(&t).chunks(vocab).map(argmax).collect();
            let on_cuda = t.to_device(&dev).unwrap();
            let ours = kernels::device_argmax(&runtime, &on_cuda).unwrap();
            let candle = argmax_on_device(&on_cuda).unwrap();
            assert_eq!(ours.ids, host, "vocab {vocab} {dtype:?}: against the host");
            assert_eq!(
                ours.ids[0], a as u32,
                "vocab {vocab} {dtype:?}: first of a tie"
            );
            assert_eq!(ours.ids[1], 300, "vocab {vocab} {dtype:?}: first of a tie");
            assert_eq!(
                ours.ids[2],
                vocab as u32 - 1,
                "vocab {vocab} {dtype:?}: last column"
            );
            // candle's one-block argmax keeps the first maximum only among neighbours: on an
            // H100 it picked column 151,036 over 7 for row 0 (ours, the host and torch: 7).
            assert_eq!(
                ours.ids[1..],
                candle.ids[1..],
                "vocab {vocab} {dtype:?}: against candle"
            );
            assert_eq!(ours.finite, vec![true; rows]);
            for (bad, name) in [
                (f32::NAN, "NaN"),
                (f32::INFINITY, "inf"),
                (f32::NEG_INFINITY, "-inf"),
            ] {
                let mut y = x.clone();
                y[vocab + vocab / 2] = bad;
                let t = Tensor::from_vec(y, (rows, vocab), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let got = kernels::device_argmax(&runtime, &t).unwrap();
                assert_eq!(
                    got.finite,
                    vec![true, false, true, true],
                    "vocab {vocab} {dtype:?}: a {name} in row 1"
                );
                assert_eq!(got.finite, argmax_on_device(&t).unwrap().finite);
                assert_eq!(
                    got.ids[0], ours.ids[0],
                    "vocab {vocab} {dtype:?}: row 0 with a {name} in row 1"
                );
            }
        }
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn mma_gemv_matches_the_reference() {
    let dev = Device::new_cuda(0).expect("a CUDA device");
    let runtime = RuntimeOptions::default();
    // (rows, k, n): a k that is not a multiple of the 32-wide chunks, an output count that is
    // not a multiple of a warp's 16, every 8-row tile count, and the 7B's down projection.
    for (m, k, n) in [
        (2, 3584, 3584),
        (8, 136, 37),
        (13, 520, 1003),
        (17, 2048, 100),
        (32, 18944, 64),
    ] {
        for (dtype, tol) in [(DType::BF16, 1e-2), (DType::F16, 2e-3)] {
            for with_bias in [false, true] {
                let t = |v: Vec<f32>, shape: &[usize]| {
                    Tensor::from_vec(v, shape, &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                };
                let w = t(values(n * k, 22), &[n, k]);
                let x = t(values(m * k, 21), &[m, k]);
                let b = with_bias.then(|| t(values(n, 23), &[n]));
                if !kernels::mma_gemv_applies(&runtime, &x, &w, b.as_ref()) {
                    // A build for cards below compute capability 8.0 has no tensor-core
                    // kernels; the projections keep cuBLAS there.
                    println!("mma_gemv: not built for this card's compute capability");
                    return;
                }
                let got = f32s(&kernels::mma_gemv(&x, &w, b.as_ref()).unwrap());
                // The other tile width than mma_gemv picks for these rows.
                let wide = m <= kernels::MMA_GEMV_NARROW_ROWS;
                let other = f32s(&kernels::mma_gemv_tiles(&x, &w, b.as_ref(), wide).unwrap());
                let want = product_reference(&x, &w, b.as_ref());
                let e = max_rel_err(&got, &want);
                let e_other = max_rel_err(&other, &want);
                println!(
                    "mma_gemv {dtype:?} m={m} k={k} n={n} bias={with_bias}: {e:.2e} ({e_other:.2e} with {} tiles a warp)",
                    if wide { 2 } else { 1 }
                );
                assert!(e < tol, "mma_gemv {dtype:?} m={m} k={k} n={n}: {e}");
                assert!(
                    e_other < tol,
                    "mma_gemv (wide: {wide}) {dtype:?} m={m} k={k} n={n}: {e_other}"
                );
            }
        }
    }
}

/// The few-row products against cuBLAS (candle's matmul) at Qwen2.5-VL-7B's decode shapes
/// in bf16: the same values, and each path's time per call, printed (a weight read once
/// per call: GB/s is the weight's bytes over that time).
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "CUDA kernels: run by the GPU check")]
fn few_row_products_agree_with_cublas_at_real_shapes() {
    let dev = Device::new_cuda(0).expect("a CUDA device");
    let runtime = RuntimeOptions::default();
    let time = |f: &dyn Fn() -> Tensor| {
        f();
        dev.synchronize().unwrap();
        let runs = 20;
        let start = std::time::Instant::now();
        for _ in 0..runs {
            f();
        }
        dev.synchronize().unwrap();
        start.elapsed().as_secs_f64() / runs as f64
    };
    // (name, k, n): q/k/v, o, gate/up, down.
    for (name, k, n) in [
        ("qkv", 3584, 4608),
        ("o", 3584, 3584),
        ("gate_up", 3584, 37888),
        ("down", 18944, 3584),
    ] {
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let gb = (n * k * 2) as f64 / 1e9;
        let two_rows = Tensor::zeros((2, k), DType::BF16, &dev).unwrap();
        let tensor_cores = kernels::mma_gemv_applies(&runtime, &two_rows, &w, None);
        for m in [1, 2, 4, 8, 16, 32] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap();
            let cublas = || x.matmul(&w.t().unwrap()).unwrap();
            let mut row = format!("{name} m={m}: cuBLAS {:.1} µs", time(&cublas) * 1e6);
            let want = f32s(&cublas());
            let mut check = |path: &str, got: Tensor, secs: f64| {
                let e = max_rel_err(&f32s(&got), &want);
                row += &format!(
                    ", {path} {:.1} µs ({:.2} TB/s; rel. diff {e:.1e})",
                    secs * 1e6,
                    gb / secs / 1e3
                );
                assert!(e < 1e-2, "{path} {name} m={m}: {e}");
            };
            if m <= kernels::GEMV_ROWS {
                let f = || kernels::gemv(&x, &w, None).unwrap();
                check("gemv", f(), time(&f));
            }
            // At one row too (the models keep gemv there): would the tensor cores be faster?
            if tensor_cores {
                for (path, wide) in [("mma_gemv", false), ("mma_gemv wide", true)] {
                    let f = || kernels::mma_gemv_tiles(&x, &w, None, wide).unwrap();
                    check(path, f(), time(&f));
                }
            }
            println!("{row}");
        }
    }
}
