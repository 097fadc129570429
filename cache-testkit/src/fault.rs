//! Fault injection: wrappers that make a backend (or a storage) fail chosen calls with
//! a chosen error, or answer slowly.

use async_trait::async_trait;
use cache_core::storage::{ActionRecord, BlobSource, EntryKey, Storage, StoredEntry};
use cache_core::{
    BackendError, BackendResult, BlobRef, CacheBackend, CacheEntry, CacheLookupResult, CacheOutput,
    CachePolicy, Digest, DigestAlgorithm, Hit, LogBytes, Task,
};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Which of the calls a [`FaultPlan`] selects are failed. Calls are numbered from 1,
/// counting only the operations the plan selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// No call fails (latency still applies).
    Never,
    /// Every call fails.
    Always,
    /// Only call number `n` fails.
    Nth(u64),
    /// The first `n` calls fail, then the backend recovers.
    FirstN(u64),
    /// Every call from number `n` on fails: the backend goes down and stays down.
    FromNth(u64),
}

impl Trigger {
    fn fires(self, call: u64) -> bool {
        match self {
            Trigger::Never => false,
            Trigger::Always => true,
            Trigger::Nth(n) => call == n,
            Trigger::FirstN(n) => call <= n,
            Trigger::FromNth(n) => call >= n,
        }
    }
}

/// The error an injected fault returns.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultError {
    /// [`BackendError::Unavailable`] (degradable).
    Unavailable,
    /// [`BackendError::Connection`] (degradable).
    Connection,
    /// [`BackendError::Io`] of this kind (hard).
    Io(std::io::ErrorKind),
    /// [`BackendError::DigestMismatch`] (hard).
    DigestMismatch,
    /// [`BackendError::CorruptEntry`] (hard).
    CorruptEntry,
    /// [`BackendError::BlobNotFound`] (hard).
    BlobNotFound,
    /// [`BackendError::ActionNotFound`] (degradable).
    ActionNotFound,
    /// [`BackendError::Serialization`] (hard).
    Serialization,
    /// [`BackendError::PermissionDenied`] ([`cache_core::Fault::Permission`],
    /// degradable): a tier that refuses this caller, such as a read-only token's
    /// `store` (`FaultPlan::always(..).only([BackendOp::Store, BackendOp::Import])`).
    PermissionDenied,
    /// No error: the call panics (a bug in a backend or a library under it), for
    /// testing that a panic in a cache call never escapes to the task.
    Panic,
}

impl FaultError {
    /// Builds the error for a failed call of `op`.
    ///
    /// # Panics
    ///
    /// For [`FaultError::Panic`], which fails the call by panicking.
    #[must_use]
    pub fn to_error(&self, op: &str) -> BackendError {
        let what = format!("fault injected into {op}");
        // Typed fields get a recognisable digest of the message.
        let digest = DigestAlgorithm::Blake3.digest(what.as_bytes());
        let blob = BlobRef { digest, size: 0 };
        match self {
            FaultError::Unavailable => BackendError::Unavailable(what.into()),
            FaultError::Connection => BackendError::Connection(what.into()),
            FaultError::Io(kind) => BackendError::Io(std::io::Error::new(*kind, what)),
            FaultError::DigestMismatch => BackendError::DigestMismatch {
                expected: blob,
                actual: BlobRef { digest, size: 1 },
            },
            FaultError::CorruptEntry => BackendError::CorruptEntry {
                key: digest,
                reason: what,
            },
            FaultError::BlobNotFound => BackendError::BlobNotFound { digest: blob },
            FaultError::ActionNotFound => BackendError::ActionNotFound { digest },
            FaultError::Serialization => BackendError::Serialization(what.into()),
            FaultError::PermissionDenied => BackendError::PermissionDenied(what.into()),
            FaultError::Panic => panic!("{what}: a panic"),
        }
    }
}

/// The operations of a [`CacheBackend`], for [`FaultPlan::only`] on a [`FaultyBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendOp {
    /// `lookup`.
    Lookup,
    /// `import`.
    Import,
    /// `check`.
    Check,
    /// `store`.
    Store,
    /// `restore_outputs`.
    RestoreOutputs,
    /// `get_log_bytes` (and so `get_logs`).
    GetLogBytes,
    /// `health_check`.
    HealthCheck,
}

/// The operations of a [`Storage`], for [`FaultPlan::only`] on a [`FaultyStorage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageOp {
    /// `get_entry`.
    GetEntry,
    /// `put_entry`.
    PutEntry,
    /// `remove_entry`.
    RemoveEntry,
    /// `find_missing_blobs`.
    FindMissingBlobs,
    /// `put_blobs`.
    PutBlobs,
    /// `open_blobs`.
    OpenBlobs,
    /// `remove_blob`.
    RemoveBlob,
    /// `touch`.
    Touch,
    /// `health_check`.
    HealthCheck,
}

/// What to inject: which calls fail ([`Trigger`]) with which error ([`FaultError`]),
/// on which operations, and how much latency to add before each selected call.
#[derive(Debug, Clone)]
pub struct FaultPlan<O> {
    trigger: Trigger,
    error: FaultError,
    ops: Option<Vec<O>>,
    latency: Option<Duration>,
}

impl<O: Copy + PartialEq> FaultPlan<O> {
    /// No faults and no latency: the wrapper passes everything through.
    #[must_use]
    pub fn healthy() -> Self {
        FaultPlan {
            trigger: Trigger::Never,
            error: FaultError::Unavailable,
            ops: None,
            latency: None,
        }
    }

    /// Every call fails with `error`.
    #[must_use]
    pub fn always(error: FaultError) -> Self {
        Self::new(Trigger::Always, error)
    }

    /// Only call number `n` (from 1) fails with `error`.
    #[must_use]
    pub fn nth(n: u64, error: FaultError) -> Self {
        Self::new(Trigger::Nth(n), error)
    }

    /// Calls selected by `trigger` fail with `error`.
    #[must_use]
    pub fn new(trigger: Trigger, error: FaultError) -> Self {
        FaultPlan {
            trigger,
            error,
            ops: None,
            latency: None,
        }
    }

    /// Restricts the plan (faults, call numbering and latency) to these operations.
    #[must_use]
    pub fn only(mut self, ops: impl IntoIterator<Item = O>) -> Self {
        self.ops = Some(ops.into_iter().collect());
        self
    }

    /// Sleeps this long before each selected call (failed or not).
    #[must_use]
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = Some(latency);
        self
    }

    fn selects(&self, op: O) -> bool {
        self.ops.as_ref().is_none_or(|ops| ops.contains(&op))
    }
}

/// The plan and counters of a fault-injecting wrapper ([`FaultyBackend::faults`],
/// [`FaultyStorage::faults`]).
#[derive(Debug)]
pub struct FaultInjector<O> {
    plan: Mutex<FaultPlan<O>>,
    selected: AtomicU64,
    calls: AtomicU64,
    injected: AtomicU64,
}

impl<O: Copy + PartialEq + std::fmt::Debug> FaultInjector<O> {
    fn new(plan: FaultPlan<O>) -> Self {
        FaultInjector {
            plan: Mutex::new(plan),
            selected: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }
    }

    /// Replaces the plan (e.g. the backend comes back up); call numbering restarts.
    pub fn set_plan(&self, plan: FaultPlan<O>) {
        *self.plan.lock().unwrap_or_else(PoisonError::into_inner) = plan;
        self.selected.store(0, Ordering::Relaxed);
    }

    /// Calls that reached the wrapper.
    #[must_use]
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Calls that were failed by the plan.
    #[must_use]
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Calls that were passed on to the wrapped backend or storage.
    #[must_use]
    pub fn forwarded(&self) -> u64 {
        self.calls() - self.injected()
    }

    /// Decides the fate of one call: sleeps if asked, then `Err` if it must fail.
    async fn enter(&self, op: O) -> BackendResult<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let (latency, failure) = {
            let plan = self.plan.lock().unwrap_or_else(PoisonError::into_inner);
            if !plan.selects(op) {
                return Ok(());
            }
            let n = self.selected.fetch_add(1, Ordering::Relaxed) + 1;
            let failure = plan.trigger.fires(n).then(|| plan.error.clone());
            (plan.latency, failure)
        };
        if let Some(d) = latency {
            tokio::time::sleep(d).await;
        }
        match failure {
            Some(e) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                Err(e.to_error(&format!("{op:?}")))
            }
            None => Ok(()),
        }
    }
}

/// A [`CacheBackend`] that fails or delays calls of the backend it wraps according
/// to a [`FaultPlan`]. A failed call is not forwarded (the backend never saw it).
///
/// Executor authors use it to test their degradation path, backend authors to test
/// what sits above their backend ([`cache_core::Tiered`], [`cache_core::CircuitBreaker`]).
///
/// ```
/// use cache_testkit::{BackendOp, FaultError, FaultPlan, FaultyBackend, MemoryBackend};
/// use std::sync::Arc;
///
/// // A shared cache that is down: every call fails with a degradable `Unavailable`.
/// let down = FaultyBackend::new(Arc::new(MemoryBackend::new()), FaultPlan::always(FaultError::Unavailable));
/// // One whose third `store` fails with an I/O error, and that is slow to answer.
/// let flaky = FaultyBackend::new(
///     Arc::new(MemoryBackend::new()),
///     FaultPlan::nth(3, FaultError::Io(std::io::ErrorKind::StorageFull))
///         .only([BackendOp::Store])
///         .with_latency(std::time::Duration::from_millis(20)),
/// );
/// # let _ = (down, flaky);
/// ```
pub struct FaultyBackend {
    inner: Arc<dyn CacheBackend>,
    injector: FaultInjector<BackendOp>,
}

impl std::fmt::Debug for FaultyBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyBackend")
            .field("inner", &self.inner.name())
            .field("injector", &self.injector)
            .finish()
    }
}

impl FaultyBackend {
    /// Wraps `inner` with `plan`.
    pub fn new(inner: Arc<dyn CacheBackend>, plan: FaultPlan<BackendOp>) -> Self {
        FaultyBackend {
            inner,
            injector: FaultInjector::new(plan),
        }
    }

    /// Its plan and counters.
    #[must_use]
    pub fn faults(&self) -> &FaultInjector<BackendOp> {
        &self.injector
    }
}

#[async_trait]
impl CacheBackend for FaultyBackend {
    async fn lookup(
        &self,
        task: &Task,
        key: &Digest,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        self.injector.enter(BackendOp::Lookup).await?;
        self.inner.lookup(task, key, policy).await
    }

    async fn import(
        &self,
        task: &Task,
        hit: &Hit,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        self.injector.enter(BackendOp::Import).await?;
        self.inner.import(task, hit, policy).await
    }

    async fn check(
        &self,
        task: &Task,
        digest: &str,
        policy: CachePolicy,
    ) -> BackendResult<CacheLookupResult> {
        self.injector.enter(BackendOp::Check).await?;
        self.inner.check(task, digest, policy).await
    }

    async fn store(
        &self,
        task: &Task,
        digest: &str,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<()> {
        self.injector.enter(BackendOp::Store).await?;
        self.inner.store(task, digest, entry, policy).await
    }

    async fn restore_outputs(
        &self,
        task: &Task,
        digest: &str,
        workspace: &Path,
    ) -> BackendResult<Vec<CacheOutput>> {
        self.injector.enter(BackendOp::RestoreOutputs).await?;
        self.inner.restore_outputs(task, digest, workspace).await
    }

    async fn get_log_bytes(&self, task: &Task, digest: &str) -> BackendResult<LogBytes> {
        self.injector.enter(BackendOp::GetLogBytes).await?;
        self.inner.get_log_bytes(task, digest).await
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn health_check(&self) -> BackendResult<()> {
        self.injector.enter(BackendOp::HealthCheck).await?;
        self.inner.health_check().await
    }
}

/// A [`Storage`] that fails or delays calls of the storage it wraps according to a
/// [`FaultPlan`], to test what [`cache_core::Cache`] (or any caller) does when, say,
/// publishing the entry fails after the blobs were written.
#[derive(Debug)]
pub struct FaultyStorage<S> {
    inner: S,
    injector: FaultInjector<StorageOp>,
}

impl<S: Storage> FaultyStorage<S> {
    /// Wraps `inner` with `plan`.
    pub fn new(inner: S, plan: FaultPlan<StorageOp>) -> Self {
        FaultyStorage {
            inner,
            injector: FaultInjector::new(plan),
        }
    }

    /// The wrapped storage.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Its plan and counters.
    #[must_use]
    pub fn faults(&self) -> &FaultInjector<StorageOp> {
        &self.injector
    }
}

#[async_trait]
impl<S: Storage> Storage for FaultyStorage<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn get_entry(&self, key: &EntryKey) -> BackendResult<Option<StoredEntry>> {
        self.injector.enter(StorageOp::GetEntry).await?;
        self.inner.get_entry(key).await
    }

    async fn put_entry(&self, key: &EntryKey, record: Arc<ActionRecord>) -> BackendResult<()> {
        self.injector.enter(StorageOp::PutEntry).await?;
        self.inner.put_entry(key, record).await
    }

    async fn remove_entry(&self, key: &EntryKey) -> BackendResult<()> {
        self.injector.enter(StorageOp::RemoveEntry).await?;
        self.inner.remove_entry(key).await
    }

    async fn find_missing_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>> {
        self.injector.enter(StorageOp::FindMissingBlobs).await?;
        self.inner.find_missing_blobs(blobs).await
    }

    async fn put_blobs(
        &self,
        sources: Vec<BlobSource>,
        a: Option<DigestAlgorithm>,
    ) -> BackendResult<Vec<BlobRef>> {
        self.injector.enter(StorageOp::PutBlobs).await?;
        self.inner.put_blobs(sources, a).await
    }

    async fn open_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<Option<BlobSource>>> {
        self.injector.enter(StorageOp::OpenBlobs).await?;
        self.inner.open_blobs(blobs).await
    }

    async fn remove_blob(&self, blob: &BlobRef) -> BackendResult<()> {
        self.injector.enter(StorageOp::RemoveBlob).await?;
        self.inner.remove_blob(blob).await
    }

    async fn touch(&self, key: &EntryKey) -> BackendResult<()> {
        self.injector.enter(StorageOp::Touch).await?;
        self.inner.touch(key).await
    }

    async fn health_check(&self) -> BackendResult<()> {
        self.injector.enter(StorageOp::HealthCheck).await?;
        self.inner.health_check().await
    }
}
