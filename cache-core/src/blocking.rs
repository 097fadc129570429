//! Where [`crate::Cache`] runs its blocking work (decoding large entries, hashing,
//! workspace writes), without depending on any async runtime.
//!
//! The executor hands `Cache` a spawner: with tokio it is one line,
//! `|job| { tokio::task::spawn_blocking(job); }`. [`run`] then awaits the job's value
//! through a one-shot slot written here, so this crate needs no runtime and no channel
//! crate. Every job is bound to the cache call that started it ([`crate::cancel`]).

use crate::{BackendError, BackendResult};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

/// A job for a [`Spawner`].
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// How [`crate::Cache`] starts blocking jobs: any `Fn(Job)` that runs the job on a
/// thread where blocking is allowed (with tokio: `|job| { tokio::task::spawn_blocking(job); }`).
///
/// A spawner that drops a job without running it (a runtime shutting down) makes the
/// waiting operation fail with [`BackendError::Unavailable`].
pub type Spawner = std::sync::Arc<dyn Fn(Job) + Send + Sync + 'static>;

/// A spawner that starts one OS thread per job: needs no runtime at all, but costs a
/// thread start per call. Executors on tokio pass `tokio::task::spawn_blocking`.
pub fn thread_per_job(job: Job) {
    if let Err(e) = std::thread::Builder::new()
        .name("taskcache-blocking".into())
        .spawn(job)
    {
        // The job (and its slot's sender) was dropped: the waiter sees `Unavailable`.
        tracing::warn!(error = %e, "could not start a thread for blocking cache work");
    }
}

type Outcome<T> = std::thread::Result<T>;

struct Slot<T> {
    value: Option<Outcome<T>>,
    sender_gone: bool,
    waker: Option<Waker>,
}

/// The sending half: fills the slot, or on drop (job never ran) marks it abandoned.
struct Sender<T>(Arc<Mutex<Slot<T>>>);

impl<T> Sender<T> {
    fn send(self, value: Outcome<T>) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.value = Some(value);
        // `Drop` marks the sender gone and wakes the waiter.
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            slot.sender_gone = true;
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

struct Receiver<T>(Arc<Mutex<Slot<T>>>);

impl<T> Future for Receiver<T> {
    type Output = Option<Outcome<T>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = slot.value.take() {
            return Poll::Ready(Some(v));
        }
        if slot.sender_gone {
            return Poll::Ready(None);
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A job started by [`start`]: awaiting it gives the job's value.
pub(crate) struct Started<T>(Receiver<BackendResult<T>>);

impl<T> Future for Started<T> {
    type Output = BackendResult<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.0).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(value))) => Poll::Ready(value),
            Poll::Ready(Some(Err(panic))) => std::panic::resume_unwind(panic),
            Poll::Ready(None) => Poll::Ready(Err(BackendError::unavailable(
                "the blocking pool dropped a cache job without running it (is the runtime shutting down?)",
            ))),
        }
    }
}

/// Starts `f` through `spawn` now (not when first polled, so several jobs started in
/// a row run side by side). A panic in `f` is resumed in whoever awaits it; a job
/// dropped unrun is `Unavailable`. The job is bound to the call being polled
/// ([`crate::cancel`]): it is skipped if the call is cancelled before it starts.
pub(crate) fn start<T, F>(spawn: &(dyn Fn(Job) + Send + Sync), f: F) -> Started<T>
where
    T: Send + 'static,
    F: FnOnce() -> BackendResult<T> + Send + 'static,
{
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        sender_gone: false,
        waker: None,
    }));
    let tx = Sender(Arc::clone(&slot));
    // The job belongs to the call being polled: it counts as one of its jobs, sees its
    // token, and does not start at all once the call is cancelled (a saturated pool
    // may run it long after).
    let cancel = crate::cancel::CancelToken::current();
    let job = cancel.bind(move || {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::cancel::CancelToken::current()
                .check()
                .map_err(BackendError::Io)?;
            f()
        }));
        tx.send(out);
    });
    spawn(Box::new(job));
    Started(Receiver(slot))
}

/// Runs `f` through `spawn` and returns its value (see [`start`]).
pub async fn run<T, F>(spawn: &(dyn Fn(Job) + Send + Sync), f: F) -> BackendResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> BackendResult<T> + Send + 'static,
{
    start(spawn, f).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        // A minimal executor: park the thread until woken.
        struct ThreadWaker(std::thread::Thread);
        impl std::task::Wake for ThreadWaker {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }

    #[test]
    fn returns_values_and_errors_and_reports_dropped_jobs() {
        assert_eq!(block_on(run(&thread_per_job, || Ok(41 + 1))).unwrap(), 42);
        let err = block_on(run(&thread_per_job, || -> BackendResult<()> {
            Err(BackendError::unavailable("x"))
        }))
        .unwrap_err();
        assert!(err.to_string().contains('x'));
        let dropper = drop::<Job>;
        let err = block_on(run(&dropper, || Ok(()))).unwrap_err();
        assert!(matches!(err, BackendError::Unavailable(_)), "{err}");
    }

    #[test]
    fn started_jobs_run_side_by_side() {
        // Two jobs that each wait for the other: they finish only if both run at once.
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let (a, b) = (Arc::clone(&barrier), barrier);
        let first = start(&thread_per_job, move || {
            a.wait();
            Ok(1)
        });
        let second = start(&thread_per_job, move || {
            b.wait();
            Ok(2)
        });
        assert_eq!(block_on(first).unwrap() + block_on(second).unwrap(), 3);
    }

    #[test]
    fn a_panic_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| {
            block_on(run(&thread_per_job, || -> BackendResult<()> {
                panic!("boom")
            }))
        });
        assert!(r.is_err());
    }
}
