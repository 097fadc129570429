//! # cache-testkit: the conformance suite every taskcache backend runs
//!
//! A backend is correct when it passes the [`cases`] here: policy handling, round trips
//! of every kind of output, restore semantics, keys, misses and degradation, hostile and
//! corrupt data, concurrency, and a model-based test against the reference backend. Each
//! case is a plain `async fn(Harness)`, in the manner of `object_store`'s shared
//! integration functions, and [`conformance_suite!`] turns all of them into one named
//! `#[test]` each, so a failure names the behaviour that broke.
//!
//! ## Running the suite against your backend
//!
//! In your backend crate, add `cache-testkit` as a dev-dependency and write a test file
//! (say `tests/conformance.rs`) with an async function that builds a fresh backend:
//!
//! ```
//! async fn harness() -> cache_testkit::Harness {
//!     cache_testkit::MemoryBackend::new().harness() // your backend here
//! }
//! cache_testkit::conformance_suite!(harness);
//! # fn main() {}
//! ```
//!
//! A backend built on [`cache_core::storage::Storage`] gets its harness from
//! [`Harness::from_storage`], which wraps the storage in a [`CountingStorage`] (so the
//! policy cases can prove some calls do no I/O) and in [`cache_core::Cache`]:
//!
//! ```
//! # use std::sync::Arc;
//! # use cache_testkit::{Harness, MemoryStorage};
//! async fn harness() -> Harness {
//!     let dir = tempfile::tempdir().unwrap();
//!     let storage = MemoryStorage::new(); // e.g. MyStorage::open(dir.path())
//!     let tamper = Arc::new(storage.clone()); // e.g. MyTamper::new(dir.path())
//!     Harness::from_storage(storage, tamper).with_guard(dir)
//! }
//! # cache_testkit::conformance_suite!(harness);
//! # fn main() {}
//! ```
//!
//! The harness also needs a [`Tamper`]: test-only access to the backend's stored bytes,
//! with which the hostile-data cases plant garbage, flip blob bytes and delete blobs.
//!
//! ## Also in this crate
//!
//! * [`MemoryBackend`] ([`MemoryStorage`] in a [`cache_core::Cache`]): the reference
//!   backend, fully conformant, for executors' unit tests.
//! * [`FaultyBackend`] and [`FaultyStorage`]: fail every call, the Nth call or the
//!   first N calls with a chosen error, or add latency, to test degradation paths.
//! * [`Brake`] and [`ManualClock`]: hold a storage's blob bytes mid-transfer, and fire
//!   a [`cache_core::Deadline`] exactly when a test says, for the cancellation cases.
//! * [`loopback`]: a tiny HTTP server on 127.0.0.1 that answers as a test says (an
//!   object store that lists forever, never answers, refuses), for network backends.
//! * [`refusal::read_only_tier`]: what a tier that refuses writes by permission (a
//!   read-only token or cache) must do, behind `Tiered` and a breaker: stores refused
//!   as [`cache_core::Fault::Permission`], sent once, reads still served.
//! * [`fixtures`]: temporary workspaces that notice writes outside them, output trees
//!   with known bytes, snapshots of restored trees and their comparison, hostile entries.
//!
//! ## Mutants that cannot be written
//!
//! `tests/mutants.rs` shows broken backends failing named cases. Two mutants of the v1
//! contract cannot be written against v2 at all, which is the point of its design:
//!
//! **A storage that writes the workspace itself** (v1's `restore_files` could call
//! `fs::write` and skip the verified writer). A [`cache_core::storage::Storage`] is
//! never told where a workspace is; it has no method that could receive one:
//!
//! ```compile_fail,E0407
//! # use cache_core::storage::*; use cache_core::*; use std::{path::Path, sync::Arc};
//! struct WritesItself(cache_testkit::MemoryStorage);
//! #[async_trait::async_trait]
//! impl Storage for WritesItself {
//! #   fn name(&self) -> &'static str { "x" }
//! #   async fn get_entry(&self, k: &EntryKey) -> BackendResult<Option<StoredEntry>> { self.0.get_entry(k).await }
//! #   async fn put_entry(&self, k: &EntryKey, r: Arc<ActionRecord>) -> BackendResult<()> { self.0.put_entry(k, r).await }
//! #   async fn remove_entry(&self, k: &EntryKey) -> BackendResult<()> { self.0.remove_entry(k).await }
//! #   async fn find_missing_blobs(&self, b: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>> { self.0.find_missing_blobs(b).await }
//! #   async fn put_blobs(&self, s: Vec<BlobSource>, a: Option<DigestAlgorithm>) -> BackendResult<Vec<BlobRef>> { self.0.put_blobs(s, a).await }
//! #   async fn open_blobs(&self, b: Vec<BlobRef>) -> BackendResult<Vec<Option<BlobSource>>> { self.0.open_blobs(b).await }
//! #   async fn remove_blob(&self, b: &BlobRef) -> BackendResult<()> { self.0.remove_blob(b).await }
//! #   async fn touch(&self, k: &EntryKey) -> BackendResult<()> { self.0.touch(k).await }
//! #   async fn health_check(&self) -> BackendResult<()> { self.0.health_check().await }
//!     // error[E0407]: method `restore_files` is not a member of trait `Storage`
//!     async fn restore_files(&self, workspace: &Path) -> BackendResult<()> {
//!         std::fs::write(workspace.join("out"), b"unverified").map_err(BackendError::Io)
//!     }
//! }
//! ```
//!
//! **A wrapper that drops a method** (v1's wrappers had to remember to forward
//! `lookup`, `restore` and `lookup_discarded`, or silently lost hit counts and
//! recency). Every `Storage` method is required, so forgetting one does not compile:
//!
//! ```compile_fail,E0046
//! # use cache_core::storage::*; use cache_core::*; use std::sync::Arc;
//! struct ForgetsTouch<S>(S);
//! #[async_trait::async_trait]
//! impl<S: Storage> Storage for ForgetsTouch<S> {
//!     fn name(&self) -> &'static str { self.0.name() }
//!     async fn get_entry(&self, k: &EntryKey) -> BackendResult<Option<StoredEntry>> { self.0.get_entry(k).await }
//!     async fn put_entry(&self, k: &EntryKey, r: Arc<ActionRecord>) -> BackendResult<()> { self.0.put_entry(k, r).await }
//!     async fn remove_entry(&self, k: &EntryKey) -> BackendResult<()> { self.0.remove_entry(k).await }
//!     async fn find_missing_blobs(&self, b: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>> { self.0.find_missing_blobs(b).await }
//!     async fn put_blobs(&self, s: Vec<BlobSource>, a: Option<DigestAlgorithm>) -> BackendResult<Vec<BlobRef>> { self.0.put_blobs(s, a).await }
//!     async fn open_blobs(&self, b: Vec<BlobRef>) -> BackendResult<Vec<Option<BlobSource>>> { self.0.open_blobs(b).await }
//!     async fn remove_blob(&self, b: &BlobRef) -> BackendResult<()> { self.0.remove_blob(b).await }
//!     // error[E0046]: not all trait items implemented, missing: `touch`
//!     async fn health_check(&self) -> BackendResult<()> { self.0.health_check().await }
//! }
//! ```
//!
//! The same wrapper with every method forwarded compiles, so the two examples above
//! fail for the reason given and no other:
//!
//! ```
//! # use cache_core::storage::*; use cache_core::*; use std::sync::Arc;
//! struct ForwardsAll<S>(S);
//! #[async_trait::async_trait]
//! impl<S: Storage> Storage for ForwardsAll<S> {
//!     fn name(&self) -> &'static str { self.0.name() }
//!     async fn get_entry(&self, k: &EntryKey) -> BackendResult<Option<StoredEntry>> { self.0.get_entry(k).await }
//!     async fn put_entry(&self, k: &EntryKey, r: Arc<ActionRecord>) -> BackendResult<()> { self.0.put_entry(k, r).await }
//!     async fn remove_entry(&self, k: &EntryKey) -> BackendResult<()> { self.0.remove_entry(k).await }
//!     async fn find_missing_blobs(&self, b: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>> { self.0.find_missing_blobs(b).await }
//!     async fn put_blobs(&self, s: Vec<BlobSource>, a: Option<DigestAlgorithm>) -> BackendResult<Vec<BlobRef>> { self.0.put_blobs(s, a).await }
//!     async fn open_blobs(&self, b: Vec<BlobRef>) -> BackendResult<Vec<Option<BlobSource>>> { self.0.open_blobs(b).await }
//!     async fn remove_blob(&self, b: &BlobRef) -> BackendResult<()> { self.0.remove_blob(b).await }
//!     async fn touch(&self, k: &EntryKey) -> BackendResult<()> { self.0.touch(k).await }
//!     async fn health_check(&self) -> BackendResult<()> { self.0.health_check().await }
//! }
//! let _ = ForwardsAll(cache_testkit::MemoryStorage::new());
//! ```
//!
//! Cases need a multi-threaded tokio runtime (the macro makes one per test, like
//! `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`), and touch only
//! temporary directories. The cases are not sandboxed: run them only against a backend
//! (bucket, server, directory) you can afford to fill with test data.

use async_trait::async_trait;
use cache_core::storage::Storage;
use cache_core::{BackendResult, BlobRef, Cache, CacheBackend, Digest};
use std::sync::Arc;

mod brake;
pub mod cases;
mod clock;
mod fault;
pub mod fixtures;
pub mod fuzz;
mod io;
pub mod loopback;
mod memory;
pub mod refusal;

pub use brake::{Brake, BrakedStorage};
pub use clock::ManualClock;
pub use fault::{
    BackendOp, FaultError, FaultInjector, FaultPlan, FaultyBackend, FaultyStorage, StorageOp,
    Trigger,
};
pub use io::{CountingStorage, IoCounter, IoSnapshot};
pub use memory::{MemoryBackend, MemoryStorage};

/// Runs a [`cache_core::Cache`]'s blocking jobs on tokio's blocking pool:
/// `Cache::new(storage, cache_testkit::spawn_blocking)`.
pub fn spawn_blocking(job: cache_core::Job) {
    tokio::task::spawn_blocking(job);
}

/// tokio's timer as a [`cache_core::Sleep`], for [`cache_core::Deadline`].
pub fn tokio_sleep() -> cache_core::Sleep {
    Arc::new(|d| Box::pin(tokio::time::sleep(d)))
}

/// Test-only access to a backend's stored bytes, so the suite can plant hostile and
/// corrupt data. Each backend implements it in its own tests.
#[async_trait]
pub trait Tamper: Send + Sync {
    /// Stores `bytes` verbatim as the encoded entry for `key` (bypassing encoding).
    async fn write_raw_entry(&self, key: &Digest, bytes: Vec<u8>) -> BackendResult<()>;
    /// The stored bytes of the entry for `key`, `None` if there is none.
    async fn read_raw_entry(&self, key: &Digest) -> BackendResult<Option<Vec<u8>>>;
    /// Flips one byte of the stored content of `blob`, keeping its address.
    async fn flip_blob_byte(&self, blob: &BlobRef) -> BackendResult<()>;
    /// Deletes the stored content of `blob`.
    async fn delete_blob(&self, blob: &BlobRef) -> BackendResult<()>;
}

/// What a backend can do beyond the core behaviour every backend must have.
///
/// Capabilities tell the suite what to expect; they never skip core behaviour.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Capabilities {
    /// The backend evicts entries on its own (size bound): where the model test
    /// expects a hit it then also accepts a miss, never wrong data.
    pub eviction: bool,
    /// The platform can restore symlinks (Unix). Without it, symlink outputs are
    /// left out of the round-trip cases.
    pub symlinks: bool,
    /// The most memory, in bytes, the backend documents its transfers holding at once
    /// in one process, however many calls run (beyond `Cache`'s own window budget,
    /// [`cache_core::storage::WINDOW_BUDGET`]). Default 0.
    pub memory_per_process: u64,
    /// What it documents each call in flight holding besides. Default 0.
    pub memory_per_call: u64,
    /// The backend keeps what it stores in this process's memory (an in-memory
    /// store, an in-process server): the memory case allows for the bytes stored.
    pub in_process_data: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            eviction: false,
            symlinks: cfg!(unix),
            memory_per_process: 0,
            memory_per_call: 0,
            in_process_data: false,
        }
    }
}

impl Capabilities {
    /// Declares that the backend evicts entries on its own.
    #[must_use]
    pub fn with_eviction(mut self, eviction: bool) -> Self {
        self.eviction = eviction;
        self
    }

    /// Declares whether symlinks can be restored.
    #[must_use]
    pub fn with_symlinks(mut self, symlinks: bool) -> Self {
        self.symlinks = symlinks;
        self
    }

    /// Declares the backend's documented memory bounds for concurrent transfers: per
    /// process ([`Capabilities::memory_per_process`]) and per call in flight
    /// ([`Capabilities::memory_per_call`]).
    #[must_use]
    pub fn with_memory_bound(mut self, per_process: u64, per_call: u64) -> Self {
        self.memory_per_process = per_process;
        self.memory_per_call = per_call;
        self
    }

    /// Declares that the backend keeps what it stores in this process's memory.
    #[must_use]
    pub fn with_in_process_data(mut self, in_process: bool) -> Self {
        self.in_process_data = in_process;
        self
    }
}

/// A backend under test, with what the suite needs to plant data in it and to watch
/// its I/O.
pub struct Harness {
    /// The backend.
    pub backend: Arc<dyn CacheBackend>,
    /// Raw access for hostile-data cases.
    pub tamper: Arc<dyn Tamper>,
    /// Counts the backend's storage calls (see [`IoCounter`]).
    pub io: IoCounter,
    /// Declared capabilities.
    pub capabilities: Capabilities,
    /// Kept alive while the test runs (temporary directories, servers).
    pub guard: Box<dyn std::any::Any + Send + Sync>,
    /// The same backend over the same storage, signing with a key and/or trusting
    /// keys (set for backends built on [`cache_core::Cache`]; the signed-entry case
    /// needs it).
    pub signing: Option<SigningBackend>,
    /// Holds the backend's blob bytes on command (set by [`Harness::from_storage`]:
    /// the storage is wrapped in a [`BrakedStorage`]); the cancellation cases need it.
    pub brake: Option<Brake>,
}

/// Builds a [`Harness`]'s backend again, over the same storage, with a signer and/or
/// trusted keys.
pub type SigningBackend = Arc<
    dyn Fn(
            Option<cache_core::sign::SigningKey>,
            Option<Vec<cache_core::sign::PublicKey>>,
        ) -> Arc<dyn CacheBackend>
        + Send
        + Sync,
>;

/// The [`SigningBackend`] of a [`Cache`]: clones share its storage.
pub fn signing_backend<S: Storage>(cache: Cache<S>) -> SigningBackend {
    Arc::new(move |signer, trusted| {
        let mut c = cache.clone();
        if let Some(key) = signer {
            c = c.with_signer(key);
        }
        if let Some(keys) = trusted {
            c = c.with_trusted_keys(keys);
        }
        Arc::new(c) as Arc<dyn CacheBackend>
    })
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("backend", &self.backend.name())
            .field("io", &self.io.snapshot())
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

impl Harness {
    /// A harness over any backend. `io` must count the backend's storage calls.
    pub fn new(backend: Arc<dyn CacheBackend>, tamper: Arc<dyn Tamper>, io: IoCounter) -> Self {
        Harness {
            backend,
            tamper,
            io,
            capabilities: Capabilities::default(),
            guard: Box::new(()),
            signing: None,
            brake: None,
        }
    }

    /// A harness over a [`Storage`]: the backend is
    /// `Cache<CountingStorage<BrakedStorage<S>>>`.
    pub fn from_storage<S: Storage>(storage: S, tamper: Arc<dyn Tamper>) -> Self {
        let io = IoCounter::new();
        let brake = Brake::new();
        let storage = BrakedStorage::new(storage, brake.clone());
        let backend = Cache::new(CountingStorage::new(storage, io.clone()), spawn_blocking);
        let mut h = Harness::new(Arc::new(backend.clone()), tamper, io);
        h.signing = Some(signing_backend(backend));
        h.brake = Some(brake);
        h
    }

    /// Sets the declared capabilities.
    #[must_use]
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Keeps `guard` alive as long as the harness (a temporary directory, a server).
    #[must_use]
    pub fn with_guard(mut self, guard: impl std::any::Any + Send + Sync) -> Self {
        self.guard = Box::new(guard);
        self
    }
}

/// Runs one case against a fresh harness from `make`, on a new multi-threaded tokio
/// runtime with two workers (what [`conformance_suite!`] expands to for each case).
///
/// # Panics
///
/// When the case fails (that is how it reports), or the runtime cannot be built.
pub fn run_case<M, MF, C, CF>(make: M, case: C)
where
    M: FnOnce() -> MF,
    MF: std::future::Future<Output = Harness>,
    C: FnOnce(Harness) -> CF,
    CF: std::future::Future<Output = ()>,
{
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime")
        .block_on(async move { case(make().await).await });
}

/// Expands to one `#[test]` per conformance case, each running the case against a
/// fresh harness from the given `async fn() -> Harness`.
///
/// ```
/// async fn harness() -> cache_testkit::Harness {
///     cache_testkit::MemoryBackend::new().harness()
/// }
/// cache_testkit::conformance_suite!(harness);
/// # fn main() {}
/// ```
///
/// The tests are named after the functions in [`cases`] (`policy_readonly`,
/// `hostile_flipped_blob_byte`, ...), so put the macro in its own test file or module.
#[macro_export]
macro_rules! conformance_suite {
    ($make:path) => {
        $crate::conformance_suite!(@list tests ($make));
    };
    (@list $mode:ident $args:tt) => {
        $crate::conformance_suite!(@$mode $args [
            policy_normal
            policy_readonly
            policy_writeonly
            policy_disabled
            round_trip_exit_code_and_duration
            round_trip_logs_absent_and_empty
            round_trip_logs_multiline_and_binary
            round_trip_logs_8mib
            round_trip_log_order
            round_trip_every_output_kind
            round_trip_returned_outputs
            round_trip_1000_small_files
            round_trip_256mib_file_from_disk
            restore_into_non_empty_workspace
            restore_sets_and_clears_exec_bit
            restore_twice_is_idempotent
            restore_into_fresh_workspace
            restore_replaces_file_symlink_without_following
            restore_over_matching_files
            keys_dedup_is_invisible
            keys_overwrite_last_write_wins
            keys_invalid_are_refused_and_touch_nothing
            keys_algorithms_are_distinct
            miss_unknown_key
            degradation_tiered_with_failing_shared_tier
            degradation_backend_as_shared_tier
            degradation_executor_runs_the_task_when_the_cache_fails
            degradation_hung_backend_costs_one_deadline
            hostile_parent_dir_paths
            hostile_absolute_paths
            hostile_symlink_targets_leaving_workspace
            hostile_symlink_chains_leaving_workspace
            hostile_existing_symlink_to_outside
            hostile_garbage_entries
            hostile_oversized_entry
            hostile_huge_declared_blob_size
            hostile_flipped_blob_byte
            hostile_flipped_big_blob_leaves_no_temp_file
            hostile_flipped_log_blob
            hostile_flipped_blob_is_repaired_by_next_store
            hostile_flipped_blob_readonly_deletes_nothing
            hostile_deleted_blob
            hostile_deleted_log_blob
            hostile_undeclared_outputs
            store_refuses_undeclared_outputs
            hostile_newer_format_entry_is_left_in_place
            hostile_huge_declared_log
            hostile_adversarial_entries
            hostile_unsigned_and_forged_entries
            trust_absolute_symlinks_only_when_opted_in
            concurrent_stores_and_readers
            cancel_restore_dropped_midway
            cancel_restore_timed_out_keeps_callers_outputs
            cancel_store_dropped_midway
            cancel_import_dropped_midway
            cancel_logs_dropped_midway
            concurrent_transfers_stay_within_memory_bound
            model_state_machine
            health_check_succeeds
            name_is_stable
        ]);
    };
    (@tests ($make:path) [$($case:ident)*]) => {
        $(
            #[test]
            fn $case() {
                $crate::run_case($make, $crate::cases::$case);
            }
        )*
    };
    (@table () [$($case:ident)*]) => {
        /// Every case, in the order [`conformance_suite!`](crate::conformance_suite) lists them.
        pub const ALL: &[$crate::cases::Case] = &[$(
            $crate::cases::Case {
                name: stringify!($case),
                run: |h| ::std::boxed::Box::pin($crate::cases::$case(h)),
            }
        ),*];
    };
}
