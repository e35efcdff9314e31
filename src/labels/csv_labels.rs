//! The labels CSV of the page's validation mode: a header row with a column naming the files and
//! a label column, read with the `csv` crate (quoted fields, ragged rows, a UTF-8 BOM; `;` or tab
//! separated files as some spreadsheets save them).

use std::collections::HashMap;

use super::{LabelError, LabelSet, Labelled};

/// Accepted names of the column naming the files (compared trimmed, ignoring ASCII case), in
/// order of preference. `Image Index` is NIH's.
pub const FILE_COLUMNS: &[&str] = &[
    "file",
    "filename",
    "file_name",
    "path",
    "image",
    "Image Index",
];

/// Accepted names of the label column, in order of preference. `Finding Labels` is NIH's
/// (`Effusion` among the `|`-separated findings = 1, exactly `No Finding` = 0, other rows left
/// out, as `trainer` reads `Data_Entry_2017.csv`); the others hold 1/0, yes/no, true/false,
/// effusion/nofinding or positive/negative.
pub const LABEL_COLUMNS: &[&str] = &["label", "effusion", "Finding Labels"];

/// The column of the page's own batch export: such a file holds predictions, not labels.
const BATCH_EXPORT_COLUMN: &str = "probability_effusion";

/// One labelled row: the file as the CSV names it, its label, its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRow {
    pub file: String,
    pub label: u8,
    pub line: u64,
}

/// The usable rows of a labels CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelsCsv {
    pub rows: Vec<LabelRow>,
    /// Rows left out on purpose: an empty file or label, or (NIH) other findings.
    pub excluded: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LabelKind {
    Binary,
    NihFindings,
}

/// `;` or tab when the header line holds more of them than commas, else `,`.
fn delimiter(text: &str) -> u8 {
    let header = text.lines().next().unwrap_or("");
    let count = |c: char| header.matches(c).count();
    let commas = count(',');
    [b';', b'\t']
        .into_iter()
        .find(|&d| count(d as char) > commas)
        .unwrap_or(b',')
}

fn column(header: &[String], accepted: &[&str]) -> Option<usize> {
    accepted
        .iter()
        .find_map(|name| header.iter().position(|h| h.eq_ignore_ascii_case(name)))
}

/// A label value: `Ok(None)` = left out on purpose, `Err(())` = not understood.
fn parse_label(kind: LabelKind, value: &str) -> Result<Option<u8>, ()> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if kind == LabelKind::NihFindings {
        let findings: Vec<&str> = value.split('|').map(str::trim).collect();
        return Ok(if findings.contains(&"Effusion") {
            Some(1)
        } else if findings == ["No Finding"] {
            Some(0)
        } else {
            None
        });
    }
    match value.to_ascii_lowercase().as_str() {
        "1" | "1.0" | "true" | "yes" | "y" | "effusion" | "positive" | "pos" => Ok(Some(1)),
        "0" | "0.0" | "false" | "no" | "n" | "nofinding" | "no finding" | "no_finding"
        | "normal" | "negative" | "neg" => Ok(Some(0)),
        _ => Err(()),
    }
}

fn unreadable(file: &str, error: &csv::Error) -> LabelError {
    LabelError::Unreadable {
        file: file.to_string(),
        line: error.position().map_or(1, csv::Position::line),
        reason: error.to_string(),
    }
}

/// Read a labels CSV named `name`. `Ok(None)`: not a labels file (neither column, or the page's
/// own batch export).
pub fn parse_labels_csv(name: &str, text: &str) -> Result<Option<LabelsCsv>, LabelError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter(text))
        .flexible(true)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| unreadable(name, &e))?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
        .collect();
    let shown = || header.join(", ");
    if column(&header, &[BATCH_EXPORT_COLUMN]).is_some() {
        return Ok(None);
    }
    let (file_column, label_column) = match (
        column(&header, FILE_COLUMNS),
        column(&header, LABEL_COLUMNS),
    ) {
        (None, None) => return Ok(None),
        (None, Some(_)) => {
            return Err(LabelError::NoFileColumn {
                file: name.into(),
                header: shown(),
            });
        }
        (Some(_), None) => {
            return Err(LabelError::NoLabelColumn {
                file: name.into(),
                header: shown(),
            });
        }
        (Some(f), Some(l)) => (f, l),
    };
    let kind = if header[label_column].eq_ignore_ascii_case("Finding Labels") {
        LabelKind::NihFindings
    } else {
        LabelKind::Binary
    };
    let mut labels = LabelsCsv {
        rows: Vec::new(),
        excluded: 0,
    };
    for record in reader.records() {
        let record = record.map_err(|e| unreadable(name, &e))?;
        let line = record.position().map_or(0, csv::Position::line);
        let file = record.get(file_column).unwrap_or("").trim();
        let value = record.get(label_column).unwrap_or("");
        match parse_label(kind, value) {
            Ok(Some(label)) if !file.is_empty() => labels.rows.push(LabelRow {
                file: file.to_string(),
                label,
                line,
            }),
            Ok(_) => labels.excluded += 1,
            Err(()) => {
                return Err(LabelError::BadLabel {
                    file: name.into(),
                    line,
                    value: value.trim().chars().take(40).collect(),
                });
            }
        }
    }
    Ok(Some(labels))
}

/// `path` without its folders.
fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl LabelsCsv {
    /// Match the rows to the dropped files `names`: by the path relative to the CSV's folder,
    /// else by file name alone when exactly one dropped file has it (NIH ships its images in
    /// sub-folders, and `trainer` matches them by name too).
    pub fn match_files(&self, csv_name: &str, names: &[String]) -> Result<LabelSet, LabelError> {
        let folder = csv_name.rsplit_once('/').map_or("", |(dir, _)| dir);
        let by_path: HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            by_name.entry(base_name(n)).or_default().push(i);
        }
        let mut labels: Vec<Option<u8>> = vec![None; names.len()];
        let mut missing = 0;
        for row in &self.rows {
            let file = row.file.replace('\\', "/");
            let file = file.trim_start_matches("./");
            let relative = if folder.is_empty() {
                file.to_string()
            } else {
                format!("{folder}/{file}")
            };
            let index = by_path.get(relative.as_str()).copied().or_else(|| {
                match by_name.get(base_name(file)).map(Vec::as_slice) {
                    Some([only]) => Some(*only),
                    _ => None,
                }
            });
            let Some(index) = index else {
                missing += 1;
                continue;
            };
            match labels[index] {
                Some(earlier) if earlier != row.label => {
                    return Err(LabelError::Conflict {
                        file: csv_name.into(),
                        line: row.line,
                        name: row.file.clone(),
                    });
                }
                _ => labels[index] = Some(row.label),
            }
        }
        let items: Vec<Labelled> = labels
            .iter()
            .enumerate()
            .filter_map(|(index, l)| l.map(|label| Labelled { index, label }))
            .collect();
        let csvs = super::csv_names(names).len();
        Ok(LabelSet {
            layout: format!("labels CSV ({csv_name})"),
            positives: items.iter().filter(|i| i.label == 1).count(),
            ignored: names.len().saturating_sub(items.len() + csvs),
            items,
            missing,
            excluded: self.excluded,
        })
    }
}
