//! # Qwen-VL: Qwen2-VL, Qwen2.5-VL and Qwen3-VL
//!
//! Alibaba's vision-language models ("Qwen2-VL: Enhancing Vision-Language Model's
//! Perception of the World at Any Resolution", arXiv:2409.12191; "Qwen2.5-VL Technical
//! Report", arXiv:2502.13923; Qwen3-VL, 2025). One folder serves all three generations,
//! picked by config.json's `model_type`: `qwen2_vl`, `qwen2_5_vl`, `qwen3_vl`.
//!
//! Checkpoints: Qwen/Qwen2-VL-2B/7B-Instruct, Qwen/Qwen2.5-VL-3B/7B-Instruct,
//! Qwen/Qwen3-VL-2B/4B/8B-Instruct (dense). Both weight layouts load: the released
//! `visual.* / model.*` one and transformers 5's `model.visual.* / model.language_model.*`.
//!
//! Images of any size become a grid of 14-pixel (Qwen3-VL: 16-pixel) patches; each 2×2
//! block of patches is one language-model token. Several images go into one conversation
//! natively, so `relate` sees all photos at once.

pub mod config;
pub mod grounding;
pub mod processor;
pub mod rope;
pub mod tokenizer;
pub mod vision;

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use tokenizers::Tokenizer;
use vlm_contract::device::device_name;
use vlm_contract::files::ModelDir;
use vlm_contract::model::LoadOptions;
use vlm_contract::sampling::{DeviceArgmax, HeldEnd};
use vlm_contract::RuntimeOptions;
use vlm_contract::{
    Error, Family, FamilyModel, GenerationDefaults, GenerationOptions, Image, ModelInfo,
    PrefillOutput, Quantization, Request, Result, VisionLanguageModel,
};

use crate::decoder::{Decoder, DecoderConfig, DecoderState, DeepStack};
use crate::image_cache::{self, Features, ImageCache, Plan};
use crate::layers::attention_mask;
use crate::quantized_folder::{LoadContext, Weights};
use crate::weights::weights_err;
pub use config::{QwenGeneration, QwenVlConfig};
use processor::ImagePatches;
pub use processor::{PixelBudget, QwenInputs, QwenProcessor, IMAGE_PLACEHOLDER};
use rope::{rope_index, RopeIndex};
use vision::{VisionOutput, VisionTower};

/// The `model_type`s this family loads.
pub const MODEL_TYPES: &[&str] = &["qwen2_vl", "qwen2_5_vl", "qwen3_vl"];

/// A loaded Qwen-VL model: immutable, shareable across threads.
pub struct QwenVl {
    config: QwenVlConfig,
    processor: QwenProcessor,
    vision: VisionTower,
    text: Decoder,
    defaults: GenerationDefaults,
    device: Device,
    dtype: DType,
    quantization: Quantization,
    /// What the load read (for `info()`'s parameter and byte counts).
    ctx: LoadContext,
    /// `LoadOptions`' pixel budget (a request's own overrides it).
    budget: PixelBudget,
    /// Vision-tower outputs kept for reuse (`LoadOptions::image_cache_bytes`).
    cache: Option<ImageCache>,
    /// The GPU paths this model takes (`LoadOptions::runtime`).
    runtime: RuntimeOptions,
}

/// Per-batch generation state: KV caches and where each sequence's positions continue.
pub type QwenState = DecoderState;

/// Tokens and image patches of one request, with its 3-D positions.
pub struct PreparedQwen {
    inputs: QwenInputs,
    rope: RopeIndex,
}

impl PreparedQwen {
    /// The processor's output.
    pub fn inputs(&self) -> &QwenInputs {
        &self.inputs
    }

    /// The M-RoPE positions and delta (transformers' `get_rope_index`).
    pub fn rope_index(&self) -> &RopeIndex {
        &self.rope
    }
}

/// `load()` entry point for the registry.
pub fn load_boxed(
    dir: &ModelDir,
    options: &LoadOptions,
    ctx: Option<&LoadContext>,
) -> Result<Box<dyn VisionLanguageModel>> {
    Ok(Box::new(FamilyModel::new(QwenVl::load_with(
        dir, options, ctx,
    )?)))
}

impl QwenVl {
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
        let config = QwenVlConfig::from_json(
            &dir.read_text("config.json", "config.json describes the model")?,
        )?;
        let device = options.device.open_with(&options.runtime)?;
        crate::kernels::apply_device_settings(&device, &options.runtime);
        let dtype = options.dtype.resolve(&device);

        let processor = QwenProcessor::from_model_dir(dir, config.image_token_id)?;
        let budget = PixelBudget {
            min_pixels: options.min_pixels,
            max_pixels: options.max_pixels,
        };
        // A wrong budget fails the load, not the first photo.
        processor.pixel_range(budget)?;
        let defaults = GenerationDefaults::from_file(
            &dir.path("generation_config.json"),
            &config.eos_token_ids,
        )?;

        let weights = Weights::open(dir, options, ctx, dtype, &device)?;
        let vb = weights.vb.clone();
        // The layout is told by a norm: norms stay in float, so a quantized folder (whose
        // float backend sees only float tensors) answers as the original checkpoint does.
        let (visual_prefix, text_prefix) = if vb.contains_tensor("model.language_model.norm.weight")
        {
            ("model.visual", "model.language_model")
        } else {
            ("visual", "model")
        };
        let policy = weights.policy;
        let vision = VisionTower::new(
            &config.vision,
            config.generation,
            vb.pp(visual_prefix),
            &weights.quantizer(policy.vision),
        )
        .map_err(weights_err)?;
        let text = Decoder::new(
            &DecoderConfig::from_qwen(&config.text),
            vb.pp(text_prefix),
            vb.clone(),
            &weights.quantizer(policy.text),
            &weights.quantizer(policy.head),
            &weights.quantizer(policy.embed),
        )
        .map_err(weights_err)?;
        Ok(Self {
            config,
            processor,
            vision,
            text,
            defaults,
            device,
            dtype,
            quantization: weights.quantization,
            ctx: weights.ctx,
            budget,
            cache: ImageCache::new(options.image_cache_bytes),
            runtime: options.runtime,
        })
    }

    /// The parsed config.
    pub fn config(&self) -> &QwenVlConfig {
        &self.config
    }

    /// The processor (tokenizer, chat template, image preprocessing).
    pub fn processor(&self) -> &QwenProcessor {
        &self.processor
    }

    /// Runs the vision tower over the images of `inputs` (in order): each image's
    /// encoding from the cache when its request found it there, each distinct photo
    /// encoded once. Also returns, per request, how many of its images reused an encoding.
    pub fn encode_images(
        &self,
        inputs: &[&QwenInputs],
    ) -> Result<(Option<VisionOutput>, Vec<usize>)> {
        let images: Vec<&ImagePatches> = inputs.iter().flat_map(|i| i.images.iter()).collect();
        let no_hits = vec![0; inputs.len()];
        if images.is_empty() {
            return Ok((None, no_hits));
        }
        let plan = Plan::new(images.iter().map(|i| (i.cached.as_ref(), i.key)));
        if self.cache.is_none() && plan.encodes_all_in_order() {
            return Ok((Some(self.run_vision(&images)?), no_hits));
        }
        let hits = plan.reuses_per_request(inputs.iter().map(|i| i.images.len()));
        let to_encode: Vec<&ImagePatches> = plan.encode.iter().map(|&i| images[i]).collect();
        let encoded = if to_encode.is_empty() {
            vec![]
        } else {
            let out = self.run_vision(&to_encode)?;
            self.split_per_image(&out, &to_encode)?
        };
        let keys: Vec<_> = images.iter().map(|i| i.key).collect();
        let per_image = plan.assemble(encoded, &keys, self.cache.as_ref())?;
        let mut joined = image_cache::concat(&per_image)?.into_iter();
        let embeds = joined.next().ok_or_else(|| {
            Error::Generation("the image encodings hold no embedding tensor".into())
        })?;
        Ok((
            Some(VisionOutput {
                embeds,
                deepstack: joined.collect(),
            }),
            hits,
        ))
    }

    /// The vision tower over `images`' patches, in one pass.
    fn run_vision(&self, images: &[&ImagePatches]) -> Result<VisionOutput> {
        let row =
            images[0].pixel_values.len() / (images[0].grid_thw.iter().product::<usize>()).max(1);
        // Each photo's ~19 MB of patches goes to the device from where the processor left
        // them and is joined there: joined on the host, a batch of 8 was a 150 MB copy
        // while the GPU waited.
        let parts = images
            .iter()
            .map(|i| {
                let rows = i.pixel_values.len() / row.max(1);
                Tensor::from_slice(&i.pixel_values, (rows, row), &self.device)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pixels = match parts.as_slice() {
            [one] => one.clone(),
            _ => Tensor::cat(&parts, 0)?,
        };
        let grids: Vec<[usize; 3]> = images.iter().map(|i| i.grid_thw).collect();
        Ok(self.vision.forward(&pixels, &grids)?)
    }

    /// A batch's vision output cut into each image's tensors (embeddings, then DeepStack).
    fn split_per_image(
        &self,
        out: &VisionOutput,
        images: &[&ImagePatches],
    ) -> Result<Vec<Features>> {
        let mut start = 0;
        images
            .iter()
            .map(|i| {
                let n = self.processor.tokens_per_image(i.grid_thw);
                let features = std::iter::once(&out.embeds)
                    .chain(&out.deepstack)
                    .map(|t| t.narrow(0, start, n))
                    .collect::<candle_core::Result<Features>>()?;
                start += n;
                Ok(features)
            })
            .collect()
    }

    /// Runs the prompts through vision and the decoder. Returns the final hidden states
    /// `[batch, padded_len, hidden]`, the state for decoding (room for `max_new_tokens`
    /// more positions) and the vision time.
    pub fn forward_prompts(
        &self,
        batch: &[&PreparedQwen],
        max_new_tokens: usize,
    ) -> Result<(Tensor, QwenState, Duration, Vec<usize>)> {
        let b = batch.len();
        let len = batch
            .iter()
            .map(|p| p.inputs.input_ids.len())
            .max()
            .unwrap_or(0);
        let pad: Vec<usize> = batch
            .iter()
            .map(|p| len - p.inputs.input_ids.len())
            .collect();

        // Everything the decoder needs from the host comes first, so that once the vision
        // tower starts the GPU runs to the end of the prompt without waiting for the host.
        // Flat ids (left padded) and, per row, where its embedding comes from.
        let image_token = self.config.image_token_id;
        let mut ids = Vec::with_capacity(b * len);
        let mut source = Vec::with_capacity(b * len);
        let mut deepstack_rows = Vec::with_capacity(b * len);
        let mut image_rows = 0u32;
        for (s, p) in batch.iter().enumerate() {
            for _ in 0..pad[s] {
                source.push(ids.len() as u32);
                deepstack_rows.push(0u32);
                ids.push(0u32);
            }
            for &id in &p.inputs.input_ids {
                if id == image_token {
                    source.push((b * len) as u32 + image_rows);
                    image_rows += 1;
                    deepstack_rows.push(image_rows);
                } else {
                    source.push(ids.len() as u32);
                    deepstack_rows.push(0);
                }
                ids.push(id);
            }
        }
        let ids_t = Tensor::from_vec(ids, b * len, &self.device)?;
        let source = Tensor::from_vec(source, b * len, &self.device)?;
        let positions: Vec<[Vec<i64>; 3]> = batch
            .iter()
            .zip(&pad)
            .map(|(p, &pd)| {
                std::array::from_fn(|s| {
                    std::iter::repeat_n(0, pd)
                        .chain(p.rope.positions[s].iter().copied())
                        .collect()
                })
            })
            .collect();
        let (cos, sin) = self
            .text
            .rope()
            .tables(&positions, self.dtype, &self.device)?;
        let mask = attention_mask(&self.runtime, &pad, len, len, self.dtype, &self.device)?;
        let mut caches =
            self.text
                .prompt_caches(b, len + max_new_tokens, &pad, self.dtype, &self.device)?;

        let t_vision = Instant::now();
        let inputs: Vec<&QwenInputs> = batch.iter().map(|p| &p.inputs).collect();
        let (vision, image_cache_hits) = self.encode_images(&inputs)?;
        if vision.is_some() {
            self.device.synchronize()?;
        }
        let vision_time = t_vision.elapsed();

        let feature_rows = vision.as_ref().map_or(Ok(0), |v| v.embeds.dim(0))?;
        if feature_rows != image_rows as usize {
            return Err(Error::PlaceholderMismatch {
                placeholders: image_rows as usize,
                images: feature_rows,
                placeholder: format!(
                    "<|image_pad|> tokens vs image features ({feature_rows} features)"
                ),
            });
        }
        let embeds = self.text.embed_with_images(
            &ids_t,
            vision.as_ref().map(|v| &v.embeds),
            &source,
            (b, len),
        )?;

        // Qwen3-VL: each DeepStack table gets an all-zero row 0 for the non-image rows.
        let deepstack_tables = match &vision {
            Some(v) if !v.deepstack.is_empty() => {
                let hidden = self.config.text.hidden_size;
                let zeros = Tensor::zeros((1, hidden), self.dtype, &self.device)?;
                v.deepstack
                    .iter()
                    .map(|f| Tensor::cat(&[&zeros, &f.to_dtype(self.dtype)?], 0))
                    .collect::<candle_core::Result<Vec<_>>>()?
            }
            _ => vec![],
        };
        let deepstack_index = if deepstack_tables.is_empty() {
            None
        } else {
            Some(Tensor::from_vec(deepstack_rows, b * len, &self.device)?)
        };
        let deepstack = deepstack_index.as_ref().map(|rows| DeepStack {
            rows,
            features: &deepstack_tables,
        });

        let out =
            self.text
                .forward_hidden(embeds, &cos, &sin, mask.as_ref(), &mut caches, deepstack)?;
        let next_position = batch
            .iter()
            .map(|p| p.inputs.input_ids.len() as i64 + p.rope.delta)
            .collect();
        Ok((
            out,
            QwenState::new(caches, next_position, pad),
            vision_time,
            image_cache_hits,
        ))
    }

    /// Logits of every prompt position `[len, vocab]` of one request (for parity checks).
    pub fn prompt_logits(&self, prepared: &PreparedQwen) -> Result<Tensor> {
        let (hidden, _, _, _) = self.forward_prompts(&[prepared], 1)?;
        Ok(self
            .text
            .logits(&hidden.squeeze(0)?)?
            .to_dtype(DType::F32)?)
    }

    /// Image embeddings (and DeepStack features) of one request (for parity checks).
    pub fn image_features(&self, prepared: &PreparedQwen) -> Result<Option<VisionOutput>> {
        Ok(self.encode_images(&[&prepared.inputs])?.0)
    }
}

impl QwenVl {
    /// The `(height, width)` the processor resizes `image` to under this call's budget.
    fn resized_for(&self, image: &Image, options: &GenerationOptions) -> Result<(usize, usize)> {
        let budget = PixelBudget {
            min_pixels: options.min_pixels,
            max_pixels: options.max_pixels,
        }
        .or(self.budget);
        let range = self.processor.pixel_range(budget)?;
        self.processor.resized_size(image, range)
    }
}

impl Family for QwenVl {
    type Inputs = PreparedQwen;
    type State = QwenState;

    fn info(&self) -> ModelInfo {
        ModelInfo {
            family: "qwen_vl",
            model_type: self.config.model_type.clone(),
            parameters: self.ctx.store.parameters(),
            dtype: format!("{:?}", self.dtype).to_lowercase(),
            quantization: self.quantization,
            device: device_name(&self.device),
            weight_bytes: self.ctx.weight_bytes(),
            max_images: None,
            native_multi_image: true,
            max_context: self.config.text.max_position_embeddings,
            fixed_image_size: None,
            grounding: true,
        }
    }

    fn cache_stats(&self) -> vlm_contract::CacheStats {
        image_cache::stats(self.cache.as_ref())
    }

    fn tokenizer(&self) -> &Tokenizer {
        self.processor.tokenizer()
    }

    fn grounding_request(
        &self,
        image: &Image,
        what: &str,
        options: &GenerationOptions,
    ) -> Result<Option<Request>> {
        if self.config.generation == QwenGeneration::Qwen2
            && self.tokenizer().token_to_id("<|box_start|>").is_none()
        {
            return Err(Error::NotSupported {
                model_type: self.config.model_type.clone(),
                what: "locate things in a photo",
                hint: "Qwen2-VL answers with <|box_start|> tokens and this tokenizer has none: \
                       use the checkpoint's own tokenizer.json",
            });
        }
        let resized = self.resized_for(image, options)?;
        Ok(Some(
            grounding::Grounding::new(self.config.generation)
                .request(image, what, resized, options),
        ))
    }

    fn parse_grounding(
        &self,
        answer: &str,
        image: &Image,
        options: &GenerationOptions,
    ) -> Result<Vec<vlm_contract::Detection>> {
        let resized = self.resized_for(image, options)?;
        Ok(grounding::Grounding::new(self.config.generation).parse(answer, image, resized))
    }

    fn generation_defaults(&self) -> &GenerationDefaults {
        &self.defaults
    }

    fn prepare(&self, request: &Request) -> Result<PreparedQwen> {
        let inputs = self
            .processor
            .process_with(request, self.budget, self.cache.as_ref())?;
        let grids: Vec<[usize; 3]> = inputs.images.iter().map(|i| i.grid_thw).collect();
        let rope = rope_index(
            &inputs.input_ids,
            self.config.image_token_id,
            &grids,
            self.config.vision.spatial_merge_size,
        );
        Ok(PreparedQwen { inputs, rope })
    }

    fn input_ids<'a>(&self, inputs: &'a PreparedQwen) -> &'a [u32] {
        &inputs.inputs.input_ids
    }

    fn prefill(
        &self,
        batch: &[&PreparedQwen],
        max_new_tokens: usize,
    ) -> Result<PrefillOutput<QwenState>> {
        let (hidden, state, image_encode, image_cache_hits) =
            self.forward_prompts(batch, max_new_tokens)?;
        let len = hidden.dim(1)?;
        // Left padding puts every sequence's last prompt token in the last column.
        let last = hidden.narrow(1, len - 1, 1)?.squeeze(1)?;
        let logits = self.text.logits(&last)?;
        Ok(PrefillOutput {
            logits,
            state,
            image_encode,
            image_cache_hits,
        })
    }

    fn decode(&self, tokens: &[u32], state: &mut QwenState) -> Result<Tensor> {
        Ok(self.text.decode_step(tokens, state)?)
    }

    fn device_argmax(&self, logits: &Tensor) -> Result<DeviceArgmax> {
        crate::kernels::device_argmax(&self.runtime, logits)
    }

    fn start_run_ahead(
        &self,
        logits: &Tensor,
        held: &HeldEnd,
        state: &mut QwenState,
    ) -> Result<bool> {
        Ok(self.text.start_run_ahead(logits, held, state)?)
    }

    fn queue_next_step(&self, state: &mut QwenState) -> Result<()> {
        Ok(self.text.queue_next_step(state)?)
    }

    fn wait_for_pick(&self, state: &mut QwenState) -> Result<DeviceArgmax> {
        Ok(self.text.wait_for_pick(state)?)
    }
}
