//! What defines a run: the options `train` and `compare` take on the command line, saved as the
//! run folder's `options.json`. One struct serves clap and serde; the serde defaults (for older
//! `options.json` files) are clap's defaults, checked by a test.

use std::path::PathBuf;

use clap::Args;
use cxr::ResNetConfig;
use serde::{Deserialize, Serialize};

use crate::device::DeviceChoice;
use crate::objective::LossKind;

/// Everything that defines a run (saved as `options.json`).
#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainOptions {
    /// The data folder; on the command line it is `--data` of the command (absent on resume).
    #[arg(skip)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW, warm-up then cosine decay).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f32,
    /// Width multiplier of the ResNet-18 layout (1 = full, 0.25 = quarter width).
    #[arg(long, default_value_t = 0.25)]
    pub width: f64,
    /// BasicBlocks per stage, comma-separated (default: 2,2,2,2).
    #[arg(long, value_delimiter = ',')]
    pub depths: Vec<usize>,
    /// Side of the square model input.
    #[arg(long, default_value_t = 256)]
    pub input_size: usize,
    /// Fraction of each class held out for validation.
    #[arg(long, default_value_t = 0.2)]
    pub valid_fraction: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Subsample effusion images to this prevalence (0.1 = the NIH-like 10 %).
    #[arg(long)]
    pub prevalence: Option<f64>,
    #[arg(long, value_enum, default_value = "class-weighted")]
    pub loss: LossKind,
    /// Loss weights of [no finding, effusion] for class-weighted (default: inverse prevalence).
    #[arg(long, value_delimiter = ',', num_args = 2)]
    pub class_weights: Option<Vec<f32>>,
    /// Off-diagonal entry of the cost matrix (--loss cost-matrix): a misclassified sample's
    /// cross-entropy counts this many times.
    #[arg(long, default_value_t = 5.0)]
    pub cost: f32,
    /// Stop when validation AUC has not improved for this many epochs.
    #[arg(long)]
    pub patience: Option<usize>,
    /// The stored threshold is the highest one whose validation sensitivity reaches this.
    #[arg(long, default_value_t = 0.9)]
    pub target_sensitivity: f64,
    /// Probability that a training image is augmented.
    #[arg(long, default_value_t = 0.5)]
    pub augment_p: f32,
    /// Scale of the augmentation ranges (0 = none, 1 = default).
    #[arg(long, default_value_t = 1.0)]
    pub augment_strength: f32,
    /// Decoding threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Train on at most this many images (quick runs).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Distil from a teacher: JSON of each training file's two teacher logits (from
    /// `trainer imagenet finetune --teacher-out`).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Weight of the teacher's soft targets in the loss (with --teacher); the rest stays on the
    /// labels.
    #[arg(long, default_value_t = 0.5)]
    pub distill_weight: f32,
    /// Softmax temperature of the distillation term (with --teacher).
    #[arg(long, default_value_t = 2.0)]
    pub temperature: f32,
    /// Likely same-patient groups (a file from `trainer groups`): each group stays on one side
    /// of the split and of every fold.
    #[arg(long)]
    pub groups: Option<PathBuf>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            epochs: 30,
            batch_size: 16,
            lr: 1e-3,
            weight_decay: 1e-4,
            width: 0.25,
            depths: Vec::new(),
            input_size: 256,
            valid_fraction: 0.2,
            seed: 42,
            prevalence: None,
            loss: LossKind::ClassWeighted,
            class_weights: None,
            cost: 5.0,
            patience: None,
            target_sensitivity: 0.9,
            augment_p: 0.5,
            augment_strength: 1.0,
            workers: 2,
            limit: None,
            teacher: None,
            distill_weight: 0.5,
            temperature: 2.0,
            groups: None,
        }
    }
}

impl TrainOptions {
    /// The options with the data folder set and counts of at least one.
    pub fn with_data(mut self, data: PathBuf) -> Self {
        self.data = data;
        self.batch_size = self.batch_size.max(1);
        self.workers = self.workers.max(1);
        self
    }

    /// `--class-weights` as the pair the loss takes.
    pub fn class_weights(&self) -> Option<[f32; 2]> {
        match self.class_weights.as_deref() {
            Some(&[a, b]) => Some([a, b]),
            _ => None,
        }
    }

    pub fn architecture(&self) -> ResNetConfig {
        let mut arch = ResNetConfig::resnet18().with_width(self.width);
        if !self.depths.is_empty() {
            arch.depths = self.depths.clone();
            arch.widths.truncate(self.depths.len());
            while arch.widths.len() < arch.depths.len() {
                let last = *arch.widths.last().unwrap_or(&arch.stem_width);
                arch.widths.push(last * 2);
            }
        }
        arch
    }
}

/// Where and how a training command runs: its run folder, backend and verbosity (not saved).
#[derive(Args, Debug, Clone)]
pub struct Session {
    /// Run folder for checkpoints, split and metrics (default: runs/<date>-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// wgpu: a hardware GPU through wgpu, else the CPU with a message; cpu: burn's flex backend.
    #[arg(long, value_enum, default_value = "wgpu")]
    pub backend: DeviceChoice,
    /// Print no progress bars or per-epoch lines.
    #[arg(long)]
    pub quiet: bool,
}

impl Session {
    /// `--out`, or a new folder under `runs/` named after the current time.
    pub fn out(&self) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(timestamp()))
    }
}

/// A run-folder name from the current time: YYYY-MM-DD-HHMMSS (UTC).
pub fn timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{}-{:02}{:02}{:02}",
        now.date(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        options: TrainOptions,
    }

    #[test]
    fn serde_defaults_are_clap_defaults() {
        let parsed = Cli::parse_from(["trainer"]).options;
        assert_eq!(parsed, TrainOptions::default());
        let empty: TrainOptions = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, TrainOptions::default());
    }

    #[test]
    fn older_options_files_still_load() {
        let saved = r#"{"data": "d", "epochs": 3, "class_weights": null, "loss": "cost-matrix"}"#;
        let opts: TrainOptions = serde_json::from_str(saved).unwrap();
        assert_eq!((opts.epochs, opts.loss), (3, LossKind::CostMatrix));
        assert_eq!(opts.class_weights(), None);
        let opts = Cli::parse_from(["trainer", "--class-weights", "1", "2"]).options;
        assert_eq!(opts.class_weights(), Some([1.0, 2.0]));
    }

    #[test]
    fn timestamp_is_formatted() {
        let t = timestamp();
        assert_eq!(t.len(), 17, "{t}");
        assert!(t.starts_with("20"));
    }
}
