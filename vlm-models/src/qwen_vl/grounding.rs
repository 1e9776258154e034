//! Grounding with Qwen-VL: each generation asks and answers in its own format, and its
//! coordinates live in a different space.
//!
//! - **Qwen2-VL**: "Find `<|object_ref_start|>`the cake`<|object_ref_end|>`" → the
//!   label between the same tokens, then `<|box_start|>(x1,y1),(x2,y2)<|box_end|>`
//!   with corners on a 0-1000 grid over the image (Qwen-VL's convention, kept by
//!   Qwen2-VL's training data).
//! - **Qwen2.5-VL**: "Locate every … and output the bbox coordinates in JSON format." →
//!   `[{"bbox_2d": [x1, y1, x2, y2], "label": "…"}]` in absolute pixels of the image
//!   *as the processor resized it* (its grounding was trained on absolute coordinates).
//! - **Qwen3-VL**: the same JSON, with coordinates on a 0-1000 grid again (Qwen3-VL's
//!   cookbook).
//!
//! Every box is mapped back to the photo's own pixels ([`vlm_contract::Image`] has EXIF
//! orientation applied, so these are the pixels a viewer shows).

use serde_json::{json, Value};
use vlm_contract::{Detection, GenerationOptions, Image, Request};

use super::QwenGeneration;

/// Qwen-VL's relative grid: coordinates in [0, 1000].
const GRID: f32 = 1000.0;
/// Most boxes one answer may hold, and most characters of a label: bounds that keep a
/// confused model from spending its whole budget on one answer.
const MAX_BOXES: usize = 32;
const MAX_LABEL_CHARS: usize = 64;

/// How one Qwen generation asks for and writes boxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grounding {
    generation: QwenGeneration,
}

impl Grounding {
    /// The format of `generation`.
    pub fn new(generation: QwenGeneration) -> Self {
        Self { generation }
    }

    /// The chat request that asks where `what` is, with decoding constrained to the
    /// answer format. `resized` is the `(height, width)` the processor resizes the image
    /// to (Qwen2.5-VL answers in those pixels).
    pub fn request(
        &self,
        image: &Image,
        what: &str,
        resized: (usize, usize),
        options: &GenerationOptions,
    ) -> Request {
        let what = what.trim();
        let mut options = GenerationOptions {
            json_schema: None,
            regex: None,
            choices: vec![],
            grammar: None,
            ..options.clone()
        };
        let text = match self.generation {
            QwenGeneration::Qwen2 => {
                options.grammar = Some(box_token_grammar());
                format!("Find <|object_ref_start|>{what}<|object_ref_end|>")
            }
            QwenGeneration::Qwen25 | QwenGeneration::Qwen3 => {
                let (limit_x, limit_y) = match self.generation {
                    QwenGeneration::Qwen25 => (resized.1, resized.0),
                    _ => (GRID as usize, GRID as usize),
                };
                options.json_schema = Some(boxes_schema(limit_x, limit_y));
                format!("Locate every {what} in the image and output the bbox coordinates in JSON format.")
            }
        };
        Request::chat(vec![image.clone()], text, options)
    }

    /// The detections of `answer` in the pixels of `image`, which the processor resized
    /// to `resized` `(height, width)`. Unfinished or malformed entries are skipped.
    pub fn parse(&self, answer: &str, image: &Image, resized: (usize, usize)) -> Vec<Detection> {
        let (w, h) = (image.width(), image.height());
        let boxes = match self.generation {
            QwenGeneration::Qwen2 => parse_box_tokens(answer),
            _ => parse_json_boxes(answer),
        };
        // Each generation's space → the photo's pixels (multiplied before dividing, so
        // that grid corners land exactly on the photo's edges).
        let (space_w, space_h) = match self.generation {
            QwenGeneration::Qwen25 => (resized.1.max(1) as f32, resized.0.max(1) as f32),
            _ => (GRID, GRID),
        };
        let (fw, fh) = (w as f32, h as f32);
        boxes
            .into_iter()
            .map(|(label, [x1, y1, x2, y2])| {
                let x = |v: f32| v * fw / space_w;
                let y = |v: f32| v * fh / space_h;
                Detection::clamped(label, [x(x1), y(y1), x(x2), y(y2)], w, h)
            })
            .collect()
    }
}

/// Qwen2.5-VL / Qwen3-VL's answer: a list of `{"bbox_2d": [x1, y1, x2, y2], "label"}`,
/// coordinates within `limit_x` × `limit_y`.
fn boxes_schema(limit_x: usize, limit_y: usize) -> Value {
    let x = json!({"type": "integer", "minimum": 0, "maximum": limit_x});
    let y = json!({"type": "integer", "minimum": 0, "maximum": limit_y});
    json!({
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "bbox_2d": {
                    "type": "array",
                    "prefixItems": [x, y, x, y],
                    "items": false,
                    "minItems": 4,
                    "maxItems": 4
                },
                "label": {"type": "string", "maxLength": MAX_LABEL_CHARS}
            },
            "required": ["bbox_2d", "label"],
            "additionalProperties": false
        },
        "maxItems": MAX_BOXES
    })
}

/// Qwen2-VL's answer in llguidance's Lark dialect: one or more labelled boxes.
fn box_token_grammar() -> String {
    format!(
        r#"start: det+
det: <|object_ref_start|> LABEL <|object_ref_end|> box
box: <|box_start|> "(" NUM "," NUM ")" "," "(" NUM "," NUM ")" <|box_end|>
LABEL: /[^<>\n]{{1,{MAX_LABEL_CHARS}}}/
NUM: /[0-9]{{1,4}}/
"#
    )
}

fn parse_json_boxes(answer: &str) -> Vec<(String, [f32; 4])> {
    // The constrained answer is the bare list; an unconstrained one is often fenced.
    let start = answer.find('[').unwrap_or(0);
    let Ok(Value::Array(items)) =
        serde_json::from_str::<Value>(answer[start..].trim_end_matches(['`', '\n', ' ']))
    else {
        return vec![];
    };
    items
        .iter()
        .filter_map(|item| {
            let coords: Vec<f32> = item
                .get("bbox_2d")?
                .as_array()?
                .iter()
                .map(|v| v.as_f64().map(|f| f as f32))
                .collect::<Option<_>>()?;
            let corners: [f32; 4] = coords.try_into().ok()?;
            let label = item.get("label").and_then(Value::as_str).unwrap_or("");
            Some((label.to_string(), corners))
        })
        .collect()
}

fn parse_box_tokens(answer: &str) -> Vec<(String, [f32; 4])> {
    const REF: &str = "<|object_ref_start|>";
    const REF_END: &str = "<|object_ref_end|>";
    const BOX: &str = "<|box_start|>";
    const BOX_END: &str = "<|box_end|>";
    let mut out = Vec::new();
    let mut label = String::new();
    let mut rest = answer;
    loop {
        let next_ref = rest.find(REF);
        let next_box = rest.find(BOX);
        match (next_ref, next_box) {
            (Some(r), b) if b.is_none_or(|b| r < b) => {
                let after = &rest[r + REF.len()..];
                let Some(end) = after.find(REF_END) else {
                    break;
                };
                label = after[..end].trim().to_string();
                rest = &after[end + REF_END.len()..];
            }
            (_, Some(b)) => {
                let after = &rest[b + BOX.len()..];
                let Some(end) = after.find(BOX_END) else {
                    break;
                };
                let numbers: Vec<f32> = after[..end]
                    .split(|c: char| !c.is_ascii_digit() && c != '.')
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| s.parse().ok())
                    .collect();
                if let Ok(corners) = <[f32; 4]>::try_from(numbers) {
                    out.push((label.clone(), corners));
                }
                rest = &after[end + BOX_END.len()..];
            }
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photo(w: u32, h: u32) -> Image {
        Image::from_rgb(w, h, vec![0; (w * h * 3) as usize]).unwrap()
    }

    #[test]
    fn qwen2_box_tokens_are_a_thousandth_of_the_photo() {
        let g = Grounding::new(QwenGeneration::Qwen2);
        let answer = "<|object_ref_start|>the cake<|object_ref_end|><|box_start|>(100,250),(500,750)<|box_end|>\
                      <|object_ref_start|>a candle<|object_ref_end|><|box_start|>(0,0),(1000,1000)<|box_end|><|box_start|>(10,20";
        // 4032×3024 photo, resized by the processor to anything: the grid is the photo.
        let d = g.parse(answer, &photo(400, 300), (280, 392));
        assert_eq!(d.len(), 2, "the unfinished third box is skipped");
        assert_eq!(d[0].label, "the cake");
        assert_eq!(d[0].bbox, [40.0, 75.0, 200.0, 225.0]);
        assert_eq!(d[1].label, "a candle");
        assert_eq!(d[1].bbox, [0.0, 0.0, 400.0, 300.0]);
    }

    #[test]
    fn qwen25_boxes_are_pixels_of_the_resized_image() {
        let g = Grounding::new(QwenGeneration::Qwen25);
        // A 1000×750 photo that the processor resized to 532×700 (h×w).
        let answer = r#"[{"bbox_2d": [70, 133, 350, 266], "label": "cake"}, {"bbox_2d": [0, 0, 700, 532], "label": "table"}]"#;
        let d = g.parse(answer, &photo(1000, 750), (532, 700));
        assert_eq!(d[0].label, "cake");
        assert_eq!(d[0].bbox, [100.0, 187.5, 500.0, 375.0]);
        assert_eq!(d[1].bbox, [0.0, 0.0, 1000.0, 750.0]);
        // The unconstrained habit of a fenced block parses too.
        let fenced = "```json\n[{\"bbox_2d\": [70, 133, 350, 266], \"label\": \"cake\"}]\n```";
        assert_eq!(g.parse(fenced, &photo(1000, 750), (532, 700)), d[..1]);
    }

    #[test]
    fn qwen3_boxes_are_a_thousandth_of_the_photo() {
        let g = Grounding::new(QwenGeneration::Qwen3);
        let answer = r#"[{"bbox_2d": [250, 500, 750, 1000], "label": "sign"}]"#;
        let d = g.parse(answer, &photo(640, 480), (480, 640));
        assert_eq!(d[0].bbox, [160.0, 240.0, 480.0, 480.0]);
    }

    #[test]
    fn rotated_photos_map_to_their_oriented_pixels() {
        // A phone photo stored 4032×3024 with EXIF orientation 6 is a 3024×4032 Image:
        // the relative grid maps onto the upright photo.
        let g = Grounding::new(QwenGeneration::Qwen3);
        let answer = r#"[{"bbox_2d": [0, 500, 500, 1000], "label": "face"}]"#;
        let d = g.parse(answer, &photo(30, 40), (40, 30));
        assert_eq!(d[0].bbox, [0.0, 20.0, 15.0, 40.0]);
    }

    #[test]
    fn requests_constrain_to_each_format() {
        let image = photo(64, 48);
        let opts = GenerationOptions::greedy(64);
        let r =
            Grounding::new(QwenGeneration::Qwen25).request(&image, " the cake ", (56, 84), &opts);
        let schema = r.options.json_schema.as_ref().unwrap();
        assert_eq!(
            schema["items"]["properties"]["bbox_2d"]["prefixItems"][0]["maximum"],
            84
        );
        assert_eq!(
            schema["items"]["properties"]["bbox_2d"]["prefixItems"][1]["maximum"],
            56
        );
        let r = Grounding::new(QwenGeneration::Qwen3).request(&image, "x", (56, 84), &opts);
        assert_eq!(
            r.options.json_schema.as_ref().unwrap()["items"]["properties"]["bbox_2d"]
                ["prefixItems"][0]["maximum"],
            1000
        );
        let r = Grounding::new(QwenGeneration::Qwen2).request(&image, "x", (56, 84), &opts);
        assert!(r
            .options
            .grammar
            .as_ref()
            .unwrap()
            .contains("<|box_start|>"));
    }
}
