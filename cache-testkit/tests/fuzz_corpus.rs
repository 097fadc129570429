//! The fuzz corpus (`fuzz/corpus/<target>/`) replayed on stable: every file through
//! the same checks the cargo-fuzz targets run, so a crash the fuzzer once found stays
//! fixed and the seeds keep working without a nightly toolchain.

use cache_testkit::fuzz;
use std::path::Path;

fn corpus(target: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let files = corpus(target);
    // Seeds alone are more than this; an empty or lost corpus must not pass.
    assert!(
        files.len() >= 8,
        "{target}: only {} corpus files",
        files.len()
    );
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let name = f.display().to_string();
        assert!(
            std::panic::catch_unwind(|| fuzz::run(target, &data)).is_ok(),
            "{target}: corpus file {name} fails its check"
        );
    }
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
    for (target, name, bytes) in fuzz::seeds() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target)
            .join(format!("seed-{name}"));
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
