//! The EVA ViT-g/14 image encoder of BLIP-2 and MiniGPT-4 ("EVA: Exploring the Limits of
//! Masked Visual Representation Learning at Scale", arXiv:2211.07636): a class token,
//! learned position embeddings, pre-LayerNorm blocks whose single qkv projection has
//! biases on q and v only, and exact-GELU MLPs. transformers' BLIP-2 port ends with a
//! `post_layernorm`; the original release (used by MiniGPT-4) has no final norm and applies
//! its own `ln_vision` outside the ViT.
//!
//! Input `pixel_values [b, 3, 224, 224]`; output `[b, 1 + 256, width]` (class token first).

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::config::VisionConfig;
use crate::layers::{attend, split_heads, Act, LayerNorm, Linear};
use crate::quant::Quantizer;

/// Which release's tensor names the weights use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VitLayout {
    /// transformers' `Blip2VisionModel` (`embeddings.*`, `encoder.layers.N.*`,
    /// `post_layernorm`).
    Transformers,
    /// The original EVA / LAVIS / MiniGPT-4 names (`cls_token`, `blocks.N.*`), no final norm.
    Eva,
}

struct Block {
    norm1: LayerNorm,
    /// q, k and v in one projection; the attention scale is folded into q.
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    act: Act,
}

impl Block {
    fn new(
        cfg: &VisionConfig,
        layout: VitLayout,
        act: Act,
        vb: VarBuilder,
        q: &Quantizer,
    ) -> Result<Self> {
        let d = cfg.hidden_size;
        let (n1, attn, proj, n2) = match layout {
            VitLayout::Transformers => ("layer_norm1", "self_attn", "projection", "layer_norm2"),
            VitLayout::Eva => ("norm1", "attn", "proj", "norm2"),
        };
        let eps = cfg.layer_norm_eps;
        let va = vb.pp(attn);
        let scale = ((d / cfg.num_attention_heads) as f64).powf(-0.5);
        // Released checkpoints hold q_bias and v_bias; transformers 5 saves them already
        // joined (with zeros for k) as qkv.bias.
        let bias = if !cfg.qkv_bias {
            None
        } else if va.contains_tensor("qkv.bias") {
            let b = va.get(3 * d, "qkv.bias")?;
            Some(Tensor::cat(
                &[(b.narrow(0, 0, d)? * scale)?, b.narrow(0, d, 2 * d)?],
                0,
            )?)
        } else {
            let q = (va.get(d, "q_bias")? * scale)?;
            let v = va.get(d, "v_bias")?;
            Some(Tensor::cat(&[&q, &q.zeros_like()?, &v], 0)?)
        };
        let source = format!("{}.qkv.weight", va.prefix());
        let qkv = q.computed(
            &format!("{source}#q_scaled({scale})"),
            vec![source],
            d,
            3 * d,
            &va,
            bias,
            |r| {
                let weight = r.at(&va).get((3 * d, d), "qkv.weight")?;
                Tensor::cat(
                    &[
                        (weight.narrow(0, 0, d)? * scale)?,
                        weight.narrow(0, d, 2 * d)?,
                    ],
                    0,
                )
            },
        )?;
        Ok(Self {
            norm1: LayerNorm::new(d, eps, vb.pp(n1))?,
            qkv,
            proj: q.linear(d, d, true, va.pp(proj))?,
            norm2: LayerNorm::new(d, eps, vb.pp(n2))?,
            fc1: q.linear(d, cfg.intermediate_size, true, vb.pp("mlp.fc1"))?,
            fc2: q.linear(cfg.intermediate_size, d, true, vb.pp("mlp.fc2"))?,
            heads: cfg.num_attention_heads,
            act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let qkv = self.qkv.forward(&self.norm1.forward(x)?)?;
        let q = split_heads(&qkv.narrow(D::Minus1, 0, d)?, self.heads)?;
        let k = split_heads(&qkv.narrow(D::Minus1, d, d)?, self.heads)?;
        let v = split_heads(&qkv.narrow(D::Minus1, 2 * d, d)?, self.heads)?;
        let attn = attend(self.qkv.runtime(), &q, &k, &v, None, None)?;
        let x = (x + self.proj.forward(&attn)?)?;
        let h = self
            .act
            .forward(&self.fc1.forward(&self.norm2.forward(&x)?)?)?;
        x + self.fc2.forward(&h)?
    }
}

/// The ViT, immutable after loading.
pub struct VisionTransformer {
    /// Conv weights flattened to `[width, channels·patch·patch]` (the conv is a matmul).
    patch_weight: Tensor,
    patch_bias: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    blocks: Vec<Block>,
    post_layernorm: Option<LayerNorm>,
    patch_size: usize,
    channels: usize,
}

impl VisionTransformer {
    /// Loads the ViT from `vb` (the `vision_model` / `visual_encoder` prefix); `q` makes
    /// the blocks' linear layers (the patch embedding stays in float).
    pub fn new(
        cfg: &VisionConfig,
        layout: VitLayout,
        vb: VarBuilder,
        q: &Quantizer,
    ) -> Result<Self> {
        let d = cfg.hidden_size;
        let (p, c) = (cfg.patch_size, cfg.num_channels);
        let act = Act::from_name(&cfg.hidden_act).map_err(candle_core::Error::msg)?;
        let n = cfg.num_positions();
        let (patch, class, position, blocks) = match layout {
            VitLayout::Transformers => (
                vb.pp("embeddings.patch_embedding"),
                vb.get((1, 1, d), "embeddings.class_embedding")?,
                vb.get((1, n, d), "embeddings.position_embedding")?,
                vb.pp("encoder.layers"),
            ),
            VitLayout::Eva => (
                vb.pp("patch_embed.proj"),
                vb.get((1, 1, d), "cls_token")?,
                vb.get((1, n, d), "pos_embed")?,
                vb.pp("blocks"),
            ),
        };
        let patch_weight = patch.get((d, c, p, p), "weight")?.reshape((d, c * p * p))?;
        let patch_bias = patch.get(d, "bias")?;
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| Block::new(cfg, layout, act, blocks.pp(i), q))
            .collect::<Result<Vec<_>>>()?;
        let post_layernorm = match layout {
            VitLayout::Transformers => Some(LayerNorm::new(
                d,
                cfg.layer_norm_eps,
                vb.pp("post_layernorm"),
            )?),
            VitLayout::Eva => None,
        };
        Ok(Self {
            patch_weight,
            patch_bias,
            class_embedding: class,
            position_embedding: position,
            blocks,
            post_layernorm,
            patch_size: p,
            channels: c,
        })
    }

    /// `pixel_values [b, channels, h, w]` → `[b, 1 + patches, width]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixel_values.dims4()?;
        let p = self.patch_size;
        if c != self.channels || h % p != 0 || w % p != 0 {
            candle_core::bail!(
                "pixel_values {:?} do not fit {p}-pixel patches of {} channels",
                pixel_values.dims(),
                self.channels
            );
        }
        let (gh, gw) = (h / p, w / p);
        let d = self.patch_weight.dim(0)?;
        // A stride-p convolution with a p×p kernel is a matmul over non-overlapping patches.
        let patches = pixel_values
            .to_dtype(self.patch_weight.dtype())?
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b * gh * gw, c * p * p))?;
        let embeds = patches
            .matmul(&self.patch_weight.t()?)?
            .broadcast_add(&self.patch_bias)?
            .reshape((b, gh * gw, d))?;
        let class = self.class_embedding.expand((b, 1, d))?;
        let positions = self.position_embedding.narrow(1, 0, gh * gw + 1)?;
        let mut x = Tensor::cat(&[&class, &embeds], 1)?.broadcast_add(&positions)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        match &self.post_layernorm {
            Some(norm) => norm.forward(&x),
            None => Ok(x),
        }
    }
}
