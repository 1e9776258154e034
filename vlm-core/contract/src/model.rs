//! The public face of every model: [`VisionLanguageModel`].

use std::any::Any;

use crate::{
    CacheStats, DTypeChoice, DeviceChoice, Error, Generation, GenerationOptions, Image,
    Quantization, Request, Result, RuntimeOptions,
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
    /// Smallest image area in pixels for every call of this model (Qwen-VL's
    /// `min_pixels`); a call's [`GenerationOptions::min_pixels`] overrides it. `None`:
    /// the checkpoint's preprocessor_config.json.
    pub min_pixels: Option<usize>,
    /// Largest image area in pixels for every call of this model (Qwen-VL's
    /// `max_pixels`: a 12 MP phone photo is ~15,500 image tokens at the released
    /// default; docs/models.md recommends a budget for album use). A call's
    /// [`GenerationOptions::max_pixels`] overrides it.
    pub max_pixels: Option<usize>,
    /// Bytes of vision-tower outputs kept to reuse for the same photo (an LRU, on the
    /// model's device); 0, the default, turns the cache off.
    pub image_cache_bytes: u64,
    /// The GPU paths this model takes (our fused kernels, CUDA graphs, flash attention,
    /// ...): kept by the model for its lifetime. The library reads no environment
    /// variable; binaries pass [`RuntimeOptions::from_env`] to honour the `VLM_*` ones.
    pub runtime: RuntimeOptions,
}

impl LoadOptions {
    /// Sets [`Self::runtime`].
    pub fn with_runtime(mut self, runtime: RuntimeOptions) -> Self {
        self.runtime = runtime;
        self
    }
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
    /// `[height, width]` every image is resized to when the family's input size is fixed
    /// (BLIP-2, MiniGPT-4: 224×224); such families ignore pixel budgets. `None`: the
    /// size follows the image and the pixel budget (Qwen-VL).
    pub fixed_image_size: Option<[usize; 2]>,
    /// Whether [`VisionLanguageModel::locate`] works: the model was trained to answer with
    /// boxes (Qwen2-VL, Qwen2.5-VL, Qwen3-VL; not BLIP-2 or MiniGPT-4).
    pub grounding: bool,
}

/// A vision-language model: describe a photo, answer a question about it, relate several.
///
/// Loaded models are immutable and `Send + Sync`: share one behind an `Arc` across
/// threads; every call keeps its own state.
///
/// ```no_run
/// use vlm_contract::{GenerationOptions, Image, VisionLanguageModel};
///
/// fn caption(model: &dyn VisionLanguageModel) -> vlm_contract::Result<()> {
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
    /// ([`Self::generate_batches`] does so). The first request that fails fails the batch.
    fn prepare_batch(&self, requests: Vec<Request>) -> Result<PreparedBatch> {
        let mut batch = self.prepare_items(requests.into_iter().map(Ok).collect());
        match batch.slots.iter_mut().find_map(Option::take) {
            Some(first_error) => Err(first_error),
            None => Ok(batch),
        }
    }

    /// [`Self::prepare_batch`] that keeps each failure in its place: an item that is an
    /// error, or fails to prepare (an option out of range, a prompt too long), holds its
    /// error and the others form the batch. Run it with [`Self::run_items`].
    fn prepare_items(&self, items: Vec<Result<Request>>) -> PreparedBatch;

    /// Runs a batch from [`Self::prepare_items`] (or [`Self::prepare_batch`]) of this model:
    /// one result per item, in order. When the device run fails, each request of the batch
    /// gets that error.
    fn run_items(&self, batch: PreparedBatch) -> Vec<Result<Generation>>;

    /// Runs a batch from [`Self::prepare_batch`] of this model; the first error fails it.
    fn run_batch(&self, batch: PreparedBatch) -> Result<Vec<Generation>> {
        self.run_items(batch).into_iter().collect()
    }

    /// The image cache's counters since load (all zero with the cache off).
    fn cache_stats(&self) -> CacheStats {
        CacheStats::default()
    }

    /// Runs many requests, `batch_size` per forward pass, and hands each result to
    /// `on_result(index, result)` in input order as its batch finishes, so a library of any
    /// size runs in the memory of two batches.
    ///
    /// `requests` is pulled lazily, one batch ahead, on another thread: the next batch is
    /// read and preprocessed while the device runs the one before. An item that is an
    /// error, or fails to prepare, gets its error in its own slot and the others complete.
    /// A batch whose requests carry a set [`crate::CancelFlag`] ends with
    /// [`Error::Cancelled`] and nothing more is pulled.
    fn generate_each(
        &self,
        requests: &mut (dyn Iterator<Item = Result<Request>> + Send),
        batch_size: usize,
        on_result: &mut dyn FnMut(usize, Result<Generation>),
    ) {
        let batch_size = batch_size.max(1);
        let pull = |requests: &mut (dyn Iterator<Item = Result<Request>> + Send)| {
            let chunk: Vec<_> = (0..batch_size).map_while(|_| requests.next()).collect();
            (!chunk.is_empty()).then(|| self.prepare_items(chunk))
        };
        let mut next = pull(requests);
        let mut index = 0;
        while let Some(batch) = next.take() {
            // One scope per batch: the worker borrows `requests` only while this batch runs.
            let (done, prepared) = std::thread::scope(|scope| {
                let worker = scope.spawn(|| pull(requests));
                let done = self.run_items(batch);
                (done, worker.join())
            });
            let cancelled = done.iter().any(|r| matches!(r, Err(Error::Cancelled)));
            for result in done {
                on_result(index, result);
                index += 1;
            }
            if cancelled {
                return;
            }
            next = match prepared {
                Ok(next) => next,
                Err(_) => {
                    on_result(
                        index,
                        Err(Error::Generation(
                            "preparing a batch panicked; this is a bug in vlm: please report it"
                                .into(),
                        )),
                    );
                    return;
                }
            };
        }
    }

    /// Runs many requests, `batch_size` per forward pass (see [`Self::generate_each`]);
    /// `on_done(n)` is called as each batch finishes with the number of requests done so
    /// far. One result per request, in order: a request that fails holds its error and
    /// the others complete.
    fn generate_batches(
        &self,
        requests: &mut (dyn Iterator<Item = Result<Request>> + Send),
        batch_size: usize,
        on_done: &mut dyn FnMut(usize),
    ) -> Vec<Result<Generation>> {
        let mut out = Vec::new();
        let batch_size = batch_size.max(1);
        self.generate_each(requests, batch_size, &mut |i, result| {
            out.push(result);
            if (i + 1) % batch_size == 0 {
                on_done(i + 1);
            }
        });
        if out.len() % batch_size != 0 {
            on_done(out.len());
        }
        out
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

    /// Finds `what` in a photo ("the cake", "每个人"): one [`crate::Detection`] per
    /// box the model gives, in the photo's own pixels (the model's coordinates mapped
    /// back through its resize). Decoding is constrained to the model's grounding
    /// format, so the answer always parses. [`Error::NotSupported`] for a family without
    /// grounding ([`ModelInfo::grounding`]).
    fn locate(
        &self,
        image: &Image,
        what: &str,
        options: &GenerationOptions,
    ) -> Result<Vec<crate::Detection>> {
        let _ = (image, what, options);
        Err(Error::NotSupported {
            model_type: self.info().model_type,
            what: "locate things in a photo",
            hint: "use a Qwen2-VL, Qwen2.5-VL or Qwen3-VL model",
        })
    }

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

    /// Describes many photos, `batch_size` per forward pass (see [`Self::generate_batches`]):
    /// one result per photo, in order; a photo that failed to load (an `Err` item) or to
    /// preprocess holds its error and the others complete.
    ///
    /// ```no_run
    /// use vlm_contract::{GenerationOptions, Image, VisionLanguageModel};
    ///
    /// fn caption_folder(model: &dyn VisionLanguageModel) -> std::io::Result<()> {
    ///     let paths: Vec<_> = std::fs::read_dir("photos")?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    ///     // Decoded lazily, one batch ahead of the device.
    ///     let mut photos = paths.iter().map(|p| Image::open(p).map_err(Into::into));
    ///     let opts = GenerationOptions::greedy(64);
    ///     let results = model.describe_batch(&mut photos, &opts, 8, &mut |n| eprintln!("{n} done"));
    ///     for (path, result) in paths.iter().zip(results) {
    ///         match result {
    ///             Ok(g) => println!("{}: {}", path.display(), g.text),
    ///             Err(e) => eprintln!("{}: {e}", path.display()),
    ///         }
    ///     }
    ///     Ok(())
    /// }
    /// ```
    fn describe_batch(
        &self,
        images: &mut (dyn Iterator<Item = Result<Image>> + Send),
        options: &GenerationOptions,
        batch_size: usize,
        on_done: &mut dyn FnMut(usize),
    ) -> Vec<Result<Generation>> {
        let mut requests =
            images.map(|image| image.and_then(|image| self.describe_request(&image, options)));
        self.generate_batches(&mut requests, batch_size, on_done)
    }

    /// Answers one question per photo, `batch_size` per forward pass: items are
    /// `(photo, question)` pairs; results as in [`Self::describe_batch`].
    fn ask_batch(
        &self,
        items: &mut (dyn Iterator<Item = Result<(Image, String)>> + Send),
        options: &GenerationOptions,
        batch_size: usize,
        on_done: &mut dyn FnMut(usize),
    ) -> Vec<Result<Generation>> {
        let mut requests = items.map(|item| {
            item.and_then(|(image, question)| self.ask_request(&image, &question, options))
        });
        self.generate_batches(&mut requests, batch_size, on_done)
    }
}

/// Requests whose CPU work is done ([`VisionLanguageModel::prepare_batch`]), waiting for
/// the device ([`VisionLanguageModel::run_batch`] of the same model).
pub struct PreparedBatch {
    /// One per item: `None` where the item is in `inputs`, its error where it failed.
    pub(crate) slots: Vec<Option<Error>>,
    /// The family's prepared inputs (`generate::Prepared<F>`).
    pub(crate) inputs: Box<dyn Any + Send>,
}

impl PreparedBatch {
    /// How many items the batch holds (failed ones included).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the batch holds no item.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

impl std::fmt::Debug for PreparedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedBatch")
            .field("items", &self.slots.len())
            .finish_non_exhaustive()
    }
}
