//! Transfer from ImageNet, second stage: the last stage (res5) unfrozen with a lower learning
//! rate than the head, the first three stages kept frozen. Their outputs are computed once, or,
//! with augmentation, again on every epoch's augmented images. With folds, the fine-tuning is
//! cross-fitted so that a distillation teacher's logits for each training image come from a
//! network that did not train on it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use burn::module::Module;
use burn::nn::Linear;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use cxr::model::global_average_pool;

use super::cross_fit::{CrossFit, cross_fit};
use super::frozen::{Cached, caffe_batch};
use super::imagenet;
use super::resnet50::{ResNet50, Stage50};
use crate::augment::AugmentConfig;
use crate::data::Item;
use crate::loader::{Failures, Loader, LoaderConfig};
use crate::metrics::Report;
use crate::objective::{LossKind, class_weights, loss};
use crate::rng::Rng;
use crate::run_dir::{RunDir, write_teacher};

/// Fine-tuning schedule, fixed before looking at any validation figure. Also the arguments of
/// `trainer imagenet finetune` (the fields without a flag keep their defaults there).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct FinetuneOptions {
    /// Epochs with only the head trained (res5 frozen, its BatchNorm in inference mode).
    #[arg(long, default_value_t = 3)]
    pub head_epochs: usize,
    /// Then epochs with res5 unfrozen.
    #[arg(long, default_value_t = 9)]
    pub tune_epochs: usize,
    #[arg(skip = 16_usize)]
    pub batch_size: usize,
    #[arg(skip = 1e-3)]
    pub lr_head: f64,
    /// res5's learning rate (lower: its ImageNet filters are a starting point worth keeping).
    #[arg(skip = 1e-4)]
    pub lr_backbone: f64,
    #[arg(skip = 1e-4_f32)]
    pub weight_decay: f32,
    #[arg(skip = 42_u64)]
    pub seed: u64,
    /// Write the best epoch's logits for every training image here (a teacher for
    /// `train --teacher`).
    #[arg(long)]
    pub teacher_out: Option<std::path::PathBuf>,
    /// Cross-fit over this many folds of the training split: every training image's teacher
    /// logits then come from a fine-tuning that did not see it (1: one fine-tuning).
    #[arg(long, default_value_t = 1)]
    pub folds: usize,
    /// Augment this fraction of the training images (as `train --augment-p`); above 0 the
    /// frozen stages run on every epoch's augmented images instead of once (slower).
    #[arg(long, default_value_t = 0.0)]
    pub augment_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub augment_strength: f32,
}

impl Default for FinetuneOptions {
    fn default() -> Self {
        Self {
            head_epochs: 3,
            tune_epochs: 9,
            batch_size: 16,
            lr_head: 1e-3,
            lr_backbone: 1e-4,
            weight_decay: 1e-4,
            seed: 42,
            teacher_out: None,
            folds: 1,
            augment_p: 0.0,
            augment_strength: 1.0,
        }
    }
}

/// The trained part: the last stage and the head.
#[derive(Module, Debug)]
pub(super) struct Tail {
    stage: Stage50,
    head: Linear,
}

impl Tail {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head
            .forward(global_average_pool(self.stage.forward(x)))
    }
}

pub(super) fn logits(
    tail: &Tail,
    cached: &Cached,
    idx: &[usize],
    device: &Device,
) -> Result<Vec<[f32; 2]>> {
    let mut out = Vec::with_capacity(idx.len());
    for chunk in idx.chunks(32) {
        let values = tail
            .forward(cached.batch(chunk, device))
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow!("{e:?}"))?;
        out.extend(values.chunks_exact(2).map(|l| [l[0], l[1]]));
    }
    Ok(out)
}

/// What recomputes the res4 outputs of augmented training images each epoch: the frozen
/// stages, the data folder and the training items in the order of the cached ones.
pub(super) struct Augmented<'a> {
    frozen: &'a ResNet50,
    root: &'a Path,
    items: &'a [Item],
    size: usize,
    config: AugmentConfig,
}

/// One fine-tuning run of a fresh tail on the cached training images `train_idx`, scored on
/// the whole validation set every epoch. `on_best` sees the tail (inference mode) each time the
/// validation AUC improves. Returns the best epoch's row and every epoch's row.
/// The batches of one epoch over the training images in `order`: the cached res4 outputs, or
/// with augmentation the frozen stages' outputs of freshly augmented images.
fn epoch_batches<'a>(
    train: &'a Cached,
    order: Vec<usize>,
    augmented: Option<&'a Augmented>,
    o: &FinetuneOptions,
    epoch: usize,
    device: &'a Device,
    failures: &Failures,
) -> Box<dyn Iterator<Item = (Tensor<4>, Vec<u8>)> + 'a> {
    let ad = device.clone().autodiff();
    let Some(a) = augmented else {
        let chunks: Vec<Vec<usize>> = order.chunks(o.batch_size).map(<[usize]>::to_vec).collect();
        return Box::new(chunks.into_iter().map(move |idx| {
            let y = idx.iter().map(|&i| train.y[i]).collect();
            (train.batch(&idx, &ad), y)
        }));
    };
    let cfg = LoaderConfig {
        batch_size: o.batch_size,
        workers: 2,
        prefetch: 2,
        size: a.size,
    };
    let items = order.iter().map(|&i| a.items[i].clone()).collect();
    let seed = Rng::new(o.seed).fork(1000 + epoch as u64).next_u64();
    let loader = Loader::start(
        a.root.to_path_buf(),
        items,
        &cfg,
        Some(a.config.clone()),
        seed,
        failures.clone(),
    );
    Box::new(loader.map(move |b| {
        let n = b.len();
        let res4 = a
            .frozen
            .features_until(caffe_batch(b.pixels, n, a.size, device), 3);
        (Tensor::<4>::from_data(res4.into_data(), &ad), b.labels)
    }))
}

pub(super) fn tune(
    package: &Path,
    (train, valid): (&Cached, &Cached),
    train_idx: &[usize],
    augmented: Option<&Augmented>,
    o: &FinetuneOptions,
    device: &Device,
    mut on_best: impl FnMut(&Tail) -> Result<()>,
) -> Result<(serde_json::Value, Vec<serde_json::Value>)> {
    let ad = device.clone().autodiff();
    let mut full = imagenet::load(package, 1, 2, &ad)?;
    let stage = full.stages.pop().context("no stages")?;
    let mut tail = Tail {
        stage: stage.freeze(),
        head: full.head,
    };
    let items: Vec<Item> = train_idx
        .iter()
        .map(|&i| Item {
            file: train.files[i].clone(),
            label: train.y[i],
            patient: None,
        })
        .collect();
    let weights = class_weights(LossKind::ClassWeighted, &items, None);
    let mut optim_head = AdamWConfig::new().with_weight_decay(o.weight_decay).init();
    let mut optim_stage = AdamWConfig::new().with_weight_decay(o.weight_decay).init();
    let valid_idx: Vec<usize> = (0..valid.y.len()).collect();
    let mut epochs = Vec::new();
    let (mut best_auc, mut best) = (f64::NEG_INFINITY, serde_json::Value::Null);
    for epoch in 0..o.head_epochs + o.tune_epochs {
        let tuning = epoch >= o.head_epochs;
        if epoch == o.head_epochs {
            tail.stage = tail.stage.unfreeze();
        }
        let t0 = Instant::now();
        let mut order = train_idx.to_vec();
        Rng::new(o.seed).fork(epoch as u64).shuffle(&mut order);
        let mut loss_sum = 0.0f64;
        let failures: Failures = Default::default();
        let batches = epoch_batches(train, order, augmented, o, epoch, device, &failures);
        for (x, yb) in batches {
            let l = loss(tail.forward(x), &yb, LossKind::ClassWeighted, weights, 1.0);
            loss_sum += f64::from(l.clone().into_scalar::<f32>()) * yb.len() as f64;
            let mut grads = l.backward();
            let head_grads = GradientsParams::from_module(&mut grads, &tail.head);
            tail = optim_head.step(o.lr_head, tail, head_grads);
            if tuning {
                let stage_grads = GradientsParams::from_module(&mut grads, &tail.stage);
                tail = optim_stage.step(o.lr_backbone, tail, stage_grads);
            }
        }
        let failed = failures.lock().map(|f| f.len()).unwrap_or(0);
        if failed > 0 {
            bail!("{failed} training image(s) could not be read");
        }
        let eval = tail.valid();
        let s: Vec<f32> = logits(&eval, valid, &valid_idx, device)?
            .into_iter()
            .map(cxr::classifier::effusion_probability)
            .collect();
        let report = Report::new(&s, &valid.y, 0.5);
        let auc = report.auc.unwrap_or(f64::NAN);
        let row = serde_json::json!({"epoch": epoch + 1, "res5_trained": tuning, "train_loss": loss_sum / train_idx.len().max(1) as f64,
            "auc": report.auc, "auc_ci95": report.auc_ci95, "seconds": t0.elapsed().as_secs_f64()});
        eprintln!("{row}");
        if auc > best_auc {
            best_auc = auc;
            best = row.clone();
            on_best(&eval)?;
        }
        epochs.push(row);
    }
    Ok((best, epochs))
}

fn schedule_json(o: &FinetuneOptions) -> serde_json::Value {
    serde_json::json!({"head_epochs": o.head_epochs, "tune_epochs": o.tune_epochs, "batch_size": o.batch_size,
        "lr_head": o.lr_head, "lr_backbone": o.lr_backbone, "weight_decay": o.weight_decay, "folds": o.folds,
        "augment_p": o.augment_p, "augment_strength": o.augment_strength})
}

/// The frozen stages' outputs of a run's split, computed once, and what re-augmenting needs.
pub(super) struct Setup {
    frozen: ResNet50,
    pub(super) train: Cached,
    pub(super) valid: Cached,
    /// Images outside the split that the fine-tuned networks also score (a cross-validation's
    /// held-out fold).
    pub(super) extra: Option<Cached>,
    /// The training items in the order of the cached outputs, with their patients.
    pub(super) items: Vec<Item>,
    data: PathBuf,
    size: usize,
    extract_seconds: f64,
}

impl Setup {
    fn new(package: &Path, run: &RunDir, extra: &[Item], device: &Device) -> Result<Self> {
        let (opts, split) = run.read_run()?;
        let started = Instant::now();
        let frozen = imagenet::load(package, 1, 2, device)?;
        let compute =
            |items: &[Item]| Cached::compute(&frozen, &opts.data, items, opts.input_size, device);
        let train = compute(&split.train)?;
        let valid = compute(&split.valid)?;
        let extra = (!extra.is_empty()).then(|| compute(extra)).transpose()?;
        let by_file: HashMap<&str, &Item> =
            split.train.iter().map(|i| (i.file.as_str(), i)).collect();
        let items: Vec<Item> = train
            .files
            .iter()
            .map(|f| {
                by_file
                    .get(f.as_str())
                    .map(|i| (*i).clone())
                    .with_context(|| format!("{f}: not in the split"))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            frozen,
            train,
            valid,
            extra,
            items,
            data: opts.data,
            size: opts.input_size,
            extract_seconds: started.elapsed().as_secs_f64(),
        })
    }

    pub(super) fn augmented(&self, o: &FinetuneOptions) -> Option<Augmented<'_>> {
        (o.augment_p > 0.0).then(|| Augmented {
            frozen: &self.frozen,
            root: &self.data,
            items: &self.items,
            size: self.size,
            config: AugmentConfig::with_strength(o.augment_p, o.augment_strength),
        })
    }
}

/// Fine-tune res5 and a new head on `run`'s training split; the validation AUC of every epoch,
/// and the best, as JSON. The res4 outputs of the un-augmented images are computed once (they
/// also give the teacher's logits); with `o.augment_p > 0` the frozen stages run again on each
/// epoch's augmented training images.
///
/// With `o.folds = k > 1` it cross-fits instead: k fresh fine-tunings, each on the training
/// images outside one fold (stratified, patients kept together), each stopped at its best
/// validation epoch. The teacher file then holds, for every training image, the logits of the
/// run that did not train on it: out-of-fold targets, as soft as the teacher is on unseen
/// images, rather than the near-certain ones a network gives the images it memorised. The
/// report adds the validation AUC of the k runs' mean probability.
pub fn finetune(package: &Path, run: &RunDir, o: &FinetuneOptions) -> Result<serde_json::Value> {
    let device = Device::flex();
    let setup = Setup::new(package, run, &[], &device)?;
    let report = if o.folds <= 1 {
        single(package, &setup, o, &device)?
    } else {
        cross_fit(package, &setup, o, &device)?.0
    };
    Ok(with_run_details(report, run, &setup, o))
}

/// [`finetune`] cross-fitted (`o.folds` ≥ 2), the k networks also scoring `extra` (images
/// outside the run's split). Returns the report and the teacher logits and mean probabilities.
pub fn cross_fit_scoring(
    package: &Path,
    run: &RunDir,
    o: &FinetuneOptions,
    extra: &[Item],
) -> Result<(serde_json::Value, CrossFit)> {
    if o.folds < 2 {
        bail!(
            "a cross-fitted fine-tuning needs at least 2 folds, got {}",
            o.folds
        );
    }
    let device = Device::flex();
    let setup = Setup::new(package, run, extra, &device)?;
    let (report, result) = cross_fit(package, &setup, o, &device)?;
    Ok((with_run_details(report, run, &setup, o), result))
}

fn with_run_details(
    mut report: serde_json::Value,
    run: &RunDir,
    setup: &Setup,
    o: &FinetuneOptions,
) -> serde_json::Value {
    report["run"] = run.path().display().to_string().into();
    report["res4_seconds"] = setup.extract_seconds.into();
    report["schedule"] = schedule_json(o);
    report
}

/// One fine-tuning on the whole training split; the teacher's logits at the best epoch.
fn single(
    package: &Path,
    s: &Setup,
    o: &FinetuneOptions,
    device: &Device,
) -> Result<serde_json::Value> {
    let all: Vec<usize> = (0..s.train.y.len()).collect();
    let augmented = s.augmented(o);
    let (best, epochs) = tune(
        package,
        (&s.train, &s.valid),
        &all,
        augmented.as_ref(),
        o,
        device,
        |eval| match &o.teacher_out {
            Some(path) => write_teacher(
                path,
                &s.train
                    .files
                    .iter()
                    .cloned()
                    .zip(logits(eval, &s.train, &all, device)?)
                    .collect(),
            ),
            None => Ok(()),
        },
    )?;
    Ok(serde_json::json!({"best": best, "epochs": epochs}))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::FinetuneOptions;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        options: FinetuneOptions,
    }

    #[test]
    fn clap_defaults_are_the_default_schedule() {
        assert_eq!(
            Cli::parse_from(["finetune"]).options,
            FinetuneOptions::default()
        );
        let set = Cli::parse_from(["finetune", "--folds", "5", "--tune-epochs", "4"]).options;
        assert_eq!((set.folds, set.tune_epochs, set.batch_size), (5, 4, 16));
    }
}
