//! The preprocessing path end to end: decoding through normalisation and resizing.

use super::*;
use crate::decode::decode;
use crate::decode::dicom::tests::{EXPLICIT_LE, file, ramp};
use crate::decode::{DecodeLimits, dicom::decode_dicom};
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, Rgba};
use std::io::Cursor;

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
    let img = DynamicImage::ImageLuma16(ImageBuffer::from_fn(4, 1, |x, _| Luma([1000 + x as u16])));
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
        let p =
            preprocess(&encode(image, format), 16).unwrap_or_else(|e| panic!("{format:?}: {e}"));
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
fn a_preview_within_its_size_shows_every_pixel_in_8_bits() {
    let luma = decode(&encode(gray16(40, 30), ImageFormat::Png)).unwrap();
    let (w, h, rgba) = preview(&luma, 1024).unwrap();
    assert_eq!((w, h), (40, 30));
    let normalized = min_max_normalize(&luma.pixels).unwrap();
    for (pixel, v) in rgba.chunks_exact(4).zip(normalized) {
        let g = (v * 255.0).round() as u8;
        assert_eq!(pixel, [g, g, g, 255]);
    }
}

#[test]
fn one_normalisation_gives_the_model_input_and_preview_of_the_two_paths() {
    let luma = decode(&encode(gray8(300, 200), ImageFormat::Png)).unwrap();
    let normalized = super::NormalizedImage::new(&luma).unwrap();
    assert_eq!(
        normalized.model_input(64),
        preprocess_luma(&luma, 64).unwrap()
    );
    assert_eq!(normalized.preview(100), preview(&luma, 100).unwrap());
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
    let img = DynamicImage::ImageLuma8(ImageBuffer::from_fn(2, 1, |x, _| Luma([x as u8 * 200])));
    let p = preprocess(&encode(img, ImageFormat::Png), 16).unwrap();
    assert_eq!(p.pixels.len(), 256);
    assert!(p.pixels[0] < 0.2 && p.pixels[15] > 0.8);
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
fn monochrome1_is_inverted_so_bone_stays_bright() {
    let inverted: Vec<u16> = ramp().iter().map(|v| 63_000 - v).collect();
    let a = decode_dicom(
        &file(8, 8, &ramp(), "MONOCHROME2", &[], EXPLICIT_LE),
        &DecodeLimits::DEFAULT,
    )
    .unwrap();
    let b = decode_dicom(
        &file(8, 8, &inverted, "MONOCHROME1", &[], EXPLICIT_LE),
        &DecodeLimits::DEFAULT,
    )
    .unwrap();
    let na = min_max_normalize(&a.pixels).unwrap();
    let nb = min_max_normalize(&b.pixels).unwrap();
    assert_eq!(na, nb);
}

#[test]
fn the_lane_wise_range_is_the_plain_minimum_and_maximum() {
    let mut rng = crate::rng::Rng::new(7);
    // Lengths around the eight lanes: shorter than one chunk, exact chunks, and a tail.
    for len in [1, 5, 8, 9, 16, 23, 1000] {
        let values: Vec<f32> = (0..len).map(|_| rng.range(-3.0, 700.0)).collect();
        let plain = values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        assert_eq!(finite_range(&values), Some(plain), "length {len}");
        // A NaN or an infinity anywhere, in a whole chunk or the tail, is refused.
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, len / 2, len - 1] {
                let mut spoiled = values.clone();
                spoiled[at] = bad;
                assert_eq!(finite_range(&spoiled), None, "{bad} at {at} of {len}");
            }
        }
    }
}
