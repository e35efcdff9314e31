//! DICOM input (dicom-rs): the first frame's pixel values, in real-world units, ready for the
//! shared min-max path.
//!
//! Applied, in DICOM's order: the Modality LUT (Rescale Slope/Intercept), then the first VOI
//! window (Window Center/Width, linear function) when the file has one, then MONOCHROME1
//! inversion (so that bone is bright, as in every other input). Colour DICOMs become grey with
//! the same BT.601 weights as other images. Transfer syntaxes decoded here (pure Rust, so also in
//! the browser): implicit/explicit VR little endian, deflated, RLE lossless and JPEG
//! baseline/extended/lossless; others (JPEG 2000, JPEG-LS, …) get an error naming the syntax.

use std::io::Cursor;

use dicom_core::Tag;
use dicom_core::dictionary::DataDictionary;
use dicom_dictionary_std::tags;
use dicom_dictionary_std::uids::RLE_LOSSLESS;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder, VoiLutOption};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use crate::alloc_guard::with_allocation_limit;
use crate::error::ImageError;
use crate::preprocess::{DecodeLimits, LumaImage, check_dimensions};

/// Whether `bytes` are a DICOM file: the `DICM` magic after the 128-byte preamble (the file
/// name and extension do not matter).
pub fn is_dicom(bytes: &[u8]) -> bool {
    bytes.len() >= 132 && &bytes[128..132] == b"DICM"
}

/// Walk every element header of the file (meta group, then the data set in its transfer
/// syntax, into sequences and items) and check that no defined length runs past the end of the
/// file. A deflated data set cannot be walked without inflating it and is left to dicom-rs.
fn check_lengths(bytes: &[u8]) -> Result<(), String> {
    const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
    const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
    const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
    let data = &bytes[132..];
    let (mut pos, mut syntax, mut in_meta, mut fragments) = (0usize, String::new(), true, false);
    while pos + 8 <= data.len() {
        let u16_at = |p: usize, be: bool| {
            if be {
                u16::from_be_bytes([data[p], data[p + 1]])
            } else {
                u16::from_le_bytes([data[p], data[p + 1]])
            }
        };
        let u32_at = |p: usize, be: bool| {
            let b = [data[p], data[p + 1], data[p + 2], data[p + 3]];
            if be {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        if in_meta && u16_at(pos, false) != 0x0002 {
            in_meta = false;
            if syntax == DEFLATED {
                return Ok(());
            }
        }
        let big = !in_meta && syntax == EXPLICIT_BE;
        let implicit = !in_meta && syntax == IMPLICIT_LE;
        let (group, element) = (u16_at(pos, big), u16_at(pos + 2, big));
        let tag = Tag(group, element);
        if group == 0xFFFE {
            // Item, item delimiter, sequence delimiter: tag + 4-byte length, no VR.
            let len = u32_at(pos + 4, big);
            pos += 8;
            if element == 0xE0DD {
                fragments = false;
            } else if fragments && element == 0xE000 {
                pos = pos
                    .checked_add(len as usize)
                    .filter(|&end| end <= data.len())
                    .ok_or("a pixel data fragment runs past the end of the file")?;
            }
            continue; // items of sequences: walk into them
        }
        let (vr, len, header) = if implicit {
            let vr = dicom_dictionary_std::StandardDataDictionary
                .by_tag(tag)
                .map(|e| e.vr.relaxed())
                .unwrap_or(dicom_core::VR::UN);
            (vr, u32_at(pos + 4, big), 8)
        } else {
            let vr = dicom_core::VR::from_binary([data[pos + 4], data[pos + 5]])
                .unwrap_or(dicom_core::VR::UN);
            use dicom_core::VR::*;
            if matches!(
                vr,
                OB | OD | OF | OL | OV | OW | SQ | UC | UR | UT | UN | SV | UV
            ) {
                if pos + 12 > data.len() {
                    return Err("an element header is cut off".into());
                }
                (vr, u32_at(pos + 8, big), 12)
            } else {
                (vr, u32::from(u16_at(pos + 6, big)), 8)
            }
        };
        pos += header;
        if len == u32::MAX {
            // Undefined length: a sequence, or encapsulated pixel data whose items are fragments.
            fragments = tag == tags::PIXEL_DATA;
            continue;
        }
        if vr == dicom_core::VR::SQ {
            continue; // defined-length sequence: walk into its items
        }
        let end = pos
            .checked_add(len as usize)
            .filter(|&end| end <= data.len());
        let end = end.ok_or_else(|| {
            format!(
                "element ({group:04X},{element:04X}) claims {len} bytes; the file has {} left",
                data.len() - pos.min(data.len())
            )
        })?;
        if tag == tags::TRANSFER_SYNTAX_UID {
            syntax = String::from_utf8_lossy(&data[pos..end])
                .trim_end_matches(['\0', ' '])
                .to_string();
        }
        pos = end;
    }
    Ok(())
}

/// Whether an RLE Lossless frame (DICOM PS3.5 annex G) holds `segments` segments, each of which
/// PackBits-decodes to at least `pixels` bytes.
fn check_rle_frame(fragment: &[u8], segments: usize, pixels: usize) -> Result<(), String> {
    let word = |i: usize| -> Option<usize> {
        fragment
            .get(i * 4..i * 4 + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0).ok_or("RLE frame shorter than its header")?;
    if count != segments || !(1..=15).contains(&count) || fragment.len() < 64 {
        return Err(format!(
            "RLE frame has {count} segments; {segments} expected"
        ));
    }
    for i in 0..count {
        let start = word(1 + i).ok_or("RLE header cut short")?;
        let end = if i + 1 < count {
            word(2 + i).ok_or("RLE header cut short")?
        } else {
            fragment.len()
        };
        let segment = fragment
            .get(start..end)
            .ok_or("RLE segment offsets out of order or past the end")?;
        if packbits_len(segment) < pixels {
            return Err(format!(
                "RLE segment {} decodes to fewer than {pixels} bytes",
                i + 1
            ));
        }
    }
    Ok(())
}

/// Whether every JPEG frame header (SOF0–SOF15 but DHT, JPG and DAC) in encapsulated pixel data
/// describes at most `frame_bytes` of decoded samples (2 bytes a sample above 8 bits, as the
/// decoder gives them). A marker byte pair cannot occur inside entropy-coded data, so scanning
/// for it finds every frame header the decoder could read.
fn check_jpeg_frames(fragments: &[Vec<u8>], frame_bytes: u64) -> Result<(), String> {
    for fragment in fragments.iter().filter(|f| f.starts_with(&[0xFF, 0xD8])) {
        for i in 0..fragment.len().saturating_sub(9) {
            let marker = fragment[i + 1];
            if fragment[i] != 0xFF
                || !(0xC0..=0xCF).contains(&marker)
                || [0xC4, 0xC8, 0xCC].contains(&marker)
            {
                continue;
            }
            let h = &fragment[i + 2..i + 10];
            let precision = u64::from(h[2]);
            let height = u64::from(u16::from_be_bytes([h[3], h[4]]));
            let width = u64::from(u16::from_be_bytes([h[5], h[6]]));
            let components = u64::from(h[7]);
            let size = width * height * components * if precision > 8 { 2 } else { 1 };
            if size > frame_bytes {
                return Err(format!(
                    "the embedded JPEG ({width}x{height}, {components} component(s), {precision} bits) is larger than the image the DICOM header describes"
                ));
            }
        }
    }
    Ok(())
}

/// Decoded length of a PackBits run-length stream (stops at a truncated run).
fn packbits_len(data: &[u8]) -> usize {
    let (mut i, mut out) = (0, 0usize);
    while i < data.len() {
        let n = data[i] as i8;
        i += 1;
        if n >= 0 {
            let literal = n as usize + 1;
            if i + literal > data.len() {
                break;
            }
            out += literal;
            i += literal;
        } else if n != -128 {
            if i >= data.len() {
                break;
            }
            out += 1 - n as isize as usize;
            i += 1;
        }
    }
    out
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
    let rows = int(&obj, tags::ROWS).ok_or_else(|| corrupt("no Rows"))?;
    let columns = int(&obj, tags::COLUMNS).ok_or_else(|| corrupt("no Columns"))?;
    if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        return Err(corrupt("the file has no pixel data (is it an image?)"));
    }
    let (width, height) = (
        u32::try_from(columns).unwrap_or(0),
        u32::try_from(rows).unwrap_or(0),
    );
    check_dimensions(width, height, caps)?;
    let samples = int(&obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let bits_allocated = int(&obj, tags::BITS_ALLOCATED).unwrap_or(16);
    let bits_stored = int(&obj, tags::BITS_STORED).unwrap_or(bits_allocated);
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
                syntax_name(&uid)
            ),
        });
    }
    let (samples, bits) = (samples as usize, bits_allocated as u64);
    // A frame's decoded size, checked before decoding (a header can claim anything).
    let frame_bytes = u64::from(width) * u64::from(height) * samples as u64 * bits.div_ceil(8);
    if frame_bytes > caps.max_alloc {
        return Err(ImageError::MemoryLimit);
    }
    // The encapsulated fragments, borrowed (not copied) for the checks below.
    let fragments: &[Vec<u8>] = obj
        .element(tags::PIXEL_DATA)
        .ok()
        .and_then(|e| e.value().fragments())
        .map(|f| &f[..])
        .unwrap_or_default();
    if uid.trim_end_matches(['\0', ' ']) == RLE_LOSSLESS {
        // dicom-rs 0.10's RLE decoder indexes past a short segment and panics (found by
        // fuzzing): check the frame's segments before handing it over.
        let fragment = fragments
            .first()
            .ok_or_else(|| corrupt("RLE pixel data has no fragment"))?;
        let segments = samples * bits.div_ceil(8) as usize;
        check_rle_frame(fragment, segments, width as usize * height as usize).map_err(corrupt)?;
    }
    if compressed {
        // dicom-rs 0.10's JPEG adapter copies whatever the embedded JPEG decodes to into a buffer
        // sized from Rows x Columns, and panics when the JPEG is larger (found by fuzzing).
        check_jpeg_frames(fragments, frame_bytes).map_err(corrupt)?;
    }
    // A compressed frame that the decoder refuses is most often a variant it lacks (12-bit JPEG,
    // say) rather than damage: name the syntax.
    let decoded = with_allocation_limit(caps.max_alloc as usize, || obj.decode_pixel_data_frame(0))
        .map_err(|e| match e.to_string() {
            m if compressed || m.contains("nsupported") => ImageError::UnsupportedDicom {
                syntax: format!("{}; the decoder said: {m}", syntax_name(&uid)),
            },
            m => corrupt(m),
        })?;
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
    if let Some(window) = decoded.window().ok().flatten().and_then(|w| w.first()) {
        if window.width >= 1.0 && window.center.is_finite() {
            // DICOM's linear VOI function: the window's lowest and highest input values.
            let low = (window.center - 0.5 - (window.width - 1.0) / 2.0) as f32;
            let high = (window.center - 0.5 + (window.width - 1.0) / 2.0) as f32;
            pixels.iter_mut().for_each(|p| *p = p.clamp(low, high));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    /// A DICOM file of `w x h` 16-bit samples written by dicom-object itself.
    fn file(
        w: u16,
        h: u16,
        samples: &[u16],
        photometric: &str,
        extra: &[(Tag, VR, PrimitiveValue)],
        syntax: &str,
    ) -> Vec<u8> {
        let mut obj = InMemDicomObject::new_empty();
        let put = |obj: &mut InMemDicomObject, tag, vr, value: PrimitiveValue| {
            obj.put(DataElement::new(tag, vr, value))
        };
        put(
            &mut obj,
            tags::SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.5.1.4.1.1.7".into(),
        );
        put(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4".into());
        put(&mut obj, tags::ROWS, VR::US, PrimitiveValue::from(h));
        put(&mut obj, tags::COLUMNS, VR::US, PrimitiveValue::from(w));
        put(
            &mut obj,
            tags::SAMPLES_PER_PIXEL,
            VR::US,
            PrimitiveValue::from(1u16),
        );
        put(
            &mut obj,
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            photometric.into(),
        );
        put(
            &mut obj,
            tags::BITS_ALLOCATED,
            VR::US,
            PrimitiveValue::from(16u16),
        );
        put(
            &mut obj,
            tags::BITS_STORED,
            VR::US,
            PrimitiveValue::from(16u16),
        );
        put(
            &mut obj,
            tags::HIGH_BIT,
            VR::US,
            PrimitiveValue::from(15u16),
        );
        put(
            &mut obj,
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        );
        for (tag, vr, value) in extra {
            put(&mut obj, *tag, *vr, value.clone());
        }
        put(
            &mut obj,
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(samples.into()),
        );
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
            .media_storage_sop_instance_uid("1.2.3.4")
            .transfer_syntax(syntax);
        let file = obj.with_meta(meta).unwrap();
        let mut out = Vec::new();
        file.write_all(&mut out).unwrap();
        out
    }

    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

    fn ramp() -> Vec<u16> {
        (0..64u16).map(|i| i * 1000).collect()
    }

    fn decode_dicom_default(bytes: &[u8]) -> Result<LumaImage, ImageError> {
        decode_dicom(bytes, &DecodeLimits::DEFAULT)
    }

    #[test]
    fn monochrome2_16_bit_is_read_at_full_precision() {
        let bytes = file(8, 8, &ramp(), "MONOCHROME2", &[], EXPLICIT_LE);
        assert!(is_dicom(&bytes));
        let image = decode_dicom_default(&bytes).unwrap();
        assert_eq!((image.width, image.height), (8, 8));
        assert_eq!(
            image.pixels,
            ramp().iter().map(|&v| f32::from(v)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn monochrome1_is_inverted_so_bone_stays_bright() {
        let inverted: Vec<u16> = ramp().iter().map(|v| 63_000 - v).collect();
        let a =
            decode_dicom_default(&file(8, 8, &ramp(), "MONOCHROME2", &[], EXPLICIT_LE)).unwrap();
        let b =
            decode_dicom_default(&file(8, 8, &inverted, "MONOCHROME1", &[], EXPLICIT_LE)).unwrap();
        let na = crate::preprocess::min_max_normalize(&a.pixels).unwrap();
        let nb = crate::preprocess::min_max_normalize(&b.pixels).unwrap();
        assert_eq!(na, nb);
    }

    #[test]
    fn rescale_slope_and_intercept_are_applied() {
        let extra = [
            (tags::RESCALE_SLOPE, VR::DS, PrimitiveValue::from("2")),
            (
                tags::RESCALE_INTERCEPT,
                VR::DS,
                PrimitiveValue::from("-1024"),
            ),
        ];
        let image =
            decode_dicom_default(&file(8, 8, &ramp(), "MONOCHROME2", &extra, EXPLICIT_LE)).unwrap();
        assert_eq!(image.pixels[0], -1024.0);
        assert_eq!(image.pixels[5], 2.0 * 5000.0 - 1024.0);
    }

    #[test]
    fn the_voi_window_clips_to_its_range() {
        let extra = [
            (tags::WINDOW_CENTER, VR::DS, PrimitiveValue::from("30000.5")),
            (tags::WINDOW_WIDTH, VR::DS, PrimitiveValue::from("20001")),
        ];
        let image =
            decode_dicom_default(&file(8, 8, &ramp(), "MONOCHROME2", &extra, EXPLICIT_LE)).unwrap();
        let (lo, hi) = image
            .pixels
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &p| (a.min(p), b.max(p)));
        assert_eq!((lo, hi), (20_000.0, 40_000.0));
        assert_eq!(image.pixels[30], 30_000.0);
    }

    #[test]
    fn an_undecodable_transfer_syntax_is_named() {
        // JPEG 2000: the header parses, the pixel data cannot be decoded in this build.
        let bytes = file(8, 8, &ramp(), "MONOCHROME2", &[], "1.2.840.10008.1.2.4.90");
        match decode_dicom_default(&bytes) {
            Err(ImageError::UnsupportedDicom { syntax }) => {
                assert!(syntax.contains("1.2.840.10008.1.2.4.90"), "{syntax}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_value_claiming_more_bytes_than_the_file_is_an_error_not_gigabytes() {
        // Found by fuzzing (fuzz/regressions/decode_preprocess/dicom-huge-claimed-length): a
        // small file with an element length near 4 GB.
        let mut bytes = file(8, 8, &ramp(), "MONOCHROME2", &[], EXPLICIT_LE);
        let at = bytes
            .windows(4)
            .rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00])
            .unwrap(); // pixel data tag
        bytes[at + 8..at + 12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        crate::alloc_guard::take_largest_allocation();
        assert!(matches!(
            decode_dicom_default(&bytes),
            Err(ImageError::Corrupt { .. })
        ));
        let largest = crate::alloc_guard::take_largest_allocation();
        assert!(
            largest < 16 << 20,
            "a {largest}-byte allocation for a {}-byte file",
            bytes.len()
        );
    }

    #[test]
    fn a_claimed_huge_image_is_refused_before_decoding() {
        let extra = [(tags::ROWS, VR::US, PrimitiveValue::from(60_000u16))];
        let bytes = file(8, 8, &ramp(), "MONOCHROME2", &extra, EXPLICIT_LE);
        assert!(matches!(
            decode_dicom_default(&bytes),
            Err(ImageError::TooLarge { .. })
        ));
    }
}
