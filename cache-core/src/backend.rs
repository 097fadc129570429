//! The origin API: the [`CacheBackend`] trait and the types it speaks.

use crate::{BackendError, BackendResult, BlobRef, CachePolicy, Digest, Hit, Task};
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
        /// The file's size when the caller knows it (from the metadata it walked):
        /// sizes deadlines and metrics, never trusted as the stored size.
        size: Option<u64>,
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
                size: None,
            },
            is_executable,
        }
    }

    /// A file output streamed from `source`, whose size the caller knows (it scales
    /// the store's deadline and counts as bytes up in [`crate::Instrumented`]).
    #[must_use]
    pub fn file_with_size(
        path: impl Into<String>,
        source: impl Into<PathBuf>,
        size: u64,
        is_executable: bool,
    ) -> Self {
        let mut out = CacheOutput::file(path, source, is_executable);
        if let OutputContent::File { size: s, .. } = &mut out.content {
            *s = Some(size);
        }
        out
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
    /// The order the task wrote stdout and stderr in, so a hit replays them
    /// interleaved ([`crate::Hit::log_order`]); empty when not recorded. Its chunks must
    /// add up to the two logs' lengths.
    pub log_order: crate::storage::LogOrder,
}

impl CacheEntry {
    /// Bytes a store of this entry moves, as far as known without touching the disk:
    /// logs, in-memory outputs, and file outputs whose size the caller gave.
    #[must_use]
    pub fn known_bytes(&self) -> u64 {
        let logs = [&self.stdout, &self.stderr]
            .into_iter()
            .flatten()
            .map(|l| l.len() as u64);
        let outputs = self.outputs.iter().map(|o| match &o.content {
            OutputContent::Bytes(b) => b.len() as u64,
            OutputContent::File { blob, size, .. } => blob.map(|b| b.size).or(*size).unwrap_or(0),
            OutputContent::Directory | OutputContent::Symlink { .. } => 0,
        });
        logs.chain(outputs).fold(0, u64::saturating_add)
    }
}

/// Cached stdout and stderr, as bytes.
pub type LogBytes = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Cache backend trait for pluggable cache implementations.
///
/// Implementations must be thread-safe (`Send + Sync`) for concurrent task execution,
/// and are used as `Arc<dyn CacheBackend>` or `Box<dyn CacheBackend>`.
///
/// Most backends do not implement this directly: they implement the smaller
/// [`crate::storage::Storage`] and wrap it in [`crate::Cache`], which supplies policy
/// handling, key validation, publish order, digest checks and workspace safety.
///
/// # A hit is a value
///
/// [`CacheBackend::lookup`] returns a [`Hit`]: one decoded, validated record. Restoring
/// it ([`Hit::restore`]) and reading its logs ([`Hit::logs`]) use exactly that record,
/// so the exit code, outputs and logs replayed always belong together.
///
/// # The origin's three-call form
///
/// `check`, `restore_outputs` and `get_log_bytes` are provided on top of `lookup`: each
/// call looks the key up again. Each call on its own is consistent (a restore writes
/// one record's outputs, verified), but if another writer replaces the entry between
/// the calls, the exit code from `check`, the outputs and the logs may come from two
/// different stores of the same key. Both were valid results for that key; an executor
/// that needs them to be the same run uses `lookup`.
///
/// # Dropping a call
///
/// An executor may drop any call's future (a task cancelled, its own timeout) or let a
/// [`crate::Deadline`] time it out, and then run the task and write its outputs at
/// once. With [`crate::Cache`] (every backend in this workspace), a dropped call
/// writes nothing visible afterwards ([`crate::cancel`]): once the drop returns, no
/// output of a dropped [`Hit::restore`] is renamed into place, created or re-timed
/// (what it placed before stays; its temporary files are gone), and a dropped `store`
/// or `import` publishes no entry. Its blocking jobs stop at their next check (the end
/// of the current read or write); the drop does not wait for that, a `Deadline`
/// timeout does (at most [`crate::cancel::JOIN_WAIT`]). A backend implemented from
/// scratch owes its callers the same.
#[async_trait]
pub trait CacheBackend: Send + Sync {
    /// Looks `key` up. With a policy that does not allow reads this is `None` without
    /// any I/O. An entry that is corrupt, or whose blobs are gone, is `None`.
    async fn lookup(
        &self,
        task: &Task,
        key: &Digest,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>>;

    /// Store a task execution result in the cache (a no-op unless the policy allows
    /// writes). Blobs are published before the entry. When two writers store the same
    /// key, both succeed and the entry published last wins.
    ///
    /// When the task declares outputs, every output of `entry` must be one of them,
    /// lie below one, or be a directory above one (what a lookup of the task accepts);
    /// anything else is refused as [`BackendError::InvalidOutput`], the caller's fault,
    /// before anything is written.
    async fn store(
        &self,
        task: &Task,
        digest: &str,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<()>;

    /// [`CacheBackend::store`] under the same [`Digest`] an executor looks up with, so
    /// it never formats or parses a key: the lookup's key and the store's are one
    /// value. Prefer it to `store` (kept for the origin's callers).
    async fn store_key(
        &self,
        task: &Task,
        key: &Digest,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<()> {
        self.store(task, &key.to_string(), entry, policy).await
    }

    /// Copies `hit` (found in another cache) into this one, blob by blob from the
    /// hit's own storage, each verified, then its record unchanged; returns the hit as
    /// served from here. `None` when the policy does not allow writes or the backend
    /// cannot import (the default).
    async fn import(
        &self,
        _task: &Task,
        _hit: &Hit,
        _policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        Ok(None)
    }

    /// Get the backend name for logging/metrics.
    fn name(&self) -> &'static str;

    /// Check if the backend is available/connected.
    async fn health_check(&self) -> BackendResult<()>;

    /// Check if a cached result exists for the given task and digest (one
    /// [`CacheBackend::lookup`]).
    async fn check(
        &self,
        task: &Task,
        digest: &str,
        policy: CachePolicy,
    ) -> BackendResult<CacheLookupResult> {
        let key = Digest::parse(digest)?;
        Ok(match self.lookup(task, &key, policy).await? {
            Some(hit) => {
                CacheLookupResult::hit(digest, hit.duration_ms()).with_exit_code(hit.exit_code())
            }
            None => CacheLookupResult::miss(digest),
        })
    }

    /// Restore output artifacts from cache to the workspace: a fresh lookup (without
    /// writing any tier), then [`Hit::restore`]. `ActionNotFound` if there is no hit.
    /// It takes no policy: a blob that fails verification is removed, as after a
    /// normal lookup; a caller that must delete nothing uses [`CacheBackend::lookup`]
    /// with [`CachePolicy::Readonly`].
    ///
    /// Returns the outputs restored; files are returned as [`OutputContent::File`]
    /// naming the restored file, never with their bytes.
    async fn restore_outputs(
        &self,
        task: &Task,
        digest: &str,
        workspace: &Path,
    ) -> BackendResult<Vec<CacheOutput>> {
        let hit = require(self, task, digest).await?;
        hit.restore(workspace).await
    }

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

    /// Get cached stdout/stderr exactly as captured: a fresh lookup (without writing
    /// any tier), then [`Hit::logs`]. `ActionNotFound` if there is no hit.
    async fn get_log_bytes(&self, task: &Task, digest: &str) -> BackendResult<LogBytes> {
        let hit = require(self, task, digest).await?;
        hit.logs().await
    }
}

/// The hit for `digest`, found without writing any tier; `ActionNotFound` if there is
/// none. The origin's calls take no policy, so what the hit cannot verify is removed
/// as under a normal policy (the next store repairs it).
async fn require<B: CacheBackend + ?Sized>(b: &B, task: &Task, digest: &str) -> BackendResult<Hit> {
    let key = Digest::parse(digest)?;
    b.lookup(task, &key, CachePolicy::Readonly)
        .await?
        .map(Hit::repairing)
        .ok_or(BackendError::ActionNotFound { digest: key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records the key text each `store` gets.
    #[derive(Default)]
    struct Recording(Mutex<Vec<String>>);

    #[async_trait]
    impl CacheBackend for Recording {
        async fn lookup(&self, _: &Task, _: &Digest, _: CachePolicy) -> BackendResult<Option<Hit>> {
            Ok(None)
        }
        async fn store(
            &self,
            _: &Task,
            key: &str,
            _: &CacheEntry,
            _: CachePolicy,
        ) -> BackendResult<()> {
            self.0.lock().unwrap().push(key.to_owned());
            Ok(())
        }
        fn name(&self) -> &'static str {
            "recording"
        }
        async fn health_check(&self) -> BackendResult<()> {
            Ok(())
        }
    }

    /// Polls a future that never waits to its end.
    fn now<T>(f: impl std::future::Future<Output = T>) -> T {
        let mut f = std::pin::pin!(f);
        match f
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the call waited"),
        }
    }

    #[test]
    fn store_key_stores_under_the_key_a_lookup_parses_back() {
        let b = Recording::default();
        let task = Task::new("t", ["true"]);
        for key in [
            crate::DigestAlgorithm::Blake3.digest(b"a"),
            crate::DigestAlgorithm::Sha256.digest(b"b"),
        ] {
            now(b.store_key(&task, &key, &CacheEntry::default(), CachePolicy::Normal)).unwrap();
            let stored = b.0.lock().unwrap().pop().unwrap();
            assert_eq!(Digest::parse(&stored).unwrap(), key, "{stored}");
        }
    }
}
