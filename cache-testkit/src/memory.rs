//! The reference backend: everything in memory, fully conformant.

use crate::{Brake, BrakedStorage, Capabilities, CountingStorage, Harness, IoCounter, Tamper};
use async_trait::async_trait;
use cache_core::storage::{ActionRecord, BlobSource, EntryKey, Storage, StoredEntry, copy_hashing};
use cache_core::{
    BackendError, BackendResult, BlobRef, Cache, CacheBackend, CacheEntry, CachePolicy, Digest,
    DigestAlgorithm, Hit, Task,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A stored byte string, shared rather than copied: a restore reads the stored buffer
/// in place.
type Shared = Arc<[u8]>;

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

    /// The stored bytes of the entry for `key`, undecoded (for tests of what a
    /// careless reader would do with them).
    #[must_use]
    pub fn raw_entry(&self, key: &Digest) -> Option<Vec<u8>> {
        lock(&self.state.entries).get(key).map(|b| b.to_vec())
    }

    /// The stored blob with this digest, whatever its size (for tests of storages that
    /// address blobs by digest alone).
    #[must_use]
    pub fn stored_blob_by_digest(&self, digest: &Digest) -> Option<BlobRef> {
        lock(&self.state.blobs)
            .keys()
            .find(|b| b.digest == *digest)
            .copied()
    }

    /// Total bytes of stored blobs.
    #[must_use]
    pub fn blob_bytes(&self) -> u64 {
        lock(&self.state.blobs)
            .values()
            .map(|b| b.len() as u64)
            .sum()
    }
}

/// Hashes one source into a shared buffer (blocking for files and readers).
fn load_source(source: BlobSource, algorithm: DigestAlgorithm) -> BackendResult<(BlobRef, Shared)> {
    match source {
        BlobSource::Bytes(bytes) => Ok((BlobRef::of(algorithm, &bytes), bytes)),
        source => {
            let what = format!("{source:?}");
            let mut reader = source.into_reader()?;
            let mut bytes = Vec::new();
            let blob = copy_hashing(&mut reader, &mut bytes, algorithm)
                .map_err(|e| BackendError::io_with_context("read blob source", what, e))?;
            Ok((blob, Arc::from(bytes)))
        }
    }
}

fn joined<T>(r: Result<BackendResult<T>, tokio::task::JoinError>) -> BackendResult<T> {
    match r {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(BackendError::unavailable(format!(
            "memory storage: blocking job did not finish: {e}"
        ))),
    }
}

/// Entries larger than this are decoded on the blocking pool.
const DECODE_INLINE_MAX: usize = 64 << 10;

#[async_trait]
impl Storage for MemoryStorage {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn get_entry(&self, key: &EntryKey) -> BackendResult<Option<StoredEntry>> {
        let key = key.digest;
        let Some(bytes) = lock(&self.state.entries).get(&key).cloned() else {
            return Ok(None);
        };
        // The missing blobs are left to `find_missing_blobs`, so the suite exercises
        // that path here (cache-local answers them in `get_entry`).
        let inline = bytes.len() <= DECODE_INLINE_MAX;
        let decode = move || ActionRecord::decode(&key, &bytes).map(|r| Some(StoredEntry::new(r)));
        if inline {
            return decode();
        }
        joined(tokio::task::spawn_blocking(cache_core::cancel::bind(decode)).await)
    }

    async fn put_entry(&self, _key: &EntryKey, record: Arc<ActionRecord>) -> BackendResult<()> {
        let bytes = record.encode()?;
        lock(&self.state.entries).insert(record.key, Arc::from(bytes));
        Ok(())
    }

    async fn remove_entry(&self, key: &EntryKey) -> BackendResult<()> {
        lock(&self.state.entries).remove(&key.digest);
        Ok(())
    }

    async fn find_missing_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>> {
        let stored = lock(&self.state.blobs);
        Ok(blobs
            .into_iter()
            .filter(|b| !stored.contains_key(b))
            .collect())
    }

    async fn put_blobs(
        &self,
        sources: Vec<BlobSource>,
        algorithm: Option<DigestAlgorithm>,
    ) -> BackendResult<Vec<BlobRef>> {
        let algorithm = algorithm.unwrap_or(self.algorithm);
        // Bound to the call: a cancelled store stops reading its sources.
        let loaded = joined(
            tokio::task::spawn_blocking(cache_core::cancel::bind(move || {
                sources
                    .into_iter()
                    .map(|s| load_source(s, algorithm))
                    .collect::<BackendResult<Vec<_>>>()
            }))
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

    async fn open_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<Option<BlobSource>>> {
        let stored = lock(&self.state.blobs);
        Ok(blobs
            .iter()
            .map(|b| {
                stored
                    .get(b)
                    .map(|bytes| BlobSource::Bytes(Arc::clone(bytes)))
            })
            .collect())
    }

    async fn remove_blob(&self, blob: &BlobRef) -> BackendResult<()> {
        lock(&self.state.blobs).remove(blob);
        Ok(())
    }

    async fn touch(&self, _key: &EntryKey) -> BackendResult<()> {
        // No eviction, so no recency to keep.
        Ok(())
    }

    async fn health_check(&self) -> BackendResult<()> {
        Ok(())
    }
}

#[async_trait]
impl Tamper for MemoryStorage {
    async fn write_raw_entry(&self, key: &Digest, bytes: Vec<u8>) -> BackendResult<()> {
        lock(&self.state.entries).insert(*key, Arc::from(bytes));
        Ok(())
    }

    async fn read_raw_entry(&self, key: &Digest) -> BackendResult<Option<Vec<u8>>> {
        Ok(self.raw_entry(key))
    }

    async fn flip_blob_byte(&self, blob: &BlobRef) -> BackendResult<()> {
        let mut blobs = lock(&self.state.blobs);
        let stored = blobs
            .get_mut(blob)
            .ok_or(BackendError::BlobNotFound { digest: *blob })?;
        if stored.is_empty() {
            return Err(BackendError::InvalidOutput {
                path: blob.to_string(),
                reason: "an empty blob has no byte to flip".into(),
            });
        }
        let mut bytes = stored.to_vec();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        *stored = Arc::from(bytes);
        Ok(())
    }

    async fn delete_blob(&self, blob: &BlobRef) -> BackendResult<()> {
        lock(&self.state.blobs)
            .remove(blob)
            .map(drop)
            .ok_or(BackendError::BlobNotFound { digest: *blob })
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
    cache: Cache<CountingStorage<BrakedStorage<MemoryStorage>>>,
    /// Off unless a harness's cancellation case holds the bytes.
    brake: Brake,
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
        let brake = Brake::new();
        MemoryBackend {
            cache: Cache::new(
                CountingStorage::new(BrakedStorage::new(storage, brake.clone()), IoCounter::new()),
                crate::spawn_blocking,
            ),
            brake,
        }
    }

    /// The storage underneath.
    #[must_use]
    pub fn storage(&self) -> &MemoryStorage {
        self.cache.storage().inner().inner()
    }

    /// The switch that holds this backend's blob bytes ([`crate::Brake`]; off unless
    /// a test turns it on).
    #[must_use]
    pub fn brake(&self) -> &Brake {
        &self.brake
    }

    /// Counters of the storage calls made so far.
    #[must_use]
    pub fn io(&self) -> &IoCounter {
        self.cache.storage().io()
    }

    /// A conformance-suite harness over this backend (sharing its contents).
    #[must_use]
    pub fn harness(&self) -> Harness {
        let mut h = Harness::new(
            Arc::new(self.clone()),
            Arc::new(self.storage().clone()),
            self.io().clone(),
        )
        .with_capabilities(Capabilities::default().with_in_process_data(true));
        h.signing = Some(crate::signing_backend(self.cache.clone()));
        h.brake = Some(self.brake().clone());
        h
    }
}

#[async_trait]
impl CacheBackend for MemoryBackend {
    async fn lookup(
        &self,
        task: &Task,
        key: &Digest,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        self.cache.lookup(task, key, policy).await
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

    async fn import(
        &self,
        task: &Task,
        hit: &Hit,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        self.cache.import(task, hit, policy).await
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

    async fn read_raw_entry(&self, key: &Digest) -> BackendResult<Option<Vec<u8>>> {
        self.storage().read_raw_entry(key).await
    }

    async fn flip_blob_byte(&self, blob: &BlobRef) -> BackendResult<()> {
        self.storage().flip_blob_byte(blob).await
    }

    async fn delete_blob(&self, blob: &BlobRef) -> BackendResult<()> {
        self.storage().delete_blob(blob).await
    }
}
