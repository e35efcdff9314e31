//! End-to-end tests of `trainer cv` (cross-validation), `trainer cv compare` and `trainer groups`
//! on tiny runs of the fixture X-rays.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{dataset, temp, tiny_run_args, trainer};

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn files_of(items: &serde_json::Value) -> HashSet<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["file"].as_str().unwrap().to_string())
        .collect()
}

fn succeeded(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cv` args of a tiny run of `data` into `out`.
fn cv_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["cv".to_string()];
    args.extend(tiny_run_args(data, out));
    args.extend(["--backend", "cpu", "--quiet"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn cv(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let args = cv_args(data, out, extra);
    trainer(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The leak check: in every fold, the images the training run used (its split: training and
/// the inner validation where the epoch and threshold were chosen, also as recorded in the best
/// checkpoint's card) are disjoint from the images the fold scored.
fn assert_no_fold_saw_its_scored_images(out: &Path, folds: usize) -> HashMap<String, usize> {
    let mut fold_of = HashMap::new();
    for k in 1..=folds {
        let dir = out.join(format!("repeat1-fold{k}"));
        let split = json(&dir.join("split.json"));
        let scores = json(&dir.join("scores.json"));
        let scored: HashSet<String> = scores["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect();
        assert!(!scored.is_empty());
        let (train, valid) = (files_of(&split["train"]), files_of(&split["valid"]));
        assert!(
            train.is_disjoint(&scored),
            "fold {k} trained on scored images"
        );
        assert!(
            valid.is_disjoint(&scored),
            "fold {k} selected on scored images"
        );
        let card = cxr::weights::read_info(&std::fs::read(dir.join("best.cxrw")).unwrap())
            .unwrap()
            .card;
        let selected: HashSet<String> = card.validation.files.into_iter().collect();
        assert_eq!(selected, valid, "fold {k}: the card's selection set");
        for f in scored {
            assert!(fold_of.insert(f.clone(), k).is_none(), "{f} scored twice");
        }
    }
    fold_of
}

#[test]
fn groups_finds_the_copies_of_one_x_ray() {
    let data = dataset("groups-data");
    let out = temp("groups-out").join("groups.json");
    let sheet = out.with_file_name("pairs.png");
    let stdout = succeeded(&trainer(&[
        "groups",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--sheet",
        sheet.to_str().unwrap(),
        "--show",
        "6",
        "--quiet",
    ]));
    assert!(stdout.contains("4 group(s) of 12 images"), "{stdout}");
    let groups = json(&out);
    // The data set holds each fixture X-ray three times (resized): each is one group.
    for group in groups["groups"].as_array().unwrap() {
        let names: HashSet<&str> = group
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().split_once('-').unwrap().1)
            .collect();
        assert_eq!(
            (group.as_array().unwrap().len(), names.len()),
            (3, 1),
            "{group}"
        );
    }
    let picture = image::open(&sheet).unwrap();
    // Six pairs, four a row: two rows of 128-pixel images.
    assert_eq!(picture.height(), 2 * (128 + 6) + 6);
}

/// The ResNet-50 similarity links the copies too. Needs the ImageNet weights in the cache
/// (`trainer imagenet fetch`) and, in practice, a release build (`cargo test --release`).
#[test]
#[ignore = "needs the 95 MB ImageNet weights in the cache (trainer imagenet fetch)"]
fn groups_by_resnet50_features_find_the_copies() {
    let data = dataset("groups-r50-data");
    let out = temp("groups-r50-out").join("groups.json");
    let stdout = succeeded(&trainer(&[
        "groups",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--method",
        "resnet50",
        "--threshold",
        "0.1",
        "--quiet",
    ]));
    assert!(stdout.contains("4 group(s) of 12 images"), "{stdout}");
}

#[test]
fn cv_scores_every_image_out_of_fold_keeps_groups_and_compares_on_the_same_folds() {
    let data = dataset("cv-data");
    let base = temp("cv");
    // Two copies of each fixture X-ray are one group; the third stands alone.
    let names = ["effusion/{}-effusion10.png", "effusion/{}-effusion101.png"];
    let normal = ["nofinding/{}-normal0.png", "nofinding/{}-normal1.png"];
    let groups: Vec<Vec<String>> = names
        .iter()
        .chain(&normal)
        .map(|n| vec![n.replace("{}", "0"), n.replace("{}", "1")])
        .collect();
    let groups_file = base.join("groups.json");
    let text =
        serde_json::json!({"method": "by hand", "threshold": 0, "images": 12, "groups": groups});
    std::fs::write(&groups_file, text.to_string()).unwrap();
    let a = base.join("a");
    let g = groups_file.to_str().unwrap();
    let stdout = succeeded(&cv(
        &data,
        &a,
        &["--folds", "3", "--epochs", "2", "--groups", g],
    ));
    assert!(
        stdout.contains("out-of-fold AUC") && stdout.contains("per-fold AUC"),
        "{stdout}"
    );
    let report = json(&a.join("report.json"));
    assert_eq!(report["images"], 12, "{report}");
    assert_eq!(report["per_fold"].as_array().unwrap().len(), 3);
    assert_eq!(report["groups"], 4);
    let auc = report["auc"].as_f64().unwrap();
    let (lo, hi) = (
        report["auc_ci95"][0].as_f64().unwrap(),
        report["auc_ci95"][1].as_f64().unwrap(),
    );
    assert!(lo <= auc && auc <= hi, "{report}");
    let oof = std::fs::read_to_string(a.join("oof.csv")).unwrap();
    assert_eq!(oof.lines().count(), 13, "{oof}");
    assert!(
        std::fs::read_to_string(a.join("roc.svg"))
            .unwrap()
            .starts_with("<svg")
    );

    let fold_of = assert_no_fold_saw_its_scored_images(&a, 3);
    assert_eq!(fold_of.len(), 12);
    for group in &groups {
        assert_eq!(
            fold_of[&group[0]], fold_of[&group[1]],
            "group {group:?} split"
        );
    }
    for label in ["effusion/", "nofinding/"] {
        let folds: HashSet<usize> = fold_of
            .iter()
            .filter(|(f, _)| f.starts_with(label))
            .map(|(_, &k)| k)
            .collect();
        assert_eq!(folds.len(), 3, "{label} images in every fold (stratified)");
    }

    compare_on_the_same_folds_only(&data, &a, g);
    flipped_scores_are_a_cv_on_the_same_folds(&a);
    a_grouped_cv_has_no_leaks(&a, g);
    calibrated_on_the_cv_the_card_records_its_figures(&data, &a);
}

/// `cv leaks`: a cv that kept every group in one fold scored no image beside a film of its group.
fn a_grouped_cv_has_no_leaks(a: &Path, groups: &str) {
    let stdout = succeeded(&trainer(&[
        "cv",
        "leaks",
        a.to_str().unwrap(),
        "--groups",
        groups,
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["images_in_groups"], 8, "{report}");
    assert_eq!(report["leaked"], 0, "{report}");
    assert_eq!(report["difference"], 0.0, "{report}");
}

/// `calibrate --cv`: fitted on the cv's out-of-fold scores, with the cv's figures in the card;
/// checked on the model's own validation images; refused for a model of another input size
/// (not the cv's recipe).
fn calibrated_on_the_cv_the_card_records_its_figures(data: &Path, a: &Path) {
    let out = a.with_file_name("calibrated");
    let weights = a.join("repeat1-fold1").join("best.cxrw");
    let stdout = succeeded(&trainer(&[
        "calibrate",
        "--cv",
        a.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(stdout.contains("12 out-of-fold scores"), "{stdout}");
    assert!(
        stdout.contains("held-out images (not in the fit)"),
        "{stdout}"
    );
    let report = json(&a.join("report.json"));
    let info = cxr::weights::read_info(&std::fs::read(out.join("effusion.cxrw")).unwrap()).unwrap();
    let cv = info
        .card
        .cross_validation
        .expect("the cv's figures in the card");
    assert_eq!(cv.auc, report["auc"].as_f64(), "{report}");
    assert_eq!((cv.images, cv.folds, cv.groups), (12, 3, 4));
    assert_eq!(cv.fold_aucs.len(), 3);
    assert!(info.calibration.is_some());
    let check = info
        .card
        .calibration
        .and_then(|c| c.check)
        .expect("the check");
    assert_eq!(check.images, info.card.validation.files.len());
    let card = std::fs::read_to_string(out.join("MODEL_CARD.md")).unwrap();
    let auc = format!("pooled out-of-fold AUC **{:.3}", cv.auc.unwrap());
    assert!(card.contains(&auc), "{card}");
    // The embedded model takes 256x256 inputs; these fold models 64x64.
    let refused = trainer(&[
        "calibrate",
        "--cv",
        a.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("not its recipe"),
        "{stderr}"
    );
}

/// `cv tta`: the fold models score again with the mirror image; a new cv folder on the same
/// folds (so `cv compare` accepts it) whose scores differ from the plain ones.
fn flipped_scores_are_a_cv_on_the_same_folds(a: &Path) {
    let flip = a.with_file_name("a-flip");
    let stdout = succeeded(&trainer(&[
        "cv",
        "tta",
        a.to_str().unwrap(),
        "--out",
        flip.to_str().unwrap(),
    ]));
    assert!(stdout.contains("out-of-fold AUC"), "{stdout}");
    let plain = std::fs::read_to_string(a.join("oof.csv")).unwrap();
    let flipped = std::fs::read_to_string(flip.join("oof.csv")).unwrap();
    assert_eq!(flipped.lines().count(), plain.lines().count());
    assert_ne!(flipped, plain, "the mirror image changes the scores");
    succeeded(&trainer(&[
        "cv",
        "compare",
        flip.to_str().unwrap(),
        a.to_str().unwrap(),
    ]));
    let again = trainer(&[
        "cv",
        "tta",
        a.to_str().unwrap(),
        "--out",
        flip.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a cv"));
}

/// `cv --distill-from`: each fold's teachers are fine-tuned inside the fold and know only its
/// training images; their ensemble is a cv of its own on the same folds. Needs the ImageNet
/// weights in the cache and, in practice, a release build.
#[test]
#[ignore = "needs the 95 MB ImageNet weights in the cache (trainer imagenet fetch)"]
fn a_distilled_cv_gives_each_fold_teachers_that_never_saw_it() {
    let data = dataset("cv-distill-data");
    let out = temp("cv-distill");
    std::fs::remove_dir_all(&out).unwrap();
    let teachers = [
        "--distill-from",
        "imagenet-resnet50",
        "--teacher-folds",
        "2",
        "--teacher-head-epochs",
        "1",
        "--teacher-tune-epochs",
        "1",
    ];
    let mut extra = vec!["--folds", "2", "--epochs", "1"];
    extra.extend(teachers);
    let stdout = succeeded(&cv(&data, &out, &extra));
    assert!(stdout.contains("the teachers' ensemble"), "{stdout}");
    let fold_of = assert_no_fold_saw_its_scored_images(&out, 2);
    for k in 1..=2 {
        let dir = out.join(format!("repeat1-fold{k}"));
        let split = json(&dir.join("split.json"));
        let teacher = json(&dir.join("teacher.json"));
        let taught: HashSet<String> = teacher.as_object().unwrap().keys().cloned().collect();
        assert_eq!(taught, files_of(&split["train"]), "fold {k}");
        assert!(taught.iter().all(|f| fold_of[f] != k), "fold {k}");
    }
    succeeded(&trainer(&[
        "cv",
        "compare",
        out.join("teachers").to_str().unwrap(),
        out.to_str().unwrap(),
    ]));
}

/// `cv compare`: a paired result against a cv on the same folds, refused against other folds;
/// and a second cv into a used folder is refused.
fn compare_on_the_same_folds_only(data: &Path, a: &Path, g: &str) {
    let base = a.parent().unwrap();
    // The same folds (same data, groups and seed) with another learning rate: a paired result.
    let b = base.join("b");
    succeeded(&cv(
        data,
        &b,
        &[
            "--folds", "3", "--epochs", "2", "--groups", g, "--lr", "0.003",
        ],
    ));
    let compared = succeeded(&trainer(&[
        "cv",
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--json",
    ]));
    let d: serde_json::Value = serde_json::from_str(&compared).unwrap();
    let diff = d["difference"].as_f64().unwrap();
    let (dlo, dhi) = (
        d["ci95"][0].as_f64().unwrap(),
        d["ci95"][1].as_f64().unwrap(),
    );
    assert!(
        dlo <= diff && diff <= dhi && (-1.0..=1.0).contains(&diff),
        "{d}"
    );
    // Other folds: refused.
    let c = base.join("c");
    succeeded(&cv(data, &c, &["--folds", "2", "--epochs", "1"]));
    let refused = trainer(&["cv", "compare", a.to_str().unwrap(), c.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("same images and folds"));
    // A second cv into a used folder is refused.
    let again = cv(data, a, &["--folds", "3"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
}

fn mtime(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn a_killed_cv_resumes_and_skips_finished_folds() {
    let data = dataset("cv-crash-data");
    let out = temp("cv-crash");
    std::fs::remove_dir_all(&out).unwrap();
    let args = cv_args(&data, &out, &["--folds", "3", "--epochs", "8"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let second = out.join("repeat1-fold2");
    let started = Instant::now();
    // Kill in the middle of fold 2, once it has committed an epoch.
    while !second.join("state.json").is_file() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "cv ended before it was killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "fold 2 never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let first_scores = out.join("repeat1-fold1/scores.json");
    let finished = mtime(&first_scores);
    assert!(!second.join("scores.json").exists());
    let resumed = trainer(&["cv", "--resume", out.to_str().unwrap(), "--backend", "cpu"]);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains("resuming after epoch"), "{stderr}");
    assert!(
        !stderr.contains("fold 1/3"),
        "the finished fold ran again: {stderr}"
    );
    assert_eq!(mtime(&first_scores), finished);
    let metrics = std::fs::read_to_string(second.join("metrics.csv")).unwrap();
    let epochs: Vec<&str> = metrics
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(
        epochs,
        ["1", "2", "3", "4", "5", "6", "7", "8"],
        "{metrics}"
    );
    assert_no_fold_saw_its_scored_images(&out, 3);
    assert!(out.join("report.json").is_file());
}

#[test]
fn bad_groups_files_are_refused_with_a_clear_message() {
    let data = dataset("groups-bad-data");
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/groups");
    let expected = [
        ("single-file-group.json", "at least two"),
        ("file-in-two-groups.json", "listed twice"),
        ("unknown-file.json", "not-in-the-data.png"),
        ("truncated.json", "not a groups file"),
        ("csv-not-json.json", "not a groups file"),
        ("numbers-not-files.json", "not a groups file"),
        ("unknown-field.json", "not a groups file"),
    ];
    for (name, message) in expected {
        let out = temp("groups-bad-run");
        let path = corpus.join(name);
        let result = cv(
            &data,
            &out,
            &["--folds", "2", "--groups", path.to_str().unwrap()],
        );
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(message) && stderr.contains(name),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    let missing = cv(
        &data,
        &temp("groups-missing"),
        &["--groups", "/nonexistent/groups.json"],
    );
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read groups file"));
}
