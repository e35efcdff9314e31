//! `trainer prepare` and the commands that take its cache as --data: an f32 cache gives the very
//! run the raw folder gives (same split, same metrics with augmentation on the fly, same
//! evaluation and cross-validation scores); a cache at another input size, or where raw images
//! are needed, is refused up front. A prepare killed half-way resumes to the same cache.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{dataset, evaluate_run, temp, tiny_run_args, trainer};

fn succeeded(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed_with(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(expected), "{expected}: {stderr}");
}

fn run(args: &[String]) -> Output {
    trainer(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `metrics.csv` without its last column (seconds per epoch).
fn metrics_without_timing(run: &Path) -> String {
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let rows: Vec<&str> = metrics
        .lines()
        .map(|line| line.rsplit_once(',').map_or(line, |(kept, _)| kept))
        .collect();
    rows.join("\n")
}

fn train(data: &Path, out: &Path) -> Output {
    let mut args = vec!["train".to_string(), "--epochs".into(), "2".into()];
    args.extend(tiny_run_args(data, out));
    args.extend(["--augment-p", "0.5", "--backend", "cpu", "--quiet"].map(String::from));
    run(&args)
}

fn evaluate(data: &Path, run: &Path) -> serde_json::Value {
    serde_json::from_str(&succeeded(&evaluate_run(data, run))).unwrap()
}

fn cv(data: &Path, out: &Path) -> String {
    let mut args = vec!["cv".to_string()];
    args.extend(tiny_run_args(data, out));
    args.extend(
        [
            "--folds",
            "2",
            "--epochs",
            "1",
            "--backend",
            "cpu",
            "--quiet",
        ]
        .map(String::from),
    );
    succeeded(&run(&args));
    let oof = std::fs::read_to_string(out.join("oof.csv")).unwrap();
    std::fs::remove_dir_all(out).unwrap();
    oof
}

#[test]
fn train_evaluate_and_cv_on_an_f32_cache_match_the_raw_folder() {
    let data = dataset("cache-data");
    let cache = temp("cache-f32");
    let (d, c) = (data.to_str().unwrap(), cache.to_str().unwrap());
    let prepare = ["prepare", "--data", d, "--out", c, "--input-size", "64"];
    let summary = succeeded(&trainer(&[&prepare[..], &["--quiet"]].concat()));
    assert!(summary.contains("12 images at 64x64 (f32"), "{summary}");
    assert!(summary.contains("1 skipped"), "the corrupt PNG: {summary}");
    let again = succeeded(&trainer(&[&prepare[..], &["--quiet"]].concat()));
    assert!(again.contains("already complete"), "{again}");
    failed_with(
        &trainer(&[&prepare[..], &["--storage", "u8"]].concat()),
        "holds a cache of 64x64 f32 images, not 64x64 u8",
    );

    let (raw_run, cache_run) = (temp("cache-run-raw"), temp("cache-run-cache"));
    succeeded(&train(&data, &raw_run));
    succeeded(&train(&cache, &cache_run));
    let read = |run: &Path, file: &str| std::fs::read_to_string(run.join(file)).unwrap();
    assert_eq!(read(&raw_run, "split.json"), read(&cache_run, "split.json"));
    assert_eq!(
        metrics_without_timing(&raw_run),
        metrics_without_timing(&cache_run),
        "a run on the f32 cache differs from the run on the raw folder"
    );
    assert_eq!(evaluate(&data, &raw_run), evaluate(&cache, &raw_run));
    assert_eq!(
        cv(&data, &temp("cache-cv-raw")),
        cv(&cache, &temp("cache-cv-cache")),
        "out-of-fold scores differ"
    );

    // Refused up front: another input size, a command that needs the raw images.
    let mut args = vec!["train".to_string()];
    args.extend(tiny_run_args(&cache, &temp("cache-run-32")));
    let size = args.iter().position(|a| a == "--input-size").unwrap() + 1;
    args[size] = "32".into();
    args.extend(["--backend", "cpu"].map(String::from));
    failed_with(&run(&args), "trainer prepare --input-size 32");
    let groups = temp("cache-groups").join("groups.json");
    let out = trainer(&["groups", "--data", c, "--out", groups.to_str().unwrap()]);
    failed_with(&out, "reads the raw images");
    for dir in [data, cache, raw_run, cache_run] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// `dataset(name)` with each image hard-linked `copies` times (several chunks of 64 slots).
fn many(name: &str, copies: usize) -> PathBuf {
    let data = dataset(name);
    for class in ["effusion", "nofinding"] {
        let dir = data.join(class);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            for k in 1..copies {
                std::fs::hard_link(&path, dir.join(format!("copy{k}-{file}"))).unwrap();
            }
        }
    }
    data
}

fn index(cache: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(cache.join("cache.json")).ok()?;
    Some(serde_json::from_str(&text).expect("cache.json is always complete JSON"))
}

#[test]
fn prepare_killed_half_way_resumes_to_the_same_cache() {
    let data = many("cache-kill-data", 13);
    let (killed, whole) = (temp("cache-killed"), temp("cache-whole"));
    let args = |out: &Path| {
        let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
        [
            "prepare",
            "--data",
            d,
            "--out",
            o,
            "--input-size",
            "32",
            "--storage",
            "f16",
            "--quiet",
        ]
        .map(String::from)
        .to_vec()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args(&killed))
        .args(["--workers", "1", "--checkpoint-ms", "0"])
        .env("CXR_TEST_SLOW_PREPARE_MS", "10")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start trainer");
    let deadline = Instant::now() + Duration::from_secs(120);
    let recorded = |i: serde_json::Value| i["done"].as_array().is_some_and(|d| !d.is_empty());
    while !index(&killed).is_some_and(recorded) {
        assert!(Instant::now() < deadline, "no progress recorded");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL: no chance to record anything more.
    child.wait().unwrap();
    let after_kill = index(&killed).unwrap();
    assert_eq!(
        after_kill["complete"], false,
        "killed too late to test a resume"
    );
    let mut train = vec!["train".to_string()];
    train.extend(tiny_run_args(&killed, &temp("cache-killed-run")));
    let size = train.iter().position(|a| a == "--input-size").unwrap() + 1;
    train[size] = "32".into();
    failed_with(&run(&train), "is unfinished");

    succeeded(&run(&args(&killed)));
    succeeded(&run(&args(&whole)));
    let (a, b) = (index(&killed).unwrap(), index(&whole).unwrap());
    assert_eq!((&a["items"], &a["done"]), (&b["items"], &b["done"]));
    assert_eq!(a["items"].as_array().unwrap().len(), 156);
    let pixels = |dir: &Path| std::fs::read(dir.join("pixels.bin")).unwrap()[64..].to_vec();
    assert!(pixels(&killed) == pixels(&whole), "resumed pixels differ");
    for dir in [data, killed, whole] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}
