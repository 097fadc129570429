//! Round trips: what is stored comes back exactly.

use super::common::{
    assert_bytes, check, restore, restore_and_compare, returned_blobs, store, store_tree,
};
use crate::Harness;
use crate::fixtures::{
    OutputTree, TempWorkspace, expect_ok, fresh_key, fresh_seed, pattern_bytes, task,
    write_pattern_file,
};
use cache_core::storage::INLINE_LOG_MAX;
use cache_core::{CacheEntry, CachePolicy, OutputContent};

/// Exit codes (including negative and extreme ones) and durations come back from
/// `check`; an entry without outputs restores nothing.
pub async fn round_trip_exit_code_and_duration(h: Harness) {
    for (exit_code, duration_ms) in [
        (0, 0),
        (1, 1),
        (-1, 12_345),
        (255, u64::MAX),
        (i32::MIN, 7),
        (i32::MAX, 1 << 40),
    ] {
        let key = fresh_key();
        let entry = CacheEntry {
            exit_code,
            duration_ms,
            ..CacheEntry::default()
        };
        store(&h, &key, &entry).await;
        let r = check(&h, &key, CachePolicy::Normal).await;
        assert!(r.hit, "stored entry must hit");
        assert_eq!(r.exit_code, Some(exit_code), "exit code");
        assert_eq!(r.cached_duration_ms, Some(duration_ms), "duration");
        let ws = TempWorkspace::new();
        let outputs = restore(&h, &key, &ws).await;
        assert!(outputs.is_empty(), "no outputs were stored: {outputs:?}");
        assert!(
            ws.tree().nodes.is_empty(),
            "restore of no outputs wrote files"
        );
    }
}

async fn logs_round_trip(
    h: &Harness,
    stdout: Option<Vec<u8>>,
    stderr: Option<Vec<u8>>,
    what: &str,
) {
    let key = fresh_key();
    let entry = CacheEntry {
        stdout: stdout.clone(),
        stderr: stderr.clone(),
        ..CacheEntry::default()
    };
    store(h, &key, &entry).await;
    let (out, err) = expect_ok(h.backend.get_log_bytes(&task(), &key).await, what);
    assert_bytes(
        out.as_deref(),
        stdout.as_deref(),
        &format!("{what}: stdout"),
    );
    assert_bytes(
        err.as_deref(),
        stderr.as_deref(),
        &format!("{what}: stderr"),
    );
    let (out, err) = expect_ok(h.backend.get_logs(&task(), &key).await, what);
    let lossy = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    assert!(out == lossy(&stdout), "{what}: get_logs stdout differs");
    assert!(err == lossy(&stderr), "{what}: get_logs stderr differs");
}

/// A stream that was not captured (`None`) stays `None`; an empty one stays empty.
pub async fn round_trip_logs_absent_and_empty(h: Harness) {
    for (out, err) in [
        (None, None),
        (Some(Vec::new()), None),
        (None, Some(Vec::new())),
        (Some(Vec::new()), Some(Vec::new())),
    ] {
        let what = format!("stdout {out:?}, stderr {err:?}");
        logs_round_trip(&h, out, err, &what).await;
    }
}

/// Multi-line UTF-8 and non-UTF-8 logs come back byte for byte (and lossily through
/// `get_logs`), including sizes either side of the inline limit.
pub async fn round_trip_logs_multiline_and_binary(h: Harness) {
    let text =
        "línea 1\n行 2\r\n🦀 crab\n\n\ttabs and trailing spaces   \nno newline at end".as_bytes();
    let binary = [0xff, 0xfe, 0x00, b'\n', 0xc3, 0x28, b'o', b'k', 0x80];
    logs_round_trip(
        &h,
        Some(text.to_vec()),
        Some(binary.to_vec()),
        "utf-8 and binary",
    )
    .await;
    let seed = fresh_seed();
    for len in [INLINE_LOG_MAX - 1, INLINE_LOG_MAX, INLINE_LOG_MAX + 1] {
        let out = pattern_bytes(seed, len);
        let err = pattern_bytes(seed ^ 1, len);
        logs_round_trip(&h, Some(out), Some(err), &format!("{len}-byte logs")).await;
    }
}

/// 8 MiB of stdout and of stderr come back exactly.
pub async fn round_trip_logs_8mib(h: Harness) {
    let seed = fresh_seed();
    let mut out = Vec::with_capacity(8 << 20);
    let mut line = 0u64;
    while out.len() < 8 << 20 {
        out.extend_from_slice(format!("line {line} of a long build log ✓ {seed}\n").as_bytes());
        line += 1;
    }
    out.truncate(8 << 20);
    let err = pattern_bytes(seed, 8 << 20);
    logs_round_trip(&h, Some(out), Some(err), "8 MiB logs").await;
}

/// Every kind of output: empty, binary, executable and plain files, nested and empty
/// directories, relative symlinks, Unicode names.
pub async fn round_trip_every_output_kind(h: Harness) {
    let tree = OutputTree::sample(fresh_seed(), h.capabilities.symlinks);
    let key = store_tree(&h, &tree).await;
    assert!(check(&h, &key, CachePolicy::Normal).await.hit);
    let (ws, _) = restore_and_compare(&h, &key, &tree, "restored tree").await;
    assert!(ws.escaping_symlinks().is_empty());
}

/// `restore_outputs` returns each output: files naming the restored file with the blob
/// that was verified, directories, symlinks with their targets.
pub async fn round_trip_returned_outputs(h: Harness) {
    let tree = OutputTree::sample(fresh_seed(), h.capabilities.symlinks);
    let key = store_tree(&h, &tree).await;
    let (ws, outputs) = restore_and_compare(&h, &key, &tree, "restored tree").await;
    let root = std::fs::canonicalize(ws.root()).expect("canonicalize");
    assert_eq!(
        outputs.len(),
        tree.outputs().len(),
        "one returned output per stored output: {outputs:?}"
    );
    let blobs = returned_blobs(&outputs);
    for stored in tree.outputs() {
        let got = outputs
            .iter()
            .find(|o| o.path == stored.path)
            .unwrap_or_else(|| panic!("{:?} is not among the returned outputs", stored.path));
        match (&stored.content, &got.content) {
            (OutputContent::Bytes(bytes), OutputContent::File { path, blob, .. }) => {
                assert_eq!(
                    got.is_executable, stored.is_executable,
                    "{}: exec bit",
                    stored.path
                );
                let blob = blob.unwrap_or_else(|| panic!("{}: no blob returned", stored.path));
                assert_eq!(blobs.get(&stored.path), Some(&blob));
                assert_eq!(blob.size, bytes.len() as u64, "{}: size", stored.path);
                assert_eq!(
                    blob.digest,
                    blob.digest.algorithm().digest(bytes),
                    "{}: the returned digest is not the content's",
                    stored.path
                );
                let path = std::fs::canonicalize(path).expect("the returned file exists");
                assert_eq!(
                    path,
                    root.join(&stored.path),
                    "{}: returned path",
                    stored.path
                );
            }
            (OutputContent::Directory, OutputContent::Directory)
            | (OutputContent::Symlink { .. }, OutputContent::Symlink { .. })
                if stored.content == got.content => {}
            (want, got) => panic!("{}: stored {want:?}, returned {got:?}", stored.path),
        }
    }
}

/// 1,000 small files in 20 directories (one in seven executable) round-trip.
pub async fn round_trip_1000_small_files(h: Harness) {
    let seed = fresh_seed();
    let mut tree = OutputTree::new();
    for i in 0..1000 {
        tree = tree.file(
            &format!("many/d{:02}/f{i:04}.txt", i % 20),
            format!("small file {i} of {seed}\n"),
            i % 7 == 0,
        );
    }
    let key = store_tree(&h, &tree).await;
    restore_and_compare(&h, &key, &tree, "1,000 files").await;
}

/// A 256 MiB file handed to `store` as a path on disk (streamed) comes back exactly,
/// next to a small executable one.
pub async fn round_trip_256mib_file_from_disk(h: Harness) {
    let sources = tempfile::tempdir().expect("create a temporary directory");
    let big = sources.path().join("big.bin");
    let small = sources.path().join("run.sh");
    let seed = fresh_seed();
    let (big_blob, small_blob) = {
        let (big, small) = (big.clone(), small.clone());
        tokio::task::spawn_blocking(move || {
            let b = write_pattern_file(&big, seed, 256 << 20).expect("write the big file");
            let s = write_pattern_file(&small, seed ^ 1, 100).expect("write the small file");
            (b, s)
        })
        .await
        .expect("write sources")
    };
    let tree = OutputTree::new()
        .file_on_disk("target/release/big.bin", &big, big_blob, false)
        .file_on_disk("target/run.sh", &small, small_blob, true);
    let key = store_tree(&h, &tree).await;
    let (_ws, outputs) = restore_and_compare(&h, &key, &tree, "256 MiB round trip").await;
    let blobs = returned_blobs(&outputs);
    assert_eq!(
        blobs.get("target/release/big.bin").map(|b| b.size),
        Some(256 << 20),
        "returned blob of the big file"
    );
}

/// The order stdout and stderr were written in comes back with the hit (inline logs
/// and blob logs alike); an order that does not add up to the logs is the caller's
/// error and stores nothing.
pub async fn round_trip_log_order(h: Harness) {
    use cache_core::LogStream::{Stderr, Stdout};
    use cache_core::storage::LogChunk;
    let chunk = |stream, len| LogChunk { stream, len };
    let big = pattern_bytes(fresh_seed(), INLINE_LOG_MAX + 10);
    for (out, err) in [
        (b"one\nthree\n".to_vec(), b"two\n".to_vec()),
        (big.clone(), b"warning\n".to_vec()),
    ] {
        let key = fresh_key();
        let half = (out.len() / 2) as u64;
        let order = vec![
            chunk(Stdout, half),
            chunk(Stderr, err.len() as u64),
            chunk(Stdout, out.len() as u64 - half),
        ];
        let entry = CacheEntry {
            stdout: Some(out.clone()),
            stderr: Some(err.clone()),
            log_order: order.clone(),
            ..CacheEntry::default()
        };
        store(&h, &key, &entry).await;
        let digest = cache_core::Digest::parse(&key).expect("key");
        let hit = expect_ok(
            h.backend
                .lookup(&task(), &digest, CachePolicy::Normal)
                .await,
            "lookup",
        )
        .expect("a hit");
        assert_eq!(hit.log_order(), &order[..], "the log order");
        let (o, e) = expect_ok(hit.logs().await, "logs");
        assert_eq!((o, e), (Some(out), Some(err)));
    }
    let key = fresh_key();
    let wrong = CacheEntry {
        stdout: Some(b"abc".to_vec()),
        log_order: vec![chunk(Stdout, 2)],
        ..CacheEntry::default()
    };
    let e = h
        .backend
        .store(&task(), &key, &wrong, CachePolicy::Normal)
        .await
        .expect_err("an order that misdescribes the logs");
    assert!(!e.is_cache_fault(), "the caller's fault: {e}");
    assert!(
        !check(&h, &key, CachePolicy::Normal).await.hit,
        "nothing stored"
    );
}
