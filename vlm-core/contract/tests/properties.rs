//! Property tests: every parser of vlm-contract fed untrusted bytes returns a typed error
//! or a value, never panics, and the image decoder never asks the allocator for more than
//! its limits allow at once (a counting allocator records the largest request).
//!
//! Inputs: random bytes, and mutations (bit flips, truncations, overwritten header fields
//! with extreme values) of valid files made in the test. Case counts are fixed per test
//! (`cases`), so the suite's time is bounded; `PROPTEST_CASES` overrides them all.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use vlm_contract::files::{shard_names, ModelDir};
use vlm_contract::image::{Image, ImageError, ImageLimits};
use vlm_contract::Error;
use vlm_contract::{GenerationDefaults, GenerationOptions};

// ---- the allocation guard ---------------------------------------------------------------

/// Records the largest allocation request of each thread (proptest runs a test's cases
/// on one thread, and the test harness runs tests on separate threads).
struct Counting;

thread_local! {
    // `const` and no destructor: usable from inside the allocator.
    static LARGEST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and fails when it asked for more than `limit` bytes at once.
fn bounded<T>(limit: usize, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    LARGEST.with(|l| l.set(0));
    let out = f();
    let largest = LARGEST.with(|l| l.get());
    if largest > limit {
        return Err(TestCaseError::fail(format!(
            "asked for {largest} bytes at once (limit {limit})"
        )));
    }
    Ok(out)
}

// ---- mutations of valid files -----------------------------------------------------------

/// How a valid file is damaged.
#[derive(Debug, Clone)]
enum Mutation {
    /// Flip one bit at `at % len`.
    FlipBit { at: usize, bit: u8 },
    /// Keep the first `len % (file length + 1)` bytes.
    Truncate(usize),
    /// Overwrite 4 or 8 bytes at `at % len` with an extreme value (header fields).
    Extreme { at: usize, value: u64, wide: bool },
    /// Overwrite a byte with a random one.
    Byte { at: usize, value: u8 },
    /// Insert random bytes.
    Insert { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let extreme = prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        Just(1 << 63),
        Just(u64::from(u32::MAX)),
        Just(1 << 31),
        Just(0x7fff_ffff),
        Just(1 << 16),
        any::<u64>(),
    ];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), extreme, any::<bool>())
            .prop_map(|(at, value, wide)| { Mutation::Extreme { at, value, wide } }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Byte { at, value }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

fn apply(mut data: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if data.is_empty() {
            break;
        }
        let n = data.len();
        match m {
            Mutation::FlipBit { at, bit } => data[at % n] ^= 1 << bit,
            Mutation::Truncate(len) => data.truncate(len % (n + 1)),
            Mutation::Extreme { at, value, wide } => {
                let bytes: Vec<u8> = if *wide {
                    value.to_le_bytes().to_vec()
                } else {
                    (*value as u32).to_be_bytes().to_vec()
                };
                let at = at % n;
                for (i, b) in bytes.into_iter().enumerate() {
                    if let Some(slot) = data.get_mut(at + i) {
                        *slot = b;
                    }
                }
            }
            Mutation::Byte { at, value } => data[at % n] = *value,
            Mutation::Insert { at, bytes } => {
                let at = at % n;
                data.splice(at..at, bytes.iter().copied());
            }
        }
    }
    data
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..4)
}

// ---- images -----------------------------------------------------------------------------

/// A small valid image in every format we decode (made here, so nothing is committed).
fn valid_images() -> Vec<(&'static str, Vec<u8>)> {
    use image::{ImageFormat, RgbImage, RgbaImage};
    let rgb = RgbImage::from_fn(13, 9, |x, y| {
        image::Rgb([(x * 19) as u8, (y * 27) as u8, 77])
    });
    let rgba = RgbaImage::from_fn(7, 5, |x, y| {
        image::Rgba([x as u8 * 30, y as u8 * 40, 9, 200])
    });
    let encode = |img: image::DynamicImage, format: ImageFormat| {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    };
    vec![
        ("png", encode(rgb.clone().into(), ImageFormat::Png)),
        ("png-rgba", encode(rgba.clone().into(), ImageFormat::Png)),
        ("jpeg", encode(rgb.clone().into(), ImageFormat::Jpeg)),
        ("gif", encode(rgba.clone().into(), ImageFormat::Gif)),
        ("bmp", encode(rgb.clone().into(), ImageFormat::Bmp)),
        ("tiff", encode(rgb.clone().into(), ImageFormat::Tiff)),
        ("webp", encode(rgba.into(), ImageFormat::WebP)),
    ]
}

/// Decodes `bytes`; a success must honour the limits, an error must have a message.
/// The decoder may allocate up to `max_alloc_bytes` (the decoded pixels) plus its own
/// small working buffers.
const DECODER_WORKING_BYTES: usize = 8 << 20;

/// The TIFF decoder reads its tags (strip tables, value arrays) under the `tiff` crate's
/// default limits (256 MiB) before the `image` crate hands it ours: a damaged 1 KiB TIFF
/// was seen to make it allocate 66 MiB with `max_alloc_bytes` at 1 MiB. Bounded, but not
/// by [`ImageLimits`]: a limit of the `image` crate's TIFF support, not ours to fix.
const TIFF_HEADER_BYTES: usize = 256 << 20;

fn check_image(bytes: &[u8], limits: &ImageLimits) -> Result<(), TestCaseError> {
    let tiff = bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*");
    let working = if tiff {
        TIFF_HEADER_BYTES
    } else {
        DECODER_WORKING_BYTES
    };
    let limit = usize::try_from(limits.max_alloc_bytes).unwrap_or(usize::MAX) + working;
    match bounded(limit, || Image::from_bytes_with(bytes, limits))? {
        Ok(img) => {
            let pixels = u64::from(img.width()) * u64::from(img.height());
            prop_assert!(pixels >= 1 && pixels <= limits.max_pixels);
            prop_assert_eq!(img.as_rgb().as_raw().len() as u64, pixels * 3);
        }
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}

fn strict_limits() -> ImageLimits {
    ImageLimits {
        max_pixels: 64 * 64,
        max_alloc_bytes: 1 << 20,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_the_image_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        check_image(&bytes, &ImageLimits::default())?;
    }

    #[test]
    fn damaged_images_are_typed_errors(
        which in 0usize..7,
        muts in mutations(),
        strict in any::<bool>(),
    ) {
        let images = valid_images();
        let (_, valid) = &images[which % images.len()];
        let bytes = apply(valid.clone(), &muts);
        let limits = if strict { strict_limits() } else { ImageLimits::default() };
        check_image(&bytes, &limits)?;
    }

    /// A random format's magic followed by random bytes reaches every decoder's header
    /// parsing (random bytes alone rarely do).
    #[test]
    fn format_magic_then_garbage_never_panics(
        which in 0usize..7,
        keep in 0usize..40,
        tail in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let images = valid_images();
        let (_, valid) = &images[which % images.len()];
        let mut bytes = valid[..keep.min(valid.len())].to_vec();
        bytes.extend(tail);
        check_image(&bytes, &ImageLimits::default())?;
    }

    #[test]
    fn from_rgb_checks_the_buffer(w in 0u32..64, h in 0u32..64, len in 0usize..(64 * 64 * 3 + 1)) {
        match Image::from_rgb(w, h, vec![0; len]) {
            Ok(img) => prop_assert_eq!((img.width(), img.height()), (w, h)),
            Err(ImageError::BufferSize { .. } | ImageError::ZeroSize { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

/// Declared sizes far beyond the limits are refused from the header, before decoding.
#[test]
fn absurd_declared_dimensions_are_refused_cheaply() {
    let images = valid_images();
    let png = &images[0].1;
    for (w, h) in [
        (u32::MAX, u32::MAX),
        (1 << 30, 1 << 30),
        (0, 9),
        (0x7fff_ffff, 2),
    ] {
        let mut bytes = png.clone();
        bytes[16..20].copy_from_slice(&w.to_be_bytes());
        bytes[20..24].copy_from_slice(&h.to_be_bytes());
        let err = Image::from_bytes(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::TooManyPixels { .. } | ImageError::ZeroSize { .. }
            ),
            "{w}x{h}: {err}"
        );
    }
}

// ---- JSON files of a model folder ------------------------------------------------------

/// A JSON value with hostile leaves: wrong types, huge and negative numbers, deep nesting.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(1e308)),
        Just(json!(-1e-300)),
        any::<f64>()
            .prop_filter("JSON has no NaN", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        prop::sample::select(STRINGS).prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// Keys the parsers look for, so random objects reach past "missing field".
const KEYS: &[&str] = &[
    "model_type",
    "weight_map",
    "eos_token_id",
    "pad_token_id",
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "max_new_tokens",
    "a.weight",
    "x",
];

/// String leaves: shard names that leave the folder, model types, empty, odd bytes.
const STRINGS: &[&str] = &[
    "",
    "qwen2_vl",
    "blip-2",
    "model-00001.safetensors",
    "../model.safetensors",
    "/etc/passwd",
    "sub/../../x",
    "C:\\x",
    "\u{0}",
    "\u{202e}",
    "🦀",
];

/// A fresh folder under the target dir's temp space, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vlm-props-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_file_error(e: &Error) -> bool {
    matches!(
        e,
        Error::BadFile { .. } | Error::MissingFile { .. } | Error::UnsupportedModel { .. }
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn shard_indexes_are_parsed_or_refused(value in json_value(), raw in any::<bool>(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let dir = TempDir::new("index");
        let index = dir.path().join("model.safetensors.index.json");
        if raw {
            std::fs::write(&index, &bytes).unwrap();
        } else {
            std::fs::write(&index, value.to_string()).unwrap();
        }
        match shard_names(&index) {
            Ok(names) => {
                for n in names {
                    prop_assert!(vlm_contract::files::inside_folder(&n), "{n:?} leaves the folder");
                }
            }
            Err(e) => prop_assert!(is_file_error(&e), "{e}"),
        }
        let md = ModelDir::local(dir.path()).unwrap();
        if let Err(e) = md.safetensors() {
            prop_assert!(is_file_error(&e), "{e}");
        }
    }

    #[test]
    fn config_model_type_is_read_or_refused(value in json_value()) {
        let dir = TempDir::new("config");
        std::fs::write(dir.path().join("config.json"), value.to_string()).unwrap();
        let md = ModelDir::local(dir.path()).unwrap();
        if let Err(e) = md.model_type() {
            prop_assert!(is_file_error(&e), "{e}");
        }
    }

    /// generation_config.json: whatever it holds, reading it and resolving the default
    /// options against it ends in values or typed errors.
    #[test]
    fn generation_config_is_read_or_refused(value in json_value(), eos in prop::collection::vec(any::<u32>(), 0..3)) {
        match GenerationDefaults::from_json(&value.to_string(), &eos) {
            Ok(defaults) => {
                if let Err(e) = GenerationOptions::default().resolve(&defaults) {
                    prop_assert!(matches!(e, Error::InvalidOption { .. }), "{e}");
                }
            }
            Err(e) => prop_assert!(is_file_error(&e), "{e}"),
        }
    }
}
