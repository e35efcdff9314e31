//! Finding the images and their labels, and splitting them.
//!
//! Two layouts are read:
//! - folder per class: `DIR/effusion/*` (label 1) and `DIR/nofinding/*` (label 0);
//! - NIH ChestX-ray14: `DIR/Data_Entry_2017.csv` with image files anywhere below `DIR`.
//!   "effusion" = `Effusion` among the finding labels, "nofinding" = exactly `No Finding`; other
//!   rows are left out. The CSV's patient IDs keep one patient's images on one side of the split.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use cxr::decode::has_image_extension;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::rng::Rng;

pub const POSITIVE_DIR: &str = "effusion";
pub const NEGATIVE_DIR: &str = "nofinding";
pub const NIH_CSV: &str = "Data_Entry_2017.csv";

#[derive(Debug, Error)]
pub enum DataError {
    #[error("data folder {0} does not exist or is not a folder")]
    NoFolder(PathBuf),
    #[error(
        "{dir} has neither {NIH_CSV} nor the class folders `{POSITIVE_DIR}/` and `{NEGATIVE_DIR}/`; missing: {missing}"
    )]
    NoLayout { dir: PathBuf, missing: String },
    #[error("class `{0}` has no readable images; every class needs at least one")]
    EmptyClass(&'static str),
    #[error("cannot read {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{NIH_CSV} line {line}: {reason}")]
    Csv { line: usize, reason: String },
    #[error("too few images to split: {0}")]
    TooFew(String),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Path relative to the data folder, with `/` separators.
    pub file: String,
    /// 1 = effusion, 0 = no finding.
    pub label: u8,
    /// Patient ID where known (NIH layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
}

/// The images found in a data folder.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub items: Vec<Item>,
    /// Files left out because their header could not be read: (file, reason).
    pub skipped: Vec<(String, String)>,
    pub layout: &'static str,
}

impl Dataset {
    pub fn count(&self, label: u8) -> usize {
        self.items.iter().filter(|i| i.label == label).count()
    }
}

/// Find every labelled image under `dir` (or in the preprocessed cache `dir`). Files whose
/// header cannot be read are skipped and listed; a missing layout or an empty class is an error.
pub fn discover(dir: &Path) -> Result<Dataset, DataError> {
    if !dir.is_dir() {
        return Err(DataError::NoFolder(dir.to_path_buf()));
    }
    if crate::cache::is_cache(dir) {
        return both_classes(crate::cache::discover(dir)?);
    }
    let csv = dir.join(NIH_CSV);
    let (candidates, layout) = if csv.is_file() {
        (
            nih_items(dir, &csv)?,
            "NIH ChestX-ray14 (Data_Entry_2017.csv)",
        )
    } else {
        let missing: Vec<&str> = [POSITIVE_DIR, NEGATIVE_DIR]
            .into_iter()
            .filter(|d| !dir.join(d).is_dir())
            .collect();
        if !missing.is_empty() {
            return Err(DataError::NoLayout {
                dir: dir.to_path_buf(),
                missing: missing.join(", "),
            });
        }
        let mut items = Vec::new();
        for (sub, label) in [(NEGATIVE_DIR, 0u8), (POSITIVE_DIR, 1u8)] {
            for file in list_images(&dir.join(sub))? {
                items.push(Item {
                    file: format!("{sub}/{file}"),
                    label,
                    patient: None,
                });
            }
        }
        (items, "folder per class")
    };
    let mut items = Vec::with_capacity(candidates.len());
    let mut skipped = Vec::new();
    for item in candidates {
        match check_header(&dir.join(&item.file)) {
            Ok(()) => items.push(item),
            Err(reason) => skipped.push((item.file, reason.to_string())),
        }
    }
    both_classes(Dataset {
        root: dir.to_path_buf(),
        items,
        skipped,
        layout,
    })
}

fn both_classes(data: Dataset) -> Result<Dataset, DataError> {
    if data.count(1) == 0 {
        return Err(DataError::EmptyClass(POSITIVE_DIR));
    }
    if data.count(0) == 0 {
        return Err(DataError::EmptyClass(NEGATIVE_DIR));
    }
    Ok(data)
}

fn list_images(dir: &Path) -> Result<Vec<String>, DataError> {
    let io = |e: std::io::Error| DataError::Io {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_file() && has_image_extension(&entry.path()) {
            files.push(name);
        }
    }
    files.sort();
    Ok(files)
}

/// Read only the header: cheap, and enough to catch empty, truncated-at-start and non-image files.
fn check_header(path: &Path) -> anyhow::Result<()> {
    use std::io::Read;
    // DICOM: the magic after the preamble is enough here; its header is read at decode time.
    let mut head = [0u8; 132];
    let n = fs::File::open(path).and_then(|mut f| f.read(&mut head))?;
    if cxr::decode::dicom::is_dicom(&head[..n]) {
        return Ok(());
    }
    let reader = image::ImageReader::open(path)?.with_guessed_format()?;
    let (w, h) = reader.into_dimensions()?;
    if w == 0 || h == 0 {
        anyhow::bail!("image has no pixels");
    }
    Ok(())
}

fn nih_items(dir: &Path, csv: &Path) -> Result<Vec<Item>, DataError> {
    let text = fs::read_to_string(csv).map_err(|e| DataError::Io {
        path: csv.to_path_buf(),
        reason: e.to_string(),
    })?;
    // Index every image file below `dir` by name (NIH ships them in images_001/images/ etc.).
    let mut index = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(|e| DataError::Io {
            path: d.clone(),
            reason: e.to_string(),
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                let name = entry.file_name().to_string_lossy().into_owned();
                index.insert(name, rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split(',').collect();
        if cols.len() < 4 {
            return Err(DataError::Csv {
                line: n + 1,
                reason: "expected at least 4 columns (Image Index, Finding Labels, Follow-up #, Patient ID)".into(),
            });
        }
        let findings: Vec<&str> = cols[1].split('|').map(str::trim).collect();
        let label = if findings.contains(&"Effusion") {
            1
        } else if findings == ["No Finding"] {
            0
        } else {
            continue;
        };
        if let Some(file) = index.get(cols[0].trim()) {
            items.push(Item {
                file: file.clone(),
                label,
                patient: Some(cols[3].trim().to_string()),
            });
        }
    }
    items.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(items)
}

/// Keep every negative and only as many positives as give prevalence `p` (0 < p < 1).
pub fn subsample_prevalence(items: &[Item], p: f64, seed: u64) -> Vec<Item> {
    let negatives = items.iter().filter(|i| i.label == 0).count();
    let mut positives: Vec<&Item> = items.iter().filter(|i| i.label == 1).collect();
    let wanted = ((p / (1.0 - p)) * negatives as f64).round() as usize;
    Rng::new(seed).fork(17).shuffle(&mut positives);
    positives.truncate(wanted.max(1));
    let keep: std::collections::HashSet<&str> = positives.iter().map(|i| i.file.as_str()).collect();
    items
        .iter()
        .filter(|i| i.label == 0 || keep.contains(i.file.as_str()))
        .cloned()
        .collect()
}

/// A train/validation split, saved in the run folder so evaluation reuses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub seed: u64,
    pub valid_fraction: f64,
    pub train: Vec<Item>,
    pub valid: Vec<Item>,
}

/// Stratified split: each class is split on its own with the same fraction, so both parts keep
/// the class balance. Images of one patient (where known) stay together.
pub fn split(items: &[Item], valid_fraction: f64, seed: u64) -> Result<Split, DataError> {
    let mut rng = Rng::new(seed);
    let mut train = Vec::new();
    let mut valid = Vec::new();
    for label in [0u8, 1u8] {
        // Group by patient; an image without a patient ID is its own group.
        let mut groups: BTreeMap<String, Vec<Item>> = BTreeMap::new();
        for item in items.iter().filter(|i| i.label == label) {
            let key = item
                .patient
                .clone()
                .unwrap_or_else(|| format!("file:{}", item.file));
            groups.entry(key).or_default().push(item.clone());
        }
        let mut groups: Vec<Vec<Item>> = groups.into_values().collect();
        if groups.len() < 2 {
            return Err(DataError::TooFew(format!(
                "class {label} has {} patient group(s); a split needs at least 2",
                groups.len()
            )));
        }
        rng.shuffle(&mut groups);
        let total: usize = groups.iter().map(Vec::len).sum();
        let target = ((total as f64 * valid_fraction).round() as usize).clamp(1, total - 1);
        let mut taken = 0;
        for group in groups {
            if taken < target {
                taken += group.len();
                valid.extend(group);
            } else {
                train.extend(group);
            }
        }
    }
    // A patient with both labels could otherwise sit on both sides: move such groups to train.
    let train_patients: std::collections::HashSet<String> =
        train.iter().filter_map(|i| i.patient.clone()).collect();
    let (leak, keep): (Vec<Item>, Vec<Item>) = valid.into_iter().partition(|i| {
        i.patient
            .as_ref()
            .is_some_and(|p| train_patients.contains(p))
    });
    train.extend(leak);
    Ok(Split {
        seed,
        valid_fraction,
        train,
        valid: keep,
    })
}

/// K-fold assignment for cross-fitting (out-of-fold predictions): the fold, `0..k`, of each
/// item, stratified by class as [`split`] is, with one patient's images (where known) in one
/// fold. Within a class, patient groups are shuffled and dealt to the fold with the fewest
/// images of that class so far, so fold sizes differ by at most one group.
pub fn folds(items: &[Item], k: usize, seed: u64) -> Vec<usize> {
    let k = k.max(1);
    let mut rng = Rng::new(seed).fork(0x6b66_6f6c_6473);
    let mut fold = vec![0usize; items.len()];
    // A patient seen with both labels is dealt with the first label seen.
    let mut groups: BTreeMap<(u8, String), Vec<usize>> = BTreeMap::new();
    let mut label_of: BTreeMap<String, u8> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let key = item
            .patient
            .clone()
            .unwrap_or_else(|| format!("file:{}", item.file));
        let label = *label_of.entry(key.clone()).or_insert(item.label);
        groups.entry((label, key)).or_default().push(i);
    }
    for label in [0u8, 1u8] {
        let mut class: Vec<&Vec<usize>> = groups
            .iter()
            .filter(|((l, _), _)| *l == label)
            .map(|(_, g)| g)
            .collect();
        rng.shuffle(&mut class);
        let mut counts = vec![0usize; k];
        for group in class {
            let f = (0..k).min_by_key(|&f| counts[f]).unwrap_or(0);
            counts[f] += group.len();
            group.iter().for_each(|&i| fold[i] = f);
        }
    }
    fold
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(pos: usize, neg: usize) -> Vec<Item> {
        (0..pos)
            .map(|i| Item {
                file: format!("effusion/{i}.png"),
                label: 1,
                patient: None,
            })
            .chain((0..neg).map(|i| Item {
                file: format!("nofinding/{i}.png"),
                label: 0,
                patient: None,
            }))
            .collect()
    }

    #[test]
    fn dicom_files_are_found_in_class_folders() {
        let dir = std::env::temp_dir().join(format!("cxr-data-dicom-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let dicom = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/inputs/xray16.dcm");
        for class in [POSITIVE_DIR, NEGATIVE_DIR] {
            fs::create_dir_all(dir.join(class)).unwrap();
            fs::copy(&dicom, dir.join(class).join("a.dcm")).unwrap();
            fs::copy(&dicom, dir.join(class).join("b.dicom")).unwrap();
        }
        let data = discover(&dir).unwrap();
        assert_eq!(
            (data.count(1), data.count(0)),
            (2, 2),
            "skipped: {:?}",
            data.skipped
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn split_is_stratified_disjoint_and_seeded() {
        let all = items(100, 300);
        let s = split(&all, 0.2, 42).unwrap();
        assert_eq!(s.valid.iter().filter(|i| i.label == 1).count(), 20);
        assert_eq!(s.valid.iter().filter(|i| i.label == 0).count(), 60);
        assert_eq!(s.train.len() + s.valid.len(), 400);
        let v: std::collections::HashSet<_> = s.valid.iter().map(|i| &i.file).collect();
        assert!(s.train.iter().all(|i| !v.contains(&i.file)));
        assert_eq!(s, split(&all, 0.2, 42).unwrap());
        assert_ne!(s.valid, split(&all, 0.2, 43).unwrap().valid);
    }

    #[test]
    fn folds_are_stratified_balanced_and_keep_patients_together() {
        let mut all = items(40, 60);
        for (i, item) in all.iter_mut().enumerate().take(30) {
            item.patient = Some(format!("p{}", i % 10));
        }
        let f = folds(&all, 5, 7);
        assert_eq!(f.len(), all.len());
        assert!(f.iter().all(|&x| x < 5));
        for label in [0u8, 1u8] {
            let counts: Vec<usize> = (0..5)
                .map(|k| {
                    all.iter()
                        .zip(&f)
                        .filter(|&(i, &x)| i.label == label && x == k)
                        .count()
                })
                .collect();
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 3, "class {label}: {counts:?}");
        }
        for p in 0..10 {
            let of: std::collections::HashSet<usize> = all
                .iter()
                .zip(&f)
                .filter(|&(i, _)| i.patient.as_deref() == Some(&format!("p{p}")))
                .map(|(_, &x)| x)
                .collect();
            assert_eq!(of.len(), 1, "patient p{p} in folds {of:?}");
        }
        assert_eq!(f, folds(&all, 5, 7), "same seed, same folds");
        assert_ne!(f, folds(&all, 5, 8), "another seed, other folds");
    }

    #[test]
    fn one_patient_never_sits_on_both_sides() {
        let mut all = items(60, 60);
        for (i, item) in all.iter_mut().enumerate() {
            item.patient = Some(format!("p{}", i % 25));
        }
        let s = split(&all, 0.25, 1).unwrap();
        let train: std::collections::HashSet<_> =
            s.train.iter().map(|i| i.patient.clone()).collect();
        assert!(s.valid.iter().all(|i| !train.contains(&i.patient)));
        assert!(!s.valid.is_empty());
    }

    #[test]
    fn prevalence_subsampling() {
        let all = items(400, 400);
        let sub = subsample_prevalence(&all, 0.1, 3);
        let pos = sub.iter().filter(|i| i.label == 1).count();
        assert_eq!(sub.len() - pos, 400);
        assert_eq!(pos, 44);
    }

    #[test]
    fn missing_class_folder_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("cxr-data-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("effusion")).unwrap();
        let err = discover(&dir).unwrap_err();
        assert!(err.to_string().contains("nofinding"), "{err}");
        fs::create_dir_all(dir.join("nofinding")).unwrap();
        fs::write(dir.join("effusion/broken.png"), b"not a png").unwrap();
        let err = discover(&dir).unwrap_err();
        assert!(matches!(err, DataError::EmptyClass("effusion")), "{err}");
        assert!(matches!(
            discover(&dir.join("nope")),
            Err(DataError::NoFolder(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nih_csv_labels() {
        let dir = std::env::temp_dir().join(format!("cxr-nih-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("images_001/images")).unwrap();
        let png = {
            let img = image::DynamicImage::ImageLuma8(image::ImageBuffer::from_fn(4, 4, |x, _| {
                image::Luma([x as u8 * 50])
            }));
            let mut c = std::io::Cursor::new(Vec::new());
            img.write_to(&mut c, image::ImageFormat::Png).unwrap();
            c.into_inner()
        };
        for f in ["a.png", "b.png", "c.png", "d.png"] {
            fs::write(dir.join("images_001/images").join(f), &png).unwrap();
        }
        fs::write(
            dir.join(NIH_CSV),
            "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age\n\
             a.png,Effusion|Infiltration,0,1,50\nb.png,No Finding,0,2,40\n\
             c.png,Atelectasis,0,3,30\nd.png,No Finding|Mass,0,4,20\nmissing.png,Effusion,0,5,1\n",
        )
        .unwrap();
        let data = discover(&dir).unwrap();
        assert_eq!(data.items.len(), 2);
        assert_eq!(data.items[0].file, "images_001/images/a.png");
        assert_eq!(data.items[0].label, 1);
        assert_eq!(data.items[0].patient.as_deref(), Some("1"));
        assert_eq!(data.items[1].label, 0);
        fs::remove_dir_all(&dir).unwrap();
    }
}
