//! Small steps the cases share.

use crate::Harness;
use crate::fixtures::{OutputTree, TempWorkspace, expect_ok, fresh_key, task};
use cache_core::{
    BackendResult, BlobRef, CacheEntry, CacheLookupResult, CacheOutput, CachePolicy,
    DigestAlgorithm, OutputContent,
};
use std::collections::BTreeMap;
use std::path::Path;

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
