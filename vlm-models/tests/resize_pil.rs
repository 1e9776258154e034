//! PIL-exact resizing against goldens from `tools/fixtures/resize_goldens.py`.

use std::path::{Path, PathBuf};

use image::RgbImage;
use vlm_contract::Image;
use vlm_models::preprocess::resize::{resize, resize_like, Filter, PillowVersion};

#[derive(serde::Deserialize)]
struct Manifest {
    pillow: String,
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

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resize")
}

fn load_png(name: &str) -> RgbImage {
    let path = fixtures().join(name);
    Image::open(&path)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_rgb()
}

/// Every `manifest-pillow-*.json`, one per Pillow release the goldens were made with.
fn manifests() -> Vec<Manifest> {
    let dir = fixtures();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run tools/fixtures/resize_goldens.py",
                dir.display()
            )
        })
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("manifest-pillow-") && name.ends_with(".json")
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect()
}

fn filter_named(name: &str) -> Filter {
    match name {
        "bicubic" => Filter::Bicubic,
        "bilinear" => Filter::Bilinear,
        "nearest" => Filter::Nearest,
        other => panic!("unknown filter {other} in a resize manifest"),
    }
}

/// (differing bytes, max abs diff) between two same-sized images.
fn byte_diff(a: &RgbImage, b: &RgbImage) -> (usize, u8) {
    let diffs = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y));
    diffs.fold((0, 0), |(n, max), d| (n + usize::from(d != 0), max.max(d)))
}

#[test]
fn resize_matches_pil_byte_for_byte() {
    let manifests = manifests();
    let versions: Vec<&str> = manifests.iter().map(|m| m.pillow.as_str()).collect();
    assert!(
        versions.len() >= 3,
        "expected goldens from three Pillow releases, found {versions:?}"
    );
    let mut failures = Vec::new();
    let mut checked = 0;
    for manifest in &manifests {
        let pillow = PillowVersion::from_version(&manifest.pillow)
            .unwrap_or_else(|| panic!("unparsable Pillow version {}", manifest.pillow));
        for case in &manifest.cases {
            let input = load_png(&case.input);
            let expected = load_png(&case.output);
            let got = resize_like(
                &input,
                case.width,
                case.height,
                filter_named(&case.filter),
                pillow,
            );
            assert_eq!(
                got.dimensions(),
                (case.width, case.height),
                "{}",
                case.output
            );
            let (differing, max) = byte_diff(&got, &expected);
            if max != 0 {
                failures.push(format!(
                    "{}: {differing} of {} bytes differ, max abs diff {max}",
                    case.output,
                    got.as_raw().len()
                ));
            }
            checked += 1;
        }
    }
    assert!(checked >= 150, "only {checked} golden cases found");
    assert!(
        failures.is_empty(),
        "resize differs from PIL on {} of {checked} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn pass_order_matters_so_the_goldens_can_catch_it() {
    // If every golden came out the same whichever pass ran first, the test above could
    // not tell the Pillow releases apart.
    let manifests = manifests();
    let newest = manifests
        .iter()
        .find(|m| PillowVersion::from_version(&m.pillow) == Some(PillowVersion::From13))
        .expect("goldens from Pillow 13");
    let mut order_sensitive = 0;
    for case in &newest.cases {
        let filter = filter_named(&case.filter);
        let input = load_png(&case.input);
        let new = resize_like(
            &input,
            case.width,
            case.height,
            filter,
            PillowVersion::From13,
        );
        let old = resize_like(
            &input,
            case.width,
            case.height,
            filter,
            PillowVersion::UpTo12_1,
        );
        if byte_diff(&new, &old).1 != 0 {
            order_sensitive += 1;
        }
    }
    assert!(
        order_sensitive >= 10,
        "only {order_sensitive} cases depend on the pass order"
    );
}

#[test]
fn default_resize_is_the_newest_pillow() {
    let input = load_png("photo_333x517.png");
    let a = resize(&input, 224, 224, Filter::Bicubic);
    let b = resize_like(&input, 224, 224, Filter::Bicubic, PillowVersion::From13);
    assert!(a == b);
}
