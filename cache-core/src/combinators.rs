//! Backend-agnostic wrappers: [`Tiered`], [`Instrumented`] and [`CircuitBreaker`].

use crate::{
    BackendError, BackendResult, CacheBackend, CacheEntry, CacheLookupResult, CacheOutput,
    CachePolicy, Digest, Hit, LogBytes, OutputContent, Task,
};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Counters of what [`Tiered`] did with its tiers.
#[derive(Debug, Default)]
pub struct TieredStats {
    /// Cache faults of the shared tier that were absorbed (the task ran uncached or
    /// from the fast tier).
    pub shared_errors: AtomicU64,
    /// Cache faults of the fast tier that were absorbed.
    pub fast_errors: AtomicU64,
    /// Lookups answered by the shared tier.
    pub shared_hits: AtomicU64,
    /// Shared-tier hits copied into the fast tier.
    pub backfills: AtomicU64,
    /// Backfills that failed (logged, never fatal).
    pub backfill_failures: AtomicU64,
}

/// A fast tier (usually local disk) in front of a shared tier (object store, REAPI).
///
/// * `lookup`: the fast tier, then the shared tier. A shared-tier hit is copied into
///   the fast tier ([`CacheBackend::import`]: the very hit's blobs, each verified, then
///   its record unchanged, so exit code, logs and outputs stay one result) when the
///   caller's policy allows writes; the hit returned is then the fast tier's copy. A
///   `Readonly` lookup writes no tier. If the copy fails, the shared tier's hit is
///   returned, unless the copy timed out or lost the shared tier
///   ([`BackendError::is_outage`]): then the lookup is a miss, so a server that stops
///   answering mid-copy costs one deadline, not one more for the restore, and a
///   [`CircuitBreaker`] around the shared tier is told.
/// * `store`: both tiers.
/// * A cache fault ([`BackendError::fault`]) of either tier never fails a call: it is
///   counted, logged, and the other tier (or a miss) answers. Caller faults (a bad key,
///   bad outputs) are returned.
pub struct Tiered {
    fast: Arc<dyn CacheBackend>,
    shared: Arc<dyn CacheBackend>,
    stats: Arc<TieredStats>,
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
        }
    }

    /// What the tiers did so far.
    #[must_use]
    pub fn stats(&self) -> Arc<TieredStats> {
        Arc::clone(&self.stats)
    }

    /// Absorbs a cache fault of one tier; passes caller faults on.
    fn absorb<T>(&self, shared: bool, op: &str, r: BackendResult<T>) -> BackendResult<Option<T>> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_cache_fault() => {
                let (counter, tier) = if shared {
                    (&self.stats.shared_errors, self.shared.name())
                } else {
                    (&self.stats.fast_errors, self.fast.name())
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(tier, op, error = %e, "cache tier failed; continuing without it");
                Ok(None)
            }
            Err(e) => Err(e),
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
        if let Some(Some(hit)) = self.absorb(false, "lookup", fast)? {
            return Ok(Some(hit));
        }
        let shared = self.shared.lookup(task, key, policy).await;
        let Some(Some(hit)) = self.absorb(true, "lookup", shared)? else {
            return Ok(None);
        };
        self.stats.shared_hits.fetch_add(1, Ordering::Relaxed);
        match self.fast.import(task, &hit, policy).await {
            Ok(Some(local)) => {
                self.stats.backfills.fetch_add(1, Ordering::Relaxed);
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
        let fast = self.fast.store(task, digest, entry, policy).await;
        let fast_ok = self.absorb(false, "store", fast)?.is_some();
        let shared = self.shared.store(task, digest, entry, policy).await;
        let shared_ok = self.absorb(true, "store", shared)?.is_some();
        if !fast_ok && !shared_ok {
            return Err(BackendError::unavailable(format!(
                "neither {} nor {} could store {digest}",
                self.fast.name(),
                self.shared.name()
            )));
        }
        Ok(())
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
        let fast_ok = self.absorb(false, "health_check", fast)?.is_some();
        let shared = self.shared.health_check().await;
        let shared_ok = self.absorb(true, "health_check", shared)?.is_some();
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
    /// Bytes served: the files and logs of hits found by `lookup`, and what the
    /// three-call form restored (`restore_outputs`) and read (`get_log_bytes`).
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

    /// Number of calls of an operation (`check`, `store`, `restore_outputs`, `get_logs`, `health_check`).
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

    /// Counts one lookup: a hit holding `Some(bytes)` of files and logs, or a miss.
    fn count_lookup(&self, hit: Option<u64>) {
        match hit {
            Some(bytes) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                self.bytes_down.fetch_add(bytes, Ordering::Relaxed);
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
            }
        }
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counts hits, misses, errors by kind, bytes and latency of the backend it wraps.
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

fn log_len(l: &LogBytes) -> u64 {
    l.0.as_ref().map_or(0, Vec::len) as u64 + l.1.as_ref().map_or(0, Vec::len) as u64
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
            self.metrics.count_lookup(found.as_ref().map(Hit::bytes));
        }
        self.done("lookup", t, r)
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
            self.metrics.count_lookup(l.hit.then_some(0));
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
        self.done("import", t, r)
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
            let n: u64 = outs
                .iter()
                .map(|o| match &o.content {
                    OutputContent::File { blob: Some(b), .. } => b.size,
                    _ => 0,
                })
                .fold(0, u64::saturating_add);
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

/// Stops calling a backend after it failed with a cache fault
/// ([`BackendError::is_cache_fault`]: I/O, corruption, a server that is down or slow)
/// several times in a row: from then on every call fails at once with `Unavailable`
/// (still a cache fault), instead of paying a timeout per task. A success, or a caller
/// fault, resets the count. The breaker stays open for the life of the wrapper (one CI
/// run), unless [`CircuitBreaker::with_cooldown`] gives it a cool-down for a caller
/// that lives longer: then, that long after opening, one call goes through
/// (half-open); its success closes the breaker, its failure opens it for another
/// cool-down.
///
/// [`CircuitBreaker::open_on_outage`] opens it at the first call that found the
/// backend unreachable or silent, for callers that make too few calls for a count to
/// matter (one `taskcache run` makes two: a lookup and a store).
pub struct CircuitBreaker {
    inner: Arc<dyn CacheBackend>,
    /// Shared with the hits the breaker hands out, which report their faults to it.
    state: Arc<Breaker>,
}

/// What a breaker counts, and its settings.
struct Breaker {
    name: &'static str,
    threshold: u32,
    on_outage: bool,
    cooldown: Option<std::time::Duration>,
    consecutive: AtomicU32,
    open: AtomicBool,
    opened_at: Mutex<Option<Instant>>,
    probing: AtomicBool,
}

impl Breaker {
    fn new(
        name: &'static str,
        threshold: u32,
        on_outage: bool,
        cooldown: Option<std::time::Duration>,
    ) -> Self {
        Breaker {
            name,
            threshold: threshold.max(1),
            on_outage,
            cooldown,
            consecutive: AtomicU32::new(0),
            open: AtomicBool::new(false),
            opened_at: Mutex::new(None),
            probing: AtomicBool::new(false),
        }
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    fn gate(&self) -> BackendResult<()> {
        if self.is_open() {
            let due = self
                .cooldown
                .is_some_and(|c| lock(&self.opened_at).is_some_and(|t| t.elapsed() >= c));
            if due && !self.probing.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    backend = self.name,
                    "cache backend skipped for its cool-down; trying it again"
                );
                return Ok(());
            }
            return Err(BackendError::unavailable(format!(
                "{} skipped for the rest of this run after {} consecutive failures",
                self.name, self.threshold
            )));
        }
        Ok(())
    }

    fn observe<T>(&self, r: BackendResult<T>) -> BackendResult<T> {
        match &r {
            Err(e) => self.fault(e),
            Ok(_) => self.success(),
        }
        r
    }

    fn fault(&self, e: &BackendError) {
        if !e.is_cache_fault() {
            // The caller's mistake says nothing about the backend.
            self.success();
            return;
        }
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let outage = self.on_outage && e.is_outage();
        if self.probing.swap(false, Ordering::Relaxed) {
            // Half-open and failed: another cool-down.
            *lock(&self.opened_at) = Some(Instant::now());
            tracing::warn!(backend = self.name, error = %e, "cache backend still failing; skipping it again");
        } else if (n >= self.threshold || outage) && !self.open.swap(true, Ordering::Relaxed) {
            *lock(&self.opened_at) = Some(Instant::now());
            tracing::warn!(
                backend = self.name,
                failures = n,
                error = %e,
                "cache backend keeps failing; skipping it for the rest of this run"
            );
        }
    }

    fn success(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
        if self.probing.swap(false, Ordering::Relaxed) {
            self.open.store(false, Ordering::Relaxed);
            tracing::info!(backend = self.name, "cache backend answers again");
        }
    }
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner.name())
            .field("threshold", &self.state.threshold)
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// Opens after `threshold` consecutive cache faults (at least 1).
    pub fn new(inner: Arc<dyn CacheBackend>, threshold: u32) -> Self {
        let state = Arc::new(Breaker::new(inner.name(), threshold, false, None));
        CircuitBreaker { inner, state }
    }

    /// Settings changed before use: a breaker starts closed with nothing counted.
    fn reconfigured(mut self, on_outage: bool, cooldown: Option<std::time::Duration>) -> Self {
        let s = &self.state;
        self.state = Arc::new(Breaker::new(s.name, s.threshold, on_outage, cooldown));
        self
    }

    /// Half-open `cooldown` after opening: one call goes through, and closes the
    /// breaker if it succeeds (see the type's docs). Set before use.
    #[must_use]
    pub fn with_cooldown(self, cooldown: std::time::Duration) -> Self {
        let on_outage = self.state.on_outage;
        self.reconfigured(on_outage, Some(cooldown))
    }

    /// Also opens at the first outage ([`BackendError::is_outage`]): a call that timed
    /// out or found the backend unreachable. A server that did not answer one call will
    /// not answer the next one a moment later, so a run pays one deadline for it, not
    /// one per call. Other cache faults (a corrupt entry, a local I/O error) still
    /// count towards the threshold. Set before use.
    #[must_use]
    pub fn open_on_outage(self) -> Self {
        let cooldown = self.state.cooldown;
        self.reconfigured(true, cooldown)
    }

    /// Whether calls are being short-circuited.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.state.is_open()
    }

    /// `hit`, reporting the faults of its restores and log reads (and of copies of it
    /// into another tier, through [`Tiered`]) to this breaker.
    fn watched(&self, hit: Hit) -> Hit {
        let state = Arc::clone(&self.state);
        hit.with_fault_sink(Arc::new(move |e| state.fault(e)))
    }
}

#[async_trait]
impl CacheBackend for CircuitBreaker {
    async fn lookup(
        &self,
        task: &Task,
        key: &Digest,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        self.state.gate()?;
        let found = self
            .state
            .observe(self.inner.lookup(task, key, policy).await)?;
        Ok(found.map(|hit| self.watched(hit)))
    }

    async fn store(
        &self,
        task: &Task,
        digest: &str,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<()> {
        self.state.gate()?;
        self.state
            .observe(self.inner.store(task, digest, entry, policy).await)
    }

    async fn import(
        &self,
        task: &Task,
        hit: &Hit,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        self.state.gate()?;
        let imported = self
            .state
            .observe(self.inner.import(task, hit, policy).await)?;
        Ok(imported.map(|hit| self.watched(hit)))
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn health_check(&self) -> BackendResult<()> {
        self.state.gate()?;
        self.state.observe(self.inner.health_check().await)
    }
}

#[cfg(test)]
#[path = "combinators_tests.rs"]
mod tests;
