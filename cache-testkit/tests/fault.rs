//! The fault injectors themselves, and what `Cache` does when its storage fails.

use cache_core::{Cache, CacheBackend, CacheEntry, CachePolicy};
use cache_testkit::fixtures::{OutputTree, TempWorkspace, fresh_key, fresh_seed, task};
use cache_testkit::{
    BackendOp, FaultError, FaultPlan, FaultyBackend, FaultyStorage, MemoryBackend, MemoryStorage,
    StorageOp, Trigger, spawn_blocking,
};
use std::sync::Arc;
use std::time::Duration;

fn faulty(plan: FaultPlan<BackendOp>) -> (FaultyBackend, MemoryBackend) {
    let inner = MemoryBackend::new();
    (FaultyBackend::new(Arc::new(inner.clone()), plan), inner)
}

/// Which of `n` health checks failed (1-based).
async fn failing_calls(b: &FaultyBackend, n: u64) -> Vec<u64> {
    let mut failed = Vec::new();
    for i in 1..=n {
        if b.health_check().await.is_err() {
            failed.push(i);
        }
    }
    failed
}

#[tokio::test]
async fn triggers_pick_the_documented_calls() {
    let cases = [
        (Trigger::Never, vec![]),
        (Trigger::Always, vec![1, 2, 3, 4, 5, 6]),
        (Trigger::Nth(3), vec![3]),
        (Trigger::FirstN(2), vec![1, 2]),
        (Trigger::FromNth(5), vec![5, 6]),
    ];
    for (trigger, want) in cases {
        let (b, _) = faulty(FaultPlan::new(trigger, FaultError::Unavailable));
        assert_eq!(failing_calls(&b, 6).await, want, "{trigger:?}");
        assert_eq!(b.faults().calls(), 6);
        assert_eq!(b.faults().injected(), want.len() as u64);
        assert_eq!(b.faults().forwarded(), 6 - want.len() as u64);
    }
}

#[tokio::test]
async fn only_restricts_faults_and_numbering_to_the_chosen_ops() {
    let (b, _) = faulty(FaultPlan::nth(2, FaultError::Unavailable).only([BackendOp::Store]));
    let key = fresh_key();
    let entry = CacheEntry::default();
    for _ in 0..3 {
        b.check(&task(), &key, CachePolicy::Normal).await.unwrap();
        b.health_check().await.unwrap();
    }
    b.store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    let e = b
        .store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Store"), "names the operation: {e}");
    b.store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    // set_plan restarts the numbering.
    b.faults()
        .set_plan(FaultPlan::nth(1, FaultError::Connection).only([BackendOp::GetLogBytes]));
    let e = b.get_logs(&task(), &key).await.unwrap_err();
    assert_eq!(e.kind(), "connection");
    b.get_logs(&task(), &key).await.unwrap();
}

#[tokio::test]
async fn every_fault_error_has_its_kind_and_degradability() {
    let cases = [
        (FaultError::Unavailable, "unavailable", true),
        (FaultError::Connection, "connection", true),
        (FaultError::Io(std::io::ErrorKind::StorageFull), "io", false),
        (FaultError::DigestMismatch, "digest_mismatch", false),
        (FaultError::CorruptEntry, "corrupt_entry", false),
        (FaultError::BlobNotFound, "blob_not_found", false),
        (FaultError::ActionNotFound, "action_not_found", true),
        (FaultError::Serialization, "serialization", false),
        (FaultError::PermissionDenied, "permission_denied", true),
    ];
    for (fault, kind, degradable) in cases {
        let (b, _) = faulty(FaultPlan::always(fault.clone()));
        let ws = TempWorkspace::new();
        let e = b
            .restore_outputs(&task(), &fresh_key(), ws.root())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), kind, "{fault:?}");
        assert_eq!(e.is_gracefully_degradable(), degradable, "{fault:?}");
        assert!(ws.tree().nodes.is_empty());
    }
}

#[tokio::test]
async fn failed_calls_never_reach_the_backend() {
    let (b, inner) = faulty(FaultPlan::always(FaultError::Unavailable));
    let key = fresh_key();
    let entry = OutputTree::new().file("f", b"x".to_vec(), false).entry();
    b.store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap_err();
    b.check(&task(), &key, CachePolicy::Normal)
        .await
        .unwrap_err();
    assert_eq!(inner.io().snapshot().total(), 0);
    assert_eq!(inner.storage().entry_count(), 0);
    assert_eq!(b.name(), "memory");
}

#[tokio::test(start_paused = true)]
async fn latency_delays_selected_calls_only() {
    let (b, _) = faulty(
        FaultPlan::healthy()
            .only([BackendOp::HealthCheck])
            .with_latency(Duration::from_secs(30)),
    );
    let start = tokio::time::Instant::now();
    b.check(&task(), &fresh_key(), CachePolicy::Normal)
        .await
        .unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "check is not delayed (paused clock)"
    );
    b.health_check().await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(30),
        "health_check is delayed"
    );
    // Latency also applies to calls that then fail.
    b.faults()
        .set_plan(FaultPlan::always(FaultError::Unavailable).with_latency(Duration::from_secs(5)));
    let start = tokio::time::Instant::now();
    b.health_check().await.unwrap_err();
    assert!(start.elapsed() >= Duration::from_secs(5));
}

// ------------------------------------------------- Cache over a failing storage

fn faulty_cache(
    plan: FaultPlan<StorageOp>,
) -> (Cache<FaultyStorage<MemoryStorage>>, MemoryStorage) {
    let storage = MemoryStorage::new();
    (
        Cache::new(FaultyStorage::new(storage.clone(), plan), spawn_blocking),
        storage,
    )
}

#[tokio::test]
async fn entry_publish_failure_leaves_a_miss_and_the_next_store_works() {
    let (cache, storage) =
        faulty_cache(FaultPlan::nth(1, FaultError::Unavailable).only([StorageOp::PutEntry]));
    let tree = OutputTree::new().file("f.txt", format!("{}", fresh_seed()), false);
    let key = fresh_key();
    let e = cache
        .store(&task(), &key, &tree.entry(), CachePolicy::Normal)
        .await
        .unwrap_err();
    assert!(e.is_gracefully_degradable());
    assert_eq!(storage.entry_count(), 0, "no entry without its publish");
    assert_eq!(storage.blob_count(), 1, "blobs are published first");
    assert!(
        !cache
            .check(&task(), &key, CachePolicy::Normal)
            .await
            .unwrap()
            .hit
    );
    cache
        .store(&task(), &key, &tree.entry(), CachePolicy::Normal)
        .await
        .unwrap();
    let ws = TempWorkspace::new();
    cache
        .restore_outputs(&task(), &key, ws.root())
        .await
        .unwrap();
    ws.tree().assert_same(tree.expected(), "after the retry");
    assert_eq!(cache.storage().faults().injected(), 1);
}

#[tokio::test]
async fn blob_publish_failure_publishes_no_entry() {
    let (cache, storage) = faulty_cache(
        FaultPlan::always(FaultError::Io(std::io::ErrorKind::StorageFull))
            .only([StorageOp::PutBlobs]),
    );
    let tree = OutputTree::new().file("f.txt", b"data".to_vec(), false);
    let key = fresh_key();
    let e = cache
        .store(&task(), &key, &tree.entry(), CachePolicy::Normal)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "io");
    assert_eq!(storage.entry_count(), 0);
    assert!(
        !cache
            .check(&task(), &key, CachePolicy::Normal)
            .await
            .unwrap()
            .hit
    );
}

#[tokio::test]
async fn unavailable_storage_is_a_degradable_error_not_a_miss() {
    let (cache, _) =
        faulty_cache(FaultPlan::always(FaultError::Unavailable).only([StorageOp::GetEntry]));
    let e = cache
        .check(&task(), &fresh_key(), CachePolicy::Normal)
        .await
        .unwrap_err();
    assert!(e.is_gracefully_degradable(), "{e}");
    // Policies without reads never ask the storage.
    for policy in [CachePolicy::Writeonly, CachePolicy::Disabled] {
        assert!(
            !cache
                .check(&task(), &fresh_key(), policy)
                .await
                .unwrap()
                .hit
        );
    }
    assert_eq!(cache.storage().faults().calls(), 1);
}

#[tokio::test]
async fn failed_file_restore_writes_nothing() {
    let (cache, _) =
        faulty_cache(FaultPlan::always(FaultError::Connection).only([StorageOp::OpenBlobs]));
    let tree = OutputTree::new().file("a/f.txt", b"data".to_vec(), false);
    let key = fresh_key();
    cache
        .store(&task(), &key, &tree.entry(), CachePolicy::Normal)
        .await
        .unwrap();
    let ws = TempWorkspace::new();
    let e = cache
        .restore_outputs(&task(), &key, ws.root())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "connection");
    assert!(ws.tree().get("a/f.txt").is_none());
    assert!(ws.tree().get("a").is_none(), "not even its directory");
    assert!(ws.tree().temporaries().is_empty());
}
