//! Calibration: the model's two logits → a probability that means what it says on the
//! population it was fitted on, and how to read that probability at another prevalence.
//!
//! The mapping is `σ(slope · z + intercept)` on the logit difference `z = effusion − no finding`
//! (the log-odds of the raw softmax score). Platt scaling fits both parameters, temperature
//! scaling only the slope (`1 / T`, intercept 0). Both are fitted by Newton's method on the
//! log-loss, deterministically. The slope is kept positive, so the mapping is strictly
//! increasing: the ranking (AUC) and every decision at a threshold mapped through it are kept.
//!
//! Hand-written: the fit is two parameters and a few lines of Newton's method; the crates that
//! fit logistic regressions (linfa, smartcore) bring a linear-algebra stack into the wasm build.

use serde::{Deserialize, Serialize};

/// Which parameters were fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Slope and intercept (logistic regression on the logit difference).
    Platt,
    /// Slope only (`1 / temperature`), intercept 0.
    Temperature,
}

/// A fitted calibration, as stored in a weight file's description.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub method: Method,
    /// Multiplies the logit difference (`1 / temperature`); positive.
    pub slope: f64,
    pub intercept: f64,
    /// Fraction of effusion among the images it was fitted on: the prevalence at which the
    /// calibrated probability holds.
    pub prevalence: f64,
}

/// Logistic function.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Log-odds of a probability (±infinity at 0 and 1).
pub fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

impl Calibration {
    /// The calibrated probability of a logit difference.
    pub fn probability_of_logit(&self, z: f64) -> f64 {
        sigmoid(self.slope * z + self.intercept)
    }

    /// The calibrated value of a raw (softmax) probability, e.g. of the raw threshold.
    pub fn probability(&self, raw: f64) -> f64 {
        self.probability_of_logit(logit(raw))
    }

    /// Why these parameters cannot be used, if they cannot.
    pub fn problem(&self) -> Option<String> {
        if !(self.slope.is_finite() && self.slope > 0.0) {
            return Some(format!(
                "calibration slope {} is not a positive number",
                self.slope
            ));
        }
        if !self.intercept.is_finite() {
            return Some(format!(
                "calibration intercept {} is not finite",
                self.intercept
            ));
        }
        if !(self.prevalence > 0.0 && self.prevalence < 1.0) {
            return Some(format!(
                "calibration prevalence {} is outside (0, 1)",
                self.prevalence
            ));
        }
        None
    }
}

/// The probability `p`, valid at prevalence `from`, at prevalence `to`: Bayes' rule on the odds,
/// `odds' = odds · (to / (1 − to)) / (from / (1 − from))` (the likelihood ratio of the image is
/// the same at any prevalence). `None` when a prevalence is outside (0, 1) or `p` outside [0, 1].
pub fn at_prevalence(p: f64, from: f64, to: f64) -> Option<f64> {
    let open = |x: f64| x > 0.0 && x < 1.0;
    if !open(from) || !open(to) || !(0.0..=1.0).contains(&p) {
        return None;
    }
    if p == 0.0 || p == 1.0 {
        return Some(p);
    }
    Some(sigmoid(logit(p) + logit(to) - logit(from)))
}

/// Why a calibration could not be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    #[error("{0} scores and {1} labels")]
    Lengths(usize, usize),
    #[error(
        "calibration needs held-out images of both classes ({positives} effusion, {negatives} no finding)"
    )]
    OneClass { positives: usize, negatives: usize },
    #[error("a score is not a finite number")]
    NotFinite,
    #[error(
        "the fitted slope {0:.3} is not positive: the scores do not rank effusion above no finding, and a calibration would reverse the decisions"
    )]
    NotIncreasing(f64),
}

/// Platt's smoothed targets, `(n₊ + 1) / (n₊ + 2)` and `1 / (n₋ + 2)`: the fit then stays finite
/// when the held-out scores separate the classes perfectly (plain 0/1 targets would send the
/// slope to infinity), and the effect vanishes as the number of images grows.
fn targets(labels: &[u8]) -> Vec<f64> {
    let positives = labels.iter().filter(|&&l| l == 1).count() as f64;
    let negatives = labels.len() as f64 - positives;
    let (hi, lo) = (
        (positives + 1.0) / (positives + 2.0),
        1.0 / (negatives + 2.0),
    );
    labels
        .iter()
        .map(|&l| if l == 1 { hi } else { lo })
        .collect()
}

/// Mean log-loss of `σ(a z + b)` against `targets`.
fn loss(z: &[f64], t: &[f64], a: f64, b: f64) -> f64 {
    let total: f64 = z
        .iter()
        .zip(t)
        .map(|(&z, &t)| {
            // log σ(s) = −softplus(−s), log(1 − σ(s)) = −softplus(s), stable for large |s|.
            let s = a * z + b;
            t * softplus(-s) + (1.0 - t) * softplus(s)
        })
        .sum();
    total / z.len().max(1) as f64
}

fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// Gradient and Hessian of the mean log-loss in `(a, b)`.
fn derivatives(z: &[f64], t: &[f64], a: f64, b: f64) -> ([f64; 2], [[f64; 2]; 2]) {
    let (mut g, mut h) = ([0.0; 2], [[0.0; 2]; 2]);
    for (&z, &t) in z.iter().zip(t) {
        let p = sigmoid(a * z + b);
        let (r, w) = (p - t, p * (1.0 - p));
        g[0] += r * z;
        g[1] += r;
        h[0][0] += w * z * z;
        h[0][1] += w * z;
        h[1][1] += w;
    }
    let n = z.len().max(1) as f64;
    h[1][0] = h[0][1];
    (g.map(|v| v / n), h.map(|row| row.map(|v| v / n + 1e-12)))
}

/// Newton's method with step halving, from the identity `(1, 0)`; `fit_intercept` false keeps
/// the intercept at 0 (temperature scaling).
fn newton(z: &[f64], t: &[f64], fit_intercept: bool) -> (f64, f64) {
    let (mut a, mut b) = (1.0, 0.0);
    let mut current = loss(z, t, a, b);
    for _ in 0..100 {
        let (g, h) = derivatives(z, t, a, b);
        let step = if fit_intercept {
            let det = h[0][0] * h[1][1] - h[0][1] * h[1][0];
            [
                (h[1][1] * g[0] - h[0][1] * g[1]) / det,
                (h[0][0] * g[1] - h[1][0] * g[0]) / det,
            ]
        } else {
            [g[0] / h[0][0], 0.0]
        };
        let mut scale = 1.0;
        let improved = loop {
            let (na, nb) = (a - scale * step[0], b - scale * step[1]);
            let next = loss(z, t, na, nb);
            if next <= current {
                break Some((na, nb, next));
            }
            scale /= 2.0;
            if scale < 1e-10 {
                break None;
            }
        };
        let Some((na, nb, next)) = improved else {
            break;
        };
        let moved = (na - a).abs().max((nb - b).abs());
        (a, b, current) = (na, nb, next);
        if moved < 1e-12 {
            break;
        }
    }
    (a, b)
}

/// Fit a calibration on held-out logit differences `z` (effusion − no finding) and their
/// labels (1 = effusion).
pub fn fit(z: &[f64], labels: &[u8], method: Method) -> Result<Calibration, FitError> {
    if z.len() != labels.len() {
        return Err(FitError::Lengths(z.len(), labels.len()));
    }
    if z.iter().any(|v| !v.is_finite()) {
        return Err(FitError::NotFinite);
    }
    let positives = labels.iter().filter(|&&l| l == 1).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(FitError::OneClass {
            positives,
            negatives,
        });
    }
    let (slope, intercept) = newton(z, &targets(labels), method == Method::Platt);
    // NaN too: only a finite positive slope keeps the mapping increasing.
    if !(slope.is_finite() && slope > 0.0) {
        return Err(FitError::NotIncreasing(slope));
    }
    Ok(Calibration {
        method,
        slope,
        intercept,
        prevalence: positives as f64 / labels.len() as f64,
    })
}

/// The calibrated probability of every image from a fit that did not see it: the images are
/// dealt into `folds` parts (within each class, in order of `z`, round-robin) and each part is
/// calibrated by a fit on the others. Their reliability is an honest estimate of the calibration
/// on new images from the same population, which a fit measured on its own images is not.
pub fn cross_fitted(
    z: &[f64],
    labels: &[u8],
    method: Method,
    folds: usize,
) -> Result<Vec<f64>, FitError> {
    if z.len() != labels.len() {
        return Err(FitError::Lengths(z.len(), labels.len()));
    }
    let folds = folds.max(2);
    let mut order: Vec<usize> = (0..z.len()).collect();
    order.sort_by(|&i, &j| labels[i].cmp(&labels[j]).then(z[i].total_cmp(&z[j])));
    let mut fold = vec![0; z.len()];
    let mut seen = [0usize; 2];
    for &i in &order {
        let class = usize::from(labels[i] == 1);
        fold[i] = seen[class] % folds;
        seen[class] += 1;
    }
    let mut out = vec![f64::NAN; z.len()];
    for k in 0..folds {
        // In sorted order, so that the same images in another order give the same sums.
        let (train_z, train_labels): (Vec<f64>, Vec<u8>) = order
            .iter()
            .copied()
            .filter(|&i| fold[i] != k)
            .map(|i| (z[i], labels[i]))
            .unzip();
        let c = fit(&train_z, &train_labels, method)?;
        for i in (0..z.len()).filter(|&i| fold[i] == k) {
            out[i] = c.probability_of_logit(z[i]);
        }
    }
    Ok(out)
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Bin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    /// Mean predicted probability in the bin (`None` when empty).
    pub mean_probability: Option<f64>,
    /// Fraction of effusion in the bin (`None` when empty).
    pub fraction_effusion: Option<f64>,
}

/// A reliability diagram and its expected calibration error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reliability {
    pub bins: Vec<Bin>,
    /// `Σ (nᵢ / n) · |mean probabilityᵢ − fraction effusionᵢ|` over the bins.
    pub ece: f64,
    /// Mean log-loss (natural log; probabilities kept within 1e-7 of 0 and 1): a calibration
    /// figure without bins, steadier than the ECE on few images.
    pub log_loss: f64,
}

/// Equal-width bins over [0, 1] (`bins` of them; 1.0 falls in the last) and the expected
/// calibration error of `probabilities` against `labels`.
pub fn reliability(probabilities: &[f64], labels: &[u8], bins: usize) -> Reliability {
    let bins = bins.max(1);
    let mut sums = vec![(0usize, 0.0f64, 0usize); bins];
    for (&p, &l) in probabilities.iter().zip(labels) {
        let i = ((p * bins as f64) as usize).min(bins - 1);
        sums[i].0 += 1;
        sums[i].1 += p;
        sums[i].2 += usize::from(l == 1);
    }
    let n = probabilities.len().max(1) as f64;
    let mut ece = 0.0;
    let bins = sums
        .iter()
        .enumerate()
        .map(|(i, &(count, p_sum, positives))| {
            let (mean, fraction) = (p_sum / count as f64, positives as f64 / count as f64);
            if count > 0 {
                ece += count as f64 / n * (mean - fraction).abs();
            }
            Bin {
                lower: i as f64 / sums.len() as f64,
                upper: (i + 1) as f64 / sums.len() as f64,
                count,
                mean_probability: (count > 0).then_some(mean),
                fraction_effusion: (count > 0).then_some(fraction),
            }
        })
        .collect();
    let log_loss = probabilities
        .iter()
        .zip(labels)
        .map(|(&p, &l)| {
            let p = p.clamp(1e-7, 1.0 - 1e-7);
            -if l == 1 { p.ln() } else { (1.0 - p).ln() }
        })
        .sum::<f64>()
        / n;
    Reliability {
        bins,
        ece,
        log_loss,
    }
}

#[cfg(test)]
mod tests;
