//! # cache-core: the contract every taskcache backend stands on
//!
//! CI executors skip tasks whose inputs have not changed by caching each task's
//! result (exit code, logs, output files) under a digest of its inputs. This crate
//! holds everything that must be the same whatever the storage is:
//!
//! * [`CacheBackend`]: the async trait executors call (`check`, `store`,
//!   `restore_outputs`, `get_logs`), with [`CachePolicy`] and the [`Task`] description.
//! * [`Digest`] and [`TaskKeyBuilder`]: validated keys and the documented task-digest
//!   encoding.
//! * [`RelPath`] and [`Workspace`]: the one audited routine that writes outputs
//!   into a workspace, refusing anything that would land outside it.
//! * [`Storage`] and [`Cache`]: a backend implements the small `Storage` trait and
//!   `Cache` supplies policy, key checks, publish order and digest verification.
//! * Combinators: [`Tiered`], [`Instrumented`], [`CircuitBreaker`].
//!
//! It depends on no async runtime and no network crate.
//!
//! ## Using a backend from an executor
//!
//! ```no_run
//! use cache_core::{CacheBackend, CacheEntry, CachePolicy, Task, TaskKeyBuilder, DigestAlgorithm};
//! use std::path::Path;
//!
//! async fn run_cached(cache: &dyn CacheBackend, task: &Task, ws: &Path) -> cache_core::BackendResult<i32> {
//!     let key = TaskKeyBuilder::from_task(task, DigestAlgorithm::Blake3).build(ws)?.to_string();
//!     let policy = cache_core::effective_policy(task, None);
//!     match cache.check(task, &key, policy).await {
//!         Ok(hit) if hit.hit => {
//!             cache.restore_outputs(task, &key, ws).await?;
//!             let (stdout, _stderr) = cache.get_log_bytes(task, &key).await?;
//!             print!("{}", String::from_utf8_lossy(&stdout.unwrap_or_default()));
//!             return Ok(hit.exit_code.unwrap_or(0));
//!         }
//!         Ok(_) => {}
//!         Err(e) if e.is_gracefully_degradable() => {} // run uncached
//!         Err(e) => return Err(e),
//!     }
//!     // ... run the task, then:
//!     let entry = CacheEntry { exit_code: 0, ..CacheEntry::default() };
//!     cache.store(task, &key, &entry, policy).await?;
//!     Ok(0)
//! }
//! ```

mod backend;
mod combinators;
mod digest;
mod error;
mod key;
mod path;
mod policy;
mod recent;
pub mod record;
pub mod restore;
mod storage;
mod task;
mod workspace;

pub use backend::{
    CacheBackend, CacheEntry, CacheLookupResult, CacheOutput, LogBytes, OutputContent,
};
pub use combinators::{CircuitBreaker, Instrumented, Metrics, Tiered, TieredStats};
#[cfg(unix)]
pub use digest::kernel_copy_hashing;
pub use digest::{
    BlobRef, COPY_BUFFER, Digest, DigestAlgorithm, Hasher, check_blob, copy_hashing, copy_verified,
    hash_reader,
};
pub use error::{BackendError, BackendResult};
pub use key::{InputFile, TaskKeyBuilder};
pub use path::{OutputKind, RelPath, check_layout, check_symlink_target};
pub use policy::{CachePolicy, effective_policy, policy_allows_read, policy_allows_write};
pub use record::{ActionRecord, INLINE_LOG_MAX, LogRecord, MAX_ENTRY_BYTES, OutputRecord};
pub use restore::{Prepared, Restore, Restored, restore_in_steps};
pub use storage::{BlobSource, BlockingJob, Cache, FileRestore, Found, Storage, lookup_in_steps};
pub use task::{OutputType, Task, TaskOutput};
pub use workspace::{PendingFile, Workspace};

/// The origin's name for the task type.
pub type IRTask = Task;
