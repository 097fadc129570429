use super::*;
use crate::BackendResult;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::task::Wake;

/// The longest a test waits for something that takes microseconds.
const PATIENCE: Duration = Duration::from_secs(60);

fn block_on<F: Future>(f: F) -> F::Output {
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
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
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

/// Polls `f` once (with a waker that does nothing).
fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = Waker::from(Arc::new(Noop));
    Pin::new(f).poll(&mut Context::from_waker(&waker))
}

/// Waits (bounded) until `done`.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let give_up = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < give_up, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn outside_a_call_nothing_is_ever_cancelled() {
    let token = CancelToken::current();
    assert!(!token.is_cancelled());
    assert!(token.check().is_ok());
    assert_eq!(token.publish(|| Ok::<_, std::io::Error>(7)).unwrap(), 7);
    let job = token.bind(|| CancelToken::current().is_cancelled());
    assert!(!job());
}

#[test]
fn a_dropped_call_cancels_the_jobs_it_started_and_refuses_their_writes() {
    let (tx, rx) = mpsc::channel();
    let mut call = Box::pin(scoped(async move {
        // Started while the call is polled: bound to it.
        let job = bind(move || {
            let token = CancelToken::current();
            wait_until("the cancel", || token.is_cancelled());
            let refused = token.publish(|| Ok::<_, std::io::Error>(()));
            tx.send(refused.map_err(|e| is_cancelled(&e))).unwrap();
        });
        std::thread::spawn(job);
        std::future::pending::<()>().await;
    }));
    assert!(poll_once(&mut call).is_pending());
    drop(call);
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), Err(true));
}

#[test]
fn a_cancel_waits_for_a_write_under_way_and_no_write_starts_after_it() {
    let call = scoped(std::future::ready(()));
    let handle = call.handle();
    let token = CancelToken(Some(Arc::clone(&handle.0)));
    let events = Arc::new(Mutex::new(Vec::new()));
    let (entered_tx, entered) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let writer = {
        let (token, events) = (token.clone(), Arc::clone(&events));
        std::thread::spawn(move || {
            token
                .publish(|| {
                    entered_tx.send(()).unwrap();
                    go_rx.recv_timeout(PATIENCE).unwrap();
                    events.lock().unwrap().push("write done");
                    Ok::<_, std::io::Error>(())
                })
                .unwrap();
        })
    };
    entered.recv_timeout(PATIENCE).unwrap();
    let canceller = {
        let (handle, events) = (handle.clone(), Arc::clone(&events));
        std::thread::spawn(move || {
            handle.cancel();
            events.lock().unwrap().push("cancel returned");
        })
    };
    wait_until("the cancel to start", || token.is_cancelled());
    go.send(()).unwrap();
    canceller.join().unwrap();
    writer.join().unwrap();
    assert_eq!(*events.lock().unwrap(), ["write done", "cancel returned"]);
    let late = token.publish(|| -> std::io::Result<()> { panic!("a write after the cancel") });
    assert!(is_cancelled(&late.unwrap_err()));
}

#[test]
fn cancelling_an_enclosing_call_cancels_the_calls_inside_it_and_counts_their_jobs() {
    let (token_tx, token_rx) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let inner_job_started = Arc::new(AtomicBool::new(false));
    let started = Arc::clone(&inner_job_started);
    let mut outer = Box::pin(scoped(async move {
        let inner = Box::pin(scoped(async move {
            token_tx.send(CancelToken::current()).unwrap();
            std::thread::spawn(bind(move || {
                started.store(true, Ordering::SeqCst);
                release_rx.recv_timeout(PATIENCE).unwrap();
            }));
            std::future::pending::<()>().await;
        }));
        inner.await;
    }));
    let handle = outer.handle();
    assert!(poll_once(&mut outer).is_pending());
    let inner_token = token_rx.recv_timeout(PATIENCE).unwrap();
    assert_eq!(
        handle.running(),
        1,
        "the inner call's job counts in the outer one"
    );
    handle.cancel();
    assert!(inner_token.is_cancelled());
    let mut stopped = Box::pin(handle.stopped());
    assert!(poll_once(&mut stopped).is_pending(), "its job still runs");
    release.send(()).unwrap();
    wait_until("the job to end", || handle.running() == 0);
    assert!(poll_once(&mut stopped).is_ready());
    assert!(inner_job_started.load(Ordering::SeqCst));
}

#[test]
fn a_cancel_undoes_what_was_registered_once_and_a_late_registration_at_once() {
    let call = scoped(std::future::ready(()));
    let handle = call.handle();
    let token = CancelToken(Some(Arc::clone(&handle.0)));
    let undone = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let count = |n: &Arc<std::sync::atomic::AtomicU32>| {
        let n = Arc::clone(n);
        move || {
            n.fetch_add(1, Ordering::SeqCst);
        }
    };
    let kept = token.on_cancel(count(&undone));
    let released = token.on_cancel(|| panic!("a released undo ran"));
    drop(released);
    handle.cancel();
    handle.cancel();
    assert_eq!(undone.load(Ordering::SeqCst), 1);
    drop(kept);
    let _late = token.on_cancel(count(&undone));
    assert_eq!(
        undone.load(Ordering::SeqCst),
        2,
        "registered after the cancel: run at once"
    );
}

/// A [`crate::deadline::Limits`] whose deadline passes at once and whose later timers
/// (the join's) never fire within the test: the call returns only once its job stopped.
fn limits_that_time_out_at_once() -> crate::deadline::Limits {
    let first = Arc::new(AtomicBool::new(true));
    crate::deadline::Limits {
        backend: "test",
        sleep: Arc::new(move |_| {
            if first.swap(false, Ordering::SeqCst) {
                Box::pin(std::future::ready(()))
            } else {
                Box::pin(std::future::pending())
            }
        }),
        deadlines: crate::Deadlines::new(Duration::from_millis(1)),
    }
}

#[test]
fn a_deadline_cancels_the_timed_out_call_and_joins_its_job_before_it_returns() {
    /// Dropped with the job's closure: when the job ended, whether it ran or was
    /// skipped (a job that starts after the cancel does not run).
    struct Ended(Arc<AtomicBool>);
    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let ended = Arc::new(AtomicBool::new(false));
    let guard = Ended(Arc::clone(&ended));
    let limits = limits_that_time_out_at_once();
    let work = async move {
        let job = crate::blocking::start(&crate::thread_per_job, move || {
            let _guard = guard;
            let token = CancelToken::current();
            let give_up = Instant::now() + PATIENCE;
            while !token.is_cancelled() && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(1));
            }
            BackendResult::Ok(())
        });
        job.await
    };
    let r = block_on(limits.within("test", Duration::from_millis(1), work));
    assert!(
        matches!(r, Err(crate::BackendError::Timeout { .. })),
        "{r:?}"
    );
    assert!(
        ended.load(Ordering::SeqCst),
        "the timeout was returned while the call's job still ran"
    );
}
