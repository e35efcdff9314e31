//! The plan of a cross-validation (`cv.json`): the images, their fold in every repeat, and the
//! split each fold's training run gets. Saved before the first fold trains, so `--resume` and
//! `cv compare` see the very folds that were scored.

use std::collections::HashSet;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::teachers::TeacherRecipe;
use crate::data::{self, Dataset, Item, Split};
use crate::options::TrainOptions;

/// `cv.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CvPlan {
    /// The training options every fold runs with (each repeat with its own seed).
    pub options: TrainOptions,
    pub folds: usize,
    pub repeats: usize,
    /// The images (groups applied, after the prevalence).
    pub items: Vec<Item>,
    /// `fold_of[repeat][image]`: the fold, `0..folds`, in which the image is scored.
    pub fold_of: Vec<Vec<usize>>,
    /// With distillation: how each fold's own teachers are made.
    #[serde(default)]
    pub teachers: Option<TeacherRecipe>,
}

impl CvPlan {
    /// Deal the images of `data` into `folds` stratified folds, `repeats` times with other
    /// seeds; each group (patient) in one fold.
    pub fn new(opts: &TrainOptions, data: &Dataset, folds: usize, repeats: usize) -> Result<Self> {
        if folds < 2 {
            bail!("--folds must be at least 2, got {folds}");
        }
        if repeats < 1 {
            bail!("--repeats must be at least 1");
        }
        if opts.teacher.is_some() {
            bail!(
                "cv does not take --teacher: the teacher's logits were fitted on another split, \
                 so they would carry the scored folds' labels into training (--distill-from gives \
                 each fold teachers of its own)"
            );
        }
        let items = crate::groups::prepared_items(data, opts)?;
        for label in [0u8, 1u8] {
            let n = items.iter().filter(|i| i.label == label).count();
            if n < folds {
                bail!("class {label} has {n} image(s), fewer than --folds {folds}");
            }
        }
        let fold_of = (0..repeats)
            .map(|r| data::folds(&items, folds, repeat_seed(opts.seed, r)))
            .collect();
        Ok(Self {
            options: opts.clone(),
            folds,
            repeats,
            items,
            fold_of,
            teachers: None,
        })
    }

    /// Every (repeat, fold), in the order they run.
    pub fn runs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.repeats).flat_map(move |r| (0..self.folds).map(move |k| (r, k)))
    }

    /// The images scored in fold `k` of repeat `r`.
    pub fn scored(&self, r: usize, k: usize) -> Vec<Item> {
        self.items
            .iter()
            .zip(&self.fold_of[r])
            .filter(|&(_, &f)| f == k)
            .map(|(i, _)| i.clone())
            .collect()
    }

    /// The split the training run of fold `k`, repeat `r` gets: the other folds' images, split
    /// again into training and an inner validation part (where the best epoch and the threshold
    /// are chosen). The scored fold is in neither.
    pub fn inner_split(&self, r: usize, k: usize) -> Result<Split> {
        let rest: Vec<Item> = self
            .items
            .iter()
            .zip(&self.fold_of[r])
            .filter(|&(_, &f)| f != k)
            .map(|(i, _)| i.clone())
            .collect();
        let seed = repeat_seed(self.options.seed, r)
            .wrapping_mul(1000)
            .wrapping_add(k as u64);
        let split = data::split(&rest, self.options.valid_fraction, seed)?;
        check_disjoint(&split, &self.scored(r, k))?;
        Ok(split)
    }

    /// The options of repeat `r`'s runs: the plan's, with the repeat's seed.
    pub fn run_options(&self, r: usize) -> TrainOptions {
        let mut opts = self.options.clone();
        opts.seed = repeat_seed(self.options.seed, r);
        opts
    }

    /// Whether `other` scores the same images in the same folds (a paired comparison needs it).
    pub fn same_folds(&self, other: &CvPlan) -> bool {
        let files = |p: &CvPlan| p.items.iter().map(|i| i.file.clone()).collect::<Vec<_>>();
        files(self) == files(other) && self.fold_of == other.fold_of
    }
}

/// The seed of repeat `r`: the options' seed for the first, then the next ones.
fn repeat_seed(seed: u64, r: usize) -> u64 {
    seed.wrapping_add(r as u64)
}

/// The guard of the whole design: a fold's training run never sees the images it is scored on.
pub fn check_disjoint(split: &Split, scored: &[Item]) -> Result<()> {
    let scored: HashSet<&str> = scored.iter().map(|i| i.file.as_str()).collect();
    if let Some(leak) = split
        .train
        .iter()
        .chain(&split.valid)
        .find(|i| scored.contains(i.file.as_str()))
    {
        bail!(
            "{} is both scored and in its fold's training run",
            leak.file
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(pos: usize, neg: usize) -> Dataset {
        let item = |file: String, label| Item {
            file,
            label,
            patient: None,
        };
        let items = (0..pos)
            .map(|i| item(format!("effusion/{i}.png"), 1))
            .chain((0..neg).map(|i| item(format!("nofinding/{i}.png"), 0)))
            .collect();
        Dataset {
            root: "d".into(),
            items,
            skipped: Vec::new(),
            layout: "test",
        }
    }

    #[test]
    fn folds_are_stratified_disjoint_and_cover_every_image_once() {
        let plan = CvPlan::new(&TrainOptions::default(), &dataset(50, 150), 5, 2).unwrap();
        for r in 0..2 {
            let mut seen = HashSet::new();
            for k in 0..5 {
                let scored = plan.scored(r, k);
                let positives = scored.iter().filter(|i| i.label == 1).count();
                assert_eq!((scored.len(), positives), (40, 10), "repeat {r} fold {k}");
                for item in &scored {
                    assert!(seen.insert(item.file.clone()), "{} twice", item.file);
                }
            }
            assert_eq!(seen.len(), 200);
        }
        assert_ne!(plan.fold_of[0], plan.fold_of[1], "repeats use other seeds");
        assert_eq!(plan.runs().count(), 10);
    }

    #[test]
    fn the_inner_split_is_the_rest_and_never_the_scored_fold() {
        let plan = CvPlan::new(&TrainOptions::default(), &dataset(30, 30), 3, 1).unwrap();
        for k in 0..3 {
            let split = plan.inner_split(0, k).unwrap();
            let scored = plan.scored(0, k);
            assert_eq!(split.train.len() + split.valid.len() + scored.len(), 60);
            assert!(!split.valid.is_empty());
            check_disjoint(&split, &scored).unwrap();
        }
        // The guard itself: a split holding a scored image is refused.
        let mut leaky = plan.inner_split(0, 0).unwrap();
        leaky.valid.push(plan.scored(0, 0)[0].clone());
        assert!(check_disjoint(&leaky, &plan.scored(0, 0)).is_err());
    }

    #[test]
    fn bad_settings_are_refused() {
        let data = dataset(3, 10);
        let opts = TrainOptions::default();
        assert!(CvPlan::new(&opts, &data, 1, 1).is_err());
        let err = CvPlan::new(&opts, &data, 4, 1).unwrap_err();
        assert!(err.to_string().contains("fewer than --folds"), "{err}");
        let teacher = TrainOptions {
            teacher: Some("t.json".into()),
            ..opts
        };
        assert!(CvPlan::new(&teacher, &data, 2, 1).is_err());
    }
}
