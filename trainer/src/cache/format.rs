//! The on-disk format of a preprocessed cache, parsed and checked without any I/O.
//!
//! A cache folder holds two files:
//! - [`INDEX_FILE`] (`cache.json`): the header and index. Format name and version, the model
//!   input size, the storage type of the pixels, a random id shared with the data file, a
//!   fingerprint of the preprocessing that made it, the source folder and its layout, the
//!   progress of `trainer prepare` (`done`: ranges of finished slots, `complete`), every item
//!   (file relative to the data folder, label, patient ID, and `error` where its decode failed),
//!   and the files the data folder scan skipped (`skipped`: file and reason).
//! - [`DATA_FILE`] (`pixels.bin`): a 64-byte [`Header`], then one fixed-size slot per item:
//!   item `i` of the index is slot `i`, `input_size²` values row-major in the storage type,
//!   little-endian. A failed item's slot stays zero and is never read.
//!
//! JSON keeps the index readable and diffable; its size (about 100 bytes an item, 10 MB for
//! 100 000 images) is read once per loader start. Item `i` in slot `i` (no slot numbers stored)
//! leaves nothing to contradict. Every check that guards a read lives here, so the fuzz target
//! (`fuzz/fuzz_targets/cache_index.rs`, which compiles this file on its own) covers all of it:
//! this file needs only `serde`, `serde_json` and `thiserror`.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub const INDEX_FILE: &str = "cache.json";
pub const DATA_FILE: &str = "pixels.bin";
/// The `format` field of every index.
pub const FORMAT: &str = "cxr-preprocessed-cache";
pub const VERSION: u32 = 1;
/// Bytes before the first slot of the data file.
pub const HEADER_LEN: usize = 64;
const MAGIC: &[u8; 8] = b"CXRCACHE";
/// Largest model input side a cache may claim (guards the slot-size arithmetic).
pub const MAX_INPUT_SIZE: usize = 4096;

/// Why an index or a data-file header is not a usable cache.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum FormatError {
    #[error("not valid cache JSON: {0}")]
    Json(String),
    #[error("not a preprocessed cache (format `{0}`, expected `{FORMAT}`)")]
    NotACache(String),
    #[error("cache format version {0}; this trainer reads version {VERSION}")]
    Version(u32),
    #[error("input size {0} is outside 1..={MAX_INPUT_SIZE}")]
    InputSize(usize),
    #[error("cache id `{0}` is not 16 hexadecimal digits")]
    Id(String),
    #[error("item {index} (`{file}`): {reason}")]
    Item {
        index: usize,
        file: String,
        reason: String,
    },
    #[error("progress range {0:?}: {1}")]
    Progress([u64; 2], &'static str),
    #[error("marked complete, but only {done} of {count} slots are done")]
    NotAllDone { done: u64, count: u64 },
    #[error("{0} items of {1} bytes do not fit in a file")]
    TooLarge(usize, u64),
    #[error("data file header: {0}")]
    Header(String),
    #[error("data file does not match the index: {0}")]
    Mismatch(String),
}

/// How a slot stores each value of the `[0, 1]` model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// Exact: the loader gets the very f32 values the direct path computes.
    F32,
    /// IEEE half precision: absolute error at most 2⁻¹² (2.4e-4) on `[0, 1]`.
    F16,
    /// `round(255 v)`: absolute error at most 1/510 (2.0e-3), half an 8-bit grey level.
    U8,
}

impl Storage {
    pub fn bytes_per_value(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
            Self::U8 => 1,
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::U8 => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        [Self::F32, Self::F16, Self::U8]
            .into_iter()
            .find(|s| s.code() == code)
    }
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::U8 => "u8",
        })
    }
}

impl FromStr for Storage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "u8" => Ok(Self::U8),
            _ => Err(format!("`{s}`: expected f32, f16 or u8")),
        }
    }
}

/// One image of the cache, in slot order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the data folder, with `/` separators (as `trainer train` names it).
    pub file: String,
    /// 1 = effusion, 0 = no finding.
    pub label: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// Why decoding or preprocessing failed; the slot then holds nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A file the data-folder scan left out (unreadable header), with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub file: String,
    pub reason: String,
}

/// The contents of `cache.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub format: String,
    pub version: u32,
    /// 16 hex digits, also in the data file's header: an index never pairs with another cache's
    /// pixels.
    pub id: String,
    pub input_size: usize,
    pub storage: Storage,
    /// Fingerprint of the preprocessing that filled the slots (see `cache::fingerprint`).
    pub preprocessing: String,
    /// The data folder the cache was made from (for people; never read back as a path).
    pub source: String,
    pub layout: String,
    /// Every slot is done (and `done` is the one range `[0, items]`).
    pub complete: bool,
    /// Finished slots as sorted, disjoint `[start, end)` ranges.
    pub done: Vec<[u64; 2]>,
    pub items: Vec<Entry>,
    #[serde(default)]
    pub skipped: Vec<Skipped>,
}

impl Index {
    /// Bytes of one slot.
    pub fn slot_bytes(&self) -> u64 {
        (self.input_size * self.input_size * self.storage.bytes_per_value()) as u64
    }

    /// Bytes of the whole data file (header and every slot).
    pub fn data_len(&self) -> u64 {
        HEADER_LEN as u64 + self.items.len() as u64 * self.slot_bytes()
    }

    /// Slots done, by `done`.
    pub fn done_count(&self) -> u64 {
        self.done.iter().map(|[a, b]| b - a).sum()
    }

    /// The id as a number (checked by [`parse_index`]).
    pub fn id_number(&self) -> u64 {
        u64::from_str_radix(&self.id, 16).unwrap_or(0)
    }

    /// The header the data file of this index starts with.
    pub fn header(&self) -> Header {
        Header {
            input_size: self.input_size as u32,
            storage: self.storage,
            count: self.items.len() as u64,
            slot_bytes: self.slot_bytes(),
            id: self.id_number(),
        }
    }

    /// Every rule a usable index keeps (see [`FormatError`]).
    pub fn validate(&self) -> Result<(), FormatError> {
        if self.format != FORMAT {
            return Err(FormatError::NotACache(self.format.clone()));
        }
        if self.version != VERSION {
            return Err(FormatError::Version(self.version));
        }
        if !(1..=MAX_INPUT_SIZE).contains(&self.input_size) {
            return Err(FormatError::InputSize(self.input_size));
        }
        if self.id.len() != 16 || u64::from_str_radix(&self.id, 16).is_err() {
            return Err(FormatError::Id(self.id.clone()));
        }
        let slot = self.slot_bytes();
        let too_large = FormatError::TooLarge(self.items.len(), slot);
        let slots = (self.items.len() as u64)
            .checked_mul(slot)
            .ok_or_else(|| too_large.clone())?;
        slots.checked_add(HEADER_LEN as u64).ok_or(too_large)?;
        self.validate_items()?;
        self.validate_progress()
    }

    fn validate_items(&self) -> Result<(), FormatError> {
        let mut seen = HashSet::with_capacity(self.items.len());
        for (index, item) in self.items.iter().enumerate() {
            let bad = |reason: &str| FormatError::Item {
                index,
                file: item.file.clone(),
                reason: reason.to_string(),
            };
            if item.file.is_empty() {
                return Err(bad("empty file name"));
            }
            if item.label > 1 {
                return Err(bad("label must be 0 or 1"));
            }
            if !seen.insert(item.file.as_str()) {
                return Err(bad("listed twice"));
            }
        }
        Ok(())
    }

    fn validate_progress(&self) -> Result<(), FormatError> {
        let count = self.items.len() as u64;
        let mut end = 0;
        for &[a, b] in &self.done {
            if a >= b {
                return Err(FormatError::Progress([a, b], "empty or reversed"));
            }
            if a < end {
                return Err(FormatError::Progress([a, b], "overlaps or is out of order"));
            }
            if b > count {
                return Err(FormatError::Progress([a, b], "past the last item"));
            }
            end = b;
        }
        let done = self.done_count();
        if self.complete && done != count {
            return Err(FormatError::NotAllDone { done, count });
        }
        Ok(())
    }

    /// Check a data file's header and length against this (valid) index.
    pub fn check_data(&self, header: &Header, file_len: u64) -> Result<(), FormatError> {
        let expected = self.header();
        let mismatch = |what: &str, found: String, wanted: String| {
            Err(FormatError::Mismatch(format!(
                "{what} is {found}, the index says {wanted}"
            )))
        };
        if header.id != expected.id {
            return mismatch("its id", format!("{:016x}", header.id), self.id.clone());
        }
        if (header.input_size, header.storage) != (expected.input_size, expected.storage) {
            return mismatch(
                "its input size and storage",
                format!("{} px {}", header.input_size, header.storage),
                format!("{} px {}", self.input_size, self.storage),
            );
        }
        if (header.count, header.slot_bytes) != (expected.count, expected.slot_bytes) {
            return mismatch(
                "its slot count and size",
                format!("{} x {} bytes", header.count, header.slot_bytes),
                format!("{} x {} bytes", expected.count, expected.slot_bytes),
            );
        }
        if file_len != self.data_len() {
            return mismatch(
                "its length",
                format!("{file_len} bytes"),
                format!("{} bytes (truncated or extended?)", self.data_len()),
            );
        }
        Ok(())
    }
}

/// Parse and validate `cache.json`.
pub fn parse_index(bytes: &[u8]) -> Result<Index, FormatError> {
    let index: Index =
        serde_json::from_slice(bytes).map_err(|e| FormatError::Json(e.to_string()))?;
    index.validate()?;
    Ok(index)
}

/// The first [`HEADER_LEN`] bytes of the data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub input_size: u32,
    pub storage: Storage,
    pub count: u64,
    pub slot_bytes: u64,
    pub id: u64,
}

impl Header {
    /// Layout: magic `CXRCACHE`, version (u32), input size (u32), storage code (u8), 7 zero
    /// bytes, slot count (u64), slot bytes (u64), id (u64), 16 zero bytes; little-endian.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.input_size.to_le_bytes());
        out[16] = self.storage.code();
        out[24..32].copy_from_slice(&self.count.to_le_bytes());
        out[32..40].copy_from_slice(&self.slot_bytes.to_le_bytes());
        out[40..48].copy_from_slice(&self.id.to_le_bytes());
        out
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let bad = |why: &str| Err(FormatError::Header(why.to_string()));
        if bytes.len() < HEADER_LEN {
            return bad("shorter than 64 bytes");
        }
        if &bytes[0..8] != MAGIC {
            return bad("no CXRCACHE magic");
        }
        let u32_at = |at: usize| u32::from_le_bytes([0, 1, 2, 3].map(|i| bytes[at + i]));
        let u64_at =
            |at: usize| u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7].map(|i| bytes[at + i]));
        let version = u32_at(8);
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        let Some(storage) = Storage::from_code(bytes[16]) else {
            return bad("unknown storage code");
        };
        Ok(Self {
            input_size: u32_at(12),
            storage,
            count: u64_at(24),
            slot_bytes: u64_at(32),
            id: u64_at(40),
        })
    }
}

/// Add slots `[a, b)` to sorted, disjoint ranges, merging neighbours.
pub fn add_range(done: &mut Vec<[u64; 2]>, [a, b]: [u64; 2]) {
    if a >= b {
        return;
    }
    done.push([a, b]);
    done.sort_unstable();
    let mut merged: Vec<[u64; 2]> = Vec::with_capacity(done.len());
    for &[s, e] in done.iter() {
        match merged.last_mut() {
            Some(last) if s <= last[1] => last[1] = last[1].max(e),
            _ => merged.push([s, e]),
        }
    }
    *done = merged;
}

/// Whether slot range `[a, b)` lies inside one range of `done`.
pub fn is_done(done: &[[u64; 2]], [a, b]: [u64; 2]) -> bool {
    done.iter().any(|&[s, e]| s <= a && b <= e)
}
