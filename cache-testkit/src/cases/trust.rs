//! The trust boundary: what a cache writer may not make a reader do, whatever it
//! stores. Entries are planted through [`crate::Tamper`], so every backend is tried
//! with bytes no honest writer would produce.

use super::common::{Warnings, check, store, try_restore};
use crate::Harness;
use crate::fixtures::{
    OutputTree, TempWorkspace, digest, empty_record, expect_err, expect_ok, fresh_key, fresh_seed,
    pattern_bytes, task,
};
use cache_core::storage::{LogRecord, MAX_OUTPUTS, OutputRecord};
use cache_core::{
    BlobRef, CacheEntry, CachePolicy, Fault, MAX_LOG_BYTES, MAX_PATH_DEPTH, Task, TaskOutput,
};
use std::sync::Arc;

/// A task declaring these outputs.
fn declaring(outputs: &[&str]) -> Task {
    let mut t = task();
    t.outputs = outputs
        .iter()
        .map(|p| TaskOutput {
            path: (*p).to_owned(),
            kind: cache_core::OutputType::Cas,
        })
        .collect();
    t
}

/// A hit writes only what its task declares. An entry that also lists another path
/// (an executable git hook, a Makefile, a sibling whose name extends a declared one)
/// is refused whole, as a miss, writing nothing; within the declared outputs (a file,
/// a directory and what lies below it, the directories above them) it is a hit.
pub async fn hostile_undeclared_outputs(h: Harness) {
    let seed = fresh_seed();
    let honest = OutputTree::new()
        .dir("build")
        .file("build/out.txt", pattern_bytes(seed, 100), false)
        .file("dist/app/main.js", pattern_bytes(seed + 1, 200), false)
        .symlink("dist/latest", "app");
    let task = declaring(&["build/out.txt", "dist"]);
    let key = fresh_key();
    // The task's own store of what it declares (and the directory above it).
    expect_ok(
        h.backend
            .store(&task, &key, &honest.entry(), CachePolicy::Normal)
            .await,
        "store of declared outputs",
    );
    let hit = expect_ok(
        h.backend
            .lookup(&task, &digest(&key), CachePolicy::Normal)
            .await,
        "lookup of declared outputs",
    );
    assert!(hit.is_some(), "every path is declared: a hit");

    for (what, extra) in [
        (
            "a git hook",
            OutputTree::new().file(
                ".git/hooks/post-checkout",
                b"#!/bin/sh\nid\n".to_vec(),
                true,
            ),
        ),
        (
            "a Makefile",
            OutputTree::new().file("Makefile", b"all:\n\tid\n".to_vec(), false),
        ),
        (
            "a name extending a declared one",
            OutputTree::new().file("dist2/x", b"x".to_vec(), false),
        ),
        (
            "a sibling of a declared file",
            OutputTree::new().file("build/other.txt", b"x".to_vec(), false),
        ),
        (
            "a symlink beside a declared file",
            OutputTree::new().symlink("build/link", "out.txt"),
        ),
    ] {
        let mut entry = honest.entry();
        entry.outputs.extend(extra.outputs().iter().cloned());
        let key = fresh_key();
        store(&h, &key, &entry).await;
        for policy in [CachePolicy::Readonly, CachePolicy::Normal] {
            let found = expect_ok(
                h.backend.lookup(&task, &digest(&key), policy).await,
                &format!("{what}: lookup"),
            );
            assert!(
                found.is_none(),
                "{what}: an entry with an undeclared path must miss"
            );
        }
        let ws = TempWorkspace::new();
        expect_err(
            h.backend.restore_outputs(&task, &key, ws.root()).await,
            &["action_not_found", "undeclared_output"],
            &format!("{what}: restore_outputs"),
        );
        assert!(ws.tree().nodes.is_empty(), "{what}: nothing may be written");
        ws.assert_outside_unchanged();
        // The entry stays: it may be another task's result.
        assert!(
            check(&h, &key, CachePolicy::Readonly).await.hit,
            "{what}: a task that declares nothing still reads it"
        );
    }
}

/// A store of outputs the task does not declare is the caller's mistake, refused before
/// anything is written: such an entry could never be restored for the task (every
/// lookup would refuse it, `hostile_undeclared_outputs`: a miss and a warning per run,
/// forever). Nothing is uploaded, no entry exists afterwards, and a later lookup is a
/// plain miss that warns about nothing.
pub async fn store_refuses_undeclared_outputs(h: Harness) {
    let seed = fresh_seed();
    let task = declaring(&["build/out.txt", "dist"]);
    let honest = OutputTree::new()
        .dir("build")
        .file("build/out.txt", pattern_bytes(seed, 100), false)
        .file("dist/app/main.js", pattern_bytes(seed + 1, 5000), false);
    for (what, extra) in [
        (
            "a Makefile",
            OutputTree::new().file("Makefile", b"all:\n".to_vec(), false),
        ),
        (
            "a sibling of a declared file",
            OutputTree::new().file("build/other.txt", b"x".to_vec(), false),
        ),
        (
            "a name extending a declared one",
            OutputTree::new().file("dist2/x", b"x".to_vec(), false),
        ),
        ("a directory beside", OutputTree::new().dir("other")),
        (
            "a symlink beside a declared file",
            OutputTree::new().symlink("build/link", "out.txt"),
        ),
    ] {
        let mut entry = honest.entry();
        let undeclared = extra.outputs()[0].path.clone();
        entry.outputs.extend(extra.outputs().iter().cloned());
        let key = fresh_key();
        for policy in [CachePolicy::Normal, CachePolicy::Writeonly] {
            let before = h.io.snapshot();
            let e = expect_err(
                h.backend.store(&task, &key, &entry, policy).await,
                &["invalid_output"],
                &format!("{what}: store ({policy})"),
            );
            assert_eq!(e.fault(), Fault::Caller, "{what}: the caller's fault: {e}");
            assert!(
                e.to_string().contains(&undeclared),
                "{what}: the error names {undeclared:?}: {e}"
            );
            let io = h.io.snapshot().since(before);
            assert_eq!(io.total(), 0, "{what}: refused before any I/O: {io:?}");
        }
        let warnings = Warnings::on_this_thread();
        let found = expect_ok(
            h.backend
                .lookup(&task, &digest(&key), CachePolicy::Normal)
                .await,
            &format!("{what}: lookup"),
        );
        assert!(found.is_none(), "{what}: nothing was stored");
        assert_eq!(warnings.count(), 0, "{what}: the lookup warned");
        drop(warnings);
        assert!(
            !check(&h, &key, CachePolicy::Readonly).await.hit,
            "{what}: no entry at all, even for a task that declares nothing"
        );
        let raw = expect_ok(
            h.tamper.read_raw_entry(&digest(&key)).await,
            "Tamper::read_raw_entry",
        );
        assert!(raw.is_none(), "{what}: an entry was written");
    }
}

/// An entry written by a newer taskcache (a higher format version) is a miss for this
/// one, with any policy, and is left in place for the version that wrote it.
pub async fn hostile_newer_format_entry_is_left_in_place(h: Harness) {
    let key = fresh_key();
    let mut bytes = empty_record(&digest(&key))
        .encode()
        .expect("encode a record");
    bytes[4] = 200; // a format version from the future
    expect_ok(
        h.tamper.write_raw_entry(&digest(&key), bytes.clone()).await,
        "Tamper::write_raw_entry",
    );
    for policy in [
        CachePolicy::Readonly,
        CachePolicy::Normal,
        CachePolicy::Normal,
    ] {
        assert!(
            !check(&h, &key, policy).await.hit,
            "a newer format must miss"
        );
    }
    let ws = TempWorkspace::new();
    expect_err(
        try_restore(&h, &key, ws.root()).await,
        &["action_not_found", "newer_entry_format"],
        "restore of a newer-format entry",
    );
    let left = expect_ok(h.tamper.read_raw_entry(&digest(&key)).await, "read it back");
    assert!(
        left.as_deref() == Some(&bytes[..]),
        "a newer-format entry was removed or changed by an older reader"
    );
}

/// A log the entry declares at 8 GiB is never read into memory: `Hit::logs` refuses
/// it by its recorded size before reading (a cache fault: the task runs uncached).
pub async fn hostile_huge_declared_log(h: Harness) {
    // A real small log blob, recorded with a huge size.
    let small = pattern_bytes(fresh_seed(), (70 << 10) + 3);
    let key = fresh_key();
    store(
        &h,
        &key,
        &CacheEntry {
            stdout: Some(small.clone()),
            ..CacheEntry::default()
        },
    )
    .await;
    let real = expect_ok(
        h.backend
            .lookup(&task(), &digest(&key), CachePolicy::Readonly)
            .await,
        "lookup",
    )
    .expect("a hit");
    let LogRecord::Blob(blob) = &real.record().stdout else {
        panic!("a 70 KiB log is stored as a blob");
    };
    let mut record = real.record().clone();
    record.stdout = LogRecord::Blob(BlobRef {
        size: 8 << 30,
        ..*blob
    });
    let hostile = fresh_key();
    record.key = digest(&hostile);
    expect_ok(
        h.tamper
            .write_raw_entry(&record.key, record.encode().expect("encode"))
            .await,
        "Tamper::write_raw_entry",
    );
    // Its blob (with that size) is not stored: a miss. Were it there, the logs of the
    // hit would be refused by size; both end with the task running uncached.
    if let Some(hit) = expect_ok(
        h.backend
            .lookup(&task(), &record.key, CachePolicy::Readonly)
            .await,
        "lookup of the hostile entry",
    ) {
        let e = expect_err(hit.logs().await, &["log_too_large"], "logs of 8 GiB");
        assert!(e.is_cache_fault());
    }
    // The bound itself, on the honest hit: a limit below the log's size refuses it.
    let e = expect_err(
        real.logs_up_to(small.len() as u64 - 1).await,
        &["log_too_large"],
        "logs over the caller's limit",
    );
    assert!(e.to_string().contains("limit"), "{e}");
    let (out, _) = expect_ok(
        real.logs_up_to(MAX_LOG_BYTES).await,
        "logs within the limit",
    );
    assert!(out.as_deref() == Some(&small[..]));
}

/// Adversarial entries with valid checksums: more outputs than [`MAX_OUTPUTS`] (each
/// a few bytes encoded, far more decoded), and paths deeper than [`MAX_PATH_DEPTH`]:
/// misses, without a panic, and without decoding past the bound.
pub async fn hostile_adversarial_entries(h: Harness) {
    let key = fresh_key();
    let mut record = empty_record(&digest(&key));
    record.outputs = (0..=MAX_OUTPUTS)
        .map(|i| OutputRecord::Directory {
            path: format!("{i:x}"),
        })
        .collect();
    let bytes = record.encode().expect("encode");
    drop(record);
    expect_ok(
        h.tamper.write_raw_entry(&digest(&key), bytes).await,
        "Tamper::write_raw_entry",
    );
    assert!(
        !check(&h, &key, CachePolicy::Normal).await.hit,
        "too many outputs"
    );

    let key = fresh_key();
    let mut record = empty_record(&digest(&key));
    record.outputs = vec![OutputRecord::Directory {
        path: vec!["d"; MAX_PATH_DEPTH + 1].join("/"),
    }];
    expect_ok(
        h.tamper
            .write_raw_entry(&digest(&key), record.encode().expect("encode"))
            .await,
        "Tamper::write_raw_entry",
    );
    assert!(!check(&h, &key, CachePolicy::Normal).await.hit, "too deep");
    let ws = TempWorkspace::new();
    assert!(try_restore(&h, &key, ws.root()).await.is_err());
    assert!(ws.tree().nodes.is_empty());
}

/// Signed entries: a backend that trusts a key hits only entries signed by it; an
/// unsigned entry, one signed by another key, and a signed entry altered by the cache
/// writer (its exit code, a mode, a log) are misses, left in place. Runs on every
/// backend built on `Cache` (its harness has [`crate::Harness::signing`]).
pub async fn hostile_unsigned_and_forged_entries(h: Harness) {
    use cache_core::sign::SigningKey;
    let Some(make) = h.signing.clone() else {
        // A backend not built on `Cache` has no signing to check.
        return;
    };
    let main = SigningKey::generate().expect("a key");
    let other = SigningKey::generate().expect("a key");
    let reader = make(None, Some(vec![main.public_key()]));
    let signer = make(Some(main.clone()), None);
    let stranger = make(Some(other), None);
    let hit = |key: String| {
        let reader = Arc::clone(&reader);
        async move {
            expect_ok(
                reader
                    .lookup(&task(), &digest(&key), CachePolicy::Readonly)
                    .await,
                "lookup with trusted keys",
            )
        }
    };
    let tree = OutputTree::new().file("out.txt", pattern_bytes(fresh_seed(), 64), false);
    let good = fresh_key();
    expect_ok(
        signer
            .store(&task(), &good, &tree.entry(), CachePolicy::Normal)
            .await,
        "signed store",
    );
    let found = hit(good.clone())
        .await
        .expect("signed by the trusted key: a hit");
    let ws = TempWorkspace::new();
    expect_ok(found.restore(ws.root()).await, "restore a signed hit");
    ws.tree().assert_same(tree.expected(), "signed hit");

    for (who, cache) in [("unsigned", &h.backend), ("another key", &stranger)] {
        let key = fresh_key();
        expect_ok(
            cache
                .store(&task(), &key, &tree.entry(), CachePolicy::Normal)
                .await,
            who,
        );
        assert!(hit(key.clone()).await.is_none(), "{who}: must miss");
        assert!(
            check(&h, &key, CachePolicy::Readonly).await.hit,
            "{who}: left in place"
        );
    }

    let original = found.record().clone();
    let mut altered = [original.clone(), original.clone(), original];
    altered[0].exit_code = 7;
    for o in &mut altered[1].outputs {
        if let OutputRecord::File { executable, .. } = o {
            *executable = !*executable;
        }
    }
    altered[2].stdout = LogRecord::Inline(b"not what ran\n".to_vec());
    for (i, record) in altered.iter().enumerate() {
        expect_ok(
            h.tamper
                .write_raw_entry(&record.key, record.encode().expect("encode"))
                .await,
            "Tamper::write_raw_entry",
        );
        assert!(
            hit(good.clone()).await.is_none(),
            "alteration {i}: must miss"
        );
    }
}

/// Symlinks with absolute targets are stored and restored as link text, never
/// followed, only for a task that opted in; a task that did not cannot store one (the
/// caller's error) and never restores one (a miss, the entry left in place).
pub async fn trust_absolute_symlinks_only_when_opted_in(h: Harness) {
    if !h.capabilities.symlinks {
        return;
    }
    let mut venv = declaring(&["venv"]);
    venv.allow_absolute_symlinks = true;
    let ws = TempWorkspace::new();
    let outside = ws.outside().join("sentinel.txt").display().to_string();
    let entry = CacheEntry {
        outputs: vec![
            cache_core::CacheOutput::directory("venv"),
            cache_core::CacheOutput::directory("venv/bin"),
            cache_core::CacheOutput::symlink("venv/bin/python", "/usr/bin/python3"),
            cache_core::CacheOutput::symlink("venv/bin/out", outside.clone()),
            cache_core::CacheOutput::symlink("venv/bin/pip", "python"),
        ],
        ..CacheEntry::default()
    };
    let key = fresh_key();
    expect_ok(
        h.backend
            .store(&venv, &key, &entry, CachePolicy::Normal)
            .await,
        "store with absolute symlinks (opted in)",
    );
    let plain = declaring(&["venv"]);
    let d = digest(&key);
    // The same key for a task that did not opt in: a miss, and the entry stays.
    let r = h.backend.lookup(&plain, &d, CachePolicy::Normal).await;
    assert!(
        matches!(r, Ok(None)),
        "a task that did not opt in restores no absolute symlink: {r:?}"
    );
    let hit = expect_ok(
        h.backend.lookup(&venv, &d, CachePolicy::Normal).await,
        "lookup (opted in)",
    )
    .expect("the entry is still there for the task that opted in");
    expect_ok(hit.restore(ws.root()).await, "restore");
    let link = |p: &str| std::fs::read_link(ws.root().join(p)).expect("a symlink");
    assert_eq!(link("venv/bin/python").to_str(), Some("/usr/bin/python3"));
    assert_eq!(link("venv/bin/out").to_str(), Some(outside.as_str()));
    assert_eq!(link("venv/bin/pip").to_str(), Some("python"));
    // Restoring again over the links writes through none of them.
    expect_ok(hit.restore(ws.root()).await, "restore again");
    ws.assert_outside_unchanged();
    // Without the opt-in, storing one is refused before anything is written.
    let key = fresh_key();
    let e = h
        .backend
        .store(&plain, &key, &entry, CachePolicy::Normal)
        .await
        .expect_err("an absolute symlink without the opt-in");
    assert!(!e.is_cache_fault(), "the caller's fault: {e}");
    assert!(!check(&h, &key, CachePolicy::Normal).await.hit);
}
