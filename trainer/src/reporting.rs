//! What a run reports: the per-epoch line and `metrics.csv` row, the best epoch's files and its
//! model card, and `report.json` with the training curves.

use anyhow::Result;
use cxr::model_card::{ModelCard, Training, Validation};
use cxr::{ModelInfo, ResNet, ResNetConfig};

use crate::data::{Dataset, Item, Split};
use crate::metrics::{self, Report};
use crate::options::TrainOptions;
use crate::plots;
use crate::run_dir::{BestEpoch, EpochSummary, MetricsRow, RunDir, RunReport, RunState};

/// The validation figures of one epoch.
#[derive(Debug, Clone)]
pub struct EpochResult {
    pub epoch: usize,
    pub train_loss: f64,
    pub valid_loss: f64,
    /// At threshold 0.5.
    pub report: Report,
    pub lr: f64,
    pub seconds: f64,
}

impl EpochResult {
    pub fn auc(&self) -> f64 {
        self.report.auc.unwrap_or(f64::NAN)
    }

    /// The epoch's `metrics.csv` row (rounded as the file has always been written).
    pub fn metrics_row(&self) -> MetricsRow {
        let round = |v: f64, digits: i32| {
            let scale = 10f64.powi(digits);
            (v * scale).round() / scale
        };
        let (lo, hi) = self.report.auc_ci95.unwrap_or((f64::NAN, f64::NAN));
        MetricsRow {
            epoch: self.epoch,
            train_loss: round(self.train_loss, 5),
            valid_loss: round(self.valid_loss, 5),
            valid_auc: round(self.auc(), 5),
            auc_lo: round(lo, 5),
            auc_hi: round(hi, 5),
            accuracy: round(self.report.accuracy, 4),
            sensitivity: round(self.report.sensitivity, 4),
            specificity: round(self.report.specificity, 4),
            lr: round(self.lr, 6),
            seconds: round(self.seconds, 1),
        }
    }

    /// The line printed after the epoch.
    pub fn line(&self, epochs: usize, improved: bool) -> String {
        format!(
            "epoch {:>3}/{}: train loss {:.4}, valid loss {:.4}, AUC {}, acc {:.3}, sens {:.3}, spec {:.3} (at 0.5), {:.0} s{}",
            self.epoch,
            epochs,
            self.train_loss,
            self.valid_loss,
            self.report.auc_text(),
            self.report.accuracy,
            self.report.sensitivity,
            self.report.specificity,
            self.seconds,
            if improved { "  *best*" } else { "" }
        )
    }
}

/// What the best checkpoint is written from.
pub struct Best<'a> {
    pub opts: &'a TrainOptions,
    pub arch: &'a ResNetConfig,
    pub split: &'a Split,
    pub data: &'a Dataset,
}

impl Best<'_> {
    /// Write the new best epoch: the weight file with its model card (threshold chosen for the
    /// target sensitivity), the ROC picture and `best.json`.
    pub fn write(
        &self,
        run: &RunDir,
        model: ResNet,
        result: &EpochResult,
        scores: Vec<f32>,
        labels: Vec<u8>,
    ) -> Result<()> {
        let threshold =
            metrics::threshold_for_sensitivity(&scores, &labels, self.opts.target_sensitivity);
        let at_threshold = Report::new(&scores, &labels, threshold);
        let info = self.checkpoint_info(result.epoch, &at_threshold);
        let bytes = cxr::weights::encode(model, &info)?;
        let roc = plots::roc_chart(&metrics::roc(&scores, &labels), at_threshold.auc);
        let best = BestEpoch {
            epoch: result.epoch,
            validation: at_threshold,
            scores,
            labels,
        };
        run.write_best(&bytes, &roc, &best)
    }

    fn checkpoint_info(&self, epoch: usize, at: &Report) -> ModelInfo {
        let opts = self.opts;
        let mut info = ModelInfo::new(
            format!(
                "ResNet-18 layout at width x{} (effusion vs no finding)",
                opts.width
            ),
            self.arch.clone(),
        );
        info.input_size = opts.input_size;
        info.threshold = at.threshold;
        let count = |items: &[Item], l: u8| items.iter().filter(|i| i.label == l).count();
        let train = &self.split.train;
        info.card = ModelCard {
            epoch: Some(epoch),
            date: Some(today()),
            parameters: None,
            validation: validation_card(at, opts.target_sensitivity, &self.split.valid),
            training: Training {
                images: Some(train.len()),
                effusion: Some(count(train, 1)),
                nofinding: Some(count(train, 0)),
                data_layout: Some(self.data.layout.to_string()),
                options: serde_json::to_value(opts).unwrap_or_default(),
                command: None,
            },
            calibration: None,
            ood: None,
            cross_validation: None,
        };
        info
    }
}

/// The card's validation section for `report`, measured on `valid`.
pub fn validation_card(report: &Report, target_sensitivity: f64, valid: &[Item]) -> Validation {
    Validation {
        images: Some(report.images),
        effusion: Some(report.positives),
        auc: report.auc,
        auc_ci95: report.auc_ci95,
        threshold: Some(f64::from(report.threshold)),
        threshold_rule: Some(format!(
            "highest threshold with validation sensitivity >= {target_sensitivity}"
        )),
        accuracy: Some(report.accuracy),
        sensitivity: Some(report.sensitivity),
        specificity: Some(report.specificity),
        confusion: Some(report.confusion),
        files: valid.iter().map(|i| i.file.clone()).collect(),
        weights: None,
    }
}

/// `report.json` and `curves.svg`: the whole run at a glance, rewritten after every epoch.
pub fn write_report(
    run: &RunDir,
    opts: &TrainOptions,
    state: &RunState,
    stopped_early: bool,
) -> Result<()> {
    let rows = run.read_metrics();
    let best = run.read_best()?.map(|mut b| {
        b.scores.clear();
        b.labels.clear();
        b
    });
    let mut report = RunReport {
        epochs_completed: state.epoch,
        best_epoch: state.best_epoch,
        best,
        stopped_early,
        per_epoch: rows
            .iter()
            .map(|r| EpochSummary {
                epoch: r.epoch,
                train_loss: r.train_loss,
                valid_loss: r.valid_loss,
                valid_auc: r.valid_auc,
            })
            .collect(),
        options: opts,
        checkpoint: "",
        pictures: ["", ""],
    };
    run.write_report(&mut report, &curves(&rows))
}

/// The training curves: losses and validation AUC per epoch.
fn curves(rows: &[MetricsRow]) -> String {
    let last = rows.last().map(|r| r.epoch as f64).unwrap_or(1.0).max(2.0);
    let max_loss = rows
        .iter()
        .flat_map(|r| [r.train_loss, r.valid_loss])
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max);
    let series = |f: fn(&MetricsRow) -> f64| rows.iter().map(|r| (r.epoch as f64, f(r))).collect();
    plots::line_chart(
        "Training curves",
        "epoch",
        "loss / AUC",
        (1.0, last),
        (0.0, max_loss.min(3.0)),
        &[
            plots::Series {
                name: "train loss",
                color: "#d92d20",
                points: series(|r| r.train_loss),
            },
            plots::Series {
                name: "validation loss",
                color: "#f79009",
                points: series(|r| r.valid_loss),
            },
            plots::Series {
                name: "validation AUC",
                color: "#2463eb",
                points: series(|r| r.valid_auc),
            },
        ],
    )
}

/// Today's date (UTC) as YYYY-MM-DD.
pub fn today() -> String {
    time::OffsetDateTime::now_utc().date().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_is_formatted() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
    }
}
