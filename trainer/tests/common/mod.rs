//! Helpers shared by the trainer's end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .expect("run trainer")
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

pub fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cxr-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `train` options for a tiny, fast run of `data` into `run` (64x64 input, 1/8 width, batch 4,
/// a third of the images for validation).
pub fn tiny_run_args(data: &Path, run: &Path) -> Vec<String> {
    let (data, run) = (data.to_str().unwrap(), run.to_str().unwrap());
    [
        "--data",
        data,
        "--out",
        run,
        "--input-size",
        "64",
        "--width",
        "0.125",
        "--batch-size",
        "4",
        "--valid-fraction",
        "0.34",
    ]
    .map(String::from)
    .to_vec()
}

/// A folder-per-class data set of the fixture X-rays, each written several times (as 8-bit
/// PNG, and re-encoded) so a split has images on both sides.
pub fn dataset(name: &str) -> PathBuf {
    let dir = temp(name);
    for (class, prefix) in [("effusion", "effusion"), ("nofinding", "normal")] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for entry in std::fs::read_dir(fixtures()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with(prefix) && name.ends_with(".png") {
                let img = image::open(&path).unwrap();
                for k in 0..3 {
                    let small = img.resize_exact(
                        96 + 16 * k,
                        96 + 16 * k,
                        image::imageops::FilterType::Triangle,
                    );
                    small
                        .save(dir.join(class).join(format!("{k}-{name}")))
                        .unwrap();
                }
            }
        }
    }
    std::fs::write(dir.join("effusion/corrupt.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
    dir
}

/// `trainer evaluate --json` of a run's best weights on its validation split (`--run`), on the
/// CPU; the command's output.
pub fn evaluate_run(data: &Path, run: &Path) -> Output {
    let weights = run.join("best.cxrw");
    trainer(&[
        "evaluate",
        "--data",
        data.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--run",
        run.to_str().unwrap(),
        "--json",
        "--backend",
        "cpu",
    ])
}
