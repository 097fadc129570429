//! [`CircuitBreaker`]: stop calling a tier that keeps failing, and only for the
//! failures that are its own.

use crate::combinators::lock;
use crate::layer::{HitCall, HitFuture, HitLayer};
use crate::{
    BackendError, BackendResult, CacheBackend, CacheEntry, CachePolicy, Digest, Fault, Hit, Task,
};
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Stops calling a backend after it failed with a cache fault
/// ([`BackendError::is_cache_fault`]: I/O, corruption, a server that is down or slow)
/// several times in a row: from then on every call fails at once with `Unavailable`
/// (still a cache fault), instead of paying a timeout per task.
///
/// Only the cache's faults count ([`Fault::Cache`]). A success resets the count, and so
/// does a refused permission ([`Fault::Permission`]: the backend answered; a tier that
/// refuses writes is [`crate::Tiered`]'s business, not an outage). A caller fault (a
/// bad key, a missing workspace) neither counts nor resets: it says nothing about the
/// backend.
///
/// The breaker stays open for the life of the wrapper (one CI run), unless
/// [`CircuitBreaker::with_cooldown`] gives it a cool-down for a caller that lives
/// longer: then, that long after opening, one call goes through (half-open); its
/// success (or a refused permission) closes the breaker, its cache fault opens it for
/// another cool-down. A trial call that ends without a verdict — its future dropped by
/// a cancel or an outer deadline, or a caller fault — hands the trial on: the next call
/// tries the backend.
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
    cooldown: Option<Duration>,
    consecutive: AtomicU32,
    open: AtomicBool,
    opened_at: Mutex<Option<Instant>>,
    /// A trial call is under way (half-open); only one at a time.
    probing: AtomicBool,
}

/// A call the gate let through, to be judged by [`Pass::observe`].
///
/// The trial call of a half-open breaker holds the trial (`probing`) until its outcome
/// is known. If its future is dropped before that (the caller cancelled it, or a
/// deadline outside the breaker fired), dropping the pass hands the trial back, so the
/// next call tries the backend instead of every call being refused for good.
#[must_use]
struct Pass<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

impl Pass<'_> {
    /// Tells the breaker what the call's outcome says about the backend.
    fn observe<T>(mut self, r: BackendResult<T>) -> BackendResult<T> {
        let probe = std::mem::take(&mut self.probe);
        match &r {
            Ok(_) => self.breaker.answered(probe),
            Err(e) => self.breaker.failed(e, probe),
        }
        r
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.probing.store(false, Ordering::Relaxed);
            tracing::debug!(
                backend = self.breaker.name,
                "the trial call was dropped before it finished; the next call tries again"
            );
        }
    }
}

impl Breaker {
    fn new(
        name: &'static str,
        threshold: u32,
        on_outage: bool,
        cooldown: Option<Duration>,
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

    /// Lets a call through (closed, or the one trial of a half-open breaker), or
    /// refuses it.
    fn gate(&self) -> BackendResult<Pass<'_>> {
        if !self.is_open() {
            return Ok(Pass {
                breaker: self,
                probe: false,
            });
        }
        let due = self
            .cooldown
            .is_some_and(|c| lock(&self.opened_at).is_some_and(|t| t.elapsed() >= c));
        if due && !self.probing.swap(true, Ordering::Relaxed) {
            tracing::info!(
                backend = self.name,
                "cache backend skipped for its cool-down; trying it again"
            );
            return Ok(Pass {
                breaker: self,
                probe: true,
            });
        }
        Err(BackendError::unavailable(format!(
            "{} skipped for the rest of this run after {} consecutive failures",
            self.name, self.threshold
        )))
    }

    /// A failed call (or a hit's failed read, `probe` false): by whose fault.
    fn failed(&self, e: &BackendError, probe: bool) {
        match e.fault() {
            Fault::Cache => self.count(e, probe),
            // The backend answered; refusing this caller something is not failing.
            Fault::Permission => self.answered(probe),
            // The caller's mistake says nothing about the backend, either way.
            Fault::Caller => {
                if probe {
                    self.probing.store(false, Ordering::Relaxed);
                }
            }
        }
    }

    fn count(&self, e: &BackendError, probe: bool) {
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let outage = self.on_outage && e.is_outage();
        if probe {
            // Half-open and failed: another cool-down.
            *lock(&self.opened_at) = Some(Instant::now());
            self.probing.store(false, Ordering::Relaxed);
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

    fn answered(&self, probe: bool) {
        self.consecutive.store(0, Ordering::Relaxed);
        if probe {
            self.open.store(false, Ordering::Relaxed);
            self.probing.store(false, Ordering::Relaxed);
            tracing::info!(backend = self.name, "cache backend answers again");
        }
    }
}

/// The hits a breaker hands out report their cache faults to it: a server that stops
/// answering mid-restore opens the breaker like a failed call does. Their calls are
/// not gated: the lookup that found the hit was let through.
impl HitLayer for Breaker {
    fn wrap<'a>(&'a self, _: &'a Hit, _: HitCall, inner: HitFuture<'a>) -> HitFuture<'a> {
        Box::pin(async move {
            let served = inner.await;
            if let Err(e) = &served {
                if e.is_cache_fault() {
                    self.failed(e, false);
                }
            }
            served
        })
    }

    fn fault(&self, _: &Hit, error: &BackendError) {
        self.failed(error, false);
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
    fn reconfigured(mut self, on_outage: bool, cooldown: Option<Duration>) -> Self {
        let s = &self.state;
        self.state = Arc::new(Breaker::new(s.name, s.threshold, on_outage, cooldown));
        self
    }

    /// Half-open `cooldown` after opening: one call goes through, and closes the
    /// breaker if it succeeds (see the type's docs). Set before use.
    #[must_use]
    pub fn with_cooldown(self, cooldown: Duration) -> Self {
        let on_outage = self.state.on_outage;
        self.reconfigured(on_outage, Some(cooldown))
    }

    /// Also opens at the first outage ([`BackendError::is_outage`]): a call that timed
    /// out or found the backend unreachable. A server that did not answer one call will
    /// not answer the next one a moment later, so a run pays one deadline for it, not
    /// one per call. Other cache faults (a corrupt entry, a local I/O error, a request
    /// the server rejected) still count towards the threshold. Set before use.
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
    /// into another tier, through [`crate::Tiered`]) to this breaker.
    fn watched(&self, hit: Hit) -> Hit {
        hit.layered(Arc::clone(&self.state) as Arc<dyn HitLayer>)
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
        let pass = self.state.gate()?;
        let found = pass.observe(self.inner.lookup(task, key, policy).await)?;
        Ok(found.map(|hit| self.watched(hit)))
    }

    async fn store(
        &self,
        task: &Task,
        digest: &str,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<()> {
        let pass = self.state.gate()?;
        pass.observe(self.inner.store(task, digest, entry, policy).await)
    }

    async fn import(
        &self,
        task: &Task,
        hit: &Hit,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        let pass = self.state.gate()?;
        let imported = pass.observe(self.inner.import(task, hit, policy).await)?;
        Ok(imported.map(|hit| self.watched(hit)))
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn health_check(&self) -> BackendResult<()> {
        let pass = self.state.gate()?;
        pass.observe(self.inner.health_check().await)
    }
}

#[cfg(test)]
#[path = "breaker_tests.rs"]
mod tests;
