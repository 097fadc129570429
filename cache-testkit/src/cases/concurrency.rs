//! Concurrent writers and readers.

use crate::Harness;
use crate::fixtures::{
    OutputTree, TempWorkspace, Tree, fresh_key, fresh_seed, pattern_bytes, task,
};
use cache_core::{CacheBackend, CacheEntry, CachePolicy, Digest};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::task::JoinHandle;

const WRITERS: usize = 32;
const READERS: usize = 4;

/// Writer `i`'s stdout.
fn stdout_of(i: usize) -> String {
    format!("writer {i}\n")
}

/// Writer `i`'s entry: the same paths for every writer, different content and modes.
fn variant(seed: u64, i: usize) -> (OutputTree, CacheEntry) {
    let tree = OutputTree::new()
        .dir("out/empty")
        .file(
            "out/data.bin",
            pattern_bytes(seed ^ i as u64, 4096 + i),
            false,
        )
        .file(
            "out/run.sh",
            format!("#!/bin/sh\necho writer {i}\n"),
            i % 2 == 0,
        );
    let i32_i = i32::try_from(i).expect("small");
    let entry = CacheEntry {
        exit_code: i32_i,
        stdout: Some(stdout_of(i).into_bytes()),
        ..tree.entry()
    };
    (tree, entry)
}

async fn join<T>(handle: JoinHandle<T>) -> T {
    handle
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Which variant `tree` is exactly, or a panic describing how it is not any.
fn which(tree: &Tree, variants: &[(OutputTree, CacheEntry)], what: &str) -> usize {
    variants
        .iter()
        .position(|(v, _)| v.expected() == tree)
        .unwrap_or_else(|| {
            panic!(
                "{what}: the restored tree is not any one writer's entry (a torn or mixed entry); \
                 against writer 0:\n  {}",
                tree.diff(variants[0].0.expected()).join("\n  ")
            )
        })
}

fn digest(key: &str) -> Digest {
    Digest::parse(key).expect("a valid key")
}

/// Which writer's stdout `out` is, exactly, or a panic.
fn writer_of_stdout(out: Option<Vec<u8>>, what: &str) -> usize {
    let out = String::from_utf8(out.unwrap_or_else(|| panic!("{what}: stdout was stored")))
        .unwrap_or_else(|e| panic!("{what}: stdout is not the UTF-8 stored: {e}"));
    (0..WRITERS)
        .find(|&i| out == stdout_of(i))
        .unwrap_or_else(|| panic!("{what}: stdout {out:?} is not any one writer's whole log"))
}

struct Shared {
    backend: Arc<dyn CacheBackend>,
    variants: Vec<(OutputTree, CacheEntry)>,
    one_key: String,
    keys: Vec<String>,
    done: AtomicBool,
    hits: AtomicU64,
    /// Stores begun and returned, counted by the writers around each `store`.
    stores_started: AtomicU64,
    stores_finished: AtomicU64,
    /// Hits of the one key whose exit code, tree and stdout were cross-checked.
    cross_checked: AtomicU64,
    /// Hits of the one key taken as values (`lookup`), each cross-checked.
    values_checked: AtomicU64,
}

impl Shared {
    /// `Some(n)` if no store is in flight now, `n` being the number begun so far.
    /// (`finished` is read first: if the two are then equal, nothing was in flight at
    /// that read, and nothing began between the reads.)
    fn no_store_in_flight(&self) -> Option<u64> {
        let finished = self.stores_finished.load(Ordering::SeqCst);
        let started = self.stores_started.load(Ordering::SeqCst);
        (started == finished).then_some(started)
    }

    /// Whether no store overlapped the calls made since [`Shared::no_store_in_flight`]
    /// answered `since`.
    fn no_store_since(&self, since: Option<u64>) -> bool {
        since.is_some_and(|n| self.stores_started.load(Ordering::SeqCst) == n)
    }
}

/// A hit as a value (`lookup`): its exit code, outputs and stdout are one writer's,
/// always, whatever stores overlap the calls.
async fn value_hit(s: &Shared, r: usize, ws: &TempWorkspace) {
    let found = s
        .backend
        .lookup(&task(), &digest(&s.one_key), CachePolicy::Normal)
        .await
        .unwrap_or_else(|e| panic!("reader {r}: lookup failed under concurrent stores: {e}"));
    let Some(hit) = found else {
        return;
    };
    let code = usize::try_from(hit.exit_code())
        .ok()
        .filter(|&c| c < WRITERS)
        .unwrap_or_else(|| panic!("exit code of a hit: {hit:?}"));
    hit.restore(ws.root())
        .await
        .unwrap_or_else(|e| panic!("reader {r}: restore of a hit failed: {e}"));
    let tree = which(&ws.tree_async().await, &s.variants, "a hit as a value");
    let (out, _) = hit
        .logs()
        .await
        .unwrap_or_else(|e| panic!("reader {r}: logs of a hit failed: {e}"));
    let out = writer_of_stdout(out, "logs of a hit as a value");
    assert!(
        code == tree && out == tree,
        "reader {r}: one hit (a value) gave exit code {code}, writer {tree}'s outputs \
         and writer {out}'s stdout, with stores in flight or not: a hit is one entry"
    );
    s.values_checked.fetch_add(1, Ordering::Relaxed);
}

async fn reader(s: Arc<Shared>, r: usize) {
    let ws_value = TempWorkspace::new();
    let ws_one = TempWorkspace::new();
    let ws_many = TempWorkspace::new();
    let mut round = 0usize;
    loop {
        let finished = s.done.load(Ordering::Acquire);
        // What the three calls of the origin form promise each other (see
        // `cache_core::CacheBackend`): each looks the key up anew, so when a store
        // overlaps them nothing ties their answers together: each must only be some
        // writer's whole answer. When no store overlaps them, they must be one writer's:
        // exit code `i`, writer `i`'s tree and writer `i`'s stdout. Which rounds overlap
        // depends on scheduling; the last round of every reader, after all stores, never
        // does, so each reader cross-checks at least once.
        let quiet = s.no_store_in_flight();
        let hit = s
            .backend
            .check(&task(), &s.one_key, CachePolicy::Normal)
            .await
            .unwrap_or_else(|e| panic!("reader {r}: check failed under concurrent stores: {e}"));
        if hit.hit {
            let code = hit.exit_code.and_then(|c| usize::try_from(c).ok());
            let code = code
                .filter(|&c| c < WRITERS)
                .unwrap_or_else(|| panic!("exit code of a hit: {hit:?}"));
            s.backend
                .restore_outputs(&task(), &s.one_key, ws_one.root())
                .await
                .unwrap_or_else(|e| panic!("reader {r}: restore of a hit failed: {e}"));
            let tree = which(
                &ws_one.tree_async().await,
                &s.variants,
                "one key, many writers",
            );
            let (out, _) = s
                .backend
                .get_log_bytes(&task(), &s.one_key)
                .await
                .unwrap_or_else(|e| panic!("reader {r}: logs of a hit failed: {e}"));
            let out = writer_of_stdout(out, "logs of a hit of the one key");
            if s.no_store_since(quiet) {
                assert!(
                    code == tree && out == tree,
                    "reader {r}: with no store in flight, one hit gave exit code {code}, writer \
                     {tree}'s outputs and writer {out}'s stdout: the calls of a hit must \
                     answer from one entry"
                );
                s.cross_checked.fetch_add(1, Ordering::Relaxed);
            }
            s.hits.fetch_add(1, Ordering::Relaxed);
        }
        value_hit(&s, r, &ws_value).await;
        // Only writer `i` stores key `i`: whatever the timing, a hit is writer `i`'s.
        let i = (r * 7 + round) % WRITERS;
        let hit = s
            .backend
            .check(&task(), &s.keys[i], CachePolicy::Normal)
            .await
            .unwrap_or_else(|e| panic!("reader {r}: check failed under concurrent stores: {e}"));
        if hit.hit {
            assert_eq!(
                hit.exit_code,
                Some(i32::try_from(i).expect("small")),
                "reader {r}: key {i} is stored by writer {i} alone"
            );
            s.backend
                .restore_outputs(&task(), &s.keys[i], ws_many.root())
                .await
                .unwrap_or_else(|e| panic!("reader {r}: restore of key {i} failed: {e}"));
            let got = which(&ws_many.tree_async().await, &s.variants, "distinct keys");
            assert_eq!(got, i, "key {i} restored writer {got}'s entry");
            let (out, _) = s
                .backend
                .get_log_bytes(&task(), &s.keys[i])
                .await
                .unwrap_or_else(|e| panic!("reader {r}: logs of key {i} failed: {e}"));
            let out = writer_of_stdout(out, "logs of a distinct key");
            assert_eq!(out, i, "key {i} gave writer {out}'s stdout");
            s.hits.fetch_add(1, Ordering::Relaxed);
        }
        round += 1;
        if finished {
            break;
        }
        tokio::task::yield_now().await;
    }
    ws_one.assert_outside_unchanged();
    ws_many.assert_outside_unchanged();
}

/// 32 concurrent stores of one key and 32 of distinct keys, while readers `check`,
/// `restore_outputs` and `get_log_bytes` in a loop: no call fails, and every hit restores
/// one writer's whole entry, never a mix, with one writer's whole stdout. A hit of a
/// distinct key is its writer's in all three calls; a hit of the one key is one writer's
/// in all three whenever no store overlapped them. Afterwards every key holds a whole
/// entry.
pub async fn concurrent_stores_and_readers(h: Harness) {
    let seed = fresh_seed();
    let shared = Arc::new(Shared {
        backend: Arc::clone(&h.backend),
        variants: (0..WRITERS).map(|i| variant(seed, i)).collect(),
        one_key: fresh_key(),
        keys: (0..WRITERS).map(|_| fresh_key()).collect(),
        done: AtomicBool::new(false),
        hits: AtomicU64::new(0),
        stores_started: AtomicU64::new(0),
        stores_finished: AtomicU64::new(0),
        cross_checked: AtomicU64::new(0),
        values_checked: AtomicU64::new(0),
    });
    let readers: Vec<_> = (0..READERS)
        .map(|r| tokio::spawn(reader(Arc::clone(&shared), r)))
        .collect();
    let mut writers = Vec::new();
    for i in 0..WRITERS {
        for key in [shared.one_key.clone(), shared.keys[i].clone()] {
            let s = Arc::clone(&shared);
            writers.push(tokio::spawn(async move {
                let entry = &s.variants[i].1;
                s.stores_started.fetch_add(1, Ordering::SeqCst);
                s.backend
                    .store(&task(), &key, entry, CachePolicy::Normal)
                    .await
                    .unwrap_or_else(|e| panic!("writer {i}: concurrent store failed: {e}"));
                s.stores_finished.fetch_add(1, Ordering::SeqCst);
            }));
        }
    }
    for w in writers {
        join(w).await;
    }
    shared.done.store(true, Ordering::Release);
    for r in readers {
        join(r).await;
    }
    // Every reader made a last round after all writes: each saw hits.
    assert!(
        shared.hits.load(Ordering::Relaxed) >= 2 * READERS as u64,
        "readers saw too few hits after every store finished"
    );
    assert!(
        shared.cross_checked.load(Ordering::Relaxed) >= READERS as u64,
        "every reader's last round, after all stores, cross-checks a hit of the one key"
    );
    assert!(
        shared.values_checked.load(Ordering::Relaxed) >= READERS as u64,
        "every reader's last round, after all stores, takes a hit of the one key as a value"
    );
    let ws = TempWorkspace::new();
    h.backend
        .restore_outputs(&task(), &shared.one_key, ws.root())
        .await
        .expect("restore after the stores");
    let winner = which(&ws.tree(), &shared.variants, "one key after the stores");
    let r = h
        .backend
        .check(&task(), &shared.one_key, CachePolicy::Normal)
        .await
        .expect("check");
    assert_eq!(
        r.exit_code,
        Some(i32::try_from(winner).expect("small")),
        "one whole entry"
    );
    let (out, _) = h
        .backend
        .get_log_bytes(&task(), &shared.one_key)
        .await
        .expect("logs after the stores");
    assert_eq!(
        writer_of_stdout(out, "one key after the stores"),
        winner,
        "the stdout of the entry whose outputs were restored"
    );
    for (i, key) in shared.keys.iter().enumerate() {
        let ws = TempWorkspace::new();
        h.backend
            .restore_outputs(&task(), key, ws.root())
            .await
            .unwrap_or_else(|e| panic!("restore of key {i} after the stores: {e}"));
        assert_eq!(which(&ws.tree(), &shared.variants, "distinct key"), i);
    }
}
