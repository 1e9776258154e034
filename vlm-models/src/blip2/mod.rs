//! # BLIP-2: OPT and Flan-T5 behind a frozen EVA ViT and a Q-Former
//!
//! Salesforce's BLIP-2 ("BLIP-2: Bootstrapping Language-Image Pre-training with Frozen
//! Image Encoders and Large Language Models", arXiv:2301.12597): a ViT-g/14 encodes the
//! 224×224 image, 32 learned queries of the Q-Former read it through cross-attention,
//! and a linear projection turns them into 32 embeddings in front of the prompt of a
//! frozen language model: OPT (decoder-only) or Flan-T5 (encoder-decoder).
//!
//! Checkpoints (transformers format, `model_type: "blip-2"`): Salesforce/blip2-opt-2.7b,
//! blip2-opt-6.7b, blip2-flan-t5-xl, blip2-flan-t5-xxl (and their -coco variants).
//!
//! One image per call; `relate` captions each photo and asks the language model to
//! relate the captions. [`vision`] and [`qformer`] are shared with MiniGPT-4.

pub mod config;
pub mod opt;
pub mod processor;
pub mod qformer;
pub mod t5;
pub mod vision;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::decoder::LayerKvCache;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use tokenizers::Tokenizer;
use vlm_contract::device::device_name;
use vlm_contract::files::ModelDir;
use vlm_contract::model::LoadOptions;
use vlm_contract::sampling::DeviceArgmax;
use vlm_contract::RuntimeOptions;
use vlm_contract::{
    Error, Family, FamilyModel, GenerationDefaults, Language, ModelInfo, PrefillOutput,
    Quantization, Request, Result, VisionLanguageModel,
};

pub use config::{Blip2Config, TextConfig};
pub use processor::{Blip2Inputs, Blip2Processor};

use crate::image_cache::{self, ImageCache, Plan};
use crate::layers::{attention_mask, Linear};
use crate::quantized_folder::{LoadContext, Weights};
use crate::weights::weights_err;
use opt::Opt;
use qformer::{QFormer, QFormerLayout};
use t5::{T5State, T5};
use vision::{VisionTransformer, VitLayout};

/// The `model_type`s this family loads.
pub const MODEL_TYPES: &[&str] = &["blip-2"];

enum LanguageModel {
    Opt(Opt),
    T5(T5),
}

/// A loaded BLIP-2 model: immutable, shareable across threads.
pub struct Blip2 {
    config: Blip2Config,
    processor: Blip2Processor,
    vision: VisionTransformer,
    qformer: QFormer,
    projection: Linear,
    lm: LanguageModel,
    defaults: GenerationDefaults,
    device: Device,
    dtype: DType,
    quantization: Quantization,
    ctx: LoadContext,
    /// Q-Former outputs projected into the language model, kept for reuse.
    cache: Option<ImageCache>,
    /// The GPU paths this model takes (`LoadOptions::runtime`).
    runtime: RuntimeOptions,
}

/// The intermediate results of the image path, for parity checks.
pub struct ImageFeatures {
    /// ViT output after its final norm, `[n, 257, vision width]`.
    pub vision: Tensor,
    /// Q-Former output, `[n, queries, qformer width]` (f32: the Q-Former runs in f32).
    pub qformer: Tensor,
    /// Projected into the language model, `[n, queries, text width]`.
    pub embeds: Tensor,
}

/// Per-batch generation state.
pub enum Blip2State {
    /// OPT: KV caches, left padding and each sequence's next position.
    Opt {
        /// One per layer.
        caches: Vec<LayerKvCache>,
        /// Left padding of each sequence.
        pad: Vec<usize>,
        /// Next position of each sequence.
        next_position: Vec<u32>,
    },
    /// T5: decoder caches and the encoder's keys and values.
    T5(T5State),
}

/// `load()` entry point for the registry.
pub fn load_boxed(
    dir: &ModelDir,
    options: &LoadOptions,
    ctx: Option<&LoadContext>,
) -> Result<Box<dyn VisionLanguageModel>> {
    Ok(Box::new(FamilyModel::new(Blip2::load_with(
        dir, options, ctx,
    )?)))
}

/// The prefix under which `suffix` is stored (`""` at the top level).
fn prefix_of(names: &HashSet<String>, suffix: &str) -> Option<String> {
    names
        .iter()
        .filter_map(|n| n.strip_suffix(suffix))
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .min_by_key(|p| p.len())
        .map(|p| p.trim_end_matches('.').to_string())
}

fn at<'a>(vb: &VarBuilder<'a>, prefix: &str) -> VarBuilder<'a> {
    if prefix.is_empty() {
        vb.clone()
    } else {
        vb.pp(prefix)
    }
}

fn require_prefix(names: &HashSet<String>, suffix: &str, part: &str) -> Result<String> {
    prefix_of(names, suffix).ok_or_else(|| {
        Error::Weights(format!(
            "no tensor named *{suffix} ({part}); is this a transformers BLIP-2 checkpoint?"
        ))
    })
}

impl Blip2 {
    /// Loads a checkpoint folder (or a quantized folder saved from one).
    pub fn load(dir: &ModelDir, options: &LoadOptions) -> Result<Self> {
        Self::load_with(dir, options, None)
    }

    /// [`Self::load`], recording into `ctx` (to save a quantized folder).
    pub fn load_with(
        dir: &ModelDir,
        options: &LoadOptions,
        ctx: Option<&LoadContext>,
    ) -> Result<Self> {
        let config = Blip2Config::from_json(
            &dir.read_text("config.json", "config.json describes the model")?,
        )?;
        let device = options.device.open_with(&options.runtime)?;
        crate::kernels::apply_device_settings(&device, &options.runtime);
        let dtype = options.dtype.resolve(&device);
        let processor =
            Blip2Processor::from_model_dir(dir, config.num_query_tokens, config.image_token_id)?;
        let fallback_eos: Vec<u32> = match &config.text {
            TextConfig::Opt(o) => o.eos_token_id.into_iter().collect(),
            TextConfig::T5(t) => t.eos_token_id.into_iter().collect(),
        };
        let defaults =
            GenerationDefaults::from_file(&dir.path("generation_config.json"), &fallback_eos)?;

        let weights = Weights::open(dir, options, ctx, dtype, &device)?;
        let names = weights.names.clone();
        let vb = weights.vb.clone();
        let (vision_q, text_q, head_q, embed_q) = (
            weights.quantizer(weights.policy.vision),
            weights.quantizer(weights.policy.text),
            weights.quantizer(weights.policy.head),
            weights.quantizer(weights.policy.embed),
        );
        let vision_prefix = require_prefix(&names, "embeddings.class_embedding", "vision tower")?;
        let vision = VisionTransformer::new(
            &config.vision,
            VitLayout::Transformers,
            at(&vb, &vision_prefix),
            &vision_q,
        )
        .map_err(weights_err)?;
        // transformers keeps the Q-Former in f32 in every dtype (`_keep_in_fp32_modules`).
        let vb32 = vb.clone().set_dtype(DType::F32);
        let queries_prefix = require_prefix(&names, "query_tokens", "Q-Former queries")?;
        let query_tokens = at(&vb32, &queries_prefix)
            .get(
                (1, config.num_query_tokens, config.qformer.hidden_size),
                "query_tokens",
            )
            .map_err(weights_err)?;
        let qformer_prefix = require_prefix(&names, "layernorm.weight", "Q-Former")?;
        let qformer = QFormer::new(
            &config.qformer,
            config.num_query_tokens,
            QFormerLayout::Transformers,
            query_tokens,
            at(&vb32, &qformer_prefix),
            &vision_q,
        )
        .map_err(weights_err)?;
        let projection_prefix =
            require_prefix(&names, "language_projection.weight", "language projection")?;
        let projection = vision_q
            .linear(
                config.qformer.hidden_size,
                config.text_hidden_size(),
                true,
                at(&vb, &projection_prefix).pp("language_projection"),
            )
            .map_err(weights_err)?;
        let lm = match &config.text {
            TextConfig::Opt(o) => {
                let p = require_prefix(&names, "decoder.embed_tokens.weight", "OPT decoder")?;
                let decoder = at(&vb, &p).pp("decoder");
                let head = match prefix_of(&names, "lm_head.weight") {
                    Some(h) if !o.tie_word_embeddings => Some(at(&vb, &h)),
                    _ => None,
                };
                LanguageModel::Opt(
                    Opt::new(o, decoder, head, &text_q, &head_q, &embed_q).map_err(weights_err)?,
                )
            }
            TextConfig::T5(t) => {
                let p = require_prefix(&names, "encoder.final_layer_norm.weight", "T5 encoder")?;
                let head = prefix_of(&names, "lm_head.weight").unwrap_or_default();
                LanguageModel::T5(
                    T5::new(t, at(&vb, &p), at(&vb, &head), &text_q, &head_q, &embed_q)
                        .map_err(weights_err)?,
                )
            }
        };
        Ok(Self {
            config,
            processor,
            vision,
            qformer,
            projection,
            lm,
            defaults,
            device,
            dtype,
            quantization: weights.quantization,
            ctx: weights.ctx,
            cache: ImageCache::new(options.image_cache_bytes),
            runtime: options.runtime,
        })
    }

    /// The parsed config.
    pub fn config(&self) -> &Blip2Config {
        &self.config
    }

    /// The processor.
    pub fn processor(&self) -> &Blip2Processor {
        &self.processor
    }

    /// Runs the image path over `[3, h, w]` planes of each image.
    pub fn image_features(&self, images: &[&[f32]]) -> Result<ImageFeatures> {
        let (h, w) = self.processor.image_size();
        let data: Vec<f32> = images.iter().flat_map(|p| p.iter().copied()).collect();
        let pixels = Tensor::from_vec(data, (images.len(), 3, h, w), &self.device)?;
        let vision = self.vision.forward(&pixels)?;
        let qformer = self.qformer.forward(&vision)?;
        let embeds = self.projection.forward(&qformer.to_dtype(self.dtype)?)?;
        Ok(ImageFeatures {
            vision,
            qformer,
            embeds,
        })
    }

    /// Embeddings of left-padded prompts `[b, len, width]`: image slots take the image
    /// embeddings, every other position its token's embedding. Returns them with each
    /// sequence's padding.
    fn prompt_embeds(&self, batch: &[&Blip2Inputs]) -> Result<(Tensor, Vec<usize>, Vec<usize>)> {
        let b = batch.len();
        let len = batch.iter().map(|p| p.input_ids.len()).max().unwrap_or(0);
        let pad: Vec<usize> = batch.iter().map(|p| len - p.input_ids.len()).collect();
        let (image_embeds, hits) = self.image_embeds(batch)?;
        let mut ids = Vec::with_capacity(b * len);
        let mut source = Vec::with_capacity(b * len);
        let mut image_row = (b * len) as u32;
        for (s, p) in batch.iter().enumerate() {
            for _ in 0..pad[s] {
                source.push(ids.len() as u32);
                ids.push(0u32);
            }
            for (i, &id) in p.input_ids.iter().enumerate() {
                if i < p.image_slots {
                    source.push(image_row);
                    image_row += 1;
                } else {
                    source.push(ids.len() as u32);
                }
                ids.push(id);
            }
        }
        let ids = Tensor::from_vec(ids, b * len, &self.device)?;
        let mut table = match &self.lm {
            LanguageModel::Opt(m) => m.embed(&ids)?,
            LanguageModel::T5(m) => m.embed(&ids)?,
        };
        if let Some(e) = image_embeds {
            table = Tensor::cat(&[&table, &e.to_dtype(table.dtype())?], 0)?;
        }
        let width = table.dim(1)?;
        let embeds = table
            .index_select(&Tensor::from_vec(source, b * len, &self.device)?, 0)?
            .reshape((b, len, width))?;
        Ok((embeds, pad, hits))
    }

    /// The image embeddings of a batch's requests that have an image, `[images·queries,
    /// width]`, each distinct photo encoded once (or taken from the cache); and per
    /// request, whether its image reused an encoding (1) or not (0).
    fn image_embeds(&self, batch: &[&Blip2Inputs]) -> Result<(Option<Tensor>, Vec<usize>)> {
        let with_image: Vec<&Blip2Inputs> = batch
            .iter()
            .copied()
            .filter(|p| p.image_slots > 0)
            .collect();
        let no_hits = vec![0; batch.len()];
        if with_image.is_empty() {
            return Ok((None, no_hits));
        }
        let plan = Plan::new(with_image.iter().map(|p| (p.cached.as_ref(), p.key)));
        let pixels = |i: usize| with_image[i].pixel_values.as_deref().unwrap_or_default();
        if self.cache.is_none() && plan.encodes_all_in_order() {
            let images: Vec<&[f32]> = (0..with_image.len()).map(pixels).collect();
            let e = self.image_features(&images)?.embeds;
            let (n, q, d) = e.dims3()?;
            return Ok((Some(e.reshape((n * q, d))?), no_hits));
        }
        let hits = plan.reuses_per_request(batch.iter().map(|p| usize::from(p.image_slots > 0)));
        let images: Vec<&[f32]> = plan.encode.iter().map(|&i| pixels(i)).collect();
        let encoded = if images.is_empty() {
            vec![]
        } else {
            image_cache::per_image(&self.image_features(&images)?.embeds)?
        };
        let keys: Vec<_> = with_image.iter().map(|p| p.key).collect();
        let per_image = plan.assemble(encoded, &keys, self.cache.as_ref())?;
        let embeds = image_cache::concat(&per_image)?.into_iter().next();
        Ok((embeds, hits))
    }

    /// OPT: final hidden states of every prompt position `[b, len, width]` and the state
    /// to continue from. T5: the encoder output and the decoder state.
    fn forward_prompts(
        &self,
        batch: &[&Blip2Inputs],
        max_new_tokens: usize,
    ) -> Result<(Tensor, Blip2State, Duration, Vec<usize>)> {
        let t_image = Instant::now();
        let (embeds, pad, hits) = self.prompt_embeds(batch)?;
        if batch.iter().any(|p| p.pixel_values.is_some()) {
            self.device.synchronize()?;
        }
        let image_time = t_image.elapsed();
        let (b, len, _) = embeds.dims3()?;
        match &self.lm {
            LanguageModel::Opt(m) => {
                let mut positions = Vec::with_capacity(b * len);
                for &p in &pad {
                    positions.extend(std::iter::repeat_n(0u32, p));
                    positions.extend(0..(len - p) as u32);
                }
                let mask = attention_mask(&self.runtime, &pad, len, len, self.dtype, &self.device)?;
                let mut caches = m.new_caches(b, len + max_new_tokens, self.dtype, &self.device)?;
                let hidden = m.forward(&embeds, &positions, mask.as_ref(), &mut caches)?;
                let next_position = pad.iter().map(|&p| (len - p) as u32).collect();
                Ok((
                    hidden,
                    Blip2State::Opt {
                        caches,
                        pad,
                        next_position,
                    },
                    image_time,
                    hits,
                ))
            }
            LanguageModel::T5(m) => {
                let mask = T5::padding_mask(&pad, len, self.dtype, &self.device)?;
                let encoded = m.encode(&embeds, mask.as_ref())?;
                let state = m.start_decoder(&encoded, mask, max_new_tokens + 1)?;
                Ok((encoded, Blip2State::T5(state), image_time, hits))
            }
        }
    }

    /// Logits of one request's prompt, for parity checks: OPT `[len, vocab]` (every
    /// prompt position), T5 `[1, vocab]` (the first decoder step). Also returns T5's
    /// encoder output `[len, width]`.
    pub fn prompt_logits(&self, inputs: &Blip2Inputs) -> Result<(Tensor, Option<Tensor>)> {
        let (hidden, mut state, _, _) = self.forward_prompts(&[inputs], 1)?;
        match (&self.lm, &mut state) {
            (LanguageModel::Opt(m), _) => {
                Ok((m.logits(&hidden.squeeze(0)?)?.to_dtype(DType::F32)?, None))
            }
            (LanguageModel::T5(m), Blip2State::T5(s)) => {
                let start = Tensor::new(&[m.decoder_start_token()], &self.device)?;
                let logits = m.decode_step(&start, s)?.to_dtype(DType::F32)?;
                Ok((logits, Some(hidden.squeeze(0)?.to_dtype(DType::F32)?)))
            }
            _ => unreachable!("state matches the language model"),
        }
    }
}

impl Family for Blip2 {
    type Inputs = Blip2Inputs;
    type State = Blip2State;

    fn info(&self) -> ModelInfo {
        ModelInfo {
            family: "blip2",
            model_type: match &self.config.text {
                TextConfig::Opt(_) => "blip-2 (opt)".into(),
                TextConfig::T5(_) => "blip-2 (t5)".into(),
            },
            parameters: self.ctx.store.parameters(),
            dtype: format!("{:?}", self.dtype).to_lowercase(),
            quantization: self.quantization,
            device: device_name(&self.device),
            weight_bytes: self.ctx.weight_bytes(),
            max_images: Some(1),
            native_multi_image: false,
            max_context: self.config.max_context(),
            fixed_image_size: Some(self.processor.image_size().into()),
            grounding: false,
        }
    }

    fn cache_stats(&self) -> vlm_contract::CacheStats {
        image_cache::stats(self.cache.as_ref())
    }

    fn tokenizer(&self) -> &Tokenizer {
        self.processor.tokenizer()
    }

    fn generation_defaults(&self) -> &GenerationDefaults {
        &self.defaults
    }

    fn prepare(&self, request: &Request) -> Result<Blip2Inputs> {
        self.processor.process_with(request, self.cache.as_ref())
    }

    fn input_ids<'a>(&self, inputs: &'a Blip2Inputs) -> &'a [u32] {
        &inputs.input_ids
    }

    fn penalty_history(&self, inputs: &Blip2Inputs) -> Vec<u32> {
        match &self.lm {
            // transformers passes OPT the ids (image slots included) ...
            LanguageModel::Opt(_) => inputs.input_ids.clone(),
            // ... and T5 only the encoder's embeddings: its decoder starts from scratch.
            LanguageModel::T5(m) => vec![m.decoder_start_token()],
        }
    }

    fn prefill(
        &self,
        batch: &[&Blip2Inputs],
        max_new_tokens: usize,
    ) -> Result<PrefillOutput<Blip2State>> {
        let (hidden, mut state, image_encode, image_cache_hits) =
            self.forward_prompts(batch, max_new_tokens)?;
        let logits = match (&self.lm, &mut state) {
            (LanguageModel::Opt(m), _) => {
                // Left padding puts every sequence's last prompt token in the last column.
                let len = hidden.dim(1)?;
                m.logits(&hidden.narrow(1, len - 1, 1)?.squeeze(1)?)?
            }
            (LanguageModel::T5(m), Blip2State::T5(s)) => {
                let start = vec![m.decoder_start_token(); batch.len()];
                m.decode_step(&Tensor::new(start.as_slice(), &self.device)?, s)?
            }
            _ => unreachable!("state matches the language model"),
        };
        Ok(PrefillOutput {
            logits,
            state,
            image_encode,
            image_cache_hits,
        })
    }

    fn decode(&self, tokens: &[u32], state: &mut Blip2State) -> Result<Tensor> {
        let ids = Tensor::new(tokens, &self.device)?;
        match (&self.lm, state) {
            (
                LanguageModel::Opt(m),
                Blip2State::Opt {
                    caches,
                    pad,
                    next_position,
                },
            ) => {
                let b = tokens.len();
                let embeds = m.embed(&ids)?.unsqueeze(1)?;
                let kv_len = caches.first().map_or(0, |c| c.len()) + 1;
                let mask = attention_mask(&self.runtime, pad, 1, kv_len, self.dtype, &self.device)?;
                let hidden = m.forward(&embeds, next_position, mask.as_ref(), caches)?;
                for p in next_position.iter_mut() {
                    *p += 1;
                }
                Ok(m.logits(&hidden.reshape((b, ()))?)?)
            }
            (LanguageModel::T5(m), Blip2State::T5(s)) => Ok(m.decode_step(&ids, s)?),
            _ => unreachable!("state matches the language model"),
        }
    }

    fn device_argmax(&self, logits: &Tensor) -> Result<DeviceArgmax> {
        crate::kernels::device_argmax(&self.runtime, logits)
    }

    /// English: BLIP-2's native captioning (no prompt). Other languages: a question in
    /// that language (BLIP-2's language models were trained on English captions, so
    /// expect English or poor answers).
    fn describe_prompt(&self, language: Language) -> String {
        match language {
            Language::Chinese => "请详细描述这张照片。".into(),
            _ => String::new(),
        }
    }

    fn relate_prompt(&self, n: usize, language: Language) -> String {
        match language {
            Language::Chinese => format!("这{n}张照片来自同一次旅行。它们讲了什么故事？"),
            _ => format!("These {n} photos come from one trip. What story do they tell?"),
        }
    }
}
