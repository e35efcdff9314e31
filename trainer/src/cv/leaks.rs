//! `trainer cv leaks CV_DIR --groups FILE`: how much a cross-validation run without `--groups`
//! was flattered by likely same-patient films on both sides of its folds. An image is *leaked*
//! when a film of its group sat in another fold, so in the training part of the run that scored
//! it. The answer is paired on the very same fold models: the pooled out-of-fold AUC of every
//! image against the AUC without the leaked ones, each bootstrap resample used for both. (A
//! grouped cv re-deals the folds, so its difference to an ungrouped one mostly measures the
//! dealing; this measures the leak alone.)

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

use super::bootstrap::{OofScores, resample};
use super::files::CvDir;
use super::report::{RESAMPLES, pooled};
use crate::groups::GroupsFile;
use crate::metrics::percentile_ci;

/// `trainer cv leaks`.
#[derive(Args, Debug)]
pub struct CvLeaksArgs {
    /// A finished cv folder (run without --groups).
    pub cv: PathBuf,
    /// The groups file (`trainer groups`) naming the likely same-patient films.
    #[arg(long)]
    pub groups: PathBuf,
    #[arg(long, default_value_t = RESAMPLES)]
    pub resamples: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl CvLeaksArgs {
    pub fn run(self) -> Result<()> {
        let cv = CvDir::open(&self.cv);
        let plan = cv.read_plan()?;
        let groups = GroupsFile::read(&self.groups)?;
        let files: Vec<String> = plan.items.iter().map(|i| i.file.clone()).collect();
        let leaked = leaked_files(&files, &plan.fold_of, &groups)?;
        let oof = pooled(&plan, &cv.read_all_scores(&plan)?);
        let Some(mut effect) = leak_effect(&oof, &leaked, self.resamples.max(1), 2024) else {
            bail!("no AUC: the images left hold one class only");
        };
        effect.images_in_groups = groups.grouped_images();
        if self.json {
            println!("{}", serde_json::to_string_pretty(&effect)?);
        } else {
            println!("{}", effect.summary(&self.cv.display().to_string()));
        }
        Ok(())
    }
}

/// What [`leak_effect`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeakReport {
    /// Images the groups file names.
    pub images_in_groups: usize,
    /// Images scored while a film of their group was in their fold's training part.
    pub leaked: usize,
    /// Images pooled.
    pub images: usize,
    pub auc_all: f64,
    pub auc_without_leaked: f64,
    /// `auc_all - auc_without_leaked`: how much the leak flattered the figure.
    pub difference: f64,
    pub ci95: (f64, f64),
    pub resamples: usize,
}

impl LeakReport {
    fn summary(&self, cv: &str) -> String {
        format!(
            "{cv}: {} image(s) in groups; {} scored while a film of their group was in their \
             fold's training part\nAUC, all {} images: {:.4}\nAUC without those {}: {:.4}\n\
             difference (all - without): {:+.4} (95% CI {:+.4} to {:+.4}; paired bootstrap, {} \
             resamples)",
            self.images_in_groups,
            self.leaked,
            self.images,
            self.auc_all,
            self.leaked,
            self.auc_without_leaked,
            self.difference,
            self.ci95.0,
            self.ci95.1,
            self.resamples
        )
    }
}

/// The files (of `files`, dealt into folds by `fold_of[repeat][image]`) scored in some repeat
/// while another film of their group was in another fold. Group files missing from `files` are
/// skipped (a `--prevalence` cv holds a subset), but a groups file naming none of them was made
/// for other data, which is an error.
pub fn leaked_files(
    files: &[String],
    fold_of: &[Vec<usize>],
    groups: &GroupsFile,
) -> Result<HashSet<String>> {
    let index: HashMap<&str, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.as_str(), i))
        .collect();
    let named = groups.groups.iter().flatten();
    if groups.grouped_images() > 0 && !named.clone().any(|f| index.contains_key(f.as_str())) {
        bail!(
            "none of the groups file's {} images is among the cv's {} images (was it made for \
             another data folder?)",
            groups.grouped_images(),
            files.len()
        );
    }
    let mut leaked = HashSet::new();
    for group in &groups.groups {
        let members: Vec<usize> = group
            .iter()
            .filter_map(|f| index.get(f.as_str()).copied())
            .collect();
        for folds in fold_of {
            for &i in &members {
                if members.iter().any(|&j| folds[j] != folds[i]) {
                    leaked.insert(files[i].clone());
                }
            }
        }
    }
    Ok(leaked)
}

/// The pooled AUC of every image against the AUC without the `leaked` ones, with a paired
/// bootstrap CI of the difference (stratified resamples of all images; each resample's leaked
/// images dropped for the second figure). `None` when either set holds one class only.
pub fn leak_effect(
    oof: &OofScores,
    leaked: &HashSet<String>,
    resamples: usize,
    seed: u64,
) -> Option<LeakReport> {
    let is_leaked: Vec<bool> = oof.files.iter().map(|f| leaked.contains(f)).collect();
    let without = |indices: &[usize]| -> Vec<usize> {
        indices.iter().copied().filter(|&i| !is_leaked[i]).collect()
    };
    let all: Vec<usize> = (0..oof.labels.len()).collect();
    let (auc_all, auc_without_leaked) = (oof.mean_auc(&all)?, oof.mean_auc(&without(&all))?);
    let draws = resample(&oof.labels, resamples, seed, |i| {
        Some(oof.mean_auc(i)? - oof.mean_auc(&without(i))?)
    });
    Some(LeakReport {
        images_in_groups: 0,
        leaked: is_leaked.iter().filter(|&&l| l).count(),
        images: all.len(),
        auc_all,
        auc_without_leaked,
        difference: auc_all - auc_without_leaked,
        ci95: percentile_ci(&draws)?,
        resamples: draws.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(groups: &[&[&str]]) -> GroupsFile {
        GroupsFile {
            method: "test".into(),
            threshold: 0.0,
            images: 0,
            groups: groups
                .iter()
                .map(|g| g.iter().map(|f| f.to_string()).collect())
                .collect(),
        }
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{i}.png")).collect()
    }

    #[test]
    fn a_group_split_across_folds_leaks_all_its_members_and_a_kept_one_none() {
        let files = names(6);
        // Group {0,1,2}: 0 and 1 share fold 0, 2 sits in fold 1; group {3,4} shares fold 2.
        let fold_of = vec![vec![0, 0, 1, 2, 2, 1]];
        let g = groups(&[&["0.png", "1.png", "2.png"], &["3.png", "4.png"]]);
        let leaked = leaked_files(&files, &fold_of, &g).unwrap();
        let mut leaked: Vec<_> = leaked.into_iter().collect();
        leaked.sort();
        assert_eq!(leaked, ["0.png", "1.png", "2.png"]);
        // A second repeat that splits {3,4} leaks them too.
        let two = vec![fold_of[0].clone(), vec![0, 0, 0, 1, 2, 1]];
        assert_eq!(leaked_files(&files, &two, &g).unwrap().len(), 5);
    }

    #[test]
    fn groups_of_other_data_are_refused_and_missing_members_skipped() {
        let files = names(4);
        let fold_of = vec![vec![0, 1, 0, 1]];
        let other = groups(&[&["x.png", "y.png"]]);
        let err = leaked_files(&files, &fold_of, &other).unwrap_err();
        assert!(err.to_string().contains("another data folder"), "{err}");
        // One member missing (a --prevalence subset): the rest still counts.
        let partial = groups(&[&["0.png", "1.png", "gone.png"]]);
        assert_eq!(leaked_files(&files, &fold_of, &partial).unwrap().len(), 2);
    }

    #[test]
    fn dropping_leaked_images_that_flattered_the_auc_shows_a_positive_difference() {
        // 200 images of a weak scorer, plus 20 "leaked" ones it scores perfectly (their
        // same-patient twins were learnt): all of them together flatter the AUC.
        let mut rng = cxr::rng::Rng::new(3);
        let mut files = Vec::new();
        let (mut labels, mut scores) = (Vec::new(), Vec::new());
        for i in 0..220 {
            let label = u8::from(i % 2 == 0);
            let score = if i < 20 {
                f32::from(label)
            } else {
                rng.uniform() + 0.2 * f32::from(label)
            };
            files.push(format!("{i}.png"));
            labels.push(label);
            scores.push(score);
        }
        let oof = OofScores {
            files,
            labels,
            scores: vec![scores],
        };
        let leaked: HashSet<String> = (0..20).map(|i| format!("{i}.png")).collect();
        let r = leak_effect(&oof, &leaked, 300, 1).unwrap();
        assert_eq!((r.leaked, r.images), (20, 220));
        assert!(r.difference > 0.02 && r.ci95.0 > 0.0, "{r:?}");
        // No leaked image: no difference at all.
        let none = leak_effect(&oof, &HashSet::new(), 100, 1).unwrap();
        assert_eq!((none.difference, none.ci95), (0.0, (0.0, 0.0)));
    }
}
