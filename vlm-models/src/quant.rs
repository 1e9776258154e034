//! Quantization as a property of the linear layer: a [`Quantizer`] hands every model
//! constructor its linear layers, full precision or quantized (GGML blocks through
//! candle's `QMatMul`), so no model file branches on quantization.
//!
//! Weights are quantized one tensor at a time as they are read (on the host, rows split
//! across threads), so peak host memory stays near the quantized model's size. A
//! [`QuantStore`] records what was quantized (to save a quantized folder) or holds the
//! tensors of a saved one (so loading it does not quantize again).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use vlm_contract::{Quantization, RuntimeOptions};

use crate::layers::{Embedding, Linear};

/// How one group of linear layers is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuantKind {
    /// In the model dtype.
    #[default]
    Float,
    /// GGML Q8_0: blocks of 32 weights, one f16 scale (8.5 bits per weight).
    Q8_0,
    /// GGML Q4_K: super-blocks of 256 weights with 6-bit sub-block scales (4.5 bits per
    /// weight); Q4_0, then Q8_0, for rows that do not divide into 256.
    Q4K,
    /// GGML Q6_K: super-blocks of 256 weights (6.56 bits per weight); Q8_0 for rows that
    /// do not divide into 256.
    Q6K,
}

impl QuantKind {
    /// The block type for a `[out, in]` weight, or None to keep it in float (rows that
    /// do not divide into any block size).
    pub fn ggml_for(self, in_dim: usize) -> Option<GgmlDType> {
        match self {
            Self::Float => None,
            Self::Q4K if in_dim.is_multiple_of(256) => Some(GgmlDType::Q4K),
            Self::Q4K if in_dim.is_multiple_of(32) => Some(GgmlDType::Q4_0),
            Self::Q6K if in_dim.is_multiple_of(256) => Some(GgmlDType::Q6K),
            _ if in_dim.is_multiple_of(32) => Some(GgmlDType::Q8_0),
            _ => None,
        }
    }
}

/// Which kind each part of a model gets for a user's choice. Under int4 the vision tower
/// stays at 8 bits (4-bit vision towers are reported to describe images wrongly) and, as in
/// llama.cpp's Q4_K_M, the LM head is at 6 bits (its errors go straight into every logit)
/// and the token embeddings at 4. A tied head and embedding share one tensor, at the
/// head's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuantPolicy {
    /// Decoder (and encoder) blocks of the language model.
    pub text: QuantKind,
    /// The vision tower, Q-Former and projections into the language model.
    pub vision: QuantKind,
    /// The LM head.
    pub head: QuantKind,
    /// The token embedding table.
    pub embed: QuantKind,
}

impl QuantPolicy {
    /// The policy for `text` (the language model) and an optional vision override.
    pub fn new(text: Quantization, vision: Option<Quantization>) -> Self {
        let kind = |q: Quantization| match q {
            Quantization::None => QuantKind::Float,
            Quantization::Int8 => QuantKind::Q8_0,
            Quantization::Int4 => QuantKind::Q4K,
        };
        let text_kind = kind(text);
        let eight = if text == Quantization::None {
            QuantKind::Float
        } else {
            QuantKind::Q8_0
        };
        let (head, embed) = match text {
            Quantization::Int4 => (QuantKind::Q6K, QuantKind::Q4K),
            _ => (text_kind, text_kind),
        };
        Self {
            text: text_kind,
            vision: vision.map_or(eight, kind),
            head,
            embed,
        }
    }

    /// True when nothing is quantized.
    pub fn is_float(&self) -> bool {
        *self == Self::default()
    }
}

/// One float tensor a load read.
#[derive(Clone)]
struct FloatRead {
    elems: usize,
    bytes: usize,
    /// Kept only when the load is to be saved.
    tensor: Option<Tensor>,
}

/// What one load reads and makes: quantized tensors by name (those of a saved quantized
/// folder, and those made while loading, with the float tensors they replaced), and the
/// float tensors read (their sizes; the tensors themselves when the load is to be saved).
#[derive(Default)]
pub struct QuantStore {
    saved: HashMap<String, Arc<QTensor>>,
    made: Mutex<Vec<(String, Arc<QTensor>)>>,
    /// Quantized tensors the model holds, by name (a tied head and embedding share one).
    used: Mutex<BTreeMap<String, Arc<QTensor>>>,
    consumed: Mutex<HashSet<String>>,
    floats: Mutex<BTreeMap<String, FloatRead>>,
    keep_floats: bool,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl QuantStore {
    /// An empty store; `keep_floats` holds every float tensor read, for saving.
    pub fn new(keep_floats: bool) -> Self {
        Self {
            keep_floats,
            ..Self::default()
        }
    }

    /// A store holding a saved folder's quantized tensors.
    pub fn from_saved(saved: HashMap<String, Arc<QTensor>>) -> Self {
        Self {
            saved,
            ..Self::default()
        }
    }

    /// Names of a saved folder's quantized tensors.
    pub fn saved_names(&self) -> Vec<String> {
        self.saved.keys().cloned().collect()
    }

    /// The tensors quantized during this load, by name.
    pub fn made(&self) -> Vec<(String, Arc<QTensor>)> {
        locked(&self.made).clone()
    }

    /// Float tensors read (and not folded into quantized ones), with the tensors when
    /// kept.
    pub fn floats(&self) -> Vec<(String, Option<Tensor>)> {
        locked(&self.floats)
            .iter()
            .map(|(n, f)| (n.clone(), f.tensor.clone()))
            .collect()
    }

    /// Bytes of the weights the model holds: the float tensors it read (minus those
    /// folded into quantized layers) and the quantized tensors.
    pub fn weight_bytes(&self) -> u64 {
        let floats: usize = locked(&self.floats).values().map(|f| f.bytes).sum();
        let quant: usize = locked(&self.used)
            .values()
            .map(|q| q.storage_size_in_bytes())
            .sum();
        (floats + quant) as u64
    }

    /// Parameters the model holds (float and quantized).
    pub fn parameters(&self) -> u64 {
        let floats: usize = locked(&self.floats).values().map(|f| f.elems).sum();
        let quant: usize = locked(&self.used)
            .values()
            .map(|q| q.shape().elem_count())
            .sum();
        (floats + quant) as u64
    }

    /// Records a float tensor the model read. The first read of a name is the model's: a
    /// later one is the quantizer's host copy of a tensor the model also keeps in float (a
    /// tied embedding becoming a quantized head), which must not replace it.
    pub fn note_float(&self, name: &str, t: &Tensor) {
        if locked(&self.consumed).contains(name) {
            return;
        }
        locked(&self.floats)
            .entry(name.to_string())
            .or_insert_with(|| FloatRead {
                elems: t.elem_count(),
                bytes: t.elem_count() * t.dtype().size_in_bytes(),
                tensor: self.keep_floats.then(|| t.clone()),
            });
    }

    fn use_quantized(&self, name: &str, t: &Arc<QTensor>) {
        locked(&self.used).insert(name.to_string(), t.clone());
    }

    fn record(&self, name: &str, t: &Arc<QTensor>, sources: Vec<String>) {
        locked(&self.made).push((name.to_string(), t.clone()));
        self.use_quantized(name, t);
        let mut floats = locked(&self.floats);
        for s in &sources {
            floats.remove(s);
        }
        locked(&self.consumed).extend(sources);
    }
}

/// Builds linear layers of one kind, running as the model's [`RuntimeOptions`] say; cheap
/// to clone.
#[derive(Clone, Default)]
pub struct Quantizer {
    kind: QuantKind,
    store: Option<Arc<QuantStore>>,
    runtime: RuntimeOptions,
}

impl Quantizer {
    /// Full-precision layers, no store, default runtime options.
    pub fn float() -> Self {
        Self::default()
    }

    /// Layers of `kind`, sharing `store`, running as `runtime` says.
    pub fn new(kind: QuantKind, store: Option<Arc<QuantStore>>, runtime: RuntimeOptions) -> Self {
        Self {
            kind,
            store,
            runtime,
        }
    }

    /// The same store and runtime options with another kind (for the parts of a policy).
    pub fn with_kind(&self, kind: QuantKind) -> Self {
        Self {
            kind,
            ..self.clone()
        }
    }

    /// The same quantizer making layers that run as `runtime` says.
    pub fn with_runtime(self, runtime: RuntimeOptions) -> Self {
        Self { runtime, ..self }
    }

    /// The runtime options of the layers this quantizer makes: the model's.
    pub fn runtime(&self) -> RuntimeOptions {
        self.runtime
    }

    /// Whether `vb` holds `name`, as a float tensor or as a saved quantized one (a saved
    /// quantized folder's float backend does not list the quantized tensors).
    pub fn contains(&self, vb: &VarBuilder, name: &str) -> bool {
        vb.contains_tensor(name)
            || self
                .store
                .as_ref()
                .is_some_and(|s| s.saved.contains_key(&full_name(vb, name)))
    }

    /// A saved folder's quantized tensor `name`, counted as held by the model.
    fn saved(&self, name: &str) -> Option<Arc<QTensor>> {
        let store = self.store.as_ref()?;
        let saved = store.saved.get(name)?;
        store.use_quantized(name, saved);
        Some(saved.clone())
    }

    /// The kind this quantizer makes.
    pub fn kind(&self) -> QuantKind {
        self.kind
    }

    /// The token embedding table `name` (`[vocab, hidden]`) of `vb`, float or quantized.
    pub fn embedding(
        &self,
        vocab: usize,
        hidden: usize,
        vb: &VarBuilder,
        name: &str,
    ) -> Result<Embedding> {
        let full = full_name(vb, name);
        let dtype = vb.dtype();
        if let Some(table) = self.saved(&full) {
            return Ok(Embedding::Quant { table, dtype });
        }
        let Some(ggml) = self.kind.ggml_for(hidden) else {
            return Ok(Embedding::Float(vb.get((vocab, hidden), name)?));
        };
        let host = Reader { host: true }.at(vb).get((vocab, hidden), name)?;
        let started = Instant::now();
        let q = Arc::new(quantize_rows(&host, ggml, vb.device())?);
        crate::load_log::quantized(&full, started.elapsed());
        drop(host);
        if let Some(store) = &self.store {
            store.record(&full, &q, vec![full.clone()]);
        }
        Ok(Embedding::Quant { table: q, dtype })
    }

    /// An LM head tied to `embedding`: the same tensor (float or quantized) when the
    /// embedding is quantized or this quantizer is float; else this quantizer's own
    /// quantized copy of the float table (named `name`).
    pub fn tied_head(&self, embedding: &Embedding, name: &str) -> Result<Linear> {
        match embedding {
            Embedding::Quant { table, dtype } => Linear::quantized(
                QMatMul::from_arc(table.clone())?,
                *dtype,
                None,
                self.runtime,
            ),
            Embedding::Float(w) => {
                let (out, hidden) = w.dims2()?;
                self.build(
                    name,
                    vec![],
                    hidden,
                    out,
                    w.device(),
                    w.dtype(),
                    None,
                    |r| {
                        if r.is_host() {
                            w.to_device(&Device::Cpu)
                        } else {
                            Ok(w.clone())
                        }
                    },
                )
            }
        }
    }

    /// `y = x Wᵀ + b` with `weight` (and `bias` when `bias`) read from `vb`.
    pub fn linear(
        &self,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Linear> {
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        let name = format!("{}.weight", vb.prefix());
        let (device, dtype) = (vb.device().clone(), vb.dtype());
        self.build(
            &name,
            vec![name.clone()],
            in_dim,
            out_dim,
            &device,
            dtype,
            bias,
            |r| r.at(&vb).get((out_dim, in_dim), "weight"),
        )
    }

    /// Several projections of the same input in one layer (q/k/v, gate/up): their
    /// weights, each times its factor (e.g. the attention scale folded into q), stacked
    /// along the output dimension. One launch reads all of them instead of one each.
    pub fn fused(
        &self,
        in_dim: usize,
        parts: &[(usize, f64, VarBuilder)],
        bias: bool,
    ) -> Result<Linear> {
        let scale = |t: Tensor, f: f64| if f == 1.0 { Ok(t) } else { t * f };
        let bias = if bias {
            let b = parts
                .iter()
                .map(|(o, f, vb)| scale(vb.get(*o, "bias")?, *f))
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&b, 0)?)
        } else {
            None
        };
        let sources: Vec<String> = parts
            .iter()
            .map(|(_, _, vb)| format!("{}.weight", vb.prefix()))
            .collect();
        let factors: Vec<String> = parts.iter().map(|(_, f, _)| format!("{f}")).collect();
        let name = format!("{}#fused({})", sources.join("+"), factors.join(","));
        let out_dim = parts.iter().map(|(o, _, _)| o).sum();
        let Some((_, _, first)) = parts.first() else {
            candle_core::bail!("fused linear layer without parts")
        };
        let (device, dtype) = (first.device().clone(), first.dtype());
        self.build(&name, sources, in_dim, out_dim, &device, dtype, bias, |r| {
            let w = parts
                .iter()
                .map(|(o, f, vb)| scale(r.at(vb).get((*o, in_dim), "weight")?, *f))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&w, 0)
        })
    }

    /// A layer whose weight the caller computes (a scaled or reshaped checkpoint
    /// tensor, a tied embedding), reading through the given [`Reader`]. `name` must say
    /// what was computed, so that a saved quantized folder maps it back; `sources` are the
    /// checkpoint tensors it replaces.
    #[allow(clippy::too_many_arguments)]
    pub fn computed(
        &self,
        name: &str,
        sources: Vec<String>,
        in_dim: usize,
        out_dim: usize,
        vb: &VarBuilder,
        bias: Option<Tensor>,
        weight: impl FnOnce(Reader) -> Result<Tensor>,
    ) -> Result<Linear> {
        self.build(
            name,
            sources,
            in_dim,
            out_dim,
            vb.device(),
            vb.dtype(),
            bias,
            weight,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        name: &str,
        sources: Vec<String>,
        in_dim: usize,
        out_dim: usize,
        device: &Device,
        dtype: DType,
        bias: Option<Tensor>,
        weight: impl FnOnce(Reader) -> Result<Tensor>,
    ) -> Result<Linear> {
        if let Some(saved) = self.saved(name) {
            if saved.shape().dims() != [out_dim, in_dim] {
                candle_core::bail!(
                    "quantized tensor {name} has shape {:?}, expected [{out_dim}, {in_dim}]",
                    saved.shape().dims()
                );
            }
            return Linear::quantized(QMatMul::from_arc(saved)?, dtype, bias, self.runtime);
        }
        let Some(ggml) = self.kind.ggml_for(in_dim) else {
            return Ok(Linear::from_weights(
                weight(Reader { host: false })?,
                bias,
                self.runtime,
            ));
        };
        let w = weight(Reader { host: true })?;
        let started = Instant::now();
        let q = Arc::new(quantize_rows(&w, ggml, device)?);
        crate::load_log::quantized(name, started.elapsed());
        drop(w);
        if let Some(store) = &self.store {
            store.record(name, &q, sources);
        }
        Linear::quantized(QMatMul::from_arc(q)?, dtype, bias, self.runtime)
    }
}

/// How a weight is read: on the host when it is about to be quantized (the quantizer runs
/// there), else on the model's device; in the model's dtype either way.
#[derive(Debug, Clone, Copy)]
pub struct Reader {
    host: bool,
}

impl Reader {
    /// Whether weights are read to be quantized.
    pub fn is_host(&self) -> bool {
        self.host
    }

    /// `vb` as this reader reads: on the host, in the model dtype (usually the stored one,
    /// so candle casts nothing; [`quantize_rows`] widens to f32 on all cores).
    pub fn at<'a>(&self, vb: &VarBuilder<'a>) -> VarBuilder<'a> {
        if self.host {
            vb.clone().set_device(Device::Cpu)
        } else {
            vb.clone()
        }
    }
}

/// `name` under `vb`'s prefix, as the checkpoint spells it.
fn full_name(vb: &VarBuilder, name: &str) -> String {
    if vb.prefix().is_empty() {
        name.to_string()
    } else {
        format!("{}.{name}", vb.prefix())
    }
}

/// `QTensor::quantize` of a host `[out, in]` tensor (f32, bf16 or f16), rows split across
/// threads (candle's own runs on one thread: minutes for a 7B model), placed on `device`.
/// Each thread widens its rows into a small f32 buffer and writes its blocks straight into
/// the result: no copy of the whole tensor in f32, none of the blocks but the upload.
pub fn quantize_rows(w: &Tensor, dtype: GgmlDType, device: &Device) -> Result<QTensor> {
    use candle_core::quantized::k_quants::{BlockQ4K, BlockQ4_0, BlockQ5K, BlockQ6K, BlockQ8_0};
    let w = w.contiguous()?;
    match dtype {
        GgmlDType::Q8_0 => quantize_blocks::<BlockQ8_0>(&w, device),
        GgmlDType::Q4_0 => quantize_blocks::<BlockQ4_0>(&w, device),
        GgmlDType::Q4K => quantize_blocks::<BlockQ4K>(&w, device),
        GgmlDType::Q5K => quantize_blocks::<BlockQ5K>(&w, device),
        GgmlDType::Q6K => quantize_blocks::<BlockQ6K>(&w, device),
        _ => {
            let q = QTensor::quantize(&w.to_dtype(DType::F32)?, dtype)?;
            qtensor_from_ggml(dtype, &q.data()?, w.dims().to_vec(), device)
        }
    }
}

/// Contiguous `w` `[rows, cols]` in blocks of `B`, on `device`.
fn quantize_blocks<B: candle_core::quantized::k_quants::GgmlType + Send>(
    w: &Tensor,
    device: &Device,
) -> Result<QTensor> {
    let (rows, cols) = w.dims2()?;
    use candle_core::{CpuStorage, Storage};
    if cols % B::BLCK_SIZE != 0 {
        candle_core::bail!(
            "{:?} needs rows of a multiple of {} values, not {cols}",
            B::DTYPE,
            B::BLCK_SIZE
        );
    }
    let per_row = cols / B::BLCK_SIZE;
    let mut blocks: Vec<B> = vec![B::zeros(); rows * per_row];
    // Enough chunks for every thread to stay busy, few enough that buffers are reused.
    let chunk_rows = rows
        .div_ceil(rayon::current_num_threads().max(1) * 4)
        .max(1);
    let (storage, layout) = w.storage_and_layout();
    let start = layout.start_offset();
    let widen = |row0: usize, out: &mut [B]| {
        let n = out.len() / per_row;
        let range = start + row0 * cols..start + (row0 + n) * cols;
        let buf: Vec<f32> = match &*storage {
            Storage::Cpu(CpuStorage::F32(v)) => {
                B::from_float(&v[range], out);
                return Ok(());
            }
            Storage::Cpu(CpuStorage::BF16(v)) => v[range].iter().map(|x| x.to_f32()).collect(),
            Storage::Cpu(CpuStorage::F16(v)) => v[range].iter().map(|x| x.to_f32()).collect(),
            _ => candle_core::bail!("quantizing reads f32/bf16/f16 weights on the host"),
        };
        B::from_float(&buf, out);
        Ok(())
    };
    blocks
        .par_chunks_mut(chunk_rows * per_row)
        .enumerate()
        .try_for_each(|(i, out)| widen(i * chunk_rows, out))?;
    drop(storage);
    // SAFETY: GGML blocks are plain `repr(C)` data; the bytes are read while `blocks` lives.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            blocks.as_ptr() as *const u8,
            blocks.len() * std::mem::size_of::<B>(),
        )
    };
    qtensor_from_ggml(B::DTYPE, bytes, vec![rows, cols], device)
}

/// A copy of `q` on the host (to write it to a file).
pub fn to_host(q: &QTensor) -> Result<QTensor> {
    let data = q.data()?;
    qtensor_from_ggml(q.dtype(), &data, q.shape().dims().to_vec(), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Module;

    /// Every layer a quantizer makes, float or quantized, runs with the quantizer's (the
    /// model's) options, whatever another model's quantizer carries.
    #[test]
    fn layers_keep_their_models_runtime_options() {
        let dev = Device::Cpu;
        let tensors = HashMap::from([(
            "p.weight".to_string(),
            Tensor::ones((4, 32), DType::F32, &dev).unwrap(),
        )]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let unfused = RuntimeOptions::default().with_fused_kernels(false);
        let tuned = RuntimeOptions::default().with_quant_gemm_rows(0);
        for kind in [QuantKind::Float, QuantKind::Q8_0] {
            let a = Quantizer::new(kind, None, unfused);
            let b = Quantizer::float().with_runtime(tuned).with_kind(kind);
            let la = a.linear(32, 4, false, vb.pp("p")).unwrap();
            let lb = b.linear(32, 4, false, vb.pp("p")).unwrap();
            assert_eq!(la.is_quantized(), kind != QuantKind::Float);
            assert_eq!((la.runtime(), lb.runtime()), (&unfused, &tuned), "{kind:?}");
            let fused = a
                .fused(32, &[(4, 1.0, vb.pp("p")), (4, 2.0, vb.pp("p"))], false)
                .unwrap();
            assert_eq!(fused.runtime(), &unfused, "{kind:?}");
        }
    }

    /// Seeded N(0, std) values (xorshift + Box-Muller): the error bounds below must not
    /// depend on the run.
    fn normal(shape: (usize, usize), std: f32, seed: u64) -> Tensor {
        let mut state = seed.max(1);
        let mut uniform = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let n = shape.0 * shape.1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let (u1, u2) = (uniform(), uniform());
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32 * std
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Splitting rows across threads gives exactly candle's single-threaded bytes.
    #[test]
    fn parallel_quantization_is_bit_identical() {
        let dev = Device::Cpu;
        let w = normal((300, 512), 0.02, 7);
        for dt in [
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let ours = quantize_rows(&w, dt, &dev).unwrap();
            let theirs = QTensor::quantize(&w, dt).unwrap();
            assert_eq!(ours.data().unwrap(), theirs.data().unwrap(), "{dt:?}");
        }
    }

    /// Half-precision weights are widened exactly as candle's cast would.
    #[test]
    fn half_precision_rows_quantize_like_their_f32_widening() {
        let w = normal((64, 256), 0.02, 5).to_dtype(DType::BF16).unwrap();
        let ours = quantize_rows(&w, GgmlDType::Q4K, &Device::Cpu).unwrap();
        let via_f32 = QTensor::quantize(&w.to_dtype(DType::F32).unwrap(), GgmlDType::Q4K).unwrap();
        assert_eq!(ours.data().unwrap(), via_f32.data().unwrap());
    }

    /// Output error of one real-size layer (Qwen2.5-VL-7B's width, 3584) with seeded
    /// N(0, 0.02) weights: ‖y_q − y‖ / ‖y‖ over 4 input rows. The numbers are in
    /// docs/quantization.md.
    #[test]
    fn layer_output_error_by_block_type() {
        let dev = Device::Cpu;
        let w = normal((512, 3584), 0.02, 11);
        let x = normal((4, 3584), 1.0, 13);
        let exact = x.matmul(&w.t().unwrap()).unwrap();
        let norm = |t: &Tensor| {
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .sqrt()
        };
        for (dt, bound) in [
            (GgmlDType::Q8_0, 0.01),
            (GgmlDType::Q6K, 0.025),
            (GgmlDType::Q4K, 0.09),
            (GgmlDType::Q4_0, 0.12),
        ] {
            let mm = QMatMul::from_qtensor(quantize_rows(&w, dt, &dev).unwrap()).unwrap();
            let got = mm.forward(&x).unwrap();
            let err = norm(&(got - &exact).unwrap()) / norm(&exact);
            eprintln!("{dt:?}: relative error {err:.4}");
            assert!(err < bound, "{dt:?}: {err}");
        }
    }

    /// A layer with `quant_kernels` off (as on a card whose quantized kernels fail their
    /// check) dequantizes on every call, at any number of rows, and gives the quantized
    /// product's answer.
    #[test]
    fn a_dequantizing_layer_agrees_with_the_quantized_product() {
        let dev = Device::Cpu;
        let w = normal((64, 512), 0.02, 17);
        let vb = VarBuilder::from_tensors(
            HashMap::from([("p.weight".to_string(), w)]),
            DType::F32,
            &dev,
        );
        let off = RuntimeOptions::default().with_quant_kernels(false);
        for kind in [QuantKind::Q8_0, QuantKind::Q4K] {
            let make = |runtime| {
                Quantizer::new(kind, None, runtime)
                    .linear(512, 64, false, vb.pp("p"))
                    .unwrap()
            };
            let (layer, fallback) = (make(RuntimeOptions::default()), make(off));
            assert!(layer.is_quantized() && fallback.is_quantized());
            // What keeps the fallback's decode steps out of CUDA graphs (decode_step.rs).
            assert!(fallback.dequantizes() && !layer.dequantizes(), "{kind:?}");
            for rows in [1, 3, 70] {
                let x = normal((rows, 512), 1.0, 19 + rows as u64);
                let before = crate::kernels::quant_gemm_calls();
                let got = fallback.forward(&x).unwrap();
                assert!(
                    crate::kernels::quant_gemm_calls() > before,
                    "{kind:?} {rows}"
                );
                let want = layer.forward(&x).unwrap();
                let diff = (&got - &want).unwrap().sqr().unwrap().sum_all().unwrap();
                let norm = want.sqr().unwrap().sum_all().unwrap();
                let rel =
                    (diff.to_scalar::<f32>().unwrap() / norm.to_scalar::<f32>().unwrap()).sqrt();
                assert!(rel < 0.02, "{kind:?} at {rows} rows: {rel}");
            }
        }
    }

    #[test]
    fn policy_under_int4_follows_q4_k_m() {
        let p = QuantPolicy::new(Quantization::Int4, None);
        assert_eq!(
            (p.text, p.vision, p.head, p.embed),
            (
                QuantKind::Q4K,
                QuantKind::Q8_0,
                QuantKind::Q6K,
                QuantKind::Q4K
            )
        );
        let p = QuantPolicy::new(Quantization::Int4, Some(Quantization::Int4));
        assert_eq!(p.vision, QuantKind::Q4K);
        assert!(QuantPolicy::new(Quantization::None, None).is_float());
        assert_eq!(QuantKind::Q4K.ggml_for(1408), Some(GgmlDType::Q4_0));
        assert_eq!(QuantKind::Q4K.ggml_for(3584), Some(GgmlDType::Q4K));
        assert_eq!(QuantKind::Q8_0.ggml_for(30), None);
        assert_eq!(QuantKind::Q6K.ggml_for(64), Some(GgmlDType::Q8_0));
    }
}
