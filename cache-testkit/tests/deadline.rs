//! `Deadline` bounds a hit's restore and log reads too, not only the lookup: a storage
//! that finds the entry and then hangs on the blobs costs one deadline.

use cache_core::{
    Cache, CacheBackend, CacheEntry, CacheOutput, CachePolicy, CircuitBreaker, Deadline, Deadlines,
    Digest, Tiered,
};
use cache_testkit::fixtures::{TempWorkspace, fresh_key, task};
use cache_testkit::{
    FaultPlan, FaultyStorage, MemoryStorage, StorageOp, Trigger, spawn_blocking, tokio_sleep,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Stores an entry with a file and a stdout log large enough to be a blob.
async fn store_with_log_blob(cache: &Cache<FaultyStorage<MemoryStorage>>) -> (String, CacheEntry) {
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
    (key, entry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_whose_blobs_hang_times_out_as_a_cache_fault() {
    let cache = Cache::new(
        FaultyStorage::new(MemoryStorage::new(), FaultPlan::healthy()),
        spawn_blocking,
    );
    let (key, _) = store_with_log_blob(&cache).await;
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

/// A shared tier whose entry is found and whose blobs then hang, behind the stack
/// `taskcache` builds: a local tier in front, the shared one under a deadline and an
/// outage breaker.
struct SilentShared {
    shared: Arc<Cache<FaultyStorage<MemoryStorage>>>,
    breaker: Arc<CircuitBreaker>,
    tiered: Tiered,
    key: String,
}

const LIMIT: Duration = Duration::from_millis(200);

async fn silent_shared() -> SilentShared {
    let shared = Arc::new(Cache::new(
        FaultyStorage::new(MemoryStorage::new(), FaultPlan::healthy()),
        spawn_blocking,
    ));
    let key = fresh_key();
    let entry = CacheEntry {
        outputs: vec![CacheOutput::bytes("a.txt", vec![b'a'; 100_000], false)],
        ..CacheEntry::default()
    };
    shared
        .store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    shared.storage().faults().set_plan(
        FaultPlan::new(Trigger::Never, cache_testkit::FaultError::Unavailable)
            .only([StorageOp::OpenBlobs])
            .with_latency(Duration::from_secs(3600)),
    );
    let bounded = |inner: Arc<dyn CacheBackend>| -> Arc<dyn CacheBackend> {
        Arc::new(Deadline::new(inner, Deadlines::new(LIMIT), tokio_sleep()))
    };
    let breaker = Arc::new(
        CircuitBreaker::new(bounded(Arc::clone(&shared) as Arc<dyn CacheBackend>), 3)
            .open_on_outage(),
    );
    let local = bounded(Arc::new(Cache::new(MemoryStorage::new(), spawn_blocking)));
    let tiered = Tiered::new(local, Arc::clone(&breaker) as Arc<dyn CacheBackend>);
    SilentShared {
        shared,
        breaker,
        tiered,
        key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_hit_that_stops_answering_while_copied_is_a_miss_and_opens_the_breaker() {
    let s = silent_shared().await;
    let key = Digest::parse(&s.key).unwrap();
    // What a lookup alone asks of the storage.
    let calls = || s.shared.storage().faults().calls();
    let before = calls();
    s.shared
        .lookup(&task(), &key, CachePolicy::Normal)
        .await
        .unwrap()
        .expect("the entry is found");
    let lookup_calls = calls() - before;
    let before = calls();
    let found = s
        .tiered
        .lookup(&task(), &key, CachePolicy::Normal)
        .await
        .unwrap();
    assert!(
        found.is_none(),
        "a shared hit whose copy timed out is restored from the silent server"
    );
    // The blobs were asked for once (the copy), not again for a restore.
    assert_eq!(calls() - before, lookup_calls + 1);
    assert!(
        s.breaker.is_open(),
        "the timed-out copy did not open the breaker"
    );
    let stats = s.tiered.stats();
    assert_eq!(stats.backfill_failures.load(Ordering::Relaxed), 1);
    // The task runs, and its store skips the shared tier.
    let before = calls();
    let entry = CacheEntry {
        outputs: vec![CacheOutput::bytes("a.txt", b"ran".to_vec(), false)],
        ..CacheEntry::default()
    };
    s.tiered
        .store(&task(), &fresh_key(), &entry, CachePolicy::Normal)
        .await
        .unwrap();
    assert_eq!(calls(), before, "the store waited on the silent server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_times_out_opens_the_breaker_that_made_the_hit() {
    let s = silent_shared().await;
    let key = Digest::parse(&s.key).unwrap();
    let hit = s
        .breaker
        .lookup(&task(), &key, CachePolicy::Normal)
        .await
        .unwrap()
        .expect("the entry is found");
    assert!(!s.breaker.is_open());
    let ws = TempWorkspace::new();
    let e = hit.restore(ws.root()).await.unwrap_err();
    assert_eq!(e.kind(), "timeout", "{e}");
    assert!(
        s.breaker.is_open(),
        "a restore that timed out left the breaker closed: the store after the run \
         waits on the silent server again"
    );
}

/// A storage that panics (a bug in it or in a library under it, like a client that
/// unwraps a bad URL) is a cache fault behind `Deadline`, in the lookup and in a hit's
/// restore and logs: the task runs uncached, never dies with the panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_storage_is_a_cache_fault_not_a_crash() {
    let cache = Arc::new(Cache::new(
        FaultyStorage::new(MemoryStorage::new(), FaultPlan::healthy()),
        spawn_blocking,
    ));
    let (key, entry) = store_with_log_blob(&cache).await;
    let bounded = Deadline::new(
        Arc::clone(&cache) as Arc<dyn CacheBackend>,
        Deadlines::new(Duration::from_secs(30)),
        tokio_sleep(),
    );
    let digest = Digest::parse(&key).unwrap();
    let hit = bounded
        .lookup(&task(), &digest, CachePolicy::Normal)
        .await
        .unwrap()
        .expect("the entry is found");
    let panics = |op| FaultPlan::new(Trigger::Always, cache_testkit::FaultError::Panic).only([op]);
    cache
        .storage()
        .faults()
        .set_plan(panics(StorageOp::OpenBlobs));
    let ws = TempWorkspace::new();
    for e in [
        hit.restore(ws.root()).await.unwrap_err(),
        hit.logs().await.unwrap_err(),
    ] {
        assert!(e.is_cache_fault() && e.is_outage(), "{e}");
        assert!(e.to_string().contains("panicked"), "{e}");
    }
    cache
        .storage()
        .faults()
        .set_plan(panics(StorageOp::GetEntry));
    let e = bounded
        .lookup(&task(), &digest, CachePolicy::Normal)
        .await
        .unwrap_err();
    assert!(e.is_cache_fault() && e.is_outage(), "{e}");
    cache
        .storage()
        .faults()
        .set_plan(panics(StorageOp::PutBlobs));
    let e = bounded
        .store(&task(), &fresh_key(), &entry, CachePolicy::Normal)
        .await
        .unwrap_err();
    assert!(e.is_cache_fault(), "{e}");
}
