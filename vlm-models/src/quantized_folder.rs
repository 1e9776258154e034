//! Quantized folders: what a load reads is recorded so that a quantized model can be
//! written once (`save_quantized`) and loaded again without quantizing (a GGUF file with
//! every tensor the model reads, quantized ones in their GGML block types, next to the
//! original config, tokenizer and processor files). Also counts the bytes a loaded model
//! holds, for `info()`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use vlm_contract::model::LoadOptions;
use vlm_contract::{Error, Quantization, Result};

use crate::load_log::{self, TARGET};
use crate::progress::Progress;
use crate::quant::{QuantKind, QuantPolicy, QuantStore, Quantizer};
use vlm_contract::files::ModelDir;

/// The weights file of a quantized folder.
pub const QUANTIZED_WEIGHTS: &str = "model.gguf";
/// The marker and description of a quantized folder.
pub const QUANTIZATION_FILE: &str = "quantization.json";

/// quantization.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizationInfo {
    /// The language model's quantization.
    pub quantization: String,
    /// The vision tower's.
    pub vision: String,
    /// Bytes of weights the model holds.
    pub weight_bytes: u64,
    /// Tensors stored quantized / in float.
    pub quantized_tensors: usize,
    /// Tensors stored in float.
    pub float_tensors: usize,
}

impl QuantizationInfo {
    /// The user-facing quantization of the language model.
    pub fn quantization(&self) -> Quantization {
        Quantization::parse(&self.quantization).unwrap_or_default()
    }
}

/// Shared by the loaders of one model: the [`QuantStore`] of its quantized tensors and
/// float reads, and quantization.json when the folder is a saved quantized one.
#[derive(Clone, Default)]
pub struct LoadContext {
    /// Quantized tensors made or loaded, and float tensors read.
    pub store: Arc<QuantStore>,
    saved: Option<QuantizationInfo>,
}

impl LoadContext {
    /// A context for an ordinary load; `keep` holds the float tensors for saving.
    pub fn new(keep: bool) -> Self {
        Self {
            store: Arc::new(QuantStore::new(keep)),
            saved: None,
        }
    }

    /// The context of a model folder: a saved quantized folder's tensors when it is one.
    pub fn for_dir(root: &Path, device: &Device) -> Result<(Self, Option<GgufFloats>)> {
        let info_path = root.join(QUANTIZATION_FILE);
        if !info_path.is_file() {
            return Ok((Self::new(false), None));
        }
        let text =
            std::fs::read_to_string(&info_path).map_err(|e| Error::bad_file(&info_path, e))?;
        let info: QuantizationInfo =
            serde_json::from_str(&text).map_err(|e| Error::bad_file(&info_path, e))?;
        let gguf = root.join(QUANTIZED_WEIGHTS);
        let (quantized, floats) = read_gguf(&gguf, device)?;
        Ok((
            Self {
                store: Arc::new(QuantStore::from_saved(quantized)),
                saved: Some(info),
            },
            Some(floats),
        ))
    }

    /// The (language model, vision) quantization to load with: a saved folder loads as it
    /// was saved, whatever the options ask.
    pub fn quantization(&self, options: &LoadOptions) -> (Quantization, Option<Quantization>) {
        match &self.saved {
            Some(info) => (
                info.quantization(),
                Some(Quantization::parse(&info.vision).unwrap_or_default()),
            ),
            None => (options.quantization, options.vision_quantization),
        }
    }

    /// quantization.json of a saved folder this context was loaded from.
    pub fn saved(&self) -> Option<&QuantizationInfo> {
        self.saved.as_ref()
    }

    /// `backend` with its reads recorded.
    pub fn record<B: SimpleBackend>(&self, backend: B) -> Recorded<B> {
        Recorded {
            inner: backend,
            store: self.store.clone(),
        }
    }

    /// Bytes of the weights the model holds.
    pub fn weight_bytes(&self) -> u64 {
        self.store.weight_bytes()
    }
}

/// A backend whose reads a [`LoadContext`] records.
pub struct Recorded<B> {
    inner: B,
    store: Arc<QuantStore>,
}

impl<B> Recorded<B> {
    fn note(&self, name: &str, t: &Tensor, started: Instant) {
        self.store.note_float(name, t);
        let bytes = (t.elem_count() * t.dtype().size_in_bytes()) as u64;
        load_log::tensor_read(bytes, started.elapsed());
    }
}

impl<B: SimpleBackend> SimpleBackend for Recorded<B> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let started = Instant::now();
        let t = self.inner.get(s, name, h, dtype, dev)?;
        self.note(name, &t, started);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let started = Instant::now();
        let t = self.inner.get_unchecked(name, dtype, dev)?;
        self.note(name, &t, started);
        Ok(t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// The float tensors of a quantized folder's GGUF file (cheap to clone).
#[derive(Clone)]
pub struct GgufFloats {
    tensors: Arc<HashMap<String, Arc<QTensor>>>,
}

impl SimpleBackend for GgufFloats {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() == &s {
            return Ok(t);
        }
        // GGUF holds at most 4 dimensions: longer shapes are saved flattened to 2.
        if t.elem_count() == s.elem_count() && s.rank() > 4 {
            return t.reshape(s);
        }
        candle_core::bail!(
            "tensor {name} has shape {:?}, expected {:?}",
            t.dims(),
            s.dims()
        )
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.tensors.get(name) {
            // Cast on the device (the host cast runs on one core).
            Some(q) => q.dequantize(&Device::Cpu)?.to_device(dev)?.to_dtype(dtype),
            None => candle_core::bail!("tensor {name} is not in the quantized model file"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

fn is_float(t: GgmlDType) -> bool {
    matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// Reads a GGUF file: quantized tensors onto `device`, float ones kept on the host.
fn read_gguf(path: &Path, device: &Device) -> Result<(HashMap<String, Arc<QTensor>>, GgufFloats)> {
    let bad =
        |e: candle_core::Error| Error::bad_file(path, vlm_contract::error::candle_message(&e));
    let mut reader = BufReader::new(File::open(path).map_err(|e| Error::bad_file(path, e))?);
    // candle's reader divides by a `general.alignment` of 0.
    let content =
        crate::weights::without_panics(|| gguf_file::Content::read(&mut reader)).map_err(bad)?;
    let file_len = std::fs::metadata(path)
        .map_err(|e| Error::bad_file(path, e))?
        .len();
    let mut quantized = HashMap::new();
    let mut floats = HashMap::new();
    let progress = Progress::new("reading", content.tensor_infos.len() as u64);
    for (name, info) in &content.tensor_infos {
        check_gguf_tensor(name, info, file_len).map_err(|m| Error::bad_file(path, m))?;
        let started = Instant::now();
        if is_float(info.ggml_dtype) {
            // Counted as read when the model takes it (dequantized onto its device).
            let t = content
                .tensor(&mut reader, name, &Device::Cpu)
                .map_err(bad)?;
            floats.insert(name.clone(), Arc::new(t));
        } else {
            let t = content.tensor(&mut reader, name, device).map_err(bad)?;
            load_log::tensor_read(t.storage_size_in_bytes() as u64, started.elapsed());
            quantized.insert(name.clone(), Arc::new(t));
        }
        progress.inc();
    }
    Ok((
        quantized,
        GgufFloats {
            tensors: Arc::new(floats),
        },
    ))
}

/// Refuses a tensor candle's GGUF reader would crash on: a shape whose element count
/// overflows (a panic), an empty tensor (candle casts the empty buffer's dangling pointer
/// to the block type, which aborts), or more bytes than the file holds. `save_quantized`
/// never writes such tensors; a damaged or hand-made file may.
fn check_gguf_tensor(
    name: &str,
    info: &gguf_file::TensorInfo,
    file_len: u64,
) -> std::result::Result<(), String> {
    let dims = info.shape.dims();
    let elems = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
    let block = info.ggml_dtype.block_size() as u64;
    let bytes = elems
        .filter(|&n| n > 0 && n % block == 0)
        .and_then(|n| (n / block).checked_mul(info.ggml_dtype.type_size() as u64));
    match bytes {
        Some(b) if b <= file_len => Ok(()),
        _ => Err(format!(
            "tensor {name} has shape {dims:?} of {:?}, which is empty, not whole blocks or more \
             data than the {file_len}-byte file holds; the file is damaged (save the quantized \
             folder again)",
            info.ggml_dtype
        )),
    }
}

/// What `save_quantized` wrote.
#[derive(Debug, Clone)]
pub struct SaveReport {
    /// quantization.json's content.
    pub info: QuantizationInfo,
    /// Bytes of model.gguf.
    pub file_bytes: u64,
}

/// Writes the tensors `ctx` recorded into `dst` (model.gguf + quantization.json) and
/// copies every non-weight file of `src` (configs, tokenizer, processor; sub-folders too).
pub fn write_folder(
    ctx: &LoadContext,
    src: &Path,
    dst: &Path,
    options: &LoadOptions,
) -> Result<SaveReport> {
    let started = Instant::now();
    tracing::info!(target: TARGET, "writing the quantized folder {}", dst.display());
    std::fs::create_dir_all(dst).map_err(|e| Error::bad_file(dst, e))?;
    copy_non_weights(src, dst)?;
    let mut tensors: BTreeMap<String, QTensor> = BTreeMap::new();
    let floats = ctx.store.floats();
    let made = ctx.store.made();
    let progress = Progress::new("saving", (floats.len() + made.len()) as u64);
    progress.set_message("float tensors");
    for (name, t) in floats {
        let Some(t) = t else {
            return Err(Error::Weights(format!(
                "{name} was not kept: load with LoadContext::new(true) to save"
            )));
        };
        let mut t = t.to_device(&Device::Cpu)?;
        if t.rank() > 4 {
            let d0 = t.dim(0)?;
            t = t.reshape((d0, t.elem_count() / d0))?;
        }
        let ggml = match t.dtype() {
            DType::F16 => GgmlDType::F16,
            DType::BF16 => GgmlDType::BF16,
            _ => GgmlDType::F32,
        };
        tensors.insert(name, QTensor::quantize(&t.contiguous()?, ggml)?);
        progress.inc();
    }
    let float_tensors = tensors.len();
    progress.set_message("quantized tensors");
    for (name, q) in &made {
        let host = crate::quant::to_host(q)?;
        tensors.insert(name.clone(), host);
        progress.inc();
    }
    tracing::debug!(
        target: TARGET,
        "{float_tensors} float and {} quantized tensors gathered on the host in {:.2} s",
        made.len(),
        started.elapsed().as_secs_f64()
    );
    progress.set_message("writing model.gguf");
    let info = QuantizationInfo {
        quantization: options.quantization.as_str().to_string(),
        vision: options
            .vision_quantization
            .unwrap_or(options.quantization)
            .as_str()
            .to_string(),
        weight_bytes: ctx.weight_bytes(),
        quantized_tensors: made.len(),
        float_tensors,
    };
    let path = dst.join(QUANTIZED_WEIGHTS);
    let mut file =
        std::io::BufWriter::new(File::create(&path).map_err(|e| Error::bad_file(&path, e))?);
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let kind = gguf_file::Value::String(info.quantization.clone());
    gguf_file::write(&mut file, &[("vlm.quantization", &kind)], &refs)
        .map_err(|e| Error::bad_file(&path, e))?;
    drop(file);
    let text = serde_json::to_string_pretty(&info).map_err(|e| Error::bad_file(dst, e))?;
    std::fs::write(dst.join(QUANTIZATION_FILE), text).map_err(|e| Error::bad_file(dst, e))?;
    let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    tracing::info!(
        target: TARGET,
        "wrote {} ({:.2} GB) in {:.2} s",
        path.display(),
        file_bytes as f64 / 1e9,
        started.elapsed().as_secs_f64()
    );
    Ok(SaveReport { info, file_bytes })
}

fn is_weight_file(name: &str) -> bool {
    [".safetensors", ".bin", ".pth", ".pt", ".gguf"]
        .iter()
        .any(|ext| name.ends_with(ext))
        || name.ends_with(".safetensors.index.json")
        || name.ends_with(".bin.index.json")
}

fn copy_non_weights(src: &Path, dst: &Path) -> Result<()> {
    let entries = std::fs::read_dir(src).map_err(|e| Error::bad_file(src, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::bad_file(src, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let target = dst.join(&name);
        if path.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| Error::bad_file(&target, e))?;
            copy_non_weights(&path, &target)?;
        } else if !is_weight_file(&name) && name != QUANTIZATION_FILE {
            std::fs::copy(&path, &target).map_err(|e| Error::bad_file(&target, e))?;
        }
    }
    Ok(())
}

/// The tensors of a plain folder (not a saved quantized one), as a family reads them.
pub struct WeightSource<B> {
    /// The reader.
    pub backend: B,
    /// The files it reads.
    pub files: Vec<PathBuf>,
    /// Every tensor name it holds.
    pub names: HashSet<String>,
}

impl WeightSource<MmapedSafetensors> {
    /// Safetensors `files`, memory-mapped.
    pub fn safetensors(files: Vec<PathBuf>) -> Result<Self> {
        let names = tensor_names(&files)?;
        // SAFETY: the files are memory-mapped read-only; modifying them while loaded is
        // undefined behaviour, as with every mmap-based loader.
        let backend = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| Error::Weights(vlm_contract::error::candle_message(&e)))?;
        Ok(Self {
            backend,
            files,
            names,
        })
    }
}

/// How a family reads its weights: the VarBuilder (recorded), the load context and the
/// quantization policy, for a plain folder or a saved quantized one.
pub struct Weights {
    /// Float tensors.
    pub vb: VarBuilder<'static>,
    /// Quantized tensors and what was read.
    pub ctx: LoadContext,
    /// Which part gets which kind.
    pub policy: QuantPolicy,
    /// The language model's quantization (what `info()` reports).
    pub quantization: Quantization,
    /// Every tensor name the weights hold (float and quantized), to detect layouts.
    pub names: HashSet<String>,
    /// The files the weights are read from.
    pub files: Vec<PathBuf>,
    /// The runtime options every layer built from these weights runs with.
    pub runtime: vlm_contract::RuntimeOptions,
}

impl Weights {
    /// Opens the weights of `dir` (its safetensors, or its model.gguf when it is a saved
    /// quantized folder). `ctx` is given when the load is to be saved.
    pub fn open(
        dir: &ModelDir,
        options: &LoadOptions,
        ctx: Option<&LoadContext>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::open_from(dir, options, ctx, dtype, device, |dir| {
            WeightSource::safetensors(dir.safetensors()?)
        })
    }

    /// [`Self::open`] for a family whose plain folders hold other files than one set of
    /// safetensors (MiniGPT-4's release checkpoints): `source` opens them; it is not
    /// called for a saved quantized folder, which is read as any other.
    pub fn open_from<B: SimpleBackend + 'static>(
        dir: &ModelDir,
        options: &LoadOptions,
        ctx: Option<&LoadContext>,
        dtype: DType,
        device: &Device,
        source: impl FnOnce(&ModelDir) -> Result<WeightSource<B>>,
    ) -> Result<Self> {
        let (ctx, floats) = match ctx {
            Some(c) => (c.clone(), None),
            None => LoadContext::for_dir(dir.root(), device)?,
        };
        let (quantization, vision) = ctx.quantization(options);
        let (backend, files, names, what): (Box<dyn SimpleBackend>, _, HashSet<String>, _) =
            match floats {
                Some(f) => {
                    let names = f
                        .tensors
                        .keys()
                        .cloned()
                        .chain(ctx.store.saved_names())
                        .collect();
                    let what = format!(
                        "{} (a saved quantized folder: quantization {}, vision {})",
                        dir.path(QUANTIZED_WEIGHTS).display(),
                        quantization.as_str(),
                        vision.unwrap_or(quantization).as_str()
                    );
                    let files = vec![dir.path(QUANTIZED_WEIGHTS)];
                    (Box::new(ctx.record(f)), files, names, what)
                }
                None => {
                    let s = source(dir)?;
                    let safetensors = s
                        .files
                        .iter()
                        .all(|f| f.extension().is_some_and(|e| e == "safetensors"));
                    let what = format!(
                        "{} {} file(s) in {}",
                        s.files.len(),
                        if safetensors { "safetensors" } else { "weight" },
                        dir.root().display()
                    );
                    (Box::new(ctx.record(s.backend)), s.files, s.names, what)
                }
            };
        tracing::info!(
            target: TARGET,
            "weights: {what}, {} tensors, read as {} onto {}",
            names.len(),
            dtype.as_str(),
            vlm_contract::device::device_name(device)
        );
        load_log::weights_opened(names.len());
        Ok(Self {
            vb: VarBuilder::from_backend(backend, dtype, device.clone()),
            ctx,
            policy: QuantPolicy::new(quantization, vision),
            quantization,
            names,
            files,
            runtime: options.runtime,
        })
    }

    /// A quantizer of `kind` over this load's store.
    pub fn quantizer(&self, kind: QuantKind) -> Quantizer {
        Quantizer::new(kind, Some(self.ctx.store.clone()), self.runtime)
    }
}

/// Tensor names of safetensors files (headers only).
pub fn tensor_names(files: &[PathBuf]) -> Result<HashSet<String>> {
    let mut names = HashSet::new();
    for f in files {
        // SAFETY: read-only mapping; only the header is read.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(f) }
            .map_err(|e| Error::bad_file(f, e))?;
        names.extend(st.tensors().into_iter().map(|(n, _)| n));
    }
    Ok(names)
}
