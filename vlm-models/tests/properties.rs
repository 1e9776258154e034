//! Property tests: every model file a loader reads, damaged, ends in a typed error (or a
//! model that answers), never a panic or an abort. Each case mirrors a fixture model
//! folder (symlinks), replaces one file with a mutated copy and calls the real entry
//! point, `vlm_models::load_dir`:
//!
//! * config.json of every family with one field made hostile (zero, negative, huge,
//!   wrong type, missing);
//! * model.safetensors with its header damaged (lengths, offsets, dtypes, truncation);
//! * a saved quantized folder's model.gguf and quantization.json;
//! * MiniGPT-4's `.pth` checkpoints (zip + pickle), damaged and as random pickle programs.
//!
//! A model that loads is asked to describe a small image, so hostile settings that pass
//! the loader are caught where they would bite. Case counts are fixed per test so the
//! suite stays within its time budget; `PROPTEST_CASES` overrides them all.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use common::hostile::{apply, mutations, TempDir};
use proptest::prelude::*;
use serde_json::{json, Value};
use vlm_contract::files::ModelDir;
use vlm_contract::{Error, GenerationOptions, Image, Quantization};
use vlm_models::LoadOptions;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every fixture model folder.
fn model_folders() -> Vec<PathBuf> {
    let f = fixtures();
    [
        "qwen/qwen2_vl",
        "qwen/qwen2_5_vl",
        "qwen/qwen3_vl",
        "blip2/opt",
        "blip2/t5",
        "minigpt4/vicuna0",
        "minigpt4/llama2",
    ]
    .iter()
    .map(|d| f.join(d).join("model"))
    .collect()
}

/// Loads `dir` and, when that works, describes a small image: every failure must be an
/// [`Error`] (a panic fails the case through proptest).
fn load_and_describe(dir: &Path) -> Result<(), Error> {
    let md = ModelDir::local(dir)?;
    let model = vlm_models::load_dir(&md, &LoadOptions::default())?;
    let image = Image::from_rgb(20, 12, vec![120; 20 * 12 * 3])?;
    model.describe(&image, &GenerationOptions::greedy(2))?;
    Ok(())
}

/// The messages must say something the user can act on.
fn check_error(e: &Error) -> Result<(), TestCaseError> {
    let text = e.to_string();
    prop_assert!(text.len() > 10, "uninformative error: {text:?}");
    Ok(())
}

// ---- config.json ------------------------------------------------------------------------

/// Every leaf of a JSON value as a path of keys and indexes.
fn leaves(v: &Value, path: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                path.push(json!(k));
                leaves(child, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(json!(i));
                leaves(child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
    // Objects and arrays themselves can be replaced or removed too.
    out.push(path.clone());
}

fn at_path<'a>(v: &'a mut Value, path: &[Value]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, k| match k {
        Value::String(k) => v.get_mut(k.as_str()),
        Value::Number(i) => v.get_mut(i.as_u64()? as usize),
        _ => None,
    })
}

/// Values that break configs: zero, negative, huge, fractional, wrong types.
fn hostile_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None), // the key removed
        Just(Some(json!(0))),
        Just(Some(json!(-1))),
        Just(Some(json!(1))),
        Just(Some(json!(3))),
        Just(Some(json!(u64::MAX))),
        Just(Some(json!(1u64 << 40))),
        Just(Some(json!(1u64 << 31))),
        Just(Some(json!(100_000))),
        Just(Some(json!(1e308))),
        Just(Some(json!(0.5))),
        Just(Some(json!(-0.0))),
        Just(Some(json!("64"))),
        Just(Some(Value::Null)),
        Just(Some(json!(true))),
        Just(Some(json!([]))),
        Just(Some(json!({}))),
        any::<u16>().prop_map(|n| Some(json!(n))),
    ]
}

/// A mirror of `model` with config.json's `pick`-th field replaced by `value` (`None`:
/// removed). A MiniGPT-4 folder's language model config is a target too.
fn hostile_config(model: &Path, pick: usize, value: Option<Value>, llm: bool) -> (TempDir, String) {
    let dir = TempDir::mirror(model, "config");
    let rel = if llm && model.join("llm/config.json").is_file() {
        "llm/config.json"
    } else {
        "config.json"
    };
    let text = std::fs::read_to_string(model.join(rel)).unwrap();
    let mut config: Value = serde_json::from_str(&text).unwrap();
    let mut paths = vec![];
    leaves(&config, &mut vec![], &mut paths);
    let path = &paths[pick % paths.len()];
    let what = format!("{rel} {path:?} = {value:?}");
    match (path.split_last(), value) {
        (None, Some(v)) => config = v,
        (None, None) => config = json!({}),
        (Some((last, parent)), value) => {
            if let Some(parent) = at_path(&mut config, parent) {
                match (parent, last, value) {
                    (Value::Object(m), Value::String(k), Some(v)) => {
                        m.insert(k.clone(), v);
                    }
                    (Value::Object(m), Value::String(k), None) => {
                        m.remove(k);
                    }
                    (Value::Array(a), Value::Number(i), Some(v)) => {
                        a[i.as_u64().unwrap() as usize] = v;
                    }
                    (Value::Array(a), Value::Number(i), None) => {
                        a.remove(i.as_u64().unwrap() as usize);
                    }
                    _ => {}
                }
            }
        }
    }
    dir.replace(rel, config.to_string().as_bytes());
    (dir, what)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn hostile_configs_are_refused_or_work(
        family in 0usize..7,
        pick in any::<usize>(),
        value in hostile_value(),
        llm in any::<bool>(),
    ) {
        let model = &model_folders()[family];
        let (dir, what) = hostile_config(model, pick, value, llm);
        let result = std::panic::catch_unwind(|| load_and_describe(dir.path()));
        prop_assert!(result.is_ok(), "{}: {what} panicked", model.display());
        if let Ok(Err(e)) = result {
            check_error(&e)?;
        }
    }
}

// ---- images through each family's preprocessing ----------------------------------------

/// Each fixture model, loaded once per test run.
fn loaded_models() -> &'static [Box<dyn vlm_contract::VisionLanguageModel>] {
    static MODELS: OnceLock<Vec<Box<dyn vlm_contract::VisionLanguageModel>>> = OnceLock::new();
    MODELS.get_or_init(|| {
        model_folders()
            .iter()
            .map(|dir| vlm_models::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap())
            .collect()
    })
}

/// Sizes from one pixel to long strips: Qwen-VL resizes to its pixel budget and refuses
/// extreme aspect ratios; BLIP-2 and MiniGPT-4 resize everything to 224x224.
fn image_side() -> impl Strategy<Value = u32> {
    prop_oneof![1u32..8, 8u32..300, Just(2000)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn every_image_size_is_preprocessed_or_refused(
        family in 0usize..7,
        width in image_side(),
        height in image_side(),
        seed in any::<u8>(),
    ) {
        let model = &loaded_models()[family];
        let mut pixels = vec![seed; width as usize * height as usize * 3];
        pixels[0] = seed.wrapping_add(128);
        let image = Image::from_rgb(width, height, pixels).unwrap();
        // A small pixel budget keeps Qwen-VL's vision tower cheap; the resize to it is what
        // is under test.
        let options = GenerationOptions {
            max_pixels: Some(64 * 32 * 32),
            ..GenerationOptions::greedy(1)
        };
        match model.describe(&image, &options) {
            Ok(_) => {}
            Err(e) => {
                prop_assert!(
                    matches!(e, Error::InvalidOption { .. } | Error::Image(_) | Error::PromptTooLong { .. }),
                    "{width}x{height}: {e}"
                );
                check_error(&e)?;
            }
        }
    }
}

// ---- safetensors ------------------------------------------------------------------------

/// Mutations aimed at the safetensors header: the 8-byte length, then the JSON.
fn damage_header(bytes: &[u8], muts: &[common::hostile::Mutation]) -> Vec<u8> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let head_end = (8 + header_len + 64).min(bytes.len());
    let mut head = apply(bytes[..head_end].to_vec(), muts);
    // Keep the tensor data (unless a truncation cut the head short: then cut it all).
    if head.len() >= head_end {
        head.extend_from_slice(&bytes[head_end..]);
    }
    head
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn damaged_safetensors_are_refused_or_work(
        family in 0usize..5,
        muts in mutations(),
    ) {
        let model = &model_folders()[family];
        let dir = TempDir::mirror(model, "safetensors");
        let bytes = std::fs::read(model.join("model.safetensors")).unwrap();
        dir.replace("model.safetensors", &damage_header(&bytes, &muts));
        if let Err(e) = load_and_describe(dir.path()) {
            check_error(&e)?;
        }
    }

    /// A JSON header of our choosing: hostile shapes, offsets and dtypes.
    #[test]
    fn hostile_safetensors_headers_are_refused(
        shape in prop::collection::vec(prop_oneof![Just(0u64), Just(1), Just(64), Just(1 << 32), Just(u64::MAX), any::<u64>()], 0..5),
        start in prop_oneof![Just(0u64), Just(4), Just(u64::MAX), any::<u64>()],
        end in prop_oneof![Just(0u64), Just(256), Just(u64::MAX), any::<u64>()],
        dtype in prop::sample::select(&["F32", "F16", "BF16", "U8", "I64", "F8_E4M3", "BOOL", "U16", "C64", "x"][..]),
    ) {
        let model = &model_folders()[0];
        let dir = TempDir::mirror(model, "stheader");
        let header = json!({
            "model.embed_tokens.weight": {"dtype": dtype, "shape": shape, "data_offsets": [start, end]},
        })
        .to_string();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0u8; 256]);
        dir.replace("model.safetensors", &bytes);
        let result = load_and_describe(dir.path());
        prop_assert!(result.is_err(), "a header with one tensor cannot make a model");
        check_error(&result.unwrap_err())?;
    }
}

// ---- quantized folders ------------------------------------------------------------------

/// A saved Int8 folder of the Qwen2-VL fixture, made once per test run.
fn quantized_folder() -> &'static Path {
    static DIR: OnceLock<TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = TempDir::new("quantized");
        let options = LoadOptions {
            quantization: Quantization::Int8,
            ..Default::default()
        };
        let src = model_folders()[0].clone();
        let out = dir.path().join("q");
        vlm_models::save_quantized(src.to_str().unwrap(), &out, &options).unwrap();
        dir
    })
    .path()
    .join("q")
    .leak()
}

/// GGUF: magic, version, tensor count, metadata count, then the key-value pairs and
/// tensor infos; mutations land in the first 4 KiB, where all of that lives.
fn damage_gguf(bytes: &[u8], muts: &[common::hostile::Mutation]) -> Vec<u8> {
    let head_end = bytes.len().min(4096);
    let mut head = apply(bytes[..head_end].to_vec(), muts);
    if head.len() >= head_end {
        head.extend_from_slice(&bytes[head_end..]);
    }
    head
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn damaged_gguf_is_refused_or_works(muts in mutations()) {
        let src = quantized_folder();
        let dir = TempDir::mirror(src, "gguf");
        let bytes = std::fs::read(src.join("model.gguf")).unwrap();
        dir.replace("model.gguf", &damage_gguf(&bytes, &muts));
        if let Err(e) = load_and_describe(dir.path()) {
            check_error(&e)?;
        }
    }

    #[test]
    fn hostile_quantization_json_is_refused_or_works(pick in any::<usize>(), value in hostile_value()) {
        let src = quantized_folder();
        let dir = TempDir::mirror(src, "qjson");
        let text = std::fs::read_to_string(src.join("quantization.json")).unwrap();
        let mut info: Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<String> = info.as_object().unwrap().keys().cloned().collect();
        let key = &keys[pick % keys.len()];
        match value {
            Some(v) => info[key] = v,
            None => {
                info.as_object_mut().unwrap().remove(key);
            }
        }
        dir.replace("quantization.json", info.to_string().as_bytes());
        if let Err(e) = load_and_describe(dir.path()) {
            check_error(&e)?;
        }
    }
}

// ---- .pth checkpoints -------------------------------------------------------------------

/// Pickle opcodes the PyTorch reader handles, with hostile arguments.
fn pickle_op() -> impl Strategy<Value = Vec<u8>> {
    let arg_u32 = prop_oneof![
        Just(0u32),
        Just(1),
        Just(u32::MAX),
        Just(1 << 31),
        any::<u32>()
    ];
    prop_oneof![
        Just(vec![0x80, 2]), // PROTO 2
        Just(vec![b'}']),    // EMPTY_DICT
        Just(vec![b')']),    // EMPTY_TUPLE
        Just(vec![b']']),    // EMPTY_LIST
        Just(vec![b'(']),    // MARK
        Just(vec![b't']),    // TUPLE
        Just(vec![0x85]),    // TUPLE1
        Just(vec![0x86]),    // TUPLE2
        Just(vec![0x87]),    // TUPLE3
        Just(vec![b'u']),    // SETITEMS
        Just(vec![b's']),    // SETITEM
        Just(vec![b'e']),    // APPENDS
        Just(vec![b'R']),    // REDUCE
        Just(vec![b'b']),    // BUILD
        Just(vec![b'Q']),    // BINPERSID
        Just(vec![0x88]),    // NEWTRUE
        Just(vec![0x89]),    // NEWFALSE
        Just(vec![b'N']),    // NONE
        Just(vec![b'.']),    // STOP
        Just(b"ctorch._utils\n_rebuild_tensor_v2\n".to_vec()),
        Just(b"ctorch._tensor\n_rebuild_from_type_v2\n".to_vec()),
        Just(b"ctorch._utils\n_rebuild_parameter\n".to_vec()),
        Just(b"ctorch\nFloatStorage\n".to_vec()),
        Just(b"X\x07\0\0\0storage".to_vec()),
        Just(b"X\x01\0\0\x000".to_vec()),
        Just(b"X\x05\0\0\0model".to_vec()),
        Just(b"X\x03\0\0\0cpu".to_vec()),
        Just(b"X\x08\0\0\0w.weight".to_vec()),
        any::<u8>().prop_map(|n| vec![b'K', n]), // BININT1
        any::<u8>().prop_map(|n| vec![b'q', n]), // BINPUT
        any::<u8>().prop_map(|n| vec![b'h', n]), // BINGET
        arg_u32.clone().prop_map(|n| {
            // BININT
            let mut v = vec![b'J'];
            v.extend_from_slice(&n.to_le_bytes());
            v
        }),
        arg_u32.clone().prop_map(|n| {
            // LONG_BINPUT
            let mut v = vec![b'r'];
            v.extend_from_slice(&n.to_le_bytes());
            v
        }),
        arg_u32.clone().prop_map(|n| {
            // LONG_BINGET
            let mut v = vec![b'j'];
            v.extend_from_slice(&n.to_le_bytes());
            v
        }),
        arg_u32.prop_map(|n| {
            // BINUNICODE with a declared length
            let mut v = vec![b'X'];
            v.extend_from_slice(&n.to_le_bytes());
            v
        }),
        prop_oneof![Just(0u8), Just(8), Just(255)].prop_map(|n| {
            // LONG1
            let mut v = vec![0x8a, n];
            v.extend(std::iter::repeat_n(0xff, usize::from(n.min(8))));
            v
        }),
        any::<u8>().prop_map(|b| vec![b]), // anything
    ]
}

/// A `torch.save`-shaped zip holding `pickle` as data.pkl and a small storage "0".
fn pth_zip(pickle: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut out);
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", stored).unwrap();
        zip.write_all(pickle).unwrap();
        zip.start_file("archive/data/0", stored).unwrap();
        zip.write_all(&[0u8; 64]).unwrap();
        zip.start_file("archive/version", stored).unwrap();
        zip.write_all(b"3\n").unwrap();
        zip.finish().unwrap();
    }
    out.into_inner()
}

/// Opens a `.pth` through the MiniGPT-4 reader and loads every tensor it lists.
fn read_pth(path: &Path) -> Result<(), Error> {
    let mut weights = vlm_models::minigpt4::LayeredWeights::default();
    weights.push(path.to_path_buf(), "")?;
    weights.collect(&[""])?;
    Ok(())
}

/// A valid state dict `{"w.weight": tensor}` whose storage is `data/0`; the property
/// test splices hostile opcodes into it.
fn valid_pickle() -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'(', b'X', 8, 0, 0, 0];
    p.extend_from_slice(b"w.weight");
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    // persistent id ("storage", FloatStorage, "0", "cpu", 16)
    p.extend_from_slice(
        b"(X\x07\0\0\0storagectorch\nFloatStorage\nX\x01\0\0\x000X\x03\0\0\0cpuK\x10tQ",
    );
    // offset 0, size (4, 4), stride (4, 1), requires_grad False, hooks
    p.extend_from_slice(b"K\x00K\x04K\x04\x86K\x04K\x01\x86\x89ctorch\nOrderedDict\n)RtR");
    p.extend_from_slice(b"u.");
    p
}

static PTH_COUNTER: AtomicUsize = AtomicUsize::new(0);

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_pickles_are_refused_or_read(
        ops in prop::collection::vec(pickle_op(), 0..24),
        splice_at in any::<usize>(),
        into_valid in any::<bool>(),
    ) {
        let mut pickle = if into_valid { valid_pickle() } else { vec![] };
        let at = splice_at % (pickle.len() + 1);
        pickle.splice(at..at, ops.concat());
        let dir = TempDir::new("pickle");
        let n = PTH_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.path().join(format!("random{n}.pth"));
        std::fs::write(&path, pth_zip(&pickle)).unwrap();
        if let Err(e) = read_pth(&path) {
            check_error(&e)?;
        }
    }
}

#[test]
fn the_valid_pickle_reads() {
    let dir = TempDir::new("pickle-valid");
    let path = dir.path().join("valid.pth");
    std::fs::write(&path, pth_zip(&valid_pickle())).unwrap();
    let mut weights = vlm_models::minigpt4::LayeredWeights::default();
    weights.push(path, "").unwrap();
    let tensors = weights.collect(&[""]).unwrap();
    assert_eq!(tensors["w.weight"].dims(), &[4, 4]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// MiniGPT-4's own checkpoint (its smallest) damaged anywhere: zip directory, pickle
    /// or tensor data.
    #[test]
    fn damaged_pth_checkpoints_are_refused_or_work(muts in mutations()) {
        let model = &model_folders()[5];
        let dir = TempDir::mirror(model, "pth");
        let bytes = std::fs::read(model.join("pretrained_minigpt4.pth")).unwrap();
        dir.replace("pretrained_minigpt4.pth", &apply(bytes, &muts));
        if let Err(e) = load_and_describe(dir.path()) {
            check_error(&e)?;
        }
    }
}

/// Every field of every family's config.json set to each extreme value in turn (about
/// 2,000 loads, minutes): run by hand after changing a config reader,
/// `cargo test -p vlm-models --test properties -- --ignored`.
#[test]
#[ignore = "minutes: an exhaustive sweep, run by hand"]
fn every_config_field_at_every_extreme() {
    let mut failures = vec![];
    for model in model_folders() {
        for llm in [false, true] {
            if llm && !model.join("llm/config.json").is_file() {
                continue;
            }
            let rel = if llm {
                "llm/config.json"
            } else {
                "config.json"
            };
            let text = std::fs::read_to_string(model.join(rel)).unwrap();
            let mut paths = vec![];
            leaves(
                &serde_json::from_str(&text).unwrap(),
                &mut vec![],
                &mut paths,
            );
            for pick in 0..paths.len() {
                for value in [
                    json!(0),
                    json!(-1),
                    json!(u64::MAX),
                    json!(1u64 << 40),
                    json!(1e308),
                ] {
                    let (dir, what) = hostile_config(&model, pick, Some(value), llm);
                    match std::panic::catch_unwind(|| load_and_describe(dir.path())) {
                        Err(_) => failures.push(format!("{}: {what}", model.display())),
                        Ok(Err(e)) if e.to_string().len() <= 10 => {
                            failures.push(format!("{}: {what}: {e}", model.display()))
                        }
                        Ok(_) => {}
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
