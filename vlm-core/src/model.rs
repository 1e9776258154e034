//! The public face of every model: [`VisionLanguageModel`].

use std::any::Any;

use crate::{
    DTypeChoice, DeviceChoice, Error, Generation, GenerationOptions, Image, Quantization, Request,
    Result,
};

/// How to load a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Where to run.
    pub device: DeviceChoice,
    /// Precision.
    pub dtype: DTypeChoice,
    /// Weight quantization of the language model (and, by default, of the rest: see
    /// `vision_quantization`).
    pub quantization: Quantization,
    /// The vision tower's quantization; `None` follows the documented policy: float when
    /// `quantization` is none, else int8 (4-bit vision towers are reported to describe
    /// images wrongly).
    pub vision_quantization: Option<Quantization>,
    /// Hub revision (branch, tag or commit) for hub ids.
    pub revision: Option<String>,
}

/// What a loaded model is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// Family name: `qwen_vl`, `blip2`, `minigpt4`.
    pub family: &'static str,
    /// config.json's `model_type` (e.g. `qwen2_5_vl`).
    pub model_type: String,
    /// Parameters in the loaded weights.
    pub parameters: u64,
    /// Weight and activation dtype (`f32`, `f16`, `bf16`).
    pub dtype: String,
    /// Weight quantization.
    pub quantization: Quantization,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Bytes of weights held on the device.
    pub weight_bytes: u64,
    /// Most images one call takes (`None`: limited only by the context).
    pub max_images: Option<usize>,
    /// Whether several images go into one conversation natively; when false, `relate`
    /// captions each image and then relates the captions.
    pub native_multi_image: bool,
    /// Longest sequence (prompt + generated tokens) the model takes.
    pub max_context: usize,
}

/// A vision-language model: describe a photo, answer a question about it, relate several.
///
/// Loaded models are immutable and `Send + Sync`: share one behind an `Arc` across
/// threads; every call keeps its own state.
///
/// ```no_run
/// use vlm_core::{GenerationOptions, Image, VisionLanguageModel};
///
/// fn caption(model: &dyn VisionLanguageModel) -> vlm_core::Result<()> {
///     let photo = Image::open("dinner.jpg")?;
///     let opts = GenerationOptions::greedy(64);
///     println!("{}", model.describe(&photo, &opts)?);
///     println!("{}", model.ask(&photo, "照片中主菜是什么?", &opts)?);
///     Ok(())
/// }
/// ```
pub trait VisionLanguageModel: Send + Sync {
    /// What was loaded, where, and how big it is.
    fn info(&self) -> ModelInfo;

    /// Runs one request to the end.
    fn generate(&self, request: &Request) -> Result<Generation>;

    /// Runs one request, handing each piece of final text to `on_text` as it is made.
    /// Pieces never split a UTF-8 character.
    fn generate_stream(
        &self,
        request: &Request,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation>;

    /// Runs several requests in one batch; results are in request order and equal what
    /// one-at-a-time generation gives.
    fn generate_batch(&self, requests: &[Request]) -> Result<Vec<Generation>>;

    /// The CPU half of [`Self::generate_batch`]: chat templates, tokens and image
    /// preprocessing. Its result runs with [`Self::run_batch`]; preparing the next batch on
    /// another thread while the device runs this one keeps the GPU busy
    /// ([`Self::generate_batches`] does so).
    fn prepare_batch(&self, requests: Vec<Request>) -> Result<PreparedBatch>;

    /// Runs a batch from [`Self::prepare_batch`] of this model.
    fn run_batch(&self, batch: PreparedBatch) -> Result<Vec<Generation>>;

    /// Runs many requests, `batch_size` per forward pass, each batch prepared on another
    /// thread while the device runs the one before; `on_done(n)` is called as each batch
    /// finishes with the number of requests done so far. Results are in request order.
    fn generate_batches(
        &self,
        requests: &[Request],
        batch_size: usize,
        on_done: &mut dyn FnMut(usize),
    ) -> Result<Vec<Generation>> {
        let mut chunks = requests.chunks(batch_size.max(1)).map(<[Request]>::to_vec);
        let mut out = Vec::with_capacity(requests.len());
        std::thread::scope(|scope| {
            let mut next = chunks.next().map(|c| self.prepare_batch(c)).transpose()?;
            while let Some(batch) = next.take() {
                let worker = chunks
                    .next()
                    .map(|c| scope.spawn(move || self.prepare_batch(c)));
                let done = self.run_batch(batch);
                // Joined before any error returns: the worker's batch is dropped with it.
                let prepared = worker.map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(Error::Generation("preparing a batch panicked".into()))
                    })
                });
                out.extend(done?);
                on_done(out.len());
                next = prepared.transpose()?;
            }
            Ok(out)
        })
    }

    /// The request `describe` runs (the family's wording in `options.language`).
    fn describe_request(&self, image: &Image, options: &GenerationOptions) -> Result<Request>;

    /// The request `ask` runs.
    fn ask_request(
        &self,
        image: &Image,
        question: &str,
        options: &GenerationOptions,
    ) -> Result<Request>;

    /// Describes a photo.
    fn describe(&self, image: &Image, options: &GenerationOptions) -> Result<String> {
        Ok(self.generate(&self.describe_request(image, options)?)?.text)
    }

    /// Answers a question about a photo; the prompt language follows the question.
    fn ask(&self, image: &Image, question: &str, options: &GenerationOptions) -> Result<String> {
        Ok(self
            .generate(&self.ask_request(image, question, options)?)?
            .text)
    }

    /// Relates several photos (e.g. tells the story of one trip). `instruction` replaces
    /// the default wording.
    fn relate(
        &self,
        images: &[Image],
        instruction: Option<&str>,
        options: &GenerationOptions,
    ) -> Result<String> {
        Ok(self
            .relate_with(images, instruction, options, &mut |_| {})?
            .text)
    }

    /// `relate` with the full [`Generation`] returned and the final answer streamed to
    /// `on_text` (families without native multi-image first caption each photo; those
    /// captions are not streamed).
    fn relate_with(
        &self,
        images: &[Image],
        instruction: Option<&str>,
        options: &GenerationOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation>;

    /// Describes many photos, `batch_size` per forward pass; `on_done(i)` is called as each
    /// batch finishes with the number of photos done so far.
    fn describe_batch(
        &self,
        images: &[Image],
        options: &GenerationOptions,
        batch_size: usize,
        on_done: &mut dyn FnMut(usize),
    ) -> Result<Vec<String>> {
        let requests = images
            .iter()
            .map(|img| self.describe_request(img, options))
            .collect::<Result<Vec<_>>>()?;
        Ok(self
            .generate_batches(&requests, batch_size, on_done)?
            .into_iter()
            .map(|g| g.text)
            .collect())
    }
}

/// Requests whose CPU work is done ([`VisionLanguageModel::prepare_batch`]), waiting for
/// the device ([`VisionLanguageModel::run_batch`] of the same model).
pub struct PreparedBatch {
    pub(crate) requests: Vec<Request>,
    /// The family's prepared inputs (`generate::Prepared<F>`).
    pub(crate) inputs: Box<dyn Any + Send>,
}

impl PreparedBatch {
    /// How many requests the batch holds.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// Whether the batch holds no request.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}

impl std::fmt::Debug for PreparedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedBatch")
            .field("requests", &self.requests.len())
            .finish_non_exhaustive()
    }
}
