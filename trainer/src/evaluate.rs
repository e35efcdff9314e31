//! `evaluate`: the metrics of a model on a data folder.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use cxr::Classifier;

use crate::data::{self, Item};
use crate::device::{self, DeviceChoice};
use crate::loader::LoaderConfig;
use crate::metrics::Report;
use crate::run_dir::RunDir;
use crate::validation::{Tta, load_classifier, predict_all};

/// `trainer evaluate`.
#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// Data folder (effusion/ + nofinding/, or NIH layout), or a preprocessed cache.
    #[arg(long)]
    pub data: PathBuf,
    /// A .cxrw weight file; without it, the model embedded in the app.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Evaluate on the validation part of this run's split (RUN_DIR/split.json).
    #[arg(long, conflicts_with = "all")]
    pub run: Option<PathBuf>,
    /// Evaluate every image in --data (by default: the validation files recorded in the
    /// model's card when the data holds them, else every image).
    #[arg(long)]
    pub all: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_enum, default_value = "wgpu")]
    pub backend: DeviceChoice,
}

/// Which images to evaluate, and a line saying why.
fn select(
    items: &[Item],
    classifier: &Classifier,
    run: Option<&Path>,
    all: bool,
) -> Result<(Vec<Item>, String)> {
    if let Some(run) = run {
        let run = RunDir::open(run);
        return Ok((
            run.read_split()?.valid,
            format!("validation part of {}", run.split_path().display()),
        ));
    }
    let recorded: HashSet<&String> = classifier.info().card.validation.files.iter().collect();
    if !all && !recorded.is_empty() {
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
    Ok((items.to_vec(), "every image in the folder".into()))
}

impl EvaluateArgs {
    pub fn run(self) -> Result<()> {
        let (device, _) = device::select(self.backend)?;
        let classifier = load_classifier(self.weights.as_deref(), &device)?;
        let data = data::discover(&self.data)?;
        crate::cache::check_input_size(&self.data, classifier.info().input_size)?;
        let (items, why) = select(&data.items, &classifier, self.run.as_deref(), self.all)?;
        if items.is_empty() {
            bail!("no images to evaluate");
        }
        let loader = LoaderConfig {
            batch_size: 16,
            workers: 2,
            prefetch: 2,
            size: classifier.info().input_size,
        };
        let predictions = predict_all(
            classifier.model(),
            &data.root,
            &items,
            &loader,
            &device,
            self.json,
            Tta::None,
        );
        let failed = predictions.failed.len();
        let report = Report::new(
            &predictions.scores,
            &predictions.labels,
            classifier.info().threshold,
        );
        if self.json {
            let mut value = serde_json::to_value(&report)?;
            value["selection"] = why.into();
            value["failed"] = failed.into();
            // Every file left out: a header that could not be read, or a failed decode (the
            // page's validation mode counts the same).
            value["unreadable"] = (failed + data.skipped.len()).into();
            println!("{}", serde_json::to_string_pretty(&value)?);
            return Ok(());
        }
        println!("model:       {}", classifier.info().name);
        println!(
            "images:      {} ({} effusion), {why}",
            report.images, report.positives
        );
        if failed > 0 || !data.skipped.is_empty() {
            println!("unreadable:  {} skipped", failed + data.skipped.len());
        }
        print_report(&report);
        Ok(())
    }
}

fn print_report(report: &Report) {
    let c = report.confusion;
    println!("AUC:         {}", report.auc_text());
    println!("threshold:   {:.3}", report.threshold);
    println!("accuracy:    {:.3}", report.accuracy);
    println!("sensitivity: {:.3}", report.sensitivity);
    println!("specificity: {:.3}", report.specificity);
    println!("confusion:            predicted effusion  predicted no finding");
    println!("  effusion            {:>18}  {:>20}", c.tp, c.fn_);
    println!("  no finding          {:>18}  {:>20}", c.fp, c.tn);
}
