//! Misses and degradation.

use super::common::{check, restore_and_compare, store};
use crate::fixtures::{
    OutputTree, TempWorkspace, expect_err, expect_ok, fresh_key, fresh_key_with, fresh_seed, task,
};
use crate::{FaultError, FaultPlan, FaultyBackend, Harness, MemoryBackend};
use cache_core::{
    CacheBackend, CacheEntry, CachePolicy, CircuitBreaker, Deadline, Deadlines, DigestAlgorithm,
    Tiered,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// An unknown key: `check` is a miss, `restore_outputs` and `get_logs` are
/// `ActionNotFound` (degradable), and the workspace is untouched.
pub async fn miss_unknown_key(h: Harness) {
    let ws = TempWorkspace::new();
    ws.write("existing.txt", b"existing", true);
    let before = ws.tree();
    for key in [fresh_key(), fresh_key_with(DigestAlgorithm::Sha256)] {
        for policy in CachePolicy::ALL {
            assert!(
                !check(&h, &key, policy).await.hit,
                "{key} ({policy}) must miss"
            );
        }
        let e = expect_err(
            h.backend.restore_outputs(&task(), &key, ws.root()).await,
            &["action_not_found"],
            "restore_outputs of an unknown key",
        );
        assert!(e.is_gracefully_degradable());
        expect_err(
            h.backend.get_log_bytes(&task(), &key).await,
            &["action_not_found"],
            "get_log_bytes of an unknown key",
        );
        expect_err(
            h.backend.get_logs(&task(), &key).await,
            &["action_not_found"],
            "get_logs of an unknown key",
        );
    }
    ws.tree().assert_same(&before, "workspace after misses");
    ws.assert_outside_unchanged();
}

/// The backend as the fast tier of a [`Tiered`] whose shared tier fails every call with
/// `Unavailable`: stores and hits work, misses are misses, nothing panics, and what
/// cannot be answered is a degradable error.
pub async fn degradation_tiered_with_failing_shared_tier(h: Harness) {
    let shared = Arc::new(FaultyBackend::new(
        Arc::new(MemoryBackend::new()),
        FaultPlan::always(FaultError::Unavailable),
    ));
    let tiered = Tiered::new(Arc::clone(&h.backend), shared.clone());
    let stats = tiered.stats();
    let tree = OutputTree::sample(fresh_seed(), h.capabilities.symlinks);
    let key = fresh_key();
    let entry = CacheEntry {
        stdout: Some(b"tiered\n".to_vec()),
        ..tree.entry()
    };
    expect_ok(
        tiered
            .store(&task(), &key, &entry, CachePolicy::Normal)
            .await,
        "store through Tiered with the shared tier down",
    );
    assert!(stats.shared_errors.load(Ordering::Relaxed) >= 1);
    let r = expect_ok(
        tiered.check(&task(), &key, CachePolicy::Normal).await,
        "check",
    );
    assert!(r.hit, "the fast tier answers");
    let ws = TempWorkspace::new();
    expect_ok(
        tiered.restore_outputs(&task(), &key, ws.root()).await,
        "restore",
    );
    ws.tree_async()
        .await
        .assert_same(tree.expected(), "restored through Tiered");
    let (out, _) = expect_ok(tiered.get_log_bytes(&task(), &key).await, "logs");
    assert_eq!(out.as_deref(), Some(&b"tiered\n"[..]));

    let unknown = fresh_key();
    let r = expect_ok(
        tiered.check(&task(), &unknown, CachePolicy::Normal).await,
        "a shared-tier failure in check is a miss",
    );
    assert!(!r.hit);
    let e = tiered
        .restore_outputs(&task(), &unknown, ws.root())
        .await
        .expect_err("nothing to restore");
    assert!(e.is_gracefully_degradable(), "degradable: {e}");
    let e = tiered
        .get_log_bytes(&task(), &unknown)
        .await
        .expect_err("no logs");
    assert!(e.is_gracefully_degradable(), "degradable: {e}");
    expect_ok(
        tiered.health_check().await,
        "health with the shared tier down",
    );
    assert!(
        shared.faults().injected() >= 4,
        "the shared tier was asked and failed"
    );
    ws.assert_outside_unchanged();
}

/// The backend as the shared tier behind a fresh in-memory fast tier: a hit comes from
/// the backend, is restored, and is copied into the fast tier.
pub async fn degradation_backend_as_shared_tier(h: Harness) {
    let tree = OutputTree::sample(fresh_seed(), h.capabilities.symlinks);
    let key = fresh_key();
    let entry = CacheEntry {
        stdout: Some(b"from the shared tier\n".to_vec()),
        exit_code: 4,
        duration_ms: 99,
        ..tree.entry()
    };
    store(&h, &key, &entry).await;
    let fast = MemoryBackend::new();
    let tiered = Tiered::new(Arc::new(fast.clone()), Arc::clone(&h.backend));
    let stats = tiered.stats();
    let r = expect_ok(
        tiered.check(&task(), &key, CachePolicy::Normal).await,
        "check",
    );
    assert!(r.hit && r.exit_code == Some(4), "shared-tier hit: {r:?}");
    let ws = TempWorkspace::new();
    expect_ok(
        tiered.restore_outputs(&task(), &key, ws.root()).await,
        "restore",
    );
    ws.tree_async()
        .await
        .assert_same(tree.expected(), "restored from the shared tier");
    assert_eq!(
        stats.backfills.load(Ordering::Relaxed),
        1,
        "backfilled once"
    );
    let r = expect_ok(
        fast.check(&task(), &key, CachePolicy::Normal).await,
        "fast check",
    );
    assert!(r.hit && r.exit_code == Some(4) && r.cached_duration_ms == Some(99));
    let (out, err) = expect_ok(fast.get_log_bytes(&task(), &key).await, "fast logs");
    assert_eq!(out.as_deref(), Some(&b"from the shared tier\n"[..]));
    assert_eq!(err, None);
    let fast_only = Arc::new(fast);
    let h2 = crate::Harness::new(fast_only.clone(), fast_only.clone(), fast_only.io().clone());
    restore_and_compare(&h2, &key, &tree, "backfilled copy").await;
    ws.assert_outside_unchanged();
}

/// The documented executor loop; `ran` counts runs of the "task" (exit code 3).
async fn run_cached(cache: &dyn CacheBackend, key: &str, ran: &mut u32) -> i32 {
    let digest = cache_core::Digest::parse(key).expect("a valid key");
    let replayed = async {
        let Some(hit) = cache.lookup(&task(), &digest, CachePolicy::Normal).await? else {
            return Ok(None);
        };
        hit.logs().await?;
        Ok::<_, cache_core::BackendError>(Some(hit.exit_code()))
    };
    match replayed.await {
        Ok(Some(code)) => return code,
        Ok(None) => {}
        Err(e) => assert!(
            e.is_cache_fault(),
            "a caller fault from a failing cache: {e}"
        ),
    }
    *ran += 1;
    let entry = CacheEntry {
        exit_code: 3,
        stdout: Some(b"ran\n".to_vec()),
        ..CacheEntry::default()
    };
    if let Err(e) = cache.store(&task(), key, &entry, CachePolicy::Normal).await {
        assert!(
            e.is_cache_fault(),
            "a caller fault from a failing store: {e}"
        );
    }
    3
}

/// An executor following the crate docs' pattern (a lookup, and on a cache fault run
/// the task uncached; a failed store is a warning) always runs the task and returns
/// its own exit code when the backend fails every call with an I/O error, a
/// corruption or unavailability, directly or as the shared tier behind it.
pub async fn degradation_executor_runs_the_task_when_the_cache_fails(h: Harness) {
    for error in [
        FaultError::Io(std::io::ErrorKind::PermissionDenied),
        FaultError::CorruptEntry,
        FaultError::Unavailable,
    ] {
        let failing: Arc<dyn CacheBackend> = Arc::new(FaultyBackend::new(
            Arc::clone(&h.backend),
            FaultPlan::always(error.clone()),
        ));
        let tiered: Arc<dyn CacheBackend> =
            Arc::new(Tiered::new(Arc::clone(&failing), Arc::clone(&failing)));
        for (what, cache) in [("the backend", &failing), ("both tiers", &tiered)] {
            let mut ran = 0;
            let key = fresh_key();
            for _ in 0..2 {
                assert_eq!(
                    run_cached(cache.as_ref(), &key, &mut ran).await,
                    3,
                    "{what}, {error:?}"
                );
            }
            assert_eq!(ran, 2, "{what}, {error:?}: the task must run every time");
        }
    }
    // And with the backend healthy, the same loop hits the second time.
    let mut ran = 0;
    let key = fresh_key();
    for _ in 0..2 {
        assert_eq!(run_cached(h.backend.as_ref(), &key, &mut ran).await, 3);
    }
    assert_eq!(ran, 1, "a healthy backend replays the second run");
}

/// A backend that never answers, behind [`Deadline`] and a [`CircuitBreaker`] as the
/// crate docs stack them: each call costs at most its deadline, the breaker opens after
/// repeated timeouts, and the documented executor loop runs the task every time.
pub async fn degradation_hung_backend_costs_one_deadline(h: Harness) {
    let hung: Arc<dyn CacheBackend> = Arc::new(FaultyBackend::new(
        Arc::clone(&h.backend),
        FaultPlan::healthy().with_latency(Duration::from_secs(3600)),
    ));
    let limit = Duration::from_millis(200);
    let bounded: Arc<dyn CacheBackend> = Arc::new(Deadline::new(
        hung,
        Deadlines::new(limit),
        crate::tokio_sleep(),
    ));
    let breaker = CircuitBreaker::new(bounded, 2);
    let started = Instant::now();
    let mut ran = 0;
    for _ in 0..6 {
        assert_eq!(run_cached(&breaker, &fresh_key(), &mut ran).await, 3);
    }
    assert_eq!(ran, 6, "the task runs every time");
    assert!(breaker.is_open(), "repeated timeouts open the breaker");
    // Without deadlines this loop would wait an hour per call; with them, two
    // timeouts open the breaker and the rest skip the cache. The bound is generous.
    let took = started.elapsed();
    assert!(
        took < limit * 2 + Duration::from_secs(20),
        "a hung cache held the executor for {took:?}"
    );
}
