//! `predict`: the probability of effusion for each file, and optionally a saliency overlay.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use burn::tensor::Device;
use clap::Args;
use cxr::batch::{BatchRow, to_csv};
use cxr::decode::{check_file_size, decode};
use cxr::preprocess::min_max_normalize;
use cxr::saliency::overlay_rgb;
use cxr::{Classifier, CxrError, Prediction};
use serde_json::json;

use crate::validation::load_classifier;

/// `trainer predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Image files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// A .cxrw weight file; without it, the embedded model.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Write the saliency overlay as PNG here (with several files: NAME.<file stem>.png).
    #[arg(long)]
    pub cam: Option<PathBuf>,
    /// Print one JSON array with an object per file.
    #[arg(long)]
    pub json: bool,
    /// Also write the results as CSV (one row per file, errors included) to this file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

impl PredictArgs {
    pub fn run(self) -> Result<ExitCode> {
        run(
            &self.files,
            self.weights.as_deref(),
            self.cam.as_deref(),
            self.json,
            self.csv.as_deref(),
        )
    }
}

/// Where the overlay of `file` goes: `cam` itself for one file, `cam` with the file's stem
/// inserted for several.
fn cam_path(cam: &Path, file: &Path, several: bool) -> PathBuf {
    if !several {
        return cam.to_path_buf();
    }
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let base = cam
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cam".into());
    cam.with_file_name(format!("{base}.{stem}.png"))
}

fn write_overlay(bytes: &[u8], prediction: &Prediction, out: &Path) -> Result<()> {
    let image = decode(bytes)?;
    let grey = min_max_normalize(&image.pixels)?;
    let rgb = overlay_rgb(
        &grey,
        image.width,
        image.height,
        &prediction.cam,
        prediction.cam_size,
        0.6,
    );
    image::RgbImage::from_raw(image.width as u32, image.height as u32, rgb)
        .context("overlay has the wrong size")?
        .save_with_format(out, image::ImageFormat::Png)
        .with_context(|| out.display().to_string())
}

/// Why one file could not be classified: a short code (as on the page) and a message.
struct Failure {
    code: &'static str,
    message: String,
}

impl Failure {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// Read a file for classification: only a regular file within the size limit is read, so a
/// folder, a pipe or a device (which could block or never end) is refused up front.
fn read_image_file(file: &Path) -> Result<Vec<u8>, Failure> {
    let meta = std::fs::metadata(file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Failure::new("not_found", "no such file (or a broken link)")
        }
        std::io::ErrorKind::PermissionDenied => {
            Failure::new("unreadable", "permission denied: the file cannot be read")
        }
        _ => Failure::new("unreadable", format!("cannot read the file: {e}")),
    })?;
    if meta.is_dir() {
        return Err(Failure::new("not_a_file", "is a folder, not an image file"));
    }
    if !meta.is_file() {
        return Err(Failure::new(
            "not_a_file",
            "is not a regular file (a pipe, socket or device)",
        ));
    }
    check_file_size(meta.len()).map_err(|e| Failure::new("file_too_large", e.to_string()))?;
    std::fs::read(file)
        .map_err(|e| Failure::new("unreadable", format!("cannot read the file: {e}")))
}

fn classify(classifier: &Classifier, file: &Path) -> Result<(Vec<u8>, Prediction), Failure> {
    let bytes = read_image_file(file)?;
    let prediction = classifier
        .classify(&bytes)
        .map_err(|e: CxrError| Failure::new(e.code(), e.to_string()))?;
    Ok((bytes, prediction))
}

/// The result line: the label, the probability (saying when it is calibrated and at which
/// prevalence it holds) and the threshold on the same scale.
fn describe(p: &Prediction, calibrated_at: Option<f64>) -> String {
    match calibrated_at {
        Some(prevalence) => format!(
            "{} (probability of effusion {:.3}, calibrated at {:.0} % prevalence; threshold {:.3}; uncalibrated {:.3})",
            p.label,
            p.probability,
            100.0 * prevalence,
            p.threshold,
            p.uncalibrated_probability
        ),
        None => format!(
            "{} (probability of effusion {:.3}, threshold {:.2})",
            p.label, p.probability, p.threshold
        ),
    }
}

fn run(
    files: &[PathBuf],
    weights: Option<&Path>,
    cam: Option<&Path>,
    as_json: bool,
    csv: Option<&Path>,
) -> Result<ExitCode> {
    // One image at a time: the CPU backend starts instantly, a GPU would not pay off here.
    let classifier = load_classifier(weights, &Device::flex())?;
    let calibrated_at = classifier.info().calibration.map(|c| c.prevalence);
    let mut failed = 0;
    let mut rows = Vec::new();
    let mut batch = Vec::new();
    for file in files {
        let shown = file.display().to_string();
        let result = classify(&classifier, file).and_then(|(bytes, p)| {
            if let Some(cam) = cam {
                write_overlay(&bytes, &p, &cam_path(cam, file, files.len() > 1))
                    .map_err(|m| Failure::new("write_failed", format!("{m:#}")))?;
            }
            Ok(p)
        });
        batch.push(match &result {
            Ok(p) => BatchRow::classified(shown.clone(), p),
            Err(f) => BatchRow::failed(shown.clone(), f.code, &f.message),
        });
        match result {
            Ok(p) => {
                if as_json {
                    rows.push(json!({"file": shown, "probability": p.probability, "label": p.label, "threshold": p.threshold,
                        "uncalibrated_probability": p.uncalibrated_probability, "calibrated": calibrated_at.is_some(),
                        "logits": p.logits, "ood": p.ood, "ood_distance": p.ood_distance}));
                } else {
                    println!("{shown}: {}", describe(&p, calibrated_at));
                    if p.ood == Some(true) {
                        println!(
                            "  warning: this does not look like a frontal chest X-ray; the result is not meaningful"
                        );
                    }
                }
            }
            Err(Failure { code, message }) => {
                failed += 1;
                if as_json {
                    rows.push(json!({"file": shown, "error": message, "code": code}));
                } else {
                    eprintln!("{shown}: error: {message}");
                }
            }
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    if let Some(csv) = csv {
        std::fs::write(csv, to_csv(&batch)).with_context(|| csv.display().to_string())?;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_names() {
        assert_eq!(
            cam_path(Path::new("o/cam.png"), Path::new("a/x.png"), false),
            PathBuf::from("o/cam.png")
        );
        assert_eq!(
            cam_path(Path::new("o/cam.png"), Path::new("a/x.png"), true),
            PathBuf::from("o/cam.x.png")
        );
    }
}
