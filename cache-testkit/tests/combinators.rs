//! cache-core's combinators (`Tiered`, `Instrumented`, `CircuitBreaker`), tested with
//! the reference backend and fault injection (cache-core cannot dev-depend on this
//! crate, so their tests live here).

use cache_core::{
    BackendError, CacheBackend, CacheEntry, CachePolicy, CircuitBreaker, Instrumented, Metrics,
    Tiered,
};
use cache_testkit::fixtures::{OutputTree, TempWorkspace, digest, fresh_key, fresh_seed, task};
use cache_testkit::{
    BackendOp, FaultError, FaultPlan, FaultyBackend, MemoryBackend, Tamper, Trigger,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;

fn sample() -> (OutputTree, CacheEntry) {
    let tree = OutputTree::sample(fresh_seed(), cfg!(unix));
    let entry = CacheEntry {
        stdout: Some(b"built\n".to_vec()),
        stderr: Some(b"warning\n".to_vec()),
        exit_code: 0,
        duration_ms: 1500,
        ..tree.entry()
    };
    (tree, entry)
}

async fn hit(b: &dyn CacheBackend, key: &str) -> bool {
    b.check(&task(), key, CachePolicy::Normal)
        .await
        .expect("check")
        .hit
}

// ------------------------------------------------------------------------ Tiered

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_store_writes_both_tiers() {
    let (fast, shared) = (MemoryBackend::new(), MemoryBackend::new());
    let tiered = Tiered::new(Arc::new(fast.clone()), Arc::new(shared.clone()));
    let (_, entry) = sample();
    let key = fresh_key();
    tiered
        .store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    assert!(hit(&fast, &key).await && hit(&shared, &key).await);
    // A policy without writes writes neither tier.
    let other = fresh_key();
    tiered
        .store(&task(), &other, &entry, CachePolicy::Readonly)
        .await
        .unwrap();
    assert!(!hit(&fast, &other).await && !hit(&shared, &other).await);
    assert_eq!(tiered.name(), "tiered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_shared_hit_is_backfilled_at_lookup_and_then_served_locally() {
    let fast = MemoryBackend::new();
    let shared = Arc::new(FaultyBackend::new(
        Arc::new(MemoryBackend::new()),
        FaultPlan::healthy(),
    ));
    let (tree, entry) = sample();
    let key = fresh_key();
    shared
        .store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    let tiered = Tiered::new(Arc::new(fast.clone()), shared.clone());
    let stats = tiered.stats();
    // A read-only lookup finds the shared hit and writes no tier.
    let hit = tiered
        .lookup(&task(), &digest(&key), CachePolicy::Readonly)
        .await
        .unwrap()
        .expect("shared hit");
    assert_eq!(hit.backend(), "memory");
    assert!(!hit_in(&fast, &key).await, "Readonly writes no tier");
    assert_eq!(stats.backfills.load(Ordering::Relaxed), 0);

    // A lookup that may write copies the very hit into the fast tier.
    let r = tiered
        .check(&task(), &key, CachePolicy::Normal)
        .await
        .unwrap();
    assert!(r.hit && r.exit_code == Some(0) && r.cached_duration_ms == Some(1500));
    assert_eq!(stats.shared_hits.load(Ordering::Relaxed), 2);
    assert_eq!(stats.backfills.load(Ordering::Relaxed), 1);
    assert_eq!(stats.backfill_failures.load(Ordering::Relaxed), 0);
    let (out, err) = fast.get_log_bytes(&task(), &key).await.unwrap();
    assert_eq!((out, err), (entry.stdout.clone(), entry.stderr.clone()));

    // From now on the fast tier alone serves it.
    let before = shared.faults().calls();
    let ws = TempWorkspace::new();
    tiered
        .restore_outputs(&task(), &key, ws.root())
        .await
        .unwrap();
    ws.tree()
        .assert_same(tree.expected(), "restored from the fast tier");
    assert_eq!(
        shared.faults().calls(),
        before,
        "the shared tier was not asked again"
    );
    ws.assert_outside_unchanged();
}

/// Whether `b` has a hit for `key`, asked read-only.
async fn hit_in(b: &dyn CacheBackend, key: &str) -> bool {
    b.check(&task(), key, CachePolicy::Readonly)
        .await
        .expect("check")
        .hit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_backfill_verifies_every_blob_it_copies() {
    let (fast, shared) = (MemoryBackend::new(), MemoryBackend::new());
    let tree = OutputTree::new().file("f.bin", vec![7u8; 5000], false);
    let key = fresh_key();
    shared
        .store(&task(), &key, &tree.entry(), CachePolicy::Normal)
        .await
        .unwrap();
    let blob = cache_core::BlobRef::of(cache_core::DigestAlgorithm::Blake3, &[7u8; 5000]);
    shared.flip_blob_byte(&blob).await.unwrap();
    let tiered = Tiered::new(Arc::new(fast.clone()), Arc::new(shared));
    let stats = tiered.stats();
    let hit = tiered
        .lookup(&task(), &digest(&key), CachePolicy::Normal)
        .await
        .unwrap()
        .expect("the shared tier's entry is whole; only a byte is wrong");
    assert_eq!(stats.backfill_failures.load(Ordering::Relaxed), 1);
    assert!(
        !hit_in(&fast, &key).await,
        "bytes that do not match their digest never enter the fast tier"
    );
    let ws = TempWorkspace::new();
    let e = hit.restore(ws.root()).await.unwrap_err();
    assert_eq!(e.kind(), "digest_mismatch", "{e}");
    assert!(ws.tree().get("f.bin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_logs_fall_back_to_the_shared_tier() {
    let shared = MemoryBackend::new();
    let (_, entry) = sample();
    let key = fresh_key();
    shared
        .store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    let tiered = Tiered::new(Arc::new(MemoryBackend::new()), Arc::new(shared));
    let (out, _) = tiered.get_log_bytes(&task(), &key).await.unwrap();
    assert_eq!(out, entry.stdout);
    let e = tiered
        .get_log_bytes(&task(), &fresh_key())
        .await
        .unwrap_err();
    assert!(matches!(e, BackendError::ActionNotFound { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_corrupt_fast_entry_falls_back_and_is_repaired() {
    let (fast, shared) = (MemoryBackend::new(), MemoryBackend::new());
    let (tree, entry) = sample();
    let key = fresh_key();
    shared
        .store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    fast.write_raw_entry(&digest(&key), b"garbage".to_vec())
        .await
        .unwrap();
    let tiered = Tiered::new(Arc::new(fast.clone()), Arc::new(shared));
    let hit = tiered
        .lookup(&task(), &digest(&key), CachePolicy::Normal)
        .await
        .unwrap()
        .expect("the shared tier answers");
    let ws = TempWorkspace::new();
    hit.restore(ws.root()).await.unwrap();
    ws.tree()
        .assert_same(tree.expected(), "restored past a corrupt fast entry");
    let ws2 = TempWorkspace::new();
    fast.restore_outputs(&task(), &key, ws2.root())
        .await
        .expect("the backfill replaced the corrupt fast entry");
    ws2.tree()
        .assert_same(tree.expected(), "fast tier after the backfill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_absorbs_a_failing_fast_tier() {
    let fast = Arc::new(FaultyBackend::new(
        Arc::new(MemoryBackend::new()),
        FaultPlan::always(FaultError::Io(std::io::ErrorKind::PermissionDenied)),
    ));
    let shared = MemoryBackend::new();
    let (tree, entry) = sample();
    let key = fresh_key();
    shared
        .store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    let tiered = Tiered::new(fast.clone(), Arc::new(shared.clone()));
    let stats = tiered.stats();
    let ws = TempWorkspace::new();
    tiered
        .restore_outputs(&task(), &key, ws.root())
        .await
        .expect("a fast tier at fault never fails the task");
    ws.tree()
        .assert_same(tree.expected(), "restored from the shared tier");
    let other = fresh_key();
    tiered
        .store(&task(), &other, &entry, CachePolicy::Normal)
        .await
        .expect("the shared tier took it");
    assert!(hit_in(&shared, &other).await);
    assert!(hit(&tiered, &other).await);
    tiered.health_check().await.unwrap();
    assert!(stats.fast_errors.load(Ordering::Relaxed) >= 4);
    // Caller faults are still the caller's.
    let e = tiered
        .check(&task(), "not a key", CachePolicy::Normal)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "invalid_key");
    let bad = CacheEntry {
        outputs: vec![cache_core::CacheOutput::bytes("../x", b"x".to_vec(), false)],
        ..CacheEntry::default()
    };
    let e = Tiered::new(
        Arc::new(MemoryBackend::new()),
        Arc::new(MemoryBackend::new()),
    )
    .store(&task(), &fresh_key(), &bad, CachePolicy::Normal)
    .await
    .unwrap_err();
    assert_eq!(e.fault(), cache_core::Fault::Caller, "{e}");
    // Both tiers at fault: still a cache fault, never a caller's.
    let both = Tiered::new(
        fast,
        Arc::new(FaultyBackend::new(
            Arc::new(MemoryBackend::new()),
            FaultPlan::always(FaultError::Unavailable),
        )),
    );
    let e = both
        .store(&task(), &fresh_key(), &entry, CachePolicy::Normal)
        .await
        .unwrap_err();
    assert!(e.is_cache_fault(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_absorbs_an_unavailable_shared_tier() {
    let fast = MemoryBackend::new();
    let shared = Arc::new(FaultyBackend::new(
        Arc::new(MemoryBackend::new()),
        FaultPlan::always(FaultError::Connection),
    ));
    let tiered = Tiered::new(Arc::new(fast.clone()), shared.clone());
    let stats = tiered.stats();
    let (tree, entry) = sample();
    let key = fresh_key();
    tiered
        .store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    assert!(hit(&tiered, &key).await);
    assert!(
        !hit(&tiered, &fresh_key()).await,
        "shared failure in check is a miss"
    );
    tiered.health_check().await.unwrap();
    let ws = TempWorkspace::new();
    tiered
        .restore_outputs(&task(), &key, ws.root())
        .await
        .unwrap();
    ws.tree().assert_same(tree.expected(), "fast-tier restore");
    let e = tiered
        .restore_outputs(&task(), &fresh_key(), ws.root())
        .await
        .unwrap_err();
    assert!(e.is_gracefully_degradable(), "{e}");
    // store, check of the unknown key, health, restore of the unknown key.
    assert_eq!(stats.shared_errors.load(Ordering::Relaxed), 4);
    assert_eq!(shared.faults().injected(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_absorbs_any_cache_fault_of_the_shared_store() {
    let shared = Arc::new(FaultyBackend::new(
        Arc::new(MemoryBackend::new()),
        FaultPlan::always(FaultError::Serialization).only([BackendOp::Store]),
    ));
    let fast = MemoryBackend::new();
    let tiered = Tiered::new(Arc::new(fast.clone()), shared);
    let stats = tiered.stats();
    let (_, entry) = sample();
    let key = fresh_key();
    tiered
        .store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    assert!(hit_in(&fast, &key).await);
    assert_eq!(stats.shared_errors.load(Ordering::Relaxed), 1);
}

/// A fast tier whose copies of shared hits fail with `error`, and a shared tier
/// holding one entry: its tree and key.
async fn failing_backfill(
    error: FaultError,
) -> (Arc<FaultyBackend>, MemoryBackend, OutputTree, String) {
    let fast = Arc::new(FaultyBackend::new(
        Arc::new(MemoryBackend::new()),
        FaultPlan::always(error).only([BackendOp::Import]),
    ));
    let shared = MemoryBackend::new();
    let (tree, entry) = sample();
    let key = fresh_key();
    shared
        .store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    (fast, shared, tree, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_counts_failed_backfills_and_still_restores() {
    // A full local disk: the shared tier still answers, so the hit comes from it.
    let (fast, shared, tree, key) =
        failing_backfill(FaultError::Io(std::io::ErrorKind::StorageFull)).await;
    let tiered = Tiered::new(fast, Arc::new(shared));
    let stats = tiered.stats();
    let hit = tiered
        .lookup(&task(), &digest(&key), CachePolicy::Normal)
        .await
        .unwrap()
        .expect("hit");
    let ws = TempWorkspace::new();
    hit.restore(ws.root()).await.unwrap();
    ws.tree()
        .assert_same(tree.expected(), "restored despite the failed backfill");
    assert_eq!(stats.backfills.load(Ordering::Relaxed), 0);
    assert_eq!(stats.backfill_failures.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_takes_a_copy_that_lost_the_shared_tier_for_a_miss_and_tells_its_breaker() {
    // The copy fails as a server's own call deadline reports it (`Unavailable`):
    // restoring from that server would wait on it a second time.
    let (fast, shared, _, key) = failing_backfill(FaultError::Unavailable).await;
    let breaker = Arc::new(CircuitBreaker::new(Arc::new(shared), 3).open_on_outage());
    let tiered = Tiered::new(fast, Arc::clone(&breaker) as Arc<dyn CacheBackend>);
    let stats = tiered.stats();
    let found = tiered
        .lookup(&task(), &digest(&key), CachePolicy::Normal)
        .await
        .unwrap();
    assert!(
        found.is_none(),
        "restored from a shared tier that stopped answering"
    );
    assert_eq!(stats.backfill_failures.load(Ordering::Relaxed), 1);
    assert!(breaker.is_open(), "the breaker did not learn of the outage");
}

// ------------------------------------------------------------------ Instrumented

/// Parses `name{labels} value` lines of the Prometheus text format.
fn samples(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("a sample line has a value");
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

fn value(text: &str, series: &str) -> String {
    samples(text)
        .into_iter()
        .find(|(n, _)| n == series)
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .1
}

/// Drives an instrumented MemoryBackend through every operation, with known sizes.
async fn instrumented_run() -> Arc<Metrics> {
    let instrumented = Instrumented::new(Arc::new(MemoryBackend::new()));
    let metrics = instrumented.metrics();
    assert_eq!(instrumented.name(), "memory");
    let key = fresh_key();
    let entry = CacheEntry {
        stdout: Some(vec![b'o'; 100]),
        stderr: Some(vec![b'e'; 20]),
        outputs: OutputTree::new()
            .file("a.bin", vec![1u8; 1000], false)
            .file("b.bin", vec![2u8; 24], true)
            .dir("d")
            .outputs()
            .to_vec(),
        ..CacheEntry::default()
    };
    instrumented
        .store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    instrumented
        .store(&task(), &fresh_key(), &entry, CachePolicy::Readonly)
        .await
        .unwrap();
    assert!(hit(&instrumented, &key).await);
    assert!(!hit(&instrumented, &fresh_key()).await);
    assert!(!hit(&instrumented, &fresh_key()).await);
    let ws = TempWorkspace::new();
    instrumented
        .restore_outputs(&task(), &key, ws.root())
        .await
        .unwrap();
    instrumented.get_log_bytes(&task(), &key).await.unwrap();
    let e = instrumented
        .restore_outputs(&task(), &fresh_key(), ws.root())
        .await
        .unwrap_err();
    assert!(
        matches!(e, BackendError::ActionNotFound { .. }),
        "errors pass through"
    );
    instrumented
        .check(&task(), "not a key", CachePolicy::Normal)
        .await
        .unwrap_err();
    instrumented.health_check().await.unwrap();
    metrics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instrumented_counts_hits_bytes_calls_and_errors() {
    let metrics = instrumented_run().await;
    assert_eq!(metrics.hits.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.misses.load(Ordering::Relaxed), 2);
    assert_eq!(
        metrics.bytes_up.load(Ordering::Relaxed),
        1144,
        "only the Normal store"
    );
    assert_eq!(metrics.bytes_down.load(Ordering::Relaxed), 1024 + 120);
    assert_eq!(metrics.calls("check"), 4);
    assert_eq!(metrics.calls("store"), 2);
    assert_eq!(metrics.calls("restore_outputs"), 2);
    assert_eq!(metrics.errors("restore_outputs", "action_not_found"), 1);
    assert_eq!(metrics.errors("check", "invalid_key"), 1);
    assert_eq!(metrics.errors("check", "unavailable"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instrumented_renders_prometheus_text() {
    let metrics = instrumented_run().await;
    let text = metrics.render_prometheus("memory");
    for family in [
        "taskcache_lookups_total counter",
        "taskcache_bytes_total counter",
        "taskcache_errors_total counter",
        "taskcache_operation_seconds histogram",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}\n")),
            "{family}:\n{text}"
        );
    }
    let v = |s: &str| value(&text, s);
    assert_eq!(
        v(r#"taskcache_lookups_total{backend="memory",result="hit"}"#),
        "1"
    );
    assert_eq!(
        v(r#"taskcache_lookups_total{backend="memory",result="miss"}"#),
        "2"
    );
    assert_eq!(
        v(r#"taskcache_bytes_total{backend="memory",direction="up"}"#),
        "1144"
    );
    assert_eq!(
        v(r#"taskcache_bytes_total{backend="memory",direction="down"}"#),
        "1144"
    );
    assert_eq!(
        v(
            r#"taskcache_errors_total{backend="memory",op="restore_outputs",kind="action_not_found"}"#
        ),
        "1"
    );
    // Histograms: buckets never decrease, +Inf equals the count, which equals the calls.
    for (op, calls) in [
        ("check", 4u64),
        ("store", 2),
        ("restore_outputs", 2),
        ("get_logs", 1),
        ("health_check", 1),
    ] {
        let prefix =
            format!(r#"taskcache_operation_seconds_bucket{{backend="memory",op="{op}",le="#);
        let buckets: Vec<u64> = samples(&text)
            .into_iter()
            .filter(|(n, _)| n.starts_with(&prefix))
            .map(|(_, v)| v.parse().expect("a bucket is a count"))
            .collect();
        assert_eq!(buckets.len(), 9, "{op}: 8 bounds and +Inf");
        assert!(
            buckets.windows(2).all(|w| w[0] <= w[1]),
            "{op}: {buckets:?}"
        );
        assert_eq!(buckets.last().copied(), Some(calls));
        let count = v(&format!(
            r#"taskcache_operation_seconds_count{{backend="memory",op="{op}"}}"#
        ));
        assert_eq!(count, calls.to_string());
        let sum: f64 = v(&format!(
            r#"taskcache_operation_seconds_sum{{backend="memory",op="{op}"}}"#
        ))
        .parse()
        .expect("a sum is a number");
        assert!(sum >= 0.0);
    }
    // A label value cannot break the format.
    let odd = metrics.render_prometheus("we\"ird\\name\n");
    assert!(odd.contains(r#"backend="we_ird_name_""#), "{odd}");
    assert_eq!(samples(&odd).len(), samples(&text).len());
}

// ---------------------------------------------------------------- CircuitBreaker

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_after_consecutive_transport_failures() {
    let inner = Arc::new(FaultyBackend::new(
        Arc::new(MemoryBackend::new()),
        FaultPlan::always(FaultError::Unavailable),
    ));
    let breaker = CircuitBreaker::new(inner.clone(), 3);
    let key = fresh_key();
    for _ in 0..3 {
        assert!(!breaker.is_open());
        let e = breaker
            .check(&task(), &key, CachePolicy::Normal)
            .await
            .unwrap_err();
        assert!(e.is_gracefully_degradable());
    }
    assert!(breaker.is_open());
    assert_eq!(inner.faults().calls(), 3);
    let (_, entry) = sample();
    let ws = TempWorkspace::new();
    let errors = [
        breaker
            .check(&task(), &key, CachePolicy::Normal)
            .await
            .err(),
        breaker
            .store(&task(), &key, &entry, CachePolicy::Normal)
            .await
            .err(),
        breaker
            .restore_outputs(&task(), &key, ws.root())
            .await
            .err(),
        breaker.get_log_bytes(&task(), &key).await.err(),
        breaker.health_check().await.err(),
    ];
    for e in errors {
        let e = e.expect("an open breaker fails every call");
        assert!(matches!(e, BackendError::Unavailable(_)), "{e}");
    }
    assert_eq!(
        inner.faults().calls(),
        3,
        "an open breaker does not call the backend"
    );
    // It stays open even when the backend recovers.
    inner.faults().set_plan(FaultPlan::healthy());
    assert!(breaker.health_check().await.is_err());
    assert_eq!(breaker.name(), "memory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_resets_on_success_and_ignores_caller_faults() {
    let inner = Arc::new(FaultyBackend::new(
        Arc::new(MemoryBackend::new()),
        FaultPlan::new(Trigger::FirstN(2), FaultError::Connection),
    ));
    let breaker = CircuitBreaker::new(inner.clone(), 3);
    let key = fresh_key();
    for round in 0..3 {
        for _ in 0..2 {
            assert!(
                breaker
                    .check(&task(), &key, CachePolicy::Normal)
                    .await
                    .is_err()
            );
        }
        let r = breaker.check(&task(), &key, CachePolicy::Normal).await;
        assert!(
            r.is_ok_and(|r| !r.hit),
            "round {round}: the third call succeeds"
        );
        assert!(!breaker.is_open(), "a success resets the count");
        inner
            .faults()
            .set_plan(FaultPlan::new(Trigger::FirstN(2), FaultError::Connection));
    }
    inner.faults().set_plan(FaultPlan::healthy());
    let bad = CacheEntry {
        outputs: vec![cache_core::CacheOutput::bytes("../x", b"x".to_vec(), false)],
        ..CacheEntry::default()
    };
    for _ in 0..10 {
        let e = breaker
            .store(&task(), &key, &bad, CachePolicy::Normal)
            .await
            .unwrap_err();
        assert_eq!(e.fault(), cache_core::Fault::Caller, "{e}");
    }
    assert!(!breaker.is_open(), "caller faults are not the backend's");
    assert_eq!(inner.faults().calls(), 19);
    // Any cache fault counts, not only transport errors: a storage that keeps failing
    // with I/O errors is skipped too.
    inner
        .faults()
        .set_plan(FaultPlan::always(FaultError::Io(std::io::ErrorKind::Other)));
    for _ in 0..3 {
        assert!(
            breaker
                .check(&task(), &key, CachePolicy::Normal)
                .await
                .is_err()
        );
    }
    assert!(breaker.is_open(), "I/O failures are cache faults");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_in_front_of_a_shared_tier_stops_calling_it() {
    let shared = Arc::new(FaultyBackend::new(
        Arc::new(MemoryBackend::new()),
        FaultPlan::always(FaultError::Unavailable),
    ));
    let breaker = Arc::new(CircuitBreaker::new(shared.clone(), 2));
    let tiered = Tiered::new(Arc::new(MemoryBackend::new()), breaker.clone());
    let (tree, entry) = sample();
    for _ in 0..5 {
        let key = fresh_key();
        tiered
            .store(&task(), &key, &entry, CachePolicy::Normal)
            .await
            .unwrap();
        assert!(!hit(&tiered, &fresh_key()).await);
        let ws = TempWorkspace::new();
        tiered
            .restore_outputs(&task(), &key, ws.root())
            .await
            .unwrap();
        ws.tree()
            .assert_same(tree.expected(), "restore with the shared tier cut off");
    }
    assert!(breaker.is_open());
    assert_eq!(
        shared.faults().calls(),
        2,
        "after opening, the shared tier is not called"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_backfill_copies_the_lookup_whose_outputs_it_restored() {
    let (fast, shared) = (MemoryBackend::new(), MemoryBackend::new());
    // Another process writing to the shared tier: its own handle on the same storage.
    let other = MemoryBackend::from_storage(shared.storage().clone());
    let tiered = Tiered::new(Arc::new(fast.clone()), Arc::new(shared.clone()));
    let key = fresh_key();
    let version = |v: &str, exit_code: i32| CacheEntry {
        exit_code,
        stdout: Some(format!("log {v}\n").into_bytes()),
        outputs: vec![cache_core::CacheOutput::bytes(
            "out.txt",
            format!("output {v}\n").into_bytes(),
            false,
        )],
        ..CacheEntry::default()
    };
    let p = CachePolicy::Normal;
    shared
        .store(&task(), &key, &version("one", 0), p)
        .await
        .unwrap();

    let hit = tiered.check(&task(), &key, p).await.unwrap();
    assert_eq!((hit.hit, hit.exit_code), (true, Some(0)));
    other
        .store(&task(), &key, &version("two", 3), p)
        .await
        .unwrap();
    let ws = TempWorkspace::new();
    tiered
        .restore_outputs(&task(), &key, ws.root())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(ws.root().join("out.txt")).unwrap(),
        "output one\n"
    );
    // The fast tier got version one whole: its outputs, its logs, its exit code.
    let local = fast.check(&task(), &key, p).await.unwrap();
    assert_eq!(
        local.exit_code,
        Some(0),
        "exit code of the restored version"
    );
    let (stdout, _) = fast.get_log_bytes(&task(), &key).await.unwrap();
    assert_eq!(stdout.as_deref(), Some(&b"log one\n"[..]));
}

// ------------------------------------------------------------- whose fault counts

/// Issue 22: restoring into a missing (or non-directory) workspace was a cache fault,
/// told to the breaker by the hit; three such restores skipped a healthy tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_into_a_missing_workspace_leave_the_breaker_closed() {
    let backend = MemoryBackend::new();
    let (_, entry) = sample();
    let key = fresh_key();
    backend
        .store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    let breaker = CircuitBreaker::new(Arc::new(backend), 3);
    let ws = TempWorkspace::new();
    let not_a_dir = ws.root().join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let missing = ws.root().join("missing");
    for target in [&missing, &not_a_dir, &missing, &not_a_dir] {
        let hit = breaker
            .lookup(&task(), &digest(&key), CachePolicy::Normal)
            .await
            .expect("the breaker lets the lookup through")
            .expect("a hit");
        let e = hit.restore(target).await.unwrap_err();
        assert_eq!(e.fault(), cache_core::Fault::Caller, "{e}");
        assert!(e.to_string().contains(&*target.to_string_lossy()), "{e}");
    }
    assert!(!breaker.is_open(), "the workspace is the caller's");
}

/// A tier that refuses writes (a read-only token) behind `Tiered` and a breaker: the
/// shared check every such backend runs, here on the reference backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_keeps_reading_a_tier_that_refuses_writes() {
    let writer = MemoryBackend::new();
    let read_only = FaultyBackend::new(
        Arc::new(MemoryBackend::from_storage(writer.storage().clone())),
        FaultPlan::always(FaultError::PermissionDenied).only([BackendOp::Store, BackendOp::Import]),
    );
    cache_testkit::refusal::read_only_tier(Arc::new(writer), Arc::new(read_only)).await;
}

/// A fast tier that refuses writes is not copied into again; its shared hits are
/// served from the shared tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_stops_backfilling_a_fast_tier_that_refuses_writes() {
    let fast = Arc::new(FaultyBackend::new(
        Arc::new(MemoryBackend::new()),
        FaultPlan::always(FaultError::PermissionDenied).only([BackendOp::Store, BackendOp::Import]),
    ));
    let shared = MemoryBackend::new();
    let tiered = Tiered::new(fast.clone(), Arc::new(shared.clone()));
    let stats = tiered.stats();
    let (tree, entry) = sample();
    let key = fresh_key();
    shared
        .store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    for round in 0..3 {
        let hit = tiered
            .lookup(&task(), &digest(&key), CachePolicy::Normal)
            .await
            .unwrap()
            .expect("a shared hit");
        let ws = TempWorkspace::new();
        hit.restore(ws.root()).await.unwrap();
        ws.tree()
            .assert_same(tree.expected(), &format!("round {round}"));
    }
    // Each round: a fast lookup; the first round also the refused import.
    assert_eq!(fast.faults().calls(), 4);
    assert_eq!(stats.fast_writes_refused.load(Ordering::Relaxed), 1);
    assert_eq!(stats.backfill_failures.load(Ordering::Relaxed), 0);
    // Stores still reach the shared tier.
    let other = fresh_key();
    tiered
        .store(&task(), &other, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    assert!(hit(&shared, &other).await);
    assert_eq!(fast.faults().calls(), 4, "the fast tier is not written");
}
