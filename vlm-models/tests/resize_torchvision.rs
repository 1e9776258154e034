//! `vlm_models::preprocess::resize_torch` against goldens written by torchvision's uint8 antialiased
//! resize (`tools/fixtures/resize_torchvision_goldens.py`, torch 2.11 on an AVX2 CPU).

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use vlm_models::preprocess::resize_torch::{resize_like_torchvision, TorchFilter};

#[derive(serde::Deserialize)]
struct Manifest {
    torch: String,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    input: String,
    filter: String,
    width: u32,
    height: u32,
    output: String,
}

/// The checked-in goldens, or the folder named by `VLM_RESIZE_TORCHVISION_FIXTURES` (for
/// example a set written with `resize_torchvision_goldens.py --fuzz N`).
fn fixtures() -> PathBuf {
    match std::env::var_os("VLM_RESIZE_TORCHVISION_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resize_torchvision"),
    }
}

fn load_png(name: &str) -> RgbImage {
    let path = fixtures().join(name);
    image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_rgb8()
}

fn manifest() -> Manifest {
    let path = fixtures().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run tools/fixtures/resize_torchvision_goldens.py",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn filter_named(name: &str) -> TorchFilter {
    match name {
        "bicubic" => TorchFilter::Bicubic,
        "bilinear" => TorchFilter::Bilinear,
        other => panic!("unknown filter {other} in the manifest"),
    }
}

/// (differing bytes, max abs diff) between two same-sized images.
fn byte_diff(a: &RgbImage, b: &RgbImage) -> (usize, u8) {
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .fold((0, 0), |(n, max), d| (n + usize::from(d != 0), max.max(d)))
}

#[test]
fn resize_matches_torchvision_byte_for_byte() {
    let manifest = manifest();
    assert!(!manifest.cases.is_empty(), "empty manifest");
    let mut failures = Vec::new();
    let mut checked_bytes = 0;
    for case in &manifest.cases {
        let input = load_png(&case.input);
        let expected = load_png(&case.output);
        assert_eq!(
            expected.dimensions(),
            (case.width, case.height),
            "{}: golden size",
            case.output
        );
        let got =
            resize_like_torchvision(&input, case.width, case.height, filter_named(&case.filter));
        assert_eq!(
            got.dimensions(),
            (case.width, case.height),
            "{}",
            case.output
        );
        let (count, max) = byte_diff(&got, &expected);
        checked_bytes += expected.as_raw().len();
        if count != 0 {
            failures.push(format!(
                "{} ({} {}x{} -> {}x{}): {count} of {} bytes differ, max diff {max}",
                case.output,
                case.filter,
                input.width(),
                input.height(),
                case.width,
                case.height,
                expected.as_raw().len(),
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from torch {}:\n{}",
        failures.len(),
        manifest.cases.len(),
        manifest.torch,
        failures.join("\n")
    );
    eprintln!(
        "{} cases, {checked_bytes} bytes identical to torch {}",
        manifest.cases.len(),
        manifest.torch
    );
}

#[test]
fn unchanged_size_is_a_copy() {
    let img = RgbImage::from_fn(7, 5, |x, y| Rgb([(x * 30) as u8, (y * 50) as u8, 200]));
    for filter in [TorchFilter::Bicubic, TorchFilter::Bilinear] {
        assert_eq!(resize_like_torchvision(&img, 7, 5, filter), img);
    }
}

#[test]
fn constant_image_stays_constant() {
    // Normalised weights sum to one and the rounding starts from one half, so a flat
    // image must come back flat at every scale, both directions.
    let img = RgbImage::from_pixel(37, 23, Rgb([0, 128, 255]));
    for filter in [TorchFilter::Bicubic, TorchFilter::Bilinear] {
        for (w, h) in [(1, 1), (5, 3), (36, 11), (74, 46), (37, 100), (200, 23)] {
            let out = resize_like_torchvision(&img, w, h, filter);
            assert!(
                out.pixels().all(|p| *p == Rgb([0, 128, 255])),
                "{filter:?} {w}x{h}"
            );
        }
    }
}

#[test]
fn empty_sizes_give_empty_images() {
    let img = RgbImage::from_pixel(4, 4, Rgb([1, 2, 3]));
    let out = resize_like_torchvision(&img, 0, 3, TorchFilter::Bicubic);
    assert_eq!(out.dimensions(), (0, 3));
    let empty = RgbImage::new(0, 0);
    let out = resize_like_torchvision(&empty, 2, 2, TorchFilter::Bilinear);
    assert_eq!(out.dimensions(), (2, 2));
}
