//! Raw bytes → the `.cxrw` weight-file reader (see tests/support/fuzz_pipeline.rs).
#![no_main]

#[path = "../../tests/support/fuzz_pipeline.rs"]
mod pipeline;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| pipeline::weights_reader(bytes));
