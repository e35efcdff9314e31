//! The objective: the training loss (plain, class-weighted or cost-matrix cross-entropy, and the
//! distillation term) and the learning-rate schedule (warm-up, then cosine decay).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Tensor, TensorData, s};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::data::Item;

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

/// What the loss of a batch needs besides the model's logits.
#[derive(Debug, Clone)]
pub struct LossSpec {
    pub kind: LossKind,
    pub weights: [f32; 2],
    pub cost: f32,
    /// Teacher logits by file, with the distillation weight and temperature.
    pub teacher: Option<std::sync::Arc<crate::run_dir::TeacherLogits>>,
    pub distill_weight: f32,
    pub temperature: f32,
}

/// The part of a whole batch's loss that one shard of it carries (data-parallel training): each
/// term is the shard's mean scaled by its share of the batch's normaliser, so that the shards'
/// losses, and so their gradients, add up to the whole batch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    /// Shard's normaliser of the labelled term over the batch's ([`normaliser`]).
    pub labelled: f32,
    /// Shard's size over the batch's (the distillation term is a plain mean).
    pub distilled: f32,
}

impl Share {
    /// The whole batch.
    pub const WHOLE: Share = Share {
        labelled: 1.0,
        distilled: 1.0,
    };
}

/// What [`loss`] divides by: the batch size, or the sum of the class weights (class-weighted).
pub fn normaliser(labels: &[u8], kind: LossKind, weights: [f32; 2]) -> f32 {
    match kind {
        LossKind::ClassWeighted => labels.iter().map(|&l| weights[usize::from(l)]).sum(),
        LossKind::Ce | LossKind::CostMatrix => labels.len() as f32,
    }
}

/// The loss of a batch (or of a shard of one, see [`Share`]) whose logits are `logits`.
pub fn batch_loss(
    logits: Tensor<2>,
    labels: &[u8],
    files: &[String],
    spec: &LossSpec,
    share: Share,
) -> Tensor<1> {
    let scale = |t: Tensor<1>, s: f32| if s == 1.0 { t } else { t.mul_scalar(s) };
    let hard = loss(logits.clone(), labels, spec.kind, spec.weights, spec.cost);
    let hard = scale(hard, share.labelled);
    let Some(teacher) = &spec.teacher else {
        return hard;
    };
    let targets: Vec<f32> = files
        .iter()
        .flat_map(|f| teacher.get(f).copied().unwrap_or([0.0, 0.0]))
        .collect();
    let targets =
        Tensor::<2>::from_data(TensorData::new(targets, [files.len(), 2]), &logits.device());
    let soft = scale(
        distillation_loss(logits, targets, spec.temperature),
        share.distilled,
    );
    hard.mul_scalar(1.0 - spec.distill_weight) + soft.mul_scalar(spec.distill_weight)
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

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::optim::{AdamWConfig, GradientsParams};
    use burn::store::ModuleRecord;
    use burn::tensor::Device;
    use cxr::{ModelInfo, ResNetConfig};

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
}
