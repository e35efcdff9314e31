//! `compare`: a few short runs on the same split, each changing one thing, and a table.

use std::path::Path;

use burn::tensor::Device;

use crate::train::{LossKind, TrainOptions, train};

pub fn run(base: &TrainOptions, out: &Path, device: &Device, quiet: bool) -> Result<(), String> {
    let mut variants: Vec<(&str, TrainOptions)> = Vec::new();
    variants.push(("baseline", base.clone()));
    let mut v = base.clone();
    v.augment_p = 0.0;
    variants.push(("no augmentation", v));
    let mut v = base.clone();
    v.loss = if base.loss == LossKind::Ce {
        LossKind::ClassWeighted
    } else {
        LossKind::Ce
    };
    variants.push((
        if base.loss == LossKind::Ce {
            "class-weighted loss"
        } else {
            "unweighted loss"
        },
        v,
    ));
    let mut v = base.clone();
    v.width = base.width * 2.0;
    variants.push(("double width", v));
    let mut rows = Vec::new();
    for (i, (name, opts)) in variants.iter().enumerate() {
        let dir = out.join(format!("{i}-{}", name.replace(' ', "-")));
        if !quiet {
            eprintln!("== {name} ({})", dir.display());
        }
        // Every variant uses the baseline's split.
        if i > 0 {
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            std::fs::copy(out.join("0-baseline/split.json"), dir.join("split.json"))
                .map_err(|e| e.to_string())?;
        }
        let started = std::time::Instant::now();
        train(opts, &dir, device, false, quiet)?;
        let best: Option<serde_json::Value> = std::fs::read(dir.join("best.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let best = best.and_then(|b| {
            let auc = b["validation"]["auc"].as_f64()?;
            let ci = b["validation"]["auc_ci95"]
                .as_array()
                .and_then(|a| Some((a.first()?.as_f64()?, a.get(1)?.as_f64()?)));
            Some((auc, ci, b["epoch"].as_u64().unwrap_or(0) as usize))
        });
        rows.push((name.to_string(), best, started.elapsed().as_secs_f64()));
    }
    println!("| variant | best validation AUC | 95 % CI | epoch | time (s) |");
    println!("|---|---|---|---|---|");
    for (name, best, secs) in rows {
        match best {
            Some((auc, ci, epoch)) => {
                let ci = ci
                    .map(|(lo, hi)| format!("{lo:.3}–{hi:.3}"))
                    .unwrap_or_default();
                println!("| {name} | {auc:.3} | {ci} | {epoch} | {secs:.0} |");
            }
            None => println!("| {name} | n/a | | | {secs:.0} |"),
        }
    }
    Ok(())
}
