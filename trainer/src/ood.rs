//! Fitting and measuring the not-a-chest-X-ray gate ([`cxr::ood::OodGate`]) at export.
//!
//! The gate is fitted on the pooled features of the training split; candidates differ in how
//! much the covariance is shrunk (λ = 1 is a plain Euclidean distance, small λ a full
//! Mahalanobis distance). Each is measured on held-out images: the validation X-rays (wrongly
//! flagged share) and a folder of images that are not frontal chest X-rays (caught share).
//! The rule: the candidate that catches the most non-X-rays while flagging at most 5 % of the
//! validation X-rays; ties go to the one flagging fewer X-rays.

use anyhow::{Context, Result, anyhow, bail};
use std::path::Path;

use burn::tensor::Device;
use cxr::ResNet;
use cxr::ood::OodGate;
use cxr::preprocess::preprocess;

use crate::data::Item;
use crate::loader::{Failures, Loader, LoaderConfig};
use cxr::decode::has_image_extension;

/// Shrinkage values tried, from plain Euclidean (1.0) to nearly full Mahalanobis.
pub const CANDIDATES: [f64; 4] = [1.0, 0.5, 0.1, 0.01];
/// The share of training images kept below the threshold.
pub const TRAIN_QUANTILE: f64 = 0.99;
/// Most validation X-rays a gate may flag.
pub const MAX_FALSE_FLAGS: f64 = 0.05;

/// Pooled features of every image of `items`, in order (unreadable images are skipped).
pub fn features_of(
    model: &ResNet,
    root: &Path,
    items: &[Item],
    loader: &LoaderConfig,
    device: &Device,
) -> Vec<Vec<f32>> {
    let failures: Failures = Default::default();
    let mut out = Vec::new();
    let s = loader.size;
    for batch in Loader::start(
        root.to_path_buf(),
        items.to_vec(),
        loader,
        None,
        0,
        failures,
    ) {
        let n = batch.len();
        out.extend(cxr::classifier::batch_features(
            model,
            batch.pixels,
            n,
            s,
            device,
        ));
    }
    out
}

/// Features by file name, and the names of the unreadable files.
pub type FolderFeatures = (Vec<(String, Vec<f32>)>, Vec<String>);

/// Pooled features of every readable image file directly in `dir` (name, features); files
/// that cannot be read as images are listed in the second vector.
pub fn features_of_folder(
    model: &ResNet,
    dir: &Path,
    size: usize,
    device: &Device,
) -> Result<FolderFeatures> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| dir.display().to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| has_image_extension(p))
        .collect();
    entries.sort();
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let input = std::fs::read(&path)
            .ok()
            .and_then(|b| preprocess(&b, size).ok());
        let Some(input) = input else {
            bad.push(name);
            continue;
        };
        let features =
            cxr::classifier::batch_features(model, input.pixels, 1, size, device).remove(0);
        if features.iter().any(|v| !v.is_finite()) {
            bail!("{name}: the model's features could not be read back");
        }
        good.push((name, features));
    }
    Ok((good, bad))
}

/// One candidate's measured rates (the model card's type).
pub type Measured = cxr::model_card::GateMeasurement;

/// Fit every candidate on `train`, measure each, and return them with the index of the chosen one.
pub fn choose(
    train: &[Vec<f32>],
    valid: &[Vec<f32>],
    negatives: &[(String, Vec<f32>)],
) -> Result<(Vec<(OodGate, Measured)>, usize)> {
    let mut all = Vec::new();
    for shrinkage in CANDIDATES {
        let gate = OodGate::fit(train, shrinkage, TRAIN_QUANTILE).map_err(|e| anyhow!("{e}"))?;
        let measured = Measured {
            shrinkage,
            threshold: gate.threshold,
            validation_flagged: valid.iter().filter(|f| gate.flags(f)).count(),
            validation_images: valid.len(),
            negatives_caught: negatives.iter().filter(|(_, f)| gate.flags(f)).count(),
            negatives: negatives.len(),
            missed: negatives
                .iter()
                .filter(|(_, f)| !gate.flags(f))
                .map(|(n, _)| n.clone())
                .collect(),
        };
        all.push((gate, measured));
    }
    let best = all
        .iter()
        .enumerate()
        .filter(|(_, (_, m))| m.false_flag_rate() <= MAX_FALSE_FLAGS)
        .max_by(|(_, (_, a)), (_, (_, b))| {
            a.negatives_caught
                .cmp(&b.negatives_caught)
                .then(b.validation_flagged.cmp(&a.validation_flagged))
        })
        .map(|(i, _)| i)
        // None within the false-flag budget: the one that flags the fewest X-rays.
        .unwrap_or_else(|| {
            (0..all.len())
                .min_by_key(|&i| all[i].1.validation_flagged)
                .unwrap_or(0)
        });
    Ok((all, best))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_prefers_catches_within_the_false_flag_budget() {
        // In-distribution: a tight 2-D cloud stretched along x; negatives far along y, where only
        // a Mahalanobis gate (small shrinkage) sees them as far.
        let cloud: Vec<Vec<f32>> = (0..400)
            .map(|i| {
                let t = (i as f32 * 0.7).sin();
                let u = (i as f32 * 1.3).cos();
                vec![10.0 * t, 0.2 * u]
            })
            .collect();
        let (train, valid) = cloud.split_at(300);
        let negatives: Vec<(String, Vec<f32>)> = (0..5)
            .map(|i| (format!("n{i}"), vec![0.0, 3.0 + i as f32]))
            .collect();
        let (all, best) = choose(train, valid, &negatives).unwrap();
        assert_eq!(all.len(), CANDIDATES.len());
        assert!(all[best].1.shrinkage < 1.0, "{:?}", all[best].1);
        assert_eq!(all[best].1.negatives_caught, 5);
        assert!(all[best].1.false_flag_rate() <= MAX_FALSE_FLAGS);
        // Euclidean (λ = 1) misses them: 3..7 is well inside the cloud's spread along x.
        assert!(all[0].1.negatives_caught < 5);
    }
}
