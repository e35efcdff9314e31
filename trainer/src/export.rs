//! `export`: the best checkpoint of a run, with its model card, to where the app embeds it from.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use cxr::Classifier;
use cxr::weights::{self, ModelInfo, Reference};

use crate::data::Split;
use crate::loader::LoaderConfig;
use crate::metrics::{self, Report};
use crate::ood;
use crate::train::{TrainOptions, predict_all, write_atomic};

pub fn run(
    run: &Path,
    out: &Path,
    sample: &Path,
    negatives: &Path,
    command: Option<String>,
) -> Result<(), String> {
    let best = run.join("best.cxrw");
    let bytes = std::fs::read(&best)
        .map_err(|e| format!("{}: {e} (has the run finished an epoch?)", best.display()))?;
    let device = Device::flex();
    let (model, mut info) = weights::decode(&bytes, &device).map_err(|e| e.to_string())?;
    if let Some(command) = command {
        info.card["training"]["command"] = command.into();
    }
    info.card["parameters"] = model.num_params().into();
    let (opts, split) = read_run(run)?;
    revalidate(&opts, &split, &model, &mut info)?;
    fit_ood_gate(&opts, &split, &model, &mut info, negatives)?;
    let classifier = Classifier::new(model.clone(), info.clone(), device.clone());
    let sample_bytes =
        std::fs::read(sample).map_err(|e| format!("sample {}: {e}", sample.display()))?;
    let prediction = classifier
        .classify(&sample_bytes)
        .map_err(|e| format!("sample {}: {e}", sample.display()))?;
    info.reference = Some(Reference {
        sample: sample
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        logits: prediction.logits.to_vec(),
    });
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let encoded = weights::encode(model, &info).map_err(|e| e.to_string())?;
    write_atomic(&out.join("effusion.cxrw"), &encoded)?;
    write_atomic(
        &out.join("MODEL_CARD.md"),
        model_card(&info, encoded.len()).as_bytes(),
    )?;
    println!(
        "exported {} ({} bytes) and MODEL_CARD.md to {}; sample logits {:?}",
        "effusion.cxrw",
        encoded.len(),
        out.display(),
        prediction.logits
    );
    Ok(())
}

/// Choose the threshold and the card's validation figures with the exported (f16) weights on the
/// run's validation split, so that `evaluate` on the shipped model reproduces them.
/// The run's training options and split, as `train` saved them.
pub(crate) fn read_run(run: &Path) -> Result<(TrainOptions, Split), String> {
    let read = |name: &str| -> Result<String, String> {
        std::fs::read_to_string(run.join(name))
            .map_err(|e| format!("{}: {e}", run.join(name).display()))
    };
    let opts: TrainOptions =
        serde_json::from_str(&read("options.json")?).map_err(|e| e.to_string())?;
    let split: Split = serde_json::from_str(&read("split.json")?).map_err(|e| e.to_string())?;
    Ok((opts, split))
}

fn revalidate(
    opts: &TrainOptions,
    split: &Split,
    model: &cxr::ResNet,
    info: &mut ModelInfo,
) -> Result<(), String> {
    if !opts.data.is_dir() {
        eprintln!(
            "warning: {} is not here; the card keeps the training-time validation figures",
            opts.data.display()
        );
        return Ok(());
    }
    let loader = LoaderConfig {
        batch_size: 16,
        workers: 2,
        prefetch: 2,
        size: info.input_size,
    };
    let (scores, labels, _, _, failed) = predict_all(
        model,
        &opts.data,
        &split.valid,
        &loader,
        &Device::flex(),
        true,
    );
    if !failed.is_empty() {
        return Err(format!(
            "{} validation image(s) could not be read",
            failed.len()
        ));
    }
    let threshold = metrics::threshold_for_sensitivity(&scores, &labels, opts.target_sensitivity);
    let report = Report::new(&scores, &labels, threshold);
    info.threshold = threshold;
    let v = &mut info.card["validation"];
    v["auc"] = serde_json::json!(report.auc);
    v["auc_ci95"] = serde_json::json!(report.auc_ci95);
    v["threshold"] = serde_json::json!(threshold);
    v["accuracy"] = serde_json::json!(report.accuracy);
    v["sensitivity"] = serde_json::json!(report.sensitivity);
    v["specificity"] = serde_json::json!(report.specificity);
    v["confusion"] = serde_json::json!(report.confusion);
    v["weights"] = "exported f16 weights".into();
    Ok(())
}

/// Fit the not-a-chest-X-ray gate on the training split's features and choose its shrinkage
/// by measurement on the validation X-rays and the images in `negatives` (see [`crate::ood`]).
fn fit_ood_gate(
    opts: &TrainOptions,
    split: &Split,
    model: &cxr::ResNet,
    info: &mut ModelInfo,
    negatives: &Path,
) -> Result<(), String> {
    if !opts.data.is_dir() {
        return Err(format!(
            "{} is not here: the not-a-chest-X-ray gate is fitted on the training images",
            opts.data.display()
        ));
    }
    let device = Device::flex();
    let loader = LoaderConfig {
        batch_size: 16,
        workers: 2,
        prefetch: 2,
        size: info.input_size,
    };
    let train = ood::features_of(model, &opts.data, &split.train, &loader, &device);
    let valid = ood::features_of(model, &opts.data, &split.valid, &loader, &device);
    let (negative_features, unreadable) =
        ood::features_of_folder(model, negatives, info.input_size, &device)?;
    if negative_features.is_empty() {
        return Err(format!(
            "{}: no readable non-X-ray images to measure the gate with",
            negatives.display()
        ));
    }
    let (all, best) = ood::choose(&train, &valid, &negative_features)?;
    eprintln!(
        "not-a-chest-X-ray gate ({} training X-rays; threshold at their {} % quantile):",
        train.len(),
        ood::TRAIN_QUANTILE * 100.0
    );
    eprintln!("| shrinkage | validation X-rays flagged | non-X-rays caught |");
    for (i, (_, m)) in all.iter().enumerate() {
        eprintln!(
            "| {}{} | {}/{} ({:.1} %) | {}/{} ({:.0} %) |",
            m.shrinkage,
            if i == best { " (chosen)" } else { "" },
            m.validation_flagged,
            m.validation_images,
            100.0 * m.false_flag_rate(),
            m.negatives_caught,
            m.negatives,
            100.0 * m.catch_rate()
        );
    }
    let (gate, measured) = all[best].clone();
    info.ood = Some(gate);
    info.card["ood"] = serde_json::json!({
        "method": "Mahalanobis distance of the pooled last-stage features to the training X-rays, covariance shrunk towards its mean variance",
        "chosen": measured,
        "candidates": all.iter().map(|(_, m)| m).collect::<Vec<_>>(),
        "negatives_folder": negatives.display().to_string(),
        "negatives_unreadable": unreadable,
        "rule": format!("most non-X-rays caught with at most {} % of validation X-rays flagged; threshold at the {} % quantile of the training X-rays", ood::MAX_FALSE_FLAGS * 100.0, ood::TRAIN_QUANTILE * 100.0),
    });
    Ok(())
}

fn num(v: &serde_json::Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.3}"))
        .unwrap_or_else(|| "n/a".into())
}

/// The model card as Markdown, from the description stored with the weights.
pub fn model_card(info: &ModelInfo, file_bytes: usize) -> String {
    let c = &info.card;
    let v = &c["validation"];
    let t = &c["training"];
    let ci = v["auc_ci95"]
        .as_array()
        .map(|a| format!(" (95 % CI {}–{})", num(&a[0]), num(&a[1])))
        .unwrap_or_default();
    format!(
        "# Model card: {name}

**Not for clinical use.** A research and teaching demonstration; it must not be used to diagnose,
treat or triage patients.

| | |
|---|---|
| Task | pleural effusion vs no finding on a frontal chest X-ray |
| Architecture | ResNet of BasicBlocks, 1-channel stem, stem width {stem}, stage widths {widths:?}, depths {depths:?} |
| Parameters | {params} |
| Weight file | {kib:.0} KiB (f16) |
| Input | whole image, greyscale, min-max normalised, stretched to {size}x{size} |
| Threshold | {threshold:.2} on the probability of effusion |
| Validation AUC | {auc}{ci} on {vn} images ({vp} effusion) |
| At the threshold | sensitivity {sens}, specificity {spec}, accuracy {acc} |
| Training images | {tn} ({tp} effusion, {tneg} no finding) |
| Trained | {date}, epoch {epoch} chosen by best validation AUC |

## Data
800 frontal chest radiographs from the NIH Clinical Center ChestX-ray14 data set (400 \"Effusion\",
400 \"No Finding\"), downscaled to 512x512, split 80/20 per class with a fixed seed. Patient IDs are not
known for this subset, so one patient may appear on both sides of the split: treat the validation
figures as optimistic. Many effusion films are portable AP views with lines, tubes and markers; the
model may use such shortcuts, and the saliency map shows where it looked.

Acknowledgement: data from the NIH Clinical Center (https://nihcc.app.box.com/v/ChestXray-NIHCC).
Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale Chest X-ray Database and
Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax Diseases. CVPR 2017.

## Not-a-chest-X-ray check
{ood}

## Intended use
Education and research: to show what a small convolutional network learns from chest X-rays and
where it looks. Not validated on any population; its labels come from NIH's text-mined reports,
which contain errors.

## Training command
```
{command}
```
",
        name = info.name,
        stem = info.architecture.stem_width,
        widths = info.architecture.widths,
        depths = info.architecture.depths,
        params = c["parameters"].as_u64().map(|p| p.to_string()).unwrap_or_else(|| "n/a".into()),
        kib = file_bytes as f64 / 1024.0,
        size = info.input_size,
        threshold = info.threshold,
        auc = num(&v["auc"]),
        vn = v["images"],
        vp = v["effusion"],
        sens = num(&v["sensitivity"]),
        spec = num(&v["specificity"]),
        acc = num(&v["accuracy"]),
        tn = t["images"],
        tp = t["effusion"],
        tneg = t["nofinding"],
        date = c["date"].as_str().unwrap_or("n/a"),
        epoch = c["epoch"],
        command = t["command"].as_str().unwrap_or("(not recorded)"),
        ood = ood_text(&c["ood"]),
    )
}

fn ood_text(o: &serde_json::Value) -> String {
    let m = &o["chosen"];
    if m.is_null() {
        return "None in this model file.".into();
    }
    let missed = m["missed"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    format!(
        "Every image is also checked for looking unlike the training X-rays: {method}. The page and \
`predict` warn \"this does not look like a frontal chest X-ray\" when the distance is above {threshold:.2} \
(the {q} % quantile of the training X-rays; shrinkage {shrink}).\n\n\
| measured on held-out images | rate |\n|---|---|\n\
| validation X-rays wrongly flagged | {vf}/{vn} ({vr:.1} %) |\n\
| images that are not frontal chest X-rays caught ({folder}) | {nc}/{nn} ({nr:.0} %) |\n\n\
Candidates (threshold at the same quantile; the rule: {rule}):\n\n\
| shrinkage | validation X-rays flagged | non-X-rays caught |\n|---|---|---|\n{candidates}\n\
Missed by the chosen gate: {missed}. The non-X-ray set is small (30 images: photos, textures, astronomy, microscopy, a retina \
photograph, a CT phantom, drawings, a document, a screenshot, noise): the rates are indicative, not a guarantee. Lateral \
chest views and X-rays of other body parts were not available to test; expect the gate to miss some of those.",
        method = o["method"].as_str().unwrap_or(""),
        threshold = m["threshold"].as_f64().unwrap_or(f64::NAN),
        q = ood::TRAIN_QUANTILE * 100.0,
        shrink = m["shrinkage"],
        vf = m["validation_flagged"],
        vn = m["validation_images"],
        vr = 100.0 * m["validation_flagged"].as_f64().unwrap_or(0.0)
            / m["validation_images"].as_f64().unwrap_or(1.0).max(1.0),
        nc = m["negatives_caught"],
        nn = m["negatives"],
        nr = 100.0 * m["negatives_caught"].as_f64().unwrap_or(0.0)
            / m["negatives"].as_f64().unwrap_or(1.0).max(1.0),
        folder = o["negatives_folder"].as_str().unwrap_or(""),
        missed = if missed.is_empty() {
            "none".to_string()
        } else {
            missed
        },
        rule = o["rule"].as_str().unwrap_or(""),
        candidates = o["candidates"]
            .as_array()
            .map(|a| a
                .iter()
                .map(|c| format!(
                    "| {} | {}/{} | {}/{} |\n",
                    c["shrinkage"],
                    c["validation_flagged"],
                    c["validation_images"],
                    c["negatives_caught"],
                    c["negatives"]
                ))
                .collect::<String>())
            .unwrap_or_default(),
    )
}
