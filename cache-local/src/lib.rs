//! # cache-local: the on-disk taskcache backend
//!
//! A directory, nothing to start: the embedded default, and the cache that many CI jobs
//! on one machine can share at once without ever restoring a wrong byte.
//!
//! [`LocalStorage`] implements [`cache_core::storage::Storage`]; wrapped in
//! [`cache_core::Cache`] (see [`LocalCache`] and [`open`]) it is a full
//! [`cache_core::CacheBackend`], with the policy handling, key checks, publish order,
//! entry checksums, digest verification and workspace writes that `cache-core`
//! supplies to every backend. The storage itself only keeps files under one directory.
//!
//! ```
//! use cache_core::{CacheBackend, CacheEntry, CacheOutput, CachePolicy, Task};
//! # let rt = tokio::runtime::Runtime::new().unwrap();
//! # rt.block_on(async {
//! let tmp = tempfile::tempdir().unwrap();
//! let cache = cache_local::open(tmp.path().join("cache"), cache_local::LocalOptions::default())?;
//!
//! let task = Task::new("build", ["make"]);
//! let key = format!("blake3:{}", "ab".repeat(32));
//! let entry = CacheEntry {
//!     stdout: Some(b"built\n".to_vec()),
//!     outputs: vec![CacheOutput::bytes("out/app", b"\x7fELF...".to_vec(), true)],
//!     ..CacheEntry::default()
//! };
//! cache.store(&task, &key, &entry, CachePolicy::Normal).await?;
//!
//! let ws = tempfile::tempdir().unwrap();
//! let hit = cache.lookup(&task, &key.parse()?, CachePolicy::Normal).await?.expect("a hit");
//! hit.restore(ws.path()).await?;
//! assert_eq!(hit.logs().await?.0.as_deref(), Some(&b"built\n"[..]));
//! assert_eq!(std::fs::read(ws.path().join("out/app")).unwrap(), b"\x7fELF...");
//!
//! let stats = cache.storage().stats().await?;
//! assert_eq!((stats.entries, stats.blobs), (1, 1));
//! # Ok::<(), cache_core::BackendError>(())
//! # }).unwrap();
//! ```
//!
//! ## Layout
//!
//! ```text
//! <dir>/LAYOUT                                  layout version ("taskcache-local-layout 1")
//! <dir>/blobs/blake3/<2 hex>/<64 hex>           file contents by BLAKE3 digest, shared by all entries
//! <dir>/entries/<algorithm>/<2 hex>/<64 hex>    encoded entries by task digest
//! <dir>/tmp/                                    temporary files of writers
//! <dir>/stats/log                               hit/miss/size records (append-only)
//! ```
//!
//! A directory with a newer layout version is refused with an error that says so. A
//! used cache whose `LAYOUT` was lost or damaged (a flipped bit, truncated, zeroed) is
//! recognised by its directories and gets `LAYOUT` written again, with a warning.
//!
//! ## Guarantees
//!
//! * **Crash safety.** Every blob and entry is written to a temporary file under
//!   `<dir>/tmp` and renamed into place, and `Cache` publishes an entry only after all
//!   its blobs. A `kill -9` at any instant leaves no entry or a whole one (the
//!   `kill_during_store` test and `cargo xtask drill kill` check it); the temporary
//!   files of a killed writer are removed by [`LocalStorage::gc`] / [`LocalStorage::verify`]
//!   once they are older than [`GcOptions::temp_age`]. Power loss can leave a torn
//!   file: blobs are verified on every read and entries carry a checksum, so it reads
//!   as a miss. With [`LocalOptions::durable`], files and directories are fsynced
//!   before a store returns.
//! * **Integrity.** This storage hands `cache-core` the path of a blob
//!   ([`cache_core::storage::BlobSource::File`]); `Cache` reads it through its audited
//!   writer (read, hash, write to a temporary file, or from 16 MiB the kernel's copy
//!   into the temporary file with what landed hashed), renamed only if the digest
//!   matches. A blob that fails is removed, so the next store of that output repairs it.
//! * **No locks.** Nothing here takes a lock, so nothing can be left stuck by a crash.
//!   Statistics are single-`write` appends to a log.
//! * **GC while in use.** [`LocalStorage::gc`] evicts least-recently-used entries
//!   (a restore refreshes an entry's mtime) and then the blobs no entry needs, but
//!   never a blob modified within [`GcOptions::blob_grace`]: a store that reuses a
//!   stored blob refreshes its mtime, so the blobs of an entry being published during
//!   GC stay. In the remaining microsecond window a reader sees a clean miss (an entry
//!   whose blobs are gone is a miss), never wrong bytes.
//! * **Off the executor.** All filesystem work runs on tokio's blocking pool; batches
//!   (10,000 small files) run as a few jobs (one per core), not one per file. Reading
//!   an entry decodes it in the same job.
//! * **Statistics.** Entries, blobs and bytes come from listing the directory; hits
//!   and misses are what callers record ([`LocalStorage::record_lookups`]; the
//!   `taskcache` command records one per run).
//! * **One pass per output.** A store hashes each output once: files up to 1 MiB are
//!   read into memory, hashed, and written only if their blob is not stored yet;
//!   larger ones are copied into a temporary file while hashing, and from 16 MiB the
//!   copy is done by the kernel (`copy_file_range`) while a second thread hashes what
//!   landed in the temporary file. Memory stays at a few MiB whatever the output size.
//! * **Memory.** A store runs at most four jobs (one per core), each holding a file
//!   of up to 1 MiB and a 1 MiB copy buffer: [`MEMORY_PER_CALL`] (8 MiB) per store or
//!   import in flight, whatever the outputs' sizes. `open_blobs` hands over paths,
//!   which hold no memory (so restores and imports from this storage take nothing of
//!   `Cache`'s window budget once opened), and nothing is held between calls.
//!
//! ## Hostile cache directories
//!
//! Whoever can write the cache directory (it may be restored from an untrusted CI
//! artifact, or shared between jobs) can plant anything in it. The directory is
//! opened, never followed:
//!
//! * **No link is followed.** [`LocalStorage::open`] holds handles on the directory and
//!   its `blobs`, `entries`, `tmp` and `stats` directories (a link or special file
//!   planted in place of one of those is removed and replaced by a directory); every
//!   name below them is resolved from those handles one component at a time with
//!   `O_NOFOLLOW`. So nothing outside the directory is written, removed or touched
//!   through a link, however `tmp`, `stats/log` or a fan-out directory is planted.
//! * **Only regular files are opened.** A file is opened only when `lstat` says it is
//!   a regular file (a device is never opened), with `O_NOFOLLOW | O_NONBLOCK |
//!   O_CLOEXEC` (a FIFO cannot block), and its type is checked again with `fstat` on
//!   that handle. An entry that is not a regular file is a corrupt entry (a miss,
//!   removed when the policy writes); a `LAYOUT` that is not a regular file is an
//!   error naming it and what to do; a `stats/log` that is not one is ignored and
//!   replaced by the next record.
//! * **Every read is bounded before it starts.** `LAYOUT`: 256 bytes. An entry:
//!   [`cache_core::storage::MAX_ENTRY_BYTES`]. The statistics log: 1 MiB (it is
//!   compacted past 256 KiB), and its counters saturate. Blobs: their recorded size
//!   when `cache-core` restores them (it opens the blob paths this storage names, with
//!   `storage::open_regular`, and verifies every byte), and the length of the regular
//!   file opened when verify re-hashes them (so verify takes time in proportion to what
//!   is stored, planted sparse files included).
//! * **A blob is present only as a regular file of its recorded size**, checked
//!   without following; anything else at its name is missing (the entry is a miss),
//!   and the next store renames a good copy over it. A store that reuses a blob
//!   refreshes the mtime of that regular file only.
//! * **Maintenance removes only what it can prove is the cache's own**: GC and verify
//!   remove temporary files with this code's names (never anything else in `tmp`), and
//!   blobs and entries by their digest names; links and special files planted in the
//!   layout are removed (never followed) and counted in
//!   [`GcReport::foreign_removed`] / [`VerifyReport::foreign_removed`].

mod claim;
mod counters;
mod fsat;
mod io;
mod layout;
mod maint;

pub use claim::{LAYOUT_FILE, LAYOUT_VERSION};

/// What one store or import holds in memory at most: four jobs, each a file of up to
/// 1 MiB and a 1 MiB copy buffer. Nothing is held per process beyond calls in flight.
pub const MEMORY_PER_CALL: u64 = 4 * (io::SMALL_FILE + cache_core::storage::COPY_BUFFER as u64);

use cache_core::storage::{ActionRecord, BlobSource, EntryKey, Storage, StoredEntry};
use cache_core::{BackendError, BackendResult, BlobRef, Digest, DigestAlgorithm};
use layout::{Area, Layout};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How a [`LocalStorage`] behaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalOptions {
    /// fsync every blob, entry and changed directory before a store returns. Off by
    /// default: a process crash cannot corrupt the cache without it, and power loss
    /// only turns the entries written last into misses (see the crate docs).
    pub durable: bool,
    /// After a store, evict (see [`LocalStorage::gc`]) when the cache has grown over
    /// this many bytes.
    pub max_size: Option<u64>,
}

/// Tunables of GC and verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// Blobs modified more recently than this are never removed by GC: it covers the
    /// time between a store writing (or reusing) a blob and publishing its entry.
    pub blob_grace: Duration,
    /// Temporary files not modified for this long belong to crashed writers and are
    /// removed.
    pub temp_age: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            blob_grace: Duration::from_secs(10 * 60),
            temp_age: Duration::from_secs(60 * 60),
        }
    }
}

/// What is in the cache (see [`LocalStorage::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LocalStats {
    /// Number of entries.
    pub entries: u64,
    /// Number of blobs.
    pub blobs: u64,
    /// Bytes used by entries and blobs (file lengths).
    pub bytes: u64,
    /// Hits recorded by every process that used the directory.
    pub hits: u64,
    /// Misses recorded by every process that used the directory.
    pub misses: u64,
}

/// What a [`LocalStorage::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Bytes of entries and blobs before.
    pub bytes_before: u64,
    /// Bytes of entries and blobs after.
    pub bytes_after: u64,
    /// Entries before.
    pub entries_before: u64,
    /// Least-recently-used entries evicted.
    pub entries_removed: u64,
    /// Entries that did not decode, removed.
    pub corrupt_entries_removed: u64,
    /// Blobs removed (unreferenced, or only needed by evicted entries).
    pub blobs_removed: u64,
    /// Blobs that could go but were kept because they are younger than the grace period.
    pub blobs_kept_young: u64,
    /// Bytes of those blobs: why a cache can stay over the limit right after a store
    /// (lower the grace only when no other writer can be running).
    pub bytes_kept_young: u64,
    /// Stale temporary files of crashed writers removed.
    pub temp_files_removed: u64,
    /// Symbolic links and special files (FIFOs, sockets, devices) planted where the
    /// layout keeps its own files or directories, removed without being followed.
    pub foreign_removed: u64,
}

/// What a [`LocalStorage::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Blobs re-hashed.
    pub blobs_checked: u64,
    /// Bytes re-hashed.
    pub bytes_checked: u64,
    /// Blobs whose bytes did not match their digest, removed.
    pub blobs_removed: u64,
    /// Entries checked.
    pub entries_checked: u64,
    /// Entries that failed their checksum or did not decode, removed.
    pub entries_removed: u64,
    /// Entries whose blobs are gone (they could only read as misses), removed.
    pub entries_incomplete_removed: u64,
    /// Stale temporary files of crashed writers removed.
    pub temp_files_removed: u64,
    /// Symbolic links and special files (FIFOs, sockets, devices) planted where the
    /// layout keeps its own files or directories, removed without being followed.
    pub foreign_removed: u64,
}

struct Inner {
    layout: Layout,
    opts: LocalOptions,
}

/// A cache directory: content-addressed blobs and entries by task digest.
pub struct LocalStorage {
    inner: Arc<Inner>,
    gc: GcOptions,
}

impl std::fmt::Debug for LocalStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStorage")
            .field("dir", &self.inner.layout.root)
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

/// The full cache over a directory.
pub type LocalCache = cache_core::Cache<LocalStorage>;

/// Opens (creating if needed) the cache in `dir`; see [`LocalStorage::open`].
///
/// The cache runs its blocking work on tokio's blocking pool, so it must be used inside
/// a tokio runtime.
pub fn open(dir: impl AsRef<Path>, opts: LocalOptions) -> BackendResult<LocalCache> {
    LocalStorage::open(dir, opts).map(LocalStorage::into_cache)
}

/// Whether `dir` may be used as a cache without taking over someone else's directory:
/// it has a `LAYOUT` file; or it is unmistakably a used cache of this code whose
/// `LAYOUT` is gone (only the layout's directories, `blobs/` and `entries/` holding
/// only digest-algorithm directories: `LAYOUT` is written again); or (with `create`)
/// it does not exist yet, is empty, or holds only the empty layout directories a
/// killed first writer left before `LAYOUT`. The error says which and what to do.
/// Blocking.
pub fn check_cache_dir(dir: impl AsRef<Path>, create: bool) -> BackendResult<()> {
    claim::claim(dir.as_ref(), create)
}

/// How many blocking jobs a batch is split into.
fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(4))
}

/// Batches smaller than this many files run as one job.
const BATCH_MIN: usize = 64;

impl LocalStorage {
    /// Opens (creating if needed) the cache in `dir`: creates the directory and its
    /// layout. A directory that exists must already be a cache (it has `LAYOUT`) or be
    /// empty: someone else's directory is refused, never taken over
    /// ([`check_cache_dir`]). A damaged `LAYOUT` in a used cache is written again (see
    /// the crate docs). Refuses a directory with a newer layout version, or
    /// whose `LAYOUT` is not a regular file (a link, a FIFO, a device: the error names
    /// it and says what to do). A link or special file planted in place of one of the
    /// layout's directories is replaced by a directory (see "Hostile cache
    /// directories" in the crate docs). Blocking (a few `mkdir`s); call it before or
    /// outside hot async paths.
    pub fn open(dir: impl AsRef<Path>, opts: LocalOptions) -> BackendResult<Self> {
        Self::open_with(dir.as_ref(), opts, true)
    }

    /// Opens an existing cache only: a missing directory, or one without a `LAYOUT`
    /// file, is an error and nothing is created (for `stats`, `gc`, `verify`).
    pub fn open_existing(dir: impl AsRef<Path>, opts: LocalOptions) -> BackendResult<Self> {
        Self::open_with(dir.as_ref(), opts, false)
    }

    fn open_with(dir: &Path, opts: LocalOptions, create: bool) -> BackendResult<Self> {
        let layout = Layout::open(dir, opts.durable, create)?;
        Ok(LocalStorage {
            inner: Arc::new(Inner { layout, opts }),
            gc: GcOptions::default(),
        })
    }

    /// This storage as a full cache whose blocking work runs on tokio's blocking pool.
    pub fn into_cache(self) -> LocalCache {
        cache_core::Cache::new(self, |job| {
            tokio::task::spawn_blocking(job);
        })
    }

    /// Adds lookups decided by a caller (the `taskcache` command: one per run) to the
    /// hit and miss counts every process shares in this directory
    /// ([`LocalStats::hits`], [`LocalStats::misses`]). Best effort: statistics never
    /// fail a run.
    pub async fn record_lookups(&self, hits: u64, misses: u64) {
        let recorded = self
            .blocking(move |i| {
                for _ in 0..hits {
                    counters::hit(&i.layout);
                }
                for _ in 0..misses {
                    counters::miss(&i.layout);
                }
                Ok(())
            })
            .await;
        if let Err(e) = recorded {
            tracing::debug!(error = %e, "could not record lookup counts");
        }
    }

    /// Sets the options used by the GC that runs after stores when
    /// [`LocalOptions::max_size`] is set.
    #[must_use]
    pub fn with_gc_options(mut self, gc: GcOptions) -> Self {
        self.gc = gc;
        self
    }

    /// The platform cache directory: `$XDG_CACHE_HOME/taskcache`, else
    /// `$HOME/.cache/taskcache` (`None` if neither variable is set).
    pub fn default_dir() -> Option<PathBuf> {
        let nonempty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
        nonempty("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("taskcache"))
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.inner.layout.root
    }

    /// Runs `f` on the blocking pool, bound to the cache call being polled: a
    /// cancelled call's job publishes nothing ([`Layout::publish`]) and stops copying.
    async fn blocking<T, F>(&self, f: F) -> BackendResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> BackendResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        join(tokio::task::spawn_blocking(cache_core::cancel::bind(
            move || f(&inner),
        )))
        .await
    }

    /// Entries, blobs and bytes (by listing the directory) and the hits and misses
    /// recorded by every process.
    pub async fn stats(&self) -> BackendResult<LocalStats> {
        self.blocking(|i| maint::stats(&i.layout)).await
    }

    /// Evicts until the cache holds at most `max_bytes`: first blobs no entry needs,
    /// then least-recently-used entries (stores and restores refresh recency) with the
    /// blobs only they needed. Also removes corrupt entries, stale temporary files, and
    /// links and special files planted in the layout (never following them). Safe while
    /// other processes read and write (see the crate docs).
    pub async fn gc(&self, max_bytes: u64) -> BackendResult<GcReport> {
        self.gc_with(max_bytes, self.gc).await
    }

    /// [`LocalStorage::gc`] with explicit [`GcOptions`].
    pub async fn gc_with(&self, max_bytes: u64, opts: GcOptions) -> BackendResult<GcReport> {
        self.blocking(move |i| maint::gc(&i.layout, max_bytes, opts))
            .await
    }

    /// Re-hashes every blob and decodes every entry; removes corrupt blobs, corrupt
    /// entries, entries whose blobs are gone, stale temporary files, and links and
    /// special files planted in the layout (never following them).
    pub async fn verify(&self) -> BackendResult<VerifyReport> {
        self.verify_with(self.gc).await
    }

    /// [`LocalStorage::verify`] with explicit [`GcOptions`] (for the temp-file age).
    pub async fn verify_with(&self, opts: GcOptions) -> BackendResult<VerifyReport> {
        self.blocking(move |i| maint::verify(&i.layout, opts)).await
    }

    /// Where the blob `digest` is stored (for tests and tools).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.layout.blob_path(digest)
    }

    /// Where the entry for `key` is stored (for tests and tools).
    pub fn entry_path(&self, key: &Digest) -> PathBuf {
        self.inner.layout.entry_path(key)
    }
}

/// Refreshes the recency of the entry for `key` (its mtime, which GC's LRU reads).
fn touch_entry(layout: &Layout, key: &Digest) -> BackendResult<()> {
    layout
        .touch(Area::Entries, key)
        .map(drop)
        .map_err(|e| BackendError::io_with_context("refresh recency of", layout.entry_path(key), e))
}

async fn join<T>(h: tokio::task::JoinHandle<BackendResult<T>>) -> BackendResult<T> {
    match h.await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(BackendError::unavailable(format!(
            "cache-local: a blocking job was cancelled: {e}"
        ))),
    }
}

#[async_trait::async_trait]
impl Storage for LocalStorage {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn get_entry(&self, key: &EntryKey) -> BackendResult<Option<StoredEntry>> {
        // Read, decode and check the blob files in one blocking job: a large entry
        // never decodes on the executor, and a hit's lookup is one trip to the pool.
        let key = key.digest;
        self.blocking(move |i| {
            let Some(bytes) = maint::read_entry(&i.layout, &key)? else {
                return Ok(None);
            };
            let record = ActionRecord::decode(&key, &bytes)?;
            let missing = i.layout.missing_blobs(record.blobs());
            Ok(Some(StoredEntry::with_missing_blobs(record, missing)))
        })
        .await
    }

    async fn put_entry(&self, _key: &EntryKey, record: Arc<ActionRecord>) -> BackendResult<()> {
        let max = self.inner.opts.max_size;
        let gc = self.gc;
        self.blocking(move |i| {
            let bytes = record.encode()?;
            i.layout
                .write_atomic(Area::Entries, &record.key, &bytes)?;
            counters::added(&i.layout, bytes.len() as u64);
            // The entry is published: from here on nothing may fail the store.
            if let Some(max) = max {
                let estimate = counters::read(&i.layout).map_or(0, |t| t.size_estimate);
                if estimate > max {
                    if let Err(e) = maint::gc(&i.layout, max, gc) {
                        tracing::warn!(dir = %i.layout.root.display(), error = %e, "eviction after a store failed; the cache may stay over its size limit");
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn remove_entry(&self, key: &EntryKey) -> BackendResult<()> {
        let key = key.digest;
        self.blocking(move |i| {
            i.layout.remove(Area::Entries, &key).map(drop).map_err(|e| {
                BackendError::io_with_context("remove cache entry", i.layout.entry_path(&key), e)
            })
        })
        .await
    }

    async fn find_missing_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>> {
        self.blocking(move |i| Ok(i.layout.missing_blobs(blobs)))
            .await
    }

    async fn put_blobs(
        &self,
        sources: Vec<BlobSource>,
        algorithm: Option<DigestAlgorithm>,
    ) -> BackendResult<Vec<BlobRef>> {
        let algorithm = algorithm.unwrap_or(io::ALGORITHM);
        let n = sources.len();
        let streamed = sources.iter().any(|s| !matches!(s, BlobSource::Bytes(_)));
        let parts = if n >= BATCH_MIN || (streamed && n >= 2) {
            parallelism()
        } else {
            1
        };
        let weights: Vec<u64> = sources
            .iter()
            .map(|s| match s {
                BlobSource::Bytes(b) => b.len() as u64,
                BlobSource::File(_) | BlobSource::Reader(_) => 0,
            })
            .collect();
        let mut sources = sources.into_iter();
        let mut jobs = Vec::new();
        for range in io::split_ranges(&weights, parts) {
            let inner = Arc::clone(&self.inner);
            let part: Vec<BlobSource> = sources.by_ref().take(range.len()).collect();
            jobs.push(tokio::task::spawn_blocking(cache_core::cancel::bind(
                move || {
                    let mut job = io::StoreJob::new(&inner.layout, algorithm);
                    let refs = part
                        .into_iter()
                        .map(|s| job.put(s))
                        .collect::<BackendResult<Vec<_>>>();
                    counters::added(&inner.layout, job.written);
                    refs
                },
            )));
        }
        let mut out = Vec::with_capacity(n);
        let mut first_err = None;
        for j in jobs {
            match join(j).await {
                Ok(refs) => out.extend(refs),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    async fn open_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<Option<BlobSource>>> {
        // No I/O here: the reader opens the file on its blocking thread, and a file
        // gone by then reads as a missing blob. `find_missing_blobs` ran at lookup.
        Ok(blobs
            .iter()
            .map(|b| Some(BlobSource::File(self.inner.layout.blob_path(&b.digest))))
            .collect())
    }

    async fn remove_blob(&self, blob: &BlobRef) -> BackendResult<()> {
        let blob = *blob;
        self.blocking(move |i| {
            let path = i.layout.blob_path(&blob.digest);
            let removed = i
                .layout
                .remove(Area::Blobs, &blob.digest)
                .map_err(|e| BackendError::io_with_context("remove blob", &path, e))?;
            if removed {
                tracing::warn!(%blob, path = %path.display(), "removed a blob that failed verification; the next store repairs it");
            }
            Ok(())
        })
        .await
    }

    async fn touch(&self, key: &EntryKey) -> BackendResult<()> {
        let key = key.digest;
        self.blocking(move |i| touch_entry(&i.layout, &key)).await
    }

    async fn health_check(&self) -> BackendResult<()> {
        self.blocking(|i| {
            i.layout.check_version_file()?;
            drop(i.layout.temp()?);
            Ok(())
        })
        .await
    }
}
