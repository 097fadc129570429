//! Holding blob bytes on command, so a case can cancel a call while its blocking job is
//! in the middle of a transfer.

use async_trait::async_trait;
use cache_core::storage::{ActionRecord, BlobSource, EntryKey, Storage, StoredEntry};
use cache_core::{BackendResult, BlobRef, DigestAlgorithm};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The most a braked reader hands over per read: a blob takes many reads, so a hold
/// lands in the middle of one.
const CHUNK: usize = 16 << 10;

/// The longest a held read waits for [`Brake::release`]: a case that forgets to release
/// fails instead of hanging the suite.
const HOLD_MAX: Duration = Duration::from_secs(120);

#[derive(Debug, Default)]
struct State {
    /// Readers handed out from now on are braked.
    armed: bool,
    /// Reads that may still pass before every read is held (`None`: no hold).
    pass: Option<u64>,
    /// Reads held right now.
    held: u64,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    released: Condvar,
    /// Reads started on braked readers.
    reads: AtomicU64,
    /// Braked readers not dropped yet.
    live: AtomicU64,
}

/// A switch on the blob bytes of a [`BrakedStorage`]: [`Brake::hold_after`] lets a
/// number of reads through and then holds every read until [`Brake::release`], so a
/// call is caught with its blocking job in the middle of a restore, a store, an import
/// or a log read. Counts the reads started and the readers still alive, so a case can
/// tell that a cancelled job stopped reading and let go of its sources.
///
/// Clones share the switch.
#[derive(Debug, Clone, Default)]
pub struct Brake(Arc<Inner>);

impl Brake {
    /// A brake that is off: sources pass through untouched.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// From now on blob sources (opened for a restore or log read, or handed to a
    /// store) are read in small chunks; the next `reads` reads pass, and every read
    /// after them is held until [`Brake::release`].
    pub fn hold_after(&self, reads: u64) {
        let mut state = self.lock();
        state.armed = true;
        state.pass = Some(reads);
    }

    /// Lets every held read go, and braked readers read freely from now on; sources
    /// handed out later are not braked.
    pub fn release(&self) {
        let mut state = self.lock();
        state.armed = false;
        state.pass = None;
        drop(state);
        self.0.released.notify_all();
    }

    /// Reads started on braked readers so far.
    #[must_use]
    pub fn reads(&self) -> u64 {
        self.0.reads.load(Ordering::SeqCst)
    }

    /// Braked readers not yet dropped (a job that still holds its sources).
    #[must_use]
    pub fn live(&self) -> u64 {
        self.0.live.load(Ordering::SeqCst)
    }

    /// Reads held right now.
    #[must_use]
    pub fn held(&self) -> u64 {
        self.lock().held
    }

    /// Waits until a read is held; `false` if none is within `limit`.
    pub async fn stalled(&self, limit: Duration) -> bool {
        self.wait_for(limit, || self.held() > 0).await
    }

    /// Waits until every braked reader is dropped; `false` if one is still alive
    /// after `limit`.
    pub async fn idle(&self, limit: Duration) -> bool {
        self.wait_for(limit, || self.live() == 0).await
    }

    async fn wait_for(&self, limit: Duration, done: impl Fn() -> bool) -> bool {
        let give_up = Instant::now() + limit;
        while !done() {
            if Instant::now() >= give_up {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// `source`, braked if the brake is armed.
    fn wrap(&self, source: BlobSource) -> BlobSource {
        if !self.lock().armed {
            return source;
        }
        let inner: Box<dyn Read + Send> = match source {
            BlobSource::Bytes(b) => Box::new(std::io::Cursor::new(b)),
            BlobSource::File(path) => Box::new(LazyFile { path, file: None }),
            BlobSource::Reader(r) => r,
        };
        self.0.live.fetch_add(1, Ordering::SeqCst);
        BlobSource::Reader(Box::new(BrakedReader {
            brake: self.clone(),
            inner,
        }))
    }

    /// Called before each read of a braked reader: counts it, and holds it if the brake
    /// says so.
    fn enter_read(&self) -> std::io::Result<()> {
        self.0.reads.fetch_add(1, Ordering::SeqCst);
        let mut state = self.lock();
        match &mut state.pass {
            None => return Ok(()),
            Some(n) if *n > 0 => {
                *n -= 1;
                return Ok(());
            }
            Some(_) => {}
        }
        state.held += 1;
        let give_up = Instant::now() + HOLD_MAX;
        while state.pass.is_some() {
            let Some(left) = give_up.checked_duration_since(Instant::now()) else {
                state.held -= 1;
                return Err(std::io::Error::other("a braked read was never released"));
            };
            state = self
                .0
                .released
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state.held -= 1;
        Ok(())
    }
}

/// A blob file opened on first read.
struct LazyFile {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
}

impl Read for LazyFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.file.is_none() {
            self.file = Some(std::fs::File::open(&self.path)?);
        }
        match &mut self.file {
            Some(f) => f.read(buf),
            None => Ok(0),
        }
    }
}

struct BrakedReader {
    brake: Brake,
    inner: Box<dyn Read + Send>,
}

impl Read for BrakedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.brake.enter_read()?;
        let n = buf.len().min(CHUNK);
        self.inner.read(&mut buf[..n])
    }
}

impl Drop for BrakedReader {
    fn drop(&mut self) {
        self.brake.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A [`Storage`] whose blob sources pass through a [`Brake`]: those `open_blobs`
/// returns and those handed to `put_blobs`. Everything else is forwarded untouched;
/// while the brake is off, so are the sources.
#[derive(Debug)]
pub struct BrakedStorage<S> {
    inner: S,
    brake: Brake,
}

impl<S: Storage> BrakedStorage<S> {
    /// Wraps `inner`; `brake` switches it.
    pub fn new(inner: S, brake: Brake) -> Self {
        BrakedStorage { inner, brake }
    }

    /// The wrapped storage.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

#[async_trait]
impl<S: Storage> Storage for BrakedStorage<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn get_entry(&self, key: &EntryKey) -> BackendResult<Option<StoredEntry>> {
        self.inner.get_entry(key).await
    }

    async fn put_entry(&self, key: &EntryKey, record: Arc<ActionRecord>) -> BackendResult<()> {
        self.inner.put_entry(key, record).await
    }

    async fn remove_entry(&self, key: &EntryKey) -> BackendResult<()> {
        self.inner.remove_entry(key).await
    }

    async fn find_missing_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>> {
        self.inner.find_missing_blobs(blobs).await
    }

    async fn put_blobs(
        &self,
        sources: Vec<BlobSource>,
        algorithm: Option<DigestAlgorithm>,
    ) -> BackendResult<Vec<BlobRef>> {
        let sources = sources.into_iter().map(|s| self.brake.wrap(s)).collect();
        self.inner.put_blobs(sources, algorithm).await
    }

    async fn open_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<Option<BlobSource>>> {
        let opened = self.inner.open_blobs(blobs).await?;
        Ok(opened
            .into_iter()
            .map(|s| s.map(|s| self.brake.wrap(s)))
            .collect())
    }

    async fn remove_blob(&self, blob: &BlobRef) -> BackendResult<()> {
        self.inner.remove_blob(blob).await
    }

    async fn touch(&self, key: &EntryKey) -> BackendResult<()> {
        self.inner.touch(key).await
    }

    async fn health_check(&self) -> BackendResult<()> {
        self.inner.health_check().await
    }
}
