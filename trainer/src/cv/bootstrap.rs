//! Bootstrap confidence intervals over images for cross-validation figures: the pooled
//! out-of-fold AUC (averaged over repeats) and, for two configurations scored on the same
//! folds, the paired difference of their AUCs (each resample of images used for both).

use crate::metrics::{self, percentile_ci};

/// Out-of-fold scores of every image: `scores[repeat][image]`, one label per image.
#[derive(Debug, Clone, PartialEq)]
pub struct OofScores {
    pub files: Vec<String>,
    pub labels: Vec<u8>,
    pub scores: Vec<Vec<f32>>,
}

impl OofScores {
    /// The pooled out-of-fold AUC of the images at `indices`, averaged over repeats.
    pub fn mean_auc(&self, indices: &[usize]) -> Option<f64> {
        let labels: Vec<u8> = indices.iter().map(|&i| self.labels[i]).collect();
        let mut sum = 0.0;
        for repeat in &self.scores {
            let s: Vec<f32> = indices.iter().map(|&i| repeat[i]).collect();
            sum += metrics::auc(&s, &labels)?;
        }
        Some(sum / self.scores.len().max(1) as f64)
    }

    /// [`Self::mean_auc`] of every image.
    pub fn auc(&self) -> Option<f64> {
        self.mean_auc(&(0..self.labels.len()).collect::<Vec<_>>())
    }
}

/// Sorted draws of a statistic over stratified resamples of the images
/// ([`metrics::stratified_resamples`], classes in image order).
pub fn resample<F: Fn(&[usize]) -> Option<f64>>(
    labels: &[u8],
    resamples: usize,
    seed: u64,
    statistic: F,
) -> Vec<f64> {
    let pos: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == 1).collect();
    let neg: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == 0).collect();
    metrics::stratified_resamples([&pos, &neg], resamples, seed, statistic)
}

/// 95 % CI of the pooled out-of-fold AUC.
pub fn auc_ci(oof: &OofScores, resamples: usize, seed: u64) -> Option<(f64, f64)> {
    percentile_ci(&resample(&oof.labels, resamples, seed, |i| oof.mean_auc(i)))
}

/// A paired comparison of two configurations on the same images and folds.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PairedDifference {
    pub auc_a: f64,
    pub auc_b: f64,
    /// AUC of A minus AUC of B.
    pub difference: f64,
    pub ci95: (f64, f64),
    /// Share of resamples in which A is not better than B (a one-sided bootstrap p-value).
    pub share_a_not_better: f64,
    pub resamples: usize,
}

/// The paired bootstrap of AUC(A) - AUC(B): the same resample of images for both. `a` and `b`
/// must hold the same images in the same order.
pub fn paired_difference(
    a: &OofScores,
    b: &OofScores,
    resamples: usize,
    seed: u64,
) -> Option<PairedDifference> {
    assert_eq!(a.files, b.files, "paired images");
    let (auc_a, auc_b) = (a.auc()?, b.auc()?);
    let draws = resample(&a.labels, resamples, seed, |i| {
        Some(a.mean_auc(i)? - b.mean_auc(i)?)
    });
    let not_better = draws.iter().filter(|&&d| d <= 0.0).count();
    Some(PairedDifference {
        auc_a,
        auc_b,
        difference: auc_a - auc_b,
        ci95: percentile_ci(&draws)?,
        share_a_not_better: not_better as f64 / draws.len() as f64,
        resamples: draws.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Scores whose separation grows with `strength`, with noise from `seed`.
    fn oof(strength: f32, seed: u64, repeats: usize) -> OofScores {
        let labels: Vec<u8> = (0..300).map(|i| u8::from(i % 3 == 0)).collect();
        let scores = (0..repeats)
            .map(|r| {
                let mut rng = Rng::new(seed + r as u64);
                labels
                    .iter()
                    .map(|&l| rng.uniform() + strength * f32::from(l))
                    .collect()
            })
            .collect();
        OofScores {
            files: (0..300).map(|i| format!("{i}.png")).collect(),
            labels,
            scores,
        }
    }

    #[test]
    fn the_ci_brackets_the_pooled_auc() {
        let o = oof(0.4, 1, 2);
        let auc = o.auc().unwrap();
        let (lo, hi) = auc_ci(&o, 500, 3).unwrap();
        assert!(lo < auc && auc < hi && hi - lo < 0.2, "{lo} {auc} {hi}");
        let single = |r: usize| {
            let s = &o.scores[r];
            metrics::auc(s, &o.labels).unwrap()
        };
        assert!((auc - (single(0) + single(1)) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn a_clearly_better_model_wins_and_equal_ones_do_not() {
        let strong = oof(0.6, 1, 1);
        let weak = oof(0.1, 2, 1);
        let d = paired_difference(&strong, &weak, 500, 5).unwrap();
        assert!(d.difference > 0.2 && d.ci95.0 > 0.0, "{d:?}");
        assert!(d.share_a_not_better < 0.01);
        let same = paired_difference(&strong, &strong, 200, 5).unwrap();
        assert_eq!((same.difference, same.ci95), (0.0, (0.0, 0.0)));
        // Two models of equal strength: the interval straddles zero.
        let other = oof(0.6, 7, 1);
        let d = paired_difference(&strong, &other, 500, 5).unwrap();
        assert!(d.ci95.0 < 0.0 && d.ci95.1 > 0.0, "{d:?}");
    }

    #[test]
    fn one_class_gives_no_interval() {
        let draws = resample(&[1, 1, 1], 10, 1, |_| Some(1.0));
        assert!(draws.is_empty() && percentile_ci(&draws).is_none());
    }
}
