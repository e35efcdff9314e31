//! Decoding: the bytes of any supported file → an f32 luminance image ([`LumaImage`]), not yet
//! normalised. Preprocessing ([`crate::preprocess`]) takes it from there; nothing here depends on
//! it.
//!
//! - this module: the size limits, the entry points ([`decode`], [`decode_with_limits`]) and the
//!   checks every format shares;
//! - [`raster`]: the image crate's formats (PNG, JPEG, BMP, TIFF, WebP, GIF), naming what is not
//!   an image, and luminance;
//! - [`tiff`](self::tiff): greyscale TIFFs the image crate cannot read (float, 32/64-bit, signed);
//! - [`dicom`]: DICOM files (rescale, VOI window, MONOCHROME1) and the guards around dicom-rs.

pub mod dicom;
pub mod raster;
pub mod tiff;

#[cfg(test)]
mod tests;

use std::path::Path;

use crate::error::ImageError;

pub use raster::luminance;

/// Largest accepted width or height, in pixels.
pub const MAX_SIDE: u32 = 16_384;
/// Largest accepted file, in bytes: a chest X-ray within the pixel limits is far smaller.
pub const MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;
/// Largest accepted pixel count (8192 x 8192).
pub const MAX_PIXELS: u64 = 8_192 * 8_192;
/// Upper bound for what a decoder may allocate, in bytes.
pub const MAX_DECODE_BYTES: u64 = 768 * 1024 * 1024;

/// File name extensions (lower case, without the dot) of the formats [`decode`] reads: what a
/// folder scan should pick up. Decoding itself goes by the bytes, not by the name.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp", "gif", "dcm", "dicom",
];

/// Whether `path` ends in one of [`IMAGE_EXTENSIONS`] (any case).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// A decoded image as f32 luminance, row-major, not yet normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct LumaImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<f32>,
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
/// its stored grey value). DICOM files go through [`dicom`].
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
    if dicom::is_dicom(bytes) {
        return dicom::decode_dicom(bytes, caps);
    }
    raster::decode_raster(bytes, caps)
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
