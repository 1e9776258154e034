//! Input images: decoding every supported format, EXIF orientation and each kind of bad
//! input. PIL-exact resizing is tested next to the resizer, in vlm-models/tests/resize_pil.rs.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::codecs::gif::GifEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::{
    DynamicImage, Frame, GrayAlphaImage, GrayImage, ImageBuffer, ImageFormat, Rgb, RgbImage, Rgba,
    RgbaImage,
};
use vlm_contract::image::{Image, ImageError, ImageLimits};

// ---- helpers --------------------------------------------------------------------------

/// A small image whose every pixel differs, so a lossless round trip checks every byte.
fn pattern(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        Rgb([
            (x * 16 + 3) as u8,
            (y * 20 + 5) as u8,
            ((x * 7 + y * 11) * 3 % 256) as u8,
        ])
    })
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, format)
        .expect("encoding a test image");
    buf.into_inner()
}

fn encode_jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut buf = Vec::new();
    JpegEncoder::new_with_quality(&mut buf, quality)
        .encode_image(img)
        .expect("encoding a JPEG");
    buf
}

/// Deterministic noise (xorshift), for data that must not compress or look like a format.
fn noise_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn noise_image(width: u32, height: u32, seed: u64) -> RgbImage {
    let data = noise_bytes((width * height * 3) as usize, seed);
    RgbImage::from_raw(width, height, data).expect("sized buffer")
}

fn max_channel_diff(a: Rgb<u8>, b: Rgb<u8>) -> u8 {
    a.0.iter()
        .zip(b.0)
        .map(|(x, y)| x.abs_diff(y))
        .max()
        .unwrap_or(0)
}

/// A fresh empty folder under the system temp dir for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vlm-image-inputs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    dir
}

/// CRC-32 (IEEE) as PNG chunks need it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    chunk.extend_from_slice(kind);
    chunk.extend_from_slice(data);
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    chunk.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    chunk
}

/// A PNG whose header declares `width` x `height` RGB8 but whose data is one empty
/// zlib stream: enough for a decoder to read the header.
fn png_with_header(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, no filter, no interlace
    png.extend(png_chunk(b"IHDR", &ihdr));
    // zlib header, one final stored block of length 0, Adler-32 of nothing.
    png.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 1],
    ));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

// ---- formats --------------------------------------------------------------------------

#[test]
fn lossless_formats_round_trip_exactly() {
    let rgb = pattern(13, 9);
    let dynamic = DynamicImage::ImageRgb8(rgb.clone());
    for format in [
        ImageFormat::Png,
        ImageFormat::WebP,
        ImageFormat::Bmp,
        ImageFormat::Tiff,
    ] {
        let bytes = encode(&dynamic, format);
        let img = Image::from_bytes(&bytes).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!((img.width(), img.height()), (13, 9), "{format:?}");
        assert!(img.as_rgb() == &rgb, "{format:?} changed pixels");
    }
}

#[test]
fn jpeg_decodes_close_to_the_original() {
    // Flat 16x16 blocks survive JPEG (and 4:2:0 chroma) almost exactly.
    let rgb = RgbImage::from_fn(32, 16, |x, _| {
        if x < 16 {
            Rgb([200, 40, 40])
        } else {
            Rgb([30, 60, 220])
        }
    });
    let img = Image::from_bytes(&encode_jpeg(&rgb, 95)).expect("JPEG decodes");
    assert_eq!((img.width(), img.height()), (32, 16));
    for (x, y) in [(4, 4), (27, 11)] {
        let d = max_channel_diff(*img.as_rgb().get_pixel(x, y), *rgb.get_pixel(x, y));
        assert!(d <= 8, "pixel ({x},{y}) off by {d}");
    }
}

#[test]
fn gif_returns_the_first_frame() {
    let first = RgbaImage::from_fn(6, 4, |x, _| {
        if x < 3 {
            Rgba([255, 0, 0, 255])
        } else {
            Rgba([0, 0, 255, 255])
        }
    });
    let second = RgbaImage::from_pixel(6, 4, Rgba([0, 255, 0, 255]));
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut bytes);
        encoder
            .encode_frames(vec![Frame::new(first.clone()), Frame::new(second)])
            .expect("encoding a GIF");
    }
    let img = Image::from_bytes(&bytes).expect("GIF decodes");
    assert_eq!((img.width(), img.height()), (6, 4));
    assert_eq!(*img.as_rgb().get_pixel(0, 0), Rgb([255, 0, 0]));
    assert_eq!(*img.as_rgb().get_pixel(5, 3), Rgb([0, 0, 255]));
}

#[test]
fn grey_converts_to_rgb() {
    let grey = GrayImage::from_fn(5, 3, |x, y| image::Luma([(x * 40 + y) as u8]));
    let img = Image::from_bytes(&encode(
        &DynamicImage::ImageLuma8(grey.clone()),
        ImageFormat::Png,
    ))
    .expect("grey PNG");
    for (x, y, p) in img.as_rgb().enumerate_pixels() {
        let v = grey.get_pixel(x, y).0[0];
        assert_eq!(*p, Rgb([v, v, v]));
    }
    let grey_alpha = GrayAlphaImage::from_fn(4, 2, |x, _| image::LumaA([(x * 50) as u8, 0]));
    let img = Image::from_bytes(&encode(
        &DynamicImage::ImageLumaA8(grey_alpha),
        ImageFormat::Png,
    ))
    .expect("LA PNG");
    assert_eq!(*img.as_rgb().get_pixel(3, 1), Rgb([150, 150, 150]));
}

#[test]
fn rgba_drops_alpha_like_pil_convert_rgb() {
    // PIL's convert("RGB") keeps the colour of fully transparent pixels: no compositing.
    let rgba = RgbaImage::from_fn(4, 4, |x, y| {
        Rgba([(x * 60) as u8, (y * 60) as u8, 77, (x * y * 15) as u8])
    });
    let img = Image::from_bytes(&encode(
        &DynamicImage::ImageRgba8(rgba.clone()),
        ImageFormat::Png,
    ))
    .expect("RGBA PNG");
    for (x, y, p) in img.as_rgb().enumerate_pixels() {
        let q = rgba.get_pixel(x, y).0;
        assert_eq!(*p, Rgb([q[0], q[1], q[2]]), "({x},{y})");
    }
}

#[test]
fn sixteen_bit_keeps_the_high_byte_like_pil() {
    let values = [0x0000u16, 0x00ff, 0x7fff, 0x8000, 0x80ff, 0xffff];
    let rgb16: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_fn(values.len() as u32, 1, |x, _| {
            let v = values[x as usize];
            Rgb([v, 0xffff - v, v / 2])
        });
    let bytes = encode(&DynamicImage::ImageRgb16(rgb16.clone()), ImageFormat::Png);
    let img = Image::from_bytes(&bytes).expect("16-bit PNG");
    for (x, p) in img.as_rgb().pixels().enumerate() {
        let q = rgb16.get_pixel(x as u32, 0).0;
        assert_eq!(
            p.0,
            [(q[0] >> 8) as u8, (q[1] >> 8) as u8, (q[2] >> 8) as u8]
        );
    }
}

#[test]
fn format_comes_from_the_bytes_not_the_extension() {
    let dir = temp_dir("sniff");
    let path = dir.join("photo.jpg");
    let rgb = pattern(7, 5);
    std::fs::write(
        &path,
        encode(&DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::Png),
    )
    .expect("write");
    let img = Image::open(&path).expect("a PNG named .jpg opens");
    assert!(img.as_rgb() == &rgb);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn from_rgb_and_debug() {
    let img = Image::from_rgb(2, 1, vec![1, 2, 3, 4, 5, 6]).expect("valid buffer");
    assert_eq!(format!("{img:?}"), "Image { width: 2, height: 1 }");
    assert_eq!(img.clone().into_rgb().into_raw(), vec![1, 2, 3, 4, 5, 6]);
}

// ---- EXIF orientation ----------------------------------------------------------------

/// A 64x32 JPEG of 16x16 flat blocks: red top-left, green top-right, blue bottom-left,
/// white bottom-right, grey elsewhere.
const W: u32 = 64;
const H: u32 = 32;
const RED: Rgb<u8> = Rgb([220, 30, 30]);
const GREEN: Rgb<u8> = Rgb([30, 200, 30]);
const BLUE: Rgb<u8> = Rgb([30, 30, 220]);
const WHITE: Rgb<u8> = Rgb([250, 250, 250]);

fn corners_image() -> RgbImage {
    RgbImage::from_fn(W, H, |x, y| match (x / 16, y / 16) {
        (0, 0) => RED,
        (3, 0) => GREEN,
        (0, 1) => BLUE,
        (3, 1) => WHITE,
        _ => Rgb([128, 128, 128]),
    })
}

/// An APP1 Exif segment holding one IFD0 entry: Orientation (0x0112, SHORT) = `value`.
fn exif_orientation_segment(value: u16, big_endian: bool) -> Vec<u8> {
    let u16b = |v: u16| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let u32b = |v: u32| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut tiff = Vec::new();
    tiff.extend_from_slice(if big_endian {
        b"MM\x00\x2a"
    } else {
        b"II\x2a\x00"
    });
    tiff.extend_from_slice(&u32b(8)); // IFD0 right after the 8-byte header
    tiff.extend_from_slice(&u16b(1)); // one entry
    tiff.extend_from_slice(&u16b(0x0112)); // tag: Orientation
    tiff.extend_from_slice(&u16b(3)); // type: SHORT
    tiff.extend_from_slice(&u32b(1)); // count
    tiff.extend_from_slice(&u16b(value)); // value, left-justified in the 4-byte field
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&u32b(0)); // no next IFD
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend(tiff);
    let mut segment = vec![0xff, 0xe1];
    segment.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    segment.extend(payload);
    segment
}

/// The test JPEG with an Exif orientation inserted right after SOI.
fn jpeg_with_orientation(value: u16, big_endian: bool) -> Vec<u8> {
    let jpeg = encode_jpeg(&corners_image(), 95);
    assert_eq!(&jpeg[..2], &[0xff, 0xd8], "JPEG starts with SOI");
    let mut out = jpeg[..2].to_vec();
    out.extend(exif_orientation_segment(value, big_endian));
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Asserts the colour near each displayed corner (4 pixels in, inside the block).
fn assert_corners(img: &Image, expected: [(Rgb<u8>, &str); 4], case: &str) {
    let (w, h) = (img.width(), img.height());
    let spots = [(4, 4), (w - 5, 4), (4, h - 5), (w - 5, h - 5)];
    let names = ["top-left", "top-right", "bottom-left", "bottom-right"];
    for (((x, y), (colour, colour_name)), corner) in spots.into_iter().zip(expected).zip(names) {
        let got = *img.as_rgb().get_pixel(x, y);
        assert!(
            max_channel_diff(got, colour) <= 12,
            "{case}: {corner} should be {colour_name} {colour:?}, got {got:?}"
        );
    }
}

#[test]
fn exif_orientation_1_and_none_keep_the_stored_layout() {
    let expected = [
        (RED, "red"),
        (GREEN, "green"),
        (BLUE, "blue"),
        (WHITE, "white"),
    ];
    let plain = Image::from_bytes(&encode_jpeg(&corners_image(), 95)).expect("plain JPEG");
    assert_eq!((plain.width(), plain.height()), (W, H));
    assert_corners(&plain, expected, "no EXIF");
    let one = Image::from_bytes(&jpeg_with_orientation(1, true)).expect("orientation 1");
    assert_eq!((one.width(), one.height()), (W, H));
    assert_corners(&one, expected, "orientation 1");
}

#[test]
fn exif_orientation_6_rotates_90_clockwise() {
    // Displayed upright, the stored left column becomes the top row: blue (stored
    // bottom-left) is now top-left and red (stored top-left) is top-right.
    for big_endian in [true, false] {
        let img = Image::from_bytes(&jpeg_with_orientation(6, big_endian)).expect("orientation 6");
        assert_eq!((img.width(), img.height()), (H, W), "width and height swap");
        assert_corners(
            &img,
            [
                (BLUE, "blue"),
                (RED, "red"),
                (WHITE, "white"),
                (GREEN, "green"),
            ],
            "orientation 6",
        );
    }
}

#[test]
fn exif_orientation_3_rotates_180() {
    let img = Image::from_bytes(&jpeg_with_orientation(3, true)).expect("orientation 3");
    assert_eq!((img.width(), img.height()), (W, H));
    assert_corners(
        &img,
        [
            (WHITE, "white"),
            (BLUE, "blue"),
            (GREEN, "green"),
            (RED, "red"),
        ],
        "orientation 3",
    );
}

#[test]
fn exif_orientation_8_rotates_90_counter_clockwise() {
    let img = Image::from_bytes(&jpeg_with_orientation(8, false)).expect("orientation 8");
    assert_eq!((img.width(), img.height()), (H, W));
    assert_corners(
        &img,
        [
            (GREEN, "green"),
            (WHITE, "white"),
            (RED, "red"),
            (BLUE, "blue"),
        ],
        "orientation 8",
    );
}

#[test]
fn exif_orientation_applies_when_opening_a_file() {
    let dir = temp_dir("exif");
    let path = dir.join("portrait.jpg");
    std::fs::write(&path, jpeg_with_orientation(6, true)).expect("write");
    let img = Image::open(&path).expect("open");
    assert_eq!((img.width(), img.height()), (H, W));
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- bad inputs ----------------------------------------------------------------------

#[test]
fn missing_file_names_the_path() {
    let path = Path::new("/definitely/not/here/photo.jpg");
    let err = Image::open(path).expect_err("missing file");
    assert!(matches!(err, ImageError::NotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("/definitely/not/here/photo.jpg") && msg.contains("not found"),
        "{msg}"
    );
}

#[test]
fn a_directory_is_unreadable() {
    let dir = temp_dir("dir");
    let err = Image::open(&dir).expect_err("a directory");
    assert!(matches!(err, ImageError::Unreadable { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot read image file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn truncated_jpeg_is_corrupt() {
    let jpeg = encode_jpeg(&noise_image(64, 64, 7), 90);
    for cut in [jpeg.len() / 2, jpeg.len() - 2, 200] {
        let err = Image::from_bytes(&jpeg[..cut]).expect_err("truncated JPEG");
        assert!(
            matches!(err, ImageError::Corrupt { format: "JPEG", .. }),
            "cut at {cut}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("corrupt or truncated") && msg.contains("re-download"),
            "{msg}"
        );
    }
}

#[test]
fn jpeg_with_data_after_the_end_marker_still_decodes() {
    // Phones append motion-photo videos after EOI; PIL ignores them and so do we.
    let mut jpeg = encode_jpeg(&corners_image(), 90);
    jpeg.extend_from_slice(b"\0\0\0\x18ftypmp42 trailing video bytes");
    let img = Image::from_bytes(&jpeg).expect("trailing data is ignored");
    assert_eq!((img.width(), img.height()), (W, H));
}

#[test]
fn truncated_files_of_every_format_are_corrupt() {
    let rgb = DynamicImage::ImageRgb8(noise_image(48, 40, 5));
    for format in [
        ImageFormat::Png,
        ImageFormat::WebP,
        ImageFormat::Gif,
        ImageFormat::Bmp,
        ImageFormat::Tiff,
    ] {
        let bytes = encode(&rgb, format);
        let cut = &bytes[..bytes.len() * 3 / 5];
        match Image::from_bytes(cut) {
            Err(ImageError::Corrupt { .. }) => {}
            other => panic!(
                "{format:?} cut to {} of {} bytes: {other:?}",
                cut.len(),
                bytes.len()
            ),
        }
    }
}

#[test]
fn truncated_and_damaged_png_are_corrupt() {
    let png = encode(
        &DynamicImage::ImageRgb8(noise_image(32, 32, 3)),
        ImageFormat::Png,
    );
    let err = Image::from_bytes(&png[..png.len() / 2]).expect_err("truncated PNG");
    assert!(
        matches!(err, ImageError::Corrupt { format: "PNG", .. }),
        "{err:?}"
    );
    let mut damaged = png.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0xff; // the IDAT CRC no longer matches
    let err = Image::from_bytes(&damaged).expect_err("damaged PNG");
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err:?}");
}

#[test]
fn garbage_is_an_unsupported_format_listing_the_supported_ones() {
    let mut garbage = noise_bytes(4096, 11);
    garbage[0] = b'Z'; // no image signature starts with Z
    let err = Image::from_bytes(&garbage).expect_err("garbage");
    assert!(
        matches!(err, ImageError::UnsupportedFormat { detected: None, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("JPEG, PNG, WebP, GIF (first frame), BMP and TIFF"),
        "{msg}"
    );
    assert!(msg.contains("the image data"), "{msg}");
}

#[test]
fn known_but_unsupported_formats_are_named() {
    // An iPhone HEIC starts with an ftyp box of brand "heic".
    let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic";
    let err = Image::from_bytes(heic).expect_err("HEIC");
    assert!(
        matches!(
            err,
            ImageError::UnsupportedFormat {
                detected: Some("HEIC/HEIF"),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("looks like HEIC/HEIF"), "{err}");
    // ICO is recognised by the image crate but not decoded here.
    let err = Image::from_bytes(&[0, 0, 1, 0, 1, 0, 16, 16, 0, 0]).expect_err("ICO");
    assert!(
        matches!(
            err,
            ImageError::UnsupportedFormat {
                detected: Some("ICO"),
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn empty_data_is_corrupt() {
    let err = Image::from_bytes(&[]).expect_err("no bytes");
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("empty (0 bytes)"), "{err}");
}

#[test]
fn zero_width_png_and_bmp_are_zero_size() {
    let err = Image::from_bytes(&png_with_header(0, 16)).expect_err("0x16 PNG");
    assert!(
        matches!(
            err,
            ImageError::ZeroSize {
                width: 0,
                height: 16,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("at least one pixel"), "{err}");

    // A real 4x4 BMP with the width in its info header zeroed.
    let mut bmp = encode(&DynamicImage::ImageRgb8(pattern(4, 4)), ImageFormat::Bmp);
    assert_eq!(&bmp[..2], b"BM");
    bmp[18..22].copy_from_slice(&0i32.to_le_bytes());
    let err = Image::from_bytes(&bmp).expect_err("0x4 BMP");
    assert!(
        matches!(
            err,
            ImageError::ZeroSize {
                width: 0,
                height: 4,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn zero_size_rgb_buffer_is_refused() {
    let err = Image::from_rgb(0, 5, Vec::new()).expect_err("0x5 buffer");
    assert!(
        matches!(
            err,
            ImageError::ZeroSize {
                width: 0,
                height: 5,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn wrong_rgb_buffer_length_says_what_is_needed() {
    let err = Image::from_rgb(4, 3, vec![0; 35]).expect_err("short buffer");
    assert!(
        matches!(
            err,
            ImageError::BufferSize {
                len: 35,
                expected: 36,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("35 bytes") && msg.contains("width*height*3 = 36"),
        "{msg}"
    );
    // Sizes whose product overflows u64 are reported, not wrapped.
    let err = Image::from_rgb(u32::MAX, u32::MAX, vec![0; 3]).expect_err("huge");
    assert!(matches!(err, ImageError::BufferSize { .. }), "{err:?}");
}

#[test]
fn pixel_limit_is_checked_and_explained() {
    let png = encode(&DynamicImage::ImageRgb8(pattern(100, 60)), ImageFormat::Png);
    let limits = ImageLimits {
        max_pixels: 5000,
        ..ImageLimits::default()
    };
    let err = Image::from_bytes_with(&png, &limits).expect_err("over the limit");
    assert!(
        matches!(
            err,
            ImageError::TooManyPixels {
                width: 100,
                height: 60,
                pixels: 6000,
                max_pixels: 5000,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("100x60 = 6000 pixels") && msg.contains("limit of 5000"),
        "{msg}"
    );
    assert!(
        msg.contains("ImageLimits::max_pixels") && msg.contains("Image::from_bytes_with"),
        "{msg}"
    );
    // Exactly at the limit is fine.
    let limits = ImageLimits {
        max_pixels: 6000,
        ..ImageLimits::default()
    };
    assert!(Image::from_bytes_with(&png, &limits).is_ok());
}

#[test]
fn every_format_checks_the_pixel_limit_before_decoding() {
    let rgb = DynamicImage::ImageRgb8(pattern(20, 10));
    let limits = ImageLimits {
        max_pixels: 199,
        ..ImageLimits::default()
    };
    for format in [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::WebP,
        ImageFormat::Gif,
        ImageFormat::Bmp,
        ImageFormat::Tiff,
    ] {
        let err =
            Image::from_bytes_with(&encode(&rgb, format), &limits).expect_err("over the limit");
        assert!(
            matches!(err, ImageError::TooManyPixels { pixels: 200, .. }),
            "{format:?}: {err:?}"
        );
    }
}

#[test]
fn decompression_bomb_header_is_refused_with_default_limits() {
    // 100000 x 100000 declared in a 70-byte file: refused from the header alone.
    let bomb = png_with_header(100_000, 100_000);
    let err = Image::from_bytes(&bomb).expect_err("bomb");
    assert!(
        matches!(err, ImageError::TooManyPixels { pixels: 10_000_000_000, max_pixels, .. }
            if max_pixels == ImageLimits::DEFAULT_MAX_PIXELS),
        "{err:?}"
    );
}

#[test]
fn allocation_limit_is_checked_and_explained() {
    let png = encode(&DynamicImage::ImageRgb8(pattern(16, 16)), ImageFormat::Png);
    let limits = ImageLimits {
        max_alloc_bytes: 100,
        ..ImageLimits::default()
    };
    let err = Image::from_bytes_with(&png, &limits).expect_err("over the allocation limit");
    assert!(
        matches!(
            err,
            ImageError::TooMuchMemory {
                needed: Some(768),
                max_alloc_bytes: 100,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("ImageLimits::max_alloc_bytes"),
        "{err}"
    );
}

#[test]
fn default_limits_match_pil() {
    let limits = ImageLimits::default();
    // PIL: MAX_IMAGE_PIXELS = int(1024 * 1024 * 1024 // 4 // 3); error above twice that.
    assert_eq!(limits.max_pixels, 178_956_970);
    assert!(limits.max_alloc_bytes >= limits.max_pixels * 8);
}

#[test]
fn image_errors_are_bad_input() {
    let err = Image::from_rgb(1, 1, vec![]).expect_err("short buffer");
    let err = vlm_contract::Error::from(err);
    assert_eq!(err.kind(), vlm_contract::ErrorKind::BadInput);
}
