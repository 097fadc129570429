//! `Deadline` bounds a hit's restore and log reads too, not only the lookup: a storage
//! that finds the entry and then hangs on the blobs costs one deadline.

use cache_core::{
    Cache, CacheBackend, CacheEntry, CacheOutput, CachePolicy, Deadline, Deadlines, Digest,
};
use cache_testkit::fixtures::{TempWorkspace, fresh_key, task};
use cache_testkit::{
    FaultPlan, FaultyStorage, MemoryStorage, StorageOp, Trigger, spawn_blocking, tokio_sleep,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_whose_blobs_hang_times_out_as_a_cache_fault() {
    let cache = Cache::new(
        FaultyStorage::new(MemoryStorage::new(), FaultPlan::healthy()),
        spawn_blocking,
    );
    let key = fresh_key();
    let entry = CacheEntry {
        stdout: Some(vec![b'x'; 200_000]), // a blob, not inline
        outputs: vec![CacheOutput::bytes("a.txt", b"alpha".to_vec(), false)],
        ..CacheEntry::default()
    };
    cache
        .store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    // From now on, reading a blob never answers.
    cache.storage().faults().set_plan(
        FaultPlan::new(Trigger::Never, cache_testkit::FaultError::Unavailable)
            .only([StorageOp::OpenBlobs])
            .with_latency(Duration::from_secs(3600)),
    );
    let limit = Duration::from_millis(200);
    let bounded = Deadline::new(Arc::new(cache), Deadlines::new(limit), tokio_sleep());
    let hit = bounded
        .lookup(&task(), &Digest::parse(&key).unwrap(), CachePolicy::Normal)
        .await
        .unwrap()
        .expect("the entry is found");
    let ws = TempWorkspace::new();
    let started = Instant::now();
    let e = hit.restore(ws.root()).await.unwrap_err();
    assert_eq!(e.kind(), "timeout", "{e}");
    assert!(e.is_cache_fault() && e.is_gracefully_degradable());
    let e = hit.logs().await.unwrap_err();
    assert_eq!(e.kind(), "timeout", "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "two deadlines of {limit:?} took {:?}",
        started.elapsed()
    );
}
