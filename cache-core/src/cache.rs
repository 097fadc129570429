//! [`Cache`]: any [`Storage`] made a full [`CacheBackend`], with the one implementation
//! of everything that must not differ between backends.
//!
//! * policy handling (no I/O for reads that are not allowed, no writes for `Readonly`);
//! * key validation before any I/O;
//! * output validation before any I/O (paths, symlink targets, duplicates);
//! * publish order: every blob is written before the entry that names it;
//! * read checks: the record is for the key and every path in it is safe, its blobs are
//!   present (else a miss), and every blob byte is verified against its digest before
//!   it reaches the workspace or a caller (see [`Hit`]);
//! * workspace writes, only through [`crate::Workspace`];
//! * blocking work (decoding large records, hashing, workspace writes) on the spawner
//!   given to [`Cache::new`].

use crate::blocking::{self, Job, Spawner};
use crate::path::OutputKind;
use crate::record::{ActionRecord, INLINE_LOG_MAX, LogRecord, OutputRecord};
use crate::sign::{PublicKey, SigningKey};
use crate::storage::{BlobSource, EntryKey, Storage};
use crate::{
    BackendError, BackendResult, BlobRef, CacheBackend, CacheEntry, CachePolicy, Digest, Hit,
    OutputContent, RelPath, Task, policy_allows_read, policy_allows_write,
};
use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Records with more outputs than this are validated on the blocking pool.
const VALIDATE_INLINE_MAX: usize = 256;

/// A full [`CacheBackend`] over any [`Storage`].
///
/// ```
/// # use cache_core::{Cache, storage::Storage};
/// // With tokio: Cache::new(storage, |job| { tokio::task::spawn_blocking(job); })
/// fn wrap<S: Storage>(storage: S) -> std::sync::Arc<dyn cache_core::CacheBackend> {
///     std::sync::Arc::new(Cache::new(storage, cache_core::thread_per_job))
/// }
/// ```
pub struct Cache<S> {
    storage: Arc<S>,
    spawn: Spawner,
    trust: Arc<Trust>,
}

/// Who signs what this cache stores, and whose signatures it accepts.
#[derive(Default)]
struct Trust {
    signer: Option<SigningKey>,
    /// `None`: every entry is accepted; `Some`: only entries signed by one of these.
    trusted: Option<Vec<PublicKey>>,
    /// Entries refused for their signature (warned about once).
    refused: AtomicU64,
}

impl Trust {
    /// Checks the record's signature against the trusted keys, if any are set.
    fn check(&self, record: &ActionRecord) -> BackendResult<()> {
        let Some(trusted) = &self.trusted else {
            return Ok(());
        };
        let untrusted = |reason| BackendError::UntrustedEntry {
            key: record.key,
            reason,
        };
        let Some(signature) = &record.signature else {
            return Err(untrusted("it is unsigned"));
        };
        let Some(signer) = trusted.iter().find(|k| k.signed(signature)) else {
            return Err(untrusted("it is signed by a key that is not trusted"));
        };
        if signer.verifies(&record.signed_bytes()?, signature) {
            Ok(())
        } else {
            Err(untrusted(
                "its signature does not match it (altered or forged)",
            ))
        }
    }
}

impl<S> Clone for Cache<S> {
    fn clone(&self) -> Self {
        Cache {
            storage: Arc::clone(&self.storage),
            spawn: Arc::clone(&self.spawn),
            trust: Arc::clone(&self.trust),
        }
    }
}

impl<S: Storage> std::fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("storage", &self.storage.name())
            .finish_non_exhaustive()
    }
}

impl<S: Storage> Cache<S> {
    /// Wraps a storage. `spawn` runs blocking jobs (decoding, hashing, workspace
    /// writes) off the async executor; with tokio,
    /// `|job| { tokio::task::spawn_blocking(job); }`, and without a runtime,
    /// [`crate::thread_per_job`].
    pub fn new(storage: S, spawn: impl Fn(Job) + Send + Sync + 'static) -> Self {
        Cache {
            storage: Arc::new(storage),
            spawn: Arc::new(spawn),
            trust: Arc::default(),
        }
    }

    /// Signs every entry this cache stores (and copies in) with `key`.
    #[must_use]
    pub fn with_signer(self, key: SigningKey) -> Self {
        self.with_trust(|t| t.signer = Some(key))
    }

    /// Accepts only entries signed by one of `keys`: an unsigned or wrongly signed
    /// entry is a miss, counted ([`Cache::untrusted_entries`]) and warned about once.
    #[must_use]
    pub fn with_trusted_keys(self, keys: Vec<PublicKey>) -> Self {
        self.with_trust(|t| t.trusted = Some(keys))
    }

    fn with_trust(mut self, set: impl FnOnce(&mut Trust)) -> Self {
        let mut trust = Trust {
            signer: self.trust.signer.clone(),
            trusted: self.trust.trusted.clone(),
            refused: AtomicU64::new(0),
        };
        set(&mut trust);
        self.trust = Arc::new(trust);
        self
    }

    /// How many entries were refused for their signature so far.
    #[must_use]
    pub fn untrusted_entries(&self) -> u64 {
        self.trust.refused.load(Ordering::Relaxed)
    }

    /// Signs `record` if this cache has a signer.
    fn sign(&self, mut record: ActionRecord) -> BackendResult<ActionRecord> {
        if let Some(key) = &self.trust.signer {
            record.signature = None;
            let signature = key.sign(&record.signed_bytes()?);
            record.signature = Some(signature);
        }
        Ok(record)
    }

    /// The storage underneath (for stats, GC, tests).
    #[must_use]
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Refuses blob files of mostly holes before this storage reads them whole (one
    /// blocking job for the batch; `open_blobs` itself does no I/O).
    async fn refuse_damaged_files(
        &self,
        files: Vec<(BlobRef, std::path::PathBuf)>,
    ) -> BackendResult<()> {
        if files.is_empty() {
            return Ok(());
        }
        crate::blocking::run(&*self.spawn, move || {
            for (blob, path) in &files {
                crate::hit::open_blob_file(path, blob)?;
            }
            Ok(())
        })
        .await
    }

    fn hit(&self, key: EntryKey, record: Arc<ActionRecord>, policy: CachePolicy) -> Hit {
        let storage: Arc<dyn Storage> = Arc::clone(&self.storage) as Arc<dyn Storage>;
        let may_write = policy_allows_write(policy);
        Hit::new(key, record, storage, Arc::clone(&self.spawn), may_write)
    }

    /// Checks a record a storage returned for `key` (a byte store's
    /// [`ActionRecord::decode`] did it already; a protocol store maps its own messages,
    /// and neither is trusted to have done it).
    async fn validated(
        &self,
        key: &Digest,
        record: ActionRecord,
        declared: Declared,
    ) -> BackendResult<ActionRecord> {
        if record.key != *key {
            return Err(BackendError::corrupt(
                *key,
                format!("the storage returned the record of {}", record.key),
            ));
        }
        let cheap = record.outputs.len() <= VALIDATE_INLINE_MAX;
        let trust = Arc::clone(&self.trust);
        let check = move || {
            record
                .validate()
                .map_err(|e| BackendError::corrupt(record.key, e.to_string()))?;
            declared.admits(&record)?;
            trust.check(&record)?;
            Ok(record)
        };
        if cheap {
            check()
        } else {
            blocking::run(&*self.spawn, check).await
        }
    }

    /// Writes the blobs of `entry` and returns the record to publish (not yet published).
    /// Outputs the task does not declare are refused before anything is written.
    async fn put_outputs(
        &self,
        key: Digest,
        entry: &CacheEntry,
        declared: &Declared,
    ) -> BackendResult<ActionRecord> {
        let planned = plan_outputs(&entry.outputs, declared.absolute_symlinks)?;
        declared.admits_outputs(&planned)?;
        let len = |l: &Option<Vec<u8>>| l.as_ref().map_or(0, |b| b.len() as u64);
        crate::record::check_log_order(&entry.log_order, len(&entry.stdout), len(&entry.stderr))
            .map_err(|reason| BackendError::InvalidOutput {
                path: "(log order)".into(),
                reason,
            })?;
        let (stdout, out_src) = log_source(entry.stdout.as_ref());
        let (stderr, err_src) = log_source(entry.stderr.as_ref());
        let mut sources = Vec::new();
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        let mut links = Vec::new();
        let mut absolute_links = Vec::new();
        for p in planned {
            match p {
                Planned::File {
                    rel,
                    source,
                    executable,
                } => {
                    sources.push(source);
                    files.push((rel, executable));
                }
                Planned::Directory(rel) => dirs.push(OutputRecord::Directory {
                    path: rel.to_string(),
                }),
                Planned::Symlink(rel, target) => links.push(OutputRecord::Symlink {
                    path: rel.to_string(),
                    target,
                }),
                Planned::AbsoluteSymlink(rel, target) => {
                    absolute_links.push(crate::storage::AbsoluteSymlink {
                        path: rel.to_string(),
                        target,
                    });
                }
            }
        }
        let n_files = sources.len();
        let logs = [out_src.is_some(), err_src.is_some()];
        sources.extend(out_src);
        sources.extend(err_src);
        let expected = sources.len();
        let refs = self.storage.put_blobs(sources, None).await?;
        if refs.len() != expected {
            return Err(BackendError::unavailable(format!(
                "storage {} returned {} blob refs for {expected} blobs",
                self.storage.name(),
                refs.len()
            )));
        }
        let mut refs = refs.into_iter();
        // Directories first, then files, then symlinks: the order restore uses.
        let mut outputs = dirs;
        for ((rel, executable), blob) in files.into_iter().zip(refs.by_ref().take(n_files)) {
            outputs.push(OutputRecord::File {
                path: rel.to_string(),
                blob,
                executable,
            });
        }
        outputs.extend(links);
        // A log stored as a blob takes the next ref; the others keep their inline form.
        let mut log = |as_blob: bool, inline: LogRecord| match as_blob.then(|| refs.next()) {
            Some(Some(blob)) => LogRecord::Blob(blob),
            _ => inline,
        };
        let stdout = log(logs[0], stdout);
        let stderr = log(logs[1], stderr);
        Ok(ActionRecord {
            key,
            exit_code: entry.exit_code,
            duration_ms: entry.duration_ms,
            stdout,
            stderr,
            outputs,
            log_order: entry.log_order.clone(),
            absolute_symlinks: absolute_links,
            signature: None,
        })
    }
}

/// The outputs a task declares, as the paths a hit may write: each declared path and
/// everything below it, and the directories above a declared path (creating a parent
/// is part of writing the output). A task that declares no outputs restricts nothing
/// (the origin's bare tasks); the `taskcache` command always declares them.
struct Declared {
    /// Declared paths (files or directories), normalized.
    roots: std::collections::BTreeSet<String>,
    /// Every proper ancestor directory of a declared path.
    parents: std::collections::BTreeSet<String>,
    /// The task opted in to absolute symlink outputs.
    absolute_symlinks: bool,
}

impl Declared {
    fn of(task: &Task) -> BackendResult<Self> {
        let mut roots = std::collections::BTreeSet::new();
        let mut parents = std::collections::BTreeSet::new();
        for rel in task.declared_outputs()? {
            let mut dir = rel.parent();
            while let Some(d) = dir {
                dir = d.parent();
                parents.insert(d.to_string());
            }
            roots.insert(rel.to_string());
        }
        Ok(Declared {
            roots,
            parents,
            absolute_symlinks: task.allow_absolute_symlinks,
        })
    }

    /// The first of `outputs` (path, is a directory) the task does not declare: the
    /// one rule for what a lookup accepts ([`Declared::admits`]) and what a store
    /// accepts ([`Declared::admits_outputs`]).
    fn first_undeclared<'a>(
        &self,
        mut outputs: impl Iterator<Item = (&'a str, bool)>,
    ) -> Option<&'a str> {
        if self.roots.is_empty() {
            return None;
        }
        outputs
            .find(|(p, is_dir)| !self.covers(p, *is_dir))
            .map(|(p, _)| p)
    }

    /// Refuses a store of an output the task does not declare. It is the caller's
    /// mistake, found before anything is written: every lookup of the task would
    /// refuse such an entry ([`Declared::admits`]), a miss on every run.
    fn admits_outputs(&self, planned: &[Planned]) -> BackendResult<()> {
        let outputs = planned.iter().map(|p| match p {
            Planned::File { rel, .. }
            | Planned::Symlink(rel, _)
            | Planned::AbsoluteSymlink(rel, _) => (rel.as_str(), false),
            Planned::Directory(rel) => (rel.as_str(), true),
        });
        match self.first_undeclared(outputs) {
            Some(path) => Err(BackendError::InvalidOutput {
                path: crate::error::truncate(path),
                reason: "the task does not declare it (nor a directory above it) as an output, \
                         so no lookup of the task would accept the entry; declare it, or leave \
                         it out"
                    .into(),
            }),
            None => Ok(()),
        }
    }

    /// Whether a directory (`is_dir`) or another output at `path` may be written.
    fn covers(&self, path: &str, is_dir: bool) -> bool {
        if self.roots.contains(path) || (is_dir && self.parents.contains(path)) {
            return true;
        }
        // Below a declared path: one of its ancestors (at most MAX_PATH_DEPTH) is declared.
        path.match_indices('/')
            .any(|(i, _)| self.roots.contains(&path[..i]))
    }

    /// Refuses a record with any output outside the declared ones.
    /// Refuses a record with absolute symlinks for a task that did not opt in to them.
    fn admits(&self, record: &ActionRecord) -> BackendResult<()> {
        let refuse = |path: &str| BackendError::UndeclaredOutput {
            key: record.key,
            path: crate::error::truncate(path),
        };
        if let Some(l) = record.absolute_symlinks.first() {
            if !self.absolute_symlinks {
                return Err(refuse(&l.path));
            }
        }
        let outputs = record.outputs.iter().map(|o| {
            let is_dir = matches!(o, OutputRecord::Directory { .. });
            (o.path(), is_dir)
        });
        let links = record
            .absolute_symlinks
            .iter()
            .map(|l| (l.path.as_str(), false));
        match self.first_undeclared(outputs.chain(links)) {
            Some(path) => Err(refuse(path)),
            None => Ok(()),
        }
    }
}

/// Validated form of a `store` request's outputs.
enum Planned {
    File {
        rel: RelPath,
        source: BlobSource,
        executable: bool,
    },
    Directory(RelPath),
    Symlink(RelPath, String),
    AbsoluteSymlink(RelPath, String),
}

/// Validates a store's outputs; `absolute_symlinks`: the task opted in to symlinks with
/// absolute targets (laid out as leaves, their targets checked on their own).
fn plan_outputs(
    outputs: &[crate::CacheOutput],
    absolute_symlinks: bool,
) -> BackendResult<Vec<Planned>> {
    let absolute = |t: &str| absolute_symlinks && t.starts_with('/');
    let rels = crate::path::check_layout(outputs.iter().map(|o| {
        let kind = match &o.content {
            OutputContent::Bytes(_) | OutputContent::File { .. } => OutputKind::File,
            OutputContent::Directory => OutputKind::Directory,
            OutputContent::Symlink { target } if absolute(target) => OutputKind::File,
            OutputContent::Symlink { target } => OutputKind::Symlink(target),
        };
        (o.path.as_str(), kind)
    }))?;
    outputs
        .iter()
        .zip(rels)
        .map(|(out, rel)| {
            if let OutputContent::Symlink { target } = &out.content {
                if absolute(target) {
                    crate::path::check_absolute_symlink_target(&rel, target)?;
                    return Ok(Planned::AbsoluteSymlink(rel, target.clone()));
                }
            }
            Ok(planned(out, rel))
        })
        .collect()
}

fn planned(out: &crate::CacheOutput, rel: RelPath) -> Planned {
    match &out.content {
        // The one copy of in-memory bytes: shared from here on.
        OutputContent::Bytes(b) => Planned::File {
            rel,
            source: BlobSource::Bytes(Arc::from(b.as_slice())),
            executable: out.is_executable,
        },
        OutputContent::File { path, .. } => Planned::File {
            rel,
            source: BlobSource::File(path.clone()),
            executable: out.is_executable,
        },
        OutputContent::Directory => Planned::Directory(rel),
        OutputContent::Symlink { target } => Planned::Symlink(rel, target.clone()),
    }
}

/// A log kept inline, or (when large) the placeholder and the source of its blob.
fn log_source(log: Option<&Vec<u8>>) -> (LogRecord, Option<BlobSource>) {
    match log {
        None => (LogRecord::Absent, None),
        Some(b) if b.len() <= INLINE_LOG_MAX => (LogRecord::Inline(b.clone()), None),
        Some(b) => (
            LogRecord::Absent,
            Some(BlobSource::Bytes(Arc::from(b.as_slice()))),
        ),
    }
}

/// Each call runs in its own cancellation scope: dropping it (or a [`crate::Deadline`]
/// timing it out) stops its blocking jobs and the storage's before they publish
/// anything ([`crate::cancel`]).
#[async_trait]
impl<S: Storage> CacheBackend for Cache<S> {
    async fn lookup(
        &self,
        task: &Task,
        key: &Digest,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        crate::cancel::scoped(self.lookup_unscoped(task, key, policy)).await
    }

    async fn store(
        &self,
        task: &Task,
        digest: &str,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<()> {
        crate::cancel::scoped(self.store_unscoped(task, digest, entry, policy)).await
    }

    async fn import(
        &self,
        task: &Task,
        hit: &Hit,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        crate::cancel::scoped(self.import_unscoped(task, hit, policy)).await
    }

    fn name(&self) -> &'static str {
        self.storage.name()
    }

    async fn health_check(&self) -> BackendResult<()> {
        self.storage.health_check().await
    }
}

/// The calls of [`CacheBackend`], each run in its scope by the impl above.
impl<S: Storage> Cache<S> {
    async fn lookup_unscoped(
        &self,
        task: &Task,
        key: &Digest,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        if !policy_allows_read(policy) {
            return Ok(None);
        }
        let declared = Declared::of(task)?;
        let entry_key = EntryKey::new(*key, task);
        let (found, known_missing) = match self.storage.get_entry(&entry_key).await {
            Ok(Some(entry)) => (
                self.validated(key, entry.record, declared).await,
                entry.missing_blobs,
            ),
            Ok(None) => return Ok(None),
            Err(e) => (Err(e), None),
        };
        let record = match found {
            Ok(record) => record,
            Err(e @ BackendError::UntrustedEntry { .. }) => {
                // Left in place: a trusted writer may replace it; counted, warned once.
                if self.trust.refused.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(backend = self.storage.name(), %key, error = %e, "refusing cache entries not signed by a trusted key (warned once)");
                } else {
                    tracing::debug!(backend = self.storage.name(), %key, error = %e, "refusing an untrusted cache entry");
                }
                return Ok(None);
            }
            Err(e @ BackendError::UndeclaredOutput { .. }) => {
                // Well-formed, but not this task's to restore: a miss, and the entry
                // stays (it may be another task's result under a colliding key).
                tracing::warn!(backend = self.storage.name(), %key, error = %e, "refusing a cache entry with outputs the task does not declare");
                return Ok(None);
            }
            Err(e @ BackendError::NewerEntryFormat { .. }) => {
                // Another taskcache's entry: a miss here, and left alone.
                tracing::warn!(backend = self.storage.name(), %key, error = %e, "skipping a cache entry written by a newer taskcache");
                return Ok(None);
            }
            Err(e @ BackendError::CorruptEntry { .. }) => {
                tracing::warn!(backend = self.storage.name(), %key, error = %e, "ignoring corrupt cache entry");
                if policy_allows_write(policy) {
                    // Removing it lets the next store write a good one.
                    if let Err(e) = self.storage.remove_entry(&entry_key).await {
                        tracing::debug!(backend = self.storage.name(), %key, error = %e, "could not remove a corrupt entry");
                    }
                }
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let blobs: Vec<BlobRef> = record.blobs().collect();
        if !blobs.is_empty() {
            let missing = match known_missing {
                Some(missing) => missing,
                None => self.storage.find_missing_blobs(blobs).await?,
            };
            if !missing.is_empty() {
                tracing::debug!(backend = self.storage.name(), %key, missing = missing.len(), "entry's blobs are gone: miss");
                return Ok(None);
            }
        }
        Ok(Some(self.hit(entry_key, Arc::new(record), policy)))
    }

    async fn store_unscoped(
        &self,
        task: &Task,
        digest: &str,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<()> {
        let key = Digest::parse(digest)?;
        if !policy_allows_write(policy) {
            return Ok(());
        }
        let declared = Declared::of(task)?;
        // Publish order, step 1: every blob.
        let record = self.put_outputs(key, entry, &declared).await?;
        // Publish order, step 2: the entry, last.
        let record = self.sign(record)?;
        self.storage
            .put_entry(&EntryKey::new(key, task), Arc::new(record))
            .await
    }

    async fn import_unscoped(
        &self,
        task: &Task,
        hit: &Hit,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        if !policy_allows_write(policy) {
            return Ok(None);
        }
        let record = hit.record();
        let mut missing = self
            .storage
            .find_missing_blobs(record.blobs().collect())
            .await?;
        // Stored under the record's own refs, whatever this storage would choose.
        missing.sort_by_key(|b| b.digest.algorithm());
        let same_algorithm = missing.chunk_by(|a, b| a.digest.algorithm() == b.digest.algorithm());
        // In windows, as a restore opens them: what the source storage holds in memory
        // and the process's budget for it stay bounded however large the hit.
        let windows = same_algorithm.flat_map(|group| {
            let sizes: Vec<u64> = group.iter().map(|b| b.size).collect();
            crate::window::runs(&sizes)
                .into_iter()
                .map(move |r| &group[r])
        });
        for chunk in windows {
            let algorithm = chunk[0].digest.algorithm();
            let (sources, _held) = crate::window::open(chunk, |b| hit.open(b)).await?;
            let files = blob_files(chunk, &sources);
            self.refuse_damaged_files(files).await?;
            let sources = chunk
                .iter()
                .zip(sources)
                .map(|(blob, s)| match s {
                    // A reader never yields more than one byte past the promised size.
                    BlobSource::Reader(r) => BlobSource::Reader(Box::new(std::io::Read::take(
                        r,
                        blob.size.saturating_add(1),
                    ))),
                    other => other,
                })
                .collect();
            let stored = self.storage.put_blobs(sources, Some(algorithm)).await?;
            // What this storage hashed while storing must be what the record promised:
            // bytes that do not match never get an entry pointing at them.
            if stored.len() != chunk.len() {
                return Err(BackendError::unavailable(format!(
                    "storage {} returned {} blob refs for {} blobs",
                    self.storage.name(),
                    stored.len(),
                    chunk.len()
                )));
            }
            for (want, got) in chunk.iter().zip(&stored) {
                crate::digest::check_blob(want, got)?;
            }
        }
        let record = Arc::new(record.clone());
        let key = EntryKey::new(record.key, task);
        self.storage.put_entry(&key, Arc::clone(&record)).await?;
        Ok(Some(self.hit(key, record, policy)))
    }
}

/// The blobs among `sources` that are local files, with their paths.
fn blob_files(blobs: &[BlobRef], sources: &[BlobSource]) -> Vec<(BlobRef, std::path::PathBuf)> {
    blobs
        .iter()
        .zip(sources)
        .filter_map(|(b, s)| match s {
            BlobSource::File(p) => Some((*b, p.clone())),
            _ => None,
        })
        .collect()
}
