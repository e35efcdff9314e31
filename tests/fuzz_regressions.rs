//! Replays every input kept in fuzz/regressions/ (inputs on which the fuzzer once found a
//! crash, hang or wrong result) through the same checks as the fuzz targets.

#[path = "support/fuzz_pipeline.rs"]
mod pipeline;

use std::cell::Cell;
use std::path::Path;
use std::sync::Once;

/// The guarded allocator, as in the product: the allocation cap around parsing, and the largest
/// allocation these tests assert on, only hold where a program installs it.
#[global_allocator]
static ALLOCATOR: cxr::alloc_guard::GuardedAlloc = cxr::alloc_guard::GuardedAlloc;

thread_local! {
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// Counts every panic on this thread, including one the product catches (the native decode runs
/// in `catch_unwind` as a last line): under the fuzzer a caught panic is still a finding, so it
/// must be one here too.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            default(info);
        }));
    });
}

fn replay(target: &str, check: fn(&[u8])) -> usize {
    count_panics();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        cxr::alloc_guard::take_largest_allocation();
        let panics_before = PANICS.with(Cell::get);
        check(&bytes);
        assert_eq!(
            PANICS.with(Cell::get),
            panics_before,
            "{}: panicked (even if caught)",
            path.display()
        );
        // Each kept input once made a decoder allocate far more than the file; none may now
        // (the fuzzed pipeline's own limit is 64 MiB).
        let largest = cxr::alloc_guard::take_largest_allocation();
        assert!(
            largest <= 64 << 20,
            "{}: a {largest}-byte allocation",
            path.display()
        );
        count += 1;
    }
    count
}

#[test]
fn image_pipeline_regressions() {
    let replayed = replay("decode_preprocess", pipeline::image_pipeline);
    eprintln!("replayed {replayed} image inputs");
}

#[test]
fn weights_reader_regressions() {
    let replayed = replay("weights", pipeline::weights_reader);
    eprintln!("replayed {replayed} weight-file inputs");
}

#[test]
fn labels_csv_regressions() {
    let replayed = replay("labels_csv", pipeline::labels_csv);
    eprintln!("replayed {replayed} labels-CSV inputs");
}

#[test]
fn cache_index_regressions() {
    let replayed = replay("cache_index", pipeline::cache_index);
    eprintln!("replayed {replayed} cache index inputs");
    // Guards the harness: the valid seed parses, so the checks after parsing run.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/cache_index");
    let valid = std::fs::read(dir.join("valid-two-items.json")).unwrap();
    let index = pipeline::cache_format::parse_index(&valid).unwrap();
    assert_eq!((index.items.len(), index.done_count()), (2, 2));
}

#[test]
fn the_pipeline_check_runs_a_real_image_to_the_end() {
    // Guards the harness itself: a valid X-ray goes through every step without a finding.
    let bytes =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/normal0.png"))
            .unwrap();
    pipeline::image_pipeline(&bytes);
}
