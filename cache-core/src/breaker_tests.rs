//! Unit tests of the breaker's outage rule (the rest of the combinators are tested
//! through `cache-testkit`'s cases).

use super::*;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Fails every call with the error `make` builds (a lookup misses once `healthy`),
/// counting calls.
struct Failing {
    calls: AtomicU64,
    make: fn() -> BackendError,
    healthy: AtomicBool,
}

#[async_trait]
impl CacheBackend for Failing {
    async fn lookup(&self, _: &Task, _: &Digest, _: CachePolicy) -> BackendResult<Option<Hit>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.healthy.load(Ordering::Relaxed) {
            return Ok(None);
        }
        Err((self.make)())
    }

    async fn store(&self, _: &Task, _: &str, _: &CacheEntry, _: CachePolicy) -> BackendResult<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Err((self.make)())
    }

    fn name(&self) -> &'static str {
        "failing"
    }

    async fn health_check(&self) -> BackendResult<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Err((self.make)())
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
        make,
        healthy: AtomicBool::new(false),
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
