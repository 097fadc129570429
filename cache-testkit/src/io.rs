//! Counting a backend's storage I/O, so the suite can prove that a call did none.

use async_trait::async_trait;
use cache_core::storage::{ActionRecord, BlobSource, EntryKey, Storage, StoredEntry};
use cache_core::{BackendResult, BlobRef, DigestAlgorithm};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
struct Counts {
    reads: AtomicU64,
    writes: AtomicU64,
    other: AtomicU64,
}

/// Shared counters of the storage calls a backend made.
///
/// A backend built on [`cache_core::storage::Storage`] gets them for free by wrapping its
/// storage in [`CountingStorage`] (which [`crate::Harness::from_storage`] does). A
/// backend that implements [`cache_core::CacheBackend`] directly calls
/// [`IoCounter::record_read`] / [`IoCounter::record_write`] wherever it talks to its
/// store, so the policy cases can prove that `Writeonly`/`Disabled` lookups and
/// `Readonly` stores touch nothing.
///
/// Clones share the same counters.
#[derive(Debug, Clone, Default)]
pub struct IoCounter(Arc<Counts>);

/// The counters at one moment; subtract two with [`IoSnapshot::since`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoSnapshot {
    /// Calls that read stored data (entries, blobs, existence checks).
    pub reads: u64,
    /// Calls that change stored data (entries, blobs, recency).
    pub writes: u64,
    /// Other calls into the store (blocking jobs, health checks).
    pub other: u64,
}

impl IoSnapshot {
    /// All calls.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.reads + self.writes + self.other
    }

    /// What happened between `earlier` and this snapshot.
    #[must_use]
    pub fn since(&self, earlier: IoSnapshot) -> IoSnapshot {
        IoSnapshot {
            reads: self.reads.saturating_sub(earlier.reads),
            writes: self.writes.saturating_sub(earlier.writes),
            other: self.other.saturating_sub(earlier.other),
        }
    }
}

impl IoCounter {
    /// Fresh counters at zero.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one call that read stored data.
    pub fn record_read(&self) {
        self.0.reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one call that changed stored data.
    pub fn record_write(&self) {
        self.0.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one other call into the store (blocking job, health check).
    pub fn record_other(&self) {
        self.0.other.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    #[must_use]
    pub fn snapshot(&self) -> IoSnapshot {
        IoSnapshot {
            reads: self.0.reads.load(Ordering::Relaxed),
            writes: self.0.writes.load(Ordering::Relaxed),
            other: self.0.other.load(Ordering::Relaxed),
        }
    }
}

/// A [`Storage`] wrapper that counts every call into `inner` on an [`IoCounter`].
///
/// ```
/// use cache_testkit::{CountingStorage, IoCounter, MemoryStorage};
/// let io = IoCounter::new();
/// let cache = cache_core::Cache::new(
///     CountingStorage::new(MemoryStorage::new(), io.clone()),
///     cache_testkit::spawn_blocking,
/// );
/// # let _ = cache;
/// assert_eq!(io.snapshot().total(), 0);
/// ```
#[derive(Debug)]
pub struct CountingStorage<S> {
    inner: S,
    io: IoCounter,
}

impl<S: Storage> CountingStorage<S> {
    /// Wraps `inner`, counting on `io`.
    pub fn new(inner: S, io: IoCounter) -> Self {
        CountingStorage { inner, io }
    }

    /// The wrapped storage.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The counters.
    pub fn io(&self) -> &IoCounter {
        &self.io
    }
}

#[async_trait]
impl<S: Storage> Storage for CountingStorage<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn get_entry(&self, key: &EntryKey) -> BackendResult<Option<StoredEntry>> {
        self.io.record_read();
        self.inner.get_entry(key).await
    }

    async fn put_entry(&self, key: &EntryKey, record: Arc<ActionRecord>) -> BackendResult<()> {
        self.io.record_write();
        self.inner.put_entry(key, record).await
    }

    async fn remove_entry(&self, key: &EntryKey) -> BackendResult<()> {
        self.io.record_write();
        self.inner.remove_entry(key).await
    }

    async fn find_missing_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>> {
        self.io.record_read();
        self.inner.find_missing_blobs(blobs).await
    }

    async fn put_blobs(
        &self,
        sources: Vec<BlobSource>,
        a: Option<DigestAlgorithm>,
    ) -> BackendResult<Vec<BlobRef>> {
        self.io.record_write();
        self.inner.put_blobs(sources, a).await
    }

    async fn open_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<Option<BlobSource>>> {
        self.io.record_read();
        self.inner.open_blobs(blobs).await
    }

    async fn remove_blob(&self, blob: &BlobRef) -> BackendResult<()> {
        self.io.record_write();
        self.inner.remove_blob(blob).await
    }

    async fn touch(&self, key: &EntryKey) -> BackendResult<()> {
        self.io.record_other();
        self.inner.touch(key).await
    }

    async fn health_check(&self) -> BackendResult<()> {
        self.io.record_other();
        self.inner.health_check().await
    }
}
