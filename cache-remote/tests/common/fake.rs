//! An in-process REAPI server (tonic, on 127.0.0.1) for what a real server will not do
//! on demand: dropped streams, RESOURCE_EXHAUSTED, any status on any RPC, wrong bytes,
//! stalls, tiny batch limits, read-only action caches, per-blob errors. It verifies what it receives like
//! a real server, rejects batches over its advertised limit, and counts every call and
//! every blob byte on the wire. Started with [`start_zstd`] it advertises zstd and
//! speaks REAPI `compressed-blobs` (storing blobs uncompressed); otherwise it refuses
//! anything compressed, as a server that does not advertise it may.

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream as bs;
use bazel_remote_apis::google::rpc;
use prost::Message;
use re::action_cache_server::{ActionCache, ActionCacheServer};
use re::capabilities_server::{Capabilities, CapabilitiesServer};
use re::content_addressable_storage_server::{
    ContentAddressableStorage, ContentAddressableStorageServer,
};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Code, Request, Response, Status, Streaming};

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// Faults to inject (each counter is consumed as it fires).
#[derive(Default, Debug)]
pub struct Faults {
    /// The next N calls of any kind fail with UNAVAILABLE.
    pub unavailable: usize,
    /// The next N calls of any kind fail with RESOURCE_EXHAUSTED.
    pub exhausted: usize,
    /// Every call waits this long before answering.
    pub stall: Option<Duration>,
    /// The next N ByteStream reads break (UNAVAILABLE) after this many bytes.
    pub drop_read_after: Option<(u64, usize)>,
    /// The next N ByteStream writes break (UNAVAILABLE) after this many bytes.
    pub drop_write_after: Option<(u64, usize)>,
    /// The next N blobs in a BatchUpdateBlobs get this per-blob status code.
    pub blob_status: Option<(Code, usize)>,
    /// Reads serve the blob with one byte flipped.
    pub wrong_bytes: bool,
    /// Compressed reads (batch and ByteStream) serve a zip bomb: 256 MiB of zeros.
    pub zstd_bomb: bool,
    /// Batch reads mark every blob with this compressor (the data as it is).
    pub wrong_compressor: Option<i32>,
    /// Every call of these RPCs (by the name counted in `State::calls`) fails with
    /// this status code, as a server that refuses them would.
    pub status_of: HashMap<&'static str, Code>,
}

/// The server's state, shared with the test.
#[derive(Default)]
pub struct State {
    pub cas: Mutex<HashMap<String, Vec<u8>>>,
    pub ac: Mutex<HashMap<String, re::ActionResult>>,
    pub caps: Mutex<re::CacheCapabilities>,
    pub faults: Mutex<Faults>,
    pub calls: Mutex<HashMap<&'static str, usize>>,
    pub uploads: Mutex<HashMap<String, Vec<u8>>>,
    /// Values of the `authorization` header seen.
    pub auth_seen: Mutex<Vec<String>>,
    /// Calls with this `authorization` value see a read-only action cache, as a
    /// server answers a read-only token: `update_enabled: false` in the capabilities
    /// they are given, PERMISSION_DENIED for their `UpdateActionResult`.
    pub read_only_token: Mutex<Option<String>>,
    /// Blob data bytes received (batch updates and ByteStream writes, as sent).
    pub received: Mutex<u64>,
    /// Blob data bytes served (batch and ByteStream reads, as sent).
    pub served: Mutex<u64>,
}

impl State {
    /// Whether `req` carries the read-only token.
    fn read_only<T>(&self, req: &Request<T>) -> bool {
        let token = self.read_only_token.lock().unwrap();
        let sent = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        token.is_some() && token.as_deref() == sent
    }

    pub fn calls(&self, what: &str) -> usize {
        self.calls.lock().unwrap().get(what).copied().unwrap_or(0)
    }

    pub fn total_calls(&self) -> usize {
        self.calls.lock().unwrap().values().sum()
    }

    /// Counts the call, records headers, and fires the faults due.
    async fn enter<T>(&self, what: &'static str, req: &Request<T>) -> Result<(), Status> {
        *self.calls.lock().unwrap().entry(what).or_default() += 1;
        if let Some(v) = req.metadata().get("authorization") {
            self.auth_seen
                .lock()
                .unwrap()
                .push(v.to_str().unwrap_or("").to_owned());
        }
        let stall = {
            let mut f = self.faults.lock().unwrap();
            if f.unavailable > 0 {
                f.unavailable -= 1;
                return Err(Status::unavailable("injected: unavailable"));
            }
            if f.exhausted > 0 {
                f.exhausted -= 1;
                return Err(Status::resource_exhausted("injected: resource exhausted"));
            }
            if let Some(code) = f.status_of.get(what) {
                return Err(Status::new(*code, format!("injected: {code:?}")));
            }
            f.stall
        };
        if let Some(d) = stall {
            tokio::time::sleep(d).await;
        }
        Ok(())
    }

    /// Whether zstd is advertised (for ByteStream and batch reads, or batch updates).
    fn zstd(&self, batch_update: bool) -> bool {
        let caps = self.caps.lock().unwrap();
        let listed = if batch_update {
            &caps.supported_batch_update_compressors
        } else {
            &caps.supported_compressors
        };
        listed.contains(&ZSTD)
    }

    fn count_bytes(counter: &Mutex<u64>, n: usize) {
        *counter.lock().unwrap() += n as u64;
    }

    fn serve_bytes(&self, mut data: Vec<u8>) -> Vec<u8> {
        if self.faults.lock().unwrap().wrong_bytes && !data.is_empty() {
            let mid = data.len() / 2;
            data[mid] ^= 1;
        }
        data
    }
}

const ZSTD: i32 = re::compressor::Value::Zstd as i32;

/// 256 MiB of zeros, zstd-compressed into a few KiB (made once, streamed).
fn bomb() -> Vec<u8> {
    static BOMB: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BOMB.get_or_init(|| {
        let mut z = Vec::new();
        std::io::Read::read_to_end(
            &mut zstd::stream::read::Encoder::new(
                std::io::Read::take(std::io::repeat(0), 256 << 20),
                1,
            )
            .unwrap(),
            &mut z,
        )
        .unwrap();
        z
    })
    .clone()
}

/// What a client sent compressed, decoded to at most `size + 1` bytes (a wrong size
/// then fails the digest check).
fn unzstd(data: &[u8], size: u64) -> Result<Vec<u8>, Status> {
    let mut out = Vec::new();
    let decoder = zstd::stream::read::Decoder::new(data)
        .map_err(|e| Status::invalid_argument(format!("zstd: {e}")))?;
    std::io::Read::read_to_end(&mut std::io::Read::take(decoder, size + 1), &mut out)
        .map_err(|e| Status::invalid_argument(format!("zstd: {e}")))?;
    Ok(out)
}

fn hash_of(data: &[u8], blake3: bool) -> String {
    if blake3 {
        blake3::hash(data).to_hex().to_string()
    } else {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(data))
    }
}

fn is_blake3(digest_function: i32) -> bool {
    digest_function == re::digest_function::Value::Blake3 as i32
}

fn ok() -> rpc::Status {
    rpc::Status::default()
}

fn status(code: Code, message: &str) -> rpc::Status {
    rpc::Status {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    }
}

/// The fake server.
#[derive(Clone)]
pub struct Fake(pub Arc<State>);

/// Starts a fake with SHA-256, a 4 MiB batch limit and updates enabled; returns its
/// `grpc://` URL. Runs on the current tokio runtime.
pub async fn start() -> (String, Arc<State>) {
    start_with(false).await
}

/// Like [`start`], advertising zstd for ByteStream, batch reads and batch updates.
pub async fn start_zstd() -> (String, Arc<State>) {
    start_with(true).await
}

async fn start_with(zstd: bool) -> (String, Arc<State>) {
    let state = Arc::new(State::default());
    let compressors = if zstd { vec![ZSTD] } else { Vec::new() };
    *state.caps.lock().unwrap() = re::CacheCapabilities {
        digest_functions: vec![re::digest_function::Value::Sha256 as i32],
        action_cache_update_capabilities: Some(re::ActionCacheUpdateCapabilities {
            update_enabled: true,
        }),
        max_batch_total_size_bytes: 4_193_280,
        symlink_absolute_path_strategy: re::symlink_absolute_path_strategy::Value::Disallowed
            as i32,
        supported_compressors: compressors.clone(),
        supported_batch_update_compressors: compressors,
        ..re::CacheCapabilities::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let fake = Fake(Arc::clone(&state));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(CapabilitiesServer::new(fake.clone()))
            .add_service(ActionCacheServer::new(fake.clone()))
            .add_service(
                // Above gRPC's default, so the advertised batch limit is what refuses.
                ContentAddressableStorageServer::new(fake.clone())
                    .max_decoding_message_size(16 << 20),
            )
            .add_service(bs::byte_stream_server::ByteStreamServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (format!("grpc://127.0.0.1:{port}"), state)
}

#[tonic::async_trait]
impl Capabilities for Fake {
    async fn get_capabilities(
        &self,
        req: Request<re::GetCapabilitiesRequest>,
    ) -> Result<Response<re::ServerCapabilities>, Status> {
        self.0.enter("GetCapabilities", &req).await?;
        let mut caps = self.0.caps.lock().unwrap().clone();
        if self.0.read_only(&req) {
            caps.action_cache_update_capabilities = Some(re::ActionCacheUpdateCapabilities {
                update_enabled: false,
            });
        }
        Ok(Response::new(re::ServerCapabilities {
            cache_capabilities: Some(caps),
            ..re::ServerCapabilities::default()
        }))
    }
}

#[tonic::async_trait]
impl ActionCache for Fake {
    async fn get_action_result(
        &self,
        req: Request<re::GetActionResultRequest>,
    ) -> Result<Response<re::ActionResult>, Status> {
        self.0.enter("GetActionResult", &req).await?;
        let hash = req.into_inner().action_digest.unwrap_or_default().hash;
        match self.0.ac.lock().unwrap().get(&hash) {
            Some(r) => Ok(Response::new(r.clone())),
            None => Err(Status::not_found("no result")),
        }
    }

    async fn update_action_result(
        &self,
        req: Request<re::UpdateActionResultRequest>,
    ) -> Result<Response<re::ActionResult>, Status> {
        self.0.enter("UpdateActionResult", &req).await?;
        let update_enabled = self
            .0
            .caps
            .lock()
            .unwrap()
            .action_cache_update_capabilities
            .is_some_and(|u| u.update_enabled);
        if !update_enabled || self.0.read_only(&req) {
            return Err(Status::permission_denied("updates are disabled"));
        }
        let r = req.into_inner();
        let hash = r.action_digest.unwrap_or_default().hash;
        if !self.0.cas.lock().unwrap().contains_key(&hash) {
            return Err(Status::failed_precondition("the action is not in the CAS"));
        }
        let result = r.action_result.unwrap_or_default();
        self.0.ac.lock().unwrap().insert(hash, result.clone());
        Ok(Response::new(result))
    }
}

#[tonic::async_trait]
impl ContentAddressableStorage for Fake {
    async fn find_missing_blobs(
        &self,
        req: Request<re::FindMissingBlobsRequest>,
    ) -> Result<Response<re::FindMissingBlobsResponse>, Status> {
        self.0.enter("FindMissingBlobs", &req).await?;
        let cas = self.0.cas.lock().unwrap();
        let missing = req
            .into_inner()
            .blob_digests
            .into_iter()
            .filter(|d| d.size_bytes > 0 && !cas.contains_key(&d.hash))
            .collect();
        Ok(Response::new(re::FindMissingBlobsResponse {
            missing_blob_digests: missing,
        }))
    }

    async fn batch_update_blobs(
        &self,
        req: Request<re::BatchUpdateBlobsRequest>,
    ) -> Result<Response<re::BatchUpdateBlobsResponse>, Status> {
        self.0.enter("BatchUpdateBlobs", &req).await?;
        let r = req.into_inner();
        let limit =
            usize::try_from(self.0.caps.lock().unwrap().max_batch_total_size_bytes).unwrap();
        if r.encoded_len() > limit {
            return Err(Status::invalid_argument(format!(
                "batch of {} bytes is over the {limit}-byte limit",
                r.encoded_len()
            )));
        }
        let blake3 = is_blake3(r.digest_function);
        let zstd = self.0.zstd(true);
        let mut responses = Vec::new();
        for q in r.requests {
            let d = q.digest.unwrap_or_default();
            State::count_bytes(&self.0.received, q.data.len());
            let data = match q.compressor {
                0 => Ok(q.data),
                ZSTD if zstd => unzstd(&q.data, u64::try_from(d.size_bytes).unwrap_or(0)),
                other => Err(Status::invalid_argument(format!(
                    "compressor {other} is not supported"
                ))),
            };
            let injected = {
                let mut f = self.0.faults.lock().unwrap();
                match &mut f.blob_status {
                    Some((code, n)) if *n > 0 => {
                        *n -= 1;
                        Some(*code)
                    }
                    _ => None,
                }
            };
            let st = match (injected, data) {
                (Some(code), _) => status(code, "injected per-blob status"),
                (None, Err(e)) => status(Code::InvalidArgument, e.message()),
                (None, Ok(data))
                    if hash_of(&data, blake3) != d.hash
                        || i64::try_from(data.len()).unwrap() != d.size_bytes =>
                {
                    status(Code::InvalidArgument, "digest does not match the data")
                }
                (None, Ok(data)) => {
                    self.0.cas.lock().unwrap().insert(d.hash.clone(), data);
                    ok()
                }
            };
            responses.push(re::batch_update_blobs_response::Response {
                digest: Some(d),
                status: Some(st),
            });
        }
        Ok(Response::new(re::BatchUpdateBlobsResponse { responses }))
    }

    async fn batch_read_blobs(
        &self,
        req: Request<re::BatchReadBlobsRequest>,
    ) -> Result<Response<re::BatchReadBlobsResponse>, Status> {
        self.0.enter("BatchReadBlobs", &req).await?;
        let r = req.into_inner();
        let zstd = self.0.zstd(false) && r.acceptable_compressors.contains(&ZSTD);
        let (bombed, wrong) = {
            let f = self.0.faults.lock().unwrap();
            (f.zstd_bomb, f.wrong_compressor)
        };
        let mut responses = Vec::new();
        for d in r.digests {
            let data = self.0.cas.lock().unwrap().get(&d.hash).cloned();
            responses.push(match data {
                Some(data) => {
                    let data = self.0.serve_bytes(data);
                    let (data, compressor) = if zstd && bombed {
                        (bomb(), ZSTD)
                    } else if zstd {
                        (zstd::bulk::compress(&data, 1).unwrap(), ZSTD)
                    } else {
                        (data, 0)
                    };
                    State::count_bytes(&self.0.served, data.len());
                    re::batch_read_blobs_response::Response {
                        digest: Some(d),
                        data,
                        compressor: wrong.unwrap_or(compressor),
                        status: Some(ok()),
                    }
                }
                None => re::batch_read_blobs_response::Response {
                    digest: Some(d),
                    data: Vec::new(),
                    compressor: 0,
                    status: Some(status(Code::NotFound, "no such blob")),
                },
            });
        }
        Ok(Response::new(re::BatchReadBlobsResponse { responses }))
    }

    type GetTreeStream = Stream<re::GetTreeResponse>;
    async fn get_tree(
        &self,
        _req: Request<re::GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        Err(Status::unimplemented("GetTree"))
    }

    async fn split_blob(
        &self,
        _req: Request<re::SplitBlobRequest>,
    ) -> Result<Response<re::SplitBlobResponse>, Status> {
        Err(Status::unimplemented("SplitBlob"))
    }

    type GetChunkMappingStream = Stream<re::GetChunkMappingResponse>;
    async fn get_chunk_mapping(
        &self,
        _req: Request<re::GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        Err(Status::unimplemented("GetChunkMapping"))
    }

    async fn splice_blob(
        &self,
        _req: Request<re::SpliceBlobRequest>,
    ) -> Result<Response<re::SpliceBlobResponse>, Status> {
        Err(Status::unimplemented("SpliceBlob"))
    }

    async fn register_chunk_mapping(
        &self,
        _req: Request<Streaming<re::RegisterChunkMappingRequest>>,
    ) -> Result<Response<re::RegisterChunkMappingResponse>, Status> {
        Err(Status::unimplemented("RegisterChunkMapping"))
    }
}

/// A ByteStream resource name: the blob's hash and size, whether BLAKE3, whether
/// `compressed-blobs/zstd` (any other compressor is refused).
struct Resource {
    hash: String,
    size: u64,
    blake3: bool,
    zstd: bool,
}

fn parse_resource(name: &str) -> Result<Resource, Status> {
    let parts: Vec<&str> = name.split('/').collect();
    let i = parts
        .iter()
        .position(|p| *p == "blobs" || *p == "compressed-blobs")
        .ok_or_else(|| Status::invalid_argument("no blobs/ in the resource name"))?;
    let zstd = parts[i] == "compressed-blobs";
    let mut rest = &parts[i + 1..];
    if zstd {
        if rest.first() != Some(&"zstd") {
            return Err(Status::invalid_argument("unsupported compressor"));
        }
        rest = &rest[1..];
    }
    let (blake3, rest) = match rest.first() {
        Some(&"blake3") => (true, &rest[1..]),
        _ => (false, rest),
    };
    let [hash, size, ..] = rest else {
        return Err(Status::invalid_argument("bad resource name"));
    };
    let size = size
        .parse()
        .map_err(|_| Status::invalid_argument("bad size"))?;
    Ok(Resource {
        hash: (*hash).to_owned(),
        size,
        blake3,
        zstd,
    })
}

#[tonic::async_trait]
impl bs::byte_stream_server::ByteStream for Fake {
    type ReadStream = Stream<bs::ReadResponse>;

    async fn read(
        &self,
        req: Request<bs::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        self.0.enter("Read", &req).await?;
        let r = req.into_inner();
        let res = parse_resource(&r.resource_name)?;
        if res.zstd && !self.0.zstd(false) {
            return Err(Status::invalid_argument("zstd is not advertised"));
        }
        if res.zstd && r.read_limit != 0 {
            return Err(Status::invalid_argument("read_limit on a compressed read"));
        }
        let data = self
            .0
            .cas
            .lock()
            .unwrap()
            .get(&res.hash)
            .cloned()
            .ok_or_else(|| Status::not_found("no such blob"))?;
        let data = self.0.serve_bytes(data);
        // A compressed read's offset is into the uncompressed blob: the rest from
        // there is compressed, and sent from its start.
        let (data, offset) = if res.zstd {
            let from = usize::try_from(r.read_offset).unwrap_or(0).min(data.len());
            let z = if self.0.faults.lock().unwrap().zstd_bomb {
                bomb()
            } else {
                zstd::bulk::compress(&data[from..], 1).unwrap()
            };
            (z, 0)
        } else {
            (data, r.read_offset)
        };
        let drop_after = {
            let mut f = self.0.faults.lock().unwrap();
            match &mut f.drop_read_after {
                Some((at, n)) if *n > 0 => {
                    *n -= 1;
                    Some(*at)
                }
                _ => None,
            }
        };
        let start = usize::try_from(offset).unwrap_or(0).min(data.len());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let state = Arc::clone(&self.0);
        tokio::spawn(async move {
            let mut at = start;
            for chunk in data[start..].chunks(64 << 10) {
                if drop_after.is_some_and(|d| at as u64 >= d) {
                    let _ = tx
                        .send(Err(Status::unavailable("injected: stream dropped")))
                        .await;
                    return;
                }
                State::count_bytes(&state.served, chunk.len());
                if tx
                    .send(Ok(bs::ReadResponse {
                        data: chunk.to_vec(),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
                at += chunk.len();
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn write(
        &self,
        req: Request<Streaming<bs::WriteRequest>>,
    ) -> Result<Response<bs::WriteResponse>, Status> {
        self.0.enter("Write", &req).await?;
        let drop_after = {
            let mut f = self.0.faults.lock().unwrap();
            match &mut f.drop_write_after {
                Some((at, n)) if *n > 0 => {
                    *n -= 1;
                    Some(*at)
                }
                _ => None,
            }
        };
        let mut stream = req.into_inner();
        let mut name = String::new();
        while let Some(m) = stream.message().await? {
            if name.is_empty() {
                name.clone_from(&m.resource_name);
            }
            let mut uploads = self.0.uploads.lock().unwrap();
            let buf = uploads.entry(name.clone()).or_default();
            if u64::try_from(m.write_offset).unwrap() != buf.len() as u64 {
                return Err(Status::invalid_argument(format!(
                    "write at {} but {} committed",
                    m.write_offset,
                    buf.len()
                )));
            }
            buf.extend_from_slice(&m.data);
            State::count_bytes(&self.0.received, m.data.len());
            if drop_after.is_some_and(|d| buf.len() as u64 >= d) && !m.finish_write {
                return Err(Status::unavailable("injected: write dropped"));
            }
            if m.finish_write {
                let res = parse_resource(&name)?;
                let sent = uploads.remove(&name).unwrap_or_default();
                // Compressed: committed is where the next write_offset would be.
                let committed = i64::try_from(if res.zstd {
                    sent.len() as u64
                } else {
                    res.size
                })
                .unwrap();
                let data = if res.zstd {
                    if !self.0.zstd(false) {
                        return Err(Status::invalid_argument("zstd is not advertised"));
                    }
                    unzstd(&sent, res.size)?
                } else {
                    sent
                };
                if hash_of(&data, res.blake3) != res.hash || data.len() as u64 != res.size {
                    return Err(Status::invalid_argument("digest does not match the data"));
                }
                self.0.cas.lock().unwrap().insert(res.hash, data);
                return Ok(Response::new(bs::WriteResponse {
                    committed_size: committed,
                }));
            }
        }
        Err(Status::invalid_argument(
            "the stream ended before finish_write",
        ))
    }

    async fn query_write_status(
        &self,
        req: Request<bs::QueryWriteStatusRequest>,
    ) -> Result<Response<bs::QueryWriteStatusResponse>, Status> {
        self.0.enter("QueryWriteStatus", &req).await?;
        let name = req.into_inner().resource_name;
        let committed = self
            .0
            .uploads
            .lock()
            .unwrap()
            .get(&name)
            .map_or(0, Vec::len);
        Ok(Response::new(bs::QueryWriteStatusResponse {
            committed_size: i64::try_from(committed).unwrap(),
            complete: false,
        }))
    }
}
