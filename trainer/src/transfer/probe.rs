//! Transfer from ImageNet, first stage: the pretrained ResNet-50 frozen as a feature extractor
//! (a "linear probe"), a class-weighted logistic-regression head trained on its pooled features
//! of a run's training split and scored on that run's validation split, so the AUC compares
//! directly with the run's model trained from scratch.

use std::path::Path;
use std::time::Instant;

use anyhow::{Result, anyhow};
use burn::module::Module;
use burn::nn::LinearConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};

use super::frozen::{Output, frozen_outputs};
use super::imagenet;
use crate::metrics::Report;
use crate::objective::{LossKind, class_weights, loss};
use crate::run_dir::RunDir;

/// Head training, fixed before looking at any validation figure: full-batch AdamW on the
/// standardised features.
const STEPS: usize = 300;
const LR: f64 = 1e-2;
const WEIGHT_DECAY: f32 = 1e-2;

/// Linear probe on `run`'s split; prints and returns the validation report as JSON.
pub fn probe(package: &Path, run: &RunDir) -> Result<serde_json::Value> {
    let (opts, split) = run.read_run()?;
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

    let (n, nv) = (train_y.len(), valid_y.len());
    let standardise = standardiser(&train_x, d);
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
        .map_err(|e| anyhow!("{e:?}"))?;
    let scores: Vec<f32> = logits
        .chunks_exact(2)
        .map(|l| cxr::classifier::effusion_probability([l[0], l[1]]))
        .collect();
    let report = Report::new(&scores, &valid_y, 0.5);
    Ok(serde_json::json!({
        "run": run.path().display().to_string(), "train_images": n, "valid_images": nv,
        "auc": report.auc, "auc_ci95": report.auc_ci95, "head_params": head.num_params(),
        "feature_seconds": extract_s, "steps": STEPS, "lr": LR, "weight_decay": WEIGHT_DECAY,
    }))
}

/// Standardisation with the statistics of the `d`-wide rows of `train`: a function from rows
/// to standardised rows.
fn standardiser(train: &[f32], d: usize) -> impl Fn(&[f32]) -> Vec<f32> {
    let n = (train.len() / d.max(1)).max(1);
    let mut mean = vec![0f32; d];
    let mut std = vec![0f32; d];
    for row in train.chunks_exact(d) {
        row.iter()
            .zip(&mut mean)
            .for_each(|(v, m)| *m += v / n as f32);
    }
    for row in train.chunks_exact(d) {
        row.iter()
            .zip(&mean)
            .zip(&mut std)
            .for_each(|((v, m), s)| *s += (v - m).powi(2) / n as f32);
    }
    std.iter_mut().for_each(|s| *s = s.sqrt().max(1e-6));
    move |x: &[f32]| -> Vec<f32> {
        x.chunks_exact(d)
            .flat_map(|r| r.iter().zip(&mean).zip(&std).map(|((v, m), s)| (v - m) / s))
            .collect()
    }
}
