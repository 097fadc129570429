//! Concurrent writers and readers.

use crate::Harness;
use crate::fixtures::{
    OutputTree, TempWorkspace, Tree, fresh_key, fresh_seed, pattern_bytes, task,
};
use cache_core::{CacheBackend, CacheEntry, CachePolicy};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::task::JoinHandle;

const WRITERS: usize = 32;
const READERS: usize = 4;

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
        stdout: Some(format!("writer {i}\n").into_bytes()),
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

struct Shared {
    backend: Arc<dyn CacheBackend>,
    variants: Vec<(OutputTree, CacheEntry)>,
    one_key: String,
    keys: Vec<String>,
    done: AtomicBool,
    hits: AtomicU64,
}

async fn reader(s: Arc<Shared>, r: usize) {
    let ws_one = TempWorkspace::new();
    let ws_many = TempWorkspace::new();
    let mut round = 0usize;
    loop {
        let finished = s.done.load(Ordering::Acquire);
        let hit = s
            .backend
            .check(&task(), &s.one_key, CachePolicy::Normal)
            .await
            .unwrap_or_else(|e| panic!("reader {r}: check failed under concurrent stores: {e}"));
        if hit.hit {
            let code = hit.exit_code.and_then(|c| usize::try_from(c).ok());
            assert!(
                code.is_some_and(|c| c < WRITERS),
                "exit code of a hit: {hit:?}"
            );
            s.backend
                .restore_outputs(&task(), &s.one_key, ws_one.root())
                .await
                .unwrap_or_else(|e| panic!("reader {r}: restore of a hit failed: {e}"));
            which(
                &ws_one.tree_async().await,
                &s.variants,
                "one key, many writers",
            );
            let (out, _) = s
                .backend
                .get_log_bytes(&task(), &s.one_key)
                .await
                .unwrap_or_else(|e| panic!("reader {r}: logs of a hit failed: {e}"));
            let out = String::from_utf8(out.expect("stdout was stored")).expect("utf-8");
            assert!(out.starts_with("writer "), "logs of a hit: {out:?}");
            s.hits.fetch_add(1, Ordering::Relaxed);
        }
        let i = (r * 7 + round) % WRITERS;
        let hit = s
            .backend
            .check(&task(), &s.keys[i], CachePolicy::Normal)
            .await
            .unwrap_or_else(|e| panic!("reader {r}: check failed under concurrent stores: {e}"));
        if hit.hit {
            s.backend
                .restore_outputs(&task(), &s.keys[i], ws_many.root())
                .await
                .unwrap_or_else(|e| panic!("reader {r}: restore of key {i} failed: {e}"));
            let got = which(&ws_many.tree_async().await, &s.variants, "distinct keys");
            assert_eq!(got, i, "key {i} restored writer {got}'s entry");
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
/// `restore_outputs` and `get_logs` in a loop: no call fails, and every hit restores one
/// writer's whole entry, never a mix. Afterwards every key holds a whole entry.
pub async fn concurrent_stores_and_readers(h: Harness) {
    let seed = fresh_seed();
    let shared = Arc::new(Shared {
        backend: Arc::clone(&h.backend),
        variants: (0..WRITERS).map(|i| variant(seed, i)).collect(),
        one_key: fresh_key(),
        keys: (0..WRITERS).map(|_| fresh_key()).collect(),
        done: AtomicBool::new(false),
        hits: AtomicU64::new(0),
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
                s.backend
                    .store(&task(), &key, entry, CachePolicy::Normal)
                    .await
                    .unwrap_or_else(|e| panic!("writer {i}: concurrent store failed: {e}"));
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
    for (i, key) in shared.keys.iter().enumerate() {
        let ws = TempWorkspace::new();
        h.backend
            .restore_outputs(&task(), key, ws.root())
            .await
            .unwrap_or_else(|e| panic!("restore of key {i} after the stores: {e}"));
        assert_eq!(which(&ws.tree(), &shared.variants, "distinct key"), i);
    }
}
