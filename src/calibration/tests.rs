use super::*;
use crate::model_card::Confusion;

/// A small deterministic generator (splitmix64) for synthetic scores: uniform in [0, 1).
struct Uniform(u64);

impl Uniform {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (x ^ (x >> 31)) as f64 / (u64::MAX as f64 + 1.0)
    }
}

/// `n` logit differences uniform in [-4, 4], each labelled effusion with probability
/// `σ(slope · z + intercept)`: data on which that calibration is the true one.
fn synthetic(n: usize, slope: f64, intercept: f64, seed: u64) -> (Vec<f64>, Vec<u8>) {
    let mut rng = Uniform(seed);
    (0..n)
        .map(|_| {
            let z = 8.0 * rng.next() - 4.0;
            (z, u8::from(rng.next() < sigmoid(slope * z + intercept)))
        })
        .unzip()
}

/// Rank AUC by comparing every pair (ties count a half).
fn auc(scores: &[f64], labels: &[u8]) -> f64 {
    let (mut wins, mut pairs) = (0.0, 0.0);
    for (i, &p) in scores.iter().enumerate() {
        for (j, &q) in scores.iter().enumerate() {
            if labels[i] == 1 && labels[j] == 0 {
                pairs += 1.0;
                wins += if p > q {
                    1.0
                } else if p == q {
                    0.5
                } else {
                    0.0
                };
            }
        }
    }
    wins / pairs
}

#[test]
fn platt_recovers_a_known_slope_and_intercept() {
    let (z, labels) = synthetic(20_000, 0.6, -0.8, 1);
    let c = fit(&z, &labels, Method::Platt).unwrap();
    assert!((c.slope - 0.6).abs() < 0.05, "{c:?}");
    assert!((c.intercept + 0.8).abs() < 0.08, "{c:?}");
    let positives = labels.iter().filter(|&&l| l == 1).count();
    assert_eq!(c.prevalence, positives as f64 / labels.len() as f64);
}

#[test]
fn temperature_recovers_a_known_temperature_and_keeps_the_intercept_at_zero() {
    // Temperature 2: the model's logits are twice as confident as they should be.
    let (z, labels) = synthetic(20_000, 0.5, 0.0, 2);
    let c = fit(&z, &labels, Method::Temperature).unwrap();
    assert!((1.0 / c.slope - 2.0).abs() < 0.15, "{c:?}");
    assert_eq!(c.intercept, 0.0);
    assert_eq!(c.method, Method::Temperature);
}

#[test]
fn already_calibrated_scores_fit_close_to_the_identity_with_a_small_ece() {
    let (z, labels) = synthetic(20_000, 1.0, 0.0, 3);
    let c = fit(&z, &labels, Method::Platt).unwrap();
    assert!(
        (c.slope - 1.0).abs() < 0.06 && c.intercept.abs() < 0.06,
        "{c:?}"
    );
    let raw: Vec<f64> = z.iter().map(|&v| sigmoid(v)).collect();
    let r = reliability(&raw, &labels, 10);
    assert!(r.ece < 0.02, "ECE {}", r.ece);
    assert_eq!(r.bins.iter().map(|b| b.count).sum::<usize>(), z.len());
}

#[test]
fn calibration_lowers_the_ece_of_overconfident_scores() {
    let (z, labels) = synthetic(5_000, 0.4, -1.0, 4);
    let raw: Vec<f64> = z.iter().map(|&v| sigmoid(v)).collect();
    let before = reliability(&raw, &labels, 10).ece;
    let c = fit(&z, &labels, Method::Platt).unwrap();
    let calibrated: Vec<f64> = z.iter().map(|&v| c.probability_of_logit(v)).collect();
    let after = reliability(&calibrated, &labels, 10).ece;
    assert!(before > 0.1, "{before}");
    assert!(after < 0.03, "{after}");
    assert!(
        reliability(&calibrated, &labels, 10).log_loss < reliability(&raw, &labels, 10).log_loss
    );
}

#[test]
fn the_mapping_keeps_the_ranking_and_every_decision_at_the_mapped_threshold() {
    let (z, labels) = synthetic(600, 0.4, -1.0, 5);
    let c = fit(&z, &labels, Method::Platt).unwrap();
    let raw: Vec<f64> = z.iter().map(|&v| sigmoid(v)).collect();
    let calibrated: Vec<f64> = raw.iter().map(|&p| c.probability(p)).collect();
    assert_eq!(auc(&raw, &labels), auc(&calibrated, &labels));
    let as_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    // Thresholds at the scores themselves, as a threshold chosen on validation scores is.
    for &t in raw.iter().step_by(37) {
        let before = Confusion::at(&as_f32(&raw), &labels, t as f32);
        let after = Confusion::at(&as_f32(&calibrated), &labels, c.probability(t) as f32);
        assert_eq!(before, after, "threshold {t}");
    }
}

#[test]
fn separable_scores_give_a_finite_positive_slope() {
    let z = [-3.0, -2.0, -1.0, 1.0, 2.0, 3.0];
    let c = fit(&z, &[0, 0, 0, 1, 1, 1], Method::Platt).unwrap();
    assert!(
        c.slope.is_finite() && c.slope > 0.0 && c.intercept.is_finite(),
        "{c:?}"
    );
    assert!(c.problem().is_none());
}

#[test]
fn unusable_scores_are_refused_with_a_reason() {
    assert_eq!(
        fit(&[0.1, 0.2], &[1, 1], Method::Platt),
        Err(FitError::OneClass {
            positives: 2,
            negatives: 0
        })
    );
    assert_eq!(
        fit(&[0.1], &[1, 0], Method::Platt),
        Err(FitError::Lengths(1, 2))
    );
    assert_eq!(
        fit(&[f64::NAN, 0.0], &[1, 0], Method::Platt),
        Err(FitError::NotFinite)
    );
    // Scores that rank no finding above effusion would need a negative slope.
    let (z, labels) = synthetic(2_000, -1.0, 0.0, 6);
    assert!(matches!(
        fit(&z, &labels, Method::Temperature),
        Err(FitError::NotIncreasing(_))
    ));
}

#[test]
fn stored_parameters_are_checked() {
    let ok = Calibration {
        method: Method::Platt,
        slope: 0.5,
        intercept: 1.0,
        prevalence: 0.5,
    };
    assert!(ok.problem().is_none());
    for bad in [
        Calibration { slope: 0.0, ..ok },
        Calibration {
            slope: f64::NAN,
            ..ok
        },
        Calibration {
            intercept: f64::INFINITY,
            ..ok
        },
        Calibration {
            prevalence: 1.0,
            ..ok
        },
    ] {
        assert!(bad.problem().is_some(), "{bad:?}");
    }
    // The calibrated value of a raw probability is that of its logit.
    assert!((ok.probability(0.5) - sigmoid(1.0)).abs() < 1e-12);
    assert!((ok.probability(sigmoid(2.0)) - sigmoid(2.0)).abs() < 1e-12);
}

#[test]
fn prevalence_adjustment_is_bayes_on_the_odds() {
    assert_eq!(at_prevalence(0.3, 0.5, 0.5), Some(0.3));
    // Even odds at 50 % become the prior odds at any other prevalence.
    assert!((at_prevalence(0.5, 0.5, 0.1).unwrap() - 0.1).abs() < 1e-12);
    // 0.8 at 50 %: likelihood ratio 4; at 10 % prior odds 1/9 → odds 4/9 → 4/13.
    assert!((at_prevalence(0.8, 0.5, 0.1).unwrap() - 4.0 / 13.0).abs() < 1e-12);
    let there = at_prevalence(0.8, 0.5, 0.2).unwrap();
    assert!((at_prevalence(there, 0.2, 0.5).unwrap() - 0.8).abs() < 1e-12);
    assert_eq!(at_prevalence(1.0, 0.5, 0.01), Some(1.0));
    assert_eq!(at_prevalence(0.0, 0.5, 0.99), Some(0.0));
    for (p, from, to) in [
        (0.5, 0.5, 0.0),
        (0.5, 1.0, 0.5),
        (1.5, 0.5, 0.5),
        (f64::NAN, 0.5, 0.5),
    ] {
        assert_eq!(at_prevalence(p, from, to), None, "{p} {from} {to}");
    }
}

#[test]
fn reliability_bins_are_equal_width_with_one_in_the_last() {
    let r = reliability(&[0.0, 0.05, 0.55, 1.0], &[0, 0, 1, 1], 10);
    assert_eq!(r.bins.len(), 10);
    assert_eq!(r.bins[0].count, 2);
    assert_eq!(r.bins[5].count, 1);
    assert_eq!(r.bins[9].count, 1);
    assert_eq!(r.bins[9].fraction_effusion, Some(1.0));
    assert_eq!(r.bins[3].mean_probability, None);
    assert!((r.bins[9].upper - 1.0).abs() < 1e-12 && r.bins[0].lower == 0.0);
    // |0.025 − 0|·2/4 + |0.55 − 1|/4 + |1 − 1|/4
    assert!(
        (r.ece - (0.025 * 0.5 + 0.45 * 0.25)).abs() < 1e-12,
        "{}",
        r.ece
    );
    let expected =
        -((1.0f64 - 1e-7).ln() + 0.95f64.ln() + 0.55f64.ln() + (1.0f64 - 1e-7).ln()) / 4.0;
    assert!((r.log_loss - expected).abs() < 1e-12, "{}", r.log_loss);
}

#[test]
fn cross_fitted_probabilities_come_from_fits_that_did_not_see_the_image() {
    let (z, labels) = synthetic(2_000, 0.4, -1.0, 7);
    let crossed = cross_fitted(&z, &labels, Method::Platt, 5).unwrap();
    let whole = fit(&z, &labels, Method::Platt).unwrap();
    assert_eq!(crossed.len(), z.len());
    // Close to the fit on everything (plenty of data), but not the same numbers.
    let mut largest = 0.0f64;
    for (&v, &c) in z.iter().zip(&crossed) {
        largest = largest.max((whole.probability_of_logit(v) - c).abs());
    }
    assert!(largest > 0.0 && largest < 0.05, "{largest}");
    assert!(reliability(&crossed, &labels, 10).ece < 0.04);
    // The same images in another order get the same values.
    let (rz, rl): (Vec<f64>, Vec<u8>) = z.iter().zip(&labels).rev().map(|(&a, &b)| (a, b)).unzip();
    let mut again = cross_fitted(&rz, &rl, Method::Platt, 5).unwrap();
    again.reverse();
    assert_eq!(again, crossed);
    // A fold without one class cannot be fitted.
    assert!(cross_fitted(&[0.1, 0.2, 0.3], &[1, 0, 0], Method::Platt, 2).is_err());
}
