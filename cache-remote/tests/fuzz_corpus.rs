//! The `decode_tree` fuzz corpus (`fuzz/corpus/decode_tree/`) replayed on stable through
//! the check the cargo-fuzz target runs (`cache_remote::fuzz`), so an input the fuzzer
//! once found stays fixed and the seeds keep working without a nightly toolchain.

use cache_remote::fuzz;
use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

#[test]
fn decode_tree_corpus() {
    let dir = corpus_dir("decode_tree");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    // The seeds alone are more; an empty or lost corpus must not pass.
    assert!(files.len() >= 8, "only {} corpus files", files.len());
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let name = f.display().to_string();
        assert!(
            std::panic::catch_unwind(|| fuzz::run("decode_tree", &data)).is_ok(),
            "corpus file {name} fails its check"
        );
    }
}

#[test]
fn seeds_are_in_the_corpus() {
    for (target, name, bytes) in fuzz::seeds() {
        let path = corpus_dir(target).join(format!("seed-{name}"));
        let stored = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask drill seeds`)", path.display()));
        assert_eq!(
            stored,
            bytes,
            "{} is stale (run `cargo xtask drill seeds`)",
            path.display()
        );
    }
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
