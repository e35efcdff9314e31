//! The weight file: a model together with its description, in one file.
//!
//! Layout (`.cxrw`): `b"CXRW"`, format version (u32 LE), length of the JSON description (u32 LE),
//! the JSON [`ModelInfo`], then the parameters as a burn record (burnpack) in f16. Loading builds
//! the architecture the description names and refuses weights that do not fit it.

use burn::module::{Module, ModuleMapper, Param};
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::WeightsError;
use crate::model::{ResNet, ResNetConfig};
use crate::model_card::ModelCard;

const MAGIC: &[u8; 4] = b"CXRW";
/// Version of the file layout this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Largest accepted description, to refuse a damaged length field early.
const MAX_INFO_BYTES: usize = 1 << 20;

/// Logits the exporter recorded for a bundled sample image, so a runtime can check that its
/// backend computes the same thing (the page's start-up self-test).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// File name of the sample, as bundled with the page.
    pub sample: String,
    /// Logits `[no finding, effusion]` computed at export on the CPU backend.
    pub logits: Vec<f32>,
}

/// Everything a runtime needs to know about a model besides its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Short human-readable name.
    pub name: String,
    pub architecture: ResNetConfig,
    /// Side of the square input, in pixels.
    pub input_size: usize,
    /// Decision threshold on the effusion probability.
    pub threshold: f32,
    /// Names of the logits in order (`nofinding`, `effusion`).
    pub class_names: Vec<String>,
    #[serde(default)]
    pub reference: Option<Reference>,
    /// The not-a-chest-X-ray gate fitted at export (absent in older files).
    #[serde(default)]
    pub ood: Option<crate::ood::OodGate>,
    /// The mapping from logits to a calibrated probability (absent: the raw softmax, as in
    /// files written before calibration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<crate::calibration::Calibration>,
    /// The model card (metrics, data, training command, date, gate measurements).
    #[serde(
        default,
        deserialize_with = "crate::model_card::null_as_default",
        serialize_with = "crate::model_card::as_json_value"
    )]
    pub card: ModelCard,
}

impl ModelInfo {
    /// A description with the defaults: 256x256 input, threshold 0.5, the two class names.
    pub fn new(name: impl Into<String>, architecture: ResNetConfig) -> Self {
        Self {
            name: name.into(),
            architecture,
            input_size: 256,
            threshold: 0.5,
            class_names: vec!["nofinding".into(), "effusion".into()],
            reference: None,
            ood: None,
            calibration: None,
            card: ModelCard::default(),
        }
    }

    fn validate(&self) -> Result<(), WeightsError> {
        self.architecture.validate().map_err(WeightsError::Config)?;
        if !(16..=2048).contains(&self.input_size) {
            return Err(WeightsError::Config(format!(
                "input size {} is outside 16..=2048",
                self.input_size
            )));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(WeightsError::Config(format!(
                "threshold {} is outside [0, 1]",
                self.threshold
            )));
        }
        if self.class_names.len() != self.architecture.num_classes {
            return Err(WeightsError::Config(format!(
                "{} class names for {} classes",
                self.class_names.len(),
                self.architecture.num_classes
            )));
        }
        if let Some(problem) = self.calibration.as_ref().and_then(|c| c.problem()) {
            return Err(WeightsError::Config(problem));
        }
        if let Some(gate) = &self.ood {
            let d = self.architecture.feature_width();
            if gate.mean.len() != d || gate.whitening.len() != d * d || !gate.threshold.is_finite()
            {
                return Err(WeightsError::Config(format!(
                    "the not-a-chest-X-ray gate is for {} features; the architecture has {d}",
                    gate.mean.len()
                )));
            }
        }
        Ok(())
    }
}

/// Casts every float parameter to one dtype.
struct CastTo(DType);

impl ModuleMapper for CastTo {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

/// `module` with every float parameter cast to f16, as weight files store them. The mapping can
/// reach parameters that `module` shares with its clones: pass a module nothing else still uses.
pub fn to_f16<M: Module>(module: M) -> M {
    module.map(&mut CastTo(DType::F16))
}

/// Serialise a model and its description (parameters stored as f16).
pub fn encode(model: ResNet, info: &ModelInfo) -> Result<Vec<u8>, WeightsError> {
    info.validate()?;
    let json = serde_json::to_vec(info).map_err(|e| WeightsError::Config(e.to_string()))?;
    // Cast an independent copy: mapping a module can reach parameters it shares with clones of
    // itself, and the caller's model must stay f32.
    let copy = info
        .architecture
        .init(&Device::flex())
        .try_load_record(model.into_record())
        .map_err(|e| WeightsError::Mismatch(e.to_string()))?;
    let pack = to_f16(copy)
        .into_record()
        .into_bytes()
        .map_err(|e| WeightsError::Io(e.to_string()))?;
    let mut out = Vec::with_capacity(12 + json.len() + pack.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&pack);
    Ok(out)
}

/// The weight file `bytes` with its description replaced by `info` and its parameters kept
/// byte for byte (to record a calibration without touching the weights).
pub fn replace_description(bytes: &[u8], info: &ModelInfo) -> Result<Vec<u8>, WeightsError> {
    let (old, pack) = split(bytes)?;
    info.validate()?;
    if info.architecture != old.architecture {
        return Err(WeightsError::Mismatch(
            "the new description names another architecture than the weights".into(),
        ));
    }
    let json = serde_json::to_vec(info).map_err(|e| WeightsError::Config(e.to_string()))?;
    let mut out = Vec::with_capacity(12 + json.len() + pack.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(pack);
    Ok(out)
}

/// Read only the description of a weight file.
pub fn read_info(bytes: &[u8]) -> Result<ModelInfo, WeightsError> {
    split(bytes).map(|(info, _)| info)
}

fn split(bytes: &[u8]) -> Result<(ModelInfo, &[u8]), WeightsError> {
    let (description, pack) = description_json(bytes)?;
    let info: ModelInfo =
        serde_json::from_slice(description).map_err(|e| WeightsError::Config(e.to_string()))?;
    info.validate()?;
    Ok((info, pack))
}

/// A weight file's header checked, split into the description's JSON and the parameters.
pub(crate) fn description_json(bytes: &[u8]) -> Result<(&[u8], &[u8]), WeightsError> {
    if bytes.len() < 12 {
        return Err(if bytes.starts_with(MAGIC) || bytes.is_empty() {
            WeightsError::Truncated(format!("{} bytes", bytes.len()))
        } else {
            WeightsError::BadMagic
        });
    }
    if &bytes[..4] != MAGIC {
        return Err(WeightsError::BadMagic);
    }
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let version = word(4);
    if version != FORMAT_VERSION {
        return Err(WeightsError::Version {
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    let len = word(8) as usize;
    if len > MAX_INFO_BYTES || 12 + len > bytes.len() {
        return Err(WeightsError::Truncated(format!(
            "description of {len} bytes in a file of {} bytes",
            bytes.len()
        )));
    }
    Ok((&bytes[12..12 + len], &bytes[12 + len..]))
}

/// Build the architecture a weight file describes, on `device`, and load its parameters (as f32).
///
/// The f16 → f32 conversion happens on the CPU: not every GPU (nor WebGPU adapter) has f16
/// shaders, so only f32 tensors are moved to `device`.
pub fn decode(bytes: &[u8], device: &Device) -> Result<(ResNet, ModelInfo), WeightsError> {
    let (info, pack) = split(bytes)?;
    if pack.is_empty() {
        return Err(WeightsError::Truncated(
            "no parameters after the description".into(),
        ));
    }
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(pack.to_vec()))
        .map_err(|e| WeightsError::Truncated(e.to_string()))?;
    let cpu = Device::flex();
    let model = info
        .architecture
        .init(&cpu)
        .try_load_record(record)
        .map_err(|e| WeightsError::Mismatch(e.to_string()))?
        .map(&mut CastTo(DType::F32));
    let model = if *device == cpu {
        model
    } else {
        model.to_device(device)
    };
    Ok((model, info))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn tiny() -> ResNetConfig {
        ResNetConfig::tiny()
    }

    /// A weight file with `info` as its description and `pack` as its parameters.
    fn forge(info: &ModelInfo, pack: &[u8]) -> Vec<u8> {
        let json = serde_json::to_vec(info).unwrap();
        let mut forged = b"CXRW".to_vec();
        forged.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        forged.extend_from_slice(&(json.len() as u32).to_le_bytes());
        forged.extend_from_slice(&json);
        forged.extend_from_slice(pack);
        forged
    }

    #[test]
    fn round_trip_keeps_outputs_within_f16_precision() {
        let device = Device::flex();
        let model = tiny().init(&device);
        let x = Tensor::<4>::random([2, 1, 32, 32], Distribution::Uniform(0.0, 1.0), &device);
        let before = model
            .forward(x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let mut info = ModelInfo::new("tiny", tiny());
        info.threshold = 0.3;
        info.input_size = 32;
        let bytes = encode(model, &info).unwrap();
        let (loaded, read) = decode(&bytes, &device).unwrap();
        assert_eq!(read, info);
        let after = loaded.forward(x).into_data().try_to_vec::<f32>().unwrap();
        for (a, b) in before.iter().zip(&after) {
            assert!((a - b).abs() < 1e-2 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn encoding_leaves_the_callers_model_in_f32() {
        let device = Device::flex();
        let model = tiny().init(&device);
        encode(model.clone(), &ModelInfo::new("tiny", tiny())).unwrap();
        let record = model.clone().into_record().into_bytes().unwrap();
        let reloaded = tiny()
            .init(&device)
            .try_load_record(ModuleRecord::from_bytes(record).unwrap())
            .unwrap();
        let x = Tensor::<4>::random([1, 1, 32, 32], Distribution::Uniform(0.0, 1.0), &device);
        assert_eq!(reloaded.forward(x.clone()).dtype(), DType::F32);
        assert_eq!(
            reloaded
                .forward(x.clone())
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
            model.forward(x).into_data().try_to_vec::<f32>().unwrap()
        );
    }

    #[test]
    fn parameters_are_stored_in_f16() {
        let device = Device::flex();
        let model = tiny().init(&device);
        let params = model.num_params();
        let bytes = encode(model, &ModelInfo::new("tiny", tiny())).unwrap();
        // 2 bytes a parameter plus headers; f32 would need twice as much.
        assert!(
            bytes.len() < params * 2 + 16 * 1024,
            "{} bytes for {params} params",
            bytes.len()
        );
    }

    #[test]
    fn architecture_mismatch_is_a_clear_error() {
        let device = Device::flex();
        let bytes = encode(tiny().init(&device), &ModelInfo::new("tiny", tiny())).unwrap();
        // Rewrite the description to claim other widths: the shapes no longer fit.
        let (mut info, pack) = split(&bytes).unwrap();
        info.architecture.widths = vec![4, 16];
        let err = decode(&forge(&info, pack), &device).unwrap_err();
        assert!(matches!(err, WeightsError::Mismatch(_)), "{err:?}");
        // A deeper architecture has parameters the file lacks.
        info.architecture.widths = vec![4, 8];
        info.architecture.depths = vec![1, 2];
        assert!(matches!(
            decode(&forge(&info, pack), &device),
            Err(WeightsError::Mismatch(_))
        ));
    }

    #[test]
    fn a_replaced_description_keeps_the_parameters_and_checks_the_calibration() {
        use crate::calibration::{Calibration, Method};
        let device = Device::flex();
        let info = ModelInfo::new("tiny", tiny());
        let bytes = encode(tiny().init(&device), &info).unwrap();
        let mut calibrated = info.clone();
        calibrated.calibration = Some(Calibration {
            method: Method::Platt,
            slope: 0.7,
            intercept: -0.2,
            prevalence: 0.5,
        });
        let replaced = replace_description(&bytes, &calibrated).unwrap();
        assert_eq!(read_info(&replaced).unwrap(), calibrated);
        let (_, old_pack) = description_json(&bytes).unwrap();
        let (_, new_pack) = description_json(&replaced).unwrap();
        assert_eq!(old_pack, new_pack);
        // A file without calibration keeps its description JSON free of the field.
        assert!(
            !String::from_utf8_lossy(description_json(&bytes).unwrap().0).contains("calibration")
        );
        let mut bad = calibrated.clone();
        bad.calibration.as_mut().unwrap().slope = -1.0;
        assert!(matches!(
            replace_description(&bytes, &bad),
            Err(WeightsError::Config(_))
        ));
        assert!(matches!(
            decode(&forge(&bad, new_pack), &device),
            Err(WeightsError::Config(_))
        ));
        let mut other = calibrated;
        other.architecture.widths = vec![4, 16];
        assert!(matches!(
            replace_description(&bytes, &other),
            Err(WeightsError::Mismatch(_))
        ));
    }

    #[test]
    fn damaged_files_are_refused() {
        let device = Device::flex();
        let bytes = encode(tiny().init(&device), &ModelInfo::new("tiny", tiny())).unwrap();
        assert_eq!(
            decode(b"PNG?", &device).unwrap_err(),
            WeightsError::BadMagic
        );
        assert!(matches!(
            decode(&bytes[..8], &device),
            Err(WeightsError::Truncated(_))
        ));
        assert!(matches!(
            decode(&bytes[..bytes.len() / 2], &device),
            Err(WeightsError::Truncated(_))
        ));
        let mut v2 = bytes.clone();
        v2[4] = 2;
        assert_eq!(
            decode(&v2, &device).unwrap_err(),
            WeightsError::Version {
                found: 2,
                expected: 1
            }
        );
        let mut bad_json = bytes.clone();
        bad_json[12] = b'#';
        assert!(matches!(
            decode(&bad_json, &device),
            Err(WeightsError::Config(_))
        ));
    }
}
