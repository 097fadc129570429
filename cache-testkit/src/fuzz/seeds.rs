//! Seeds for the corpus in `fuzz/corpus/` (written by `cargo xtask drill seeds`):
//! real encoded records for the decoder, and inputs for the other targets.

use super::fuzz_key;
use cache_core::LogStream;
use cache_core::storage::{AbsoluteSymlink, ActionRecord, LogChunk, LogRecord, OutputRecord};
use cache_core::{BlobRef, DigestAlgorithm};

fn records() -> Vec<ActionRecord> {
    let blob = |b: &[u8]| BlobRef::of(DigestAlgorithm::Blake3, b);
    let base = ActionRecord {
        key: fuzz_key(),
        exit_code: 0,
        duration_ms: 12,
        stdout: LogRecord::Absent,
        stderr: LogRecord::Absent,
        outputs: Vec::new(),
        log_order: Vec::new(),
        absolute_symlinks: Vec::new(),
        signature: None,
    };
    let mut full = base.clone();
    full.exit_code = 3;
    full.stdout = LogRecord::Inline(b"built 3 targets\n".to_vec());
    full.stderr = LogRecord::Blob(blob(b"a long log"));
    full.outputs = vec![
        OutputRecord::Directory {
            path: "dist".into(),
        },
        OutputRecord::Directory {
            path: "dist/empty".into(),
        },
        OutputRecord::File {
            path: "dist/app".into(),
            blob: blob(b"\x7fELF"),
            executable: true,
        },
        OutputRecord::File {
            path: "dist/app.map".into(),
            blob: blob(b"{}"),
            executable: false,
        },
        OutputRecord::Symlink {
            path: "dist/latest".into(),
            target: "app".into(),
        },
    ];
    let mut sha = base.clone();
    sha.outputs = vec![OutputRecord::File {
        path: "out.txt".into(),
        blob: BlobRef::of(DigestAlgorithm::Sha256, b"x"),
        executable: false,
    }];
    let mut deep = base.clone();
    deep.outputs = vec![
        OutputRecord::Directory {
            path: "a/b/c".into(),
        },
        OutputRecord::Symlink {
            path: "a/b/c/up".into(),
            target: "../../x".into(),
        },
    ];
    // The parts kept after the record (format 3): log order, absolute symlinks.
    let mut extras = full.clone();
    extras.log_order = vec![
        LogChunk {
            stream: LogStream::Stdout,
            len: 5,
        },
        LogChunk {
            stream: LogStream::Stderr,
            len: 10,
        },
        LogChunk {
            stream: LogStream::Stdout,
            len: 11,
        },
    ];
    extras.absolute_symlinks = vec![AbsoluteSymlink {
        path: "venv/bin/python".into(),
        target: "/usr/bin/python3".into(),
    }];
    vec![base, full, sha, deep, extras]
}

/// `(target, name, bytes)` for every seed.
///
/// # Panics
///
/// If a seed record does not encode (a bug in the seeds).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (n, r) in records().iter().enumerate() {
        let encoded = r.encode().expect("a seed record encodes");
        let mut raw = vec![0u8];
        raw.extend_from_slice(&encoded);
        out.push(("decode_record", format!("record-{n}"), raw));
        // The payload alone, behind a header the target makes (its format byte).
        // (mode 0 is raw bytes; mode m puts a header of format 1 + m % 4)
        let mut payload = vec![if encoded[4] == 1 { 4 } else { encoded[4] - 1 }];
        payload.extend_from_slice(&encoded[37..]);
        out.push(("decode_record", format!("payload-{n}"), payload));
    }
    out.push(("decode_record", "empty".into(), Vec::new()));
    for target in ["place", "key_inputs"] {
        for n in 0..8u32 {
            let len = 16 + 24 * n as usize;
            let mut bytes = vec![0u8; len];
            blake3::Hasher::new()
                .update(format!("{target} seed {n}").as_bytes())
                .finalize_xof()
                .fill(&mut bytes);
            out.push((target, format!("random-{n}"), bytes));
        }
    }
    // Hand-made placement inputs: (planted items, outputs, ...) per the reader's grammar.
    out.push((
        "place",
        "file-through-in-link".into(),
        vec![0, 1, 0, 1, 1, 0, 2, 3, b'a', b'b', b'c', 1, 0, 1, 0],
    ));
    out.push((
        "place",
        "link-out".into(),
        vec![1, 2, 0, 1, 1, 3, 0, 0, 1, 1, 0],
    ));
    out
}
