//! Errors shared by every backend, and the line between degradable and hard failures.

use std::path::PathBuf;
use thiserror::Error;

/// Error types for cache backend operations.
///
/// The origin variants keep their names and meaning. The variants added since
/// (`InvalidKey`, `UnsafePath`, `InvalidOutput`, `CorruptEntry`) are all hard errors:
/// they mean bad input or bad data, which retrying or running uncached would not fix
/// silently.
#[derive(Debug, Error)]
pub enum BackendError {
    /// IO error during cache operations (generic, for `#[from]` compatibility).
    #[error("Cache IO error: {0}")]
    Io(#[from] std::io::Error),

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

    /// Serialization error.
    #[error("Serialization error: {0}")]
    Serialization(String),

    /// Remote connection error (gracefully degradable).
    #[error("Remote cache connection error: {0}")]
    Connection(String),

    /// Remote cache unavailable (gracefully degradable).
    ///
    /// The cache is temporarily unavailable but execution should continue without
    /// caching. Callers should handle this gracefully.
    #[error("Remote cache unavailable: {0}")]
    Unavailable(String),

    /// Bytes read from the cache do not hash to the digest they are stored under.
    #[error("Digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest (and size) the entry promised.
        expected: String,
        /// What the bytes actually hashed to.
        actual: String,
    },

    /// Blob not found in CAS.
    #[error("Blob not found: {digest}")]
    BlobNotFound {
        /// The missing blob's digest.
        digest: String,
    },

    /// Action result not found (a miss where a hit was expected).
    #[error("Action result not found for digest: {digest}")]
    ActionNotFound {
        /// The task digest looked up.
        digest: String,
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

    /// An output path or symlink target would leave the workspace, or is malformed.
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

    /// A stored entry failed its checksum, did not decode, or describes unsafe outputs.
    #[error("cache entry {key} is corrupt or hostile: {reason}")]
    CorruptEntry {
        /// The task digest whose entry is bad.
        key: String,
        /// What check failed.
        reason: String,
    },
}

impl BackendError {
    /// Returns true if this error indicates the cache is unavailable but
    /// execution should continue without caching (graceful degradation).
    #[must_use]
    pub fn is_gracefully_degradable(&self) -> bool {
        matches!(
            self,
            BackendError::Unavailable(_)
                | BackendError::Connection(_)
                | BackendError::ActionNotFound { .. }
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

    /// A short, stable name for the variant, used as a metrics label.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Io(_) | BackendError::IoWithContext { .. } => "io",
            BackendError::Serialization(_) => "serialization",
            BackendError::Connection(_) => "connection",
            BackendError::Unavailable(_) => "unavailable",
            BackendError::DigestMismatch { .. } => "digest_mismatch",
            BackendError::BlobNotFound { .. } => "blob_not_found",
            BackendError::ActionNotFound { .. } => "action_not_found",
            BackendError::InvalidKey { .. } => "invalid_key",
            BackendError::UnsafePath { .. } => "unsafe_path",
            BackendError::InvalidOutput { .. } => "invalid_output",
            BackendError::CorruptEntry { .. } => "corrupt_entry",
        }
    }

    pub(crate) fn unsafe_path(path: &str, reason: impl Into<String>) -> Self {
        BackendError::UnsafePath {
            path: truncate(path),
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
