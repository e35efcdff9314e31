//! `MODEL_CARD.md`: the model card as Markdown, from the typed card stored with the weights.

use cxr::ModelInfo;
use cxr::model_card::{GateMeasurement, OodCard};

use crate::ood;

/// A figure with three decimals, or "n/a" when the card does not record it.
fn num(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "n/a".into())
}

/// A count, or "n/a".
fn count<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "n/a".into())
}

const DATA_AND_USE: &str = "## Data
800 frontal chest radiographs from the NIH Clinical Center ChestX-ray14 data set (400 \"Effusion\",
400 \"No Finding\"), downscaled to 512x512, split 80/20 per class with a fixed seed. Patient IDs are not
known for this subset, so one patient may appear on both sides of the split: treat the validation
figures as optimistic. Many effusion films are portable AP views with lines, tubes and markers; the
model may use such shortcuts, and the saliency map shows where it looked.

Acknowledgement: data from the NIH Clinical Center (https://nihcc.app.box.com/v/ChestXray-NIHCC).
Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale Chest X-ray Database and
Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax Diseases. CVPR 2017.
";

const INTENDED_USE: &str = "## Intended use
Education and research: to show what a small convolutional network learns from chest X-rays and
where it looks. Not validated on any population; its labels come from NIH's text-mined reports,
which contain errors.
";

/// The model card as Markdown, from the description stored with the weights.
pub fn model_card(info: &ModelInfo, file_bytes: usize) -> String {
    let command = info
        .card
        .training
        .command
        .as_deref()
        .unwrap_or("(not recorded)");
    format!(
        "{summary}\n## Cross-validation\n{cv}\n\n## Calibration\n{calibration}\n\n{DATA_AND_USE}\n## Not-a-chest-X-ray check\n{ood}\n\n{INTENDED_USE}\n## Training command\n```\n{command}\n```\n",
        summary = summary(info, file_bytes),
        calibration = calibration_text(info),
        cv = cross_validation_text(info),
        ood = info
            .card
            .ood
            .as_ref()
            .map_or_else(|| "None in this model file.".to_string(), ood_text),
    )
}

/// The title, the warning and the table of figures.
fn summary(info: &ModelInfo, file_bytes: usize) -> String {
    let c = &info.card;
    let (v, t) = (&c.validation, &c.training);
    let ci = v
        .auc_ci95
        .map(|(lo, hi)| format!(" (95 % CI {}–{})", num(Some(lo)), num(Some(hi))))
        .unwrap_or_default();
    let arch = &info.architecture;
    format!(
        "# Model card: {name}

**Not for clinical use.** A research and teaching demonstration; it must not be used to diagnose,
treat or triage patients.

| | |
|---|---|
| Task | pleural effusion vs no finding on a frontal chest X-ray |
| Architecture | ResNet of BasicBlocks, 1-channel stem, stem width {stem}, stage widths {widths:?}, depths {depths:?} |
| Parameters | {params} |
| Weight file | {kib:.0} KiB (f16) |
| Input | whole image, greyscale, min-max normalised, stretched to {size}x{size} |
| Threshold | {threshold} |
| Cross-validated AUC | {cv_auc} |
| Validation AUC | {auc}{ci} on {vn} images ({vp} effusion) |
| At the threshold | sensitivity {sens}, specificity {spec}, accuracy {acc} |
| Training images | {tn} ({tp} effusion, {tneg} no finding) |
| Trained | {date}, epoch {epoch} chosen by best validation AUC |
",
        name = info.name,
        stem = arch.stem_width,
        widths = arch.widths,
        depths = arch.depths,
        params = count(c.parameters),
        kib = file_bytes as f64 / 1024.0,
        size = info.input_size,
        threshold = threshold_text(info),
        auc = num(v.auc),
        cv_auc = c.cross_validation.as_ref().map_or_else(
            || "not recorded".to_string(),
            |x| format!(
                "{}{} pooled out-of-fold, {} folds of {} images",
                num(x.auc),
                x.auc_ci95
                    .map(|(lo, hi)| format!(" (95 % CI {}–{})", num(Some(lo)), num(Some(hi))))
                    .unwrap_or_default(),
                x.folds,
                x.images
            )
        ),
        vn = count(v.images),
        vp = count(v.effusion),
        sens = num(v.sensitivity),
        spec = num(v.specificity),
        acc = num(v.accuracy),
        tn = count(t.images),
        tp = count(t.effusion),
        tneg = count(t.nofinding),
        date = c.date.as_deref().unwrap_or("n/a"),
        epoch = count(c.epoch),
    )
}

/// The cross-validation section: the recipe's out-of-fold figures, the ones to quote.
fn cross_validation_text(info: &ModelInfo) -> String {
    let Some(x) = &info.card.cross_validation else {
        return "None recorded: the figures above come from the one validation split that also \
                chose this model, so they flatter it."
            .into();
    };
    let ci = x
        .auc_ci95
        .map(|(lo, hi)| format!(" (95 % CI {}–{})", num(Some(lo)), num(Some(hi))))
        .unwrap_or_default();
    let folds: Vec<String> = x.fold_aucs.iter().map(|a| num(*a)).collect();
    format!(
        "{k}-fold cross-validation ({r} repeat(s)) of this model's recipe: {recipe}. Over {n} images \
({p} effusion; {g} same-patient group(s) kept in one fold): pooled out-of-fold AUC **{auc}{ci}**; \
per fold {folds}. Each fold at its own threshold (chosen inside the fold): sensitivity {sens}, \
specificity {spec}. Every fold's model, epoch and threshold were chosen without the images it \
scored, unlike the validation figures above, which chose this model: these are the figures to \
quote. Source: `{source}`.",
        k = x.folds,
        r = x.repeats,
        recipe = x.recipe,
        n = x.images,
        p = x.effusion,
        g = x.groups,
        auc = num(x.auc),
        folds = folds.join(", "),
        sens = num(x.sensitivity),
        spec = num(x.specificity),
        source = x.source,
    )
}

/// The threshold on the probability shown, and on the raw score when they differ.
fn threshold_text(info: &ModelInfo) -> String {
    match &info.calibration {
        Some(c) => format!(
            "{:.3} on the calibrated probability of effusion ({:.3} on the uncalibrated softmax score: the same decisions)",
            c.probability(f64::from(info.threshold)),
            info.threshold
        ),
        None => format!("{:.2} on the probability of effusion", info.threshold),
    }
}

/// The calibration section: the mapping, what it was fitted on, the ECE before and after, the
/// reliability diagram and its bins.
fn calibration_text(info: &ModelInfo) -> String {
    let (Some(c), Some(card)) = (&info.calibration, &info.card.calibration) else {
        return "None: the probability is the softmax of the two logits, not calibrated; it does not \
                mean \"this fraction of such images have effusion\"."
            .into();
    };
    let prevalence = 100.0 * c.prevalence;
    // An empty bin has no mean: a dash, not "n/a" (nothing is missing from the card).
    let cell = |v: Option<f64>| v.map_or_else(|| "–".to_string(), |x| format!("{x:.3}"));
    let rows: String = card
        .before
        .bins
        .iter()
        .zip(&card.after.bins)
        .map(|(b, a)| {
            format!(
                "| {:.1}–{:.1} | {} | {} | {} | {} | {} | {} |\n",
                b.lower,
                b.upper,
                b.count,
                cell(b.mean_probability),
                cell(b.fraction_effusion),
                a.count,
                cell(a.mean_probability),
                cell(a.fraction_effusion)
            )
        })
        .collect();
    format!(
        "The probability shown by the page and `predict` is calibrated: {method:?} scaling, \
p = σ({slope:.4} · z + {intercept:.4}) where z is the logit difference (effusion − no finding), \
fitted by minimising the log-loss (Newton's method, Platt's smoothed targets) on {fitted_on}.\n\n\
It is the probability of effusion among images like these at their prevalence, {prevalence:.0} % effusion \
({training}). At another prevalence π, multiply its odds by \
(π / (1 − π)) / ({prevalence:.0} / {rest:.0}); the page does this for a prevalence you enter. \
The calibration keeps every decision at the threshold (on these scores: sensitivity {sens}, specificity {spec}).\n\n\
Expected calibration error ({bins} equal-width bins, on the same {n} images): **{before:.3} before, \
{after:.3} after** (fitted and measured on the same images); {crossed}.{check}\n\n![Reliability diagram](reliability.svg)\n\n\
| bin | images (raw) | mean raw p | effusion fraction | images (calibrated) | mean calibrated p | effusion fraction |\n\
|---|---|---|---|---|---|---|\n{rows}",
        method = c.method,
        slope = c.slope,
        intercept = c.intercept,
        fitted_on = card.fitted_on,
        rest = 100.0 - prevalence,
        training = match (info.card.training.effusion, info.card.training.images) {
            (Some(e), Some(n)) if n > 0 => format!(
                "the training set: {:.0} % effusion",
                100.0 * e as f64 / n as f64
            ),
            _ => "the training set's is not recorded".into(),
        },
        crossed = card.after_cross_fitted.as_ref().map_or_else(
            || "no cross-fitted figure".into(),
            |r| format!(
                "**{:.3}** when each fifth of them is calibrated by a fit on the other four fifths, \
                 the fairer estimate for images the fit has not seen. Mean log-loss: {:.3} before, \
                 {:.3} after, {:.3} cross-fitted",
                r.ece, card.before.log_loss, card.after.log_loss, r.log_loss
            )
        ),
        check = card.check.as_ref().map_or_else(String::new, |k| format!(
            "\n\nOn this model's own held-out images, which the fit did not use ({}: {} images, {} \
             effusion): ECE **{:.3} before, {:.3} after**; mean log-loss {:.3} before, {:.3} after.",
            k.images_are, k.images, k.effusion, k.before.ece, k.after.ece, k.before.log_loss, k.after.log_loss
        )),
        sens = num(card.sensitivity),
        spec = num(card.specificity),
        bins = card.before.bins.len(),
        n = card.images,
        before = card.before.ece,
        after = card.after.ece,
    )
}

fn candidate_row(c: &GateMeasurement) -> String {
    format!(
        "| {:?} | {}/{} | {}/{} |\n",
        c.shrinkage, c.validation_flagged, c.validation_images, c.negatives_caught, c.negatives
    )
}

/// The gate's section: what it measures, its rates, the candidates and what it missed.
fn ood_text(o: &OodCard) -> String {
    let Some(m) = &o.chosen else {
        return "None in this model file.".into();
    };
    let missed = if m.missed.is_empty() {
        "none".to_string()
    } else {
        m.missed.join(", ")
    };
    format!(
        "Every image is also checked for looking unlike the training X-rays: {method}. The page and \
`predict` warn \"this does not look like a frontal chest X-ray\" when the distance is above {threshold:.2} \
(the {q} % quantile of the training X-rays; shrinkage {shrink:?}).\n\n\
| measured on held-out images | rate |\n|---|---|\n\
| validation X-rays wrongly flagged | {vf}/{vn} ({vr:.1} %) |\n\
| images that are not frontal chest X-rays caught ({folder}) | {nc}/{nn} ({nr:.0} %) |\n\n\
Candidates (threshold at the same quantile; the rule: {rule}):\n\n\
| shrinkage | validation X-rays flagged | non-X-rays caught |\n|---|---|---|\n{candidates}\n\
Missed by the chosen gate: {missed}. The non-X-ray set is small (30 images: photos, textures, astronomy, microscopy, a retina \
photograph, a CT phantom, drawings, a document, a screenshot, noise): the rates are indicative, not a guarantee. Lateral \
chest views and X-rays of other body parts were not available to test; expect the gate to miss some of those.",
        method = o.method,
        threshold = m.threshold,
        q = ood::TRAIN_QUANTILE * 100.0,
        shrink = m.shrinkage,
        vf = m.validation_flagged,
        vn = m.validation_images,
        vr = 100.0 * m.false_flag_rate(),
        nc = m.negatives_caught,
        nn = m.negatives,
        nr = 100.0 * m.catch_rate(),
        folder = o.negatives_folder,
        rule = o.rule,
        candidates = o.candidates.iter().map(candidate_row).collect::<String>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_card_renders_every_figure() {
        let info = cxr::weights::read_info(cxr::embedded::MODEL).unwrap();
        let md = model_card(&info, 1 << 20);
        assert!(md.contains("Not for clinical use") && md.contains("Wang X"));
        assert!(md.contains("validation X-rays wrongly flagged"));
        let auc = format!("{:.3}", info.card.validation.auc.unwrap());
        assert!(md.contains(&format!("| Validation AUC | {auc}")), "{md}");
        let missing: Vec<&str> = md.lines().filter(|l| l.contains("n/a")).collect();
        assert!(missing.is_empty(), "{missing:?}");
    }
}
