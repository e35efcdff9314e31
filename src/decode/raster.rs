//! The image crate's formats (PNG, JPEG, BMP, TIFF, WebP, GIF) into f32 luminance; naming a few
//! common non-image files when the bytes are none of them.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use super::{DecodeLimits, LumaImage, check_dimensions};
use crate::error::ImageError;

/// Decode a file that is not DICOM with the image crate (a greyscale TIFF it cannot read goes to
/// [`super::tiff`]); EXIF rotation applied.
pub(super) fn decode_raster(bytes: &[u8], caps: &DecodeLimits) -> Result<LumaImage, ImageError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Corrupt {
            reason: e.to_string(),
        })?;
    if reader.format().is_none() {
        return Err(ImageError::UnsupportedFormat {
            detected: sniff(bytes),
        });
    }
    if reader.format() == Some(ImageFormat::Jpeg) && !has_jpeg_end(bytes) {
        // JPEG decoders fill a cut-off file with grey instead of failing: refuse it here.
        return Err(ImageError::Corrupt {
            reason: "the JPEG data ends before its end-of-image marker".into(),
        });
    }
    let mut reader = reader;
    // Width and height are checked against MAX_SIDE/MAX_PIXELS by `check_dimensions` from the
    // header; the allocation limit guards every decoder.
    let mut limits = Limits::default();
    limits.max_alloc = Some(caps.max_alloc);
    reader.limits(limits);

    let is_tiff = reader.format() == Some(ImageFormat::Tiff);
    let mut decoder = match reader.into_decoder() {
        Ok(decoder) => decoder,
        // The image crate has no greyscale float or 32-bit integer layout: read those TIFFs
        // (scientific and some medical exports) with the tiff crate directly.
        Err(image::ImageError::Unsupported(_)) if is_tiff => {
            return super::tiff::decode_grey_tiff(bytes, caps);
        }
        Err(e) => return Err(map_image_error(e)),
    };
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, caps)?;
    let orientation = decoder.orientation().ok();
    // A last line only: a decoder panic (fuzzing found one in zune-jpeg, fixed in vendor/) is
    // reported natively as a damaged file; in the browser (panic = abort) the page restarts its
    // model worker instead. The fuzz regressions count a caught panic as a failure.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        DynamicImage::from_decoder(decoder)
    }));
    let mut image = decoded
        .map_err(|_| ImageError::Corrupt {
            reason: "the decoder failed on malformed data".into(),
        })?
        .map_err(map_image_error)?;
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
    }
    Ok(LumaImage {
        width: image.width() as usize,
        height: image.height() as usize,
        pixels: luminance(&image),
    })
}

/// Whether a JPEG ends with its end-of-image marker (allowing trailing padding). The marker
/// cannot occur inside entropy-coded data, where 0xFF is always stuffed.
fn has_jpeg_end(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

fn map_image_error(error: image::ImageError) -> ImageError {
    use image::ImageError as E;
    match error {
        E::Limits(_) => ImageError::MemoryLimit,
        E::Unsupported(e) => ImageError::UnsupportedPixels {
            detail: e.to_string(),
        },
        E::Decoding(e) => ImageError::Corrupt {
            reason: e.to_string(),
        },
        E::IoError(e) => ImageError::Corrupt {
            reason: e.to_string(),
        },
        other => ImageError::Corrupt {
            reason: other.to_string(),
        },
    }
}

/// Name a few common non-image files so the message can say what was dropped.
fn sniff(bytes: &[u8]) -> Option<String> {
    let head = &bytes[..bytes.len().min(1024)];
    let starts = |magic: &[u8]| head.starts_with(magic);
    if starts(b"%PDF") {
        return Some("a PDF document".into());
    }
    if starts(b"PK\x03\x04") {
        return Some("a ZIP archive or office document".into());
    }
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    if text.contains("<svg") {
        return Some("an SVG drawing".into());
    }
    if text.trim_start().starts_with("<!doctype html") || text.contains("<html") {
        return Some("a web page".into());
    }
    let printable = head
        .iter()
        .filter(|&&b| b.is_ascii_graphic() || b.is_ascii_whitespace())
        .count();
    if !head.is_empty() && printable * 100 >= head.len() * 95 {
        return Some("a text file".into());
    }
    None
}

/// f32 luminance of every pixel at the image's own precision. RGB uses the ITU-R BT.601 weights
/// (what PIL's `convert("L")` uses); grey is taken as is; alpha is ignored.
pub fn luminance(image: &DynamicImage) -> Vec<f32> {
    fn grey<T: Copy + Into<f32>>(raw: &[T], channels: usize) -> Vec<f32> {
        raw.chunks_exact(channels).map(|p| p[0].into()).collect()
    }
    fn rgb<T: Copy + Into<f32>>(raw: &[T], channels: usize) -> Vec<f32> {
        raw.chunks_exact(channels)
            .map(|p| 0.299 * p[0].into() + 0.587 * p[1].into() + 0.114 * p[2].into())
            .collect()
    }
    match image {
        DynamicImage::ImageLuma8(b) => grey(b.as_raw(), 1),
        DynamicImage::ImageLumaA8(b) => grey(b.as_raw(), 2),
        DynamicImage::ImageRgb8(b) => rgb(b.as_raw(), 3),
        DynamicImage::ImageRgba8(b) => rgb(b.as_raw(), 4),
        DynamicImage::ImageLuma16(b) => grey(b.as_raw(), 1),
        DynamicImage::ImageLumaA16(b) => grey(b.as_raw(), 2),
        DynamicImage::ImageRgb16(b) => rgb(b.as_raw(), 3),
        DynamicImage::ImageRgba16(b) => rgb(b.as_raw(), 4),
        DynamicImage::ImageRgb32F(b) => rgb(b.as_raw(), 3),
        DynamicImage::ImageRgba32F(b) => rgb(b.as_raw(), 4),
        other => rgb(other.to_rgb32f().as_raw(), 3),
    }
}
