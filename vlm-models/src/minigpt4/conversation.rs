//! MiniGPT-4's conversation formats and prompt embedding rules, as its demo builds them
//! (minigpt4/conversation/conversation.py: `Conversation.get_prompt` with
//! `SeparatorStyle.SINGLE`, `Chat.upload_img` / `Chat.ask` / `Chat.answer`;
//! minigpt4/models/minigpt_base.py: `get_context_emb`).
//!
//! The prompt text holds `<ImageHere>` once per image. It is split there; each text
//! segment is tokenized on its own (so each gets SentencePiece's leading-space marker),
//! BOS only on the first, and the image embeddings go between the segments.

use vlm_contract::{Content, Error, Prompt, Request, Result, Role};

use super::config::Variant;

/// Where an image's embeddings go in a prompt.
pub const IMAGE_HERE: &str = "<ImageHere>";
/// What `Chat.upload_img` adds as a user message.
pub const IMAGE_MESSAGE: &str = "<Img><ImageHere></Img>";

/// One of the reference's `Conversation` templates (single-separator style).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conversation {
    /// Text before the first turn.
    pub system: &'static str,
    /// Prefixes of the user's and the assistant's turns.
    pub roles: (&'static str, &'static str),
    /// Text after every finished turn (and after the system text).
    pub sep: &'static str,
}

const SYSTEM: &str = "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to you. Please answer my questions.";

/// `CONV_VISION_Vicuna0`.
pub const VICUNA0: Conversation = Conversation {
    system: SYSTEM,
    roles: ("Human: ", "Assistant: "),
    sep: "###",
};

/// `CONV_VISION_LLama2`.
pub const LLAMA2: Conversation = Conversation {
    system: SYSTEM,
    roles: ("<s>[INST] ", " [/INST] "),
    sep: "",
};

impl Conversation {
    /// The template of a variant.
    pub fn of(variant: Variant) -> Self {
        match variant {
            Variant::Vicuna0 => VICUNA0,
            Variant::Llama2 => LLAMA2,
        }
    }

    /// `get_prompt()` of a conversation whose last turn is the assistant's, still open.
    fn render(&self, system: &str, turns: &[(bool, String)]) -> String {
        let mut out = format!("{system}{}", self.sep);
        for (user, text) in turns {
            let role = if *user { self.roles.0 } else { self.roles.1 };
            out.push_str(role);
            out.push_str(text);
            out.push_str(self.sep);
        }
        out.push_str(self.roles.1);
        out
    }

    /// The prompt text of a request, with `<ImageHere>` once per image. Chat messages are
    /// replayed through the demo's steps: each image is `upload_img` (a user turn
    /// `<Img><ImageHere></Img>`), each text `ask` (appended to the previous user turn
    /// when that turn ends with an image, else a new turn); a system message replaces
    /// the template's system text. Raw prompts are used as they are.
    pub fn prompt(&self, request: &Request) -> Result<String> {
        let text = match &request.prompt {
            Prompt::Raw(text) => text.clone(),
            Prompt::Chat(messages) => {
                let mut system = self.system.to_string();
                let mut turns: Vec<(bool, String)> = Vec::new();
                for m in messages {
                    match m.role {
                        Role::System => {
                            system = m
                                .content
                                .iter()
                                .filter_map(|c| match c {
                                    Content::Text(t) => Some(t.as_str()),
                                    Content::Image => None,
                                })
                                .collect();
                        }
                        Role::Assistant => {
                            let text: String = m
                                .content
                                .iter()
                                .filter_map(|c| match c {
                                    Content::Text(t) => Some(t.as_str()),
                                    Content::Image => None,
                                })
                                .collect();
                            turns.push((false, text));
                        }
                        Role::User => {
                            for c in &m.content {
                                match c {
                                    Content::Image => turns.push((true, IMAGE_MESSAGE.into())),
                                    Content::Text(t) if t.is_empty() => {}
                                    Content::Text(t) => match turns.last_mut() {
                                        Some((true, last)) if last.ends_with("</Img>") => {
                                            last.push(' ');
                                            last.push_str(t);
                                        }
                                        _ => turns.push((true, t.clone())),
                                    },
                                }
                            }
                        }
                    }
                }
                self.render(&system, &turns)
            }
        };
        let placeholders = text.matches(IMAGE_HERE).count();
        if placeholders != request.images.len() {
            return Err(Error::PlaceholderMismatch {
                placeholders,
                images: request.images.len(),
                placeholder: IMAGE_HERE.into(),
            });
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vlm_contract::{GenerationOptions, Image};

    fn image() -> Image {
        Image::from_rgb(2, 2, vec![0; 12]).unwrap()
    }

    #[test]
    fn describe_builds_the_demo_prompt() {
        let req = Request::chat(
            vec![image()],
            "Describe this image in detail.",
            GenerationOptions::default(),
        );
        assert_eq!(
            VICUNA0.prompt(&req).unwrap(),
            format!("{SYSTEM}###Human: <Img><ImageHere></Img> Describe this image in detail.###Assistant: ")
        );
        assert_eq!(
            LLAMA2.prompt(&req).unwrap(),
            format!(
                "{SYSTEM}<s>[INST] <Img><ImageHere></Img> Describe this image in detail. [/INST] "
            )
        );
    }

    #[test]
    fn several_images_are_uploaded_in_turn() {
        let req = Request::chat(
            vec![image(), image()],
            "Tell their story.",
            GenerationOptions::default(),
        );
        assert_eq!(
            VICUNA0.prompt(&req).unwrap(),
            format!("{SYSTEM}###Human: <Img><ImageHere></Img>###Human: <Img><ImageHere></Img> Tell their story.###Assistant: ")
        );
    }

    #[test]
    fn raw_prompts_need_one_placeholder_per_image() {
        let raw = Request::raw(
            vec![],
            "###Human: <Img><ImageHere></Img> hi ###Assistant: ",
            GenerationOptions::default(),
        );
        assert!(matches!(
            VICUNA0.prompt(&raw),
            Err(Error::PlaceholderMismatch { .. })
        ));
    }
}
