//! Metrics over a whole set of predictions (never per batch: AUC per batch is wrong under class
//! imbalance): AUC, its bootstrap CI, the ROC curve, threshold choice and the evaluation
//! [`Report`]. One implementation for `trainer evaluate` (native) and the page's validation mode
//! (wasm): the bootstrap's ChaCha8 stream and its `usize` draws are the same on both, so the same
//! seed gives the same interval.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative, ties counting one half (Mann-Whitney U). `None` when a class is missing.
pub fn auc(scores: &[f32], labels: &[u8]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len());
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks over ties.
    let mut ranks = vec![0f64; scores.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = rank;
        }
        i = j + 1;
    }
    let pos = labels.iter().filter(|&&l| l == 1).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let rank_sum: f64 = ranks
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l == 1)
        .map(|(r, _)| r)
        .sum();
    Some((rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos * neg) as f64)
}

/// 95 % bootstrap confidence interval of the AUC (percentile method, resampling each class on
/// its own so every resample has both).
pub fn auc_ci(scores: &[f32], labels: &[u8], resamples: usize, seed: u64) -> Option<(f64, f64)> {
    // Sorted within each class, so the interval does not depend on the order of the images.
    let by_score = |mut v: Vec<usize>| {
        v.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        v
    };
    let pos = by_score((0..labels.len()).filter(|&i| labels[i] == 1).collect());
    let neg = by_score((0..labels.len()).filter(|&i| labels[i] == 0).collect());
    let (mut s, mut l) = (
        Vec::with_capacity(labels.len()),
        Vec::with_capacity(labels.len()),
    );
    let aucs = stratified_resamples([&pos, &neg], resamples, seed, |indices| {
        s.clear();
        l.clear();
        s.extend(indices.iter().map(|&k| scores[k]));
        l.extend(indices.iter().map(|&k| labels[k]));
        auc(&s, &l)
    });
    percentile_ci(&aucs)
}

/// Sorted draws of `statistic` over stratified bootstrap resamples: each class (a list of image
/// indices) resampled with replacement to its own size, so every resample has both. Empty when
/// a class is.
pub fn stratified_resamples(
    classes: [&[usize]; 2],
    resamples: usize,
    seed: u64,
    mut statistic: impl FnMut(&[usize]) -> Option<f64>,
) -> Vec<f64> {
    if classes.iter().any(|c| c.is_empty()) {
        return Vec::new();
    }
    let mut rng = Rng::new(seed);
    let mut indices = Vec::with_capacity(classes[0].len() + classes[1].len());
    let mut draws = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        indices.clear();
        for class in classes {
            indices.extend((0..class.len()).map(|_| class[rng.below(class.len())]));
        }
        draws.extend(statistic(&indices));
    }
    draws.sort_by(f64::total_cmp);
    draws
}

/// The 2.5 % and 97.5 % percentiles of sorted draws; `None` without draws.
pub fn percentile_ci(sorted: &[f64]) -> Option<(f64, f64)> {
    if sorted.is_empty() {
        return None;
    }
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    Some((at(0.025), at(0.975)))
}

/// The ROC curve as (false-positive rate, true-positive rate) points from (0, 0) to (1, 1), one
/// point per distinct score.
pub fn roc(scores: &[f32], labels: &[u8]) -> Vec<(f64, f64)> {
    let pos = labels.iter().filter(|&&l| l == 1).count().max(1) as f64;
    let neg = labels.iter().filter(|&&l| l == 0).count().max(1) as f64;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    for (k, &i) in order.iter().enumerate() {
        if labels[i] == 1 {
            tp += 1.0
        } else {
            fp += 1.0
        }
        if k + 1 == order.len() || scores[order[k + 1]] != scores[i] {
            points.push((fp / neg, tp / pos));
        }
    }
    points
}

/// The highest threshold whose sensitivity reaches `target` (predicted positive when
/// `score >= threshold`), moved halfway down to the next lower score; 0.5 when there is no
/// positive.
pub fn threshold_for_sensitivity(scores: &[f32], labels: &[u8], target: f64) -> f32 {
    let mut positives: Vec<f32> = scores
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l == 1)
        .map(|(s, _)| *s)
        .collect();
    if positives.is_empty() {
        return 0.5;
    }
    positives.sort_by(|a, b| b.total_cmp(a));
    let k = ((target.clamp(0.0, 1.0) * positives.len() as f64).ceil() as usize)
        .clamp(1, positives.len());
    let candidate = positives[k - 1];
    // Halfway to the next lower score, so that tiny numeric differences (f16 weights, another
    // backend) do not move a score across the threshold.
    match scores
        .iter()
        .filter(|&&s| s < candidate)
        .max_by(|a, b| a.total_cmp(b))
    {
        Some(&below) => (candidate + below) / 2.0,
        None => candidate,
    }
}

/// Counts at a threshold: one type with the model card's.
pub use crate::model_card::Confusion;

/// Resamples of the bootstrap CI in every [`Report`].
pub const BOOTSTRAP_RESAMPLES: usize = 2000;
/// Seed of the bootstrap CI in every [`Report`]: fixed, so a report repeats.
pub const BOOTSTRAP_SEED: u64 = 12345;

/// Everything `evaluate` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub images: usize,
    pub positives: usize,
    pub auc: Option<f64>,
    pub auc_ci95: Option<(f64, f64)>,
    pub threshold: f32,
    pub accuracy: f64,
    pub sensitivity: f64,
    pub specificity: f64,
    pub confusion: Confusion,
}

impl Report {
    /// The report at `threshold`, with the bootstrap CI ([`BOOTSTRAP_RESAMPLES`] resamples from
    /// [`BOOTSTRAP_SEED`]).
    pub fn new(scores: &[f32], labels: &[u8], threshold: f32) -> Self {
        let ci = auc_ci(scores, labels, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED);
        Self::with_ci(scores, labels, threshold, ci)
    }

    /// The report at `threshold` with a CI computed earlier (the bootstrap is the costly part; it
    /// does not depend on the threshold), or none.
    pub fn with_ci(
        scores: &[f32],
        labels: &[u8],
        threshold: f32,
        auc_ci95: Option<(f64, f64)>,
    ) -> Self {
        let confusion = Confusion::at(scores, labels, threshold);
        Self {
            images: scores.len(),
            positives: labels.iter().filter(|&&l| l == 1).count(),
            auc: auc(scores, labels),
            auc_ci95,
            threshold,
            accuracy: confusion.accuracy(),
            sensitivity: confusion.sensitivity(),
            specificity: confusion.specificity(),
            confusion,
        }
    }

    pub fn auc_text(&self) -> String {
        match (self.auc, self.auc_ci95) {
            (Some(a), Some((lo, hi))) => format!("{a:.3} (95% CI {lo:.3}–{hi:.3})"),
            (Some(a), None) => format!("{a:.3}"),
            _ => "n/a (one class only)".into(),
        }
    }
}

#[cfg(test)]
mod tests;
