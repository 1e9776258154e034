//! OPT ("OPT: Open Pre-trained Transformer Language Models", arXiv:2205.01068), the
//! decoder-only language model of blip2-opt-2.7b and -6.7b: learned positions (offset
//! by 2, a fairseq legacy), pre-LayerNorm blocks with biased projections, ReLU MLPs,
//! and an LM head tied to the embeddings.
//!
//! Weights under `language_model.model.decoder.*` (+ `language_model.lm_head.weight`
//! when untied), as in transformers' `OPTForCausalLM`; the loader finds the prefix.

use crate::decoder::LayerKvCache;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::OptConfig;
use crate::layers::{attend, split_heads, Act, AttentionMask, Embedding, LayerNorm, Linear};
use crate::quant::Quantizer;

/// transformers' `OPTLearnedPositionalEmbedding` offset: position p reads row p + 2.
const POSITION_OFFSET: usize = 2;
/// nn.LayerNorm's default epsilon (OPT configs have no field for it).
const LAYER_NORM_EPS: f64 = 1e-5;

struct Layer {
    /// q (scaled by 1/√d, bias included, as OPT scales after the bias), k and v.
    qkv: Linear,
    out_proj: Linear,
    attn_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    ffn_norm: LayerNorm,
}

/// The OPT decoder with its LM head, immutable after loading.
pub struct Opt {
    embed_tokens: Embedding,
    embed_positions: Tensor,
    project_in: Option<Linear>,
    project_out: Option<Linear>,
    layers: Vec<Layer>,
    final_layer_norm: Option<LayerNorm>,
    lm_head: Linear,
    pre_norm: bool,
    act: Act,
    heads: usize,
    hidden: usize,
}

impl Opt {
    /// Loads the decoder from `vd` (`language_model.model.decoder`) and an untied head
    /// from `head` (the prefix of `lm_head`; None: tied to the embeddings); `q` makes the
    /// decoder's linear layers, `head_q` the head.
    pub fn new(
        cfg: &OptConfig,
        vd: VarBuilder,
        head: Option<VarBuilder>,
        q: &Quantizer,
        head_q: &Quantizer,
        embed_q: &Quantizer,
    ) -> Result<Self> {
        let d = cfg.hidden_size;
        let e = cfg.embed_dim();
        // A tied head and the embedding are one tensor, at the head's kind.
        let embed_tokens = if head.is_none() { head_q } else { embed_q }.embedding(
            cfg.vocab_size,
            e,
            &vd,
            "embed_tokens.weight",
        )?;
        let embed_positions = vd.get(
            (cfg.max_position_embeddings + POSITION_OFFSET, d),
            "embed_positions.weight",
        )?;
        let (project_in, project_out) = if e != d {
            (
                Some(q.linear(e, d, false, vd.pp("project_in"))?),
                Some(q.linear(d, e, false, vd.pp("project_out"))?),
            )
        } else {
            (None, None)
        };
        let scale = ((d / cfg.num_attention_heads) as f64).powf(-0.5);
        let bias = cfg.enable_bias;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let v = vd.pp("layers").pp(i);
                let a = v.pp("self_attn");
                Ok(Layer {
                    qkv: q.fused(
                        d,
                        &[
                            (d, scale, a.pp("q_proj")),
                            (d, 1.0, a.pp("k_proj")),
                            (d, 1.0, a.pp("v_proj")),
                        ],
                        bias,
                    )?,
                    out_proj: q.linear(d, d, bias, a.pp("out_proj"))?,
                    attn_norm: LayerNorm::new(d, LAYER_NORM_EPS, v.pp("self_attn_layer_norm"))?,
                    fc1: q.linear(d, cfg.ffn_dim, bias, v.pp("fc1"))?,
                    fc2: q.linear(cfg.ffn_dim, d, bias, v.pp("fc2"))?,
                    ffn_norm: LayerNorm::new(d, LAYER_NORM_EPS, v.pp("final_layer_norm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = if cfg.do_layer_norm_before && !cfg.remove_final_layer_norm {
            Some(LayerNorm::new(
                d,
                LAYER_NORM_EPS,
                vd.pp("final_layer_norm"),
            )?)
        } else {
            None
        };
        let lm_head = match head {
            Some(h) => head_q.linear(e, cfg.vocab_size, false, h.pp("lm_head"))?,
            None => head_q.tied_head(
                &embed_tokens,
                &format!("{}.embed_tokens.weight#lm_head", vd.prefix()),
            )?,
        };
        Ok(Self {
            embed_tokens,
            embed_positions,
            project_in,
            project_out,
            layers,
            final_layer_norm,
            lm_head,
            pre_norm: cfg.do_layer_norm_before,
            act: Act::from_name(&cfg.activation_function).map_err(candle_core::Error::msg)?,
            heads: cfg.num_attention_heads,
            hidden: d,
        })
    }

    /// Token embeddings of flat `ids`, `[n, embed_dim]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed_tokens.forward(ids)
    }

    /// One KV cache per layer with room for `capacity` positions.
    pub fn new_caches(
        &self,
        batch: usize,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Vec<LayerKvCache>> {
        let head_dim = self.hidden / self.heads;
        (0..self.layers.len())
            .map(|_| {
                LayerKvCache::new(batch, self.heads, capacity, head_dim, dtype, device)
                    .map_err(|e| candle_core::Error::msg(e.to_string()))
            })
            .collect()
    }

    /// Runs the decoder over `embeds [b, l, embed_dim]` at `positions` (`b·l` of them,
    /// 0-based), appending to `caches`; returns the final hidden states `[b, l, embed_dim]`.
    pub fn forward(
        &self,
        embeds: &Tensor,
        positions: &[u32],
        mask: Option<&AttentionMask>,
        caches: &mut [LayerKvCache],
    ) -> Result<Tensor> {
        let (b, l, _) = embeds.dims3()?;
        let rows: Vec<u32> = positions
            .iter()
            .map(|&p| p + POSITION_OFFSET as u32)
            .collect();
        let rows = Tensor::from_vec(rows, b * l, embeds.device())?;
        let pos = self
            .embed_positions
            .index_select(&rows, 0)?
            .reshape((b, l, self.hidden))?;
        let mut x = match &self.project_in {
            Some(p) => p.forward(embeds)?,
            None => embeds.clone(),
        };
        x = (x + pos)?;
        for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
            x = self.layer(layer, &x, mask, cache)?;
        }
        if let Some(n) = &self.final_layer_norm {
            x = n.forward(&x)?;
        }
        match &self.project_out {
            Some(p) => p.forward(&x),
            None => Ok(x),
        }
    }

    fn layer(
        &self,
        layer: &Layer,
        x: &Tensor,
        mask: Option<&AttentionMask>,
        cache: &mut LayerKvCache,
    ) -> Result<Tensor> {
        let d = self.hidden;
        let h = if self.pre_norm {
            layer.attn_norm.forward(x)?
        } else {
            x.clone()
        };
        let qkv = layer.qkv.forward(&h)?;
        let q = split_heads(&qkv.narrow(2, 0, d)?, self.heads)?;
        let k = split_heads(&qkv.narrow(2, d, d)?, self.heads)?;
        let v = split_heads(&qkv.narrow(2, 2 * d, d)?, self.heads)?;
        let (k, v) = cache
            .append(&k, &v)
            .map_err(|e| candle_core::Error::msg(e.to_string()))?;
        let attn =
            layer
                .out_proj
                .forward(&attend(layer.out_proj.runtime(), &q, &k, &v, None, mask)?)?;
        let mut x = (x + attn)?;
        if !self.pre_norm {
            x = layer.attn_norm.forward(&x)?;
        }
        let h = if self.pre_norm {
            layer.ffn_norm.forward(&x)?
        } else {
            x.clone()
        };
        let h = layer
            .fc2
            .forward(&self.act.forward(&layer.fc1.forward(&h)?)?)?;
        let x = (x + h)?;
        if self.pre_norm {
            Ok(x)
        } else {
            layer.ffn_norm.forward(&x)
        }
    }

    /// Logits `[.., vocab]` of hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }
}
