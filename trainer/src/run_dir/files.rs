//! The formats of the run folder's files: the state, the metrics rows, the best epoch, the
//! report, and teacher logits.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::disk::write_atomic;
use crate::data::Item;
use crate::metrics::Report;
use crate::options::TrainOptions;

/// Progress of a run, for `--resume` (`state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    /// Epochs completed.
    pub epoch: usize,
    pub best_auc: f64,
    pub best_epoch: usize,
}

impl Default for RunState {
    fn default() -> Self {
        Self {
            epoch: 0,
            best_auc: f64::NEG_INFINITY,
            best_epoch: 0,
        }
    }
}

/// One row of `metrics.csv`: the figures of one epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsRow {
    pub epoch: usize,
    pub train_loss: f64,
    pub valid_loss: f64,
    pub valid_auc: f64,
    pub auc_lo: f64,
    pub auc_hi: f64,
    pub accuracy: f64,
    pub sensitivity: f64,
    pub specificity: f64,
    pub lr: f64,
    pub seconds: f64,
}

pub(super) const METRICS_HEADER: [&str; 11] = [
    "epoch",
    "train_loss",
    "valid_loss",
    "valid_auc",
    "auc_lo",
    "auc_hi",
    "accuracy",
    "sensitivity",
    "specificity",
    "lr",
    "seconds",
];

/// The best epoch so far (`best.json`): its validation report at the stored threshold, with
/// the validation scores and labels it was computed from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BestEpoch {
    pub epoch: usize,
    pub validation: Report,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<f32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<u8>,
}

/// `report.json`: the whole run at a glance.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport<'a> {
    pub epochs_completed: usize,
    pub best_epoch: usize,
    /// The best epoch's report, without its scores and labels.
    pub best: Option<BestEpoch>,
    pub stopped_early: bool,
    pub per_epoch: Vec<EpochSummary>,
    pub options: &'a TrainOptions,
    pub checkpoint: &'static str,
    pub pictures: [&'static str; 2],
}

/// One epoch in `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct EpochSummary {
    pub epoch: usize,
    pub train_loss: f64,
    pub valid_loss: f64,
    pub valid_auc: f64,
}

/// Teacher logits by training file (`train --teacher`, `imagenet finetune --teacher-out`).
pub type TeacherLogits = HashMap<String, [f32; 2]>;

/// Read a teacher's logits and check they cover every training file.
pub fn read_teacher(path: &Path, train: &[Item]) -> Result<TeacherLogits> {
    let text = fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let teacher: TeacherLogits =
        serde_json::from_str(&text).with_context(|| path.display().to_string())?;
    if let Some(missing) = train.iter().find(|i| !teacher.contains_key(&i.file)) {
        bail!(
            "{}: no teacher logits for training file {}",
            path.display(),
            missing.file
        );
    }
    Ok(teacher)
}

pub fn write_teacher(path: &Path, teacher: &TeacherLogits) -> Result<()> {
    write_atomic(path, &serde_json::to_vec(teacher)?)
}
