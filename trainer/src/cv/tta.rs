//! `trainer cv tta CV_DIR --out DIR`: a finished cross-validation's fold models scored again
//! with test-time augmentation, as a new cv folder on the same folds, so that `cv compare DIR
//! CV_DIR` says whether the augmentation helps by more than the noise. Nothing is retrained;
//! each fold's threshold is chosen again on its inner validation images, scored the same way.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;

use super::BestModel;
use super::files::{CvDir, FoldScores};
use super::plan::{CvPlan, check_disjoint};
use super::report;
use crate::run_dir::RunDir;
use crate::validation::Tta;

/// `trainer cv tta`.
#[derive(Args, Debug)]
pub struct CvTtaArgs {
    /// A finished cv folder.
    pub cv: PathBuf,
    /// The new cv folder.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "flip")]
    pub tta: Tta,
    /// Data folder, where the cv's has moved.
    #[arg(long)]
    pub data: Option<PathBuf>,
}

impl CvTtaArgs {
    pub fn run(self) -> Result<()> {
        let source = CvDir::open(&self.cv);
        let mut plan = source.read_plan()?;
        if let Some(data) = self.data {
            plan.options.data = data;
        }
        let out = CvDir::open(&self.out);
        if out.has_plan() {
            bail!(
                "{} already holds a cv; choose another --out",
                self.out.display()
            );
        }
        out.write_plan(&plan)?;
        let device = Device::flex();
        let scores = plan
            .runs()
            .map(|(r, k)| rescore(&source, &plan, (r, k), self.tta, &device))
            .collect::<Result<Vec<_>>>()?;
        for fold in &scores {
            out.write_scores(fold)?;
        }
        let report = report::write(&out, &plan, &scores)?;
        println!("{}", report::summary(&report));
        Ok(())
    }
}

/// Fold `k` of repeat `r` scored again by its best checkpoint with `tta`, its threshold chosen
/// again on its inner validation images.
fn rescore(
    cv: &CvDir,
    plan: &CvPlan,
    (r, k): (usize, usize),
    tta: Tta,
    device: &Device,
) -> Result<FoldScores> {
    let dir = cv.fold_dir(r, k);
    let run = RunDir::open(&dir);
    let finished = cv
        .read_scores(r, k)?
        .with_context(|| format!("{} is not scored yet: finish the cv first", dir.display()))?;
    let split = run.read_split()?;
    let scored = plan.scored(r, k);
    check_disjoint(&split, &scored).with_context(|| run.split_path().display().to_string())?;
    let model = BestModel::load(&run, &plan.options, device)?;
    let data = &plan.options.data;
    let valid = model.predict(data, &split.valid, device, true, tta);
    let threshold = crate::metrics::threshold_for_sensitivity(
        &valid.scores,
        &valid.labels,
        plan.options.target_sensitivity,
    );
    let scored_now = model.predict(data, &scored, device, true, tta);
    Ok(FoldScores::new(
        (r, k),
        finished.best_epoch,
        threshold,
        scored_now,
    ))
}
