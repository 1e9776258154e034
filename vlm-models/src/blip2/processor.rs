//! Images and text → BLIP-2 inputs, as transformers' `BlipImageProcessor` and
//! `Blip2Processor` build them: the image resized to 224×224 (bicubic), rescaled and
//! normalised with the CLIP mean/std; the prompt tokenized with the language model's
//! tokenizer (OPT prepends `</s>` as BOS, T5 appends `</s>`), preceded by
//! `num_query_tokens` `<image>` ids whose embeddings the Q-Former output replaces.
//!
//! BLIP-2 has no chat template. A conversation becomes the prompt format BLIP-2 was
//! evaluated with: each user turn `Question: {text} Answer:`, each assistant turn its
//! text, joined by spaces; a user turn with an image and no text is plain captioning
//! (an empty prompt).

use crate::image_cache::{Features, ImageCache, ImageKey};
use serde::Deserialize;
use tokenizers::Tokenizer;
use vlm_contract::files::ModelDir;
use vlm_contract::{Content, Error, Image, Prompt, Request, Result, Role};

use crate::preprocess::resize::PillowVersion;
use crate::preprocess::{Normalize, ResizeBackend, PIL_BICUBIC, PIL_BILINEAR};

#[derive(Deserialize)]
struct Size {
    height: usize,
    width: usize,
}

/// preprocessor_config.json (`BlipImageProcessor`).
#[derive(Deserialize)]
struct PreprocessorConfig {
    size: Size,
    image_mean: [f32; 3],
    image_std: [f32; 3],
    #[serde(default = "default_rescale")]
    rescale_factor: f64,
    #[serde(default)]
    resample: Option<u32>,
    #[serde(default)]
    image_processor_type: Option<String>,
}

fn default_rescale() -> f64 {
    1.0 / 255.0
}

/// processor_config.json.
#[derive(Deserialize, Default)]
struct ProcessorConfig {
    #[serde(default)]
    num_query_tokens: Option<usize>,
}

/// One request, ready for the model.
#[derive(Debug, Clone)]
pub struct Blip2Inputs {
    /// What the language model reads (encoder input for T5): `num_query_tokens` image
    /// slots first when there is an image, then the tokenized prompt.
    pub input_ids: Vec<u32>,
    /// Leading positions of `input_ids` that take the image embeddings (0 or
    /// `num_query_tokens`).
    pub image_slots: usize,
    /// The image as `[3, height, width]` planes, when there is one and its encoding was
    /// not found in the image cache.
    pub pixel_values: Option<Vec<f32>>,
    /// The image's encoding from the model's image cache (preprocessing was skipped).
    pub cached: Option<Features>,
    /// The image's cache key (`None` with the cache off or without an image).
    pub key: Option<ImageKey>,
    /// The prompt text after the image.
    pub prompt: String,
}

/// Tokenizer and image preprocessing of a BLIP-2 checkpoint.
pub struct Blip2Processor {
    tokenizer: Tokenizer,
    normalize: Normalize,
    height: usize,
    width: usize,
    num_query_tokens: usize,
    /// The id of `<image>` (slots get it in `input_ids`); the pad id for checkpoints
    /// from before transformers added the token.
    slot_id: u32,
}

impl Blip2Processor {
    /// The processor of a model folder.
    pub fn from_model_dir(
        dir: &ModelDir,
        num_query_tokens: usize,
        image_token_id: Option<u32>,
    ) -> Result<Self> {
        let pre: PreprocessorConfig = dir.read_json(
            "preprocessor_config.json",
            "preprocessor_config.json holds the image settings",
        )?;
        if let Some(r) = pre.resample {
            if r != PIL_BICUBIC && r != PIL_BILINEAR {
                return Err(Error::bad_file(
                    dir.path("preprocessor_config.json"),
                    format!("resample {r} is not supported (bicubic = 3, bilinear = 2)"),
                ));
            }
        }
        let proc: ProcessorConfig = if dir.path("processor_config.json").is_file() {
            dir.read_json("processor_config.json", "processor_config.json")?
        } else {
            ProcessorConfig::default()
        };
        if let Some(n) = proc.num_query_tokens {
            if n != num_query_tokens {
                return Err(Error::bad_file(
                    dir.path("processor_config.json"),
                    format!("num_query_tokens {n} differs from config.json's {num_query_tokens}"),
                ));
            }
        }
        let tokenizer = dir.tokenizer()?;
        let slot_id = image_token_id
            .or_else(|| tokenizer.token_to_id("<image>"))
            .unwrap_or(0);
        Ok(Self {
            tokenizer,
            normalize: Normalize {
                backend: ResizeBackend::from_processor_type(pre.image_processor_type.as_deref()),
                // transformers 5's PIL backends run with current Pillow (13).
                pillow: PillowVersion::From13,
                bilinear: pre.resample == Some(PIL_BILINEAR),
                rescale_factor: pre.rescale_factor,
                mean: pre.image_mean,
                std: pre.image_std,
            },
            height: pre.size.height,
            width: pre.size.width,
            num_query_tokens,
            slot_id,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// `[3, height, width]` planes of one image.
    pub fn preprocess(&self, image: &Image) -> Vec<f32> {
        self.normalize.planes(image, self.width, self.height)
    }

    /// The (height, width) images are resized to.
    pub fn image_size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// The prompt text of a request (see the module docs for conversations).
    pub fn prompt_text(request: &Request) -> Result<String> {
        match &request.prompt {
            Prompt::Raw(text) => Ok(text.clone()),
            Prompt::Chat(messages) => {
                let mut parts = Vec::new();
                for m in messages {
                    let text: String = m
                        .content
                        .iter()
                        .filter_map(|c| match c {
                            Content::Text(t) => Some(t.as_str()),
                            Content::Image => None,
                        })
                        .collect::<Vec<_>>()
                        .join(" ");
                    let text = text.trim();
                    match m.role {
                        Role::User if text.is_empty() => {}
                        Role::User => parts.push(format!("Question: {text} Answer:")),
                        Role::System | Role::Assistant if !text.is_empty() => {
                            parts.push(text.to_string())
                        }
                        _ => {}
                    }
                }
                Ok(parts.join(" "))
            }
        }
    }

    /// Tokenizes a request and preprocesses its image (BLIP-2 takes at most one).
    pub fn process(&self, request: &Request) -> Result<Blip2Inputs> {
        self.process_with(request, None)
    }

    /// [`Self::process`]; an image whose encoding `cache` holds is not preprocessed.
    pub fn process_with(
        &self,
        request: &Request,
        cache: Option<&ImageCache>,
    ) -> Result<Blip2Inputs> {
        if request.images.len() > 1 {
            return Err(Error::TooManyImages {
                given: request.images.len(),
                max: 1,
            });
        }
        if let Prompt::Chat(messages) = &request.prompt {
            let placeholders: usize = messages.iter().map(|m| m.image_count()).sum();
            if placeholders != request.images.len() {
                return Err(Error::PlaceholderMismatch {
                    placeholders,
                    images: request.images.len(),
                    placeholder: "Content::Image".into(),
                });
            }
        }
        let prompt = Self::prompt_text(request)?;
        if prompt.is_empty() && request.images.is_empty() {
            return Err(Error::EmptyQuestion);
        }
        let encoding = self
            .tokenizer
            .encode(prompt.as_str(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let (h, w) = self.image_size();
        let key = cache
            .zip(request.images.first())
            .map(|(_, img)| ImageKey::new(img, [h, w]));
        let cached = cache.zip(key.as_ref()).and_then(|(c, k)| c.get(k));
        let pixel_values = match cached {
            Some(_) => None,
            None => request.images.first().map(|img| self.preprocess(img)),
        };
        let image_slots = if !request.images.is_empty() {
            self.num_query_tokens
        } else {
            0
        };
        let mut input_ids = vec![self.slot_id; image_slots];
        input_ids.extend_from_slice(encoding.get_ids());
        Ok(Blip2Inputs {
            input_ids,
            image_slots,
            pixel_values,
            cached,
            key,
            prompt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vlm_contract::{GenerationOptions, Message};

    #[test]
    fn conversations_become_question_answer_prompts() {
        let opts = GenerationOptions::default();
        let caption = Request::chat(vec![], "", opts.clone());
        assert_eq!(Blip2Processor::prompt_text(&caption).unwrap(), "");
        let ask = Request::chat(vec![], "what is this?", opts.clone());
        assert_eq!(
            Blip2Processor::prompt_text(&ask).unwrap(),
            "Question: what is this? Answer:"
        );
        let multi = Request {
            images: vec![],
            prompt: Prompt::Chat(vec![
                Message::user_with_images(0, "how many dogs?"),
                Message::text(Role::Assistant, "two."),
                Message::text(Role::User, "what color?"),
            ]),
            options: opts,
        };
        assert_eq!(
            Blip2Processor::prompt_text(&multi).unwrap(),
            "Question: how many dogs? Answer: two. Question: what color? Answer:"
        );
    }
}
