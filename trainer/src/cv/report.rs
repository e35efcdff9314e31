//! What a cross-validation reports: the pooled out-of-fold AUC with its bootstrap CI, each
//! fold's AUC, sensitivity and specificity at each fold's own threshold (chosen on its inner
//! validation split), `oof.csv`, `report.json` and `roc.svg`.

use std::collections::HashMap;

use anyhow::{Result, bail};
use cxr::model_card::CrossValidationCard;
use serde::Serialize;

use super::bootstrap::{self, OofScores};
use super::files::{CvDir, FoldScores, OOF, REPORT, ROC};
use super::plan::CvPlan;
use crate::metrics::{self, Confusion};
use crate::options::TrainOptions;
use crate::plots;
use crate::run_dir::write_atomic;

/// Bootstrap resamples of the CIs.
pub const RESAMPLES: usize = 2000;
const SEED: u64 = 12345;

/// One fold's figures in `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct FoldSummary {
    pub repeat: usize,
    pub fold: usize,
    pub images: usize,
    pub positives: usize,
    pub auc: Option<f64>,
    pub best_epoch: usize,
    pub threshold: f32,
    pub sensitivity: f64,
    pub specificity: f64,
}

/// `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct CvReport<'a> {
    pub folds: usize,
    pub repeats: usize,
    pub images: usize,
    pub positives: usize,
    /// Groups (patients) of more than one image that were kept in one fold.
    pub groups: usize,
    /// Images left out because some fold could not read them.
    pub unscored: usize,
    /// Pooled out-of-fold AUC (the mean over repeats of each repeat's pooled AUC).
    pub auc: Option<f64>,
    pub auc_ci95: Option<(f64, f64)>,
    pub auc_per_repeat: Vec<Option<f64>>,
    /// Each fold scored at its own threshold, the confusion summed over folds and repeats.
    pub operating_point: OperatingPoint,
    pub per_fold: Vec<FoldSummary>,
    pub options: &'a TrainOptions,
    pub files: [&'static str; 2],
}

#[derive(Debug, Clone, Serialize)]
pub struct OperatingPoint {
    pub rule: String,
    pub sensitivity: f64,
    pub specificity: f64,
    pub confusion: Confusion,
}

/// The out-of-fold scores of the images every repeat scored, in the plan's order.
pub fn pooled(plan: &CvPlan, folds: &[FoldScores]) -> OofScores {
    let mut by_file: Vec<HashMap<&str, f32>> = vec![HashMap::new(); plan.repeats];
    for f in folds {
        for (file, &score) in f.files.iter().zip(&f.scores) {
            by_file[f.repeat].insert(file.as_str(), score);
        }
    }
    let kept: Vec<usize> = (0..plan.items.len())
        .filter(|&i| {
            let file = plan.items[i].file.as_str();
            by_file.iter().all(|m| m.contains_key(file))
        })
        .collect();
    OofScores {
        files: kept.iter().map(|&i| plan.items[i].file.clone()).collect(),
        labels: kept.iter().map(|&i| plan.items[i].label).collect(),
        scores: by_file
            .iter()
            .map(|m| {
                kept.iter()
                    .map(|&i| m[plan.items[i].file.as_str()])
                    .collect()
            })
            .collect(),
    }
}

fn fold_summary(f: &FoldScores) -> FoldSummary {
    let c = Confusion::at(&f.scores, &f.labels, f.threshold);
    FoldSummary {
        repeat: f.repeat + 1,
        fold: f.fold + 1,
        images: f.files.len(),
        positives: f.labels.iter().filter(|&&l| l == 1).count(),
        auc: metrics::auc(&f.scores, &f.labels),
        best_epoch: f.best_epoch,
        threshold: f.threshold,
        sensitivity: c.sensitivity(),
        specificity: c.specificity(),
    }
}

fn operating_point(plan: &CvPlan, folds: &[FoldScores]) -> OperatingPoint {
    let mut total = Confusion::default();
    for f in folds {
        let c = Confusion::at(&f.scores, &f.labels, f.threshold);
        total = Confusion {
            tp: total.tp + c.tp,
            fp: total.fp + c.fp,
            tn: total.tn + c.tn,
            fn_: total.fn_ + c.fn_,
        };
    }
    OperatingPoint {
        rule: format!(
            "each fold at its own threshold: the highest with inner-validation sensitivity >= {}",
            plan.options.target_sensitivity
        ),
        sensitivity: total.sensitivity(),
        specificity: total.specificity(),
        confusion: total,
    }
}

/// The report of a finished cross-validation, with `oof.csv` and `roc.svg` written beside it.
pub fn write<'a>(cv: &CvDir, plan: &'a CvPlan, folds: &[FoldScores]) -> Result<CvReport<'a>> {
    let (report, oof) = build(plan, folds)?;
    write_atomic(&cv.file(OOF), &oof_csv(folds)?)?;
    write_atomic(&cv.file(ROC), roc_svg(&oof, report.auc).as_bytes())?;
    write_atomic(&cv.file(REPORT), &serde_json::to_vec_pretty(&report)?)?;
    Ok(report)
}

/// The figures of a finished cross-validation, and the pooled scores they come from.
pub fn build<'a>(plan: &'a CvPlan, folds: &[FoldScores]) -> Result<(CvReport<'a>, OofScores)> {
    let oof = pooled(plan, folds);
    if oof.labels.is_empty() {
        bail!("no image was scored in every repeat");
    }
    let mut sizes: HashMap<&str, usize> = HashMap::new();
    for key in plan.items.iter().filter_map(|i| i.patient.as_deref()) {
        *sizes.entry(key).or_default() += 1;
    }
    let groups = sizes.values().filter(|&&n| n > 1).count();
    let report = CvReport {
        folds: plan.folds,
        repeats: plan.repeats,
        images: oof.labels.len(),
        positives: oof.labels.iter().filter(|&&l| l == 1).count(),
        groups,
        unscored: plan.items.len() - oof.labels.len(),
        auc: oof.auc(),
        auc_ci95: bootstrap::auc_ci(&oof, RESAMPLES, SEED),
        auc_per_repeat: oof
            .scores
            .iter()
            .map(|s| metrics::auc(s, &oof.labels))
            .collect(),
        operating_point: operating_point(plan, folds),
        per_fold: folds.iter().map(fold_summary).collect(),
        options: &plan.options,
        files: [OOF, ROC],
    };
    Ok((report, oof))
}

/// The report as the model card records it; `recipe` says in words what was cross-validated.
pub fn card(report: &CvReport, recipe: String, source: String) -> CrossValidationCard {
    let finite = |v: f64| Some(v).filter(|v| v.is_finite());
    CrossValidationCard {
        recipe,
        source,
        folds: report.folds,
        repeats: report.repeats,
        images: report.images,
        effusion: report.positives,
        groups: report.groups,
        auc: report.auc,
        auc_ci95: report.auc_ci95,
        fold_aucs: report.per_fold.iter().map(|f| f.auc).collect(),
        sensitivity: finite(report.operating_point.sensitivity),
        specificity: finite(report.operating_point.specificity),
    }
}

/// `oof.csv`: one row per image and repeat (fold and repeat 1-based).
fn oof_csv(folds: &[FoldScores]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["file", "label", "score", "fold", "repeat"])?;
    for f in folds {
        for ((file, label), score) in f.files.iter().zip(&f.labels).zip(&f.scores) {
            w.write_record([
                file.clone(),
                label.to_string(),
                score.to_string(),
                (f.fold + 1).to_string(),
                (f.repeat + 1).to_string(),
            ])?;
        }
    }
    Ok(w.into_inner()?)
}

/// The pooled out-of-fold ROC of each repeat (at most five drawn).
fn roc_svg(oof: &OofScores, auc: Option<f64>) -> String {
    const COLORS: [&str; 5] = ["#2463eb", "#d92d20", "#079455", "#f79009", "#7a5af8"];
    let names: Vec<String> = (1..=oof.scores.len().min(5))
        .map(|r| format!("repeat {r}"))
        .collect();
    let mut series: Vec<plots::Series> = oof
        .scores
        .iter()
        .zip(&names)
        .zip(COLORS)
        .map(|((s, name), color)| plots::Series {
            name,
            color,
            points: metrics::roc(s, &oof.labels),
        })
        .collect();
    series.push(plots::Series {
        name: "chance",
        color: "#999",
        points: vec![(0.0, 0.0), (1.0, 1.0)],
    });
    let title = match auc {
        Some(a) => format!("Out-of-fold ROC (pooled AUC {a:.3})"),
        None => "Out-of-fold ROC".into(),
    };
    plots::line_chart(
        &title,
        "false-positive rate (1 - specificity)",
        "true-positive rate (sensitivity)",
        (0.0, 1.0),
        (0.0, 1.0),
        &series,
    )
}

/// The lines printed at the end.
pub fn summary(report: &CvReport) -> String {
    let auc = match (report.auc, report.auc_ci95) {
        (Some(a), Some((lo, hi))) => format!("{a:.3} (95% CI {lo:.3}–{hi:.3})"),
        (Some(a), None) => format!("{a:.3}"),
        _ => "n/a".into(),
    };
    let per_fold: Vec<String> = report
        .per_fold
        .iter()
        .map(|f| f.auc.map_or("n/a".into(), |a| format!("{a:.3}")))
        .collect();
    let op = &report.operating_point;
    format!(
        "out-of-fold AUC {auc} over {} images ({} effusion), {} folds x {} repeat(s), {} group(s) kept together\n\
         per-fold AUC: {}\n\
         at each fold's threshold: sensitivity {:.3}, specificity {:.3}",
        report.images,
        report.positives,
        report.folds,
        report.repeats,
        report.groups,
        per_fold.join(", "),
        op.sensitivity,
        op.specificity
    )
}
