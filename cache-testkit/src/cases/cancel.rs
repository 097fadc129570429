//! Cancellation: a call that is dropped, or that a deadline gives up on, stops writing.
//!
//! Each case holds the backend's blob bytes with the harness's [`crate::Brake`] so the
//! call is caught with its blocking job in the middle of a transfer, drops the call (or
//! lets a [`Deadline`] time it out), lets the bytes go, and checks that the job stopped:
//! nothing changed in the workspace and nothing was published after the call was
//! dropped, the job read no further and let go of its sources, and the next call
//! works (no permit, thread or state was lost).

use super::common::{blob_algorithm, check, restore_and_compare, store, store_tree};
use crate::fixtures::{OutputTree, TempWorkspace, digest, expect_ok, fresh_key, fresh_seed, task};
use crate::{Brake, BrakedStorage, Harness, MemoryStorage};
use cache_core::{
    BackendError, Cache, CacheBackend, CacheEntry, CachePolicy, Deadline, Deadlines, Hit,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long a case waits for something that takes milliseconds (a read to be held, a
/// stopped job to drop its sources): generous, so a slow machine never fails a case.
const WAIT: Duration = Duration::from_secs(60);

/// Reads let through before the brake holds: a few 16 KiB chunks into the third file
/// of [`files`], so some outputs are written and most are not.
const HOLD_AFTER: u64 = 20;

/// Eight 100 KiB files under `out/`, contents from `seed`.
fn files(seed: u64) -> OutputTree {
    (0..8u64).fold(OutputTree::new(), |t, i| {
        t.file(
            &format!("out/f{i}.bin"),
            crate::fixtures::pattern_bytes(seed.wrapping_add(i), 100 << 10),
            false,
        )
    })
}

fn brake_of(h: &Harness) -> &Brake {
    h.brake.as_ref().expect(
        "the cancellation cases need the harness's brake (build it with Harness::from_storage)",
    )
}

async fn hit_of(backend: &dyn CacheBackend, key: &str) -> Hit {
    expect_ok(
        backend
            .lookup(&task(), &digest(key), CachePolicy::Normal)
            .await,
        &format!("lookup {key}"),
    )
    .unwrap_or_else(|| panic!("{key} was just stored, yet lookup missed"))
}

/// What is in a workspace, with modification times (which a late restore would
/// reset): path to (kind and content digest, mtime). Temporary files are listed apart.
#[derive(Debug, PartialEq, Eq)]
struct Stamped {
    nodes: BTreeMap<String, (String, SystemTime)>,
    temporaries: Vec<String>,
}

fn stamped(root: &Path) -> Stamped {
    let mut out = Stamped {
        nodes: BTreeMap::new(),
        temporaries: Vec::new(),
    };
    let mut dirs = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{prefix}{name}");
            if name.starts_with(".taskcache-") {
                out.temporaries.push(rel);
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let kind = if meta.is_dir() {
                dirs.push((entry.path(), format!("{rel}/")));
                "dir".to_owned()
            } else if meta.is_file() {
                let bytes = std::fs::read(entry.path()).unwrap_or_default();
                format!("file {}", blake3::hash(&bytes).to_hex())
            } else {
                "other".to_owned()
            };
            out.nodes.insert(rel, (kind, mtime));
        }
    }
    out
}

async fn stamped_async(root: &Path) -> Stamped {
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || stamped(&root))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Where a dropped call's job stood: reads started and sources held.
#[derive(Debug, Clone, Copy)]
struct AtDrop {
    reads: u64,
    live: u64,
}

/// Polls `call` until the brake holds one of its reads, then drops it (the way an
/// executor's `select!` or abort does).
async fn drop_when_held<T: std::fmt::Debug>(
    brake: &Brake,
    call: impl std::future::Future<Output = T>,
    what: &str,
) -> AtDrop {
    tokio::select! {
        r = call => panic!("{what} ended ({r:?}) before the brake held its bytes"),
        held = brake.stalled(WAIT) => assert!(held, "{what}: no read was held within {WAIT:?}"),
    }
    AtDrop {
        reads: brake.reads(),
        live: brake.live(),
    }
}

/// Lets the held bytes go and waits for the cancelled job to drop its sources; then
/// checks it read no further. Each source may see one read that had passed its job's
/// check when the call was dropped; a job that went on would read the rest of its
/// sources, tens of reads each.
async fn release_and_settle(brake: &Brake, at_drop: AtDrop, what: &str) {
    brake.release();
    assert!(
        brake.idle(WAIT).await,
        "{what}: the cancelled call's job still holds {} source(s) {WAIT:?} after the bytes \
         were released: it did not stop",
        brake.live()
    );
    let more = brake.reads() - at_drop.reads;
    assert!(
        more <= at_drop.live,
        "{what}: the cancelled call's job went on reading after the call was dropped \
         ({more} more reads from {} sources)",
        at_drop.live
    );
}

/// A restore dropped mid-way writes nothing more: once the drop returns no output is
/// placed, replaced or re-timed, the file being written stops and its temporary file
/// goes, and the next restore of the same hit is whole.
pub async fn cancel_restore_dropped_midway(h: Harness) {
    let brake = brake_of(&h);
    let tree = files(fresh_seed());
    let key = store_tree(&h, &tree).await;
    let hit = hit_of(h.backend.as_ref(), &key).await;
    let ws = TempWorkspace::new();
    brake.hold_after(HOLD_AFTER);
    drop_when_held(brake, hit.restore(ws.root()), "a restore").await;
    let at_drop = stamped_async(ws.root()).await;
    brake.release();
    assert!(
        brake.idle(WAIT).await,
        "the dropped restore's job still holds {} source(s) after {WAIT:?}: it did not stop",
        brake.live()
    );
    let after = stamped_async(ws.root()).await;
    assert_eq!(
        after.nodes, at_drop.nodes,
        "the workspace changed after the restore was dropped"
    );
    assert!(
        after.temporaries.is_empty(),
        "the dropped restore left temporary files: {:?}",
        after.temporaries
    );
    assert!(
        at_drop.nodes.len() < tree.expected().nodes.len(),
        "the restore was not caught mid-way (everything was in place when it was dropped)"
    );
    // Nothing leaked: the same hit restores whole now.
    expect_ok(hit.restore(ws.root()).await, "restore after a dropped one");
    ws.tree_async()
        .await
        .assert_same(tree.expected(), "restore after a dropped one");
    ws.assert_outside_unchanged();
}

/// The executor's case (issue 22): a restore times out under [`Deadline`], the
/// executor runs the task and writes its outputs, and whatever the abandoned restore's
/// job does afterwards leaves the task's bytes and times alone.
pub async fn cancel_restore_timed_out_keeps_callers_outputs(h: Harness) {
    let brake = brake_of(&h);
    let tree = files(fresh_seed());
    let key = store_tree(&h, &tree).await;
    // Long enough for a lookup on a loaded machine; the restore is held past it.
    let bounded = Deadline::new(
        Arc::clone(&h.backend),
        Deadlines::new(Duration::from_secs(2)),
        crate::tokio_sleep(),
    );
    let hit = hit_of(&bounded, &key).await;
    let ws = TempWorkspace::new();
    brake.hold_after(HOLD_AFTER);
    let timed_out = hit.restore(ws.root()).await;
    assert!(
        matches!(timed_out, Err(BackendError::Timeout { .. })),
        "a restore held past its deadline: expected a timeout, got {timed_out:?}"
    );
    // The cache failed: the executor runs the task, which writes every output.
    for (i, out) in tree.outputs().iter().enumerate() {
        ws.write(&out.path, format!("fresh run {i}\n").as_bytes(), false);
    }
    let ran = stamped_async(ws.root()).await;
    brake.release();
    assert!(
        brake.idle(WAIT).await,
        "the timed-out restore's job still holds {} source(s) after {WAIT:?}: it did not stop",
        brake.live()
    );
    let after = stamped_async(ws.root()).await;
    assert_eq!(
        after.nodes, ran.nodes,
        "the timed-out restore changed the task's own outputs after the timeout"
    );
    assert!(
        after.temporaries.is_empty(),
        "the timed-out restore left temporary files: {:?}",
        after.temporaries
    );
    // Nothing leaked: a restore without the brake succeeds.
    let fresh = TempWorkspace::new();
    expect_ok(
        hit.restore(fresh.root()).await,
        "restore after a timed-out one",
    );
    fresh
        .tree_async()
        .await
        .assert_same(tree.expected(), "restore after a timed-out one");
}

/// A store dropped while its blobs are being written publishes nothing (the key stays
/// a miss), its jobs stop reading the outputs, and the next store of the key works.
pub async fn cancel_store_dropped_midway(h: Harness) {
    let brake = brake_of(&h);
    let tree = files(fresh_seed());
    let key = fresh_key();
    let entry = tree.entry();
    brake.hold_after(HOLD_AFTER);
    let at_drop = drop_when_held(
        brake,
        h.backend.store(&task(), &key, &entry, CachePolicy::Normal),
        "a store",
    )
    .await;
    release_and_settle(brake, at_drop, "a dropped store").await;
    assert!(
        !check(&h, &key, CachePolicy::Normal).await.hit,
        "a dropped store published its entry"
    );
    store(&h, &key, &entry).await;
    restore_and_compare(&h, &key, &tree, "store after a dropped one").await;
}

/// An import (a hit copied in from another cache) dropped mid-way publishes nothing,
/// stops reading the other cache's blobs, and the next import works.
pub async fn cancel_import_dropped_midway(h: Harness) {
    // The other cache addresses blobs as this one does (an import keeps the refs).
    let algorithm = blob_algorithm(&h).await;
    let source_brake = Brake::new();
    let source = Cache::new(
        BrakedStorage::new(
            MemoryStorage::with_algorithm(algorithm),
            source_brake.clone(),
        ),
        crate::spawn_blocking,
    );
    let tree = files(fresh_seed());
    let key = fresh_key();
    expect_ok(
        source
            .store(&task(), &key, &tree.entry(), CachePolicy::Normal)
            .await,
        "store in the other cache",
    );
    let hit = hit_of(&source, &key).await;
    source_brake.hold_after(HOLD_AFTER);
    let at_drop = drop_when_held(
        &source_brake,
        h.backend.import(&task(), &hit, CachePolicy::Normal),
        "an import",
    )
    .await;
    release_and_settle(&source_brake, at_drop, "a dropped import").await;
    assert!(
        !check(&h, &key, CachePolicy::Normal).await.hit,
        "a dropped import published its entry"
    );
    let imported = expect_ok(
        h.backend.import(&task(), &hit, CachePolicy::Normal).await,
        "import after a dropped one",
    );
    assert!(imported.is_some(), "a Normal import copies the hit in");
    restore_and_compare(&h, &key, &tree, "import after a dropped one").await;
}

/// A log read dropped mid-way stops reading, and the next read returns the whole log.
pub async fn cancel_logs_dropped_midway(h: Harness) {
    let brake = brake_of(&h);
    let stdout = crate::fixtures::pattern_bytes(fresh_seed(), 1 << 20);
    let key = fresh_key();
    let entry = CacheEntry {
        stdout: Some(stdout.clone()),
        stderr: Some(b"done\n".to_vec()),
        ..CacheEntry::default()
    };
    store(&h, &key, &entry).await;
    let hit = hit_of(h.backend.as_ref(), &key).await;
    brake.hold_after(HOLD_AFTER);
    let at_drop = drop_when_held(brake, hit.logs(), "a log read").await;
    release_and_settle(brake, at_drop, "a dropped log read").await;
    let (out, err) = expect_ok(hit.logs().await, "logs after a dropped read");
    super::common::assert_bytes(out.as_deref(), Some(&stdout), "stdout after a dropped read");
    assert_eq!(err.as_deref(), Some(&b"done\n"[..]));
}
