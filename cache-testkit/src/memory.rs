//! The reference backend: everything in memory, fully conformant.

use crate::{Capabilities, CountingStorage, Harness, IoCounter, Tamper};
use async_trait::async_trait;
use cache_core::{
    BackendError, BackendResult, BlobRef, BlobSource, BlockingJob, Cache, CacheBackend, CacheEntry,
    CacheLookupResult, CacheOutput, CachePolicy, Digest, DigestAlgorithm, FileRestore, LogBytes,
    MAX_ENTRY_BYTES, Storage, Task,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A stored byte string, shared rather than copied: a restore reads the stored buffer
/// in place.
type Shared = Arc<Vec<u8>>;

#[derive(Default)]
struct State {
    entries: Mutex<HashMap<Digest, Shared>>,
    blobs: Mutex<HashMap<BlobRef, Shared>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A [`Storage`] that keeps entries and blobs in memory.
///
/// Blobs are content-addressed by [`BlobRef`] (digest and size) and kept as shared
/// buffers, so restoring a file streams from the stored buffer without copying it.
/// Hashing and workspace writes run on tokio's blocking pool, so it needs a tokio
/// runtime. Clones share the same contents.
#[derive(Clone)]
pub struct MemoryStorage {
    state: Arc<State>,
    algorithm: DigestAlgorithm,
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStorage")
            .field("entries", &self.entry_count())
            .field("blobs", &self.blob_count())
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStorage {
    /// An empty store addressing blobs with BLAKE3.
    #[must_use]
    pub fn new() -> Self {
        Self::with_algorithm(DigestAlgorithm::Blake3)
    }

    /// An empty store addressing blobs with `algorithm`.
    #[must_use]
    pub fn with_algorithm(algorithm: DigestAlgorithm) -> Self {
        MemoryStorage {
            state: Arc::default(),
            algorithm,
        }
    }

    /// Number of stored entries.
    #[must_use]
    pub fn entry_count(&self) -> usize {
        lock(&self.state.entries).len()
    }

    /// Number of stored blobs (each distinct content once).
    #[must_use]
    pub fn blob_count(&self) -> usize {
        lock(&self.state.blobs).len()
    }

    /// Total bytes of stored blobs.
    #[must_use]
    pub fn blob_bytes(&self) -> u64 {
        lock(&self.state.blobs)
            .values()
            .map(|b| b.len() as u64)
            .sum()
    }

    fn blob(&self, blob: &BlobRef) -> Option<Shared> {
        lock(&self.state.blobs).get(blob).cloned()
    }
}

/// Hashes one source into a shared buffer (blocking for files).
fn load_source(source: BlobSource, algorithm: DigestAlgorithm) -> BackendResult<(BlobRef, Shared)> {
    match source {
        BlobSource::Bytes(bytes) => Ok((BlobRef::of(algorithm, &bytes), Arc::new(bytes))),
        BlobSource::File(path) => {
            let source = BlobSource::File(path.clone());
            let mut reader = source.open()?;
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            let blob = cache_core::copy_hashing(&mut reader, &mut bytes, algorithm)
                .map_err(|e| BackendError::io_with_context("read output", &path, e))?;
            Ok((blob, Arc::new(bytes)))
        }
    }
}

fn joined<T>(r: Result<BackendResult<T>, tokio::task::JoinError>) -> BackendResult<T> {
    match r {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(BackendError::Unavailable(format!(
            "memory storage: blocking job did not finish: {e}"
        ))),
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn run_blocking(&self, job: BlockingJob) -> BackendResult<()> {
        joined(tokio::task::spawn_blocking(job).await)
    }

    async fn get_entry(&self, key: &Digest) -> BackendResult<Option<Vec<u8>>> {
        let Some(bytes) = lock(&self.state.entries).get(key).cloned() else {
            return Ok(None);
        };
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(BackendError::CorruptEntry {
                key: key.to_string(),
                reason: format!(
                    "stored entry is {} bytes, over the {MAX_ENTRY_BYTES}-byte limit",
                    bytes.len()
                ),
            });
        }
        Ok(Some(bytes.as_ref().clone()))
    }

    async fn put_entry(&self, key: &Digest, entry: Vec<u8>) -> BackendResult<()> {
        lock(&self.state.entries).insert(*key, Arc::new(entry));
        Ok(())
    }

    async fn remove_entry(&self, key: &Digest) -> BackendResult<()> {
        lock(&self.state.entries).remove(key);
        Ok(())
    }

    async fn find_missing_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>> {
        let stored = lock(&self.state.blobs);
        Ok(blobs
            .into_iter()
            .filter(|b| !stored.contains_key(b))
            .collect())
    }

    async fn put_blobs(&self, sources: Vec<BlobSource>) -> BackendResult<Vec<BlobRef>> {
        let algorithm = self.algorithm;
        let loaded = joined(
            tokio::task::spawn_blocking(move || {
                sources
                    .into_iter()
                    .map(|s| load_source(s, algorithm))
                    .collect::<BackendResult<Vec<_>>>()
            })
            .await,
        )?;
        let mut stored = lock(&self.state.blobs);
        Ok(loaded
            .into_iter()
            .map(|(blob, bytes)| {
                stored.entry(blob).or_insert(bytes);
                blob
            })
            .collect())
    }

    async fn read_blob(&self, blob: &BlobRef) -> BackendResult<Option<Vec<u8>>> {
        Ok(self.blob(blob).map(|bytes| {
            let limit = usize::try_from(blob.size.saturating_add(1)).unwrap_or(usize::MAX);
            bytes[..bytes.len().min(limit)].to_vec()
        }))
    }

    async fn restore_files(&self, files: Vec<FileRestore>) -> BackendResult<()> {
        // Every blob must be there before anything is written.
        let mut jobs = Vec::with_capacity(files.len());
        for file in files {
            let bytes = self
                .blob(&file.blob)
                .ok_or_else(|| BackendError::BlobNotFound {
                    digest: file.blob.to_string(),
                })?;
            jobs.push((file, bytes));
        }
        let state = Arc::clone(&self.state);
        joined(
            tokio::task::spawn_blocking(move || {
                for (file, bytes) in &jobs {
                    if let Err(e) = file.write_from(&mut bytes.as_slice()) {
                        if matches!(e, BackendError::DigestMismatch { .. }) {
                            // Drop the corrupt copy (unless it was replaced meanwhile) so
                            // the next store writes a good one.
                            let mut blobs = lock(&state.blobs);
                            if blobs.get(&file.blob).is_some_and(|b| Arc::ptr_eq(b, bytes)) {
                                tracing::warn!(blob = %file.blob, "memory storage: dropping a blob that failed verification");
                                blobs.remove(&file.blob);
                            }
                        }
                        return Err(e);
                    }
                }
                Ok(())
            })
            .await,
        )
    }

    async fn remove_blob(&self, blob: &BlobRef) -> BackendResult<()> {
        lock(&self.state.blobs).remove(blob);
        Ok(())
    }

    async fn health_check(&self) -> BackendResult<()> {
        Ok(())
    }
}

#[async_trait]
impl Tamper for MemoryStorage {
    async fn write_raw_entry(&self, key: &Digest, bytes: Vec<u8>) -> BackendResult<()> {
        lock(&self.state.entries).insert(*key, Arc::new(bytes));
        Ok(())
    }

    async fn flip_blob_byte(&self, blob: &BlobRef) -> BackendResult<()> {
        let mut blobs = lock(&self.state.blobs);
        let stored = blobs
            .get_mut(blob)
            .ok_or_else(|| BackendError::BlobNotFound {
                digest: blob.to_string(),
            })?;
        if stored.is_empty() {
            return Err(BackendError::InvalidOutput {
                path: blob.to_string(),
                reason: "an empty blob has no byte to flip".into(),
            });
        }
        let mut bytes = stored.as_ref().clone();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        *stored = Arc::new(bytes);
        Ok(())
    }

    async fn delete_blob(&self, blob: &BlobRef) -> BackendResult<()> {
        lock(&self.state.blobs)
            .remove(blob)
            .map(drop)
            .ok_or_else(|| BackendError::BlobNotFound {
                digest: blob.to_string(),
            })
    }
}

/// The reference backend: a ready [`Cache`] over [`MemoryStorage`], for consumers' unit
/// tests and as the reference the conformance suite's model test compares against.
///
/// Its storage calls are counted ([`MemoryBackend::io`]), so an executor's tests can
/// also prove that, say, a disabled task never touched the cache. Clones share the
/// same contents.
///
/// ```
/// use cache_core::{CacheBackend, CacheEntry, CachePolicy, Task};
/// use cache_testkit::MemoryBackend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cache_core::BackendResult<()> {
/// let cache = MemoryBackend::new();
/// let task = Task::new("build", ["make"]);
/// let key = format!("blake3:{}", "0".repeat(64));
/// let entry = CacheEntry { exit_code: 0, stdout: Some(b"ok\n".to_vec()), ..CacheEntry::default() };
/// cache.store(&task, &key, &entry, CachePolicy::Normal).await?;
/// assert!(cache.check(&task, &key, CachePolicy::Normal).await?.hit);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct MemoryBackend {
    cache: Cache<CountingStorage<MemoryStorage>>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// An empty backend.
    #[must_use]
    pub fn new() -> Self {
        Self::from_storage(MemoryStorage::new())
    }

    /// A backend over an existing storage (e.g. one shared with another backend).
    #[must_use]
    pub fn from_storage(storage: MemoryStorage) -> Self {
        MemoryBackend {
            cache: Cache::new(CountingStorage::new(storage, IoCounter::new())),
        }
    }

    /// The storage underneath.
    #[must_use]
    pub fn storage(&self) -> &MemoryStorage {
        self.cache.storage().inner()
    }

    /// Counters of the storage calls made so far.
    #[must_use]
    pub fn io(&self) -> &IoCounter {
        self.cache.storage().io()
    }

    /// A conformance-suite harness over this backend (sharing its contents).
    #[must_use]
    pub fn harness(&self) -> Harness {
        Harness::new(
            Arc::new(self.clone()),
            Arc::new(self.storage().clone()),
            self.io().clone(),
        )
        .with_capabilities(Capabilities::default())
    }
}

#[async_trait]
impl CacheBackend for MemoryBackend {
    async fn check(
        &self,
        task: &Task,
        digest: &str,
        policy: CachePolicy,
    ) -> BackendResult<CacheLookupResult> {
        self.cache.check(task, digest, policy).await
    }

    async fn store(
        &self,
        task: &Task,
        digest: &str,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<()> {
        self.cache.store(task, digest, entry, policy).await
    }

    async fn restore_outputs(
        &self,
        task: &Task,
        digest: &str,
        workspace: &Path,
    ) -> BackendResult<Vec<CacheOutput>> {
        self.cache.restore_outputs(task, digest, workspace).await
    }

    async fn get_log_bytes(&self, task: &Task, digest: &str) -> BackendResult<LogBytes> {
        self.cache.get_log_bytes(task, digest).await
    }

    fn name(&self) -> &'static str {
        self.cache.name()
    }

    async fn health_check(&self) -> BackendResult<()> {
        self.cache.health_check().await
    }
}

#[async_trait]
impl Tamper for MemoryBackend {
    async fn write_raw_entry(&self, key: &Digest, bytes: Vec<u8>) -> BackendResult<()> {
        self.storage().write_raw_entry(key, bytes).await
    }

    async fn flip_blob_byte(&self, blob: &BlobRef) -> BackendResult<()> {
        self.storage().flip_blob_byte(blob).await
    }

    async fn delete_blob(&self, blob: &BlobRef) -> BackendResult<()> {
        self.storage().delete_blob(blob).await
    }
}
