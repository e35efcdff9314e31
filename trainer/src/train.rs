//! The training loop: weighted cross-entropy, AdamW with a cosine learning-rate schedule,
//! validation AUC over the whole validation set every epoch, the best checkpoint kept, crash-safe
//! checkpoints and `--resume`.
//!
//! A run folder holds: `options.json`, `split.json`, `metrics.csv`, `best.cxrw` (the checkpoint
//! with the best validation AUC, with its metrics in the model card), and the resume state
//! `last.bpk` (f32 weights), `last.optim`, `state.json`. Every file is written to a temporary name
//! and renamed, so a crash at any moment leaves the previous checkpoint intact.

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
use cxr::classifier::effusion_probability;
use cxr::{ModelInfo, ResNet, ResNetConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::augment::AugmentConfig;
use crate::data::{self, Dataset, Item, Split};
use crate::loader::{Failures, Loader, LoaderConfig};
use crate::metrics::Report;
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
    pub augment_p: f32,
    pub augment_strength: f32,
    pub workers: usize,
    /// Use at most this many training images (quick runs and ablations).
    pub limit: Option<usize>,
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

/// Write a file atomically: temporary name, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut f = fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// Check before training that the run folder can be written, so a typo or a full disk is
/// reported now rather than after the first epoch.
pub fn check_writable(out: &Path) -> Result<(), String> {
    fs::create_dir_all(out).map_err(|e| format!("cannot create run folder {}: {e}", out.display()))?;
    let probe = out.join(".write-test");
    let result = fs::write(&probe, vec![0u8; 1 << 20]);
    let _ = fs::remove_file(&probe);
    result.map_err(|e| format!("cannot write to run folder {}: {e}", out.display()))
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
pub fn class_weights(kind: LossKind, train: &[Item]) -> [f32; 2] {
    match kind {
        LossKind::ClassWeighted => {
            let n = train.len() as f32;
            let pos = train.iter().filter(|i| i.label == 1).count().max(1) as f32;
            let neg = (n - pos).max(1.0);
            [n / (2.0 * neg), n / (2.0 * pos)]
        }
        _ => [1.0, 1.0],
    }
}

/// The training loss for a batch of logits `[b, 2]`.
pub fn loss(logits: Tensor<2>, labels: &[u8], kind: LossKind, weights: [f32; 2]) -> Tensor<1> {
    let device = logits.device();
    let b = labels.len();
    let onehot: Vec<f32> = labels.iter().flat_map(|&l| if l == 1 { [0.0, 1.0] } else { [1.0, 0.0] }).collect();
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [b, 2]), &device);
    let nll = (log_softmax(logits.clone(), 1) * onehot).sum_dim(1).neg().reshape([b]);
    match kind {
        LossKind::Ce => nll.mean(),
        LossKind::ClassWeighted => {
            let w: Vec<f32> = labels.iter().map(|&l| weights[usize::from(l)]).collect();
            let total: f32 = w.iter().sum();
            let w = Tensor::<1>::from_data(TensorData::new(w, [b]), &device);
            (nll * w).sum().div_scalar(total)
        }
        LossKind::CostMatrix => {
            // W = [[1, 5], [5, 1]] indexed by (predicted, true): 5 for a wrong prediction.
            let y = Tensor::<1>::from_data(
                TensorData::new(labels.iter().map(|&l| f32::from(l)).collect::<Vec<_>>(), [b]),
                &device,
            );
            let logits = logits.detach();
            let predicted = logits
                .clone()
                .slice(s![.., 1])
                .greater(logits.slice(s![.., 0]))
                .float()
                .reshape([b]);
            let mask = (predicted - y).abs().mul_scalar(4.0).add_scalar(1.0);
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
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}")
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
    let batches = Loader::start(root.to_path_buf(), items.to_vec(), loader, None, 0, failures.clone());
    let pb = bar(items.len(), "validating".into(), quiet);
    let (mut scores, mut labels, mut files) = (Vec::new(), Vec::new(), Vec::new());
    let mut loss_sum = 0.0;
    let s = loader.size;
    for batch in batches {
        let n = batch.len();
        let x = Tensor::<4>::from_data(TensorData::new(batch.pixels, [n, 1, s, s]), device);
        let logits = model.forward(x).into_data().try_to_vec::<f32>().unwrap_or_default();
        for (pair, &label) in logits.chunks_exact(2).zip(&batch.labels) {
            let p = effusion_probability([pair[0], pair[1]]);
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

/// Train a model; returns the per-epoch results.
pub fn train(
    opts: &TrainOptions,
    out: &Path,
    base_device: &Device,
    resume: bool,
    quiet: bool,
) -> Result<Vec<EpochResult>, String> {
    check_writable(out)?;
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
    let state_path = out.join("state.json");
    let opts_path = out.join("options.json");
    if !resume && state_path.exists() {
        return Err(format!(
            "{} already holds a run; use --resume to continue it or choose another --out",
            out.display()
        ));
    }
    let opts = if resume && opts_path.is_file() {
        let text = fs::read_to_string(&opts_path).map_err(|e| io_err(&opts_path, e))?;
        let mut saved: TrainOptions = serde_json::from_str(&text).map_err(|e| io_err(&opts_path, e))?;
        saved.data = opts.data.clone();
        saved.epochs = opts.epochs.max(saved.epochs);
        saved
    } else {
        opts.clone()
    };
    write_atomic(&opts_path, &serde_json::to_vec_pretty(&opts).map_err(|e| e.to_string())?)?;
    let split = prepare_split(&opts, out, &data)?;
    let mut train_items = split.train.clone();
    if let Some(limit) = opts.limit {
        Rng::new(opts.seed).fork(99).shuffle(&mut train_items);
        train_items.truncate(limit);
    }
    let weights = class_weights(opts.loss, &train_items);
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
    let mut optim = AdamWConfig::new().with_weight_decay(opts.weight_decay).init();
    let mut state = RunState { epoch: 0, best_auc: f64::NEG_INFINITY, best_epoch: 0 };
    if resume && state_path.is_file() {
        let text = fs::read_to_string(&state_path).map_err(|e| io_err(&state_path, e))?;
        state = serde_json::from_str(&text).map_err(|e| io_err(&state_path, e))?;
        let record = ModuleRecord::load(out.join("last.bpk")).map_err(|e| format!("last.bpk: {e}"))?;
        model = model.try_load_record(record).map_err(|e| format!("last.bpk: {e}"))?;
        optim = optim.load(out.join("last.optim")).map_err(|e| format!("last.optim: {e}"))?;
        if !quiet {
            eprintln!("resuming after epoch {} (best AUC {:.4} at epoch {})", state.epoch, state.best_auc, state.best_epoch);
        }
    }
    if !quiet {
        eprintln!("model: {:?}, {} parameters", arch, model.num_params());
    }

    let loader = LoaderConfig { batch_size: opts.batch_size, workers: opts.workers, prefetch: 2, size: opts.input_size };
    let augmentation = AugmentConfig::with_strength(opts.augment_p, opts.augment_strength);
    let steps_per_epoch = train_items.len().div_ceil(opts.batch_size);
    let total_steps = steps_per_epoch * opts.epochs;
    let metrics_path = out.join("metrics.csv");
    if state.epoch == 0 {
        fs::write(&metrics_path, "epoch,train_loss,valid_loss,valid_auc,auc_lo,auc_hi,accuracy,sensitivity,specificity,lr,seconds\n")
            .map_err(|e| io_err(&metrics_path, e))?;
    }
    let mut results = Vec::new();
    let s = opts.input_size;
    for epoch in state.epoch..opts.epochs {
        let started = Instant::now();
        let mut order = train_items.clone();
        Rng::new(opts.seed).fork(1000 + epoch as u64).shuffle(&mut order);
        let failures: Failures = Default::default();
        let seed = opts.seed.wrapping_mul(31).wrapping_add(epoch as u64);
        let batches = Loader::start(data.root.clone(), order, &loader, Some(augmentation.clone()), seed, failures);
        let pb = bar(train_items.len(), format!("epoch {}/{}", epoch + 1, opts.epochs), quiet);
        let (mut loss_sum, mut seen) = (0.0f64, 0usize);
        let mut lr = opts.lr;
        for (i, batch) in batches.enumerate() {
            let n = batch.len();
            lr = learning_rate(opts.lr, epoch * steps_per_epoch + i, total_steps);
            let x = Tensor::<4>::from_data(TensorData::new(batch.pixels, [n, 1, s, s]), &device);
            let l = loss(model.forward(x), &batch.labels, opts.loss, weights);
            let value: f32 = l.clone().into_scalar();
            if !value.is_finite() {
                return Err(format!("the loss became {value} at epoch {} step {i}; lower --lr", epoch + 1));
            }
            let grads = GradientsParams::from_grads(l.backward(), &model);
            model = optim.step(lr, model, grads);
            loss_sum += f64::from(value) * n as f64;
            seen += n;
            pb.inc(n as u64);
            pb.set_message(format!("loss {:.4}", loss_sum / seen as f64));
        }
        pb.finish_and_clear();

        let eval = model.valid();
        let (scores, labels, _, valid_loss, _) =
            predict_all(&eval, &data.root, &split.valid, &loader, &base_device.clone().without_autodiff(), quiet);
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
            result.epoch, result.train_loss, valid_loss, auc, lo, hi, result.report.accuracy,
            result.report.sensitivity, result.report.specificity, lr, result.seconds
        );
        fs::OpenOptions::new()
            .append(true)
            .open(&metrics_path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| io_err(&metrics_path, e))?;
        let improved = auc > state.best_auc;
        if !quiet {
            eprintln!(
                "epoch {:>3}/{}: train loss {:.4}, valid loss {:.4}, AUC {}, acc {:.3}, sens {:.3}, spec {:.3}, {:.0} s{}",
                result.epoch, opts.epochs, result.train_loss, valid_loss, result.report.auc_text(),
                result.report.accuracy, result.report.sensitivity, result.report.specificity, result.seconds,
                if improved { "  *best*" } else { "" }
            );
        }
        if improved {
            state.best_auc = auc;
            state.best_epoch = epoch + 1;
            let info = checkpoint_info(&opts, &arch, &result, &split, &data);
            let bytes = cxr::weights::encode(eval.clone(), &info).map_err(|e| e.to_string())?;
            write_atomic(&out.join("best.cxrw"), &bytes)?;
        }
        // Resume state: weights and optimizer first, the state file that points at them last.
        state.epoch = epoch + 1;
        let record = eval.into_record().into_bytes().map_err(|e| e.to_string())?;
        write_atomic(&out.join("last.bpk"), &record)?;
        let optim_bytes = optim.into_bytes().map_err(|e| e.to_string())?;
        write_atomic(&out.join("last.optim"), &optim_bytes)?;
        write_atomic(&state_path, &serde_json::to_vec_pretty(&state).map_err(|e| e.to_string())?)?;
        results.push(result);
    }
    Ok(results)
}

fn checkpoint_info(opts: &TrainOptions, arch: &ResNetConfig, result: &EpochResult, split: &Split, data: &Dataset) -> ModelInfo {
    let mut info = ModelInfo::new(format!("ResNet (width x{}) effusion classifier", opts.width), arch.clone());
    info.input_size = opts.input_size;
    info.threshold = 0.5;
    let count = |items: &[Item], l: u8| items.iter().filter(|i| i.label == l).count();
    info.card = serde_json::json!({
        "epoch": result.epoch,
        "validation": {
            "images": result.report.images,
            "effusion": result.report.positives,
            "auc": result.report.auc,
            "auc_ci95": result.report.auc_ci95,
            "threshold": 0.5,
            "accuracy": result.report.accuracy,
            "sensitivity": result.report.sensitivity,
            "specificity": result.report.specificity,
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
            .map(|i| Item { file: i.to_string(), label: u8::from(i < 10), patient: None })
            .collect();
        let w = class_weights(LossKind::ClassWeighted, &items);
        // Total weight of each class is equal.
        assert!((w[1] * 10.0 - w[0] * 100.0).abs() < 1e-3);
        assert_eq!(class_weights(LossKind::Ce, &items), [1.0, 1.0]);
    }

    #[test]
    fn losses_agree_with_hand_computation() {
        let device = Device::flex();
        let logits = Tensor::<2>::from_data(TensorData::new(vec![2.0f32, 0.0, 0.0, 1.0], [2, 2]), &device);
        let labels = [1u8, 1u8];
        let nll0 = -(0f32.exp() / (2f32.exp() + 1.0)).ln(); // wrong prediction
        let nll1 = -(1f32.exp() / (1.0 + 1f32.exp())).ln(); // right prediction
        let ce: f32 = loss(logits.clone(), &labels, LossKind::Ce, [1.0, 1.0]).into_scalar();
        assert!((ce - (nll0 + nll1) / 2.0).abs() < 1e-5);
        let cm: f32 = loss(logits.clone(), &labels, LossKind::CostMatrix, [1.0, 1.0]).into_scalar();
        assert!((cm - (5.0 * nll0 + nll1) / 2.0).abs() < 1e-5);
        let labels = [0u8, 1u8];
        let nll_a = -(2f32.exp() / (2f32.exp() + 1.0)).ln();
        let cw: f32 = loss(logits, &labels, LossKind::ClassWeighted, [1.0, 3.0]).into_scalar();
        assert!((cw - (nll_a + 3.0 * nll1) / 4.0).abs() < 1e-5);
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        assert!(learning_rate(1e-3, 0, 1000) < 1e-4);
        assert!((learning_rate(1e-3, 30, 1000) - 1e-3).abs() < 1e-5);
        assert!(learning_rate(1e-3, 500, 1000) < 6e-4);
        assert!((learning_rate(1e-3, 999, 1000) - 1e-5).abs() < 1e-6);
    }

    #[test]
    fn date_is_formatted() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
    }
}
