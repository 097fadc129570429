//! Fuzz target `decode_record`: the property is `cache_testkit::fuzz::decode_record` (see its docs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cache_testkit::fuzz::decode_record(data));
