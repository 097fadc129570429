//! Deadlines on every cache call, so a cache that hangs costs one timeout, not a CI step.
//!
//! cache-core has no async runtime, so the timer is the caller's: a [`Sleep`] function
//! (tokio: `Arc::new(|d| Box::pin(tokio::time::sleep(d)))`). [`Deadline`] wraps any
//! [`CacheBackend`]; a call that does not finish in time is
//! [`BackendError::Timeout`], a cache fault (the task runs uncached, and a
//! [`crate::CircuitBreaker`] counts it). Hits it returns carry the same deadlines, so
//! restoring and reading logs are bounded too. A call that panics (in the backend or a
//! library under it) is a cache fault too, [`BackendError::Unavailable`] naming the
//! backend and the call, never a panic in the caller.
//!
//! A call that times out is cancelled before the timeout is returned
//! ([`crate::cancel`]): from then on none of its blocking jobs makes a write visible
//! (no output renamed into the workspace, no time set, no entry published), and its
//! jobs are awaited for at most [`crate::cancel::JOIN_WAIT`] so they release what they
//! hold. An executor may run the task and write its outputs as soon as the timeout is
//! returned. Only a job stuck in a system call (a hung network filesystem) outlives
//! the wait; it stops at its next check and still writes nothing visible.

use crate::Task;
use crate::layer::{HitCall, HitFuture, HitLayer, HitOp};
use crate::{BackendError, BackendResult, CacheBackend, CacheEntry, CachePolicy, Digest, Hit};
use async_trait::async_trait;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// A timer: a future that completes after the given duration.
pub type Sleep = Arc<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// How long cache calls may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// A call that moves no bulk data (a lookup, a health check), and the base of every
    /// transfer's deadline.
    pub call: Duration,
    /// Transfers get `call` plus their size at this rate (bytes per second): the
    /// slowest a working cache is expected to move data.
    pub min_rate: u64,
}

impl Default for Deadlines {
    /// 10 s per call, transfers at no less than 8 MiB/s: a healthy cache answers a
    /// lookup in milliseconds, and a CI step should never wait minutes for a cache.
    fn default() -> Self {
        Deadlines {
            call: Duration::from_secs(10),
            min_rate: 8 << 20,
        }
    }
}

impl Deadlines {
    /// One deadline for calls and transfers' base, at the default rate.
    #[must_use]
    pub fn new(call: Duration) -> Self {
        Deadlines {
            call,
            ..Deadlines::default()
        }
    }

    /// The deadline of a transfer of `bytes`.
    #[must_use]
    pub fn for_bytes(&self, bytes: u64) -> Duration {
        let rate = self.min_rate.max(1);
        let extra = Duration::from_secs(bytes / rate)
            + Duration::from_nanos((bytes % rate).saturating_mul(1_000_000_000) / rate);
        self.call.saturating_add(extra)
    }
}

/// The timer and the limits, shared by a [`Deadline`] and the hits it returns (as
/// their [`HitLayer`]).
#[derive(Clone)]
pub(crate) struct Limits {
    pub(crate) backend: &'static str,
    pub(crate) sleep: Sleep,
    pub(crate) deadlines: Deadlines,
}

impl Limits {
    /// `work`, or [`BackendError::Timeout`] if it is not done within `limit`. A call
    /// that times out (or panics) is cancelled, and its jobs are awaited for at most
    /// [`crate::cancel::JOIN_WAIT`] before this returns ([`crate::cancel`]).
    pub(crate) async fn within<T>(
        &self,
        operation: &'static str,
        limit: Duration,
        work: impl Future<Output = BackendResult<T>>,
    ) -> BackendResult<T> {
        let work = crate::cancel::scoped(work);
        let call = work.handle();
        let mut work = std::pin::pin!(work);
        let mut timer = (self.sleep)(limit);
        let backend = self.backend;
        let outcome = std::future::poll_fn(move |cx| {
            // A panic in the backend or a dependency (a bad URL unwrapped deep in a
            // client, say) is the cache's failure, not the task's: the task runs uncached.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work.as_mut().poll(cx)))
            {
                Ok(Poll::Ready(r)) => return Poll::Ready(Ok(r)),
                Ok(Poll::Pending) => {}
                Err(panic) => {
                    let message = panic_message(panic.as_ref());
                    tracing::warn!(backend, operation, panic = %message, "a cache call panicked");
                    return Poll::Ready(Err(BackendError::unavailable(format!(
                        "cache {backend} panicked during {operation}: {message}"
                    ))));
                }
            }
            if timer.as_mut().poll(cx).is_ready() {
                tracing::warn!(backend, operation, ?limit, "cache call timed out");
                return Poll::Ready(Err(BackendError::Timeout {
                    backend,
                    operation,
                    after: limit,
                }));
            }
            Poll::Pending
        })
        .await;
        match outcome {
            Ok(done) => done,
            Err(abandoned) => {
                // Nothing the call started may write once the caller is told it
                // failed (the caller may run the task and write the outputs itself):
                // cancel it, and give its jobs a moment to stop and clean up.
                call.cancel();
                self.join(&call, operation).await;
                Err(abandoned)
            }
        }
    }

    /// Waits, at most [`crate::cancel::JOIN_WAIT`], for a cancelled call's jobs.
    async fn join(&self, call: &crate::cancel::Handle, operation: &'static str) {
        let mut stopped = std::pin::pin!(call.stopped());
        let mut timer = (self.sleep)(crate::cancel::JOIN_WAIT);
        let stopped = std::future::poll_fn(|cx| {
            if stopped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(true);
            }
            timer.as_mut().poll(cx).map(|()| false)
        })
        .await;
        if !stopped {
            // They write nothing visible any more (see `crate::cancel`); a job stuck in
            // a system call finishes on its own.
            tracing::warn!(backend = self.backend, operation, wait = ?crate::cancel::JOIN_WAIT, "a cancelled cache call's blocking work has not stopped yet");
        }
    }
}

/// A hit's restores and log reads get a deadline for their bytes.
impl HitLayer for Limits {
    fn wrap<'a>(&'a self, _: &'a Hit, call: HitCall, inner: HitFuture<'a>) -> HitFuture<'a> {
        let operation = match call.op {
            HitOp::Restore => "restore",
            HitOp::Logs => "read logs",
            _ => "open a log",
        };
        let limit = self.deadlines.for_bytes(call.bytes);
        Box::pin(self.within(operation, limit, inner))
    }
}

/// What a panic said, if it said it as text (truncated: it is printed).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    crate::error::truncate(text)
}

/// A [`CacheBackend`] whose every call has a deadline (see the module docs). A call
/// that times out is cancelled before [`BackendError::Timeout`] is returned: nothing it
/// started writes anything visible afterwards, and its jobs are awaited for at most
/// [`crate::cancel::JOIN_WAIT`] ([`crate::cancel`]).
///
/// ```
/// use cache_core::{CacheBackend, Deadline, Deadlines, Sleep};
/// use std::{sync::Arc, time::Duration};
///
/// // With tokio: `let sleep: Sleep = Arc::new(|d| Box::pin(tokio::time::sleep(d)));`
/// fn bounded(inner: Arc<dyn CacheBackend>, sleep: Sleep) -> Deadline {
///     Deadline::new(inner, Deadlines::new(Duration::from_secs(5)), sleep)
/// }
/// ```
pub struct Deadline {
    inner: Arc<dyn CacheBackend>,
    limits: Limits,
    /// The same limits, as the layer of the hits it hands out.
    layer: Arc<dyn HitLayer>,
}

impl Deadline {
    /// Wraps `inner`; `sleep` is the caller's timer.
    pub fn new(inner: Arc<dyn CacheBackend>, deadlines: Deadlines, sleep: Sleep) -> Self {
        let limits = Limits {
            backend: inner.name(),
            sleep,
            deadlines,
        };
        Deadline {
            inner,
            layer: Arc::new(limits.clone()),
            limits,
        }
    }
}

#[async_trait]
impl CacheBackend for Deadline {
    async fn lookup(
        &self,
        task: &Task,
        key: &Digest,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        let found = self
            .limits
            .within(
                "lookup",
                self.limits.deadlines.call,
                self.inner.lookup(task, key, policy),
            )
            .await?;
        Ok(found.map(|hit| hit.layered(Arc::clone(&self.layer))))
    }

    async fn store(
        &self,
        task: &Task,
        digest: &str,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<()> {
        let limit = self.limits.deadlines.for_bytes(entry.known_bytes());
        self.limits
            .within(
                "store",
                limit,
                self.inner.store(task, digest, entry, policy),
            )
            .await
    }

    async fn import(
        &self,
        task: &Task,
        hit: &Hit,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        let limit = self.limits.deadlines.for_bytes(hit.bytes());
        let imported = self
            .limits
            .within("import", limit, self.inner.import(task, hit, policy))
            .await?;
        Ok(imported.map(|hit| hit.layered(Arc::clone(&self.layer))))
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn health_check(&self) -> BackendResult<()> {
        self.limits
            .within(
                "health check",
                self.limits.deadlines.call,
                self.inner.health_check(),
            )
            .await
    }
}
