//! The one preprocessing path, shared by the trainer and the browser.
//!
//! bytes → [`decode`] (any common format, limits checked before allocating, EXIF rotation applied)
//! → f32 luminance at full precision (16-bit stays 16-bit)
//! → [`min_max_normalize`] over the whole image to `[0, 1]` (never a division by 255)
//! → [`resize`] of the **whole** image to `size x size` with an antialiasing (triangle) filter.
//!
//! Non-square images are **stretched** to the square input: nothing is cropped (a finding in a
//! corner stays in the picture) and no padding is invented. NIH films are square, so for them the
//! rule changes nothing; it is the same rule in training and in the browser.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use crate::error::ImageError;

/// Largest accepted width or height, in pixels.
pub const MAX_SIDE: u32 = 16_384;
/// Largest accepted file, in bytes: a chest X-ray within the pixel limits is far smaller.
pub const MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;
/// Largest accepted pixel count (8192 x 8192).
pub const MAX_PIXELS: u64 = 8_192 * 8_192;
/// Upper bound for what a decoder may allocate, in bytes.
pub const MAX_DECODE_BYTES: u64 = 768 * 1024 * 1024;

/// A decoded image as f32 luminance, row-major, not yet normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct LumaImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<f32>,
}

/// The model input made from one file.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessed {
    /// `size * size` values in `[0, 1]`, row-major.
    pub pixels: Vec<f32>,
    /// Side of the square model input.
    pub size: usize,
    /// Width of the decoded image (after EXIF rotation).
    pub original_width: usize,
    /// Height of the decoded image (after EXIF rotation).
    pub original_height: usize,
}

/// The whole path: bytes of a file to the normalised `size x size` model input.
pub fn preprocess(bytes: &[u8], size: usize) -> Result<Preprocessed, ImageError> {
    let image = decode(bytes)?;
    preprocess_luma(&image, size)
}

/// Normalise and resize an already decoded image (the second half of [`preprocess`]).
pub fn preprocess_luma(image: &LumaImage, size: usize) -> Result<Preprocessed, ImageError> {
    let normalized = min_max_normalize(&image.pixels)?;
    let mut pixels = resize(&normalized, image.width, image.height, size, size);
    // The filter's weights sum to 1 only up to rounding, which can step an ulp outside [0, 1]
    // (found by fuzzing: fuzz/regressions/decode_preprocess/input-outside-unit-range).
    pixels.iter_mut().for_each(|p| *p = p.clamp(0.0, 1.0));
    Ok(Preprocessed {
        pixels,
        size,
        original_width: image.width,
        original_height: image.height,
    })
}

/// A greyscale RGBA rendering of a decoded image for display, at most `max_side` pixels per side
/// (aspect ratio kept, min-max normalised like the model input): browsers cannot show every
/// format the classifier reads (16-bit, TIFF).
pub fn preview(image: &LumaImage, max_side: usize) -> Result<(usize, usize, Vec<u8>), ImageError> {
    let scale = (max_side as f64 / image.width.max(image.height) as f64).min(1.0);
    let w = ((image.width as f64 * scale).round() as usize).max(1);
    let h = ((image.height as f64 * scale).round() as usize).max(1);
    let normalized = min_max_normalize(&image.pixels)?;
    let small = resize(&normalized, image.width, image.height, w, h);
    let rgba = small
        .iter()
        .flat_map(|&v| {
            let g = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            [g, g, g, 255]
        })
        .collect();
    Ok((w, h, rgba))
}

/// Size limits of decoding: checked from the header before any pixel is decoded, and imposed on
/// the decoders' allocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_side: u32,
    pub max_pixels: u64,
    pub max_alloc: u64,
}

impl DecodeLimits {
    /// The limits of the product: [`MAX_SIDE`], [`MAX_PIXELS`], [`MAX_DECODE_BYTES`].
    pub const DEFAULT: DecodeLimits = DecodeLimits {
        max_side: MAX_SIDE,
        max_pixels: MAX_PIXELS,
        max_alloc: MAX_DECODE_BYTES,
    };
}

/// Decode any supported image file into f32 luminance.
///
/// Refuses, before decoding the pixels, images over [`MAX_SIDE`] per side or [`MAX_PIXELS`] in
/// total; decoders are also held to [`MAX_DECODE_BYTES`]. Animated formats give their first frame,
/// multi-page TIFF its first page. Alpha is ignored (X-rays have none; a transparent area shows
/// its stored grey value). DICOM files go through [`crate::dicom`].
pub fn decode(bytes: &[u8]) -> Result<LumaImage, ImageError> {
    decode_with_limits(bytes, &DecodeLimits::DEFAULT)
}

/// [`decode`] with other size limits (the fuzzer uses small ones to run fast; the code path is
/// the same).
pub fn decode_with_limits(bytes: &[u8], caps: &DecodeLimits) -> Result<LumaImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    check_file_size(bytes.len() as u64)?;
    if crate::dicom::is_dicom(bytes) {
        return crate::dicom::decode_dicom(bytes, caps);
    }
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
        Err(image::ImageError::Unsupported(_)) if is_tiff => return decode_grey_tiff(bytes, caps),
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

/// Refuse a file over [`MAX_FILE_BYTES`] before reading or decoding it.
pub fn check_file_size(len: u64) -> Result<(), ImageError> {
    if len > MAX_FILE_BYTES {
        return Err(ImageError::FileTooLarge {
            megabytes: len / (1024 * 1024),
            max_megabytes: MAX_FILE_BYTES / (1024 * 1024),
        });
    }
    Ok(())
}

/// A greyscale TIFF with samples the image crate does not read (32-bit float or integer,
/// 64-bit, signed): first page, first sample, as f32. WhiteIsZero files are inverted so that
/// bone is bright, as in every other format.
fn decode_grey_tiff(bytes: &[u8], caps: &DecodeLimits) -> Result<LumaImage, ImageError> {
    use tiff::ColorType;
    use tiff::decoder::{Decoder, DecodingResult};
    use tiff::tags::Tag;
    let corrupt = |e: tiff::TiffError| ImageError::Corrupt {
        reason: e.to_string(),
    };
    let mut decoder = Decoder::new(Cursor::new(bytes)).map_err(corrupt)?;
    let (width, height) = decoder.dimensions().map_err(corrupt)?;
    check_dimensions(width, height, caps)?;
    let colour = decoder.colortype().map_err(corrupt)?;
    if !matches!(colour, ColorType::Gray(_)) {
        return Err(ImageError::UnsupportedPixels {
            detail: format!("a TIFF with {colour:?} pixels"),
        });
    }
    let white_is_zero = decoder
        .find_tag_unsigned::<u16>(Tag::PhotometricInterpretation)
        .ok()
        .flatten()
        == Some(0);
    let pixels: Vec<f32> = match decoder.read_image().map_err(|e| match e {
        tiff::TiffError::LimitsExceeded => ImageError::MemoryLimit,
        other => corrupt(other),
    })? {
        DecodingResult::U8(v) => v.into_iter().map(f32::from).collect(),
        DecodingResult::U16(v) => v.into_iter().map(f32::from).collect(),
        DecodingResult::U32(v) => v.into_iter().map(|p| p as f32).collect(),
        DecodingResult::U64(v) => v.into_iter().map(|p| p as f32).collect(),
        DecodingResult::I8(v) => v.into_iter().map(f32::from).collect(),
        DecodingResult::I16(v) => v.into_iter().map(f32::from).collect(),
        DecodingResult::I32(v) => v.into_iter().map(|p| p as f32).collect(),
        DecodingResult::I64(v) => v.into_iter().map(|p| p as f32).collect(),
        DecodingResult::F16(v) => v.into_iter().map(f32::from).collect(),
        DecodingResult::F32(v) => v,
        DecodingResult::F64(v) => v.into_iter().map(|p| p as f32).collect(),
    };
    let count = width as usize * height as usize;
    if pixels.len() < count {
        return Err(ImageError::Corrupt {
            reason: format!(
                "the TIFF holds {} samples for {width}x{height} pixels",
                pixels.len()
            ),
        });
    }
    let channels = pixels.len() / count;
    let mut grey: Vec<f32> = pixels
        .chunks_exact(channels)
        .take(count)
        .map(|p| p[0])
        .collect();
    if white_is_zero {
        grey.iter_mut().for_each(|p| *p = -*p);
    }
    Ok(LumaImage {
        width: width as usize,
        height: height as usize,
        pixels: grey,
    })
}

/// Whether a JPEG ends with its end-of-image marker (allowing trailing padding). The marker
/// cannot occur inside entropy-coded data, where 0xFF is always stuffed.
fn has_jpeg_end(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

pub(crate) fn check_dimensions(
    width: u32,
    height: u32,
    caps: &DecodeLimits,
) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::NoPixels);
    }
    if width > caps.max_side
        || height > caps.max_side
        || u64::from(width) * u64::from(height) > caps.max_pixels
    {
        return Err(too_large(width.into(), height.into(), caps));
    }
    Ok(())
}

fn too_large(width: u64, height: u64, caps: &DecodeLimits) -> ImageError {
    ImageError::TooLarge {
        width,
        height,
        max_side: caps.max_side,
        max_megapixels: (caps.max_pixels / 1_000_000) as u32,
    }
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

/// `(x - min) / (max - min)` over the whole image.
///
/// Fails on NaN or infinity, and on a blank image (max == min), where the division is undefined.
pub fn min_max_normalize(pixels: &[f32]) -> Result<Vec<f32>, ImageError> {
    if pixels.is_empty() {
        return Err(ImageError::NoPixels);
    }
    let mut min = f32::INFINITY;
    let mut max = f32::NEG_INFINITY;
    for &p in pixels {
        if !p.is_finite() {
            return Err(ImageError::NonFinite);
        }
        min = min.min(p);
        max = max.max(p);
    }
    // In f64: an f32 `max - min` can round below the true range and push the top above 1.
    let range = f64::from(max) - f64::from(min);
    if range <= 0.0 || !range.is_finite() {
        return Err(ImageError::Blank);
    }
    let inv = 1.0 / range;
    Ok(pixels
        .iter()
        .map(|&p| (((f64::from(p) - f64::from(min)) * inv) as f32).clamp(0.0, 1.0))
        .collect())
}

/// Per output sample: the first input index and the normalised weights from there on.
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

/// Triangle-filter taps for resampling `input` samples to `output` samples. When shrinking, the
/// filter widens with the ratio, so every input pixel contributes (antialiasing).
fn taps(input: usize, output: usize) -> Vec<Taps> {
    let scale = input as f64 / output as f64;
    let support = scale.max(1.0);
    (0..output)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let lo = ((center - support).floor().max(0.0)) as usize;
            let hi = ((center + support).ceil() as usize).min(input);
            let mut weights: Vec<f64> = (lo..hi)
                .map(|i| (1.0 - ((i as f64 + 0.5 - center).abs() / support)).max(0.0))
                .collect();
            let sum: f64 = weights.iter().sum();
            if sum > 0.0 {
                weights.iter_mut().for_each(|w| *w /= sum);
            } else {
                // Can only happen for degenerate sizes: take the nearest sample.
                weights = vec![0.0; hi - lo];
                let nearest = (center.floor() as usize).clamp(lo, hi - 1) - lo;
                weights[nearest] = 1.0;
            }
            Taps {
                start: lo,
                weights: weights.into_iter().map(|w| w as f32).collect(),
            }
        })
        .collect()
}

/// Resize a row-major f32 image to `out_w x out_h` with a separable, antialiased triangle
/// filter. Weights are non-negative and sum to one, so `[0, 1]` input stays in `[0, 1]`.
pub fn resize(pixels: &[f32], width: usize, height: usize, out_w: usize, out_h: usize) -> Vec<f32> {
    assert_eq!(
        pixels.len(),
        width * height,
        "pixel buffer does not match its size"
    );
    let x_taps = taps(width, out_w);
    let y_taps = taps(height, out_h);
    // Vertical pass first: out_h rows of the full width.
    let mut rows = vec![0f32; out_h * width];
    for (oy, t) in y_taps.iter().enumerate() {
        let dst = &mut rows[oy * width..(oy + 1) * width];
        for (k, &w) in t.weights.iter().enumerate() {
            let src = &pixels[(t.start + k) * width..(t.start + k + 1) * width];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d += w * s;
            }
        }
    }
    // Horizontal pass.
    let mut out = vec![0f32; out_h * out_w];
    for oy in 0..out_h {
        let src = &rows[oy * width..(oy + 1) * width];
        let dst = &mut out[oy * out_w..(oy + 1) * out_w];
        for (d, t) in dst.iter_mut().zip(&x_taps) {
            *d = t
                .weights
                .iter()
                .zip(&src[t.start..])
                .map(|(w, s)| w * s)
                .sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, Rgb, Rgba};

    fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).expect("encode test image");
        out.into_inner()
    }

    /// A smooth gradient with a bright disc, `w x h`, values in [0, 1].
    fn scene(w: u32, h: u32) -> impl Fn(u32, u32) -> f32 {
        move |x, y| {
            let g = (x as f32 / w as f32) * 0.5 + (y as f32 / h as f32) * 0.2;
            let (dx, dy) = (x as f32 - w as f32 * 0.3, y as f32 - h as f32 * 0.6);
            let disc = if dx * dx + dy * dy < (w as f32 * 0.15).powi(2) {
                0.3
            } else {
                0.0
            };
            g + disc
        }
    }

    fn gray8(w: u32, h: u32) -> DynamicImage {
        let f = scene(w, h);
        DynamicImage::ImageLuma8(ImageBuffer::from_fn(w, h, |x, y| {
            Luma([(f(x, y) * 255.0).round() as u8])
        }))
    }

    fn gray16(w: u32, h: u32) -> DynamicImage {
        let f = scene(w, h);
        DynamicImage::ImageLuma16(ImageBuffer::from_fn(w, h, |x, y| {
            Luma([(f(x, y) * 65535.0).round() as u16])
        }))
    }

    #[test]
    fn eight_and_sixteen_bit_give_nearly_the_same_tensor() {
        let a = preprocess(&encode(gray8(300, 300), ImageFormat::Png), 64).unwrap();
        let b = preprocess(&encode(gray16(300, 300), ImageFormat::Png), 64).unwrap();
        let max_diff = a
            .pixels
            .iter()
            .zip(&b.pixels)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(max_diff < 0.01, "8-bit vs 16-bit differ by {max_diff}");
    }

    #[test]
    fn sixteen_bit_precision_is_kept() {
        // Values that differ only below 8-bit resolution must stay distinct.
        let img =
            DynamicImage::ImageLuma16(ImageBuffer::from_fn(4, 1, |x, _| Luma([1000 + x as u16])));
        let luma = decode(&encode(img, ImageFormat::Png)).unwrap();
        assert_eq!(luma.pixels, vec![1000.0, 1001.0, 1002.0, 1003.0]);
        let n = min_max_normalize(&luma.pixels).unwrap();
        assert_eq!(n, vec![0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]);
    }

    #[test]
    fn min_max_uses_the_image_range_not_255() {
        let n = min_max_normalize(&[50.0, 100.0, 150.0]).unwrap();
        assert_eq!(n, vec![0.0, 0.5, 1.0]);
    }

    #[test]
    fn grey_rgb_and_rgba_of_the_same_picture_agree() {
        let g = gray8(120, 90);
        let rgb = DynamicImage::ImageRgb8(ImageBuffer::from_fn(120, 90, |x, y| {
            let v = g.as_luma8().unwrap().get_pixel(x, y)[0];
            Rgb([v, v, v])
        }));
        let rgba = DynamicImage::ImageRgba8(ImageBuffer::from_fn(120, 90, |x, y| {
            let v = g.as_luma8().unwrap().get_pixel(x, y)[0];
            Rgba([v, v, v, if x < 10 { 0 } else { 255 }])
        }));
        let a = preprocess(&encode(g, ImageFormat::Png), 32).unwrap();
        let b = preprocess(&encode(rgb, ImageFormat::Png), 32).unwrap();
        let c = preprocess(&encode(rgba, ImageFormat::Png), 32).unwrap();
        for (x, (y, z)) in a.pixels.iter().zip(b.pixels.iter().zip(&c.pixels)) {
            assert!((x - y).abs() < 1e-4 && (x - z).abs() < 1e-4);
        }
    }

    #[test]
    fn every_supported_format_decodes() {
        let img = gray8(64, 48);
        let rgb = DynamicImage::ImageRgb8(img.to_rgb8());
        for (image, format) in [
            (img.clone(), ImageFormat::Png),
            (img.clone(), ImageFormat::Jpeg),
            (img.clone(), ImageFormat::Bmp),
            (img.clone(), ImageFormat::Tiff),
            (img.clone(), ImageFormat::WebP),
            (rgb, ImageFormat::Gif),
        ] {
            let p = preprocess(&encode(image, format), 16)
                .unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!(
                (p.original_width, p.original_height),
                (64, 48),
                "{format:?}"
            );
            assert_eq!(p.pixels.len(), 16 * 16);
        }
    }

    #[test]
    fn whole_image_is_resized_without_crop_and_stretched() {
        // A bright marker in the top-left corner of a wide image must survive the resize.
        let img = DynamicImage::ImageLuma8(ImageBuffer::from_fn(400, 100, |x, y| {
            Luma([if x < 20 && y < 20 { 255 } else { 0 }])
        }));
        let p = preprocess(&encode(img, ImageFormat::Png), 40).unwrap();
        assert_eq!(p.pixels.len(), 40 * 40);
        // 20/400 of the width = 2 columns, 20/100 of the height = 8 rows (stretch, no crop).
        assert!(p.pixels[0] > 0.9, "corner lost: {}", p.pixels[0]);
        assert!(
            p.pixels[5 * 40] > 0.9,
            "stretch rule: row 5 col 0 = {}",
            p.pixels[5 * 40]
        );
        assert!(p.pixels[12 * 40] < 0.05);
        assert!(p.pixels[5] < 0.05);
    }

    #[test]
    fn resize_antialiases_and_keeps_range() {
        // A one-pixel checkerboard shrunk 8x averages to grey instead of aliasing.
        let (w, h) = (256, 256);
        let px: Vec<f32> = (0..w * h).map(|i| ((i % w + i / w) % 2) as f32).collect();
        let out = resize(&px, w, h, 32, 32);
        for v in &out {
            assert!((v - 0.5).abs() < 0.02, "aliasing: {v}");
        }
        let ramp: Vec<f32> = (0..50 * 30).map(|i| (i % 50) as f32 / 49.0).collect();
        for v in resize(&ramp, 50, 30, 256, 256) {
            assert!((0.0..=1.0).contains(&v));
        }
    }

    #[test]
    fn identity_resize_is_exact() {
        let px: Vec<f32> = (0..64).map(|i| i as f32 / 63.0).collect();
        assert_eq!(resize(&px, 8, 8, 8, 8), px);
    }

    #[test]
    fn preview_keeps_the_aspect_ratio() {
        let luma = decode(&encode(gray8(400, 200), ImageFormat::Png)).unwrap();
        let (w, h, rgba) = preview(&luma, 100).unwrap();
        assert_eq!((w, h, rgba.len()), (100, 50, 100 * 50 * 4));
        let (w, h, _) = preview(&luma, 1000).unwrap();
        assert_eq!((w, h), (400, 200));
    }

    #[test]
    fn empty_file_is_refused() {
        assert_eq!(preprocess(&[], 8), Err(ImageError::Empty));
    }

    #[test]
    fn text_pdf_and_dicom_are_named() {
        let err = preprocess(b"hello, this is not an image\n", 8).unwrap_err();
        assert!(
            matches!(&err, ImageError::UnsupportedFormat { detected: Some(d) } if d.contains("text")),
            "{err}"
        );
        let err = preprocess(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", 8).unwrap_err();
        assert!(err.to_string().contains("PDF"), "{err}");
        let mut dicom = vec![0u8; 128];
        dicom.extend_from_slice(b"DICM");
        dicom.extend_from_slice(&[0u8; 64]);
        let err = preprocess(&dicom, 8).unwrap_err();
        assert!(err.to_string().contains("DICOM"), "{err}");
        let err = preprocess(&[0x00, 0xff, 0x13, 0x37, 0x80, 0x01], 8).unwrap_err();
        assert_eq!(err, ImageError::UnsupportedFormat { detected: None });
    }

    #[test]
    fn truncated_files_are_corrupt() {
        for format in [ImageFormat::Png, ImageFormat::Jpeg] {
            let bytes = encode(gray8(200, 200), format);
            let err = preprocess(&bytes[..bytes.len() / 2], 8).unwrap_err();
            assert!(
                matches!(err, ImageError::Corrupt { .. }),
                "{format:?}: {err:?}"
            );
        }
    }

    #[test]
    fn png_with_a_wrong_crc_is_corrupt() {
        let mut bytes = encode(gray8(32, 32), ImageFormat::Png);
        // The IHDR chunk's CRC sits at bytes 29..33.
        bytes[30] ^= 0xff;
        let err = preprocess(&bytes, 8).unwrap_err();
        assert!(matches!(err, ImageError::Corrupt { .. }), "{err:?}");
    }

    /// A PNG header that claims `w x h` pixels, with a valid CRC and no pixel data.
    fn png_claiming(w: u32, h: u32) -> Vec<u8> {
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        let crc = crc32(&ihdr);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc.to_be_bytes());
        for chunk in [&b"IDAT"[..], &b"IEND"[..]] {
            png.extend_from_slice(&0u32.to_be_bytes());
            png.extend_from_slice(chunk);
            png.extend_from_slice(&crc32(chunk).to_be_bytes());
        }
        png
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
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

    #[test]
    fn decompression_bomb_is_refused_before_decoding() {
        let err = preprocess(&png_claiming(60_000, 60_000), 8).unwrap_err();
        assert!(
            matches!(err, ImageError::TooLarge { .. } | ImageError::MemoryLimit),
            "{err:?}"
        );
        // Within the side limit but over the pixel budget.
        let err = preprocess(&png_claiming(16_000, 16_000), 8).unwrap_err();
        assert!(
            matches!(err, ImageError::TooLarge { width: 16_000, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn blank_image_is_refused() {
        let img = DynamicImage::ImageLuma8(ImageBuffer::from_pixel(50, 50, Luma([77])));
        assert_eq!(
            preprocess(&encode(img, ImageFormat::Png), 8),
            Err(ImageError::Blank)
        );
        let one = DynamicImage::ImageLuma8(ImageBuffer::from_pixel(1, 1, Luma([3])));
        assert_eq!(
            preprocess(&encode(one, ImageFormat::Png), 8),
            Err(ImageError::Blank)
        );
    }

    #[test]
    fn non_finite_values_are_refused() {
        assert_eq!(
            min_max_normalize(&[0.0, f32::NAN, 1.0]),
            Err(ImageError::NonFinite)
        );
        assert_eq!(
            min_max_normalize(&[0.0, f32::INFINITY]),
            Err(ImageError::NonFinite)
        );
        assert_eq!(min_max_normalize(&[]), Err(ImageError::NoPixels));
    }

    #[test]
    fn tiny_but_valid_images_are_classified() {
        let img =
            DynamicImage::ImageLuma8(ImageBuffer::from_fn(2, 1, |x, _| Luma([x as u8 * 200])));
        let p = preprocess(&encode(img, ImageFormat::Png), 16).unwrap();
        assert_eq!(p.pixels.len(), 256);
        assert!(p.pixels[0] < 0.2 && p.pixels[15] > 0.8);
    }

    #[test]
    fn every_error_has_an_actionable_message() {
        for e in [
            ImageError::Empty,
            ImageError::UnsupportedFormat { detected: None },
            ImageError::Corrupt { reason: "x".into() },
            too_large(20_000, 10, &DecodeLimits::DEFAULT),
            ImageError::MemoryLimit,
            ImageError::NoPixels,
            ImageError::Blank,
            ImageError::NonFinite,
            ImageError::UnsupportedPixels { detail: "x".into() },
            ImageError::FileTooLarge {
                megabytes: 900,
                max_megabytes: 512,
            },
        ] {
            let msg = e.to_string();
            assert!(msg.len() > 30 && msg.ends_with('.'), "{msg}");
        }
    }

    fn float_tiff(w: u32, h: u32, pixels: &[f32]) -> Vec<u8> {
        use tiff::encoder::{TiffEncoder, colortype::Gray32Float};
        let mut out = Cursor::new(Vec::new());
        TiffEncoder::new(&mut out)
            .unwrap()
            .write_image::<Gray32Float>(w, h, pixels)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn float_grey_tiff_is_read_like_the_8_bit_image() {
        let f = scene(40, 30);
        let floats: Vec<f32> = (0..30)
            .flat_map(|y| (0..40).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y) * 3.5 - 1.0)
            .collect();
        let decoded = decode(&float_tiff(40, 30, &floats)).unwrap();
        assert_eq!((decoded.width, decoded.height), (40, 30));
        let a = min_max_normalize(&decoded.pixels).unwrap();
        let b = min_max_normalize(
            &decode(&encode(gray8(40, 30), ImageFormat::Png))
                .unwrap()
                .pixels,
        )
        .unwrap();
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(worst < 0.01, "float TIFF differs from 8-bit by {worst}");
    }

    #[test]
    fn nan_in_a_float_tiff_is_refused() {
        let mut floats = vec![0.5f32; 16 * 16];
        floats[3] = f32::NAN;
        floats[9] = f32::INFINITY;
        let image = decode(&float_tiff(16, 16, &floats)).unwrap();
        assert_eq!(min_max_normalize(&image.pixels), Err(ImageError::NonFinite));
    }

    #[test]
    fn files_over_the_size_limit_are_refused_before_decoding() {
        assert!(check_file_size(MAX_FILE_BYTES).is_ok());
        assert!(matches!(
            check_file_size(MAX_FILE_BYTES + 1),
            Err(ImageError::FileTooLarge { .. })
        ));
    }
}
