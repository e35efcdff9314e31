//! `trainer groups`: likely same-patient groups by a perceptual hash. Each image goes through
//! the model's preprocessing (whole image, min-max normalised, 256x256), then a DCT hash
//! (pHash: the signs of the lowest 16x16 DCT coefficients against their mean, from the
//! `image_hasher` crate); two images whose hashes differ in at most `--threshold` of the 256
//! bits are linked, and linked images form a group (connected components). The ImageNet
//! ResNet-50's features would be a stronger similarity, but its weights are a 95 MB download
//! that offline machines do not have; the hash needs nothing.

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
    /// Images whose hashes differ in at most this many of 256 bits are linked.
    #[arg(long, default_value_t = DEFAULT_THRESHOLD)]
    pub threshold: u32,
    /// Also write a contact sheet (PNG) of the listed pairs, four pairs a row, to look at where
    /// the threshold should be.
    #[arg(long)]
    pub sheet: Option<PathBuf>,
    /// The contact sheet starts at the first pair at this distance or more.
    #[arg(long, default_value_t = 0)]
    pub sheet_from: u32,
    /// Pairs listed (and on the contact sheet).
    #[arg(long, default_value_t = 16)]
    pub show: usize,
    /// Print nothing but the summary.
    #[arg(long)]
    pub quiet: bool,
}

/// Chosen by looking at the closest pairs of the 800 (docs/model.md): those at 16 to 21 bits are
/// different patients (different bodies, positions and devices), so the default links only
/// closer pairs: re-saved, rescaled or slightly cropped copies of one film.
pub const DEFAULT_THRESHOLD: u32 = 12;

/// Two images and the Hamming distance of their hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    pub a: usize,
    pub b: usize,
    pub distance: u32,
}

impl GroupsArgs {
    pub fn run(self) -> Result<()> {
        check_threshold(self.threshold)?;
        let data = data::discover(&self.data)?;
        let hashes = hash_all(&data.root, &data.items, self.quiet)?;
        let pairs = closest_pairs(&hashes);
        let groups = link(&data.items, &pairs, self.threshold);
        let file = GroupsFile {
            method: format!(
                "pHash (DCT, {HASH_SIDE}x{HASH_SIDE} bits) of the preprocessed {SIDE}x{SIDE} image; \
                 Hamming distance <= threshold links two images; groups are the connected components"
            ),
            threshold: self.threshold,
            images: data.items.len(),
            groups,
        };
        file.write(&self.out)?;
        let mixed = file
            .groups
            .iter()
            .filter(|g| {
                let effusion = g.iter().filter(|f| is_positive(&data.items, f)).count();
                effusion > 0 && effusion < g.len()
            })
            .count();
        println!(
            "{} images: {} group(s) of {} images at distance <= {} ({} pair(s)); {} group(s) hold both labels; written to {}",
            data.items.len(),
            file.groups.len(),
            file.grouped_images(),
            self.threshold,
            pairs
                .iter()
                .filter(|p| p.distance <= self.threshold)
                .count(),
            mixed,
            self.out.display()
        );
        let shown: Vec<Pair> = pairs
            .iter()
            .filter(|p| p.distance >= self.sheet_from)
            .take(self.show)
            .copied()
            .collect();
        for p in &shown {
            let (a, b) = (&data.items[p.a].file, &data.items[p.b].file);
            println!("  {:>3}  {a}  {b}", p.distance);
        }
        if let Some(sheet) = &self.sheet {
            super::sheet::write(sheet, &data.root, &data.items, &shown, SIDE / 2)?;
            println!("contact sheet of these pairs: {}", sheet.display());
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

/// Every pair of images, closest first (ties in file order).
pub fn closest_pairs(hashes: &[ImageHash]) -> Vec<Pair> {
    let mut pairs = Vec::with_capacity(hashes.len() * hashes.len().saturating_sub(1) / 2);
    for a in 0..hashes.len() {
        for b in a + 1..hashes.len() {
            let distance = hashes[a].dist(&hashes[b]);
            pairs.push(Pair { a, b, distance });
        }
    }
    pairs.sort_by_key(|p| (p.distance, p.a, p.b));
    pairs
}

/// The groups (connected components of the pairs at `threshold` or closer), each as its
/// files in data order, groups in the order of their first file.
pub fn link(items: &[Item], pairs: &[Pair], threshold: u32) -> Vec<Vec<String>> {
    let mut parent: Vec<usize> = (0..items.len()).collect();
    for p in pairs.iter().take_while(|p| p.distance <= threshold) {
        super::union(&mut parent, p.a, p.b);
    }
    let mut members: std::collections::BTreeMap<usize, Vec<String>> = Default::default();
    for i in 0..items.len() {
        let root = super::find_root(&mut parent, i);
        members.entry(root).or_default().push(items[i].file.clone());
    }
    members.into_values().filter(|g| g.len() > 1).collect()
}

/// A check that the threshold leaves something to compare (`--threshold` past every bit).
pub fn check_threshold(threshold: u32) -> Result<()> {
    if threshold >= HASH_SIDE * HASH_SIDE {
        bail!(
            "--threshold {threshold} links every pair (hashes have {} bits)",
            HASH_SIDE * HASH_SIDE
        );
    }
    Ok(())
}
