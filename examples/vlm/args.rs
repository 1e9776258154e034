//! Command-line arguments of `vlm`.

use clap::{Args, Parser, Subcommand};
use vlm_core::model::LoadOptions;
use vlm_core::{DTypeChoice, DeviceChoice, GenerationOptions, Language, Quantization, Sampling};

/// Describe, ask about and relate photos with vision-language models: Qwen2-VL, Qwen2.5-VL,
/// Qwen3-VL, BLIP-2 (OPT, Flan-T5) and MiniGPT-4, on the CPU or a CUDA GPU.
#[derive(Parser)]
#[command(name = "vlm", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Describe one photo.
    Describe {
        #[command(flatten)]
        common: Common,
    },
    /// Answer a question about one photo (the prompt language follows the question).
    Ask {
        #[command(flatten)]
        common: Common,
        /// The question.
        question: String,
    },
    /// Relate several photos, e.g. tell the story of one trip.
    Relate {
        #[command(flatten)]
        common: Common,
        /// What to do with the photos (default: tell the story they share).
        instruction: Option<String>,
    },
    /// Find a thing in one photo: boxes in the photo's pixels (Qwen-VL models).
    Locate {
        #[command(flatten)]
        common: Common,
        /// What to find, e.g. "the cake".
        what: String,
        /// Also write the photo with the boxes drawn and numbered to this PNG/JPEG file.
        #[arg(long, value_name = "FILE")]
        draw: Option<std::path::PathBuf>,
    },
    /// Run a raw prompt in the model's own format (image placeholders expanded as the reference does).
    Generate {
        #[command(flatten)]
        common: Common,
        /// The prompt, e.g. "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n".
        #[arg(long)]
        raw_prompt: String,
    },
    /// Merge a MiniGPT-4 folder's released .pth files (eva_vit_g.pth, the BLIP-2 Q-Former
    /// checkpoint, pretrained_minigpt4*.pth) into one safetensors file.
    ConvertMinigpt4 {
        /// The MiniGPT-4 folder (with its config.json).
        #[arg(long, short = 'm')]
        model: std::path::PathBuf,
        /// Output file (default: minigpt4.safetensors in the folder).
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
    /// Quantize a model once into a folder that loads without quantizing again.
    Quantize {
        /// Model folder or hub id (any family `describe` takes).
        #[arg(long, short = 'm')]
        model: String,
        /// Hub revision (branch, tag or commit) when --model is a hub id (default: main).
        #[arg(long)]
        revision: Option<String>,
        /// The quantized folder to write.
        #[arg(long)]
        output: std::path::PathBuf,
        /// int8 or int4.
        #[arg(long, default_value = "int4")]
        quant: String,
        /// The vision tower's quantization (default: int8).
        #[arg(long)]
        vision_quant: Option<String>,
        /// Precision of the tensors that stay in float (f32, f16, bf16).
        #[arg(long, default_value = "f16")]
        dtype: String,
        /// Log each step and its time to stderr.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Compare models on your photos: load time, latency, throughput, GPU memory, cost,
    /// quality against references, and the outputs side by side (report.md/.html/.json).
    Compare(crate::compare::CompareArgs),
    /// List the devices this build can run on (the CPU and every visible CUDA GPU), with memory.
    Devices {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

impl Command {
    /// The options shared by the generating commands (None for conversions).
    pub fn common(&self) -> Option<&Common> {
        match self {
            Command::Describe { common }
            | Command::Ask { common, .. }
            | Command::Relate { common, .. }
            | Command::Locate { common, .. }
            | Command::Generate { common, .. } => Some(common),
            Command::ConvertMinigpt4 { .. }
            | Command::Quantize { .. }
            | Command::Compare(_)
            | Command::Devices { .. } => None,
        }
    }
}

#[derive(Args)]
pub struct Common {
    /// Model folder (HF format; also a quantized folder from `vlm quantize`) or hub id:
    /// Qwen2-VL, Qwen2.5-VL, Qwen3-VL (e.g. Qwen/Qwen2.5-VL-3B-Instruct), BLIP-2
    /// (e.g. Salesforce/blip2-opt-2.7b) or a MiniGPT-4 folder.
    #[arg(long, short = 'm')]
    pub model: String,
    /// Hub revision (branch, tag or commit) when --model is a hub id (default: main).
    #[arg(long)]
    pub revision: Option<String>,
    /// Photo(s); repeat for several.
    #[arg(long)]
    pub image: Vec<std::path::PathBuf>,
    #[command(flatten)]
    pub model_args: ModelArgs,
    /// Keep this many MB of image encodings to reuse for the same photo (0: off).
    #[arg(long, default_value_t = 0)]
    pub image_cache_mb: u64,
    /// Most tokens to generate (default: the model's generation_config.json, else 512).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Ignore end-of-sequence until this many tokens exist.
    #[arg(long, default_value_t = 0)]
    pub min_new_tokens: usize,
    /// Always pick the most likely token.
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "top_k"])]
    pub greedy: bool,
    /// Sample at this temperature (with --top-p / --top-k).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Sample only from the smallest set of tokens whose probability adds up to this.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Sample only from this many most likely tokens (0: all).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// HF-style repetition penalty (1.0 = off).
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Seed of the sampler (same seed, same options: same text).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the text ends with this; repeatable.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Prompt language of describe/relate: auto, en or zh.
    #[arg(long, default_value = "auto")]
    pub language: String,
    /// Constrain the answer to JSON that validates against the JSON Schema in this file
    /// (docs/structured-output.md).
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<std::path::PathBuf>,
    /// Print one JSON object instead of streaming text: text, token_ids, prompt_tokens,
    /// finish_reason ("eos", "length", "stop"), timings in seconds, model, family, device,
    /// dtype, quantization and load_time (the Python API's names).
    #[arg(long)]
    pub json: bool,
    /// Print the answer at the end instead of streaming it.
    #[arg(long)]
    pub no_stream: bool,
    /// Print token counts and timings to stderr, and log each load step and its time.
    #[arg(long, short)]
    pub verbose: bool,
}

impl Common {
    pub fn load_options(&self) -> vlm_core::Result<LoadOptions> {
        Ok(LoadOptions {
            revision: self.revision.clone(),
            image_cache_bytes: self.image_cache_mb << 20,
            ..self.model_args.load_options()?
        })
    }

    pub fn generation_options(&self) -> vlm_core::Result<GenerationOptions> {
        let sampling = if self.greedy {
            Some(Sampling::Greedy)
        } else if self.temperature.is_some() || self.top_p.is_some() || self.top_k.is_some() {
            Some(Sampling::Sample {
                temperature: self.temperature.unwrap_or(1.0),
                top_p: self.top_p.unwrap_or(1.0),
                top_k: self.top_k.unwrap_or(0),
            })
        } else {
            None
        };
        Ok(GenerationOptions {
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            sampling,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            stop_strings: self.stop.clone(),
            language: Language::parse(&self.language)?,
            json_schema: self.json_schema.as_deref().map(read_schema).transpose()?,
            ..GenerationOptions::default()
        })
    }
}

fn read_schema(path: &std::path::Path) -> vlm_core::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vlm_core::Error::invalid_option(
            "json-schema",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    serde_json::from_str(&text).map_err(|e| {
        vlm_core::Error::invalid_option(
            "json-schema",
            format!("{} is not JSON: {e}", path.display()),
        )
    })
}

/// How each model is loaded: device, precision, quantization, pixel budget. Shared by the
/// generating commands and `compare`.
#[derive(Args)]
pub struct ModelArgs {
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// auto, f32, f16 or bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// none, int8 or int4 (the language model's linear layers; see docs/quantization.md).
    #[arg(long, default_value = "none")]
    pub quant: String,
    /// The vision tower's quantization (default: int8 when --quant is int8 or int4).
    #[arg(long)]
    pub vision_quant: Option<String>,
    /// Largest image area in pixels (Qwen-VL's max_pixels; default: the checkpoint's).
    /// A 12 MP phone photo is ~15,500 image tokens by default; 1003520 (1280 tokens)
    /// is the album budget docs/models.md recommends. BLIP-2 and MiniGPT-4 take 224×224.
    #[arg(long)]
    pub max_pixels: Option<usize>,
    /// Smallest image area in pixels (Qwen-VL's min_pixels; default: the checkpoint's).
    #[arg(long)]
    pub min_pixels: Option<usize>,
}

impl ModelArgs {
    pub fn load_options(&self) -> vlm_core::Result<LoadOptions> {
        Ok(LoadOptions {
            device: DeviceChoice::parse(&self.device)?,
            dtype: DTypeChoice::parse(&self.dtype)?,
            quantization: Quantization::parse(&self.quant)?,
            vision_quantization: self
                .vision_quant
                .as_deref()
                .map(Quantization::parse)
                .transpose()?,
            min_pixels: self.min_pixels,
            max_pixels: self.max_pixels,
            // The GPU switches of the README (VLM_CUDA_GRAPH=0 …), read here, not by the
            // library.
            runtime: vlm_core::RuntimeOptions::from_env(),
            ..LoadOptions::default()
        })
    }
}
