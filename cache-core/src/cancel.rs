//! Cancellation: a cache call that is dropped or times out stops writing before it is
//! gone.
//!
//! An executor cancels a cache call by dropping its future (a `select!`, a task
//! abort, its own timeout) or through [`crate::Deadline`]. Either way the call's
//! blocking jobs (workspace writes, blob stores, entry publication, log reads) are on
//! threads nothing can abort, so every call of [`crate::Cache`] and [`crate::Hit`]
//! runs in a *scope* that its jobs observe:
//!
//! * **Dropping the call cancels its scope.** From the moment the drop returns, no job
//!   of the call starts a write that would be visible under an output's or an entry's
//!   name: every such step (a rename into place, a `mkdir`, a symlink, a time set, a
//!   new temporary file) runs through [`CancelToken::publish`], which refuses once the
//!   scope is cancelled, and the cancel waits for a step already under way (one
//!   system call; at most [`PUBLISH_WAIT`], then it warns). The temporary files the
//!   call's jobs were filling in the workspace are removed by the cancel itself, so
//!   the workspace is as it will stay when the drop returns. Copies check the token
//!   between chunks and stop (once their current read or write returns). The drop
//!   does this on the dropping thread: it blocks for at most one write step, and
//!   does not wait for the jobs to end.
//! * **[`crate::Deadline`] also joins.** A call that times out is cancelled as above,
//!   then its jobs are awaited for at most [`JOIN_WAIT`] before the timeout is
//!   returned, so what the call held (blocking threads, temporary files, a storage's
//!   permits) is normally released by then. A job stuck in a system call (a hung
//!   network filesystem) is left to finish on its own: it still writes nothing
//!   visible.
//!
//! Backends take part through [`CancelToken::current`]: a blocking job started with
//! [`CancelToken::bind`] (or [`bind`]) counts as the call's, sees the call's token as
//! its current one, and [`crate::storage::copy_hashing`] and
//! [`crate::storage::kernel_copy_hashing`] stop between chunks when it is cancelled. A
//! storage that publishes from a blocking job (a rename into place) wraps that step in
//! [`CancelToken::publish`]. Outside any cache call the current token is never
//! cancelled and every method here is a no-op.
//!
//! ```
//! use cache_core::cancel::{self, CancelToken};
//! use std::io::Write;
//!
//! // In a `Storage` method, while the call is polled: the job belongs to the call.
//! let job = cancel::bind(|| -> std::io::Result<()> {
//!     let cancel = CancelToken::current();
//!     let mut tmp = tempfile::NamedTempFile::new()?;
//!     for chunk in [b"part one".as_slice(), b"part two"] {
//!         cancel.check()?; // stop between writes
//!         tmp.write_all(chunk)?;
//!     }
//!     let dir = tempfile::tempdir()?;
//!     // The step that makes the write visible: never after a cancel.
//!     cancel.publish(|| tmp.persist(dir.path().join("blob")).map(drop).map_err(|e| e.error))
//! });
//! // With tokio: `tokio::task::spawn_blocking(job)`.
//! std::thread::spawn(job).join().unwrap().unwrap();
//! ```

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The longest a cancel waits for a write step already under way (a rename, a
/// `mkdir`): such a step takes microseconds; only a hung filesystem takes longer, and
/// nothing can interrupt a system call.
pub const PUBLISH_WAIT: Duration = Duration::from_secs(1);

/// The longest [`crate::Deadline`] waits, after a timeout, for the cancelled call's
/// jobs to stop before it returns the timeout (they stop at their next check: the end
/// of the current read or write).
pub const JOIN_WAIT: Duration = Duration::from_secs(1);

/// The error a job returns when it stops because its call was cancelled (wrapped in an
/// [`std::io::Error`] of kind [`std::io::ErrorKind::Other`]; see [`is_cancelled`]).
/// Nobody normally sees it: the call it belongs to was dropped or has timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the cache call was cancelled (dropped or timed out)")
    }
}

impl std::error::Error for Cancelled {}

impl Cancelled {
    /// As an I/O error.
    #[must_use]
    pub fn io(self) -> std::io::Error {
        std::io::Error::other(self)
    }
}

/// Whether `e` is the error of a job that stopped because its call was cancelled.
#[must_use]
pub fn is_cancelled(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(<dyn std::error::Error + Send + Sync>::is::<Cancelled>)
}

/// One call's cancellation state.
struct Scope {
    /// The enclosing call's scope (a [`crate::Deadline`] around a [`crate::Cache`]
    /// call): cancelling it cancels this one, and this one's jobs count there too.
    parent: Option<Arc<Scope>>,
    /// Mirrors `state.cancelled`, for checks without the lock.
    cancelled: AtomicBool,
    state: Mutex<State>,
    /// Signalled when `publishing` or `running` drops to zero.
    idle: Condvar,
}

/// Something to undo when a scope is cancelled (remove a temporary file), run at
/// most once, by whichever scope of its chain is cancelled first.
type Undo = Arc<Mutex<Option<Box<dyn FnOnce() + Send>>>>;

fn run_undo(undo: &Undo) {
    let f = undo.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(f) = f {
        f();
    }
}

#[derive(Default)]
struct State {
    cancelled: bool,
    /// Undone by a cancel, by id ([`CancelToken::on_cancel`]).
    undo: Vec<(u64, Undo)>,
    /// Write steps under way ([`CancelToken::publish`]).
    publishing: usize,
    /// Jobs bound to the scope (or a scope inside it) that have not finished.
    running: usize,
    /// Woken when `running` drops to zero.
    waiters: Vec<Waker>,
}

impl Scope {
    fn new(parent: Option<Arc<Scope>>) -> Arc<Self> {
        Arc::new(Scope {
            parent,
            cancelled: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            idle: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This scope and the ones enclosing it.
    fn chain(self: &Arc<Self>) -> impl Iterator<Item = &Arc<Scope>> {
        std::iter::successors(Some(self), |s| s.parent.as_ref())
    }

    /// Marks the scope cancelled, waits (at most [`PUBLISH_WAIT`]) for the write
    /// steps already under way in it, then undoes what was registered to be undone.
    fn cancel(&self) {
        let mut state = self.lock();
        state.cancelled = true;
        self.cancelled.store(true, Ordering::Release);
        let give_up = Instant::now() + PUBLISH_WAIT;
        while state.publishing > 0 {
            let Some(left) = give_up.checked_duration_since(Instant::now()) else {
                tracing::warn!(
                    "a cancelled cache call still has a write under way after {PUBLISH_WAIT:?} (a hung filesystem?)"
                );
                break;
            };
            state = self
                .idle
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let undo = std::mem::take(&mut state.undo);
        drop(state);
        for (_, u) in &undo {
            run_undo(u);
        }
    }

    fn add_running(&self) {
        self.lock().running += 1;
    }

    fn remove_running(&self) {
        let waiters = {
            let mut state = self.lock();
            state.running = state.running.saturating_sub(1);
            if state.running > 0 {
                return;
            }
            std::mem::take(&mut state.waiters)
        };
        self.idle.notify_all();
        for w in waiters {
            w.wake();
        }
    }
}

thread_local! {
    /// The scope of the call being polled, or of the job being run, on this thread.
    static CURRENT: RefCell<Option<Arc<Scope>>> = const { RefCell::new(None) };
}

/// Makes `scope` current on this thread until dropped (then restores the previous one).
struct Entered(Option<Arc<Scope>>);

impl Entered {
    fn new(scope: Option<Arc<Scope>>) -> Self {
        Entered(CURRENT.with(|c| c.replace(scope)))
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let previous = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// The cancellation signal of one cache call, as its jobs see it. Cheap to clone.
///
/// Get it with [`CancelToken::current`] while the call is being polled (in a
/// [`crate::storage::Storage`] method, before starting blocking work), hand it to the
/// blocking job with [`CancelToken::bind`], and inside the job check it between
/// writes ([`CancelToken::check`]) and run every step that makes a write visible
/// through [`CancelToken::publish`].
#[derive(Clone, Default)]
pub struct CancelToken(Option<Arc<Scope>>);

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken")
            .field("in_call", &self.0.is_some())
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl CancelToken {
    /// The token of the cache call being polled on this thread, or of the bound job
    /// running on it; outside any call, a token that is never cancelled.
    #[must_use]
    pub fn current() -> Self {
        CancelToken(CURRENT.with(|c| c.borrow().clone()))
    }

    /// Whether the call (or a call enclosing it) was cancelled.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|s| s.chain().any(|s| s.cancelled.load(Ordering::Acquire)))
    }

    /// `Err` ([`Cancelled`]) once the call is cancelled: call it between writes.
    ///
    /// # Errors
    ///
    /// [`Cancelled`], as an I/O error, when the call was cancelled.
    pub fn check(&self) -> std::io::Result<()> {
        if self.is_cancelled() {
            Err(Cancelled.io())
        } else {
            Ok(())
        }
    }

    /// Runs `step`, a write that becomes visible to others (a rename into place, a
    /// `mkdir`, a symlink, a time set), unless the call is cancelled; a cancel that
    /// comes meanwhile waits for `step` to end. So once a cancel has returned, no such
    /// step of the call starts.
    ///
    /// # Errors
    ///
    /// [`Cancelled`] (as an I/O error) without running `step` when the call was
    /// cancelled, else `step`'s own error.
    pub fn publish<T, E: From<std::io::Error>>(
        &self,
        step: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let Some(scope) = &self.0 else {
            return step();
        };
        let mut entered = Publishing(Vec::new());
        for s in scope.chain() {
            let mut state = s.lock();
            if state.cancelled {
                return Err(Cancelled.io().into());
            }
            state.publishing += 1;
            drop(state);
            entered.0.push(Arc::clone(s));
        }
        step()
    }

    /// Binds `job` to this token: it counts as one of the call's jobs from now until it
    /// has run (or is dropped unrun), and while it runs this token is
    /// [`CancelToken::current`] on its thread. Start blocking work with it:
    /// `tokio::task::spawn_blocking(CancelToken::current().bind(job))`.
    pub fn bind<T, F>(&self, job: F) -> impl FnOnce() -> T + Send + 'static + use<T, F>
    where
        F: FnOnce() -> T + Send + 'static,
    {
        let running = Running::new(self.0.clone());
        move || {
            let _entered = Entered::new(running.0.clone());
            let out = job();
            drop(running);
            out
        }
    }
}

impl CancelToken {
    /// Registers `undo` to run when the call is cancelled (at once if it already is),
    /// until the returned guard is dropped: a temporary file a job is filling is
    /// removed by the cancel, not later by the job.
    pub(crate) fn on_cancel(&self, undo: impl FnOnce() + Send + 'static) -> OnCancel {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let Some(scope) = &self.0 else {
            return OnCancel(None);
        };
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let slot: Undo = Arc::new(Mutex::new(Some(Box::new(undo))));
        let registered = OnCancel(Some((id, Arc::clone(scope))));
        for s in scope.chain() {
            let mut state = s.lock();
            if state.cancelled {
                drop(state);
                // Too late to wait for a cancel: it happened.
                drop(registered);
                run_undo(&slot);
                return OnCancel(None);
            }
            state.undo.push((id, Arc::clone(&slot)));
        }
        registered
    }
}

impl CancelToken {
    /// `reader`, failing with [`Cancelled`] at its next read once the call is
    /// cancelled: for a job's read loops that are not [`crate::storage::copy_hashing`].
    pub fn reader<R: std::io::Read>(&self, reader: R) -> CheckedReader<R> {
        CheckedReader {
            cancel: self.clone(),
            inner: reader,
        }
    }
}

/// A reader that stops when its call is cancelled ([`CancelToken::reader`]).
#[derive(Debug)]
pub struct CheckedReader<R> {
    cancel: CancelToken,
    inner: R,
}

impl<R: std::io::Read> std::io::Read for CheckedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.cancel.check()?;
        self.inner.read(buf)
    }
}

/// Keeps an undo registered ([`CancelToken::on_cancel`]) until dropped.
pub(crate) struct OnCancel(Option<(u64, Arc<Scope>)>);

impl Drop for OnCancel {
    fn drop(&mut self) {
        if let Some((id, scope)) = &self.0 {
            for s in scope.chain() {
                s.lock().undo.retain(|(i, _)| i != id);
            }
        }
    }
}

/// [`CancelToken::current`]`.bind(job)`: binds `job` to the call being polled.
pub fn bind<T, F>(job: F) -> impl FnOnce() -> T + Send + 'static
where
    F: FnOnce() -> T + Send + 'static,
{
    CancelToken::current().bind(job)
}

/// A write step under way in these scopes.
struct Publishing(Vec<Arc<Scope>>);

impl Drop for Publishing {
    fn drop(&mut self) {
        for s in &self.0 {
            let mut state = s.lock();
            state.publishing -= 1;
            let idle = state.publishing == 0;
            drop(state);
            if idle {
                s.idle.notify_all();
            }
        }
    }
}

/// A bound job, counted in its scope and the ones enclosing it until dropped.
struct Running(Option<Arc<Scope>>);

impl Running {
    fn new(scope: Option<Arc<Scope>>) -> Self {
        if let Some(scope) = &scope {
            for s in scope.chain() {
                s.add_running();
            }
        }
        Running(scope)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(scope) = &self.0 {
            for s in scope.chain() {
                s.remove_running();
            }
        }
    }
}

/// A handle on a call's scope, for [`crate::Deadline`]: cancel it, await its jobs.
#[derive(Clone)]
pub(crate) struct Handle(Arc<Scope>);

impl Handle {
    /// Cancels the call (see [`Scope::cancel`]).
    pub(crate) fn cancel(&self) {
        self.0.cancel();
    }

    /// Completes when no job of the call is running.
    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let scope = Arc::clone(&self.0);
        std::future::poll_fn(move |cx| {
            let mut state = scope.lock();
            if state.running == 0 {
                return Poll::Ready(());
            }
            if !state.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                state.waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }

    /// How many jobs of the call are still running.
    #[cfg(test)]
    pub(crate) fn running(&self) -> usize {
        self.0.lock().running
    }
}

/// A future run as a cache call of its own ([`scoped`]): polled with its scope current
/// (inside the scope of the call polling it, if any), and cancelled when dropped (see
/// the module docs). A call that completed is cancelled too when dropped, so a job it
/// left behind (none should) cannot write for nobody.
pub struct Scoped<F> {
    scope: Arc<Scope>,
    inner: Pin<Box<F>>,
}

impl<F: Future> Scoped<F> {
    /// `call` in a new scope inside the current one.
    fn new(call: F) -> Self {
        let parent = CURRENT.with(|c| c.borrow().clone());
        Scoped {
            scope: Scope::new(parent),
            inner: Box::pin(call),
        }
    }

    pub(crate) fn handle(&self) -> Handle {
        Handle(Arc::clone(&self.scope))
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _entered = Entered::new(Some(Arc::clone(&self.scope)));
        self.inner.as_mut().poll(cx)
    }
}

impl<F> Drop for Scoped<F> {
    fn drop(&mut self) {
        self.scope.cancel();
    }
}

/// Runs `call` as a cache call of its own: the blocking jobs bound inside it
/// ([`bind`]) are cancelled when it is dropped, and when an enclosing call is. Every
/// call of [`crate::Cache`] and [`crate::Hit`] already runs in one; a storage uses it
/// for a piece of work that must stop when dropped even when no such call encloses it.
pub fn scoped<F: Future>(call: F) -> Scoped<F> {
    Scoped::new(call)
}

#[cfg(test)]
#[path = "cancel_tests.rs"]
mod tests;
