//! Checks of a DICOM file's numbers before dicom-rs acts on them: each guards against a panic or
//! a huge allocation that fuzzing found in dicom-rs 0.10 (see [`super::decode_dicom`]).

use dicom_core::Tag;
use dicom_core::VR;
use dicom_core::dictionary::DataDictionary;
use dicom_dictionary_std::tags;

fn u16_at(data: &[u8], p: usize, be: bool) -> u16 {
    if be {
        u16::from_be_bytes([data[p], data[p + 1]])
    } else {
        u16::from_le_bytes([data[p], data[p + 1]])
    }
}

fn u32_at(data: &[u8], p: usize, be: bool) -> u32 {
    let b = [data[p], data[p + 1], data[p + 2], data[p + 3]];
    if be {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    }
}

/// The VR, value length and header size of the (non-item) element at `pos`.
fn element_header(
    data: &[u8],
    pos: usize,
    tag: Tag,
    big: bool,
    implicit: bool,
) -> Result<(VR, u32, usize), String> {
    if implicit {
        let vr = dicom_dictionary_std::StandardDataDictionary
            .by_tag(tag)
            .map(|e| e.vr.relaxed())
            .unwrap_or(VR::UN);
        return Ok((vr, u32_at(data, pos + 4, big), 8));
    }
    let vr = VR::from_binary([data[pos + 4], data[pos + 5]]).unwrap_or(VR::UN);
    use VR::*;
    if matches!(
        vr,
        OB | OD | OF | OL | OV | OW | SQ | UC | UR | UT | UN | SV | UV
    ) {
        if pos + 12 > data.len() {
            return Err("an element header is cut off".into());
        }
        Ok((vr, u32_at(data, pos + 8, big), 12))
    } else {
        Ok((vr, u32::from(u16_at(data, pos + 6, big)), 8))
    }
}

/// Walk every element header of the file (meta group, then the data set in its transfer
/// syntax, into sequences and items) and check that no defined length runs past the end of the
/// file. A deflated data set cannot be walked without inflating it and is left to dicom-rs.
pub(super) fn check_lengths(bytes: &[u8]) -> Result<(), String> {
    const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
    const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
    const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
    let data = &bytes[132..];
    let (mut pos, mut syntax, mut in_meta, mut fragments) = (0usize, String::new(), true, false);
    while pos + 8 <= data.len() {
        if in_meta && u16_at(data, pos, false) != 0x0002 {
            in_meta = false;
            if syntax == DEFLATED {
                return Ok(());
            }
        }
        let big = !in_meta && syntax == EXPLICIT_BE;
        let implicit = !in_meta && syntax == IMPLICIT_LE;
        let (group, element) = (u16_at(data, pos, big), u16_at(data, pos + 2, big));
        let tag = Tag(group, element);
        if group == 0xFFFE {
            // Item, item delimiter, sequence delimiter: tag + 4-byte length, no VR.
            let len = u32_at(data, pos + 4, big);
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
        let (vr, len, header) = element_header(data, pos, tag, big, implicit)?;
        pos += header;
        if len == u32::MAX {
            // Undefined length: a sequence, or encapsulated pixel data whose items are fragments.
            fragments = tag == tags::PIXEL_DATA;
            continue;
        }
        if vr == VR::SQ {
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
pub(super) fn check_rle_frame(
    fragment: &[u8],
    segments: usize,
    pixels: usize,
) -> Result<(), String> {
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
pub(super) fn check_jpeg_frames(fragments: &[Vec<u8>], frame_bytes: u64) -> Result<(), String> {
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
