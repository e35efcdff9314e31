//! ResNet-50 v1 as Keras builds it (`keras.applications.ResNet50`), the architecture of the one
//! ImageNet-pretrained network reachable here (see `imagenet.rs`): Bottleneck blocks of 1x1, 3x3,
//! 1x1 convolutions, the stride 2 on the block's *first 1x1* convolution and on its shortcut (not
//! on the 3x3, as torchvision does), BatchNorm with epsilon 1e-3. Keras convolutions carry a bias;
//! it is folded into the BatchNorm mean that follows, so the convolutions here have none.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor, activation::relu};
use cxr::model::global_average_pool;

/// Blocks per stage and the Bottleneck widths (the output is 4x the width).
pub const DEPTHS: [usize; 4] = [3, 4, 6, 3];
pub const WIDTHS: [usize; 4] = [64, 128, 256, 512];
pub const EXPANSION: usize = 4;
/// Keras' BatchNormalization default.
pub const BN_EPSILON: f64 = 1e-3;

/// A convolution without bias followed by BatchNorm.
#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

impl ConvBn {
    fn new(cin: usize, cout: usize, k: usize, stride: usize, device: &Device) -> Self {
        let conv = Conv2dConfig::new([cin, cout], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
            .with_bias(false)
            .init(device);
        let bn = BatchNormConfig::new(cout)
            .with_epsilon(BN_EPSILON)
            .init(device);
        Self { conv, bn }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(self.conv.forward(x))
    }
}

/// 1x1 (stride s) → 3x3 → 1x1 (4x width), plus the shortcut (a strided 1x1 + BN when the shape
/// changes).
#[derive(Module, Debug)]
pub struct Bottleneck {
    pub a: ConvBn,
    pub b: ConvBn,
    pub c: ConvBn,
    pub shortcut: Option<ConvBn>,
}

impl Bottleneck {
    fn new(cin: usize, width: usize, stride: usize, device: &Device) -> Self {
        let cout = width * EXPANSION;
        Self {
            a: ConvBn::new(cin, width, 1, stride, device),
            b: ConvBn::new(width, width, 3, 1, device),
            c: ConvBn::new(width, cout, 1, 1, device),
            shortcut: (stride != 1 || cin != cout)
                .then(|| ConvBn::new(cin, cout, 1, stride, device)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.shortcut {
            Some(s) => s.forward(x.clone()),
            None => x.clone(),
        };
        let out = relu(self.a.forward(x));
        let out = relu(self.b.forward(out));
        relu(self.c.forward(out) + identity)
    }
}

#[derive(Module, Debug)]
pub struct Stage50 {
    pub blocks: Vec<Bottleneck>,
}

impl Stage50 {
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<4> {
        for block in &self.blocks {
            x = block.forward(x);
        }
        x
    }
}

/// ResNet-50: 7x7/2 stem, 3x3/2 max-pool, four stages, global average pool, linear head.
#[derive(Module, Debug)]
pub struct ResNet50 {
    pub stem: ConvBn,
    pub maxpool: MaxPool2d,
    pub stages: Vec<Stage50>,
    pub head: Linear,
}

impl ResNet50 {
    /// A freshly initialised ResNet-50 for `in_channels`-channel input and `classes` outputs.
    pub fn new(in_channels: usize, classes: usize, device: &Device) -> Self {
        let stem = ConvBn::new(in_channels, 64, 7, 2, device);
        let maxpool = MaxPool2dConfig::new([3, 3])
            .with_strides([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init();
        let mut cin = 64;
        let stages = WIDTHS
            .iter()
            .zip(DEPTHS)
            .enumerate()
            .map(|(i, (&width, depth))| {
                let blocks = (0..depth)
                    .map(|b| {
                        let stride = if b == 0 && i > 0 { 2 } else { 1 };
                        let block = Bottleneck::new(cin, width, stride, device);
                        cin = width * EXPANSION;
                        block
                    })
                    .collect();
                Stage50 { blocks }
            })
            .collect();
        let head = LinearConfig::new(cin, classes).init(device);
        Self {
            stem,
            maxpool,
            stages,
            head,
        }
    }

    /// Last-stage features `[b, 2048, h/32, w/32]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<4> {
        self.features_until(x, self.stages.len())
    }

    /// The output of the stem and the first `stages` stages.
    pub fn features_until(&self, x: Tensor<4>, stages: usize) -> Tensor<4> {
        // Keras pads with zeros before its max-pool; after the ReLU that equals burn's padding.
        let mut x = self.maxpool.forward(relu(self.stem.forward(x)));
        for stage in self.stages.iter().take(stages) {
            x = stage.forward(x);
        }
        x
    }

    /// Logits `[b, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head.forward(global_average_pool(self.features(x)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet50_has_keras_parameter_count() {
        let model = ResNet50::new(3, 1000, &Device::flex());
        // Keras ResNet50: 25,636,712 parameters, of which 53,120 BatchNorm moving statistics are
        // counted too (as burn counts running means and variances). Keras convolutions have
        // biases, folded into BatchNorm here: 53 convolutions, 26,560 bias values fewer.
        assert_eq!(model.num_params(), 25_636_712 - 26_560);
    }

    #[test]
    fn shapes() {
        let device = Device::flex();
        let model = ResNet50::new(1, 2, &device);
        let x = Tensor::<4>::zeros([1, 1, 64, 64], &device);
        assert_eq!(model.features(x.clone()).dims(), [1, 2048, 2, 2]);
        assert_eq!(model.forward(x).dims(), [1, 2]);
    }
}
