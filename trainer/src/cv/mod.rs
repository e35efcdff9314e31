//! `trainer cv`: K-fold cross-validation of a training configuration, the yardstick for "A is
//! better than B". Each (repeat, fold) is an ordinary `train` run in its own folder whose split
//! is the other folds' images, split again into training and an inner validation part: every
//! choice training makes (best epoch, threshold) is made there, never on the scored fold. The
//! best checkpoint then scores the held-out fold; the pooled out-of-fold scores give the AUC
//! with a bootstrap CI. A crashed cv continues with `--resume`: finished folds are skipped, an
//! interrupted one resumes from its last committed epoch.

mod bootstrap;
mod compare;
mod files;
mod leaks;
mod plan;
mod report;
mod teachers;
mod tta;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::{Args, Subcommand};
use cxr::Classifier;

use crate::data;
use crate::data::Item;
use crate::device;
use crate::loader::LoaderConfig;
use crate::options::{Session, TrainOptions};
use crate::run_dir::RunDir;
use crate::train::train;
use crate::validation::{Predictions, Tta, predict_all};
use files::{CvDir, FoldScores};
use plan::{CvPlan, check_disjoint};
use teachers::TeacherRecipe;

/// `trainer cv`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CvArgs {
    #[command(subcommand)]
    pub command: Option<CvCommand>,
    /// Data folder: effusion/ + nofinding/, NIH Data_Entry_2017.csv with its images, or a
    /// preprocessed cache (`trainer prepare`).
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// Folds (stratified by class; each group or patient in one fold).
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Repeats of the whole cross-validation with other fold seeds (seed, seed + 1, ...).
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    #[command(flatten)]
    pub options: TrainOptions,
    #[command(flatten)]
    pub distill: DistillArgs,
    #[command(flatten)]
    pub session: Session,
    /// Continue the cv in CV_DIR (its saved plan and options apply; --data may name a moved
    /// data folder).
    #[arg(long, value_name = "CV_DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
}

/// Distillation inside each fold (the shipped model's recipe).
#[derive(Args, Debug)]
pub struct DistillArgs {
    /// Distil each fold's model from teachers of its own: ImageNet ResNet-50s fine-tuned,
    /// cross-fitted, on the fold's training part (`imagenet finetune --folds N` there). Needs
    /// `trainer imagenet fetch` first. Their ensemble is scored too, in CV_DIR/teachers/.
    #[arg(long, value_enum)]
    pub distill_from: Option<crate::train::Pretrained>,
    /// Teachers per fold (cross-fitting folds of the fold's training images).
    #[arg(long, default_value_t = 5, requires = "distill_from")]
    pub teacher_folds: usize,
    #[arg(long, default_value_t = 3, requires = "distill_from")]
    pub teacher_head_epochs: usize,
    #[arg(long, default_value_t = 4, requires = "distill_from")]
    pub teacher_tune_epochs: usize,
    /// Where the ImageNet weights are cached (default: ~/.cache/cxr/imagenet).
    #[arg(long, requires = "distill_from")]
    pub weights_dir: Option<PathBuf>,
}

impl DistillArgs {
    fn recipe(&self) -> Option<TeacherRecipe> {
        self.distill_from.map(|_| TeacherRecipe {
            folds: self.teacher_folds,
            head_epochs: self.teacher_head_epochs,
            tune_epochs: self.teacher_tune_epochs,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum CvCommand {
    /// Paired comparison of two cv folders scored on the same folds: AUC difference with a
    /// paired-bootstrap 95 % CI.
    Compare(compare::CvCompareArgs),
    /// Score a finished cv's fold models again with test-time augmentation (a new cv folder on
    /// the same folds, for `cv compare`).
    Tta(tta::CvTtaArgs),
    /// How much likely same-patient films on both sides of a finished cv's folds flattered its
    /// AUC: every image against those without a group mate in their training part, paired.
    Leaks(leaks::CvLeaksArgs),
}

impl CvArgs {
    pub fn run(self) -> Result<()> {
        match self.command {
            Some(CvCommand::Compare(args)) => return args.run(),
            Some(CvCommand::Tta(args)) => return args.run(),
            Some(CvCommand::Leaks(args)) => return args.run(),
            None => {}
        }
        let (device, name) = device::select(self.session.backend)?;
        eprintln!("backend: {name}");
        let data = self.data.clone().unwrap_or_default();
        let (cv, plan) = match &self.resume {
            Some(dir) => resume_plan(dir, data)?,
            None => {
                let opts = self.options.clone().with_data(data);
                let sizes = (self.folds, self.repeats);
                new_plan(&self.session.out(), &opts, sizes, self.distill.recipe())?
            }
        };
        // The weights are looked for before the first fold, not an hour into the run.
        let package = plan
            .teachers
            .map(|_| crate::transfer::imagenet::ensure_in(self.distill.weights_dir.clone(), false))
            .transpose()?;
        let summary = run(&cv, &plan, &device, package.as_deref(), self.session.quiet)?;
        println!("{summary}");
        Ok(())
    }
}

/// A new cv folder with its plan saved.
fn new_plan(
    out: &Path,
    opts: &TrainOptions,
    (folds, repeats): (usize, usize),
    teachers: Option<TeacherRecipe>,
) -> Result<(CvDir, CvPlan)> {
    let cv = CvDir::open(out);
    if cv.has_plan() {
        bail!(
            "{} already holds a cv; use --resume {} to continue it or choose another --out",
            out.display(),
            out.display()
        );
    }
    let data = data::discover(&opts.data)?;
    crate::cache::check_input_size(&opts.data, opts.input_size)?;
    let mut plan = CvPlan::new(opts, &data, folds, repeats)?;
    if let Some(recipe) = &teachers
        && recipe.folds < 2
    {
        bail!("--teacher-folds must be at least 2, got {}", recipe.folds);
    }
    plan.teachers = teachers;
    cv.write_plan(&plan)?;
    Ok((cv, plan))
}

/// The saved plan of `dir`, with the data folder replaced where one is given.
fn resume_plan(dir: &Path, data: PathBuf) -> Result<(CvDir, CvPlan)> {
    let cv = CvDir::open(dir);
    let mut plan = cv.read_plan()?;
    if !data.as_os_str().is_empty() {
        plan.options.data = data;
    }
    Ok((cv, plan))
}

/// Train and score every fold not finished yet, then write the report. Returns its summary.
pub fn run(
    cv: &CvDir,
    plan: &CvPlan,
    device: &Device,
    package: Option<&Path>,
    quiet: bool,
) -> Result<String> {
    let total = plan.folds * plan.repeats;
    let started = Instant::now();
    let mut scores = Vec::with_capacity(total);
    let mut trained = 0;
    for (n, (r, k)) in plan.runs().enumerate() {
        if let Some(done) = cv.read_scores(r, k)? {
            scores.push(done);
            continue;
        }
        if !quiet {
            eprintln!(
                "== repeat {}/{}, fold {}/{} ({})",
                r + 1,
                plan.repeats,
                k + 1,
                plan.folds,
                cv.fold_dir(r, k).display()
            );
        }
        let fold = run_fold(cv, plan, (r, k), device, package, quiet)?;
        trained += 1;
        if !quiet {
            let per_fold = started.elapsed().as_secs_f64() / trained as f64;
            eprintln!(
                "   fold AUC {}; {:.0} s so far, about {:.0} s to go",
                crate::metrics::auc(&fold.scores, &fold.labels)
                    .map_or("n/a".into(), |a| format!("{a:.3}")),
                started.elapsed().as_secs_f64(),
                per_fold * (total - n - 1) as f64
            );
        }
        scores.push(fold);
    }
    let report = report::write(cv, plan, &scores)?;
    let mut summary = format!(
        "{}\nreport {}",
        report::summary(&report),
        cv.file(files::REPORT).display()
    );
    if plan.teachers.is_some() {
        let dir = teachers::teachers_dir(cv, plan)?;
        let ensemble = report::write(&dir, plan, &dir.read_all_scores(plan)?)?;
        summary += &format!(
            "\nthe teachers' ensemble: {}",
            report::summary(&ensemble).replace('\n', "\n  ")
        );
    }
    Ok(summary)
}

/// Train fold `k` of repeat `r` on the other folds (resuming a run a crash cut short), then
/// score its images with the best checkpoint.
fn run_fold(
    cv: &CvDir,
    plan: &CvPlan,
    (r, k): (usize, usize),
    device: &Device,
    package: Option<&Path>,
    quiet: bool,
) -> Result<FoldScores> {
    let dir = cv.fold_dir(r, k);
    let run = RunDir::create(&dir)?;
    let scored = plan.scored(r, k);
    let split = match run.read_split_if_any()? {
        Some(split) => split,
        None => {
            let split = plan.inner_split(r, k)?;
            run.write_split(&split)?;
            split
        }
    };
    // Also on resume: a split.json edited or left from another plan must not leak.
    check_disjoint(&split, &scored).with_context(|| run.split_path().display().to_string())?;
    let mut opts = plan.run_options(r);
    if let Some(recipe) = &plan.teachers {
        let package = package.context("the ImageNet weights are needed for the teachers")?;
        opts.teacher = Some(teachers::ensure(
            cv,
            plan,
            recipe,
            (r, k),
            &run,
            &opts,
            package,
        )?);
    }
    train(&opts, &dir, device, run.has_run(), quiet)?;
    let best = run
        .read_best()?
        .with_context(|| format!("{}: the run has no best epoch", dir.display()))?;
    let model = BestModel::load(&run, &opts, device)?;
    let p = model.predict(&opts.data, &scored, device, quiet, Tta::None);
    // The threshold was chosen on the inner validation split's scores (computed as these).
    let fold = FoldScores::new((r, k), best.epoch, best.validation.threshold, p);
    cv.write_scores(&fold)?;
    Ok(fold)
}

/// A finished cross-validation as `calibrate --cv` reads it.
pub struct FinishedCv {
    /// The input size its models were trained at.
    pub input_size: usize,
    /// Every out-of-fold score, one per image and repeat (the rows of `oof.csv`).
    pub scores: Vec<f32>,
    pub labels: Vec<u8>,
    /// Its figures, for the model card.
    pub card: cxr::model_card::CrossValidationCard,
}

/// The finished cross-validation in `dir`; an error names the folds still to run.
pub fn read_finished(dir: &Path) -> Result<FinishedCv> {
    let cv = CvDir::open(dir);
    let plan = cv.read_plan()?;
    let folds = cv.read_all_scores(&plan)?;
    let (report, _) = report::build(&plan, &folds)?;
    let o = &plan.options;
    let how = match &plan.teachers {
        Some(t) => format!(
            "distilled from {} ImageNet ResNet-50 teachers fine-tuned inside each fold",
            t.folds
        ),
        None => "trained from scratch".into(),
    };
    let recipe = format!(
        "{how}; width x{}, input {}x{}, {} epochs, seed {}",
        o.width, o.input_size, o.input_size, o.epochs, o.seed
    );
    let card = report::card(&report, recipe, dir.display().to_string());
    let (scores, labels) = folds
        .iter()
        .flat_map(|f| f.scores.iter().copied().zip(f.labels.iter().copied()))
        .unzip();
    Ok(FinishedCv {
        input_size: o.input_size,
        scores,
        labels,
        card,
    })
}

/// A fold's best checkpoint, with the loader settings its images are scored with.
struct BestModel {
    classifier: Classifier,
    loader: LoaderConfig,
}

impl BestModel {
    fn load(run: &RunDir, opts: &TrainOptions, device: &Device) -> Result<Self> {
        let classifier = Classifier::from_bytes(&run.read_best_checkpoint()?, device)
            .with_context(|| run.best_checkpoint_path().display().to_string())?;
        let loader = LoaderConfig {
            batch_size: opts.batch_size,
            workers: opts.workers,
            prefetch: 2,
            size: classifier.info().input_size,
        };
        Ok(Self { classifier, loader })
    }

    /// The probabilities of `items` under `root`.
    fn predict(
        &self,
        root: &Path,
        items: &[Item],
        device: &Device,
        quiet: bool,
        tta: Tta,
    ) -> Predictions {
        let model = self.classifier.model();
        predict_all(model, root, items, &self.loader, device, quiet, tta)
    }
}
