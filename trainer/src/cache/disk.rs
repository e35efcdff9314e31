//! The disk side of `prepare`: the free-space rule, reserving the data file, positional writes.

use std::fs::File;
use std::path::Path;

use super::CacheError;
use super::format::Index;

/// The problem, if any, of `available` bytes for `needed`.
pub fn space_problem(out: &Path, available: u64, needed: u64, index: &Index) -> Option<String> {
    (available < needed).then(|| {
        format!(
            "the disk of {} has {:.2} GB free; this cache needs {:.2} GB ({} images of {}x{} {}). \
             Free some space, choose another --out, or store less per value (--storage f16: half, \
             u8: a quarter)",
            out.display(),
            available as f64 / 1e9,
            needed as f64 / 1e9,
            index.items.len(),
            index.input_size,
            index.input_size,
            index.storage
        )
    })
}

/// Refuse up front when the data file (unless `existing` already holds it) and two copies of the
/// index do not fit on the disk.
pub fn check_space(out: &Path, index: &Index, existing: Option<u64>) -> Result<(), CacheError> {
    let index_bytes = 2 * (200 + index.items.len() as u64 * 160);
    let needed = index.data_len().saturating_sub(existing.unwrap_or(0)) + index_bytes;
    match crate::run_dir::available_space(out)
        .and_then(|free| space_problem(out, free, needed, index))
    {
        Some(problem) => Err(CacheError::Refused(problem)),
        None => Ok(()),
    }
}

/// Allocate `len` bytes for `file` now, so a full disk fails here, not half-way.
#[cfg(target_os = "linux")]
pub fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `file` is an open, writable file descriptor; fallocate only changes its allocation.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        // File systems without fallocate: a sparse file (the free-space check stays).
        Some(libc::EOPNOTSUPP) => file.set_len(len),
        _ => Err(err),
    }
}

#[cfg(not(target_os = "linux"))]
pub fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    file.set_len(len)
}

#[cfg(unix)]
pub fn write_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
pub fn write_at(file: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_write(file, buf, offset)?;
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}
