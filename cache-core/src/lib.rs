//! # cache-core: the contract every taskcache backend stands on
//!
//! CI executors skip tasks whose inputs have not changed by caching each task's
//! result (exit code, logs, output files) under a digest of its inputs. This crate
//! holds everything that must be the same whatever the storage is:
//!
//! * [`CacheBackend`]: the async trait executors call. [`CacheBackend::lookup`] returns
//!   a [`Hit`], a value whose [`Hit::restore`] and [`Hit::logs`] replay exactly the
//!   record that was found; the origin's `check` / `restore_outputs` / `get_logs` are
//!   provided on top. With [`CachePolicy`] and the [`Task`] description.
//! * [`Digest`] and [`TaskKeyBuilder`]: validated keys and the documented task-digest
//!   encoding; [`TaskKeyBuilder::from_task`] is the key the `taskcache` command
//!   computes for the same task, and names the [`Platform`] unless told not to.
//! * [`RelPath`] and [`Workspace`]: the one audited routine that writes outputs
//!   into a workspace, refusing anything that would land outside it.
//! * [`storage::Storage`] and [`Cache`]: a backend implements the small `Storage` trait
//!   (entries, blobs, recency, health) and `Cache` does everything else: policy, key
//!   checks, publish order, digest verification, every workspace write.
//! * [`BackendError`] and [`Fault`]: who owns an error decides what happens: the
//!   cache's fault runs the task uncached, a refused permission stops writing a tier
//!   that is still read, the caller's is returned to be fixed.
//! * Combinators: [`Tiered`], [`Instrumented`], [`CircuitBreaker`]; [`layer`] for
//!   your own, around a hit's restores and log reads.
//!
//! * [`collect_outputs`]: the one walk from a task's declared output paths to the
//!   outputs handed to `store` (directories, files streamed from disk, safe symlinks;
//!   escapes, special files and missing outputs refused by name).
//! * [`Deadline`]: every cache call bounded, so a hung cache costs one timeout.
//! * [`cancel`]: a call that is dropped or times out writes nothing afterwards, so an
//!   executor may run the task as soon as it gives up on the cache.
//!
//! It depends on no async runtime and no network crate.
//!
//! The crate root is for executors; [`storage`] is for backend authors.
//!
//! ## Using a backend from an executor
//!
//! A hit is a value: [`CacheBackend::lookup`] returns a [`Hit`] whose exit code,
//! outputs and logs come from one record. Cache faults ([`BackendError::fault`]) never
//! fail the task: it runs uncached.
//!
//! ```no_run
//! use cache_core::{CacheBackend, CacheEntry, Task, TaskKeyBuilder, DigestAlgorithm};
//! use std::path::Path;
//!
//! async fn run_cached(cache: &dyn CacheBackend, task: &Task, ws: &Path) -> cache_core::BackendResult<i32> {
//!     // The key `taskcache key` prints for the same task (this platform's).
//!     let key = TaskKeyBuilder::from_task(task, DigestAlgorithm::Blake3).build(ws)?;
//!     let policy = cache_core::effective_policy(task, None);
//!     let replayed = async {
//!         let Some(hit) = cache.lookup(task, &key, policy).await? else { return Ok(None) };
//!         // A cached failure is replayed only by an executor that caches failures.
//!         if !hit.is_accepted(false) { return Ok(None) }
//!         // Logs first (bounded), then the outputs, and only then anything shown.
//!         let (stdout, stderr) = hit.logs().await?;
//!         hit.restore(ws).await?;
//!         let (out, err) = (&stdout.unwrap_or_default(), &stderr.unwrap_or_default());
//!         // Interleaved as the task wrote them.
//!         cache_core::replay_logs(out, err, hit.log_order(), &mut std::io::stdout(), &mut std::io::stderr());
//!         Ok::<_, cache_core::BackendError>(Some(hit.exit_code()))
//!     };
//!     match replayed.await {
//!         Ok(Some(code)) => return Ok(code),
//!         Ok(None) => {}
//!         // The cache's fault or a refused permission: run uncached.
//!         Err(e) if e.fault() != cache_core::Fault::Caller => {}
//!         Err(e) => return Err(e),
//!     }
//!     // ... run the task, then collect its declared outputs (blocking: in an async
//!     // executor, on a blocking thread) and store them under the same key (a failed
//!     // store is a warning, never the task's failure):
//!     let outputs = task.collect_outputs(ws)?;
//!     let entry = CacheEntry { exit_code: 0, outputs, ..CacheEntry::default() };
//!     if let Err(e) = cache.store_key(task, &key, &entry, policy).await {
//!         eprintln!("warning: not cached: {e}");
//!     }
//!     Ok(0)
//! }
//! ```
//!
//! Cancelling is dropping: drop a call's future (or let a [`Deadline`] time it out)
//! and its blocking work stops; once the drop returns nothing more of a restore lands
//! in the workspace and a store publishes nothing ([`cancel`]), so the task can run
//! and write its outputs at once.
//!
//! On a miss, collect the declared outputs with [`Task::collect_outputs`] (blocking: run
//! it on a blocking thread) and put them in the [`CacheEntry`], stored with
//! [`CacheBackend::store_key`] under the key the lookup used. A failed store is a
//! warning, never the task's failure, whoever is at fault: the task already ran.
//!
//! The conveniences above are what the `taskcache` command itself does, so an executor
//! using them replays and stores exactly as the command would: [`Hit::is_accepted`]
//! ([`accepts_cached_exit`]: a cached failure is replayed only when failures are
//! cached), [`replay_logs`] / [`Hit::replay_logs`] (the recorded interleaving of stdout
//! and stderr), [`Task::collect_outputs`], [`CacheBackend::store_key`]. A whole
//! executor built from these docs is `examples/executor` in the repository.
//!
//! ## Who owns a fault
//!
//! [`BackendError::fault`] names one of three owners, and each has its own answer:
//!
//! * [`Fault::Cache`]: the storage failed (I/O, a server down or slow, a corrupt entry,
//!   a request the server rejected). Degrade: the task runs uncached, and the fault
//!   counts towards the tier's outages ([`CircuitBreaker`] counts only these; an
//!   outage, [`BackendError::is_outage`], can open it at once).
//! * [`Fault::Permission`]: the tier answered and refuses this caller (HTTP 401/403,
//!   gRPC `PERMISSION_DENIED`, a read-only REAPI cache). Not an outage: keep reading the
//!   tier, stop writing it, say so once ([`Tiered`] does all three).
//! * [`Fault::Caller`]: a bad key, outputs that cannot be cached, a workspace that is
//!   missing or in the way. Return it: another tier would fail the same way.
//!
//! ```
//! use cache_core::{BackendError, Fault};
//!
//! /// What an executor does with a failed cache call.
//! fn answer(e: &BackendError) -> &'static str {
//!     match e.fault() {
//!         Fault::Cache => "run uncached; the tier's breaker counts it",
//!         Fault::Permission => "run (or keep the result) without that tier; keep reading it",
//!         Fault::Caller => "fail: fix what the error names",
//!     }
//! }
//!
//! let down = BackendError::unavailable("grpc://cache:8980 GetActionResult: Unavailable");
//! let read_only = BackendError::permission_denied("the action cache is read-only");
//! let no_workspace = BackendError::workspace(
//!     "open workspace",
//!     "/ci/missing",
//!     std::io::ErrorKind::NotFound.into(),
//! );
//! assert_eq!(answer(&down), "run uncached; the tier's breaker counts it");
//! assert!(down.is_outage() && !read_only.is_outage());
//! assert_eq!(read_only.fault(), Fault::Permission);
//! assert_eq!(no_workspace.fault(), Fault::Caller);
//! // The origin's degradable-vs-hard split stands beside the owners.
//! assert!(down.is_gracefully_degradable() && read_only.is_gracefully_degradable());
//! assert!(!no_workspace.is_gracefully_degradable());
//! ```
//!
//! ## Stacking combinators
//!
//! The usual stack, as the `taskcache` command builds it: a fast local tier in front of
//! a shared one ([`Tiered`]); every tier bounded by [`Deadline`]; the shared tier behind
//! a [`CircuitBreaker`] that skips it after repeated cache faults (timeouts included),
//! so a dead remote costs one deadline, not one per task, while a remote that refuses
//! writes is only no longer written (by [`Tiered`]); [`Instrumented`] outermost to
//! count hits, misses, bytes and errors of the whole.
//!
//! ```
//! use cache_core::{CacheBackend, CircuitBreaker, Deadline, Deadlines, Instrumented, Sleep, Tiered};
//! use std::{sync::Arc, time::Duration};
//!
//! // `sleep` is the executor's timer, e.g. with tokio:
//! // `Arc::new(|d| Box::pin(tokio::time::sleep(d)))`.
//! fn stack(fast: Arc<dyn CacheBackend>, shared: Arc<dyn CacheBackend>, sleep: Sleep) -> Instrumented {
//!     let limits = Deadlines::new(Duration::from_secs(10));
//!     let fast = Arc::new(Deadline::new(fast, limits, sleep.clone()));
//!     let shared = Arc::new(Deadline::new(shared, limits, sleep));
//!     let shared = Arc::new(CircuitBreaker::new(shared, 3));
//!     Instrumented::new(Arc::new(Tiered::new(fast, shared)))
//! }
//! ```
//!
//! ## Layers of your own, backends of your own
//!
//! A wrapper of your own (metrics, tracing, a deadline, a breaker) is a
//! [`CacheBackend`] around another one; the restores and log reads of the hits it hands
//! out are reached through a [`layer::HitLayer`] added with [`Hit::layered`]: it is
//! given which call and the inner call as a future, and sees its outcome (the bytes it
//! served, or its error). [`Deadline`], [`CircuitBreaker`] and [`Instrumented`] use
//! nothing else. A layer that drops the inner future cancels it ([`cancel`]). Every
//! hit says where it came from ([`Hit::source`]: the [`HitTier`] of a [`Tiered`],
//! the backend, the stored run's duration, its bytes).
//!
//! ```
//! use cache_core::layer::{HitCall, HitFuture, HitLayer};
//! use cache_core::Hit;
//!
//! /// Logs every restore and log read of the hits it is added to.
//! struct Traced;
//!
//! impl HitLayer for Traced {
//!     fn wrap<'a>(&'a self, hit: &'a Hit, call: HitCall, inner: HitFuture<'a>) -> HitFuture<'a> {
//!         Box::pin(async move {
//!             let outcome = inner.await;
//!             match &outcome {
//!                 Ok(served) => tracing::info!(key = %hit.key(), call = call.op.name(), bytes = served.bytes, "served"),
//!                 Err(e) => tracing::warn!(key = %hit.key(), call = call.op.name(), error = %e, "failed"),
//!             }
//!             outcome
//!         })
//!     }
//! }
//! // In your `CacheBackend::lookup`: `Ok(found.map(|hit| hit.layered(Arc::new(Traced))))`.
//! ```
//!
//! A backend of your own implements [`storage::Storage`] (entries and blobs) and is
//! served as a [`CacheBackend`] by [`Cache<S>`](Cache), which makes its [`Hit`]s: a hit
//! is only ever made from a record `Cache` has validated, so there is no public
//! constructor. A [`CacheBackend`] of your own with rules of its own (what it stores,
//! where it looks) delegates its `lookup` to a `Cache<S>` (or any other backend) and
//! adds its layer to the hits; `cache-core/tests/layering.rs` does both outside the
//! crate and runs the result behind [`Deadline`] and [`Tiered`].

mod backend;
mod blobfile;
mod blocking;
mod breaker;
mod cache;
pub mod cancel;
mod collect;
mod combinators;
mod deadline;
mod digest;
mod dirtemp;
mod error;
mod hit;
mod key;
pub mod layer;
pub mod mode;
mod path;
mod pending;
mod policy;
mod record;
mod replay;
pub mod sign;
mod source;
pub mod storage;
mod task;
mod window;
mod workspace;

pub use backend::{
    CacheBackend, CacheEntry, CacheLookupResult, CacheOutput, LogBytes, OutputContent,
};
pub use blocking::{Job, Spawner, thread_per_job};
pub use breaker::CircuitBreaker;
pub use cache::Cache;
pub use collect::{collect_outputs, collect_outputs_with};
pub use combinators::{Instrumented, Metrics, Tiered, TieredStats};
pub use deadline::{Deadline, Deadlines, Sleep};
pub use digest::{BlobRef, Digest, DigestAlgorithm, Hasher};
pub use error::{BackendError, BackendResult, BoxError, Detail, Fault};
pub use hit::{Hit, MAX_LOG_BYTES};
pub use key::{InputFile, KEY_FORMAT_VERSION, Platform, TaskKeyBuilder};
pub use path::{
    MAX_PATH_BYTES, MAX_PATH_DEPTH, OutputKind, RelPath, check_absolute_symlink_target,
    check_layout, check_symlink_target,
};
pub use policy::{CachePolicy, effective_policy, policy_allows_read, policy_allows_write};
pub use record::LogStream;
pub use replay::{Replayed, accepts_cached_exit, replay_logs};
pub use source::{HitSource, HitTier};
pub use task::{OutputType, Task, TaskOutput};
pub use workspace::{PendingFile, Workspace};

/// The origin's name for the task type.
pub type IRTask = Task;
