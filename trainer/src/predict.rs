//! `predict`: the probability of effusion for each file, and optionally a saliency overlay.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::tensor::Device;
use cxr::preprocess::{decode, min_max_normalize};
use cxr::saliency::overlay_rgb;
use cxr::{Classifier, CxrError, Prediction};
use serde_json::json;

use crate::evaluate::load_classifier;

/// Where the overlay of `file` goes: `cam` itself for one file, `cam` with the file's stem
/// inserted for several.
fn cam_path(cam: &Path, file: &Path, several: bool) -> PathBuf {
    if !several {
        return cam.to_path_buf();
    }
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    let base = cam.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "cam".into());
    cam.with_file_name(format!("{base}.{stem}.png"))
}

fn write_overlay(bytes: &[u8], prediction: &Prediction, out: &Path) -> Result<(), String> {
    let image = decode(bytes).map_err(|e| e.to_string())?;
    let grey = min_max_normalize(&image.pixels).map_err(|e| e.to_string())?;
    let rgb = overlay_rgb(&grey, image.width, image.height, &prediction.cam, prediction.cam_size, 0.6);
    image::RgbImage::from_raw(image.width as u32, image.height as u32, rgb)
        .ok_or("overlay has the wrong size")?
        .save_with_format(out, image::ImageFormat::Png)
        .map_err(|e| format!("{}: {e}", out.display()))
}

fn classify(classifier: &Classifier, file: &Path) -> Result<(Vec<u8>, Prediction), String> {
    if file.is_dir() {
        return Err("is a folder, not an image file".into());
    }
    let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
    let prediction = classifier.classify(&bytes).map_err(|e: CxrError| e.to_string())?;
    Ok((bytes, prediction))
}

pub fn run(files: &[PathBuf], weights: Option<&Path>, cam: Option<&Path>, as_json: bool) -> Result<ExitCode, String> {
    // One image at a time: the CPU backend starts instantly, a GPU would not pay off here.
    let classifier = load_classifier(weights, &Device::flex())?;
    let mut failed = 0;
    let mut rows = Vec::new();
    for file in files {
        let shown = file.display().to_string();
        let result = classify(&classifier, file).and_then(|(bytes, p)| {
            if let Some(cam) = cam {
                write_overlay(&bytes, &p, &cam_path(cam, file, files.len() > 1))?;
            }
            Ok(p)
        });
        match result {
            Ok(p) => {
                if as_json {
                    rows.push(json!({"file": shown, "probability": p.probability, "label": p.label, "threshold": p.threshold, "logits": p.logits}));
                } else {
                    println!("{shown}: {} (probability of effusion {:.3}, threshold {:.2})", p.label, p.probability, p.threshold);
                }
            }
            Err(message) => {
                failed += 1;
                if as_json {
                    rows.push(json!({"file": shown, "error": message}));
                } else {
                    eprintln!("{shown}: error: {message}");
                }
            }
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_names() {
        assert_eq!(cam_path(Path::new("o/cam.png"), Path::new("a/x.png"), false), PathBuf::from("o/cam.png"));
        assert_eq!(cam_path(Path::new("o/cam.png"), Path::new("a/x.png"), true), PathBuf::from("o/cam.x.png"));
    }
}
