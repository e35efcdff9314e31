//! The cache against the direct path (exact for f32, within the stated bound otherwise),
//! resuming after an interruption, and typed errors for damaged or mismatched files.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::disk::space_problem;
use super::format::{self, FormatError, Storage};
use super::prepare::{Settings, prepare};
use super::*;
use crate::augment::AugmentConfig;
use crate::loader::{Loader, LoaderConfig, preprocess_file};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cxr-cache-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// A folder-per-class set from the fixture X-rays (each at three sizes, one not square), a
/// truncated PNG (its header reads, its decode fails) and a file that is no image at all.
fn data(name: &str) -> PathBuf {
    let dir = temp(name);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    for (class, prefix) in [("effusion", "effusion"), ("nofinding", "normal")] {
        fs::create_dir_all(dir.join(class)).unwrap();
        for entry in fs::read_dir(&fixtures).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with(prefix) && name.ends_with(".png") {
                let img = image::open(&path).unwrap();
                for (k, (w, h)) in [(512, 512), (300, 240), (97, 97)].into_iter().enumerate() {
                    let resized = img.resize_exact(w, h, image::imageops::FilterType::Triangle);
                    resized
                        .save(dir.join(class).join(format!("{k}-{name}")))
                        .unwrap();
                }
            }
        }
    }
    let whole = fs::read(fixtures.join("normal0.png")).unwrap();
    fs::write(
        dir.join("nofinding/truncated.png"),
        &whole[..whole.len() / 3],
    )
    .unwrap();
    fs::write(dir.join("effusion/not-an-image.png"), b"hello").unwrap();
    dir
}

fn settings(size: usize, storage: Storage) -> Settings {
    Settings {
        input_size: size,
        storage,
        workers: 2,
        quiet: true,
        checkpoint_every: Duration::from_secs(5),
        stop_after: None,
        pause: Duration::ZERO,
    }
}

/// The largest difference between the cache's images and the direct path's.
fn max_error(data: &Path, cache: &Path, size: usize) -> f32 {
    let dataset = crate::data::discover(data).unwrap();
    let cache = Cache::open(cache).unwrap();
    let mut worst = 0.0f32;
    for item in &dataset.items {
        match (
            preprocess_file(data, item, size),
            cache.read(&item.file, size),
        ) {
            (Ok(direct), Ok(cached)) => {
                assert_eq!(direct.len(), cached.len());
                for (a, b) in direct.iter().zip(&cached) {
                    worst = worst.max((a - b).abs());
                }
            }
            (Err(direct), Err(cached)) => assert_eq!(format!("{direct:#}"), cached.to_string()),
            (a, b) => panic!(
                "{}: direct {:?} vs cache {:?}",
                item.file,
                a.is_ok(),
                b.is_ok()
            ),
        }
    }
    worst
}

#[test]
fn f32_cache_gives_the_direct_paths_tensors_exactly_and_compact_ones_stay_in_bound() {
    let data = data("parity");
    let size = 256;
    for storage in [Storage::F32, Storage::F16, Storage::U8] {
        let out = temp(&format!("parity-{storage}"));
        prepare(&data, &out, &settings(size, storage)).unwrap();
        let worst = max_error(&data, &out, size);
        eprintln!("storage {storage}: largest difference from the direct path {worst:e}");
        match storage {
            Storage::F32 => assert_eq!(worst, 0.0),
            _ => assert!(
                worst <= slots::error_bound(storage) + 1e-7,
                "{storage}: {worst}"
            ),
        }
        fs::remove_dir_all(&out).unwrap();
    }
    fs::remove_dir_all(&data).unwrap();
}

#[test]
fn the_loader_gives_the_same_batches_from_a_cache_with_the_same_failures() {
    let data = data("loader");
    let out = temp("loader-cache");
    prepare(&data, &out, &settings(48, Storage::F32)).unwrap();
    let (raw, cached) = (
        crate::data::discover(&data).unwrap(),
        crate::data::discover(&out).unwrap(),
    );
    assert_eq!(raw.items, cached.items, "same items, so the same split");
    assert_eq!(raw.skipped, cached.skipped);
    let cfg = LoaderConfig {
        batch_size: 5,
        workers: 2,
        prefetch: 1,
        size: 48,
    };
    let run = |root: &Path| {
        let failures: crate::loader::Failures = Default::default();
        let aug = Some(AugmentConfig::with_strength(1.0, 1.0));
        let batches: Vec<_> = Loader::start(
            root.into(),
            raw.items.clone(),
            &cfg,
            aug,
            9,
            failures.clone(),
        )
        .map(|b| (b.pixels, b.labels, b.files))
        .collect();
        (batches, failures.lock().unwrap().clone())
    };
    let (direct, cache) = (run(&data), run(&out));
    assert_eq!(direct.1.len(), 1, "the truncated PNG: {:?}", direct.1);
    assert_eq!(direct, cache);
    let wrong_size = LoaderConfig { size: 32, ..cfg };
    let failures: crate::loader::Failures = Default::default();
    let n = Loader::start(
        out.clone(),
        raw.items.clone(),
        &wrong_size,
        None,
        1,
        failures.clone(),
    )
    .count();
    assert_eq!(n, 0);
    assert!(failures.lock().unwrap()[0].1.contains("--input-size 32"));
    assert!(check_input_size(&out, 32).is_err() && check_input_size(&out, 48).is_ok());
    assert!(
        check_input_size(&data, 32).is_ok(),
        "a raw folder takes any size"
    );
    assert!(require_raw(&out, "groups").is_err() && require_raw(&data, "groups").is_ok());
    fs::remove_dir_all(&out).unwrap();
    fs::remove_dir_all(&data).unwrap();
}

#[test]
fn an_interrupted_prepare_resumes_to_the_same_cache_and_refuses_other_settings() {
    let data = data("resume");
    let (whole, resumed) = (temp("resume-whole"), temp("resume-parts"));
    let s = settings(40, Storage::F16);
    prepare(&data, &whole, &s).unwrap();
    // Few images, so chunks of 64 would be one: interrupt a prepare of a larger copy instead.
    let big = temp("resume-big");
    fs::create_dir_all(&big).unwrap();
    for class in ["effusion", "nofinding"] {
        fs::create_dir_all(big.join(class)).unwrap();
        for entry in fs::read_dir(data.join(class)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            for copy in 0..12 {
                fs::hard_link(&path, big.join(class).join(format!("{copy}-{name}"))).unwrap();
            }
        }
    }
    prepare(&big, &whole.join("big"), &s).unwrap();
    let interrupted = Settings {
        workers: 1,
        checkpoint_every: Duration::ZERO,
        stop_after: Some(1),
        ..s.clone()
    };
    assert!(prepare(&big, &resumed, &interrupted).is_err());
    let index = read_index(&resumed).unwrap();
    assert!(
        !index.complete && index.done == vec![[0, 64]],
        "{:?}",
        index.done
    );
    assert!(matches!(
        Cache::open(&resumed),
        Err(CacheError::Incomplete { done: 64, .. })
    ));
    // A slot past the recorded progress holds garbage, as after a crash mid-write.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = fs::OpenOptions::new()
            .write(true)
            .open(resumed.join(DATA_FILE))
            .unwrap();
        file.seek(SeekFrom::Start(64 + 70 * 3200)).unwrap();
        file.write_all(&[0xAB; 500]).unwrap();
    }
    for (size, storage) in [(41, Storage::F16), (40, Storage::U8)] {
        let err = prepare(&big, &resumed, &settings(size, storage)).unwrap_err();
        assert!(
            err.to_string().contains("holds a cache of 40x40 f16"),
            "{err}"
        );
    }
    assert!(
        prepare(&data, &resumed, &s)
            .unwrap_err()
            .to_string()
            .contains("of other data")
    );
    prepare(&big, &resumed, &s).unwrap();
    let (a, b) = (
        read_index(&whole.join("big")).unwrap(),
        read_index(&resumed).unwrap(),
    );
    assert_eq!((a.items, a.done, a.complete), (b.items, b.done, b.complete));
    let pixels = |dir: &Path| fs::read(dir.join(DATA_FILE)).unwrap()[HEADER_LEN..].to_vec();
    assert!(
        pixels(&whole.join("big")) == pixels(&resumed),
        "same pixels after resuming"
    );
    let again = prepare(&big, &resumed, &s).unwrap();
    assert!(again.contains("already complete"), "{again}");
    for dir in [data, whole, resumed, big] {
        fs::remove_dir_all(dir).unwrap();
    }
}

/// Apply `edit` to the index JSON of `cache` and return the error opening it gives.
fn open_with_index(cache: &Path, edit: fn(&mut serde_json::Value)) -> CacheError {
    let path = cache.join(INDEX_FILE);
    let original = fs::read(&path).unwrap();
    let mut value: serde_json::Value = serde_json::from_slice(&original).unwrap();
    edit(&mut value);
    fs::write(&path, serde_json::to_vec(&value).unwrap()).unwrap();
    let err = Cache::open(cache).unwrap_err();
    fs::write(&path, original).unwrap();
    err
}

fn format_error(err: &CacheError) -> &FormatError {
    match err {
        CacheError::Format { error, .. } => error,
        other => panic!("not a format error: {other}"),
    }
}

/// A small finished u8 cache of the test data, in folders named after `name`.
fn small_cache(name: &str) -> (PathBuf, PathBuf) {
    let data = data(name);
    let out = temp(&format!("{name}-cache"));
    prepare(&data, &out, &settings(16, Storage::U8)).unwrap();
    (data, out)
}

/// Edits of a valid index, and what the error opening it must say.
type IndexCase = (fn(&mut serde_json::Value), &'static str);

#[test]
fn a_damaged_or_mismatched_index_is_a_typed_error() {
    let (data, out) = small_cache("damaged-index");
    let index_path = out.join(INDEX_FILE);
    let index_bytes = fs::read(&index_path).unwrap();
    fs::write(&index_path, &index_bytes[..index_bytes.len() / 2]).unwrap();
    let err = Cache::open(&out).unwrap_err();
    assert!(matches!(format_error(&err), FormatError::Json(_)), "{err}");
    assert!(
        err.to_string().contains(INDEX_FILE),
        "names the file: {err}"
    );
    fs::write(&index_path, &index_bytes).unwrap();
    let cases: [IndexCase; 8] = [
        (|v| v["version"] = 2.into(), "version 2"),
        (|v| v["format"] = "zip".into(), "not a preprocessed cache"),
        (|v| v["input_size"] = 100_000.into(), "outside"),
        (|v| v["id"] = "xyz".into(), "hexadecimal"),
        (
            |v| v["done"] = serde_json::json!([[0, 3], [2, 5]]),
            "overlaps",
        ),
        (|v| v["done"] = serde_json::json!([[0, 3]]), "only 3 of"),
        (
            |v| v["items"][1]["file"] = v["items"][0]["file"].clone(),
            "listed twice",
        ),
        (|v| v["items"][0]["label"] = 7.into(), "label"),
    ];
    for (edit, expected) in cases {
        let err = open_with_index(&out, edit);
        let _ = format_error(&err);
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }
    let err = open_with_index(&out, |v| v["preprocessing"] = "0123456789abcdef".into());
    assert!(matches!(err, CacheError::Preprocessing { .. }), "{err}");
    let err = open_with_index(&out, |v| v["complete"] = false.into());
    assert!(matches!(err, CacheError::Incomplete { .. }), "{err}");
    // discover passes the error on.
    fs::write(&index_path, b"{").unwrap();
    let err = crate::data::discover(&out).unwrap_err();
    assert!(err.to_string().contains(INDEX_FILE), "{err}");
    fs::remove_dir_all(&out).unwrap();
    fs::remove_dir_all(&data).unwrap();
}

#[test]
fn a_damaged_or_mismatched_data_file_is_a_typed_error() {
    let (data, out) = small_cache("damaged-data");
    let data_path = out.join(DATA_FILE);
    let pixels = fs::read(&data_path).unwrap();
    fs::write(&data_path, &pixels[..pixels.len() - 1]).unwrap();
    let err = Cache::open(&out).unwrap_err();
    assert!(err.to_string().contains("truncated or extended"), "{err}");
    let mut other = pixels.clone();
    other[40] ^= 1;
    fs::write(&data_path, &other).unwrap();
    let err = Cache::open(&out).unwrap_err();
    assert!(err.to_string().contains("its id"), "{err}");
    other[0] = b'X';
    fs::write(&data_path, &other).unwrap();
    let err = Cache::open(&out).unwrap_err();
    assert!(
        matches!(format_error(&err), FormatError::Header(_)),
        "{err}"
    );
    fs::remove_file(&data_path).unwrap();
    assert!(matches!(Cache::open(&out), Err(CacheError::Io { .. })));
    // discover and the loader pass the error on; nothing panics.
    let err = crate::data::discover(&out).unwrap_err();
    assert!(err.to_string().contains(DATA_FILE), "{err}");
    let failures: crate::loader::Failures = Default::default();
    let items = vec![crate::data::Item {
        file: "effusion/0-effusion10.png".into(),
        label: 1,
        patient: None,
    }];
    let cfg = LoaderConfig {
        batch_size: 1,
        workers: 1,
        prefetch: 1,
        size: 16,
    };
    let loaded = Loader::start(out.clone(), items, &cfg, None, 1, failures.clone()).count();
    assert_eq!(loaded, 0);
    assert!(failures.lock().unwrap()[0].1.contains(DATA_FILE));
    fs::write(&data_path, &pixels).unwrap();
    let cache = Cache::open(&out).unwrap();
    let missing = cache.read("nope.png", 16);
    assert!(matches!(missing, Err(CacheError::NotCached { .. })));
    let other_size = cache.read("effusion/0-effusion10.png", 17);
    assert!(matches!(other_size, Err(CacheError::InputSize { .. })));
    fs::remove_dir_all(&out).unwrap();
    fs::remove_dir_all(&data).unwrap();
}

#[test]
fn prepare_refuses_a_full_disk_a_busy_folder_and_a_cache_as_input() {
    let data = data("refuse");
    let out = temp("refuse-cache");
    prepare(&data, &out, &settings(16, Storage::F32)).unwrap();
    let index = read_index(&out).unwrap();
    let needed = index.data_len();
    let problem = space_problem(&out, needed - 1, needed, &index).unwrap();
    assert!(
        problem.contains("GB free") && problem.contains("--storage f16"),
        "{problem}"
    );
    assert_eq!(space_problem(&out, needed, needed, &index), None);
    let err = prepare(&out, &temp("refuse-2"), &settings(16, Storage::F32)).unwrap_err();
    assert!(
        err.to_string().contains("already a preprocessed cache"),
        "{err}"
    );
    let err = prepare(&data, &data, &settings(16, Storage::F32)).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    fs::remove_dir_all(&out).unwrap();
    fs::remove_dir_all(&data).unwrap();
}

#[test]
fn progress_ranges_merge() {
    let mut done = Vec::new();
    for r in [[64, 128], [0, 64], [192, 200], [128, 192]] {
        format::add_range(&mut done, r);
    }
    assert_eq!(done, vec![[0, 200]]);
    assert!(format::is_done(&done, [64, 128]) && !format::is_done(&[[0, 10]], [5, 20]));
}
