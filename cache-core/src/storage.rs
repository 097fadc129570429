//! For backend authors: the [`Storage`] trait a backend implements, and the types it
//! speaks. Executors do not need this module; they use [`crate::Cache`] and
//! [`crate::CacheBackend`].
//!
//! A storage keeps two things: **entries** (one [`ActionRecord`] per task digest) and
//! **blobs** (file contents and large logs, addressed by [`BlobRef`]). It never sees a
//! workspace: [`crate::Cache`] asks it for the bytes of a blob ([`Storage::open_blobs`])
//! and writes them through the one verified writer ([`crate::Workspace`]), so a storage
//! cannot place a file, skip a digest check, or break the publish order (blobs, then the
//! entry) even by mistake. Policy, key validation, record validation, counting and the
//! blocking pool are `Cache`'s too.
//!
//! Every method is required: a wrapper (fault injection, I/O counting) must forward
//! each one, and one that forgets does not compile.
//!
//! **Cancellation.** A call can be dropped at any await ([`crate::cancel`]). A storage
//! method that runs blocking work binds the job to the call
//! (`tokio::task::spawn_blocking(cache_core::cancel::bind(job))`); inside it,
//! [`copy_hashing`] and [`kernel_copy_hashing`] stop between chunks once the call is
//! cancelled, other read loops use [`crate::cancel::CancelToken::reader`] or `check`,
//! and a step that publishes from the job (a rename into place) runs through
//! [`crate::cancel::CancelToken::publish`], so a dropped store publishes nothing.
//!
//! A byte store (a directory, an object store) keeps an entry as the bytes of
//! [`ActionRecord::encode`] and reads it back with [`ActionRecord::decode`], which checks
//! the header, checksum, key and every path; a protocol store (REAPI) maps the typed
//! record to and from its own messages.
//!
//! ```
//! use cache_core::storage::{ActionRecord, BlobSource, EntryKey, Storage, StoredEntry};
//! use cache_core::{BackendResult, BlobRef, DigestAlgorithm};
//! use std::sync::Arc;
//!
//! struct Nothing;
//!
//! #[async_trait::async_trait]
//! impl Storage for Nothing {
//!     fn name(&self) -> &'static str { "nothing" }
//!     async fn get_entry(&self, _: &EntryKey) -> BackendResult<Option<StoredEntry>> { Ok(None) }
//!     async fn put_entry(&self, _: &EntryKey, _: Arc<ActionRecord>) -> BackendResult<()> { Ok(()) }
//!     async fn remove_entry(&self, _: &EntryKey) -> BackendResult<()> { Ok(()) }
//!     async fn find_missing_blobs(&self, b: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>> { Ok(b) }
//!     async fn put_blobs(&self, s: Vec<BlobSource>, _: Option<DigestAlgorithm>) -> BackendResult<Vec<BlobRef>> {
//!         Err(cache_core::BackendError::unavailable("read-only"))
//!     }
//!     async fn open_blobs(&self, b: Vec<BlobRef>) -> BackendResult<Vec<Option<BlobSource>>> {
//!         Ok(b.iter().map(|_| None).collect())
//!     }
//!     async fn remove_blob(&self, _: &BlobRef) -> BackendResult<()> { Ok(()) }
//!     async fn touch(&self, _: &EntryKey) -> BackendResult<()> { Ok(()) }
//!     async fn health_check(&self) -> BackendResult<()> { Ok(()) }
//! }
//! ```
//!
//! A storage cannot write a workspace, because it is never told where one is:
//!
//! ```compile_fail,E0599
//! use cache_core::storage::Storage;
//! // There is no such method to implement; restores are Cache's.
//! fn restore_files<S: Storage>(s: &S) { s.restore_files(Vec::new()); }
//! ```

#[cfg(unix)]
pub use crate::digest::kernel_copy_hashing;
pub use crate::digest::{COPY_BUFFER, copy_hashing, hash_reader};
pub use crate::record::{
    AbsoluteSymlink, ActionRecord, INLINE_LOG_MAX, LogChunk, LogOrder, LogRecord, MAX_ENTRY_BYTES,
    MAX_LOG_CHUNKS, MAX_OUTPUTS, OutputRecord,
};
pub use crate::window::{WINDOW_BUDGET, WINDOW_BYTES, WINDOW_FILES};

use crate::{BackendError, BackendResult, BlobRef, Digest, DigestAlgorithm, Task};
use async_trait::async_trait;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

/// The bytes of one blob: what [`Storage::put_blobs`] is given to store and what
/// [`Storage::open_blobs`] hands back.
pub enum BlobSource {
    /// Bytes in memory (shared, so handing them on copies nothing).
    Bytes(Arc<[u8]>),
    /// A regular file on this machine holding the bytes. Readers open it on a blocking
    /// thread and, for large files, copy it with the kernel's file-to-file copy.
    File(PathBuf),
    /// A blocking reader of the bytes (a network stream, say), read on a blocking
    /// thread. Readers never read more than the blob's size plus one byte.
    Reader(Box<dyn Read + Send>),
}

impl std::fmt::Debug for BlobSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobSource::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            BlobSource::File(p) => f.debug_tuple("File").field(p).finish(),
            BlobSource::Reader(_) => f.write_str("Reader(..)"),
        }
    }
}

impl BlobSource {
    /// Opens the source for reading (blocking for files). A file that is not a regular
    /// file (a FIFO, a directory, a device), or is mostly holes ([`open_blob`]), is
    /// refused rather than read.
    pub fn into_reader(self) -> BackendResult<Box<dyn Read + Send>> {
        match self {
            BlobSource::Bytes(b) => Ok(Box::new(std::io::Cursor::new(b))),
            BlobSource::File(p) => Ok(Box::new(open_blob(&p)?)),
            BlobSource::Reader(r) => Ok(r),
        }
    }
}

/// Holes a stored blob's file may have before it is refused unread: reading holes
/// costs time (they read as zeros) but no disk, so a planted file of mostly holes could
/// claim a terabyte while holding nothing. Below this, a sparse blob is read and
/// verified as usual; our own writers never leave holes in blobs, except a reflink
/// copy of a sparse output.
pub const MAX_BLOB_HOLE_BYTES: u64 = 256 << 20;

/// Why a stored blob's file is refused unread, if it is: more than
/// [`MAX_BLOB_HOLE_BYTES`] of its length is not on disk, and it really has holes (a
/// compressing filesystem also allocates less than the length, without holes).
/// Leaves the file's offset at the start.
#[must_use]
pub fn sparse_blob_reason(file: &std::fs::File) -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().ok()?;
        let len = meta.len();
        let on_disk = meta.blocks().saturating_mul(512);
        if len.saturating_sub(on_disk) <= MAX_BLOB_HOLE_BYTES {
            return None;
        }
        let hole = rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(0)).ok();
        rustix::fs::seek(file, rustix::fs::SeekFrom::Start(0)).ok()?;
        hole.filter(|&h| h < len).map(|_| {
            format!(
                "its file is {len} bytes long with {on_disk} on disk (holes): reading it would cost far more than it holds"
            )
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        None
    }
}

/// Opens a stored blob's file for reading: [`open_regular`], and a file of mostly
/// holes ([`sparse_blob_reason`]) is refused unread.
pub fn open_blob(path: &std::path::Path) -> BackendResult<std::fs::File> {
    let f = open_regular(path)?;
    match sparse_blob_reason(&f) {
        None => Ok(f),
        Some(reason) => Err(BackendError::io_with_context(
            "read blob",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
        )),
    }
}

/// Opens `path` for reading if it is a regular file (blocking): the one check every
/// reader of a [`BlobSource::File`] makes. The last component is never followed if it
/// is a symlink (`O_NOFOLLOW`), and the open never waits (`O_NONBLOCK`: a FIFO planted
/// where a file should be would otherwise block forever); the type is checked on the
/// opened handle, so a FIFO, device, socket or directory is refused, never read.
pub fn open_regular(path: &std::path::Path) -> BackendResult<std::fs::File> {
    let f = open_nofollow(path).map_err(|e| BackendError::io_with_context("open", path, e))?;
    let meta = f
        .metadata()
        .map_err(|e| BackendError::io_with_context("inspect", path, e))?;
    if !meta.is_file() {
        return Err(BackendError::io_with_context(
            "read",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    Ok(f)
}

#[cfg(unix)]
pub(crate) fn open_nofollow(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| {
        if e == rustix::io::Errno::LOOP {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a symlink, not a regular file",
            )
        } else {
            std::io::Error::from(e)
        }
    })?;
    Ok(std::fs::File::from(fd))
}

#[cfg(not(unix))]
pub(crate) fn open_nofollow(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

/// Which entry a storage call is about: the task digest, and the task behind it as its
/// caller described it.
///
/// A byte store (a directory, an object store) keys entries by [`EntryKey::digest`]
/// alone. A protocol store may need more: a REAPI action cache is keyed by the digest of
/// an `Action` whose `Command` names the work, so it builds that from
/// [`EntryKey::task`] (with the digest as the action's salt, so the digest still
/// determines the key). Housekeeping that knows only a digest uses
/// [`EntryKey::digest_only`]; a storage that cannot find entries that way says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryKey {
    /// The task digest (the record's [`ActionRecord::key`]).
    pub digest: Digest,
    /// The task: shared, cheap to clone into a [`crate::Hit`].
    pub task: Arc<TaskInfo>,
}

/// What a storage may know about a task: everything in [`Task`] except environment
/// *values* (a storage may write this description somewhere others can read it, and
/// declared variables may hold secrets; their values are in the digest already).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskInfo {
    /// Task name.
    pub id: String,
    /// The command and its arguments (empty when unknown).
    pub command: Vec<String>,
    /// Whether the command runs through a shell.
    pub shell: bool,
    /// Names of the declared environment variables, sorted.
    pub env_names: Vec<String>,
    /// Declared output paths, relative to the workspace, in the task's order.
    pub outputs: Vec<String>,
}

impl TaskInfo {
    /// The description of `task` (no environment values).
    #[must_use]
    pub fn of(task: &Task) -> Self {
        TaskInfo {
            id: task.id.clone(),
            command: task.command.clone(),
            shell: task.shell,
            env_names: task.env.keys().cloned().collect(),
            outputs: task.outputs.iter().map(|o| o.path.clone()).collect(),
        }
    }
}

impl EntryKey {
    /// The key of `task`'s entry under `digest`.
    #[must_use]
    pub fn new(digest: Digest, task: &Task) -> Self {
        EntryKey {
            digest,
            task: Arc::new(TaskInfo::of(task)),
        }
    }

    /// A key known only by its digest (housekeeping, tests).
    #[must_use]
    pub fn digest_only(digest: Digest) -> Self {
        EntryKey {
            digest,
            task: Arc::new(TaskInfo::default()),
        }
    }
}

impl std::fmt::Display for EntryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.digest.fmt(f)
    }
}

/// What [`Storage::get_entry`] found: the record, and which of its blobs are missing
/// when the storage learnt that while reading the entry at no extra cost (a local
/// directory checks its blob files in the same blocking job). `None` there makes
/// `Cache` ask [`Storage::find_missing_blobs`], which is always correct.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    /// The record.
    pub record: ActionRecord,
    /// The record's blobs that are not stored, if the storage knows.
    pub missing_blobs: Option<Vec<BlobRef>>,
}

impl StoredEntry {
    /// A record whose blobs `Cache` will ask about.
    #[must_use]
    pub fn new(record: ActionRecord) -> Self {
        StoredEntry {
            record,
            missing_blobs: None,
        }
    }

    /// A record and which of its blobs are missing (empty: all present).
    #[must_use]
    pub fn with_missing_blobs(record: ActionRecord, missing: Vec<BlobRef>) -> Self {
        StoredEntry {
            record,
            missing_blobs: Some(missing),
        }
    }
}

/// What a backend provides so that [`crate::Cache`] can make it a
/// [`crate::CacheBackend`]: entries, blobs, recency, health. Nothing else.
///
/// Contract (the `cache-testkit` suite checks all of it):
///
/// * **Entries.** `get_entry` returns the record stored for `key` (`Ok(None)` if there
///   is none), and may say which of its blobs are missing; a stored entry that does not decode, fails its checksum or is over
///   [`MAX_ENTRY_BYTES`] is [`BackendError::CorruptEntry`] (byte stores: use
///   [`ActionRecord::decode`], which does all of that). `put_entry` replaces atomically
///   (readers see the old record or the new, never a mix); last writer wins.
/// * **Blobs.** `put_blobs` stores each source and returns its [`BlobRef`] (the digest
///   of the bytes it stored, computed while copying where possible), in order; a blob
///   already stored need not be written again. A blob is readable before the call
///   returns. `open_blobs` returns, in order, a source for each blob's bytes, or `None`
///   for a blob that is not stored; it should do no more work than the reader will
///   need (a remote store returns lazy readers, or fetches small blobs in a batch).
///   `find_missing_blobs` says which blobs are not stored (a truncated blob counts as
///   missing where the storage can tell cheaply).
/// * **Verification is not the storage's job**: `Cache` verifies every byte it reads
///   and calls `remove_blob` for a blob whose bytes do not match, so the next store
///   repairs it.
/// * **Recency.** `touch` records that the entry for `key` was used (for eviction); a
///   storage without eviction returns `Ok(())`.
/// * Blocking work (filesystem calls) runs off the async executor, in the storage's own
///   blocking jobs.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Backend name for logs and metrics.
    fn name(&self) -> &'static str;

    /// The record stored for `key`, `None` if there is none (see [`StoredEntry`]).
    async fn get_entry(&self, key: &EntryKey) -> BackendResult<Option<StoredEntry>>;

    /// Publishes `record` as the entry for `key` (`record.key == key.digest`),
    /// atomically replacing any previous one. `Cache` calls it only after every blob it
    /// names is stored.
    async fn put_entry(&self, key: &EntryKey, record: Arc<ActionRecord>) -> BackendResult<()>;

    /// Removes the entry for `key` (no error if absent).
    async fn remove_entry(&self, key: &EntryKey) -> BackendResult<()>;

    /// Which of `blobs` are not stored.
    async fn find_missing_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>>;

    /// Stores each source as a blob and returns their refs, in order, hashed with
    /// `algorithm` (`None`: the storage's own choice). `Cache` names one when it imports
    /// a record from another storage, whose refs must stay valid here.
    async fn put_blobs(
        &self,
        sources: Vec<BlobSource>,
        algorithm: Option<DigestAlgorithm>,
    ) -> BackendResult<Vec<BlobRef>>;

    /// A source for each blob's bytes, in order; `None` for a blob not stored.
    async fn open_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<Option<BlobSource>>>;

    /// Removes a blob (no error if absent).
    async fn remove_blob(&self, blob: &BlobRef) -> BackendResult<()>;

    /// Records that the entry for `key` was used (recency for eviction).
    async fn touch(&self, key: &EntryKey) -> BackendResult<()>;

    /// Checks that the storage answers.
    async fn health_check(&self) -> BackendResult<()>;
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn open_regular_refuses_links_fifos_and_directories_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"bytes").unwrap();
        assert!(open_regular(&file).is_ok());
        std::os::unix::fs::symlink(&file, dir.path().join("link")).unwrap();
        let e = open_regular(&dir.path().join("link")).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            // Opening a FIFO for reading would block until a writer came: it must not.
            let e = open_regular(&fifo).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
        assert!(open_regular(dir.path()).is_err());
        assert!(open_regular(&dir.path().join("missing")).is_err());
    }
}
