//! What goes into `generate` and what comes out.

use std::time::Duration;

use crate::{GenerationOptions, Image};

/// Who speaks a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The person asking.
    User,
    /// The model's earlier answers.
    Assistant,
}

impl Role {
    /// The role's name in chat templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One piece of a chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The next image of [`Request::images`], in order.
    Image,
    /// Text.
    Text(String),
}

/// A chat turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Speaker.
    pub role: Role,
    /// Images and text, in order.
    pub content: Vec<Content>,
}

impl Message {
    /// A user turn with `n_images` images followed by `text`.
    pub fn user_with_images(n_images: usize, text: impl Into<String>) -> Self {
        let mut content = vec![Content::Image; n_images];
        content.push(Content::Text(text.into()));
        Message {
            role: Role::User,
            content,
        }
    }

    /// A text-only turn.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Message {
            role,
            content: vec![Content::Text(text.into())],
        }
    }

    /// How many images this turn refers to.
    pub fn image_count(&self) -> usize {
        self.content
            .iter()
            .filter(|c| matches!(c, Content::Image))
            .count()
    }
}

/// The text side of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// A conversation; the model's chat template turns it into tokens.
    Chat(Vec<Message>),
    /// A prompt already in the model's own format, with the family's image placeholder
    /// (e.g. `<|vision_start|><|image_pad|><|vision_end|>` for Qwen) once per image; the
    /// placeholder is expanded exactly as the reference processor does.
    Raw(String),
}

/// Everything one generation needs.
#[derive(Debug, Clone)]
pub struct Request {
    /// Images, in the order the prompt refers to them.
    pub images: Vec<Image>,
    /// Conversation or raw prompt.
    pub prompt: Prompt,
    /// Length, sampling and stopping.
    pub options: GenerationOptions,
}

impl Request {
    /// A single user turn: the images, then `text`.
    pub fn chat(images: Vec<Image>, text: impl Into<String>, options: GenerationOptions) -> Self {
        let prompt = Prompt::Chat(vec![Message::user_with_images(images.len(), text)]);
        Request {
            images,
            prompt,
            options,
        }
    }

    /// A raw prompt in the model's own format.
    pub fn raw(images: Vec<Image>, prompt: impl Into<String>, options: GenerationOptions) -> Self {
        Request {
            images,
            prompt: Prompt::Raw(prompt.into()),
            options,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// The text reached one of the stop strings (it is cut from the text).
    StopString(String),
    /// `max_new_tokens` was reached.
    Length,
}

impl FinishReason {
    /// The name the Python API, the CLI's `--json` and OpenAI-style servers use: `eos`,
    /// `stop` or `length`.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::StopString(_) => "stop",
            FinishReason::Length => "length",
        }
    }

    /// The stop string that ended generation, for [`FinishReason::StopString`].
    pub fn stop_string(&self) -> Option<&str> {
        match self {
            FinishReason::StopString(s) => Some(s),
            _ => None,
        }
    }
}

/// Where the time of one generation went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct Timings {
    /// On the CPU: the prompt's tokens and the images' preprocessing (resize, normalise,
    /// patchify); the requests of a batch are prepared in parallel.
    pub preprocess: Duration,
    /// The vision tower over the preprocessed images (pixels to the device included).
    pub image_encode: Duration,
    /// The language model over the prompt, up to the first token's logits.
    pub prefill: Duration,
    /// All decode steps after the first token.
    pub decode: Duration,
    /// Tokens produced by the decode steps (excludes the first token, which prefill gives).
    pub decode_steps: usize,
    /// The part of `decode` spent on the host between one step's token ids arriving and the
    /// next step being queued: stop checks, streamed text and its callback, the step's
    /// launch. On CUDA the GPU waits meanwhile (the ids' copy waits for the step), so this
    /// is the decode's idle time that running the host a step ahead could hide.
    pub decode_host: Duration,
    /// This request's images whose vision-tower output was reused from the model's image
    /// cache (or from the same photo earlier in the batch) instead of being encoded.
    pub image_cache_hits: usize,
}

impl Timings {
    /// Decode speed in tokens per second (0 when there were no decode steps).
    pub fn decode_tokens_per_second(&self) -> f64 {
        let s = self.decode.as_secs_f64();
        if self.decode_steps == 0 || s == 0.0 {
            0.0
        } else {
            self.decode_steps as f64 / s
        }
    }

    /// Time to first token: preprocessing, the vision tower and prefill.
    pub fn time_to_first_token(&self) -> Duration {
        self.preprocess + self.image_encode + self.prefill
    }
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Generation {
    /// Decoded text (special tokens skipped, stop string removed).
    pub text: String,
    /// Generated token ids, EOS excluded.
    pub token_ids: Vec<u32>,
    /// Prompt length in tokens after image placeholder expansion.
    pub prompt_tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Time split; in a batch, shared stages are the batch's times.
    pub timings: Timings,
    /// Per-step logits (float32, vocabulary-sized) when `return_logits` was set: entry
    /// 0 is the prompt's last position, entry i the logits after the i-th new token.
    pub logits: Option<Vec<Vec<f32>>>,
    /// One log-probability per id of `token_ids` when `return_logprobs` was set (see
    /// [`crate::GenerationOptions::return_logprobs`]).
    pub token_logprobs: Option<Vec<f32>>,
}

impl Generation {
    /// The mean of [`Self::token_logprobs`]: near 0 when the model was sure of every token,
    /// more negative the less it was. `None` without `return_logprobs` or with no tokens.
    pub fn mean_logprob(&self) -> Option<f32> {
        let lp = self.token_logprobs.as_ref().filter(|lp| !lp.is_empty())?;
        Some(lp.iter().sum::<f32>() / lp.len() as f32)
    }
}
