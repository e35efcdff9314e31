//! The stronger similarity for `trainer groups --method resnet50`: cosine similarity of the
//! ImageNet ResNet-50's pooled 2048-d features (the same frozen network and "caffe" input as
//! `imagenet probe`), centred on the mean feature of the images compared (raw pooled features are
//! all positive, so uncentred cosines crowd near 1 whatever the image).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::Device;

use crate::data::Item;
use crate::transfer::frozen::{Output, frozen_outputs};
use crate::transfer::imagenet;

/// Centred, unit-length pooled features of every image, in the order of `items`.
pub fn resnet50_features(
    root: &Path,
    items: &[Item],
    side: usize,
    weights_dir: Option<PathBuf>,
) -> Result<Vec<Vec<f32>>> {
    let package = imagenet::ensure_in(weights_dir, false)
        .context("--method resnet50 needs the ImageNet weights: run `trainer imagenet fetch`")?;
    let device = Device::flex();
    let model = imagenet::load(&package, 1, 2, &device)?;
    let (flat, _, shape, files) =
        frozen_outputs(&model, root, items, side, Output::Pooled, &device)?;
    let d: usize = shape.iter().product();
    debug_assert!(files.iter().zip(items).all(|(f, i)| *f == i.file));
    Ok(centred_unit_rows(&flat, d.max(1)))
}

/// Rows of `flat` (each `d` long) minus their mean row, scaled to length 1.
pub fn centred_unit_rows(flat: &[f32], d: usize) -> Vec<Vec<f32>> {
    let n = flat.len() / d;
    let mut mean = vec![0f32; d];
    for row in flat.chunks_exact(d) {
        mean.iter_mut()
            .zip(row)
            .for_each(|(m, v)| *m += v / n as f32);
    }
    flat.chunks_exact(d)
        .map(|row| {
            let centred: Vec<f32> = row.iter().zip(&mean).map(|(v, m)| v - m).collect();
            let norm = centred.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            centred.into_iter().map(|v| v / norm).collect()
        })
        .collect()
}

/// 1 - cosine similarity of two unit rows: 0 for the same direction, up to 2.
pub fn cosine_distance(a: &[f32], b: &[f32]) -> f64 {
    1.0 - f64::from(a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centred_rows_have_unit_length_and_cosine_orders_them() {
        let flat = [1.0, 2.0, 3.0, 1.1, 2.1, 3.0, 5.0, 0.0, 1.0];
        let rows = centred_unit_rows(&flat, 3);
        for row in &rows {
            let len: f32 = row.iter().map(|v| v * v).sum();
            assert!((len - 1.0).abs() < 1e-5);
        }
        assert!(cosine_distance(&rows[0], &rows[1]) < cosine_distance(&rows[0], &rows[2]));
        assert!(cosine_distance(&rows[0], &rows[0]).abs() < 1e-6);
    }
}
