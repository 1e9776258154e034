//! T5 ("Exploring the Limits of Transfer Learning with a Unified Text-to-Text
//! Transformer", arXiv:1910.10683) in its Flan-T5 form ("Scaling Instruction-Finetuned
//! Language Models", arXiv:2210.11416), the encoder-decoder language model of
//! blip2-flan-t5-xl and -xxl: RMS norms without bias, unscaled attention with a learned
//! relative-position bias (first layer of each stack, shared by the others), gated-GELU
//! feed-forward, separate LM head.
//!
//! Weights under `language_model.{shared, encoder, decoder, lm_head}`, as in
//! transformers' `T5ForConditionalGeneration`.

use crate::decoder::LayerKvCache;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::T5Config;
use crate::layers::{attend, split_heads, Act, AttentionMask, Embedding, Linear, RmsNorm, MASKED};
use crate::quant::Quantizer;

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
}

impl Attention {
    fn new(cfg: &T5Config, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        let inner = cfg.num_heads * cfg.d_kv;
        Ok(Self {
            q: q.linear(cfg.d_model, inner, false, vb.pp("q"))?,
            k: q.linear(cfg.d_model, inner, false, vb.pp("k"))?,
            v: q.linear(cfg.d_model, inner, false, vb.pp("v"))?,
            o: q.linear(inner, cfg.d_model, false, vb.pp("o"))?,
            heads: cfg.num_heads,
        })
    }

    /// Keys and values of `x`, `[b, heads, l, d_kv]`.
    fn kv(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            split_heads(&self.k.forward(x)?, self.heads)?,
            split_heads(&self.v.forward(x)?, self.heads)?,
        ))
    }

    /// T5 does not scale the scores (the 1/√d is folded into its initialisation).
    fn attend(&self, x: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let q = split_heads(&self.q.forward(x)?, self.heads)?;
        let bias = bias.map(|b| AttentionMask::Additive(b.clone()));
        self.o
            .forward(&attend(self.o.runtime(), &q, k, v, None, bias.as_ref())?)
    }
}

struct FeedForward {
    /// `wi` (ungated) or `wi_0` (gated: the activated half).
    wi: Linear,
    /// `wi_1`: the linear half of a gated feed-forward.
    wi_gate: Option<Linear>,
    wo: Linear,
    act: Act,
}

impl FeedForward {
    fn new(cfg: &T5Config, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        let (gated, act) = cfg
            .feed_forward()
            .map_err(|e| candle_core::Error::msg(e.to_string()))?;
        let (d, f) = (cfg.d_model, cfg.d_ff);
        let (wi, wi_gate) = if gated {
            (
                q.linear(d, f, false, vb.pp("wi_0"))?,
                Some(q.linear(d, f, false, vb.pp("wi_1"))?),
            )
        } else {
            (q.linear(d, f, false, vb.pp("wi"))?, None)
        };
        Ok(Self {
            wi,
            wi_gate,
            wo: q.linear(f, d, false, vb.pp("wo"))?,
            act,
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.act.forward(&self.wi.forward(x)?)?;
        if let Some(g) = &self.wi_gate {
            h = (h * g.forward(x)?)?;
        }
        self.wo.forward(&h)
    }
}

struct Block {
    self_attn: Attention,
    self_norm: RmsNorm,
    /// Decoder only: attention to the encoder output.
    cross: Option<(Attention, RmsNorm)>,
    ff: FeedForward,
    ff_norm: RmsNorm,
}

/// One stack (encoder or decoder) with its relative-position table `[buckets, heads]`.
struct Stack {
    blocks: Vec<Block>,
    relative_bias: Tensor,
    final_norm: RmsNorm,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
}

impl Stack {
    fn new(
        cfg: &T5Config,
        layers: usize,
        decoder: bool,
        vb: VarBuilder,
        q: &Quantizer,
    ) -> Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        let d = cfg.d_model;
        let blocks = (0..layers)
            .map(|i| {
                let v = vb.pp("block").pp(i).pp("layer");
                let cross = if decoder {
                    Some((
                        Attention::new(cfg, v.pp(1).pp("EncDecAttention"), q)?,
                        RmsNorm::new(d, eps, v.pp(1).pp("layer_norm"))?,
                    ))
                } else {
                    None
                };
                let ff = if decoder { 2 } else { 1 };
                Ok(Block {
                    self_attn: Attention::new(cfg, v.pp(0).pp("SelfAttention"), q)?,
                    self_norm: RmsNorm::new(d, eps, v.pp(0).pp("layer_norm"))?,
                    cross,
                    ff: FeedForward::new(cfg, v.pp(ff).pp("DenseReluDense"), q)?,
                    ff_norm: RmsNorm::new(d, eps, v.pp(ff).pp("layer_norm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let relative_bias = vb.get(
            (cfg.relative_attention_num_buckets, cfg.num_heads),
            "block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        )?;
        Ok(Self {
            blocks,
            relative_bias,
            final_norm: RmsNorm::new(d, eps, vb.pp("final_layer_norm"))?,
            bidirectional: !decoder,
            num_buckets: cfg.relative_attention_num_buckets,
            max_distance: cfg.relative_attention_max_distance,
        })
    }

    /// Position bias `[1, heads, q_len, k_len]` for queries at `q_start..` and keys at `0..`.
    fn position_bias(&self, q_start: usize, q_len: usize, k_len: usize) -> Result<Tensor> {
        let mut buckets = Vec::with_capacity(q_len * k_len);
        for q in q_start..q_start + q_len {
            for k in 0..k_len {
                buckets.push(relative_bucket(
                    k as i64 - q as i64,
                    self.bidirectional,
                    self.num_buckets,
                    self.max_distance,
                ));
            }
        }
        let heads = self.relative_bias.dim(1)?;
        let index = Tensor::from_vec(buckets, q_len * k_len, self.relative_bias.device())?;
        self.relative_bias
            .index_select(&index, 0)?
            .reshape((q_len, k_len, heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }
}

/// T5's bucketing of a relative position (key − query): exact buckets for small
/// distances, logarithmic ones up to `max_distance`; the encoder also separates the sign.
/// The logarithm runs in f32, as transformers computes it on float32 tensors.
pub fn relative_bucket(
    relative: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> u32 {
    let mut buckets = num_buckets as i64;
    let mut base = 0i64;
    let distance = if bidirectional {
        buckets /= 2;
        if relative > 0 {
            base = buckets;
        }
        relative.abs()
    } else {
        (-relative).max(0)
    };
    let max_exact = buckets / 2;
    let bucket = if distance < max_exact {
        distance
    } else {
        let log_ratio = (distance as f32 / max_exact as f32).ln()
            / ((max_distance as f64 / max_exact as f64).ln() as f32)
            * (buckets - max_exact) as f32;
        (max_exact + log_ratio as i64).min(buckets - 1)
    };
    (base + bucket) as u32
}

/// Per-batch decoder state: self-attention caches and the encoder's keys/values.
pub struct T5State {
    caches: Vec<LayerKvCache>,
    cross_kv: Vec<(Tensor, Tensor)>,
    /// Additive mask `[b, 1, 1, enc_len]` over the encoder's padding.
    encoder_mask: Option<Tensor>,
    /// Decoder positions filled so far.
    step: usize,
}

/// The T5 encoder-decoder with its LM head, immutable after loading.
pub struct T5 {
    shared: Embedding,
    encoder: Stack,
    decoder: Stack,
    lm_head: Linear,
    /// Tied heads scale the decoder output by d_model^-½ (Mesh TensorFlow's convention).
    logit_scale: Option<f64>,
    heads: usize,
    d_kv: usize,
    decoder_start: u32,
}

impl T5 {
    /// Loads from `vb` (the prefix of `shared`, `encoder` and `decoder`) and `head` (the
    /// prefix of `lm_head`); `q` makes the blocks' linear layers, `head_q` the head.
    pub fn new(
        cfg: &T5Config,
        vb: VarBuilder,
        head: VarBuilder,
        q: &Quantizer,
        head_q: &Quantizer,
        embed_q: &Quantizer,
    ) -> Result<Self> {
        let untied = head_q.contains(&head, "lm_head.weight");
        // A tied head and the embedding are one tensor, at the head's kind.
        let shared = if untied { embed_q } else { head_q }.embedding(
            cfg.vocab_size,
            cfg.d_model,
            &vb,
            "shared.weight",
        )?;
        let decoder_layers = cfg.num_decoder_layers.unwrap_or(cfg.num_layers);
        // A saved lm_head is used whatever the tie flag says (transformers 5 writes
        // `tie_word_embeddings: true` next to an untied Flan-T5 head).
        let (d, v) = (cfg.d_model, cfg.vocab_size);
        let lm_head = if untied {
            head_q.linear(d, v, false, head.pp("lm_head"))?
        } else {
            head_q.tied_head(&shared, &format!("{}.shared.weight#lm_head", vb.prefix()))?
        };
        let logit_scale = cfg
            .scale_decoder_outputs
            .unwrap_or(cfg.tie_word_embeddings)
            .then(|| (cfg.d_model as f64).powf(-0.5));
        Ok(Self {
            encoder: Stack::new(cfg, cfg.num_layers, false, vb.pp("encoder"), q)?,
            decoder: Stack::new(cfg, decoder_layers, true, vb.pp("decoder"), q)?,
            shared,
            lm_head,
            logit_scale,
            heads: cfg.num_heads,
            d_kv: cfg.d_kv,
            decoder_start: cfg.decoder_start_token_id,
        })
    }

    /// Token embeddings of flat `ids`, `[n, d_model]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.shared.forward(ids)
    }

    /// The first decoder input.
    pub fn decoder_start_token(&self) -> u32 {
        self.decoder_start
    }

    /// Additive padding mask `[b, 1, 1, len]` for left-padded rows (`None` without padding).
    pub fn padding_mask(
        pad: &[usize],
        len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Option<Tensor>> {
        if pad.iter().all(|&p| p == 0) {
            return Ok(None);
        }
        let mut m = vec![0f32; pad.len() * len];
        for (b, &p) in pad.iter().enumerate() {
            m[b * len..b * len + p].fill(MASKED);
        }
        Tensor::from_vec(m, (pad.len(), 1, 1, len), device)?
            .to_dtype(dtype)
            .map(Some)
    }

    /// The encoder over `embeds [b, l, d]`; returns its final hidden states.
    pub fn encode(&self, embeds: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let l = embeds.dim(1)?;
        let mut bias = self
            .encoder
            .position_bias(0, l, l)?
            .to_dtype(embeds.dtype())?;
        if let Some(m) = mask {
            bias = bias.broadcast_add(m)?;
        }
        let mut x = embeds.clone();
        for block in &self.encoder.blocks {
            let h = block.self_norm.forward(&x)?;
            let (k, v) = block.self_attn.kv(&h)?;
            x = (&x + block.self_attn.attend(&h, &k, &v, Some(&bias))?)?;
            x = (&x + block.ff.forward(&block.ff_norm.forward(&x)?)?)?;
        }
        self.encoder.final_norm.forward(&x)
    }

    /// Decoder state for `encoded [b, enc_len, d]`, with room for `capacity` decoder steps.
    pub fn start_decoder(
        &self,
        encoded: &Tensor,
        encoder_mask: Option<Tensor>,
        capacity: usize,
    ) -> Result<T5State> {
        let b = encoded.dim(0)?;
        let caches = self
            .decoder
            .blocks
            .iter()
            .map(|_| {
                LayerKvCache::new(
                    b,
                    self.heads,
                    capacity,
                    self.d_kv,
                    encoded.dtype(),
                    encoded.device(),
                )
                .map_err(|e| candle_core::Error::msg(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let cross_kv = self
            .decoder
            .blocks
            .iter()
            .map(|block| match &block.cross {
                Some((attn, _)) => attn.kv(encoded),
                None => candle_core::bail!("T5 decoder block without cross-attention"),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(T5State {
            caches,
            cross_kv,
            encoder_mask,
            step: 0,
        })
    }

    /// One decoder step for each sequence's last token; returns logits `[b, vocab]`.
    pub fn decode_step(&self, tokens: &Tensor, state: &mut T5State) -> Result<Tensor> {
        let mut x = self.embed(tokens)?.unsqueeze(1)?;
        let bias = self
            .decoder
            .position_bias(state.step, 1, state.step + 1)?
            .to_dtype(x.dtype())?;
        for ((block, cache), (ck, cv)) in self
            .decoder
            .blocks
            .iter()
            .zip(state.caches.iter_mut())
            .zip(&state.cross_kv)
        {
            let h = block.self_norm.forward(&x)?;
            let (k, v) = block.self_attn.kv(&h)?;
            let (k, v) = cache
                .append(&k, &v)
                .map_err(|e| candle_core::Error::msg(e.to_string()))?;
            x = (&x + block.self_attn.attend(&h, &k, &v, Some(&bias))?)?;
            if let Some((attn, norm)) = &block.cross {
                let h = norm.forward(&x)?;
                x = (&x + attn.attend(&h, ck, cv, state.encoder_mask.as_ref())?)?;
            }
            x = (&x + block.ff.forward(&block.ff_norm.forward(&x)?)?)?;
        }
        state.step += 1;
        let mut h = self.decoder.final_norm.forward(&x)?.squeeze(1)?;
        if let Some(s) = self.logit_scale {
            h = (h * s)?;
        }
        self.lm_head.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::relative_bucket;

    #[test]
    fn buckets_match_transformers() {
        // Values from transformers' T5Attention._relative_position_bucket (32 buckets,
        // max distance 128).
        let bi: Vec<u32> = [-200, -128, -20, -9, -8, -7, -1, 0, 1, 7, 8, 20, 127, 500]
            .iter()
            .map(|&r| relative_bucket(r, true, 32, 128))
            .collect();
        assert_eq!(bi, [15, 15, 10, 8, 8, 7, 1, 0, 17, 23, 24, 26, 31, 31]);
        let uni: Vec<u32> = [-200, -20, -16, -15, -1, 0, 3]
            .iter()
            .map(|&r| relative_bucket(r, false, 32, 128))
            .collect();
        assert_eq!(uni, [31, 17, 16, 15, 1, 0, 0]);
    }
}
