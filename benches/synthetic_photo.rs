//! The synthetic 1024×768 test photo of both harnesses (vlm-bench on the GPU, the criterion
//! benches on the CPU), so that their figures are about the same pixels.

use vlm_core::Image;

/// Smooth gradients, a disc and pixel noise: realistic work for the resamplers and the
/// codecs (a flat image would compress to nothing).
pub fn synthetic_photo(width: u32, height: u32) -> Image {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut data = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state % 23) as i32 - 11;
            let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
            let disc = ((fx - 0.6).powi(2) + (fy - 0.4).powi(2)).sqrt() < 0.15;
            let base = if disc {
                [200.0, 60.0, 40.0]
            } else {
                [
                    60.0 + 150.0 * fx,
                    90.0 + 120.0 * fy,
                    200.0 - 120.0 * fx * fy,
                ]
            };
            for c in base {
                data.push((c as i32 + noise).clamp(0, 255) as u8);
            }
        }
    }
    Image::from_rgb(width, height, data).expect("valid size")
}
