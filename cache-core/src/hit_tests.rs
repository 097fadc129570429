//! Unit tests of `hit.rs` (kept apart so the module stays readable).

use super::*;

/// Restores a 256 MiB sparse blob whose bytes are not what its record says and
/// prints the error kind (run in a child process with a small file-size limit).
#[cfg(unix)]
fn restore_sparse_blob_and_report(dir: &Path) {
    let ws_root = dir.join("ws");
    std::fs::create_dir_all(&ws_root).unwrap();
    let ws = Workspace::open(&ws_root).unwrap();
    // Made by the parent, outside the limit: 256 MiB of holes, no disk in the cache.
    let blob_path = dir.join("blob");
    assert!(looks_sparse(&std::fs::File::open(&blob_path).unwrap()));
    let claimed = BlobRef {
        digest: crate::DigestAlgorithm::Blake3.digest(b"not zeros"),
        size: 256 << 20,
    };
    let out = FileOut {
        rel: RelPath::parse("big.bin").unwrap(),
        blob: claimed,
        executable: false,
    };
    let e = write_one(&ws, &out, BlobSource::File(blob_path)).unwrap_err();
    println!("RESULT {}", e.kind());
    assert_eq!(
        std::fs::read_dir(&ws_root).unwrap().count(),
        0,
        "nothing written"
    );
}

/// The restore runs under a file-size limit far below the blob's length: writing
/// the holes out before checking them (the old way) fails on the limit; checking
/// first finds the mismatch without writing a byte.
#[cfg(unix)]
#[test]
fn a_sparse_blob_with_wrong_bytes_is_refused_before_it_is_written() {
    const CHILD: &str = "TASKCACHE_SPARSE_CHILD_DIR";
    if let Some(dir) = std::env::var_os(CHILD) {
        restore_sparse_blob_and_report(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::File::create(dir.path().join("blob"))
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    // `ulimit -f` is in blocks of 512 or 1,024 bytes: 16 MiB at most either way.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 16384 && exec \"$0\" \"$@\"")
        .arg(&exe)
        .args([
            "--exact",
            "hit::tests::a_sparse_blob_with_wrong_bytes_is_refused_before_it_is_written",
            "--nocapture",
        ])
        .env(CHILD, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("RESULT digest_mismatch"),
        "the blob was written out before it was checked: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Dense files are not checked twice.
    let dense = dir.path().join("dense");
    std::fs::write(&dense, vec![1u8; 2 << 20]).unwrap();
    assert!(!looks_sparse(&std::fs::File::open(&dense).unwrap()));
}

#[test]
fn runs_cover_everything_in_order_and_balance() {
    for (weights, parts) in [
        (vec![1u64; 10], 2usize),
        (vec![1; 3], 4),
        (vec![100, 1, 1, 1, 1], 2),
        (vec![1, 1, 1, 1, 100], 2),
        (vec![5; 7], 3),
        (vec![], 2),
    ] {
        let runs = split_runs(&weights, parts);
        assert_eq!(runs.iter().sum::<usize>(), weights.len(), "{weights:?}");
        assert!(runs.iter().all(|&n| n > 0), "{weights:?}: {runs:?}");
        assert!(runs.len() <= parts, "{weights:?}: {runs:?}");
    }
    assert_eq!(split_runs(&[1; 10], 2), vec![5, 5]);
    // Sizes come from the cache: huge ones neither overflow nor panic.
    let huge = [u64::MAX / 2 + 1, u64::MAX / 2 + 1, u64::MAX];
    assert_eq!(split_runs(&huge, 2).iter().sum::<usize>(), 3);
    assert_eq!(split_runs(&[100, 1, 1, 1, 1], 2), vec![1, 4]);
}
