//! The not-a-chest-X-ray gate: how far an image's pooled features lie from the training X-rays.
//!
//! The distance is the Mahalanobis distance `sqrt((f - μ)ᵀ Σ⁻¹ (f - μ))` of the pooled last-stage
//! features `f` (from the same forward pass as the prediction) to the training images' mean `μ`,
//! with the covariance shrunk towards its mean variance (`Σ = (1 - λ) S + λ (tr S / d) I`) so that
//! it stays well conditioned with a few hundred images. It is stored as the inverse Cholesky
//! factor `W = L⁻¹` (`Σ = L Lᵀ`), so the distance is `|W (f - μ)|`. An image whose distance is
//! above `threshold` is flagged. `export` fits it on the training split and measures its rates.

use serde::{Deserialize, Serialize};

/// Fitted gate, stored in the model file's description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodGate {
    /// Feature mean of the training images.
    pub mean: Vec<f32>,
    /// Lower-triangular `W = L⁻¹`, row-major, `d x d`.
    pub whitening: Vec<f32>,
    /// Distance above which an image is flagged.
    pub threshold: f32,
    /// Shrinkage λ used in the fit.
    pub shrinkage: f32,
    /// The share of training images the threshold keeps below it (e.g. 0.99).
    pub train_quantile: f32,
}

/// Why a gate could not be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OodError {
    #[error("need at least 2 feature vectors of the same non-zero length to fit the gate")]
    TooFew,
    #[error("the feature covariance is not positive definite even after shrinkage")]
    Singular,
}

impl OodGate {
    /// Fit on feature vectors of in-distribution images; the threshold is the `quantile` of
    /// their own distances.
    pub fn fit(features: &[Vec<f32>], shrinkage: f64, quantile: f64) -> Result<Self, OodError> {
        let n = features.len();
        let d = features.first().map_or(0, Vec::len);
        if n < 2 || d == 0 || features.iter().any(|f| f.len() != d) {
            return Err(OodError::TooFew);
        }
        let mut mean = vec![0f64; d];
        for f in features {
            for (m, &v) in mean.iter_mut().zip(f) {
                *m += f64::from(v) / n as f64;
            }
        }
        let mut cov = vec![0f64; d * d];
        for f in features {
            let c: Vec<f64> = f
                .iter()
                .zip(&mean)
                .map(|(&v, m)| f64::from(v) - m)
                .collect();
            for i in 0..d {
                for j in 0..=i {
                    cov[i * d + j] += c[i] * c[j] / (n - 1) as f64;
                }
            }
        }
        let avg_var = (0..d).map(|i| cov[i * d + i]).sum::<f64>() / d as f64;
        let floor = avg_var.max(1e-12);
        for i in 0..d {
            for j in 0..=i {
                cov[i * d + j] *= 1.0 - shrinkage;
            }
            cov[i * d + i] += shrinkage * floor;
        }
        let l = cholesky(&cov, d).ok_or(OodError::Singular)?;
        let w = invert_lower(&l, d);
        let mut gate = OodGate {
            mean: mean.iter().map(|&m| m as f32).collect(),
            whitening: w.iter().map(|&v| v as f32).collect(),
            threshold: f32::INFINITY,
            shrinkage: shrinkage as f32,
            train_quantile: quantile as f32,
        };
        let mut distances: Vec<f32> = features.iter().map(|f| gate.distance(f)).collect();
        distances.sort_by(f32::total_cmp);
        let index = ((quantile * n as f64).ceil() as usize).clamp(1, n) - 1;
        gate.threshold = distances[index];
        Ok(gate)
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Mahalanobis distance of one feature vector (`NaN` for a vector of the wrong length).
    pub fn distance(&self, features: &[f32]) -> f32 {
        let d = self.dim();
        if features.len() != d || self.whitening.len() != d * d {
            return f32::NAN;
        }
        let centred: Vec<f64> = features
            .iter()
            .zip(&self.mean)
            .map(|(&v, &m)| f64::from(v) - f64::from(m))
            .collect();
        let mut sum = 0f64;
        for i in 0..d {
            let row = &self.whitening[i * d..i * d + i + 1];
            let z: f64 = row
                .iter()
                .zip(&centred)
                .map(|(&w, &c)| f64::from(w) * c)
                .sum();
            sum += z * z;
        }
        sum.sqrt() as f32
    }

    /// Whether the features lie outside what the training X-rays look like (a non-finite
    /// distance counts as outside).
    pub fn flags(&self, features: &[f32]) -> bool {
        let distance = self.distance(features);
        // Outside when greater, or when either is NaN (incomparable).
        distance
            .partial_cmp(&self.threshold)
            .is_none_or(std::cmp::Ordering::is_gt)
    }
}

/// Lower Cholesky factor of a symmetric positive-definite matrix given by its lower triangle.
fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                let v = a[i * d + i] - s;
                // A pivot lost to rounding (relative to the variance) means not positive definite.
                // (NaN, incomparable, counts as lost.)
                let floor = 1e-9 * a[i * d + i].abs().max(f64::MIN_POSITIVE);
                if v.partial_cmp(&floor).is_none_or(std::cmp::Ordering::is_le) {
                    return None;
                }
                l[i * d + i] = v.sqrt();
            } else {
                l[i * d + j] = (a[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    Some(l)
}

/// Inverse of a lower-triangular matrix (itself lower triangular), by forward substitution.
fn invert_lower(l: &[f64], d: usize) -> Vec<f64> {
    let mut inv = vec![0f64; d * d];
    for col in 0..d {
        for i in col..d {
            let s: f64 = (col..i).map(|k| l[i * d + k] * inv[k * d + col]).sum();
            let rhs = if i == col { 1.0 } else { 0.0 };
            inv[i * d + col] = (rhs - s) / l[i * d + i];
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random normal samples (Box-Muller on an LCG).
    fn normals(n: usize, seed: u64) -> Vec<f64> {
        let mut state = seed;
        let mut uniform = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| (-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos())
            .collect()
    }

    #[test]
    fn distance_matches_the_hand_computed_mahalanobis_distance() {
        // 2-D data with variances 4 and 1 and no correlation: distance of (2, 1) from the mean
        // (0, 0) is sqrt(2²/4 + 1²/1) = sqrt(2).
        let pts: Vec<Vec<f32>> = [(-2.0, -1.0), (2.0, -1.0), (-2.0, 1.0), (2.0, 1.0)]
            .iter()
            .map(|&(x, y)| vec![x, y])
            .collect();
        let gate = OodGate::fit(&pts, 0.0, 1.0).unwrap();
        // Sample variances with n - 1: 16/3 and 4/3.
        let want = ((2.0f64 * 2.0) / (16.0 / 3.0) + 1.0 / (4.0 / 3.0)).sqrt();
        assert!((f64::from(gate.distance(&[2.0, 1.0])) - want).abs() < 1e-5);
        assert_eq!(gate.distance(&[0.0, 0.0]), 0.0);
        assert!(gate.distance(&[1.0]).is_nan());
    }

    #[test]
    fn correlated_directions_are_measured_in_their_own_units() {
        // Strongly correlated 2-D data: a step along the correlation is near, across it is far.
        let z = normals(2000, 7);
        let pts: Vec<Vec<f32>> = z
            .chunks(2)
            .map(|c| vec![c[0] as f32, (c[0] + 0.1 * c[1]) as f32])
            .collect();
        let gate = OodGate::fit(&pts, 0.0, 0.99).unwrap();
        assert!(gate.distance(&[2.0, 2.0]) < 3.0);
        assert!(gate.distance(&[2.0, -2.0]) > 20.0);
    }

    #[test]
    fn threshold_keeps_the_quantile_and_flags_far_points() {
        let z = normals(8 * 500, 3);
        let pts: Vec<Vec<f32>> = z
            .chunks(8)
            .map(|c| c.iter().map(|&v| v as f32).collect())
            .collect();
        let gate = OodGate::fit(&pts, 0.1, 0.95).unwrap();
        let flagged = pts.iter().filter(|p| gate.flags(p)).count();
        assert!(
            (20..=30).contains(&flagged),
            "{flagged} of 500 flagged at the 95 % quantile"
        );
        assert!(gate.flags(&[10.0; 8]));
        assert!(gate.flags(&[f32::NAN; 8]));
        // Unseen points from the same distribution are mostly kept.
        let fresh: Vec<Vec<f32>> = normals(8 * 500, 99)
            .chunks(8)
            .map(|c| c.iter().map(|&v| v as f32).collect())
            .collect();
        let flagged = fresh.iter().filter(|p| gate.flags(p)).count();
        assert!(flagged < 60, "{flagged} of 500 fresh points flagged");
    }

    #[test]
    fn degenerate_input_is_an_error_and_shrinkage_rescues_a_singular_covariance() {
        assert_eq!(OodGate::fit(&[vec![1.0]], 0.1, 0.99), Err(OodError::TooFew));
        // All points on a line: singular without shrinkage, fine with it.
        let line: Vec<Vec<f32>> = (0..10).map(|i| vec![i as f32, 2.0 * i as f32]).collect();
        assert_eq!(OodGate::fit(&line, 0.0, 0.99), Err(OodError::Singular));
        assert!(OodGate::fit(&line, 0.1, 0.99).is_ok());
    }
}
