//! The language model: a Qwen2 (2-VL, 2.5-VL) or Qwen3 (3-VL, with q/k norms) decoder
//! driven by M-RoPE tables, reading and writing a preallocated per-request KV cache.
//!
//! GQA without copying: the query heads that share a key/value head are folded into the
//! row dimension, so one matmul per group reads the cached K/V in place.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use vlm_contract::kv_cache::LayerKvCache;

use super::config::TextConfig;
use super::rope::MropeTables;
use crate::kernels::{self, CacheLen, Heads, StepGraph, UploadCache};
use crate::layers::{
    attention_mask, padding_on_device, softmax_f32_acc, Act, AttentionMask, Embedding, Linear,
    RmsNorm,
};
use crate::quant::Quantizer;

/// How a layer's attention sees which positions to attend.
#[derive(Clone, Copy)]
enum Masking<'a> {
    /// A mask (none: everything cached is visible) for the unfused attention.
    Additive(Option<&'a AttentionMask>),
    /// One new token per sequence through the fused CUDA kernels, each sequence skipping
    /// its left padding (`[batch]` u32; none: no padding); `len` is the caches' length
    /// after this step.
    FusedDecode {
        pad: Option<&'a Tensor>,
        len: CacheLen<'a>,
    },
}

struct Attention {
    /// q, k and v in one projection; the attention scale 1/√d is folded into q (into
    /// q_norm for Qwen3, whose RMSNorm would undo a scale applied before it).
    qkv: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn heads(&self) -> Heads {
        Heads {
            q: self.num_heads,
            kv: self.num_kv_heads,
            dim: self.head_dim,
        }
    }

    /// The decode step through the fused kernels: the projection, two kernels, the output
    /// projection.
    fn forward_fused_decode(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        pad: Option<&Tensor>,
        len: CacheLen<'_>,
        cache: &mut LayerKvCache,
    ) -> Result<Tensor> {
        let b = x.dim(0)?;
        let (k_cache, v_cache, pos) = cache
            .claim(1)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        if pos + 1 != len.value {
            candle_core::bail!(
                "decode step: the cache holds {pos} positions, the step says {}",
                len.value - 1
            );
        }
        let dtype = k_cache.dtype();
        let qkv = self.qkv.forward_unbiased(x)?.to_dtype(dtype)?;
        let bias = self.qkv.bias().map(|b| b.to_dtype(dtype)).transpose()?;
        let (cos, sin) = (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?);
        let heads = self.heads();
        kernels::write_kv(
            &qkv,
            bias.as_ref(),
            &cos,
            &sin,
            self.k_norm.as_ref().map(RmsNorm::head_norm),
            &heads,
            k_cache,
            v_cache,
            len,
        )?;
        let out = kernels::decode_attention(
            &qkv,
            bias.as_ref(),
            &cos,
            &sin,
            self.q_norm.as_ref().map(RmsNorm::head_norm),
            &heads,
            k_cache,
            v_cache,
            len,
            pad,
        )?;
        self.o_proj
            .forward(&out.reshape((b, 1, heads.q * heads.dim))?)
    }

    fn new(cfg: &TextConfig, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (nq, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let scale = (d as f64).powf(-0.5);
        let (q_norm, k_norm, q_factor) = if cfg.qk_norm {
            (
                Some(RmsNorm::new(d, cfg.rms_norm_eps, vb.pp("q_norm"))?.scaled(scale)?),
                Some(RmsNorm::new(d, cfg.rms_norm_eps, vb.pp("k_norm"))?),
                1.0,
            )
        } else {
            (None, None, scale)
        };
        let qkv = q.fused(
            h,
            &[
                (nq * d, q_factor, vb.pp("q_proj")),
                (nkv * d, 1.0, vb.pp("k_proj")),
                (nkv * d, 1.0, vb.pp("v_proj")),
            ],
            cfg.qkv_bias,
        )?;
        Ok(Self {
            qkv,
            o_proj: q.linear(nq * d, h, false, vb.pp("o_proj"))?,
            q_norm,
            k_norm,
            num_heads: nq,
            num_kv_heads: nkv,
            head_dim: d,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        masking: Masking<'_>,
        cache: &mut LayerKvCache,
    ) -> Result<Tensor> {
        let mask = match masking {
            Masking::FusedDecode { pad, len } => {
                return self.forward_fused_decode(x, cos, sin, pad, len, cache)
            }
            Masking::Additive(mask) => mask,
        };
        let (b, l, _) = x.dims3()?;
        let d = self.head_dim;
        let (nq, nkv) = (self.num_heads, self.num_kv_heads);
        let qkv = self.qkv.forward(x)?;
        // Views at decode (b = l = 1); copies otherwise.
        let mut q = qkv.narrow(D::Minus1, 0, nq * d)?.reshape((b, l, nq, d))?;
        let mut k = qkv
            .narrow(D::Minus1, nq * d, nkv * d)?
            .reshape((b, l, nkv, d))?;
        let v = qkv
            .narrow(D::Minus1, (nq + nkv) * d, nkv * d)?
            .reshape((b, l, nkv, d))?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        // candle's fused rotate-half RoPE: one kernel instead of narrow/neg/cat/mul/add.
        let q = candle_nn::rotary_emb::rope(&q.transpose(1, 2)?.contiguous()?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k.transpose(1, 2)?.contiguous()?, cos, sin)?;
        let v = v.transpose(1, 2)?;
        let (k, v) = cache
            .append(&k, &v)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let kv_len = k.dim(2)?;
        if let Some(AttentionMask::Causal { pad }) = mask {
            if l > 1 && kernels::flash_applies(self.qkv.runtime(), x.device(), q.dtype(), d) {
                // Scores never materialised: [b, heads, l, kv_len] per layer at batch 8 is
                // 28 × 8 × 1026² values (run 21's profile: most of the prefill's softmax).
                let out = kernels::prefill_flash_attention(&q, &k, &v, pad.as_ref())?;
                return self.o_proj.forward(&out);
            }
        }

        let rep = self.num_heads / self.num_kv_heads;
        // [b, heads, l, d] → [b, kv_heads, rep·l, d]: query head h uses kv head h / rep.
        let q = q
            .contiguous()?
            .reshape((b, self.num_kv_heads, rep * l, d))?;
        let scores = q.matmul(&k.t()?)?.reshape((b, self.num_heads, l, kv_len))?;
        let probs = match mask {
            Some(m) => m.softmax(self.qkv.runtime(), &scores)?,
            None => softmax_f32_acc(self.qkv.runtime(), &scores)?,
        };
        let probs = probs.reshape((b, self.num_kv_heads, rep * l, kv_len))?;
        let out = probs
            .matmul(&v)?
            .reshape((b, self.num_heads, l, d))?
            .transpose(1, 2)?
            .reshape((b, l, self.num_heads * d))?;
        self.o_proj.forward(&out)
    }
}

struct Mlp {
    /// gate and up in one projection.
    gate_up: Linear,
    down_proj: Linear,
    act: Act,
    intermediate: usize,
    /// silu(gate)·up in one CUDA kernel.
    fused_silu: bool,
}

impl Mlp {
    fn new(cfg: &TextConfig, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_up: q.fused(
                h,
                &[(i, 1.0, vb.pp("gate_proj")), (i, 1.0, vb.pp("up_proj"))],
                false,
            )?,
            down_proj: q.linear(i, h, false, vb.pp("down_proj"))?,
            act: cfg.hidden_act,
            intermediate: i,
            fused_silu: cfg.hidden_act == Act::Silu
                && kernels::enabled(&q.runtime(), vb.device(), vb.dtype()),
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up.forward(x)?;
        if self.fused_silu {
            return self
                .down_proj
                .forward(&kernels::silu_mul(&gate_up, self.intermediate)?);
        }
        let gate = gate_up.narrow(D::Minus1, 0, self.intermediate)?;
        let up = gate_up.narrow(D::Minus1, self.intermediate, self.intermediate)?;
        self.down_proj.forward(&(self.act.forward(&gate)? * up)?)
    }
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn new(cfg: &TextConfig, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        Ok(Self {
            input_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("input_layernorm"),
            )?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"), q)?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp::new(cfg, vb.pp("mlp"), q)?,
        })
    }
}

/// Extra input of the first layers in Qwen3-VL: features added at the image positions.
pub struct DeepStack<'a> {
    /// For each of the `batch·len` rows: 0 (not an image token) or 1 + the row of
    /// `features` to add.
    pub rows: &'a Tensor,
    /// One `[image tokens + 1, hidden]` table per fed layer, row 0 all zeros.
    pub features: &'a [Tensor],
}

/// Per-batch decoding state of a [`TextModel`]: KV caches and where each sequence's
/// positions continue.
pub struct DecoderState {
    /// One per layer.
    pub(crate) caches: Vec<LayerKvCache>,
    /// Next position of each sequence (the three M-RoPE streams agree after the prompt).
    pub(crate) next_position: Vec<i64>,
    /// Left padding of each sequence in the cache.
    pub(crate) pad: Vec<usize>,
    /// `pad` on the device as the fused kernels read it, made on the first fused step.
    pad_on_device: Option<Tensor>,
    /// The fused steps' input buffers and graph, made on the first fused step.
    step: Option<FusedStep>,
}

/// What a fused decode step reads from the device, written before each step, and the step
/// captured as a CUDA graph once one eager step has run (kernels/graph.rs): every step of
/// a request then has the same addresses, only these buffers' contents change.
struct FusedStep {
    /// `[batch + 1]` u32: the token ids, then the caches' length after the step.
    ids_len: Tensor,
    /// `[2, batch, 1, head_dim / 2]` in the model dtype: the cos rows, then the sin rows.
    rope: Tensor,
    /// Shape and dtype of the eager steps' logits (the graph's output buffer).
    logits: Option<(Vec<usize>, DType)>,
    graph: Option<StepGraph>,
    /// A capture failed: this request goes on without a graph.
    no_graph: bool,
}

impl FusedStep {
    fn new(batch: usize, half: usize, dtype: DType, device: &candle_core::Device) -> Result<Self> {
        Ok(Self {
            ids_len: Tensor::zeros(batch + 1, DType::U32, device)?,
            rope: Tensor::zeros((2, batch, 1, half), dtype, device)?,
            logits: None,
            graph: None,
            no_graph: false,
        })
    }
}

impl DecoderState {
    /// The state after a prompt: its caches, each sequence's next position and padding.
    pub(crate) fn new(caches: Vec<LayerKvCache>, next_position: Vec<i64>, pad: Vec<usize>) -> Self {
        Self {
            caches,
            next_position,
            pad,
            pad_on_device: None,
            step: None,
        }
    }

    /// The padding as a `[batch]` u32 tensor, or none when no sequence is padded.
    fn pad_on_device(&mut self, device: &candle_core::Device) -> Result<Option<Tensor>> {
        if self.pad_on_device.is_none() {
            self.pad_on_device = padding_on_device(&self.pad, device)?;
        }
        Ok(self.pad_on_device.clone())
    }
}

/// The decoder stack, final norm and LM head.
pub struct TextModel {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    cfg: TextConfig,
    dtype: DType,
    device: candle_core::Device,
    /// Decode steps through the fused CUDA kernels.
    fused_decode: bool,
    /// The model's runtime options, for the per-step decisions (graphs, masks).
    runtime: vlm_contract::RuntimeOptions,
}

impl TextModel {
    /// Loads the decoder from `vb` (which holds `embed_tokens`, `layers`, `norm`) and the LM
    /// head from `head_vb` (`lm_head`), or ties it to the embedding. `q` makes the decoder's
    /// linear layers, `head_q` the head and `embed_q` the embedding table (a tied pair is
    /// one tensor at the head's kind); norms stay in float.
    pub fn new(
        cfg: &TextConfig,
        vb: VarBuilder,
        head_vb: VarBuilder,
        q: &Quantizer,
        head_q: &Quantizer,
        embed_q: &Quantizer,
    ) -> Result<Self> {
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let tied = cfg.tie_word_embeddings && !head_q.contains(&head_vb, "lm_head.weight");
        let embed_tokens =
            if tied { head_q } else { embed_q }.embedding(v, h, &vb, "embed_tokens.weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, vb.pp(format!("layers.{i}")), q))
            .collect::<Result<_>>()?;
        let norm = RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("norm"))?;
        let lm_head = if tied {
            let name = format!("{}.embed_tokens.weight#lm_head", vb.prefix());
            head_q.tied_head(&embed_tokens, &name)?
        } else {
            head_q.linear(h, v, false, head_vb.pp("lm_head"))?
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            fused_decode: kernels::available(&q.runtime(), vb.device(), vb.dtype(), cfg.head_dim),
            runtime: q.runtime(),
        })
    }

    /// Token embeddings `[rows, hidden]` of flat ids.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed_tokens.forward(ids)
    }

    /// Runs the decoder on `[b, l, hidden]` embeddings; returns the final-normed hidden
    /// states `[b, l, hidden]`.
    pub fn forward_hidden(
        &self,
        embeds: Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&AttentionMask>,
        caches: &mut [LayerKvCache],
        deepstack: Option<DeepStack<'_>>,
    ) -> Result<Tensor> {
        self.run_layers(embeds, cos, sin, Masking::Additive(mask), caches, deepstack)
    }

    fn run_layers(
        &self,
        embeds: Tensor,
        cos: &Tensor,
        sin: &Tensor,
        masking: Masking<'_>,
        caches: &mut [LayerKvCache],
        deepstack: Option<DeepStack<'_>>,
    ) -> Result<Tensor> {
        let (b, l, h) = embeds.dims3()?;
        let mut x = embeds;
        for (i, (layer, cache)) in self.layers.iter().zip(caches.iter_mut()).enumerate() {
            let residual = &x;
            let attn = layer.self_attn.forward(
                &layer.input_layernorm.forward(&x)?,
                cos,
                sin,
                masking,
                cache,
            )?;
            let x1 = (residual + attn)?;
            x = (&x1
                + layer
                    .mlp
                    .forward(&layer.post_attention_layernorm.forward(&x1)?)?)?;
            if let Some(ds) = &deepstack {
                if let Some(features) = ds.features.get(i) {
                    let add = features.index_select(ds.rows, 0)?.reshape((b, l, h))?;
                    x = (x + add)?;
                }
            }
        }
        self.norm.forward(&x)
    }

    /// One decode step: the last token of each sequence in, `[batch, vocab]` logits out.
    pub fn decode_step(
        &self,
        tokens: &[u32],
        rope: &MropeTables,
        state: &mut DecoderState,
    ) -> Result<Tensor> {
        let (dtype, device) = (self.dtype, &self.device);
        // Quantized projections of more than 8 rows go through candle's matmul, whose
        // scratch a graph must not hold (kernels::note_shared_quant_scratch).
        let quantized = self
            .layers
            .first()
            .is_some_and(|l| l.mlp.down_proj.is_quantized());
        if self.fused_decode
            && kernels::graphs_enabled(&self.runtime, device)
            && !(quantized && tokens.len() > kernels::QUANT_MATVEC_ROWS)
        {
            let logits = self.graph_decode_step(tokens, rope, state)?;
            for p in state.next_position.iter_mut() {
                *p += 1;
            }
            return Ok(logits);
        }
        let ids = Tensor::from_vec(tokens.to_vec(), tokens.len(), device)?;
        let embeds = self.embed(&ids)?.unsqueeze(1)?;
        let positions: Vec<[Vec<i64>; 3]> = state
            .next_position
            .iter()
            .map(|&p| [vec![p], vec![p], vec![p]])
            .collect();
        let (cos, sin) = rope.tables(&positions, dtype, device)?;
        let kv_len = state.caches.first().map_or(0, |c| c.len()) + 1;
        let hidden = if self.fused_decode {
            let pad = state.pad_on_device(device)?;
            let masking = Masking::FusedDecode {
                pad: pad.as_ref(),
                len: CacheLen {
                    on_device: None,
                    value: kv_len,
                },
            };
            self.run_layers(embeds, &cos, &sin, masking, &mut state.caches, None)?
        } else {
            let mask = attention_mask(&self.runtime, &state.pad, 1, kv_len, dtype, device)?;
            let masking = Masking::Additive(mask.as_ref());
            self.run_layers(embeds, &cos, &sin, masking, &mut state.caches, None)?
        };
        for p in state.next_position.iter_mut() {
            *p += 1;
        }
        self.logits(&hidden.squeeze(1)?)
    }

    /// A fused step for CUDA graphs (on with `cuda_graphs`): its inputs written to the step's
    /// device buffers, then the step run eagerly (the first), captured as a graph (the
    /// second) or replayed (the rest).
    fn graph_decode_step(
        &self,
        tokens: &[u32],
        rope: &MropeTables,
        state: &mut DecoderState,
    ) -> Result<Tensor> {
        let device = &self.device;
        let b = tokens.len();
        let pad = state.pad_on_device(device)?;
        let DecoderState {
            caches,
            next_position,
            step,
            ..
        } = state;
        let len = caches.first().map_or(0, |c| c.len()) + 1;
        let step = match step {
            Some(s) => s,
            None => step.insert(FusedStep::new(
                b,
                self.cfg.head_dim / 2,
                self.dtype,
                device,
            )?),
        };
        let mut ids_len = tokens.to_vec();
        ids_len.push(len as u32);
        kernels::upload_u32(&step.ids_len, &ids_len)?;
        let (cos, sin) = rope.step_rows(next_position);
        kernels::upload_f32(&step.rope, &[cos, sin].concat())?;

        if let Some(graph) = &step.graph {
            // The graph writes each cache's next position; the host keeps the count.
            for cache in caches.iter_mut() {
                cache
                    .claim(1)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            }
            return graph.replay();
        }
        let ids = step.ids_len.narrow(0, 0, b)?;
        let len_t = step.ids_len.narrow(0, b, 1)?;
        let (cos, sin) = (step.rope.get(0)?, step.rope.get(1)?);
        let body = |caches: &mut [LayerKvCache]| -> Result<Tensor> {
            let embeds = self.embed(&ids)?.unsqueeze(1)?;
            let len = CacheLen {
                on_device: Some(&len_t),
                value: len,
            };
            let masking = Masking::FusedDecode {
                pad: pad.as_ref(),
                len,
            };
            let hidden = self.run_layers(embeds, &cos, &sin, masking, caches, None)?;
            self.logits(&hidden.squeeze(1)?)
        };
        if let (false, Some((dims, dtype))) = (step.no_graph, &step.logits) {
            let out = Tensor::zeros(dims.as_slice(), *dtype, device)?;
            match StepGraph::capture(device, out, || body(caches)) {
                Ok(graph) => {
                    let logits = graph.replay()?;
                    step.graph = Some(graph);
                    return Ok(logits);
                }
                Err(_) => {
                    // Nothing ran: forget what the capture claimed and run it eagerly.
                    for cache in caches.iter_mut() {
                        cache.truncate(len - 1);
                    }
                    step.no_graph = true;
                }
            }
        }
        // The eager step before a capture keeps candle's small uploads for it.
        let _uploads = (!step.no_graph).then(|| UploadCache::new(device));
        let logits = body(caches)?;
        step.logits = Some((logits.dims().to_vec(), logits.dtype()));
        Ok(logits)
    }

    /// LM head over `[.., hidden]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    /// Empty caches for `batch` sequences of up to `capacity` positions.
    pub fn new_caches(
        &self,
        batch: usize,
        capacity: usize,
        dtype: DType,
        device: &candle_core::Device,
    ) -> Result<Vec<LayerKvCache>> {
        (0..self.cfg.num_hidden_layers)
            .map(|_| {
                LayerKvCache::new(
                    batch,
                    self.cfg.num_key_value_heads,
                    capacity,
                    self.cfg.head_dim,
                    dtype,
                    device,
                )
                .map_err(|e| candle_core::Error::Msg(e.to_string()))
            })
            .collect()
    }

    /// The config.
    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }
}
