//! A hit as a value: one decoded, validated record, and the storage its blobs come
//! from. Restoring it and reading its logs use exactly that record, however long the
//! caller takes and whatever other writers do to the key meanwhile.

pub(crate) use crate::blobfile::open_blob_file;
use crate::blobfile::{LazyFile, looks_sparse, read_verified};
use crate::blocking::{self, Spawner};
use crate::layer::{HitCall, HitLayer, HitOp};
use crate::record::{ActionRecord, LogRecord, LogStream, OutputRecord};
use crate::source::{HitSource, HitTier};
use crate::storage::{BlobSource, EntryKey, Storage};
use crate::window;
use crate::{
    BackendError, BackendResult, BlobRef, CacheOutput, Digest, LogBytes, OutputContent, RelPath,
    Workspace,
};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The most bytes read to re-check a blob that failed verification against its own
/// digest (before blaming it).
const RECHECK_MAX: u64 = 64 << 30;

/// The most bytes [`Hit::logs`] reads into memory per stream: the `taskcache`
/// command's default capture limit, so nothing it stored is refused.
pub const MAX_LOG_BYTES: u64 = 64 << 20;

/// Files from this size are filled with the kernel's copy when their blob is a local
/// file: below it, a read/write loop costs less than the second (hashing) thread.
const KERNEL_COPY_MIN: u64 = 16 << 20;

/// A restore with fewer files and bytes than this runs in one blocking job (the common
/// hit: one trip to the blocking pool); a larger one is split across jobs.
const SMALL_FILES: usize = 64;
const SMALL_BYTES: u64 = 8 << 20;

/// A cache hit: the record found for a key, ready to be restored and replayed.
///
/// Made by [`crate::CacheBackend::lookup`]; its record has passed every check (key,
/// checksum, paths), and every blob it needs was present at lookup. Clones share the
/// record.
#[derive(Clone)]
pub struct Hit {
    entry: EntryKey,
    /// Around its restores and log reads, innermost first: deadlines, breakers,
    /// metrics, anyone's ([`crate::layer`]).
    layers: Vec<Arc<dyn HitLayer>>,
    /// The tier that answered, when a [`crate::Tiered`] did.
    tier: Option<HitTier>,
    /// The backend the hit was found in, when not its storage (a copy in a fast tier
    /// of a shared tier's hit).
    found_in: Option<&'static str>,
    record: Arc<ActionRecord>,
    storage: Arc<dyn Storage>,
    blocking: Spawner,
    /// Whether the lookup's policy lets this hit write: remove a blob that failed
    /// verification, record the entry's use (`touch`). A read-only caller does neither.
    may_write: bool,
}

impl std::fmt::Debug for Hit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hit")
            .field("key", &self.record.key)
            .field("exit_code", &self.record.exit_code)
            .field("outputs", &self.record.outputs.len())
            .field("backend", &self.storage.name())
            .finish_non_exhaustive()
    }
}

impl Hit {
    pub(crate) fn new(
        entry: EntryKey,
        record: Arc<ActionRecord>,
        storage: Arc<dyn Storage>,
        blocking: Spawner,
        may_write: bool,
    ) -> Self {
        Hit {
            entry,
            layers: Vec::new(),
            tier: None,
            found_in: None,
            record,
            storage,
            blocking,
            may_write,
        }
    }

    /// This hit, allowed to remove the blobs it finds damaged whatever its lookup's
    /// policy (for the origin's calls, which take none).
    pub(crate) fn repairing(mut self) -> Self {
        self.may_write = true;
        self
    }

    /// The task digest.
    #[must_use]
    pub fn key(&self) -> &Digest {
        &self.record.key
    }

    /// The cached exit code.
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        self.record.exit_code
    }

    /// How long the task ran when it was stored.
    #[must_use]
    pub fn duration_ms(&self) -> u64 {
        self.record.duration_ms
    }

    /// The order the task wrote its stdout and stderr in: replay [`Hit::logs`] chunk
    /// by chunk to interleave them as they were (empty: not recorded; replay stdout,
    /// then stderr).
    #[must_use]
    pub fn log_order(&self) -> &[crate::storage::LogChunk] {
        &self.record.log_order
    }

    /// The whole record.
    #[must_use]
    pub fn record(&self) -> &ActionRecord {
        &self.record
    }

    /// The name of the storage the hit's blobs come from.
    #[must_use]
    pub fn backend(&self) -> &'static str {
        self.storage.name()
    }

    /// Total bytes of the hit's files and logs.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        let logs: u64 = [&self.record.stdout, &self.record.stderr]
            .into_iter()
            .map(log_size)
            .fold(0u64, u64::saturating_add);
        logs.saturating_add(self.file_bytes())
    }

    fn file_bytes(&self) -> u64 {
        // Sizes come from the cache: summed without overflow whatever they are.
        self.files()
            .map(|(_, b, _)| b.size)
            .fold(0, u64::saturating_add)
    }

    fn files(&self) -> impl Iterator<Item = (&str, BlobRef, bool)> {
        self.record.outputs.iter().filter_map(|o| match o {
            OutputRecord::File {
                path,
                blob,
                executable,
            } => Some((path.as_str(), *blob, *executable)),
            _ => None,
        })
    }

    /// Restores the outputs into `workspace`.
    ///
    /// Every output is checked against what is on disk before anything is written, so
    /// a refused layout writes nothing; then directories, files (each verified against
    /// its digest in a temporary file and renamed into place; a file that already holds
    /// the cached bytes and mode is kept), and symlinks last. A blob whose bytes do not
    /// match is removed from the storage (so the next store repairs it) unless the
    /// lookup's policy was read-only, and the error is
    /// [`BackendError::DigestMismatch`] ([`BackendError::DamagedBlob`] for a file of
    /// mostly holes, refused unread); the workspace keeps its old file. File modes are
    /// 0755 or 0644 narrowed by the process umask ([`crate::mode`]).
    ///
    /// Returns the outputs as restored: directories, files (as
    /// [`OutputContent::File`] naming the restored file, with its verified blob), then
    /// symlinks, under the canonical workspace root.
    ///
    /// Dropping the returned future (or a [`crate::Deadline`] timing it out) cancels
    /// the restore: once the drop returns, nothing more appears or changes in the
    /// workspace (no file renamed into place, no directory, symlink or time set), and
    /// a file being written stops at its next write, its temporary file removed
    /// ([`crate::cancel`]). What was placed before stays.
    pub async fn restore(&self, workspace: &Path) -> BackendResult<Vec<CacheOutput>> {
        let call = HitCall {
            op: HitOp::Restore,
            bytes: self.file_bytes(),
        };
        crate::cancel::scoped(crate::layer::run(
            self,
            &self.layers,
            call,
            |outputs: &Vec<CacheOutput>| restored_bytes(outputs),
            self.restore_unbounded(workspace),
        ))
        .await
    }

    /// The same hit, its restores and log reads wrapped in `layer` (outside the layers
    /// it already has; see [`crate::layer`]). A [`CacheBackend`](crate::CacheBackend)
    /// wrapper adds its layer to the hits it hands out.
    #[must_use]
    pub fn layered(mut self, layer: Arc<dyn HitLayer>) -> Self {
        self.layers.push(layer);
        self
    }

    /// Tells the hit's layers ([`HitLayer::fault`]) that using it failed with `e`
    /// somewhere they could not see, such as a copy into another tier, if `e` is a
    /// cache fault: a [`crate::CircuitBreaker`] counts it.
    pub fn report_fault(&self, e: &BackendError) {
        if e.is_cache_fault() {
            for layer in &self.layers {
                layer.fault(self, e);
            }
        }
    }

    /// Where the hit came from and what it saves.
    #[must_use]
    pub fn source(&self) -> HitSource {
        HitSource {
            tier: self.tier,
            backend: self.found_in.unwrap_or_else(|| self.storage.name()),
            duration_ms: self.record.duration_ms,
            bytes: self.bytes(),
        }
    }

    /// The same hit, found in `tier` of a [`crate::Tiered`] (for combinators that put
    /// tiers together; the outermost one's word stands).
    #[must_use]
    pub fn from_tier(mut self, tier: HitTier) -> Self {
        self.tier = Some(tier);
        self
    }

    /// The same hit, said to have been found in `backend` (a copy of its record).
    pub(crate) fn found_in(mut self, backend: &'static str) -> Self {
        self.found_in = Some(backend);
        self
    }

    async fn restore_unbounded(&self, workspace: &Path) -> BackendResult<Vec<CacheOutput>> {
        let restore = Restore::new(workspace.to_path_buf(), &self.record)?;
        let small = restore.files.len() < SMALL_FILES && self.file_bytes() < SMALL_BYTES;
        let root = if small {
            // The common hit: one storage call for the sources, one blocking job.
            let blobs: Vec<BlobRef> = restore.files.iter().map(|f| f.blob).collect();
            let (sources, held) = window::open(&blobs, |b| self.open(b)).await?;
            let job = blocking::start(&*self.blocking, move || {
                let _held = held;
                let mut prepared = restore.prepare()?;
                let jobs = prepared.take_jobs(sources);
                write_all(&prepared.ws, jobs)?;
                prepared.finish()
            });
            // Recency is refreshed while the files are written: the entry is being
            // used either way, and the two trips to blocking threads overlap.
            self.touch().await;
            self.settle(job.await).await?
        } else {
            let mut prepared = blocking::run(&*self.blocking, move || restore.prepare()).await?;
            let needed = std::mem::take(&mut prepared.needed);
            let ws = Arc::clone(&prepared.ws);
            let sizes: Vec<u64> = needed.iter().map(|f| f.blob.size).collect();
            for run in window::runs(&sizes) {
                let chunk = &needed[run];
                let blobs: Vec<BlobRef> = chunk.iter().map(|f| f.blob).collect();
                let (sources, held) = window::open(&blobs, |b| self.open(b)).await?;
                let jobs: Vec<(FileOut, BlobSource)> = chunk.iter().cloned().zip(sources).collect();
                self.write_parallel(&ws, jobs, &Arc::new(held)).await?;
            }
            let finished = blocking::run(&*self.blocking, move || prepared.finish()).await;
            let root = self.settle(finished).await?;
            self.touch().await;
            root
        };
        outputs_under(&self.record, &root)
    }

    /// Refreshes the entry's recency; a failure is logged, not returned (the outputs
    /// are restored either way).
    async fn touch(&self) {
        if !self.may_write {
            // Recency is a write too (a file's time, a marker object): a read-only
            // caller makes none.
            return;
        }
        if let Err(e) = self.storage.touch(&self.entry).await {
            tracing::debug!(backend = self.storage.name(), key = %self.key(), error = %e, "could not record recency");
        }
    }

    /// Removes the storage's copy of a blob that failed verification, if the blob is
    /// what is wrong: a record can lie about a good blob (its size, say), and the good
    /// blob serves other entries, so it is checked against its own digest first.
    async fn settle<T>(&self, outcome: BackendResult<T>) -> BackendResult<T> {
        let Err(e) = &outcome else {
            return outcome;
        };
        if !matches!(
            e,
            BackendError::DigestMismatch { .. } | BackendError::DamagedBlob { .. }
        ) {
            return outcome;
        }
        if !self.may_write {
            // A read-only caller writes and deletes nothing, even what is damaged.
            tracing::warn!(backend = self.storage.name(), key = %self.key(), error = %e, "a blob failed verification; left in place (read-only)");
            return outcome;
        }
        if let Err(BackendError::DamagedBlob { digest, .. }) = &outcome {
            // Holes are never what a writer stored: no need to read it to blame it.
            tracing::warn!(backend = self.storage.name(), blob = %digest, "removing a damaged blob");
            if let Err(e) = self.storage.remove_blob(digest).await {
                tracing::warn!(backend = self.storage.name(), blob = %digest, error = %e, "could not remove a damaged blob");
            }
        }
        if let Err(BackendError::DigestMismatch { expected, .. }) = &outcome {
            if self.blob_is_intact(expected).await {
                tracing::warn!(backend = self.storage.name(), key = %self.key(), blob = %expected, "the entry misdescribes a good blob; the blob is kept");
            } else {
                tracing::warn!(backend = self.storage.name(), blob = %expected, "removing a blob that failed verification");
                if let Err(e) = self.storage.remove_blob(expected).await {
                    tracing::warn!(backend = self.storage.name(), blob = %expected, error = %e, "could not remove a corrupt blob");
                }
            }
        }
        outcome
    }

    /// Whether the bytes stored for `blob`'s digest hash to that digest, whatever their
    /// length (read up to [`RECHECK_MAX`]). Any failure to tell answers `false`.
    async fn blob_is_intact(&self, blob: &BlobRef) -> bool {
        let Ok(mut opened) = self.storage.open_blobs(vec![*blob]).await else {
            return false;
        };
        let Some(Some(source)) = opened.pop() else {
            return false;
        };
        let want = blob.digest;
        let hashed = blocking::run(&*self.blocking, move || {
            let reader: Box<dyn Read + Send> = match source {
                BlobSource::File(path) => Box::new(crate::storage::open_blob(&path)?),
                other => other.into_reader()?,
            };
            crate::digest::hash_reader(&mut reader.take(RECHECK_MAX), want.algorithm())
                .map_err(BackendError::Io)
        })
        .await;
        hashed.is_ok_and(|actual| actual.digest == want)
    }

    /// Writes one window's files in up to four parallel jobs; each keeps the window's
    /// budget (`held`) until it has consumed its sources.
    async fn write_parallel(
        &self,
        ws: &Arc<Workspace>,
        jobs: Vec<(FileOut, BlobSource)>,
        held: &Arc<window::Held>,
    ) -> BackendResult<()> {
        let weights: Vec<u64> = jobs.iter().map(|(f, _)| f.blob.size.max(4096)).collect();
        let mut jobs = jobs.into_iter();
        // Contiguous runs in record order (sorted by path): each job writes its own
        // directories, so two jobs do not contend for one directory's lock.
        let running: Vec<_> = split_runs(&weights, parallelism())
            .into_iter()
            .map(|len| {
                let (ws, held) = (Arc::clone(ws), Arc::clone(held));
                let part: Vec<(FileOut, BlobSource)> = jobs.by_ref().take(len).collect();
                // Started here, all of them, before the first is awaited.
                blocking::start(&*self.blocking, move || {
                    let _held = held;
                    write_all(&ws, part)
                })
            })
            .collect();
        let mut first_err = None;
        for r in running {
            if let Err(e) = r.await {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => self.settle(Err(e)).await,
            None => Ok(()),
        }
    }

    /// Sources for `blobs`, in order; a blob the storage no longer has is `BlobNotFound`.
    pub(crate) async fn open(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<BlobSource>> {
        let n = blobs.len();
        let opened = self.storage.open_blobs(blobs.clone()).await?;
        if opened.len() != n {
            return Err(BackendError::unavailable(format!(
                "storage {} answered {} of {n} blobs",
                self.storage.name(),
                opened.len()
            )));
        }
        blobs
            .into_iter()
            .zip(opened)
            .map(|(blob, s)| s.ok_or(BackendError::BlobNotFound { digest: blob }))
            .collect()
    }

    /// The cached stdout and stderr, exactly as captured, each verified against its
    /// digest when it was stored as a blob; each at most [`MAX_LOG_BYTES`] (see
    /// [`Hit::logs_up_to`]).
    pub async fn logs(&self) -> BackendResult<LogBytes> {
        self.logs_up_to(MAX_LOG_BYTES).await
    }

    /// [`Hit::logs`] with its own bound: a log recorded as longer than `limit` bytes is
    /// [`BackendError::LogTooLarge`] before anything is read (the size comes from the
    /// cache, so it is checked before it can choose how much memory is used). Use
    /// [`Hit::log_reader`] to stream logs of any size.
    ///
    /// Dropping the future stops the reads it started at their next chunk.
    pub async fn logs_up_to(&self, limit: u64) -> BackendResult<LogBytes> {
        let call = HitCall {
            op: HitOp::Logs,
            bytes: self.bytes().saturating_sub(self.file_bytes()),
        };
        crate::cancel::scoped(crate::layer::run(
            self,
            &self.layers,
            call,
            |logs: &LogBytes| log_len(logs),
            self.logs_unbounded(limit),
        ))
        .await
    }

    async fn logs_unbounded(&self, limit: u64) -> BackendResult<LogBytes> {
        for log in [&self.record.stdout, &self.record.stderr] {
            if let LogRecord::Blob(b) = log {
                if b.size > limit {
                    return Err(BackendError::LogTooLarge {
                        key: *self.key(),
                        size: b.size,
                        limit,
                    });
                }
            }
        }
        let out = self.log(&self.record.stdout).await?;
        let err = self.log(&self.record.stderr).await?;
        Ok((out, err))
    }

    /// One cached stream as a blocking reader, for callers that replay logs too large
    /// to hold: bytes come as they are read, and a stream that does not match its
    /// digest ends with an error ([`std::io::ErrorKind::InvalidData`]) instead of its
    /// end, so nothing reading to the end takes wrong bytes for the log. Read it on a
    /// blocking thread. `None` when the stream was not captured.
    pub async fn log_reader(
        &self,
        stream: LogStream,
    ) -> BackendResult<Option<Box<dyn Read + Send>>> {
        let bytes = match stream {
            LogStream::Stdout => log_size(&self.record.stdout),
            LogStream::Stderr => log_size(&self.record.stderr),
        };
        let call = HitCall {
            op: HitOp::LogReader,
            bytes,
        };
        crate::cancel::scoped(crate::layer::run(
            self,
            &self.layers,
            call,
            move |_: &Option<Box<dyn Read + Send>>| bytes,
            self.open_log(stream),
        ))
        .await
    }

    async fn open_log(&self, stream: LogStream) -> BackendResult<Option<Box<dyn Read + Send>>> {
        let log = match stream {
            LogStream::Stdout => &self.record.stdout,
            LogStream::Stderr => &self.record.stderr,
        };
        let blob = match log {
            LogRecord::Absent => return Ok(None),
            LogRecord::Inline(b) => return Ok(Some(Box::new(std::io::Cursor::new(b.clone())))),
            LogRecord::Blob(blob) => *blob,
        };
        let source = self
            .open(vec![blob])
            .await?
            .pop()
            .ok_or(BackendError::BlobNotFound { digest: blob })?;
        let reader = match source {
            // Opening a file is blocking work; it happens on the caller's first read.
            BlobSource::File(path) => Box::new(LazyFile {
                path,
                blob,
                file: None,
            }) as Box<dyn Read + Send>,
            other => other.into_reader()?,
        };
        Ok(Some(Box::new(crate::digest::VerifyingReader::new(
            reader, blob,
        ))))
    }

    async fn log(&self, log: &LogRecord) -> BackendResult<Option<Vec<u8>>> {
        let blob = match log {
            LogRecord::Absent => return Ok(None),
            LogRecord::Inline(b) => return Ok(Some(b.clone())),
            LogRecord::Blob(blob) => *blob,
        };
        let source = self
            .open(vec![blob])
            .await?
            .pop()
            .ok_or(BackendError::BlobNotFound { digest: blob })?;
        let read = blocking::run(&*self.blocking, move || read_verified(source, &blob)).await;
        self.settle(read).await.map(Some)
    }
}

/// The bytes of a log as recorded.
fn log_size(log: &LogRecord) -> u64 {
    match log {
        LogRecord::Absent => 0,
        LogRecord::Inline(b) => b.len() as u64,
        LogRecord::Blob(b) => b.size,
    }
}

/// The bytes of logs read.
pub(crate) fn log_len(l: &LogBytes) -> u64 {
    l.0.as_ref().map_or(0, Vec::len) as u64 + l.1.as_ref().map_or(0, Vec::len) as u64
}

/// The bytes of the files of restored outputs.
pub(crate) fn restored_bytes(outputs: &[CacheOutput]) -> u64 {
    outputs
        .iter()
        .map(|o| match &o.content {
            OutputContent::File { blob: Some(b), .. } => b.size,
            _ => 0,
        })
        .fold(0, u64::saturating_add)
}

/// Lengths of at most `parts` contiguous runs of `weights` with similar totals (each
/// run non-empty).
fn split_runs(weights: &[u64], parts: usize) -> Vec<usize> {
    let parts = parts.clamp(1, weights.len().max(1));
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let mut runs = Vec::with_capacity(parts);
    let (mut len, mut acc) = (0usize, 0u128);
    for (i, w) in weights.iter().enumerate() {
        len += 1;
        acc += u128::from(*w);
        let filled = runs.len() as u128 + 1;
        let left = weights.len() - i - 1;
        // Close a run at its share of the total, keeping one item for each run to come.
        if runs.len() + 1 < parts
            && acc * parts as u128 >= total * filled
            && left >= parts - runs.len() - 1
        {
            runs.push(len);
            len = 0;
        }
    }
    if len > 0 {
        runs.push(len);
    }
    runs
}

fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(4))
}

/// One file to write.
#[derive(Debug, Clone)]
pub(crate) struct FileOut {
    rel: RelPath,
    blob: BlobRef,
    executable: bool,
}

/// Writes each file from its source through the verified writer (blocking).
fn write_all(ws: &Workspace, jobs: Vec<(FileOut, BlobSource)>) -> BackendResult<()> {
    for (f, source) in jobs {
        write_one(ws, &f, source)?;
    }
    Ok(())
}

fn write_one(ws: &Workspace, f: &FileOut, source: BlobSource) -> BackendResult<PathBuf> {
    match source {
        BlobSource::File(path) => {
            let src = open_blob_file(&path, &f.blob)?;
            if looks_sparse(&src) {
                // Holes cost the cache writer no disk but would cost the workspace real
                // disk before the mismatch shows: check such a blob before copying it.
                let actual = crate::digest::hash_reader(
                    &mut (&src).take(f.blob.size.saturating_add(1)),
                    f.blob.digest.algorithm(),
                )
                .map_err(|e| BackendError::io_with_context("read", &path, e))?;
                crate::digest::check_blob(&f.blob, &actual)?;
                (&src)
                    .seek(std::io::SeekFrom::Start(0))
                    .map_err(|e| BackendError::io_with_context("read", &path, e))?;
            }
            #[cfg(unix)]
            if f.blob.size >= KERNEL_COPY_MIN {
                return ws
                    .begin_file(&f.rel, f.blob, f.executable)?
                    .copy_from_file(&src);
            }
            ws.write_file(&f.rel, f.blob, f.executable, &mut &src)
        }
        source => {
            let mut reader = source.into_reader()?;
            ws.write_file(&f.rel, f.blob, f.executable, &mut reader)
        }
    }
}

/// One entry's outputs on their way into a workspace, in the one order that is safe:
/// [`Restore::prepare`] (check every output, create directories, find files already in
/// place), the files, then [`Prepared::finish`] (symlinks, last).
struct Restore {
    root: PathBuf,
    outputs: Vec<(RelPath, OutputRecord)>,
    files: Vec<FileOut>,
    /// Symlinks with absolute targets (a task that opted in; `Cache` checked that).
    absolute_links: Vec<(RelPath, String)>,
}

impl Restore {
    fn new(root: PathBuf, record: &ActionRecord) -> BackendResult<Self> {
        let outputs: Vec<(RelPath, OutputRecord)> = record
            .outputs
            .iter()
            .map(|o| Ok((RelPath::parse(o.path())?, o.clone())))
            .collect::<BackendResult<_>>()?;
        let absolute_links = record
            .absolute_symlinks
            .iter()
            .map(|l| Ok((RelPath::parse(&l.path)?, l.target.clone())))
            .collect::<BackendResult<_>>()?;
        let files = outputs
            .iter()
            .filter_map(|(rel, o)| match o {
                OutputRecord::File {
                    blob, executable, ..
                } => Some(FileOut {
                    rel: rel.clone(),
                    blob: *blob,
                    executable: *executable,
                }),
                _ => None,
            })
            .collect();
        Ok(Restore {
            root,
            outputs,
            files,
            absolute_links,
        })
    }

    /// Opens the workspace, checks every output against what is on disk before writing
    /// anything (a refused layout writes nothing), creates the directories, and leaves
    /// out files already in place with the right bytes and mode
    /// ([`Workspace::in_place`]). Blocking.
    fn prepare(self) -> BackendResult<Prepared> {
        let ws = Arc::new(Workspace::open(&self.root)?);
        for (rel, o) in &self.outputs {
            ws.check(rel, matches!(o, OutputRecord::Directory { .. }))?;
        }
        for (rel, _) in &self.absolute_links {
            ws.check(rel, false)?;
        }
        let not_dirs = self.outputs.iter().filter_map(|(rel, o)| match o {
            OutputRecord::Directory { .. } => None,
            _ => Some(rel),
        });
        ws.check_distinct(not_dirs.chain(self.absolute_links.iter().map(|(rel, _)| rel)))?;
        let mut links = Vec::new();
        let all: Vec<RelPath> = self
            .outputs
            .iter()
            .map(|(rel, _)| rel.clone())
            .chain(self.absolute_links.iter().map(|(rel, _)| rel.clone()))
            .collect();
        for (rel, o) in self.outputs {
            match o {
                OutputRecord::Directory { .. } => drop(ws.create_dir(&rel)?),
                OutputRecord::File { .. } => {}
                OutputRecord::Symlink { target, .. } => links.push((rel, target)),
            }
        }
        let mut in_place = Vec::with_capacity(self.files.len());
        let mut needed = Vec::new();
        for f in self.files {
            let kept = ws.in_place(&f.rel, f.blob, f.executable);
            in_place.push(kept);
            if !kept {
                needed.push(f);
            }
        }
        Ok(Prepared {
            ws,
            in_place,
            needed,
            links,
            absolute_links: self.absolute_links,
            all,
        })
    }
}

struct Prepared {
    ws: Arc<Workspace>,
    /// For every file of the record, in order: already in place.
    in_place: Vec<bool>,
    /// The files to write.
    needed: Vec<FileOut>,
    links: Vec<(RelPath, String)>,
    absolute_links: Vec<(RelPath, String)>,
    /// Every output, for the one timestamp set at the end.
    all: Vec<RelPath>,
}

impl Prepared {
    /// Pairs the files to write with their sources (given for every file of the
    /// record, in order); sources of files already in place are dropped unread.
    fn take_jobs(&mut self, sources: Vec<BlobSource>) -> Vec<(FileOut, BlobSource)> {
        let needed = std::mem::take(&mut self.needed);
        let wanted = sources
            .into_iter()
            .zip(&self.in_place)
            .filter(|(_, kept)| !**kept)
            .map(|(s, _)| s);
        needed.into_iter().zip(wanted).collect()
    }

    /// Makes the symlinks, last, so none exists before the files it may point to.
    /// Then gives every output one modification time, taken after the last write
    /// (files written or kept, directories, symlinks): build tools that compare times
    /// (cargo's fingerprints, make, npm's hidden lockfile) see a tree in which nothing
    /// is newer than anything else, as after a `cp -a`, instead of the order of writes.
    fn finish(self) -> BackendResult<PathBuf> {
        for (rel, target) in &self.links {
            self.ws.create_symlink(rel, target)?;
        }
        for (rel, target) in &self.absolute_links {
            self.ws.create_absolute_symlink(rel, target)?;
        }
        let now = std::time::SystemTime::now();
        for rel in &self.all {
            self.ws.set_mtime(rel, now)?;
        }
        Ok(self.ws.root().to_path_buf())
    }
}

/// What a restore reports: directories, files, then symlinks, under `root`, with each
/// path in its normalized [`RelPath`] form (as it was written).
fn outputs_under(record: &ActionRecord, root: &Path) -> BackendResult<Vec<CacheOutput>> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    let mut links = Vec::new();
    for o in &record.outputs {
        let rel = RelPath::parse(o.path())?;
        match o {
            OutputRecord::Directory { .. } => dirs.push(CacheOutput::directory(rel.as_str())),
            OutputRecord::File {
                blob, executable, ..
            } => files.push(CacheOutput {
                path: rel.to_string(),
                content: OutputContent::File {
                    path: rel.to_path(root),
                    blob: Some(*blob),
                    size: Some(blob.size),
                },
                is_executable: *executable,
            }),
            OutputRecord::Symlink { target, .. } => {
                links.push(CacheOutput::symlink(rel.as_str(), target.clone()));
            }
        }
    }
    for l in &record.absolute_symlinks {
        let rel = RelPath::parse(&l.path)?;
        links.push(CacheOutput::symlink(rel.as_str(), l.target.clone()));
    }
    dirs.extend(files);
    dirs.extend(links);
    Ok(dirs)
}

#[cfg(test)]
#[path = "hit_tests.rs"]
mod tests;
