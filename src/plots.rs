//! Small SVG charts: the ROC curve (the trainer's run report and the page's validation mode), the
//! per-epoch curves and the reliability diagram (the model card). Plain SVG text,
//! readable in any browser. Hand-written rather than `plotters`: plotters' text layout needs a
//! font backend (ttf/ab_glyph, system fonts or a bundled font) that this 150-line file does not.

use std::fmt::Write;

use crate::calibration::Reliability;

const W: f64 = 480.0;
const H: f64 = 360.0;
const M: f64 = 48.0;

/// One line of a chart: name, colour, points in data coordinates.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart with axes from `x` and `y` ranges, ticks, labels and a legend.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    x: (f64, f64),
    y: (f64, f64),
    series: &[Series],
) -> String {
    chart(title, x_label, y_label, (x, y), series, W - M - 130.0)
}

/// [`line_chart`] with the legend's left edge at `legend_x` (pixels).
fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    (x, y): ((f64, f64), (f64, f64)),
    series: &[Series],
    legend_x: f64,
) -> String {
    let sx = |v: f64| M + (v - x.0) / (x.1 - x.0).max(1e-12) * (W - 2.0 * M);
    let sy = |v: f64| H - M - (v - y.0) / (y.1 - y.0).max(1e-12) * (H - 2.0 * M);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="#fff"/>
<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>
<line x1="{M}" y1="{}" x2="{}" y2="{}" stroke="#333"/><line x1="{M}" y1="{M}" x2="{M}" y2="{}" stroke="#333"/>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="14" y="{}" text-anchor="middle" transform="rotate(-90 14 {})">{}</text>
"##,
        W / 2.0,
        escape(title),
        H - M,
        W - M,
        H - M,
        H - M,
        W / 2.0,
        H - 10.0,
        escape(x_label),
        H / 2.0,
        H / 2.0,
        escape(y_label)
    );
    for i in 0..=4 {
        let t = i as f64 / 4.0;
        let (vx, vy) = (x.0 + t * (x.1 - x.0), y.0 + t * (y.1 - y.0));
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><line x1="{M}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#eee"/>"##,
            sx(vx),
            H - M + 16.0,
            tick(vx),
            M - 6.0,
            sy(vy) + 4.0,
            tick(vy),
            sy(vy),
            W - M,
            sy(vy)
        );
    }
    for (k, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(a, b)| format!("{:.1},{:.1}", sx(a), sy(b)))
            .collect();
        let _ = writeln!(
            svg,
            r##"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/><text x="{:.1}" y="{:.1}" fill="{}">{}</text>"##,
            s.color,
            path.join(" "),
            legend_x,
            M + 14.0 * (k as f64 + 1.0),
            s.color,
            escape(s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn tick(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e6 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The ROC curve with the chance diagonal.
pub fn roc_chart(points: &[(f64, f64)], auc: Option<f64>) -> String {
    roc_chart_marked("Validation ROC", points, auc, None)
}

/// The ROC curve titled `title` (the AUC is added), with the chance diagonal and, when given, an
/// operating point `(false-positive rate, sensitivity)` marked with a ring.
pub fn roc_chart_marked(
    title: &str,
    points: &[(f64, f64)],
    auc: Option<f64>,
    marker: Option<(f64, f64)>,
) -> String {
    let title = match auc {
        Some(a) => format!("{title} (AUC {a:.3})"),
        None => title.to_string(),
    };
    let mut svg = roc_lines(&title, points);
    if let Some((fpr, tpr)) = marker.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        // The axes span 0..1 on both sides, as `roc_lines` draws them.
        let (cx, cy) = (M + fpr * (W - 2.0 * M), H - M - tpr * (H - 2.0 * M));
        let ring = format!(
            r##"<circle cx="{cx:.1}" cy="{cy:.1}" r="6" fill="none" stroke="#b42318" stroke-width="2.5"/><text x="{:.1}" y="{:.1}" fill="#b42318">operating point</text>
"##,
            cx + 9.0,
            cy + 14.0
        );
        let end = svg.rfind("</svg>").unwrap_or(svg.len());
        svg.insert_str(end, &ring);
    }
    svg
}

fn roc_lines(title: &str, points: &[(f64, f64)]) -> String {
    line_chart(
        title,
        "false-positive rate (1 - specificity)",
        "true-positive rate (sensitivity)",
        (0.0, 1.0),
        (0.0, 1.0),
        &[
            Series {
                name: "model",
                color: "#2463eb",
                points: points.to_vec(),
            },
            Series {
                name: "chance",
                color: "#999",
                points: vec![(0.0, 0.0), (1.0, 1.0)],
            },
        ],
    )
}

/// The reliability diagram: observed fraction of effusion against mean predicted probability
/// per non-empty bin, before and after calibration, with the diagonal of perfect calibration.
pub fn reliability_chart(before: &Reliability, after: &Reliability) -> String {
    let points = |r: &Reliability| -> Vec<(f64, f64)> {
        r.bins
            .iter()
            .filter_map(|b| Some((b.mean_probability?, b.fraction_effusion?)))
            .collect()
    };
    let (raw, calibrated) = (
        format!("uncalibrated (ECE {:.3})", before.ece),
        format!("calibrated (ECE {:.3})", after.ece),
    );
    // The legend top left, where a reliability curve seldom goes (high observed fraction at a
    // low predicted probability).
    chart(
        &format!("Reliability ({} equal-width bins)", before.bins.len()),
        "mean predicted probability of effusion in the bin",
        "fraction with effusion",
        ((0.0, 1.0), (0.0, 1.0)),
        &[
            Series {
                name: &raw,
                color: "#d9480f",
                points: points(before),
            },
            Series {
                name: &calibrated,
                color: "#2463eb",
                points: points(after),
            },
            Series {
                name: "perfect calibration",
                color: "#999",
                points: vec![(0.0, 0.0), (1.0, 1.0)],
            },
        ],
        M + 10.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reliability_chart_draws_both_curves_through_the_non_empty_bins() {
        let before = crate::calibration::reliability(&[0.05, 0.15, 0.95], &[0, 1, 1], 10);
        let after = crate::calibration::reliability(&[0.2, 0.5, 0.9], &[0, 1, 1], 10);
        let svg = reliability_chart(&before, &after);
        assert!(svg.contains("Reliability (10 equal-width bins)"));
        assert!(svg.contains(&format!("uncalibrated (ECE {:.3})", before.ece)));
        assert_eq!(svg.matches("<polyline").count(), 3);
        // Three non-empty bins: three points on the uncalibrated curve.
        let first = svg.split("<polyline").nth(1).unwrap();
        let points = first
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(points.split(' ').count(), 3, "{points}");
    }

    #[test]
    fn charts_are_svg_with_every_series() {
        let svg = roc_chart(&[(0.0, 0.0), (0.2, 0.7), (1.0, 1.0)], Some(0.8));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("AUC 0.800") && svg.matches("<polyline").count() == 2);
        let svg = line_chart(
            "a < b",
            "x",
            "y",
            (1.0, 3.0),
            (0.0, 2.0),
            &[Series {
                name: "s",
                color: "red",
                points: vec![(1.0, 0.5)],
            }],
        );
        assert!(svg.contains("a &lt; b"));
        let marked = roc_chart_marked("Yours", &[(0.0, 0.0), (1.0, 1.0)], None, Some((0.5, 1.0)));
        // (0.5, 1.0) is the middle of the x axis, the top of the y axis.
        assert!(
            marked.contains(r#"<circle cx="240.0" cy="48.0""#),
            "{marked}"
        );
        assert!(marked.trim_end().ends_with("</svg>") && marked.starts_with("<svg"));
    }
}
