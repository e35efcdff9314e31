//! Tests of the metrics against known cases and brute force.

use super::*;
use crate::rng::Rng;

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
