//! Image resizing that reproduces PIL's `Image.resize` on 8-bit RGB byte for byte.
//!
//! The reference processors of Qwen-VL, BLIP-2 and MiniGPT-4 resize with
//! `PIL.Image.resize(size, BICUBIC)` (a few with `BILINEAR`) on uint8 RGB before
//! normalising. Any other resampler (the `image` crate's, torchvision's tensor bicubic,
//! OpenCV's) differs by a few levels on most pixels, which is enough to move greedy
//! output tokens, so this module implements Pillow's convolution resampler
//! (libImaging/Resample.c) exactly:
//!
//! * separable, two passes, one per axis; a pass whose size does not change is skipped;
//!   the image between the passes is rounded to uint8, so the order of the passes
//!   changes the result (on a fifth of the bytes of a photo, by up to 25 levels next to
//!   sharp edges with bicubic) and Pillow releases differ in it: see [`PillowVersion`];
//! * when shrinking, the filter is stretched by the scale factor (antialiasing), so
//!   every source pixel contributes;
//! * for output pixel `i` the filter is centred at `(i + 0.5) * scale` in source
//!   coordinates; taps outside the image are dropped and the remaining weights are
//!   renormalised to sum to one (no edge padding);
//! * the weights are converted to fixed point with [`PRECISION_BITS`] fraction bits,
//!   rounding half away from zero; each output sums `pixel * weight` in `i32`, starting
//!   from one half (`1 << (PRECISION_BITS - 1)`), then shifts right and clamps to 0..=255.
//!
//! [`Filter::Nearest`] follows PIL's separate nearest-neighbour path (an affine scale
//! whose source coordinate is accumulated in `f64`), not the convolution.
//!
//! `tests/image_inputs.rs` checks all three filters against goldens written by real
//! PIL (`tools/fixtures/resize_goldens.py`).

use image::RgbImage;

/// Fraction bits of the fixed-point weights: 32 bits minus 8 for the pixel value minus
/// 2 of headroom, because bicubic weights can be negative and partial sums can exceed
/// one. Pillow's `PRECISION_BITS`.
pub const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The bicubic kernel's `a` in PIL (Keys' cubic convolution with a = -0.5). OpenCV and
/// PyTorch's plain bicubic (`interpolate(mode="bicubic")`, torchvision with
/// `antialias=False`) use a = -0.75 and do not widen the filter when shrinking.
const BICUBIC_A: f64 = -0.5;

/// Channels of an `RgbImage` pixel.
const CHANNELS: usize = 3;

/// Resampling filter, named as in `PIL.Image.Resampling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Filter {
    /// `PIL.Image.BICUBIC`: cubic convolution with a = -0.5, support 2, antialiased.
    Bicubic,
    /// `PIL.Image.BILINEAR`: triangle filter, support 1, antialiased.
    Bilinear,
    /// `PIL.Image.NEAREST`: picks the source pixel under each output pixel's centre.
    Nearest,
}

impl Filter {
    /// Half-width of the filter in source pixels when not shrinking.
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Bilinear => 1.0,
            // Not a convolution; never asked for.
            Filter::Nearest => 0.5,
        }
    }

    /// The filter's weight at distance `x` (in filter units) from the centre.
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bicubic => {
                // The expression shapes match Pillow's so the f64 rounding is identical.
                if x < 1.0 {
                    ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * BICUBIC_A
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Nearest => {
                if x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}

/// The Pillow release whose output to reproduce.
///
/// The arithmetic of each pass is the same in every release checked, but the order of
/// the two passes has changed, and because the intermediate image is rounded to uint8
/// the order shows in the output (with bicubic on a fifth of a photo's bytes, by up to
/// 25 levels next to sharp edges; with bilinear by 1 level). Pick the release the
/// reference pipeline ran with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum PillowVersion {
    /// Pillow 12.1 and earlier: always horizontal pass first.
    UpTo12_1,
    /// Pillow 12.2 and 12.3: vertical pass first only for an image more than 100 times
    /// taller than wide whose height shrinks (done in Python, `Image.resize`).
    From12_2To12_3,
    /// Pillow 13 and later: vertical pass first whenever the height shrinks by more than
    /// twice as many pixels as the width does (`ImagingResampleInner`), horizontal first
    /// otherwise.
    #[default]
    From13,
}

impl PillowVersion {
    /// The variant for a `PIL.__version__` string such as `"12.1.1"` or `"13.0.0.dev0"`;
    /// `None` when it does not start with `MAJOR.MINOR`.
    ///
    /// ```
    /// use vlm_models::preprocess::resize::PillowVersion;
    ///
    /// assert_eq!(PillowVersion::from_version("11.3.0"), Some(PillowVersion::UpTo12_1));
    /// assert_eq!(PillowVersion::from_version("12.2.0"), Some(PillowVersion::From12_2To12_3));
    /// assert_eq!(PillowVersion::from_version("13.0.0"), Some(PillowVersion::From13));
    /// assert_eq!(PillowVersion::from_version("pillow"), None);
    /// ```
    pub fn from_version(version: &str) -> Option<PillowVersion> {
        let mut parts = version.trim().split('.');
        let major: u32 = parts.next()?.parse().ok()?;
        let minor: u32 = parts
            .next()?
            .trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .ok()?;
        Some(match (major, minor) {
            (0..=11, _) | (12, 0..=1) => PillowVersion::UpTo12_1,
            (12, _) => PillowVersion::From12_2To12_3,
            _ => PillowVersion::From13,
        })
    }

    /// Whether this release runs the vertical pass before the horizontal one (only
    /// asked when both passes run).
    fn vertical_first(self, in_w: u32, in_h: u32, width: u32, height: u32) -> bool {
        let (in_w, in_h, width, height) = (
            i64::from(in_w),
            i64::from(in_h),
            i64::from(width),
            i64::from(height),
        );
        match self {
            PillowVersion::UpTo12_1 => false,
            // `self.size[1] > self.size[0] * 100 and size[1] < self.size[1]`
            PillowVersion::From12_2To12_3 => in_h > in_w * 100 && height < in_h,
            // Verified against Pillow 13.0.0 on 16,000 size pairs (both filters).
            PillowVersion::From13 => height < in_h && 2 * (in_w - width) < in_h - height,
        }
    }
}

/// Resizes an RGB8 image to `width` × `height` exactly as PIL's
/// `Image.resize((width, height), filter)` does on an `"RGB"` image, in Pillow 13 and
/// later; [`resize_like`] reproduces earlier releases.
///
/// A size equal to the input's returns a copy. A zero `width` or `height` (which PIL
/// rejects) returns an empty image of that size, and an empty input returns a black
/// image of the requested size, so this function never panics.
///
/// ```
/// use image::{Rgb, RgbImage};
/// use vlm_models::preprocess::resize::{resize, Filter};
///
/// let img = RgbImage::from_pixel(640, 480, Rgb([10, 200, 30]));
/// let small = resize(&img, 224, 168, Filter::Bicubic);
/// assert_eq!(small.dimensions(), (224, 168));
/// // A flat colour stays flat: the weights of every output pixel sum to one.
/// assert!(small.pixels().all(|p| *p == Rgb([10, 200, 30])));
/// ```
#[must_use]
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    resize_like(img, width, height, filter, PillowVersion::default())
}

/// [`resize`] as a given Pillow release computes it (they differ only in the order of
/// the two passes; nearest neighbour is the same in all).
#[must_use]
pub fn resize_like(
    img: &RgbImage,
    width: u32,
    height: u32,
    filter: Filter,
    pillow: PillowVersion,
) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    if width == 0 || height == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(width, height);
    }
    if (width, height) == (in_w, in_h) {
        return img.clone();
    }
    match filter {
        Filter::Nearest => resize_nearest(img, width, height),
        Filter::Bicubic | Filter::Bilinear => {
            resize_convolution(img, width, height, filter, pillow)
        }
    }
}

/// Fixed-point weights of one pass: output pixel `i` reads source pixels
/// `starts[i] .. starts[i] + lens[i]` with weights `weights[i * stride ..][.. lens[i]]`.
struct Coefficients {
    starts: Vec<usize>,
    lens: Vec<usize>,
    stride: usize,
    weights: Vec<i32>,
}

impl Coefficients {
    /// Weights that map `in_size` source pixels onto `out_size` output pixels
    /// (Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the full
    /// image as the box).
    fn new(in_size: u32, out_size: u32, filter: Filter) -> Coefficients {
        let scale = f64::from(in_size) / f64::from(out_size);
        // Shrinking widens the filter so it averages over every source pixel.
        let filter_scale = scale.max(1.0);
        let support = filter.support() * filter_scale;
        // Pillow sizes the rows as ceil(support) * 2 + 1; taps beyond a row's length
        // are never read, so any stride >= the longest row gives the same result.
        let stride = support.ceil() as usize * 2 + 1;
        let inv_filter_scale = 1.0 / filter_scale;
        let in_size = in_size as usize;
        let out_size = out_size as usize;

        let mut starts = Vec::with_capacity(out_size);
        let mut lens = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * stride];
        let mut row = vec![0f64; stride];
        for (i, out_row) in weights.chunks_exact_mut(stride).enumerate() {
            let center = (i as f64 + 0.5) * scale;
            // `as` truncates toward zero and saturates, like the C `(int)` cast on the
            // values that occur here; adding 0.5 first rounds to the nearest pixel edge.
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
            let len = end.saturating_sub(start).min(stride);
            let mut sum = 0.0;
            for (x, w) in row[..len].iter_mut().enumerate() {
                // Distance from the centre of source pixel `start + x` to `center`.
                *w = filter.weight(((start + x) as f64 - center + 0.5) * inv_filter_scale);
                sum += *w;
            }
            for (w, fixed) in row[..len].iter().zip(out_row.iter_mut()) {
                let w = if sum != 0.0 { w / sum } else { *w };
                *fixed = to_fixed(w);
            }
            starts.push(start);
            lens.push(len);
        }
        Coefficients {
            starts,
            lens,
            stride,
            weights,
        }
    }

    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let start = self.starts[i];
        let k = &self.weights[i * self.stride..][..self.lens[i]];
        (start, k)
    }

    /// First source index any output reads, and one past the last.
    fn source_span(&self) -> (usize, usize) {
        let last = self.starts.len() - 1;
        (self.starts[0], self.starts[last] + self.lens[last])
    }
}

/// A normalised weight in fixed point, rounded half away from zero (C's `(int)` of
/// `w * 2^22 ± 0.5` truncates toward zero).
fn to_fixed(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// The rounding half every fixed-point sum starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Drops the fraction bits of a fixed-point sum and clamps to a byte.
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `ImagingResampleInner` for an 8-bit, 3-channel image and the full box.
fn resize_convolution(
    img: &RgbImage,
    width: u32,
    height: u32,
    filter: Filter,
    pillow: PillowVersion,
) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    let src: &[u8] = img.as_raw();
    let in_stride = in_w as usize * CHANNELS;
    let out_stride = width as usize * CHANNELS;

    let out = if height == in_h {
        horizontal_pass(src, in_stride, 0..in_h as usize, width, in_w, filter)
    } else if width == in_w {
        vertical_pass(src, in_stride, &Coefficients::new(in_h, height, filter), 0)
    } else if pillow.vertical_first(in_w, in_h, width, height) {
        let tmp = vertical_pass(src, in_stride, &Coefficients::new(in_h, height, filter), 0);
        horizontal_pass(&tmp, in_stride, 0..height as usize, width, in_w, filter)
    } else {
        let vertical = Coefficients::new(in_h, height, filter);
        // Only the source rows some output row reads go through the horizontal pass.
        let (first_row, end_row) = vertical.source_span();
        let tmp = horizontal_pass(src, in_stride, first_row..end_row, width, in_w, filter);
        vertical_pass(&tmp, out_stride, &vertical, first_row)
    };
    to_image(width, height, out)
}

/// Resamples `rows` of `src` horizontally from `in_w` to `width` pixels; returns the
/// rows as uint8, as Pillow keeps its intermediate image.
fn horizontal_pass(
    src: &[u8],
    in_stride: usize,
    rows: std::ops::Range<usize>,
    width: u32,
    in_w: u32,
    filter: Filter,
) -> Vec<u8> {
    let coeffs = Coefficients::new(in_w, width, filter);
    let out_stride = width as usize * CHANNELS;
    let mut out = vec![0u8; rows.len() * out_stride];
    for (y, out_row) in rows.zip(out.chunks_exact_mut(out_stride)) {
        let in_row = &src[y * in_stride..][..in_stride];
        for (x, out_px) in out_row.chunks_exact_mut(CHANNELS).enumerate() {
            let (start, k) = coeffs.taps(x);
            let taps = &in_row[start * CHANNELS..][..k.len() * CHANNELS];
            let mut sums = [HALF; CHANNELS];
            for (px, &w) in taps.chunks_exact(CHANNELS).zip(k) {
                for (s, &v) in sums.iter_mut().zip(px) {
                    *s += i32::from(v) * w;
                }
            }
            for (o, s) in out_px.iter_mut().zip(sums) {
                *o = clip8(s);
            }
        }
    }
    out
}

/// Resamples `src` (whose first row is source row `first_row`) vertically with
/// `coeffs`; the row width is unchanged.
fn vertical_pass(src: &[u8], stride: usize, coeffs: &Coefficients, first_row: usize) -> Vec<u8> {
    let out_rows = coeffs.starts.len();
    let mut out = vec![0u8; out_rows * stride];
    let mut sums = vec![0i32; stride];
    for (y, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (start, k) = coeffs.taps(y);
        sums.fill(HALF);
        // Integer sums: accumulating row by row gives the same result as Pillow's
        // pixel-by-pixel loop, and vectorises.
        for (dy, &w) in k.iter().enumerate() {
            let row = &src[(start + dy - first_row) * stride..][..stride];
            for (s, &v) in sums.iter_mut().zip(row) {
                *s += i32::from(v) * w;
            }
        }
        for (o, &s) in out_row.iter_mut().zip(sums.iter()) {
            *o = clip8(s);
        }
    }
    out
}

/// PIL's nearest-neighbour resize: an affine scale evaluated at pixel centres, with the
/// source coordinate accumulated step by step in `f64` as Pillow's `ImagingScaleAffine`
/// does (so the rare floating-point drift matches too).
fn resize_nearest(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    let src_x = nearest_indices(in_w, width);
    let src_y = nearest_indices(in_h, height);
    let src: &[u8] = img.as_raw();
    let in_stride = in_w as usize * CHANNELS;
    let out_stride = width as usize * CHANNELS;
    let mut out = vec![0u8; height as usize * out_stride];
    for (out_row, sy) in out.chunks_exact_mut(out_stride).zip(&src_y) {
        // PIL leaves pixels whose source falls outside the image black.
        let Some(sy) = *sy else { continue };
        let in_row = &src[sy * in_stride..][..in_stride];
        for (out_px, sx) in out_row.chunks_exact_mut(CHANNELS).zip(&src_x) {
            if let Some(sx) = *sx {
                out_px.copy_from_slice(&in_row[sx * CHANNELS..][..CHANNELS]);
            }
        }
    }
    to_image(width, height, out)
}

/// Source index of every output index for nearest neighbour, `None` when outside.
fn nearest_indices(in_size: u32, out_size: u32) -> Vec<Option<usize>> {
    // Pillow passes the box as f32; whole pixel counts below 2^24 are exact in f32.
    let step = f64::from(in_size as f32) / f64::from(out_size);
    let mut pos = step * 0.5;
    let mut indices = Vec::with_capacity(out_size as usize);
    for _ in 0..out_size {
        let i = if pos < 0.0 { -1 } else { pos as i64 };
        indices.push((0..i64::from(in_size)).contains(&i).then_some(i as usize));
        pos += step;
    }
    indices
}

/// Wraps a buffer this module sized as `width * height * 3`.
fn to_image(width: u32, height: u32, data: Vec<u8>) -> RgbImage {
    debug_assert_eq!(data.len(), width as usize * height as usize * CHANNELS);
    // The buffer length is computed from the same sizes, so this cannot fail; fall back
    // to a black image rather than panic if it ever did.
    RgbImage::from_raw(width, height, data).unwrap_or_else(|| RgbImage::new(width, height))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (x * 255 / w.max(2)) as u8,
                (y * 255 / h.max(2)) as u8,
                ((x * 7 + y * 13) % 256) as u8,
            ])
        })
    }

    #[test]
    fn weights_of_every_output_sum_to_one_in_fixed_point() {
        for filter in [Filter::Bicubic, Filter::Bilinear] {
            for (i, o) in [(37, 5), (5, 37), (517, 224), (10, 10), (1, 3), (3, 1)] {
                let c = Coefficients::new(i, o, filter);
                for j in 0..o as usize {
                    let (_, k) = c.taps(j);
                    let sum: i64 = k.iter().map(|&w| i64::from(w)).sum();
                    // Rounding each weight separately leaves the sum within a few units
                    // of 2^22.
                    let one = 1i64 << PRECISION_BITS;
                    assert!(
                        (sum - one).abs() <= k.len() as i64,
                        "{filter:?} {i}->{o} row {j}: {sum}"
                    );
                }
            }
        }
    }

    #[test]
    fn bicubic_kernel_values() {
        let f = Filter::Bicubic;
        assert_eq!(f.weight(0.0), 1.0);
        assert_eq!(f.weight(1.0), 0.0);
        assert_eq!(f.weight(2.0), 0.0);
        assert_eq!(f.weight(0.5), 0.5625);
        assert_eq!(f.weight(-1.5), -0.0625);
        assert_eq!(Filter::Bilinear.weight(-0.25), 0.75);
    }

    #[test]
    fn upscale_bounds_match_pillow() {
        // 4 -> 8 bicubic: output 0 is centred at 0.25, so its window
        // [trunc(0.25 - 2 + 0.5), trunc(0.25 + 2 + 0.5)) = [-1, 2) is cut to [0, 2).
        let c = Coefficients::new(4, 8, Filter::Bicubic);
        assert_eq!((c.starts[0], c.lens[0]), (0, 2));
        assert_eq!((c.starts[7], c.lens[7]), (2, 2));
        // Shrinking by 3 stretches the bilinear support to 3 pixels each side:
        // output 1 is centred at 4.5 and reads [2, 8).
        let c = Coefficients::new(9, 3, Filter::Bilinear);
        assert_eq!((c.starts[1], c.lens[1]), (2, 6));
    }

    #[test]
    fn to_fixed_rounds_half_away_from_zero() {
        let unit = 1.0 / f64::from(1u32 << PRECISION_BITS);
        assert_eq!(to_fixed(0.5 * unit), 1);
        assert_eq!(to_fixed(-0.5 * unit), -1);
        assert_eq!(to_fixed(0.49 * unit), 0);
        assert_eq!(to_fixed(1.0), 1 << PRECISION_BITS);
    }

    #[test]
    fn same_size_is_a_copy_and_sizes_are_respected() {
        let img = gradient(13, 7);
        for filter in [Filter::Bicubic, Filter::Bilinear, Filter::Nearest] {
            assert_eq!(resize(&img, 13, 7, filter), img);
            for (w, h) in [(1, 1), (26, 7), (13, 3), (40, 2), (2, 40)] {
                assert_eq!(resize(&img, w, h, filter).dimensions(), (w, h));
            }
        }
    }

    #[test]
    fn zero_sizes_do_not_panic() {
        let img = gradient(5, 5);
        assert_eq!(resize(&img, 0, 3, Filter::Bicubic).dimensions(), (0, 3));
        let empty = RgbImage::new(0, 4);
        let out = resize(&empty, 2, 2, Filter::Bilinear);
        assert!(out.pixels().all(|p| *p == Rgb([0, 0, 0])));
    }

    #[test]
    fn nearest_integer_upscale_repeats_pixels() {
        let img = gradient(3, 2);
        let out = resize(&img, 6, 4, Filter::Nearest);
        for (x, y, p) in out.enumerate_pixels() {
            assert_eq!(p, img.get_pixel(x / 2, y / 2));
        }
    }

    #[test]
    fn bicubic_overshoot_is_clipped() {
        // A hard black/white edge rings with bicubic; values must clamp, not wrap.
        let img = RgbImage::from_fn(8, 1, |x, _| if x < 4 { Rgb([0; 3]) } else { Rgb([255; 3]) });
        let out = resize(&img, 21, 1, Filter::Bicubic);
        let row: Vec<u8> = out.pixels().map(|p| p[0]).collect();
        assert_eq!(row[0], 0);
        assert_eq!(row[20], 255);
        assert!(row.windows(2).all(|w| w[0] <= w[1]), "{row:?}");
    }
}
