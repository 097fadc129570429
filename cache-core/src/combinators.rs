//! Backend-agnostic wrappers: [`Tiered`], [`Instrumented`] and [`CircuitBreaker`].

use crate::recent::Recent;
use crate::{
    BackendError, BackendResult, CacheBackend, CacheEntry, CacheLookupResult, CacheOutput,
    CachePolicy, LogBytes, OutputContent, Task,
};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Counters of what [`Tiered`] did with its shared tier.
#[derive(Debug, Default)]
pub struct TieredStats {
    /// Degradable errors of the shared tier that were absorbed.
    pub shared_errors: AtomicU64,
    /// Lookups answered by the shared tier.
    pub shared_hits: AtomicU64,
    /// Entries copied from the shared tier into the fast tier.
    pub backfills: AtomicU64,
    /// Backfills that failed (logged, never fatal).
    pub backfill_failures: AtomicU64,
}

/// A fast tier (usually local disk) in front of a shared tier (object store, REAPI).
///
/// * `check`: the fast tier, then the shared tier.
/// * `restore_outputs`: the fast tier; on a fast-tier miss, the shared tier, and the
///   restored (verified) files are then stored into the fast tier so the next hit is local,
///   with the exit code and logs of the same shared-tier lookup (kept from `check` for a
///   few seconds), not of a newer entry another writer may have put there meanwhile.
/// * `store`: both tiers; the fast tier's errors are returned, the shared tier's
///   degradable errors are counted and logged, never returned.
/// * A degradable shared-tier error in `check` is a miss. In `restore_outputs` and
///   `get_log_bytes` there is nothing to return, so the (degradable) error is returned
///   and the caller runs the task uncached.
pub struct Tiered {
    fast: Arc<dyn CacheBackend>,
    shared: Arc<dyn CacheBackend>,
    stats: Arc<TieredStats>,
    /// Shared-tier hits of recent `check`s: a backfill copies the exit code and duration
    /// of the lookup whose outputs it restored, not of a second lookup that may see a
    /// newer entry.
    shared_hits: Recent<String, CacheLookupResult>,
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
            shared_hits: Recent::default(),
        }
    }

    /// What the shared tier did so far.
    #[must_use]
    pub fn stats(&self) -> Arc<TieredStats> {
        Arc::clone(&self.stats)
    }

    fn absorb(&self, op: &str, e: &BackendError) {
        self.stats.shared_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(shared = self.shared.name(), op, error = %e, "shared cache tier unavailable; continuing without it");
    }

    async fn store_both(
        &self,
        task: &Task,
        digest: &str,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<()> {
        self.fast.store(task, digest, entry, policy).await?;
        match self.shared.store(task, digest, entry, policy).await {
            Err(e) if e.is_gracefully_degradable() => {
                self.absorb("store", &e);
                Ok(())
            }
            other => other,
        }
    }

    async fn backfill(
        &self,
        task: &Task,
        digest: &str,
        restored: &[CacheOutput],
    ) -> BackendResult<()> {
        let lookup = match self.shared_hits.get(&digest.to_owned()) {
            Some(lookup) => lookup,
            None => {
                self.shared
                    .check(task, digest, CachePolicy::Readonly)
                    .await?
            }
        };
        if !lookup.hit {
            return Ok(());
        }
        let (stdout, stderr) = self.shared.get_log_bytes(task, digest).await?;
        let outputs = restored
            .iter()
            .map(|o| match &o.content {
                OutputContent::File { path, .. } => {
                    CacheOutput::file(&o.path, path, o.is_executable)
                }
                _ => o.clone(),
            })
            .collect();
        let entry = CacheEntry {
            stdout,
            stderr,
            exit_code: lookup.exit_code.unwrap_or(0),
            duration_ms: lookup.cached_duration_ms.unwrap_or(0),
            outputs,
        };
        self.fast
            .store(task, digest, &entry, CachePolicy::Normal)
            .await
    }
}

fn is_fast_miss(e: &BackendError) -> bool {
    e.is_gracefully_degradable()
        || matches!(
            e,
            BackendError::BlobNotFound { .. } | BackendError::CorruptEntry { .. }
        )
}

#[async_trait]
impl CacheBackend for Tiered {
    async fn check(
        &self,
        task: &Task,
        digest: &str,
        policy: CachePolicy,
    ) -> BackendResult<CacheLookupResult> {
        match self.fast.check(task, digest, policy).await {
            Ok(r) if r.hit => return Ok(r),
            Ok(_) => {}
            Err(e) if e.is_gracefully_degradable() => {
                tracing::warn!(fast = self.fast.name(), error = %e, "fast cache tier unavailable");
            }
            Err(e) => return Err(e),
        }
        let epoch = self.shared_hits.epoch();
        match self.shared.check(task, digest, policy).await {
            Ok(r) => {
                if r.hit {
                    self.stats.shared_hits.fetch_add(1, Ordering::Relaxed);
                    self.shared_hits.keep(digest.to_owned(), r.clone(), epoch);
                }
                Ok(r)
            }
            Err(e) if e.is_gracefully_degradable() => {
                self.absorb("check", &e);
                Ok(CacheLookupResult::miss(digest))
            }
            Err(e) => Err(e),
        }
    }

    async fn store(
        &self,
        task: &Task,
        digest: &str,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<()> {
        self.shared_hits.forget(&digest.to_owned());
        let stored = self.store_both(task, digest, entry, policy).await;
        self.shared_hits.forget(&digest.to_owned());
        stored
    }

    async fn restore_outputs(
        &self,
        task: &Task,
        digest: &str,
        workspace: &Path,
    ) -> BackendResult<Vec<CacheOutput>> {
        match self.fast.restore_outputs(task, digest, workspace).await {
            Ok(v) => return Ok(v),
            Err(e) if is_fast_miss(&e) => {}
            Err(e) => return Err(e),
        }
        let restored = self.shared.restore_outputs(task, digest, workspace).await;
        let restored = match restored {
            Err(e)
                if e.is_gracefully_degradable()
                    && !matches!(e, BackendError::ActionNotFound { .. }) =>
            {
                self.absorb("restore", &e);
                return Err(e);
            }
            other => other?,
        };
        match self.backfill(task, digest, &restored).await {
            Ok(()) => {
                self.stats.backfills.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.backfill_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(fast = self.fast.name(), error = %e, "could not copy a shared-tier hit into the fast tier");
            }
        }
        Ok(restored)
    }

    async fn get_log_bytes(&self, task: &Task, digest: &str) -> BackendResult<LogBytes> {
        match self.fast.get_log_bytes(task, digest).await {
            Ok(v) => Ok(v),
            Err(e) if is_fast_miss(&e) => match self.shared.get_log_bytes(task, digest).await {
                Err(e)
                    if e.is_gracefully_degradable()
                        && !matches!(e, BackendError::ActionNotFound { .. }) =>
                {
                    self.absorb("get_logs", &e);
                    Err(e)
                }
                other => other,
            },
            Err(e) => Err(e),
        }
    }

    fn name(&self) -> &'static str {
        "tiered"
    }

    async fn health_check(&self) -> BackendResult<()> {
        self.fast.health_check().await?;
        if let Err(e) = self.shared.health_check().await {
            if !e.is_gracefully_degradable() {
                return Err(e);
            }
            self.absorb("health_check", &e);
        }
        Ok(())
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
    /// Bytes restored into workspaces (file outputs) and read as logs.
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
    async fn check(
        &self,
        task: &Task,
        digest: &str,
        policy: CachePolicy,
    ) -> BackendResult<CacheLookupResult> {
        let t = Instant::now();
        let r = self.inner.check(task, digest, policy).await;
        if let Ok(l) = &r {
            let c = if l.hit {
                &self.metrics.hits
            } else {
                &self.metrics.misses
            };
            c.fetch_add(1, Ordering::Relaxed);
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
            let mut n = log_len(&(entry.stdout.clone(), entry.stderr.clone()));
            for o in &entry.outputs {
                n += match &o.content {
                    OutputContent::Bytes(b) => b.len() as u64,
                    OutputContent::File { blob: Some(b), .. } => b.size,
                    _ => 0,
                };
            }
            self.metrics.bytes_up.fetch_add(n, Ordering::Relaxed);
        }
        self.done("store", t, r)
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
                .sum();
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

/// Stops calling a backend after it failed with `Unavailable`/`Connection` several
/// times in a row: from then on every call fails at once with `Unavailable` (still
/// degradable), instead of paying a timeout per task. A success resets the count.
/// The breaker stays open for the life of the wrapper (one CI run).
pub struct CircuitBreaker {
    inner: Arc<dyn CacheBackend>,
    threshold: u32,
    consecutive: AtomicU32,
    open: AtomicBool,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner.name())
            .field("threshold", &self.threshold)
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// Opens after `threshold` consecutive transport failures (at least 1).
    pub fn new(inner: Arc<dyn CacheBackend>, threshold: u32) -> Self {
        CircuitBreaker {
            inner,
            threshold: threshold.max(1),
            consecutive: AtomicU32::new(0),
            open: AtomicBool::new(false),
        }
    }

    /// Whether calls are being short-circuited.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    fn gate(&self) -> BackendResult<()> {
        if self.is_open() {
            return Err(BackendError::Unavailable(format!(
                "{} skipped for the rest of this run after {} consecutive failures",
                self.inner.name(),
                self.threshold
            )));
        }
        Ok(())
    }

    fn observe<T>(&self, r: BackendResult<T>) -> BackendResult<T> {
        match &r {
            Err(BackendError::Unavailable(_) | BackendError::Connection(_)) => {
                let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= self.threshold && !self.open.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        backend = self.inner.name(),
                        failures = n,
                        "cache backend keeps failing; skipping it for the rest of this run"
                    );
                }
            }
            _ => self.consecutive.store(0, Ordering::Relaxed),
        }
        r
    }
}

#[async_trait]
impl CacheBackend for CircuitBreaker {
    async fn check(
        &self,
        task: &Task,
        digest: &str,
        policy: CachePolicy,
    ) -> BackendResult<CacheLookupResult> {
        self.gate()?;
        self.observe(self.inner.check(task, digest, policy).await)
    }

    async fn store(
        &self,
        task: &Task,
        digest: &str,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<()> {
        self.gate()?;
        self.observe(self.inner.store(task, digest, entry, policy).await)
    }

    async fn restore_outputs(
        &self,
        task: &Task,
        digest: &str,
        workspace: &Path,
    ) -> BackendResult<Vec<CacheOutput>> {
        self.gate()?;
        self.observe(self.inner.restore_outputs(task, digest, workspace).await)
    }

    async fn get_log_bytes(&self, task: &Task, digest: &str) -> BackendResult<LogBytes> {
        self.gate()?;
        self.observe(self.inner.get_log_bytes(task, digest).await)
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn health_check(&self) -> BackendResult<()> {
        self.gate()?;
        self.observe(self.inner.health_check().await)
    }
}
