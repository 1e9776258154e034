//! Images and text → model inputs, exactly as transformers' `Qwen2VLImageProcessor` and
//! the Qwen-VL processors do it: smart_resize, bicubic resampling, rescale and normalise,
//! patches in merge-block order with each image used as two frames, and `<|image_pad|>`
//! repeated once per merged token.
//!
//! transformers 5 has two backends that disagree by one grey level on ~0.2% of resized
//! pixels: the default torchvision one (`Qwen2VLImageProcessor`, uint8 fixed point with
//! 14-17 bit weights) and the PIL one (`Qwen2VLImageProcessorPil`, 22-bit weights). We
//! reproduce whichever the checkpoint's preprocessor_config.json names, byte for byte.

use crate::preprocess::parallel::for_row_chunks;
use crate::tokenizer::ChatTemplate;
use serde::Deserialize;
use tokenizers::Tokenizer;
use vlm_contract::files::ModelDir;
use vlm_contract::{Content, Error, Image, Prompt, Request, Result};

use crate::image_cache::{Features, ImageCache, ImageKey};

/// transformers' Qwen2-VL defaults: at least 56×56 and at most 28·28·1280 pixels.
const DEFAULT_MIN_PIXELS: usize = 56 * 56;
const DEFAULT_MAX_PIXELS: usize = 28 * 28 * 1280;
/// smart_resize refuses images more elongated than this.
const MAX_ASPECT_RATIO: f64 = 200.0;
use crate::preprocess::resize::PillowVersion;
pub use crate::preprocess::ResizeBackend;
use crate::preprocess::{Normalize, PIL_BICUBIC, PIL_BILINEAR};

/// Placeholder of one image in a raw Qwen prompt.
pub const IMAGE_PLACEHOLDER: &str = "<|vision_start|><|image_pad|><|vision_end|>";

#[derive(Deserialize, Default)]
struct SizeKeys {
    shortest_edge: Option<usize>,
    longest_edge: Option<usize>,
}

/// preprocessor_config.json.
#[derive(Deserialize)]
pub struct PreprocessorConfig {
    #[serde(default)]
    min_pixels: Option<usize>,
    #[serde(default)]
    max_pixels: Option<usize>,
    #[serde(default)]
    size: Option<SizeKeys>,
    /// Pixels per patch side.
    pub patch_size: usize,
    /// Frames per patch.
    #[serde(default = "two")]
    pub temporal_patch_size: usize,
    /// Patches merged per side.
    #[serde(default = "two")]
    pub merge_size: usize,
    /// Per-channel mean.
    pub image_mean: [f32; 3],
    /// Per-channel std.
    pub image_std: [f32; 3],
    #[serde(default = "default_rescale")]
    rescale_factor: f64,
    #[serde(default)]
    resample: Option<u32>,
    #[serde(default)]
    image_processor_type: Option<String>,
}

fn two() -> usize {
    2
}

fn default_rescale() -> f64 {
    1.0 / 255.0
}

impl PreprocessorConfig {
    /// The backend named by `image_processor_type`.
    pub fn backend(&self) -> ResizeBackend {
        ResizeBackend::from_processor_type(self.image_processor_type.as_deref())
    }

    /// Smallest area an image is resized to.
    pub fn min_pixels(&self) -> usize {
        self.min_pixels
            .or(self.size.as_ref().and_then(|s| s.shortest_edge))
            .unwrap_or(DEFAULT_MIN_PIXELS)
    }

    /// Largest area an image is resized to.
    pub fn max_pixels(&self) -> usize {
        self.max_pixels
            .or(self.size.as_ref().and_then(|s| s.longest_edge))
            .unwrap_or(DEFAULT_MAX_PIXELS)
    }
}

/// A pixel budget as the caller gave it: `None` fields fall back to the next level
/// (request → load options → preprocessor_config.json).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PixelBudget {
    /// Smallest area in pixels.
    pub min_pixels: Option<usize>,
    /// Largest area in pixels.
    pub max_pixels: Option<usize>,
}

impl PixelBudget {
    /// This budget where it is set, `fallback` elsewhere.
    pub fn or(self, fallback: PixelBudget) -> PixelBudget {
        PixelBudget {
            min_pixels: self.min_pixels.or(fallback.min_pixels),
            max_pixels: self.max_pixels.or(fallback.max_pixels),
        }
    }
}

/// Target size (height, width) for an image: both multiples of `factor`, area within
/// `[min_pixels, max_pixels]`, aspect ratio kept as well as possible. Python's `round`
/// (half to even) is part of the reference behaviour.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > MAX_ASPECT_RATIO {
        return Err(Error::invalid_option(
            "image",
            format!("a {width}×{height} image is more than {MAX_ASPECT_RATIO}:1 wide or tall; crop it first"),
        ));
    }
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// One image as patches.
#[derive(Debug, Clone)]
pub struct ImagePatches {
    /// `[patches, channels·temporal·patch·patch]`, row-major.
    pub pixel_values: Vec<f32>,
    /// `[t, h, w]` in patches.
    pub grid_thw: [usize; 3],
    /// The image's encoding, found in the model's image cache when the request was
    /// prepared (`pixel_values` is then empty: preprocessing was skipped).
    pub cached: Option<Features>,
    /// The image's cache key (`None` with the cache off).
    pub key: Option<ImageKey>,
}

/// Prompt tokens and image patches of one request.
#[derive(Debug, Clone)]
pub struct QwenInputs {
    /// Token ids with every image's placeholder expanded.
    pub input_ids: Vec<u32>,
    /// Images in prompt order.
    pub images: Vec<ImagePatches>,
}

/// The processor of one checkpoint.
pub struct QwenProcessor {
    /// Image settings.
    pub config: PreprocessorConfig,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    image_token_id: u32,
}

impl QwenProcessor {
    /// A processor from its parts (`template` may be absent: raw prompts still work).
    pub fn new(
        config: PreprocessorConfig,
        tokenizer: Tokenizer,
        template: Option<ChatTemplate>,
        image_token_id: u32,
    ) -> Result<Self> {
        if let Some(r) = config.resample {
            if r != PIL_BICUBIC && r != PIL_BILINEAR {
                return Err(Error::bad_file(
                    "preprocessor_config.json",
                    format!("resample {r} is not supported (bicubic = 3, bilinear = 2)"),
                ));
            }
        }
        Ok(Self {
            config,
            tokenizer,
            template,
            image_token_id,
        })
    }

    /// The processor of a model folder: preprocessor_config.json, tokenizer.json and the
    /// chat template (optional: raw prompts work without one).
    pub fn from_model_dir(dir: &ModelDir, image_token_id: u32) -> Result<Self> {
        let config = dir.read_json(
            "preprocessor_config.json",
            "preprocessor_config.json holds the image settings",
        )?;
        let tokenizer = super::tokenizer::load_tokenizer(dir)?;
        let template = match ChatTemplate::from_model_dir(dir) {
            Ok(t) => Some(t),
            Err(Error::MissingFile { .. }) => None,
            Err(e) => return Err(e),
        };
        Self::new(config, tokenizer, template, image_token_id)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The `(min_pixels, max_pixels)` an image is resized within: `budget` where set,
    /// else preprocessor_config.json's. A budget that cannot hold one merged patch
    /// group, or whose minimum exceeds its maximum, is an error naming the option.
    pub fn pixel_range(&self, budget: PixelBudget) -> Result<(usize, usize)> {
        let c = &self.config;
        let factor = c.patch_size * c.merge_size;
        let min = budget.min_pixels.unwrap_or_else(|| c.min_pixels());
        let max = budget.max_pixels.unwrap_or_else(|| c.max_pixels());
        if max < factor * factor {
            return Err(Error::invalid_option(
                "max_pixels",
                format!(
                    "{max} pixels cannot hold one {factor}×{factor} patch group of this model; \
                     use at least {}",
                    factor * factor
                ),
            ));
        }
        if min > max {
            let whose = if budget.min_pixels.is_some() {
                "set"
            } else {
                "the checkpoint's preprocessor_config.json default"
            };
            return Err(Error::invalid_option(
                "min_pixels",
                format!(
                    "min_pixels {min} ({whose}) is larger than max_pixels {max}: \
                     lower min_pixels (at most {max}) or raise max_pixels"
                ),
            ));
        }
        Ok((min, max))
    }

    /// The `(height, width)` an image is resized to within `range`.
    pub fn resized_size(&self, image: &Image, range: (usize, usize)) -> Result<(usize, usize)> {
        let c = &self.config;
        smart_resize(
            image.height() as usize,
            image.width() as usize,
            c.patch_size * c.merge_size,
            range.0,
            range.1,
        )
    }

    /// Resizes, normalises and patchifies one image with the checkpoint's pixel budget.
    pub fn preprocess(&self, image: &Image) -> Result<ImagePatches> {
        let range = self.pixel_range(PixelBudget::default())?;
        let (h, w) = self.resized_size(image, range)?;
        Ok(self.patchify(image, h, w))
    }

    /// Resizes `image` to `h`×`w`, normalises it and cuts it into patches.
    fn patchify(&self, image: &Image, h: usize, w: usize) -> ImagePatches {
        let c = &self.config;
        let normalize = Normalize {
            backend: c.backend(),
            // transformers 5's PIL backends run with current Pillow (13).
            pillow: PillowVersion::From13,
            bilinear: c.resample == Some(PIL_BILINEAR),
            rescale_factor: c.rescale_factor,
            mean: c.image_mean,
            std: c.image_std,
        };
        let rgb = normalize.resize(image, w, h);
        let (rgb, table) = (rgb.as_raw(), normalize.table());
        let (p, m, tp) = (c.patch_size, c.merge_size, c.temporal_patch_size);
        let (gh, gw) = (h / p, w / p);
        let row_len = 3 * tp * p * p;
        let mut out = vec![0f32; gh * gw * row_len];
        // order: merged block (bh, bw), patch in block (ih, iw), channel, frame, pixel (y, x);
        // one merged block is m·m rows of `out`, and blocks are filled in parallel.
        let blocks_per_row = gw / m;
        for_row_chunks(&mut out, m * m * row_len, |first_block, chunk| {
            for (k, block) in chunk.chunks_exact_mut(m * m * row_len).enumerate() {
                let (bh, bw) = (
                    (first_block + k) / blocks_per_row,
                    (first_block + k) % blocks_per_row,
                );
                let mut values = block.iter_mut();
                for ih in 0..m {
                    for iw in 0..m {
                        let (py, px) = ((bh * m + ih) * p, (bw * m + iw) * p);
                        for (ch, lut) in table.iter().enumerate() {
                            for _frame in 0..tp {
                                for y in 0..p {
                                    let start = ((py + y) * w + px) * 3 + ch;
                                    for x in 0..p {
                                        if let Some(v) = values.next() {
                                            *v = lut[rgb[start + 3 * x] as usize];
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        });
        ImagePatches {
            pixel_values: out,
            grid_thw: [1, gh, gw],
            cached: None,
            key: None,
        }
    }

    /// One image of a request: its encoding from `cache` when there, else its patches.
    fn image_input(
        &self,
        image: &Image,
        range: (usize, usize),
        cache: Option<&ImageCache>,
    ) -> Result<ImagePatches> {
        let (h, w) = self.resized_size(image, range)?;
        let Some(cache) = cache else {
            return Ok(self.patchify(image, h, w));
        };
        let key = ImageKey::new(image, [h, w]);
        if let Some(features) = cache.get(&key) {
            let p = self.config.patch_size;
            return Ok(ImagePatches {
                pixel_values: vec![],
                grid_thw: [1, h / p, w / p],
                cached: Some(features),
                key: Some(key),
            });
        }
        let mut patches = self.patchify(image, h, w);
        patches.key = Some(key);
        Ok(patches)
    }

    /// Merged tokens an image of this grid becomes.
    pub fn tokens_per_image(&self, grid: [usize; 3]) -> usize {
        grid[0] * grid[1] * grid[2] / (self.config.merge_size * self.config.merge_size)
    }

    /// The prompt text of a request: the chat template's output, or the raw prompt.
    pub fn prompt_text(&self, request: &Request) -> Result<String> {
        match &request.prompt {
            Prompt::Raw(text) => Ok(text.clone()),
            Prompt::Chat(messages) => {
                let placeholders: usize = messages.iter().map(|m| m.image_count()).sum();
                if placeholders != request.images.len() {
                    return Err(Error::PlaceholderMismatch {
                        placeholders,
                        images: request.images.len(),
                        placeholder: "Content::Image".into(),
                    });
                }
                let template = self.template.as_ref().ok_or_else(|| Error::MissingFile {
                    path: "chat_template.json".into(),
                    hint: "this model folder has no chat template; copy chat_template.json from the original repo or pass a raw prompt".into(),
                })?;
                template.render(messages, true)
            }
        }
    }

    /// Tokenizes a request and preprocesses its images with the checkpoint's budget.
    pub fn process(&self, request: &Request) -> Result<QwenInputs> {
        self.process_with(request, PixelBudget::default(), None)
    }

    /// Tokenizes a request and preprocesses its images within the request's pixel budget,
    /// else `load_budget`, else the checkpoint's; images whose encoding `cache` holds are
    /// not preprocessed.
    pub fn process_with(
        &self,
        request: &Request,
        load_budget: PixelBudget,
        cache: Option<&ImageCache>,
    ) -> Result<QwenInputs> {
        let budget = PixelBudget {
            min_pixels: request.options.min_pixels,
            max_pixels: request.options.max_pixels,
        }
        .or(load_budget);
        let range = self.pixel_range(budget)?;
        if let Prompt::Chat(messages) = &request.prompt {
            let has_text = messages
                .iter()
                .flat_map(|m| &m.content)
                .any(|c| matches!(c, Content::Text(t) if !t.trim().is_empty()));
            if !has_text && request.images.is_empty() {
                return Err(Error::EmptyQuestion);
            }
        }
        let text = self.prompt_text(request)?;
        let encoding = self
            .tokenizer
            .encode(text.as_str(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let ids = encoding.get_ids();
        let placeholders = ids.iter().filter(|&&t| t == self.image_token_id).count();
        if placeholders != request.images.len() {
            return Err(Error::PlaceholderMismatch {
                placeholders,
                images: request.images.len(),
                placeholder: IMAGE_PLACEHOLDER.into(),
            });
        }
        let images = request
            .images
            .iter()
            .map(|img| self.image_input(img, range, cache))
            .collect::<Result<Vec<_>>>()?;
        let extra: usize = images
            .iter()
            .map(|i| self.tokens_per_image(i.grid_thw) - 1)
            .sum();
        let mut input_ids = Vec::with_capacity(ids.len() + extra);
        let mut next_image = images.iter();
        for &id in ids {
            if id == self.image_token_id {
                let n = next_image
                    .next()
                    .map_or(1, |i| self.tokens_per_image(i.grid_thw));
                input_ids.extend(std::iter::repeat_n(id, n));
            } else {
                input_ids.push(id);
            }
        }
        Ok(QwenInputs { input_ids, images })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_table() {
        // (h, w) → expected, with the Qwen2.5-VL defaults (factor 28, 3136 … 12845056)
        let cases = [
            ((768, 1024), (756, 1036)),
            ((517, 333), (504, 336)),
            ((200, 640), (196, 644)),
            ((28, 28), (56, 56)),
            ((10, 10), (56, 56)),
            ((4000, 3000), (4004, 2996)),
        ];
        for ((h, w), want) in cases {
            assert_eq!(
                smart_resize(h, w, 28, 3136, 12_845_056).unwrap(),
                want,
                "{h}x{w}"
            );
        }
        // Qwen3-VL: factor 32, 65536 … 16777216
        assert_eq!(
            smart_resize(768, 1024, 32, 65536, 16_777_216).unwrap(),
            (768, 1024)
        );
        // 42 / 28 = 1.5 rounds to even (2), 70 / 28 = 2.5 rounds to even (2)
        assert_eq!(smart_resize(42, 70, 28, 1, 1 << 30).unwrap(), (56, 56));
        // over max_pixels: scaled down by sqrt(area / max)
        assert_eq!(
            smart_resize(5000, 4000, 28, 3136, 1_003_520).unwrap(),
            (1120, 896)
        );
        assert!(smart_resize(10, 2500, 28, 3136, 12_845_056).is_err());
        // A 4032×3024 phone photo: the released defaults and the album budget of
        // docs/models.md (1,280 tokens of 28×28, or 32×32 on Qwen3-VL).
        assert_eq!(
            smart_resize(3024, 4032, 28, 3136, 12_845_056).unwrap(),
            (3024, 4032) // 216×288 patches: 15,552 tokens
        );
        assert_eq!(
            smart_resize(3024, 4032, 28, 3136, 1_003_520).unwrap(),
            (840, 1148) // 60×82 patches: 1,230 tokens
        );
        assert_eq!(
            smart_resize(3024, 4032, 32, 65536, 16_777_216).unwrap(),
            (3008, 4032) // 188×252 patches: 11,844 tokens
        );
        assert_eq!(
            smart_resize(3024, 4032, 32, 65536, 1_310_720).unwrap(),
            (960, 1312) // 60×82 patches: 1,230 tokens
        );
    }

    #[test]
    fn budgets_that_cannot_work_name_the_option() {
        let config: PreprocessorConfig = serde_json::from_str(
            r#"{"patch_size": 14, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                "min_pixels": 3136, "max_pixels": 12845056}"#,
        )
        .unwrap();
        let tokenizer = Tokenizer::new(tokenizers::models::bpe::BPE::default());
        let p = QwenProcessor::new(config, tokenizer, None, 0).unwrap();
        assert_eq!(
            p.pixel_range(PixelBudget::default()).unwrap(),
            (3136, 12_845_056)
        );
        let only_max = PixelBudget {
            max_pixels: Some(1_003_520),
            ..Default::default()
        };
        assert_eq!(p.pixel_range(only_max).unwrap(), (3136, 1_003_520));
        let tiny = PixelBudget {
            max_pixels: Some(783),
            ..Default::default()
        };
        let e = p.pixel_range(tiny).unwrap_err().to_string();
        assert!(e.contains("max_pixels") && e.contains("784"), "{e}");
        let crossed = PixelBudget {
            min_pixels: Some(20_000),
            max_pixels: Some(10_000),
        };
        let e = p.pixel_range(crossed).unwrap_err().to_string();
        assert!(e.contains("min_pixels") && e.contains("10000"), "{e}");
        // The checkpoint's own minimum above the caller's maximum says whose it was.
        let below_default_min = PixelBudget {
            max_pixels: Some(1000),
            ..Default::default()
        };
        let e = p.pixel_range(below_default_min).unwrap_err().to_string();
        assert!(e.contains("preprocessor_config.json"), "{e}");
    }
}
