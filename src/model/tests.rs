use super::*;
use burn::tensor::{Device, Distribution};

fn tiny() -> ResNetConfig {
    ResNetConfig::tiny()
}

fn input(b: usize, size: usize, device: &Device) -> Tensor<4> {
    Tensor::random([b, 1, size, size], Distribution::Uniform(0.0, 1.0), device)
}

#[test]
fn resnet18_has_its_parameter_count() {
    let device = Device::flex();
    let model = ResNetConfig::resnet18().init(&device);
    // torchvision's resnet18 has 11,689,512 parameters with a 3-channel stem and 1000 classes;
    // ours: stem 1 channel (-2*64*49 = -6,272), head 2 classes (-998*513 = -511,974). BatchNorm
    // running statistics are not parameters in torchvision's count but are in burn's (+9,600).
    assert_eq!(model.num_params(), 11_689_512 - 6_272 - 511_974 + 9_600);
}

#[test]
fn torchvision_tensors_name_every_parameter_once() {
    let device = Device::flex();
    let model = ResNetConfig::resnet18().init(&device);
    let tensors = model.torchvision_tensors();
    let total: usize = tensors.iter().map(|t| t.values.len()).sum();
    assert_eq!(total, model.num_params());
    let names: std::collections::HashSet<_> = tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), tensors.len());
    for name in [
        "conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer4.1.bn2.running_var",
        "fc.bias",
    ] {
        assert!(names.contains(name), "{name}");
    }
    let fc = tensors.iter().find(|t| t.name == "fc.weight").unwrap();
    assert_eq!(fc.shape, vec![2, 512]);
}

/// Largest difference between two tensors, relative to the first's largest magnitude (at least 1).
fn relative_difference(reference: Tensor<4>, other: Tensor<4>) -> f32 {
    let a = reference.into_data().try_to_vec::<f32>().unwrap();
    let b = other.into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale.max(1.0)
}

#[test]
fn every_conv_kernel_computes_the_same_features() {
    let device = Device::flex();
    for arch in [tiny(), ResNetConfig::resnet18().with_width(0.25)] {
        let model = arch.init(&device);
        for (b, size) in [(1, 64), (2, 37)] {
            let x = input(b, size, &device);
            let conv = model.features_with(x.clone(), ConvKernel::Burn);
            for kernel in [ConvKernel::Columns, ConvKernel::Kernels] {
                let other = model.features_with(x.clone(), kernel);
                let diff = relative_difference(conv.clone(), other);
                assert!(diff <= 1e-4, "{kernel:?}: relative difference {diff}");
            }
        }
    }
}

/// A training step's gradients through the project's kernels against burn's convolutions: the
/// stem's weights (no input gradient below them), a stride-2 block's and its downsample's.
#[cfg(feature = "training")]
#[test]
fn the_kernels_backward_passes_give_burns_gradients() {
    let device = Device::flex().autodiff();
    device.seed(17);
    let model = ResNetConfig::resnet18().with_width(0.25).init(&device);
    let x = input(3, 45, &device);
    let gradients = |kernel| {
        let logits = model.classify_features(model.features_with(x.clone(), kernel));
        let grads = (logits * Tensor::<2>::from_floats([[1.0, -2.0]], &device))
            .sum()
            .backward();
        let block = &model.stages[1].blocks[0];
        let downsample = &block.downsample.as_ref().expect("stride 2").conv;
        [&model.conv1, &block.conv1, downsample]
            .map(|conv| conv.weight.val().grad(&grads).expect("tracked"))
    };
    let (reference, ours) = (gradients(ConvKernel::Burn), gradients(ConvKernel::Kernels));
    for (i, (a, b)) in reference.into_iter().zip(ours).enumerate() {
        // Relative to the gradient's own largest value, which may be well below 1.
        let scale = a.clone().abs().max().into_scalar::<f32>();
        let diff = (a - b).abs().max().into_scalar::<f32>() / scale;
        assert!(
            scale > 0.0 && diff <= 1e-4,
            "weight gradient {i}: relative difference {diff}"
        );
    }
}

/// Random BatchNorm statistics and affine parameters, so folding them is really tested (fresh
/// ones are the identity).
fn randomise_batch_norms(model: ResNet, device: &Device) -> ResNet {
    use burn::module::{Param, RunningState};
    let randomise = |bn: &mut BatchNorm| {
        let [c] = bn.gamma.dims();
        let uniform = |lo, hi| Tensor::<1>::random([c], Distribution::Uniform(lo, hi), device);
        bn.gamma = Param::from_tensor(uniform(0.5, 1.5));
        bn.beta = Param::from_tensor(uniform(-0.5, 0.5));
        bn.running_mean = RunningState::new(uniform(-0.3, 0.3));
        bn.running_var = RunningState::new(uniform(0.5, 2.0));
    };
    let mut model = model;
    randomise(&mut model.bn1);
    for block in model.stages.iter_mut().flat_map(|s| s.blocks.iter_mut()) {
        randomise(&mut block.bn1);
        randomise(&mut block.bn2);
        if let Some(d) = block.downsample.as_mut() {
            randomise(&mut d.bn);
        }
    }
    model
}

#[test]
fn folded_batch_norms_and_fused_kernels_compute_the_same_features() {
    let device = Device::flex();
    device.seed(13);
    for arch in [tiny(), ResNetConfig::resnet18().with_width(0.25)] {
        let model = randomise_batch_norms(arch.init(&device), &device).valid();
        for winograd in [None, Some(0), Some(32)] {
            let folded = FoldedFeatures::with_winograd(&model, winograd);
            for (b, size) in [(1, 64), (2, 37)] {
                let x = input(b, size, &device);
                let reference = model.features_with(x.clone(), ConvKernel::Burn);
                let diff = relative_difference(reference, folded.forward(x));
                assert!(
                    diff <= 1e-5,
                    "winograd {winograd:?}: relative difference {diff}"
                );
            }
        }
    }
}

#[test]
fn shapes_of_forward_and_cam() {
    let device = Device::flex();
    let model = tiny().init(&device);
    let x = input(3, 64, &device);
    assert_eq!(model.forward(x.clone()).dims(), [3, 2]);
    assert_eq!(model.features(x.clone()).dims(), [3, 8, 8, 8]);
    assert_eq!(tiny().stride(), 8);
    let (logits, cam) = model.forward_with_cam(x);
    assert_eq!(logits.dims(), [3, 2]);
    assert_eq!(cam.dims(), [3, 64, 64]);
    let values = cam.into_data().try_to_vec::<f32>().unwrap();
    assert!(values.iter().all(|v| (-1e-6..=1.0 + 1e-6).contains(v)));
}

#[test]
fn cam_equals_the_weighted_sum_computed_by_hand() {
    let device = Device::flex();
    let model = tiny().init(&device);
    let x = input(2, 48, &device);
    let features = model.features(x);
    let [b, c, h, w] = features.dims();
    let f = features.to_data().try_to_vec::<f32>().unwrap();
    let head = model
        .head
        .weight
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap(); // [c, 2]
    let got = model
        .class_activation(features)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    for bi in 0..b {
        let mut raw = vec![0f32; h * w];
        for (p, r) in raw.iter_mut().enumerate() {
            for ci in 0..c {
                *r += f[((bi * c) + ci) * h * w + p] * (head[ci * 2 + 1] - head[ci * 2]);
            }
            *r = r.max(0.0);
        }
        let max = raw.iter().cloned().fold(0f32, f32::max);
        for p in 0..h * w {
            let expected = raw[p] / (max + 1e-12);
            let actual = got[bi * h * w + p];
            assert!(
                (expected - actual).abs() < 1e-4,
                "b{bi} p{p}: {expected} vs {actual}"
            );
        }
    }
}

#[test]
fn cam_mean_matches_the_logit_difference() {
    // Without ReLU and scaling, the CAM's spatial mean plus the bias difference is exactly
    // logit(effusion) - logit(no finding): the map explains the decision it is shown with.
    let device = Device::flex();
    let model = tiny().init(&device);
    let x = input(1, 32, &device);
    let features = model.features(x);
    let [_, c, _, _] = features.dims();
    let logits = model
        .classify_features(features.clone())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let raw = (features * model.cam_weights().reshape([1, c, 1, 1]))
        .sum_dim(1)
        .mean();
    let bias = model
        .head
        .bias
        .as_ref()
        .unwrap()
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let raw: f32 = raw.into_scalar();
    let diff = logits[1] - logits[0];
    assert!(
        (raw + bias[1] - bias[0] - diff).abs() < 1e-4,
        "{raw} vs {diff}"
    );
}

#[test]
fn width_scaling_and_validation() {
    let half = ResNetConfig::resnet18().with_width(0.5);
    assert_eq!(half.widths, vec![32, 64, 128, 256]);
    assert_eq!(half.stem_width, 32);
    assert!(half.validate().is_ok());
    let mut bad = ResNetConfig::resnet18();
    bad.depths.pop();
    assert!(bad.validate().is_err());
}
