//! A contact sheet of image pairs (PNG): one pair a row, the two images side by side, to judge
//! by eye whether a pair is one patient. The distances are printed beside it, not drawn (text
//! in a PNG would need a font).

use std::path::Path;

use anyhow::{Context, Result};
use image::{GrayImage, Luma, imageops};

use super::find::{Pair, preprocessed_image};
use crate::data::Item;

/// Gap between images, in pixels.
const GAP: u32 = 6;

/// Write `pairs` as rows of two `side x side` images.
pub fn write(path: &Path, root: &Path, items: &[Item], pairs: &[Pair], side: usize) -> Result<()> {
    let s = side as u32;
    let rows = pairs.len().max(1) as u32;
    let mut sheet = GrayImage::from_pixel(2 * s + 3 * GAP, rows * (s + GAP) + GAP, Luma([255]));
    for (row, pair) in pairs.iter().enumerate() {
        let y = GAP + row as u32 * (s + GAP);
        for (col, i) in [pair.a, pair.b].into_iter().enumerate() {
            let image = preprocessed_image(&root.join(&items[i].file), side)?;
            let x = GAP + col as u32 * (s + GAP);
            imageops::replace(&mut sheet, &image, i64::from(x), i64::from(y));
        }
    }
    sheet
        .save(path)
        .with_context(|| format!("cannot write the contact sheet {}", path.display()))
}
