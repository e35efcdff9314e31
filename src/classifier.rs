//! Inference: a loaded model with its description, from file bytes to a [`Prediction`].
//! The same code runs in the trainer's `predict`/`evaluate` and in the browser.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::error::CxrError;
use crate::model::{FoldedFeatures, ResNet};
use crate::preprocess::{Preprocessed, preprocess};
use crate::weights::{self, ModelInfo};

/// The result for one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// Probability of effusion: calibrated when the model file has a calibration (see
    /// [`crate::calibration`]; it then holds at the prevalence it was fitted at), else the
    /// softmax of the two logits.
    pub probability: f32,
    /// `effusion` when `probability >= threshold`, else `nofinding`.
    pub label: String,
    /// The decision threshold, on the same scale as `probability`.
    pub threshold: f32,
    /// The softmax of the two logits, before calibration (the score the threshold was chosen on).
    pub uncalibrated_probability: f32,
    /// `[no finding, effusion]`.
    pub logits: [f32; 2],
    /// The effusion CAM, `cam_size * cam_size` values in `[0, 1]`, row-major.
    #[serde(skip)]
    pub cam: Vec<f32>,
    pub cam_size: usize,
    pub original_width: usize,
    pub original_height: usize,
    /// Whether the image looks unlike a frontal chest X-ray (`None` when the model file has no
    /// gate): the prediction is then not to be trusted.
    pub ood: Option<bool>,
    /// The gate's distance of this image from the training X-rays, and its threshold.
    pub ood_distance: Option<f32>,
    pub ood_threshold: Option<f32>,
}

/// What one forward pass leaves on the device: logits, CAM and pooled features.
pub struct RawOutput {
    pub logits: Tensor<2>,
    pub cam: Tensor<3>,
    pub features: Tensor<2>,
}

/// Softmax probability of class 1 from two logits.
pub fn effusion_probability(logits: [f32; 2]) -> f32 {
    1.0 / (1.0 + (logits[0] - logits[1]).exp())
}

/// A model ready to classify.
#[derive(Debug)]
pub struct Classifier {
    model: ResNet,
    /// On the CPU: the features computed by the project's fused kernels, BatchNorms folded once
    /// here (`None` on other devices, which keep burn's operations).
    folded: Option<FoldedFeatures>,
    info: ModelInfo,
    device: Device,
}

impl Classifier {
    /// Wrap a model in inference mode.
    pub fn new(model: ResNet, info: ModelInfo, device: Device) -> Self {
        let model = model.valid();
        let folded = (device == Device::flex()).then(|| FoldedFeatures::new(&model));
        Self {
            model,
            folded,
            info,
            device,
        }
    }

    /// Load a `.cxrw` weight file's bytes onto `device`.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self, CxrError> {
        let (model, info) = weights::decode(bytes, device)?;
        Ok(Self::new(model, info, device.clone()))
    }

    /// The model embedded in this crate.
    pub fn embedded(device: &Device) -> Result<Self, CxrError> {
        Self::from_bytes(crate::embedded::MODEL, device)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn model(&self) -> &ResNet {
        &self.model
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Last-stage features of an input batch: the fused CPU kernels on the CPU, burn's
    /// operations elsewhere.
    pub fn features(&self, x: Tensor<4>) -> Tensor<4> {
        match &self.folded {
            Some(folded) => folded.forward(x),
            None => self.model.features(x),
        }
    }

    /// Decode and preprocess a file for this model.
    pub fn preprocess(&self, bytes: &[u8]) -> Result<Preprocessed, CxrError> {
        Ok(preprocess(bytes, self.info.input_size)?)
    }

    /// Run the model with CAM on a preprocessed image; returns the tensors still on the device
    /// (read them with [`Self::finish`], or asynchronously in the browser).
    pub fn run(&self, input: &Preprocessed) -> RawOutput {
        let s = self.info.input_size;
        assert_eq!(input.pixels.len(), s * s, "input is not {s}x{s}");
        let x = batch_input(input.pixels.clone(), 1, s, &self.device);
        let (logits, cam, features) = self.model.outputs_from_features(self.features(x), [s, s]);
        RawOutput {
            logits,
            cam,
            features,
        }
    }

    /// Build the prediction from the logits, CAM and features read back from the device.
    pub fn finish(
        &self,
        input: &Preprocessed,
        logits: TensorData,
        cam: TensorData,
        features: TensorData,
    ) -> Result<Prediction, CxrError> {
        let features = features
            .try_to_vec::<f32>()
            .map_err(|e| CxrError::Inference(format!("{e:?}")))?;
        let gate = self.info.ood.as_ref();
        let ood_distance = gate.map(|g| g.distance(&features));
        let logits = logits
            .try_to_vec::<f32>()
            .map_err(|e| CxrError::Inference(format!("{e:?}")))?;
        let cam = cam
            .try_to_vec::<f32>()
            .map_err(|e| CxrError::Inference(format!("{e:?}")))?;
        if logits.len() != 2 || logits.iter().any(|v| !v.is_finite()) {
            return Err(CxrError::Inference(format!("unexpected logits {logits:?}")));
        }
        let logits = [logits[0], logits[1]];
        let (probability, threshold) = self.calibrated(logits);
        let score = effusion_probability(logits);
        Ok(Prediction {
            probability,
            // Decided on the raw score, as the threshold was chosen: the same decisions with or
            // without calibration, whatever the rounding of the calibrated values.
            label: self.info.class_names[usize::from(score >= self.info.threshold)].clone(),
            threshold,
            uncalibrated_probability: score,
            logits,
            cam,
            cam_size: self.info.input_size,
            original_width: input.original_width,
            original_height: input.original_height,
            ood: gate.map(|g| g.flags(&features)),
            ood_distance,
            ood_threshold: gate.map(|g| g.threshold),
        })
    }

    /// The probability of effusion and the threshold on its scale: calibrated when the file has
    /// a calibration, else the softmax and the stored threshold unchanged.
    fn calibrated(&self, logits: [f32; 2]) -> (f32, f32) {
        match &self.info.calibration {
            Some(c) => (
                c.probability_of_logit(f64::from(logits[1]) - f64::from(logits[0])) as f32,
                c.probability(f64::from(self.info.threshold)) as f32,
            ),
            None => (effusion_probability(logits), self.info.threshold),
        }
    }

    /// A calibrated probability read at another prevalence of effusion (a fraction in (0, 1)),
    /// by Bayes' rule from the prevalence it was calibrated at. `None` for an uncalibrated model
    /// (its probability holds at no known prevalence) or values out of range.
    pub fn probability_at_prevalence(&self, probability: f64, prevalence: f64) -> Option<f64> {
        let c = self.info.calibration.as_ref()?;
        crate::calibration::at_prevalence(probability, c.prevalence, prevalence)
    }

    /// Classify one file (synchronous; CPU backends and native use).
    pub fn classify(&self, bytes: &[u8]) -> Result<Prediction, CxrError> {
        let input = self.preprocess(bytes)?;
        let out = self.run(&input);
        self.finish(
            &input,
            out.logits.into_data(),
            out.cam.into_data(),
            out.features.into_data(),
        )
    }

    /// Logits `[no finding, effusion]` for a batch of preprocessed images (no CAM).
    pub fn logits(&self, images: &[&[f32]]) -> Vec<[f32; 2]> {
        let (n, s) = (images.len(), self.info.input_size);
        if n == 0 {
            return Vec::new();
        }
        let x = batch_input(images.concat(), n, s, &self.device);
        read_rows(self.model.classify_features(self.features(x)))
            .into_iter()
            .map(|r| [r[0], r[1]])
            .collect()
    }
}

/// `n` preprocessed `size x size` images laid end to end, as one `[n, 1, size, size]` batch: the
/// one place the model's input tensor is built.
pub fn batch_input(pixels: Vec<f32>, n: usize, size: usize, device: &Device) -> Tensor<4> {
    assert_eq!(
        pixels.len(),
        n * size * size,
        "inputs are not {n} images of {size}x{size}"
    );
    Tensor::from_data(TensorData::new(pixels, [n, 1, size, size]), device)
}

/// The rows of an `[n, d]` output; a failed read from the device gives NaN rows rather than a
/// panic.
fn read_rows(output: Tensor<2>) -> Vec<Vec<f32>> {
    let [n, d] = output.dims();
    let values = output
        .into_data()
        .try_to_vec::<f32>()
        .unwrap_or_else(|_| vec![f32::NAN; n * d]);
    values.chunks_exact(d.max(1)).map(<[f32]>::to_vec).collect()
}

/// Logits `[no finding, effusion]` of `n` preprocessed `size x size` images laid end to end.
/// A failed read from the device gives NaN logits, one pair per image, rather than a panic.
pub fn batch_logits(
    model: &ResNet,
    pixels: Vec<f32>,
    n: usize,
    size: usize,
    device: &Device,
) -> Vec<[f32; 2]> {
    if n == 0 {
        return Vec::new();
    }
    read_rows(model.forward(batch_input(pixels, n, size, device)))
        .into_iter()
        .map(|r| [r[0], r[1]])
        .collect()
}

/// Pooled last-stage features (the not-a-chest-X-ray gate's input) of `n` preprocessed
/// images laid end to end, one row per image; NaN rows where the device read fails.
pub fn batch_features(
    model: &ResNet,
    pixels: Vec<f32>,
    n: usize,
    size: usize,
    device: &Device,
) -> Vec<Vec<f32>> {
    if n == 0 {
        return Vec::new();
    }
    read_rows(model.pooled_features(model.features(batch_input(pixels, n, size, device))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ResNetConfig;
    use image::{DynamicImage, ImageBuffer, ImageFormat, Luma};

    fn tiny_classifier(size: usize) -> Classifier {
        let device = Device::flex();
        let arch = ResNetConfig::tiny();
        let mut info = ModelInfo::new("tiny", arch.clone());
        info.input_size = size;
        Classifier::new(arch.init(&device), info, device)
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = DynamicImage::ImageLuma8(ImageBuffer::from_fn(w, h, |x, y| {
            Luma([((x * 7 + y * 3) % 251) as u8])
        }));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn probability_is_the_softmax_of_the_logits() {
        assert_eq!(effusion_probability([0.0, 0.0]), 0.5);
        let p = effusion_probability([1.0, 3.0]);
        let e = 3f32.exp() / (1f32.exp() + 3f32.exp());
        assert!((p - e).abs() < 1e-6);
        assert!(effusion_probability([-1000.0, 1000.0]) == 1.0);
    }

    #[test]
    fn classify_gives_a_full_prediction() {
        let c = tiny_classifier(32);
        let p = c.classify(&png(50, 40)).unwrap();
        assert!((0.0..=1.0).contains(&p.probability));
        assert_eq!(p.label == "effusion", p.probability >= p.threshold);
        assert_eq!(p.cam.len(), 32 * 32);
        assert_eq!((p.original_width, p.original_height), (50, 40));
        assert!((p.probability - effusion_probability(p.logits)).abs() < 1e-6);
        let batch = c.logits(&[&c.preprocess(&png(50, 40)).unwrap().pixels]);
        assert!(
            (batch[0][0] - p.logits[0]).abs() < 1e-4 && (batch[0][1] - p.logits[1]).abs() < 1e-4
        );
    }

    #[test]
    fn a_calibration_changes_the_probability_not_the_decision() {
        use crate::calibration::{Calibration, Method};
        let mut c = tiny_classifier(32);
        let raw = c.classify(&png(50, 40)).unwrap();
        assert_eq!(raw.probability, raw.uncalibrated_probability);
        assert_eq!(c.probability_at_prevalence(0.5, 0.1), None);
        // A threshold just under the raw score: effusion before and after.
        c.info.threshold = raw.probability * 0.999;
        let calibration = Calibration {
            method: Method::Platt,
            slope: 0.5,
            intercept: -1.0,
            prevalence: 0.5,
        };
        c.info.calibration = Some(calibration);
        let p = c.classify(&png(50, 40)).unwrap();
        let z = f64::from(p.logits[1]) - f64::from(p.logits[0]);
        assert!((f64::from(p.probability) - calibration.probability_of_logit(z)).abs() < 1e-6);
        assert!((p.uncalibrated_probability - raw.probability).abs() < 1e-6);
        assert!(
            (f64::from(p.threshold) - calibration.probability(f64::from(c.info.threshold))).abs()
                < 1e-6
        );
        assert_eq!(p.label, "effusion");
        assert!(p.probability >= p.threshold && p.probability != raw.probability);
        let at_10 = c.probability_at_prevalence(0.5, 0.1).unwrap();
        assert!((at_10 - 0.1).abs() < 1e-9);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let c = tiny_classifier(32);
        let err = c.classify(b"").unwrap_err();
        assert_eq!(err.code(), "empty");
        assert_eq!(
            c.classify(b"definitely not an image").unwrap_err().code(),
            "unsupported_format"
        );
    }
}
