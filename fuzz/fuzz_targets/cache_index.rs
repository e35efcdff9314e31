//! Raw bytes → the preprocessed cache's index and data-file header parsers (see
//! tests/support/fuzz_pipeline.rs).
#![no_main]

#[path = "../../tests/support/fuzz_pipeline.rs"]
mod pipeline;

/// The guarded allocator, as in the product.
#[global_allocator]
static ALLOCATOR: cxr::alloc_guard::GuardedAlloc = cxr::alloc_guard::GuardedAlloc;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| pipeline::cache_index(bytes));
