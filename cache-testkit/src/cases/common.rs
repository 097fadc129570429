//! Small steps the cases share.

use crate::Harness;
use crate::fixtures::{OutputTree, TempWorkspace, expect_ok, fresh_key, task};
use cache_core::{
    BackendResult, BlobRef, CacheEntry, CacheLookupResult, CacheOutput, CachePolicy,
    DigestAlgorithm, OutputContent,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub(crate) async fn store(h: &Harness, key: &str, entry: &CacheEntry) {
    expect_ok(
        h.backend
            .store(&task(), key, entry, CachePolicy::Normal)
            .await,
        &format!("store {key}"),
    );
}

pub(crate) async fn check(h: &Harness, key: &str, policy: CachePolicy) -> CacheLookupResult {
    let r = expect_ok(
        h.backend.check(&task(), key, policy).await,
        &format!("check {key} ({policy})"),
    );
    assert_eq!(r.key, key, "a lookup result names the key looked up");
    if !r.hit {
        assert_eq!(r.exit_code, None, "a miss has no exit code");
        assert_eq!(r.cached_duration_ms, None, "a miss has no duration");
    }
    r
}

pub(crate) async fn try_restore(
    h: &Harness,
    key: &str,
    root: &Path,
) -> BackendResult<Vec<CacheOutput>> {
    h.backend.restore_outputs(&task(), key, root).await
}

pub(crate) async fn restore(h: &Harness, key: &str, ws: &TempWorkspace) -> Vec<CacheOutput> {
    expect_ok(
        try_restore(h, key, ws.root()).await,
        &format!("restore {key}"),
    )
}

/// Stores `tree` under a fresh key with Normal policy; returns the key.
pub(crate) async fn store_tree(h: &Harness, tree: &OutputTree) -> String {
    let key = fresh_key();
    store(h, &key, &tree.entry()).await;
    key
}

/// Restores `key` into a fresh workspace and checks it is exactly `tree`.
pub(crate) async fn restore_and_compare(
    h: &Harness,
    key: &str,
    tree: &OutputTree,
    what: &str,
) -> (TempWorkspace, Vec<CacheOutput>) {
    let ws = TempWorkspace::new();
    let outputs = restore(h, key, &ws).await;
    ws.tree_async().await.assert_same(tree.expected(), what);
    ws.assert_outside_unchanged();
    (ws, outputs)
}

/// The blob each restored file output names, by path (the backend's own addresses).
pub(crate) fn returned_blobs(outputs: &[CacheOutput]) -> BTreeMap<String, BlobRef> {
    outputs
        .iter()
        .filter_map(|o| match &o.content {
            OutputContent::File { blob: Some(b), .. } => Some((o.path.clone(), *b)),
            _ => None,
        })
        .collect()
}

/// Stores a probe file and returns the algorithm the backend addresses blobs with.
pub(crate) async fn blob_algorithm(h: &Harness) -> DigestAlgorithm {
    let tree = OutputTree::new().file("probe.bin", b"probe".to_vec(), false);
    let key = store_tree(h, &tree).await;
    let ws = TempWorkspace::new();
    let outputs = restore(h, &key, &ws).await;
    returned_blobs(&outputs)
        .get("probe.bin")
        .map(|b| b.digest.algorithm())
        .expect("restore_outputs returns each file with the blob it verified")
}

/// Asserts `got == want` for byte strings without printing megabytes on failure.
#[track_caller]
pub(crate) fn assert_bytes(got: Option<&[u8]>, want: Option<&[u8]>, what: &str) {
    match (got, want) {
        (Some(g), Some(w)) if g != w => {
            let at = g.iter().zip(w).position(|(a, b)| a != b);
            panic!(
                "{what}: {} bytes differ from the {} stored (first difference at {at:?})",
                g.len(),
                w.len()
            );
        }
        (g, w) if g.is_some() != w.is_some() => panic!(
            "{what}: expected {}, got {}",
            if w.is_some() { "Some" } else { "None" },
            if g.is_some() { "Some" } else { "None" }
        ),
        _ => {}
    }
}

/// Counts the warnings (and errors) logged through `tracing` on this thread while it
/// lives: what a case's own `.await`s log (a backend's lookup runs on the case's
/// thread; jobs it spawns elsewhere are not counted).
pub(crate) struct Warnings {
    count: Arc<AtomicUsize>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Warnings {
    pub(crate) fn on_this_thread() -> Self {
        let count = Arc::new(AtomicUsize::new(0));
        let guard = tracing::subscriber::set_default(WarningCounter(Arc::clone(&count)));
        Warnings {
            count,
            _guard: guard,
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

struct WarningCounter(Arc<AtomicUsize>);

impl tracing::Subscriber for WarningCounter {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() <= tracing::Level::WARN {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
