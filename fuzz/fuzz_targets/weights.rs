//! Raw bytes → the `.cxrw` weight-file reader (see tests/support/fuzz_pipeline.rs).
#![no_main]

#[path = "../../tests/support/fuzz_pipeline.rs"]
mod pipeline;

/// The guarded allocator, as in the product: the decoders' allocation cap only holds where a
/// program installs it.
#[global_allocator]
static ALLOCATOR: cxr::alloc_guard::GuardedAlloc = cxr::alloc_guard::GuardedAlloc;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| pipeline::weights_reader(bytes));
