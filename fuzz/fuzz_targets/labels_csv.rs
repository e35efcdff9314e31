//! Raw bytes → the labels-CSV reader of the page's validation mode (see
//! tests/support/fuzz_pipeline.rs).
#![no_main]

#[path = "../../tests/support/fuzz_pipeline.rs"]
mod pipeline;

/// The guarded allocator, as in the product.
#[global_allocator]
static ALLOCATOR: cxr::alloc_guard::GuardedAlloc = cxr::alloc_guard::GuardedAlloc;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| pipeline::labels_csv(bytes));
