//! OpenAI chat-completions JSON, in and out, and its mapping onto vlm's [`vlm_core::Request`].

use serde::{Deserialize, Serialize};
use serde_json::Value;
use vlm_core::{Content, FinishReason, Generation, GenerationOptions, Message, Role, Sampling};

use crate::errors::ApiError;

/// `POST /v1/chat/completions`. Fields OpenAI defines that are not listed here are
/// ignored; the ones listed but not implemented answer 400 (see [`ChatRequest::parse`]).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<usize>,
    /// OpenAI's newer name for `max_tokens`.
    pub max_completion_tokens: Option<usize>,
    /// vLLM's extension: end-of-sequence and stop strings are ignored until this many
    /// tokens exist (benchmarks and tests use it to force a length).
    #[serde(default)]
    pub min_tokens: usize,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<u32>,
    pub response_format: Option<Value>,
    pub tools: Option<Value>,
    pub logprobs: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// A string, a list of parts, or null (an assistant turn that only called tools).
    pub content: Option<MessageContent>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Deserialize)]
pub struct ImageUrl {
    pub url: String,
}

/// Server-wide limits a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_tokens: usize,
    pub max_images: usize,
}

/// A request turned into vlm's terms; images are still URLs (loading them is blocking
/// work, see `images::load`).
pub struct Parsed {
    pub messages: Vec<Message>,
    pub image_urls: Vec<String>,
    pub options: GenerationOptions,
    pub stream: bool,
    pub include_usage: bool,
}

impl ChatRequest {
    /// Checks the fields and maps them; every problem is a 400 naming the field.
    pub fn parse(self, limits: RequestLimits) -> Result<Parsed, ApiError> {
        let json_schema = match self.response_format {
            None => None,
            Some(format) => response_format_schema(&format)?,
        };
        if self.tools.is_some() {
            return Err(ApiError::not_supported("tools", "tool calling"));
        }
        if self.logprobs == Some(true) {
            return Err(ApiError::not_supported("logprobs", "logprobs"));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::not_supported("n", "n other than 1"));
        }
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        if let Some(n) = max_tokens {
            if n == 0 || n > limits.max_tokens {
                return Err(ApiError::bad_param(
                    "max_tokens",
                    format!(
                        "max_tokens must be between 1 and {} on this server (--max-tokens-limit); got {n}",
                        limits.max_tokens
                    ),
                ));
            }
        }
        let (messages, image_urls) = messages(self.messages)?;
        if image_urls.len() > limits.max_images {
            return Err(ApiError::bad_param(
                "messages",
                format!(
                    "{} images in one request; this server takes at most {} (--max-images)",
                    image_urls.len(),
                    limits.max_images
                ),
            ));
        }
        let stop_strings = match self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stop_strings.iter().any(String::is_empty) {
            return Err(ApiError::bad_param(
                "stop",
                "stop strings must not be empty",
            ));
        }
        let options = GenerationOptions {
            max_new_tokens: max_tokens,
            min_new_tokens: self.min_tokens,
            sampling: sampling(self.temperature, self.top_p),
            // OpenAI's seed is any integer; the bits are what matter to the sampler.
            seed: self.seed.unwrap_or(0) as u64,
            stop_strings,
            json_schema,
            ..GenerationOptions::default()
        };
        Ok(Parsed {
            messages,
            image_urls,
            options,
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
        })
    }
}

/// `temperature: 0` is greedy (as OpenAI documents it: "more deterministic"); neither
/// field set keeps the model's own default (its generation_config.json). Out-of-range
/// values are refused by the library with a message naming the field.
fn sampling(temperature: Option<f32>, top_p: Option<f32>) -> Option<Sampling> {
    match (temperature, top_p) {
        (None, None) => None,
        (Some(0.0), _) => Some(Sampling::Greedy),
        (t, p) => Some(Sampling::Sample {
            temperature: t.unwrap_or(1.0),
            top_p: p.unwrap_or(1.0),
            top_k: 0,
        }),
    }
}

/// Chat messages in vlm's terms, and the image URLs in the order they appear.
fn messages(input: Vec<ChatMessage>) -> Result<(Vec<Message>, Vec<String>), ApiError> {
    if input.is_empty() {
        return Err(ApiError::bad_param("messages", "messages is empty"));
    }
    let mut messages = Vec::with_capacity(input.len());
    let mut urls = Vec::new();
    for m in input {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::bad_param(
                    "messages",
                    format!("role \"{other}\" is not supported; use system, user or assistant"),
                ))
            }
        };
        let content = match m.content {
            None => vec![],
            Some(MessageContent::Text(t)) => vec![Content::Text(t)],
            Some(MessageContent::Parts(parts)) => parts
                .into_iter()
                .map(|p| match p {
                    Part::Text { text } => Ok(Content::Text(text)),
                    Part::ImageUrl { .. } if role != Role::User => Err(ApiError::bad_param(
                        "messages",
                        "images are taken in user messages only",
                    )),
                    Part::ImageUrl { image_url } => {
                        urls.push(image_url.url);
                        Ok(Content::Image)
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        messages.push(Message { role, content });
    }
    Ok((messages, urls))
}

/// OpenAI's `finish_reason`: a stop string and the model's end are both "stop".
pub fn finish_reason(reason: &FinishReason) -> &'static str {
    match reason.as_str() {
        "length" => "length",
        _ => "stop",
    }
}

/// OpenAI's `response_format` as the JSON Schema that constrains decoding:
/// `{"type": "json_schema", "json_schema": {"schema": {...}}}` gives that schema,
/// `{"type": "json_object"}` any JSON object, `{"type": "text"}` no constraint.
fn response_format_schema(format: &Value) -> Result<Option<Value>, ApiError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(serde_json::json!({"type": "object"}))),
        Some("json_schema") => format
            .get("json_schema")
            .and_then(|j| j.get("schema"))
            .cloned()
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_param(
                    "response_format",
                    "response_format of type json_schema needs json_schema.schema",
                )
            }),
        _ => Err(ApiError::bad_param(
            "response_format",
            "response_format.type must be text, json_object or json_schema",
        )),
    }
}

#[derive(Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn of(g: &Generation) -> Self {
        Usage {
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.token_ids.len(),
            total_tokens: g.prompt_tokens + g.token_ids.len(),
        }
    }
}

/// The non-streaming answer.
pub fn completion(id: &str, created: u64, model: &str, g: &Generation) -> Value {
    serde_json::json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": g.text},
            "finish_reason": finish_reason(&g.finish_reason),
            "logprobs": null,
        }],
        "usage": Usage::of(g),
    })
}

/// One streamed chunk: `delta` is `{"role": ...}` or `{"content": ...}` or `{}`.
pub fn chunk(
    id: &str,
    created: u64,
    model: &str,
    delta: Value,
    finish_reason: Option<&str>,
) -> Value {
    serde_json::json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": null}],
    })
}

/// The last chunk when `stream_options.include_usage` is set: no choices, the usage.
pub fn usage_chunk(id: &str, created: u64, model: &str, g: &Generation) -> Value {
    serde_json::json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": Usage::of(g),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        max_tokens: 100,
        max_images: 2,
    };

    fn parse(json: Value) -> Result<Parsed, ApiError> {
        serde_json::from_value::<ChatRequest>(json)
            .expect("valid request JSON")
            .parse(LIMITS)
    }

    #[test]
    fn parts_become_images_and_text_in_order() {
        let p = parse(serde_json::json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:a"}},
                    {"type": "text", "text": "and"},
                    {"type": "image_url", "image_url": {"url": "data:b", "detail": "high"}},
                ]},
            ],
            "temperature": 0,
            "stop": "###",
            "max_tokens": 7,
        }))
        .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(p.image_urls, ["data:a", "data:b"]);
        assert_eq!(p.messages[0], Message::text(Role::System, "Be brief."));
        assert_eq!(
            p.messages[1].content,
            [Content::Image, Content::Text("and".into()), Content::Image]
        );
        assert_eq!(p.options.sampling, Some(Sampling::Greedy));
        assert_eq!(p.options.max_new_tokens, Some(7));
        assert_eq!(p.options.stop_strings, ["###"]);
    }

    #[test]
    fn unsupported_and_out_of_range_fields_name_the_field() {
        let base = |extra: Value| {
            let mut v = serde_json::json!({"messages": [{"role": "user", "content": "hi"}]});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        for (extra, param) in [
            (
                serde_json::json!({"response_format": {"type": "xml"}}),
                "response_format",
            ),
            (serde_json::json!({"max_tokens": 101}), "max_tokens"),
            (serde_json::json!({"n": 2}), "n"),
            (serde_json::json!({"stop": ["", "x"]}), "stop"),
        ] {
            let err = parse(base(extra)).err().expect("refused");
            assert_eq!(err.param, Some(param), "{}", err.message);
            assert_eq!(err.status, 400);
        }
        let err = parse(serde_json::json!({"messages": [{"role": "tool", "content": "x"}]}))
            .err()
            .expect("refused");
        assert!(err.message.contains("tool"));
    }

    #[test]
    fn sampling_follows_openai() {
        assert_eq!(sampling(None, None), None);
        assert_eq!(sampling(Some(0.0), Some(0.5)), Some(Sampling::Greedy));
        assert_eq!(
            sampling(None, Some(0.5)),
            Some(Sampling::Sample {
                temperature: 1.0,
                top_p: 0.5,
                top_k: 0
            })
        );
    }
}
