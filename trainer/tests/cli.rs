//! End-to-end tests of the `trainer` command line on small real X-rays (tests/fixtures).

mod common;

use common::{dataset, evaluate_run, fixtures, temp, tiny_run_args, trainer};

#[test]
fn predict_reports_each_file_and_fails_only_the_bad_ones() {
    let dir = temp("predict");
    let bad = dir.join("notes.png");
    std::fs::write(&bad, "not an image").unwrap();
    let good = fixtures().join("effusion10.png");
    let cam = dir.join("cam.png");
    let out = trainer(&[
        "predict",
        "--json",
        "--cam",
        cam.to_str().unwrap(),
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = rows[0]["probability"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p));
    assert!(["effusion", "nofinding"].contains(&rows[0]["label"].as_str().unwrap()));
    assert!(
        rows[1]["error"]
            .as_str()
            .unwrap()
            .contains("not an image format")
    );
    // Several files: one overlay per good file, named after it, as big as the X-ray.
    let overlay = image::open(dir.join("cam.effusion10.png")).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (512, 512));
    let out = trainer(&["predict", good.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("probability of effusion"));
}

#[test]
fn train_evaluate_resume_and_export() {
    let data = dataset("data");
    let run = temp("run");
    let mut common = tiny_run_args(&data, &run);
    common.extend(["--backend", "cpu", "--quiet"].map(String::from));
    let common: Vec<&str> = common.iter().map(String::as_str).collect();
    let out = trainer(&[&["train", "--epochs", "2"][..], &common[..]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 3, "{metrics}");
    for file in [
        "best.cxrw",
        "split.json",
        "report.json",
        "roc.svg",
        "curves.svg",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("report.json")).unwrap()).unwrap();
    assert!(report["best"]["validation"]["auc"].is_number(), "{report}");

    // A second `train` into the same folder refuses; --resume continues at epoch 3.
    let again = trainer(&[&["train", "--epochs", "3"][..], &common[..]].concat());
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let resumed = trainer(&[
        "train",
        "--epochs",
        "3",
        "--resume",
        run.to_str().unwrap(),
        "--backend",
        "cpu",
        "--quiet",
    ]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 4, "{metrics}");
    assert!(metrics.lines().last().unwrap().starts_with("3,"));

    evaluate_on_the_split(&data, &run);
    export_with_the_gate(&run);
}

/// `evaluate --run` scores the run's validation split.
fn evaluate_on_the_split(data: &std::path::Path, run: &std::path::Path) {
    let eval = evaluate_run(data, run);
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let split: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("split.json")).unwrap()).unwrap();
    assert_eq!(
        report["images"].as_u64().unwrap() as usize,
        split["valid"].as_array().unwrap().len()
    );
    let auc = report["auc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&auc));
}

/// `export` writes the web model with its card, reference logits and gate.
fn export_with_the_gate(run: &std::path::Path) {
    let export = temp("export");
    let sample = fixtures().join("effusion10.png");
    let out = trainer(&[
        "export",
        "--run",
        run.to_str().unwrap(),
        "--out",
        export.to_str().unwrap(),
        "--sample",
        sample.to_str().unwrap(),
        "--ood-negatives",
        fixtures().join("../ood").to_str().unwrap(),
        "--command",
        "trainer train ...",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let card = std::fs::read_to_string(export.join("MODEL_CARD.md")).unwrap();
    assert!(
        card.contains("Not for clinical use")
            && card.contains("Wang X")
            && card.contains("trainer train ...")
    );
    assert!(card.contains("validation X-rays wrongly flagged"), "{card}");
    let info =
        cxr::weights::read_info(&std::fs::read(export.join("effusion.cxrw")).unwrap()).unwrap();
    assert_eq!(info.reference.unwrap().sample, "effusion10.png");
    assert_eq!(info.input_size, 64);
    let gate = info.ood.expect("export fits the not-a-chest-X-ray gate");
    assert_eq!(gate.mean.len(), info.architecture.feature_width());
}

#[test]
fn data_and_output_problems_are_clear_errors() {
    let out = trainer(&[
        "train",
        "--data",
        "/nonexistent/data",
        "--out",
        "/tmp/cxr-never",
        "--backend",
        "cpu",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let data = temp("empty");
    std::fs::create_dir_all(data.join("effusion")).unwrap();
    let out = trainer(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        "/tmp/cxr-never",
        "--backend",
        "cpu",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nofinding"));
    // An output folder that cannot be created is reported before any training.
    let file = data.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = trainer(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        file.join("run").to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot create run folder"));
}

/// `metrics.csv` without its last column (seconds per epoch, which varies between runs).
fn metrics_without_timing(run: &std::path::Path) -> String {
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let rows: Vec<&str> = metrics
        .lines()
        .map(|line| line.rsplit_once(',').map_or(line, |(kept, _seconds)| kept))
        .collect();
    rows.join("\n")
}

#[test]
fn the_same_command_gives_the_same_run() {
    let data = dataset("repeat-data");
    let runs = [temp("repeat-a"), temp("repeat-b")];
    for run in &runs {
        let mut args = vec!["train".to_string(), "--epochs".into(), "2".into()];
        args.extend(tiny_run_args(&data, run));
        args.extend(["--augment-p", "0.5", "--backend", "cpu", "--quiet"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = trainer(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let [a, b] = runs.map(|run| metrics_without_timing(&run));
    assert_eq!(a.lines().count(), 3, "{a}");
    assert_eq!(a, b, "two runs of the same command differ");
}

#[test]
fn calibrate_writes_a_calibrated_model_with_the_same_weights_and_card_and_picture() {
    let out = temp("calibrate");
    let scores = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scores");
    let run = trainer(&[
        "calibrate",
        "--scores",
        scores.join("oof.csv").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("ECE (10 bins)"));
    let bytes = std::fs::read(out.join("effusion.cxrw")).unwrap();
    let info = cxr::weights::read_info(&bytes).unwrap();
    let c = info.calibration.expect("a calibration");
    let card = info.card.calibration.as_ref().expect("its card");
    assert_eq!((card.images, card.effusion), (8, 4));
    assert!(card.fitted_on.contains("oof.csv"), "{}", card.fitted_on);
    // The parameters after the description are the embedded model's, byte for byte.
    let tail = |b: &[u8]| b[b.len() - 1_000_000..].to_vec();
    assert_eq!(tail(&bytes), tail(cxr::embedded::MODEL));
    let md = std::fs::read_to_string(out.join("MODEL_CARD.md")).unwrap();
    assert!(
        md.contains("## Calibration") && md.contains("reliability.svg"),
        "{md}"
    );
    assert!(
        std::fs::read_to_string(out.join("reliability.svg"))
            .unwrap()
            .starts_with("<svg")
    );

    // `predict` with the calibrated file shows the calibrated probability and keeps the label.
    let image = fixtures().join("effusion10.png");
    let weights = out.join("effusion.cxrw");
    let predict = |weights: Option<&std::path::Path>| {
        let mut args = vec!["predict", "--json", image.to_str().unwrap()];
        if let Some(w) = weights {
            args.extend(["--weights", w.to_str().unwrap()]);
        }
        let out = trainer(&args);
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        rows[0].clone()
    };
    let (calibrated, embedded) = (predict(Some(&weights)), predict(None));
    assert_eq!(calibrated["calibrated"], true);
    assert_eq!(calibrated["label"], embedded["label"]);
    let raw = calibrated["uncalibrated_probability"].as_f64().unwrap();
    assert!((raw - embedded["uncalibrated_probability"].as_f64().unwrap()).abs() < 1e-6);
    let z = cxr::calibration::logit(raw);
    let p = calibrated["probability"].as_f64().unwrap();
    assert!(
        (p - c.probability_of_logit(z)).abs() < 1e-4,
        "{p} vs raw {raw}"
    );
}

#[test]
fn calibrate_refuses_bad_scores_and_data_without_the_cards_images() {
    let scores = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scores");
    let out = temp("calibrate-bad");
    let bad = trainer(&[
        "calibrate",
        "--scores",
        scores.join("bad_label.csv").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("line 2: label `yes`"));
    let data = dataset("calibrate-data");
    let missing = trainer(&[
        "calibrate",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("validation files recorded in the model card"),
        "{stderr}"
    );
    assert!(!out.join("effusion.cxrw").exists());
}
