//! Every call the album makes into vlm lives here, so another model or another library
//! version touches this file only.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use vlm_core::{
    Generation, GenerationOptions, Image, Language, Quantization, Request, VisionLanguageModel,
};

use crate::db::{Output, Setting};

/// Bumped whenever a prompt below changes: results made with other wording are then
/// missing for the new setting and get made again, instead of mixing with the old.
const PROMPTS_VERSION: u32 = 1;

const TAGS_PROMPT_EN: &str = "List 3-8 short tags for this photo, comma-separated.";
const TEXT_PROMPT_EN: &str =
    "Transcribe any text visible in the photo; answer NONE if there is none.";
const TAGS_PROMPT_ZH: &str = "为这张照片列出3到8个简短的标签，用逗号分隔。";
const TEXT_PROMPT_ZH: &str = "转写照片中可见的文字；如果没有文字，回答“无”。";
/// Room for the encodings of a few batches of photos (each read three times).
const IMAGE_CACHE_BYTES: u64 = 512 << 20;
/// Most tags kept per photo, matching the 3-8 the prompt asks for.
const MAX_TAGS: usize = 8;

/// How the album runs the model; everything here except `batch_size` is part of a
/// result's key.
#[derive(Debug, Clone)]
pub struct CaptionOptions {
    pub model: String,
    pub quant: Quantization,
    pub languages: Vec<Language>,
    /// Pixel budget per photo for Qwen models (`None`: the model's own default).
    pub max_pixels: Option<usize>,
    pub max_new_tokens: usize,
    pub batch_size: usize,
}

impl CaptionOptions {
    /// A local folder is keyed by its absolute path, so `./m` and `/home/me/m` are one
    /// model; hub ids are kept as given.
    pub fn model_id(&self) -> String {
        let path = Path::new(&self.model);
        match path.is_dir().then(|| path.canonicalize()) {
            Some(Ok(p)) => p.display().to_string(),
            _ => self.model.clone(),
        }
    }

    pub fn setting(&self, language: Language) -> Setting {
        Setting {
            model: self.model_id(),
            quant: self.quant.as_str().to_string(),
            language: language_code(language).to_string(),
            options: serde_json::json!({
                "max_new_tokens": self.max_new_tokens,
                "max_pixels": self.max_pixels,
                "prompts": PROMPTS_VERSION,
            })
            .to_string(),
        }
    }

    fn generation_options(&self, language: Language) -> GenerationOptions {
        GenerationOptions {
            language,
            ..GenerationOptions::greedy(self.max_new_tokens)
        }
    }
}

pub fn language_code(language: Language) -> &'static str {
    match language {
        Language::Chinese => "zh",
        _ => "en",
    }
}

/// One generation's answer and its share of the batch's wall time in seconds.
type Answer = (Generation, f64);

/// One photo to describe in one language.
pub struct Job<'a> {
    pub image: &'a Image,
    pub language: Language,
}

pub struct Captioner {
    model: Box<dyn VisionLanguageModel>,
    options: CaptionOptions,
    /// Generation requests sent to the model so far (retries included).
    pub calls: usize,
}

impl Captioner {
    pub fn load(options: &CaptionOptions) -> Result<Self> {
        let load = vlm_core::LoadOptions {
            quantization: options.quant,
            max_pixels: options.max_pixels,
            // Caption, tags and text are three calls about one photo: with the cache, the
            // vision tower encodes it once (a phone photo's encoding is a few MB).
            image_cache_bytes: IMAGE_CACHE_BYTES,
            runtime: vlm_core::RuntimeOptions::from_env(),
            ..Default::default()
        };
        let model = vlm_core::load(&options.model, &load)
            .with_context(|| format!("loading the model {}", options.model))?;
        Ok(Self {
            model,
            options: options.clone(),
            calls: 0,
        })
    }

    /// Captions, tags and reads each job's photo. A failure is the job's alone: the
    /// library's batch path keeps each request's error in its own slot.
    pub fn run(&mut self, jobs: &[Job]) -> Vec<Result<Output, String>> {
        // Three requests per job, in order: caption, tags, visible text. `owner[i]` is the
        // job of `requests[i]`.
        let (mut requests, mut owner) = (Vec::new(), Vec::new());
        let mut outcomes: Vec<Result<Vec<Answer>, String>> =
            jobs.iter().map(|_| Ok(Vec::new())).collect();
        for (j, job) in jobs.iter().enumerate() {
            match self.requests(job) {
                Ok(rs) => {
                    owner.extend(std::iter::repeat_n(j, rs.len()));
                    requests.extend(rs);
                }
                Err(e) => outcomes[j] = Err(format!("{e:#}")),
            }
        }
        let size = self.options.batch_size.max(1);
        self.calls += requests.len();
        let started = Instant::now();
        let mut last = (0, 0.0);
        let mut finished_at = Vec::with_capacity(requests.len());
        let results =
            self.model
                .generate_batches(&mut requests.into_iter().map(Ok), size, &mut |done| {
                    // Each request's share of its batch's wall time.
                    let now = started.elapsed().as_secs_f64();
                    let share = (now - last.1) / (done - last.0).max(1) as f64;
                    finished_at.extend(std::iter::repeat_n(share, done - last.0));
                    last = (done, now);
                });
        for ((&j, result), share) in owner.iter().zip(results).zip(finished_at) {
            if let Ok(parts) = &mut outcomes[j] {
                match result {
                    Ok(g) => parts.push((g, share)),
                    Err(e) => outcomes[j] = Err(format!("the model failed on this photo: {e}")),
                }
            }
        }
        outcomes.into_iter().map(|o| o.and_then(output)).collect()
    }

    fn requests(&self, job: &Job) -> Result<Vec<Request>> {
        let opts = self.options.generation_options(job.language);
        let (tags, text) = match job.language {
            Language::Chinese => (TAGS_PROMPT_ZH, TEXT_PROMPT_ZH),
            _ => (TAGS_PROMPT_EN, TEXT_PROMPT_EN),
        };
        Ok(vec![
            self.model.describe_request(job.image, &opts)?,
            self.model.ask_request(job.image, tags, &opts)?,
            self.model.ask_request(job.image, text, &opts)?,
        ])
    }

    /// A story of several photos (one trip), in `language`.
    pub fn story(&mut self, images: &[Image], language: Language) -> Result<String> {
        self.calls += 1;
        let text = self
            .model
            .relate(images, None, &self.options.generation_options(language))
            .context("telling the story of the trip")?;
        Ok(text.trim().to_string())
    }
}

fn output(parts: Vec<Answer>) -> Result<Output, String> {
    let Ok([caption, tags, text]) = <[Answer; 3]>::try_from(parts) else {
        return Err("the model gave no answer for part of this photo".into());
    };
    let timing = |g: &Generation| {
        let t = &g.timings;
        serde_json::json!({
            "preprocess_ms": t.preprocess.as_secs_f64() * 1e3,
            "image_encode_ms": t.image_encode.as_secs_f64() * 1e3,
            "prefill_ms": t.prefill.as_secs_f64() * 1e3,
            "decode_ms": t.decode.as_secs_f64() * 1e3,
            "new_tokens": g.token_ids.len(),
            "image_cache_hits": t.image_cache_hits,
        })
    };
    Ok(Output {
        caption: caption.0.text.trim().to_string(),
        tags: parse_tags(&tags.0.text),
        photo_text: parse_photo_text(&text.0.text),
        seconds: caption.1 + tags.1 + text.1,
        timings: serde_json::json!({
            "caption": timing(&caption.0),
            "tags": timing(&tags.0),
            "text": timing(&text.0),
        }),
    })
}

/// Models separate tags with ASCII commas, full-width commas (，) or enumeration commas (、),
/// and sometimes put each on its own line.
pub fn parse_tags(answer: &str) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for tag in answer.split([',', '\u{ff0c}', '、', ';', '\u{ff1b}', '\n']) {
        let tag = tag
            .trim()
            .trim_start_matches(['-', '*', '#'])
            .trim_end_matches(['.', '。'])
            .trim();
        if !tag.is_empty() && !tags.iter().any(|t| t == tag) {
            tags.push(tag.to_string());
        }
    }
    tags.truncate(MAX_TAGS);
    tags
}

/// "NONE" (or 无) means the photo has no text; we store that as empty.
pub fn parse_photo_text(answer: &str) -> String {
    let text = answer.trim();
    let bare = text.trim_end_matches(['.', '。']).trim();
    if bare.eq_ignore_ascii_case("none") || bare == "无" || bare == "没有" {
        String::new()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_on_every_comma() {
        assert_eq!(parse_tags("beach, sunset,sea."), ["beach", "sunset", "sea"]);
        assert_eq!(parse_tags("海滩、日落，大海"), ["海滩", "日落", "大海"]);
        assert_eq!(parse_tags("- a\n- b\n- a"), ["a", "b"]);
        assert_eq!(parse_tags("1,2,3,4,5,6,7,8,9,10").len(), MAX_TAGS);
    }

    #[test]
    fn none_means_no_text() {
        assert_eq!(parse_photo_text(" NONE. "), "");
        assert_eq!(parse_photo_text("无。"), "");
        assert_eq!(parse_photo_text("EXIT 12"), "EXIT 12");
    }
}
