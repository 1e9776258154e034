//! # MiniGPT-4
//!
//! Vision-CAIR's MiniGPT-4 ("MiniGPT-4: Enhancing Vision-Language Understanding with
//! Advanced Large Language Models", arXiv:2304.10592), loaded from its original release
//! files: BLIP-2's EVA ViT-g/14 and `ln_vision`, BLIP-2's Q-Former with 32 queries
//! (Vicuna v0 variant), one linear `llama_proj`, and a Vicuna / LLaMA-2-chat language
//! model. The LLaMA-2 variant has no Q-Former: it concatenates each 4 adjacent patch
//! features (256 patches → 64 tokens) before the projection.
//!
//! The ViT and Q-Former are BLIP-2's ([`crate::blip2::vision`], [`crate::blip2::qformer`])
//! with the original tensor names; the language model is the LLaMA-architecture decoder
//! the decoder-only families share (`crate::decoder`), with plain RoPE. Prompts follow
//! the demo's conversation exactly ([`conversation`]). MiniGPT-4 was trained on one image
//! per turn, so `info()` reports multi-image as not native; `relate` still puts all photos
//! into one conversation, as the demo would after several uploads.

pub mod checkpoint;
pub mod config;
pub mod conversation;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Module, Tensor};
use tokenizers::Tokenizer;
use vlm_contract::device::device_name;
use vlm_contract::files::ModelDir;
use vlm_contract::model::LoadOptions;
use vlm_contract::sampling::{DeviceArgmax, HeldEnd};
use vlm_contract::{
    Error, Family, FamilyModel, GenerationDefaults, Image, Language, ModelInfo, PrefillOutput,
    Quantization, Request, Result, Sampling, VisionLanguageModel,
};

pub use checkpoint::{hf_folder_weights, LayeredWeights, Source};
pub use config::{MiniGpt4Config, Variant};
pub use conversation::{Conversation, IMAGE_HERE};

use crate::blip2::qformer::{QFormer, QFormerLayout};
use crate::blip2::vision::{VisionTransformer, VitLayout};
use crate::decoder::{Decoder, DecoderConfig, DecoderState, LlamaConfig, SegmentLayout};
use crate::image_cache::{self, Features, ImageCache, ImageKey, Plan};
use crate::layers::{LayerNorm, Linear};
use crate::preprocess::resize::PillowVersion;
use crate::preprocess::{Normalize, ResizeBackend};
use crate::quantized_folder::{LoadContext, WeightSource, Weights};
use crate::weights::weights_err;

/// The `model_type` of a MiniGPT-4 folder's config.json.
pub const MODEL_TYPES: &[&str] = &["minigpt4"];

/// BLIP-2's eval transform (`Blip2ImageEvalProcessor`): OpenAI CLIP's mean and std,
/// with the reference's digits.
#[allow(clippy::excessive_precision)]
const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// The LLaMA-2 variant concatenates this many adjacent patch features per token.
const PATCHES_PER_TOKEN: usize = 4;
/// The demo's question for `describe`.
const DESCRIBE_EN: &str = "Describe this image in detail.";
/// The names `vlm convert` keeps: everything MiniGPT-4 reads outside the language model.
pub const CONVERT_PREFIXES: &[&str] = &[
    "visual_encoder.",
    "ln_vision.",
    "query_tokens",
    "Qformer.bert.",
    "llama_proj.",
];

/// One request, ready for the model.
#[derive(Debug, Clone)]
pub struct MiniGpt4Inputs {
    /// Token ids of each text segment between images (BOS starts the first).
    pub segments: Vec<Vec<u32>>,
    /// Each image as `[3, size, size]` planes (empty for an image found in the cache).
    pub images: Vec<Vec<f32>>,
    /// Per image, its encoding from the model's image cache (preprocessing skipped).
    pub cached: Vec<Option<Features>>,
    /// Per image, its cache key (`None` with the cache off).
    pub keys: Vec<Option<ImageKey>>,
    /// The prompt laid out as the language model sees it, with `0` at image positions
    /// (its length is the prompt's length in embeddings).
    pub input_ids: Vec<u32>,
    /// The prompt text (with `<ImageHere>` per image).
    pub prompt: String,
}

/// Per-batch generation state (the LLaMA decoder's).
pub type MiniGpt4State = DecoderState;

/// The image path's intermediate results, for parity checks.
pub struct ImageFeatures {
    /// `visual_encoder` output `[n, 257, width]`.
    pub vit: Tensor,
    /// After `ln_vision`.
    pub ln_vision: Tensor,
    /// Q-Former output `[n, queries, hidden]` (Vicuna v0 variant).
    pub qformer: Option<Tensor>,
    /// What enters the language model, `[n, tokens, llm hidden]`.
    pub embeds: Tensor,
}

/// A loaded MiniGPT-4: immutable, shareable across threads.
pub struct MiniGpt4 {
    config: MiniGpt4Config,
    conversation: Conversation,
    tokenizer: Tokenizer,
    bos: u32,
    normalize: Normalize,
    vision: VisionTransformer,
    ln_vision: LayerNorm,
    qformer: Option<QFormer>,
    projection: Linear,
    llm: Decoder,
    tokens_per_image: usize,
    defaults: GenerationDefaults,
    device: Device,
    dtype: DType,
    weight_files: Vec<PathBuf>,
    quantization: Quantization,
    ctx: LoadContext,
    /// What enters the language model per image, kept for reuse.
    cache: Option<ImageCache>,
}

/// `load()` entry point for the registry.
pub fn load_boxed(
    dir: &ModelDir,
    options: &LoadOptions,
    ctx: Option<&LoadContext>,
) -> Result<Box<dyn VisionLanguageModel>> {
    Ok(Box::new(FamilyModel::new(MiniGpt4::load_with(
        dir, options, ctx,
    )?)))
}

/// A prompt split at each `<ImageHere>`, each text segment tokenized on its own (so each
/// starts with SentencePiece's space marker), BOS prepended to the first only: MiniGPT-4's
/// `get_context_emb`.
pub fn tokenize_segments(tokenizer: &Tokenizer, bos: u32, prompt: &str) -> Result<Vec<Vec<u32>>> {
    prompt
        .split(IMAGE_HERE)
        .enumerate()
        .map(|(i, seg)| {
            let enc = tokenizer
                .encode(seg, false)
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            let mut ids = Vec::with_capacity(enc.len() + 1);
            if i == 0 {
                ids.push(bos);
            }
            ids.extend_from_slice(enc.get_ids());
            Ok(ids)
        })
        .collect()
}

/// The language model's tokenizer: `tokenizer.model` (what MiniGPT-4's slow
/// `LlamaTokenizer` reads), else tokenizer.json.
pub fn load_tokenizer(llm: &Path) -> Result<Tokenizer> {
    let model = llm.join("tokenizer.model");
    if model.is_file() {
        let mut tokenizer = crate::tokenizer::sentencepiece_tokenizer(&model)?;
        // transformers' slow LlamaTokenizer (MiniGPT-4's) turns `<s>` / `</s>` written in
        // the text into the BOS / EOS ids, and CONV_VISION_LLama2 writes `<s>[INST] `.
        tokenizer.set_encode_special_tokens(false);
        return Ok(tokenizer);
    }
    ModelDir::local(llm)?.tokenizer()
}

/// The weights of the MiniGPT-4 parts, in the reference's override order.
pub fn part_weights(dir: &ModelDir, config: &MiniGpt4Config) -> Result<LayeredWeights> {
    let mut layers = LayeredWeights::default();
    let file = |name: &str, what: &str| -> Result<PathBuf> {
        let p = dir.root().join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(Error::MissingFile {
                path: p,
                hint: format!("{what}; see docs/models.md (MiniGPT-4) for where to get it"),
            })
        }
    };
    if let Some(v) = &config.vision_weights {
        layers.push(
            file(v, "the EVA ViT-g checkpoint eva_vit_g.pth")?,
            "visual_encoder.",
        )?;
    }
    if let Some(w) = &config.weights {
        layers.push(file(w, "the merged MiniGPT-4 safetensors file")?, "")?;
    }
    if let Some(q) = &config.qformer_weights {
        layers.push(
            file(
                q,
                "the BLIP-2 Q-Former checkpoint blip2_pretrained_flant5xxl.pth",
            )?,
            "",
        )?;
    }
    if let Some(p) = &config.projection_weights {
        layers.push(
            file(p, "the MiniGPT-4 checkpoint pretrained_minigpt4*.pth")?,
            "",
        )?;
    }
    Ok(layers)
}

/// Merges a MiniGPT-4 folder's released `.pth` files into one safetensors file at
/// `output`, with the reference's tensor names and override order (what the loader would
/// read), so that later loads open one memory-mapped file instead of unpickling zips.
/// Returns the number of tensors written. Point config.json's `"weights"` at the file.
pub fn convert_to_safetensors(dir: &Path, output: &Path) -> Result<usize> {
    let dir = ModelDir::local(dir)?;
    let config = MiniGpt4Config::read(&dir)?;
    let tensors = part_weights(&dir, &config)?.collect(CONVERT_PREFIXES)?;
    if tensors.is_empty() {
        return Err(Error::Weights(
            "the checkpoint files hold none of MiniGPT-4's tensors".into(),
        ));
    }
    let n = tensors.len();
    candle_core::safetensors::save(&tensors.into_iter().collect(), output)
        .map_err(|e| Error::bad_file(output, e))?;
    Ok(n)
}

impl MiniGpt4 {
    /// Loads a MiniGPT-4 folder (see [`config`] for its config.json), or a quantized
    /// folder saved from one.
    pub fn load(dir: &ModelDir, options: &LoadOptions) -> Result<Self> {
        Self::load_with(dir, options, None)
    }

    /// [`Self::load`], recording into `ctx` (to save a quantized folder).
    pub fn load_with(
        dir: &ModelDir,
        options: &LoadOptions,
        ctx: Option<&LoadContext>,
    ) -> Result<Self> {
        let config = MiniGpt4Config::read(dir)?;
        let device = options.device.open_with(&options.runtime)?;
        crate::kernels::apply_device_settings(&device, &options.runtime);
        let dtype = options.dtype.resolve(&device);

        let llm_dir = dir.root().join(&config.language_model);
        if !llm_dir.is_dir() {
            return Err(Error::MissingFile {
                path: llm_dir,
                hint: "the language model folder named by \"language_model\" (Vicuna v0 or Llama-2-7b-chat-hf in HF format)".into(),
            });
        }
        let llama = LlamaConfig::read(&llm_dir.join("config.json"))?;
        let text_config = DecoderConfig::from_llama(&llama, "config.json of the language model")?;
        let tokenizer = load_tokenizer(&llm_dir)?;
        let bos = tokenizer
            .token_to_id("<s>")
            .or(llama.bos_token_id)
            .unwrap_or(1);
        let eos = tokenizer
            .token_to_id("</s>")
            .or(llama.eos_token_id)
            .unwrap_or(2);
        let mut defaults =
            GenerationDefaults::from_file(&llm_dir.join("generation_config.json"), &[eos])?;
        demo_sampling(&mut defaults, config.variant);

        // One VarBuilder over every file: the parts' names and the LLaMA names do not
        // collide. The language model lies under the parts, as the reference loads it
        // first and the checkpoints onto it.
        let weights = Weights::open_from(dir, options, ctx, dtype, &device, |dir| {
            let parts = part_weights(dir, &config)?;
            let llm_files = hf_folder_weights(&llm_dir)?;
            let files = parts.files().into_iter().chain(llm_files.clone()).collect();
            let mut backend = LayeredWeights::default();
            for f in llm_files {
                backend.push(f, "")?;
            }
            backend.extend(parts);
            let names = backend.names().into_keys().collect();
            Ok(WeightSource {
                backend,
                files,
                names,
            })
        })?;
        let policy = weights.policy;
        let (vision_q, text_q, head_q, embed_q) = (
            weights.quantizer(policy.vision),
            weights.quantizer(policy.text),
            weights.quantizer(policy.head),
            weights.quantizer(policy.embed),
        );
        let vb = weights.vb.clone();
        let vcfg = config.vision();
        let vision =
            VisionTransformer::new(&vcfg, VitLayout::Eva, vb.pp("visual_encoder"), &vision_q)
                .map_err(weights_err)?;
        // The reference loads every file with strict=False, so a tensor no file holds keeps
        // its initial value. The LLaMA-2 release loads no BLIP-2 checkpoint and its own
        // holds only llama_proj: there ln_vision runs as initialised (weight 1, bias 0).
        let ln_vision = if vb.contains_tensor("ln_vision.weight") {
            LayerNorm::new(vcfg.hidden_size, config.ln_vision_eps, vb.pp("ln_vision"))
        } else {
            LayerNorm::identity(vcfg.hidden_size, config.ln_vision_eps, dtype, &device)
        }
        .map_err(weights_err)?;
        let (qformer, projection_in, tokens_per_image) = match config.variant {
            Variant::Vicuna0 => {
                let qcfg = config.qformer();
                // Like BLIP-2 in transformers, the Q-Former runs in f32 in every dtype.
                let vb32 = vb.clone().set_dtype(DType::F32);
                let queries = vb32
                    .get(
                        (1, config.num_query_tokens, qcfg.hidden_size),
                        "query_tokens",
                    )
                    .map_err(weights_err)?;
                let q = QFormer::new(
                    &qcfg,
                    config.num_query_tokens,
                    QFormerLayout::Lavis,
                    queries,
                    vb32.pp("Qformer.bert"),
                    &vision_q,
                )
                .map_err(weights_err)?;
                (Some(q), qcfg.hidden_size, config.num_query_tokens)
            }
            Variant::Llama2 => (
                None,
                vcfg.hidden_size * PATCHES_PER_TOKEN,
                (vcfg.num_positions() - 1) / PATCHES_PER_TOKEN,
            ),
        };
        let projection = vision_q
            .linear(
                projection_in,
                text_config.hidden_size,
                true,
                vb.pp("llama_proj"),
            )
            .map_err(weights_err)?;

        let llm = Decoder::new(
            &text_config,
            vb.pp("model"),
            vb.clone(),
            &text_q,
            &head_q,
            &embed_q,
        )
        .map_err(weights_err)?;
        Ok(Self {
            conversation: Conversation::of(config.variant),
            config,
            tokenizer,
            bos,
            normalize: Normalize {
                backend: ResizeBackend::Pil,
                // MiniGPT-4's environment (2023) predates Pillow 12.2's pass-order change.
                pillow: PillowVersion::UpTo12_1,
                bilinear: false,
                rescale_factor: 1.0 / 255.0,
                mean: CLIP_MEAN,
                std: CLIP_STD,
            },
            vision,
            ln_vision,
            qformer,
            projection,
            llm,
            tokens_per_image,
            defaults,
            device,
            dtype,
            weight_files: weights.files,
            quantization: weights.quantization,
            ctx: weights.ctx,
            cache: ImageCache::new(options.image_cache_bytes),
        })
    }

    /// The parsed config.
    pub fn config(&self) -> &MiniGpt4Config {
        &self.config
    }

    /// The files the weights were read from.
    pub fn weight_files(&self) -> &[PathBuf] {
        &self.weight_files
    }

    /// `[3, size, size]` planes of one image (`Blip2ImageEvalProcessor`: PIL bicubic
    /// resize to a square, `ToTensor`, CLIP normalisation).
    pub fn preprocess(&self, image: &Image) -> Vec<f32> {
        let s = self.config.image_size;
        self.normalize.planes(image, s, s)
    }

    /// The image path over `[3, size, size]` planes of each image.
    pub fn image_features(&self, images: &[&[f32]]) -> Result<ImageFeatures> {
        let s = self.config.image_size;
        let data: Vec<f32> = images.iter().flat_map(|p| p.iter().copied()).collect();
        let pixels = Tensor::from_vec(data, (images.len(), 3, s, s), &self.device)?;
        let vit = self.vision.forward(&pixels)?;
        let ln_vision = self.ln_vision.forward(&vit)?;
        let (qformer, embeds) = match &self.qformer {
            Some(q) => {
                let out = q.forward(&ln_vision)?;
                let embeds = self.projection.forward(&out.to_dtype(self.dtype)?)?;
                (Some(out), embeds)
            }
            None => {
                let (n, p, w) = ln_vision.dims3()?;
                let grouped = ln_vision.narrow(1, 1, p - 1)?.contiguous()?.reshape((
                    n,
                    (p - 1) / PATCHES_PER_TOKEN,
                    w * PATCHES_PER_TOKEN,
                ))?;
                (None, self.projection.forward(&grouped)?)
            }
        };
        Ok(ImageFeatures {
            vit,
            ln_vision,
            qformer,
            embeds,
        })
    }

    /// Tokenizes a prompt as `get_context_emb` does (see [`tokenize_segments`]).
    pub fn tokenize_segments(&self, prompt: &str) -> Result<Vec<Vec<u32>>> {
        tokenize_segments(&self.tokenizer, self.bos, prompt)
    }

    fn forward_prompts(
        &self,
        batch: &[&MiniGpt4Inputs],
        max_new_tokens: usize,
    ) -> Result<(Tensor, MiniGpt4State, Duration, Vec<usize>)> {
        let prompts: Vec<&[Vec<u32>]> = batch.iter().map(|p| p.segments.as_slice()).collect();
        let layout = SegmentLayout::new(&prompts, self.tokens_per_image);
        let t_image = Instant::now();
        let (image_rows, hits) = self.image_rows(batch)?;
        if image_rows.is_some() {
            self.device.synchronize()?;
        }
        let image_time = t_image.elapsed();
        let (out, state) =
            self.llm
                .prefill_segments(layout, image_rows.as_ref(), max_new_tokens)?;
        Ok((out, state, image_time, hits))
    }

    /// What the batch's images put into the language model, `[images·tokens, hidden]`,
    /// each distinct photo encoded once (or taken from the cache); and per request, how
    /// many of its images reused an encoding.
    fn image_rows(&self, batch: &[&MiniGpt4Inputs]) -> Result<(Option<Tensor>, Vec<usize>)> {
        let no_hits = vec![0; batch.len()];
        let all: Vec<(&[f32], Option<&Features>, Option<ImageKey>)> = batch
            .iter()
            .flat_map(|p| {
                p.images
                    .iter()
                    .zip(&p.cached)
                    .zip(&p.keys)
                    .map(|((px, c), k)| (px.as_slice(), c.as_ref(), *k))
            })
            .collect();
        if all.is_empty() {
            return Ok((None, no_hits));
        }
        let plan = Plan::new(all.iter().map(|&(_, c, k)| (c, k)));
        if self.cache.is_none() && plan.encodes_all_in_order() {
            let images: Vec<&[f32]> = all.iter().map(|a| a.0).collect();
            let e = self.image_features(&images)?.embeds;
            let (n, t, d) = e.dims3()?;
            return Ok((Some(e.reshape((n * t, d))?), no_hits));
        }
        let hits = plan.reuses_per_request(batch.iter().map(|p| p.images.len()));
        let images: Vec<&[f32]> = plan.encode.iter().map(|&i| all[i].0).collect();
        let encoded = if images.is_empty() {
            vec![]
        } else {
            image_cache::per_image(&self.image_features(&images)?.embeds)?
        };
        let keys: Vec<_> = all.iter().map(|a| a.2).collect();
        let per_image = plan.assemble(encoded, &keys, self.cache.as_ref())?;
        Ok((image_cache::concat(&per_image)?.into_iter().next(), hits))
    }

    /// Logits of every prompt position `[len, vocab]` of one request (parity checks).
    pub fn prompt_logits(&self, inputs: &MiniGpt4Inputs) -> Result<Tensor> {
        let (hidden, _, _, _) = self.forward_prompts(&[inputs], 1)?;
        Ok(self.llm.logits(&hidden.squeeze(0)?)?.to_dtype(DType::F32)?)
    }
}

/// The demo's sampling settings (`Chat.answer`: do_sample, top_p 0.9, temperature 1.0,
/// repetition_penalty 1.05, 300 new tokens; top_k keeps transformers' default 50) and
/// its stop: `###` (token ids 835 and 2277 29937 in the demo) for Vicuna v0, EOS for
/// LLaMA-2. The caller's options override all of them.
fn demo_sampling(defaults: &mut GenerationDefaults, variant: Variant) {
    defaults.sampling = Sampling::Sample {
        temperature: 1.0,
        top_p: 0.9,
        top_k: 50,
    };
    defaults.repetition_penalty = 1.05;
    defaults.max_new_tokens = Some(300);
    if variant == Variant::Vicuna0 {
        defaults.stop_strings = vec!["###".into()];
    }
}

impl Family for MiniGpt4 {
    type Inputs = MiniGpt4Inputs;
    type State = MiniGpt4State;

    fn info(&self) -> ModelInfo {
        ModelInfo {
            family: "minigpt4",
            model_type: match self.config.variant {
                Variant::Vicuna0 => "minigpt4 (vicuna0)".into(),
                Variant::Llama2 => "minigpt4 (llama2)".into(),
            },
            parameters: self.ctx.store.parameters(),
            dtype: format!("{:?}", self.dtype).to_lowercase(),
            quantization: self.quantization,
            device: device_name(&self.device),
            weight_bytes: self.ctx.weight_bytes(),
            max_images: None,
            native_multi_image: false,
            max_context: self.llm.config().max_position_embeddings,
            fixed_image_size: Some([self.config.image_size; 2]),
            grounding: false,
        }
    }

    fn cache_stats(&self) -> vlm_contract::CacheStats {
        image_cache::stats(self.cache.as_ref())
    }

    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn generation_defaults(&self) -> &GenerationDefaults {
        &self.defaults
    }

    fn prepare(&self, request: &Request) -> Result<MiniGpt4Inputs> {
        let prompt = self.conversation.prompt(request)?;
        let segments = self.tokenize_segments(&prompt)?;
        let s = self.config.image_size;
        let mut images = Vec::with_capacity(request.images.len());
        let mut cached = Vec::with_capacity(request.images.len());
        let mut keys = Vec::with_capacity(request.images.len());
        for image in &request.images {
            let key = self.cache.as_ref().map(|_| ImageKey::new(image, [s, s]));
            let found = self
                .cache
                .as_ref()
                .zip(key.as_ref())
                .and_then(|(c, k)| c.get(k));
            images.push(match found {
                Some(_) => vec![],
                None => self.preprocess(image),
            });
            cached.push(found);
            keys.push(key);
        }
        let mut input_ids = Vec::new();
        for (i, seg) in segments.iter().enumerate() {
            if i > 0 {
                input_ids.extend(std::iter::repeat_n(0, self.tokens_per_image));
            }
            input_ids.extend_from_slice(seg);
        }
        Ok(MiniGpt4Inputs {
            segments,
            images,
            cached,
            keys,
            input_ids,
            prompt,
        })
    }

    fn input_ids<'a>(&self, inputs: &'a MiniGpt4Inputs) -> &'a [u32] {
        &inputs.input_ids
    }

    /// The reference generates from embeddings only: transformers 4.30 starts the id
    /// sequence the repetition penalty sees with one BOS (not fed to the model).
    fn penalty_history(&self, _inputs: &MiniGpt4Inputs) -> Vec<u32> {
        vec![self.bos]
    }

    fn prefill(
        &self,
        batch: &[&MiniGpt4Inputs],
        max_new_tokens: usize,
    ) -> Result<PrefillOutput<MiniGpt4State>> {
        let (hidden, state, image_encode, image_cache_hits) =
            self.forward_prompts(batch, max_new_tokens)?;
        let len = hidden.dim(1)?;
        // Left padding puts every sequence's last prompt token in the last column.
        let logits = self
            .llm
            .logits(&hidden.narrow(1, len - 1, 1)?.squeeze(1)?)?;
        Ok(PrefillOutput {
            logits,
            state,
            image_encode,
            image_cache_hits,
        })
    }

    fn decode(&self, tokens: &[u32], state: &mut MiniGpt4State) -> Result<Tensor> {
        Ok(self.llm.decode_step(tokens, state)?)
    }

    fn device_argmax(&self, logits: &Tensor) -> Result<DeviceArgmax> {
        self.llm.device_argmax(logits)
    }

    fn start_run_ahead(
        &self,
        logits: &Tensor,
        held: &HeldEnd,
        state: &mut MiniGpt4State,
    ) -> Result<bool> {
        Ok(self.llm.start_run_ahead(logits, held, state)?)
    }

    fn queue_next_step(&self, state: &mut MiniGpt4State) -> Result<()> {
        Ok(self.llm.queue_next_step(state)?)
    }

    fn wait_for_pick(&self, state: &mut MiniGpt4State) -> Result<DeviceArgmax> {
        Ok(self.llm.wait_for_pick(state)?)
    }

    fn relate_in_one_conversation(&self) -> bool {
        true
    }

    fn describe_prompt(&self, language: Language) -> String {
        match language {
            Language::Chinese => "请详细描述这张照片。".into(),
            _ => DESCRIBE_EN.into(),
        }
    }
}
