//! The building blocks: convolutions as torchvision initialises them, BasicBlocks and stages.

use burn::module::{Initializer, Module};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor, activation::relu};

use super::kernel::{ConvKernel, conv_with};

pub(super) fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    device: &Device,
) -> Conv2d {
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

/// 1x1 convolution + BatchNorm on the shortcut when the shape changes.
#[derive(Module, Debug)]
pub struct Downsample {
    pub(super) conv: Conv2d,
    pub(super) bn: BatchNorm,
}

/// Two 3x3 convolutions with BatchNorm and a residual connection.
#[derive(Module, Debug)]
pub struct BasicBlock {
    pub(super) conv1: Conv2d,
    pub(super) bn1: BatchNorm,
    pub(super) conv2: Conv2d,
    pub(super) bn2: BatchNorm,
    pub(super) downsample: Option<Downsample>,
}

impl BasicBlock {
    pub(super) fn new(cin: usize, cout: usize, stride: usize, device: &Device) -> Self {
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

    pub(super) fn forward(&self, x: Tensor<4>, kernel: ConvKernel) -> Tensor<4> {
        let identity = match &self.downsample {
            Some(d) => d.bn.forward(conv_with(&d.conv, x.clone(), kernel)),
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
    pub(super) blocks: Vec<BasicBlock>,
}
