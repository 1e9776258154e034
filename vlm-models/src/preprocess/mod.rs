//! Resize, rescale and normalise an image into channel planes, matching one of
//! transformers' two image backends exactly. Shared by every family's processor.
//!
//! [`resize`] reproduces Pillow's resampler and [`resize_torch`] torchvision's, byte for
//! byte; [`parallel`] spreads their rows over the cores.

pub mod parallel;
pub mod resize;
pub mod resize_torch;

use std::borrow::Cow;

use image::RgbImage;
use vlm_contract::Image;

use self::resize::{resize_like, Filter, PillowVersion};
use self::resize_torch::{resize_like_torchvision, TorchFilter};

/// PIL's resample code for bilinear.
pub const PIL_BILINEAR: u32 = 2;
/// PIL's resample code for bicubic.
pub const PIL_BICUBIC: u32 = 3;

/// Which implementation the numbers must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeBackend {
    /// torchvision's uint8 antialiased resize, with rescale fused into normalise
    /// (transformers 5's default image processors).
    Torchvision,
    /// Pillow's `Image.resize`, then `x · scale` and `(x - mean) / std` as two f32 steps
    /// (`*ImageProcessorPil`, transformers 4's slow processors, and torchvision transforms
    /// applied to PIL images, as in LAVIS and MiniGPT-4).
    Pil,
}

impl ResizeBackend {
    /// The backend named by preprocessor_config.json's `image_processor_type`.
    pub fn from_processor_type(name: Option<&str>) -> Self {
        match name {
            Some(t) if t.ends_with("Pil") => Self::Pil,
            _ => Self::Torchvision,
        }
    }
}

/// How to turn an image into planes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    /// Implementation to match.
    pub backend: ResizeBackend,
    /// For the PIL backend: the Pillow release the reference ran with (the pass order
    /// changed in 12.2 and 13).
    pub pillow: PillowVersion,
    /// Bilinear instead of bicubic.
    pub bilinear: bool,
    /// Usually 1/255.
    pub rescale_factor: f64,
    /// Per-channel mean.
    pub mean: [f32; 3],
    /// Per-channel std.
    pub std: [f32; 3],
}

impl Normalize {
    /// `image` resized to `width × height` (borrowed when it already has that size).
    pub fn resize<'a>(&self, image: &'a Image, width: usize, height: usize) -> Cow<'a, RgbImage> {
        if (image.width() as usize, image.height() as usize) == (width, height) {
            return Cow::Borrowed(image.as_rgb());
        }
        let (w, h) = (width as u32, height as u32);
        Cow::Owned(match (self.backend, self.bilinear) {
            (ResizeBackend::Torchvision, false) => {
                resize_like_torchvision(image.as_rgb(), w, h, TorchFilter::Bicubic)
            }
            (ResizeBackend::Torchvision, true) => {
                resize_like_torchvision(image.as_rgb(), w, h, TorchFilter::Bilinear)
            }
            (ResizeBackend::Pil, false) => {
                resize_like(image.as_rgb(), w, h, Filter::Bicubic, self.pillow)
            }
            (ResizeBackend::Pil, true) => {
                resize_like(image.as_rgb(), w, h, Filter::Bilinear, self.pillow)
            }
        })
    }

    /// The normalised value of every 8-bit value of each channel, computed as the backend
    /// computes it: `table[ch][v]`.
    pub fn table(&self) -> [[f32; 256]; 3] {
        let mut table = [[0f32; 256]; 3];
        for (ch, row) in table.iter_mut().enumerate() {
            for (v, out) in row.iter_mut().enumerate() {
                *out = match self.backend {
                    // torchvision fuses rescale into normalise: (x - mean/scale) / (std/scale), in f32
                    ResizeBackend::Torchvision => {
                        let inv = (1.0 / self.rescale_factor) as f32;
                        (v as f32 - self.mean[ch] * inv) / (self.std[ch] * inv)
                    }
                    ResizeBackend::Pil => {
                        (v as f32 * self.rescale_factor as f32 - self.mean[ch]) / self.std[ch]
                    }
                };
            }
        }
        table
    }

    /// Resizes `image` to `width × height` (skipped when it already has that size) and
    /// returns normalised planes `[3, height, width]`, row-major.
    pub fn planes(&self, image: &Image, width: usize, height: usize) -> Vec<f32> {
        let rgb = self.resize(image, width, height);
        let table = self.table();
        let area = width * height;
        let mut planes = vec![0f32; 3 * area];
        for (i, px) in rgb.pixels().enumerate() {
            for ch in 0..3 {
                planes[ch * area + i] = table[ch][px.0[ch] as usize];
            }
        }
        planes
    }
}
