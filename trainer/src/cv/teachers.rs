//! Cross-validating a distilled configuration (`cv --distill-from imagenet-resnet50`): the
//! shipped model learns from fine-tuned ImageNet ResNet-50s, so each fold gets its own teachers,
//! made by the shipped recipe inside the fold's training part (`imagenet finetune --folds 5`
//! on the fold's inner split: cross-fitted on its training images, epochs chosen on its inner
//! validation images). The scored fold reaches neither the teachers nor the student.
//!
//! The fold's teachers also score its held-out images; their mean probability is the teacher
//! ensemble's own out-of-fold score, kept as a second cv folder (`CV_DIR/teachers/`) on the same
//! folds, so `cv compare CV_DIR/teachers CV_DIR` gives the student's cost in AUC.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::files::{CvDir, FoldScores};
use super::plan::CvPlan;
use crate::data::{Item, Split};
use crate::options::TrainOptions;
use crate::run_dir::{RunDir, TeacherLogits, read_teacher, write_teacher};
use crate::transfer::{CrossFit, FinetuneOptions, cross_fit_scoring};

/// The teacher file in each fold's run folder.
const TEACHER: &str = "teacher.json";
/// The teacher ensemble's cv folder inside the student's.
pub const TEACHERS_DIR: &str = "teachers";

/// How each fold's teachers are made (saved in `cv.json`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TeacherRecipe {
    /// Cross-fitting folds of the fold's training images (one ResNet-50 per fold).
    pub folds: usize,
    pub head_epochs: usize,
    pub tune_epochs: usize,
}

impl TeacherRecipe {
    fn schedule(&self, seed: u64) -> FinetuneOptions {
        FinetuneOptions {
            folds: self.folds,
            head_epochs: self.head_epochs,
            tune_epochs: self.tune_epochs,
            seed,
            ..FinetuneOptions::default()
        }
    }
}

/// The teachers' cv folder: the student's plan, so both score the same folds.
pub fn teachers_dir(cv: &CvDir, plan: &CvPlan) -> Result<CvDir> {
    let dir = CvDir::open(cv.file(TEACHERS_DIR));
    if !dir.has_plan() {
        dir.write_plan(plan)?;
    }
    Ok(dir)
}

/// The fold's teacher file, made first if it is not there yet: the options and split are saved
/// in the fold's run folder, the recipe's cross-fitted fine-tunings run on them, the ensemble's
/// scores of the held-out fold go to the teachers' cv folder, then the logits are written.
pub fn ensure(
    cv: &CvDir,
    plan: &CvPlan,
    recipe: &TeacherRecipe,
    (r, k): (usize, usize),
    run: &RunDir,
    opts: &TrainOptions,
    package: &Path,
) -> Result<PathBuf> {
    let path = run.path().join(TEACHER);
    let split = run.read_split()?;
    let scored = plan.scored(r, k);
    if !path.is_file() {
        run.write_options(opts)?;
        let schedule = recipe.schedule(opts.seed);
        let (report, fit) = cross_fit_scoring(package, run, &schedule, &scored)
            .with_context(|| format!("the teachers of {}", run.path().display()))?;
        run.write_finetune_report(&report)?;
        let threshold = crate::metrics::threshold_for_sensitivity(
            &fit.valid_mean,
            &fit.valid_labels,
            opts.target_sensitivity,
        );
        teachers_dir(cv, plan)?.write_scores(&ensemble_scores((r, k), threshold, &fit))?;
        write_teacher(&path, &fit.teacher)?;
    }
    // Checked as read, so a file made here and one left from an earlier run pass the same guard.
    let teacher = read_teacher(&path, &split.train)?;
    check_teacher(&teacher, &split, &scored).with_context(|| path.display().to_string())?;
    Ok(path)
}

fn ensemble_scores((repeat, fold): (usize, usize), threshold: f32, fit: &CrossFit) -> FoldScores {
    FoldScores {
        repeat,
        fold,
        // No epoch of its own: each teacher stopped at its best inner-validation epoch.
        best_epoch: 0,
        threshold,
        files: fit.extra_files.clone(),
        labels: fit.extra_labels.clone(),
        scores: fit.extra_mean.clone(),
        failed: Vec::new(),
    }
}

/// The guard of distillation inside a fold: the teacher's logits are for the fold's training
/// images only, so no scored (nor inner-validation) image's label reaches the student.
pub fn check_teacher(teacher: &TeacherLogits, split: &Split, scored: &[Item]) -> Result<()> {
    let train: HashSet<&str> = split.train.iter().map(|i| i.file.as_str()).collect();
    let scored: HashSet<&str> = scored.iter().map(|i| i.file.as_str()).collect();
    let mut files: Vec<&String> = teacher.keys().collect();
    files.sort();
    for file in files {
        if scored.contains(file.as_str()) {
            bail!("the teacher has logits for {file}, an image of the scored fold");
        }
        if !train.contains(file.as_str()) {
            bail!("the teacher has logits for {file}, which is not a training image of the fold");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(file: &str) -> Item {
        Item {
            file: file.into(),
            label: u8::from(file.starts_with('e')),
            patient: None,
        }
    }

    fn logits(files: &[&str]) -> TeacherLogits {
        files.iter().map(|f| (f.to_string(), [0.0, 1.0])).collect()
    }

    #[test]
    fn a_teacher_may_only_know_the_folds_training_images() {
        let split = Split {
            seed: 1,
            valid_fraction: 0.2,
            train: vec![item("e1"), item("n1")],
            valid: vec![item("e2")],
        };
        let scored = [item("n9")];
        check_teacher(&logits(&["e1", "n1"]), &split, &scored).unwrap();
        let leak = check_teacher(&logits(&["e1", "n1", "n9"]), &split, &scored).unwrap_err();
        assert!(leak.to_string().contains("scored fold"), "{leak}");
        let inner = check_teacher(&logits(&["e1", "e2"]), &split, &scored).unwrap_err();
        assert!(
            inner.to_string().contains("not a training image"),
            "{inner}"
        );
    }

    #[test]
    fn the_recipe_is_the_shipped_schedule() {
        let recipe = TeacherRecipe {
            folds: 5,
            head_epochs: 3,
            tune_epochs: 4,
        };
        let s = recipe.schedule(43);
        assert_eq!(
            (s.folds, s.head_epochs, s.tune_epochs, s.seed),
            (5, 3, 4, 43)
        );
        assert_eq!(s.augment_p, 0.0);
        assert!(s.teacher_out.is_none());
    }
}
