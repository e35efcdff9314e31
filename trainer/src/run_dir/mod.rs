//! The run folder: the one place that names its files and reads and writes them.
//!
//! A run folder holds: `options.json`, `split.json`, `metrics.csv`, `best.cxrw` (the checkpoint
//! with the best validation AUC, with its metrics in the model card), `best.json`, `roc.svg`,
//! `curves.svg`, `report.json`, `finetune.json` (`train --pretrained`), and the resume state:
//! `epoch-N.bpk` (f32 weights) and `epoch-N.optim` for the last finished epoch N, and
//! `state.json`, which names N.
//!
//! Crash safety (tested by killing the trainer with SIGKILL, also in the middle of a write):
//! every file is written to a temporary name, synced and renamed, so each file is either its old
//! or its new complete version. An epoch's checkpoint files are written first under new names;
//! renaming `state.json` into place is the commit that makes them the resume point; the older
//! epoch's files are removed only after that. On `--resume`, rows of `metrics.csv` past the
//! committed epoch and stray temporary files are dropped.

mod disk;
mod files;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use disk::{available_space, write_atomic};
pub use files::{
    BestEpoch, EpochSummary, MetricsRow, RunReport, RunState, TeacherLogits, read_teacher,
    write_teacher,
};

use crate::data::{Dataset, Split};
use crate::options::TrainOptions;
use files::METRICS_HEADER;

const OPTIONS: &str = "options.json";
const SPLIT: &str = "split.json";
const STATE: &str = "state.json";
const METRICS: &str = "metrics.csv";
const BEST_CHECKPOINT: &str = "best.cxrw";
const BEST: &str = "best.json";
const ROC: &str = "roc.svg";
const CURVES: &str = "curves.svg";
const REPORT: &str = "report.json";
const FINETUNE: &str = "finetune.json";

/// A run folder. Creating the value touches nothing; [`RunDir::create`] checks it can be
/// written.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// An existing run folder (or one to be read).
    pub fn open(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// A run folder to write into: created if needed and checked that it can be written, so a
    /// typo, a read-only place or a full disk is reported now rather than after the first epoch.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self> {
        let dir = Self::open(root);
        let out = &dir.root;
        fs::create_dir_all(out)
            .with_context(|| format!("cannot create run folder {}", out.display()))?;
        let probe = out.join(".write-test");
        let result = fs::write(&probe, vec![0u8; 1 << 20]);
        let _ = fs::remove_file(&probe);
        result.with_context(|| format!("cannot write to run folder {}", out.display()))?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let path = self.file(name);
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "{} (is {} a run folder?)",
                path.display(),
                self.root.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))
    }

    /// [`Self::read_json`] for a file the run may not have yet.
    fn read_json_if_any<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        if self.file(name).is_file() {
            self.read_json(name).map(Some)
        } else {
            Ok(None)
        }
    }

    fn write_json<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<()> {
        write_atomic(&self.file(name), &serde_json::to_vec_pretty(value)?)
    }

    /// The best checkpoint's path (`best.cxrw`), for messages and for `evaluate --weights`.
    pub fn best_checkpoint_path(&self) -> PathBuf {
        self.file(BEST_CHECKPOINT)
    }

    pub fn split_path(&self) -> PathBuf {
        self.file(SPLIT)
    }

    pub fn report_path(&self) -> PathBuf {
        self.file(REPORT)
    }

    /// Whether the folder already holds a (started) run.
    pub fn has_run(&self) -> bool {
        self.file(STATE).exists()
    }

    pub fn read_options(&self) -> Result<TrainOptions> {
        self.read_json(OPTIONS)
    }

    pub fn write_options(&self, opts: &TrainOptions) -> Result<()> {
        self.write_json(OPTIONS, opts)
    }

    /// The saved split, if the run has one.
    pub fn read_split_if_any(&self) -> Result<Option<Split>> {
        self.read_json_if_any(SPLIT)
    }

    pub fn read_split(&self) -> Result<Split> {
        self.read_json(SPLIT)
    }

    pub fn write_split(&self, split: &Split) -> Result<()> {
        self.write_json(SPLIT, split)
    }

    /// The run's split: the saved one, or a new one of `data` (with its groups, after the
    /// prevalence), saved.
    pub fn prepare_split(&self, opts: &TrainOptions, data: &Dataset) -> Result<Split> {
        if let Some(split) = self.read_split_if_any()? {
            return Ok(split);
        }
        let items = crate::groups::prepared_items(data, opts)?;
        let split = crate::data::split(&items, opts.valid_fraction, opts.seed)?;
        self.write_split(&split)?;
        Ok(split)
    }

    /// The run's training options and split, as `train` saved them.
    pub fn read_run(&self) -> Result<(TrainOptions, Split)> {
        Ok((self.read_options()?, self.read_split()?))
    }

    /// The committed state, if any.
    pub fn read_state(&self) -> Result<Option<RunState>> {
        if self.file(STATE).is_file() {
            self.read_json(STATE).map(Some)
        } else {
            Ok(None)
        }
    }

    fn checkpoint_paths(&self, epoch: usize) -> (PathBuf, PathBuf) {
        (
            self.file(&format!("epoch-{epoch}.bpk")),
            self.file(&format!("epoch-{epoch}.optim")),
        )
    }

    /// The f32 weights of the committed `epoch`.
    pub fn read_weights(&self, epoch: usize) -> Result<burn::store::ModuleRecord> {
        let (path, _) = self.checkpoint_paths(epoch);
        burn::store::ModuleRecord::load(&path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| path.display().to_string())
    }

    /// Where the optimizer state of `epoch` is kept (burn's optimizer loads it from a path).
    pub fn optimizer_path(&self, epoch: usize) -> PathBuf {
        self.checkpoint_paths(epoch).1
    }

    /// Commit an epoch: its weights and optimizer under new names, then the state file that
    /// names them (the commit), then the previous epoch's files go.
    pub fn commit_epoch(
        &self,
        state: &RunState,
        previous: usize,
        weights: &[u8],
        optimizer: &[u8],
    ) -> Result<()> {
        let (weights_path, optim_path) = self.checkpoint_paths(state.epoch);
        write_atomic(&weights_path, weights)?;
        write_atomic(&optim_path, optimizer)?;
        self.write_json(STATE, state)?;
        if previous > 0 && previous != state.epoch {
            let (old_weights, old_optim) = self.checkpoint_paths(previous);
            let _ = fs::remove_file(old_weights);
            let _ = fs::remove_file(old_optim);
        }
        Ok(())
    }

    /// Bring the folder back to its last committed epoch: drop temporary files and checkpoints
    /// of other epochs (a write the crash cut short) and `metrics.csv` rows past `epoch`.
    pub fn recover(&self, epoch: usize) -> Result<()> {
        let keep = self.checkpoint_paths(epoch);
        let entries = fs::read_dir(&self.root).with_context(|| self.root.display().to_string())?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let stray_checkpoint = name.starts_with("epoch-") && path != keep.0 && path != keep.1;
            if name.ends_with(".tmp") || stray_checkpoint {
                fs::remove_file(&path).with_context(|| path.display().to_string())?;
            }
        }
        let metrics = self.file(METRICS);
        if let Ok(text) = fs::read(&metrics) {
            let mut reader = csv::ReaderBuilder::new()
                .flexible(true)
                .from_reader(text.as_slice());
            let mut writer = csv::Writer::from_writer(Vec::new());
            writer.write_record(METRICS_HEADER)?;
            for record in reader.records().flatten() {
                let row_epoch = record.get(0).and_then(|e| e.parse::<usize>().ok());
                if row_epoch.is_some_and(|e| e <= epoch) {
                    writer.write_record(&record)?;
                }
            }
            write_atomic(&metrics, &writer.into_inner()?)?;
        }
        Ok(())
    }

    /// A fresh `metrics.csv` with its header only.
    pub fn start_metrics(&self) -> Result<()> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(METRICS_HEADER)?;
        let path = self.file(METRICS);
        fs::write(&path, writer.into_inner()?).with_context(|| path.display().to_string())
    }

    /// Append one epoch's row to `metrics.csv`.
    pub fn append_metrics(&self, row: &MetricsRow) -> Result<()> {
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::new());
        writer.serialize(row)?;
        let line = writer.into_inner()?;
        let path = self.file(METRICS);
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&line))
            .with_context(|| path.display().to_string())
    }

    /// Every row of `metrics.csv` (none when it is missing; damaged rows are skipped).
    pub fn read_metrics(&self) -> Vec<MetricsRow> {
        let Ok(mut reader) = csv::Reader::from_path(self.file(METRICS)) else {
            return Vec::new();
        };
        reader.deserialize().flatten().collect()
    }

    /// The best epoch's files: the weight file with its card, the ROC picture and `best.json`.
    pub fn write_best(&self, checkpoint: &[u8], roc_svg: &str, best: &BestEpoch) -> Result<()> {
        write_atomic(&self.file(BEST_CHECKPOINT), checkpoint)?;
        write_atomic(&self.file(ROC), roc_svg.as_bytes())?;
        self.write_json(BEST, best)
    }

    /// The best epoch's report (`best.json`), if there is one yet.
    pub fn read_best(&self) -> Result<Option<BestEpoch>> {
        self.read_json_if_any(BEST)
    }

    /// The bytes of `best.cxrw`.
    pub fn read_best_checkpoint(&self) -> Result<Vec<u8>> {
        let path = self.file(BEST_CHECKPOINT);
        fs::read(&path)
            .with_context(|| format!("{} (has the run finished an epoch?)", path.display()))
    }

    /// `report.json` (its checkpoint and picture names filled in here) and `curves.svg`.
    pub fn write_report(&self, report: &mut RunReport, curves_svg: &str) -> Result<()> {
        report.checkpoint = BEST_CHECKPOINT;
        report.pictures = [ROC, CURVES];
        self.write_json(REPORT, report)?;
        write_atomic(&self.file(CURVES), curves_svg.as_bytes())
    }

    pub fn write_finetune_report(&self, report: &serde_json::Value) -> Result<()> {
        self.write_json(FINETUNE, report)
    }

    /// Use `other`'s split for this run (`compare`: every variant on the baseline's split).
    pub fn copy_split_from(&self, other: &RunDir) -> Result<()> {
        fs::create_dir_all(&self.root).with_context(|| self.root.display().to_string())?;
        let from = other.file(SPLIT);
        fs::copy(&from, self.file(SPLIT)).with_context(|| format!("copying {}", from.display()))?;
        Ok(())
    }

    /// Refuse to start when the folder's disk cannot hold this model's checkpoints.
    pub fn check_space(&self, params: usize) -> Result<()> {
        let needed = disk::space_needed(params);
        match disk::available_space(&self.root)
            .and_then(|free| disk::space_problem(&self.root, free, needed))
        {
            Some(problem) => bail!(problem),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_drops_rows_and_files_past_the_committed_epoch() {
        let root = std::env::temp_dir().join(format!("cxr-run-dir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = RunDir::create(&root).unwrap();
        dir.start_metrics().unwrap();
        for epoch in 1..=3 {
            let row = MetricsRow {
                epoch,
                train_loss: 0.5,
                valid_loss: f64::NAN,
                valid_auc: 0.7,
                auc_lo: 0.6,
                auc_hi: 0.8,
                accuracy: 0.7,
                sensitivity: 0.7,
                specificity: 0.7,
                lr: 1e-3,
                seconds: 1.0,
            };
            dir.append_metrics(&row).unwrap();
        }
        fs::write(root.join("epoch-3.bpk"), "x").unwrap();
        fs::write(root.join("state.json.tmp"), "x").unwrap();
        dir.recover(2).unwrap();
        let rows = dir.read_metrics();
        assert_eq!(rows.iter().map(|r| r.epoch).collect::<Vec<_>>(), [1, 2]);
        assert!(rows[0].valid_loss.is_nan());
        assert!(!root.join("epoch-3.bpk").exists() && !root.join("state.json.tmp").exists());
        let _ = fs::remove_dir_all(&root);
    }
}
