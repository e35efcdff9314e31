//! A contact sheet of image pairs (PNG): the two images of a pair side by side, four pairs a row, to judge
//! by eye whether a pair is one patient. The distances are printed beside it, not drawn (text
//! in a PNG would need a font).

use std::path::Path;

use anyhow::{Context, Result};
use image::{GrayImage, Luma, imageops};

use super::find::{Pair, preprocessed_image};
use crate::data::Item;

/// Gap between images, in pixels (twice that between pairs).
const GAP: u32 = 6;
/// Pairs side by side in one row of the sheet.
pub const PAIRS_PER_ROW: usize = 4;

/// Write `pairs` as a grid, [`PAIRS_PER_ROW`] pairs a row, left to right then down, each pair
/// two `side x side` images.
pub fn write(path: &Path, root: &Path, items: &[Item], pairs: &[Pair], side: usize) -> Result<()> {
    let s = side as u32;
    let pair_width = 2 * s + 3 * GAP;
    let rows = pairs.len().div_ceil(PAIRS_PER_ROW).max(1) as u32;
    let columns = pairs.len().clamp(1, PAIRS_PER_ROW) as u32;
    let mut sheet =
        GrayImage::from_pixel(columns * pair_width, rows * (s + GAP) + GAP, Luma([255]));
    for (n, pair) in pairs.iter().enumerate() {
        let x0 = (n % PAIRS_PER_ROW) as u32 * pair_width;
        let y = GAP + (n / PAIRS_PER_ROW) as u32 * (s + GAP);
        for (col, i) in [pair.a, pair.b].into_iter().enumerate() {
            let image = preprocessed_image(&root.join(&items[i].file), side)?;
            let x = x0 + GAP + col as u32 * (s + GAP);
            imageops::replace(&mut sheet, &image, i64::from(x), i64::from(y));
        }
    }
    sheet
        .save(path)
        .with_context(|| format!("cannot write the contact sheet {}", path.display()))
}
