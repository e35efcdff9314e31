//! Writing to disk safely: atomic replacement of a file, and the free-space rule.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Test hook: with `CXR_TEST_SLOW_WRITE_MS` set, [`write_atomic`] writes in 64 KiB pieces with
/// that pause between them, so the crash test can kill the trainer in the middle of a write.
const SLOW_WRITE_ENV: &str = "CXR_TEST_SLOW_WRITE_MS";

/// Write a file atomically: temporary name, synced, then renamed over the old one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        match std::env::var(SLOW_WRITE_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            Some(ms) => {
                for piece in bytes.chunks(64 * 1024) {
                    f.write_all(piece)?;
                    f.flush()?;
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
            }
            None => f.write_all(bytes)?,
        }
        f.sync_all()
    };
    write().with_context(|| tmp.display().to_string())?;
    fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
    // Make the rename itself durable (best effort: not every file system syncs folders).
    if let Some(dir) = path.parent() {
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Bytes a run of a model with `params` parameters needs in its folder at the worst moment:
/// f32 weights and two AdamW moments for two epochs (the committed one and the one being
/// written), plus the f16 best checkpoint and its temporary copy, plus 16 MiB of reports.
pub fn space_needed(params: usize) -> u64 {
    let params = params as u64;
    2 * (params * 4 * 3) + 2 * (params * 2) + (16 << 20)
}

/// The problem, if any, of having `available` bytes free for a run that needs `needed`.
pub fn space_problem(out: &Path, available: u64, needed: u64) -> Option<String> {
    (available < needed).then(|| {
        format!(
            "the disk of run folder {} has {:.1} MB free; this model's checkpoints need about {:.1} MB. Free some space or choose another --out",
            out.display(),
            available as f64 / 1e6,
            needed as f64 / 1e6
        )
    })
}

/// Free bytes on the file system that holds `path` (`None` where it cannot be told).
#[cfg(unix)]
pub fn available_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `stat` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut stat) };
    (rc == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

#[cfg(not(unix))]
pub fn available_space(_path: &Path) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn free_space_rule_counts_two_epochs_of_checkpoints() {
        let full_width = space_needed(11_180_866);
        assert!(
            (290_000_000..330_000_000).contains(&full_width),
            "{full_width}"
        );
        let out = Path::new("/runs/x");
        assert!(
            space_problem(out, full_width - 1, full_width)
                .unwrap()
                .contains("MB free")
        );
        assert_eq!(space_problem(out, full_width, full_width), None);
    }
}
