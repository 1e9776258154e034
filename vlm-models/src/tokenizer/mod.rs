//! Text side of the input: the model's chat template, and SentencePiece `.model` files
//! read as a [`tokenizers::Tokenizer`] for checkpoints that ship no tokenizer.json.

pub mod chat_template;
pub mod sentencepiece;

pub use chat_template::ChatTemplate;
pub use sentencepiece::{sentencepiece_tokenizer, SentencePieceModel};
