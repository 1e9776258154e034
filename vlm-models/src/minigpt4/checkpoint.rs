//! Reading MiniGPT-4's weights as users have them: PyTorch zip checkpoints (`.pth`,
//! state dicts under `'model'` or at the top level), HF folders with `pytorch_model*.bin`
//! or safetensors shards, or one merged safetensors file.
//!
//! The reference builds the model from several files loaded one after the other with
//! `strict=False`, each overriding what an earlier one set: the EVA ViT from
//! `eva_vit_g.pth`, then the whole BLIP-2 checkpoint (whose `visual_encoder.*` replace
//! the ViT's), then MiniGPT-4's own checkpoint (`llama_proj`). [`LayeredWeights`] keeps
//! that order: a tensor is read from the last file (highest priority) that has it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::pickle::PthTensors;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use vlm_contract::{Error, Result};

/// One file of tensors.
pub enum Source {
    /// A memory-mapped safetensors file.
    Safetensors(MmapedSafetensors),
    /// A PyTorch zip checkpoint.
    Pth(PthTensors),
}

impl Source {
    /// Opens a `.safetensors`, `.pth` / `.bin` / `.pt` file. PyTorch state dicts nested
    /// under `'model'` (as LAVIS and MiniGPT-4 save them) are found automatically.
    pub fn open(path: &Path) -> Result<Self> {
        if path.extension().is_some_and(|e| e == "safetensors") {
            // SAFETY: read-only memory mapping; modifying the file while loaded is
            // undefined behaviour, as with every mmap-based loader.
            let st =
                unsafe { MmapedSafetensors::new(path) }.map_err(|e| Error::bad_file(path, e))?;
            return Ok(Self::Safetensors(st));
        }
        Ok(Self::Pth(open_pth(path)?))
    }

    /// Every tensor name.
    pub fn names(&self) -> Vec<String> {
        match self {
            Self::Safetensors(st) => st.tensors().into_iter().map(|(n, _)| n).collect(),
            Self::Pth(t) => t.tensor_infos().keys().cloned().collect(),
        }
    }

    fn contains(&self, name: &str) -> bool {
        match self {
            Self::Safetensors(st) => st.get(name).is_ok(),
            Self::Pth(t) => t.tensor_infos().contains_key(name),
        }
    }

    fn load(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Self::Safetensors(st) => st.load(name, device),
            Self::Pth(t) => match crate::weights::without_panics(|| t.get(name))? {
                Some(t) => t.to_device(device),
                None => candle_core::bail!("tensor {name} not found"),
            },
        }
    }
}

/// `torch.save` files hold either the state dict itself or `{'model': state_dict, ...}`.
fn open_pth(path: &Path) -> Result<PthTensors> {
    let bad = |e: candle_core::Error| {
        Error::bad_file(
            path,
            format!("{e} (expected a PyTorch zip checkpoint saved by torch.save)"),
        )
    };
    // candle's pickle reader panics on some malformed pickles: it indexes past short
    // argument tuples (`_rebuild_tensor_v2` with fewer than 4 arguments) and overflows
    // arithmetic (a LONG1 integer of more than 8 bytes, a huge storage offset).
    let read = || {
        let nested = crate::weights::without_panics(|| PthTensors::new(path, Some("model")));
        match nested {
            Ok(t) if !t.tensor_infos().is_empty() => Ok(t),
            _ => crate::weights::without_panics(|| PthTensors::new(path, None)),
        }
    };
    // It also recurses once per nesting level of the pickled objects (parsing and dropping
    // them), and a stack overflow aborts the process: a list nested 20,000 deep in 40 kB
    // did. Each level takes at least one byte of pickle, so a stack sized from the
    // pickle's length cannot overflow.
    let stack = PICKLE_STACK_BASE + pickle_len(path)? as usize * PICKLE_STACK_PER_BYTE;
    let tensors = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("vlm-pth-reader".into())
            .stack_size(stack)
            .spawn_scoped(scope, read)
            .map_err(|e| Error::bad_file(path, format!("no thread to read it on: {e}")))?
            .join()
            .unwrap_or_else(|_| candle_core::bail!("its reader failed"))
            .map_err(bad)
    })?;
    let file_len = std::fs::metadata(path)
        .map_err(|e| Error::bad_file(path, e))?
        .len();
    for info in tensors.tensor_infos().values() {
        check_pth_tensor(info, file_len).map_err(bad)?;
    }
    Ok(tensors)
}

/// The largest pickle (`data.pkl`) read: a state dict pickles to a name, a storage key and
/// a shape per tensor, tens of kilobytes for a 7B model's few hundred tensors.
const MAX_PICKLE_BYTES: u64 = 2 << 20;
/// The pickle reader's stack: a base plus a bound on one nesting level's frames (parse
/// and drop, with room for unoptimised builds) per byte of pickle.
const PICKLE_STACK_BASE: usize = 16 << 20;
const PICKLE_STACK_PER_BYTE: usize = 1024;

/// The length of the checkpoint's pickle, refused past [`MAX_PICKLE_BYTES`] (which bounds
/// the reader's stack).
fn pickle_len(path: &Path) -> Result<u64> {
    let not_a_checkpoint = |e: String| {
        Error::bad_file(
            path,
            format!("{e} (expected a PyTorch zip checkpoint saved by torch.save)"),
        )
    };
    let file = std::fs::File::open(path).map_err(|e| Error::bad_file(path, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| not_a_checkpoint(e.to_string()))?;
    let mut len = None;
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| not_a_checkpoint(e.to_string()))?;
        if entry.name().is_ok_and(|n| n.ends_with("data.pkl")) {
            len = Some(entry.size());
            break;
        }
    }
    let len = len.ok_or_else(|| not_a_checkpoint("it holds no data.pkl".into()))?;
    if len > MAX_PICKLE_BYTES {
        return Err(not_a_checkpoint(format!(
            "its pickle is {len} bytes, over the {MAX_PICKLE_BYTES} a state dict needs"
        )));
    }
    Ok(len)
}

/// Refuses a tensor whose declared size cannot be in the file, before candle allocates
/// it: `torch.save` stores tensors uncompressed, so none is larger than the file, while
/// a damaged pickle may declare any shape (a 2^40-element tensor would abort the process
/// on allocation).
fn check_pth_tensor(
    info: &candle_core::pickle::TensorInfo,
    file_len: u64,
) -> candle_core::Result<()> {
    let bytes = info
        .layout
        .dims()
        .iter()
        .try_fold(info.dtype.size_in_bytes() as u64, |n, &d| {
            n.checked_mul(d as u64)
        })
        .and_then(|n| n.checked_add(info.layout.start_offset() as u64));
    match bytes {
        Some(n) if n <= file_len => Ok(()),
        _ => candle_core::bail!(
            "tensor {} declares shape {:?} ({}), more data than the {file_len}-byte file holds",
            info.name,
            info.layout.dims(),
            bytes.map_or("over 2^64 bytes".to_string(), |n| format!("{n} bytes")),
        ),
    }
}

struct Layer {
    /// Names in this file are the model's names without this prefix.
    prefix: String,
    source: Source,
    file: PathBuf,
}

/// Several checkpoints read as one, later layers overriding earlier ones.
#[derive(Default)]
pub struct LayeredWeights {
    layers: Vec<Layer>,
}

impl LayeredWeights {
    /// Adds a file on top (it overrides everything added before); its names get `prefix`
    /// prepended (e.g. `visual_encoder.` for the bare ViT state dict).
    pub fn push(&mut self, file: PathBuf, prefix: &str) -> Result<()> {
        let source = Source::open(&file)?;
        self.layers.push(Layer {
            prefix: prefix.to_string(),
            source,
            file,
        });
        Ok(())
    }

    /// Adds every file of `above` on top, in its order.
    pub fn extend(&mut self, above: LayeredWeights) {
        self.layers.extend(above.layers);
    }

    /// The layer (highest priority first) holding `name`, and the name inside it.
    fn find<'a>(&'a self, name: &'a str) -> Option<(&'a Layer, &'a str)> {
        self.layers.iter().rev().find_map(|l| {
            let inner = name.strip_prefix(l.prefix.as_str())?;
            l.source.contains(inner).then_some((l, inner))
        })
    }

    /// Every name, each with the file it is read from.
    pub fn names(&self) -> BTreeMap<String, PathBuf> {
        let mut out = BTreeMap::new();
        for l in &self.layers {
            for n in l.source.names() {
                out.insert(format!("{}{n}", l.prefix), l.file.clone());
            }
        }
        out
    }

    /// The files, lowest priority first.
    pub fn files(&self) -> Vec<PathBuf> {
        self.layers.iter().map(|l| l.file.clone()).collect()
    }

    /// Loads every tensor whose name starts with one of `prefixes` (in the source dtype,
    /// on the CPU): what `vlm convert` writes into one safetensors file.
    pub fn collect(&self, prefixes: &[&str]) -> Result<BTreeMap<String, Tensor>> {
        let names: BTreeSet<String> = self
            .names()
            .into_keys()
            .filter(|n| prefixes.iter().any(|p| n.starts_with(p)))
            .collect();
        let mut out = BTreeMap::new();
        for n in names {
            let (layer, inner) = self.find(&n).ok_or_else(|| self.missing(&n))?;
            let t = layer
                .source
                .load(inner, &Device::Cpu)
                .map_err(|e| Error::bad_file(&layer.file, e))?;
            out.insert(n, t);
        }
        Ok(out)
    }

    fn missing(&self, name: &str) -> candle_core::Error {
        let files: Vec<String> = self
            .layers
            .iter()
            .map(|l| l.file.display().to_string())
            .collect();
        candle_core::Error::Msg(format!(
            "tensor {name} is in none of the checkpoint files ({})",
            files.join(", ")
        ))
    }
}

impl SimpleBackend for LayeredWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "tensor {name} has shape {:?} but the config implies {:?}",
                t.dims(),
                s.dims()
            );
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let (layer, inner) = self.find(name).ok_or_else(|| self.missing(name))?;
        // Cast on the device: a host cast of a 7B model runs on one core for minutes.
        layer.source.load(inner, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.find(name).is_some()
    }
}

/// The weight files of an HF model folder: safetensors (sharded or not), else PyTorch
/// `pytorch_model*.bin` (2023 Vicuna folders are saved that way).
pub fn hf_folder_weights(dir: &Path) -> Result<Vec<PathBuf>> {
    for (index, single) in [
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ] {
        let index = dir.join(index);
        if index.is_file() {
            let shards = vlm_contract::files::shard_names(&index)?;
            return Ok(shards.into_iter().map(|s| dir.join(s)).collect());
        }
        if dir.join(single).is_file() {
            return Ok(vec![dir.join(single)]);
        }
    }
    Err(Error::MissingFile {
        path: dir.join("model.safetensors"),
        hint: "the language model folder has no model.safetensors(.index.json) or pytorch_model.bin(.index.json)".into(),
    })
}
