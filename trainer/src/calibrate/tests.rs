use super::*;
use cxr::ResNetConfig;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scores")
        .join(name)
}

#[test]
fn score_files_with_extra_columns_or_class_names_are_read() {
    let oof = read_scores_csv(&fixture("oof.csv")).unwrap();
    assert_eq!(oof.labels, [1, 1, 1, 0, 0, 0, 1, 0]);
    assert_eq!(oof.scores[..3], [0.91, 0.40, 0.12]);
    assert!(
        oof.source.starts_with("8 held-out scores from"),
        "{}",
        oof.source
    );
    let names = read_scores_csv(&fixture("names.csv")).unwrap();
    assert_eq!((names.labels, names.scores), (vec![1, 0], vec![0.7, 0.2]));
}

#[test]
fn bad_score_files_are_refused_with_the_line_and_the_problem() {
    for (file, expected) in [
        ("no_score_column.csv", "no `score` column"),
        ("bad_label.csv", "line 2: label `yes`"),
        (
            "score_out_of_range.csv",
            "line 2: score `1.7` is not a probability",
        ),
        ("score_nan.csv", "line 2: score `NaN`"),
        ("header_only.csv", "no scores"),
        ("short_row.csv", "line 2"),
        ("not_a_csv.png", "invalid utf-8"),
        ("missing.csv", "missing.csv"),
    ] {
        let err = format!("{:#}", read_scores_csv(&fixture(file)).unwrap_err());
        assert!(err.contains(expected), "{file}: {err}");
    }
}

/// Scores of a model that is right but too unsure, with a threshold at one of them.
fn held_out() -> HeldOut {
    let scores: Vec<f32> = (0..200).map(|i| 0.05 + 0.9 * i as f32 / 199.0).collect();
    // Effusion wherever the score is above 0.35, but for every seventh image: ranked, not perfect.
    let labels = scores
        .iter()
        .enumerate()
        .map(|(i, &s)| u8::from((s > 0.35) != (i % 7 == 0)))
        .collect();
    HeldOut {
        scores,
        labels,
        source: "synthetic".into(),
    }
}

#[test]
fn the_fit_keeps_the_decisions_and_records_what_it_was_fitted_on() {
    let mut info = ModelInfo::new("tiny", ResNetConfig::resnet18());
    let data = held_out();
    info.threshold = data.scores[80];
    let (c, card) = fit_and_measure(&info, &data, Method::Platt, 10, "cmd".into()).unwrap();
    assert!(c.slope > 0.0 && c.problem().is_none(), "{c:?}");
    let positives = data.labels.iter().filter(|&&l| l == 1).count();
    assert_eq!((card.images, card.effusion), (200, positives));
    assert_eq!(c.prevalence, positives as f64 / 200.0);
    assert!(card.after.ece < card.before.ece, "{card:?}");
    let crossed = card.after_cross_fitted.as_ref().unwrap();
    assert_eq!(crossed.bins.iter().map(|b| b.count).sum::<usize>(), 200);
    assert_ne!(crossed.ece, card.after.ece);
    let t = card.threshold.unwrap();
    assert!((t - c.probability(f64::from(info.threshold))).abs() < 1e-12);
    let at = Confusion::at(&data.scores, &data.labels, info.threshold);
    assert_eq!(card.sensitivity, Some(at.sensitivity()));
    assert_eq!(card.specificity, Some(at.specificity()));
    assert_eq!(
        (card.fitted_on.as_str(), card.command.as_deref()),
        ("synthetic", Some("cmd"))
    );
    let (t_only, _) = fit_and_measure(&info, &data, Method::Temperature, 10, "cmd".into()).unwrap();
    assert_eq!(t_only.intercept, 0.0);
}

#[test]
fn scores_of_one_class_cannot_be_fitted() {
    let one = read_scores_csv(&fixture("one_class.csv")).unwrap();
    let info = ModelInfo::new("tiny", ResNetConfig::resnet18());
    let err = fit_and_measure(&info, &one, Method::Platt, 10, String::new()).unwrap_err();
    assert!(format!("{err:#}").contains("both classes"), "{err:#}");
}
