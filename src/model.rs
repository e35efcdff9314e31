//! A ResNet of BasicBlocks for one-channel X-rays, with a class activation map (CAM) for the
//! effusion class computed from the same forward pass.

use burn::module::{Initializer, Module};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::module::interpolate;
use burn::tensor::ops::PadMode;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Slice, Tensor, activation::relu, s};
use serde::{Deserialize, Serialize};

/// Index of the "no finding" logit.
pub const CLASS_NO_FINDING: usize = 0;
/// Index of the "effusion" logit.
pub const CLASS_EFFUSION: usize = 1;

/// The architecture: stem width, then one stage per entry of `widths`/`depths`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// Input channels (1 for greyscale X-rays).
    pub in_channels: usize,
    /// Channels of the 7x7 stem convolution.
    pub stem_width: usize,
    /// Channels of each stage; every stage after the first halves the resolution.
    pub widths: Vec<usize>,
    /// BasicBlocks in each stage.
    pub depths: Vec<usize>,
    /// Output logits (2: no finding, effusion).
    pub num_classes: usize,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        Self::resnet18()
    }
}

impl ResNetConfig {
    /// The ResNet-18 layout: stages of 2 BasicBlocks, widths 64-128-256-512.
    pub fn resnet18() -> Self {
        Self {
            in_channels: 1,
            stem_width: 64,
            widths: vec![64, 128, 256, 512],
            depths: vec![2, 2, 2, 2],
            num_classes: 2,
        }
    }

    /// The same layout with every width multiplied by `factor` (0.5 = half width), at least 4.
    pub fn with_width(mut self, factor: f64) -> Self {
        let scale = |w: usize| ((w as f64 * factor).round() as usize).max(4);
        self.stem_width = scale(self.stem_width);
        self.widths = self.widths.iter().map(|&w| scale(w)).collect();
        self
    }

    /// Check that the description can be built.
    pub fn validate(&self) -> Result<(), String> {
        if self.in_channels == 0 || self.stem_width == 0 || self.num_classes < 2 {
            return Err(
                "in_channels and stem_width must be positive, num_classes at least 2".into(),
            );
        }
        if self.widths.is_empty() || self.widths.len() != self.depths.len() {
            return Err(format!(
                "widths ({}) and depths ({}) must be non-empty and of the same length",
                self.widths.len(),
                self.depths.len()
            ));
        }
        if self.widths.contains(&0) || self.depths.contains(&0) {
            return Err("every stage needs a positive width and depth".into());
        }
        if self.widths.iter().chain(&self.depths).any(|&v| v > 4096) {
            return Err("stage widths and depths must be at most 4096".into());
        }
        Ok(())
    }

    /// A very small architecture for tests (two stages of one block, widths 4 and 8).
    #[cfg(test)]
    pub(crate) fn tiny() -> Self {
        Self {
            in_channels: 1,
            stem_width: 4,
            widths: vec![4, 8],
            depths: vec![1, 1],
            num_classes: 2,
        }
    }

    /// Width of the last stage: the features the head and the CAM read.
    pub fn feature_width(&self) -> usize {
        *self.widths.last().unwrap_or(&self.stem_width)
    }

    /// Total downsampling factor from input to last-stage features.
    pub fn stride(&self) -> usize {
        4 << self.widths.len().saturating_sub(1)
    }

    /// Build a freshly initialised model (Kaiming-normal convolutions, as torchvision does).
    pub fn init(&self, device: &Device) -> ResNet {
        let conv1 = conv(self.in_channels, self.stem_width, 7, 2, 3, device);
        let bn1 = BatchNormConfig::new(self.stem_width).init(device);
        let maxpool = MaxPool2dConfig::new([3, 3])
            .with_strides([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init();
        let mut in_width = self.stem_width;
        let mut stages = Vec::with_capacity(self.widths.len());
        for (i, (&width, &depth)) in self.widths.iter().zip(&self.depths).enumerate() {
            let stride = if i == 0 { 1 } else { 2 };
            let blocks = (0..depth)
                .map(|b| {
                    let block =
                        BasicBlock::new(in_width, width, if b == 0 { stride } else { 1 }, device);
                    in_width = width;
                    block
                })
                .collect();
            stages.push(Stage { blocks });
        }
        let head = LinearConfig::new(in_width, self.num_classes).init(device);
        ResNet {
            conv1,
            bn1,
            maxpool,
            stages,
            head,
        }
    }
}

fn conv(cin: usize, cout: usize, k: usize, stride: usize, pad: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal {
            gain: std::f64::consts::SQRT_2,
            fan_out_only: true,
        })
        .init(device)
}

/// The mean of each channel over its feature map: `[b, c, h, w]` → `[b, c]`.
pub fn global_average_pool(features: Tensor<4>) -> Tensor<2> {
    let [b, c, _, _] = features.dims();
    features.mean_dim(3).mean_dim(2).reshape([b, c])
}

/// How the model's 3x3 and 7x7 convolutions are computed; both give the same numbers up to
/// rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKernel {
    /// burn's `conv2d`. On the CPU backend, with the few channels of the quarter-width model,
    /// profiling showed it spends most of its time rearranging data (NHWC copies, a generic 3D
    /// im2col; a direct loop for the one-channel stem), not multiplying.
    Burn,
    /// im2col by hand: the k² strided views of the padded input stacked as rows, then one
    /// matrix product with the filters.
    Columns,
}

impl ConvKernel {
    /// The faster one measured on each backend (`./build.sh bench`, bench/RESULTS.md): columns
    /// for native inference on the CPU backend (1.7x faster); burn's convolution in wasm (there
    /// its direct loops beat the columns' copies once optimised for speed), when training (the
    /// backward pass through the strided copies made a step no faster: 0.72x to 1.00x in two
    /// runs) and on GPUs (their kernels are tuned for it).
    pub fn for_device(device: &Device) -> Self {
        if cfg!(not(target_family = "wasm")) && *device == Device::flex() {
            Self::Columns
        } else {
            Self::Burn
        }
    }
}

/// `conv` (square kernel, no bias, padding k/2, as every convolution here) computed with
/// `kernel`; 1x1 convolutions always go to burn, which multiplies them directly.
fn conv_with(conv: &Conv2d, x: Tensor<4>, kernel: ConvKernel) -> Tensor<4> {
    let [_, _, k, _] = conv.weight.dims();
    match kernel {
        ConvKernel::Columns if k > 1 && conv.bias.is_none() => {
            conv_columns(x, conv.weight.val(), conv.stride[0], k / 2)
        }
        _ => conv.forward(x),
    }
}

/// A square convolution without bias as im2col + one matmul: `x` `[b, cin, h, w]`, `weight`
/// `[cout, cin, k, k]` → `[b, cout, oh, ow]`.
fn conv_columns(x: Tensor<4>, weight: Tensor<4>, stride: usize, pad: usize) -> Tensor<4> {
    let [b, cin, h, w] = x.dims();
    let [cout, _, k, _] = weight.dims();
    let (oh, ow) = (
        (h + 2 * pad - k) / stride + 1,
        (w + 2 * pad - k) / stride + 1,
    );
    let padded = if pad > 0 {
        x.pad([(pad, pad), (pad, pad)], PadMode::Constant(0.0))
    } else {
        x
    };
    let span = |start: usize, n: usize| {
        Slice::new(
            start as isize,
            Some((start + stride * (n - 1) + 1) as isize),
            stride as isize,
        )
    };
    let mut rows = Vec::with_capacity(k * k);
    for ky in 0..k {
        for kx in 0..k {
            let view =
                padded
                    .clone()
                    .slice([Slice::full(), Slice::full(), span(ky, oh), span(kx, ow)]);
            rows.push(view.reshape([b, cin, 1, oh * ow]));
        }
    }
    // [b, cin, k*k, oh*ow] → rows in the weight's (cin, ky, kx) order.
    let rows = Tensor::cat(rows, 2).reshape([b, cin * k * k, oh * ow]);
    let filters = weight
        .reshape([1, cout, cin * k * k])
        .expand([b, cout, cin * k * k]);
    filters.matmul(rows).reshape([b, cout, oh, ow])
}

/// 1x1 convolution + BatchNorm on the shortcut when the shape changes.
#[derive(Module, Debug)]
pub struct Downsample {
    conv: Conv2d,
    bn: BatchNorm,
}

/// Two 3x3 convolutions with BatchNorm and a residual connection.
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    downsample: Option<Downsample>,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, device: &Device) -> Self {
        let downsample = (stride != 1 || cin != cout).then(|| Downsample {
            conv: conv(cin, cout, 1, stride, 0, device),
            bn: BatchNormConfig::new(cout).init(device),
        });
        Self {
            conv1: conv(cin, cout, 3, stride, 1, device),
            bn1: BatchNormConfig::new(cout).init(device),
            conv2: conv(cout, cout, 3, 1, 1, device),
            bn2: BatchNormConfig::new(cout).init(device),
            downsample,
        }
    }

    fn forward(&self, x: Tensor<4>, kernel: ConvKernel) -> Tensor<4> {
        let identity = match &self.downsample {
            Some(d) => d.bn.forward(d.conv.forward(x.clone())),
            None => x.clone(),
        };
        let out = relu(self.bn1.forward(conv_with(&self.conv1, x, kernel)));
        let out = self.bn2.forward(conv_with(&self.conv2, out, kernel));
        relu(out + identity)
    }
}

/// One resolution level of BasicBlocks.
#[derive(Module, Debug)]
pub struct Stage {
    blocks: Vec<BasicBlock>,
}

/// The classifier: stem, stages, global average pooling, linear head.
#[derive(Module, Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    maxpool: MaxPool2d,
    stages: Vec<Stage>,
    head: Linear,
}

impl ResNet {
    /// Last-stage feature maps `[batch, channels, h, w]` for input `[batch, 1, H, W]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<4> {
        let kernel = ConvKernel::for_device(&x.device());
        self.features_with(x, kernel)
    }

    /// [`Self::features`] with a chosen way of computing the convolutions (benchmarks compare
    /// them; the result is the same up to rounding).
    pub fn features_with(&self, x: Tensor<4>, kernel: ConvKernel) -> Tensor<4> {
        let x = relu(self.bn1.forward(conv_with(&self.conv1, x, kernel)));
        let mut x = self.maxpool.forward(x);
        for stage in &self.stages {
            for block in &stage.blocks {
                x = block.forward(x, kernel);
            }
        }
        x
    }

    /// Logits `[batch, classes]` from last-stage features.
    pub fn classify_features(&self, features: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.pooled_features(features))
    }

    /// Logits `[batch, classes]` (0 = no finding, 1 = effusion).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.classify_features(self.features(x))
    }

    /// Logits and the effusion CAM `[batch, H, W]` in `[0, 1]` at the input's resolution,
    /// from one pass.
    pub fn forward_with_cam(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<3>) {
        let (logits, cam, _) = self.forward_all(x);
        (logits, cam)
    }

    /// Globally pooled last-stage features `[batch, channels]`: what the head reads, and what
    /// the out-of-distribution check measures.
    pub fn pooled_features(&self, features: Tensor<4>) -> Tensor<2> {
        global_average_pool(features)
    }

    /// Logits, the effusion CAM (as [`Self::forward_with_cam`]) and the pooled features, from
    /// one pass.
    pub fn forward_all(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<3>, Tensor<2>) {
        let [b, _, h, w] = x.dims();
        let features = self.features(x);
        let pooled = self.pooled_features(features.clone());
        let logits = self.head.forward(pooled.clone());
        let cam = self.class_activation(features);
        let up = interpolate(
            cam,
            InterpolateOptions::new(InterpolateMode::Bilinear)
                .with_align_corners(false)
                .with_output_size([h, w]),
        );
        (logits, up.reshape([b, h, w]), pooled)
    }

    /// Per-channel weight of the effusion-vs-no-finding decision: `w[:, 1] - w[:, 0]`, `[channels]`.
    pub fn cam_weights(&self) -> Tensor<1> {
        let weight = self.head.weight.val(); // [in, out]
        let [c, _] = weight.dims();
        let diff =
            weight.clone().slice(s![.., CLASS_EFFUSION]) - weight.slice(s![.., CLASS_NO_FINDING]);
        diff.reshape([c])
    }

    /// CAM at feature resolution `[batch, 1, h, w]`: features weighted by [`Self::cam_weights`],
    /// summed over channels, ReLU, divided by each image's maximum (all zeros stay zero).
    pub fn class_activation(&self, features: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = features.dims();
        let weights = self.cam_weights().reshape([1, c, 1, 1]);
        let cam = relu((features * weights).sum_dim(1)); // [b, 1, h, w]
        let max = cam
            .clone()
            .reshape([b, h * w])
            .max_dim(1)
            .reshape([b, 1, 1, 1]);
        cam / (max + 1e-12)
    }
}

/// One tensor of a model under its torchvision name (`layer1.0.conv1.weight`…), row-major f32.
#[derive(Debug, Clone)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

fn named<const D: usize>(name: String, tensor: Tensor<D>) -> NamedTensor {
    let shape = tensor.dims().to_vec();
    let values = tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    NamedTensor {
        name,
        shape,
        values,
    }
}

fn named_bn(prefix: &str, bn: &BatchNorm, out: &mut Vec<NamedTensor>) {
    out.push(named(format!("{prefix}.weight"), bn.gamma.val()));
    out.push(named(format!("{prefix}.bias"), bn.beta.val()));
    out.push(named(
        format!("{prefix}.running_mean"),
        bn.running_mean.value(),
    ));
    out.push(named(
        format!("{prefix}.running_var"),
        bn.running_var.value(),
    ));
}

impl ResNet {
    /// Every parameter and BatchNorm statistic under the names torchvision's ResNet uses
    /// (`conv1`, `bn1`, `layerN.i.…`, `downsample.0/1`, `fc`; `fc.weight` as `[out, in]`), so a
    /// PyTorch reference of the same architecture loads them with `load_state_dict`.
    pub fn torchvision_tensors(&self) -> Vec<NamedTensor> {
        let mut out = vec![named("conv1.weight".into(), self.conv1.weight.val())];
        named_bn("bn1", &self.bn1, &mut out);
        for (i, stage) in self.stages.iter().enumerate() {
            for (j, block) in stage.blocks.iter().enumerate() {
                let p = format!("layer{}.{j}", i + 1);
                out.push(named(format!("{p}.conv1.weight"), block.conv1.weight.val()));
                named_bn(&format!("{p}.bn1"), &block.bn1, &mut out);
                out.push(named(format!("{p}.conv2.weight"), block.conv2.weight.val()));
                named_bn(&format!("{p}.bn2"), &block.bn2, &mut out);
                if let Some(d) = &block.downsample {
                    out.push(named(
                        format!("{p}.downsample.0.weight"),
                        d.conv.weight.val(),
                    ));
                    named_bn(&format!("{p}.downsample.1"), &d.bn, &mut out);
                }
            }
        }
        out.push(named(
            "fc.weight".into(),
            self.head.weight.val().transpose(),
        ));
        if let Some(bias) = &self.head.bias {
            out.push(named("fc.bias".into(), bias.val()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

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

    #[test]
    fn both_conv_kernels_compute_the_same_features() {
        let device = Device::flex();
        for arch in [tiny(), ResNetConfig::resnet18().with_width(0.25)] {
            let model = arch.init(&device);
            for (b, size) in [(1, 64), (2, 37)] {
                let x = input(b, size, &device);
                let conv = model
                    .features_with(x.clone(), ConvKernel::Burn)
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
                let cols = model
                    .features_with(x, ConvKernel::Columns)
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
                assert_eq!(conv.len(), cols.len());
                let scale = conv.iter().fold(0f32, |m, v| m.max(v.abs()));
                let diff = conv
                    .iter()
                    .zip(&cols)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    diff <= 1e-4 * scale.max(1.0),
                    "difference {diff} (scale {scale})"
                );
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
}
