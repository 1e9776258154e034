//! The synthetic 1024×768 photo, as raw pixels and encoded as JPEG and PNG.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::ImageFormat;
use vlm_core::Image;

/// The size of the GPU harness's photo (`vlm-bench --width --height` defaults).
pub const WIDTH: u32 = 1024;
pub const HEIGHT: u32 = 768;
/// A typical camera / phone export quality.
const JPEG_QUALITY: u8 = 90;

/// The photo of the GPU harness, at its size.
pub fn synthetic_photo() -> Image {
    crate::synthetic_photo::synthetic_photo(WIDTH, HEIGHT)
}

/// The photo as a JPEG file's bytes.
pub fn jpeg(photo: &Image) -> Vec<u8> {
    let mut bytes = Vec::new();
    photo
        .as_rgb()
        .write_with_encoder(JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY))
        .expect("encoding to memory");
    bytes
}

/// The photo as a PNG file's bytes (default compression).
pub fn png(photo: &Image) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    photo
        .as_rgb()
        .write_to(&mut bytes, ImageFormat::Png)
        .expect("encoding to memory");
    bytes.into_inner()
}
