//! The `decode_tree` fuzz corpus (`fuzz/corpus/decode_tree/`) replayed on stable through
//! the check the cargo-fuzz target runs (`cache_remote::fuzz`), so an input the fuzzer
//! once found stays fixed and the seeds keep working without a nightly toolchain.

use cache_remote::fuzz;

#[test]
fn decode_tree_corpus() {
    cache_testkit::fuzz::replay_corpus("decode_tree", fuzz::decode_tree);
}

#[test]
fn seeds_are_in_the_corpus() {
    cache_testkit::fuzz::assert_seeds_stored(&fuzz::seeds());
}

/// A few thousand pseudo-random inputs of each mode, on stable: the property holds
/// beyond the corpus without libFuzzer.
#[test]
fn decode_tree_holds_for_pseudo_random_inputs() {
    let mut bytes = vec![0u8; 96];
    for n in 0u32..3_000 {
        blake3::Hasher::new()
            .update(&n.to_le_bytes())
            .finalize_xof()
            .fill(&mut bytes);
        let mode = u8::try_from(n % 3).unwrap();
        bytes[0] = mode;
        fuzz::decode_tree(&bytes);
    }
}
