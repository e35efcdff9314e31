//! Which of a set of dropped files are labelled, and how: the page's validation mode reads the
//! same layouts as `trainer` where it can.
//!
//! - **Class folders**: a file directly inside a folder named `effusion` (label 1) or `nofinding`
//!   (label 0), with an image extension ([`crate::decode::has_image_extension`]), as `trainer`
//!   reads `DIR/effusion/*` and `DIR/nofinding/*`.
//! - **A labels CSV** ([`csv_labels`]): a `.csv` among the files, with a column naming the files
//!   and a label column; NIH's `Data_Entry_2017.csv` is one. Used when no file sits in a class
//!   folder.
//!
//! Everything works on the names the browser gives (relative paths with `/`), never on bytes of
//! images, so it is tested natively.

mod csv_labels;
#[cfg(test)]
mod tests;

use std::path::Path;

use serde::Serialize;
use thiserror::Error;

pub use csv_labels::{FILE_COLUMNS, LABEL_COLUMNS, LabelRow, LabelsCsv, parse_labels_csv};

use crate::decode::has_image_extension;

/// Folder of the effusion images (label 1), as `trainer` reads it.
pub const POSITIVE_DIR: &str = "effusion";
/// Folder of the images without a finding (label 0).
pub const NEGATIVE_DIR: &str = "nofinding";

/// A labels CSV that cannot be used, with what to change.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LabelError {
    #[error(
        "{file}: no column naming the files (accepted, any case: {}); the header is: {header}",
        FILE_COLUMNS.join(", ")
    )]
    NoFileColumn { file: String, header: String },
    #[error(
        "{file}: no label column (accepted, any case: {}); the header is: {header}",
        LABEL_COLUMNS.join(", ")
    )]
    NoLabelColumn { file: String, header: String },
    #[error(
        "{file} line {line}: label `{value}` is not understood (use 1/0, yes/no, true/false, effusion/nofinding, positive/negative)"
    )]
    BadLabel {
        file: String,
        line: u64,
        value: String,
    },
    #[error("{file} line {line}: `{name}` is labelled again, differently")]
    Conflict {
        file: String,
        line: u64,
        name: String,
    },
    #[error(
        "{file}: none of its {rows} labelled rows names a dropped file (names are matched relative to the CSV's folder, or by file name alone)"
    )]
    NoMatch { file: String, rows: usize },
    #[error("{file} line {line}: {reason}")]
    Unreadable {
        file: String,
        line: u64,
        reason: String,
    },
}

/// One labelled file: its index in the names given to [`recognise`], and its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Labelled {
    pub index: usize,
    /// 1 = effusion, 0 = no finding.
    pub label: u8,
}

/// The labelled files found among the dropped ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelSet {
    /// "class folders" or "labels CSV (NAME)".
    pub layout: String,
    /// Labelled files, in the order of the names given.
    pub items: Vec<Labelled>,
    pub positives: usize,
    /// Files that are neither labelled nor the labels CSV (left out of the figures).
    pub ignored: usize,
    /// CSV rows whose file was not among the dropped ones.
    pub missing: usize,
    /// CSV rows left out on purpose (NIH: findings other than effusion or `No Finding` alone;
    /// an empty label).
    pub excluded: usize,
}

/// Parent folder name of a `/`-separated relative path, if any.
fn parent_name(name: &str) -> Option<&str> {
    let mut parts = name.rsplit('/');
    parts.next();
    parts.next()
}

/// The label a class-folder layout gives `name`, if any.
pub fn folder_label(name: &str) -> Option<u8> {
    if !has_image_extension(Path::new(name)) {
        return None;
    }
    match parent_name(name)? {
        POSITIVE_DIR => Some(1),
        NEGATIVE_DIR => Some(0),
        _ => None,
    }
}

fn is_csv(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
}

/// Indices of the CSV files among `names`: the page reads only those before [`recognise`].
pub fn csv_names(names: &[String]) -> Vec<usize> {
    (0..names.len()).filter(|&i| is_csv(&names[i])).collect()
}

fn from_folders(names: &[String]) -> Option<LabelSet> {
    let items: Vec<Labelled> = names
        .iter()
        .enumerate()
        .filter_map(|(index, name)| folder_label(name).map(|label| Labelled { index, label }))
        .collect();
    if items.is_empty() {
        return None;
    }
    Some(LabelSet {
        layout: "class folders".into(),
        positives: items.iter().filter(|i| i.label == 1).count(),
        ignored: names.len() - items.len(),
        items,
        missing: 0,
        excluded: 0,
    })
}

/// Recognise a labelled set among `names` (relative paths of the dropped files), given the text
/// of the CSV files among them as `(name, text)`. `Ok(None)`: not a labelled set (the page shows
/// its batch table). Class folders win over a CSV; of several usable CSVs the first by name is
/// taken. A CSV that looks like a labels file but cannot be used is an error saying why; the
/// page's own batch export (it has a `probability_effusion` column) is never taken as labels.
pub fn recognise(
    names: &[String],
    csvs: &[(String, String)],
) -> Result<Option<LabelSet>, LabelError> {
    if let Some(set) = from_folders(names) {
        return Ok(Some(set));
    }
    let mut csvs: Vec<&(String, String)> = csvs.iter().collect();
    csvs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut first_error = None;
    for (csv_name, text) in csvs {
        match parse_labels_csv(csv_name, text) {
            Ok(Some(labels)) => {
                let set = labels.match_files(csv_name, names)?;
                if set.items.is_empty() {
                    return Err(LabelError::NoMatch {
                        file: csv_name.clone(),
                        rows: labels.rows.len(),
                    });
                }
                return Ok(Some(set));
            }
            Ok(None) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(None), Err)
}
