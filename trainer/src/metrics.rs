//! Metrics over a whole set of predictions (never per batch: AUC per batch is wrong under class
//! imbalance).

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
    if pos.is_empty() || neg.is_empty() || resamples == 0 {
        return None;
    }
    let mut rng = Rng::new(seed);
    let mut aucs = Vec::with_capacity(resamples);
    let mut s = Vec::with_capacity(labels.len());
    let mut l = Vec::with_capacity(labels.len());
    for _ in 0..resamples {
        s.clear();
        l.clear();
        for class in [&pos, &neg] {
            for _ in 0..class.len() {
                let k = class[rng.below(class.len())];
                s.push(scores[k]);
                l.push(labels[k]);
            }
        }
        aucs.extend(auc(&s, &l));
    }
    aucs.sort_by(f64::total_cmp);
    let at = |q: f64| aucs[((aucs.len() - 1) as f64 * q).round() as usize];
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
pub use cxr::model_card::Confusion;

/// Everything `evaluate` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub fn new(scores: &[f32], labels: &[u8], threshold: f32) -> Self {
        let confusion = Confusion::at(scores, labels, threshold);
        Self {
            images: scores.len(),
            positives: labels.iter().filter(|&&l| l == 1).count(),
            auc: auc(scores, labels),
            auc_ci95: auc_ci(scores, labels, 2000, 12345),
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
mod tests {
    use super::*;

    #[test]
    fn auc_of_known_cases() {
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[0, 0, 1, 1]), Some(1.0));
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[0, 0, 1, 1]), Some(0.0));
        assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &[0, 1, 0, 1]), Some(0.5));
        // One of four positive/negative pairs is misordered.
        assert_eq!(auc(&[0.1, 0.6, 0.5, 0.9], &[0, 0, 1, 1]), Some(0.75));
        assert_eq!(auc(&[0.1, 0.2], &[1, 1]), None);
    }

    #[test]
    fn auc_matches_brute_force_under_imbalance_and_ties() {
        let mut rng = Rng::new(3);
        let labels: Vec<u8> = (0..300).map(|i| u8::from(i % 10 == 0)).collect();
        let scores: Vec<f32> = labels
            .iter()
            .map(|&l| ((rng.uniform() + 0.3 * l as f32) * 20.0).round() / 20.0)
            .collect();
        let mut num = 0.0;
        let mut den = 0.0;
        for i in 0..300 {
            for j in 0..300 {
                if labels[i] == 1 && labels[j] == 0 {
                    den += 1.0;
                    num += if scores[i] > scores[j] {
                        1.0
                    } else if scores[i] == scores[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        assert!((auc(&scores, &labels).unwrap() - num / den).abs() < 1e-12);
    }

    #[test]
    fn ci_brackets_the_auc() {
        let mut rng = Rng::new(9);
        let labels: Vec<u8> = (0..200).map(|i| (i % 2) as u8).collect();
        let scores: Vec<f32> = labels
            .iter()
            .map(|&l| rng.uniform() + 0.4 * l as f32)
            .collect();
        let a = auc(&scores, &labels).unwrap();
        let (lo, hi) = auc_ci(&scores, &labels, 500, 1).unwrap();
        assert!(lo < a && a < hi && hi - lo < 0.2, "{lo} {a} {hi}");
        let mut order: Vec<usize> = (0..200).collect();
        Rng::new(4).shuffle(&mut order);
        let s2: Vec<f32> = order.iter().map(|&i| scores[i]).collect();
        let l2: Vec<u8> = order.iter().map(|&i| labels[i]).collect();
        assert_eq!(
            auc_ci(&s2, &l2, 500, 1),
            Some((lo, hi)),
            "the CI depends on the order"
        );
    }

    #[test]
    fn roc_and_threshold() {
        let scores = [0.9, 0.8, 0.7, 0.6, 0.4, 0.3];
        let labels = [1, 1, 0, 1, 0, 0];
        let r = roc(&scores, &labels);
        assert_eq!(r.first(), Some(&(0.0, 0.0)));
        assert_eq!(r.last(), Some(&(1.0, 1.0)));
        assert_eq!(r.len(), 7);
        // Two of three positives reach 0.8; all three need 0.6.
        assert_eq!(threshold_for_sensitivity(&scores, &labels, 0.6), 0.75);
        assert_eq!(threshold_for_sensitivity(&scores, &labels, 0.9), 0.5);
        let c = Confusion::at(&scores, &labels, 0.6);
        assert_eq!(c.sensitivity(), 1.0);
        assert_eq!(threshold_for_sensitivity(&scores, &[0; 6], 0.9), 0.5);
    }

    #[test]
    fn confusion_rates() {
        let c = Confusion::at(&[0.9, 0.4, 0.6, 0.1], &[1, 1, 0, 0], 0.5);
        assert_eq!(
            c,
            Confusion {
                tp: 1,
                fp: 1,
                tn: 1,
                fn_: 1
            }
        );
        assert_eq!(c.sensitivity(), 0.5);
        assert_eq!(c.specificity(), 0.5);
        assert_eq!(c.accuracy(), 0.5);
    }
}
