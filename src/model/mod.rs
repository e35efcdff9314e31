//! A ResNet of BasicBlocks for one-channel X-rays, with a class activation map (CAM) for the
//! effusion class computed from the same forward pass.

mod blocks;
mod config;
mod folded;
mod kernel;
#[cfg(test)]
mod tests;
mod torchvision;

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, Linear};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Tensor, activation::relu, s};

pub use blocks::{BasicBlock, Downsample, Stage};
pub use config::ResNetConfig;
pub use folded::FoldedFeatures;
pub use kernel::ConvKernel;
pub use torchvision::NamedTensor;

use kernel::conv_with;

/// Index of the "no finding" logit.
pub const CLASS_NO_FINDING: usize = 0;
/// Index of the "effusion" logit.
pub const CLASS_EFFUSION: usize = 1;

/// The mean of each channel over its feature map: `[b, c, h, w]` → `[b, c]`.
pub fn global_average_pool(features: Tensor<4>) -> Tensor<2> {
    let [b, c, _, _] = features.dims();
    features.mean_dim(3).mean_dim(2).reshape([b, c])
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
        let [_, _, h, w] = x.dims();
        self.outputs_from_features(self.features(x), [h, w])
    }

    /// Logits, the effusion CAM at `input_size` and the pooled features from last-stage
    /// features (however they were computed: see [`FoldedFeatures`]).
    pub fn outputs_from_features(
        &self,
        features: Tensor<4>,
        input_size: [usize; 2],
    ) -> (Tensor<2>, Tensor<3>, Tensor<2>) {
        let [h, w] = input_size;
        let b = features.dims()[0];
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
