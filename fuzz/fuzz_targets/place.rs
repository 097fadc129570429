//! Fuzz target `place`: the property is `cache_testkit::fuzz::place` (see its docs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cache_testkit::fuzz::place(data));
