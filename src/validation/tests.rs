//! The streaming session against the whole-set metrics it must equal.

use super::*;
use crate::rng::Rng;

fn scored(n: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let labels: Vec<u8> = (0..n).map(|i| u8::from(i % 3 == 0)).collect();
    let scores = labels
        .iter()
        .map(|&l| (0.6 * rng.uniform() + 0.35 * f32::from(l)).min(1.0))
        .collect();
    (scores, labels)
}

#[test]
fn one_file_at_a_time_gives_the_trainers_report() {
    let (scores, labels) = scored(120, 5);
    let mut session = Session::new(0.4);
    for (i, (&s, &l)) in scores.iter().zip(&labels).enumerate() {
        session.add_scored(l, s, Some(i % 10 == 0)).unwrap();
    }
    session.add_unreadable("a.png".into(), "corrupt".into(), "Broken.".into());
    let summary = session.summary(0.4, true);
    let expected = Report::new(&scores, &labels, 0.4);
    assert_eq!(summary.report.auc, expected.auc);
    assert_eq!(summary.report.auc_ci95, expected.auc_ci95);
    assert!(summary.report.auc_ci95.is_some());
    assert_eq!(summary.report.confusion, expected.confusion);
    assert_eq!(summary.report.images, 120);
    assert_eq!(summary.report.positives, 40);
    assert_eq!((summary.unreadable, summary.ood_flagged), (1, 12));
    assert_eq!(summary.roc, metrics::roc(&scores, &labels));
    // The CI is kept across thresholds and dropped when a file is added.
    assert_eq!(
        session.summary(0.7, false).report.auc_ci95,
        expected.auc_ci95
    );
    session.add_scored(1, 0.9, None).unwrap();
    assert_eq!(session.summary(0.4, false).report.auc_ci95, None);
}

#[test]
fn re_thresholding_moves_sensitivity_and_specificity() {
    let (scores, labels) = scored(90, 8);
    let mut session = Session::new(0.5);
    for (&s, &l) in scores.iter().zip(&labels) {
        session.add_scored(l, s, None).unwrap();
    }
    let target = 0.95;
    let t = session.threshold_for_sensitivity(target);
    let at = session.summary(t, false).report;
    assert!(at.sensitivity >= target, "{}", at.sensitivity);
    assert_eq!(
        t,
        metrics::threshold_for_sensitivity(&scores, &labels, target)
    );
    let strict = session.summary(0.9, false).report;
    assert!(strict.sensitivity < at.sensitivity && strict.specificity > at.specificity);
    let svg = session.roc_svg(t);
    assert!(svg.contains("<circle") && svg.contains("AUC"));
}

#[test]
fn bad_additions_are_refused_and_unreadable_files_grouped() {
    let mut session = Session::new(0.5);
    assert_eq!(
        session.add_scored(2, 0.5, None),
        Err(SessionError::Label(2))
    );
    assert!(session.add_scored(1, f32::NAN, None).is_err());
    for i in 0..5 {
        session.add_unreadable(format!("t{i}.png"), "truncated".into(), "Cut short.".into());
    }
    session.add_unreadable(
        "x.txt".into(),
        "unsupported_format".into(),
        "Not an image.".into(),
    );
    let summary = session.summary(0.5, true);
    assert_eq!(summary.report.images, 0);
    assert_eq!(summary.report.auc, None);
    assert_eq!(summary.unreadable, 6);
    let first = &summary.unreadable_reasons[0];
    assert_eq!(
        (first.code.as_str(), first.count, first.files.len()),
        ("truncated", 5, 3)
    );
    let json = session.report_json(0.3, "m");
    assert_eq!(json["unreadable_files"].as_array().map(Vec::len), Some(6));
    assert_eq!(json["operating_point"], "a local choice");
    assert!(json["auc"].is_null());
}
