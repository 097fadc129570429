//! Backend-agnostic wrappers: [`Tiered`] and [`Instrumented`] (the third,
//! [`crate::CircuitBreaker`], is in `breaker.rs`).

use crate::layer::{HitCall, HitFuture, HitLayer};
use crate::{
    BackendError, BackendResult, CacheBackend, CacheEntry, CacheLookupResult, CacheOutput,
    CachePolicy, Digest, Fault, Hit, HitTier, LogBytes, Task,
};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Counters of what [`Tiered`] did with its tiers.
#[derive(Debug, Default)]
pub struct TieredStats {
    /// Cache faults of the shared tier that were absorbed (the task ran uncached or
    /// from the fast tier), and reads it refused ([`Fault::Permission`]).
    pub shared_errors: AtomicU64,
    /// Cache faults of the fast tier that were absorbed, and reads it refused.
    pub fast_errors: AtomicU64,
    /// Lookups answered by the shared tier.
    pub shared_hits: AtomicU64,
    /// Shared-tier hits copied into the fast tier.
    pub backfills: AtomicU64,
    /// Backfills that failed (logged, never fatal).
    pub backfill_failures: AtomicU64,
    /// Writes (stores) the shared tier refused ([`Fault::Permission`]), and those not
    /// sent to it afterwards because it refuses writes.
    pub shared_writes_refused: AtomicU64,
    /// Writes (stores and backfills) the fast tier refused, and those not sent to it
    /// afterwards.
    pub fast_writes_refused: AtomicU64,
}

/// What one tier refused by permission ([`Fault::Permission`]).
#[derive(Debug, Default)]
struct Refusals {
    /// It refused a write: it is not written again by this `Tiered`.
    writes: AtomicBool,
    /// A refused read was reported (once; later ones are counted quietly).
    reads_said: AtomicBool,
}

/// A fast tier (usually local disk) in front of a shared tier (object store, REAPI).
///
/// Its hits say which tier had them ([`Hit::source`], [`HitTier`]): a shared tier's
/// hit copied into the fast tier is still [`HitTier::Shared`], naming the shared
/// backend.
///
/// * `lookup`: the fast tier, then the shared tier. A shared-tier hit is copied into
///   the fast tier ([`CacheBackend::import`]: the very hit's blobs, each verified, then
///   its record unchanged, so exit code, logs and outputs stay one result) when the
///   caller's policy allows writes; the hit returned is then the fast tier's copy. A
///   `Readonly` lookup writes no tier. If the copy fails, the shared tier's hit is
///   returned, unless the copy timed out or lost the shared tier
///   ([`BackendError::is_outage`]): then the lookup is a miss, so a server that stops
///   answering mid-copy costs one deadline, not one more for the restore, and a
///   [`crate::CircuitBreaker`] around the shared tier is told.
/// * `store`: both tiers.
/// * A cache fault ([`Fault::Cache`]) of either tier never fails a call: it is
///   counted, logged, and the other tier (or a miss) answers. Caller faults (a bad key,
///   bad outputs) are returned.
/// * A tier that refuses a write by permission ([`Fault::Permission`]: a read-only
///   token, a read-only REAPI action cache, an HTTP 403) is not written again by this
///   `Tiered` (for a long-lived executor: the life of the process), and is still read:
///   its hits are served as before. One warning says so; the stores not sent are
///   counted ([`TieredStats::shared_writes_refused`]). A refused read is absorbed like
///   a cache fault, with one warning.
pub struct Tiered {
    fast: Arc<dyn CacheBackend>,
    shared: Arc<dyn CacheBackend>,
    stats: Arc<TieredStats>,
    /// Indexed by [`Tier`].
    refusals: [Refusals; 2],
}

/// Which of the two tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Fast = 0,
    Shared = 1,
}

/// What a tier did with a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    Yes,
    Failed,
    /// Refused by permission, now or before.
    Refused,
}

impl std::fmt::Debug for Tiered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiered")
            .field("fast", &self.fast.name())
            .field("shared", &self.shared.name())
            .finish_non_exhaustive()
    }
}

impl Tiered {
    /// Puts `fast` in front of `shared`.
    pub fn new(fast: Arc<dyn CacheBackend>, shared: Arc<dyn CacheBackend>) -> Self {
        Tiered {
            fast,
            shared,
            stats: Arc::default(),
            refusals: Default::default(),
        }
    }

    /// What the tiers did so far.
    #[must_use]
    pub fn stats(&self) -> Arc<TieredStats> {
        Arc::clone(&self.stats)
    }

    /// Whether the shared tier refused a write: it is no longer written, still read.
    #[must_use]
    pub fn shared_refuses_writes(&self) -> bool {
        self.refusals[Tier::Shared as usize]
            .writes
            .load(Ordering::Relaxed)
    }

    fn tier(&self, tier: Tier) -> &dyn CacheBackend {
        match tier {
            Tier::Fast => &*self.fast,
            Tier::Shared => &*self.shared,
        }
    }

    fn errors(&self, tier: Tier) -> &AtomicU64 {
        match tier {
            Tier::Fast => &self.stats.fast_errors,
            Tier::Shared => &self.stats.shared_errors,
        }
    }

    fn writes_refused(&self, tier: Tier) -> &AtomicU64 {
        match tier {
            Tier::Fast => &self.stats.fast_writes_refused,
            Tier::Shared => &self.stats.shared_writes_refused,
        }
    }

    fn refuses_writes(&self, tier: Tier) -> bool {
        self.refusals[tier as usize].writes.load(Ordering::Relaxed)
    }

    /// Absorbs a read's cache fault or refused permission of one tier; passes caller
    /// faults on.
    fn absorb<T>(&self, tier: Tier, op: &str, r: BackendResult<T>) -> BackendResult<Option<T>> {
        let e = match r {
            Ok(v) => return Ok(Some(v)),
            Err(e) if e.fault() == Fault::Caller => return Err(e),
            Err(e) => e,
        };
        self.errors(tier).fetch_add(1, Ordering::Relaxed);
        let name = self.tier(tier).name();
        if e.fault() == Fault::Permission {
            let said = self.refusals[tier as usize]
                .reads_said
                .swap(true, Ordering::Relaxed);
            if said {
                tracing::debug!(tier = name, op, error = %e, "cache tier refuses access");
            } else {
                tracing::warn!(tier = name, op, error = %e, "cache tier refuses access; continuing without it");
            }
        } else {
            tracing::warn!(tier = name, op, error = %e, "cache tier failed; continuing without it");
        }
        Ok(None)
    }

    /// Notes that `tier` refused a write (`e`): it is not written again; said once.
    fn refused_write(&self, tier: Tier, op: &str, e: &BackendError) {
        self.writes_refused(tier).fetch_add(1, Ordering::Relaxed);
        if !self.refusals[tier as usize]
            .writes
            .swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                tier = self.tier(tier).name(),
                op,
                error = %e,
                "cache tier refuses writes: still reading from it, no longer writing to it"
            );
        }
    }

    /// Stores in one tier, unless it refuses writes.
    async fn store_in(
        &self,
        tier: Tier,
        task: &Task,
        digest: &str,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<Stored> {
        if self.refuses_writes(tier) {
            self.writes_refused(tier).fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                tier = self.tier(tier).name(),
                "not storing in a cache tier that refuses writes"
            );
            return Ok(Stored::Refused);
        }
        match self.tier(tier).store(task, digest, entry, policy).await {
            Err(e) if e.fault() == Fault::Permission => {
                self.refused_write(tier, "store", &e);
                Ok(Stored::Refused)
            }
            r => Ok(match self.absorb(tier, "store", r)? {
                Some(()) => Stored::Yes,
                None => Stored::Failed,
            }),
        }
    }
}

#[async_trait]
impl CacheBackend for Tiered {
    async fn lookup(
        &self,
        task: &Task,
        key: &Digest,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        let fast = self.fast.lookup(task, key, policy).await;
        if let Some(Some(hit)) = self.absorb(Tier::Fast, "lookup", fast)? {
            return Ok(Some(hit.from_tier(HitTier::Fast)));
        }
        let shared = self.shared.lookup(task, key, policy).await;
        let Some(Some(hit)) = self.absorb(Tier::Shared, "lookup", shared)? else {
            return Ok(None);
        };
        let hit = hit.from_tier(HitTier::Shared);
        self.stats.shared_hits.fetch_add(1, Ordering::Relaxed);
        if self.refuses_writes(Tier::Fast) {
            return Ok(Some(hit));
        }
        match self.fast.import(task, &hit, policy).await {
            Ok(Some(local)) => {
                self.stats.backfills.fetch_add(1, Ordering::Relaxed);
                // Restored from the fast tier now, but found in the shared one.
                let local = local
                    .from_tier(HitTier::Shared)
                    .found_in(hit.source().backend);
                Ok(Some(local))
            }
            Ok(None) => Ok(Some(hit)),
            Err(e) if e.is_outage() => {
                // The copy read the shared tier until it timed out or lost it (a local
                // disk fails with I/O errors, such as a full disk, not with these):
                // restoring from the shared tier would wait on it again. The task runs
                // instead, and the shared tier's breaker, if any, learns of the outage,
                // so the store after the run skips it.
                self.stats.backfill_failures.fetch_add(1, Ordering::Relaxed);
                self.stats.shared_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(shared = self.shared.name(), error = %e, "the shared tier stopped answering while its hit was copied; running the task");
                hit.report_fault(&e);
                Ok(None)
            }
            Err(e) if e.fault() == Fault::Permission => {
                self.refused_write(Tier::Fast, "import", &e);
                Ok(Some(hit))
            }
            Err(e) => {
                self.stats.backfill_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(fast = self.fast.name(), error = %e, "could not copy a shared-tier hit into the fast tier; restoring from the shared tier");
                Ok(Some(hit))
            }
        }
    }

    async fn store(
        &self,
        task: &Task,
        digest: &str,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<()> {
        let fast = self
            .store_in(Tier::Fast, task, digest, entry, policy)
            .await?;
        let shared = self
            .store_in(Tier::Shared, task, digest, entry, policy)
            .await?;
        match (fast, shared) {
            (Stored::Yes, _) | (_, Stored::Yes) => Ok(()),
            (Stored::Refused, Stored::Refused) => Err(BackendError::permission_denied(format!(
                "neither {} nor {} accepts writes",
                self.fast.name(),
                self.shared.name()
            ))),
            _ => Err(BackendError::unavailable(format!(
                "neither {} nor {} could store {digest}",
                self.fast.name(),
                self.shared.name()
            ))),
        }
    }

    async fn import(
        &self,
        task: &Task,
        hit: &Hit,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        self.fast.import(task, hit, policy).await
    }

    fn name(&self) -> &'static str {
        "tiered"
    }

    async fn health_check(&self) -> BackendResult<()> {
        let fast = self.fast.health_check().await;
        let fast_ok = self.absorb(Tier::Fast, "health_check", fast)?.is_some();
        let shared = self.shared.health_check().await;
        let shared_ok = self.absorb(Tier::Shared, "health_check", shared)?.is_some();
        if fast_ok || shared_ok {
            Ok(())
        } else {
            Err(BackendError::unavailable("no cache tier answers"))
        }
    }
}

/// Latency histogram bucket upper bounds, in seconds.
const BUCKETS: [f64; 8] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.1, 1.0, 10.0];

#[derive(Debug, Default, Clone)]
struct OpStats {
    count: u64,
    sum_secs: f64,
    buckets: [u64; BUCKETS.len()],
}

/// Counters collected by [`Instrumented`].
#[derive(Debug, Default)]
pub struct Metrics {
    /// Lookups that hit.
    pub hits: AtomicU64,
    /// Lookups that missed.
    pub misses: AtomicU64,
    /// Bytes served, counted when they are: what hits restored and read
    /// ([`Hit::restore`], [`Hit::logs`]; a [`Hit::log_reader`] counts its stream's
    /// size when opened), and what the three-call form restored
    /// (`restore_outputs`) and read (`get_log_bytes`). A hit that is found and not
    /// used serves nothing.
    pub bytes_down: AtomicU64,
    /// Bytes handed to `store` in memory (logs, in-memory outputs, and file outputs
    /// whose size the caller supplied).
    pub bytes_up: AtomicU64,
    errors: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    ops: Mutex<BTreeMap<&'static str, OpStats>>,
}

impl Metrics {
    /// Errors counted for an operation and error kind ([`BackendError::kind`]).
    #[must_use]
    pub fn errors(&self, op: &'static str, kind: &'static str) -> u64 {
        lock(&self.errors).get(&(op, kind)).copied().unwrap_or(0)
    }

    /// Number of calls of an operation (`lookup`, `check`, `store`, `import`,
    /// `restore_outputs`, `get_logs`, `health_check`; and the calls of the hits it
    /// found: `restore`, `logs`, `log_reader`).
    #[must_use]
    pub fn calls(&self, op: &'static str) -> u64 {
        lock(&self.ops).get(op).map_or(0, |s| s.count)
    }

    fn record(&self, op: &'static str, started: Instant, err: Option<&BackendError>) {
        let secs = started.elapsed().as_secs_f64();
        {
            let mut ops = lock(&self.ops);
            let s = ops.entry(op).or_default();
            s.count += 1;
            s.sum_secs += secs;
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    s.buckets[i] += 1;
                }
            }
        }
        if let Some(e) = err {
            *lock(&self.errors).entry((op, e.kind())).or_default() += 1;
        }
    }

    /// Counts one lookup: a hit or a miss.
    fn count_lookup(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders the counters in the Prometheus text exposition format.
    #[must_use]
    pub fn render_prometheus(&self, backend: &str) -> String {
        let mut s = String::new();
        let b = backend.replace(['\\', '"', '\n'], "_");
        let _ = writeln!(s, "# HELP taskcache_lookups_total Cache lookups by result.");
        let _ = writeln!(s, "# TYPE taskcache_lookups_total counter");
        for (res, v) in [("hit", &self.hits), ("miss", &self.misses)] {
            let _ = writeln!(
                s,
                "taskcache_lookups_total{{backend=\"{b}\",result=\"{res}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(s, "# HELP taskcache_bytes_total Bytes moved by direction.");
        let _ = writeln!(s, "# TYPE taskcache_bytes_total counter");
        for (dir, v) in [("down", &self.bytes_down), ("up", &self.bytes_up)] {
            let _ = writeln!(
                s,
                "taskcache_bytes_total{{backend=\"{b}\",direction=\"{dir}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP taskcache_errors_total Errors by operation and kind."
        );
        let _ = writeln!(s, "# TYPE taskcache_errors_total counter");
        for ((op, kind), n) in lock(&self.errors).iter() {
            let _ = writeln!(
                s,
                "taskcache_errors_total{{backend=\"{b}\",op=\"{op}\",kind=\"{kind}\"}} {n}"
            );
        }
        let _ = writeln!(
            s,
            "# HELP taskcache_operation_seconds Latency of backend calls."
        );
        let _ = writeln!(s, "# TYPE taskcache_operation_seconds histogram");
        for (op, st) in lock(&self.ops).iter() {
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "taskcache_operation_seconds_bucket{{backend=\"{b}\",op=\"{op}\",le=\"{le}\"}} {}",
                    st.buckets[i]
                );
            }
            let _ = writeln!(
                s,
                "taskcache_operation_seconds_bucket{{backend=\"{b}\",op=\"{op}\",le=\"+Inf\"}} {}",
                st.count
            );
            let _ = writeln!(
                s,
                "taskcache_operation_seconds_sum{{backend=\"{b}\",op=\"{op}\"}} {}",
                st.sum_secs
            );
            let _ = writeln!(
                s,
                "taskcache_operation_seconds_count{{backend=\"{b}\",op=\"{op}\"}} {}",
                st.count
            );
        }
        s
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counts hits, misses, errors by kind, bytes and latency of the backend it wraps,
/// and of the restores and log reads of the hits it hands out (a [`HitLayer`]: a hit
/// whose restore failed shows as an error of `restore`, and bytes are counted when
/// they are served, not when the hit is found).
///
/// ```
/// # use std::sync::Arc;
/// # use cache_core::{Instrumented, CacheBackend};
/// fn instrument(b: Arc<dyn CacheBackend>) -> (Arc<dyn CacheBackend>, Arc<cache_core::Metrics>) {
///     let i = Instrumented::new(b);
///     let m = i.metrics();
///     (Arc::new(i), m)
/// }
/// ```
pub struct Instrumented {
    inner: Arc<dyn CacheBackend>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Instrumented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instrumented")
            .field("inner", &self.inner.name())
            .finish_non_exhaustive()
    }
}

impl Instrumented {
    /// Wraps a backend.
    pub fn new(inner: Arc<dyn CacheBackend>) -> Self {
        Instrumented {
            inner,
            metrics: Arc::default(),
        }
    }

    /// The live counters.
    #[must_use]
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    fn done<T>(&self, op: &'static str, started: Instant, r: BackendResult<T>) -> BackendResult<T> {
        self.metrics.record(op, started, r.as_ref().err());
        r
    }
}

use crate::hit::log_len;

/// The hits [`Instrumented`] hands out count their restores and log reads: latency,
/// errors by kind, and the bytes served, when they happen.
impl HitLayer for Metrics {
    fn wrap<'a>(&'a self, _: &'a Hit, call: HitCall, inner: HitFuture<'a>) -> HitFuture<'a> {
        Box::pin(async move {
            let started = Instant::now();
            let served = inner.await;
            self.record(call.op.name(), started, served.as_ref().err());
            if let Ok(s) = &served {
                self.bytes_down.fetch_add(s.bytes, Ordering::Relaxed);
            }
            served
        })
    }
}

#[async_trait]
impl CacheBackend for Instrumented {
    async fn lookup(
        &self,
        task: &Task,
        key: &Digest,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        let t = Instant::now();
        let r = self.inner.lookup(task, key, policy).await;
        if let Ok(found) = &r {
            self.metrics.count_lookup(found.is_some());
        }
        let layer = Arc::clone(&self.metrics) as Arc<dyn HitLayer>;
        self.done("lookup", t, r)
            .map(|found| found.map(|hit| hit.layered(layer)))
    }

    async fn check(
        &self,
        task: &Task,
        digest: &str,
        policy: CachePolicy,
    ) -> BackendResult<CacheLookupResult> {
        let t = Instant::now();
        let r = self.inner.check(task, digest, policy).await;
        if let Ok(l) = &r {
            self.metrics.count_lookup(l.hit);
        }
        self.done("check", t, r)
    }

    async fn store(
        &self,
        task: &Task,
        digest: &str,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<()> {
        let t = Instant::now();
        let r = self.inner.store(task, digest, entry, policy).await;
        if r.is_ok() && crate::policy_allows_write(policy) {
            self.metrics
                .bytes_up
                .fetch_add(entry.known_bytes(), Ordering::Relaxed);
        }
        self.done("store", t, r)
    }

    async fn import(
        &self,
        task: &Task,
        hit: &Hit,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        let t = Instant::now();
        let r = self.inner.import(task, hit, policy).await;
        if let Ok(Some(h)) = &r {
            self.metrics
                .bytes_up
                .fetch_add(h.bytes(), Ordering::Relaxed);
        }
        let layer = Arc::clone(&self.metrics) as Arc<dyn HitLayer>;
        self.done("import", t, r)
            .map(|found| found.map(|hit| hit.layered(layer)))
    }

    async fn restore_outputs(
        &self,
        task: &Task,
        digest: &str,
        workspace: &Path,
    ) -> BackendResult<Vec<CacheOutput>> {
        let t = Instant::now();
        let r = self.inner.restore_outputs(task, digest, workspace).await;
        if let Ok(outs) = &r {
            let n = crate::hit::restored_bytes(outs);
            self.metrics.bytes_down.fetch_add(n, Ordering::Relaxed);
        }
        self.done("restore_outputs", t, r)
    }

    async fn get_log_bytes(&self, task: &Task, digest: &str) -> BackendResult<LogBytes> {
        let t = Instant::now();
        let r = self.inner.get_log_bytes(task, digest).await;
        if let Ok(l) = &r {
            self.metrics
                .bytes_down
                .fetch_add(log_len(l), Ordering::Relaxed);
        }
        self.done("get_logs", t, r)
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn health_check(&self) -> BackendResult<()> {
        let t = Instant::now();
        let r = self.inner.health_check().await;
        self.done("health_check", t, r)
    }
}
