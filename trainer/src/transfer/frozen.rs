//! The frozen part of the pretrained ResNet-50: its outputs (pooled features or res4 maps) for
//! a list of images, computed once, and the images' mapping to Keras' "caffe" input range.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use burn::tensor::{Device, Tensor, TensorData};
use cxr::model::global_average_pool;

use super::imagenet::BGR_MEAN;
use super::resnet50::ResNet50;
use crate::data::Item;
use crate::loader::{Failures, Loader, LoaderConfig};
use cxr::classifier::batch_input;

/// What the frozen network gives for each image of `items`: the pooled 2048-d features
/// (`Pooled`) or the output of the first three stages (`Res4`), image after image, with the
/// labels and the per-image shape.
#[derive(Clone, Copy, PartialEq)]
pub enum Output {
    Pooled,
    Res4,
}

pub type Outputs = (Vec<f32>, Vec<u8>, Vec<usize>, Vec<String>);

/// A loader batch of preprocessed `[0, 1]` one-channel images in Keras' "caffe" range.
pub fn caffe_batch(pixels: Vec<f32>, n: usize, size: usize, device: &Device) -> Tensor<4> {
    let mean = BGR_MEAN.iter().sum::<f32>() / 3.0;
    batch_input(pixels, n, size, device) * 255.0 - mean
}

pub fn frozen_outputs(
    model: &ResNet50,
    root: &Path,
    items: &[Item],
    size: usize,
    what: Output,
    device: &Device,
) -> Result<Outputs> {
    let cfg = LoaderConfig {
        batch_size: 8,
        workers: 2,
        prefetch: 2,
        size,
    };
    let failures: Failures = Default::default();
    let (mut out, mut labels, mut shape, mut files) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let pb = indicatif::ProgressBar::new(items.len() as u64);
    for batch in Loader::start(
        root.to_path_buf(),
        items.to_vec(),
        &cfg,
        None,
        0,
        failures.clone(),
    ) {
        let n = batch.len();
        let x = caffe_batch(batch.pixels, n, size, device);
        let f = match what {
            Output::Pooled => {
                let pooled = global_average_pool(model.features(x));
                let [b, c] = pooled.dims();
                pooled.reshape([b, c, 1, 1])
            }
            Output::Res4 => model.features_until(x, 3),
        };
        shape = f.dims()[1..].to_vec();
        out.extend(
            f.into_data()
                .try_to_vec::<f32>()
                .map_err(|e| anyhow!("{e:?}"))?,
        );
        labels.extend(batch.labels);
        files.extend(batch.files);
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    let failed = failures.lock().map(|f| f.len()).unwrap_or(0);
    if failed > 0 {
        bail!("{failed} image(s) could not be read");
    }
    Ok((out, labels, shape, files))
}

/// res4 outputs of a set of images, one after the other, with their labels and file names.
pub struct Cached {
    pub x: Vec<f32>,
    pub y: Vec<u8>,
    pub files: Vec<String>,
    pub shape: [usize; 3],
}

impl Cached {
    pub fn compute(
        frozen: &ResNet50,
        root: &Path,
        items: &[Item],
        size: usize,
        device: &Device,
    ) -> Result<Self> {
        let (x, y, shape, files) = frozen_outputs(frozen, root, items, size, Output::Res4, device)?;
        let shape = match shape[..] {
            [c, h, w] => [c, h, w],
            _ => bail!("unexpected res4 output shape {shape:?}"),
        };
        Ok(Self { x, y, files, shape })
    }

    fn per(&self) -> usize {
        self.shape.iter().product()
    }

    /// The images `idx` as one batch tensor.
    pub fn batch(&self, idx: &[usize], device: &Device) -> Tensor<4> {
        let per = self.per();
        let mut xb = Vec::with_capacity(idx.len() * per);
        idx.iter()
            .for_each(|&i| xb.extend_from_slice(&self.x[i * per..(i + 1) * per]));
        let [c, h, w] = self.shape;
        Tensor::<4>::from_data(TensorData::new(xb, [idx.len(), c, h, w]), device)
    }
}
