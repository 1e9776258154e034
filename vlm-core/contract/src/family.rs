//! The narrow internal trait each model family implements, and [`FamilyModel`], which turns
//! any family into a full [`VisionLanguageModel`] by running the shared generation loop.

use std::time::Duration;

use candle_core::Tensor;
use tokenizers::Tokenizer;

use crate::constraint::Grammars;
use crate::generate::{run_generation, run_prepared, Prepared};
use crate::sampling::{argmax_on_device, DeviceArgmax, HeldEnd};
use crate::{
    CacheStats, Detection, Error, Generation, GenerationDefaults, GenerationOptions, Image,
    Language, ModelInfo, PreparedBatch, Request, Result, VisionLanguageModel,
};

/// What `prefill` returns.
pub struct PrefillOutput<S> {
    /// Logits of each sequence's last prompt position, `[batch, vocab]`.
    pub logits: Tensor,
    /// Per-batch state for the decode steps (KV caches, positions, rope deltas).
    pub state: S,
    /// Time spent in the vision tower (part of the prefill call).
    pub image_encode: Duration,
    /// Per sequence, its images whose encoding came from the image cache or from an
    /// earlier copy of the same photo in the batch (empty: none).
    pub image_cache_hits: Vec<usize>,
}

/// A model family as the generation loop sees it. The loop owns sampling, stopping,
/// streaming and batching; a family only turns requests into typed inputs and runs its
/// forward passes.
pub trait Family: Send + Sync + 'static {
    /// One prepared sequence (tokens, preprocessed images, positions).
    type Inputs: Send + 'static;
    /// Mutable state of one batch being generated.
    type State: Send;

    /// What was loaded.
    fn info(&self) -> ModelInfo;
    /// The image cache's counters (zero when the family has none or it is off).
    fn cache_stats(&self) -> CacheStats {
        CacheStats::default()
    }
    /// For detokenizing the output.
    fn tokenizer(&self) -> &Tokenizer;
    /// generation_config.json.
    fn generation_defaults(&self) -> &GenerationDefaults;

    /// Chat template or raw prompt → tokens; images → tensors; placeholder expansion.
    fn prepare(&self, request: &Request) -> Result<Self::Inputs>;
    /// The prompt's token ids after placeholder expansion.
    fn input_ids<'a>(&self, inputs: &'a Self::Inputs) -> &'a [u32];
    /// The ids the repetition penalty starts from, as the reference's `generate` sees
    /// them: the prompt for decoder-only models fed ids, the decoder start token for
    /// encoder-decoders, nothing for models fed only embeddings.
    fn penalty_history(&self, inputs: &Self::Inputs) -> Vec<u32> {
        self.input_ids(inputs).to_vec()
    }
    /// Runs vision and the language model over the prompts; the state must have room for
    /// `max_new_tokens` more positions per sequence.
    fn prefill(
        &self,
        batch: &[&Self::Inputs],
        max_new_tokens: usize,
    ) -> Result<PrefillOutput<Self::State>>;
    /// One step: the last token of each sequence in, `[batch, vocab]` logits out.
    fn decode(&self, tokens: &[u32], state: &mut Self::State) -> Result<Tensor>;
    /// Greedy decoding's pick from `[batch, vocab]` logits, on their device: each row's
    /// first largest value and whether the row is finite. Families with a faster kernel
    /// for it override this; an override picks what the host's `argmax` picks, the first
    /// of tied maxima, which the default ([`argmax_on_device`]) does not always do.
    fn device_argmax(&self, logits: &Tensor) -> Result<DeviceArgmax> {
        argmax_on_device(logits)
    }

    /// Greedy decoding with the device a step ahead of the host: queues greedy's pick
    /// from `logits` (the prefill's, `[batch, vocab]`) on the device, where the next
    /// queued step reads it, and a copy of it to the host; every pick leaves out what
    /// `held` says. After that the loop calls [`Self::queue_next_step`] before
    /// [`Self::wait_for_pick`], so the device runs a step while the host checks the tokens
    /// before it, and never waits for the host's stop checks, streamed text or launches.
    /// Returns `false` where the family cannot (the default); the loop then picks and
    /// steps one after the other. Families that return `true` implement both methods
    /// below.
    fn start_run_ahead(
        &self,
        logits: &Tensor,
        held: &HeldEnd,
        state: &mut Self::State,
    ) -> Result<bool> {
        let _ = (logits, held, state);
        Ok(false)
    }

    /// After [`Self::start_run_ahead`]: queues one step fed the ids the device picked last,
    /// and that step's own pick (for the next step, and a copy for the host). Nothing is
    /// waited for.
    fn queue_next_step(&self, state: &mut Self::State) -> Result<()> {
        let _ = state;
        Err(not_running_ahead())
    }

    /// After [`Self::start_run_ahead`]: waits for the oldest pick not yet returned (the
    /// prefill's first) and returns it.
    fn wait_for_pick(&self, state: &mut Self::State) -> Result<DeviceArgmax> {
        let _ = state;
        Err(not_running_ahead())
    }

    /// Whether `relate` puts every photo into one conversation. Default: when the model
    /// takes several images natively; otherwise each photo is captioned first and the
    /// captions are related in a text-only turn.
    fn relate_in_one_conversation(&self) -> bool {
        self.info().native_multi_image
    }

    /// The instruction `describe` sends.
    fn describe_prompt(&self, language: Language) -> String {
        match language {
            Language::Chinese => "请详细描述这张照片。".into(),
            _ => "Describe this photo in detail.".into(),
        }
    }

    /// The default instruction of `relate` for `n` photos.
    fn relate_prompt(&self, n: usize, language: Language) -> String {
        match language {
            Language::Chinese => format!("这{n}张照片来自同一次旅行或活动。请按顺序讲述它们共同的故事。"),
            _ => format!("These {n} photos come from one trip or event. Tell the story they share, photo by photo."),
        }
    }

    /// Grounding: the request that asks where `what` is in `image` (in the model's own
    /// grounding format, with the output constrained to it), or `None` when the family
    /// has no grounding.
    fn grounding_request(
        &self,
        image: &Image,
        what: &str,
        options: &GenerationOptions,
    ) -> Result<Option<Request>> {
        let _ = (image, what, options);
        Ok(None)
    }

    /// The boxes of a grounding answer (decoded with special tokens kept), in `image`'s
    /// pixels.
    fn parse_grounding(
        &self,
        answer: &str,
        image: &Image,
        options: &GenerationOptions,
    ) -> Result<Vec<Detection>> {
        let _ = (answer, image, options);
        Ok(vec![])
    }

    /// A single-turn request with `images` and `text` in the family's conversation format.
    fn chat_request(
        &self,
        images: Vec<Image>,
        text: String,
        options: &GenerationOptions,
    ) -> Request {
        Request::chat(images, text, options.clone())
    }
}

/// Any [`Family`] as a [`VisionLanguageModel`].
pub struct FamilyModel<F> {
    family: F,
    /// The constraint compiler over this model's vocabulary, built on first use.
    grammars: Grammars,
}

impl<F: Family> FamilyModel<F> {
    /// Wraps a loaded family.
    pub fn new(family: F) -> Self {
        Self {
            family,
            grammars: Grammars::default(),
        }
    }

    /// The family inside.
    pub fn family(&self) -> &F {
        &self.family
    }
}

impl<F: Family> VisionLanguageModel for FamilyModel<F> {
    fn info(&self) -> ModelInfo {
        self.family.info()
    }

    fn generate(&self, request: &Request) -> Result<Generation> {
        let mut out = run_generation(
            &self.family,
            &self.grammars,
            std::slice::from_ref(request),
            None,
        )?;
        Ok(out.remove(0))
    }

    fn generate_stream(
        &self,
        request: &Request,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        let mut out = run_generation(
            &self.family,
            &self.grammars,
            std::slice::from_ref(request),
            Some(on_text),
        )?;
        Ok(out.remove(0))
    }

    fn generate_batch(&self, requests: &[Request]) -> Result<Vec<Generation>> {
        if requests.is_empty() {
            return Ok(vec![]);
        }
        run_generation(&self.family, &self.grammars, requests, None)
    }

    fn cache_stats(&self) -> CacheStats {
        self.family.cache_stats()
    }

    fn prepare_items(&self, items: Vec<Result<Request>>) -> PreparedBatch {
        let (inputs, slots) = Prepared::<F>::from_items(&self.family, &self.grammars, items);
        PreparedBatch {
            slots,
            inputs: Box::new(inputs),
        }
    }

    fn run_items(&self, batch: PreparedBatch) -> Vec<Result<Generation>> {
        let PreparedBatch { slots, inputs } = batch;
        let mut results = match inputs.downcast::<Prepared<F>>() {
            Ok(inputs) => run_prepared(&self.family, *inputs, None),
            Err(_) => Err(Error::Generation(
                "this batch was prepared by a model of another family: run it with the model \
                 whose prepare_batch made it"
                    .into(),
            )),
        }
        .map(Vec::into_iter);
        slots
            .into_iter()
            .map(|slot| match (slot, &mut results) {
                (Some(e), _) => Err(e),
                (None, Ok(done)) => done.next().map(Ok).unwrap_or_else(|| {
                    Err(Error::Generation(
                        "a request of the batch gave no result".into(),
                    ))
                }),
                // The whole batch failed on the device: each of its requests gets the error.
                (None, Err(e)) => Err(e.for_another_request()),
            })
            .collect()
    }

    fn locate(
        &self,
        image: &Image,
        what: &str,
        options: &GenerationOptions,
    ) -> Result<Vec<Detection>> {
        if what.trim().is_empty() {
            return Err(Error::EmptyQuestion);
        }
        let Some(request) = self.family.grounding_request(image, what, options)? else {
            return Err(Error::NotSupported {
                model_type: self.family.info().model_type,
                what: "locate things in a photo",
                hint: "use a Qwen2-VL, Qwen2.5-VL or Qwen3-VL model",
            });
        };
        let generation = self.generate(&request)?;
        // Qwen2-VL's boxes are special tokens, which the plain text drops.
        let answer = self
            .family
            .tokenizer()
            .decode(&generation.token_ids, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        self.family.parse_grounding(&answer, image, options)
    }

    fn describe_request(&self, image: &Image, options: &GenerationOptions) -> Result<Request> {
        let text = self.family.describe_prompt(options.language.resolve(""));
        Ok(self.family.chat_request(vec![image.clone()], text, options))
    }

    fn ask_request(
        &self,
        image: &Image,
        question: &str,
        options: &GenerationOptions,
    ) -> Result<Request> {
        if question.trim().is_empty() {
            return Err(Error::EmptyQuestion);
        }
        Ok(self
            .family
            .chat_request(vec![image.clone()], question.to_string(), options))
    }

    fn relate_with(
        &self,
        images: &[Image],
        instruction: Option<&str>,
        options: &GenerationOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        if images.is_empty() {
            return Err(Error::NoImages { what: "relate" });
        }
        let info = self.family.info();
        if let (true, Some(max)) = (info.native_multi_image, info.max_images) {
            if images.len() > max {
                return Err(Error::TooManyImages {
                    given: images.len(),
                    max,
                });
            }
        }
        let language = options.language.resolve(instruction.unwrap_or(""));
        let text = match instruction {
            Some(i) if !i.trim().is_empty() => i.to_string(),
            _ => self.family.relate_prompt(images.len(), language),
        };
        if self.family.relate_in_one_conversation() {
            return self.generate_stream(
                &self.family.chat_request(images.to_vec(), text, options),
                on_text,
            );
        }
        // One image per call: caption each, then relate the captions in a text-only turn.
        let mut captions = Vec::with_capacity(images.len());
        for image in images {
            captions.push(self.describe(image, options)?);
        }
        let listing: String = captions
            .iter()
            .enumerate()
            .map(|(i, c)| format!("Photo {}: {}\n", i + 1, c.trim()))
            .collect();
        let prompt = format!("{listing}{text}");
        self.generate_stream(&self.family.chat_request(vec![], prompt, options), on_text)
    }
}

/// What [`Family::queue_next_step`] and [`Family::wait_for_pick`] answer in a family that
/// does not run ahead: the loop calls them only after `start_run_ahead` said it does.
fn not_running_ahead() -> Error {
    Error::Generation(
        "this family does not run ahead; it returned true from start_run_ahead, which is a bug in vlm: please report it".into(),
    )
}
