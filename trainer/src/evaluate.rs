//! `evaluate`: the metrics of a model on a data folder.

use std::collections::HashSet;
use std::path::Path;

use burn::tensor::Device;
use cxr::Classifier;

use crate::data::{self, Item, Split};
use crate::loader::LoaderConfig;
use crate::metrics::Report;
use crate::train::predict_all;

/// Load a weight file, or the embedded model.
pub fn load_classifier(weights: Option<&Path>, device: &Device) -> Result<Classifier, String> {
    match weights {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Classifier::from_bytes(&bytes, device).map_err(|e| format!("{}: {e}", path.display()))
        }
        None => Classifier::embedded(device).map_err(|e| format!("embedded model: {e}")),
    }
}

/// Which images to evaluate, and a line saying why.
fn select(
    items: &[Item],
    classifier: &Classifier,
    run: Option<&Path>,
    all: bool,
) -> Result<(Vec<Item>, String), String> {
    if let Some(run) = run {
        let path = run.join("split.json");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let split: Split =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok((
            split.valid,
            format!("validation part of {}", path.display()),
        ));
    }
    let recorded: Option<HashSet<String>> = classifier.info().card["validation"]["files"]
        .as_array()
        .map(|files| {
            files
                .iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        });
    if !all {
        if let Some(recorded) = recorded.filter(|r| !r.is_empty()) {
            let chosen: Vec<Item> = items
                .iter()
                .filter(|i| recorded.contains(&i.file))
                .cloned()
                .collect();
            if chosen.len() == recorded.len() {
                return Ok((
                    chosen,
                    format!(
                        "the {} validation images recorded in the model card (--all for every image)",
                        recorded.len()
                    ),
                ));
            }
        }
    }
    Ok((items.to_vec(), "every image in the folder".into()))
}

pub fn run(
    data_dir: &Path,
    weights: Option<&Path>,
    run: Option<&Path>,
    all: bool,
    json: bool,
    device: &Device,
) -> Result<(), String> {
    let classifier = load_classifier(weights, device)?;
    let data = data::discover(data_dir).map_err(|e| e.to_string())?;
    let (items, why) = select(&data.items, &classifier, run, all)?;
    if items.is_empty() {
        return Err("no images to evaluate".into());
    }
    let loader = LoaderConfig {
        batch_size: 16,
        workers: 2,
        prefetch: 2,
        size: classifier.info().input_size,
    };
    let (scores, labels, _, _, failed) = predict_all(
        classifier.model(),
        &data.root,
        &items,
        &loader,
        device,
        json,
    );
    let report = Report::new(&scores, &labels, classifier.info().threshold);
    if json {
        let mut value = serde_json::to_value(&report).map_err(|e| e.to_string())?;
        value["selection"] = why.into();
        value["failed"] = failed.len().into();
        println!(
            "{}",
            serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let c = report.confusion;
    println!("model:       {}", classifier.info().name);
    println!(
        "images:      {} ({} effusion), {why}",
        report.images, report.positives
    );
    if !failed.is_empty() || !data.skipped.is_empty() {
        println!("unreadable:  {} skipped", failed.len() + data.skipped.len());
    }
    println!("AUC:         {}", report.auc_text());
    println!("threshold:   {:.3}", report.threshold);
    println!("accuracy:    {:.3}", report.accuracy);
    println!("sensitivity: {:.3}", report.sensitivity);
    println!("specificity: {:.3}", report.specificity);
    println!("confusion:            predicted effusion  predicted no finding");
    println!("  effusion            {:>18}  {:>20}", c.tp, c.fn_);
    println!("  no finding          {:>18}  {:>20}", c.fp, c.tn);
    Ok(())
}
