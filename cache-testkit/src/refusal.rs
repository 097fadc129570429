//! What every tier that refuses writes by permission must do, checked here once for
//! all of them: a REAPI action cache with `update_enabled: false`, an object store that
//! answers 403 to writes, a token that may read and not write.
//!
//! A backend's test opens two handles on one storage, one that may write and one that
//! may not, and calls [`read_only_tier`]. What only that backend can see (that no blob
//! was sent before the refusal, which status or HTTP answer was mapped) it checks
//! itself.

use crate::MemoryBackend;
use crate::fixtures::{OutputTree, TempWorkspace, digest, fresh_key, fresh_seed, task};
use crate::{FaultPlan, FaultyBackend};
use cache_core::{CacheBackend, CacheEntry, CachePolicy, CircuitBreaker, Fault, Tiered};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Stores run through the tiers in [`read_only_tier`].
pub const RUNS: u64 = 3;

/// Checks a tier that refuses writes: `writer` and `read_only` are handles on one
/// storage, the first allowed to write, the second not.
///
/// * An entry `writer` stored is a hit through `read_only`, and restores whole.
/// * A store through `read_only` fails as [`Fault::Permission`]: degradable, not an
///   outage.
/// * Behind [`Tiered`] (a fresh [`MemoryBackend`] in front) and a
///   [`CircuitBreaker`] that opens at the first outage, [`RUNS`] stores all succeed
///   (the fast tier has them), only the first reaches `read_only`, the breaker stays
///   closed, and [`cache_core::TieredStats::shared_writes_refused`] counts all of them.
/// * Reads continue: an entry `writer` stores afterwards is a hit through the tiers,
///   from the shared tier, and restores whole; a key never stored is a miss, not an
///   error.
///
/// # Panics
///
/// When the backend does not behave so (this is a test helper).
pub async fn read_only_tier(writer: Arc<dyn CacheBackend>, read_only: Arc<dyn CacheBackend>) {
    let sample = || {
        let tree = OutputTree::sample(fresh_seed(), cfg!(unix));
        let entry = CacheEntry {
            stdout: Some(b"built\n".to_vec()),
            ..tree.entry()
        };
        (tree, entry)
    };
    let p = CachePolicy::Normal;

    let (tree, entry) = sample();
    let key = fresh_key();
    writer
        .store(&task(), &key, &entry, p)
        .await
        .expect("writer stores");
    let hit = read_only
        .lookup(&task(), &digest(&key), p)
        .await
        .expect("a read-only handle reads")
        .expect("a hit");
    let ws = TempWorkspace::new();
    hit.restore(ws.root()).await.expect("restore");
    ws.tree()
        .assert_same(tree.expected(), "restored through the read-only handle");

    let e = read_only
        .store(&task(), &fresh_key(), &entry, p)
        .await
        .expect_err("a read-only handle refuses stores");
    assert_eq!(e.fault(), Fault::Permission, "{e}");
    assert!(e.is_gracefully_degradable() && !e.is_outage(), "{e}");

    let shared = Arc::new(FaultyBackend::new(read_only, FaultPlan::healthy()));
    let breaker = Arc::new(CircuitBreaker::new(shared.clone(), 1).open_on_outage());
    let fast = MemoryBackend::new();
    let tiered = Tiered::new(Arc::new(fast.clone()), breaker.clone());
    let stats = tiered.stats();
    let mut reached = 0;
    for run in 0..RUNS {
        let before = shared.faults().calls();
        let key = fresh_key();
        tiered
            .store(&task(), &key, &entry, p)
            .await
            .unwrap_or_else(|e| panic!("run {run}: the fast tier stores: {e}"));
        assert!(
            fast.check(&task(), &key, CachePolicy::Readonly)
                .await
                .expect("check")
                .hit
        );
        reached += shared.faults().calls() - before;
    }
    assert_eq!(
        reached, 1,
        "only the first store is sent to a tier that refused"
    );
    assert!(tiered.shared_refuses_writes());
    assert_eq!(stats.shared_writes_refused.load(Ordering::Relaxed), RUNS);
    assert_eq!(stats.shared_errors.load(Ordering::Relaxed), 0);
    assert!(!breaker.is_open(), "a refused write is not an outage");

    let (tree, entry) = sample();
    let key = fresh_key();
    writer
        .store(&task(), &key, &entry, p)
        .await
        .expect("writer stores");
    let hit = tiered
        .lookup(&task(), &digest(&key), p)
        .await
        .expect("lookup through the tiers")
        .expect("the shared tier is still read");
    assert_eq!(stats.shared_hits.load(Ordering::Relaxed), 1);
    let ws = TempWorkspace::new();
    hit.restore(ws.root()).await.expect("restore");
    ws.tree()
        .assert_same(tree.expected(), "restored from a tier that refuses writes");
    let missing = tiered.lookup(&task(), &digest(&fresh_key()), p).await;
    assert!(matches!(missing, Ok(None)), "{missing:?}");
    assert!(!breaker.is_open());
}
