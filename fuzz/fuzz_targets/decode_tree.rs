//! Fuzz target `decode_tree`: the property is `cache_remote::fuzz::decode_tree` (see its docs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cache_remote::fuzz::decode_tree(data));
