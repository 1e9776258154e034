//! The decoder stack: token embeddings, the layers, the final norm and the LM head, with
//! the rotary tables its positions need.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::Masking;
use super::config::DecoderConfig;
use super::kv_cache::LayerKvCache;
use super::layer::DecoderLayer;
use super::rope::RopeTables;
use super::state::DecoderState;
use super::step_kits::{KitHome, KitKey, PromptCaches, StepKits};
use crate::kernels;
use crate::layers::{attention_mask, AddNorm, AttentionMask, Embedding, Linear, RmsNorm};
use crate::quant::Quantizer;

/// Extra input of the first layers in Qwen3-VL: features added at the image positions.
pub struct DeepStack<'a> {
    /// For each of the `batch·len` rows: 0 (not an image token) or 1 + the row of
    /// `features` to add.
    pub rows: &'a Tensor,
    /// One `[image tokens + 1, hidden]` table per fed layer, row 0 all zeros.
    pub features: &'a [Tensor],
}

/// A LLaMA / Qwen-style decoder: immutable once loaded; each request's caches and
/// positions live in its [`DecoderState`].
pub struct Decoder {
    embed_tokens: Embedding,
    pub(super) layers: Vec<DecoderLayer>,
    pub(super) norm: RmsNorm,
    pub(super) lm_head: Linear,
    pub(super) rope: RopeTables,
    pub(super) cfg: DecoderConfig,
    pub(super) dtype: DType,
    pub(super) device: Device,
    /// Decode steps through the fused CUDA kernels.
    pub(super) fused_decode: bool,
    /// The model's runtime options, for the per-step decisions (graphs, masks).
    pub(super) runtime: vlm_contract::RuntimeOptions,
    /// Finished requests' caches and decode graphs, kept for the next request of the same
    /// shape on the same thread (decoder/step_kits.rs).
    pub(super) kits: Arc<StepKits>,
}

impl Decoder {
    /// Loads the decoder from `vb` (which holds `embed_tokens`, `layers`, `norm`) and the LM
    /// head from `head_vb` (`lm_head`), or ties it to the embedding. `q` makes the decoder's
    /// linear layers, `head_q` the head and `embed_q` the embedding table (a tied pair is
    /// one tensor at the head's kind); norms stay in float.
    pub fn new(
        cfg: &DecoderConfig,
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
            rope: RopeTables::new(cfg.head_dim, cfg.rope_theta, cfg.rope),
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            fused_decode: kernels::available(&q.runtime(), vb.device(), vb.dtype(), cfg.head_dim),
            runtime: q.runtime(),
            kits: Arc::default(),
        })
    }

    /// Token embeddings `[rows, hidden]` of flat ids.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed_tokens.forward(ids)
    }

    /// The `[b, l, hidden]` input of a left-padded prompt batch whose image positions take
    /// rows of `image_rows` (`[n, hidden]`): the embeddings of the `b·l` flat `ids` and the
    /// image rows form one table, and row `i` of the result is row `source[i]` of it
    /// (`< b·l`: a token's own embedding; `b·l + j`: image row `j`).
    pub fn embed_with_images(
        &self,
        ids: &Tensor,
        image_rows: Option<&Tensor>,
        source: &Tensor,
        (b, l): (usize, usize),
    ) -> Result<Tensor> {
        let mut table = self.embed(ids)?;
        if let Some(rows) = image_rows {
            table = Tensor::cat(&[&table, &rows.to_dtype(self.dtype)?], 0)?;
        }
        table
            .index_select(source, 0)?
            .reshape((b, l, self.cfg.hidden_size))
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

    /// A plain-RoPE prompt batch, left padded by `pad`, as `[b, l, hidden]` embeddings
    /// (positions count from 0 after each sequence's padding): the final hidden states
    /// and the state to decode up to `max_new_tokens` more tokens from.
    pub fn prefill_plain(
        &self,
        embeds: Tensor,
        pad: Vec<usize>,
        max_new_tokens: usize,
    ) -> Result<(Tensor, DecoderState)> {
        let (b, len, _) = embeds.dims3()?;
        let positions: Vec<Vec<i64>> = pad
            .iter()
            .map(|&p| {
                std::iter::repeat_n(0, p)
                    .chain(0..(len - p) as i64)
                    .collect()
            })
            .collect();
        let (dtype, device) = (self.dtype, &self.device);
        let (cos, sin) = self.rope.plain_tables(&positions, dtype, device)?;
        let mask = attention_mask(&self.runtime, &pad, len, len, dtype, device)?;
        let mut caches = self.prompt_caches(b, len + max_new_tokens, &pad, dtype, device)?;
        let out = self.forward_hidden(embeds, &cos, &sin, mask.as_ref(), &mut caches, None)?;
        let next_position = pad.iter().map(|&p| (len - p) as i64).collect();
        Ok((out, DecoderState::new(caches, next_position, pad)))
    }

    pub(super) fn run_layers(
        &self,
        embeds: Tensor,
        cos: &Tensor,
        sin: &Tensor,
        masking: Masking<'_>,
        caches: &mut [LayerKvCache],
        deepstack: Option<DeepStack<'_>>,
    ) -> Result<Tensor> {
        // The prefill's residual adds in the norms' launches (`prefill_kernels`); a decode
        // step reaches here with the fused norms off (decode_step.rs) or off the kernels.
        let prompt = self.runtime.prefill_kernels
            && matches!(masking, Masking::Additive(_))
            && kernels::enabled(&self.runtime, &self.device, self.dtype);
        let norms = if prompt {
            AddNorm::Prompt
        } else {
            AddNorm::Ops
        };
        let (x, delta) =
            self.run_layers_deferred(embeds, cos, sin, masking, caches, deepstack, norms)?;
        let (_, hidden, _) = self.norm.add_forward(&x, delta.as_ref(), norms, false)?;
        Ok(hidden)
    }

    /// The layers over `embeds`: the last layer's residual and its MLP output, which the
    /// final norm adds (`norms`: as DecoderLayer::forward takes it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_layers_deferred(
        &self,
        embeds: Tensor,
        cos: &Tensor,
        sin: &Tensor,
        masking: Masking<'_>,
        caches: &mut [LayerKvCache],
        deepstack: Option<DeepStack<'_>>,
        norms: AddNorm,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, l, h) = embeds.dims3()?;
        let mut x = embeds;
        let mut delta = None;
        for (i, (layer, cache)) in self.layers.iter().zip(caches.iter_mut()).enumerate() {
            let (residual, mlp) =
                layer.forward(&x, delta.as_ref(), cos, sin, masking, cache, norms)?;
            let fed = deepstack
                .as_ref()
                .and_then(|ds| Some((ds.rows, ds.features.get(i)?)));
            (x, delta) = match fed {
                Some((rows, features)) => {
                    let add = features.index_select(rows, 0)?.reshape((b, l, h))?;
                    (((residual + mlp)? + add)?, None)
                }
                None => (residual, Some(mlp)),
            };
        }
        Ok((x, delta))
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
        device: &Device,
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
                .and_then(|c| c.with_slice_counters(self.cfg.num_attention_heads))
                .map_err(|e| candle_core::Error::Msg(e.to_string()))
            })
            .collect()
    }

    /// The caches a prompt of `batch` sequences fills, with room for `capacity`
    /// positions. Where decode steps are replayed graphs and no sequence is padded
    /// (`pad`: each sequence's left padding), the capacity is rounded up to a multiple of
    /// 128 and the caches come from this thread's kit of that shape when it has one:
    /// the request then replays the kit's graph from its first decode step instead of
    /// running one eager step and capturing its own (decoder/step_kits.rs). Off with
    /// [`vlm_contract::RuntimeOptions::reuse_graphs`].
    pub fn prompt_caches(
        &self,
        batch: usize,
        capacity: usize,
        pad: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<PromptCaches> {
        let kept = self.runtime.reuse_graphs
            && dtype == self.dtype
            && device.same_device(&self.device)
            && pad.iter().all(|&p| p == 0)
            && self.graph_steps(batch);
        if !kept {
            let layers = self.new_caches(batch, capacity, dtype, device)?;
            return Ok(PromptCaches::fresh(layers));
        }
        const ROUND: usize = 128;
        let capacity = capacity.div_ceil(ROUND) * ROUND;
        let key = KitKey {
            thread: std::thread::current().id(),
            batch,
            capacity,
            dtype,
        };
        let home = Some(KitHome {
            kits: self.kits.clone(),
            key,
        });
        // Taking drops this thread's kit of another shape before new caches are made.
        if let Some(kit) = self.kits.take(key) {
            return Ok(PromptCaches {
                layers: kit.caches,
                step: Some(kit.step),
                picks: kit.picks,
                home,
            });
        }
        Ok(PromptCaches {
            layers: self.new_caches(batch, capacity, dtype, device)?,
            step: None,
            picks: None,
            home,
        })
    }

    /// The rotary tables of this decoder's positions.
    pub fn rope(&self) -> &RopeTables {
        &self.rope
    }

    /// Greedy decoding's pick from this decoder's logits ([`kernels::device_argmax`]).
    pub fn device_argmax(
        &self,
        logits: &Tensor,
    ) -> vlm_contract::Result<vlm_contract::sampling::DeviceArgmax> {
        kernels::device_argmax(&self.runtime, logits)
    }

    /// The config.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }
}
