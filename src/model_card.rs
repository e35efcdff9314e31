//! The model card stored in a weight file's description ([`crate::ModelInfo::card`]): the
//! validation figures, the training data and options, the not-a-chest-X-ray gate's measurements.
//!
//! Every field has a default (`#[serde(default)]`), so a card from an older file, or none at all
//! (`null`), still loads; figures a file does not record are `None` (shown as "n/a").

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The model card.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelCard {
    /// The training epoch whose weights these are (chosen by best validation AUC).
    pub epoch: Option<usize>,
    /// Date of training, YYYY-MM-DD.
    pub date: Option<String>,
    /// Number of parameters (recorded at export).
    pub parameters: Option<u64>,
    pub validation: Validation,
    pub training: Training,
    /// The not-a-chest-X-ray gate's measurements (recorded at export).
    pub ood: Option<OodCard>,
    /// How the probability was calibrated and what that changed (`None`: uncalibrated; the
    /// parameters themselves are [`crate::ModelInfo::calibration`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationCard>,
    /// The training recipe's cross-validation: what models trained this way score on images
    /// they never saw (`None`: not cross-validated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_validation: Option<CrossValidationCard>,
}

/// Figures of a K-fold cross-validation of the recipe that trained the model (`trainer
/// calibrate --cv`): every fold's model, epoch and threshold chosen inside the fold, its
/// held-out images scored, all folds pooled.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CrossValidationCard {
    /// The recipe cross-validated, in words.
    pub recipe: String,
    /// The cv folder the figures come from.
    pub source: String,
    pub folds: usize,
    pub repeats: usize,
    /// Images pooled, and those with effusion among them.
    pub images: usize,
    pub effusion: usize,
    /// Groups of likely same-patient films kept in one fold.
    pub groups: usize,
    /// Pooled out-of-fold AUC with its bootstrap 95 % CI.
    pub auc: Option<f64>,
    pub auc_ci95: Option<(f64, f64)>,
    pub fold_aucs: Vec<Option<f64>>,
    /// Each fold scored at its own threshold, the confusion summed over folds.
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
}

/// What the calibration was fitted on and how well calibrated the probability is before and
/// after, on those same images.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CalibrationCard {
    /// Which held-out scores, in words (e.g. "the 160 validation images' scores of this model").
    pub fitted_on: String,
    pub images: usize,
    /// Images with effusion among them.
    pub effusion: usize,
    /// The command that fitted it.
    pub command: Option<String>,
    /// Reliability (equal-width bins) and ECE of the raw softmax probability.
    pub before: crate::calibration::Reliability,
    /// The same of the calibrated probability (fitted and measured on the same images).
    pub after: crate::calibration::Reliability,
    /// The same when each fifth of the images is calibrated by a fit on the other four fifths
    /// ([`crate::calibration::cross_fitted`]): the honest estimate on unseen images.
    pub after_cross_fitted: Option<crate::calibration::Reliability>,
    /// The raw threshold's calibrated value (the decisions are the same).
    pub threshold: Option<f64>,
    /// Sensitivity and specificity at the threshold on these images, the same before and after.
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
    /// When the fit used other models' scores (a cross-validation's out-of-fold ones): the same
    /// measures on this model's own held-out images, which the fit never saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<CalibrationCheck>,
}

/// Reliability of this model's raw and calibrated probability on images the fit did not use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CalibrationCheck {
    /// Which images, in words.
    pub images_are: String,
    pub images: usize,
    pub effusion: usize,
    pub before: crate::calibration::Reliability,
    pub after: crate::calibration::Reliability,
}

/// Figures on the validation split, at the stored threshold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Validation {
    pub images: Option<usize>,
    /// Images with effusion among them.
    pub effusion: Option<usize>,
    pub auc: Option<f64>,
    pub auc_ci95: Option<(f64, f64)>,
    pub threshold: Option<f64>,
    /// How the threshold was chosen.
    pub threshold_rule: Option<String>,
    pub accuracy: Option<f64>,
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
    pub confusion: Option<Confusion>,
    /// The validation files, relative to the data folder.
    pub files: Vec<String>,
    /// Which weights the figures were measured with (e.g. "exported f16 weights").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
}

/// Confusion matrix at the threshold (predicted positive when `score >= threshold`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
}

impl Confusion {
    pub fn at(scores: &[f32], labels: &[u8], threshold: f32) -> Self {
        let mut c = Confusion {
            tp: 0,
            fp: 0,
            tn: 0,
            fn_: 0,
        };
        for (&s, &l) in scores.iter().zip(labels) {
            match (s >= threshold, l == 1) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        c
    }

    fn ratio(a: usize, b: usize) -> f64 {
        if a + b == 0 {
            f64::NAN
        } else {
            a as f64 / (a + b) as f64
        }
    }

    pub fn accuracy(&self) -> f64 {
        Self::ratio(self.tp + self.tn, self.fp + self.fn_)
    }

    /// True-positive rate (recall of effusion).
    pub fn sensitivity(&self) -> f64 {
        Self::ratio(self.tp, self.fn_)
    }

    /// True-negative rate.
    pub fn specificity(&self) -> f64 {
        Self::ratio(self.tn, self.fp)
    }
}

/// The training data and how the model was trained.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Training {
    pub images: Option<usize>,
    pub effusion: Option<usize>,
    pub nofinding: Option<usize>,
    /// "folder per class" or the NIH layout.
    pub data_layout: Option<String>,
    /// The trainer's options (their type belongs to the trainer).
    pub options: serde_json::Value,
    /// The command line that trained the model (recorded at export).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// How the not-a-chest-X-ray gate was chosen and what it was measured to do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OodCard {
    pub method: String,
    pub chosen: Option<GateMeasurement>,
    pub candidates: Vec<GateMeasurement>,
    pub negatives_folder: String,
    pub negatives_unreadable: Vec<String>,
    pub rule: String,
}

/// One candidate gate's measured rates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GateMeasurement {
    pub shrinkage: f64,
    pub threshold: f32,
    pub validation_flagged: usize,
    pub validation_images: usize,
    pub negatives_caught: usize,
    pub negatives: usize,
    /// Names of the non-X-rays the gate let through.
    pub missed: Vec<String>,
}

impl GateMeasurement {
    pub fn false_flag_rate(&self) -> f64 {
        self.validation_flagged as f64 / self.validation_images.max(1) as f64
    }

    pub fn catch_rate(&self) -> f64 {
        self.negatives_caught as f64 / self.negatives.max(1) as f64
    }
}

/// The card written as its JSON value: its f32 figures then appear as the f64 a JSON reader
/// parses them to (as in the files written before the card was typed), so reading the card back
/// untyped gives exactly the typed card's numbers.
pub(crate) fn as_json_value<S: Serializer>(card: &ModelCard, s: S) -> Result<S::Ok, S::Error> {
    serde_json::to_value(card)
        .map_err(serde::ser::Error::custom)?
        .serialize(s)
}

/// A card that is `null` in the file (descriptions written without one) loads as the default.
pub(crate) fn null_as_default<'de, D: Deserializer<'de>>(d: D) -> Result<ModelCard, D::Error> {
    Ok(Option::<ModelCard>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The card embedded in the shipped model, as the untyped JSON the file holds.
    fn embedded_card_json() -> serde_json::Value {
        let (description, _) = crate::weights::description_json(crate::embedded::MODEL).unwrap();
        let info: serde_json::Value = serde_json::from_slice(description).unwrap();
        info["card"].clone()
    }

    #[test]
    fn the_shipped_model_card_loads_through_the_typed_card() {
        let info = crate::weights::read_info(crate::embedded::MODEL).unwrap();
        let raw = embedded_card_json();
        let card = &info.card;
        assert_eq!(card.validation.auc, raw["validation"]["auc"].as_f64());
        assert!(
            card.validation
                .auc
                .is_some_and(|a| (0.5..=1.0).contains(&a))
        );
        assert_eq!(
            card.validation.threshold,
            raw["validation"]["threshold"].as_f64()
        );
        assert!(card.validation.threshold.is_some());
        assert_eq!(
            card.validation.files.len(),
            raw["validation"]["files"].as_array().unwrap().len()
        );
        assert!(!card.validation.files.is_empty());
        assert_eq!(card.validation.images, Some(card.validation.files.len()));
        assert!(card.ood.as_ref().is_some_and(|o| o.chosen.is_some()));
        // Nothing is lost: the typed card writes back the JSON it was read from.
        assert_eq!(serde_json::to_value(card).unwrap(), raw);
    }

    #[test]
    fn missing_or_null_cards_load_as_empty() {
        let card: ModelCard = serde_json::from_str("{}").unwrap();
        assert_eq!(card, ModelCard::default());
        let card: ModelCard = serde_json::from_str(r#"{"validation": {"auc": 0.8}}"#).unwrap();
        assert_eq!(card.validation.auc, Some(0.8));
        let card = null_as_default(serde_json::Value::Null).unwrap();
        assert_eq!(card, ModelCard::default());
    }
}
