//! The origin API's unit tests (`../shared/seed/backend.rs.txt`), ported unchanged in meaning.

use cache_core::{
    BackendError, CacheLookupResult, CachePolicy, policy_allows_read, policy_allows_write,
};

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
    assert!(BackendError::Unavailable("test".to_string()).is_gracefully_degradable());
    assert!(BackendError::Connection("test".to_string()).is_gracefully_degradable());
    assert!(
        BackendError::ActionNotFound {
            digest: "test".to_string()
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
    assert!(!BackendError::Serialization("test".to_string()).is_gracefully_degradable());
    assert!(
        !BackendError::DigestMismatch {
            expected: "a".to_string(),
            actual: "b".to_string()
        }
        .is_gracefully_degradable()
    );
    assert!(
        !BackendError::BlobNotFound {
            digest: "test".to_string()
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
            key: "k".into(),
            reason: "r".into(),
        },
    ] {
        assert!(!e.is_gracefully_degradable(), "{e}");
    }
}

/// `CacheBackend` is object-safe and usable behind `Arc` and `Box`.
#[test]
fn backend_is_object_safe() {
    fn takes_arc(_: Option<std::sync::Arc<dyn cache_core::CacheBackend>>) {}
    fn takes_box(_: Option<Box<dyn cache_core::CacheBackend>>) {}
    takes_arc(None);
    takes_box(None);
}
