//! `trainer cv compare A B`: two configurations cross-validated on the same folds, and the
//! paired bootstrap of their AUC difference (each resample of images scored by both).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use super::bootstrap::{OofScores, paired_difference};
use super::files::CvDir;
use super::report::{RESAMPLES, pooled};

/// `trainer cv compare`.
#[derive(Args, Debug)]
pub struct CvCompareArgs {
    /// A finished cv folder (configuration A).
    pub a: PathBuf,
    /// A finished cv folder of the same images and folds (configuration B).
    pub b: PathBuf,
    #[arg(long, default_value_t = RESAMPLES)]
    pub resamples: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl CvCompareArgs {
    pub fn run(self) -> Result<()> {
        let (a, b) = load_pair(&CvDir::open(&self.a), &CvDir::open(&self.b))?;
        let Some(d) = paired_difference(&a, &b, self.resamples.max(1), 2024) else {
            bail!("no AUC: the scored images hold one class only");
        };
        if self.json {
            println!("{}", serde_json::to_string_pretty(&d)?);
            return Ok(());
        }
        println!(
            "A {}: AUC {:.3}\nB {}: AUC {:.3}\nA - B: {:+.3} (95% CI {:+.3} to {:+.3}; paired bootstrap over {} images, {} resamples)\n\
             A not better than B in {:.1} % of resamples",
            self.a.display(),
            d.auc_a,
            self.b.display(),
            d.auc_b,
            d.difference,
            d.ci95.0,
            d.ci95.1,
            a.labels.len(),
            d.resamples,
            100.0 * d.share_a_not_better
        );
        Ok(())
    }
}

/// Both folders' out-of-fold scores on the images both scored, in one order; refused unless
/// they were cross-validated on the same folds.
pub fn load_pair(a: &CvDir, b: &CvDir) -> Result<(OofScores, OofScores)> {
    let (plan_a, plan_b) = (a.read_plan()?, b.read_plan()?);
    if !plan_a.same_folds(&plan_b) {
        bail!(
            "{} and {} were not cross-validated on the same images and folds (same data, \
             --groups, --prevalence, --folds, --repeats and --seed give the same folds); a paired \
             comparison needs them",
            a.path().display(),
            b.path().display()
        );
    }
    let oof_a = pooled(&plan_a, &a.read_all_scores(&plan_a)?);
    let oof_b = pooled(&plan_b, &b.read_all_scores(&plan_b)?);
    // Images one of them could not read are left out of both.
    let common = |o: &OofScores, other: &OofScores| {
        let keep: std::collections::HashSet<&String> = other.files.iter().collect();
        let idx: Vec<usize> = (0..o.files.len())
            .filter(|&i| keep.contains(&o.files[i]))
            .collect();
        OofScores {
            files: idx.iter().map(|&i| o.files[i].clone()).collect(),
            labels: idx.iter().map(|&i| o.labels[i]).collect(),
            scores: o
                .scores
                .iter()
                .map(|s| idx.iter().map(|&i| s[i]).collect())
                .collect(),
        }
    };
    Ok((common(&oof_a, &oof_b), common(&oof_b, &oof_a)))
}
