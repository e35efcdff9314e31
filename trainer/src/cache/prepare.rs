//! `trainer prepare`: fill a cache folder, in parallel, resumably.
//!
//! - **Up front**: the data folder is scanned as `train` scans it; a new cache's whole data file
//!   is reserved (`fallocate`) after checking the free space, so a full disk is refused before
//!   any work, and cannot fill up half-way.
//! - **In parallel**: worker threads take chunks of [`CHUNK`] consecutive slots, decode and
//!   preprocess each image with the loader's own function ([`crate::loader::preprocess_file`]),
//!   and write it into its slot in place (`pwrite`); a progress bar counts images.
//! - **Resumable**: every few seconds the data file is synced and only then the finished chunks
//!   are recorded in `cache.json` (temporary file, synced, renamed), so the index never claims a
//!   slot whose pixels could be lost. After a crash, the same command redoes only the chunks not
//!   recorded. A different input size, storage, preprocessing or data folder is refused with a
//!   message rather than mixed in.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use super::disk::{check_space, reserve, write_at};
use super::format::{self, Entry, Index, Skipped, Storage};
use super::{CacheError, DATA_FILE, HEADER_LEN, INDEX_FILE, is_cache, read_index, slots};
use crate::data::{self, Dataset, Item};

/// Slots a worker takes at a time (and the unit of recorded progress).
const CHUNK: u64 = 64;

/// `trainer prepare`.
#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// Data folder: effusion/ + nofinding/, or NIH Data_Entry_2017.csv with its images.
    #[arg(long)]
    pub data: PathBuf,
    /// Cache folder to write; an unfinished cache there is resumed.
    #[arg(long)]
    pub out: PathBuf,
    /// Side of the square model input to store (the runs' --input-size).
    #[arg(long, default_value_t = 256)]
    pub input_size: usize,
    /// f32: exact (4 bytes a value); f16: error at most 2.4e-4, half the size; u8: error at
    /// most 2.0e-3, a quarter.
    #[arg(long, default_value = "f32")]
    pub storage: Storage,
    /// Decoding threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Least milliseconds between two recordings of progress (tests shorten it).
    #[arg(long, default_value_t = 5000, hide = true)]
    pub checkpoint_ms: u64,
}

/// Test hook: with `CXR_TEST_SLOW_PREPARE_MS` set, each worker pauses that long after each
/// image, so the crash test can kill `prepare` half-way.
const SLOW_ENV: &str = "CXR_TEST_SLOW_PREPARE_MS";

impl PrepareArgs {
    pub fn run(self) -> Result<()> {
        let settings = Settings {
            input_size: self.input_size,
            storage: self.storage,
            workers: self
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            quiet: self.quiet,
            checkpoint_every: Duration::from_millis(self.checkpoint_ms),
            stop_after: None,
            pause: std::env::var(SLOW_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(Duration::ZERO, Duration::from_millis),
        };
        println!("{}", prepare(&self.data, &self.out, &settings)?);
        Ok(())
    }
}

/// How `prepare` runs.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub input_size: usize,
    pub storage: Storage,
    pub workers: usize,
    pub quiet: bool,
    /// Least time between two recordings of progress.
    pub checkpoint_every: Duration,
    /// Test hook: stop as a crash would (no final recording) after this many chunks.
    pub stop_after: Option<usize>,
    /// Test hook: a pause after each image.
    pub pause: Duration,
}

/// Make or finish the cache of `data` in `out`. Returns a summary line.
pub(super) fn prepare(data: &Path, out: &Path, s: &Settings) -> Result<String> {
    if is_cache(data) {
        bail!(
            "{} is already a preprocessed cache; give `prepare` the raw data folder",
            data.display()
        );
    }
    if !(1..=format::MAX_INPUT_SIZE).contains(&s.input_size) {
        bail!(
            "--input-size must be 1 to {}, got {}",
            format::MAX_INPUT_SIZE,
            s.input_size
        );
    }
    let started = Instant::now();
    let dataset = data::discover(data)?;
    let mut index = start_or_resume(out, &dataset, s)?;
    if index.complete {
        return Ok(format!(
            "cache {} is already complete ({} images); nothing to do",
            out.display(),
            index.items.len()
        ));
    }
    let file = open_data_for_writing(out, &index)?;
    let todo: Vec<[u64; 2]> = chunks(index.items.len() as u64)
        .filter(|&r| !format::is_done(&index.done, r))
        .collect();
    for &[a, b] in &todo {
        (a..b).for_each(|i| index.items[i as usize].error = None);
    }
    let items: Vec<Item> = (index.items.iter())
        .map(|e| Item {
            file: e.file.clone(),
            label: e.label,
            patient: e.patient.clone(),
        })
        .collect();
    let work = Work {
        root: &dataset.root,
        out,
        file: &file,
        items: &items,
        todo: &todo,
    };
    fill(&work, &mut index, s)?;
    index.complete = true;
    write_index(out, &index)?;
    Ok(summary(out, &index, started.elapsed()))
}

fn summary(out: &Path, index: &Index, took: Duration) -> String {
    let failed: Vec<&Entry> = index.items.iter().filter(|e| e.error.is_some()).collect();
    for e in failed.iter().take(10) {
        eprintln!("  failed {}: {}", e.file, e.error.as_deref().unwrap_or(""));
    }
    format!(
        "cache {}: {} images at {}x{} ({}, largest error {:.1e}), {} failed to decode, {} skipped by the scan; {:.1} MB; {:.1} s",
        out.display(),
        index.items.len(),
        index.input_size,
        index.input_size,
        index.storage,
        slots::error_bound(index.storage),
        failed.len(),
        index.skipped.len(),
        index.data_len() as f64 / 1e6,
        took.as_secs_f64()
    )
}

/// `[start, end)` slot ranges of [`CHUNK`] slots (the last one shorter).
fn chunks(count: u64) -> impl Iterator<Item = [u64; 2]> {
    (0..count.div_ceil(CHUNK)).map(move |c| [c * CHUNK, ((c + 1) * CHUNK).min(count)])
}

/// A new index for `dataset` (written), or the unfinished one in `out` when it was started with
/// the same settings on the same data.
fn start_or_resume(out: &Path, dataset: &Dataset, s: &Settings) -> Result<Index> {
    let fingerprint = super::fingerprint(s.input_size);
    if is_cache(out) {
        let index = read_index(out).with_context(|| {
            format!(
                "cannot resume the cache in {}; delete the folder to start again",
                out.display()
            )
        })?;
        check_resumable(out, &index, dataset, s, &fingerprint)?;
        return Ok(index);
    }
    if fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "{} is not empty and holds no {INDEX_FILE}: choose an empty or new folder for the cache",
            out.display()
        );
    }
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let index = Index {
        format: format::FORMAT.into(),
        version: format::VERSION,
        id: format!("{:016x}", new_id(out)),
        input_size: s.input_size,
        storage: s.storage,
        preprocessing: fingerprint,
        source: dataset.root.display().to_string(),
        layout: dataset.layout.to_string(),
        complete: false,
        done: Vec::new(),
        items: (dataset.items.iter())
            .map(|i| Entry {
                file: i.file.clone(),
                label: i.label,
                patient: i.patient.clone(),
                error: None,
            })
            .collect(),
        skipped: (dataset.skipped.iter())
            .map(|(file, reason)| Skipped {
                file: file.clone(),
                reason: reason.clone(),
            })
            .collect(),
    };
    check_space(out, &index, None)?;
    write_index(out, &index)?;
    Ok(index)
}

/// Refuse to resume with other settings, another preprocessing or other data.
fn check_resumable(
    out: &Path,
    index: &Index,
    dataset: &Dataset,
    s: &Settings,
    fingerprint: &str,
) -> Result<(), CacheError> {
    let refuse = |why: String| {
        Err(CacheError::Refused(format!(
            "{} holds a cache {why}; use another --out, or delete it to start again",
            out.display()
        )))
    };
    if (index.input_size, index.storage) != (s.input_size, s.storage) {
        return refuse(format!(
            "of {}x{} {} images, not {}x{} {}",
            index.input_size,
            index.input_size,
            index.storage,
            s.input_size,
            s.input_size,
            s.storage
        ));
    }
    if index.preprocessing != fingerprint {
        return refuse("made by another version of the preprocessing".into());
    }
    let same =
        |e: &Entry, i: &Item| e.file == i.file && e.label == i.label && e.patient == i.patient;
    if index.items.len() != dataset.items.len()
        || !index
            .items
            .iter()
            .zip(&dataset.items)
            .all(|(e, i)| same(e, i))
    {
        return refuse(format!(
            "of other data: {} images when it was started, {} in {} now",
            index.items.len(),
            dataset.items.len(),
            dataset.root.display()
        ));
    }
    Ok(())
}

/// A fresh id for a new cache (clock, process and folder; only needs to differ between caches).
fn new_id(out: &Path) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(out.as_os_str().as_encoded_bytes());
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

pub(super) fn write_index(out: &Path, index: &Index) -> Result<()> {
    let bytes = serde_json::to_vec(index)?;
    crate::run_dir::write_atomic(&out.join(INDEX_FILE), &bytes)
}

/// The data file: checked against the index once slots are recorded in it; else (new, or a
/// crash before the first recording) created afresh with its header and reserved in full.
fn open_data_for_writing(out: &Path, index: &Index) -> Result<File> {
    let path = out.join(DATA_FILE);
    if !index.done.is_empty() {
        super::open_data(out, index)?;
        return OpenOptions::new()
            .write(true)
            .open(&path)
            .with_context(|| path.display().to_string());
    }
    check_space(out, index, fs::metadata(&path).map(|m| m.len()).ok())?;
    let io = |e: std::io::Error| anyhow::anyhow!("{}: {e}", path.display());
    let file = File::create(&path).map_err(io)?;
    reserve(&file, index.data_len()).map_err(io)?;
    write_at(&file, &index.header().encode(), 0).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(file)
}

/// What the workers share.
struct Work<'a> {
    root: &'a Path,
    out: &'a Path,
    file: &'a File,
    items: &'a [Item],
    todo: &'a [[u64; 2]],
}

/// A finished chunk and its failed images (slot, reason), or a write error.
type ChunkDone = Result<([u64; 2], Vec<(usize, String)>), String>;

/// Run the workers over `work.todo`, recording progress in `index` as chunks finish.
fn fill(work: &Work, index: &mut Index, s: &Settings) -> Result<()> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<ChunkDone>();
    let pb = crate::validation::bar(index.items.len(), "preparing".into(), s.quiet);
    pb.set_position(index.done_count());
    let params = (s.input_size, s.storage, s.pause);
    let result = std::thread::scope(|scope| {
        for _ in 0..s.workers.max(1) {
            let tx = tx.clone();
            let (next, stop) = (&next, &stop);
            scope.spawn(move || worker(work, params, next, stop, &tx));
        }
        drop(tx);
        let result = record(work, index, s, &rx, &pb);
        stop.store(true, Ordering::Relaxed);
        result
    });
    pb.finish_and_clear();
    result
}

/// The main thread's part of [`fill`]: count, record every `checkpoint_every`, and at the end.
fn record(
    work: &Work,
    index: &mut Index,
    s: &Settings,
    rx: &mpsc::Receiver<ChunkDone>,
    pb: &indicatif::ProgressBar,
) -> Result<()> {
    let (mut finished, mut received) = (Vec::new(), 0);
    let mut last = Instant::now();
    for message in rx {
        let (range, failed) = message.map_err(anyhow::Error::msg)?;
        for (slot, reason) in failed {
            index.items[slot].error = Some(reason);
        }
        finished.push(range);
        pb.inc(range[1] - range[0]);
        received += 1;
        if last.elapsed() >= s.checkpoint_every {
            checkpoint(work, index, &mut finished)?;
            last = Instant::now();
        }
        if s.stop_after.is_some_and(|n| received >= n) {
            bail!("stopped after {received} chunks (test hook)");
        }
    }
    checkpoint(work, index, &mut finished)?;
    let (done, count) = (index.done_count(), index.items.len() as u64);
    if done != count {
        bail!("only {done} of {count} images were prepared; run the same command again");
    }
    Ok(())
}

/// Sync the pixels, then record the chunks finished before the sync.
fn checkpoint(work: &Work, index: &mut Index, finished: &mut Vec<[u64; 2]>) -> Result<()> {
    work.file
        .sync_data()
        .with_context(|| work.out.join(DATA_FILE).display().to_string())?;
    for range in finished.drain(..) {
        format::add_range(&mut index.done, range);
    }
    write_index(work.out, index)
}

/// Take chunks until none is left (or the main thread stops): preprocess, store, report.
fn worker(
    work: &Work,
    (size, storage, pause): (usize, Storage, Duration),
    next: &AtomicUsize,
    stop: &AtomicBool,
    tx: &mpsc::Sender<ChunkDone>,
) {
    let slot_bytes = size * size * storage.bytes_per_value();
    let mut bytes = vec![0u8; slot_bytes];
    while !stop.load(Ordering::Relaxed) {
        let Some(&[a, b]) = work.todo.get(next.fetch_add(1, Ordering::Relaxed)) else {
            return;
        };
        let mut failed = Vec::new();
        for slot in a as usize..b as usize {
            match crate::loader::preprocess_file(work.root, &work.items[slot], size) {
                Ok(pixels) => slots::encode(&pixels, storage, &mut bytes),
                Err(e) => {
                    failed.push((slot, format!("{e:#}")));
                    bytes.fill(0);
                }
            }
            std::thread::sleep(pause);
            let offset = HEADER_LEN as u64 + slot as u64 * slot_bytes as u64;
            if let Err(e) = write_at(work.file, &bytes, offset) {
                let path = work.out.join(DATA_FILE);
                let _ = tx.send(Err(format!("writing {}: {e}", path.display())));
                return;
            }
        }
        if tx.send(Ok(([a, b], failed))).is_err() {
            return;
        }
    }
}
