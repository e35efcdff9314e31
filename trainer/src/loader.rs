//! A streaming batch loader: worker threads decode, preprocess and augment images while the model
//! trains. Memory is bounded by `workers x (prefetch + 1)` batches, whatever the data set's size;
//! batches come out in a fixed order, so a run is reproducible. The images come from a data
//! folder (decoded and preprocessed here) or from a preprocessed cache (`trainer prepare`:
//! read from its slots), whichever `root` is ([`Source`]).

use anyhow::anyhow;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use cxr::preprocess::preprocess;

use crate::augment::{AugmentConfig, augment};
use crate::cache::{self, Cache};
use crate::data::Item;
use crate::rng::Rng;

/// One batch of preprocessed images.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `len * size * size` values, image after image.
    pub pixels: Vec<f32>,
    pub labels: Vec<u8>,
    pub files: Vec<String>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub workers: usize,
    /// Batches each worker may have ready ahead of the consumer.
    pub prefetch: usize,
    pub size: usize,
}

/// Files that failed to decode while loading: (file, message).
pub type Failures = Arc<Mutex<Vec<(String, String)>>>;

/// Iterator over the batches of one pass over `items`.
pub struct Loader {
    receivers: Vec<Receiver<Batch>>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
    batches: usize,
}

impl Loader {
    /// Start loading `items` (in the given order) from `root`. With `augment`, each image is
    /// augmented with a generator derived from `seed` and its position.
    pub fn start(
        root: PathBuf,
        items: Vec<Item>,
        cfg: &LoaderConfig,
        augmentation: Option<AugmentConfig>,
        seed: u64,
        failures: Failures,
    ) -> Self {
        let batch_size = cfg.batch_size.max(1);
        let batches = items.len().div_ceil(batch_size);
        let workers = cfg.workers.clamp(1, batches.max(1));
        let items = Arc::new(items);
        let root = Arc::new(Source::open(root));
        let augmentation = Arc::new(augmentation);
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel::<Batch>(cfg.prefetch.max(1));
            receivers.push(rx);
            let (items, root, augmentation, failures) = (
                items.clone(),
                root.clone(),
                augmentation.clone(),
                failures.clone(),
            );
            let size = cfg.size;
            handles.push(std::thread::spawn(move || {
                let base = Rng::new(seed);
                for b in (w..batches).step_by(workers) {
                    let mut batch = Batch {
                        pixels: Vec::with_capacity(batch_size * size * size),
                        labels: Vec::with_capacity(batch_size),
                        files: Vec::with_capacity(batch_size),
                    };
                    let end = ((b + 1) * batch_size).min(items.len());
                    for (i, item) in items[b * batch_size..end].iter().enumerate() {
                        match root.load(item, size) {
                            Ok(mut pixels) => {
                                if let Some(cfg) = augmentation.as_ref() {
                                    let mut rng = base.fork((b * batch_size + i) as u64);
                                    augment(&mut pixels, size, cfg, &mut rng);
                                }
                                batch.pixels.extend_from_slice(&pixels);
                                batch.labels.push(item.label);
                                batch.files.push(item.file.clone());
                            }
                            Err(message) => {
                                if let Ok(mut f) = failures.lock() {
                                    f.push((item.file.clone(), format!("{message:#}")));
                                }
                            }
                        }
                    }
                    if tx.send(batch).is_err() {
                        return; // The consumer stopped early.
                    }
                }
            }));
        }
        Self {
            receivers,
            handles,
            next: 0,
            batches,
        }
    }
}

/// Where the images come from.
enum Source {
    /// A data folder: each file is read, decoded and preprocessed.
    Files(PathBuf),
    /// A preprocessed cache: each image is read from its slot.
    Cache(Box<Cache>),
    /// A cache that could not be opened: every image fails with this message.
    Broken(String),
}

impl Source {
    fn open(root: PathBuf) -> Self {
        if !cache::is_cache(&root) {
            return Self::Files(root);
        }
        match Cache::open(&root) {
            Ok(cache) => Self::Cache(Box::new(cache)),
            Err(e) => Self::Broken(e.to_string()),
        }
    }

    fn load(&self, item: &Item, size: usize) -> anyhow::Result<Vec<f32>> {
        match self {
            Self::Files(root) => preprocess_file(root, item, size),
            Self::Cache(cache) => cache.read(&item.file, size).map_err(|e| anyhow!("{e}")),
            Self::Broken(message) => Err(anyhow!("{message}")),
        }
    }
}

/// The direct path: read `item`'s file under `root` and preprocess it (`trainer prepare` fills
/// a cache with this same function).
pub fn preprocess_file(root: &Path, item: &Item, size: usize) -> anyhow::Result<Vec<f32>> {
    let bytes = std::fs::read(root.join(&item.file)).map_err(|e| anyhow!("{e}"))?;
    preprocess(&bytes, size)
        .map(|p| p.pixels)
        .map_err(|e| anyhow!("{e}"))
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        while self.next < self.batches {
            let rx = &self.receivers[self.next % self.receivers.len()];
            self.next += 1;
            match rx.recv() {
                Ok(batch) if !batch.is_empty() => return Some(batch),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.receivers.clear(); // Unblocks workers waiting to send.
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, ImageBuffer, ImageFormat, Luma};

    fn folder(n: usize) -> (PathBuf, Vec<Item>) {
        let dir = std::env::temp_dir().join(format!("cxr-loader-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut items = Vec::new();
        for i in 0..n {
            let img = DynamicImage::ImageLuma8(ImageBuffer::from_fn(20, 20, |x, y| {
                Luma([((x + y) * (i as u32 + 1)) as u8])
            }));
            let file = format!("{i}.png");
            img.save_with_format(dir.join(&file), ImageFormat::Png)
                .unwrap();
            items.push(Item {
                file,
                label: (i % 2) as u8,
                patient: None,
            });
        }
        std::fs::write(dir.join("bad.png"), b"broken").unwrap();
        items.insert(
            3,
            Item {
                file: "bad.png".into(),
                label: 1,
                patient: None,
            },
        );
        (dir, items)
    }

    #[test]
    fn yields_every_readable_image_once_in_order_and_reports_failures() {
        let (dir, items) = folder(10);
        let cfg = LoaderConfig {
            batch_size: 4,
            workers: 3,
            prefetch: 1,
            size: 8,
        };
        let failures: Failures = Default::default();
        let batches: Vec<Batch> =
            Loader::start(dir.clone(), items.clone(), &cfg, None, 1, failures.clone()).collect();
        let files: Vec<String> = batches.iter().flat_map(|b| b.files.clone()).collect();
        let expected: Vec<String> = items
            .iter()
            .map(|i| i.file.clone())
            .filter(|f| f != "bad.png")
            .collect();
        assert_eq!(files, expected);
        assert!(batches.iter().all(|b| b.pixels.len() == b.len() * 64));
        assert_eq!(failures.lock().unwrap().len(), 1);
        // Same seed, same augmented pixels.
        let aug = Some(AugmentConfig::with_strength(1.0, 1.0));
        let a: Vec<f32> = Loader::start(
            dir.clone(),
            items.clone(),
            &cfg,
            aug.clone(),
            5,
            Default::default(),
        )
        .flat_map(|b| b.pixels)
        .collect();
        let b: Vec<f32> =
            Loader::start(dir.clone(), items.clone(), &cfg, aug, 5, Default::default())
                .flat_map(|b| b.pixels)
                .collect();
        assert_eq!(a, b);
        // Dropping a loader early does not hang.
        let mut early = Loader::start(dir.clone(), items, &cfg, None, 1, Default::default());
        early.next();
        drop(early);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
