//! Windows: how many blobs, and bytes of blobs, a restore or an import has open at once.
//!
//! A storage may hand a blob over as bytes it fetched (S3's small files and packed
//! segments, REAPI's batch reads) or as a reader that buffers what it fetches ahead,
//! so what a call holds in memory follows what it has open. Restores and imports
//! therefore open their blobs in windows of at most [`WINDOW_FILES`] files and about
//! [`WINDOW_BYTES`] bytes (one blob larger than that is a window of its own), and
//! every window holds a share of one process-wide budget of [`WINDOW_BUDGET`] bytes
//! while its sources are open: what it asked for while the storage opens them, then
//! only the blobs that came as bytes or readers (a local file is a path: it holds no
//! memory, so a local tier is never held up by it). However many calls run at once,
//! the sources they have open hold at most the budget, plus, for a window of one blob
//! larger than [`WINDOW_BYTES`], what that storage's reader buffers ahead.
//!
//! The budget is a fair (first come, first served) byte semaphore that needs no
//! runtime. A window takes its whole share at once and takes nothing more while it
//! holds it, and nothing that holds budget waits for a window, so windows cannot
//! deadlock one another; a storage must not call back into a [`crate::Cache`] from
//! `open_blobs` or `put_blobs`.

use crate::BackendResult;
use crate::BlobRef;
use crate::storage::BlobSource;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// The most blobs one window opens.
pub const WINDOW_FILES: usize = 4096;

/// About the most bytes of blobs one window opens (at least one blob each).
pub const WINDOW_BYTES: u64 = 64 << 20;

/// Bytes of open blob sources all the windows of a process hold at once (two full
/// windows).
pub const WINDOW_BUDGET: u64 = 128 << 20;

/// The process's window budget.
static OPEN: Budget = Budget::new(WINDOW_BUDGET);

/// `sizes` in runs of at most [`WINDOW_FILES`] items and about [`WINDOW_BYTES`] bytes
/// (at least one item each), in order.
pub(crate) fn runs(sizes: &[u64]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, &size) in sizes.iter().enumerate() {
        if i > start && (i - start >= WINDOW_FILES || bytes.saturating_add(size) > WINDOW_BYTES) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes = bytes.saturating_add(size);
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// Opens one window's `blobs` with `open`, holding the process's budget for them:
/// their bytes (at most [`WINDOW_BYTES`]) while `open` runs, then those of the sources
/// that came as bytes or readers. Keep the returned [`Held`] until the sources are
/// consumed or dropped.
pub(crate) async fn open<F, Fut>(
    blobs: &[BlobRef],
    open: F,
) -> BackendResult<(Vec<BlobSource>, Held)>
where
    F: FnOnce(Vec<BlobRef>) -> Fut,
    Fut: Future<Output = BackendResult<Vec<BlobSource>>>,
{
    let asked = blobs.iter().map(|b| b.size).fold(0, u64::saturating_add);
    let mut held = OPEN.acquire(asked.min(WINDOW_BYTES)).await;
    let sources = open(blobs.to_vec()).await?;
    let in_memory = blobs
        .iter()
        .zip(&sources)
        .filter(|(_, s)| !matches!(s, BlobSource::File(_)))
        .map(|(b, _)| b.size)
        .fold(0, u64::saturating_add);
    held.shrink_to(in_memory);
    Ok((sources, held))
}

/// A byte semaphore, fair and runtime-free: acquisitions are served in the order they
/// began, each whole or not at all.
pub(crate) struct Budget {
    total: u64,
    state: Mutex<State>,
}

struct State {
    free: u64,
    /// Waiting acquisitions, oldest first: (ticket, bytes, waker).
    queue: VecDeque<(u64, u64, Waker)>,
    next_ticket: u64,
}

impl Budget {
    pub(crate) const fn new(total: u64) -> Self {
        Budget {
            total,
            state: Mutex::new(State {
                free: total,
                queue: VecDeque::new(),
                next_ticket: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for `bytes` (at most the whole budget) and holds them until the returned
    /// [`Held`] is dropped.
    pub(crate) fn acquire(&'static self, bytes: u64) -> Acquire {
        Acquire {
            budget: self,
            want: bytes.min(self.total),
            ticket: None,
        }
    }

    fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let waker = {
            let mut state = self.lock();
            state.free += bytes;
            state.queue.front().map(|(_, _, w)| w.clone())
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Bytes not held now (tests).
    #[cfg(test)]
    fn free(&self) -> u64 {
        self.lock().free
    }
}

/// A pending [`Budget::acquire`]; dropping it gives up its place in the queue.
pub(crate) struct Acquire {
    budget: &'static Budget,
    want: u64,
    /// Its place in the queue, once it had to wait.
    ticket: Option<u64>,
}

impl Future for Acquire {
    type Output = Held;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Held> {
        let budget = self.budget;
        let want = self.want;
        let mut state = budget.lock();
        let first = match self.ticket {
            None => state.queue.is_empty(),
            Some(t) => state.queue.front().is_some_and(|(f, _, _)| *f == t),
        };
        if first && state.free >= want {
            state.free -= want;
            if self.ticket.take().is_some() {
                state.queue.pop_front();
            }
            // The next in line may fit in what is left.
            let next = state.queue.front().map(|(_, _, w)| w.clone());
            drop(state);
            if let Some(w) = next {
                w.wake();
            }
            return Poll::Ready(Held {
                budget,
                bytes: want,
            });
        }
        if let Some(t) = self.ticket {
            if let Some(entry) = state.queue.iter_mut().find(|(x, _, _)| *x == t) {
                entry.2.clone_from(cx.waker());
            }
        } else {
            let t = state.next_ticket;
            state.next_ticket += 1;
            state.queue.push_back((t, want, cx.waker().clone()));
            drop(state);
            self.ticket = Some(t);
        }
        Poll::Pending
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        let Some(t) = self.ticket else { return };
        let waker = {
            let mut state = self.budget.lock();
            let Some(at) = state.queue.iter().position(|(x, _, _)| *x == t) else {
                return;
            };
            state.queue.remove(at);
            // Whoever it was holding up may go now.
            if at == 0 {
                state.queue.front().map(|(_, _, w)| w.clone())
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Bytes of a [`Budget`] held until dropped.
#[must_use = "the budget is released when this is dropped"]
pub(crate) struct Held {
    budget: &'static Budget,
    bytes: u64,
}

impl Held {
    /// Gives back all but `bytes` of what is held.
    pub(crate) fn shrink_to(&mut self, bytes: u64) {
        if bytes < self.bytes {
            self.budget.release(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Waker, Arc<Count>) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (Waker::from(Arc::clone(&count)), count)
    }

    fn poll(a: &mut Acquire, w: &Waker) -> Option<Held> {
        match Pin::new(a).poll(&mut Context::from_waker(w)) {
            Poll::Ready(h) => Some(h),
            Poll::Pending => None,
        }
    }

    fn budget(total: u64) -> &'static Budget {
        Box::leak(Box::new(Budget::new(total)))
    }

    #[test]
    fn windows_are_bounded_by_files_and_bytes_and_never_empty() {
        assert!(runs(&[]).is_empty());
        let big = runs(&[WINDOW_BYTES * 3, 1, 2]);
        assert_eq!(
            big,
            vec![0..1, 1..3],
            "a blob over the window is a window alone"
        );
        let many = runs(&vec![1; WINDOW_FILES * 2 + 1]);
        assert_eq!(
            many,
            vec![
                0..WINDOW_FILES,
                WINDOW_FILES..WINDOW_FILES * 2,
                WINDOW_FILES * 2..WINDOW_FILES * 2 + 1
            ]
        );
        let eights = runs(&[8 << 20; 20]);
        assert_eq!(eights, vec![0..8, 8..16, 16..20], "64 MiB a window");
    }

    #[test]
    fn acquisitions_wait_their_turn_and_take_all_or_nothing() {
        let b = budget(100);
        let (w, woken) = waker();
        let first = poll(&mut b.acquire(60), &w).expect("free");
        let mut second = b.acquire(60);
        assert!(poll(&mut second, &w).is_none(), "40 left");
        // A smaller one behind it waits too: first come, first served.
        let mut third = b.acquire(10);
        assert!(poll(&mut third, &w).is_none(), "queued behind the second");
        assert_eq!(b.free(), 40, "nothing taken by waiters");
        drop(first);
        assert!(woken.0.load(Ordering::SeqCst) >= 1, "the head is woken");
        let second = poll(&mut second, &w).expect("its turn");
        let third = poll(&mut third, &w).expect("fits in what is left");
        assert_eq!(b.free(), 30);
        drop((second, third));
        assert_eq!(b.free(), 100);
    }

    #[test]
    fn a_dropped_waiter_leaves_the_queue_and_lets_the_next_go() {
        let b = budget(100);
        let (w, woken) = waker();
        let held = poll(&mut b.acquire(90), &w).expect("free");
        let mut big = b.acquire(50);
        assert!(poll(&mut big, &w).is_none());
        let mut small = b.acquire(10);
        assert!(poll(&mut small, &w).is_none(), "behind the big one");
        let before = woken.0.load(Ordering::SeqCst);
        drop(big);
        assert!(
            woken.0.load(Ordering::SeqCst) > before,
            "the next one is woken"
        );
        let small = poll(&mut small, &w).expect("first in line now, and it fits");
        drop((held, small));
        assert_eq!(b.free(), 100);
    }

    #[test]
    fn shrinking_gives_back_at_once_and_requests_are_clamped() {
        let b = budget(100);
        let (w, _) = waker();
        let mut held = poll(&mut b.acquire(1000), &w).expect("clamped to the whole budget");
        assert_eq!(b.free(), 0);
        let mut next = b.acquire(70);
        assert!(poll(&mut next, &w).is_none());
        held.shrink_to(30);
        assert_eq!(b.free(), 70);
        held.shrink_to(50);
        assert_eq!(b.free(), 70, "shrinking never grows");
        let next = poll(&mut next, &w).expect("fits now");
        drop((held, next));
        assert_eq!(b.free(), 100);
    }
}
