//! Transfer from ImageNet, first stage: the pretrained ResNet-50 frozen as a feature extractor
//! (a "linear probe"), a class-weighted logistic-regression head trained on its pooled features
//! of a run's training split and scored on that run's validation split, so the AUC compares
//! directly with the run's model trained from scratch.
//!
//! Second stage ([`finetune`]): the last stage (res5) unfrozen with a lower learning rate than
//! the head, the first three stages kept frozen.
//!
//! X-rays are one-channel: the first convolution's kernel is summed over BGR (`imagenet::load`
//! with one input channel) and the [0, 1] preprocessed image is mapped to Keras' "caffe" range,
//! `255 x - mean(BGR means)`.

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};

use crate::data::Item;
use crate::imagenet::{self, BGR_MEAN};
use crate::loader::{Failures, Loader, LoaderConfig};
use crate::metrics::Report;
use crate::resnet50::{ResNet50, Stage50};
use crate::rng::Rng;
use crate::train::{LossKind, class_weights, loss};

/// Head training, fixed before looking at any validation figure: full-batch AdamW on the
/// standardised features.
const STEPS: usize = 300;
const LR: f64 = 1e-2;
const WEIGHT_DECAY: f32 = 1e-2;

/// What the frozen network gives for each image of `items`: the pooled 2048-d features
/// (`Pooled`) or the output of the first three stages (`Res4`), image after image, with the
/// labels and the per-image shape.
#[derive(Clone, Copy, PartialEq)]
enum Output {
    Pooled,
    Res4,
}

type Outputs = (Vec<f32>, Vec<u8>, Vec<usize>, Vec<String>);

fn frozen_outputs(model: &ResNet50, root: &Path, items: &[Item], size: usize, what: Output, device: &Device) -> Result<Outputs, String> {
    let cfg = LoaderConfig { batch_size: 8, workers: 2, prefetch: 2, size };
    let failures: Failures = Default::default();
    let mean = BGR_MEAN.iter().sum::<f32>() / 3.0;
    let (mut out, mut labels, mut shape, mut files) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let pb = indicatif::ProgressBar::new(items.len() as u64);
    for batch in Loader::start(root.to_path_buf(), items.to_vec(), &cfg, None, 0, failures.clone()) {
        let n = batch.len();
        let x = Tensor::<4>::from_data(TensorData::new(batch.pixels, [n, 1, size, size]), device) * 255.0 - mean;
        let f = match what {
            Output::Pooled => {
                let f = model.features(x);
                let [b, c, _, _] = f.dims();
                f.mean_dim(3).mean_dim(2).reshape([b, c, 1, 1])
            }
            Output::Res4 => model.features_until(x, 3),
        };
        shape = f.dims()[1..].to_vec();
        out.extend(f.into_data().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?);
        labels.extend(batch.labels);
        files.extend(batch.files);
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    let failed = failures.lock().map(|f| f.len()).unwrap_or(0);
    if failed > 0 {
        return Err(format!("{failed} image(s) could not be read"));
    }
    Ok((out, labels, shape, files))
}

/// Linear probe on `run`'s split; prints and returns the validation report as JSON.
pub fn probe(package: &Path, run: &Path) -> Result<serde_json::Value, String> {
    let (opts, split) = crate::export::read_run(run)?;
    let device = Device::flex();
    let model = imagenet::load(package, 1, 2, &device)?;
    let started = Instant::now();
    let (train_x, train_y, _, _) = frozen_outputs(&model, &opts.data, &split.train, opts.input_size, Output::Pooled, &device)?;
    let (valid_x, valid_y, _, _) = frozen_outputs(&model, &opts.data, &split.valid, opts.input_size, Output::Pooled, &device)?;
    let extract_s = started.elapsed().as_secs_f64();
    let d = train_x.len() / train_y.len().max(1);

    // Standardise with the training features' statistics.
    let (n, nv) = (train_y.len(), valid_y.len());
    let mut mean = vec![0f32; d];
    let mut std = vec![0f32; d];
    for row in train_x.chunks_exact(d) {
        row.iter().zip(&mut mean).for_each(|(v, m)| *m += v / n as f32);
    }
    for row in train_x.chunks_exact(d) {
        row.iter().zip(&mean).zip(&mut std).for_each(|((v, m), s)| *s += (v - m).powi(2) / n as f32);
    }
    std.iter_mut().for_each(|s| *s = s.sqrt().max(1e-6));
    let standardise = |x: &[f32]| -> Vec<f32> { x.chunks_exact(d).flat_map(|r| r.iter().zip(&mean).zip(&std).map(|((v, m), s)| (v - m) / s)).collect() };

    let ad = device.clone().autodiff();
    let x = Tensor::<2>::from_data(TensorData::new(standardise(&train_x), [n, d]), &ad);
    let weights = class_weights(LossKind::ClassWeighted, &split.train, None);
    let mut head = LinearConfig::new(d, 2).init(&ad);
    let mut optim = AdamWConfig::new().with_weight_decay(WEIGHT_DECAY).init();
    for _ in 0..STEPS {
        let l = loss(head.forward(x.clone()), &train_y, LossKind::ClassWeighted, weights, 1.0);
        let grads = GradientsParams::from_grads(l.backward(), &head);
        head = optim.step(LR, head, grads);
    }
    let head = head.valid();
    let xv = Tensor::<2>::from_data(TensorData::new(standardise(&valid_x), [nv, d]), &device);
    let logits = head.forward(xv).into_data().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
    let scores: Vec<f32> = logits.chunks_exact(2).map(|l| cxr::classifier::effusion_probability([l[0], l[1]])).collect();
    let report = Report::new(&scores, &valid_y, 0.5);
    Ok(serde_json::json!({
        "run": run.display().to_string(), "train_images": n, "valid_images": nv,
        "auc": report.auc, "auc_ci95": report.auc_ci95, "head_params": head.num_params(),
        "feature_seconds": extract_s, "steps": STEPS, "lr": LR, "weight_decay": WEIGHT_DECAY,
    }))
}

/// Fine-tuning schedule, fixed before looking at any validation figure.
pub struct FinetuneOptions {
    /// Epochs with only the head trained (res5 frozen, its BatchNorm in inference mode).
    pub head_epochs: usize,
    /// Then epochs with res5 unfrozen.
    pub tune_epochs: usize,
    pub batch_size: usize,
    pub lr_head: f64,
    /// res5's learning rate (lower: its ImageNet filters are a starting point worth keeping).
    pub lr_backbone: f64,
    pub weight_decay: f32,
    pub seed: u64,
    /// Where to write the best epoch's logits of every training image (a distillation teacher).
    pub teacher_out: Option<std::path::PathBuf>,
}

impl Default for FinetuneOptions {
    fn default() -> Self {
        Self { head_epochs: 3, tune_epochs: 9, batch_size: 16, lr_head: 1e-3, lr_backbone: 1e-4, weight_decay: 1e-4, seed: 42, teacher_out: None }
    }
}

/// The trained part: the last stage and the head.
#[derive(Module, Debug)]
struct Tail {
    stage: Stage50,
    head: Linear,
}

impl Tail {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let f = self.stage.forward(x);
        let [b, c, _, _] = f.dims();
        self.head.forward(f.mean_dim(3).mean_dim(2).reshape([b, c]))
    }
}

fn logits(tail: &Tail, x: &[f32], shape: [usize; 3], device: &Device) -> Result<Vec<[f32; 2]>, String> {
    let per = shape.iter().product::<usize>();
    let mut out = Vec::new();
    for chunk in x.chunks(per * 32) {
        let n = chunk.len() / per;
        let t = Tensor::<4>::from_data(TensorData::new(chunk.to_vec(), [n, shape[0], shape[1], shape[2]]), device);
        let values = tail.forward(t).into_data().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
        out.extend(values.chunks_exact(2).map(|l| [l[0], l[1]]));
    }
    Ok(out)
}

/// Fine-tune res5 and a new head on `run`'s training split (no augmentation: the res4 outputs
/// are computed once); the validation AUC of every epoch, and the best, as JSON.
pub fn finetune(package: &Path, run: &Path, o: &FinetuneOptions) -> Result<serde_json::Value, String> {
    let (opts, split) = crate::export::read_run(run)?;
    let device = Device::flex();
    let started = Instant::now();
    let frozen = imagenet::load(package, 1, 2, &device)?;
    let (train_x, train_y, shape, train_files) = frozen_outputs(&frozen, &opts.data, &split.train, opts.input_size, Output::Res4, &device)?;
    let (valid_x, valid_y, _, _) = frozen_outputs(&frozen, &opts.data, &split.valid, opts.input_size, Output::Res4, &device)?;
    let shape = [shape[0], shape[1], shape[2]];
    drop(frozen);
    let extract_s = started.elapsed().as_secs_f64();
    let ad = device.clone().autodiff();
    let mut full = imagenet::load(package, 1, 2, &ad)?;
    let stage = full.stages.pop().ok_or("no stages")?;
    let mut tail = Tail { stage: stage.freeze(), head: full.head };
    let per: usize = shape.iter().product();
    let n = train_y.len();
    let weights = class_weights(LossKind::ClassWeighted, &split.train, None);
    let mut optim_head = AdamWConfig::new().with_weight_decay(o.weight_decay).init();
    let mut optim_stage = AdamWConfig::new().with_weight_decay(o.weight_decay).init();
    let mut epochs = Vec::new();
    let (mut best_auc, mut best) = (f64::NEG_INFINITY, serde_json::Value::Null);
    for epoch in 0..o.head_epochs + o.tune_epochs {
        let tuning = epoch >= o.head_epochs;
        if epoch == o.head_epochs {
            tail.stage = tail.stage.unfreeze();
        }
        let t0 = Instant::now();
        let mut order: Vec<usize> = (0..n).collect();
        Rng::new(o.seed).fork(epoch as u64).shuffle(&mut order);
        let mut loss_sum = 0.0f64;
        for idx in order.chunks(o.batch_size) {
            let b = idx.len();
            let mut xb = Vec::with_capacity(b * per);
            idx.iter().for_each(|&i| xb.extend_from_slice(&train_x[i * per..(i + 1) * per]));
            let yb: Vec<u8> = idx.iter().map(|&i| train_y[i]).collect();
            let x = Tensor::<4>::from_data(TensorData::new(xb, [b, shape[0], shape[1], shape[2]]), &ad);
            let l = loss(tail.forward(x), &yb, LossKind::ClassWeighted, weights, 1.0);
            loss_sum += f64::from(l.clone().into_scalar::<f32>()) * b as f64;
            let mut grads = l.backward();
            let head_grads = GradientsParams::from_module(&mut grads, &tail.head);
            tail = optim_head.step(o.lr_head, tail, head_grads);
            if tuning {
                let stage_grads = GradientsParams::from_module(&mut grads, &tail.stage);
                tail = optim_stage.step(o.lr_backbone, tail, stage_grads);
            }
        }
        let eval = tail.valid();
        let s: Vec<f32> = logits(&eval, &valid_x, shape, &device)?.into_iter().map(cxr::classifier::effusion_probability).collect();
        let report = Report::new(&s, &valid_y, 0.5);
        let auc = report.auc.unwrap_or(f64::NAN);
        let row = serde_json::json!({"epoch": epoch + 1, "res5_trained": tuning, "train_loss": loss_sum / n as f64,
            "auc": report.auc, "auc_ci95": report.auc_ci95, "seconds": t0.elapsed().as_secs_f64()});
        eprintln!("{row}");
        if auc > best_auc {
            best_auc = auc;
            best = row.clone();
            if let Some(path) = &o.teacher_out {
                let teacher: crate::train::TeacherLogits =
                    train_files.iter().cloned().zip(logits(&eval, &train_x, shape, &device)?).collect();
                let bytes = serde_json::to_vec(&teacher).map_err(|e| e.to_string())?;
                crate::train::write_atomic(path, &bytes)?;
            }
        }
        epochs.push(row);
    }
    Ok(serde_json::json!({
        "run": run.display().to_string(), "best": best, "epochs": epochs, "res4_seconds": extract_s,
        "schedule": {"head_epochs": o.head_epochs, "tune_epochs": o.tune_epochs, "batch_size": o.batch_size,
            "lr_head": o.lr_head, "lr_backbone": o.lr_backbone, "weight_decay": o.weight_decay},
    }))
}

/// `trainer train --pretrained imagenet-resnet50`: the run folder gets the options and the split
/// as `train` writes them (the same split for the same data and seed), then [`finetune`] runs on
/// it: the head alone for the first `min(3, epochs - 1)` epochs, then res5 at a tenth of `lr`.
/// The report is written to `finetune.json`.
pub fn train_pretrained(opts: &crate::train::TrainOptions, out: &Path, package: &Path) -> Result<serde_json::Value, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let data = crate::data::discover(&opts.data).map_err(|e| e.to_string())?;
    let options = serde_json::to_vec_pretty(opts).map_err(|e| e.to_string())?;
    crate::train::write_atomic(&out.join("options.json"), &options)?;
    crate::train::prepare_split(opts, out, &data)?;
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
    };
    let report = finetune(package, out, &schedule)?;
    let bytes = serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?;
    crate::train::write_atomic(&out.join("finetune.json"), &bytes)?;
    Ok(report)
}
