//! The origin API's unit tests (`../shared/seed/backend.rs.txt`), ported unchanged in meaning.

use cache_core::{
    BackendError, BlobRef, CacheLookupResult, CachePolicy, Digest, DigestAlgorithm, Fault,
    policy_allows_read, policy_allows_write,
};

// The origin's errors carried strings; they carry typed digests now.
fn some_digest() -> Digest {
    DigestAlgorithm::Sha256.digest(b"test")
}

fn blob(data: &[u8]) -> BlobRef {
    BlobRef::of(DigestAlgorithm::Blake3, data)
}

#[test]
fn test_cache_lookup_result() {
    let miss = CacheLookupResult::miss("sha256:abc123");
    assert!(!miss.hit);
    assert_eq!(miss.key, "sha256:abc123");
    assert!(miss.cached_duration_ms.is_none());

    let hit = CacheLookupResult::hit("sha256:def456", 1234);
    assert!(hit.hit);
    assert_eq!(hit.key, "sha256:def456");
    assert_eq!(hit.cached_duration_ms, Some(1234));
}

#[test]
fn test_policy_allows_read() {
    assert!(policy_allows_read(CachePolicy::Normal));
    assert!(policy_allows_read(CachePolicy::Readonly));
    assert!(!policy_allows_read(CachePolicy::Writeonly));
    assert!(!policy_allows_read(CachePolicy::Disabled));
}

#[test]
fn test_policy_allows_write() {
    assert!(policy_allows_write(CachePolicy::Normal));
    assert!(!policy_allows_write(CachePolicy::Readonly));
    assert!(policy_allows_write(CachePolicy::Writeonly));
    assert!(!policy_allows_write(CachePolicy::Disabled));
}

#[test]
fn test_is_gracefully_degradable() {
    // Transient failures should allow graceful degradation
    assert!(BackendError::Unavailable("test".into()).is_gracefully_degradable());
    assert!(BackendError::Connection("test".into()).is_gracefully_degradable());
    assert!(
        BackendError::ActionNotFound {
            digest: some_digest()
        }
        .is_gracefully_degradable()
    );

    // Hard failures should not allow graceful degradation
    assert!(!BackendError::Io(std::io::Error::other("test")).is_gracefully_degradable());
    assert!(
        !BackendError::IoWithContext {
            operation: "write",
            path: std::path::PathBuf::from("/test"),
            source: std::io::Error::other("test"),
        }
        .is_gracefully_degradable()
    );
    assert!(!BackendError::Serialization("test".into()).is_gracefully_degradable());
    assert!(
        !BackendError::DigestMismatch {
            expected: blob(b"a"),
            actual: blob(b"b")
        }
        .is_gracefully_degradable()
    );
    assert!(
        !BackendError::BlobNotFound {
            digest: blob(b"test")
        }
        .is_gracefully_degradable()
    );
}

#[test]
fn test_io_with_context() {
    let error =
        BackendError::io_with_context("write", "/test/path", std::io::Error::other("disk full"));
    let msg = error.to_string();
    assert!(msg.contains("write"));
    assert!(msg.contains("/test/path"));
    assert!(msg.contains("disk full"));
}

/// The variants added since the origin are hard errors: bad input or bad data.
#[test]
fn added_variants_are_hard() {
    for e in [
        BackendError::InvalidKey {
            value: "x".into(),
            reason: "r",
        },
        BackendError::UnsafePath {
            path: "../x".into(),
            reason: "r".into(),
        },
        BackendError::InvalidOutput {
            path: "x".into(),
            reason: "r".into(),
        },
        BackendError::CorruptEntry {
            key: some_digest(),
            reason: "r".into(),
        },
    ] {
        assert!(!e.is_gracefully_degradable(), "{e}");
    }
}

/// Cache faults make the task run uncached; caller faults say what to fix.
#[test]
fn faults_are_classified() {
    let cache = [
        BackendError::Unavailable("x".into()),
        BackendError::Io(std::io::Error::other("x")),
        BackendError::CorruptEntry {
            key: some_digest(),
            reason: "r".into(),
        },
        BackendError::BlobNotFound { digest: blob(b"x") },
        BackendError::DigestMismatch {
            expected: blob(b"a"),
            actual: blob(b"b"),
        },
    ];
    for e in cache {
        assert_eq!(e.fault(), Fault::Cache, "{e}");
        assert!(e.is_cache_fault());
    }
    let caller = [
        BackendError::InvalidKey {
            value: "x".into(),
            reason: "r",
        },
        BackendError::InvalidOutput {
            path: "x".into(),
            reason: "r".into(),
        },
        BackendError::InvalidInput {
            pattern: "x".into(),
            reason: "r".into(),
        },
        BackendError::UnsafePath {
            path: "x".into(),
            reason: "r".into(),
        },
    ];
    for e in caller {
        assert_eq!(e.fault(), Fault::Caller, "{e}");
        assert!(!e.is_cache_fault());
    }
    // The workspace is the caller's: another tier would meet the same one.
    let e = BackendError::workspace(
        "open workspace",
        "/no/such/dir",
        std::io::Error::from(std::io::ErrorKind::NotFound),
    );
    assert_eq!(e.fault(), Fault::Caller, "{e}");
    assert!(e.to_string().contains("/no/such/dir"), "{e}");
    // A refused permission is the third owner: degradable, never an outage.
    let e = BackendError::permission_denied("403 Forbidden");
    assert_eq!(e.fault(), Fault::Permission, "{e}");
    assert!(e.is_gracefully_degradable() && !e.is_outage() && !e.is_cache_fault());
    // A rejected request is the cache's, degradable, not an outage.
    let e = BackendError::rejected("INVALID_ARGUMENT");
    assert_eq!(e.fault(), Fault::Cache, "{e}");
    assert!(e.is_gracefully_degradable() && !e.is_outage());
}

/// Wrapped errors stay reachable as sources.
#[test]
fn sources_are_kept() {
    use std::error::Error;
    let e = BackendError::Connection(cache_core::Detail::with_source(
        "connect to 127.0.0.1:9",
        std::io::Error::other("refused"),
    ));
    let detail = e.source().expect("the detail");
    assert_eq!(
        detail.source().expect("the io error").to_string(),
        "refused"
    );
    assert!(e.to_string().contains("refused"), "{e}");
}

/// `CacheBackend` is object-safe and usable behind `Arc` and `Box`.
#[test]
fn backend_is_object_safe() {
    fn takes_arc(_: Option<std::sync::Arc<dyn cache_core::CacheBackend>>) {}
    fn takes_box(_: Option<Box<dyn cache_core::CacheBackend>>) {}
    takes_arc(None);
    takes_box(None);
}
