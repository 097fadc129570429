//! Moving blobs: `BatchUpdateBlobs` / `BatchReadBlobs` for small ones, packed so that
//! every encoded request (and expected response) stays under the server's batch limit
//! with each blob's message overhead counted; ByteStream `Write` (streamed from the
//! file, resumed with `QueryWriteStatus`) and `Read` (a lazy, bounded reader) for the
//! rest. Where the server advertises zstd, ByteStream uses `compressed-blobs/zstd`
//! (compressed chunk by chunk on the way up, decoded with a bound on the way down) and
//! batches carry zstd data (see [`crate::compress`]).

use crate::client::{Caps, Client, digest_function, retryable};
use crate::compress;
use crate::mapping::to_digest;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use cache_core::{BackendError, BackendResult, BlobRef, DigestAlgorithm};
use prost::Message;
use prost::encoding::encoded_len_varint;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use tonic::Code;

/// Bytes per ByteStream message.
pub const CHUNK: usize = 1 << 20;

/// Messages a stream queues between its reader and the network, each way.
const STREAM_CHUNKS: usize = 4;

/// Bytes of blob data a process reads into batch updates at once (held while the batch
/// is sent: the request, the copy an attempt sends, the encoded message).
pub const BATCH_UPLOAD_BUFFERS: u64 = 16 << 20;

/// The process's budget for batch update data (bytes: they fit any usize).
#[allow(clippy::cast_possible_truncation)]
static BATCH_UPLOADS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(BATCH_UPLOAD_BUFFERS as usize);

/// What one stream (a ByteStream read or write) holds at most: the queued messages,
/// the one being made or read, and the one on the wire.
pub const STREAM_BYTES: u64 = (STREAM_CHUNKS as u64 + 2) * CHUNK as u64;

/// Where the bytes of a blob to upload are.
#[derive(Clone)]
pub enum Payload {
    /// In memory.
    Bytes(Arc<[u8]>),
    /// A regular file (the caller's, or a spool file kept alive by the caller).
    File(PathBuf),
}

impl Payload {
    fn open_at(&self, offset: u64) -> std::io::Result<Box<dyn Read + Send>> {
        match self {
            Payload::Bytes(b) => {
                let mut c = std::io::Cursor::new(Arc::clone(b));
                c.set_position(offset);
                Ok(Box::new(c))
            }
            Payload::File(p) => {
                let mut f = cache_core::storage::open_regular(p)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                f.seek(SeekFrom::Start(offset))?;
                Ok(Box::new(f))
            }
        }
    }

    fn read_all(&self, size: u64) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        self.open_at(0)?.take(size + 1).read_to_end(&mut v)?;
        Ok(v)
    }
}

/// Encoded size of a length-delimited field holding `len` bytes.
fn field(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// What one blob adds to a batch request or response: the repeated message with its
/// digest, data, status and compressor fields, not just the data.
pub fn batch_cost(blob: &BlobRef) -> usize {
    let digest = to_digest(blob).encoded_len();
    let data = usize::try_from(blob.size).unwrap_or(usize::MAX / 2);
    // digest + data + a status (code and a short message) + compressor.
    let inner = field(digest) + field(data) + 64 + 2;
    field(inner)
}

/// Whether `blob` goes through a batch under `limit`.
pub fn fits_batch(blob: &BlobRef, limit: usize, instance: &str) -> bool {
    batch_cost(blob) + field(instance.len()) + 8 <= limit
}

/// Splits `blobs` into batches whose encoded size stays under `limit`.
pub fn pack(blobs: &[BlobRef], limit: usize, instance: &str) -> Vec<Vec<BlobRef>> {
    let base = field(instance.len()) + 8;
    let mut out: Vec<Vec<BlobRef>> = Vec::new();
    let mut used = base;
    for b in blobs {
        let c = batch_cost(b);
        if out.is_empty() || used + c > limit {
            out.push(Vec::new());
            used = base;
        }
        out.last_mut().expect("a batch").push(*b);
        used += c;
    }
    out
}

const ZSTD: i32 = re::compressor::Value::Zstd as i32;

/// `blobs/...`, or `compressed-blobs/zstd/...` (the hash and size of the uncompressed
/// blob in both).
fn resource_blob(algorithm: DigestAlgorithm, blob: &BlobRef, zstd: bool) -> String {
    let kind = if zstd {
        "compressed-blobs/zstd"
    } else {
        "blobs"
    };
    let function = match algorithm {
        DigestAlgorithm::Sha256 => "",
        DigestAlgorithm::Blake3 => "blake3/",
    };
    format!("{kind}/{function}{}/{}", blob.digest.hex(), blob.size)
}

/// Counts what passes through a reader.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Sends the chunks `next` gives (each with whether it is the last) as one ByteStream
/// write starting at `offset`: the resource name in the first message, each later
/// offset the first plus the data sent before it (for a compressed write, as REAPI
/// says, an uncompressed start plus compressed lengths). The data bytes sent.
fn feed(
    mut next: impl FnMut() -> std::io::Result<(Vec<u8>, bool)>,
    name: &str,
    offset: u64,
    tx: &tokio::sync::mpsc::Sender<WriteRequest>,
) -> std::io::Result<u64> {
    let mut at = offset;
    loop {
        let (data, last) = next()?;
        let len = data.len() as u64;
        let msg = WriteRequest {
            resource_name: if at == offset {
                name.to_owned()
            } else {
                String::new()
            },
            write_offset: i64::try_from(at).unwrap_or(i64::MAX),
            finish_write: last,
            data,
        };
        if tx.blocking_send(msg).is_err() {
            return Ok(at - offset); // the server answered early (already stored)
        }
        at += len;
        if last {
            return Ok(at - offset);
        }
    }
}

fn with_instance(instance: &str, rest: &str) -> String {
    if instance.is_empty() {
        rest.to_owned()
    } else {
        format!("{instance}/{rest}")
    }
}

fn upload_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random source");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn io_err(client: &Client, what: &str, e: &dyn std::fmt::Display) -> BackendError {
    BackendError::unavailable(format!("{} {what}: {e}", client.describe))
}

/// Feeds one ByteStream write from `payload` on a blocking thread: the blob from
/// `offset` as it is, or (`zstd`) the whole blob compressed as it is read; the data
/// bytes sent.
fn spawn_feeder(
    payload: Payload,
    name: String,
    offset: u64,
    total: u64,
    zstd: bool,
    tx: tokio::sync::mpsc::Sender<WriteRequest>,
) -> tokio::task::JoinHandle<std::io::Result<u64>> {
    tokio::task::spawn_blocking(cache_core::cancel::bind(move || {
        let r = payload.open_at(offset)?;
        if zstd {
            let source = Counting {
                inner: r.take(total),
                read: 0,
            };
            let mut z = Some(compress::encoder(source)?);
            let next = || {
                let Some(enc) = z.as_mut() else {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                };
                let mut data = vec![0u8; CHUNK];
                let n = compress::fill(enc, &mut data)?;
                data.truncate(n);
                let last = n < CHUNK;
                if last {
                    let read = z.take().map_or(0, |e| e.finish().into_inner().read);
                    if read != total {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("the blob's source ended after {read} of {total} bytes"),
                        ));
                    }
                }
                Ok((data, last))
            };
            feed(next, &name, offset, &tx)
        } else {
            let mut r = r;
            let mut at = offset;
            let next = || {
                let want = usize::try_from((total - at).min(CHUNK as u64)).unwrap_or(CHUNK);
                let mut data = vec![0u8; want];
                r.read_exact(&mut data)?;
                at += want as u64;
                Ok((data, at == total))
            };
            feed(next, &name, offset, &tx)
        }
    }))
}

impl Client {
    /// Uploads `blobs` (all under `algorithm`, none empty): batches for the small,
    /// ByteStream for the large; every per-blob status checked.
    pub async fn upload(
        self: &Arc<Self>,
        algorithm: DigestAlgorithm,
        caps: &Caps,
        blobs: Vec<(BlobRef, Payload)>,
    ) -> BackendResult<()> {
        let limit = caps.batch_limit;
        let (batch_zstd, zstd) = (caps.zstd.batch_updates, caps.zstd.streams);
        let instance = self.instance().to_owned();
        let (small, large): (Vec<_>, Vec<_>) = blobs
            .into_iter()
            .filter(|(b, _)| b.size > 0)
            .partition(|(b, _)| fits_batch(b, limit, &instance));
        let mut running = tokio::task::JoinSet::new();
        let payloads: std::collections::HashMap<BlobRef, Payload> = small.into_iter().collect();
        let refs: Vec<BlobRef> = payloads.keys().copied().collect();
        let payloads = Arc::new(payloads);
        // Bounds memory: a batch's bytes are read only once it may be sent.
        let gate = Arc::new(tokio::sync::Semaphore::new(
            self.config.concurrency.clamp(1, 8),
        ));
        for batch in pack(&refs, limit, &instance) {
            let me = Arc::clone(self);
            let payloads = Arc::clone(&payloads);
            let gate = Arc::clone(&gate);
            running.spawn(async move {
                let _turn = gate.acquire_owned().await;
                me.batch_update(algorithm, batch, &payloads, batch_zstd)
                    .await
            });
        }
        for (blob, payload) in large {
            let me = Arc::clone(self);
            let gate = Arc::clone(&gate);
            running.spawn(async move {
                let _turn = gate.acquire_owned().await;
                me.write_stream(algorithm, blob, payload, zstd).await
            });
        }
        let mut first = None;
        while let Some(r) = running.join_next().await {
            let r =
                r.unwrap_or_else(|e| Err(BackendError::unavailable(format!("upload task: {e}"))));
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    async fn batch_update(
        &self,
        algorithm: DigestAlgorithm,
        batch: Vec<BlobRef>,
        payloads: &std::collections::HashMap<BlobRef, Payload>,
        zstd: bool,
    ) -> BackendResult<()> {
        let items: Vec<(BlobRef, Payload)> =
            batch.iter().map(|b| (*b, payloads[b].clone())).collect();
        let data = batch.iter().map(|b| b.size).fold(0, u64::saturating_add);
        // Read only once the process has room for it; held until the batch is sent.
        let want = u32::try_from(data.min(BATCH_UPLOAD_BUFFERS)).unwrap_or(u32::MAX);
        let _room = BATCH_UPLOADS.acquire_many(want).await;
        let describe = self.describe.clone();
        // The batch is at most the batch limit (a few MiB): read (and compressed) on a
        // blocking thread. A compressed blob is never larger than its data (else it goes
        // as it is), so the batch stays packed under the limit by uncompressed cost.
        let requests = tokio::task::spawn_blocking(cache_core::cancel::bind(move || {
            items
                .into_iter()
                .map(|(b, p)| {
                    let data = p.read_all(b.size)?;
                    let (data, compressor) = match zstd.then(|| compress::encode_small(&data)) {
                        Some(Ok(Some(z))) => (z, ZSTD),
                        Some(Err(e)) => return Err(e),
                        _ => (data, 0),
                    };
                    Ok(re::batch_update_blobs_request::Request {
                        digest: Some(to_digest(&b)),
                        data,
                        compressor,
                    })
                })
                .collect::<std::io::Result<Vec<_>>>()
        }))
        .await
        .map_err(|e| BackendError::unavailable(format!("{describe}: read task: {e}")))?
        .map_err(BackendError::Io)?;
        let sent: usize = requests.iter().map(|r| r.data.len()).sum();
        self.bytes_sent
            .fetch_add(sent as u64, std::sync::atomic::Ordering::Relaxed);
        let req = re::BatchUpdateBlobsRequest {
            instance_name: self.instance().to_owned(),
            requests,
            digest_function: digest_function(algorithm),
        };
        let mut pending = req;
        // Blobs refused with a retryable per-blob status are sent again, alone.
        for attempt in 1..=self.config.max_attempts {
            let resp = self
                .call("BatchUpdateBlobs", || {
                    let mut c = self.cas();
                    let req = pending.clone();
                    async move { c.batch_update_blobs(req).await }
                })
                .await?
                .into_inner();
            let mut again = Vec::new();
            for r in resp.responses {
                let code = r.status.as_ref().map_or(0, |s| s.code);
                if code == 0 {
                    continue;
                }
                let status = tonic::Status::new(
                    Code::from_i32(code),
                    r.status.map(|s| s.message).unwrap_or_default(),
                );
                let hash = r
                    .digest
                    .as_ref()
                    .map(|d| d.hash.clone())
                    .unwrap_or_default();
                if retryable(&status) && attempt < self.config.max_attempts {
                    if let Some(req) = pending
                        .requests
                        .iter()
                        .find(|q| q.digest.as_ref().is_some_and(|d| d.hash == hash))
                    {
                        again.push(req.clone());
                        continue;
                    }
                }
                return Err(self.error(&format!("BatchUpdateBlobs of blob {hash}"), &status));
            }
            if again.is_empty() {
                return Ok(());
            }
            pending.requests = again;
            tokio::time::sleep(self.config.backoff * attempt).await;
        }
        Ok(())
    }

    /// Writes one blob through ByteStream, streamed from its payload in chunks (zstd
    /// compressed chunk by chunk when `zstd`); after a retryable failure, asks
    /// `QueryWriteStatus` where to resume. A compressed write is not resumed (what a
    /// server has committed of one is in no unit REAPI defines): it starts again.
    async fn write_stream(
        &self,
        algorithm: DigestAlgorithm,
        blob: BlobRef,
        payload: Payload,
        zstd: bool,
    ) -> BackendResult<()> {
        let name = || {
            with_instance(
                self.instance(),
                &format!(
                    "uploads/{}/{}",
                    upload_id(),
                    resource_blob(algorithm, &blob, zstd)
                ),
            )
        };
        let mut resource = name();
        let size = i64::try_from(blob.size).unwrap_or(i64::MAX);
        let mut offset = 0u64;
        let mut attempt = 1;
        let what = format!("ByteStream.Write of {blob}");
        loop {
            // The turn first: a feeder waiting for one would hold its chunks meanwhile.
            self.count("ByteStream.Write");
            let permit = self.limit_permit().await;
            let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(STREAM_CHUNKS);
            // The file is read (and compressed) on a blocking thread, a chunk at a
            // time; the bounded channel keeps at most a few chunks in memory.
            let feeder = spawn_feeder(
                payload.clone(),
                resource.clone(),
                offset,
                blob.size,
                zstd,
                tx,
            );
            // The deadline grows with the blob (1 s per MiB on top of the call deadline).
            let deadline = self.config.call_timeout
                + std::time::Duration::from_millis((blob.size >> 20).saturating_mul(1000));
            let mut c = self.bytestream();
            let outcome = tokio::time::timeout(
                deadline,
                c.write(tokio_stream::wrappers::ReceiverStream::new(rx)),
            )
            .await;
            drop(permit);
            let fed = feeder.await;
            let sent = match &fed {
                Ok(Ok(n)) => *n,
                _ => 0,
            };
            self.bytes_sent
                .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
            let status = match outcome {
                Ok(Ok(resp)) => {
                    let committed = resp.into_inner().committed_size;
                    // A compressed write's commit is -1 (REAPI), or either of its sizes.
                    let whole = i64::try_from(offset + sent).unwrap_or(i64::MAX);
                    if committed == size || committed == -1 || (zstd && committed == whole) {
                        return Ok(());
                    }
                    return Err(io_err(
                        self,
                        &what,
                        &format!("the server committed {committed} of {size} bytes"),
                    ));
                }
                Ok(Err(s)) => s,
                Err(_) => tonic::Status::deadline_exceeded("write stalled"),
            };
            if let Ok(Err(e)) = fed {
                return Err(BackendError::Io(e));
            }
            if !retryable(&status) || attempt >= self.config.max_attempts {
                return Err(self.error(&what, &status));
            }
            attempt += 1;
            tokio::time::sleep(self.config.backoff).await;
            let (complete, committed) = self.write_status(&resource).await;
            if complete {
                return Ok(());
            }
            if zstd {
                resource = name();
            } else {
                offset = committed.min(blob.size);
                if offset == blob.size {
                    return Ok(());
                }
            }
        }
    }

    async fn limit_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.limit).acquire_owned().await.ok()
    }

    /// How far a broken upload got: whether it is complete, and the committed size (0
    /// when unknown).
    async fn write_status(&self, resource: &str) -> (bool, u64) {
        self.count("ByteStream.QueryWriteStatus");
        let req = QueryWriteStatusRequest {
            resource_name: resource.to_owned(),
        };
        let mut c = self.bytestream();
        match tokio::time::timeout(self.config.call_timeout, c.query_write_status(req)).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                (r.complete, u64::try_from(r.committed_size).unwrap_or(0))
            }
            _ => (false, 0),
        }
    }

    /// Reads small blobs through `BatchReadBlobs`: their bytes, or `None` for a blob the
    /// server does not have. Any other per-blob status is an error.
    pub async fn batch_read(
        self: &Arc<Self>,
        algorithm: DigestAlgorithm,
        caps: &Caps,
        blobs: &[BlobRef],
    ) -> BackendResult<std::collections::HashMap<BlobRef, Option<Vec<u8>>>> {
        let (limit, zstd) = (caps.batch_limit, caps.zstd.streams);
        let mut running = tokio::task::JoinSet::new();
        let wanted: Vec<BlobRef> = {
            let mut v: Vec<BlobRef> = blobs.iter().filter(|b| b.size > 0).copied().collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let gate = Arc::new(tokio::sync::Semaphore::new(
            self.config.concurrency.clamp(1, 8),
        ));
        for batch in pack(&wanted, limit, self.instance()) {
            let me = Arc::clone(self);
            let gate = Arc::clone(&gate);
            running.spawn(async move {
                let _turn = gate.acquire_owned().await;
                me.batch_read_one(algorithm, batch, zstd).await
            });
        }
        let mut out: std::collections::HashMap<BlobRef, Option<Vec<u8>>> = blobs
            .iter()
            .filter(|b| b.size == 0)
            .map(|b| (*b, Some(Vec::new())))
            .collect();
        while let Some(r) = running.join_next().await {
            let r =
                r.unwrap_or_else(|e| Err(BackendError::unavailable(format!("read task: {e}"))))?;
            out.extend(r);
        }
        Ok(out)
    }

    async fn batch_read_one(
        &self,
        algorithm: DigestAlgorithm,
        batch: Vec<BlobRef>,
        zstd: bool,
    ) -> BackendResult<Vec<(BlobRef, Option<Vec<u8>>)>> {
        let req = re::BatchReadBlobsRequest {
            instance_name: self.instance().to_owned(),
            digests: batch.iter().map(to_digest).collect(),
            acceptable_compressors: if zstd { vec![ZSTD] } else { Vec::new() },
            digest_function: digest_function(algorithm),
        };
        let resp = self
            .call("BatchReadBlobs", || {
                let mut c = self.cas();
                let req = req.clone();
                async move { c.batch_read_blobs(req).await }
            })
            .await?
            .into_inner();
        let mut out = Vec::with_capacity(batch.len());
        let mut compressed = Vec::new();
        for r in resp.responses {
            let Some(d) = r.digest.as_ref() else { continue };
            let Some(blob) = batch.iter().find(|b| {
                b.digest.hex() == d.hash && i64::try_from(b.size).ok() == Some(d.size_bytes)
            }) else {
                continue;
            };
            let code = r.status.as_ref().map_or(0, |s| s.code);
            if code == Code::NotFound as i32 {
                out.push((*blob, None));
            } else if code != 0 {
                let status = tonic::Status::new(
                    Code::from_i32(code),
                    r.status.map(|s| s.message).unwrap_or_default(),
                );
                return Err(self.error(&format!("BatchReadBlobs of {blob}"), &status));
            } else if r.compressor == 0 {
                // Cache verifies every byte before use; a wrong length is already known.
                out.push((*blob, Some(r.data)));
            } else if r.compressor == ZSTD && zstd {
                compressed.push((*blob, r.data));
            } else {
                return Err(io_err(
                    self,
                    &format!("BatchReadBlobs of {blob}"),
                    &format!(
                        "the server answered with compressor {}, which was not asked for",
                        r.compressor
                    ),
                ));
            }
        }
        if !compressed.is_empty() {
            // At most the batch limit of data, decoded on a blocking thread, each blob
            // to at most its size + 1 bytes (a zip bomb stops there).
            let decoded = tokio::task::spawn_blocking(cache_core::cancel::bind(move || {
                compressed
                    .into_iter()
                    .map(|(b, z)| (b, compress::decode_all(&z, b.size)))
                    .collect::<Vec<_>>()
            }))
            .await
            .map_err(|e| io_err(self, "BatchReadBlobs", &format!("decode task: {e}")))?;
            for (b, data) in decoded {
                let data = data.map_err(|e| io_err(self, &format!("BatchReadBlobs of {b}"), &e))?;
                out.push((b, Some(data)));
            }
        }
        for b in &batch {
            if !out.iter().any(|(x, _)| x == b) {
                return Err(io_err(
                    self,
                    "BatchReadBlobs",
                    &format!("no answer for {b}"),
                ));
            }
        }
        Ok(out)
    }

    /// A lazy reader of `blob` through ByteStream `Read`: the call starts at the first
    /// read; a bounded channel holds at most a few chunks; a broken stream resumes at
    /// the offset reached.
    pub fn stream_reader(
        self: &Arc<Self>,
        algorithm: DigestAlgorithm,
        blob: BlobRef,
        zstd: bool,
    ) -> Box<dyn Read + Send> {
        Box::new(StreamReader {
            client: Arc::clone(self),
            handle: tokio::runtime::Handle::current(),
            resource: with_instance(self.instance(), &resource_blob(algorithm, &blob, zstd)),
            size: blob.size,
            zstd,
            rx: None,
            buf: Vec::new(),
            pos: 0,
        })
    }

    /// A compressed read that cannot be decoded, naming the server.
    fn decode_error(&self, e: &std::io::Error) -> std::io::Error {
        std::io::Error::new(e.kind(), format!("{} ByteStream.Read: {e}", self.describe))
    }

    /// Streams `resource` into `tx`; a compressed one (`zstd`) is decoded here, in
    /// pieces of at most a chunk and never past `size` bytes in all. A broken stream
    /// resumes at the (uncompressed) offset reached, as REAPI defines `read_offset`
    /// for compressed reads too, with a new decoder.
    async fn read_stream(
        self: Arc<Self>,
        resource: String,
        size: u64,
        zstd: bool,
        tx: tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>,
    ) {
        let mut received = 0u64;
        let mut attempt = 1;
        loop {
            let mut decoder = if zstd {
                match compress::Unzstd::new(size.saturating_sub(received), size) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            } else {
                None
            };
            let req = ReadRequest {
                resource_name: resource.clone(),
                read_offset: i64::try_from(received).unwrap_or(i64::MAX),
                read_limit: 0,
            };
            self.count("ByteStream.Read");
            let permit = self.limit_permit().await;
            let mut c = self.bytestream();
            let status = match tokio::time::timeout(self.config.call_timeout, c.read(req)).await {
                Ok(Ok(resp)) => {
                    let mut stream = resp.into_inner();
                    loop {
                        match tokio::time::timeout(self.config.call_timeout, stream.message()).await
                        {
                            Ok(Ok(Some(m))) => {
                                let Some(d) = decoder.as_mut() else {
                                    received += m.data.len() as u64;
                                    if tx.send(Ok(m.data)).await.is_err() {
                                        return; // the reader is gone
                                    }
                                    continue;
                                };
                                let mut input = &m.data[..];
                                loop {
                                    let piece = match d.step(&mut input) {
                                        Ok(Some(p)) => Ok(p),
                                        Ok(None) => break,
                                        Err(e) => Err(self.decode_error(&e)),
                                    };
                                    let failed = piece.is_err();
                                    received += piece.as_ref().map_or(0, |p| p.len() as u64);
                                    if tx.send(piece).await.is_err() || failed {
                                        return;
                                    }
                                }
                            }
                            Ok(Ok(None)) => {
                                if let Some(Err(e)) = decoder.as_ref().map(compress::Unzstd::finish)
                                {
                                    let _ = tx.send(Err(self.decode_error(&e))).await;
                                }
                                return;
                            }
                            Ok(Err(s)) => break s,
                            Err(_) => break tonic::Status::deadline_exceeded("read stalled"),
                        }
                    }
                }
                Ok(Err(s)) => s,
                Err(_) => tonic::Status::deadline_exceeded("read did not start"),
            };
            drop(permit);
            if !retryable(&status) || attempt >= self.config.max_attempts {
                let e = self.error("ByteStream.Read", &status);
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                return;
            }
            attempt += 1;
            tokio::time::sleep(self.config.backoff).await;
        }
    }
}

struct StreamReader {
    client: Arc<Client>,
    handle: tokio::runtime::Handle,
    resource: String,
    size: u64,
    zstd: bool,
    rx: Option<tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos < self.buf.len() {
                let n = out.len().min(self.buf.len() - self.pos);
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            let rx = self.rx.get_or_insert_with(|| {
                let (tx, rx) = tokio::sync::mpsc::channel(STREAM_CHUNKS);
                let client = Arc::clone(&self.client);
                self.handle.spawn(client.read_stream(
                    self.resource.clone(),
                    self.size,
                    self.zstd,
                    tx,
                ));
                rx
            });
            // Read on a blocking thread (cache-core's readers run there).
            match rx.blocking_recv() {
                Some(Ok(data)) => {
                    self.buf = data;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_count_each_blobs_overhead() {
        // 1,000 blobs of 16 KiB: data alone fits 255 in 4 MiB, but not with overhead.
        let blobs: Vec<BlobRef> = (0..1000u32)
            .map(|i| BlobRef {
                digest: DigestAlgorithm::Sha256.digest(&i.to_le_bytes()),
                size: 16 << 10,
            })
            .collect();
        let limit = 4_193_280;
        let batches = pack(&blobs, limit, "");
        for b in &batches {
            let req = re::BatchUpdateBlobsRequest {
                instance_name: String::new(),
                requests: b
                    .iter()
                    .map(|x| re::batch_update_blobs_request::Request {
                        digest: Some(to_digest(x)),
                        data: vec![7; 16 << 10],
                        compressor: 0,
                    })
                    .collect(),
                digest_function: 0,
            };
            assert!(
                req.encoded_len() <= limit,
                "{} > {limit}",
                req.encoded_len()
            );
        }
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 1000);
        assert!(!fits_batch(
            &BlobRef {
                size: limit as u64,
                ..blobs[0]
            },
            limit,
            ""
        ));
    }
}
