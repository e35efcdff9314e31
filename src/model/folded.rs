//! The network prepared for inference on the CPU: every BatchNorm folded into the convolution
//! before it (weights scaled per output channel, plus a bias), and the layers run by the
//! project's fused kernels (`crate::kernels`): one pass per convolution, bias, residual and
//! ReLU included, instead of a convolution and four or five element-wise passes. The weights are
//! put in the kernels' layout here, once, not on every inference.

use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

use super::ResNet;
use super::blocks::BasicBlock;
use crate::kernels::{self, PreparedConv};

/// The 3x3 stride-1 convolutions with at least this many input channels use Winograd F(2x2,
/// 3x3) by default. Measured in wasm on the x0.25 network (one thread): Winograd takes 0.66-0.82
/// of the direct kernel's time at 32 to 128 channels, and the same at 16, where its transforms
/// cost as much as the products they save.
pub const WINOGRAD_MIN_CHANNELS: Option<usize> = Some(32);

/// `conv` with the BatchNorm after it folded in, prepared for the fused kernels:
/// `bn(conv(x)) = conv(x) * s + (beta - mean * s)` with `s = gamma / sqrt(var + eps)` per output
/// channel, so `s` goes into the weights. Every convolution here is square, without bias, with
/// padding `k / 2`; the 3x3 stride-1 ones with at least `winograd` input channels use Winograd.
fn fold(conv: &Conv2d, bn: &BatchNorm, winograd: Option<usize>) -> PreparedConv {
    let [out, input, k, _] = conv.weight.dims();
    let scale = bn.gamma.val() / (bn.running_var.value() + bn.epsilon).sqrt();
    let weight = conv.weight.val() * scale.clone().reshape([out, 1, 1, 1]);
    let bias = bn.beta.val() - bn.running_mean.value() * scale;
    let winograd = winograd.is_some_and(|min| input >= min);
    PreparedConv::new(weight, bias, conv.stride[0], k / 2, winograd)
}

#[derive(Debug, Clone)]
struct FoldedBlock {
    conv1: PreparedConv,
    conv2: PreparedConv,
    downsample: Option<PreparedConv>,
}

impl FoldedBlock {
    fn new(block: &BasicBlock, winograd: Option<usize>) -> Self {
        Self {
            conv1: fold(&block.conv1, &block.bn1, winograd),
            conv2: fold(&block.conv2, &block.bn2, winograd),
            downsample: block
                .downsample
                .as_ref()
                .map(|d| fold(&d.conv, &d.bn, winograd)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let (out, identity) = match &self.downsample {
            // Both read `x`: side by side, so that neither waits for the other's last tasks.
            Some(d) => kernels::join(
                || self.conv1.forward(x.clone(), true),
                || d.forward(x.clone(), false),
            ),
            None => (self.conv1.forward(x.clone(), true), x),
        };
        self.conv2.forward_add_relu(out, identity)
    }
}

/// The feature extractor of a [`ResNet`] with its BatchNorms folded, for CPU inference (the
/// pooling, head and CAM stay the `ResNet`'s).
#[derive(Debug, Clone)]
pub struct FoldedFeatures {
    stem: PreparedConv,
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
            stem: fold(&model.conv1, &model.bn1, None),
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
        kernels::on_workers(|| {
            let x = kernels::max_pool(self.stem.forward(x, true));
            self.blocks.iter().fold(x, |x, block| block.forward(x))
        })
    }
}
