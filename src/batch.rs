//! Batch mode: one row per file (a prediction or an error) and the CSV export, shared by the
//! page's batch table and `trainer predict --csv`.

use serde::{Deserialize, Serialize};

/// The outcome for one file of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRow {
    /// File name (or path) as the user gave it.
    pub file: String,
    /// Probability of effusion (calibrated when the model is), when the file was classified.
    pub probability: Option<f32>,
    /// `effusion` or `nofinding` at the model's threshold.
    pub label: Option<String>,
    /// The decision threshold used, on the same scale as `probability`.
    pub threshold: Option<f32>,
    /// Whether the image was flagged as unlike a frontal chest X-ray (when the check ran).
    pub ood: Option<bool>,
    /// Machine-readable error code, when the file could not be classified.
    pub error_code: Option<String>,
    /// The message shown to the user, when the file could not be classified.
    pub error: Option<String>,
}

impl BatchRow {
    /// The row of a classified file.
    pub fn classified(file: String, p: &crate::classifier::Prediction) -> Self {
        Self {
            file,
            probability: Some(p.probability),
            label: Some(p.label.clone()),
            threshold: Some(p.threshold),
            ood: p.ood,
            error_code: None,
            error: None,
        }
    }

    /// The row of a file that could not be classified.
    pub fn failed(file: String, code: &str, message: &str) -> Self {
        Self {
            file,
            probability: None,
            label: None,
            threshold: None,
            ood: None,
            error_code: Some(code.to_string()),
            error: Some(message.to_string()),
        }
    }
}

/// The CSV header, in column order.
pub const CSV_HEADER: [&str; 7] = [
    "file",
    "probability_effusion",
    "label",
    "threshold",
    "not_a_chest_xray",
    "error_code",
    "error",
];

/// One CSV field: quoted when it holds a comma, quote or line break (RFC 4180), and prefixed
/// with `'` when it starts like a spreadsheet formula, so a crafted file name cannot run as one.
pub fn csv_field(value: &str) -> String {
    let guarded = match value.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{value}"),
        _ => value.to_string(),
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

/// The whole batch as CSV (header first, `\r\n` line ends as RFC 4180 says).
pub fn to_csv(rows: &[BatchRow]) -> String {
    let mut out = CSV_HEADER.join(",");
    out.push_str("\r\n");
    for row in rows {
        let fields = [
            csv_field(&row.file),
            row.probability
                .map(|p| format!("{p:.4}"))
                .unwrap_or_default(),
            row.label.clone().unwrap_or_default(),
            row.threshold.map(|t| format!("{t:.4}")).unwrap_or_default(),
            row.ood
                .map(|o| if o { "yes" } else { "no" }.to_string())
                .unwrap_or_default(),
            csv_field(row.error_code.as_deref().unwrap_or("")),
            csv_field(row.error.as_deref().unwrap_or("")),
        ];
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(file: &str, p: f32) -> BatchRow {
        BatchRow {
            file: file.into(),
            probability: Some(p),
            label: Some(if p >= 0.5 { "effusion" } else { "nofinding" }.into()),
            threshold: Some(0.5),
            ood: Some(false),
            error_code: None,
            error: None,
        }
    }

    #[test]
    fn rows_and_errors_become_csv_lines() {
        let bad = BatchRow {
            file: "notes.png".into(),
            probability: None,
            label: None,
            threshold: None,
            ood: None,
            error_code: Some("unsupported_format".into()),
            error: Some("Not an image, \"really\".".into()),
        };
        let csv = to_csv(&[ok("a.png", 0.81234), bad]);
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(
            lines[0],
            "file,probability_effusion,label,threshold,not_a_chest_xray,error_code,error"
        );
        assert_eq!(lines[1], "a.png,0.8123,effusion,0.5000,no,,");
        assert_eq!(
            lines[2],
            "notes.png,,,,,unsupported_format,\"Not an image, \"\"really\"\".\""
        );
        assert_eq!(lines[3], "");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn names_cannot_break_rows_or_run_as_formulas() {
        assert_eq!(csv_field("x,y.png"), "\"x,y.png\"");
        assert_eq!(csv_field("two\nlines.png"), "\"two\nlines.png\"");
        assert_eq!(
            csv_field("=HYPERLINK(\"http://x\").png"),
            "\"'=HYPERLINK(\"\"http://x\"\").png\""
        );
        assert_eq!(csv_field("+1.png"), "'+1.png");
        assert_eq!(csv_field("plain.png"), "plain.png");
    }
}
