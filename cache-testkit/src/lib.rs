//! # cache-testkit: the conformance suite every taskcache backend runs
//!
//! (Skeleton: the harness types below are the contract between the suite and the
//! backends; the cases, `MemoryBackend`, fault injection and fixtures are being
//! written in this crate.)

use async_trait::async_trait;
use cache_core::{BackendResult, BlobRef, CacheBackend, Digest};
use std::sync::Arc;

/// Test-only access to a backend's stored bytes, so the suite can plant hostile and
/// corrupt data. Each backend implements it in its own tests.
#[async_trait]
pub trait Tamper: Send + Sync {
    /// Stores `bytes` verbatim as the encoded entry for `key` (bypassing encoding).
    async fn write_raw_entry(&self, key: &Digest, bytes: Vec<u8>) -> BackendResult<()>;
    /// Flips one byte of the stored content of `blob`, keeping its address.
    async fn flip_blob_byte(&self, blob: &BlobRef) -> BackendResult<()>;
    /// Deletes the stored content of `blob`.
    async fn delete_blob(&self, blob: &BlobRef) -> BackendResult<()>;
}

/// What a backend can do beyond the core behaviour every backend must have.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// The backend evicts entries on its own (size bound).
    pub eviction: bool,
}

/// A backend under test, with what the suite needs to plant data in it.
pub struct Harness {
    /// The backend.
    pub backend: Arc<dyn CacheBackend>,
    /// Raw access for hostile-data cases.
    pub tamper: Arc<dyn Tamper>,
    /// Declared capabilities.
    pub capabilities: Capabilities,
    /// Kept alive while the test runs (temporary directories, servers).
    pub guard: Box<dyn std::any::Any + Send + Sync>,
}
