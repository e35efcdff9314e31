//! `trainer predict` on the bad- and unusual-input corpus (tests/inputs, see its make_corpus.py):
//! every bad file gives a clear message and exit code 1, never a panic, within 5 s and under a
//! memory cap; every valid-but-unusual file is classified. The page runs the same corpus in
//! tests/browser/page.test.mjs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Address-space cap for one `predict` run (KiB for `ulimit -v`). The largest valid input is
/// 8000x8000; its decode and f32 copies stay far below this.
const MEMORY_CAP_KIB: u64 = 3 * 1024 * 1024;
const TIME_LIMIT: Duration = Duration::from_secs(5);

fn inputs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/inputs")
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    seconds: f64,
}

/// `trainer predict --json FILE` under `ulimit -v`, killed if it runs past the time limit.
fn predict(file: &Path) -> Run {
    let script = format!("ulimit -v {MEMORY_CAP_KIB} && exec \"$0\" predict --json \"$1\"");
    let start = Instant::now();
    let mut child = Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_trainer")])
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start trainer");
    // A generous wall limit on a busy machine; the 5 s limit is checked on the measured time.
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > TIME_LIMIT * 4 {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("collect output");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        seconds: start.elapsed().as_secs_f64(),
    }
}

fn row(run: &Run, name: &str) -> serde_json::Value {
    let rows: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "{name}: output is not JSON ({e}): {} {}",
            run.stdout, run.stderr
        )
    });
    rows[0].clone()
}

fn assert_clean(run: &Run, name: &str) {
    assert!(
        !run.stderr.contains("panicked"),
        "{name}: panic: {}",
        run.stderr
    );
    assert!(
        run.seconds < TIME_LIMIT.as_secs_f64(),
        "{name}: took {:.1} s",
        run.seconds
    );
}

#[test]
fn every_corpus_file_is_classified_or_refused_clearly() {
    let manifest: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(inputs().join("manifest.json")).unwrap())
            .unwrap();
    assert!(
        manifest.len() >= 25,
        "the corpus has {} kinds",
        manifest.len()
    );
    let mut probability = HashMap::new();
    for entry in &manifest {
        let name = entry["file"].as_str().unwrap();
        let run = predict(&inputs().join(name));
        assert_clean(&run, name);
        let row = row(&run, name);
        match entry["expect"].as_str().unwrap() {
            "classify" => {
                assert_eq!(
                    run.code,
                    Some(0),
                    "{name} ({}) was not classified: {row}",
                    entry["kind"]
                );
                let p = row["probability"].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&p), "{name}: {p}");
                probability.insert(name.to_string(), p);
            }
            "error" => {
                assert_eq!(
                    run.code,
                    Some(1),
                    "{name} ({}): {row} {}",
                    entry["kind"],
                    run.stderr
                );
                let message = row["error"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: no error message: {row}"));
                assert!(
                    message.len() > 40 && message.ends_with('.'),
                    "{name}: message is not a sentence: {message}"
                );
                if let Some(code) = entry["code"].as_str() {
                    assert_eq!(row["code"].as_str(), Some(code), "{name}: {message}");
                }
            }
            other => panic!("unknown expectation {other}"),
        }
    }
    // Files that hold the same picture give the same answer (EXIF rotation undone, 16-bit and
    // 8-bit, misleading extensions, the first frame or page of animated and multi-page files).
    for entry in &manifest {
        if let Some(other) = entry["same_as"].as_str() {
            let name = entry["file"].as_str().unwrap();
            let (a, b) = (probability[name], probability[other]);
            assert!(
                (a - b).abs() < 0.02,
                "{name} gives {a:.4}, {other} gives {b:.4}"
            );
        }
    }
}

#[test]
fn things_that_are_not_image_files_are_refused_without_blocking() {
    let dir = std::env::temp_dir().join(format!("cxr-notfiles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("folder.png")).unwrap();
    std::os::unix::fs::symlink(dir.join("gone.png"), dir.join("broken-link.png")).unwrap();
    let fifo = dir.join("pipe.png");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let cases = [
        (dir.join("folder.png"), "not_a_file", "folder"),
        (dir.join("missing.png"), "not_found", "no such file"),
        (dir.join("broken-link.png"), "not_found", "no such file"),
        // Reading a pipe with no writer, or /dev/zero, would block or never end.
        (fifo, "not_a_file", "not a regular file"),
        (
            PathBuf::from("/dev/zero"),
            "not_a_file",
            "not a regular file",
        ),
    ];
    for (path, code, words) in cases {
        let name = path.display().to_string();
        let run = predict(&path);
        assert_clean(&run, &name);
        assert_eq!(run.code, Some(1), "{name}");
        let row = row(&run, &name);
        assert_eq!(row["code"].as_str(), Some(code), "{name}: {row}");
        assert!(
            row["error"].as_str().unwrap().contains(words),
            "{name}: {row}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_batch_of_the_whole_corpus_gives_one_csv_row_per_file() {
    let manifest: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(inputs().join("manifest.json")).unwrap())
            .unwrap();
    let csv = std::env::temp_dir().join(format!("cxr-batch-{}.csv", std::process::id()));
    let files: Vec<PathBuf> = manifest
        .iter()
        .map(|e| inputs().join(e["file"].as_str().unwrap()))
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["predict", "--csv", csv.to_str().unwrap()])
        .args(&files)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "some corpus files are bad: exit code 1"
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], cxr::batch::CSV_HEADER.join(","));
    assert_eq!(lines.len(), manifest.len() + 1, "{text}");
    for (entry, line) in manifest.iter().zip(&lines[1..]) {
        let name = entry["file"].as_str().unwrap();
        let fields: Vec<&str> = line.splitn(7, ',').collect();
        assert!(fields[0].ends_with(name), "{line}");
        if entry["expect"] == "classify" {
            let p: f64 = fields[1].parse().unwrap_or_else(|_| panic!("{line}"));
            assert!(
                (0.0..=1.0).contains(&p) && ["effusion", "nofinding"].contains(&fields[2]),
                "{line}"
            );
        } else {
            assert!(fields[1].is_empty() && !fields[6].is_empty(), "{line}");
            if let Some(code) = entry["code"].as_str() {
                assert_eq!(fields[5], code, "{line}");
            }
        }
    }
    let _ = std::fs::remove_file(csv);
}
