//! Cross-fitted fine-tuning: k fresh fine-tunings of the training split, each on the images
//! outside one fold, so that every training image gets the logits of a network that did not
//! train on it (a distillation teacher's targets). The k networks can also score images that
//! none of them saw (a cross-validation's held-out fold): their mean probability is an ensemble
//! prediction for those images.

use std::path::Path;

use anyhow::Result;
use burn::tensor::Device;
use cxr::classifier::effusion_probability;

use super::finetune::{FinetuneOptions, Setup, logits, tune};
use crate::metrics::Report;
use crate::run_dir::{TeacherLogits, write_teacher};

/// What a cross-fit gives besides its report.
#[derive(Debug, Default, Clone)]
pub struct CrossFit {
    /// Every training image's out-of-fold logits.
    pub teacher: TeacherLogits,
    /// The k networks' mean probability on the run's validation images, in their order.
    pub valid_mean: Vec<f32>,
    pub valid_labels: Vec<u8>,
    /// The same for the extra images `Setup` was given (none: empty).
    pub extra_files: Vec<String>,
    pub extra_labels: Vec<u8>,
    pub extra_mean: Vec<f32>,
}

/// Sums of probabilities over the k networks, turned into means at the end.
fn mean(sum: &[f64], k: usize) -> Vec<f32> {
    sum.iter().map(|s| (s / k as f64) as f32).collect()
}

fn add_probabilities(sum: &mut [f64], logits: Vec<[f32; 2]>) {
    for (s, l) in sum.iter_mut().zip(logits) {
        *s += f64::from(effusion_probability(l));
    }
}

/// k fine-tunings, each scoring the fold it did not train on (see [`super::finetune`]), and
/// the validation and extra images.
pub(super) fn cross_fit(
    package: &Path,
    s: &Setup,
    o: &FinetuneOptions,
    device: &Device,
) -> Result<(serde_json::Value, CrossFit)> {
    let (train, valid) = (&s.train, &s.valid);
    let n = train.y.len();
    let valid_idx: Vec<usize> = (0..valid.y.len()).collect();
    let extra_idx: Vec<usize> = (0..s.extra.as_ref().map_or(0, |e| e.y.len())).collect();
    let augmented = s.augmented(o);
    let fold = crate::data::folds(&s.items, o.folds, o.seed);
    let mut teacher = TeacherLogits::new();
    let mut valid_sum = vec![0f64; valid_idx.len()];
    let mut extra_sum = vec![0f64; extra_idx.len()];
    let mut runs = Vec::new();
    for k in 0..o.folds {
        let (held, fit): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| fold[i] == k);
        eprintln!(
            "fold {}/{}: training on {}, scoring {}",
            k + 1,
            o.folds,
            fit.len(),
            held.len()
        );
        let mut at_best = (Vec::new(), Vec::new(), Vec::new());
        let fold_options = FinetuneOptions {
            seed: o.seed.wrapping_add(k as u64),
            ..o.clone()
        };
        let (best, epochs) = tune(
            package,
            (train, valid),
            &fit,
            augmented.as_ref(),
            &fold_options,
            device,
            |eval| {
                at_best = (
                    logits(eval, train, &held, device)?,
                    logits(eval, valid, &valid_idx, device)?,
                    match &s.extra {
                        Some(extra) => logits(eval, extra, &extra_idx, device)?,
                        None => Vec::new(),
                    },
                );
                Ok(())
            },
        )?;
        let (held_logits, valid_logits, extra_logits) = at_best;
        for (&i, l) in held.iter().zip(held_logits) {
            teacher.insert(train.files[i].clone(), l);
        }
        add_probabilities(&mut valid_sum, valid_logits);
        add_probabilities(&mut extra_sum, extra_logits);
        runs.push(serde_json::json!({"fold": k + 1, "trained_on": fit.len(), "scored": held.len(), "best": best, "epochs": epochs}));
    }
    if let Some(path) = &o.teacher_out {
        write_teacher(path, &teacher)?;
    }
    let result = CrossFit {
        valid_mean: mean(&valid_sum, o.folds),
        valid_labels: valid.y.clone(),
        extra_files: s
            .extra
            .as_ref()
            .map(|e| e.files.clone())
            .unwrap_or_default(),
        extra_labels: s.extra.as_ref().map(|e| e.y.clone()).unwrap_or_default(),
        extra_mean: mean(&extra_sum, o.folds),
        teacher,
    };
    Ok((summary(runs, train, &result), result))
}

/// The report: each fold's run, the ensemble's validation AUC and the out-of-fold logits' AUC
/// against the labels (how much the targets say beyond them).
fn summary(
    runs: Vec<serde_json::Value>,
    train: &super::frozen::Cached,
    result: &CrossFit,
) -> serde_json::Value {
    let ensemble = Report::new(&result.valid_mean, &result.valid_labels, 0.5);
    let oof: Vec<f32> = train
        .files
        .iter()
        .map(|f| {
            result
                .teacher
                .get(f)
                .map_or(f32::NAN, |&l| effusion_probability(l))
        })
        .collect();
    let oof_report = Report::new(&oof, &train.y, 0.5);
    let uncertain = oof.iter().filter(|p| (0.1..=0.9).contains(*p)).count();
    serde_json::json!({
        "folds": runs,
        "ensemble_valid": {"auc": ensemble.auc, "auc_ci95": ensemble.auc_ci95},
        "out_of_fold_train": {"auc": oof_report.auc, "auc_ci95": oof_report.auc_ci95, "probability_between_0.1_and_0.9": uncertain, "images": train.y.len()},
    })
}
