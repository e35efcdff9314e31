//! Measurements behind `./build.sh bench` (bench/run.sh compares them with PyTorch and
//! onnxruntime): a training step's throughput, single-image inference latency, and the files a
//! PyTorch reference of the same network needs (weights, one preprocessed input, our logits).
//! Each command prints one JSON object on stdout.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use clap::Subcommand;
use cxr::classifier::Classifier;
use cxr::decode::decode;
use cxr::model::{ConvKernel, FoldedFeatures, NamedTensor, ResNetConfig};
use cxr::preprocess::preprocess_luma;
use serde_json::json;

use crate::device::{self, DeviceChoice};
use crate::objective::{LossKind, loss};
use crate::transfer::imagenet;
use crate::transfer::resnet50::ResNet50;
use crate::validation::load_classifier;

/// `trainer bench`: measurements for `./build.sh bench` (one JSON object on stdout).
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
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
        /// Compute the convolutions as im2col + matmul (the CPU's training default before the
        /// project's kernels got their backward passes) instead of the device's default.
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
        /// Time only the classifier's own path, not the other kernels it is compared with: what
        /// a profiler (`perf record`) should see.
        #[arg(long)]
        default_only: bool,
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
    /// Loader throughput (images/s) from a data folder or a preprocessed cache, and peak memory.
    Loader(crate::cache::bench::LoaderBench),
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

impl BenchCommand {
    pub fn run(self) -> Result<()> {
        let report = match self {
            Self::Train {
                width,
                batch_size,
                input_size,
                steps,
                warmup,
                columns,
                backend,
            } => {
                let (device, _) = device::select(backend)?;
                let (batch, steps) = (batch_size.max(1), steps.max(1));
                train_step(width, batch, input_size, steps, warmup, columns, &device)?
            }
            Self::Infer {
                weights,
                image,
                runs,
                backend,
                default_only,
            } => {
                let (device, _) = device::select(backend)?;
                let started = Instant::now();
                let classifier = load_classifier(weights.as_deref(), &device)?;
                let load_ms = ms_since(started);
                let mut report = inference(&classifier, &image, runs.max(1), default_only)?;
                report["load_ms"] = json!(load_ms);
                report
            }
            Self::Resnet50 {
                weights,
                dir,
                runs,
                f16_out,
            } => {
                let device = Device::flex();
                let classifier = load_classifier(weights.as_deref(), &device)?;
                let package = imagenet::ensure_in(dir, false)?;
                let resnet50 = imagenet::load(&package, 1, 2, &device)?;
                resnet50_vs_web(classifier, resnet50, runs.max(1), f16_out.as_deref())?
            }
            Self::Interop {
                weights,
                image,
                out,
            } => {
                let classifier = load_classifier(weights.as_deref(), &Device::flex())?;
                interop(&classifier, &image, &out)?
            }
            Self::Loader(args) => args.run()?,
        };
        println!("{report}");
        Ok(())
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Training throughput: forward, class-weighted cross-entropy, backward and an AdamW step on
/// random `[batch, 1, size, size]` inputs (the trainer's step without data loading), timed after
/// `warmup` untimed steps; `columns` computes the convolutions as im2col + matmul (the previous
/// default) instead of the device's default (on the CPU, the project's kernels).
pub fn train_step(
    width: f64,
    batch: usize,
    size: usize,
    steps: usize,
    warmup: usize,
    columns: bool,
    device: &Device,
) -> Result<serde_json::Value> {
    let arch = ResNetConfig::resnet18().with_width(width);
    let device = device.clone().autodiff();
    let kernel = if columns {
        ConvKernel::Columns
    } else {
        ConvKernel::for_device(&device)
    };
    let mut model = arch.init(&device);
    let mut optim = AdamWConfig::new().with_weight_decay(1e-4).init();
    let labels: Vec<u8> = (0..batch).map(|i| (i % 2) as u8).collect();
    let mut times = Vec::with_capacity(steps);
    for step in 0..warmup + steps {
        let x = Tensor::<4>::random(
            [batch, 1, size, size],
            Distribution::Uniform(0.0, 1.0),
            &device,
        );
        let started = Instant::now();
        let logits = model.classify_features(model.features_with(x, kernel));
        let l = loss(logits, &labels, LossKind::ClassWeighted, [1.0, 3.0], 1.0);
        let value: f32 = l.clone().into_scalar();
        if !value.is_finite() {
            bail!("the loss became {value} at step {step}");
        }
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optim.step(1e-3, model, grads);
        if step >= warmup {
            times.push(ms_since(started));
        }
    }
    let median_ms = median(&times);
    Ok(json!({
        "width": width, "batch": batch, "size": size, "params": model.num_params(), "columns": columns,
        "step_ms": times, "median_ms": median_ms, "img_per_s": batch as f64 / (median_ms / 1e3),
    }))
}

/// Single-image latency of the model alone (preprocessed input → logits), and of the product's
/// path with CAM and features, `runs` times each after one warm-up. With `default_only`, the
/// other ways of computing the features are left out (their figures are empty).
pub fn inference(
    classifier: &Classifier,
    image: &Path,
    runs: usize,
    default_only: bool,
) -> Result<serde_json::Value> {
    let bytes = fs::read(image).with_context(|| image.display().to_string())?;
    let t = Instant::now();
    let decoded = decode(&bytes)?;
    let decode_ms = ms_since(t);
    let t = Instant::now();
    let input = preprocess_luma(&decoded, classifier.info().input_size)?;
    let preprocess_ms = ms_since(t);
    let model = classifier.model();
    let s = input.size;
    let time = |features: &dyn Fn(Tensor<4>) -> Tensor<4>, n: usize| -> Vec<f64> {
        let forward = || {
            let x = Tensor::<4>::from_data(
                TensorData::new(input.pixels.clone(), [1, 1, s, s]),
                classifier.device(),
            );
            model.classify_features(features(x)).into_data()
        };
        let _ = forward();
        (0..n)
            .map(|_| {
                let t = Instant::now();
                let _ = forward();
                ms_since(t)
            })
            .collect()
    };
    // The ways of computing the features, alternating in rounds of 5 so the comparison shares
    // the machine's state: the classifier's (on the CPU, the fused kernels with folded
    // BatchNorms, Winograd F(2x2, 3x3) for the wider 3x3 stride-1 convolutions), the same
    // with the direct kernel only, im2col columns (the previous default) and burn's conv2d.
    let direct = FoldedFeatures::with_winograd(model, None);
    let (mut logits_ms, mut columns_ms, mut burn_conv_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut direct_ms = Vec::new();
    for _ in 0..runs.div_ceil(5) {
        logits_ms.extend(time(&|x| classifier.features(x), 5));
        if default_only {
            continue;
        }
        direct_ms.extend(time(&|x| direct.forward(x), 5));
        columns_ms.extend(time(&|x| model.features_with(x, ConvKernel::Columns), 5));
        burn_conv_ms.extend(time(&|x| model.features_with(x, ConvKernel::Burn), 5));
    }
    let with_cam_ms: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let out = classifier.run(&input);
            let _ = (
                out.logits.into_data(),
                out.cam.into_data(),
                out.features.into_data(),
            );
            ms_since(t)
        })
        .collect();
    Ok(json!({
        "model": classifier.info().name, "input_size": input.size,
        "decode_ms": decode_ms, "preprocess_ms": preprocess_ms,
        "logits_ms": logits_ms, "logits_median_ms": median(&logits_ms),
        "direct_ms": direct_ms, "direct_median_ms": median(&direct_ms),
        "columns_ms": columns_ms, "columns_median_ms": median(&columns_ms),
        "burn_conv_ms": burn_conv_ms, "burn_conv_median_ms": median(&burn_conv_ms),
        "with_cam_ms": with_cam_ms, "with_cam_median_ms": median(&with_cam_ms),
    }))
}

/// The web model against the fine-tuned ResNet-50's architecture (one input channel, two
/// classes; ImageNet weights, which cost what trained ones do): parameters, f16 weight bytes
/// (written to `f16_out` when given, for a brotli size) and single-image latency at the web
/// model's input size, both with burn's `conv2d`, alternating in rounds of 5 so both share the
/// machine's state; ratios ResNet-50 / web model. Both networks are taken by value: casting
/// to f16 can reach the parameters a module shares with its clones.
pub fn resnet50_vs_web(
    classifier: Classifier,
    resnet50: ResNet50,
    runs: usize,
    f16_out: Option<&Path>,
) -> Result<serde_json::Value> {
    let device = classifier.device();
    let s = classifier.info().input_size;
    let web = classifier.model();
    let x = || Tensor::<4>::random([1, 1, s, s], Distribution::Uniform(0.0, 1.0), device);
    let time = |f: &dyn Fn() -> TensorData| -> f64 {
        let t = Instant::now();
        let _ = f();
        ms_since(t)
    };
    let web_forward = || {
        web.classify_features(web.features_with(x(), ConvKernel::Burn))
            .into_data()
    };
    let r50_forward = || resnet50.forward(x()).into_data();
    let (_, _) = (web_forward(), r50_forward());
    let (mut web_ms, mut r50_ms) = (Vec::new(), Vec::new());
    for _ in 0..runs.div_ceil(5) {
        web_ms.extend((0..5).map(|_| time(&web_forward)));
        r50_ms.extend((0..5).map(|_| time(&r50_forward)));
    }
    let web_bytes = cxr::weights::to_f16(web.clone())
        .into_record()
        .into_bytes()
        .map_err(|e| anyhow!("{e:?}"))?
        .len();
    let r50_params = resnet50.num_params();
    let r50_record = cxr::weights::to_f16(resnet50)
        .into_record()
        .into_bytes()
        .map_err(|e| anyhow!("{e:?}"))?;
    if let Some(path) = f16_out {
        fs::write(path, &r50_record[..]).with_context(|| path.display().to_string())?;
    }
    let (web_median, r50_median) = (median(&web_ms), median(&r50_ms));
    Ok(json!({
        "input_size": s,
        "web": {"model": classifier.info().name, "params": web.num_params(), "f16_bytes": web_bytes, "latency_ms": web_ms, "median_ms": web_median},
        "resnet50": {"params": r50_params, "f16_bytes": r50_record.len(), "latency_ms": r50_ms, "median_ms": r50_median},
        "ratio_resnet50_over_web": {"params": r50_params as f64 / web.num_params() as f64,
            "f16_bytes": r50_record.len() as f64 / web_bytes as f64, "latency": r50_median / web_median},
    }))
}

/// Safetensors bytes (F32, little-endian) of named tensors, for `torch`/`safetensors` to read.
pub fn safetensors(tensors: &[NamedTensor]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + 4 * t.values.len();
        header.insert(
            t.name.clone(),
            json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + offset);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    for t in tensors {
        for v in &t.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// What a PyTorch reference needs to check it computes what we compute: `model.safetensors`
/// (torchvision names), `model.json` (architecture, input size), `input.bin` (the preprocessed
/// `image`, f32 little-endian `[1, 1, s, s]`) and `reference.json` (our logits for it).
pub fn interop(classifier: &Classifier, image: &Path, out: &Path) -> Result<serde_json::Value> {
    fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        fs::write(&path, bytes).with_context(|| path.display().to_string())
    };
    let tensors = classifier.model().torchvision_tensors();
    write("model.safetensors", &safetensors(&tensors))?;
    let info = classifier.info();
    write(
        "model.json",
        serde_json::to_string_pretty(&json!({"architecture": info.architecture, "input_size": info.input_size, "name": info.name}))
            .map_err(|e| anyhow!("{e}"))?
            .as_bytes(),
    )?;
    let bytes = fs::read(image).with_context(|| image.display().to_string())?;
    let input = classifier.preprocess(&bytes)?;
    let raw: Vec<u8> = input.pixels.iter().flat_map(|v| v.to_le_bytes()).collect();
    write("input.bin", &raw)?;
    let logits = classifier.logits(&[&input.pixels])[0];
    let reference =
        json!({"image": image.display().to_string(), "logits": logits, "tensors": tensors.len()});
    write("reference.json", reference.to_string().as_bytes())?;
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_layout_is_header_length_json_then_data() {
        let t = vec![
            NamedTensor {
                name: "a".into(),
                shape: vec![2],
                values: vec![1.0, -2.0],
            },
            NamedTensor {
                name: "b".into(),
                shape: vec![1, 1],
                values: vec![0.5],
            },
        ];
        let bytes = safetensors(&t);
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        assert_eq!(header["b"]["data_offsets"], json!([8, 12]));
        assert_eq!(header["a"]["shape"], json!([2]));
        let data = &bytes[8 + n..];
        assert_eq!(data.len(), 12);
        assert_eq!(f32::from_le_bytes(data[4..8].try_into().unwrap()), -2.0);
        assert_eq!(f32::from_le_bytes(data[8..12].try_into().unwrap()), 0.5);
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn a_training_step_is_timed() {
        let r = train_step(0.0625, 2, 32, 1, 0, false, &Device::flex()).unwrap();
        assert_eq!(r["step_ms"].as_array().unwrap().len(), 1);
        assert!(r["img_per_s"].as_f64().unwrap() > 0.0);
    }
}
