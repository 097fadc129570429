//! The fuzz corpus (`fuzz/corpus/<target>/`) replayed on stable: every file through
//! the same checks the cargo-fuzz targets run, so a crash the fuzzer once found stays
//! fixed and the seeds keep working without a nightly toolchain.

use cache_testkit::fuzz;

fn replay(target: &str) {
    fuzz::replay_corpus(target, |data| fuzz::run(target, data));
}

#[test]
fn decode_record_corpus() {
    replay("decode_record");
}

#[test]
fn place_corpus() {
    replay("place");
}

#[test]
fn key_inputs_corpus() {
    replay("key_inputs");
}

#[test]
fn seeds_are_in_the_corpus() {
    fuzz::assert_seeds_stored(&fuzz::seeds());
}

/// The record seeds are real entries: the decoder accepts them whole, so the fuzzer
/// starts from inputs that reach past every check.
#[test]
fn record_seeds_decode() {
    let mut n = 0;
    for (target, name, bytes) in fuzz::seeds() {
        if target == "decode_record" && name.starts_with("record-") {
            cache_core::storage::ActionRecord::decode(&fuzz::fuzz_key(), &bytes[1..])
                .unwrap_or_else(|e| panic!("seed {name}: {e}"));
            n += 1;
        }
    }
    assert!(n >= 4);
}
