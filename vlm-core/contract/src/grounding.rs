//! Grounding: where in the photo a thing is ([`crate::VisionLanguageModel::locate`]).

use serde::Serialize;

/// One thing found in a photo.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// What the model called it (usually the words asked for).
    pub label: String,
    /// `[x1, y1, x2, y2]`: left, top, right, bottom edges in pixels of the photo as
    /// [`crate::Image`] holds it (EXIF orientation applied, before any resize), clamped
    /// to the photo with `x1 <= x2`, `y1 <= y2`.
    pub bbox: [f32; 4],
}

impl Detection {
    /// A detection from a box whose corners may come in any order, clamped to a
    /// `width`×`height` photo.
    pub fn clamped(label: String, corners: [f32; 4], width: u32, height: u32) -> Self {
        let (w, h) = (width as f32, height as f32);
        let [a, b, c, d] = corners;
        let x = |v: f32| v.clamp(0.0, w);
        let y = |v: f32| v.clamp(0.0, h);
        Self {
            label,
            bbox: [x(a.min(c)), y(b.min(d)), x(a.max(c)), y(b.max(d))],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corners_are_ordered_and_clamped() {
        let d = Detection::clamped("cake".into(), [120.0, 90.0, -5.0, 700.0], 640, 480);
        assert_eq!(d.bbox, [0.0, 90.0, 120.0, 480.0]);
    }
}
