//! DICOM decoding tests, and the DICOM test files other tests build on.

use super::*;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

/// A DICOM file of `w x h` 16-bit samples written by dicom-object itself.
pub(crate) fn file(
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

pub(crate) const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

pub(crate) fn ramp() -> Vec<u16> {
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
