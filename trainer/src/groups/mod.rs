//! Likely same-patient groups (`groups.json`): the 800 images carry no patient IDs, and NIH has
//! many follow-up films per patient. `trainer groups` finds near-identical films
//! ([`find`]); `--groups FILE` on `train`, `compare` and `cv` keeps each group on one side of
//! every split and fold by giving its images one shared patient key, which [`crate::data::split`]
//! and [`crate::data::folds`] already keep together.

mod features;
pub mod find;
mod sheet;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, Item};
use crate::options::TrainOptions;

/// The groups file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsFile {
    /// How the groups were found (for the reader).
    pub method: String,
    /// The largest distance that links two images.
    pub threshold: f64,
    /// Images compared.
    pub images: usize,
    /// Each group: two or more files (paths relative to the data folder, as `train` names
    /// them) thought to be one patient.
    pub groups: Vec<Vec<String>>,
}

impl GroupsFile {
    /// Parse and check a groups file: every group has at least two files, no file is in two
    /// groups.
    pub fn parse(text: &str) -> Result<Self> {
        let file: GroupsFile = serde_json::from_str(text).context(
            "not a groups file (JSON with method, threshold, images and groups: [[file, ...], ...])",
        )?;
        let mut seen = HashSet::new();
        for (n, group) in file.groups.iter().enumerate() {
            if group.len() < 2 {
                bail!(
                    "group {} has {} file(s); a group links at least two",
                    n + 1,
                    group.len()
                );
            }
            if let Some(twice) = group.iter().find(|f| !seen.insert(f.as_str())) {
                bail!("{twice} is listed twice (each file belongs to one group at most)");
            }
        }
        Ok(file)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read groups file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("groups file {}", path.display()))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        crate::run_dir::write_atomic(path, &serde_json::to_vec_pretty(self)?)
    }

    /// Images in some group.
    pub fn grouped_images(&self) -> usize {
        self.groups.iter().map(Vec::len).sum()
    }
}

/// Give every image of a group (and every image sharing a patient ID with one) one patient key,
/// so splits and folds keep them together. A file of the groups file that is not among `items`
/// is an error: the file was made for another data folder.
pub fn apply(items: &mut [Item], groups: &GroupsFile) -> Result<()> {
    let index: HashMap<&str, usize> = items
        .iter()
        .enumerate()
        .map(|(i, item)| (item.file.as_str(), i))
        .collect();
    let mut parent: Vec<usize> = (0..items.len()).collect();
    for group in &groups.groups {
        let mut members = Vec::with_capacity(group.len());
        for file in group {
            let Some(&i) = index.get(file.as_str()) else {
                bail!(
                    "the groups file names {file}, which is not among the {} images of the data \
                     folder (was it made for another folder? make it again with `trainer groups`)",
                    items.len()
                );
            };
            members.push(i);
        }
        for pair in members.windows(2) {
            union(&mut parent, pair[0], pair[1]);
        }
    }
    // Images with one patient ID are one patient whatever the groups say.
    let mut by_patient: HashMap<&str, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(p) = item.patient.as_deref()
            && let Some(&first) = by_patient.get(p)
        {
            union(&mut parent, first, i);
        } else if let Some(p) = item.patient.as_deref() {
            by_patient.insert(p, i);
        }
    }
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..items.len() {
        let root = find_root(&mut parent, i);
        members.entry(root).or_default().push(i);
    }
    for group in members.values().filter(|m| m.len() > 1) {
        // Named after its first file, so the key is stable whatever the order of the groups.
        let key = format!("group:{}", items[group[0]].file);
        for &i in group {
            items[i].patient = Some(key.clone());
        }
    }
    Ok(())
}

/// [`apply`] with the file at `path`, when there is one.
pub fn apply_file(items: &mut [Item], path: Option<&Path>) -> Result<()> {
    match path {
        Some(path) => {
            let groups = GroupsFile::read(path)?;
            apply(items, &groups).with_context(|| path.display().to_string())
        }
        None => Ok(()),
    }
}

/// The items a run splits: the data's, with the groups of `--groups` applied, then subsampled
/// to `--prevalence` (groups first, so the file names every image of the folder).
pub fn prepared_items(data: &Dataset, opts: &TrainOptions) -> Result<Vec<Item>> {
    let mut items = data.items.clone();
    apply_file(&mut items, opts.groups.as_deref())?;
    Ok(match opts.prevalence {
        Some(p) if p > 0.0 && p < 1.0 => crate::data::subsample_prevalence(&items, p, opts.seed),
        Some(p) => bail!("--prevalence must be between 0 and 1, got {p}"),
        None => items,
    })
}

fn find_root(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

fn union(parent: &mut [usize], a: usize, b: usize) {
    let (ra, rb) = (find_root(parent, a), find_root(parent, b));
    // The smaller index is the root, so a group's key is its first file's in the data order.
    let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
    parent[hi] = lo;
}

#[cfg(test)]
mod tests;
