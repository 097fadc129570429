//! The storage layer under [`Cache`]: what a backend must provide, and the one
//! implementation of everything that must not differ between backends.
//!
//! A backend implements [`Storage`]: entries as opaque byte strings under a key, blobs
//! by content address, and a way to run blocking work off the async executor.
//! [`Cache`] turns any `Storage` into a full [`CacheBackend`] and owns the invariants:
//!
//! * policy handling (no I/O for reads that are not allowed, no writes for `Readonly`);
//! * key validation before any I/O;
//! * output validation before any I/O (paths, symlink targets, duplicates);
//! * publish order: every blob is written before the entry that names it;
//! * read checks: entry checksum and validation, blobs present (else a miss), every
//!   blob verified against its digest before its bytes reach the workspace or a caller;
//! * workspace safety through [`Workspace`].

use crate::path::OutputKind;
use crate::recent::Recent;
use crate::record::{ActionRecord, INLINE_LOG_MAX, LogRecord, OutputRecord};
use crate::restore::{Restore, Restored, restore_in_steps};
use crate::{
    BackendError, BackendResult, BlobRef, CacheBackend, CacheEntry, CacheLookupResult, CacheOutput,
    CachePolicy, Digest, LogBytes, OutputContent, RelPath, Task, Workspace, policy_allows_read,
    policy_allows_write,
};
use async_trait::async_trait;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Blocking work handed to [`Storage::run_blocking`].
pub type BlockingJob = Box<dyn FnOnce() -> BackendResult<()> + Send + 'static>;

/// Content to be stored as a blob.
#[derive(Debug, Clone)]
pub enum BlobSource {
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// A file on disk, read by the storage in a streaming fashion.
    File(PathBuf),
}

impl BlobSource {
    /// Opens the source for reading (blocking for files).
    pub fn open(&self) -> BackendResult<Box<dyn Read + Send + '_>> {
        match self {
            BlobSource::Bytes(b) => Ok(Box::new(&b[..])),
            BlobSource::File(p) => {
                let f = std::fs::File::open(p)
                    .map_err(|e| BackendError::io_with_context("open output", p, e))?;
                let meta = f
                    .metadata()
                    .map_err(|e| BackendError::io_with_context("inspect output", p, e))?;
                if !meta.is_file() {
                    return Err(BackendError::io_with_context(
                        "read output",
                        p,
                        std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
                    ));
                }
                Ok(Box::new(f))
            }
        }
    }
}

/// One file to restore: which blob, and where it goes. The storage supplies a reader
/// for the blob and calls [`FileRestore::write_from`] (or [`FileRestore::begin`] for
/// chunked sources), which verifies the bytes and places the file.
#[derive(Debug, Clone)]
pub struct FileRestore {
    /// The content to restore.
    pub blob: BlobRef,
    /// The workspace.
    pub workspace: Arc<Workspace>,
    /// Where in the workspace.
    pub path: RelPath,
    /// Mode to give it.
    pub executable: bool,
}

impl FileRestore {
    /// Streams `reader` into the workspace file, verifying it (blocking).
    pub fn write_from(&self, reader: &mut dyn Read) -> BackendResult<PathBuf> {
        self.workspace
            .write_file(&self.path, self.blob, self.executable, reader)
    }

    /// Starts a verified write that is fed in chunks (blocking).
    pub fn begin(&self) -> BackendResult<crate::PendingFile> {
        self.workspace
            .begin_file(&self.path, self.blob, self.executable)
    }

    /// Copies the blob from a file on this machine with the kernel's copy and verifies
    /// what landed before it replaces anything (blocking; see
    /// [`crate::PendingFile::copy_from_file`]).
    #[cfg(unix)]
    pub fn copy_from_file(&self, src: &std::fs::File) -> BackendResult<PathBuf> {
        self.begin()?.copy_from_file(src)
    }
}

/// What a backend provides so that [`Cache`] can make it a [`CacheBackend`].
///
/// Contract for implementors (the `cache-testkit` suite checks all of it):
///
/// * `put_entry` replaces atomically: readers see the old bytes or the new, never a mix.
/// * `put_blobs` returns each source's [`BlobRef`] (hash with [`crate::copy_hashing`]
///   while copying where possible) in the same order; a blob is readable under its
///   digest before the call returns.
/// * `restore_files` writes every file through [`FileRestore::write_from`],
///   `copy_from_file` or `begin`; a missing blob is [`BackendError::BlobNotFound`]; on
///   [`BackendError::DigestMismatch`] the storage removes its corrupt copy so the next
///   store repairs it.
/// * `restore`, if overridden, runs [`Restore::prepare`], writes every file it takes,
///   and ends with [`crate::restore::Prepared::finish`] (the types force prepare first
///   and finish last), and refreshes recency as `touch` would.
/// * A wrapper around another storage forwards `lookup`, `restore` and
///   `lookup_discarded` to it, or the inner storage's own versions (and the statistics
///   they keep) are bypassed; a fault-injecting wrapper may instead leave the defaults,
///   which step through the other methods.
/// * Blocking filesystem work happens off the async executor.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Backend name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Runs blocking work off the async executor (e.g. `tokio::task::spawn_blocking`).
    async fn run_blocking(&self, job: BlockingJob) -> BackendResult<()>;

    /// Reads the encoded entry for `key`, `None` if there is none. Must refuse to read
    /// more than [`crate::MAX_ENTRY_BYTES`] (report that as `CorruptEntry`).
    async fn get_entry(&self, key: &Digest) -> BackendResult<Option<Vec<u8>>>;

    /// Publishes the encoded entry for `key`, atomically replacing any previous one.
    async fn put_entry(&self, key: &Digest, entry: Vec<u8>) -> BackendResult<()>;

    /// Removes the entry for `key` (no error if absent).
    async fn remove_entry(&self, key: &Digest) -> BackendResult<()>;

    /// Which of `blobs` are not stored.
    async fn find_missing_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>>;

    /// Stores each source as a blob (skipping ones already present) and returns their refs.
    async fn put_blobs(&self, sources: Vec<BlobSource>) -> BackendResult<Vec<BlobRef>>;

    /// Reads a whole blob into memory (used for logs); `None` if absent. The bytes are
    /// verified by the caller; implementations must not read past `blob.size + 1` bytes.
    async fn read_blob(&self, blob: &BlobRef) -> BackendResult<Option<Vec<u8>>>;

    /// Restores files into a workspace (see the trait docs).
    async fn restore_files(&self, files: Vec<FileRestore>) -> BackendResult<()>;

    /// Restores one entry's outputs and records that `key` was used. The default runs
    /// [`restore_in_steps`]; a storage whose blocking work is cheap may run the steps in
    /// one blocking job (one trip to the blocking pool per hit).
    async fn restore(&self, key: &Digest, restore: Restore) -> BackendResult<Restored> {
        restore_in_steps(self, key, restore).await
    }

    /// Removes a blob (no error if absent).
    async fn remove_blob(&self, blob: &BlobRef) -> BackendResult<()>;

    /// One lookup, for `check`: the entry for `key` decoded with
    /// [`ActionRecord::decode`] (`Ok(None)` if there is none; a failed decode is its
    /// `CorruptEntry` error), and which of the blobs it needs are missing. The default
    /// ([`lookup_in_steps`]) calls `get_entry` and then `find_missing_blobs`; a storage
    /// whose blocking work is cheap can answer in one job.
    ///
    /// A storage that keeps hit/miss statistics counts each `check` that reads exactly
    /// once: here (a hit when an entry was found with nothing missing, else a miss), or,
    /// when the entry is corrupt, in [`Storage::lookup_discarded`].
    async fn lookup(&self, key: &Digest) -> BackendResult<Option<Found>> {
        lookup_in_steps(self, key).await
    }

    /// Told when a lookup found an entry for `key` that `Cache` turned into a miss
    /// because it failed its checksum or validation (see [`Storage::lookup`]). Default:
    /// nothing.
    async fn lookup_discarded(&self, _key: &Digest) {}

    /// Records that the entry for `key` was used (recency for eviction). Default: nothing.
    async fn touch(&self, _key: &Digest) -> BackendResult<()> {
        Ok(())
    }

    /// Checks that the storage answers.
    async fn health_check(&self) -> BackendResult<()>;
}

/// What [`Storage::lookup`] found.
#[derive(Debug)]
pub struct Found {
    /// The decoded entry.
    pub record: ActionRecord,
    /// Length of the encoded entry in bytes.
    pub encoded_len: usize,
    /// The blobs it needs that are not stored (empty for a hit).
    pub missing: Vec<BlobRef>,
}

/// The default [`Storage::lookup`]: `get_entry`, decode, `find_missing_blobs`.
pub async fn lookup_in_steps<S: Storage + ?Sized>(
    storage: &S,
    key: &Digest,
) -> BackendResult<Option<Found>> {
    let Some(bytes) = storage.get_entry(key).await? else {
        return Ok(None);
    };
    let record = ActionRecord::decode(key, &bytes)?;
    let missing = storage.find_missing_blobs(record.blobs().collect()).await?;
    Ok(Some(Found {
        record,
        encoded_len: bytes.len(),
        missing,
    }))
}

/// Runs a closure on a storage's blocking pool and returns its value.
pub(crate) async fn run_blocking_value<S, T, F>(storage: &S, f: F) -> BackendResult<T>
where
    S: Storage + ?Sized,
    T: Send + 'static,
    F: FnOnce() -> BackendResult<T> + Send + 'static,
{
    let slot = Arc::new(Mutex::new(None));
    let out = Arc::clone(&slot);
    storage
        .run_blocking(Box::new(move || {
            let v = f()?;
            *out.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(v);
            Ok(())
        }))
        .await?;
    let v = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    v.ok_or_else(|| BackendError::Unavailable("blocking job did not run".into()))
}

/// A full [`CacheBackend`] over any [`Storage`].
///
/// ```
/// # use cache_core::{Cache, Storage};
/// fn wrap<S: Storage>(storage: S) -> std::sync::Arc<dyn cache_core::CacheBackend> {
///     std::sync::Arc::new(Cache::new(storage))
/// }
/// ```
///
/// A `check` that hits keeps the record it read for 5 seconds, and the
/// `restore_outputs` and `get_log_bytes` that follow it use that record: a hit reads and
/// decodes its entry once, and the three calls see one record even if another writer
/// replaces the entry meanwhile (its exit code, outputs and logs belong together). At
/// most 16 records are kept, and none of an entry over 1 MiB; past those limits (or the
/// 5 seconds) the calls read the storage again. A `store` through this `Cache` forgets
/// the key (and a `check` that overlapped a store keeps nothing); any failed restore or
/// log read forgets it too.
#[derive(Debug)]
pub struct Cache<S> {
    storage: Arc<S>,
    recent: Arc<Recent<Digest, Arc<ActionRecord>>>,
}

impl<S> Clone for Cache<S> {
    fn clone(&self) -> Self {
        Cache {
            storage: Arc::clone(&self.storage),
            recent: Arc::clone(&self.recent),
        }
    }
}

impl<S: Storage> Cache<S> {
    /// Wraps a storage.
    pub fn new(storage: S) -> Self {
        Cache {
            storage: Arc::new(storage),
            recent: Arc::default(),
        }
    }

    /// The storage underneath (for stats, GC, tests).
    #[must_use]
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Reads and decodes the entry for `key`; `Ok(None)` if there is none. Also says
    /// whether the entry is small enough to keep in [`Recent`].
    async fn load(&self, key: &Digest) -> BackendResult<Option<ActionRecord>> {
        match self.storage.get_entry(key).await? {
            None => Ok(None),
            Some(bytes) => ActionRecord::decode(key, &bytes).map(Some),
        }
    }

    /// The record of a recent hit, else the stored one.
    async fn load_required(&self, key: &Digest) -> BackendResult<Arc<ActionRecord>> {
        if let Some(record) = self.recent.get(key) {
            return Ok(record);
        }
        match self.load(key).await? {
            Some(record) => Ok(Arc::new(record)),
            None => Err(BackendError::ActionNotFound {
                digest: key.to_string(),
            }),
        }
    }

    async fn read_log(&self, log: &LogRecord) -> BackendResult<Option<Vec<u8>>> {
        match log {
            LogRecord::Absent => Ok(None),
            LogRecord::Inline(b) => Ok(Some(b.clone())),
            LogRecord::Blob(blob) => {
                let bytes = self.storage.read_blob(blob).await?.ok_or_else(|| {
                    BackendError::BlobNotFound {
                        digest: blob.to_string(),
                    }
                })?;
                let actual = BlobRef::of(blob.digest.algorithm(), &bytes);
                if let Err(e) = crate::digest::check_blob(blob, &actual) {
                    let _ = self.storage.remove_blob(blob).await;
                    return Err(e);
                }
                Ok(Some(bytes))
            }
        }
    }
}

/// Validated form of a `store` request's outputs.
enum Planned {
    File {
        rel: RelPath,
        source: BlobSource,
        executable: bool,
    },
    Directory(RelPath),
    Symlink(RelPath, String),
}

fn plan_outputs(outputs: &[CacheOutput]) -> BackendResult<Vec<Planned>> {
    let rels = crate::path::check_layout(outputs.iter().map(|o| {
        let kind = match &o.content {
            OutputContent::Bytes(_) | OutputContent::File { .. } => OutputKind::File,
            OutputContent::Directory => OutputKind::Directory,
            OutputContent::Symlink { target } => OutputKind::Symlink(target),
        };
        (o.path.as_str(), kind)
    }))?;
    Ok(outputs
        .iter()
        .zip(rels)
        .map(|(out, rel)| match &out.content {
            OutputContent::Bytes(b) => Planned::File {
                rel,
                source: BlobSource::Bytes(b.clone()),
                executable: out.is_executable,
            },
            OutputContent::File { path, .. } => Planned::File {
                rel,
                source: BlobSource::File(path.clone()),
                executable: out.is_executable,
            },
            OutputContent::Directory => Planned::Directory(rel),
            OutputContent::Symlink { target } => Planned::Symlink(rel, target.clone()),
        })
        .collect())
}

/// What `restore_outputs` reports: directories, files, then symlinks, under `root`,
/// with each path in its normalized [`RelPath`] form (as it was written).
fn outputs_under(record: &ActionRecord, root: &Path) -> BackendResult<Vec<CacheOutput>> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    let mut links = Vec::new();
    for o in &record.outputs {
        let rel = RelPath::parse(o.path())?;
        match o {
            OutputRecord::Directory { .. } => dirs.push(CacheOutput::directory(rel.as_str())),
            OutputRecord::File {
                blob, executable, ..
            } => files.push(CacheOutput {
                path: rel.to_string(),
                content: OutputContent::File {
                    path: rel.to_path(root),
                    blob: Some(*blob),
                },
                is_executable: *executable,
            }),
            OutputRecord::Symlink { target, .. } => {
                links.push(CacheOutput::symlink(rel.as_str(), target.clone()));
            }
        }
    }
    dirs.extend(files);
    dirs.extend(links);
    Ok(dirs)
}

fn log_source(log: Option<&Vec<u8>>) -> (LogRecord, Option<BlobSource>) {
    match log {
        None => (LogRecord::Absent, None),
        Some(b) if b.len() <= INLINE_LOG_MAX => (LogRecord::Inline(b.clone()), None),
        // Placeholder replaced by the blob ref once stored.
        Some(b) => (LogRecord::Absent, Some(BlobSource::Bytes(b.clone()))),
    }
}

#[async_trait]
impl<S: Storage> CacheBackend for Cache<S> {
    async fn check(
        &self,
        _task: &Task,
        digest: &str,
        policy: CachePolicy,
    ) -> BackendResult<CacheLookupResult> {
        let key = Digest::parse(digest)?;
        if !policy_allows_read(policy) {
            return Ok(CacheLookupResult::miss(digest));
        }
        let epoch = self.recent.epoch();
        let found = match self.storage.lookup(&key).await {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(CacheLookupResult::miss(digest)),
            Err(e @ BackendError::CorruptEntry { .. }) => {
                tracing::warn!(backend = self.storage.name(), %key, error = %e, "ignoring corrupt cache entry");
                self.storage.lookup_discarded(&key).await;
                if policy_allows_write(policy) {
                    // Removing it lets the next store write a good one.
                    let _ = self.storage.remove_entry(&key).await;
                }
                return Ok(CacheLookupResult::miss(digest));
            }
            Err(e) => return Err(e),
        };
        if !found.missing.is_empty() {
            tracing::debug!(backend = self.storage.name(), %key, missing = found.missing.len(), "entry's blobs are gone: miss");
            return Ok(CacheLookupResult::miss(digest));
        }
        let record = found.record;
        let hit =
            CacheLookupResult::hit(digest, record.duration_ms).with_exit_code(record.exit_code);
        // Huge output lists are not worth keeping.
        if found.encoded_len <= 1 << 20 {
            self.recent.keep(key, Arc::new(record), epoch);
        }
        Ok(hit)
    }

    async fn store(
        &self,
        _task: &Task,
        digest: &str,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<()> {
        let key = Digest::parse(digest)?;
        if !policy_allows_write(policy) {
            return Ok(());
        }
        // The entry is about to change: a hit seen before must not outlive it.
        self.recent.forget(&key);
        let planned = plan_outputs(&entry.outputs)?;
        let (mut stdout, out_src) = log_source(entry.stdout.as_ref());
        let (mut stderr, err_src) = log_source(entry.stderr.as_ref());

        let mut sources = Vec::new();
        for p in &planned {
            if let Planned::File { source, .. } = p {
                sources.push(source.clone());
            }
        }
        let n_files = sources.len();
        sources.extend(out_src.clone());
        sources.extend(err_src.clone());

        // Publish order, step 1: every blob.
        let refs = self.storage.put_blobs(sources).await?;
        if refs.len() != n_files + usize::from(out_src.is_some()) + usize::from(err_src.is_some()) {
            return Err(BackendError::Serialization(format!(
                "storage {} returned the wrong number of blob refs",
                self.storage.name()
            )));
        }
        let mut refs = refs.into_iter();
        let mut files = Vec::with_capacity(n_files);
        for _ in 0..n_files {
            files.extend(refs.next());
        }
        if out_src.is_some() {
            stdout = LogRecord::Blob(refs.next().expect("counted above"));
        }
        if err_src.is_some() {
            stderr = LogRecord::Blob(refs.next().expect("counted above"));
        }

        // Directories first, then files, then symlinks: the order restore uses.
        let mut outputs = Vec::with_capacity(planned.len());
        let mut links = Vec::new();
        let mut file_refs = files.into_iter();
        let mut file_outputs = Vec::new();
        for p in planned {
            match p {
                Planned::Directory(rel) => outputs.push(OutputRecord::Directory {
                    path: rel.to_string(),
                }),
                Planned::File {
                    rel, executable, ..
                } => file_outputs.push(OutputRecord::File {
                    path: rel.to_string(),
                    blob: file_refs.next().expect("one ref per file"),
                    executable,
                }),
                Planned::Symlink(rel, target) => links.push(OutputRecord::Symlink {
                    path: rel.to_string(),
                    target,
                }),
            }
        }
        outputs.extend(file_outputs);
        outputs.extend(links);
        let record = ActionRecord {
            key,
            exit_code: entry.exit_code,
            duration_ms: entry.duration_ms,
            stdout,
            stderr,
            outputs,
        };
        // Publish order, step 2: the entry, last.
        let published = self.storage.put_entry(&key, record.encode()?).await;
        self.recent.forget(&key);
        published
    }

    async fn restore_outputs(
        &self,
        _task: &Task,
        digest: &str,
        workspace: &Path,
    ) -> BackendResult<Vec<CacheOutput>> {
        let key = Digest::parse(digest)?;
        let record = self.load_required(&key).await?;
        let restored = match Restore::new(workspace.to_path_buf(), &record.outputs) {
            Ok(restore) => self.storage.restore(&key, restore).await,
            Err(e) => Err(e),
        };
        match restored {
            Ok(restored) => outputs_under(&record, restored.root()),
            Err(e) => {
                self.recent.forget(&key);
                Err(e)
            }
        }
    }

    async fn get_log_bytes(&self, _task: &Task, digest: &str) -> BackendResult<LogBytes> {
        let key = Digest::parse(digest)?;
        let record = self.load_required(&key).await?;
        let logs = async {
            let out = self.read_log(&record.stdout).await?;
            let err = self.read_log(&record.stderr).await?;
            Ok((out, err))
        }
        .await;
        if logs.is_err() {
            self.recent.forget(&key);
        }
        logs
    }

    fn name(&self) -> &'static str {
        self.storage.name()
    }

    async fn health_check(&self) -> BackendResult<()> {
        let started = Instant::now();
        let r = self.storage.health_check().await;
        tracing::trace!(backend = self.storage.name(), elapsed = ?started.elapsed(), ok = r.is_ok(), "health check");
        r
    }
}
