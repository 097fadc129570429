//! Who owns a REAPI failure (issue 22): every gRPC status mapped to an outage, a
//! refused permission or a rejected request, on the in-process server; and a read-only
//! action cache refused up front, read on.

mod common;

use cache_core::{
    BackendError, Cache, CacheBackend, CacheEntry, CacheOutput, CachePolicy, CircuitBreaker, Fault,
};
use cache_remote::{RemoteConfig, RemoteStorage};
use cache_testkit::fixtures::{digest, fresh_key, task};
use common::fake;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

/// A storage on the fake at `url` that tries each call once (no retries, no backoff):
/// the status of the first attempt is what the call returns.
fn open(url: &str) -> RemoteStorage {
    open_with(url, |_| {})
}

fn open_with(url: &str, tweak: impl FnOnce(&mut RemoteConfig)) -> RemoteStorage {
    let mut c = RemoteConfig::from_url(url).unwrap();
    c.backoff = Duration::from_millis(1);
    c.max_attempts = 1;
    tweak(&mut c);
    RemoteStorage::open(c).unwrap()
}

fn cache(storage: RemoteStorage) -> Cache<RemoteStorage> {
    Cache::new(storage, cache_testkit::spawn_blocking)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn one_file() -> CacheEntry {
    CacheEntry {
        outputs: vec![CacheOutput::bytes("a.txt", b"a".to_vec(), false)],
        ..CacheEntry::default()
    }
}

/// What a status must become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// `Unavailable`: the cache's, an outage.
    Outage,
    /// `PermissionDenied`: `Fault::Permission`.
    Permission,
    /// `Rejected`: the cache's, not an outage.
    Rejected,
}

const STATUSES: [(Code, Owner); 15] = [
    (Code::Unavailable, Owner::Outage),
    (Code::DeadlineExceeded, Owner::Outage),
    (Code::ResourceExhausted, Owner::Outage),
    (Code::Internal, Owner::Outage),
    (Code::Unknown, Owner::Outage),
    (Code::Aborted, Owner::Outage),
    (Code::Cancelled, Owner::Outage),
    (Code::PermissionDenied, Owner::Permission),
    (Code::Unauthenticated, Owner::Permission),
    (Code::InvalidArgument, Owner::Rejected),
    (Code::FailedPrecondition, Owner::Rejected),
    (Code::OutOfRange, Owner::Rejected),
    (Code::AlreadyExists, Owner::Rejected),
    (Code::Unimplemented, Owner::Rejected),
    (Code::DataLoss, Owner::Rejected),
];

fn assert_owned(e: &BackendError, code: Code, owner: Owner) {
    let what = format!("{code:?} -> {e}");
    assert!(e.to_string().contains(&format!("{code:?}")), "{what}");
    match owner {
        Owner::Outage => {
            assert!(matches!(e, BackendError::Unavailable(_)), "{what}");
            assert!(e.is_outage() && e.fault() == Fault::Cache, "{what}");
        }
        Owner::Permission => {
            assert!(matches!(e, BackendError::PermissionDenied(_)), "{what}");
            assert!(!e.is_outage() && e.fault() == Fault::Permission, "{what}");
        }
        Owner::Rejected => {
            assert!(matches!(e, BackendError::Rejected(_)), "{what}");
            assert!(!e.is_outage() && e.fault() == Fault::Cache, "{what}");
        }
    }
    assert!(e.is_gracefully_degradable(), "{what}");
}

/// Every status a lookup (`GetActionResult`) or a store (`UpdateActionResult`) can
/// meet, and what a breaker that opens at the first outage makes of it: only outages
/// open it. `NOT_FOUND` of a result is a miss.
#[test]
fn every_grpc_status_is_mapped_by_who_owns_it() {
    rt().block_on(async {
        let (url, state) = fake::start().await;
        for (code, owner) in STATUSES {
            state.faults.lock().unwrap().status_of =
                [("GetActionResult", code), ("UpdateActionResult", code)].into();
            let breaker = CircuitBreaker::new(Arc::new(cache(open(&url))), 3).open_on_outage();
            let e = breaker
                .lookup(&task(), &digest(&fresh_key()), CachePolicy::Normal)
                .await
                .unwrap_err();
            assert_owned(&e, code, owner);
            assert_eq!(breaker.is_open(), owner == Owner::Outage, "{code:?}");

            let c = cache(open(&url));
            let e = c
                .store(&task(), &fresh_key(), &one_file(), CachePolicy::Normal)
                .await
                .unwrap_err();
            assert_owned(&e, code, owner);
        }
        state.faults.lock().unwrap().status_of = [("GetActionResult", Code::NotFound)].into();
        let found = cache(open(&url))
            .lookup(&task(), &digest(&fresh_key()), CachePolicy::Normal)
            .await;
        assert!(matches!(found, Ok(None)), "NOT_FOUND is a miss: {found:?}");
    });
}

/// Per-blob statuses in a batch are mapped the same way: a token that may not write
/// blobs is a permission fault, not an outage.
#[test]
fn a_refused_blob_upload_is_a_permission_fault() {
    rt().block_on(async {
        let (url, state) = fake::start().await;
        state.faults.lock().unwrap().blob_status = Some((Code::PermissionDenied, 1));
        let c = cache(open(&url));
        let e = c
            .store(&task(), &fresh_key(), &one_file(), CachePolicy::Normal)
            .await
            .unwrap_err();
        assert_owned(&e, Code::PermissionDenied, Owner::Permission);
        assert_eq!(state.calls("UpdateActionResult"), 0);
    });
}

/// Issue 22: a read-only action cache (`update_enabled: false`) made `put_entry` fail
/// as an outage after the blobs were uploaded, so an executor with a read-only token
/// lost its remote reads after its first store. Now the store is refused up front as a
/// permission fault, nothing is sent, and behind `Tiered` the cache is still read. The
/// fake answers the reader's token as a read-only cache, the writer's as writable.
#[test]
fn a_read_only_action_cache_refuses_stores_before_any_upload_and_is_still_read() {
    rt().block_on(async {
        let (url, state) = fake::start().await;
        *state.read_only_token.lock().unwrap() = Some("Bearer read-only".into());
        let writer = Arc::new(cache(open(&url)));
        let reader = Arc::new(cache(open_with(&url, |c| {
            *c = c
                .clone()
                .header("authorization", "Bearer read-only")
                .unwrap();
        })));
        cache_testkit::refusal::read_only_tier(writer, reader.clone()).await;
        let sent = reader.storage().stats();
        // (FindMissingBlobs is a read too: a lookup checks the hit's blobs.)
        for rpc in ["BatchUpdateBlobs", "ByteStream.Write", "UpdateActionResult"] {
            assert_eq!(sent.rpcs.get(rpc), None, "{rpc}: {sent:?}");
        }
        assert_eq!(sent.blob_bytes_sent, 0);
        let e = reader
            .store(&task(), &fresh_key(), &one_file(), CachePolicy::Normal)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("read-only"), "{e}");
    });
}
