//! What a photo's EXIF block says: when, where, with what camera, which way up.
//!
//! A photo without EXIF (screenshots, scans, most PNGs) is normal; every field is
//! optional and a damaged block reads as "no EXIF", never as a failed photo.

use std::io::Cursor;

use exif::{Field, In, Reader, Tag, Value};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExifInfo {
    /// `YYYY-MM-DD HH:MM:SS`, the camera's local time (EXIF has no reliable zone).
    pub taken_at: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub camera: Option<String>,
    pub orientation: Option<u32>,
}

pub fn read(bytes: &[u8]) -> ExifInfo {
    let Ok(exif) = Reader::new().read_from_container(&mut Cursor::new(bytes)) else {
        return ExifInfo::default();
    };
    let field = |tag| exif.get_field(tag, In::PRIMARY);
    let taken_at = field(Tag::DateTimeOriginal)
        .or_else(|| field(Tag::DateTime))
        .and_then(ascii)
        .and_then(|s| exif_time(&s));
    let camera = [field(Tag::Make), field(Tag::Model)]
        .into_iter()
        .flatten()
        .filter_map(ascii)
        .collect::<Vec<_>>()
        .join(" ");
    ExifInfo {
        taken_at,
        lat: coordinate(field(Tag::GPSLatitude), field(Tag::GPSLatitudeRef), b'S'),
        lon: coordinate(field(Tag::GPSLongitude), field(Tag::GPSLongitudeRef), b'W'),
        camera: (!camera.is_empty()).then_some(camera),
        orientation: field(Tag::Orientation).and_then(|f| f.value.get_uint(0)),
    }
}

fn ascii(f: &Field) -> Option<String> {
    match &f.value {
        Value::Ascii(parts) => parts.first().map(|b| {
            String::from_utf8_lossy(b)
                .trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_string()
        }),
        _ => None,
    }
    .filter(|s| !s.is_empty())
}

/// EXIF writes `2024:05:01 10:00:00`; SQLite and people read `2024-05-01 10:00:00`.
fn exif_time(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if !(digits(0..4) && digits(5..7) && digits(8..10) && digits(11..13) && digits(14..16)) {
        return None;
    }
    // Cameras without a clock set write all zeros.
    if s.starts_with("0000") {
        return None;
    }
    let sec = if digits(17..19) { &s[17..19] } else { "00" };
    Some(format!(
        "{}-{}-{} {}:{}:{sec}",
        &s[0..4],
        &s[5..7],
        &s[8..10],
        &s[11..13],
        &s[14..16]
    ))
}

/// Degrees, minutes, seconds as three rationals, signed by the reference letter.
fn coordinate(value: Option<&Field>, reference: Option<&Field>, negative: u8) -> Option<f64> {
    let Value::Rational(dms) = &value?.value else {
        return None;
    };
    let part = |i: usize| dms.get(i).map_or(0.0, |r| r.to_f64());
    let deg = part(0) + part(1) / 60.0 + part(2) / 3600.0;
    if !deg.is_finite() {
        return None;
    }
    let sign = match reference.map(|r| &r.value) {
        Some(Value::Ascii(v)) if v.first().and_then(|s| s.first()) == Some(&negative) => -1.0,
        _ => 1.0,
    };
    Some(sign * deg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exif_times_become_sql_times() {
        assert_eq!(
            exif_time("2024:05:01 10:20:30").as_deref(),
            Some("2024-05-01 10:20:30")
        );
        assert_eq!(exif_time("0000:00:00 00:00:00"), None);
        assert_eq!(exif_time("garbage"), None);
    }

    #[test]
    fn no_exif_is_empty() {
        assert_eq!(read(b"not an image"), ExifInfo::default());
    }
}
