//! The properties the fuzz targets under `fuzz/` check, as plain functions, so the
//! same checks run on nightly under libFuzzer (`cargo xtask drill fuzz`) and on stable
//! as ordinary tests replaying the corpus in `fuzz/corpus/` (`tests/fuzz_corpus.rs`).
//! Each function panics when a property fails; any input is allowed.
//!
//! * [`decode_record`]: `ActionRecord::decode` of arbitrary bytes (raw, or behind a
//!   valid header so the payload decoder is reached) never panics, accepts only records
//!   for its key with safe paths, and what it accepts encodes and decodes to itself.
//! * [`place`]: a crafted record restored by `Cache` into a workspace holding crafted
//!   files, directories and symlinks (some pointing outside) never writes, deletes or
//!   changes anything outside the workspace, and never leaves a wrong byte in a file it
//!   reports as restored.
//! * [`key_inputs`]: `TaskKeyBuilder` over crafted commands, variables, patterns,
//!   outputs and workspaces never panics or writes, is deterministic, does not depend on
//!   where the workspace is, and changes when an argument does.
//!
//! ```
//! // Any bytes are an input; a property that fails panics.
//! cache_testkit::fuzz::decode_record(b"TCAR\x01 not a record");
//! cache_testkit::fuzz::key_inputs(&[3, 1, 4, 1, 5, 9, 2, 6]);
//! ```

mod key;
mod place;
mod seeds;

pub use key::key_inputs;
pub use place::place;
use place::snapshot as place_snapshot;
pub use seeds::seeds;

use cache_core::storage::ActionRecord;
use cache_core::{BackendError, Digest, DigestAlgorithm};

/// The targets, by the names of their corpus directories.
pub const TARGETS: [&str; 3] = ["decode_record", "place", "key_inputs"];

/// Runs target `name` on `data`.
///
/// # Panics
///
/// On a failed property, or an unknown target name.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "decode_record" => decode_record(data),
        "place" => place(data),
        "key_inputs" => key_inputs(data),
        other => panic!("no fuzz target {other:?}"),
    }
}

/// The files of the corpus of `target` (`fuzz/corpus/<target>/`), sorted.
///
/// # Panics
///
/// If the directory cannot be read.
pub fn corpus_files(target: &str) -> Vec<std::path::PathBuf> {
    let dir = corpus_dir(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a corpus directory entry").path())
        .collect();
    files.sort();
    files
}

fn corpus_dir(target: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Replays the corpus of `target` through `check` (a target's property), for the
/// stable tests of any crate that holds one.
///
/// # Panics
///
/// If a corpus file fails its check, or the corpus has fewer than 8 files (the seeds
/// alone are more: an empty or lost corpus must not pass).
pub fn replay_corpus(target: &str, check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let files = corpus_files(target);
    assert!(
        files.len() >= 8,
        "{target}: only {} corpus files",
        files.len()
    );
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            std::panic::catch_unwind(|| check(&data)).is_ok(),
            "{target}: corpus file {} fails its check",
            f.display()
        );
    }
}

/// Checks that every seed (`(target, name, bytes)`) is stored as `seed-<name>` in its
/// target's corpus with these bytes.
///
/// # Panics
///
/// On a missing or stale seed (`cargo xtask drill seeds` writes them).
pub fn assert_seeds_stored(seeds: &[(&str, String, Vec<u8>)]) {
    for (target, name, bytes) in seeds {
        let path = corpus_dir(target).join(format!("seed-{name}"));
        let stored = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask drill seeds`)", path.display()));
        assert!(
            stored == *bytes,
            "{} is stale (run `cargo xtask drill seeds`)",
            path.display()
        );
    }
}

/// The key every fuzzed record is read for.
pub fn fuzz_key() -> Digest {
    DigestAlgorithm::Blake3.digest(b"taskcache fuzz key")
}

/// Input: one mode byte, then either the entry bytes as stored (mode 0) or a payload
/// put behind a valid header of format `1 + mode % 4` (1 unsigned, 2 signed, 3 and 4
/// the same with the parts kept after the record), so the checksum never stops the
/// fuzzer before the decoder.
///
/// # Panics
///
/// When a property fails (see the [module docs](self)).
pub fn decode_record(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = fuzz_key();
    let bytes = if mode == 0 {
        rest.to_vec()
    } else {
        with_header(1 + mode % 4, rest)
    };
    match ActionRecord::decode(&key, &bytes) {
        Ok(record) => {
            assert_eq!(record.key, key, "decode accepted a record of another key");
            record
                .validate()
                .expect("decode accepted a record that does not validate");
            let again = record.encode().expect("a decoded record encodes");
            let back = ActionRecord::decode(&key, &again).expect("a re-encoded record decodes");
            assert_eq!(back, record, "encode and decode do not round-trip");
        }
        Err(BackendError::CorruptEntry { key: k, reason }) => {
            assert_eq!(k, key, "the error names another key");
            assert!(!reason.is_empty(), "a corrupt entry without a reason");
        }
        Err(BackendError::NewerEntryFormat { key: k, .. }) => assert_eq!(k, key),
        Err(other) => panic!("decode failed with an unexpected error: {other:?}"),
    }
}

/// `"TCAR"`, the format byte, the BLAKE3 checksum of `payload`, `payload`.
pub fn with_header(version: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = b"TCAR".to_vec();
    out.push(version);
    out.extend_from_slice(DigestAlgorithm::Blake3.digest(payload).as_bytes());
    out.extend_from_slice(payload);
    out
}

/// For planting `at` (which must not exist yet) below the canonical `ws`: creates its
/// parent directories if every existing ancestor resolves inside `ws`, so the setup
/// itself never writes through a planted link to outside.
pub(crate) fn make_parent(ws: &std::path::Path, at: &std::path::Path) -> bool {
    if std::fs::symlink_metadata(at).is_ok() {
        return false;
    }
    let Some(parent) = at.parent() else {
        return false;
    };
    let mut existing = parent;
    while std::fs::symlink_metadata(existing).is_err() {
        match existing.parent() {
            Some(p) => existing = p,
            None => return false,
        }
    }
    let inside = |p: &std::path::Path| std::fs::canonicalize(p).is_ok_and(|c| c.starts_with(ws));
    inside(existing) && std::fs::create_dir_all(parent).is_ok() && inside(parent)
}

/// Reads fuzz input a byte at a time; past the end everything is zero.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub(crate) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// A number below `n` (n > 0).
    pub(crate) fn below(&mut self, n: u8) -> u8 {
        self.byte() % n.max(1)
    }

    /// Up to `max` raw bytes, length first.
    pub(crate) fn bytes(&mut self, max: usize) -> &'a [u8] {
        let len = usize::from(self.byte()).min(max).min(self.data.len());
        let (b, rest) = self.data.split_at(len);
        self.data = rest;
        b
    }

    /// A path-like string: mostly names from a small alphabet (so layouts collide),
    /// sometimes `.`/`..`/empty components or raw bytes.
    pub(crate) fn path(&mut self) -> String {
        const NAMES: [&str; 10] = ["a", "b", "c", "out", "d", "..", ".", "", "x y", "é"];
        if self.below(16) == 0 {
            return String::from_utf8_lossy(self.bytes(40)).into_owned();
        }
        let depth = 1 + self.below(3);
        let mut parts = Vec::new();
        for _ in 0..depth {
            parts.push(NAMES[usize::from(self.below(10))]);
        }
        let mut p = parts.join("/");
        if self.below(32) == 0 {
            p.insert(0, '/');
        }
        p
    }
}
