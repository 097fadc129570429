//! # cache-local: the on-disk taskcache backend (being written, see issue 4)
//!
//! The public API is in place; methods that are not finished yet return a clear error.

use cache_core::{
    BackendError, BackendResult, BlobRef, BlobSource, BlockingJob, Digest, FileRestore, Storage,
};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// How a [`LocalStorage`] behaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalOptions {
    /// fsync every blob, entry and directory change before it counts as stored.
    pub durable: bool,
    /// Evict (LRU) after stores when the cache grows over this many bytes.
    pub max_size: Option<u64>,
}

/// What is in the cache (see [`LocalStorage::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LocalStats {
    /// Number of entries.
    pub entries: u64,
    /// Number of blobs.
    pub blobs: u64,
    /// Bytes used by entries and blobs.
    pub bytes: u64,
    /// Hits recorded, by every process.
    pub hits: u64,
    /// Misses recorded, by every process.
    pub misses: u64,
}

/// What a [`LocalStorage::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Bytes before.
    pub bytes_before: u64,
    /// Bytes after.
    pub bytes_after: u64,
    /// Entries evicted.
    pub entries_removed: u64,
    /// Blobs removed.
    pub blobs_removed: u64,
}

/// What a [`LocalStorage::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Blobs re-hashed.
    pub blobs_checked: u64,
    /// Corrupt blobs removed.
    pub blobs_removed: u64,
    /// Entries checked.
    pub entries_checked: u64,
    /// Corrupt entries removed.
    pub entries_removed: u64,
}

/// A cache directory.
#[derive(Debug)]
pub struct LocalStorage {
    dir: PathBuf,
    #[allow(dead_code)]
    opts: LocalOptions,
}

/// The full cache over a directory.
pub type LocalCache = cache_core::Cache<LocalStorage>;

/// Opens (creating if needed) the cache in `dir`.
pub fn open(dir: impl AsRef<Path>, opts: LocalOptions) -> BackendResult<LocalCache> {
    LocalStorage::open(dir, opts).map(cache_core::Cache::new)
}

fn unfinished(what: &str) -> BackendError {
    BackendError::Unavailable(format!(
        "cache-local: {what} is not implemented yet (issue 4 in progress)"
    ))
}

impl LocalStorage {
    /// Opens (creating if needed) the cache in `dir`.
    pub fn open(dir: impl AsRef<Path>, opts: LocalOptions) -> BackendResult<Self> {
        let _ = (dir.as_ref(), opts);
        Err(unfinished("open"))
    }

    /// `$XDG_CACHE_HOME/taskcache`, else `$HOME/.cache/taskcache`.
    pub fn default_dir() -> Option<PathBuf> {
        let nonempty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
        nonempty("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("taskcache"))
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Entries, blobs, bytes, hits and misses.
    pub async fn stats(&self) -> BackendResult<LocalStats> {
        Err(unfinished("stats"))
    }

    /// Evicts until the cache holds at most `max_bytes`.
    pub async fn gc(&self, max_bytes: u64) -> BackendResult<GcReport> {
        let _ = max_bytes;
        Err(unfinished("gc"))
    }

    /// Re-hashes every blob and checks every entry, removing corrupt ones.
    pub async fn verify(&self) -> BackendResult<VerifyReport> {
        Err(unfinished("verify"))
    }
}

#[async_trait::async_trait]
impl Storage for LocalStorage {
    fn name(&self) -> &'static str {
        "local"
    }
    async fn run_blocking(&self, _job: BlockingJob) -> BackendResult<()> {
        Err(unfinished("run_blocking"))
    }
    async fn get_entry(&self, _key: &Digest) -> BackendResult<Option<Vec<u8>>> {
        Err(unfinished("get_entry"))
    }
    async fn put_entry(&self, _key: &Digest, _entry: Vec<u8>) -> BackendResult<()> {
        Err(unfinished("put_entry"))
    }
    async fn remove_entry(&self, _key: &Digest) -> BackendResult<()> {
        Err(unfinished("remove_entry"))
    }
    async fn find_missing_blobs(&self, _blobs: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>> {
        Err(unfinished("find_missing_blobs"))
    }
    async fn put_blobs(&self, _sources: Vec<BlobSource>) -> BackendResult<Vec<BlobRef>> {
        Err(unfinished("put_blobs"))
    }
    async fn read_blob(&self, _blob: &BlobRef) -> BackendResult<Option<Vec<u8>>> {
        Err(unfinished("read_blob"))
    }
    async fn restore_files(&self, _files: Vec<FileRestore>) -> BackendResult<()> {
        Err(unfinished("restore_files"))
    }
    async fn remove_blob(&self, _blob: &BlobRef) -> BackendResult<()> {
        Err(unfinished("remove_blob"))
    }
    async fn health_check(&self) -> BackendResult<()> {
        Err(unfinished("health_check"))
    }
}
