//! Greyscale TIFFs with samples the image crate does not read, through the tiff crate.

use std::io::Cursor;

use super::{DecodeLimits, LumaImage, check_dimensions};
use crate::error::ImageError;

/// A greyscale TIFF with samples the image crate does not read (32-bit float or integer,
/// 64-bit, signed): first page, first sample, as f32. WhiteIsZero files are inverted so that
/// bone is bright, as in every other format.
pub(super) fn decode_grey_tiff(bytes: &[u8], caps: &DecodeLimits) -> Result<LumaImage, ImageError> {
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
