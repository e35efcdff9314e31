//! The network prepared for inference on the CPU: every BatchNorm folded into the convolution
//! before it (weights scaled per output channel, plus a bias), and the layers run by the
//! project's fused kernels (`crate::kernels`): one pass per convolution, bias, residual and
//! ReLU included, instead of a convolution and four or five element-wise passes.

use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

use super::ResNet;
use super::blocks::BasicBlock;
use crate::kernels;

/// The 3x3 stride-1 convolutions with at least this many input channels use Winograd F(2x2,
/// 3x3) by default. Measured in wasm on the x0.25 network (one thread): Winograd takes 0.66-0.82
/// of the direct kernel's time at 32 to 128 channels, and the same at 16, where its transforms
/// cost as much as the products they save.
pub const WINOGRAD_MIN_CHANNELS: Option<usize> = Some(32);

/// A convolution with the BatchNorm after it folded in.
#[derive(Debug, Clone)]
struct FoldedConv {
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: usize,
    /// The Winograd-transformed filters `[16, out, in]` of a 3x3 stride-1 convolution, when
    /// Winograd is used.
    winograd: Option<Tensor<3>>,
}

impl FoldedConv {
    /// `bn(conv(x)) = conv(x) * s + (beta - mean * s)` with `s = gamma / sqrt(var + eps)` per
    /// output channel, so `s` goes into the weights. Every convolution here is square, without
    /// bias, with padding `k / 2`.
    fn new(conv: &Conv2d, bn: &BatchNorm, winograd: Option<usize>) -> Self {
        let [out, input, k, _] = conv.weight.dims();
        let scale = bn.gamma.val() / (bn.running_var.value() + bn.epsilon).sqrt();
        let weight = conv.weight.val() * scale.clone().reshape([out, 1, 1, 1]);
        let bias = bn.beta.val() - bn.running_mean.value() * scale;
        let stride = conv.stride[0];
        let winograd = winograd
            .is_some_and(|min| k == 3 && stride == 1 && input >= min)
            .then(|| kernels::winograd_filters(weight.clone()));
        Self {
            weight,
            bias,
            stride,
            padding: k / 2,
            winograd,
        }
    }

    fn forward(&self, x: Tensor<4>, relu: bool) -> Tensor<4> {
        let bias = self.bias.clone();
        match &self.winograd {
            Some(filters) => kernels::winograd_bias(x, filters.clone(), bias, relu),
            None => {
                let weight = self.weight.clone();
                kernels::conv_bias(x, weight, bias, self.stride, self.padding, relu)
            }
        }
    }

    fn forward_add_relu(&self, x: Tensor<4>, residual: Tensor<4>) -> Tensor<4> {
        let bias = self.bias.clone();
        match &self.winograd {
            Some(filters) => kernels::winograd_bias_add_relu(x, filters.clone(), bias, residual),
            None => {
                let (weight, (stride, padding)) =
                    (self.weight.clone(), (self.stride, self.padding));
                kernels::conv_bias_add_relu(x, weight, bias, residual, stride, padding)
            }
        }
    }
}

#[derive(Debug, Clone)]
struct FoldedBlock {
    conv1: FoldedConv,
    conv2: FoldedConv,
    downsample: Option<FoldedConv>,
}

impl FoldedBlock {
    fn new(block: &BasicBlock, winograd: Option<usize>) -> Self {
        Self {
            conv1: FoldedConv::new(&block.conv1, &block.bn1, winograd),
            conv2: FoldedConv::new(&block.conv2, &block.bn2, winograd),
            downsample: block
                .downsample
                .as_ref()
                .map(|d| FoldedConv::new(&d.conv, &d.bn, winograd)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.downsample {
            Some(d) => d.forward(x.clone(), false),
            None => x.clone(),
        };
        let out = self.conv1.forward(x, true);
        self.conv2.forward_add_relu(out, identity)
    }
}

/// The feature extractor of a [`ResNet`] with its BatchNorms folded, for CPU inference (the
/// pooling, head and CAM stay the `ResNet`'s).
#[derive(Debug, Clone)]
pub struct FoldedFeatures {
    stem: FoldedConv,
    blocks: Vec<FoldedBlock>,
}

impl FoldedFeatures {
    /// Fold `model`'s BatchNorms (their running statistics: inference mode), with Winograd where
    /// [`WINOGRAD_MIN_CHANNELS`] says.
    pub fn new(model: &ResNet) -> Self {
        Self::with_winograd(model, WINOGRAD_MIN_CHANNELS)
    }

    /// [`Self::new`], choosing which 3x3 stride-1 convolutions use Winograd: those with at least
    /// `min_channels` input channels (`Some(0)`: all), none with `None` (benchmarks compare them).
    pub fn with_winograd(model: &ResNet, min_channels: Option<usize>) -> Self {
        Self {
            stem: FoldedConv::new(&model.conv1, &model.bn1, None),
            blocks: model
                .stages
                .iter()
                .flat_map(|stage| {
                    stage
                        .blocks
                        .iter()
                        .map(|b| FoldedBlock::new(b, min_channels))
                })
                .collect(),
        }
    }

    /// Last-stage feature maps, as [`ResNet::features`] computes them (up to rounding).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = kernels::max_pool(self.stem.forward(x, true));
        self.blocks.iter().fold(x, |x, block| block.forward(x))
    }
}
