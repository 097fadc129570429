//! Errors shared by every backend, and the two lines drawn through them: degradable
//! (the origin's rule) and, for combinators and executors, who is at fault.

use crate::{BlobRef, Digest};
use std::fmt;
use std::path::PathBuf;
use thiserror::Error;

/// A boxed error kept as the source of another.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Error types for cache backend operations.
///
/// The origin variants keep their names and meaning; their fields are typed where a
/// type fits (a [`Digest`], a [`BlobRef`]) and every variant that wraps a failure keeps
/// it as its [`std::error::Error::source`]. New variants may be added (the enum is
/// `#[non_exhaustive]`): match on [`BackendError::fault`] or
/// [`BackendError::is_gracefully_degradable`] rather than on every variant.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BackendError {
    /// IO error with no path to name (prefer [`BackendError::IoWithContext`]).
    #[error("Cache IO error: {0}")]
    Io(#[source] std::io::Error),

    /// IO error with path context for better diagnostics.
    #[error("Failed to {operation} '{path}': {source}")]
    IoWithContext {
        /// What was being done, e.g. `"write"`.
        operation: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// Something could not be encoded or decoded.
    #[error("Serialization error: {0}")]
    Serialization(#[source] Detail),

    /// Remote connection error (gracefully degradable).
    #[error("Remote cache connection error: {0}")]
    Connection(#[source] Detail),

    /// Remote cache unavailable (gracefully degradable).
    ///
    /// The cache is temporarily unavailable but execution should continue without
    /// caching. Callers should handle this gracefully.
    #[error("Remote cache unavailable: {0}")]
    Unavailable(#[source] Detail),

    /// Bytes read from the cache do not hash to the digest they are stored under.
    #[error("Digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest and size the entry promised.
        expected: BlobRef,
        /// What the bytes actually hashed to (and how many there were, up to one past
        /// the promised size).
        actual: BlobRef,
    },

    /// A stored blob cannot be what its digest says without being read at a cost far
    /// beyond the bytes it holds: a file that is mostly holes (sparse). Refused unread.
    #[error("blob {digest} is damaged: {reason}")]
    DamagedBlob {
        /// The blob as the entry names it.
        digest: BlobRef,
        /// What is wrong with the stored copy.
        reason: String,
    },

    /// Blob not found in CAS.
    #[error("Blob not found: {digest}")]
    BlobNotFound {
        /// The missing blob.
        digest: BlobRef,
    },

    /// Action result not found (a miss where a hit was expected).
    #[error("Action result not found for digest: {digest}")]
    ActionNotFound {
        /// The task digest looked up.
        digest: Digest,
    },

    /// A cache key (task digest) string is not `sha256:<64 hex>` or `blake3:<64 hex>`.
    #[error(
        "invalid cache key {value:?}: {reason} (expected `sha256:` or `blake3:` followed by 64 lowercase hex digits)"
    )]
    InvalidKey {
        /// The rejected string (truncated to 100 characters).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// An output path or symlink target would leave the workspace, or is malformed, or
    /// something in the workspace is in the way of it.
    #[error("refusing output path {path:?}: {reason}")]
    UnsafePath {
        /// The offending relative path as given.
        path: String,
        /// Why it is refused and what to do instead.
        reason: String,
    },

    /// An output handed to `store` cannot be cached as described.
    #[error("cannot cache output {path:?}: {reason}")]
    InvalidOutput {
        /// The output's relative path.
        path: String,
        /// What is wrong.
        reason: String,
    },

    /// An input pattern or input file cannot join the task key.
    #[error("cannot use input {pattern:?}: {reason}")]
    InvalidInput {
        /// The pattern or file as given.
        pattern: String,
        /// What is wrong and what to do.
        reason: String,
    },

    /// Trusted keys are set and the entry is unsigned, signed by another key, or its
    /// signature does not match it. A miss: only trusted writers' entries are used.
    #[error("cache entry {key} is not signed by a trusted key: {reason}")]
    UntrustedEntry {
        /// The task digest.
        key: Digest,
        /// Unsigned, unknown signer, or a bad signature.
        reason: &'static str,
    },

    /// A cached log is longer than the caller is willing to read into memory.
    #[error(
        "cache entry {key} has a log of {size} bytes, over the {limit}-byte limit for reading it into memory"
    )]
    LogTooLarge {
        /// The task digest.
        key: Digest,
        /// The recorded size.
        size: u64,
        /// The caller's limit.
        limit: u64,
    },

    /// A stored entry lists an output the task does not declare. It is a miss: a hit
    /// writes only the paths the task says it produces.
    #[error(
        "cache entry {key} lists {path:?}, which the task does not declare as an output; refusing the whole entry"
    )]
    UndeclaredOutput {
        /// The task digest.
        key: Digest,
        /// The undeclared path (normalized, truncated).
        path: String,
    },

    /// A stored entry was written by a newer taskcache in a format this one does not
    /// read. It is a miss, left in place for the version that wrote it.
    #[error(
        "cache entry {key} has format version {version}, newer than this taskcache reads; upgrade taskcache to use it"
    )]
    NewerEntryFormat {
        /// The task digest.
        key: Digest,
        /// The format version found.
        version: u8,
    },

    /// A cache call did not finish within its deadline ([`crate::Deadline`]).
    #[error("cache {backend} did not finish {operation} within {after:?}")]
    Timeout {
        /// The backend's name.
        backend: &'static str,
        /// What it was doing.
        operation: &'static str,
        /// The deadline.
        after: std::time::Duration,
    },

    /// A stored entry failed its checksum, did not decode, or describes unsafe outputs.
    #[error("cache entry {key} is corrupt or hostile: {reason}")]
    CorruptEntry {
        /// The task digest whose entry is bad.
        key: Digest,
        /// What check failed.
        reason: String,
    },
}

/// Who is at fault for an error, which decides what an executor does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The cache is at fault: its storage failed (I/O, a server that is down or slow),
    /// or what it holds is corrupt or incomplete. The task runs uncached; a tier at
    /// fault is skipped ([`crate::Tiered`], [`crate::CircuitBreaker`]). Never a reason
    /// to fail the task.
    Cache,
    /// The caller is at fault: a malformed key, outputs or inputs that cannot be cached
    /// as described, or a workspace whose layout is in the way of an output. Retrying
    /// or another tier would not help; the message says what to fix.
    Caller,
}

/// A message and, where there is one, the error it stands for (kept as the source).
pub struct Detail {
    message: String,
    source: Option<BoxError>,
}

impl Detail {
    /// A message with no underlying error.
    pub fn new(message: impl Into<String>) -> Self {
        Detail {
            message: message.into(),
            source: None,
        }
    }

    /// A message about `source`, which stays reachable as the error's source.
    pub fn with_source(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Detail {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// The message.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl fmt::Debug for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Detail")
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for Detail {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<String> for Detail {
    fn from(message: String) -> Self {
        Detail::new(message)
    }
}

impl From<&str> for Detail {
    fn from(message: &str) -> Self {
        Detail::new(message)
    }
}

impl BackendError {
    /// Returns true if this error indicates the cache is unavailable but
    /// execution should continue without caching (graceful degradation).
    ///
    /// This is the origin's narrow rule (transport trouble and a missing action).
    /// [`BackendError::fault`] is the wider one executors and combinators use.
    #[must_use]
    pub fn is_gracefully_degradable(&self) -> bool {
        matches!(
            self,
            BackendError::Unavailable(_)
                | BackendError::Connection(_)
                | BackendError::Timeout { .. }
                | BackendError::ActionNotFound { .. }
        )
    }

    /// Who is at fault: see [`Fault`]. Every error that is not plainly the caller's
    /// (bad key, bad outputs or inputs, a workspace in the way) is the cache's.
    #[must_use]
    pub fn fault(&self) -> Fault {
        match self {
            BackendError::InvalidKey { .. }
            | BackendError::UnsafePath { .. }
            | BackendError::InvalidOutput { .. }
            | BackendError::InvalidInput { .. } => Fault::Caller,
            _ => Fault::Cache,
        }
    }

    /// Shorthand for `self.fault() == Fault::Cache`: the task should run uncached.
    #[must_use]
    pub fn is_cache_fault(&self) -> bool {
        self.fault() == Fault::Cache
    }

    /// The backend did not answer in time or could not be reached (`Timeout`,
    /// `Unavailable`, `Connection`): unlike a corrupt entry or a local I/O error, the
    /// next call a moment later will most likely fail the same way.
    #[must_use]
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            BackendError::Timeout { .. }
                | BackendError::Unavailable(_)
                | BackendError::Connection(_)
        )
    }

    /// Create an IO error with path context.
    pub fn io_with_context(
        operation: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        BackendError::IoWithContext {
            operation,
            path: path.into(),
            source,
        }
    }

    /// An `Unavailable` error with a message.
    pub fn unavailable(message: impl Into<String>) -> Self {
        BackendError::Unavailable(Detail::new(message))
    }

    /// A `Serialization` error about `source`.
    pub fn serialization(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        BackendError::Serialization(Detail::with_source(message, source))
    }

    /// A short, stable name for the variant, used as a metrics label.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Io(_) | BackendError::IoWithContext { .. } => "io",
            BackendError::Serialization(_) => "serialization",
            BackendError::Connection(_) => "connection",
            BackendError::Unavailable(_) => "unavailable",
            BackendError::DigestMismatch { .. } => "digest_mismatch",
            BackendError::DamagedBlob { .. } => "damaged_blob",
            BackendError::BlobNotFound { .. } => "blob_not_found",
            BackendError::ActionNotFound { .. } => "action_not_found",
            BackendError::InvalidKey { .. } => "invalid_key",
            BackendError::UnsafePath { .. } => "unsafe_path",
            BackendError::InvalidOutput { .. } => "invalid_output",
            BackendError::InvalidInput { .. } => "invalid_input",
            BackendError::CorruptEntry { .. } => "corrupt_entry",
            BackendError::Timeout { .. } => "timeout",
            BackendError::NewerEntryFormat { .. } => "newer_entry_format",
            BackendError::UndeclaredOutput { .. } => "undeclared_output",
            BackendError::LogTooLarge { .. } => "log_too_large",
            BackendError::UntrustedEntry { .. } => "untrusted_entry",
        }
    }

    pub(crate) fn unsafe_path(path: &str, reason: impl Into<String>) -> Self {
        BackendError::UnsafePath {
            path: truncate(path),
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(key: Digest, reason: impl Into<String>) -> Self {
        BackendError::CorruptEntry {
            key,
            reason: reason.into(),
        }
    }
}

/// Keeps hostile or accidental megabyte-long strings out of error messages.
pub(crate) fn truncate(s: &str) -> String {
    const MAX: usize = 100;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Result type for cache backend operations.
pub type BackendResult<T> = std::result::Result<T, BackendError>;
