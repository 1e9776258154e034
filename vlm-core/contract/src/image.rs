//! Decoded input images: the one place where files and bytes become RGB pixels.
//!
//! Every image a model sees goes through [`Image`], so every family gets the same
//! behaviour as the Python references (`transformers.image_utils.load_image`, which
//! applies `ImageOps.exif_transpose` and then `convert("RGB")`):
//!
//! * the format is sniffed from the bytes (a `.png` that is really a JPEG still opens);
//! * the EXIF orientation is applied, so a portrait phone photo stored sideways comes
//!   out upright;
//! * every colour type becomes 8-bit RGB; alpha is dropped, not composited, as PIL's
//!   `convert("RGB")` does;
//! * the pixel count is checked from the header before any pixel is decoded, so a
//!   small file claiming to be gigapixels (a decompression bomb) is refused cheaply.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read, Seek};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

/// The formats [`Image`] decodes, as listed in error messages.
pub const SUPPORTED_FORMATS: &str = "JPEG, PNG, WebP, GIF (first frame), BMP and TIFF";

/// What the user passed, for error messages.
const BYTES_INPUT: &str = "the image data";
const RGB_BUFFER_INPUT: &str = "the RGB buffer";

/// Bytes of the widest pixel the supported decoders produce (16-bit RGBA), used to size
/// the default allocation limit from the pixel limit.
const WIDEST_PIXEL_BYTES: u64 = 8;

/// Everything that can go wrong turning a file, bytes or a buffer into an [`Image`].
///
/// Each message names the input and says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The file does not exist.
    #[error("image file {} was not found: check the path (relative paths start from the current directory)", path.display())]
    NotFound {
        /// The path as given.
        path: PathBuf,
    },

    /// The file exists but could not be read (permissions, a directory, an I/O error).
    #[error("cannot read image file {}: {source}; check that it is a readable file", path.display())]
    Unreadable {
        /// The path as given.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// The data is not in any format we decode.
    #[error("{input} is not in a supported image format{}: supported formats are {SUPPORTED_FORMATS}; convert it to one of them (PNG or JPEG)", detected.map(|f| format!(" (it looks like {f})")).unwrap_or_default())]
    UnsupportedFormat {
        /// The file path, or "the image data".
        input: String,
        /// The format the bytes look like, when we can tell.
        detected: Option<&'static str>,
    },

    /// The format is supported but this file uses a feature its decoder lacks
    /// (an unusual compression, bit depth or colour model).
    #[error("{input} is a {format} image that uses a feature the decoder does not support ({message}): re-save it as a baseline JPEG or an 8-bit PNG")]
    UnsupportedFeature {
        /// The file path, or "the image data".
        input: String,
        /// The detected format.
        format: &'static str,
        /// The decoder's explanation.
        message: String,
    },

    /// The data is damaged: truncated, garbled, or inconsistent with its own header.
    #[error(
        "{input} is corrupt or truncated ({format}: {message}): re-download or re-export the image"
    )]
    Corrupt {
        /// The file path, or "the image data".
        input: String,
        /// The detected format.
        format: &'static str,
        /// The decoder's explanation.
        message: String,
    },

    /// The image has no pixels in one direction.
    #[error("{input} is {width}x{height} pixels: an image needs at least one pixel in each direction; check that the right file or size was passed")]
    ZeroSize {
        /// The file path, "the image data" or "the RGB buffer".
        input: String,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
    },

    /// The header declares more pixels than [`ImageLimits::max_pixels`].
    #[error("{input} is {width}x{height} = {pixels} pixels, over the limit of {max_pixels} pixels that guards against decompression bombs: downscale the image, or raise ImageLimits::max_pixels and load it with Image::open_with / Image::from_bytes_with")]
    TooManyPixels {
        /// The file path, or "the image data".
        input: String,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// `width * height`.
        pixels: u64,
        /// The limit in force.
        max_pixels: u64,
    },

    /// Decoding would allocate more than [`ImageLimits::max_alloc_bytes`].
    #[error("decoding {input} needs {} bytes of memory, over the limit of {max_alloc_bytes} bytes: downscale the image or convert it to 8-bit, or raise ImageLimits::max_alloc_bytes and load it with Image::open_with / Image::from_bytes_with", needed.map(|n| format!("{n}")).unwrap_or_else(|| "more".into()))]
    TooMuchMemory {
        /// The file path, or "the image data".
        input: String,
        /// Bytes the decoded image needs, when known.
        needed: Option<u64>,
        /// The limit in force.
        max_alloc_bytes: u64,
    },

    /// [`Image::from_rgb`] got a buffer whose length is not `width * height * 3`.
    #[error("the RGB buffer has {len} bytes but a {width}x{height} RGB8 image needs width*height*3 = {expected}: pass rows top to bottom, 3 bytes (R, G, B) per pixel, no padding")]
    BufferSize {
        /// Width passed.
        width: u32,
        /// Height passed.
        height: u32,
        /// Bytes passed.
        len: usize,
        /// Bytes needed.
        expected: u128,
    },
}

/// Guards applied while decoding, against decompression bombs and runaway memory use.
///
/// Override one field and keep the others:
///
/// ```
/// use vlm_contract::image::ImageLimits;
///
/// let strict = ImageLimits { max_pixels: 4096 * 4096, ..ImageLimits::default() };
/// assert!(strict.max_pixels < ImageLimits::default().max_pixels);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageLimits {
    /// Most pixels (`width * height`, from the header) an image may have. Default
    /// [`ImageLimits::DEFAULT_MAX_PIXELS`].
    pub max_pixels: u64,
    /// Most bytes the decoder may allocate, the decoded pixels included (passed on as
    /// `image::Limits::max_alloc`). Default [`ImageLimits::DEFAULT_MAX_ALLOC_BYTES`].
    pub max_alloc_bytes: u64,
}

impl ImageLimits {
    /// 178,956,970 pixels: the size at which PIL refuses to open an image
    /// (`DecompressionBombError` above `2 * Image.MAX_IMAGE_PIXELS`, with
    /// `MAX_IMAGE_PIXELS = 1 GiB / 4 / 3`). Matching it means every image the Python
    /// reference pipelines accept loads here too (a 108 MP phone photo, a 150 MP
    /// panorama), while a bomb is refused; at the limit the RGB8 result is 537 MB.
    pub const DEFAULT_MAX_PIXELS: u64 = 2 * (1024 * 1024 * 1024 / 4 / 3);

    /// Enough to decode an image at [`ImageLimits::DEFAULT_MAX_PIXELS`] in the widest
    /// layout the supported formats produce (16-bit RGBA, 8 bytes a pixel): 1.43 GB.
    pub const DEFAULT_MAX_ALLOC_BYTES: u64 = Self::DEFAULT_MAX_PIXELS * WIDEST_PIXEL_BYTES;
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_pixels: Self::DEFAULT_MAX_PIXELS,
            max_alloc_bytes: Self::DEFAULT_MAX_ALLOC_BYTES,
        }
    }
}

/// A decoded RGB8 photo, EXIF orientation already applied.
///
/// Never empty: width and height are at least 1.
#[derive(Clone)]
pub struct Image {
    // Shared: requests clone images (a batch of describe calls, relate), and a 12 MP photo
    // is 36 MB of pixels.
    rgb: std::sync::Arc<RgbImage>,
    /// [`Image::content_hash`], computed once and shared by clones.
    hash: std::sync::Arc<std::sync::OnceLock<[u8; 32]>>,
}

impl Image {
    /// Opens and decodes an image file with the default [`ImageLimits`].
    ///
    /// The format comes from the file's bytes, not its extension.
    ///
    /// # Errors
    ///
    /// [`ImageError::NotFound`] or [`ImageError::Unreadable`] for the file, and any
    /// error of [`Image::from_bytes`].
    pub fn open(path: impl AsRef<Path>) -> Result<Image, ImageError> {
        Self::open_with(path, &ImageLimits::default())
    }

    /// Opens and decodes an image file with custom limits.
    pub fn open_with(path: impl AsRef<Path>, limits: &ImageLimits) -> Result<Image, ImageError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        let input = Input::File(path);
        let mut reader = BufReader::new(file);
        let head = peek(&mut reader, &input)?;
        if matches!(image::guess_format(&head), Ok(ImageFormat::Jpeg)) {
            // The JPEG decoder reads the whole file into memory anyway; holding the bytes
            // here lets `decode` check that the file is complete.
            let mut bytes = Vec::new();
            reader
                .read_to_end(&mut bytes)
                .map_err(|e| io_error(path, e))?;
            return decode(Cursor::new(bytes.as_slice()), limits, &input, Some(&bytes));
        }
        decode(reader, limits, &input, None)
    }

    /// Decodes an encoded image (JPEG, PNG, WebP, GIF, BMP, TIFF) from memory with the
    /// default [`ImageLimits`].
    ///
    /// # Errors
    ///
    /// [`ImageError::UnsupportedFormat`] or [`ImageError::UnsupportedFeature`] for data we
    /// cannot decode, [`ImageError::Corrupt`] for damaged or truncated data,
    /// [`ImageError::ZeroSize`] for an image without pixels, and
    /// [`ImageError::TooManyPixels`] or [`ImageError::TooMuchMemory`] past the limits.
    pub fn from_bytes(bytes: &[u8]) -> Result<Image, ImageError> {
        Self::from_bytes_with(bytes, &ImageLimits::default())
    }

    /// Decodes an encoded image from memory with custom limits.
    pub fn from_bytes_with(bytes: &[u8], limits: &ImageLimits) -> Result<Image, ImageError> {
        decode(Cursor::new(bytes), limits, &Input::Bytes, Some(bytes))
    }

    /// Wraps raw RGB8 pixels: `height` rows top to bottom, each `width` pixels of three
    /// bytes (R, G, B), no padding — the layout of a `height x width x 3` uint8 array.
    ///
    /// # Errors
    ///
    /// [`ImageError::BufferSize`] when `data.len() != width * height * 3`, and
    /// [`ImageError::ZeroSize`] when either size is 0.
    ///
    /// ```
    /// use vlm_contract::image::{Image, ImageError};
    ///
    /// // 2x1: a red pixel, then a blue one.
    /// let img = Image::from_rgb(2, 1, vec![255, 0, 0, 0, 0, 255])?;
    /// assert_eq!((img.width(), img.height()), (2, 1));
    /// assert_eq!(img.as_rgb().get_pixel(1, 0).0, [0, 0, 255]);
    ///
    /// // The length must be width * height * 3.
    /// let err = Image::from_rgb(2, 2, vec![0; 6]).unwrap_err();
    /// assert!(matches!(err, ImageError::BufferSize { expected: 12, .. }));
    /// # Ok::<(), ImageError>(())
    /// ```
    pub fn from_rgb(width: u32, height: u32, data: Vec<u8>) -> Result<Image, ImageError> {
        let expected = u128::from(width) * u128::from(height) * 3;
        let len = data.len();
        if len as u128 != expected {
            return Err(ImageError::BufferSize {
                width,
                height,
                len,
                expected,
            });
        }
        if width == 0 || height == 0 {
            return Err(ImageError::ZeroSize {
                input: RGB_BUFFER_INPUT.into(),
                width,
                height,
            });
        }
        match RgbImage::from_raw(width, height, data) {
            Some(rgb) => Ok(Image::wrap(rgb)),
            // Unreachable after the length check; reported rather than unwrapped.
            None => Err(ImageError::BufferSize {
                width,
                height,
                len,
                expected,
            }),
        }
    }

    fn wrap(rgb: RgbImage) -> Image {
        Image {
            rgb: rgb.into(),
            hash: Default::default(),
        }
    }

    /// BLAKE3 of the decoded pixels and their size: equal for the same picture however
    /// it was encoded or named, computed once per image (clones share it). The image
    /// cache keys on it.
    ///
    /// ```
    /// use vlm_contract::Image;
    ///
    /// let a = Image::from_rgb(2, 1, vec![255, 0, 0, 0, 0, 255])?;
    /// let b = Image::from_rgb(2, 1, vec![255, 0, 0, 0, 0, 255])?;
    /// let c = Image::from_rgb(1, 2, vec![255, 0, 0, 0, 0, 255])?;
    /// assert_eq!(a.content_hash(), b.content_hash());
    /// assert_ne!(a.content_hash(), c.content_hash());
    /// # Ok::<(), vlm_contract::ImageError>(())
    /// ```
    pub fn content_hash(&self) -> [u8; 32] {
        *self.hash.get_or_init(|| {
            let mut hasher = blake3::Hasher::new();
            hasher.update(&self.width().to_le_bytes());
            hasher.update(&self.height().to_le_bytes());
            // A 12 MP photo is 36 MB: hashed on every core, it costs a few ms.
            if self.rgb.as_raw().len() >= 1 << 22 {
                hasher.update_rayon(self.rgb.as_raw());
            } else {
                hasher.update(self.rgb.as_raw());
            }
            *hasher.finalize().as_bytes()
        })
    }

    /// Width in pixels, after EXIF orientation.
    pub fn width(&self) -> u32 {
        self.rgb.width()
    }

    /// Height in pixels, after EXIF orientation.
    pub fn height(&self) -> u32 {
        self.rgb.height()
    }

    /// The pixels.
    pub fn as_rgb(&self) -> &RgbImage {
        &self.rgb
    }

    /// The pixels, without copying.
    pub fn into_rgb(self) -> RgbImage {
        std::sync::Arc::unwrap_or_clone(self.rgb)
    }
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The pixels would flood logs; the size is what matters when debugging.
        f.debug_struct("Image")
            .field("width", &self.width())
            .field("height", &self.height())
            .finish()
    }
}

/// Where the bytes came from, for error messages.
enum Input<'a> {
    File(&'a Path),
    Bytes,
}

impl Input<'_> {
    fn name(&self) -> String {
        match self {
            Input::File(path) => path.display().to_string(),
            Input::Bytes => BYTES_INPUT.to_string(),
        }
    }
}

fn io_error(path: &Path, source: std::io::Error) -> ImageError {
    if source.kind() == std::io::ErrorKind::NotFound {
        ImageError::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        ImageError::Unreadable {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The formats we decode; `guess_format` also recognises others (ICO, AVIF, …) whose
/// decoders are not compiled in.
fn supported(format: ImageFormat) -> bool {
    matches!(
        format,
        ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp
            | ImageFormat::Tiff
    )
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        ImageFormat::Avif => "AVIF",
        ImageFormat::Ico => "ICO",
        ImageFormat::Dds => "DDS",
        ImageFormat::Hdr => "Radiance HDR",
        ImageFormat::OpenExr => "OpenEXR",
        ImageFormat::Pnm => "PNM",
        ImageFormat::Qoi => "QOI",
        ImageFormat::Farbfeld => "farbfeld",
        ImageFormat::Tga => "TGA",
        _ => "an image format we do not decode",
    }
}

/// Names common formats `image::guess_format` does not know, so the error can say
/// what the file is (iPhones save HEIC by default).
fn sniff_unknown(head: &[u8]) -> Option<&'static str> {
    // ISO base media files: a box size, then "ftyp" and the brand.
    if head.len() >= 12 && &head[4..8] == b"ftyp" {
        return match &head[8..12] {
            b"heic" | b"heix" | b"hevc" | b"hevx" | b"heim" | b"heis" | b"mif1" | b"msf1" => {
                Some("HEIC/HEIF")
            }
            b"avif" | b"avis" => Some("AVIF"),
            _ => Some("an ISO media file (video or HEIF)"),
        };
    }
    if head.starts_with(b"\xff\x0a") || head.starts_with(b"\0\0\0\x0cJXL ") {
        return Some("JPEG XL");
    }
    if head.starts_with(b"%PDF") {
        return Some("PDF");
    }
    if head.starts_with(b"<svg") || head.starts_with(b"<?xml") {
        return Some("SVG/XML");
    }
    None
}

/// Bytes looked at to sniff the format and, for PNG, GIF and BMP, the size.
const SNIFF_LEN: usize = 32;

/// Width and height from the first bytes of a PNG, GIF or BMP file.
fn header_dimensions(format: ImageFormat, head: &[u8]) -> Option<(u32, u32)> {
    let be32 = |at: usize| Some(u32::from_be_bytes(head.get(at..at + 4)?.try_into().ok()?));
    let le32 = |at: usize| Some(i32::from_le_bytes(head.get(at..at + 4)?.try_into().ok()?));
    let le16 = |at: usize| Some(u16::from_le_bytes(head.get(at..at + 2)?.try_into().ok()?));
    match format {
        // Signature (8), IHDR length (4), "IHDR", width, height: big-endian u32.
        ImageFormat::Png if head.get(12..16) == Some(b"IHDR".as_slice()) => {
            Some((be32(16)?, be32(20)?))
        }
        // "GIF89a", logical screen width and height: little-endian u16.
        ImageFormat::Gif => Some((u32::from(le16(6)?), u32::from(le16(8)?))),
        // File header (14), then the DIB header whose first field is its own size. The
        // 12-byte OS/2 core header has u16 sizes; the others i32, the height negative
        // for top-down rows.
        ImageFormat::Bmp => match le32(14)? {
            12 => Some((u32::from(le16(18)?), u32::from(le16(20)?))),
            _ => Some((le32(18)?.unsigned_abs(), le32(22)?.unsigned_abs())),
        },
        _ => None,
    }
}

/// Refuses empty images and images over the pixel limit.
fn check_dimensions(
    width: u32,
    height: u32,
    limits: &ImageLimits,
    input: &Input<'_>,
) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSize {
            input: input.name(),
            width,
            height,
        });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            input: input.name(),
            width,
            height,
            pixels,
            max_pixels: limits.max_pixels,
        });
    }
    Ok(())
}

/// The first [`SNIFF_LEN`] bytes, without consuming them.
fn peek<R: BufRead>(reader: &mut R, input: &Input<'_>) -> Result<Vec<u8>, ImageError> {
    // A fresh BufReader holds far more than SNIFF_LEN bytes after one `fill_buf`.
    let buf = reader.fill_buf().map_err(|e| read_error(e, input))?;
    Ok(buf[..buf.len().min(SNIFF_LEN)].to_vec())
}

fn read_error(e: std::io::Error, input: &Input<'_>) -> ImageError {
    match input {
        Input::File(path) => io_error(path, e),
        Input::Bytes => ImageError::Corrupt {
            input: input.name(),
            format: "unknown format",
            message: e.to_string(),
        },
    }
}

/// Decodes from `reader`; `whole` is the complete encoded data when the caller has it
/// in memory (always for JPEG, whose completeness is checked on it).
fn decode<R: BufRead + Seek>(
    mut reader: R,
    limits: &ImageLimits,
    input: &Input<'_>,
    whole: Option<&[u8]>,
) -> Result<Image, ImageError> {
    let head = peek(&mut reader, input)?;
    if head.is_empty() {
        return Err(ImageError::Corrupt {
            input: input.name(),
            format: "unknown format",
            message: "the data is empty (0 bytes)".into(),
        });
    }
    let format = match image::guess_format(&head) {
        Ok(format) if supported(format) => format,
        Ok(format) => {
            return Err(ImageError::UnsupportedFormat {
                input: input.name(),
                detected: Some(format_name(format)),
            })
        }
        Err(_) => {
            return Err(ImageError::UnsupportedFormat {
                input: input.name(),
                detected: sniff_unknown(&head),
            })
        }
    };
    let name = format_name(format);
    // Check what the header declares before any decoder allocates for it. PNG, GIF and
    // BMP keep their size at fixed offsets, and some of their decoders reject a zero or
    // huge size with a generic error; the others are checked once the decoder has read
    // the header.
    if let Some((width, height)) = header_dimensions(format, &head) {
        check_dimensions(width, height, limits, input)?;
    }

    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_alloc_bytes);
    let mut reader = ImageReader::with_format(reader, format);
    reader.limits(decoder_limits);
    // Constructing the decoder reads the header only.
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| from_image_error(e, input, name, limits))?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, limits, input)?;
    if format == ImageFormat::Jpeg && !whole.is_some_and(jpeg_reaches_eoi) {
        return Err(ImageError::Corrupt {
            input: input.name(),
            format: name,
            message: "the data ends before the JPEG end-of-image marker".into(),
        });
    }
    let needed = decoder.total_bytes();
    if needed > limits.max_alloc_bytes {
        return Err(ImageError::TooMuchMemory {
            input: input.name(),
            needed: Some(needed),
            max_alloc_bytes: limits.max_alloc_bytes,
        });
    }
    // A damaged EXIF block should not cost the user the photo: PIL's exif_transpose
    // also ignores what it cannot parse.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);

    let decoded = DynamicImage::from_decoder(decoder)
        .map_err(|e| from_image_error(e, input, name, limits))?;
    let mut upright = DynamicImage::ImageRgb8(to_rgb8(decoded));
    // Rotating after the RGB8 conversion moves 3 bytes a pixel instead of up to 8.
    upright.apply_orientation(orientation);
    Ok(Image::wrap(upright.into_rgb8()))
}

/// Converts any decoded colour type to RGB8 the way PIL's `convert("RGB")` does for
/// the types these formats produce: grey is replicated, alpha is dropped (not
/// composited), and 16-bit channels keep their high byte (PIL unpacks 16-bit RGB PNG
/// and TIFF that way; the `image` crate would round `v / 257` instead, one level off
/// for about half the values).
fn to_rgb8(decoded: DynamicImage) -> RgbImage {
    fn high_byte(v: u16) -> u8 {
        (v >> 8) as u8
    }
    match decoded {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgb16(img) => RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let p = img.get_pixel(x, y).0;
            image::Rgb([high_byte(p[0]), high_byte(p[1]), high_byte(p[2])])
        }),
        DynamicImage::ImageRgba16(img) => RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let p = img.get_pixel(x, y).0;
            image::Rgb([high_byte(p[0]), high_byte(p[1]), high_byte(p[2])])
        }),
        DynamicImage::ImageLuma16(img) => RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let v = high_byte(img.get_pixel(x, y).0[0]);
            image::Rgb([v, v, v])
        }),
        DynamicImage::ImageLumaA16(img) => RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let v = high_byte(img.get_pixel(x, y).0[0]);
            image::Rgb([v, v, v])
        }),
        // Rgba8 / Luma8 / LumaA8 drop alpha or replicate grey exactly; float TIFFs are
        // clamped and scaled by the crate.
        other => other.into_rgb8(),
    }
}

/// Whether JPEG data reaches its end-of-image marker.
///
/// zune-jpeg (which the `image` crate runs in its lenient mode) decodes a truncated file
/// without complaint, filling the missing part with grey. PIL refuses it ("image file is
/// truncated"), and a half-grey photo would quietly mislead the model, so we refuse it
/// too. Data after the marker is fine, as in PIL (phones append motion-photo videos).
fn jpeg_reaches_eoi(data: &[u8]) -> bool {
    const MARKER: u8 = 0xff;
    const SOI: u8 = 0xd8;
    const EOI: u8 = 0xd9;
    const SOS: u8 = 0xda;
    // Markers without a length field: TEM and the restart markers RST0-RST7.
    let standalone = |m: u8| m == 0x01 || (0xd0..=0xd7).contains(&m);

    if data.get(..2) != Some([MARKER, SOI].as_slice()) {
        return false;
    }
    let mut pos = 2;
    loop {
        // Like libjpeg, skip stray bytes before a marker, then any 0xff fill bytes.
        let Some(skip) = data
            .get(pos..)
            .and_then(|rest| rest.iter().position(|&b| b == MARKER))
        else {
            return false;
        };
        pos += skip;
        while data.get(pos) == Some(&MARKER) {
            pos += 1;
        }
        let Some(&marker) = data.get(pos) else {
            return false;
        };
        pos += 1;
        if marker == EOI {
            return true;
        }
        if standalone(marker) {
            continue;
        }
        let Some(len) = data.get(pos..pos + 2) else {
            return false;
        };
        pos += usize::from(u16::from_be_bytes([len[0], len[1]]));
        if marker != SOS {
            continue;
        }
        // Entropy-coded data follows the scan header; inside it 0xff is always followed
        // by 0x00 (a stuffed byte) or a restart marker, so any other pair is the next
        // marker, handled by the outer loop.
        loop {
            let Some(at) = data
                .get(pos..)
                .and_then(|rest| rest.iter().position(|&b| b == MARKER))
            else {
                return false;
            };
            pos += at;
            match data.get(pos + 1) {
                None => return false,
                Some(&next) if next == 0x00 || (0xd0..=0xd7).contains(&next) => pos += 2,
                Some(_) => break,
            }
        }
    }
}

fn from_image_error(
    e: image::ImageError,
    input: &Input<'_>,
    format: &'static str,
    limits: &ImageLimits,
) -> ImageError {
    use image::error::LimitErrorKind;
    match e {
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Corrupt {
                input: input.name(),
                format,
                message: io.to_string(),
            }
        }
        image::ImageError::IoError(io) => match input {
            Input::File(path) => io_error(path, io),
            Input::Bytes => ImageError::Corrupt {
                input: input.name(),
                format,
                message: io.to_string(),
            },
        },
        image::ImageError::Limits(limit) => match limit.kind() {
            LimitErrorKind::InsufficientMemory => ImageError::TooMuchMemory {
                input: input.name(),
                needed: None,
                max_alloc_bytes: limits.max_alloc_bytes,
            },
            _ => ImageError::Corrupt {
                input: input.name(),
                format,
                message: limit.to_string(),
            },
        },
        image::ImageError::Unsupported(u) => ImageError::UnsupportedFeature {
            input: input.name(),
            format,
            message: u.to_string(),
        },
        other => ImageError::Corrupt {
            input: input.name(),
            format,
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SOI, an APP0 segment, a scan header, entropy data with a stuffed byte and a
    /// restart marker, then EOI.
    const MINIMAL: &[u8] = &[
        0xff, 0xd8, 0xff, 0xe0, 0x00, 0x04, 0xaa, 0xbb, 0xff, 0xda, 0x00, 0x02, 0x12, 0x34, 0xff,
        0x00, 0x56, 0xff, 0xd3, 0x78, 0xff, 0xd9,
    ];

    #[test]
    fn jpeg_end_marker_is_found_past_stuffing_and_restarts() {
        assert!(jpeg_reaches_eoi(MINIMAL));
        let mut trailing = MINIMAL.to_vec();
        trailing.extend_from_slice(b"appended video");
        assert!(jpeg_reaches_eoi(&trailing));
        // Fill bytes before the marker are allowed.
        let mut filled = MINIMAL[..MINIMAL.len() - 2].to_vec();
        filled.extend_from_slice(&[0xff, 0xff, 0xff, 0xd9]);
        assert!(jpeg_reaches_eoi(&filled));
    }

    #[test]
    fn jpeg_without_end_marker_is_incomplete() {
        for cut in 0..MINIMAL.len() - 1 {
            assert!(!jpeg_reaches_eoi(&MINIMAL[..cut]), "cut at {cut}");
        }
        // 0xff 0xd9 inside a segment's payload is not the end marker.
        let in_segment = [0xff, 0xd8, 0xff, 0xe1, 0x00, 0x04, 0xff, 0xd9];
        assert!(!jpeg_reaches_eoi(&in_segment));
        // A segment length running past the data.
        assert!(!jpeg_reaches_eoi(&[
            0xff, 0xd8, 0xff, 0xe0, 0xff, 0xff, 0x00
        ]));
    }

    #[test]
    fn header_dimensions_read_png_gif_and_bmp() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&640u32.to_be_bytes());
        png.extend_from_slice(&480u32.to_be_bytes());
        assert_eq!(header_dimensions(ImageFormat::Png, &png), Some((640, 480)));
        let gif = b"GIF89a\x80\x02\xe0\x01";
        assert_eq!(header_dimensions(ImageFormat::Gif, gif), Some((640, 480)));
        // A top-down BMP stores a negative height.
        let mut bmp = b"BM".to_vec();
        bmp.extend_from_slice(&[0; 12]);
        bmp.extend_from_slice(&40u32.to_le_bytes());
        bmp.extend_from_slice(&640i32.to_le_bytes());
        bmp.extend_from_slice(&(-480i32).to_le_bytes());
        assert_eq!(header_dimensions(ImageFormat::Bmp, &bmp), Some((640, 480)));
        assert_eq!(header_dimensions(ImageFormat::Bmp, &bmp[..20]), None);
        assert_eq!(header_dimensions(ImageFormat::Jpeg, &png), None);
    }

    #[test]
    fn default_pixel_limit_is_pils() {
        // PIL.Image.MAX_IMAGE_PIXELS = int(1024 * 1024 * 1024 // 4 // 3) = 89_478_485;
        // DecompressionBombError above twice that.
        assert_eq!(ImageLimits::DEFAULT_MAX_PIXELS, 2 * 89_478_485);
    }
}
