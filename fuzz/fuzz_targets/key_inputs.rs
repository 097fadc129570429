//! Fuzz target `key_inputs`: the property is `cache_testkit::fuzz::key_inputs` (see its docs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cache_testkit::fuzz::key_inputs(data));
