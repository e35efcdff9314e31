//! `export`: the best checkpoint of a run, with its model card, to where the app embeds it from.

mod card;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use clap::Args;
use cxr::Classifier;
use cxr::model_card::OodCard;
use cxr::weights::{self, ModelInfo, Reference};

pub use card::model_card;

use crate::data::Split;
use crate::loader::LoaderConfig;
use crate::metrics::{self, Report};
use crate::ood;
use crate::options::TrainOptions;
use crate::run_dir::{RunDir, write_atomic};
use crate::validation::{Tta, predict_all};

/// `trainer export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The run folder written by `train`.
    #[arg(long)]
    pub run: PathBuf,
    /// Destination folder of effusion.cxrw and MODEL_CARD.md.
    #[arg(long, default_value = "model")]
    pub out: PathBuf,
    /// Sample X-ray bundled with the page; its logits are recorded for the page's self-test.
    #[arg(long, default_value = "www/sample.png")]
    pub sample: PathBuf,
    /// Images that are not frontal chest X-rays, to measure the not-a-chest-X-ray gate.
    #[arg(long, default_value = "tests/ood")]
    pub ood_negatives: PathBuf,
    /// The command that trained the run, for the model card.
    #[arg(long)]
    pub command: Option<String>,
}

impl ExportArgs {
    pub fn run(self) -> Result<()> {
        let run = RunDir::open(&self.run);
        let device = Device::flex();
        let (model, mut info) = weights::decode(&run.read_best_checkpoint()?, &device)
            .with_context(|| run.best_checkpoint_path().display().to_string())?;
        if let Some(command) = self.command {
            info.card.training.command = Some(command);
        }
        info.card.parameters = Some(model.num_params() as u64);
        let (opts, split) = run.read_run()?;
        revalidate(&opts, &split, &model, &mut info)?;
        fit_ood_gate(&opts, &split, &model, &mut info, &self.ood_negatives)?;
        let sample = &self.sample;
        let classifier = Classifier::new(model.clone(), info.clone(), device.clone());
        let sample_bytes =
            std::fs::read(sample).with_context(|| format!("sample {}", sample.display()))?;
        let prediction = classifier
            .classify(&sample_bytes)
            .with_context(|| format!("sample {}", sample.display()))?;
        info.reference = Some(Reference {
            sample: sample
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            logits: prediction.logits.to_vec(),
        });
        let out = &self.out;
        std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
        let encoded = weights::encode(model, &info)?;
        write_atomic(&out.join("effusion.cxrw"), &encoded)?;
        let markdown = model_card(&info, encoded.len());
        write_atomic(&out.join("MODEL_CARD.md"), markdown.as_bytes())?;
        println!(
            "exported effusion.cxrw ({} bytes) and MODEL_CARD.md to {}; sample logits {:?}",
            encoded.len(),
            out.display(),
            prediction.logits
        );
        Ok(())
    }
}

fn loader_config(info: &ModelInfo) -> LoaderConfig {
    LoaderConfig {
        batch_size: 16,
        workers: 2,
        prefetch: 2,
        size: info.input_size,
    }
}

/// Choose the threshold and the card's validation figures with the exported (f16) weights on the
/// run's validation split, so that `evaluate` on the shipped model reproduces them.
fn revalidate(
    opts: &TrainOptions,
    split: &Split,
    model: &cxr::ResNet,
    info: &mut ModelInfo,
) -> Result<()> {
    if !opts.data.is_dir() {
        eprintln!(
            "warning: {} is not here; the card keeps the training-time validation figures",
            opts.data.display()
        );
        return Ok(());
    }
    let valid = predict_all(
        model,
        &opts.data,
        &split.valid,
        &loader_config(info),
        &Device::flex(),
        true,
        Tta::None,
    );
    if !valid.failed.is_empty() {
        bail!(
            "{} validation image(s) could not be read",
            valid.failed.len()
        );
    }
    let threshold =
        metrics::threshold_for_sensitivity(&valid.scores, &valid.labels, opts.target_sensitivity);
    let report = Report::new(&valid.scores, &valid.labels, threshold);
    info.threshold = threshold;
    let v = &mut info.card.validation;
    v.auc = report.auc;
    v.auc_ci95 = report.auc_ci95;
    v.threshold = Some(f64::from(threshold));
    v.accuracy = Some(report.accuracy);
    v.sensitivity = Some(report.sensitivity);
    v.specificity = Some(report.specificity);
    v.confusion = Some(report.confusion);
    v.weights = Some("exported f16 weights".into());
    Ok(())
}

/// Fit the not-a-chest-X-ray gate on the training split's features and choose its shrinkage
/// by measurement on the validation X-rays and the images in `negatives` (see [`crate::ood`]).
fn fit_ood_gate(
    opts: &TrainOptions,
    split: &Split,
    model: &cxr::ResNet,
    info: &mut ModelInfo,
    negatives: &Path,
) -> Result<()> {
    if !opts.data.is_dir() {
        bail!(
            "{} is not here: the not-a-chest-X-ray gate is fitted on the training images",
            opts.data.display()
        );
    }
    let device = Device::flex();
    let loader = loader_config(info);
    let train = ood::features_of(model, &opts.data, &split.train, &loader, &device);
    let valid = ood::features_of(model, &opts.data, &split.valid, &loader, &device);
    let (negative_features, unreadable) =
        ood::features_of_folder(model, negatives, info.input_size, &device)?;
    if negative_features.is_empty() {
        bail!(
            "{}: no readable non-X-ray images to measure the gate with",
            negatives.display()
        );
    }
    let (all, best) = ood::choose(&train, &valid, &negative_features)?;
    eprintln!(
        "not-a-chest-X-ray gate ({} training X-rays; threshold at their {} % quantile):",
        train.len(),
        ood::TRAIN_QUANTILE * 100.0
    );
    eprintln!("| shrinkage | validation X-rays flagged | non-X-rays caught |");
    for (i, (_, m)) in all.iter().enumerate() {
        eprintln!(
            "| {}{} | {}/{} ({:.1} %) | {}/{} ({:.0} %) |",
            m.shrinkage,
            if i == best { " (chosen)" } else { "" },
            m.validation_flagged,
            m.validation_images,
            100.0 * m.false_flag_rate(),
            m.negatives_caught,
            m.negatives,
            100.0 * m.catch_rate()
        );
    }
    let (gate, measured) = all[best].clone();
    info.ood = Some(gate);
    info.card.ood = Some(OodCard {
        method: "Mahalanobis distance of the pooled last-stage features to the training X-rays, covariance shrunk towards its mean variance".into(),
        chosen: Some(measured),
        candidates: all.into_iter().map(|(_, m)| m).collect(),
        negatives_folder: negatives.display().to_string(),
        negatives_unreadable: unreadable,
        rule: format!(
            "most non-X-rays caught with at most {} % of validation X-rays flagged; threshold at the {} % quantile of the training X-rays",
            ood::MAX_FALSE_FLAGS * 100.0,
            ood::TRAIN_QUANTILE * 100.0
        ),
    });
    Ok(())
}
