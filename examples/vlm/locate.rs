//! `vlm locate`: where in the photo a thing is, as JSON or drawn on the photo.

use std::path::Path;

use image::{Rgb, RgbImage};
use vlm_core::{Detection, GenerationOptions, Image, VisionLanguageModel};

/// Box colours, one per detection in turn.
const COLOURS: [[u8; 3]; 6] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [255, 225, 25],
];

/// Runs `locate`, prints the detections and draws them when asked.
pub fn run(
    model: &dyn VisionLanguageModel,
    image: &Image,
    what: &str,
    draw_to: Option<&Path>,
    json: bool,
    options: &GenerationOptions,
) -> vlm_core::Result<()> {
    let found = model.locate(image, what, options)?;
    if let Some(path) = draw_to {
        draw(image, &found).save(path).map_err(|e| {
            vlm_core::Error::invalid_option("draw", format!("cannot write {}: {e}", path.display()))
        })?;
    }
    if json {
        let out = serde_json::json!({
            "detections": found,
            "image": {"width": image.width(), "height": image.height()},
            "model": model.info().model_type,
        });
        println!("{out}");
    } else {
        if found.is_empty() {
            println!("nothing found");
        }
        for (i, d) in found.iter().enumerate() {
            let [x1, y1, x2, y2] = d.bbox;
            println!(
                "{}: {} [{x1:.0}, {y1:.0}, {x2:.0}, {y2:.0}]",
                i + 1,
                d.label
            );
        }
    }
    Ok(())
}

/// The photo with each box outlined and numbered (the number is its line in the output).
pub fn draw(image: &Image, found: &[Detection]) -> RgbImage {
    let mut canvas = image.as_rgb().clone();
    // Lines and digits scale with the photo so that they stay visible on a 12 MP photo.
    let scale = (canvas.width().max(canvas.height()) / 400).max(1);
    for (i, d) in found.iter().enumerate() {
        let colour = Rgb(COLOURS[i % COLOURS.len()]);
        let [x1, y1, x2, y2] = d.bbox.map(|v| v.round() as u32);
        for t in 0..scale * 2 {
            outline(
                &mut canvas,
                x1 + t,
                y1 + t,
                x2.saturating_sub(t),
                y2.saturating_sub(t),
                colour,
            );
        }
        number(&mut canvas, x1, y1, i + 1, scale, colour);
    }
    canvas
}

fn put(canvas: &mut RgbImage, x: u32, y: u32, colour: Rgb<u8>) {
    if x < canvas.width() && y < canvas.height() {
        canvas.put_pixel(x, y, colour);
    }
}

fn outline(canvas: &mut RgbImage, x1: u32, y1: u32, x2: u32, y2: u32, colour: Rgb<u8>) {
    if x2 < x1 || y2 < y1 {
        return;
    }
    for x in x1..=x2 {
        put(canvas, x, y1, colour);
        put(canvas, x, y2, colour);
    }
    for y in y1..=y2 {
        put(canvas, x1, y, colour);
        put(canvas, x2, y, colour);
    }
}

/// 3×5 bitmaps of the digits, one row of three bits per entry (high bit left).
const DIGITS: [[u8; 5]; 10] = [
    [7, 5, 5, 5, 7],
    [2, 6, 2, 2, 7],
    [7, 1, 7, 4, 7],
    [7, 1, 7, 1, 7],
    [5, 5, 7, 1, 1],
    [7, 4, 7, 1, 7],
    [7, 4, 7, 5, 7],
    [7, 1, 1, 1, 1],
    [7, 5, 7, 5, 7],
    [7, 5, 7, 1, 7],
];

/// `n` in white on a tab of `colour` at the box's top-left corner.
fn number(canvas: &mut RgbImage, x: u32, y: u32, n: usize, scale: u32, colour: Rgb<u8>) {
    let text = n.to_string();
    let cell = 4 * scale;
    let (w, h) = (cell * text.len() as u32 + scale, 7 * scale);
    for dy in 0..h {
        for dx in 0..w {
            put(canvas, x + dx, y + dy, colour);
        }
    }
    for (i, c) in text.bytes().enumerate() {
        let glyph = DIGITS[(c - b'0') as usize];
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..3u32 {
                if bits & (4 >> col) != 0 {
                    for sy in 0..scale {
                        for sx in 0..scale {
                            let px = x + scale + i as u32 * cell + col * scale + sx;
                            put(
                                canvas,
                                px,
                                y + scale + row as u32 * scale + sy,
                                Rgb([255; 3]),
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_are_outlined_in_their_colour() {
        let photo = Image::from_rgb(100, 80, vec![0; 100 * 80 * 3]).unwrap();
        let d = Detection {
            label: "cake".into(),
            bbox: [10.0, 20.0, 60.0, 70.0],
        };
        let out = draw(&photo, &[d]);
        assert_eq!(out.get_pixel(35, 70), &Rgb(COLOURS[0]), "bottom edge");
        assert_eq!(out.get_pixel(60, 50), &Rgb(COLOURS[0]), "right edge");
        assert_eq!(out.get_pixel(35, 50), &Rgb([0; 3]), "inside stays");
        // The number tab: white digit pixels on the colour.
        assert_eq!(out.get_pixel(12, 21), &Rgb([255; 3]), "the 1");
    }
}
