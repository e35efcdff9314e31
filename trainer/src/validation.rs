//! Validation: the model's probability of effusion for every image of a list, with the mean
//! cross-entropy, and the progress bars the loops show.

use std::path::Path;

use burn::tensor::Device;
use cxr::classifier::{batch_logits, effusion_probability};
use cxr::{Classifier, ResNet};
use indicatif::{ProgressBar, ProgressStyle};

use crate::data::Item;
use crate::loader::{Failures, Loader, LoaderConfig};

/// A progress bar over `len` images (hidden when `quiet`).
pub fn bar(len: usize, prefix: String, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_prefix(prefix);
    pb
}

/// What [`predict_all`] gives: per readable image its score, label and file, the mean plain
/// cross-entropy, and the images that could not be read (file, reason).
#[derive(Debug, Clone, Default)]
pub struct Predictions {
    pub scores: Vec<f32>,
    pub labels: Vec<u8>,
    pub files: Vec<String>,
    pub mean_loss: f64,
    pub failed: Vec<(String, String)>,
}

/// Test-time augmentation: what else the model sees of each image besides the image itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tta {
    /// The image alone.
    None,
    /// The image and its mirror image (left and right swapped): the mean of both probabilities.
    Flip,
}

/// A batch of `n` square `size` x `size` one-channel images, each mirrored left to right.
pub fn flip_horizontally(pixels: &[f32], size: usize) -> Vec<f32> {
    let mut flipped = pixels.to_vec();
    if size > 0 {
        flipped.chunks_exact_mut(size).for_each(<[f32]>::reverse);
    }
    flipped
}

/// The probability of effusion of each image of a batch, with test-time augmentation `tta`.
fn batch_probabilities(
    model: &ResNet,
    pixels: Vec<f32>,
    n: usize,
    size: usize,
    tta: Tta,
    device: &Device,
) -> Vec<f32> {
    let mirrored = (tta == Tta::Flip).then(|| flip_horizontally(&pixels, size));
    let mut p: Vec<f32> = batch_logits(model, pixels, n, size, device)
        .into_iter()
        .map(effusion_probability)
        .collect();
    if let Some(mirrored) = mirrored {
        let logits = batch_logits(model, mirrored, n, size, device);
        for (p, l) in p.iter_mut().zip(logits) {
            *p = 0.5 * (*p + effusion_probability(l));
        }
    }
    p
}

/// Probabilities for every image of `items` (with test-time augmentation `tta`), and the mean
/// plain cross-entropy.
pub fn predict_all(
    model: &ResNet,
    root: &Path,
    items: &[Item],
    loader: &LoaderConfig,
    device: &Device,
    quiet: bool,
    tta: Tta,
) -> Predictions {
    let failures: Failures = Default::default();
    let batches = Loader::start(
        root.to_path_buf(),
        items.to_vec(),
        loader,
        None,
        0,
        failures.clone(),
    );
    let pb = bar(items.len(), "validating".into(), quiet);
    let mut out = Predictions::default();
    let mut loss_sum = 0.0;
    for batch in batches {
        let n = batch.len();
        let probabilities = batch_probabilities(model, batch.pixels, n, loader.size, tta, device);
        for (&p, &label) in probabilities.iter().zip(&batch.labels) {
            out.scores.push(p);
            loss_sum -= f64::from(if label == 1 { p } else { 1.0 - p }.max(1e-7)).ln();
        }
        out.labels.extend_from_slice(&batch.labels);
        out.files.extend(batch.files);
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    out.failed = failures.lock().map(|f| f.clone()).unwrap_or_default();
    out.mean_loss = loss_sum / out.scores.len().max(1) as f64;
    out
}

/// Load a weight file, or the embedded model.
pub fn load_classifier(weights: Option<&Path>, device: &Device) -> anyhow::Result<Classifier> {
    use anyhow::Context;
    match weights {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
            Classifier::from_bytes(&bytes, device).with_context(|| path.display().to_string())
        }
        None => Classifier::embedded(device).context("embedded model"),
    }
}

#[cfg(test)]
mod tests {
    use super::flip_horizontally;

    #[test]
    fn flipping_mirrors_every_row_of_every_image() {
        // Two 2x2 images.
        let batch = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let flipped = flip_horizontally(&batch, 2);
        assert_eq!(flipped, [2.0, 1.0, 4.0, 3.0, 6.0, 5.0, 8.0, 7.0]);
        assert_eq!(flip_horizontally(&flipped, 2), batch);
    }
}
