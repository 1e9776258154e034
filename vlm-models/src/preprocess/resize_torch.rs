//! Image resizing that reproduces torchvision's antialiased resize of a uint8 tensor,
//! byte for byte.
//!
//! HF transformers' torchvision image processors (among them the default Qwen2-VL one
//! in transformers 5.x) resize with
//! `torchvision.transforms.v2.functional.resize(img, [h, w], BICUBIC, antialias=True)`
//! on a uint8 `(1, 3, H, W)` tensor. On x86 CPUs with AVX2, PyTorch computes that with a
//! fixed-point kernel ported from Pillow-SIMD (`UpSampleKernelAVXAntialias.h`, weights
//! from `UpSampleKernel.cpp`), not in floating point. It follows the same plan as
//! Pillow's resampler ([`super::resize`]) but quantises the weights differently, so the
//! two disagree by one level on a small fraction of the bytes (and, against Pillow
//! releases that run the vertical pass first, by more). This module implements torch's
//! arithmetic in scalar code; the integer sums are exact, so the bytes equal the SIMD
//! kernel's:
//!
//! * separable, horizontal pass (along the width) first, then vertical; a pass whose
//!   size does not change is skipped, and an unchanged image is returned as is; the
//!   image between the passes is rounded to uint8;
//! * `align_corners=False` geometry: `scale = in / out`, output pixel `i` is centred at
//!   `(i + 0.5) * scale` in source coordinates; when shrinking (`scale >= 1`) the
//!   filter is stretched by `scale` (antialiasing); taps outside the image are dropped
//!   and the remaining weights are divided by their sum;
//! * filters: triangle (bilinear, support 1) and Keys' cubic with `a = -0.5` (bicubic,
//!   support 2), evaluated in `f64` with the polynomial shapes torch uses;
//! * each pass converts its weights to `i16` with its own precision: the largest number
//!   of fraction bits (at most 22) for which the pass's largest weight, rounded, still
//!   fits in 15 bits; weights round half away from zero;
//! * every output sums `pixel * weight` in `i32` starting from one half
//!   (`1 << (precision - 1)`), shifts right arithmetically by the precision and clamps
//!   to 0..=255.
//!
//! Torch itself fails (an internal assert) for a 1x1 output from a contiguous CHW
//! tensor; its channels-last path returns what this module returns.
//!
//! `tests/resize_torchvision.rs` checks this against goldens written by torch 2.11 /
//! torchvision 0.26 (`tools/fixtures/resize_torchvision_goldens.py`).

use image::RgbImage;

use super::parallel::for_row_chunks_weighted;

/// Channels of an `RgbImage` pixel.
const CHANNELS: usize = 3;

/// Upper bound (exclusive) that torch's search for the weight precision starts from.
const MAX_PRECISION: u32 = 22;

/// Resampling filter, as `torchvision.transforms.InterpolationMode` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TorchFilter {
    /// `InterpolationMode.BICUBIC` with `antialias=True`: Keys' cubic, a = -0.5.
    Bicubic,
    /// `InterpolationMode.BILINEAR` with `antialias=True`: triangle filter.
    Bilinear,
}

impl TorchFilter {
    /// Taps of the filter when not shrinking (torch's `interp_size`); half of it is the
    /// support.
    fn interp_size(self) -> f64 {
        match self {
            TorchFilter::Bicubic => 4.0,
            TorchFilter::Bilinear => 2.0,
        }
    }

    /// The filter's weight at distance `x` from the centre, in filter units. The
    /// expressions keep torch's shapes so that the `f64` rounding matches.
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            TorchFilter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            TorchFilter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fixed-point weights of one pass: for each output index the first source index, the
/// number of taps and the taps themselves.
struct Coefficients {
    /// Fraction bits of `weights`.
    precision: u32,
    /// Taps stored per output index (the row stride of `weights`).
    stride: usize,
    /// `(first source index, number of taps)` per output index.
    bounds: Vec<(usize, usize)>,
    /// `bounds.len() * stride` weights; only the first `bounds[i].1` of a row are used.
    weights: Vec<i16>,
}

impl Coefficients {
    /// Work per output value relative to an upscaling bicubic pass (5 taps): a downscale
    /// reads `scale` times as many.
    fn cost(&self) -> usize {
        (self.stride / 5).max(1)
    }

    /// Torch's weights for resampling `in_size` samples to `out_size` (both > 0).
    fn new(in_size: usize, out_size: usize, filter: TorchFilter) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let (support, invscale) = if scale >= 1.0 {
            (filter.interp_size() * 0.5 * scale, 1.0 / scale)
        } else {
            (filter.interp_size() * 0.5, 1.0)
        };
        let stride = support.ceil() as usize * 2 + 1;

        let mut bounds = Vec::with_capacity(out_size);
        let mut float_weights = vec![0.0f64; out_size * stride];
        let mut max_weight = 0.0f64;
        for (i, row) in float_weights.chunks_exact_mut(stride).enumerate() {
            let center = scale * (i as f64 + 0.5);
            // `as i64` truncates toward zero, like the C++ cast.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let taps = (xmax - xmin).clamp(0, stride as i64) as usize;
            let mut total = 0.0f64;
            for (j, w) in row[..taps].iter_mut().enumerate() {
                *w = filter.weight(((j as i64 + xmin) as f64 - center + 0.5) * invscale);
                total += *w;
            }
            if total != 0.0 {
                for w in &mut row[..taps] {
                    *w /= total;
                    max_weight = max_weight.max(*w);
                }
            }
            bounds.push((xmin as usize, taps));
        }

        // The largest precision whose rounded maximum weight still fits in 15 bits:
        // stop at the first `p` for which `p + 1` bits would overflow.
        let mut precision = 0;
        while precision < MAX_PRECISION {
            let next = (0.5 + max_weight * f64::from(1u32 << (precision + 1))) as i32;
            if next >= 1 << 15 {
                break;
            }
            precision += 1;
        }

        let factor = f64::from(1u32 << precision);
        let weights = float_weights
            .iter()
            .map(|&w| {
                let v = w * factor;
                let rounded = if v < 0.0 {
                    (-0.5 + v) as i32
                } else {
                    (0.5 + v) as i32
                };
                rounded as i16
            })
            .collect();
        Coefficients {
            precision,
            stride,
            bounds,
            weights,
        }
    }

    /// `sum(src(first + j) * weight_j)` for output `i`, rounded, shifted and clamped.
    #[inline]
    fn apply(&self, i: usize, src: impl Fn(usize) -> u8) -> u8 {
        let (first, taps) = self.bounds[i];
        let row = &self.weights[i * self.stride..i * self.stride + taps];
        // precision >= 1 whenever a weight is non-zero; the guard keeps a degenerate
        // all-zero row (impossible for these filters) well defined.
        let mut acc: i32 = if self.precision > 0 {
            1 << (self.precision - 1)
        } else {
            0
        };
        for (j, &w) in row.iter().enumerate() {
            acc += i32::from(src(first + j)) * i32::from(w);
        }
        (acc >> self.precision).clamp(0, 255) as u8
    }
}

/// Resize an RGB8 image exactly as torch's uint8 antialiased interpolate does on AVX2
/// CPUs (torchvision `resize(..., antialias=True)` on a uint8 tensor).
///
/// Returns a copy when the size is unchanged. A zero `width` or `height`, or an empty
/// input, gives an empty image of the requested size (torch refuses both).
#[allow(
    clippy::expect_used,
    reason = "both passes size the buffer as width × height × 3, which from_raw checks"
)]
pub fn resize_like_torchvision(
    img: &RgbImage,
    width: u32,
    height: u32,
    filter: TorchFilter,
) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if (in_w, in_h) == (out_w, out_h) {
        return img.clone();
    }
    if in_w == 0 || in_h == 0 || out_w == 0 || out_h == 0 {
        return RgbImage::new(width, height);
    }

    // Horizontal pass: in_w x in_h -> out_w x in_h.
    let horizontal;
    let (src, src_w): (&[u8], usize) = if out_w != in_w {
        let coeffs = Coefficients::new(in_w, out_w, filter);
        let mut out = vec![0u8; out_w * in_h * CHANNELS];
        let raw = img.as_raw();
        for_row_chunks_weighted(&mut out, out_w * CHANNELS, coeffs.cost(), |first, chunk| {
            let lines_in = raw[first * in_w * CHANNELS..].chunks_exact(in_w * CHANNELS);
            for (line_in, line_out) in lines_in.zip(chunk.chunks_exact_mut(out_w * CHANNELS)) {
                for x in 0..out_w {
                    for c in 0..CHANNELS {
                        line_out[x * CHANNELS + c] =
                            coeffs.apply(x, |sx| line_in[sx * CHANNELS + c]);
                    }
                }
            }
        });
        horizontal = out;
        (&horizontal, out_w)
    } else {
        (img.as_raw(), in_w)
    };

    // Vertical pass: src_w x in_h -> src_w x out_h.
    let data = if out_h != in_h {
        let coeffs = Coefficients::new(in_h, out_h, filter);
        let row_len = src_w * CHANNELS;
        let mut out = vec![0u8; row_len * out_h];
        for_row_chunks_weighted(&mut out, row_len, coeffs.cost(), |first, chunk| {
            for (y, line_out) in chunk.chunks_exact_mut(row_len).enumerate() {
                for (k, value) in line_out.iter_mut().enumerate() {
                    *value = coeffs.apply(first + y, |sy| src[sy * row_len + k]);
                }
            }
        });
        out
    } else {
        src.to_vec()
    };
    RgbImage::from_raw(width, height, data).expect("buffer sized for the output")
}
