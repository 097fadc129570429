//! # cache-remote: any Bazel Remote Execution API v2 cache as a taskcache backend
//!
//! [`RemoteStorage`] is a [`cache_core::storage::Storage`] over the REAPI ActionCache,
//! CAS, ByteStream and Capabilities services (BuildGrid, BuildBuddy, NativeLink,
//! bazel-remote, Buildbarn, EngFlow, ...), so policy, publish order, digest
//! verification and path safety stay in [`cache_core::Cache`].
//!
//! * **Keys.** An entry is stored under the digest of a real `Action`: its `Command`
//!   (the task's arguments) and empty input root are CAS blobs, and its `salt` is the
//!   task digest, so the task digest determines the action-cache key.
//! * **Results.** An entry is an `ActionResult` any REAPI tool reads: output files
//!   (with `is_executable`), directories as `Tree` blobs (empty ones included),
//!   symlinks, exit code, stdout/stderr (inline and by digest), execution timestamps
//!   carrying the duration. A result this client cannot map is a corrupt entry: a miss
//!   with a warning, never a partial restore. Whoever can write the cache writes the
//!   results and their `Tree`s (DAGs), so reading is bounded before anything is
//!   expanded (see [`mapping`]) and large results are decoded on the blocking pool,
//!   stopping when the lookup is dropped.
//! * **Capabilities** are asked once and obeyed: digest function (SHA-256; BLAKE3 when
//!   listed), batch limit, read-only action caches, absolute-symlink strategy, and
//!   zstd: where the server lists it, blobs cross as `compressed-blobs` (ByteStream)
//!   or zstd batch data, decoded with a hard bound at each blob's size + 1.
//! * **Uploads** ask `FindMissingBlobs` first, send small blobs in batches packed with
//!   each blob's message overhead counted, and large ones through ByteStream `Write`
//!   streamed from the file (resumed with `QueryWriteStatus`); the result is written
//!   only after every blob is confirmed. **Downloads** use `BatchReadBlobs` for small
//!   blobs and lazy, bounded ByteStream `Read` streams for large ones.
//! * **Network**: one shared HTTP/2 channel, connect and per-call deadlines, retries
//!   with exponential backoff and jitter on UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED and
//!   DEADLINE_EXCEEDED, bounded concurrency.
//! * **Faults**: every gRPC status is mapped by who owns it ([`status_error`]): an
//!   outage (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNKNOWN,
//!   ABORTED, CANCELLED), a refused permission (PERMISSION_DENIED, UNAUTHENTICATED:
//!   [`cache_core::Fault::Permission`]), or a request the server rejected
//!   (INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE, ...: the cache's, not an
//!   outage); NOT_FOUND of a result or blob is a miss. A read-only action cache
//!   (`update_enabled: false`) refuses every store up front as a permission fault,
//!   before any blob is sent. Put the backend behind [`cache_core::CircuitBreaker`]
//!   so a dead server costs one timeout, and in [`cache_core::Tiered`] so a read-only
//!   one is read and no longer written.
//!
//! ## Memory
//!
//! What a storage holds in memory stays bounded however many calls run at once:
//!
//! | held in memory | bound | per |
//! |---|---|---|
//! | ByteStream reads and writes: a few 1 MiB messages queued each way ([`STREAM_BYTES`], 6 MiB); a write's feeder starts only once the stream may run | [`RemoteConfig::concurrency`] streams and calls (16): 96 MiB | storage |
//! | batch updates: the data of a batch, read only once the process has room for it, held (with the copy an attempt sends and the encoded message) until it is sent | [`BATCH_UPLOAD_BUFFERS`] of data (16 MiB), 48 MiB | process |
//! | batch reads: small blobs (up to the batch limit, 4 MiB) handed over as bytes; large ones are lazy ByteStream readers | `Cache`'s window budget ([`cache_core::storage::WINDOW_BUDGET`], 128 MiB), and as much again for a moment while an answer is decoded from its own buffer | process |
//! | hashing a store's sources (a 1 MiB buffer; a reader is spooled to a temporary file) | 1 MiB | call |
//! | reading an entry (its result, trees and logs) | 64 MiB ([`cache_core::storage::MAX_ENTRY_BYTES`]) | lookup |
//!
//! With the default configuration that is [`MEMORY_PER_PROCESS`] beyond `Cache`'s
//! window budget, and [`MEMORY_PER_CALL`] per store or import in flight.
//!
//! ```no_run
//! use cache_remote::{RemoteConfig, RemoteStorage};
//! # async fn f() -> cache_core::BackendResult<()> {
//! let config = RemoteConfig::from_url("grpc://127.0.0.1:8980/main")
//!     .map_err(cache_core::BackendError::unavailable)?
//!     .header("authorization", "Bearer token")
//!     .map_err(cache_core::BackendError::unavailable)?;
//! let storage = RemoteStorage::open(config)?;
//! let cache = cache_core::Cache::new(storage, |job| {
//!     tokio::task::spawn_blocking(job);
//! });
//! # let _ = cache; Ok(()) }
//! ```

mod blobs;
mod client;
mod compress;
mod config;
#[doc(hidden)]
pub mod fuzz;
pub mod mapping;

pub use blobs::{BATCH_UPLOAD_BUFFERS, STREAM_BYTES};
pub use client::{Caps, ZstdSupport, status_error};

/// The most a REAPI storage's transfers hold at once in one process with the default
/// configuration (16 calls in flight), beyond `Cache`'s window budget: streams, batch
/// updates, and batch answers being decoded (see the crate docs' table).
pub const MEMORY_PER_PROCESS: u64 =
    16 * STREAM_BYTES + 3 * BATCH_UPLOAD_BUFFERS + cache_core::storage::WINDOW_BUDGET;

/// What one store or import holds besides: the buffer that hashes its sources.
pub const MEMORY_PER_CALL: u64 = 1 << 20;
pub use config::{RemoteConfig, Secret, TlsConfig};

use blobs::Payload;
use cache_core::cancel::CancelToken;
use cache_core::storage::{
    ActionRecord, BlobSource, EntryKey, MAX_ENTRY_BYTES, OutputRecord, Storage, StoredEntry,
};
use cache_core::{BackendError, BackendResult, BlobRef, DigestAlgorithm};
use client::Client;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// What a [`RemoteStorage`] did: see [`RemoteStorage::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteStats {
    /// Calls by RPC name (every attempt).
    pub rpcs: std::collections::BTreeMap<String, u64>,
    /// Blob bytes sent.
    pub blob_bytes_sent: u64,
}

impl RemoteStats {
    /// All calls but `GetCapabilities` (asked once per storage).
    #[must_use]
    pub fn calls(&self) -> u64 {
        self.rpcs
            .iter()
            .filter(|(k, _)| k.as_str() != "GetCapabilities")
            .map(|(_, v)| v)
            .sum()
    }
}

/// A REAPI v2 cache as a [`Storage`].
pub struct RemoteStorage {
    client: Arc<Client>,
    /// Blobs `Cache` found corrupt: REAPI cannot delete them, so the next store sends
    /// them again instead of trusting `FindMissingBlobs`.
    suspect: Mutex<HashSet<BlobRef>>,
}

impl std::fmt::Debug for RemoteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStorage")
            .field("server", &self.client.describe)
            .finish_non_exhaustive()
    }
}

fn join_error(e: &tokio::task::JoinError) -> BackendError {
    BackendError::unavailable(format!("a blocking task failed: {e}"))
}

/// Results that take more than this with their trees and logs are decoded (and their
/// blobs hashed) on the blocking pool; smaller ones where they were read.
const DECODE_INLINE_BYTES: u64 = 64 << 10;

/// Runs `job` on the blocking pool as a call of its own ([`cache_core::cancel`]): its
/// token is cancelled when the returned future is dropped (a deadline, say) or the
/// cache call around it is, so a job that checks it stops instead of working on for
/// nobody.
async fn on_blocking_pool<T: Send + 'static>(
    job: impl FnOnce(&CancelToken) -> BackendResult<T> + Send + 'static,
) -> BackendResult<T> {
    cache_core::cancel::scoped(async move {
        let job = cache_core::cancel::bind(move || job(&CancelToken::current()));
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| join_error(&e))?
    })
    .await
}

impl RemoteStorage {
    /// Opens a storage on `config`'s server. The connection is made lazily (at the
    /// first call, within the connect deadline); needs a tokio runtime.
    pub fn open(config: RemoteConfig) -> BackendResult<Self> {
        Ok(RemoteStorage {
            client: Arc::new(Client::new(config)?),
            suspect: Mutex::new(HashSet::new()),
        })
    }

    /// The server and instance, for messages (no secrets).
    #[must_use]
    pub fn describe(&self) -> &str {
        &self.client.describe
    }

    /// Refuses a write up front when the server's action cache is read-only
    /// (`update_enabled: false` in its capabilities, asked once): a
    /// [`cache_core::Fault::Permission`] fault before any blob is sent, so a store to a
    /// read-only cache costs no upload and is no outage (a read-only token's executor
    /// keeps reading the cache).
    fn writable(&self, caps: &Caps) -> BackendResult<()> {
        if caps.update_enabled {
            return Ok(());
        }
        Err(BackendError::permission_denied(format!(
            "{}: the action cache is read-only (the server's capabilities say \
             update_enabled: false); reading from it, not writing to it",
            self.describe()
        )))
    }

    /// Calls made so far, by RPC (every attempt), and blob bytes sent: what a
    /// benchmark or a test reports (a warm store sends no blob bytes).
    #[must_use]
    pub fn stats(&self) -> RemoteStats {
        RemoteStats {
            rpcs: self
                .client
                .rpcs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            blob_bytes_sent: self
                .client
                .bytes_sent
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The server's capabilities (asked once).
    pub async fn capabilities(&self) -> BackendResult<Caps> {
        self.client.caps().await.cloned()
    }

    /// The action-cache key of `key`'s entry under the server's digest function: the
    /// digest of the serialized `Action` (for interop tools and tests).
    pub async fn action_digest(&self, key: &EntryKey) -> BackendResult<BlobRef> {
        let algorithm = self.client.caps().await?.algorithm(None, self.describe())?;
        Ok(mapping::action_for(key, algorithm).action)
    }

    /// Stores `result` for `key` as it is, with the action's blobs (for tools and tests
    /// that plant results this client did not write).
    pub async fn put_raw_result(
        &self,
        key: &EntryKey,
        result: bazel_remote_apis::build::bazel::remote::execution::v2::ActionResult,
        extra_blobs: Vec<(BlobRef, Vec<u8>)>,
    ) -> BackendResult<()> {
        let caps = self.client.caps().await?.clone();
        let algorithm = caps.algorithm(None, self.describe())?;
        let action = mapping::action_for(key, algorithm);
        let mut blobs = action.blobs;
        blobs.extend(extra_blobs);
        self.upload_missing(
            algorithm,
            &caps,
            blobs
                .into_iter()
                .map(|(b, v)| (b, Payload::Bytes(v.into())))
                .collect(),
        )
        .await?;
        self.client
            .update_action_result(algorithm, &action.action, result)
            .await
    }

    /// The stored result for `key`, as the server returns it.
    pub async fn get_raw_result(
        &self,
        key: &EntryKey,
    ) -> BackendResult<Option<bazel_remote_apis::build::bazel::remote::execution::v2::ActionResult>>
    {
        let algorithm = self.client.caps().await?.algorithm(None, self.describe())?;
        let action = mapping::action_for(key, algorithm);
        self.client
            .get_action_result(algorithm, &action.action)
            .await
    }

    /// Uploads what the server lacks of `blobs` (and every suspect blob among them).
    async fn upload_missing(
        &self,
        algorithm: DigestAlgorithm,
        caps: &Caps,
        blobs: Vec<(BlobRef, Payload)>,
    ) -> BackendResult<()> {
        let mut unique: HashMap<BlobRef, Payload> = HashMap::new();
        for (b, p) in blobs {
            unique.entry(b).or_insert(p);
        }
        let refs: Vec<BlobRef> = unique.keys().copied().collect();
        let mut send: HashSet<BlobRef> = self
            .client
            .find_missing(algorithm, &refs)
            .await?
            .into_iter()
            .collect();
        {
            let suspect = self.suspect.lock().expect("suspect set");
            send.extend(refs.iter().filter(|b| suspect.contains(b)));
        }
        if send.is_empty() {
            return Ok(());
        }
        let items: Vec<(BlobRef, Payload)> = unique
            .into_iter()
            .filter(|(b, _)| send.contains(b))
            .collect();
        self.client.upload(algorithm, caps, items).await?;
        let mut suspect = self.suspect.lock().expect("suspect set");
        for b in &send {
            suspect.remove(b);
        }
        Ok(())
    }

    /// Reads `blobs` fully into memory (trees and small logs of one entry; each at most
    /// [`MAX_ENTRY_BYTES`]): `None` for blobs the server lacks.
    async fn read_small(
        &self,
        algorithm: DigestAlgorithm,
        caps: &Caps,
        blobs: &[BlobRef],
    ) -> BackendResult<HashMap<BlobRef, Option<Vec<u8>>>> {
        let (small, large): (Vec<BlobRef>, Vec<BlobRef>) = blobs
            .iter()
            .partition(|b| blobs::fits_batch(b, caps.batch_limit, self.client.instance()));
        let mut out = self.client.batch_read(algorithm, caps, &small).await?;
        for b in large {
            let missing = self.client.find_missing(algorithm, &[b]).await?;
            if !missing.is_empty() {
                out.insert(b, None);
                continue;
            }
            let reader = self.client.stream_reader(algorithm, b, caps.zstd.streams);
            let bytes = tokio::task::spawn_blocking(cache_core::cancel::bind(move || {
                let mut v = Vec::new();
                let reader = CancelToken::current().reader(reader);
                std::io::Read::read_to_end(&mut std::io::Read::take(reader, b.size + 1), &mut v)
                    .map(|_| v)
            }))
            .await
            .map_err(|e| join_error(&e))?
            .map_err(BackendError::Io)?;
            out.insert(b, Some(bytes));
        }
        Ok(out)
    }
}

/// Hashed sources, and the spool files that back some of them.
type Hashed = (Vec<(BlobRef, Payload)>, Vec<tempfile::TempPath>);

/// Hashes the sources (files and readers on a blocking thread; readers are spooled
/// to temporary files, kept alive by the returned guard).
fn hash_sources(sources: Vec<BlobSource>, algorithm: DigestAlgorithm) -> BackendResult<Hashed> {
    let mut out = Vec::with_capacity(sources.len());
    let mut spools = Vec::new();
    for s in sources {
        match s {
            BlobSource::Bytes(b) => out.push((BlobRef::of(algorithm, &b), Payload::Bytes(b))),
            BlobSource::File(p) => {
                let mut f = cache_core::storage::open_regular(&p)?;
                let r = cache_core::storage::hash_reader(&mut f, algorithm)
                    .map_err(|e| BackendError::io_with_context("hash", &p, e))?;
                out.push((r, Payload::File(p)));
            }
            BlobSource::Reader(mut reader) => {
                let mut spool = tempfile::NamedTempFile::new().map_err(BackendError::Io)?;
                let r =
                    cache_core::storage::copy_hashing(&mut reader, spool.as_file_mut(), algorithm)
                        .map_err(BackendError::Io)?;
                let path = spool.into_temp_path();
                out.push((r, Payload::File(path.to_path_buf())));
                spools.push(path);
            }
        }
    }
    Ok((out, spools))
}

#[async_trait::async_trait]
impl Storage for RemoteStorage {
    fn name(&self) -> &'static str {
        "remote"
    }

    async fn get_entry(&self, key: &EntryKey) -> BackendResult<Option<StoredEntry>> {
        let caps = self.client.caps().await?.clone();
        let algorithm = caps.algorithm(None, self.describe())?;
        let action = mapping::action_for(key, algorithm);
        let Some(result) = self
            .client
            .get_action_result(algorithm, &action.action)
            .await?
        else {
            return Ok(None);
        };
        let corrupt = |reason: String| BackendError::CorruptEntry {
            key: key.digest,
            reason: format!("unmappable ActionResult: {reason}"),
        };
        let needed = mapping::needed_blobs(&result, algorithm).map_err(corrupt)?;
        // Saturating: hostile sizes must not wrap around to a small total.
        let total = needed.iter().fold(0u64, |n, b| n.saturating_add(b.size));
        if total > MAX_ENTRY_BYTES as u64 {
            return Err(corrupt(format!(
                "its trees and logs take {total} bytes, over the {MAX_ENTRY_BYTES}-byte limit"
            )));
        }
        let read = self.read_small(algorithm, &caps, &needed).await?;
        let mut blobs = HashMap::with_capacity(read.len());
        for (b, bytes) in read {
            let Some(bytes) = bytes else {
                tracing::debug!(server = %self.describe(), key = %key.digest, blob = %b, "a tree or log of the result is gone: miss");
                return Ok(None);
            };
            blobs.insert(b, bytes);
        }
        // The result itself counts too: its recorded paths and top-level outputs.
        let size = total.saturating_add(
            u64::try_from(prost::Message::encoded_len(&result)).unwrap_or(u64::MAX),
        );
        let digest = key.digest;
        let decode = move |stop: &CancelToken| {
            for (b, bytes) in &blobs {
                let actual = BlobRef::of(algorithm, bytes);
                if actual != *b {
                    return Err(BackendError::DigestMismatch {
                        expected: *b,
                        actual,
                    });
                }
            }
            mapping::decode_result_until(&digest, &result, &blobs, algorithm, stop)
        };
        let record = if size <= DECODE_INLINE_BYTES {
            decode(&CancelToken::default())?
        } else {
            on_blocking_pool(decode).await?
        };
        Ok(record.map(StoredEntry::new))
    }

    async fn put_entry(&self, key: &EntryKey, record: Arc<ActionRecord>) -> BackendResult<()> {
        let caps = self.client.caps().await?.clone();
        self.writable(&caps)?;
        if !caps.absolute_symlinks
            && record.outputs.iter().any(
                |o| matches!(o, OutputRecord::Symlink { target, .. } if target.starts_with('/')),
            )
        {
            return Err(BackendError::rejected(format!(
                "{}: the server disallows absolute symlink targets",
                self.describe()
            )));
        }
        let algorithm = caps.algorithm(None, self.describe())?;
        let action = mapping::action_for(key, algorithm);
        let encoded = mapping::encode_record(&record, algorithm)?;
        let mut blobs: Vec<(BlobRef, Payload)> = action
            .blobs
            .into_iter()
            .chain(encoded.trees)
            .map(|(b, v)| (b, Payload::Bytes(v.into())))
            .collect();
        for log in [&record.stdout, &record.stderr] {
            if let cache_core::storage::LogRecord::Inline(b) = log {
                blobs.push((
                    BlobRef::of(algorithm, b),
                    Payload::Bytes(b.as_slice().into()),
                ));
            }
        }
        self.upload_missing(algorithm, &caps, blobs).await?;
        self.client
            .update_action_result(algorithm, &action.action, encoded.result)
            .await
    }

    async fn remove_entry(&self, key: &EntryKey) -> BackendResult<()> {
        let caps = self.client.caps().await?.clone();
        self.writable(&caps)?;
        let algorithm = caps.algorithm(None, self.describe())?;
        let action = mapping::action_for(key, algorithm);
        self.upload_missing(
            algorithm,
            &caps,
            action
                .blobs
                .into_iter()
                .map(|(b, v)| (b, Payload::Bytes(v.into())))
                .collect(),
        )
        .await?;
        self.client
            .update_action_result(algorithm, &action.action, mapping::tombstone(&key.digest))
            .await
    }

    async fn find_missing_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>> {
        let caps = self.client.caps().await?.clone();
        let mut missing = Vec::new();
        for algorithm in [DigestAlgorithm::Sha256, DigestAlgorithm::Blake3] {
            let these: Vec<BlobRef> = blobs
                .iter()
                .filter(|b| b.digest.algorithm() == algorithm)
                .copied()
                .collect();
            if these.is_empty() {
                continue;
            }
            if caps.algorithms.contains(&algorithm) {
                let mut lacking = self.client.find_missing(algorithm, &these).await?;
                // A blob found corrupt counts as missing until a store sends it again.
                let suspect = self.suspect.lock().expect("suspect set");
                let known: HashSet<BlobRef> = lacking.iter().copied().collect();
                lacking.extend(
                    these
                        .iter()
                        .filter(|b| suspect.contains(b) && !known.contains(b)),
                );
                missing.extend(lacking);
            } else {
                missing.extend(these);
            }
        }
        Ok(missing)
    }

    async fn put_blobs(
        &self,
        sources: Vec<BlobSource>,
        algorithm: Option<DigestAlgorithm>,
    ) -> BackendResult<Vec<BlobRef>> {
        let caps = self.client.caps().await?.clone();
        // Blobs are only ever sent for an entry: to a read-only action cache, none.
        self.writable(&caps)?;
        let algorithm = caps.algorithm(algorithm, self.describe())?;
        let (hashed, spools) = tokio::task::spawn_blocking(cache_core::cancel::bind(move || {
            hash_sources(sources, algorithm)
        }))
        .await
        .map_err(|e| join_error(&e))??;
        let refs: Vec<BlobRef> = hashed.iter().map(|(b, _)| *b).collect();
        self.upload_missing(algorithm, &caps, hashed).await?;
        drop(spools);
        Ok(refs)
    }

    async fn open_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<Option<BlobSource>>> {
        let caps = self.client.caps().await?.clone();
        let mut found: HashMap<BlobRef, Option<BlobSource>> = HashMap::new();
        for algorithm in [DigestAlgorithm::Sha256, DigestAlgorithm::Blake3] {
            let these: Vec<BlobRef> = blobs
                .iter()
                .filter(|b| b.digest.algorithm() == algorithm)
                .copied()
                .collect();
            if these.is_empty() || !caps.algorithms.contains(&algorithm) {
                continue;
            }
            let (small, large): (Vec<BlobRef>, Vec<BlobRef>) = these
                .into_iter()
                .partition(|b| blobs::fits_batch(b, caps.batch_limit, self.client.instance()));
            for (b, bytes) in self.client.batch_read(algorithm, &caps, &small).await? {
                found.insert(b, bytes.map(|v| BlobSource::Bytes(v.into())));
            }
            if !large.is_empty() {
                let missing: HashSet<BlobRef> = self
                    .client
                    .find_missing(algorithm, &large)
                    .await?
                    .into_iter()
                    .collect();
                for b in large {
                    let source = (!missing.contains(&b)).then(|| {
                        BlobSource::Reader(self.client.stream_reader(
                            algorithm,
                            b,
                            caps.zstd.streams,
                        ))
                    });
                    found.insert(b, source);
                }
            }
        }
        let mut out = Vec::with_capacity(blobs.len());
        for b in &blobs {
            // A blob asked twice gets a second source of its own.
            let source = match found.remove(b) {
                Some(s) => s,
                None if b.size == 0 => Some(BlobSource::Bytes(Arc::from(&[][..]))),
                None if caps.algorithms.contains(&b.digest.algorithm()) => {
                    if blobs::fits_batch(b, caps.batch_limit, self.client.instance()) {
                        self.client
                            .batch_read(b.digest.algorithm(), &caps, &[*b])
                            .await?
                            .remove(b)
                            .flatten()
                            .map(|v| BlobSource::Bytes(v.into()))
                    } else {
                        Some(BlobSource::Reader(self.client.stream_reader(
                            b.digest.algorithm(),
                            *b,
                            caps.zstd.streams,
                        )))
                    }
                }
                None => None,
            };
            out.push(source);
        }
        Ok(out)
    }

    async fn remove_blob(&self, blob: &BlobRef) -> BackendResult<()> {
        // REAPI has no delete: remember it, so the next store sends it again.
        self.suspect.lock().expect("suspect set").insert(*blob);
        Ok(())
    }

    async fn touch(&self, _key: &EntryKey) -> BackendResult<()> {
        // REAPI servers keep recency themselves (every GetActionResult refreshes it).
        Ok(())
    }

    async fn health_check(&self) -> BackendResult<()> {
        self.client.fetch_caps().await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A lookup dropped by its deadline sets the flag its decode checks, so the blocking
    /// job stops instead of working on for nobody.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_dropped_lookup_stops_its_blocking_decode() {
        let (saw, seen) = std::sync::mpsc::channel();
        let job = on_blocking_pool(move |stop: &CancelToken| {
            let give_up = Instant::now() + Duration::from_secs(30);
            while !stop.is_cancelled() && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(1));
            }
            saw.send(stop.is_cancelled()).unwrap();
            Ok(())
        });
        let timed = tokio::time::timeout(Duration::from_millis(20), job).await;
        assert!(timed.is_err(), "the job ended on its own");
        assert_eq!(seen.recv_timeout(Duration::from_secs(60)), Ok(true));
        // Not dropped: the flag stays clear and the value comes back.
        let value = on_blocking_pool(|stop: &CancelToken| Ok(stop.is_cancelled()));
        assert!(!value.await.unwrap());
    }
}
