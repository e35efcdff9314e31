//! `trainer groups`: likely same-patient groups. Each image goes through the model's
//! preprocessing (whole image, min-max normalised, 256x256), then either a DCT hash (`phash`:
//! the signs of the lowest 16x16 DCT coefficients against their mean, from the `image_hasher`
//! crate; distance = differing bits of 256) or the ImageNet ResNet-50's pooled features
//! (`resnet50`, [`super::features`]; distance = 1 - cosine similarity). Two images at most
//! `--threshold` apart are linked, and linked images form a group (connected components). The
//! hash needs nothing but finds only near-copies; the features need the 95 MB weights
//! (`trainer imagenet fetch`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use image::{DynamicImage, GrayImage};
use image_hasher::{HashAlg, Hasher, HasherConfig, ImageHash};

use super::GroupsFile;
use crate::data::{self, Item};
use crate::validation::bar;

/// Side of the image the hash is computed from: the model's input size.
const SIDE: usize = 256;
/// The hash is HASH_SIDE x HASH_SIDE bits.
const HASH_SIDE: u32 = 16;

/// `trainer groups`.
#[derive(Args, Debug)]
pub struct GroupsArgs {
    /// Data folder (effusion/ + nofinding/, or NIH layout).
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write the groups file (for `--groups` of train, compare and cv).
    #[arg(long)]
    pub out: PathBuf,
    /// How images are compared.
    #[arg(long, value_enum, default_value = "phash")]
    pub method: Method,
    /// Images at most this far apart are linked (default: 12 bits for phash; 0 for resnet50, whose
    /// threshold is to be chosen by looking at its pairs).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Where the ImageNet weights are cached (--method resnet50).
    #[arg(long)]
    pub weights_dir: Option<PathBuf>,
    /// Also write a contact sheet (PNG) of the listed pairs, four pairs a row, to look at where
    /// the threshold should be.
    #[arg(long)]
    pub sheet: Option<PathBuf>,
    /// The list and the contact sheet start at the first pair at this distance or more.
    #[arg(long, default_value_t = 0.0)]
    pub sheet_from: f64,
    /// Pairs listed (and on the contact sheet).
    #[arg(long, default_value_t = 16)]
    pub show: usize,
    /// Print nothing but the summary.
    #[arg(long)]
    pub quiet: bool,
}

/// How images are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// Perceptual hash (DCT) of the preprocessed image: near-copies only.
    Phash,
    /// Cosine distance of the ImageNet ResNet-50's pooled features (needs `imagenet fetch`).
    Resnet50,
}

impl Method {
    /// The default thresholds. pHash: chosen by looking at the closest pairs of the 800
    /// (docs/model.md): those at 16 to 21 bits are different patients, so only closer pairs
    /// (re-saved, rescaled or slightly cropped copies of one film) are linked. ResNet-50: no
    /// threshold has been chosen by looking yet, so by default only identical features link;
    /// look at the listed pairs (`--show`, `--sheet`) and pass `--threshold`.
    pub fn default_threshold(self) -> f64 {
        match self {
            Method::Phash => 12.0,
            Method::Resnet50 => 0.0,
        }
    }

    fn description(self) -> String {
        match self {
            Method::Phash => format!(
                "pHash (DCT, {HASH_SIDE}x{HASH_SIDE} bits) of the preprocessed {SIDE}x{SIDE} image; \
                 distance = differing bits"
            ),
            Method::Resnet50 => format!(
                "ImageNet ResNet-50 pooled features of the preprocessed {SIDE}x{SIDE} image, \
                 centred; distance = 1 - cosine similarity"
            ),
        }
    }
}

/// Two images and the Hamming distance of their hashes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub a: usize,
    pub b: usize,
    pub distance: f64,
}

impl GroupsArgs {
    pub fn run(self) -> Result<()> {
        let threshold = self
            .threshold
            .unwrap_or_else(|| self.method.default_threshold());
        if threshold.is_nan() || threshold < 0.0 {
            bail!("--threshold must be a distance of 0 or more, got {threshold}");
        }
        crate::cache::require_raw(&self.data, "trainer groups")?;
        let data = data::discover(&self.data)?;
        let pairs = match self.method {
            Method::Phash => closest_pairs(&hash_all(&data.root, &data.items, self.quiet)?),
            Method::Resnet50 => {
                let rows = super::features::resnet50_features(
                    &data.root,
                    &data.items,
                    SIDE,
                    self.weights_dir.clone(),
                )?;
                all_pairs(rows.len(), |a, b| {
                    super::features::cosine_distance(&rows[a], &rows[b])
                })
            }
        };
        let file = GroupsFile {
            method: format!(
                "{}; two images at most the threshold apart are linked; groups are the connected \
                 components",
                self.method.description()
            ),
            threshold,
            images: data.items.len(),
            groups: link(&data.items, &pairs, threshold),
        };
        file.write(&self.out)?;
        self.print(&data.items, &pairs, &file)?;
        if let Some(sheet) = &self.sheet {
            super::sheet::write(
                sheet,
                &data.root,
                &data.items,
                &self.shown(&pairs),
                SIDE / 2,
            )?;
            println!("contact sheet of these pairs: {}", sheet.display());
        }
        Ok(())
    }

    /// The pairs listed and drawn: `--show` of them from distance `--sheet-from` on.
    fn shown(&self, pairs: &[Pair]) -> Vec<Pair> {
        pairs
            .iter()
            .filter(|p| p.distance >= self.sheet_from)
            .take(self.show)
            .copied()
            .collect()
    }

    fn print(&self, items: &[Item], pairs: &[Pair], file: &GroupsFile) -> Result<()> {
        let mixed = file
            .groups
            .iter()
            .filter(|g| {
                let effusion = g.iter().filter(|f| is_positive(items, f)).count();
                effusion > 0 && effusion < g.len()
            })
            .count();
        println!(
            "{} images: {} group(s) of {} images at distance <= {} ({} pair(s)); {} group(s) hold both labels; written to {}",
            items.len(),
            file.groups.len(),
            file.grouped_images(),
            file.threshold,
            pairs
                .iter()
                .filter(|p| p.distance <= file.threshold)
                .count(),
            mixed,
            self.out.display()
        );
        for p in self.shown(pairs) {
            let (a, b) = (&items[p.a].file, &items[p.b].file);
            println!("  {:>7.3}  {a}  {b}", p.distance);
        }
        Ok(())
    }
}

fn is_positive(items: &[Item], file: &str) -> bool {
    items.iter().any(|i| i.file == file && i.label == 1)
}

fn hasher() -> Hasher {
    HasherConfig::new()
        .hash_size(HASH_SIDE, HASH_SIDE)
        .hash_alg(HashAlg::Mean)
        .preproc_dct()
        .to_hasher()
}

/// The model's preprocessing of a file as an 8-bit greyscale image.
pub fn preprocessed_image(path: &Path, side: usize) -> Result<GrayImage> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    let input = cxr::preprocess::preprocess(&bytes, side)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let pixels = input
        .pixels
        .iter()
        .map(|p| (p * 255.0).round() as u8)
        .collect();
    GrayImage::from_raw(side as u32, side as u32, pixels)
        .with_context(|| format!("{}: wrong pixel count", path.display()))
}

/// The hash of every image (an unreadable one is an error naming the file).
pub fn hash_all(root: &Path, items: &[Item], quiet: bool) -> Result<Vec<ImageHash>> {
    let hasher = hasher();
    let pb = bar(items.len(), "hashing".into(), quiet);
    let mut hashes = Vec::with_capacity(items.len());
    for item in items {
        let image = preprocessed_image(&root.join(&item.file), SIDE)?;
        hashes.push(hasher.hash_image(&DynamicImage::ImageLuma8(image)));
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(hashes)
}

/// Every pair of images by hash distance, closest first.
pub fn closest_pairs(hashes: &[ImageHash]) -> Vec<Pair> {
    all_pairs(hashes.len(), |a, b| f64::from(hashes[a].dist(&hashes[b])))
}

/// Every pair of `n` images with its distance, closest first (ties in file order).
pub fn all_pairs(n: usize, distance: impl Fn(usize, usize) -> f64) -> Vec<Pair> {
    let mut pairs = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    for a in 0..n {
        for b in a + 1..n {
            let distance = distance(a, b);
            pairs.push(Pair { a, b, distance });
        }
    }
    pairs.sort_by(|p, q| {
        p.distance
            .total_cmp(&q.distance)
            .then((p.a, p.b).cmp(&(q.a, q.b)))
    });
    pairs
}

/// The groups (connected components of the pairs at `threshold` or closer), each as its
/// files in data order, groups in the order of their first file.
pub fn link(items: &[Item], pairs: &[Pair], threshold: f64) -> Vec<Vec<String>> {
    let mut parent: Vec<usize> = (0..items.len()).collect();
    for p in pairs.iter().take_while(|p| p.distance <= threshold) {
        super::union(&mut parent, p.a, p.b);
    }
    let mut members: std::collections::BTreeMap<usize, Vec<String>> = Default::default();
    for (i, item) in items.iter().enumerate() {
        let root = super::find_root(&mut parent, i);
        members.entry(root).or_default().push(item.file.clone());
    }
    members.into_values().filter(|g| g.len() > 1).collect()
}
