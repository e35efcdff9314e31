//! A streaming validation session: the page's validation mode adds one scored file at a time
//! (its label, probability and not-a-chest-X-ray flag) and never an image, so memory grows by a
//! few bytes per file; the summary (AUC with its bootstrap CI, ROC, confusion and rates at a
//! threshold) comes from [`crate::metrics`], the code `trainer evaluate` reports with.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::metrics::{self, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, Report};
use crate::plots;

/// A file that could not be scored, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub file: String,
    /// Machine-readable kind (the classifier's error code, e.g. `corrupt`).
    pub code: String,
    /// The message shown to the user.
    pub message: String,
}

/// Unreadable files grouped by their message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnreadableGroup {
    pub code: String,
    pub message: String,
    pub count: usize,
    /// The first few files with this message.
    pub files: Vec<String>,
}

/// Files named per group in a [`Summary`] (all of them are in [`Session::unreadable`]).
const FILES_PER_GROUP: usize = 3;

/// The figures of a session at one threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The figures `trainer evaluate` reports (images, positives, AUC, CI, threshold, accuracy,
    /// sensitivity, specificity, confusion).
    #[serde(flatten)]
    pub report: Report,
    /// The threshold stored in the model.
    pub model_threshold: f32,
    /// ROC points (false-positive rate, sensitivity), from (0, 0) to (1, 1).
    pub roc: Vec<(f64, f64)>,
    pub unreadable: usize,
    pub unreadable_reasons: Vec<UnreadableGroup>,
    /// Scored files the not-a-chest-X-ray gate flagged (they count in the figures, as in
    /// `trainer evaluate`).
    pub ood_flagged: usize,
}

/// Scores and labels of the files seen so far; see the module documentation.
#[derive(Debug, Clone)]
pub struct Session {
    model_threshold: f32,
    scores: Vec<f32>,
    labels: Vec<u8>,
    unreadable: Vec<Unreadable>,
    ood_flagged: usize,
    /// The bootstrap CI of the current scores, once computed (it does not depend on the
    /// threshold, and it is the costly part).
    ci: Option<Option<(f64, f64)>>,
}

/// A scored file that cannot be added.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SessionError {
    #[error("label {0} is neither 0 (no finding) nor 1 (effusion)")]
    Label(u8),
    #[error("probability {0} is not in [0, 1]")]
    Probability(f32),
}

impl Session {
    pub fn new(model_threshold: f32) -> Self {
        Self {
            model_threshold,
            scores: Vec::new(),
            labels: Vec::new(),
            unreadable: Vec::new(),
            ood_flagged: 0,
            ci: None,
        }
    }

    /// Add a scored file: its label (1 = effusion), the model's probability, and whether the
    /// gate flagged it (`None` without a gate).
    pub fn add_scored(
        &mut self,
        label: u8,
        probability: f32,
        ood: Option<bool>,
    ) -> Result<(), SessionError> {
        if label > 1 {
            return Err(SessionError::Label(label));
        }
        if !(0.0..=1.0).contains(&probability) {
            return Err(SessionError::Probability(probability));
        }
        self.scores.push(probability);
        self.labels.push(label);
        self.ood_flagged += usize::from(ood == Some(true));
        self.ci = None;
        Ok(())
    }

    /// Record a file that could not be scored.
    pub fn add_unreadable(&mut self, file: String, code: String, message: String) {
        self.unreadable.push(Unreadable {
            file,
            code,
            message,
        });
    }

    pub fn model_threshold(&self) -> f32 {
        self.model_threshold
    }

    pub fn unreadable(&self) -> &[Unreadable] {
        &self.unreadable
    }

    /// The bootstrap CI of the AUC, as [`Report::new`] computes it (computed once per set of
    /// scores).
    pub fn auc_ci(&mut self) -> Option<(f64, f64)> {
        let (scores, labels) = (&self.scores, &self.labels);
        *self.ci.get_or_insert_with(|| {
            metrics::auc_ci(scores, labels, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
        })
    }

    /// The figures at `threshold` (predicted effusion when `probability >= threshold`). With
    /// `with_ci` false the CI is left out unless already known: the page asks for it once the
    /// last file is in, not after every file.
    pub fn summary(&mut self, threshold: f32, with_ci: bool) -> Summary {
        let ci = if with_ci {
            self.auc_ci()
        } else {
            self.ci.flatten()
        };
        Summary {
            report: Report::with_ci(&self.scores, &self.labels, threshold, ci),
            model_threshold: self.model_threshold,
            roc: metrics::roc(&self.scores, &self.labels),
            unreadable: self.unreadable.len(),
            unreadable_reasons: self.unreadable_groups(),
            ood_flagged: self.ood_flagged,
        }
    }

    fn unreadable_groups(&self) -> Vec<UnreadableGroup> {
        let mut groups: BTreeMap<(&str, &str), UnreadableGroup> = BTreeMap::new();
        for u in &self.unreadable {
            let group = groups
                .entry((&u.code, &u.message))
                .or_insert_with(|| UnreadableGroup {
                    code: u.code.clone(),
                    message: u.message.clone(),
                    count: 0,
                    files: Vec::new(),
                });
            group.count += 1;
            if group.files.len() < FILES_PER_GROUP {
                group.files.push(u.file.clone());
            }
        }
        let mut groups: Vec<UnreadableGroup> = groups.into_values().collect();
        groups.sort_by_key(|g| std::cmp::Reverse(g.count));
        groups
    }

    /// The threshold that reaches sensitivity `target` on these files
    /// ([`metrics::threshold_for_sensitivity`], the rule `trainer export` uses).
    pub fn threshold_for_sensitivity(&self, target: f64) -> f32 {
        metrics::threshold_for_sensitivity(&self.scores, &self.labels, target)
    }

    /// The ROC curve as SVG, with the operating point at `threshold` marked.
    pub fn roc_svg(&mut self, threshold: f32) -> String {
        let summary = self.summary(threshold, false);
        let point = (1.0 - summary.report.specificity, summary.report.sensitivity);
        plots::roc_chart_marked(
            "ROC on your images",
            &summary.roc,
            summary.report.auc,
            Some(point),
        )
    }

    /// The exported report: the summary at `threshold` with the CI, every unreadable file, and
    /// the settings that produced it.
    pub fn report_json(&mut self, threshold: f32, model: &str) -> serde_json::Value {
        let summary = self.summary(threshold, true);
        let mut value = serde_json::to_value(&summary).unwrap_or_default();
        value["model"] = model.into();
        value["operating_point"] = if threshold == self.model_threshold {
            "the model's threshold".into()
        } else {
            "a local choice".into()
        };
        value["bootstrap"] = serde_json::json!({
            "resamples": BOOTSTRAP_RESAMPLES,
            "seed": BOOTSTRAP_SEED,
        });
        value["unreadable_files"] = serde_json::to_value(&self.unreadable).unwrap_or_default();
        value
    }
}
