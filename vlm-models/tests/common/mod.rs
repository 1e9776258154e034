//! Helpers shared by the fixture-driven tests.

use serde_json::Value;
use vlm_core::{Content, Message, Role};

/// HF chat messages (`{"role", "content": str | [{"type": "image"|"text", ...}]}`) as ours.
pub fn messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let role = match m["role"].as_str().unwrap() {
                "system" => Role::System,
                "assistant" => Role::Assistant,
                _ => Role::User,
            };
            let content = match &m["content"] {
                Value::String(s) => vec![Content::Text(s.clone())],
                parts => parts
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| match c["type"].as_str().unwrap() {
                        "image" => Content::Image,
                        _ => Content::Text(c["text"].as_str().unwrap().to_string()),
                    })
                    .collect(),
            };
            Message { role, content }
        })
        .collect()
}
