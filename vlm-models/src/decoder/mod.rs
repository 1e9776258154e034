//! The LLaMA / Qwen-style decoder every decoder-only family shares: pre-norm layers of
//! GQA self-attention (optional q/k/v biases, Qwen3's q/k norms) and a gated MLP, plain
//! RoPE or M-RoPE, a preallocated per-request KV cache, and a decode step through the
//! fused CUDA kernels replayed as a CUDA graph.
//!
//! A family builds a [`DecoderConfig`] from its config.json ([`DecoderConfig::from_llama`],
//! [`DecoderConfig::from_qwen`]) and loads a [`Decoder`] from its weights. A LLaMA-family
//! prompt (text segments with image rows between them) is laid out by [`SegmentLayout`]
//! and run by [`Decoder::prefill_segments`]; Qwen's M-RoPE prompts compute their own
//! tables and call [`Decoder::forward_hidden`]. Every family then steps with
//! [`Decoder::decode_step`], its `Family::State` being [`DecoderState`].

mod attention;
mod config;
mod decode_step;
mod kv_cache;
mod layer;
mod mlp;
mod model;
mod prompt;
pub(crate) mod rope;
mod run_ahead;
mod state;
mod step_kits;

pub(crate) use config::{DecoderConfig, LlamaConfig};
pub(crate) use kv_cache::LayerKvCache;
pub(crate) use model::{Decoder, DeepStack};
pub(crate) use prompt::SegmentLayout;
pub(crate) use rope::inv_freq;
pub use state::DecoderState;
