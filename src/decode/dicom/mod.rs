//! DICOM input (dicom-rs): the first frame's pixel values, in real-world units, ready for the
//! shared min-max path.
//!
//! Applied, in DICOM's order: the Modality LUT (Rescale Slope/Intercept), then the first VOI
//! window (Window Center/Width, linear function) when the file has one, then MONOCHROME1
//! inversion (so that bone is bright, as in every other input). Colour DICOMs become grey with
//! the same BT.601 weights as other images. Transfer syntaxes decoded here (pure Rust, so also in
//! the browser): implicit/explicit VR little endian, deflated, RLE lossless and JPEG
//! baseline/extended/lossless; others (JPEG 2000, JPEG-LS, …) get an error naming the syntax.

mod guards;
#[cfg(test)]
pub(crate) mod tests;

use std::io::Cursor;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_dictionary_std::uids::RLE_LOSSLESS;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{
    ConvertOptions, DecodedPixelData, ModalityLutOption, PixelDecoder, VoiLutOption,
};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use self::guards::{check_jpeg_frames, check_lengths, check_rle_frame};
use super::{DecodeLimits, LumaImage, check_dimensions};
use crate::alloc_guard::with_allocation_limit;
use crate::error::ImageError;

/// Whether `bytes` are a DICOM file: the `DICM` magic after the 128-byte preamble (the file
/// name and extension do not matter).
pub fn is_dicom(bytes: &[u8]) -> bool {
    bytes.len() >= 132 && &bytes[128..132] == b"DICM"
}

fn corrupt(e: impl std::fmt::Display) -> ImageError {
    ImageError::Corrupt {
        reason: format!("DICOM: {e}"),
    }
}

fn int(obj: &DefaultDicomObject, tag: Tag) -> Option<i64> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<i64>().ok())
}

/// Human name of a transfer syntax UID (the UID itself when unknown).
fn syntax_name(uid: &str) -> String {
    let uid = uid.trim_end_matches(['\0', ' ']);
    match TransferSyntaxRegistry.get(uid) {
        Some(ts) => format!("{} ({uid})", ts.name()),
        None => format!("unknown transfer syntax {uid}"),
    }
}

/// The first frame's layout, read from the header and checked before any pixel is decoded.
struct Frame {
    width: u32,
    height: u32,
    samples: usize,
    /// Bits allocated per sample.
    bits: u64,
    /// The frame's decoded size in bytes.
    bytes: u64,
}

/// Decode a DICOM file (see the module documentation).
pub fn decode_dicom(bytes: &[u8], caps: &DecodeLimits) -> Result<LumaImage, ImageError> {
    // dicom-rs sizes its buffers from each element's declared length before reading it (zero-
    // filled, some infallibly): a small file claiming gigabytes would take gigabytes, or abort.
    // So every declared length is checked against the bytes left first (found by fuzzing), and
    // allocations are capped while parsing as a second line (see alloc_guard).
    check_lengths(bytes).map_err(corrupt)?;
    let obj = with_allocation_limit(caps.max_alloc as usize, || {
        OpenFileOptions::new().from_reader(Cursor::new(&bytes[128..]))
    })
    .map_err(corrupt)?;
    let uid = obj.meta().transfer_syntax().to_string();
    let ts = TransferSyntaxRegistry.get(uid.trim_end_matches(['\0', ' ']));
    if !ts.is_some_and(|ts| ts.can_decode_all()) {
        return Err(ImageError::UnsupportedDicom {
            syntax: syntax_name(&uid),
        });
    }
    let compressed = ts.is_some_and(|ts| !ts.is_codec_free());
    let frame = frame_layout(&obj, &uid, caps)?;
    check_encapsulated(&obj, &uid, compressed, &frame)?;
    // A compressed frame that the decoder refuses is most often a variant it lacks (12-bit JPEG,
    // say) rather than damage: name the syntax.
    let decoded = with_allocation_limit(caps.max_alloc as usize, || obj.decode_pixel_data_frame(0))
        .map_err(|e| match e.to_string() {
            m if compressed || m.contains("nsupported") => ImageError::UnsupportedDicom {
                syntax: format!("{}; the decoder said: {m}", syntax_name(&uid)),
            },
            m => corrupt(m),
        })?;
    to_luma(&decoded, &frame)
}

/// Rows, columns, samples and bits of the first frame, refused when over `caps` or of a layout
/// dicom-pixeldata would assert on.
fn frame_layout(
    obj: &DefaultDicomObject,
    uid: &str,
    caps: &DecodeLimits,
) -> Result<Frame, ImageError> {
    let rows = int(obj, tags::ROWS).ok_or_else(|| corrupt("no Rows"))?;
    let columns = int(obj, tags::COLUMNS).ok_or_else(|| corrupt("no Columns"))?;
    if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        return Err(corrupt("the file has no pixel data (is it an image?)"));
    }
    let (width, height) = (
        u32::try_from(columns).unwrap_or(0),
        u32::try_from(rows).unwrap_or(0),
    );
    check_dimensions(width, height, caps)?;
    let samples = int(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let bits_allocated = int(obj, tags::BITS_ALLOCATED).unwrap_or(16);
    let bits_stored = int(obj, tags::BITS_STORED).unwrap_or(bits_allocated);
    // dicom-pixeldata asserts on some of these (a panic, found by fuzzing): check them first.
    if ![1, 3].contains(&samples) {
        return Err(corrupt(format!(
            "{samples} samples per pixel (1 or 3 expected)"
        )));
    }
    if ![8, 16, 32].contains(&bits_allocated) || !(1..=bits_allocated).contains(&bits_stored) {
        return Err(ImageError::UnsupportedDicom {
            syntax: format!(
                "{} with {bits_stored} of {bits_allocated} bits per sample",
                syntax_name(uid)
            ),
        });
    }
    let (samples, bits) = (samples as usize, bits_allocated as u64);
    // A frame's decoded size, checked before decoding (a header can claim anything).
    let frame_bytes = u64::from(width) * u64::from(height) * samples as u64 * bits.div_ceil(8);
    if frame_bytes > caps.max_alloc {
        return Err(ImageError::MemoryLimit);
    }
    Ok(Frame {
        width,
        height,
        samples,
        bits,
        bytes: frame_bytes,
    })
}

/// The checks of encapsulated (RLE, JPEG) pixel data that dicom-rs 0.10 would panic on.
fn check_encapsulated(
    obj: &DefaultDicomObject,
    uid: &str,
    compressed: bool,
    frame: &Frame,
) -> Result<(), ImageError> {
    // The encapsulated fragments, borrowed (not copied) for the checks below.
    let fragments: &[Vec<u8>] = obj
        .element(tags::PIXEL_DATA)
        .ok()
        .and_then(|e| e.value().fragments())
        .unwrap_or_default();
    if uid.trim_end_matches(['\0', ' ']) == RLE_LOSSLESS {
        // dicom-rs 0.10's RLE decoder indexes past a short segment and panics (found by
        // fuzzing): check the frame's segments before handing it over.
        let fragment = fragments
            .first()
            .ok_or_else(|| corrupt("RLE pixel data has no fragment"))?;
        let segments = frame.samples * frame.bits.div_ceil(8) as usize;
        let pixels = frame.width as usize * frame.height as usize;
        check_rle_frame(fragment, segments, pixels).map_err(corrupt)?;
    }
    if compressed {
        // dicom-rs 0.10's JPEG adapter copies whatever the embedded JPEG decodes to into a buffer
        // sized from Rows x Columns, and panics when the JPEG is larger (found by fuzzing).
        check_jpeg_frames(fragments, frame.bytes).map_err(corrupt)?;
    }
    Ok(())
}

/// The decoded frame in real-world units (Modality LUT), as grey, VOI-windowed, with
/// MONOCHROME1 inverted.
fn to_luma(decoded: &DecodedPixelData<'_>, frame: &Frame) -> Result<LumaImage, ImageError> {
    let (width, height, samples) = (frame.width, frame.height, frame.samples);
    let options = ConvertOptions::new()
        .with_modality_lut(ModalityLutOption::Default)
        .with_voi_lut(VoiLutOption::Identity);
    let values: Vec<f32> = decoded
        .to_vec_frame_with_options(0, &options)
        .map_err(corrupt)?;
    let count = width as usize * height as usize;
    if values.len() < count * samples {
        return Err(corrupt(format!(
            "{} pixel values for {width}x{height}",
            values.len()
        )));
    }
    let mut pixels: Vec<f32> = if samples >= 3 {
        values
            .chunks_exact(samples)
            .take(count)
            .map(|p| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2])
            .collect()
    } else {
        values
            .chunks_exact(samples)
            .take(count)
            .map(|p| p[0])
            .collect()
    };
    if let Some(window) = decoded.window().ok().flatten().and_then(|w| w.first())
        && window.width >= 1.0
        && window.center.is_finite()
    {
        // DICOM's linear VOI function: the window's lowest and highest input values.
        let low = (window.center - 0.5 - (window.width - 1.0) / 2.0) as f32;
        let high = (window.center - 0.5 + (window.width - 1.0) / 2.0) as f32;
        pixels.iter_mut().for_each(|p| *p = p.clamp(low, high));
    }
    let monochrome1 = decoded.photometric_interpretation().to_string().trim() == "MONOCHROME1";
    if monochrome1 {
        pixels.iter_mut().for_each(|p| *p = -*p);
    }
    Ok(LumaImage {
        width: width as usize,
        height: height as usize,
        pixels,
    })
}
