//! The one preprocessing path, shared by the trainer and the browser.
//!
//! bytes → [`crate::decode`] (any common format, limits checked before allocating, EXIF rotation
//! applied) → f32 luminance at full precision (16-bit stays 16-bit)
//! → [`min_max_normalize`] over the whole image to `[0, 1]` (never a division by 255)
//! → [`resize`] of the **whole** image to `size x size` with an antialiasing (triangle) filter.
//!
//! Non-square images are **stretched** to the square input: nothing is cropped (a finding in a
//! corner stays in the picture) and no padding is invented. NIH films are square, so for them the
//! rule changes nothing; it is the same rule in training and in the browser.

mod resize;
#[cfg(test)]
mod tests;

pub use resize::resize;

use crate::decode::{LumaImage, decode};

use crate::error::ImageError;

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
    Ok(NormalizedImage::new(image)?.model_input(size))
}

/// A greyscale RGBA rendering of a decoded image for display, at most `max_side` pixels per side
/// (aspect ratio kept, min-max normalised like the model input): browsers cannot show every
/// format the classifier reads (16-bit, TIFF).
pub fn preview(image: &LumaImage, max_side: usize) -> Result<(usize, usize, Vec<u8>), ImageError> {
    Ok(NormalizedImage::new(image)?.preview(max_side))
}

/// A decoded image normalised once ([`min_max_normalize`]), from which the page makes both the
/// model input and the preview: normalising for each cost a second pass over every pixel.
pub struct NormalizedImage {
    width: usize,
    height: usize,
    pixels: Vec<f32>,
}

impl NormalizedImage {
    pub fn new(image: &LumaImage) -> Result<Self, ImageError> {
        Ok(Self {
            width: image.width,
            height: image.height,
            pixels: min_max_normalize(&image.pixels)?,
        })
    }

    /// The model input: the whole image resized to `size x size`.
    pub fn model_input(&self, size: usize) -> Preprocessed {
        let mut pixels = resize(&self.pixels, self.width, self.height, size, size);
        // The filter's weights sum to 1 only up to rounding, which can step an ulp outside [0, 1]
        // (found by fuzzing: fuzz/regressions/decode_preprocess/input-outside-unit-range).
        pixels.iter_mut().for_each(|p| *p = p.clamp(0.0, 1.0));
        Preprocessed {
            pixels,
            size,
            original_width: self.width,
            original_height: self.height,
        }
    }

    /// See [`preview`]. An image already within `max_side` is shown as it is, not resampled.
    pub fn preview(&self, max_side: usize) -> (usize, usize, Vec<u8>) {
        let scale = (max_side as f64 / self.width.max(self.height) as f64).min(1.0);
        let w = ((self.width as f64 * scale).round() as usize).max(1);
        let h = ((self.height as f64 * scale).round() as usize).max(1);
        let resized;
        let small = if (w, h) == (self.width, self.height) {
            &self.pixels
        } else {
            resized = resize(&self.pixels, self.width, self.height, w, h);
            &resized
        };
        let mut rgba = vec![0u8; w * h * 4];
        let (pixels, _) = rgba.as_chunks_mut::<4>();
        for (pixel, &v) in pixels.iter_mut().zip(small) {
            // Round half up (the values are not negative): `f32::round` is a library call in wasm.
            let grey = (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u32;
            // Grey in R, G and B, opaque: one 4-byte store per pixel, which the compiler
            // vectorises (filling 3 bytes of each pixel took 5 ms for a 1024x1024 preview).
            *pixel = (0xFF00_0000 | (grey * 0x0001_0101)).to_le_bytes();
        }
        (w, h, rgba)
    }
}

/// The smallest and largest value, or `None` when any value is NaN or infinite.
///
/// One branch-free pass over eight independent lanes, which the compiler turns into SIMD compares
/// and selects (wasm's and x86's). `f32::min` would not do: its rule for NaN kept the loop
/// scalar, 5 ms for a 1024x1024 image in the page's profile. Here `p < lo` is false for NaN, and
/// the exponent test flags NaN and infinity alike.
fn finite_range(pixels: &[f32]) -> Option<(f32, f32)> {
    const LANES: usize = 8;
    const EXPONENT: u32 = 0x7f80_0000; // all ones: infinity or NaN
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let mut not_finite = [0u32; LANES];
    let mut step = |i: usize, p: f32| {
        lo[i] = if p < lo[i] { p } else { lo[i] };
        hi[i] = if p > hi[i] { p } else { hi[i] };
        not_finite[i] |= u32::from(p.to_bits() & EXPONENT == EXPONENT);
    };
    let (chunks, rest) = pixels.as_chunks::<LANES>();
    for chunk in chunks {
        for (i, &p) in chunk.iter().enumerate() {
            step(i, p);
        }
    }
    for (i, &p) in rest.iter().enumerate() {
        step(i, p);
    }
    if not_finite.iter().any(|&flag| flag != 0) {
        return None;
    }
    let min = lo.into_iter().fold(f32::INFINITY, f32::min);
    let max = hi.into_iter().fold(f32::NEG_INFINITY, f32::max);
    Some((min, max))
}

/// `(x - min) / (max - min)` over the whole image.
///
/// Fails on NaN or infinity, and on a blank image (max == min), where the division is undefined.
pub fn min_max_normalize(pixels: &[f32]) -> Result<Vec<f32>, ImageError> {
    if pixels.is_empty() {
        return Err(ImageError::NoPixels);
    }
    let Some((min, max)) = finite_range(pixels) else {
        return Err(ImageError::NonFinite);
    };
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
