//! Building blocks shared by the families: linear layers (float or quantized; model code
//! gets them from `crate::quant::Quantizer`, which depends on this file and not the
//! reverse, so it never branches on quantization), norms, activations and attention.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use vlm_contract::RuntimeOptions;

/// A dense layer `y = x Wᵀ + b`, its weight in float (as stored in the checkpoint,
/// `[out, in]`) or quantized, with the runtime options of the model it belongs to (which
/// kernel each call takes depends on its rows).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    runtime: RuntimeOptions,
}

#[derive(Debug, Clone)]
enum Weight {
    Float(Tensor),
    Quant {
        matmul: QMatMul,
        /// The dtype activations come in (and go out) with.
        dtype: DType,
        /// Whether candle's quantized kernels run on the weight's device
        /// ([`crate::kernels::quant_kernels_run`]); when not, every call dequantizes.
        native: bool,
    },
}

/// A token embedding table, float or quantized (rows dequantized on lookup).
#[derive(Debug, Clone)]
pub enum Embedding {
    /// `[vocab, hidden]` in the model dtype.
    Float(Tensor),
    /// GGML blocks; looked-up rows come out in `dtype`.
    Quant {
        /// The table.
        table: std::sync::Arc<candle_core::quantized::QTensor>,
        /// The model dtype.
        dtype: DType,
    },
}

impl Embedding {
    /// Rows of flat `ids`, `[n, hidden]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Self::Float(w) => w.index_select(ids, 0),
            Self::Quant { table, dtype } => {
                if *dtype == DType::BF16 {
                    let rows = crate::kernels::dequant_slices::lookup_rows_bf16(table, ids)?;
                    if let Some(rows) = rows {
                        return Ok(rows);
                    }
                }
                table.embedding(ids)?.to_dtype(*dtype)
            }
        }
    }
}

impl Linear {
    /// A float layer from tensors.
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>, runtime: RuntimeOptions) -> Self {
        Self {
            weight: Weight::Float(weight),
            bias,
            runtime,
        }
    }

    /// A quantized layer whose activations are in `dtype`. With
    /// [`RuntimeOptions::quant_kernels`] off, or on a CUDA device whose quantized kernels
    /// fail their check, the layer dequantizes its weight on every call.
    pub fn quantized(
        matmul: QMatMul,
        dtype: DType,
        bias: Option<Tensor>,
        runtime: RuntimeOptions,
    ) -> Result<Self> {
        let native = match &matmul {
            QMatMul::QTensor(_) if !runtime.quant_kernels => false,
            QMatMul::QTensor(w) => crate::kernels::quant_kernels_run(&w.device(), dtype)?,
            _ => true,
        };
        Ok(Self {
            weight: Weight::Quant {
                matmul,
                dtype,
                native,
            },
            bias,
            runtime,
        })
    }

    /// The runtime options this layer runs with.
    pub fn runtime(&self) -> &RuntimeOptions {
        &self.runtime
    }

    /// The same float layer with `[out, in]` grown to `[out_to, in_to]` by zeros (the
    /// bias too): the extra outputs are 0 and extra inputs are ignored. `None` for a
    /// quantized layer, whose blocks fix its shape.
    pub fn zero_padded(&self, out_to: usize, in_to: usize) -> Result<Option<Self>> {
        let Weight::Float(w) = &self.weight else {
            return Ok(None);
        };
        let (out, inp) = w.dims2()?;
        let w = w.pad_with_zeros(0, 0, out_to.saturating_sub(out))?;
        let w = w.pad_with_zeros(1, 0, in_to.saturating_sub(inp))?;
        let bias = self
            .bias
            .as_ref()
            .map(|b| b.pad_with_zeros(0, 0, out_to.saturating_sub(out)))
            .transpose()?;
        Ok(Some(Self::from_weights(w, bias, self.runtime)))
    }

    /// Whether the weight is quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self.weight, Weight::Quant { .. })
    }

    /// Whether a quantized weight is dequantized for every product, at any row count:
    /// candle's quantized kernels are switched off or do not run on this card.
    pub fn dequantizes(&self) -> bool {
        matches!(self.weight, Weight::Quant { native: false, .. })
    }

    /// The layer's compute dtype.
    pub fn weight_dtype(&self) -> DType {
        match &self.weight {
            Weight::Float(w) => w.dtype(),
            Weight::Quant { dtype, .. } => *dtype,
        }
    }
}

impl Linear {
    /// `x Wᵀ` without the bias, for a kernel that adds it itself.
    pub fn forward_unbiased(&self, x: &Tensor) -> Result<Tensor> {
        self.project(x, None, false)
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Whether a decode step's product takes its activations already quantized
    /// ([`crate::kernels::Q8Input`]): a quantized weight with candle's kernels running, graphs on.
    pub fn takes_q8(&self) -> bool {
        match &self.weight {
            Weight::Quant {
                matmul: QMatMul::QTensor(w),
                dtype,
                native: true,
            } => crate::kernels::takes_q8(&self.runtime, &w.device(), w, *dtype),
            _ => false,
        }
    }

    /// [`Module::forward`] from `q8` where it holds `x` quantized and the layer takes it
    /// ([`Linear::takes_q8`]), from `x` otherwise.
    pub fn forward_q8(&self, x: &Tensor, q8: Option<&crate::kernels::Q8Input>) -> Result<Tensor> {
        self.project(x, q8, true)
    }

    /// [`Linear::forward_q8`] without the bias.
    pub fn forward_q8_unbiased(
        &self,
        x: &Tensor,
        q8: Option<&crate::kernels::Q8Input>,
    ) -> Result<Tensor> {
        self.project(x, q8, false)
    }

    /// `x Wᵀ` (+ the bias), a quantized weight's decode-step product read from `q8` where
    /// it holds `x` quantized.
    fn project(
        &self,
        x: &Tensor,
        q8: Option<&crate::kernels::Q8Input>,
        with_bias: bool,
    ) -> Result<Tensor> {
        let bias = self.bias.as_ref().filter(|_| with_bias);
        let runtime = &self.runtime;
        let y = match &self.weight {
            Weight::Float(weight) => {
                // candle's matmul wants matching batch dims: fold leading dims into rows.
                let dims = x.dims();
                let rows: usize = dims[..dims.len() - 1].iter().product();
                let x2 = x.reshape((rows, dims[dims.len() - 1]))?;
                let y = if crate::kernels::gemv_applies(runtime, &x2, weight, bias) {
                    crate::kernels::gemv(&x2, weight, bias)?
                } else if crate::kernels::mma_gemv_applies(runtime, &x2, weight, bias) {
                    crate::kernels::mma_gemv(&x2, weight, bias)?
                } else {
                    let y = x2.matmul(&weight.t()?)?;
                    match bias {
                        Some(b) => add_bias(runtime, &y, b)?,
                        None => y,
                    }
                };
                let out_dims: Vec<usize> = dims[..dims.len() - 1]
                    .iter()
                    .copied()
                    .chain([weight.dim(0)?])
                    .collect();
                return y.reshape(out_dims);
            }
            Weight::Quant { matmul, native, .. } => {
                let x = x.contiguous()?;
                let fast = match matmul {
                    QMatMul::QTensor(w) if !native => {
                        crate::kernels::dequantized_projection(runtime, &x, w)?
                    }
                    QMatMul::QTensor(w) => {
                        // The first of: the blocks a fused kernel wrote, the decode matvec,
                        // the dequantized GEMM.
                        let mut y = match q8 {
                            Some(q8) => crate::kernels::quant_matvec_q8(q8, w)?,
                            None => None,
                        };
                        if y.is_none() {
                            y = crate::kernels::quant_matvec(runtime, &x, w)?;
                        }
                        if y.is_none() {
                            y = crate::kernels::quantized_gemm(runtime, &x, w)?;
                        }
                        y
                    }
                    _ => None,
                };
                match fast {
                    Some(y) => y,
                    None => {
                        crate::kernels::note_shared_quant_scratch(x.device());
                        matmul.forward(&x)?
                    }
                }
            }
        };
        match bias {
            Some(b) => add_bias(runtime, &y, b),
            None => Ok(y),
        }
    }
}

/// `y + bias` over the last dimension: our kernel on CUDA (candle's broadcast add takes
/// ~15× the time of a pass over the bytes there, see kernels/ops.cu), candle's elsewhere.
fn add_bias(runtime: &RuntimeOptions, y: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if crate::kernels::enabled(runtime, y.device(), y.dtype()) && bias.dtype() == y.dtype() {
        return crate::kernels::add_bias(y, bias, runtime.prefill_kernels);
    }
    y.broadcast_add(bias)
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.project(x, None, true)
    }
}

/// How [`RmsNorm::add_forward`] runs a residual add and the norm after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddNorm {
    /// candle's add, then [`Module::forward`].
    Ops,
    /// One CUDA launch for a decode step's few rows ([`crate::kernels::add_rms_norm`]).
    Step,
    /// One CUDA launch for a prompt's or the vision tower's many rows
    /// ([`crate::kernels::add_rms_norm_prompt`]).
    Prompt,
}

/// RMSNorm. candle's fused kernel (one launch, f32 accumulation) where the input is
/// contiguous; HF's unfused f32 formula otherwise. In f32 both agree to rounding; in
/// half precision the fused kernel rounds once where HF rounds before the weight multiply.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Loads `weight` of size `dim`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }
}

impl RmsNorm {
    /// The norm as a fused kernel takes it.
    pub fn head_norm(&self) -> crate::kernels::HeadNorm<'_> {
        crate::kernels::HeadNorm {
            weight: &self.weight,
            eps: self.eps,
        }
    }

    /// A residual add and this norm: `(x + delta, norm(x + delta))`, or `(x, norm(x))`
    /// without `delta`, run as `launch` says (the same values every way); with
    /// [`AddNorm::Step`] and `q8`, the normed rows also as a quantized projection's input.
    pub fn add_forward(
        &self,
        x: &Tensor,
        delta: Option<&Tensor>,
        launch: AddNorm,
        q8: bool,
    ) -> Result<(Tensor, Tensor, Option<crate::kernels::Q8Input>)> {
        match launch {
            AddNorm::Step => return crate::kernels::add_rms_norm(x, delta, self.head_norm(), q8),
            AddNorm::Prompt => {
                let (sum, normed) =
                    crate::kernels::add_rms_norm_prompt(x, delta, self.head_norm())?;
                return Ok((sum, normed, None));
            }
            AddNorm::Ops => {}
        }
        let sum = match delta {
            Some(d) => (x + d)?,
            None => x.clone(),
        };
        let normed = self.forward(&sum)?;
        Ok((sum, normed, None))
    }

    /// The same norm with its output multiplied by `factor` (folded into the weight).
    pub fn scaled(&self, factor: f64) -> Result<Self> {
        Ok(Self {
            weight: (&self.weight * factor)?,
            eps: self.eps,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.is_contiguous() {
            return candle_nn::ops::rms_norm(x, &self.weight, self.eps as f32);
        }
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .to_dtype(dtype)?;
        normed.broadcast_mul(&self.weight)
    }
}

/// LayerNorm with weight and bias: candle's fused kernel where the input is contiguous,
/// statistics in f32 otherwise.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of size `dim`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
        })
    }
}

impl LayerNorm {
    /// A freshly initialised LayerNorm (weight 1, bias 0), for checkpoints that never
    /// trained theirs.
    pub fn identity(
        dim: usize,
        eps: f64,
        dtype: DType,
        device: &candle_core::Device,
    ) -> Result<Self> {
        Ok(Self {
            weight: Tensor::ones(dim, dtype, device)?,
            bias: Tensor::zeros(dim, dtype, device)?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.is_contiguous() {
            return candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32);
        }
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let mean = xf.mean_keepdim(D::Minus1)?;
        let centered = xf.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight.to_dtype(DType::F32)?)?
            .broadcast_add(&self.bias.to_dtype(DType::F32)?)?
            .to_dtype(dtype)
    }
}

/// Softmax over the last dimension with f32 accumulation: our kernel on CUDA, candle's
/// elsewhere (its CUDA kernel also accumulates in f32, so only the CPU path casts).
pub fn softmax_f32_acc(runtime: &RuntimeOptions, scores: &Tensor) -> Result<Tensor> {
    let dtype = scores.dtype();
    if crate::kernels::enabled(runtime, scores.device(), dtype) {
        // candle's kernel gives one warp a row: ~0.5 TB/s on the vision tower's rows of
        // 3996 scores (run 14), a quarter of what a block per row reaches.
        return crate::kernels::softmax(scores, None);
    }
    if dtype == DType::F32 || scores.device().is_cuda() {
        return candle_nn::ops::softmax_last_dim(scores);
    }
    candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)
}

/// Activations by their HF config names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// `silu` / `swish`.
    Silu,
    /// `gelu`: the exact erf form.
    Gelu,
    /// `gelu_pytorch_tanh` / `gelu_new`: the tanh approximation.
    GeluTanh,
    /// `quick_gelu`: `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// `relu`.
    Relu,
}

impl Act {
    /// Parses an HF `hidden_act` string.
    pub fn from_name(name: &str) -> std::result::Result<Self, String> {
        match name {
            "silu" | "swish" => Ok(Self::Silu),
            "gelu" => Ok(Self::Gelu),
            "gelu_pytorch_tanh" | "gelu_new" => Ok(Self::GeluTanh),
            "quick_gelu" => Ok(Self::QuickGelu),
            "relu" => Ok(Self::Relu),
            other => Err(format!("activation \"{other}\" is not supported")),
        }
    }
}

impl Module for Act {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Silu => x.silu(),
            Self::Gelu => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Self::Relu => x.relu(),
        }
    }
}

/// `cat(-x2, x1)` over the last dimension, the rotation of "rotate-half" RoPE.
pub fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

/// `x * cos + rotate_half(x) * sin` with broadcasting.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(cos)? + rotate_half(x)?.broadcast_mul(sin)?
}

/// Score added at masked positions. Finite, like transformers' dtype minimum, so that a
/// fully masked padding row stays finite (an infinite one would give NaN, and NaN values
/// of padding would reach real tokens through `probs @ V` even at zero weight). -3e4 fits
/// f16 and bf16 with room for the scores themselves, and exp(-3e4) is 0 in every dtype.
pub(crate) const MASKED: f32 = -3.0e4;

/// Which keys each query sees in the attention softmax.
#[derive(Debug, Clone)]
pub enum AttentionMask {
    /// Added to the scores (broadcastable to `[b, h, q, kv]`, in their dtype): the CPU
    /// path, and position biases.
    Additive(Tensor),
    /// Causal after each sequence's left padding (`[b]` u32; none without padding),
    /// computed inside the softmax kernel on CUDA instead of built, uploaded and added.
    Causal {
        /// Left padding per sequence.
        pad: Option<Tensor>,
    },
}

impl AttentionMask {
    /// `softmax(scores + mask)` over the last dimension of `scores [b, h, q, kv]`.
    pub fn softmax(&self, runtime: &RuntimeOptions, scores: &Tensor) -> Result<Tensor> {
        match self {
            Self::Additive(m) => softmax_f32_acc(runtime, &scores.broadcast_add(m)?),
            Self::Causal { pad } => crate::kernels::softmax(
                scores,
                Some(&crate::kernels::CausalMask { pad: pad.as_ref() }),
            ),
        }
    }
}

/// The attention mask of `pad.len()` left-padded sequences: sequence `i`'s first `pad[i]`
/// key positions are padding, and query `j` (at absolute position `kv_len - q_len + j`)
/// sees only keys up to itself. `None` when nothing is masked. Where the CUDA kernels run
/// (under `runtime`), the softmax computes it ([`AttentionMask::Causal`]); elsewhere it is
/// an additive `[b, 1, q_len, kv_len]` tensor in `dtype` (the scores' dtype, so that no
/// layer converts it again).
pub fn attention_mask(
    runtime: &RuntimeOptions,
    pad: &[usize],
    q_len: usize,
    kv_len: usize,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Option<AttentionMask>> {
    let offset = kv_len - q_len;
    if q_len == 1 && pad.iter().all(|&p| p == 0) {
        return Ok(None);
    }
    if crate::kernels::enabled(runtime, device, dtype) {
        let pad = padding_on_device(pad, device)?;
        return Ok(Some(AttentionMask::Causal { pad }));
    }
    let mut m = vec![0f32; pad.len() * q_len * kv_len];
    for (b, &p) in pad.iter().enumerate() {
        for j in 0..q_len {
            let row = (b * q_len + j) * kv_len;
            for k in 0..kv_len {
                if k < p || k > offset + j {
                    m[row + k] = MASKED;
                }
            }
        }
    }
    let m = Tensor::from_vec(m, (pad.len(), 1, q_len, kv_len), device)?.to_dtype(dtype)?;
    Ok(Some(AttentionMask::Additive(m)))
}

/// Left padding per sequence as the kernels read it (`[b]` u32); none when nothing is padded.
pub(crate) fn padding_on_device(
    pad: &[usize],
    device: &candle_core::Device,
) -> Result<Option<Tensor>> {
    if pad.iter().all(|&p| p == 0) {
        return Ok(None);
    }
    let pad: Vec<u32> = pad.iter().map(|&p| p as u32).collect();
    Tensor::new(pad, device).map(Some)
}

/// Softmax attention over heads: `softmax(q kᵀ · scale + mask) v` for `q [b, h, q, d]`,
/// `k`/`v [b, h, kv, d]`. Returns `[b, q, h·d]`, the layout the output projection takes.
pub fn attend(
    runtime: &RuntimeOptions,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: Option<f64>,
    mask: Option<&AttentionMask>,
) -> Result<Tensor> {
    let (b, h, l, d) = q.dims4()?;
    let mut scores = q.contiguous()?.matmul(&k.t()?.contiguous()?)?;
    if let Some(s) = scale {
        scores = (scores * s)?;
    }
    let probs = match mask {
        Some(m) => m.softmax(runtime, &scores)?,
        None => softmax_f32_acc(runtime, &scores)?,
    };
    probs
        .matmul(&v.contiguous()?)?
        .transpose(1, 2)?
        .reshape((b, l, h * d))
}

/// `[b, l, h·d]` → `[b, h, l, d]`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, l, hd) = x.dims3()?;
    x.reshape((b, l, heads, hd / heads))?.transpose(1, 2)
}
