//! Unit tests of the breaker: the outage rule, the cool-down's trial call, and whose
//! faults count (the rest of the combinators are tested in `cache-testkit`).

use super::*;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Fails every call with the error `make` builds (a lookup misses once `healthy`),
/// counting calls; while `hang` is set a lookup never answers.
struct Failing {
    calls: AtomicU64,
    make: Mutex<fn() -> BackendError>,
    healthy: AtomicBool,
    hang: AtomicBool,
}

#[async_trait]
impl CacheBackend for Failing {
    async fn lookup(&self, _: &Task, _: &Digest, _: CachePolicy) -> BackendResult<Option<Hit>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.hang.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        if self.healthy.load(Ordering::Relaxed) {
            return Ok(None);
        }
        Err((*lock(&self.make))())
    }

    async fn store(&self, _: &Task, _: &str, _: &CacheEntry, _: CachePolicy) -> BackendResult<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Err((*lock(&self.make))())
    }

    fn name(&self) -> &'static str {
        "failing"
    }

    async fn health_check(&self) -> BackendResult<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Err((*lock(&self.make))())
    }
}

/// The fake answers at once: one poll finishes every future here.
fn now<T>(f: impl Future<Output = T>) -> T {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the fake backend never waits"),
    }
}

/// What one `taskcache run` does with the shared tier: a lookup, then a store.
fn one_run(b: &CircuitBreaker) {
    let task = Task::new("t", ["true"]);
    let key = Digest::parse(&format!("blake3:{}", "ab".repeat(32))).unwrap();
    assert!(now(b.lookup(&task, &key, CachePolicy::Normal)).is_err());
    let entry = CacheEntry::default();
    assert!(now(b.store(&task, &key.to_string(), &entry, CachePolicy::Normal)).is_err());
}

fn failing(make: fn() -> BackendError) -> Arc<Failing> {
    Arc::new(Failing {
        calls: AtomicU64::new(0),
        make: Mutex::new(make),
        healthy: AtomicBool::new(false),
        hang: AtomicBool::new(false),
    })
}

#[test]
fn an_outage_opens_the_breaker_at_the_first_call() {
    let outages: [fn() -> BackendError; 3] = [
        || BackendError::Timeout {
            backend: "failing",
            operation: "lookup",
            after: Duration::from_secs(2),
        },
        || BackendError::unavailable("no answer within 2s"),
        || BackendError::Connection(crate::error::Detail::new("connection refused")),
    ];
    for make in outages {
        let inner = failing(make);
        let b = CircuitBreaker::new(inner.clone(), 3).open_on_outage();
        one_run(&b);
        assert!(b.is_open(), "{}", make());
        // The store after the failed lookup never reached the server: one deadline
        // for the run, not two (drill remote found a frozen server cost two).
        assert_eq!(inner.calls.load(Ordering::Relaxed), 1, "{}", make());
    }
}

#[test]
fn other_cache_faults_still_count_to_the_threshold() {
    let inner = failing(|| BackendError::Serialization(crate::error::Detail::new("corrupt")));
    let b = CircuitBreaker::new(inner.clone(), 3).open_on_outage();
    one_run(&b);
    assert!(!b.is_open(), "a corrupt entry is not an outage");
    assert_eq!(inner.calls.load(Ordering::Relaxed), 2);
}

#[test]
fn without_the_outage_rule_only_the_threshold_opens_it() {
    let inner = failing(|| BackendError::unavailable("down"));
    let b = CircuitBreaker::new(inner.clone(), 3);
    one_run(&b);
    assert!(!b.is_open());
    assert_eq!(inner.calls.load(Ordering::Relaxed), 2);
}

#[test]
fn after_its_cool_down_one_call_goes_through_and_a_success_closes_it() {
    let inner = failing(|| BackendError::unavailable("down"));
    let cooldown = Duration::from_millis(50);
    let b = CircuitBreaker::new(inner.clone(), 3)
        .open_on_outage()
        .with_cooldown(cooldown);
    let task = Task::new("t", ["true"]);
    let key = Digest::parse(&format!("blake3:{}", "cd".repeat(32))).unwrap();
    let lookup = || now(b.lookup(&task, &key, CachePolicy::Normal));
    let calls = || inner.calls.load(Ordering::Relaxed);
    assert!(lookup().is_err());
    assert!(b.is_open());
    assert!(lookup().is_err());
    assert_eq!(calls(), 1, "open: skipped");
    // Half-open: one call tries the backend, which still fails: open again.
    std::thread::sleep(cooldown);
    assert!(lookup().is_err());
    assert_eq!(calls(), 2);
    assert!(b.is_open());
    assert!(lookup().is_err());
    assert_eq!(calls(), 2, "a failed trial starts another cool-down");
    // Back: the next trial succeeds and closes it; later calls go through.
    inner.healthy.store(true, Ordering::Relaxed);
    std::thread::sleep(cooldown);
    assert!(matches!(lookup(), Ok(None)));
    assert!(!b.is_open());
    assert!(matches!(lookup(), Ok(None)));
    assert_eq!(calls(), 4);
}

#[test]
fn without_a_cool_down_it_stays_open() {
    let inner = failing(|| BackendError::unavailable("down"));
    let b = CircuitBreaker::new(inner.clone(), 1);
    one_run(&b);
    inner.healthy.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(20));
    let task = Task::new("t", ["true"]);
    let key = Digest::parse(&format!("blake3:{}", "ef".repeat(32))).unwrap();
    assert!(now(b.lookup(&task, &key, CachePolicy::Normal)).is_err());
    assert_eq!(inner.calls.load(Ordering::Relaxed), 1);
}

/// Issue 22: the trial call of a half-open breaker was dropped (a cancel, an outer
/// deadline) and `probing` stayed set, so every later call was refused for good.
#[test]
fn a_dropped_trial_call_hands_the_trial_on() {
    let inner = failing(|| BackendError::unavailable("down"));
    let cooldown = Duration::from_millis(20);
    let b = CircuitBreaker::new(inner.clone(), 1).with_cooldown(cooldown);
    let task = Task::new("t", ["true"]);
    let key = Digest::parse(&format!("blake3:{}", "12".repeat(32))).unwrap();
    assert!(now(b.lookup(&task, &key, CachePolicy::Normal)).is_err());
    assert!(b.is_open());
    // After the cool-down the trial call reaches a backend that hangs, and is dropped.
    inner.hang.store(true, Ordering::Relaxed);
    std::thread::sleep(cooldown);
    {
        let mut trial = std::pin::pin!(b.lookup(&task, &key, CachePolicy::Normal));
        let polled = trial.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        assert!(polled.is_pending(), "the backend hangs");
    }
    assert_eq!(
        inner.calls.load(Ordering::Relaxed),
        2,
        "the trial reached it"
    );
    // The backend is back: the next call tries it (no new cool-down) and closes.
    inner.hang.store(false, Ordering::Relaxed);
    inner.healthy.store(true, Ordering::Relaxed);
    assert!(matches!(
        now(b.lookup(&task, &key, CachePolicy::Normal)),
        Ok(None)
    ));
    assert!(!b.is_open());
    assert_eq!(inner.calls.load(Ordering::Relaxed), 3);
}

/// Refused permissions and the caller's mistakes are not outages: they never open
/// the breaker, however many, with the outage rule on and a threshold of one.
#[test]
fn only_the_caches_faults_count() {
    let refusals: [fn() -> BackendError; 2] = [
        || BackendError::permission_denied("403: read-only token"),
        || {
            BackendError::workspace(
                "open workspace",
                "/nowhere",
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        },
    ];
    for make in refusals {
        let inner = failing(make);
        let b = CircuitBreaker::new(inner.clone(), 1).open_on_outage();
        for _ in 0..5 {
            one_run(&b);
        }
        assert!(!b.is_open(), "{}", make());
        assert_eq!(inner.calls.load(Ordering::Relaxed), 10, "{}", make());
    }
}

/// A trial call that ends in a permission refusal found the backend answering: the
/// breaker closes. One that ends in the caller's mistake says nothing: the breaker
/// stays open and the next call is the trial.
#[test]
fn a_trial_is_judged_by_whose_fault_ended_it() {
    let task = Task::new("t", ["true"]);
    let key = Digest::parse(&format!("blake3:{}", "34".repeat(32))).unwrap();
    let cooldown = Duration::from_millis(20);
    let opened = || {
        let inner = failing(|| BackendError::unavailable("down"));
        let b = CircuitBreaker::new(inner.clone(), 1).with_cooldown(cooldown);
        assert!(now(b.lookup(&task, &key, CachePolicy::Normal)).is_err());
        assert!(b.is_open());
        std::thread::sleep(cooldown);
        (b, inner)
    };
    let (b, inner) = opened();
    *lock(&inner.make) = || BackendError::permission_denied("read-only");
    assert!(now(b.lookup(&task, &key, CachePolicy::Normal)).is_err());
    assert!(!b.is_open(), "a refused permission is an answer");

    let (b, inner) = opened();
    *lock(&inner.make) = || BackendError::InvalidKey {
        value: "x".into(),
        reason: "r",
    };
    assert!(now(b.lookup(&task, &key, CachePolicy::Normal)).is_err());
    assert!(b.is_open(), "the caller's mistake is no verdict");
    inner.healthy.store(true, Ordering::Relaxed);
    assert!(matches!(
        now(b.lookup(&task, &key, CachePolicy::Normal)),
        Ok(None)
    ));
    assert!(!b.is_open());
    assert_eq!(inner.calls.load(Ordering::Relaxed), 3);
}
