//! `trainer bench loader`: how fast the training loader delivers images from a data folder or a
//! preprocessed cache, and the process's peak memory (one JSON object on stdout).
//!
//! It runs what a training epoch runs, without the model: the items shuffled as epoch 1 shuffles
//! them, the same loader (threads, batches, prefetch) and, with `--augment`, the same
//! augmentation. `bench/loader_throughput.sh` runs it on a raw folder and on its cache.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use serde_json::{Value, json};

use crate::augment::AugmentConfig;
use crate::data;
use crate::loader::{Failures, Loader, LoaderConfig};
use crate::rng::Rng;

/// `trainer bench loader`.
#[derive(Args, Debug)]
pub struct LoaderBench {
    /// A data folder or a preprocessed cache (`trainer prepare`).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 256)]
    pub input_size: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Loader threads (train's --workers).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Load at most this many images (default: all).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Augment as training does (p = 0.5, strength 1).
    #[arg(long)]
    pub augment: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl LoaderBench {
    pub fn run(self) -> Result<Value> {
        let started = Instant::now();
        let dataset = data::discover(&self.data)?;
        super::check_input_size(&self.data, self.input_size)?;
        let discover_s = started.elapsed().as_secs_f64();
        let mut items = dataset.items.clone();
        Rng::new(self.seed).fork(1000).shuffle(&mut items);
        items.truncate(self.limit.unwrap_or(usize::MAX));
        let cfg = LoaderConfig {
            batch_size: self.batch_size.max(1),
            workers: self.workers.max(1),
            prefetch: 2,
            size: self.input_size,
        };
        let augmentation = self.augment.then(|| AugmentConfig::with_strength(0.5, 1.0));
        let failures: Failures = Default::default();
        let started = Instant::now();
        let (mut images, mut sum) = (0usize, 0.0f64);
        let wanted = items.len();
        for batch in Loader::start(
            dataset.root.clone(),
            items,
            &cfg,
            augmentation,
            self.seed,
            failures.clone(),
        ) {
            images += batch.len();
            sum += batch.pixels.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
        let seconds = started.elapsed().as_secs_f64();
        let failed = failures.lock().map(|f| f.len()).unwrap_or(0);
        let memory = memory_mb();
        Ok(json!({
            "data": self.data.display().to_string(),
            "layout": dataset.layout,
            "input_size": self.input_size,
            "batch_size": cfg.batch_size,
            "workers": cfg.workers,
            "augment": self.augment,
            "images": images,
            "failed": failed,
            "requested": wanted,
            "discover_s": discover_s,
            "seconds": seconds,
            "images_per_s": images as f64 / seconds.max(1e-9),
            "pixel_mean": sum / (images * cfg.size * cfg.size).max(1) as f64,
            "peak_rss_mb": memory.0,
            "rss_anon_mb": memory.1,
            "rss_file_mb": memory.2,
        }))
    }
}

/// Peak resident memory, and the current anonymous and file-backed resident memory, in MB
/// (Linux `/proc/self/status`; null elsewhere).
fn memory_mb() -> (Option<f64>, Option<f64>, Option<f64>) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("RssAnon:"), field("RssFile:"))
}
