//! The architecture's description and building a fresh model from it.

use burn::nn::pool::MaxPool2dConfig;
use burn::nn::{BatchNormConfig, LinearConfig, PaddingConfig2d};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::ResNet;
use super::blocks::{BasicBlock, Stage, conv};

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
