//! Transfer from ImageNet, first stage: the pretrained ResNet-50 frozen as a feature extractor
//! (a "linear probe"), a class-weighted logistic-regression head trained on its pooled features
//! of a run's training split and scored on that run's validation split, so the AUC compares
//! directly with the run's model trained from scratch.
//!
//! Second stage ([`finetune`]): the last stage (res5) unfrozen with a lower learning rate than
//! the head, the first three stages kept frozen. Their outputs are computed once, or, with
//! augmentation, again on every epoch's augmented images. With folds, the fine-tuning is
//! cross-fitted so that a distillation teacher's logits for each training image come from a
//! network that did not train on it.
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
use cxr::model::global_average_pool;

use crate::augment::AugmentConfig;
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

/// A loader batch of preprocessed `[0, 1]` one-channel images in Keras' "caffe" range.
fn caffe_batch(pixels: Vec<f32>, n: usize, size: usize, device: &Device) -> Tensor<4> {
    let mean = BGR_MEAN.iter().sum::<f32>() / 3.0;
    Tensor::<4>::from_data(TensorData::new(pixels, [n, 1, size, size]), device) * 255.0 - mean
}

fn frozen_outputs(
    model: &ResNet50,
    root: &Path,
    items: &[Item],
    size: usize,
    what: Output,
    device: &Device,
) -> Result<Outputs, String> {
    let cfg = LoaderConfig {
        batch_size: 8,
        workers: 2,
        prefetch: 2,
        size,
    };
    let failures: Failures = Default::default();
    let (mut out, mut labels, mut shape, mut files) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let pb = indicatif::ProgressBar::new(items.len() as u64);
    for batch in Loader::start(
        root.to_path_buf(),
        items.to_vec(),
        &cfg,
        None,
        0,
        failures.clone(),
    ) {
        let n = batch.len();
        let x = caffe_batch(batch.pixels, n, size, device);
        let f = match what {
            Output::Pooled => {
                let pooled = global_average_pool(model.features(x));
                let [b, c] = pooled.dims();
                pooled.reshape([b, c, 1, 1])
            }
            Output::Res4 => model.features_until(x, 3),
        };
        shape = f.dims()[1..].to_vec();
        out.extend(
            f.into_data()
                .try_to_vec::<f32>()
                .map_err(|e| format!("{e:?}"))?,
        );
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
    let (train_x, train_y, _, _) = frozen_outputs(
        &model,
        &opts.data,
        &split.train,
        opts.input_size,
        Output::Pooled,
        &device,
    )?;
    let (valid_x, valid_y, _, _) = frozen_outputs(
        &model,
        &opts.data,
        &split.valid,
        opts.input_size,
        Output::Pooled,
        &device,
    )?;
    let extract_s = started.elapsed().as_secs_f64();
    let d = train_x.len() / train_y.len().max(1);

    // Standardise with the training features' statistics.
    let (n, nv) = (train_y.len(), valid_y.len());
    let mut mean = vec![0f32; d];
    let mut std = vec![0f32; d];
    for row in train_x.chunks_exact(d) {
        row.iter()
            .zip(&mut mean)
            .for_each(|(v, m)| *m += v / n as f32);
    }
    for row in train_x.chunks_exact(d) {
        row.iter()
            .zip(&mean)
            .zip(&mut std)
            .for_each(|((v, m), s)| *s += (v - m).powi(2) / n as f32);
    }
    std.iter_mut().for_each(|s| *s = s.sqrt().max(1e-6));
    let standardise = |x: &[f32]| -> Vec<f32> {
        x.chunks_exact(d)
            .flat_map(|r| r.iter().zip(&mean).zip(&std).map(|((v, m), s)| (v - m) / s))
            .collect()
    };

    let ad = device.clone().autodiff();
    let x = Tensor::<2>::from_data(TensorData::new(standardise(&train_x), [n, d]), &ad);
    let weights = class_weights(LossKind::ClassWeighted, &split.train, None);
    let mut head = LinearConfig::new(d, 2).init(&ad);
    let mut optim = AdamWConfig::new().with_weight_decay(WEIGHT_DECAY).init();
    for _ in 0..STEPS {
        let l = loss(
            head.forward(x.clone()),
            &train_y,
            LossKind::ClassWeighted,
            weights,
            1.0,
        );
        let grads = GradientsParams::from_grads(l.backward(), &head);
        head = optim.step(LR, head, grads);
    }
    let head = head.valid();
    let xv = Tensor::<2>::from_data(TensorData::new(standardise(&valid_x), [nv, d]), &device);
    let logits = head
        .forward(xv)
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?;
    let scores: Vec<f32> = logits
        .chunks_exact(2)
        .map(|l| cxr::classifier::effusion_probability([l[0], l[1]]))
        .collect();
    let report = Report::new(&scores, &valid_y, 0.5);
    Ok(serde_json::json!({
        "run": run.display().to_string(), "train_images": n, "valid_images": nv,
        "auc": report.auc, "auc_ci95": report.auc_ci95, "head_params": head.num_params(),
        "feature_seconds": extract_s, "steps": STEPS, "lr": LR, "weight_decay": WEIGHT_DECAY,
    }))
}

/// Fine-tuning schedule, fixed before looking at any validation figure.
#[derive(Clone)]
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
    /// 1: one fine-tuning on the whole training split; k > 1: cross-fitting (see [`finetune`]).
    pub folds: usize,
    /// Augmentation of the training images (probability, strength as `train`'s); with a
    /// probability above 0 the frozen stages run again on every epoch's augmented images
    /// instead of once.
    pub augment_p: f32,
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
struct Tail {
    stage: Stage50,
    head: Linear,
}

impl Tail {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head
            .forward(global_average_pool(self.stage.forward(x)))
    }
}

/// res4 outputs of a set of images, one after the other, with their labels and file names.
struct Cached {
    x: Vec<f32>,
    y: Vec<u8>,
    files: Vec<String>,
    shape: [usize; 3],
}

impl Cached {
    fn compute(
        frozen: &ResNet50,
        root: &Path,
        items: &[Item],
        size: usize,
        device: &Device,
    ) -> Result<Self, String> {
        let (x, y, shape, files) = frozen_outputs(frozen, root, items, size, Output::Res4, device)?;
        let shape = match shape[..] {
            [c, h, w] => [c, h, w],
            _ => return Err(format!("unexpected res4 output shape {shape:?}")),
        };
        Ok(Self { x, y, files, shape })
    }

    fn per(&self) -> usize {
        self.shape.iter().product()
    }

    /// The images `idx` as one batch tensor.
    fn batch(&self, idx: &[usize], device: &Device) -> Tensor<4> {
        let per = self.per();
        let mut xb = Vec::with_capacity(idx.len() * per);
        idx.iter()
            .for_each(|&i| xb.extend_from_slice(&self.x[i * per..(i + 1) * per]));
        let [c, h, w] = self.shape;
        Tensor::<4>::from_data(TensorData::new(xb, [idx.len(), c, h, w]), device)
    }
}

fn logits(
    tail: &Tail,
    cached: &Cached,
    idx: &[usize],
    device: &Device,
) -> Result<Vec<[f32; 2]>, String> {
    let mut out = Vec::with_capacity(idx.len());
    for chunk in idx.chunks(32) {
        let values = tail
            .forward(cached.batch(chunk, device))
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?;
        out.extend(values.chunks_exact(2).map(|l| [l[0], l[1]]));
    }
    Ok(out)
}

/// What recomputes the res4 outputs of augmented training images each epoch: the frozen
/// stages, the data folder and the training items in the order of the cached ones.
struct Augmented<'a> {
    frozen: &'a ResNet50,
    root: &'a Path,
    items: &'a [Item],
    size: usize,
    config: AugmentConfig,
}

/// One fine-tuning run of a fresh tail on the cached training images `train_idx`, scored on
/// the whole validation set every epoch. `on_best` sees the tail (inference mode) each time the
/// validation AUC improves. Returns the best epoch's row and every epoch's row.
fn tune(
    package: &Path,
    train: &Cached,
    train_idx: &[usize],
    valid: &Cached,
    augmented: Option<&Augmented>,
    o: &FinetuneOptions,
    device: &Device,
    mut on_best: impl FnMut(&Tail) -> Result<(), String>,
) -> Result<(serde_json::Value, Vec<serde_json::Value>), String> {
    let ad = device.clone().autodiff();
    let mut full = imagenet::load(package, 1, 2, &ad)?;
    let stage = full.stages.pop().ok_or("no stages")?;
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
        let batches: Box<dyn Iterator<Item = (Tensor<4>, Vec<u8>)>> = match augmented {
            None => Box::new(order.chunks(o.batch_size).map(|idx| {
                (
                    train.batch(idx, &ad),
                    idx.iter().map(|&i| train.y[i]).collect(),
                )
            })),
            Some(a) => {
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
                Box::new(loader.map(|b| {
                    let n = b.len();
                    let res4 = a
                        .frozen
                        .features_until(caffe_batch(b.pixels, n, a.size, device), 3);
                    (Tensor::<4>::from_data(res4.into_data(), &ad), b.labels)
                }))
            }
        };
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
            return Err(format!("{failed} training image(s) could not be read"));
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

fn write_teacher(path: &Path, teacher: &crate::train::TeacherLogits) -> Result<(), String> {
    let bytes = serde_json::to_vec(teacher).map_err(|e| e.to_string())?;
    crate::train::write_atomic(path, &bytes)
}

fn schedule_json(o: &FinetuneOptions) -> serde_json::Value {
    serde_json::json!({"head_epochs": o.head_epochs, "tune_epochs": o.tune_epochs, "batch_size": o.batch_size,
        "lr_head": o.lr_head, "lr_backbone": o.lr_backbone, "weight_decay": o.weight_decay, "folds": o.folds,
        "augment_p": o.augment_p, "augment_strength": o.augment_strength})
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
pub fn finetune(
    package: &Path,
    run: &Path,
    o: &FinetuneOptions,
) -> Result<serde_json::Value, String> {
    let (opts, split) = crate::export::read_run(run)?;
    let device = Device::flex();
    let started = Instant::now();
    let frozen = imagenet::load(package, 1, 2, &device)?;
    let train = Cached::compute(&frozen, &opts.data, &split.train, opts.input_size, &device)?;
    let valid = Cached::compute(&frozen, &opts.data, &split.valid, opts.input_size, &device)?;
    let extract_s = started.elapsed().as_secs_f64();
    let n = train.y.len();
    let valid_idx: Vec<usize> = (0..valid.y.len()).collect();
    // The training items in the order of the cached outputs, with their patients.
    let by_file: std::collections::HashMap<&str, &Item> =
        split.train.iter().map(|i| (i.file.as_str(), i)).collect();
    let items: Vec<Item> = train
        .files
        .iter()
        .map(|f| {
            by_file
                .get(f.as_str())
                .map(|i| (*i).clone())
                .ok_or_else(|| format!("{f}: not in the split"))
        })
        .collect::<Result<_, _>>()?;
    let augmented = (o.augment_p > 0.0).then(|| Augmented {
        frozen: &frozen,
        root: &opts.data,
        items: &items,
        size: opts.input_size,
        config: AugmentConfig::with_strength(o.augment_p, o.augment_strength),
    });
    if o.folds <= 1 {
        let all: Vec<usize> = (0..n).collect();
        let (best, epochs) = tune(
            package,
            &train,
            &all,
            &valid,
            augmented.as_ref(),
            o,
            &device,
            |eval| match &o.teacher_out {
                Some(path) => write_teacher(
                    path,
                    &train
                        .files
                        .iter()
                        .cloned()
                        .zip(logits(eval, &train, &all, &device)?)
                        .collect(),
                ),
                None => Ok(()),
            },
        )?;
        return Ok(serde_json::json!({
            "run": run.display().to_string(), "best": best, "epochs": epochs, "res4_seconds": extract_s,
            "schedule": schedule_json(o),
        }));
    }
    let fold = crate::data::folds(&items, o.folds, o.seed);
    let mut teacher = crate::train::TeacherLogits::new();
    let mut valid_sum = vec![0f64; valid.y.len()];
    let mut runs = Vec::new();
    for k in 0..o.folds {
        let (held, fit): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| fold[i] == k);
        eprintln!(
            "fold {}/{}: training on {}, scoring {}",
            k + 1,
            o.folds,
            fit.len(),
            held.len()
        );
        let mut at_best = (Vec::new(), Vec::new());
        let fold_options = FinetuneOptions {
            seed: o.seed.wrapping_add(k as u64),
            ..o.clone()
        };
        let (best, epochs) = tune(
            package,
            &train,
            &fit,
            &valid,
            augmented.as_ref(),
            &fold_options,
            &device,
            |eval| {
                at_best = (
                    logits(eval, &train, &held, &device)?,
                    logits(eval, &valid, &valid_idx, &device)?,
                );
                Ok(())
            },
        )?;
        let (held_logits, valid_logits) = at_best;
        for (&i, l) in held.iter().zip(held_logits) {
            teacher.insert(train.files[i].clone(), l);
        }
        for (sum, l) in valid_sum.iter_mut().zip(valid_logits) {
            *sum += f64::from(cxr::classifier::effusion_probability(l));
        }
        runs.push(serde_json::json!({"fold": k + 1, "trained_on": fit.len(), "scored": held.len(), "best": best, "epochs": epochs}));
    }
    let mean: Vec<f32> = valid_sum
        .iter()
        .map(|s| (s / o.folds as f64) as f32)
        .collect();
    let ensemble = Report::new(&mean, &valid.y, 0.5);
    let oof: Vec<f32> = train
        .files
        .iter()
        .map(|f| {
            teacher
                .get(f)
                .map_or(f32::NAN, |&l| cxr::classifier::effusion_probability(l))
        })
        .collect();
    let oof_report = Report::new(&oof, &train.y, 0.5);
    let uncertain = oof.iter().filter(|p| (0.1..=0.9).contains(*p)).count();
    if let Some(path) = &o.teacher_out {
        write_teacher(path, &teacher)?;
    }
    Ok(serde_json::json!({
        "run": run.display().to_string(), "folds": runs, "res4_seconds": extract_s, "schedule": schedule_json(o),
        "ensemble_valid": {"auc": ensemble.auc, "auc_ci95": ensemble.auc_ci95},
        "out_of_fold_train": {"auc": oof_report.auc, "auc_ci95": oof_report.auc_ci95, "probability_between_0.1_and_0.9": uncertain, "images": n},
    }))
}

/// `trainer train --pretrained imagenet-resnet50`: the run folder gets the options and the split
/// as `train` writes them (the same split for the same data and seed), then [`finetune`] runs on
/// it: the head alone for the first `min(3, epochs - 1)` epochs, then res5 at a tenth of `lr`.
/// The report is written to `finetune.json`.
pub fn train_pretrained(
    opts: &crate::train::TrainOptions,
    out: &Path,
    package: &Path,
) -> Result<serde_json::Value, String> {
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
        folds: 1,
        augment_p: 0.0,
        augment_strength: 1.0,
    };
    let report = finetune(package, out, &schedule)?;
    let bytes = serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?;
    crate::train::write_atomic(&out.join("finetune.json"), &bytes)?;
    Ok(report)
}
