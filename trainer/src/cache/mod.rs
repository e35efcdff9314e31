//! The preprocessed cache: `trainer prepare` runs the shared preprocessing (decode, min-max,
//! resize) once and stores every image at the model's input size; `train`, `evaluate`, `cv` and
//! `calibrate` take the cache folder wherever they take a data folder, and augmentation stays on
//! the fly (it works on the preprocessed image either way).
//!
//! The format is in [`format`]; precision per storage type in [`slots`]; writing, resuming and
//! the disk check in [`prepare`]. A folder is a cache when it holds [`format::INDEX_FILE`].
//!
//! Reading uses positional reads (`pread`) of one slot at a time rather than a memory map: the
//! loader copies each image into its own buffer anyway (augmentation works in place), so a map
//! would save nothing, while a mapped file that is truncated under the reader (another program,
//! a damaged disk) raises SIGBUS and kills the process instead of giving an error, and every
//! page a map touches counts as the trainer's resident memory. The kernel's page cache serves
//! repeated epochs either way.

pub mod bench;
mod disk;
mod format;
mod prepare;
mod slots;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::data::{DataError, Dataset, Item};
pub use format::{DATA_FILE, FormatError, HEADER_LEN, INDEX_FILE, Index};
pub use prepare::PrepareArgs;

/// Everything that can go wrong reading a cache (or resuming one), with the file concerned.
#[derive(Debug, Error)]
pub enum CacheError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {error}")]
    Format { path: PathBuf, error: FormatError },
    #[error(
        "cache {dir} is unfinished ({done} of {count} images): run the same `trainer prepare` command again to finish it"
    )]
    Incomplete {
        dir: PathBuf,
        done: u64,
        count: usize,
    },
    #[error(
        "cache {dir} was made by another version of the preprocessing (fingerprint {found}, this trainer's is {expected}): make it again with `trainer prepare`"
    )]
    Preprocessing {
        dir: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "cache {dir} holds {cached}x{cached} images; this needs {wanted}x{wanted}: make a cache with `trainer prepare --input-size {wanted}`, or give the raw data folder"
    )]
    InputSize {
        dir: PathBuf,
        cached: usize,
        wanted: usize,
    },
    #[error("`{file}` is not in cache {dir}")]
    NotCached { dir: PathBuf, file: String },
    /// The image failed to decode when the cache was made: the reason recorded then.
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Refused(String),
}

/// Whether `dir` is a cache folder (it holds the index file).
pub fn is_cache(dir: &Path) -> bool {
    dir.join(INDEX_FILE).is_file()
}

/// Read and validate `DIR/cache.json`.
pub fn read_index(dir: &Path) -> Result<Index, CacheError> {
    let path = dir.join(INDEX_FILE);
    let bytes = std::fs::read(&path).map_err(|error| CacheError::Io {
        path: path.clone(),
        error,
    })?;
    format::parse_index(&bytes).map_err(|error| CacheError::Format { path, error })
}

/// Open the data file of `index` and check its header and length.
fn open_data(dir: &Path, index: &Index) -> Result<File, CacheError> {
    let path = dir.join(DATA_FILE);
    let io = |error| CacheError::Io {
        path: path.clone(),
        error,
    };
    let mut file = File::open(&path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut head = Vec::with_capacity(HEADER_LEN);
    (&mut file)
        .take(HEADER_LEN as u64)
        .read_to_end(&mut head)
        .map_err(io)?;
    let format = |error| CacheError::Format {
        path: path.clone(),
        error,
    };
    let header = format::Header::parse(&head).map_err(format)?;
    index.check_data(&header, len).map_err(format)?;
    Ok(file)
}

/// A finished cache, open for reading slots (shared by the loader's threads).
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    index: Index,
    data: File,
    slots: HashMap<String, usize>,
}

impl Cache {
    /// Open a finished cache: index valid, data file matching it, made by this preprocessing.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        let index = read_index(dir)?;
        if !index.complete {
            return Err(CacheError::Incomplete {
                dir: dir.to_path_buf(),
                done: index.done_count(),
                count: index.items.len(),
            });
        }
        check_fingerprint(dir, &index)?;
        let data = open_data(dir, &index)?;
        let slots = (index.items.iter().enumerate())
            .map(|(i, e)| (e.file.clone(), i))
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            index,
            data,
            slots,
        })
    }

    /// The preprocessed `size x size` image of `file`, as the direct path would compute it
    /// (exactly for f32 storage; see [`slots`] for the others).
    pub fn read(&self, file: &str, size: usize) -> Result<Vec<f32>, CacheError> {
        if size != self.index.input_size {
            return Err(self.size_error(size));
        }
        let &slot = self.slots.get(file).ok_or_else(|| CacheError::NotCached {
            dir: self.dir.clone(),
            file: file.to_string(),
        })?;
        if let Some(reason) = &self.index.items[slot].error {
            return Err(CacheError::Failed(reason.clone()));
        }
        let slot_bytes = self.index.slot_bytes();
        let mut bytes = vec![0u8; slot_bytes as usize];
        read_at(
            &self.data,
            &mut bytes,
            HEADER_LEN as u64 + slot as u64 * slot_bytes,
        )
        .map_err(|error| CacheError::Io {
            path: self.dir.join(DATA_FILE),
            error,
        })?;
        Ok(slots::decode(&bytes, self.index.storage))
    }

    fn size_error(&self, wanted: usize) -> CacheError {
        CacheError::InputSize {
            dir: self.dir.clone(),
            cached: self.index.input_size,
            wanted,
        }
    }
}

fn check_fingerprint(dir: &Path, index: &Index) -> Result<(), CacheError> {
    let expected = fingerprint(index.input_size);
    if index.preprocessing != expected {
        return Err(CacheError::Preprocessing {
            dir: dir.to_path_buf(),
            found: index.preprocessing.clone(),
            expected,
        });
    }
    Ok(())
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(file, buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// A fingerprint of the shared preprocessing at `size`: the SHA-256 (first 16 hex digits) of
/// the preprocessed pixels of a fixed synthetic test card (gradients and a checkerboard, larger
/// than `size` and not square, so downsampling in both axes and the stretch are exercised),
/// encoded as PNG. A change to min-max, the resize or the PNG path changes it, and a cache made
/// before the change is then refused instead of silently differing from the direct path.
pub fn fingerprint(size: usize) -> String {
    use sha2::Digest;
    let (w, h) = (
        (2 * size + 5).min(2053) as u32,
        (2 * size + 3).min(2051) as u32,
    );
    let card = image::GrayImage::from_fn(w, h, |x, y| {
        let checker = if (x / 7 + y / 5) % 2 == 0 { 0 } else { 0x55 };
        image::Luma([((x * 7 + y * 3) % 256) as u8 ^ checker])
    });
    let mut png = std::io::Cursor::new(Vec::new());
    if card.write_to(&mut png, image::ImageFormat::Png).is_err() {
        return "unavailable".into();
    }
    match cxr::preprocess::preprocess(png.get_ref(), size) {
        Ok(p) => {
            let mut hash = sha2::Sha256::new();
            p.pixels.iter().for_each(|v| hash.update(v.to_le_bytes()));
            hash.finalize()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        }
        Err(e) => format!("unavailable: {e}"),
    }
}

/// The data set of a finished cache: every item the data folder scan found (a failed decode
/// stays an item, failing in the loader with its recorded reason, exactly as on the direct
/// path, so a split or a fold assignment is the same from the cache as from the folder).
pub fn discover(dir: &Path) -> Result<Dataset, DataError> {
    let cache = Cache::open(dir)?;
    let index = cache.index;
    Ok(Dataset {
        root: dir.to_path_buf(),
        items: (index.items.into_iter())
            .map(|e| Item {
                file: e.file,
                label: e.label,
                patient: e.patient,
            })
            .collect(),
        skipped: (index.skipped.into_iter())
            .map(|s| (s.file, s.reason))
            .collect(),
        layout: "preprocessed cache (trainer prepare)",
    })
}

/// Where `data` is a cache, check that it holds `size x size` images (up front, rather than
/// every image failing in the loader). Raw data folders pass.
pub fn check_input_size(data: &Path, size: usize) -> Result<(), CacheError> {
    if !is_cache(data) {
        return Ok(());
    }
    let index = read_index(data)?;
    if index.input_size != size {
        return Err(CacheError::InputSize {
            dir: data.to_path_buf(),
            cached: index.input_size,
            wanted: size,
        });
    }
    Ok(())
}

/// Refuse a cache where a command needs the raw images (`what` names the command).
pub fn require_raw(data: &Path, what: &str) -> Result<(), CacheError> {
    if !is_cache(data) {
        return Ok(());
    }
    let source = read_index(data).map(|i| i.source).unwrap_or_default();
    Err(CacheError::Refused(format!(
        "{what} reads the raw images, and {} is a preprocessed cache; give it the data folder{}",
        data.display(),
        if source.is_empty() {
            String::new()
        } else {
            format!(" (this cache was made from {source})")
        }
    )))
}
