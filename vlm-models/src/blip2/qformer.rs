//! The Q-Former of BLIP-2 ("BLIP-2: Bootstrapping Language-Image Pre-training with Frozen
//! Image Encoders and Large Language Models", arXiv:2301.12597), as BLIP-2 and MiniGPT-4
//! use it for generation: a BERT encoder run over learned query tokens only, whose every
//! `cross_attention_frequency`-th layer (from layer 0) also attends to the image features.
//! Text inputs, word embeddings and the text feed-forward path are not needed and not
//! loaded.
//!
//! Output `[b, num_query_tokens, hidden]`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::QFormerConfig;
use crate::layers::{attend, split_heads, Act, LayerNorm, Linear};
use crate::quant::Quantizer;

/// Which release's tensor names the weights use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QFormerLayout {
    /// transformers' `Blip2QFormerModel` (`layernorm`, `*.attention.attention.query`).
    Transformers,
    /// LAVIS / MiniGPT-4 (`Qformer.bert.*`: `embeddings.LayerNorm`, `*.attention.self.query`).
    Lavis,
}

/// Multi-head attention plus its output dense + residual LayerNorm (BERT's post-norm).
struct AttentionBlock {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    norm: LayerNorm,
    heads: usize,
    scale: f64,
}

impl AttentionBlock {
    fn new(
        cfg: &QFormerConfig,
        kv_width: usize,
        inner: &str,
        vb: VarBuilder,
        q: &Quantizer,
    ) -> Result<Self> {
        let d = cfg.hidden_size;
        let va = vb.pp(inner);
        Ok(Self {
            query: q.linear(d, d, true, va.pp("query"))?,
            key: q.linear(kv_width, d, true, va.pp("key"))?,
            value: q.linear(kv_width, d, true, va.pp("value"))?,
            dense: q.linear(d, d, true, vb.pp("output.dense"))?,
            norm: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            heads: cfg.num_attention_heads,
            scale: ((d / cfg.num_attention_heads) as f64).powf(-0.5),
        })
    }

    /// `x` attends to `context` (itself for self-attention); nothing is masked: the
    /// queries and the image patches are all valid.
    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let q = split_heads(&self.query.forward(x)?, self.heads)?;
        let k = split_heads(&self.key.forward(context)?, self.heads)?;
        let v = split_heads(&self.value.forward(context)?, self.heads)?;
        let attn = attend(self.query.runtime(), &q, &k, &v, Some(self.scale), None)?;
        self.norm.forward(&(self.dense.forward(&attn)? + x)?)
    }
}

struct Layer {
    attention: AttentionBlock,
    cross_attention: Option<AttentionBlock>,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    act: Act,
}

impl Layer {
    fn forward(&self, x: &Tensor, image: &Tensor) -> Result<Tensor> {
        let mut x = self.attention.forward(x, x)?;
        if let Some(cross) = &self.cross_attention {
            x = cross.forward(&x, image)?;
        }
        let h = self.act.forward(&self.intermediate.forward(&x)?)?;
        self.output_norm.forward(&(self.output.forward(&h)? + x)?)
    }
}

/// The Q-Former with its learned queries, immutable after loading.
pub struct QFormer {
    query_tokens: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl QFormer {
    /// Loads from `vb` (the `qformer` / `Qformer.bert` prefix); `query_tokens`
    /// `[1, n, hidden]` live outside it in both releases.
    pub fn new(
        cfg: &QFormerConfig,
        num_query_tokens: usize,
        layout: QFormerLayout,
        query_tokens: Tensor,
        vb: VarBuilder,
        q: &Quantizer,
    ) -> Result<Self> {
        let d = cfg.hidden_size;
        let (embed_norm, inner) = match layout {
            QFormerLayout::Transformers => ("layernorm", "attention"),
            QFormerLayout::Lavis => ("embeddings.LayerNorm", "self"),
        };
        if query_tokens.dims() != [1, num_query_tokens, d] {
            candle_core::bail!(
                "query_tokens has shape {:?}, expected [1, {num_query_tokens}, {d}]",
                query_tokens.dims()
            );
        }
        let act = Act::from_name(&cfg.hidden_act).map_err(candle_core::Error::msg)?;
        let vl = vb.pp("encoder.layer");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let v = vl.pp(i);
                let cross_attention = if i % cfg.cross_attention_frequency == 0 {
                    Some(AttentionBlock::new(
                        cfg,
                        cfg.encoder_hidden_size,
                        inner,
                        v.pp("crossattention"),
                        q,
                    )?)
                } else {
                    None
                };
                Ok(Layer {
                    attention: AttentionBlock::new(cfg, d, inner, v.pp("attention"), q)?,
                    cross_attention,
                    intermediate: q.linear(
                        d,
                        cfg.intermediate_size,
                        true,
                        v.pp("intermediate_query.dense"),
                    )?,
                    output: q.linear(cfg.intermediate_size, d, true, v.pp("output_query.dense"))?,
                    output_norm: LayerNorm::new(
                        d,
                        cfg.layer_norm_eps,
                        v.pp("output_query.LayerNorm"),
                    )?,
                    act,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            query_tokens,
            embed_norm: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp(embed_norm))?,
            layers,
        })
    }

    /// `image_embeds [b, patches, encoder width]` → `[b, queries, hidden]`, in the
    /// Q-Former's dtype.
    pub fn forward(&self, image_embeds: &Tensor) -> Result<Tensor> {
        let b = image_embeds.dim(0)?;
        let image = image_embeds.to_dtype(self.query_tokens.dtype())?;
        let (_, n, d) = self.query_tokens.dims3()?;
        let queries = self.query_tokens.expand((b, n, d))?.contiguous()?;
        let mut x = self.embed_norm.forward(&queries)?;
        for layer in &self.layers {
            x = layer.forward(&x, &image)?;
        }
        Ok(x)
    }
}
