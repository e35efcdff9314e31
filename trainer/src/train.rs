//! The training loop: weighted cross-entropy, AdamW with a cosine learning-rate schedule,
//! validation AUC over the whole validation set every epoch, the best checkpoint kept, crash-safe
//! checkpoints and `--resume`.
//!
//! A run folder holds: `options.json`, `split.json`, `metrics.csv`, `best.cxrw` (the checkpoint
//! with the best validation AUC, with its metrics in the model card), and the resume state:
//! `epoch-N.bpk` (f32 weights) and `epoch-N.optim` for the last finished epoch N, and
//! `state.json`, which names N.
//!
//! Crash safety (tested by killing the trainer with SIGKILL, also in the middle of a write):
//! every file is written to a temporary name, synced and renamed, so each file is either its old
//! or its new complete version. An epoch's checkpoint files are written first under new names;
//! renaming `state.json` into place is the commit that makes them the resume point; the older
//! epoch's files are removed only after that. On `--resume`, rows of `metrics.csv` past the
//! committed epoch and stray temporary files are dropped.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::store::ModuleRecord;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData, s};
use clap::ValueEnum;
use cxr::classifier::{batch_logits, effusion_probability};
use cxr::{ModelInfo, ResNet, ResNetConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::augment::AugmentConfig;
use crate::data::{self, Dataset, Item, Split};
use crate::loader::{Failures, Loader, LoaderConfig};
use crate::metrics::{self, Report};
use crate::plots;
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// Plain cross-entropy.
    Ce,
    /// Cross-entropy weighted by inverse class frequency of the training split.
    ClassWeighted,
    /// The seed's cost matrix: a misclassified sample's loss counts 5 times.
    CostMatrix,
}

/// Everything that defines a run (saved as `options.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    pub data: PathBuf,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f32,
    pub width: f64,
    pub depths: Vec<usize>,
    pub input_size: usize,
    pub valid_fraction: f64,
    pub seed: u64,
    pub prevalence: Option<f64>,
    pub loss: LossKind,
    /// Overrides the inverse-prevalence weights of class-weighted loss.
    #[serde(default)]
    pub class_weights: Option<[f32; 2]>,
    /// Off-diagonal entry of the cost matrix.
    #[serde(default = "default_cost")]
    pub cost: f32,
    /// Early stopping: epochs without a better validation AUC.
    #[serde(default)]
    pub patience: Option<usize>,
    #[serde(default = "default_target_sensitivity")]
    pub target_sensitivity: f64,
    pub augment_p: f32,
    pub augment_strength: f32,
    pub workers: usize,
    /// Use at most this many training images (quick runs and ablations).
    pub limit: Option<usize>,
    /// Knowledge distillation: a JSON object mapping each training file to a teacher's two
    /// logits (written by `trainer imagenet finetune --teacher-out`).
    #[serde(default)]
    pub teacher: Option<PathBuf>,
    /// Weight of the teacher's softened probabilities in the loss; the rest stays on the labels.
    #[serde(default = "default_distill_weight")]
    pub distill_weight: f32,
    /// Softmax temperature of the distillation term.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
}

fn default_distill_weight() -> f32 {
    0.5
}

fn default_temperature() -> f32 {
    2.0
}

/// Teacher logits by training file.
pub type TeacherLogits = std::collections::HashMap<String, [f32; 2]>;

fn read_teacher(path: &Path, train: &[Item]) -> Result<TeacherLogits, String> {
    let text = fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let teacher: TeacherLogits = serde_json::from_str(&text).map_err(|e| io_err(path, e))?;
    if let Some(missing) = train.iter().find(|i| !teacher.contains_key(&i.file)) {
        return Err(format!(
            "{}: no teacher logits for training file {}",
            path.display(),
            missing.file
        ));
    }
    Ok(teacher)
}

/// The distillation term: cross-entropy of the student's tempered log-probabilities against the
/// teacher's tempered probabilities (KL divergence up to a constant), times T² so its gradients
/// keep their scale as T changes (Hinton et al., 2015).
pub fn distillation_loss(student: Tensor<2>, teacher: Tensor<2>, temperature: f32) -> Tensor<1> {
    let target = burn::tensor::activation::softmax(teacher.div_scalar(temperature), 1);
    let log_student = log_softmax(student.div_scalar(temperature), 1);
    (target * log_student)
        .sum_dim(1)
        .neg()
        .mean()
        .mul_scalar(temperature * temperature)
}

fn default_cost() -> f32 {
    5.0
}

fn default_target_sensitivity() -> f64 {
    0.9
}

impl TrainOptions {
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

/// Progress of a run, for `--resume`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    /// Epochs completed.
    pub epoch: usize,
    pub best_auc: f64,
    pub best_epoch: usize,
}

/// The validation figures of one epoch.
#[derive(Debug, Clone, Serialize)]
pub struct EpochResult {
    pub epoch: usize,
    pub train_loss: f64,
    pub valid_loss: f64,
    pub report: Report,
    pub lr: f64,
    pub seconds: f64,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

/// Test hook: with `CXR_TEST_SLOW_WRITE_MS` set, [`write_atomic`] writes in 64 KiB pieces with
/// that pause between them, so the crash test can kill the trainer in the middle of a write.
const SLOW_WRITE_ENV: &str = "CXR_TEST_SLOW_WRITE_MS";

/// Write a file atomically: temporary name, synced, then renamed over the old one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut f = fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    match std::env::var(SLOW_WRITE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(ms) => {
            for piece in bytes.chunks(64 * 1024) {
                f.write_all(piece).map_err(|e| io_err(&tmp, e))?;
                f.flush().map_err(|e| io_err(&tmp, e))?;
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
        }
        None => f.write_all(bytes).map_err(|e| io_err(&tmp, e))?,
    }
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    // Make the rename itself durable (best effort: not every file system syncs folders).
    if let Some(dir) = path.parent() {
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Check before training that the run folder can be written, so a typo, a read-only place or a
/// full disk is reported now rather than after the first epoch.
pub fn check_writable(out: &Path) -> Result<(), String> {
    fs::create_dir_all(out)
        .map_err(|e| format!("cannot create run folder {}: {e}", out.display()))?;
    let probe = out.join(".write-test");
    let result = fs::write(&probe, vec![0u8; 1 << 20]);
    let _ = fs::remove_file(&probe);
    result.map_err(|e| format!("cannot write to run folder {}: {e}", out.display()))
}

/// Bytes a run of a model with `params` parameters needs in its folder at the worst moment:
/// f32 weights and two AdamW moments for two epochs (the committed one and the one being
/// written), plus the f16 best checkpoint and its temporary copy, plus 16 MiB of reports.
pub fn space_needed(params: usize) -> u64 {
    let params = params as u64;
    2 * (params * 4 * 3) + 2 * (params * 2) + (16 << 20)
}

/// The problem, if any, of having `available` bytes free for a run that needs `needed`.
pub fn space_problem(out: &Path, available: u64, needed: u64) -> Option<String> {
    (available < needed).then(|| {
        format!(
            "the disk of run folder {} has {:.1} MB free; this model's checkpoints need about {:.1} MB. Free some space or choose another --out",
            out.display(),
            available as f64 / 1e6,
            needed as f64 / 1e6
        )
    })
}

/// Free bytes on the file system that holds `path` (`None` where it cannot be told).
#[cfg(unix)]
fn available_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `stat` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut stat) };
    (rc == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

#[cfg(not(unix))]
fn available_space(_path: &Path) -> Option<u64> {
    None
}

/// Refuse to start when the run folder's disk cannot hold this model's checkpoints.
pub fn check_space(out: &Path, params: usize) -> Result<(), String> {
    match available_space(out).and_then(|free| space_problem(out, free, space_needed(params))) {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}

fn checkpoint_paths(out: &Path, epoch: usize) -> (PathBuf, PathBuf) {
    (
        out.join(format!("epoch-{epoch}.bpk")),
        out.join(format!("epoch-{epoch}.optim")),
    )
}

/// Bring a run folder back to its last committed epoch: drop temporary files and checkpoints of
/// other epochs (a write the crash cut short) and `metrics.csv` rows past `epoch`.
fn recover(out: &Path, epoch: usize, metrics_path: &Path) -> Result<(), String> {
    let keep = checkpoint_paths(out, epoch);
    for entry in fs::read_dir(out).map_err(|e| io_err(out, e))?.flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let stray_checkpoint = name.starts_with("epoch-") && path != keep.0 && path != keep.1;
        if name.ends_with(".tmp") || stray_checkpoint {
            fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
        }
    }
    if let Ok(text) = fs::read_to_string(metrics_path) {
        let kept: Vec<&str> = text
            .lines()
            .enumerate()
            .filter(|(i, line)| {
                *i == 0
                    || line
                        .split(',')
                        .next()
                        .and_then(|e| e.parse::<usize>().ok())
                        .is_some_and(|e| e <= epoch)
            })
            .map(|(_, line)| line)
            .collect();
        write_atomic(metrics_path, format!("{}\n", kept.join("\n")).as_bytes())?;
    }
    Ok(())
}

/// Load the data, apply the prevalence, and split (or reuse the run's saved split).
pub fn prepare_split(opts: &TrainOptions, out: &Path, data: &Dataset) -> Result<Split, String> {
    let split_path = out.join("split.json");
    if split_path.is_file() {
        let text = fs::read_to_string(&split_path).map_err(|e| io_err(&split_path, e))?;
        return serde_json::from_str(&text).map_err(|e| io_err(&split_path, e));
    }
    let items = match opts.prevalence {
        Some(p) if p > 0.0 && p < 1.0 => data::subsample_prevalence(&data.items, p, opts.seed),
        Some(p) => return Err(format!("--prevalence must be between 0 and 1, got {p}")),
        None => data.items.clone(),
    };
    let split = data::split(&items, opts.valid_fraction, opts.seed).map_err(|e| e.to_string())?;
    let json = serde_json::to_vec_pretty(&split).map_err(|e| e.to_string())?;
    write_atomic(&split_path, &json)?;
    Ok(split)
}

/// Per-class loss weights for the training labels.
pub fn class_weights(kind: LossKind, train: &[Item], given: Option<[f32; 2]>) -> [f32; 2] {
    match kind {
        LossKind::ClassWeighted if given.is_some() => given.unwrap_or([1.0, 1.0]),
        LossKind::ClassWeighted => {
            let n = train.len() as f32;
            let pos = train.iter().filter(|i| i.label == 1).count().max(1) as f32;
            let neg = (n - pos).max(1.0);
            [n / (2.0 * neg), n / (2.0 * pos)]
        }
        _ => [1.0, 1.0],
    }
}

/// The training loss for a batch of logits `[b, 2]`. `weights` are the class weights
/// (class-weighted), `cost` the off-diagonal entry of the cost matrix (cost-matrix).
pub fn loss(
    logits: Tensor<2>,
    labels: &[u8],
    kind: LossKind,
    weights: [f32; 2],
    cost: f32,
) -> Tensor<1> {
    let device = logits.device();
    let b = labels.len();
    let onehot: Vec<f32> = labels
        .iter()
        .flat_map(|&l| if l == 1 { [0.0, 1.0] } else { [1.0, 0.0] })
        .collect();
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [b, 2]), &device);
    let nll = (log_softmax(logits.clone(), 1) * onehot)
        .sum_dim(1)
        .neg()
        .reshape([b]);
    match kind {
        LossKind::Ce => nll.mean(),
        LossKind::ClassWeighted => {
            let w: Vec<f32> = labels.iter().map(|&l| weights[usize::from(l)]).collect();
            let total: f32 = w.iter().sum();
            let w = Tensor::<1>::from_data(TensorData::new(w, [b]), &device);
            (nll * w).sum().div_scalar(total)
        }
        LossKind::CostMatrix => {
            // W[true, argmax prediction] = 1 on the diagonal, `cost` off it.
            let y = Tensor::<1>::from_data(
                TensorData::new(
                    labels.iter().map(|&l| f32::from(l)).collect::<Vec<_>>(),
                    [b],
                ),
                &device,
            );
            let logits = logits.detach();
            let predicted = logits
                .clone()
                .slice(s![.., 1])
                .greater(logits.slice(s![.., 0]))
                .float()
                .reshape([b]);
            let mask = (predicted - y).abs().mul_scalar(cost - 1.0).add_scalar(1.0);
            (nll * mask).mean()
        }
    }
}

/// Learning rate at `step` of `total`: linear warm-up over the first 3 %, then cosine to 1 %.
pub fn learning_rate(base: f64, step: usize, total: usize) -> f64 {
    let warmup = (total as f64 * 0.03).max(1.0);
    let s = step as f64;
    if s < warmup {
        return base * (s + 1.0) / warmup;
    }
    let t = ((s - warmup) / (total as f64 - warmup).max(1.0)).min(1.0);
    base * (0.01 + 0.99 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
}

fn bar(len: usize, prefix: String, quiet: bool) -> ProgressBar {
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

/// Validation: probabilities for every validation image, and the mean plain cross-entropy.
pub fn predict_all(
    model: &ResNet,
    root: &Path,
    items: &[Item],
    loader: &LoaderConfig,
    device: &Device,
    quiet: bool,
) -> (Vec<f32>, Vec<u8>, Vec<String>, f64, Vec<(String, String)>) {
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
    let (mut scores, mut labels, mut files) = (Vec::new(), Vec::new(), Vec::new());
    let mut loss_sum = 0.0;
    let s = loader.size;
    for batch in batches {
        let n = batch.len();
        let logits = batch_logits(model, batch.pixels, n, s, device);
        for (&pair, &label) in logits.iter().zip(&batch.labels) {
            let p = effusion_probability(pair);
            scores.push(p);
            loss_sum -= f64::from(if label == 1 { p } else { 1.0 - p }.max(1e-7)).ln();
        }
        labels.extend_from_slice(&batch.labels);
        files.extend(batch.files);
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    let failed = failures.lock().map(|f| f.clone()).unwrap_or_default();
    let mean_loss = loss_sum / scores.len().max(1) as f64;
    (scores, labels, files, mean_loss, failed)
}

/// Train a model. Returns a summary line; the run folder holds the rest.
pub fn train(
    opts: &TrainOptions,
    out: &Path,
    base_device: &Device,
    resume: bool,
    quiet: bool,
) -> Result<String, String> {
    check_writable(out)?;
    let state_path = out.join("state.json");
    let opts_path = out.join("options.json");
    if !resume && state_path.exists() {
        return Err(format!(
            "{} already holds a run; use --resume {} to continue it or choose another --out",
            out.display(),
            out.display()
        ));
    }
    let opts = if resume {
        let text = fs::read_to_string(&opts_path).map_err(|e| {
            format!(
                "{}: {e} (is {} a run folder?)",
                opts_path.display(),
                out.display()
            )
        })?;
        let mut saved: TrainOptions =
            serde_json::from_str(&text).map_err(|e| io_err(&opts_path, e))?;
        if !opts.data.as_os_str().is_empty() {
            saved.data = opts.data.clone();
        }
        saved.epochs = opts.epochs.max(saved.epochs);
        saved
    } else {
        opts.clone()
    };
    let data = data::discover(&opts.data).map_err(|e| e.to_string())?;
    if !quiet {
        eprintln!(
            "data: {} ({}): {} effusion, {} no finding; {} unreadable file(s) skipped",
            data.root.display(),
            data.layout,
            data.count(1),
            data.count(0),
            data.skipped.len()
        );
        for (file, reason) in data.skipped.iter().take(10) {
            eprintln!("  skipped {file}: {reason}");
        }
    }
    write_atomic(
        &opts_path,
        &serde_json::to_vec_pretty(&opts).map_err(|e| e.to_string())?,
    )?;
    let split = prepare_split(&opts, out, &data)?;
    let mut train_items = split.train.clone();
    if let Some(limit) = opts.limit {
        Rng::new(opts.seed).fork(99).shuffle(&mut train_items);
        train_items.truncate(limit);
    }
    let weights = class_weights(opts.loss, &train_items, opts.class_weights);
    let teacher = opts
        .teacher
        .as_deref()
        .map(|p| read_teacher(p, &train_items))
        .transpose()?;
    let pos = train_items.iter().filter(|i| i.label == 1).count();
    if !quiet {
        eprintln!(
            "split: train {} ({} effusion), validation {} ({} effusion); loss {:?}, class weights {:?}",
            train_items.len(),
            pos,
            split.valid.len(),
            split.valid.iter().filter(|i| i.label == 1).count(),
            opts.loss,
            weights
        );
    }

    let arch = opts.architecture();
    arch.validate()?;
    let device = base_device.clone().autodiff();
    let mut model = arch.init(&device);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(opts.weight_decay)
        .init();
    let mut state = RunState {
        epoch: 0,
        best_auc: f64::NEG_INFINITY,
        best_epoch: 0,
    };
    check_space(out, model.num_params())?;
    let metrics_path = out.join("metrics.csv");
    if resume && state_path.is_file() {
        let text = fs::read_to_string(&state_path).map_err(|e| io_err(&state_path, e))?;
        state = serde_json::from_str(&text).map_err(|e| io_err(&state_path, e))?;
        recover(out, state.epoch, &metrics_path)?;
        let (weights_path, optim_path) = checkpoint_paths(out, state.epoch);
        let record = ModuleRecord::load(&weights_path).map_err(|e| io_err(&weights_path, e))?;
        model = model
            .try_load_record(record)
            .map_err(|e| io_err(&weights_path, e))?;
        optim = optim
            .load(&optim_path)
            .map_err(|e| io_err(&optim_path, e))?;
        if !quiet {
            eprintln!(
                "resuming after epoch {} (best AUC {:.4} at epoch {})",
                state.epoch, state.best_auc, state.best_epoch
            );
        }
    }
    if !quiet {
        eprintln!("model: {:?}, {} parameters", arch, model.num_params());
    }

    let loader = LoaderConfig {
        batch_size: opts.batch_size,
        workers: opts.workers,
        prefetch: 2,
        size: opts.input_size,
    };
    let augmentation = AugmentConfig::with_strength(opts.augment_p, opts.augment_strength);
    let steps_per_epoch = train_items.len().div_ceil(opts.batch_size);
    let total_steps = steps_per_epoch * opts.epochs;
    if state.epoch == 0 {
        // A fresh start (perhaps after a run killed before its first epoch was committed).
        recover(out, 0, &metrics_path)?;
        fs::write(&metrics_path, "epoch,train_loss,valid_loss,valid_auc,auc_lo,auc_hi,accuracy,sensitivity,specificity,lr,seconds\n")
            .map_err(|e| io_err(&metrics_path, e))?;
    }
    let s = opts.input_size;
    let mut stopped_early = false;
    for epoch in state.epoch..opts.epochs {
        if let Some(patience) = opts.patience {
            if state.best_epoch > 0 && epoch >= state.best_epoch + patience {
                stopped_early = true;
                if !quiet {
                    eprintln!("early stop: no better validation AUC for {patience} epochs");
                }
                break;
            }
        }
        let started = Instant::now();
        let mut order = train_items.clone();
        Rng::new(opts.seed)
            .fork(1000 + epoch as u64)
            .shuffle(&mut order);
        let failures: Failures = Default::default();
        let seed = opts.seed.wrapping_mul(31).wrapping_add(epoch as u64);
        let batches = Loader::start(
            data.root.clone(),
            order,
            &loader,
            Some(augmentation.clone()),
            seed,
            failures.clone(),
        );
        let pb = bar(
            train_items.len(),
            format!("epoch {}/{}", epoch + 1, opts.epochs),
            quiet,
        );
        let (mut loss_sum, mut seen) = (0.0f64, 0usize);
        let mut lr = opts.lr;
        for (i, batch) in batches.enumerate() {
            let n = batch.len();
            lr = learning_rate(opts.lr, epoch * steps_per_epoch + i, total_steps);
            let x = Tensor::<4>::from_data(TensorData::new(batch.pixels, [n, 1, s, s]), &device);
            let logits = model.forward(x);
            let l = loss(logits.clone(), &batch.labels, opts.loss, weights, opts.cost);
            let l = match &teacher {
                Some(teacher) => {
                    let targets: Vec<f32> = batch
                        .files
                        .iter()
                        .flat_map(|f| teacher.get(f).copied().unwrap_or([0.0, 0.0]))
                        .collect();
                    let targets = Tensor::<2>::from_data(TensorData::new(targets, [n, 2]), &device);
                    let soft = distillation_loss(logits, targets, opts.temperature);
                    l.mul_scalar(1.0 - opts.distill_weight) + soft.mul_scalar(opts.distill_weight)
                }
                None => l,
            };
            let value: f32 = l.clone().into_scalar();
            if !value.is_finite() {
                return Err(format!(
                    "the loss became {value} at epoch {} step {i}; lower --lr",
                    epoch + 1
                ));
            }
            let grads = GradientsParams::from_grads(l.backward(), &model);
            model = optim.step(lr, model, grads);
            loss_sum += f64::from(value) * n as f64;
            seen += n;
            pb.inc(n as u64);
            pb.set_message(format!("loss {:.4}", loss_sum / seen as f64));
        }
        pb.finish_and_clear();
        let failed = failures.lock().map(|f| f.len()).unwrap_or(0);
        if failed > 0 && !quiet {
            eprintln!("  {failed} training image(s) could not be decoded and were skipped");
        }

        let eval = model.valid();
        let (scores, labels, _, valid_loss, _) = predict_all(
            &eval,
            &data.root,
            &split.valid,
            &loader,
            &base_device.clone().without_autodiff(),
            quiet,
        );
        let report = Report::new(&scores, &labels, 0.5);
        let result = EpochResult {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            valid_loss,
            report,
            lr,
            seconds: started.elapsed().as_secs_f64(),
        };
        let auc = result.report.auc.unwrap_or(f64::NAN);
        let (lo, hi) = result.report.auc_ci95.unwrap_or((f64::NAN, f64::NAN));
        let line = format!(
            "{},{:.5},{:.5},{:.5},{:.5},{:.5},{:.4},{:.4},{:.4},{:.6},{:.1}\n",
            result.epoch,
            result.train_loss,
            valid_loss,
            auc,
            lo,
            hi,
            result.report.accuracy,
            result.report.sensitivity,
            result.report.specificity,
            lr,
            result.seconds
        );
        fs::OpenOptions::new()
            .append(true)
            .open(&metrics_path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| io_err(&metrics_path, e))?;
        let improved = auc > state.best_auc;
        if !quiet {
            eprintln!(
                "epoch {:>3}/{}: train loss {:.4}, valid loss {:.4}, AUC {}, acc {:.3}, sens {:.3}, spec {:.3} (at 0.5), {:.0} s{}",
                result.epoch,
                opts.epochs,
                result.train_loss,
                valid_loss,
                result.report.auc_text(),
                result.report.accuracy,
                result.report.sensitivity,
                result.report.specificity,
                result.seconds,
                if improved { "  *best*" } else { "" }
            );
        }
        if improved {
            state.best_auc = auc;
            state.best_epoch = epoch + 1;
            let threshold =
                metrics::threshold_for_sensitivity(&scores, &labels, opts.target_sensitivity);
            let at_threshold = Report::new(&scores, &labels, threshold);
            let info = checkpoint_info(&opts, &arch, &result, &at_threshold, &split, &data);
            let bytes = cxr::weights::encode(eval.clone(), &info).map_err(|e| e.to_string())?;
            write_atomic(&out.join("best.cxrw"), &bytes)?;
            let roc = plots::roc_chart(&metrics::roc(&scores, &labels), at_threshold.auc);
            write_atomic(&out.join("roc.svg"), roc.as_bytes())?;
            let best = serde_json::json!({ "epoch": epoch + 1, "validation": at_threshold, "scores": scores, "labels": labels });
            write_atomic(
                &out.join("best.json"),
                &serde_json::to_vec_pretty(&best).map_err(|e| e.to_string())?,
            )?;
        }
        // Resume state: this epoch's weights and optimizer under new names, then the state file
        // that names them (the commit), then the previous epoch's files go.
        let previous = state.epoch;
        state.epoch = epoch + 1;
        let (weights_path, optim_path) = checkpoint_paths(out, state.epoch);
        let record = eval.into_record().into_bytes().map_err(|e| e.to_string())?;
        write_atomic(&weights_path, &record)?;
        let optim_bytes = optim.into_bytes().map_err(|e| e.to_string())?;
        write_atomic(&optim_path, &optim_bytes)?;
        write_atomic(
            &state_path,
            &serde_json::to_vec_pretty(&state).map_err(|e| e.to_string())?,
        )?;
        if previous > 0 {
            let (old_weights, old_optim) = checkpoint_paths(out, previous);
            let _ = fs::remove_file(old_weights);
            let _ = fs::remove_file(old_optim);
        }
        write_report(out, &opts, &state, stopped_early)?;
    }
    write_report(out, &opts, &state, stopped_early)?;
    Ok(format!(
        "best validation AUC {:.3} at epoch {}; checkpoint {}, report {}",
        state.best_auc,
        state.best_epoch,
        out.join("best.cxrw").display(),
        out.join("report.json").display()
    ))
}

/// Per-epoch rows of `metrics.csv`: (epoch, train loss, valid loss, valid AUC).
fn read_metrics(path: &Path) -> Vec<(f64, f64, f64, f64)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let v: Vec<f64> = l
                .split(',')
                .map(|x| x.parse().unwrap_or(f64::NAN))
                .collect();
            (v.len() >= 4).then(|| (v[0], v[1], v[2], v[3]))
        })
        .collect()
}

/// `report.json` and `curves.svg`: the whole run at a glance, rewritten after every epoch.
fn write_report(
    out: &Path,
    opts: &TrainOptions,
    state: &RunState,
    stopped_early: bool,
) -> Result<(), String> {
    let rows = read_metrics(&out.join("metrics.csv"));
    let best: serde_json::Value = fs::read(out.join("best.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|mut v| {
            if let Some(o) = v.as_object_mut() {
                o.remove("scores");
                o.remove("labels");
            }
            v
        })
        .unwrap_or_default();
    let report = serde_json::json!({
        "epochs_completed": state.epoch,
        "best_epoch": state.best_epoch,
        "best": best,
        "stopped_early": stopped_early,
        "per_epoch": rows.iter().map(|r| serde_json::json!({"epoch": r.0, "train_loss": r.1, "valid_loss": r.2, "valid_auc": r.3})).collect::<Vec<_>>(),
        "options": opts,
        "checkpoint": "best.cxrw",
        "pictures": ["roc.svg", "curves.svg"],
    });
    write_atomic(
        &out.join("report.json"),
        &serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?,
    )?;
    let last = rows.last().map(|r| r.0).unwrap_or(1.0).max(2.0);
    let max_loss = rows
        .iter()
        .flat_map(|r| [r.1, r.2])
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max);
    let curves = plots::line_chart(
        "Training curves",
        "epoch",
        "loss / AUC",
        (1.0, last),
        (0.0, max_loss.min(3.0)),
        &[
            plots::Series {
                name: "train loss",
                color: "#d92d20",
                points: rows.iter().map(|r| (r.0, r.1)).collect(),
            },
            plots::Series {
                name: "validation loss",
                color: "#f79009",
                points: rows.iter().map(|r| (r.0, r.2)).collect(),
            },
            plots::Series {
                name: "validation AUC",
                color: "#2463eb",
                points: rows.iter().map(|r| (r.0, r.3)).collect(),
            },
        ],
    );
    write_atomic(&out.join("curves.svg"), curves.as_bytes())
}

fn checkpoint_info(
    opts: &TrainOptions,
    arch: &ResNetConfig,
    result: &EpochResult,
    at: &Report,
    split: &Split,
    data: &Dataset,
) -> ModelInfo {
    let mut info = ModelInfo::new(
        format!(
            "ResNet-18 layout at width x{} (effusion vs no finding)",
            opts.width
        ),
        arch.clone(),
    );
    info.input_size = opts.input_size;
    info.threshold = at.threshold;
    let count = |items: &[Item], l: u8| items.iter().filter(|i| i.label == l).count();
    info.card = serde_json::json!({
        "epoch": result.epoch,
        "validation": {
            "images": at.images,
            "effusion": at.positives,
            "auc": at.auc,
            "auc_ci95": at.auc_ci95,
            "threshold": at.threshold,
            "threshold_rule": format!("highest threshold with validation sensitivity >= {}", opts.target_sensitivity),
            "accuracy": at.accuracy,
            "sensitivity": at.sensitivity,
            "specificity": at.specificity,
            "confusion": at.confusion,
            "files": split.valid.iter().map(|i| i.file.clone()).collect::<Vec<_>>(),
        },
        "training": {
            "images": split.train.len(),
            "effusion": count(&split.train, 1),
            "nofinding": count(&split.train, 0),
            "data_layout": data.layout,
            "options": opts,
        },
        "date": today(),
    });
    info
}

/// A run-folder name from the current time: YYYY-MM-DD-HHMMSS (UTC).
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t = secs % 86_400;
    format!("{}-{:02}{:02}{:02}", today(), t / 3600, t / 60 % 60, t % 60)
}

/// Today's date (UTC) as YYYY-MM-DD, without a date crate.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_weights_balance_the_classes() {
        let items: Vec<Item> = (0..110)
            .map(|i| Item {
                file: i.to_string(),
                label: u8::from(i < 10),
                patient: None,
            })
            .collect();
        let w = class_weights(LossKind::ClassWeighted, &items, None);
        // Total weight of each class is equal.
        assert!((w[1] * 10.0 - w[0] * 100.0).abs() < 1e-3);
        assert_eq!(class_weights(LossKind::Ce, &items, None), [1.0, 1.0]);
        assert_eq!(
            class_weights(LossKind::ClassWeighted, &items, Some([1.0, 2.0])),
            [1.0, 2.0]
        );
    }

    #[test]
    fn distillation_loss_agrees_with_hand_computation() {
        let device = Device::flex();
        let student = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0], [1, 2]), &device);
        let teacher = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 2.0], [1, 2]), &device);
        let t = 2.0f32;
        let (pt1, ps1) = (1.0 / (1.0 + (-1.0f32).exp()), 1.0 / (1.0 + (0.5f32).exp())); // p(class 1)
        let expected = -(((1.0 - pt1) * (1.0 - ps1).ln()) + pt1 * ps1.ln()) * t * t;
        let got: f32 = distillation_loss(student, teacher, t).into_scalar();
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
    }

    #[test]
    fn losses_agree_with_hand_computation() {
        let device = Device::flex();
        let logits = Tensor::<2>::from_data(
            TensorData::new(vec![2.0f32, 0.0, 0.0, 1.0], [2, 2]),
            &device,
        );
        let labels = [1u8, 1u8];
        let nll0 = -(0f32.exp() / (2f32.exp() + 1.0)).ln(); // wrong prediction
        let nll1 = -(1f32.exp() / (1.0 + 1f32.exp())).ln(); // right prediction
        let ce: f32 = loss(logits.clone(), &labels, LossKind::Ce, [1.0, 1.0], 5.0).into_scalar();
        assert!((ce - (nll0 + nll1) / 2.0).abs() < 1e-5);
        let cm: f32 = loss(
            logits.clone(),
            &labels,
            LossKind::CostMatrix,
            [1.0, 1.0],
            5.0,
        )
        .into_scalar();
        assert!((cm - (5.0 * nll0 + nll1) / 2.0).abs() < 1e-5);
        let cm3: f32 = loss(
            logits.clone(),
            &labels,
            LossKind::CostMatrix,
            [1.0, 1.0],
            3.0,
        )
        .into_scalar();
        assert!((cm3 - (3.0 * nll0 + nll1) / 2.0).abs() < 1e-5);
        let labels = [0u8, 1u8];
        let nll_a = -(2f32.exp() / (2f32.exp() + 1.0)).ln();
        let cw: f32 = loss(logits, &labels, LossKind::ClassWeighted, [1.0, 3.0], 5.0).into_scalar();
        assert!((cw - (nll_a + 3.0 * nll1) / 4.0).abs() < 1e-5);
    }

    #[test]
    fn free_space_rule_counts_two_epochs_of_checkpoints() {
        let full_width = space_needed(11_180_866);
        assert!(
            (290_000_000..330_000_000).contains(&full_width),
            "{full_width}"
        );
        let out = Path::new("/runs/x");
        assert!(
            space_problem(out, full_width - 1, full_width)
                .unwrap()
                .contains("MB free")
        );
        assert_eq!(space_problem(out, full_width, full_width), None);
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        assert!(learning_rate(1e-3, 0, 1000) < 1e-4);
        assert!((learning_rate(1e-3, 30, 1000) - 1e-3).abs() < 1e-5);
        assert!(learning_rate(1e-3, 500, 1000) < 6e-4);
        assert!((learning_rate(1e-3, 999, 1000) - 1e-5).abs() < 1e-6);
    }

    fn fixture_batch(size: usize) -> (Vec<f32>, Vec<u8>) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for (name, label) in [
            ("effusion10.png", 1),
            ("effusion101.png", 1),
            ("normal0.png", 0),
            ("normal1.png", 0),
        ] {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            pixels.extend(cxr::preprocess::preprocess(&bytes, size).unwrap().pixels);
            labels.push(label);
        }
        (pixels, labels)
    }

    #[test]
    fn a_fixed_batch_of_real_xrays_can_be_overfit_and_checkpoints_reload() {
        let size = 64;
        let (pixels, labels) = fixture_batch(size);
        let device = Device::flex().autodiff();
        let arch = ResNetConfig::resnet18().with_width(0.125);
        let mut model = arch.init(&device);
        let mut optim = AdamWConfig::new().init();
        let x =
            || Tensor::<4>::from_data(TensorData::new(pixels.clone(), [4, 1, size, size]), &device);
        let mut first = f32::NAN;
        let mut last = f32::NAN;
        for step in 0..40 {
            let l = loss(
                model.forward(x()),
                &labels,
                LossKind::ClassWeighted,
                [1.0, 1.0],
                5.0,
            );
            last = l.clone().into_scalar();
            assert!(last.is_finite(), "loss {last} at step {step}");
            if step == 0 {
                first = last;
            }
            let grads = GradientsParams::from_grads(l.backward(), &model);
            model = optim.step(3e-3, model, grads);
        }
        assert!(
            last < 0.1 && last < first / 4.0,
            "loss went from {first} to {last}"
        );

        // The resume checkpoint (f32 burn record) reloads to identical logits; the exported
        // weight file (f16) to the same logits within f16 precision.
        let eval = model.valid();
        let plain = Device::flex();
        let input =
            Tensor::<4>::from_data(TensorData::new(pixels.clone(), [4, 1, size, size]), &plain);
        let before = eval
            .forward(input.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let record =
            ModuleRecord::from_bytes(eval.clone().into_record().into_bytes().unwrap()).unwrap();
        let reloaded = arch.init(&plain).try_load_record(record).unwrap().valid();
        assert_eq!(
            reloaded
                .forward(input.clone())
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
            before
        );
        let mut info = ModelInfo::new("test", arch.clone());
        info.input_size = size;
        let bytes = cxr::weights::encode(eval, &info).unwrap();
        let (exported, _) = cxr::weights::decode(&bytes, &plain).unwrap();
        let after = exported
            .forward(input)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (a, b) in before.iter().zip(&after) {
            assert!((a - b).abs() < 0.05 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn date_is_formatted() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
    }
}
