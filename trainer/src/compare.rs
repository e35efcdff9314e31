//! `compare`: a few short runs on the same split, each changing one thing, and a table.

use std::path::{Path, PathBuf};

use anyhow::Result;
use burn::tensor::Device;
use clap::Args;

use crate::device;
use crate::objective::LossKind;
use crate::options::{Session, TrainOptions};
use crate::run_dir::RunDir;
use crate::train::train;

/// `trainer compare`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Data folder: effusion/ + nofinding/, NIH Data_Entry_2017.csv with its images, or a
    /// preprocessed cache (`trainer prepare`).
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub options: TrainOptions,
    #[command(flatten)]
    pub session: Session,
}

impl CompareArgs {
    pub fn run(self) -> Result<()> {
        let (device, name) = device::select(self.session.backend)?;
        eprintln!("backend: {name}");
        let base = self.options.with_data(self.data);
        run(&base, &self.session.out(), &device, self.session.quiet)
    }
}

/// The variants: the baseline and one change each.
fn variants(base: &TrainOptions) -> Vec<(&'static str, TrainOptions)> {
    let mut variants = vec![("baseline", base.clone())];
    let mut v = base.clone();
    v.augment_p = 0.0;
    variants.push(("no augmentation", v));
    let mut v = base.clone();
    let (loss, name) = if base.loss == LossKind::Ce {
        (LossKind::ClassWeighted, "class-weighted loss")
    } else {
        (LossKind::Ce, "unweighted loss")
    };
    v.loss = loss;
    variants.push((name, v));
    let mut v = base.clone();
    v.width = base.width * 2.0;
    variants.push(("double width", v));
    variants
}

/// A variant's best epoch: validation AUC, its 95 % CI, epoch.
type Best = (f64, Option<(f64, f64)>, usize);

pub fn run(base: &TrainOptions, out: &Path, device: &Device, quiet: bool) -> Result<()> {
    let baseline = RunDir::open(out.join("0-baseline"));
    let mut rows = Vec::new();
    for (i, (name, opts)) in variants(base).iter().enumerate() {
        let dir = RunDir::open(out.join(format!("{i}-{}", name.replace(' ', "-"))));
        if !quiet {
            eprintln!("== {name} ({})", dir.path().display());
        }
        // Every variant uses the baseline's split.
        if i > 0 {
            dir.copy_split_from(&baseline)?;
        }
        let started = std::time::Instant::now();
        train(opts, dir.path(), device, false, quiet)?;
        let best: Option<Best> = dir
            .read_best()
            .ok()
            .flatten()
            .and_then(|b| Some((b.validation.auc?, b.validation.auc_ci95, b.epoch)));
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
