//! The vision tower of Qwen2-VL, Qwen2.5-VL and Qwen3-VL: patch embedding, 2-D rotary
//! attention blocks (windowed in Qwen2.5-VL), the patch merger, and Qwen3-VL's learned
//! position table and DeepStack mergers.
//!
//! Input: `pixel_values [patches, channels·temporal·patch·patch]` in the processor's
//! merge-block order, and each image's `[t, h, w]` grid in patches. Output: one embedding
//! per merged token, `[patches / merge², out_hidden_size]`.

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;
use vlm_contract::RuntimeOptions;

use super::config::{QwenGeneration, VisionConfig};
use super::rope::{patch_coordinates, vision_rotary};
use crate::kernels::{self, Segments};
use crate::layers::{apply_rope, softmax_f32_acc, Act, AddNorm, LayerNorm, Linear, RmsNorm};
use crate::quant::Quantizer;

enum Norm {
    Layer(LayerNorm),
    Rms(RmsNorm),
}

impl Module for Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Layer(n) => n.forward(x),
            Norm::Rms(n) => n.forward(x),
        }
    }
}

impl Norm {
    /// `(x + delta, norm(x + delta))` (`(x, norm(x))` without `delta`); with `kernel`, an
    /// RMSNorm runs with its add in one CUDA launch (the same values).
    fn add_forward(
        &self,
        x: &Tensor,
        delta: Option<&Tensor>,
        kernel: bool,
    ) -> Result<(Tensor, Tensor)> {
        match self {
            Norm::Rms(n) => {
                let launch = if kernel {
                    AddNorm::Prompt
                } else {
                    AddNorm::Ops
                };
                let (sum, normed, _) = n.add_forward(x, delta, launch, false)?;
                Ok((sum, normed))
            }
            Norm::Layer(n) => {
                let sum = match delta {
                    Some(d) => (x + d)?,
                    None => x.clone(),
                };
                let normed = n.forward(&sum)?;
                Ok((sum, normed))
            }
        }
    }
}

const NORM_EPS: f64 = 1e-6;

fn norm(generation: QwenGeneration, dim: usize, vb: VarBuilder) -> Result<Norm> {
    Ok(match generation {
        QwenGeneration::Qwen25 => Norm::Rms(RmsNorm::new(dim, NORM_EPS, vb)?),
        _ => Norm::Layer(LayerNorm::new(dim, NORM_EPS, vb)?),
    })
}

enum Mlp {
    /// fc1 → act → fc2 (Qwen2-VL `fc1/fc2`, Qwen3-VL `linear_fc1/linear_fc2`).
    Plain { fc1: Linear, fc2: Linear, act: Act },
    /// down(act(gate) · up) (Qwen2.5-VL).
    Gated {
        gate: Linear,
        up: Linear,
        down: Linear,
        act: Act,
        /// Biases, SiLU and product in one CUDA kernel.
        fused: bool,
        /// That kernel eight values a thread (`RuntimeOptions::prefill_kernels`).
        wide: bool,
    },
}

impl Mlp {
    fn new(
        cfg: &VisionConfig,
        generation: QwenGeneration,
        vb: VarBuilder,
        q: &Quantizer,
    ) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(match generation {
            QwenGeneration::Qwen2 => Mlp::Plain {
                fc1: q.linear(h, i, true, vb.pp("fc1"))?,
                fc2: q.linear(i, h, true, vb.pp("fc2"))?,
                act: cfg.hidden_act,
            },
            QwenGeneration::Qwen3 => Mlp::Plain {
                fc1: q.linear(h, i, true, vb.pp("linear_fc1"))?,
                fc2: q.linear(i, h, true, vb.pp("linear_fc2"))?,
                act: cfg.hidden_act,
            },
            QwenGeneration::Qwen25 => {
                let gate = q.linear(h, i, true, vb.pp("gate_proj"))?;
                let up = q.linear(h, i, true, vb.pp("up_proj"))?;
                let down = q.linear(i, h, true, vb.pp("down_proj"))?;
                let (gate, up, down) = pad_intermediate(gate, up, down, h, i)?;
                Mlp::Gated {
                    gate,
                    up,
                    down,
                    act: cfg.hidden_act,
                    fused: cfg.hidden_act == Act::Silu
                        && kernels::enabled(&q.runtime(), vb.device(), vb.dtype()),
                    wide: q.runtime().prefill_kernels,
                }
            }
        })
    }
}

/// Rows of a half-precision matrix a multiple of 8 elements long (16 bytes): cuBLAS's
/// Hopper kernels need that alignment. Qwen2.5-VL's vision MLP is 3420 wide (6840-byte
/// rows), and its three matmuls ran 170-195 µs each in Ampere-era kernels on an H200
/// (ncu, run 14), ~3× the time of the aligned projections beside them.
const ALIGN: usize = 8;

/// The gated MLP with its intermediate width zero-padded to [`ALIGN`]: the padded gate and
/// up outputs are 0, act(0)·0 = 0, and the padded down inputs see only those
/// zeros, so the output is unchanged. Float layers only (quantized blocks fix the shape).
fn pad_intermediate(
    gate: Linear,
    up: Linear,
    down: Linear,
    hidden: usize,
    inter: usize,
) -> Result<(Linear, Linear, Linear)> {
    let to = inter.next_multiple_of(ALIGN);
    if to == inter {
        return Ok((gate, up, down));
    }
    match (
        gate.zero_padded(to, hidden)?,
        up.zero_padded(to, hidden)?,
        down.zero_padded(hidden, to)?,
    ) {
        (Some(g), Some(u), Some(d)) => Ok((g, u, d)),
        _ => Ok((gate, up, down)),
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Mlp::Plain { fc1, fc2, act } => fc2.forward(&act.forward(&fc1.forward(x)?)?),
            Mlp::Gated {
                gate,
                up,
                down,
                fused: true,
                wide,
                ..
            } => {
                let dtype = x.dtype();
                let g = gate.forward_unbiased(x)?.to_dtype(dtype)?;
                let u = up.forward_unbiased(x)?.to_dtype(dtype)?;
                down.forward(&kernels::gated_silu(&g, &u, gate.bias(), up.bias(), *wide)?)
            }
            Mlp::Gated {
                gate,
                up,
                down,
                act,
                ..
            } => down.forward(&(act.forward(&gate.forward(x)?)? * up.forward(x)?)?),
        }
    }
}

struct Attention {
    qkv: Linear,
    proj: Linear,
    runtime: RuntimeOptions,
    num_heads: usize,
    head_dim: usize,
    /// Through the vision kernels (CUDA): two launches per layer instead of ~130.
    fused: bool,
    /// Attention on the tensor cores for every segment, whole images included (bf16/f16).
    flash: bool,
}

/// Where attention may look in one kind of layer: each image, or each window.
struct LayerSegments {
    /// `[start, end)` patch ranges that follow each other from 0.
    ranges: Vec<(usize, usize)>,
    /// The same on the device, when the vision kernels run.
    fused: Option<Segments>,
}

impl LayerSegments {
    fn new(ranges: Vec<(usize, usize)>, fused: bool, device: &Device) -> Result<Self> {
        let fused = fused.then(|| Segments::new(&ranges, device)).transpose()?;
        Ok(Self { ranges, fused })
    }
}

impl Attention {
    fn new(cfg: &VisionConfig, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        let h = cfg.hidden_size;
        let runtime = q.runtime();
        Ok(Self {
            qkv: q.linear(h, 3 * h, true, vb.pp("qkv"))?,
            proj: q.linear(h, h, true, vb.pp("proj"))?,
            runtime,
            num_heads: cfg.num_heads,
            head_dim: h / cfg.num_heads,
            fused: kernels::enabled(&runtime, vb.device(), vb.dtype()),
            flash: kernels::flash_applies(&runtime, vb.device(), vb.dtype(), h / cfg.num_heads),
        })
    }

    /// Attention within each segment (an image, or a window).
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        segments: &LayerSegments,
    ) -> Result<Tensor> {
        if self.fused {
            return self.forward_fused(x, cos, sin, segments);
        }
        let (n, _) = x.dims2()?;
        let dtype = x.dtype();
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((n, 3, self.num_heads, self.head_dim))?;
        // transformers applies the vision rotary in f32 and casts back.
        let rot = |t: Tensor| -> Result<Tensor> {
            apply_rope(
                &t.to_dtype(DType::F32)?,
                &cos.unsqueeze(1)?,
                &sin.unsqueeze(1)?,
            )?
            .to_dtype(dtype)
        };
        let scale = (self.head_dim as f64).powf(-0.5);
        // The scale on q ([heads, n, d]) rather than on the scores ([heads, n, n]).
        let q = (rot(qkv.i((.., 0))?)?.transpose(0, 1)? * scale)?.contiguous()?;
        let k = rot(qkv.i((.., 1))?)?.transpose(0, 1)?.contiguous()?;
        let v = qkv.i((.., 2))?.transpose(0, 1)?.contiguous()?;
        self.proj.forward(&attend_to_rows(
            &self.runtime,
            &q,
            &k,
            &v,
            &segments.ranges,
        )?)
    }

    /// [`Self::forward`] through the vision kernels: q/k/v prepared in one launch, windows
    /// attended in one more; a whole image goes through the flash kernel in bf16/f16, else
    /// (too long for the window kernel) through the matmuls of the unfused path.
    fn forward_fused(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        segments: &LayerSegments,
    ) -> Result<Tensor> {
        let dtype = x.dtype();
        let qkv = self.qkv.forward_unbiased(x)?.to_dtype(dtype)?;
        let bias = self.qkv.bias().map(|b| b.to_dtype(dtype)).transpose()?;
        let scale = (self.head_dim as f64).powf(-0.5) as f32;
        let (q, k, v) = kernels::vision_qkv(&qkv, bias.as_ref(), cos, sin, self.num_heads, scale)?;
        let out = match &segments.fused {
            Some(s) if self.flash => kernels::segment_flash_attention(&q, &k, &v, s)?,
            Some(s) if s.fit_kernel(self.head_dim) => kernels::segment_attention(&q, &k, &v, s)?,
            _ => attend_to_rows(&self.runtime, &q, &k, &v, &segments.ranges)?,
        };
        self.proj.forward(&out)
    }
}

struct Block {
    norm1: Norm,
    norm2: Norm,
    attn: Attention,
    mlp: Mlp,
}

impl Block {
    fn new(
        cfg: &VisionConfig,
        generation: QwenGeneration,
        vb: VarBuilder,
        q: &Quantizer,
    ) -> Result<Self> {
        Ok(Self {
            norm1: norm(generation, cfg.hidden_size, vb.pp("norm1"))?,
            norm2: norm(generation, cfg.hidden_size, vb.pp("norm2"))?,
            attn: Attention::new(cfg, vb.pp("attn"), q)?,
            mlp: Mlp::new(cfg, generation, vb.pp("mlp"), q)?,
        })
    }

    /// `x` plus the previous block's MLP output `delta` (none for the first block) in, this
    /// block's residual and MLP output out: the next block (or the merger) adds them with
    /// its norm, in one launch with `fused_norms` (RMSNorm only).
    fn forward(
        &self,
        x: &Tensor,
        delta: Option<&Tensor>,
        cos: &Tensor,
        sin: &Tensor,
        segments: &LayerSegments,
        fused_norms: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (x, normed) = self.norm1.add_forward(x, delta, fused_norms)?;
        let attn = self.attn.forward(&normed, cos, sin, segments)?;
        let (x, normed) = self.norm2.add_forward(&x, Some(&attn), fused_norms)?;
        let mlp = self.mlp.forward(&normed)?;
        Ok((x, mlp))
    }
}

/// Merges each `merge × merge` block of patches into one token of the language model's width.
struct PatchMerger {
    norm: Norm,
    fc1: Linear,
    fc2: Linear,
    /// Qwen3-VL's DeepStack mergers normalise after the 2×2 concatenation.
    postshuffle_norm: bool,
    merged_dim: usize,
}

impl PatchMerger {
    fn new(
        cfg: &VisionConfig,
        generation: QwenGeneration,
        postshuffle_norm: bool,
        vb: VarBuilder,
        q: &Quantizer,
    ) -> Result<Self> {
        let merged_dim = cfg.hidden_size * cfg.spatial_merge_size * cfg.spatial_merge_size;
        let out = cfg.out_hidden_size;
        Ok(match generation {
            QwenGeneration::Qwen3 => Self {
                norm: Norm::Layer(LayerNorm::new(
                    if postshuffle_norm {
                        merged_dim
                    } else {
                        cfg.hidden_size
                    },
                    NORM_EPS,
                    vb.pp("norm"),
                )?),
                fc1: q.linear(merged_dim, merged_dim, true, vb.pp("linear_fc1"))?,
                fc2: q.linear(merged_dim, out, true, vb.pp("linear_fc2"))?,
                postshuffle_norm,
                merged_dim,
            },
            _ => Self {
                norm: norm(generation, cfg.hidden_size, vb.pp("ln_q"))?,
                fc1: q.linear(merged_dim, merged_dim, true, vb.pp("mlp.0"))?,
                fc2: q.linear(merged_dim, out, true, vb.pp("mlp.2"))?,
                postshuffle_norm: false,
                merged_dim,
            },
        })
    }

    /// Merges `x + delta` (`x` without `delta`); `fused_norm` as for Block::forward.
    fn forward(&self, x: &Tensor, delta: Option<&Tensor>, fused_norm: bool) -> Result<Tensor> {
        let x = if self.postshuffle_norm {
            let x = match delta {
                Some(d) => (x + d)?,
                None => x.clone(),
            };
            self.norm.forward(&x.reshape(((), self.merged_dim))?)?
        } else {
            let (_, normed) = self.norm.add_forward(x, delta, fused_norm)?;
            normed.reshape(((), self.merged_dim))?
        };
        self.fc2.forward(&self.fc1.forward(&x)?.gelu_erf()?)
    }
}

/// What the vision tower returns.
pub struct VisionOutput {
    /// `[merged tokens, out_hidden_size]`, images in order.
    pub embeds: Tensor,
    /// Qwen3-VL DeepStack features, one `[merged tokens, out_hidden_size]` per feeding block.
    pub deepstack: Vec<Tensor>,
}

/// The vision tower.
pub struct VisionTower {
    generation: QwenGeneration,
    cfg: VisionConfig,
    patch_proj: Linear,
    pos_embed: Option<Tensor>,
    blocks: Vec<Block>,
    merger: PatchMerger,
    deepstack_mergers: Vec<PatchMerger>,
    /// Each residual add in the launch of the RMSNorm after it (Qwen2.5-VL's blocks and
    /// merger, `RuntimeOptions::prefill_kernels`, the CUDA kernels on).
    fused_norms: bool,
}

impl VisionTower {
    /// Loads from the checkpoint's `visual.` prefix; `q` makes the linear layers (the
    /// patch embedding stays in float).
    pub fn new(
        cfg: &VisionConfig,
        generation: QwenGeneration,
        vb: VarBuilder,
        q: &Quantizer,
    ) -> Result<Self> {
        let patch_dim = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size;
        // Conv3d with stride == kernel over exactly one patch is a matmul.
        let conv_w = vb.get(
            (
                cfg.hidden_size,
                cfg.in_channels,
                cfg.temporal_patch_size,
                cfg.patch_size,
                cfg.patch_size,
            ),
            "patch_embed.proj.weight",
        )?;
        let conv_b = if generation == QwenGeneration::Qwen3 {
            Some(vb.get(cfg.hidden_size, "patch_embed.proj.bias")?)
        } else {
            None
        };
        let patch_proj = Linear::from_weights(
            conv_w.reshape((cfg.hidden_size, patch_dim))?,
            conv_b,
            q.runtime(),
        );
        let pos_embed = if generation == QwenGeneration::Qwen3 {
            Some(vb.get(
                (cfg.num_position_embeddings, cfg.hidden_size),
                "pos_embed.weight",
            )?)
        } else {
            None
        };
        let blocks = (0..cfg.depth)
            .map(|i| Block::new(cfg, generation, vb.pp(format!("blocks.{i}")), q))
            .collect::<Result<_>>()?;
        let merger = PatchMerger::new(cfg, generation, false, vb.pp("merger"), q)?;
        let deepstack_mergers = (0..cfg.deepstack_visual_indexes.len())
            .map(|i| {
                PatchMerger::new(
                    cfg,
                    generation,
                    true,
                    vb.pp(format!("deepstack_merger_list.{i}")),
                    q,
                )
            })
            .collect::<Result<_>>()?;
        let runtime = q.runtime();
        let fused_norms = runtime.prefill_kernels
            && generation == QwenGeneration::Qwen25
            && kernels::enabled(&runtime, vb.device(), vb.dtype());
        Ok(Self {
            generation,
            cfg: cfg.clone(),
            patch_proj,
            pos_embed,
            blocks,
            merger,
            deepstack_mergers,
            fused_norms,
        })
    }

    /// Runs the tower over the patches of all `grids` (see the module docs).
    pub fn forward(&self, pixel_values: &Tensor, grids: &[[usize; 3]]) -> Result<VisionOutput> {
        let device = pixel_values.device();
        let dtype = self.patch_proj_dtype();
        let mut x = self.patch_proj.forward(&pixel_values.to_dtype(dtype)?)?;
        if let Some(table) = &self.pos_embed {
            x = (x + self
                .interpolated_positions(table, grids, device)?
                .to_dtype(dtype)?)?;
        }
        let head_dim = self.cfg.hidden_size / self.cfg.num_heads;
        let (mut cos, mut sin) =
            vision_rotary(grids, self.cfg.spatial_merge_size, head_dim, device)?;
        let fused = self.blocks.first().is_some_and(|b| b.attn.fused);
        let images = LayerSegments::new(image_segments(grids), fused, device)?;

        // Qwen2.5-VL: the order of merge units that makes each window contiguous.
        let (window_order, windows) = if self.generation == QwenGeneration::Qwen25 {
            let (index, ranges) = window_index(grids, &self.cfg);
            (
                Some(index),
                Some(LayerSegments::new(ranges, fused, device)?),
            )
        } else {
            (None, None)
        };
        if let Some(index) = &window_order {
            let unit = self.cfg.spatial_merge_size * self.cfg.spatial_merge_size;
            let rows = expand_units(index, unit);
            let rows = Tensor::from_vec(rows, index.len() * unit, device)?;
            x = x.index_select(&rows, 0)?;
            cos = cos.index_select(&rows, 0)?;
            sin = sin.index_select(&rows, 0)?;
        }

        let mut deepstack = Vec::new();
        let mut delta = None;
        for (i, block) in self.blocks.iter().enumerate() {
            let segments = match &windows {
                Some(windows) if !self.cfg.fullatt_block_indexes.contains(&i) => windows,
                _ => &images,
            };
            let (residual, mlp) =
                block.forward(&x, delta.as_ref(), &cos, &sin, segments, self.fused_norms)?;
            let feeds = self
                .cfg
                .deepstack_visual_indexes
                .iter()
                .position(|&d| d == i);
            (x, delta) = match feeds {
                Some(k) => {
                    let x = (residual + mlp)?;
                    deepstack.push(self.deepstack_mergers[k].forward(&x, None, false)?);
                    (x, None)
                }
                None => (residual, Some(mlp)),
            };
        }
        let mut embeds = self.merger.forward(&x, delta.as_ref(), self.fused_norms)?;
        if let Some(index) = &window_order {
            // Undo the window order: merged token j came from unit index[j].
            let mut inverse = vec![0u32; index.len()];
            for (pos, &unit) in index.iter().enumerate() {
                inverse[unit as usize] = pos as u32;
            }
            embeds = embeds.index_select(&Tensor::from_vec(inverse, index.len(), device)?, 0)?;
        }
        Ok(VisionOutput { embeds, deepstack })
    }

    fn patch_proj_dtype(&self) -> DType {
        self.blocks
            .first()
            .map_or(DType::F32, |b| b.attn.qkv_dtype())
    }

    /// Qwen3-VL: the learned square position table, resampled bilinearly (align_corners)
    /// to each image's grid, in merge-block order.
    fn interpolated_positions(
        &self,
        table: &Tensor,
        grids: &[[usize; 3]],
        device: &Device,
    ) -> Result<Tensor> {
        let side = (self.cfg.num_position_embeddings as f64).sqrt() as usize;
        let merge = self.cfg.spatial_merge_size;
        let mut idx: [Vec<u32>; 4] = Default::default();
        let mut wts: [Vec<f32>; 4] = Default::default();
        let taps = |i: usize, size: usize| -> ([usize; 2], [f32; 2]) {
            let src = i as f32 * (side - 1) as f32 / (size.max(2) - 1) as f32;
            let f = src.floor();
            let d0 = src - f;
            let lo = (f as usize).min(side - 1);
            let hi = (f as usize + 1).min(side - 1);
            (
                [lo, hi],
                [(1.0 - d0).max(0.0), (1.0 - (1.0 - d0).abs()).max(0.0)],
            )
        };
        for p in patch_coordinates(grids, merge) {
            let (ht, hw) = taps(p.row, p.grid_h);
            let (wt, ww) = taps(p.col, p.grid_w);
            for a in 0..2 {
                for b in 0..2 {
                    idx[a * 2 + b].push((ht[a] * side + wt[b]) as u32);
                    wts[a * 2 + b].push(hw[a] * ww[b]);
                }
            }
        }
        let table = table.to_dtype(DType::F32)?;
        let mut sum: Option<Tensor> = None;
        for k in 0..4 {
            let n = idx[k].len();
            let rows = table.index_select(
                &Tensor::from_vec(std::mem::take(&mut idx[k]), n, device)?,
                0,
            )?;
            let w = Tensor::from_vec(std::mem::take(&mut wts[k]), (n, 1), device)?;
            let term = rows.broadcast_mul(&w)?;
            sum = Some(match sum {
                None => term,
                Some(s) => (s + term)?,
            });
        }
        sum.ok_or_else(|| candle_core::Error::Msg("no image grid".into()))
    }
}

impl Attention {
    fn qkv_dtype(&self) -> DType {
        self.qkv.weight_dtype()
    }
}

/// Most attention scores materialised at once (heads × windows × len²): 2^25 values are
/// 64 MiB in bf16. Without a cap a batch of 8 photos put 8 full-attention images (8 × 16
/// heads × 3996² scores) into one matmul and peaked at 37 GB (H100 run 1, 2026-11-27); at
/// 2^27 values per head, one photo's full attention still took all 16 heads at once, and
/// Qwen2-VL-2B at int4 peaked at 3.9 GB on the card (run 13).
const SCORE_BUDGET: usize = 1 << 25;

/// Softmax attention of `q`, `k`, `v` (`[heads, n, d]`, q already scaled) within each
/// `[start, end)` segment; returns `[heads, n, d]`. Windows of equal length that follow
/// each other (most of an image's windows) go through one batched matmul instead of one
/// launch sequence each; a large image's full attention goes a few heads at a time, so
/// that at most `budget` scores exist at once.
fn attend_segments(
    runtime: &RuntimeOptions,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: &[(usize, usize)],
    budget: usize,
) -> Result<Tensor> {
    let (heads, _, d) = q.dims3()?;
    let mut outs = Vec::with_capacity(segments.len());
    for (start, len, count) in equal_runs(segments, budget) {
        let span = len * count;
        let heads_at_once = (budget / (count * len * len)).clamp(1, heads);
        let mut head_outs = Vec::new();
        for h0 in (0..heads).step_by(heads_at_once) {
            let hn = heads_at_once.min(heads - h0);
            let take = |t: &Tensor| -> Result<Tensor> {
                t.narrow(0, h0, hn)?
                    .narrow(1, start, span)?
                    .contiguous()?
                    .reshape((hn, count, len, d))
            };
            let (qs, ks, vs) = (take(q)?, take(k)?, take(v)?);
            let probs = softmax_f32_acc(runtime, &qs.matmul(&ks.t()?)?)?;
            head_outs.push(probs.matmul(&vs)?.reshape((hn, span, d))?);
        }
        outs.push(Tensor::cat(&head_outs, 0)?);
    }
    Tensor::cat(&outs, 1)
}

/// [`attend_segments`] within [`SCORE_BUDGET`], returned as `[n, heads·d]`, the layout
/// the output projection reads.
fn attend_to_rows(
    runtime: &RuntimeOptions,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: &[(usize, usize)],
) -> Result<Tensor> {
    let (heads, n, d) = q.dims3()?;
    attend_segments(runtime, q, k, v, segments, SCORE_BUDGET)?
        .transpose(0, 1)?
        .reshape((n, heads * d))
}

/// Consecutive runs of equal-length, adjacent segments: (start, length, count), each run
/// holding at most `max_scores` score values per head (always at least one segment).
fn equal_runs(segments: &[(usize, usize)], max_scores: usize) -> Vec<(usize, usize, usize)> {
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for &(start, end) in segments {
        let len = end - start;
        match runs.last_mut() {
            Some((s, l, c))
                if *l == len && *s + *l * *c == start && (*c + 1) * len * len <= max_scores =>
            {
                *c += 1
            }
            _ => runs.push((start, len, 1)),
        }
    }
    runs
}

/// `[start, end)` patch ranges of each image frame (attention never crosses them).
fn image_segments(grids: &[[usize; 3]]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for &[t, h, w] in grids {
        for _ in 0..t {
            out.push((start, start + h * w));
            start += h * w;
        }
    }
    out
}

fn expand_units(index: &[u32], unit: usize) -> Vec<u32> {
    index
        .iter()
        .flat_map(|&u| (0..unit as u32).map(move |k| u * unit as u32 + k))
        .collect()
}

/// Qwen2.5-VL windows: the order of merge units that makes each window contiguous, and the
/// patch ranges of the windows in that order (transformers' `get_vision_window_index`).
fn window_index(grids: &[[usize; 3]], cfg: &VisionConfig) -> (Vec<u32>, Vec<(usize, usize)>) {
    let merge = cfg.spatial_merge_size;
    let unit = merge * merge;
    let win = (cfg.window_size / merge / cfg.patch_size).max(1);
    let mut index = Vec::new();
    let mut windows = Vec::new();
    let mut offset = 0usize;
    let mut patch_start = 0usize;
    for &[t, h, w] in grids {
        let (gh, gw) = (h / merge, w / merge);
        let (nwh, nww) = (gh.div_ceil(win), gw.div_ceil(win));
        for tt in 0..t {
            for wy in 0..nwh {
                for wx in 0..nww {
                    let mut count = 0;
                    for y in wy * win..((wy + 1) * win).min(gh) {
                        for x in wx * win..((wx + 1) * win).min(gw) {
                            index.push((offset + tt * gh * gw + y * gw + x) as u32);
                            count += 1;
                        }
                    }
                    if count > 0 {
                        windows.push((patch_start, patch_start + count * unit));
                        patch_start += count * unit;
                    }
                }
            }
        }
        offset += t * gh * gw;
    }
    (index, windows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .unwrap()
    }

    #[test]
    fn equal_adjacent_segments_are_grouped() {
        let segs = [(0, 4), (4, 8), (8, 10), (10, 12), (12, 16)];
        assert_eq!(
            equal_runs(&segs, 1000),
            vec![(0, 4, 2), (8, 2, 2), (12, 4, 1)]
        );
        // a budget of 16 scores per head keeps the 4-patch windows (16 scores each) apart
        assert_eq!(
            equal_runs(&segs, 16),
            vec![(0, 4, 1), (4, 4, 1), (8, 2, 2), (12, 4, 1)]
        );
    }

    #[test]
    fn attention_split_by_the_score_budget_is_unchanged() {
        let dev = candle_core::Device::Cpu;
        let (heads, n, d) = (4, 20, 8);
        let t = |seed: f64| {
            Tensor::arange(0f32, (heads * n * d) as f32, &dev)
                .and_then(|x| (x * seed)?.sin()?.reshape((heads, n, d)))
                .unwrap()
        };
        let (q, k, v) = (t(0.37), t(0.91), t(1.73));
        // two windows of 6 patches, then one segment of 8
        let segs = [(0, 6), (6, 12), (12, 20)];
        let runtime = RuntimeOptions::default();
        let whole = attend_segments(&runtime, &q, &k, &v, &segs, 1 << 20).unwrap();
        // 64 scores at once: the windows one at a time, the 8-patch segment a head at a time
        let split = attend_segments(&runtime, &q, &k, &v, &segs, 64).unwrap();
        let diff = max_abs_diff(&whole, &split);
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn padding_the_gated_mlp_leaves_its_output_unchanged() {
        let dev = candle_core::Device::Cpu;
        let (h, i) = (16, 12);
        let t = |seed: f64, shape: (usize, usize)| {
            Tensor::arange(0f32, (shape.0 * shape.1) as f32, &dev)
                .and_then(|x| (x * seed)?.sin()?.reshape(shape))
                .unwrap()
        };
        let bias = |seed: f64, n: usize| t(seed, (1, n)).reshape(n).unwrap();
        let layer =
            |w: Tensor, b: Tensor| Linear::from_weights(w, Some(b), RuntimeOptions::default());
        let (gate, up, down) = (
            layer(t(0.3, (i, h)), bias(0.7, i)),
            layer(t(0.5, (i, h)), bias(0.9, i)),
            layer(t(1.1, (h, i)), bias(1.3, h)),
        );
        let mlp = |gate, up, down| Mlp::Gated {
            gate,
            up,
            down,
            act: Act::Silu,
            fused: false,
            wide: false,
        };
        let x = t(0.17, (5, h));
        let want = mlp(gate.clone(), up.clone(), down.clone())
            .forward(&x)
            .unwrap();
        let (g, u, d) = pad_intermediate(gate, up, down, h, i).unwrap();
        assert_eq!(g.forward(&x).unwrap().dims(), &[5, 16]);
        let got = mlp(g, u, d).forward(&x).unwrap();
        let diff = max_abs_diff(&want, &got);
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn windows_cover_every_unit_once() {
        let cfg = VisionConfig {
            depth: 1,
            hidden_size: 8,
            out_hidden_size: 8,
            num_heads: 1,
            intermediate_size: 8,
            hidden_act: Act::Silu,
            patch_size: 14,
            temporal_patch_size: 2,
            spatial_merge_size: 2,
            in_channels: 3,
            window_size: 56, // 2 merged units per window side
            fullatt_block_indexes: vec![],
            num_position_embeddings: 0,
            deepstack_visual_indexes: vec![],
        };
        // grid 1×6×10 patches → 3×5 merged units → windows of 2×2: 2 rows × 3 cols of windows
        let (index, windows) = window_index(&[[1, 6, 10]], &cfg);
        let mut sorted = index.clone();
        sorted.sort();
        assert_eq!(sorted, (0..15).collect::<Vec<u32>>());
        assert_eq!(&index[..4], &[0, 1, 5, 6]);
        assert_eq!(windows.len(), 6);
        assert_eq!(windows.last().unwrap().1, 60);
    }
}
