//! `calibrate`: fit the calibration of the probability on held-out scores and write it into the
//! model file, its card and a reliability diagram (see `cxr::calibration`). The weights are kept
//! byte for byte; only the description changes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::{Args, ValueEnum};
use cxr::ModelInfo;
use cxr::calibration::{self, Calibration, Method};
use cxr::model_card::{CalibrationCard, CalibrationCheck, Confusion};

use crate::data;
use crate::export::model_card;
use crate::loader::LoaderConfig;
use crate::metrics;
use crate::plots::reliability_chart;
use crate::run_dir::write_atomic;
use crate::validation::{Tta, predict_all};

/// `trainer calibrate`.
#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// The weight file to calibrate; without it, the model embedded in the app.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Data folder holding the validation files recorded in the model card: the model scores
    /// them and the calibration is fitted on those scores (when neither --scores nor --cv is
    /// given). With --cv, they check the fit instead: its reliability on this model's own
    /// scores, which the fit did not use.
    #[arg(long, required_unless_present_any = ["scores", "cv"])]
    pub data: Option<PathBuf>,
    /// Fit on these held-out scores instead: a CSV with the columns file, label (1/0 or
    /// effusion/nofinding) and score (the raw probability of effusion), such as the
    /// out-of-fold `oof.csv` of `trainer cv`; other columns are ignored.
    #[arg(long, conflicts_with = "cv")]
    pub scores: Option<PathBuf>,
    /// Fit on the out-of-fold scores of this finished `trainer cv` of the model's recipe (every
    /// fold, every repeat), and record the cv's figures (pooled AUC with CI, per fold,
    /// sensitivity and specificity) in the model card.
    #[arg(long, value_name = "CV_DIR")]
    pub cv: Option<PathBuf>,
    /// Platt scaling (slope and intercept) or temperature scaling (slope only).
    #[arg(long, value_enum, default_value = "platt")]
    pub method: MethodArg,
    /// Equal-width bins of the reliability diagram and the expected calibration error.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(2..=50))]
    pub bins: u16,
    /// Destination folder of effusion.cxrw, MODEL_CARD.md and reliability.svg.
    #[arg(long, default_value = "model")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MethodArg {
    Platt,
    Temperature,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Self {
        match m {
            MethodArg::Platt => Method::Platt,
            MethodArg::Temperature => Method::Temperature,
        }
    }
}

/// Held-out raw scores with their labels, and where they come from (in words, for the card).
#[derive(Debug, Clone, PartialEq)]
pub struct HeldOut {
    pub scores: Vec<f32>,
    pub labels: Vec<u8>,
    pub source: String,
}

impl CalibrateArgs {
    pub fn run(self) -> Result<()> {
        let original = match &self.weights {
            Some(path) => std::fs::read(path).with_context(|| path.display().to_string())?,
            None => cxr::embedded::MODEL.to_vec(),
        };
        let mut info = cxr::weights::read_info(&original).context("the model to calibrate")?;
        let held_out = match (&self.cv, &self.scores, &self.data) {
            (Some(dir), _, _) => {
                let cv = crate::cv::read_finished(dir)?;
                if cv.input_size != info.input_size {
                    bail!(
                        "{} cross-validated models of input {}x{}, but this model takes {}x{}: \
                         not its recipe",
                        dir.display(),
                        cv.input_size,
                        cv.input_size,
                        info.input_size,
                        info.input_size
                    );
                }
                info.card.cross_validation = Some(cv.card);
                HeldOut {
                    source: format!(
                        "the {} out-of-fold scores of the cross-validation of this model's recipe \
                         ({}): models of the same recipe, each scoring images it never saw",
                        cv.scores.len(),
                        dir.display()
                    ),
                    scores: cv.scores,
                    labels: cv.labels,
                }
            }
            (None, Some(csv), _) => read_scores_csv(csv)?,
            (None, None, Some(data)) => score_validation_files(&original, &info, data)?,
            (None, None, None) => {
                bail!("give --cv CV_DIR, --scores FILE or --data (the card's validation images)")
            }
        };
        let command = std::iter::once("trainer".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" ");
        let (calibration, mut card) = fit_and_measure(
            &info,
            &held_out,
            self.method.into(),
            self.bins.into(),
            command,
        )?;
        if let (Some(_), Some(data)) = (&self.cv, &self.data) {
            // The fit used other models' scores: does it hold for this model's own?
            let own = score_validation_files(&original, &info, data)?;
            card.check = Some(check(&calibration, &own, self.bins.into()));
        }
        info.calibration = Some(calibration);
        let svg = reliability_chart(&card.before, &card.after);
        info.card.calibration = Some(card);
        let bytes = cxr::weights::replace_description(&original, &info)?;
        std::fs::create_dir_all(&self.out).with_context(|| self.out.display().to_string())?;
        write_atomic(&self.out.join("effusion.cxrw"), &bytes)?;
        write_atomic(
            &self.out.join("MODEL_CARD.md"),
            model_card(&info, bytes.len()).as_bytes(),
        )?;
        write_atomic(&self.out.join("reliability.svg"), svg.as_bytes())?;
        print_summary(&info, &self.out);
        Ok(())
    }
}

/// The model's raw scores on the validation files its card records, found in `data`.
fn score_validation_files(weights: &[u8], info: &ModelInfo, data: &Path) -> Result<HeldOut> {
    let recorded: HashSet<&String> = info.card.validation.files.iter().collect();
    if recorded.is_empty() {
        bail!("the model card records no validation files: give held-out scores with --scores");
    }
    let dataset = data::discover(data)?;
    crate::cache::check_input_size(data, info.input_size)?;
    let items: Vec<_> = dataset
        .items
        .iter()
        .filter(|i| recorded.contains(&i.file))
        .cloned()
        .collect();
    if items.len() != recorded.len() {
        bail!(
            "{}: holds {} of the {} validation files recorded in the model card",
            data.display(),
            items.len(),
            recorded.len()
        );
    }
    let device = Device::flex();
    let (model, _) = cxr::weights::decode(weights, &device)?;
    let loader = LoaderConfig {
        batch_size: 16,
        workers: 2,
        prefetch: 2,
        size: info.input_size,
    };
    let scored = predict_all(
        &model,
        &dataset.root,
        &items,
        &loader,
        &device,
        false,
        Tta::None,
    );
    if let Some((file, why)) = scored.failed.first() {
        bail!(
            "{} validation image(s) could not be read, e.g. {file}: {why}",
            scored.failed.len()
        );
    }
    let positives = scored.labels.iter().filter(|&&l| l == 1).count();
    Ok(HeldOut {
        source: format!(
            "this model's scores on the {} validation images of its card ({positives} effusion). \
             Not out-of-fold: the same images chose its epoch and threshold, so the fit and the \
             ECE after it are optimistic",
            scored.scores.len()
        ),
        scores: scored.scores,
        labels: scored.labels,
    })
}

/// A label as written in a scores CSV: 1/0 or the class names.
fn parse_label(text: &str) -> Option<u8> {
    match text.trim() {
        "1" | "effusion" => Some(1),
        "0" | "nofinding" => Some(0),
        _ => None,
    }
}

/// Held-out scores from a CSV with (at least) the columns `file`, `label` and `score`.
pub fn read_scores_csv(path: &Path) -> Result<HeldOut> {
    let shown = path.display();
    let mut reader = csv::Reader::from_path(path).with_context(|| shown.to_string())?;
    let headers = reader
        .headers()
        .with_context(|| format!("{shown}: no header line"))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .with_context(|| {
                format!("{shown}: no `{name}` column (the header must name file, label and score)")
            })
    };
    let (label_at, score_at) = (column("label")?, column("score")?);
    column("file")?;
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record.with_context(|| format!("{shown}: line {line}"))?;
        let field = |at: usize| record.get(at).unwrap_or("");
        let label = parse_label(field(label_at)).with_context(|| {
            format!(
                "{shown}: line {line}: label `{}` is not 1/0 or effusion/nofinding",
                field(label_at)
            )
        })?;
        let score: f32 = field(score_at)
            .trim()
            .parse()
            .ok()
            .filter(|s: &f32| (0.0..=1.0).contains(s))
            .with_context(|| {
                format!(
                    "{shown}: line {line}: score `{}` is not a probability in [0, 1]",
                    field(score_at)
                )
            })?;
        scores.push(score);
        labels.push(label);
    }
    if scores.is_empty() {
        bail!("{shown}: no scores");
    }
    Ok(HeldOut {
        source: format!("{} held-out scores from {shown}", scores.len()),
        scores,
        labels,
    })
}

/// Parts of the held-out images for the cross-fitted reliability.
const CROSS_FOLDS: usize = 5;

/// The log-odds of a raw probability, kept finite (f32 softmax scores can round to 0 or 1).
fn logit_of_score(score: f32) -> f64 {
    calibration::logit(f64::from(score).clamp(1e-7, 1.0 - 1e-7))
}

/// Fit on `held_out`, and measure before and after: reliability and ECE, and that the ranking
/// and the decisions at the threshold are unchanged (an error otherwise).
pub fn fit_and_measure(
    info: &ModelInfo,
    held_out: &HeldOut,
    method: Method,
    bins: usize,
    command: String,
) -> Result<(Calibration, CalibrationCard)> {
    let (scores, labels) = (&held_out.scores, &held_out.labels);
    let z: Vec<f64> = scores.iter().map(|&s| logit_of_score(s)).collect();
    let fitted = calibration::fit(&z, labels, method)
        .with_context(|| format!("fitting on {}", held_out.source))?;
    let (raw, calibrated) = raw_and_calibrated(&fitted, scores);
    let threshold = fitted.probability(f64::from(info.threshold));
    let calibrated_f32: Vec<f32> = calibrated.iter().map(|&p| p as f32).collect();
    let before = Confusion::at(scores, labels, info.threshold);
    let after = Confusion::at(&calibrated_f32, labels, threshold as f32);
    if before != after || metrics::auc(scores, labels) != metrics::auc(&calibrated_f32, labels) {
        bail!("the calibration changed the ranking or the decisions: {before:?} vs {after:?}");
    }
    let crossed = calibration::cross_fitted(&z, labels, method, CROSS_FOLDS)
        .map(|p| calibration::reliability(&p, labels, bins))
        .ok();
    let card = CalibrationCard {
        fitted_on: held_out.source.clone(),
        images: scores.len(),
        effusion: labels.iter().filter(|&&l| l == 1).count(),
        command: Some(command),
        before: calibration::reliability(&raw, labels, bins),
        after: calibration::reliability(&calibrated, labels, bins),
        after_cross_fitted: crossed,
        threshold: Some(threshold),
        sensitivity: Some(before.sensitivity()),
        specificity: Some(before.specificity()),
        check: None,
    };
    Ok((fitted, card))
}

/// Raw scores as probabilities, and the same through `fitted`.
fn raw_and_calibrated(fitted: &Calibration, scores: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let raw = scores.iter().map(|&s| f64::from(s)).collect();
    let calibrated = scores
        .iter()
        .map(|&s| fitted.probability_of_logit(logit_of_score(s)))
        .collect();
    (raw, calibrated)
}

/// The reliability of `held_out`'s raw and calibrated probabilities, for scores the fit did not
/// use.
fn check(fitted: &Calibration, held_out: &HeldOut, bins: usize) -> CalibrationCheck {
    let labels = &held_out.labels;
    let (raw, calibrated) = raw_and_calibrated(fitted, &held_out.scores);
    CalibrationCheck {
        images_are: "this model's scores on the validation images of its card, which chose its \
                     epoch and threshold but not this calibration"
            .into(),
        images: labels.len(),
        effusion: labels.iter().filter(|&&l| l == 1).count(),
        before: calibration::reliability(&raw, labels, bins),
        after: calibration::reliability(&calibrated, labels, bins),
    }
}

fn print_summary(info: &ModelInfo, out: &Path) {
    let (Some(c), Some(card)) = (&info.calibration, &info.card.calibration) else {
        return;
    };
    println!("fitted on:   {}", card.fitted_on);
    println!(
        "calibration: {:?}, p = sigmoid({:.4} * z + {:.4}), z = logit difference; holds at {:.0} % effusion",
        c.method,
        c.slope,
        c.intercept,
        100.0 * c.prevalence
    );
    println!(
        "ECE ({} bins): {:.3} before, {:.3} after (fitted on the same images), {} cross-fitted ({CROSS_FOLDS} parts)",
        card.before.bins.len(),
        card.before.ece,
        card.after.ece,
        card.after_cross_fitted
            .as_ref()
            .map_or_else(|| "n/a".into(), |r| format!("{:.3}", r.ece))
    );
    println!(
        "log-loss:    {:.3} before, {:.3} after, {} cross-fitted",
        card.before.log_loss,
        card.after.log_loss,
        card.after_cross_fitted
            .as_ref()
            .map_or_else(|| "n/a".into(), |r| format!("{:.3}", r.log_loss))
    );
    if let Some(check) = &card.check {
        println!(
            "this model's own {} held-out images (not in the fit): ECE {:.3} before, {:.3} after; \
             log-loss {:.3} before, {:.3} after",
            check.images,
            check.before.ece,
            check.after.ece,
            check.before.log_loss,
            check.after.log_loss
        );
    }
    println!(
        "threshold:   {:.3} raw = {:.3} calibrated (sensitivity {:.3}, specificity {:.3}, unchanged)",
        info.threshold,
        card.threshold.unwrap_or(f64::NAN),
        card.sensitivity.unwrap_or(f64::NAN),
        card.specificity.unwrap_or(f64::NAN)
    );
    println!(
        "wrote effusion.cxrw, MODEL_CARD.md and reliability.svg to {}",
        out.display()
    );
}

#[cfg(test)]
mod tests;
