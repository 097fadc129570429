//! Hostile and corrupt data, planted through the backend's [`crate::Tamper`] hook.
//!
//! Every hostile path the suite plants stays below the temporary directory that holds
//! the workspace, so even a broken backend cannot write anywhere else.

use super::common::{blob_algorithm, check, restore, returned_blobs, store, try_restore};
use crate::Harness;
use crate::fixtures::{
    OutputTree, TempWorkspace, digest, empty_record, expect_err, expect_ok, fresh_key, fresh_seed,
    garbage_entries, pattern_bytes, task, write_pattern_file,
};
use cache_core::storage::{ActionRecord, LogRecord, MAX_ENTRY_BYTES, OutputRecord};
use cache_core::{BlobRef, CacheEntry, CachePolicy};

/// Errors a refused hostile entry may give: refused at lookup (the three-call
/// `restore_outputs` then finds no hit), or by the workspace writer.
const REFUSED: &[&str] = &["corrupt_entry", "unsafe_path", "action_not_found"];

/// What the three-call form says about an entry that cannot be served: its lookup
/// already refused it (no hit), or the read failed.
const UNSERVABLE: &[&str] = &["corrupt_entry", "action_not_found"];

/// Plants `outputs` as a well-formed (checksummed) entry under a fresh key.
async fn plant(h: &Harness, outputs: Vec<OutputRecord>) -> String {
    let key = fresh_key();
    let mut record = empty_record(&digest(&key));
    record.outputs = outputs;
    plant_record(h, &key, &record).await;
    key
}

async fn plant_record(h: &Harness, key: &str, record: &ActionRecord) {
    let bytes = record.encode().expect("encode a hostile record");
    expect_ok(
        h.tamper.write_raw_entry(&digest(key), bytes).await,
        "Tamper::write_raw_entry",
    );
}

/// Stores `bytes` as a file and returns the backend's address for it.
async fn stored_blob(h: &Harness, bytes: Vec<u8>) -> BlobRef {
    let tree = OutputTree::new().file("blob.bin", bytes, false);
    let key = fresh_key();
    store(h, &key, &tree.entry()).await;
    let ws = TempWorkspace::new();
    let outputs = restore(h, &key, &ws).await;
    returned_blobs(&outputs)["blob.bin"]
}

/// A workspace with some content, for refusals to leave alone.
fn populated_workspace() -> TempWorkspace {
    let ws = TempWorkspace::new();
    ws.write("existing.txt", b"existing", false);
    ws.mkdir("fine");
    ws
}

/// Restoring `key` must be refused with one of `kinds`, change nothing in the
/// workspace, write nothing outside it and leave no symlink leading out.
async fn assert_refused(h: &Harness, key: &str, kinds: &[&str], what: &str) {
    let ws = populated_workspace();
    let before = ws.tree();
    let e = expect_err(try_restore(h, key, ws.root()).await, kinds, what);
    assert!(!e.to_string().is_empty());
    ws.tree_async().await.assert_same(
        &before,
        &format!("{what}: workspace after a refused restore"),
    );
    ws.assert_outside_unchanged();
}

/// For entries that are refused as a whole: restore, logs and lookups all refuse them.
async fn assert_entry_refused(h: &Harness, key: &str, what: &str) {
    assert_refused(h, key, REFUSED, what).await;
    expect_err(
        h.backend.get_log_bytes(&task(), key).await,
        &["corrupt_entry", "unsafe_path", "action_not_found"],
        &format!("{what}: get_log_bytes"),
    );
    for policy in [
        CachePolicy::Readonly,
        CachePolicy::Normal,
        CachePolicy::Normal,
    ] {
        assert!(!check(h, key, policy).await.hit, "{what}: check must miss");
    }
}

fn hostile_outputs(path: &str, blob: BlobRef) -> [(&'static str, OutputRecord); 3] {
    [
        ("directory", OutputRecord::Directory { path: path.into() }),
        (
            "file",
            OutputRecord::File {
                path: path.into(),
                blob,
                executable: true,
            },
        ),
        (
            "symlink",
            OutputRecord::Symlink {
                path: path.into(),
                target: "fine".into(),
            },
        ),
    ]
}

fn fine_outputs(blob: BlobRef) -> Vec<OutputRecord> {
    vec![
        OutputRecord::Directory {
            path: "fine/dir".into(),
        },
        OutputRecord::File {
            path: "fine/ok.txt".into(),
            blob,
            executable: false,
        },
    ]
}

async fn refuse_paths(h: &Harness, paths: &[String]) {
    let blob = stored_blob(h, format!("hostile {}", fresh_seed()).into_bytes()).await;
    for path in paths {
        for (kind, hostile) in hostile_outputs(path, blob) {
            let mut outputs = fine_outputs(blob);
            outputs.push(hostile);
            let key = plant(h, outputs).await;
            assert_entry_refused(h, &key, &format!("{kind} output {path:?}")).await;
        }
    }
}

/// Entries naming paths with `..` (directories, files, symlinks) are refused whole:
/// nothing is written, in the workspace or outside it.
pub async fn hostile_parent_dir_paths(h: Harness) {
    let paths = [
        "../escape",
        "a/../../escape",
        "..",
        "./../escape",
        "fine/../../escape",
    ];
    refuse_paths(&h, &paths.map(String::from)).await;
}

/// Entries naming absolute paths (Unix and Windows forms) are refused whole.
pub async fn hostile_absolute_paths(h: Harness) {
    let ws = TempWorkspace::new();
    let base = ws.base().display().to_string();
    let paths = [
        format!("{base}/abs-escape"),
        format!("{base}/outside/sentinel.txt"),
        format!("{base}/outside/new"),
        format!("/{base}/outside/new"),
        "\\abs-escape".to_owned(),
        "C:\\abs-escape".to_owned(),
        "C:abs-escape".to_owned(),
        "\\\\server\\share\\escape".to_owned(),
        "fine\\..\\..\\escape".to_owned(),
        "fine/nul\0byte".to_owned(),
        String::new(),
    ];
    refuse_paths(&h, &paths).await;
    // The absolute paths point beside `ws`, not beside the workspaces restored into.
    ws.assert_outside_unchanged();
}

/// Symlink outputs whose targets leave the workspace (`..` too far, absolute) are
/// refused whole.
pub async fn hostile_symlink_targets_leaving_workspace(h: Harness) {
    let blob = stored_blob(&h, format!("hostile {}", fresh_seed()).into_bytes()).await;
    let ws = TempWorkspace::new();
    let outside = ws.outside().display().to_string();
    let links = [
        ("link", "../outside".to_owned()),
        ("link", "../outside/sentinel.txt".to_owned()),
        ("link", "..".to_owned()),
        ("link", "../".to_owned()),
        ("link", "fine/../../outside".to_owned()),
        ("fine/link", "../../outside".to_owned()),
        ("fine/dir/link", "../../../outside/sub".to_owned()),
        ("link", outside.clone()),
        ("link", format!("{outside}/sentinel.txt")),
        ("link", "C:\\outside".to_owned()),
        ("link", "..\\outside".to_owned()),
        ("link", String::new()),
    ];
    for (path, target) in links {
        let mut outputs = fine_outputs(blob);
        outputs.push(OutputRecord::Symlink {
            path: path.into(),
            target: target.clone(),
        });
        let key = plant(&h, outputs).await;
        assert_entry_refused(&h, &key, &format!("symlink {path} -> {target:?}")).await;
    }
}

/// Symlinks that each stay inside lexically but together lead out (a link to `.` or
/// `..` that a second link climbs through) are refused: the restore fails and no
/// symlink in the workspace leads outside.
pub async fn hostile_symlink_chains_leaving_workspace(h: Harness) {
    if !h.capabilities.symlinks {
        return;
    }
    let link = |path: &str, target: &str| OutputRecord::Symlink {
        path: path.into(),
        target: target.into(),
    };
    let chains = [
        vec![link("a", "."), link("a/l", "../outside")],
        vec![link("x/y", ".."), link("x/y/l", "../outside")],
        vec![link("b", "."), link("l", "b/../outside")],
        vec![link("l", "b/../outside"), link("b", ".")],
        vec![link("c", "fine/.."), link("l", "c/../outside")],
        vec![
            OutputRecord::Directory { path: "d".into() },
            link("d/up", ".."),
            link("d/up/l", "../outside"),
        ],
    ];
    for chain in chains {
        let what = format!("symlink chain {chain:?}");
        let key = plant(&h, chain).await;
        let ws = populated_workspace();
        let r = try_restore(&h, &key, ws.root()).await;
        let escaping = ws.escaping_symlinks();
        assert!(
            escaping.is_empty(),
            "{what}: the restore ({}) left symlinks leading outside the workspace: {escaping:?}",
            match &r {
                Ok(_) => "reported success".to_owned(),
                Err(e) => format!("failed: {e}"),
            }
        );
        expect_err(r, REFUSED, &what);
        ws.assert_outside_unchanged();
    }
}

/// A workspace symlink leading outside is never written through, whatever the entry
/// puts below it (file, directory, symlink), and the refusal writes nothing at all.
pub async fn hostile_existing_symlink_to_outside(h: Harness) {
    if !h.capabilities.symlinks {
        return;
    }
    let blob = stored_blob(&h, format!("hostile {}", fresh_seed()).into_bytes()).await;
    let ok = OutputRecord::File {
        path: "ok.txt".into(),
        blob,
        executable: false,
    };
    let cases = [
        OutputRecord::File {
            path: "out/f.txt".into(),
            blob,
            executable: false,
        },
        OutputRecord::File {
            path: "out/sub/deep.txt".into(),
            blob,
            executable: false,
        },
        OutputRecord::Directory {
            path: "out/newdir".into(),
        },
        OutputRecord::Directory { path: "out".into() },
        OutputRecord::Symlink {
            path: "out/l".into(),
            target: "x".into(),
        },
    ];
    for hostile in cases {
        let what = format!("{hostile:?} below a symlink to outside");
        let key = plant(&h, vec![ok.clone(), hostile]).await;
        let ws = TempWorkspace::new();
        #[cfg(unix)]
        ws.symlink("out", "../outside");
        let before = ws.tree();
        expect_err(
            try_restore(&h, &key, ws.root()).await,
            &["unsafe_path"],
            &what,
        );
        ws.tree()
            .assert_same(&before, &format!("{what}: nothing may be written"));
        ws.assert_outside_unchanged();
    }
}

/// Garbage where an entry should be (empty, random, bad header, failed checksum,
/// truncated, trailing bytes, undecodable, another key's entry, a declared length of
/// 2^40 elements): `check` misses, restore and logs are `CorruptEntry`, nothing panics.
pub async fn hostile_garbage_entries(h: Harness) {
    let count = garbage_entries(&digest(&fresh_key())).len();
    for i in 0..count {
        let key = fresh_key();
        let (name, bytes) = garbage_entries(&digest(&key)).swap_remove(i);
        expect_ok(
            h.tamper.write_raw_entry(&digest(&key), bytes).await,
            "Tamper::write_raw_entry",
        );
        assert_refused(&h, &key, UNSERVABLE, name).await;
        expect_err(
            h.backend.get_log_bytes(&task(), &key).await,
            UNSERVABLE,
            &format!("{name}: get_log_bytes"),
        );
        for policy in [
            CachePolicy::Readonly,
            CachePolicy::Normal,
            CachePolicy::Normal,
        ] {
            assert!(
                !check(&h, &key, policy).await.hit,
                "{name}: check must miss"
            );
        }
    }
}

/// An entry over [`MAX_ENTRY_BYTES`] is refused without being decoded.
pub async fn hostile_oversized_entry(h: Harness) {
    let key = fresh_key();
    let mut bytes = vec![0u8; MAX_ENTRY_BYTES + 1];
    bytes[..5].copy_from_slice(b"TCAR\x01");
    expect_ok(
        h.tamper.write_raw_entry(&digest(&key), bytes).await,
        "Tamper::write_raw_entry",
    );
    assert_refused(&h, &key, UNSERVABLE, "oversized entry").await;
    assert!(!check(&h, &key, CachePolicy::Normal).await.hit);
}

/// Files and logs whose recorded size is huge (the digest is of a real, small blob):
/// refused without allocating or writing that much, no file or temporary left.
pub async fn hostile_huge_declared_blob_size(h: Harness) {
    let bytes = format!("small {}", fresh_seed()).into_bytes();
    let real = stored_blob(&h, bytes).await;
    // A hit whose log is declared huge is refused by size (`log_too_large`).
    let kinds = &[
        "blob_not_found",
        "digest_mismatch",
        "corrupt_entry",
        "action_not_found",
        "log_too_large",
    ];
    for size in [u64::MAX, u64::MAX / 2, 1 << 40, real.size + 1] {
        let huge = BlobRef {
            digest: real.digest,
            size,
        };
        let key = plant(
            &h,
            vec![OutputRecord::File {
                path: "big.bin".into(),
                blob: huge,
                executable: false,
            }],
        )
        .await;
        let what = format!("file declared {size} bytes");
        expect_ok(
            h.backend.check(&task(), &key, CachePolicy::Normal).await,
            &what,
        );
        assert_refused(&h, &key, kinds, &what).await;

        let key = fresh_key();
        let mut record = empty_record(&digest(&key));
        record.stdout = LogRecord::Blob(huge);
        plant_record(&h, &key, &record).await;
        expect_err(
            h.backend.get_log_bytes(&task(), &key).await,
            kinds,
            &format!("log declared {size} bytes"),
        );
    }
}

/// Stores a unique file, restores it once, and returns (key, tree, its blob).
async fn stored_file(h: &Harness, len: usize) -> (String, OutputTree, BlobRef) {
    let tree = OutputTree::new()
        .file("data/f.bin", pattern_bytes(fresh_seed(), len), false)
        .file("data/other.txt", format!("other {}", fresh_seed()), false);
    let key = fresh_key();
    store(h, &key, &tree.entry()).await;
    let ws = TempWorkspace::new();
    let outputs = restore(h, &key, &ws).await;
    (key, tree, returned_blobs(&outputs)["data/f.bin"])
}

/// A flipped byte in a stored blob gives `DigestMismatch`; the file in the workspace
/// keeps its old content (or is never created), and no temporary file is left.
pub async fn hostile_flipped_blob_byte(h: Harness) {
    let (key, tree, blob) = stored_file(&h, 64 << 10).await;
    expect_ok(
        h.tamper.flip_blob_byte(&blob).await,
        "Tamper::flip_blob_byte",
    );

    let ws = TempWorkspace::new();
    ws.write("data/f.bin", b"old content", true);
    let before = ws.tree();
    expect_err(
        try_restore(&h, &key, ws.root()).await,
        &["digest_mismatch"],
        "restore of a flipped blob",
    );
    let after = ws.tree_async().await;
    assert_eq!(
        after.get("data/f.bin"),
        before.get("data/f.bin"),
        "the old file must be left as it was"
    );
    assert!(
        after.temporaries().is_empty(),
        "temporaries left: {:?}",
        after.temporaries()
    );
    for (path, node) in &after.nodes {
        if before.get(path).is_none() {
            assert_eq!(
                tree.expected().get(path),
                Some(node),
                "{path} is not what was stored"
            );
        }
    }

    let fresh = TempWorkspace::new();
    expect_err(
        try_restore(&h, &key, fresh.root()).await,
        &["digest_mismatch", "blob_not_found", "action_not_found"],
        "second restore of a flipped blob",
    );
    let after = fresh.tree_async().await;
    assert!(
        after.get("data/f.bin").is_none(),
        "a corrupt file reached the workspace"
    );
    assert!(after.temporaries().is_empty());
    fresh.assert_outside_unchanged();
}

/// A flipped byte in an 8 MiB blob streamed from disk: `DigestMismatch` after the
/// bytes were streamed, and neither the file nor its temporary is left behind.
pub async fn hostile_flipped_big_blob_leaves_no_temp_file(h: Harness) {
    let sources = tempfile::tempdir().expect("create a temporary directory");
    let path = sources.path().join("big.bin");
    let seed = fresh_seed();
    let blob = tokio::task::spawn_blocking({
        let path = path.clone();
        move || write_pattern_file(&path, seed, 8 << 20).expect("write")
    })
    .await
    .expect("write a source file");
    let tree = OutputTree::new().file_on_disk("out/big.bin", &path, blob, false);
    let key = fresh_key();
    store(&h, &key, &tree.entry()).await;
    let ws = TempWorkspace::new();
    let outputs = restore(&h, &key, &ws).await;
    let stored = returned_blobs(&outputs)["out/big.bin"];
    expect_ok(
        h.tamper.flip_blob_byte(&stored).await,
        "Tamper::flip_blob_byte",
    );
    let ws = TempWorkspace::new();
    expect_err(
        try_restore(&h, &key, ws.root()).await,
        &["digest_mismatch"],
        "restore of a flipped 8 MiB blob",
    );
    let after = ws.tree_async().await;
    assert!(
        after.get("out/big.bin").is_none(),
        "a corrupt file reached the workspace"
    );
    assert!(
        after.temporaries().is_empty(),
        "temporaries left: {:?}",
        after.temporaries()
    );
    ws.assert_outside_unchanged();
}

/// A flipped byte in a stored log gives `DigestMismatch` from `get_logs`.
pub async fn hostile_flipped_log_blob(h: Harness) {
    let algorithm = blob_algorithm(&h).await;
    let stdout = pattern_bytes(fresh_seed(), 100 << 10);
    let key = fresh_key();
    let entry = CacheEntry {
        stdout: Some(stdout.clone()),
        stderr: Some(b"small".to_vec()),
        ..CacheEntry::default()
    };
    store(&h, &key, &entry).await;
    expect_ok(
        h.tamper
            .flip_blob_byte(&BlobRef::of(algorithm, &stdout))
            .await,
        "Tamper::flip_blob_byte of the stdout blob",
    );
    expect_err(
        h.backend.get_log_bytes(&task(), &key).await,
        &["digest_mismatch"],
        "get_log_bytes of a flipped log",
    );
    expect_err(
        h.backend.get_logs(&task(), &key).await,
        &["digest_mismatch", "blob_not_found", "action_not_found"],
        "get_logs of a flipped log",
    );
}

/// Stores an entry with one file and a stdout log blob, restores it once, then flips
/// a byte of both blobs: (key, tree, entry, stdout).
async fn stored_then_flipped(h: &Harness) -> (String, OutputTree, CacheEntry, Vec<u8>) {
    let algorithm = blob_algorithm(h).await;
    let tree = OutputTree::new().file("data/f.bin", pattern_bytes(fresh_seed(), 4 << 10), false);
    let stdout = pattern_bytes(fresh_seed(), 100 << 10);
    let entry = CacheEntry {
        stdout: Some(stdout.clone()),
        ..tree.entry()
    };
    let key = fresh_key();
    store(h, &key, &entry).await;
    let ws = TempWorkspace::new();
    let blob = returned_blobs(&restore(h, &key, &ws).await)["data/f.bin"];
    expect_ok(h.tamper.flip_blob_byte(&blob).await, "flip the file blob");
    let log_blob = BlobRef::of(algorithm, &stdout);
    expect_ok(
        h.tamper.flip_blob_byte(&log_blob).await,
        "flip the log blob",
    );
    (key, tree, entry, stdout)
}

/// After a flipped blob was detected, storing the same entry again repairs it (the
/// backend dropped its corrupt copy instead of keeping it as "already stored").
pub async fn hostile_flipped_blob_is_repaired_by_next_store(h: Harness) {
    let (key, tree, entry, stdout) = stored_then_flipped(&h).await;
    // One hit, found before either corruption is noticed: its restore and its logs
    // each meet one flipped blob.
    let hit = expect_ok(
        h.backend
            .lookup(&task(), &digest(&key), CachePolicy::Normal)
            .await,
        "lookup",
    )
    .expect("both blobs are present: a hit");
    let ws = TempWorkspace::new();
    expect_err(
        hit.restore(ws.root()).await,
        &["digest_mismatch"],
        "restore of a flipped blob",
    );
    expect_err(
        hit.logs().await,
        &["digest_mismatch"],
        "logs of a flipped blob",
    );
    // Both corrupt copies are gone: the entry is a miss until it is stored again.
    assert!(!check(&h, &key, CachePolicy::Normal).await.hit);
    store(&h, &key, &entry).await;
    let ws = TempWorkspace::new();
    restore(&h, &key, &ws).await;
    ws.tree_async()
        .await
        .assert_same(tree.expected(), "restore after the repairing store");
    let (out, _) = expect_ok(h.backend.get_log_bytes(&task(), &key).await, "logs");
    assert!(
        out.as_deref() == Some(&stdout[..]),
        "logs after the repairing store differ"
    );
}

/// A read-only caller that meets a flipped blob reports it and deletes nothing: the
/// restore and the logs fail verification, the corrupt copies stay where they are (the
/// entry is still a hit for the next reader), and only a caller that may write removes
/// them.
pub async fn hostile_flipped_blob_readonly_deletes_nothing(h: Harness) {
    let (key, _, _, _) = stored_then_flipped(&h).await;
    for round in 0..2 {
        let hit = expect_ok(
            h.backend
                .lookup(&task(), &digest(&key), CachePolicy::Readonly)
                .await,
            "read-only lookup",
        )
        .unwrap_or_else(|| panic!("round {round}: a read-only reader removed a blob"));
        let ws = TempWorkspace::new();
        expect_err(
            hit.restore(ws.root()).await,
            &["digest_mismatch"],
            "read-only restore of a flipped blob",
        );
        assert!(
            ws.tree_async().await.get("data/f.bin").is_none(),
            "a corrupt file reached the workspace"
        );
        expect_err(
            hit.logs().await,
            &["digest_mismatch"],
            "read-only logs of a flipped blob",
        );
    }
    // A caller that may write removes them.
    let hit = expect_ok(
        h.backend
            .lookup(&task(), &digest(&key), CachePolicy::Normal)
            .await,
        "lookup",
    )
    .expect("the corrupt blobs are still present: a hit");
    let ws = TempWorkspace::new();
    expect_err(
        hit.restore(ws.root()).await,
        &["digest_mismatch"],
        "restore of a flipped blob",
    );
    assert!(!check(&h, &key, CachePolicy::Normal).await.hit);
}

/// An entry whose file blob is gone reads as a miss, and restoring it is a clear
/// error, never a success with files missing.
pub async fn hostile_deleted_blob(h: Harness) {
    let (key, _tree, blob) = stored_file(&h, 10 << 10).await;
    expect_ok(h.tamper.delete_blob(&blob).await, "Tamper::delete_blob");
    for policy in [CachePolicy::Readonly, CachePolicy::Normal] {
        assert!(
            !check(&h, &key, policy).await.hit,
            "an entry with a missing blob must miss"
        );
    }
    let ws = TempWorkspace::new();
    expect_err(
        try_restore(&h, &key, ws.root()).await,
        &["blob_not_found", "action_not_found"],
        "restore with a missing blob",
    );
    let after = ws.tree_async().await;
    assert!(after.get("data/f.bin").is_none());
    assert!(after.temporaries().is_empty());
    ws.assert_outside_unchanged();
}

/// An entry whose log blob is gone reads as a miss, and its logs are a clear error.
pub async fn hostile_deleted_log_blob(h: Harness) {
    let algorithm = blob_algorithm(&h).await;
    let stdout = pattern_bytes(fresh_seed(), 100 << 10);
    let key = fresh_key();
    let entry = CacheEntry {
        stdout: Some(stdout.clone()),
        ..CacheEntry::default()
    };
    store(&h, &key, &entry).await;
    expect_ok(
        h.tamper.delete_blob(&BlobRef::of(algorithm, &stdout)).await,
        "Tamper::delete_blob of the stdout blob",
    );
    assert!(!check(&h, &key, CachePolicy::Normal).await.hit, "must miss");
    expect_err(
        h.backend.get_log_bytes(&task(), &key).await,
        &["blob_not_found", "action_not_found"],
        "logs with a missing blob",
    );
}
