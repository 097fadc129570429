//! Errors shared by every backend, and the two lines drawn through them: degradable
//! (the origin's rule) and, for combinators and executors, who is at fault ([`Fault`]:
//! the cache, the caller, or a tier's permissions).

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
///
/// | variant | [`BackendError::fault`] | [`is_outage`](BackendError::is_outage) | [`is_gracefully_degradable`](BackendError::is_gracefully_degradable) (origin) |
/// |---|---|---|---|
/// | `Unavailable`, `Connection`, `Timeout` | `Cache` | yes | yes |
/// | `Rejected`, `ActionNotFound` | `Cache` | no | yes |
/// | `Io`, `IoWithContext`, `Serialization`, `DigestMismatch`, `DamagedBlob`, `BlobNotFound`, `CorruptEntry`, `UntrustedEntry`, `NewerEntryFormat`, `UndeclaredOutput`, `LogTooLarge` | `Cache` | no | no |
/// | `PermissionDenied` | `Permission` | no | yes |
/// | `InvalidKey`, `UnsafePath`, `InvalidOutput`, `InvalidInput`, `Workspace` | `Caller` | no | no |
///
/// The origin's split stays as it was: its degradable variants (`Unavailable`,
/// `Connection`, `ActionNotFound`) are degradable, its hard ones (`Io`,
/// `IoWithContext`, `Serialization`, `DigestMismatch`, `BlobNotFound`) hard.
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

    /// The server answered and refused this one request as invalid or unsatisfiable
    /// (REAPI `INVALID_ARGUMENT`, `FAILED_PRECONDITION`, `OUT_OF_RANGE`, ...). The
    /// cache's fault (the caller's input was valid: the request is this client's, the
    /// refusal the server's), gracefully degradable, but not an outage: other calls a
    /// moment later are expected to succeed, so a breaker counts it towards its
    /// threshold instead of opening at once.
    #[error("cache refused the request: {0}")]
    Rejected(#[source] Detail),

    /// The cache refuses this caller the operation: its credentials lack the
    /// permission (HTTP 401/403, gRPC `PERMISSION_DENIED`/`UNAUTHENTICATED`), or the
    /// cache is read-only (a REAPI action cache with `update_enabled: false`).
    ///
    /// [`Fault::Permission`]: gracefully degradable (the task runs, uncached or
    /// unstored), never an outage (the server answered), and not the caller's mistake
    /// in this call. A tier that refuses writes this way keeps refusing them:
    /// [`crate::Tiered`] stops writing it and keeps reading it.
    #[error("cache permission denied: {0}")]
    PermissionDenied(#[source] Detail),

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

    /// The workspace a hit is restored into cannot be used or written: it is missing,
    /// not a directory, not writable, or its filesystem failed. The caller's: another
    /// tier, or the same one later, would meet the same workspace.
    #[error("workspace: failed to {operation} '{path}': {source}")]
    Workspace {
        /// What was being done, e.g. `"create directory"`.
        operation: &'static str,
        /// The path in the workspace (or the workspace root).
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
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

/// Who owns an error, which decides what an executor does with it.
///
/// | owner | the task | the tier |
/// |---|---|---|
/// | `Cache` | runs uncached (never fails for it) | counted by [`crate::CircuitBreaker`]; skipped after repeated faults, at once after an outage if asked |
/// | `Permission` | runs uncached, or its result is not stored there | not counted by the breaker; [`crate::Tiered`] stops writing a tier that refused a write, keeps reading it, and says so once |
/// | `Caller` | the error is returned: fix what it names | not counted: another tier would fail the same way |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The cache is at fault: its storage failed (I/O, a server that is down or slow,
    /// a request it refused as invalid), or what it holds is corrupt or incomplete. The
    /// task runs uncached; a tier at fault is skipped ([`crate::Tiered`],
    /// [`crate::CircuitBreaker`]). Never a reason to fail the task.
    Cache,
    /// The cache answered and refuses this caller the operation, by permission or by
    /// policy: credentials without the right (HTTP 401/403, gRPC `PERMISSION_DENIED`,
    /// `UNAUTHENTICATED`) or a read-only cache ([`BackendError::PermissionDenied`]).
    /// Not an outage (a breaker does not count it) and no reason to fail the task: it
    /// runs uncached, or runs and is not stored there. Usually only writes are refused
    /// (a read-only token, a read-only REAPI action cache): keep reading the tier,
    /// stop writing it, say so once ([`crate::Tiered`] does).
    Permission,
    /// The caller is at fault: a malformed key, outputs or inputs that cannot be cached
    /// as described, or a workspace that is missing, unwritable or whose layout is in
    /// the way of an output. Retrying or another tier would not help; the message says
    /// what to fix. A breaker does not count it.
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
    /// This is the origin's narrow rule (transport trouble, a refused request or
    /// permission, and a missing action); the origin's hard errors (I/O,
    /// serialization, a digest mismatch, a missing blob) stay hard.
    /// [`BackendError::fault`] is the wider one executors and combinators use.
    #[must_use]
    pub fn is_gracefully_degradable(&self) -> bool {
        matches!(
            self,
            BackendError::Unavailable(_)
                | BackendError::Connection(_)
                | BackendError::Timeout { .. }
                | BackendError::Rejected(_)
                | BackendError::PermissionDenied(_)
                | BackendError::ActionNotFound { .. }
        )
    }

    /// Who owns the error: see [`Fault`]. A refused permission is
    /// [`Fault::Permission`]; bad keys, outputs or inputs and workspace trouble are the
    /// caller's; everything else is the cache's.
    #[must_use]
    pub fn fault(&self) -> Fault {
        match self {
            BackendError::PermissionDenied(_) => Fault::Permission,
            BackendError::InvalidKey { .. }
            | BackendError::UnsafePath { .. }
            | BackendError::InvalidOutput { .. }
            | BackendError::InvalidInput { .. }
            | BackendError::Workspace { .. } => Fault::Caller,
            _ => Fault::Cache,
        }
    }

    /// Shorthand for `self.fault() == Fault::Cache`: the task should run uncached, and
    /// the tier's health is in question ([`crate::CircuitBreaker`] counts these only).
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

    /// A `PermissionDenied` error with a message.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        BackendError::PermissionDenied(Detail::new(message))
    }

    /// A `Rejected` error with a message.
    pub fn rejected(message: impl Into<String>) -> Self {
        BackendError::Rejected(Detail::new(message))
    }

    /// A `Workspace` error: `operation` on `path` in the caller's workspace failed.
    pub fn workspace(
        operation: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        BackendError::Workspace {
            operation,
            path: path.into(),
            source,
        }
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
            BackendError::Rejected(_) => "rejected",
            BackendError::PermissionDenied(_) => "permission_denied",
            BackendError::Workspace { .. } => "workspace",
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
