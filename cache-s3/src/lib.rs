//! # cache-s3: the shared taskcache on any object store
//!
//! [`S3Storage`] is a [`cache_core::storage::Storage`] on the `object_store` crate, so
//! S3 and S3-compatible servers (MinIO, Ceph, R2), Google Cloud Storage, Azure Blob
//! Storage, a local directory and memory all work through one implementation, chosen
//! by URL: `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`,
//! `file:///abs/dir`, `memory://`. Wrapped in a [`cache_core::Cache`] it is a full
//! backend: publish order, digest checks and path safety are `Cache`'s.
//!
//! ## Layout
//!
//! Under the URL's prefix:
//!
//! * `entries/<algorithm>/<hex>`: one record per task digest: the bytes of
//!   [`ActionRecord::encode`] (`"TCAR"`), or, when its small files are packed, those
//!   bytes behind a `"TCPE"` wrapper naming its packs;
//! * `packs/<hex>`: the small files (up to 1 MiB) of entries, zstd-compressed in
//!   segments of ~4 MiB, with a trailer listing every member; named by the BLAKE3 of
//!   that member list (format: the `pack` module);
//! * `blobs/<algorithm>/<hex>`: larger files and logs, by content digest, each its own
//!   object;
//! * `used/<algorithm>/<hex>`: an empty marker whose time is the entry's last use;
//! * `used/packs/<hex>`, `used/blobs/<algorithm>/<hex>`: an empty claim, written by a
//!   store that found the pack or blob already there and names it without sending it
//!   (`gc` keeps an unreferenced object claimed within its grace).
//!
//! A pack or blob already stored transfers no bytes (its name is asked about first),
//! and a new one is written with a create-only put (`If-None-Match: *`), so two
//! runners storing the same output both succeed and the object is written once. An
//! entry is overwritten (last writer wins). Large blobs go up as parallel multipart
//! uploads read from their file and come down as parallel ranged GETs; packs are
//! written through a temporary file and read a segment at a time; so memory does not
//! grow with the size of an output or of an entry. Every byte read is verified by
//! `Cache` against the file's own digest: a pack written by a hostile writer is a miss
//! or a failed check, never a wrong byte.
//!
//! ## Configuration
//!
//! S3 reads the variables the AWS tools read: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL_S3` or
//! else `AWS_ENDPOINT_URL` (an S3-compatible server; path-style requests),
//! `AWS_ALLOW_HTTP=true` (plain HTTP, for a server on the loopback) and
//! `AWS_EC2_METADATA_DISABLED=true` (never ask the instance metadata service: without
//! credentials in the environment the store is refused). An endpoint must be an
//! `http://` or `https://` URL without user info, query or fragment; any other is
//! refused with an error naming the variable, never showing its value. Cloud
//! providers are cargo features: `aws` (default), `gcp`, `azure`.
//!
//! Throttling, server errors after retries, timeouts and connection failures are
//! [`cache_core::Fault::Cache`] faults that degrade (the task runs uncached); refused
//! credentials (HTTP 401 and 403, object_store's `Unauthenticated` and
//! `PermissionDenied`) are [`cache_core::Fault::Permission`] faults
//! ([`cache_core::BackendError::PermissionDenied`]: a read-only token's store is
//! refused, its reads go on, and [`cache_core::Tiered`] stops writing the bucket); a
//! missing bucket is an error. Each names the bucket, the endpoint and the credential
//! source, never a secret.
//!
//! Object stores keep no access time: `touch` (after every restore) records an
//! entry's last use as the time of a marker `used/<alg>/<hex>`, rewritten at most once
//! per [`S3Options::touch_interval`]. [`S3Storage::gc`] evicts entries by last use
//! (and size), then sweeps the packs and blobs no surviving entry references, with a
//! grace period for stores in flight (the `gc` module describes the algorithm).
//!
//! ```
//! use cache_core::Cache;
//! use cache_s3::{S3Options, S3Storage};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let url = url::Url::parse("memory://").unwrap();
//! let storage = S3Storage::open(&url, S3Options::default()).unwrap();
//! let cache = Cache::new(storage, |job| { tokio::task::spawn_blocking(job); });
//! # let _ = cache;
//! # }
//! ```

mod config;
mod counting;
mod error;
mod gc;
mod memory;
mod pack;
mod put;
mod stats;
mod transfer;

pub use config::S3Options;
#[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
pub use config::retry_config;
pub use counting::{CountingStore, RequestCounts};
pub use gc::{EntryReferences, GcOptions, GcReport};
pub use memory::{
    MEMORY_PER_CALL, MEMORY_PER_PROCESS, PACKS_BUILT, SEGMENT_BUFFERS, UPLOAD_BUFFERS,
};
pub use object_store;
pub use stats::{BucketStats, ListLimits, Stopped};

use async_trait::async_trait;
use bytes::Bytes;
use cache_core::storage::{
    ActionRecord, BlobSource, EntryKey, MAX_ENTRY_BYTES, Storage, StoredEntry,
};
use cache_core::{BackendError, BackendResult, BlobRef, Digest, DigestAlgorithm};
use error::Where;
use futures::{StreamExt, TryStreamExt};
use object_store::list::PaginatedListStore;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use std::sync::Arc;
use url::Url;

/// Blobs up to this size are fetched whole by `open_blobs`, in parallel; larger ones
/// come as lazy readers.
const EAGER_MAX: u64 = 1 << 20;

/// Entries whose last use a storage remembers, per generation (two generations).
const USED_PER_GENERATION: usize = 50_000;

/// Entries and blobs of one cache in an object store. Clones share the client.
#[derive(Clone)]
pub struct S3Storage {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    /// The same store's paginated listing, when it has one (S3, GCS, Azure): what
    /// `stats` counts pages and continuation tokens with.
    lister: Option<Arc<dyn PaginatedListStore>>,
    prefix: Path,
    place: Arc<Where>,
    options: S3Options,
    /// What this storage knows of packs (bounded).
    packs: std::sync::Mutex<pack::State>,
    /// The latest use this storage knows of entries it read or touched (an entry's
    /// own time from `get_entry`, a marker's time), so `touch` of an entry stored or
    /// marked within `touch_interval` sends no request (bounded).
    used: std::sync::Mutex<pack::Generations<Digest, std::time::SystemTime>>,
}

impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client is not shown: its configuration holds the credentials.
        f.debug_struct("S3Storage")
            .field("url", &self.inner.place.url)
            .field("endpoint", &self.inner.place.endpoint)
            .field("credentials", &self.inner.place.credentials)
            .finish_non_exhaustive()
    }
}

impl S3Storage {
    /// Opens the store `url` names, configured from the process environment.
    pub fn open(url: &Url, options: S3Options) -> BackendResult<S3Storage> {
        Self::open_with_env(url, options, &|k| std::env::var(k).ok())
    }

    /// [`S3Storage::open`] with the environment read through `var`.
    pub fn open_with_env(
        url: &Url,
        options: S3Options,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> BackendResult<S3Storage> {
        let opened = config::open(url, &options, var)?;
        Ok(Self::build(
            opened.store,
            opened.lister,
            opened.prefix,
            opened.place,
            options,
        ))
    }

    /// A storage over an existing store (a wrapper such as [`CountingStore`], a test
    /// double), under `prefix`; `describe` names it in messages.
    pub fn from_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        describe: &str,
        options: S3Options,
    ) -> S3Storage {
        let place = Arc::new(Where {
            url: describe.to_owned(),
            bucket: describe.to_owned(),
            endpoint: store.to_string(),
            credentials: "the store's own".into(),
            secrets: error::Secrets::default(),
        });
        Self::build(store, None, Path::from(prefix), place, options)
    }

    fn build(
        store: Arc<dyn ObjectStore>,
        lister: Option<Arc<dyn PaginatedListStore>>,
        prefix: Path,
        place: Arc<Where>,
        options: S3Options,
    ) -> S3Storage {
        S3Storage {
            inner: Arc::new(Inner {
                store,
                lister,
                prefix,
                place,
                options,
                packs: std::sync::Mutex::default(),
                used: std::sync::Mutex::new(pack::Generations::new(USED_PER_GENERATION)),
            }),
        }
    }

    /// The store underneath (shared).
    #[must_use]
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }

    /// The object holding `key`'s entry.
    #[must_use]
    pub fn entry_path(&self, key: &Digest) -> Path {
        self.object("entries", key)
    }

    /// The marker whose time is the last use of `key`'s entry (written by `touch`).
    #[must_use]
    pub fn marker_path(&self, key: &Digest) -> Path {
        self.object("used", key)
    }

    /// The object holding the blob with `digest`.
    #[must_use]
    pub fn blob_path(&self, digest: &Digest) -> Path {
        self.object("blobs", digest)
    }

    fn object(&self, kind: &str, digest: &Digest) -> Path {
        let mut parts: Vec<_> = self.inner.prefix.parts().collect();
        parts.push(kind.into());
        parts.push(digest.algorithm().as_str().into());
        parts.push(digest.hex().into());
        Path::from_iter(parts)
    }

    /// The prefix everything lives under.
    #[must_use]
    pub fn prefix(&self) -> &Path {
        &self.inner.prefix
    }

    /// The URL as shown in messages.
    #[must_use]
    pub fn describe(&self) -> &str {
        &self.inner.place.url
    }

    /// The endpoint as shown in messages (never with credentials: an endpoint holding
    /// any is refused when the storage is opened).
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.inner.place.endpoint
    }

    pub(crate) fn lister(&self) -> Option<&dyn PaginatedListStore> {
        self.inner.lister.as_deref()
    }

    pub(crate) fn err(&self, op: &str, path: &Path, e: &object_store::Error) -> BackendError {
        self.inner.place.error(op, path.as_ref(), e)
    }

    /// Remembers that `key` was used (stored or marked) at `at`, if later than known.
    fn saw_use(&self, key: Digest, at: std::time::SystemTime) {
        let mut used = self
            .inner
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if used.get(&key).is_none_or(|known| *known < at) {
            used.insert(key, at, 1);
        }
    }

    /// Whether `key`'s last known use is within `touch_interval`.
    fn used_lately(&self, key: &Digest) -> bool {
        let used = self
            .inner
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        used.get(key).is_some_and(|at| {
            at.elapsed()
                .is_ok_and(|age| age < self.inner.options.touch_interval)
        })
    }

    /// The stored size of the object at `path`, `None` if there is none.
    async fn head_size(&self, path: &Path) -> BackendResult<Option<u64>> {
        match self.inner.store.head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(self.err("HEAD", path, &e)),
        }
    }

    async fn open_one(&self, blob: BlobRef) -> BackendResult<Option<BlobSource>> {
        let path = self.blob_path(&blob.digest);
        let o = &self.inner.options;
        // Small blobs whole; large ones start with their first range, which also says
        // whether the blob is there, and continue lazily.
        let first = if blob.size <= EAGER_MAX {
            None
        } else {
            Some(GetRange::Bounded(0..(o.part_size as u64).min(blob.size)))
        };
        let options = GetOptions {
            range: first.clone(),
            ..GetOptions::default()
        };
        let got = match self.inner.store.get_opts(&path, options).await {
            Ok(got) => got,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(self.err("GET", &path, &e)),
        };
        if got.meta.size != blob.size {
            // Not this blob: a miss, and Cache's check would refuse it anyway.
            return Ok(None);
        }
        let bytes = got.bytes().await.map_err(|e| self.err("GET", &path, &e))?;
        if first.is_none() {
            return Ok(Some(BlobSource::Bytes(Arc::from(&bytes[..]))));
        }
        let reader = transfer::RangeReader::new(
            Arc::clone(&self.inner.store),
            path,
            bytes,
            blob.size,
            o.part_size as u64,
            o.parallel_parts,
        );
        Ok(Some(BlobSource::Reader(Box::new(reader))))
    }

    async fn delete(&self, path: &Path) -> BackendResult<()> {
        match self.inner.store.delete(path).await {
            Ok(()) => Ok(()),
            Err(e) if is_absent(&e) => Ok(()),
            Err(e) => Err(self.err("DELETE", path, &e)),
        }
    }

    /// Counts entries, blobs, packs and bytes under the prefix by listing them, within
    /// `limits`: a listing that reaches one stops there and says so
    /// ([`BucketStats::stopped`]), with the counts it reached.
    pub async fn stats(&self, limits: ListLimits) -> BackendResult<BucketStats> {
        stats::collect(self, limits).await
    }

    /// Evicts entries by last use and sweeps what no surviving entry references
    /// (see [`GcOptions`] and the `gc` module's algorithm): safe beside runners storing
    /// and hitting the same prefix. A listing or read cut short stops it before any
    /// pack or blob is deleted ([`GcReport::stopped`]).
    pub async fn gc(&self, options: GcOptions) -> BackendResult<GcReport> {
        gc::run(self, options).await
    }

    /// The stored bytes of the entry for `key` (tests, tools), `None` if there is none.
    pub async fn raw_entry(&self, key: &Digest) -> BackendResult<Option<Bytes>> {
        let path = self.entry_path(key);
        match self.inner.store.get(&path).await {
            Ok(got) => got
                .bytes()
                .await
                .map(Some)
                .map_err(|e| self.err("GET", &path, &e)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(self.err("GET", &path, &e)),
        }
    }

    /// Stores `bytes` verbatim as the entry for `key` (tests, tools).
    pub async fn write_raw_entry(&self, key: &Digest, bytes: Vec<u8>) -> BackendResult<()> {
        let path = self.entry_path(key);
        self.inner
            .store
            .put(&path, PutPayload::from(bytes))
            .await
            .map(drop)
            .map_err(|e| self.err("PUT", &path, &e))
    }
}

/// A missing object (a miss), as opposed to a missing bucket, which is an error.
fn is_absent(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. }) && !error::is_missing_bucket(&e.to_string())
}

/// Runs `job` on the blocking pool, bound to the cache call being polled
/// ([`cache_core::cancel`]): a cancelled call's job stops reading its sources.
async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> BackendResult<T> + Send + 'static,
) -> BackendResult<T> {
    match tokio::task::spawn_blocking(cache_core::cancel::bind(job)).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(BackendError::unavailable(format!(
            "object store: blocking job did not finish: {e}"
        ))),
    }
}

#[async_trait]
impl Storage for S3Storage {
    fn name(&self) -> &'static str {
        "s3"
    }

    async fn get_entry(&self, key: &EntryKey) -> BackendResult<Option<StoredEntry>> {
        let digest = key.digest;
        let path = self.entry_path(&digest);
        let got = match self.inner.store.get(&path).await {
            Ok(got) => got,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(self.err("GET", &path, &e)),
        };
        if got.meta.size > MAX_ENTRY_BYTES as u64 {
            return Err(BackendError::CorruptEntry {
                key: digest,
                reason: format!(
                    "the stored entry is {} bytes, over the {MAX_ENTRY_BYTES}-byte limit",
                    got.meta.size
                ),
            });
        }
        // The entry's own time is a use (its store): a touch within the interval is free.
        self.saw_use(digest, std::time::SystemTime::from(got.meta.last_modified));
        let bytes = got.bytes().await.map_err(|e| self.err("GET", &path, &e))?;
        match pack::unwrap_entry(&bytes) {
            Ok(None) => {}
            Ok(Some((packs, at))) => {
                return self.packed_entry(digest, bytes, packs, at).await.map(Some);
            }
            Err(pack::BadWrapper::Newer(version)) => {
                return Err(BackendError::NewerEntryFormat {
                    key: digest,
                    version,
                });
            }
            Err(pack::BadWrapper::Corrupt(reason)) => {
                return Err(BackendError::CorruptEntry {
                    key: digest,
                    reason,
                });
            }
        }
        let decode =
            move || ActionRecord::decode(&digest, &bytes).map(|r| Some(StoredEntry::new(r)));
        blocking(decode).await
    }

    async fn put_entry(&self, key: &EntryKey, record: Arc<ActionRecord>) -> BackendResult<()> {
        let bytes = if self.inner.options.packing {
            self.packed_entry_bytes(&record).await?
        } else {
            record.encode()?
        };
        let path = self.entry_path(&key.digest);
        self.inner
            .store
            .put(&path, PutPayload::from(bytes))
            .await
            .map(drop)
            .map_err(|e| self.err("PUT", &path, &e))
    }

    async fn remove_entry(&self, key: &EntryKey) -> BackendResult<()> {
        self.delete(&self.entry_path(&key.digest)).await
    }

    async fn find_missing_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>> {
        self.find_missing_packed(blobs).await
    }

    async fn put_blobs(
        &self,
        sources: Vec<BlobSource>,
        algorithm: Option<DigestAlgorithm>,
    ) -> BackendResult<Vec<BlobRef>> {
        let algorithm = algorithm.unwrap_or(DigestAlgorithm::Blake3);
        if self.inner.options.packing {
            return self.put_packed(sources, algorithm).await;
        }
        let sorted = blocking(move || put::sort_sources(sources, algorithm, false)).await?;
        futures::stream::iter(sorted)
            .map(|s| async move {
                match s {
                    put::Sorted::Alone(blob, upload) => self.put_one(blob, upload).await,
                    put::Sorted::Small(blob, _) => Ok(blob), // never without packing
                }
            })
            .buffered(self.inner.options.concurrency)
            .try_collect()
            .await
    }

    async fn open_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<Option<BlobSource>>> {
        self.open_packed(blobs).await
    }

    async fn remove_blob(&self, blob: &BlobRef) -> BackendResult<()> {
        self.remove_packed(blob).await?;
        self.delete(&self.blob_path(&blob.digest)).await
    }

    async fn touch(&self, key: &EntryKey) -> BackendResult<()> {
        // Object stores keep no access time: the last use is the time of a marker
        // object, rewritten at most once per `touch_interval` (a HEAD, rarely a PUT).
        // An entry stored (or marked) lately, as this storage saw: no request at all.
        if self.used_lately(&key.digest) {
            return Ok(());
        }
        let path = self.marker_path(&key.digest);
        match self.inner.store.head(&path).await {
            Ok(meta) => {
                let written = std::time::SystemTime::from(meta.last_modified);
                self.saw_use(key.digest, written);
                if self.used_lately(&key.digest) {
                    return Ok(());
                }
            }
            Err(e) if is_absent(&e) => {}
            Err(e) => return Err(self.err("HEAD", &path, &e)),
        }
        let now = std::time::SystemTime::now();
        self.inner
            .store
            .put(&path, PutPayload::from_static(b""))
            .await
            .map_err(|e| self.err("PUT", &path, &e))?;
        self.saw_use(key.digest, now);
        Ok(())
    }

    async fn health_check(&self) -> BackendResult<()> {
        let prefix = self.inner.prefix.clone();
        match self.inner.store.list_with_delimiter(Some(&prefix)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.err("LIST", &prefix, &e)),
        }
    }
}
