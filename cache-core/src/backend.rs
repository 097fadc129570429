//! The origin API: the [`CacheBackend`] trait and the types it speaks.

use crate::{BackendResult, BlobRef, CachePolicy, Task};
use async_trait::async_trait;
use std::path::{Path, PathBuf};

/// Result of a cache lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheLookupResult {
    /// Whether the cache entry was found.
    pub hit: bool,
    /// The digest used for lookup.
    pub key: String,
    /// Execution duration from cached result (if hit).
    pub cached_duration_ms: Option<u64>,
    /// Exit code of the cached run (if hit and the backend knows it).
    pub exit_code: Option<i32>,
}

impl CacheLookupResult {
    /// Create a cache miss result.
    #[must_use]
    pub fn miss(key: impl Into<String>) -> Self {
        Self {
            hit: false,
            key: key.into(),
            cached_duration_ms: None,
            exit_code: None,
        }
    }

    /// Create a cache hit result.
    #[must_use]
    pub fn hit(key: impl Into<String>, duration_ms: u64) -> Self {
        Self {
            hit: true,
            key: key.into(),
            cached_duration_ms: Some(duration_ms),
            exit_code: None,
        }
    }

    /// Adds the cached exit code to a hit.
    #[must_use]
    pub fn with_exit_code(mut self, code: i32) -> Self {
        self.exit_code = Some(code);
        self
    }
}

/// Where an output's content is, or what kind of output it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputContent {
    /// A file whose bytes are in memory (small outputs, tests).
    Bytes(Vec<u8>),
    /// A file on disk, streamed (large outputs). `blob` is filled in by
    /// `restore_outputs` with what was verified; callers of `store` leave it `None`.
    File {
        /// Where the file is on disk.
        path: PathBuf,
        /// Digest and size, when known.
        blob: Option<BlobRef>,
    },
    /// A directory (cached even when empty; its files are separate outputs).
    Directory,
    /// A symlink with a relative target that stays inside the workspace.
    Symlink {
        /// The link text.
        target: String,
    },
}

/// Output artifact to store in cache, or one that was restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheOutput {
    /// Relative path within workspace.
    pub path: String,
    /// The content (bytes, a file on disk, a directory or a symlink).
    pub content: OutputContent,
    /// Whether this is executable (files only; restore also *clears* the bit).
    pub is_executable: bool,
}

impl CacheOutput {
    /// A file output from memory.
    #[must_use]
    pub fn bytes(path: impl Into<String>, data: impl Into<Vec<u8>>, is_executable: bool) -> Self {
        CacheOutput {
            path: path.into(),
            content: OutputContent::Bytes(data.into()),
            is_executable,
        }
    }

    /// A file output streamed from `source` on disk.
    #[must_use]
    pub fn file(path: impl Into<String>, source: impl Into<PathBuf>, is_executable: bool) -> Self {
        CacheOutput {
            path: path.into(),
            content: OutputContent::File {
                path: source.into(),
                blob: None,
            },
            is_executable,
        }
    }

    /// A directory output.
    #[must_use]
    pub fn directory(path: impl Into<String>) -> Self {
        CacheOutput {
            path: path.into(),
            content: OutputContent::Directory,
            is_executable: false,
        }
    }

    /// A symlink output.
    #[must_use]
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        CacheOutput {
            path: path.into(),
            content: OutputContent::Symlink {
                target: target.into(),
            },
            is_executable: false,
        }
    }
}

/// Stored task execution result.
///
/// Unlike the origin, logs are bytes, not `String`: a task's output is replayed byte
/// for byte even when it is not UTF-8. `None` means the stream was not captured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CacheEntry {
    /// Standard output.
    pub stdout: Option<Vec<u8>>,
    /// Standard error.
    pub stderr: Option<Vec<u8>>,
    /// Exit code.
    pub exit_code: i32,
    /// Execution duration in milliseconds.
    pub duration_ms: u64,
    /// Output artifacts.
    pub outputs: Vec<CacheOutput>,
}

/// Cached stdout and stderr, as bytes.
pub type LogBytes = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Cache backend trait for pluggable cache implementations.
///
/// Implementations must be thread-safe (`Send + Sync`) for concurrent task execution,
/// and are used as `Arc<dyn CacheBackend>` or `Box<dyn CacheBackend>`.
///
/// Most backends do not implement this directly: they implement the smaller
/// [`crate::Storage`] and wrap it in [`crate::Cache`], which supplies policy
/// handling, key validation, publish order, digest checks and workspace safety.
#[async_trait]
pub trait CacheBackend: Send + Sync {
    /// Check if a cached result exists for the given task and digest.
    ///
    /// With a policy that does not allow reads this is a miss without any I/O. An
    /// entry that is corrupt, or whose blobs are gone, is a miss.
    async fn check(
        &self,
        task: &Task,
        digest: &str,
        policy: CachePolicy,
    ) -> BackendResult<CacheLookupResult>;

    /// Store a task execution result in the cache (a no-op unless the policy allows
    /// writes). Blobs are published before the entry. When two writers store the same
    /// key, both succeed and the entry published last wins.
    async fn store(
        &self,
        task: &Task,
        digest: &str,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<()>;

    /// Restore output artifacts from cache to the workspace.
    ///
    /// Returns the outputs restored; files are returned as [`OutputContent::File`]
    /// naming the restored file, never with their bytes.
    async fn restore_outputs(
        &self,
        task: &Task,
        digest: &str,
        workspace: &Path,
    ) -> BackendResult<Vec<CacheOutput>>;

    /// Get cached stdout/stderr logs as text (invalid UTF-8 is replaced; use
    /// [`CacheBackend::get_log_bytes`] to replay them exactly).
    async fn get_logs(
        &self,
        task: &Task,
        digest: &str,
    ) -> BackendResult<(Option<String>, Option<String>)> {
        let (out, err) = self.get_log_bytes(task, digest).await?;
        let text = |b: Vec<u8>| {
            String::from_utf8(b)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        };
        Ok((out.map(text), err.map(text)))
    }

    /// Get cached stdout/stderr exactly as captured.
    async fn get_log_bytes(&self, task: &Task, digest: &str) -> BackendResult<LogBytes>;

    /// Get the backend name for logging/metrics.
    fn name(&self) -> &'static str;

    /// Check if the backend is available/connected.
    async fn health_check(&self) -> BackendResult<()>;
}
