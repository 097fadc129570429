//! Layers: wrap a hit's own calls (restore, log reads) from outside the crate.
//!
//! A [`CacheBackend`](crate::CacheBackend) wrapper sees `lookup`, `store` and `import`
//! as calls of its own; the restore and log reads of the [`Hit`] it hands out happen
//! later, on the hit. A [`HitLayer`] added with [`Hit::layered`] wraps those: it is
//! given which call ([`HitCall`]) and the inner call as a future, and returns a future
//! in its place, so it can time it, count it, bound it, or report its faults
//! somewhere. The inner future's outcome is `Ok(`[`Served`]`)` (how many bytes the call
//! served) or the call's error; the value itself (the restored outputs, the logs)
//! reaches the caller of the hit unchanged. A layer can turn an outcome into an error
//! (a timeout); it cannot invent a value: a layer that answers `Ok` without running
//! the inner future makes the call fail ([`BackendError::Unavailable`]).
//!
//! [`Deadline`](crate::Deadline), [`CircuitBreaker`](crate::CircuitBreaker) and
//! [`Instrumented`](crate::Instrumented) are layers like any other. Layers run in the
//! order the wrappers were stacked: the one added last (the outermost wrapper) sees
//! the call first.
//!
//! **Cancellation.** The inner future is a cache call of its own
//! ([`crate::cancel::scoped`]): a layer that drops it (its own timeout, a `select!`)
//! cancels it, so no write of the call becomes visible after the drop returns. A
//! layer that gives up should drop the inner future *before* it answers, never keep
//! it running in the background.
//!
//! [`HitLayer::fault`] is told of faults met with the hit outside its own calls (a copy
//! of it into another tier that failed, reported by [`crate::Tiered`] through
//! [`Hit::report_fault`]).
//!
//! ```
//! use cache_core::{BackendResult, CacheBackend, CachePolicy, Digest, Hit, Task};
//! use cache_core::layer::{HitCall, HitFuture, HitLayer};
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! /// Counts the bytes the hits of a backend restore and read.
//! #[derive(Default)]
//! struct Bytes(AtomicU64);
//!
//! impl HitLayer for Bytes {
//!     fn wrap<'a>(&'a self, _hit: &'a Hit, call: HitCall, inner: HitFuture<'a>) -> HitFuture<'a> {
//!         Box::pin(async move {
//!             let served = inner.await?;
//!             self.0.fetch_add(served.bytes, Ordering::Relaxed);
//!             tracing::debug!(call = call.op.name(), bytes = served.bytes, "served");
//!             Ok(served)
//!         })
//!     }
//! }
//!
//! /// A backend wrapper whose hits carry the layer.
//! struct Counted { inner: Arc<dyn CacheBackend>, bytes: Arc<Bytes> }
//!
//! #[async_trait::async_trait]
//! impl CacheBackend for Counted {
//!     async fn lookup(&self, task: &Task, key: &Digest, policy: CachePolicy) -> BackendResult<Option<Hit>> {
//!         let hit = self.inner.lookup(task, key, policy).await?;
//!         Ok(hit.map(|h| h.layered(self.bytes.clone())))
//!     }
//!     async fn store(&self, task: &Task, digest: &str, entry: &cache_core::CacheEntry, policy: CachePolicy) -> BackendResult<()> {
//!         self.inner.store(task, digest, entry, policy).await
//!     }
//!     fn name(&self) -> &'static str { self.inner.name() }
//!     async fn health_check(&self) -> BackendResult<()> { self.inner.health_check().await }
//! }
//! ```

use crate::{BackendError, BackendResult, Hit};
use std::future::Future;
use std::pin::Pin;

/// Which of a hit's calls a layer wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HitOp {
    /// [`Hit::restore`].
    Restore,
    /// [`Hit::logs`] and [`Hit::logs_up_to`].
    Logs,
    /// [`Hit::log_reader`] (opening the stream; its bytes are read later).
    LogReader,
}

impl HitOp {
    /// A short name: `restore`, `logs`, `log_reader`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            HitOp::Restore => "restore",
            HitOp::Logs => "logs",
            HitOp::LogReader => "log_reader",
        }
    }
}

/// One call of a hit, as a layer sees it before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HitCall {
    /// Which call.
    pub op: HitOp,
    /// The bytes the record says the call moves (the files of a restore, the logs of
    /// a log read): what a deadline scales with.
    pub bytes: u64,
}

/// What a call of a hit served, once it succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Served {
    /// Bytes served: the files a restore placed or kept, the log bytes read, the size
    /// of the stream a log reader opened.
    pub bytes: u64,
}

/// The inner call a layer wraps, and what it returns in its place.
pub type HitFuture<'a> = Pin<Box<dyn Future<Output = BackendResult<Served>> + Send + 'a>>;

/// Wraps the calls of the hits it is added to ([`Hit::layered`]); see the module docs.
pub trait HitLayer: Send + Sync {
    /// The call `call` of `hit`, around `inner`. Return `inner` itself (or a future
    /// that awaits it) to let the call run; its outcome is yours to see and to replace
    /// by an error.
    fn wrap<'a>(&'a self, hit: &'a Hit, call: HitCall, inner: HitFuture<'a>) -> HitFuture<'a>;

    /// A cache fault met with `hit` outside its own calls (a copy of it into another
    /// tier that failed; [`Hit::report_fault`]). Nothing by default.
    fn fault(&self, hit: &Hit, error: &BackendError) {
        let _ = (hit, error);
    }
}

/// Runs `inner` through `layers` (the last one outermost), `inner`'s value passed out
/// through a slot so a layer only sees the outcome.
pub(crate) async fn run<'a, T: Send + 'a>(
    hit: &'a Hit,
    layers: &'a [std::sync::Arc<dyn HitLayer>],
    call: HitCall,
    served: impl Fn(&T) -> u64 + Send + 'a,
    inner: impl Future<Output = BackendResult<T>> + Send + 'a,
) -> BackendResult<T> {
    if layers.is_empty() {
        return inner.await;
    }
    let slot = std::sync::Mutex::new(None);
    let slot_ref = &slot;
    // A call of its own: a layer that drops it cancels it.
    let base: HitFuture<'_> = Box::pin(crate::cancel::scoped(async move {
        let value = inner.await?;
        let bytes = served(&value);
        *crate::combinators::lock(slot_ref) = Some(value);
        Ok(Served { bytes })
    }));
    let wrapped = layers
        .iter()
        .fold(base, |inner, layer| layer.wrap(hit, call, inner));
    wrapped.await?;
    let value = crate::combinators::lock(&slot).take();
    value.ok_or_else(|| {
        BackendError::unavailable(format!(
            "a layer of {} answered its {} without running it",
            hit.backend(),
            call.op.name()
        ))
    })
}
