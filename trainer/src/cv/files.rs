//! The cross-validation folder: the one place that names its files.
//!
//! `cv.json` (the plan: options, images, folds), one training run folder per (repeat, fold)
//! (`repeat1-fold1/`, ...: what `train` writes, with the inner split as its `split.json`, and
//! `scores.json` once the fold is scored, which marks it finished for `--resume`), and the
//! results: `oof.csv` (file, label, score, fold, repeat), `report.json` and `roc.svg`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::plan::CvPlan;
use crate::run_dir::write_atomic;
use crate::validation::Predictions;

const PLAN: &str = "cv.json";
const SCORES: &str = "scores.json";
pub const REPORT: &str = "report.json";
pub const ROC: &str = "roc.svg";
pub const OOF: &str = "oof.csv";

/// The scores of one fold's images by the model trained without them (`scores.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldScores {
    pub repeat: usize,
    pub fold: usize,
    /// The epoch chosen on the inner validation split.
    pub best_epoch: usize,
    /// The threshold chosen on the inner validation split (for the target sensitivity).
    pub threshold: f32,
    pub files: Vec<String>,
    pub labels: Vec<u8>,
    pub scores: Vec<f32>,
    /// Images that could not be read: (file, reason).
    #[serde(default)]
    pub failed: Vec<(String, String)>,
}

impl FoldScores {
    /// Fold `k` of repeat `r` as a model chosen at `best_epoch` with `threshold` scored it.
    pub fn new(
        (repeat, fold): (usize, usize),
        best_epoch: usize,
        threshold: f32,
        p: Predictions,
    ) -> Self {
        Self {
            repeat,
            fold,
            best_epoch,
            threshold,
            files: p.files,
            labels: p.labels,
            scores: p.scores,
            failed: p.failed,
        }
    }
}

/// A cross-validation folder.
#[derive(Debug, Clone)]
pub struct CvDir {
    root: PathBuf,
}

impl CvDir {
    pub fn open(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn read_json<T: DeserializeOwned>(&self, path: &Path) -> Result<T> {
        let text = fs::read_to_string(path).with_context(|| {
            format!(
                "{} (is {} a cv folder?)",
                path.display(),
                self.root.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))
    }

    pub fn has_plan(&self) -> bool {
        self.file(PLAN).exists()
    }

    pub fn read_plan(&self) -> Result<CvPlan> {
        let plan: CvPlan = self.read_json(&self.file(PLAN))?;
        let consistent = plan.fold_of.len() == plan.repeats
            && plan
                .fold_of
                .iter()
                .all(|f| f.len() == plan.items.len() && f.iter().all(|&k| k < plan.folds));
        if !consistent {
            bail!(
                "{} is damaged: its folds do not match its images",
                self.file(PLAN).display()
            );
        }
        Ok(plan)
    }

    pub fn write_plan(&self, plan: &CvPlan) -> Result<()> {
        fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create cv folder {}", self.root.display()))?;
        write_atomic(&self.file(PLAN), &serde_json::to_vec_pretty(plan)?)
    }

    /// The training run folder of fold `k` (0-based) of repeat `r`.
    pub fn fold_dir(&self, r: usize, k: usize) -> PathBuf {
        self.root.join(format!("repeat{}-fold{}", r + 1, k + 1))
    }

    /// The fold's scores, once it is finished.
    pub fn read_scores(&self, r: usize, k: usize) -> Result<Option<FoldScores>> {
        let path = self.fold_dir(r, k).join(SCORES);
        if !path.is_file() {
            return Ok(None);
        }
        let scores: FoldScores = self.read_json(&path)?;
        let consistent = scores.files.len() == scores.labels.len()
            && scores.files.len() == scores.scores.len()
            && (scores.repeat, scores.fold) == (r, k);
        if !consistent {
            bail!(
                "{} is damaged (delete it to score the fold again)",
                path.display()
            );
        }
        Ok(Some(scores))
    }

    pub fn write_scores(&self, scores: &FoldScores) -> Result<()> {
        let dir = self.fold_dir(scores.repeat, scores.fold);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_atomic(&dir.join(SCORES), &serde_json::to_vec(scores)?)
    }

    /// Every fold's scores; an error naming the first fold that has none.
    pub fn read_all_scores(&self, plan: &CvPlan) -> Result<Vec<FoldScores>> {
        plan.runs()
            .map(|(r, k)| {
                self.read_scores(r, k)?.with_context(|| {
                    format!(
                        "{} has no scores: the cv run did not finish (continue it with `trainer cv --resume {}`)",
                        self.fold_dir(r, k).display(),
                        self.root.display()
                    )
                })
            })
            .collect()
    }
}
