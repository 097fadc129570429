//! The gRPC side: one shared HTTP/2 channel with the configured headers, the server's
//! capabilities (asked once), deadlines, retries with backoff and jitter, and the
//! unary calls of the ActionCache, CAS and Capabilities services.

use crate::config::RemoteConfig;
use crate::mapping::{from_digest, to_digest};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use cache_core::{BackendError, BackendResult, BlobRef, Detail, DigestAlgorithm};
use re::action_cache_client::ActionCacheClient;
use re::capabilities_client::CapabilitiesClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

/// The headers added to every call. Values are marked sensitive (never logged or
/// indexed by HTTP/2) and never shown by `Debug`.
#[derive(Clone)]
pub struct Headers(Arc<Vec<(MetadataKey<Ascii>, MetadataValue<Ascii>)>>);

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k.as_str()))
            .finish()
    }
}

impl tonic::service::Interceptor for Headers {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        for (k, v) in self.0.iter() {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        Ok(req)
    }
}

/// The channel every client shares.
pub type Chan = InterceptedService<Channel, Headers>;

/// What the server said it supports, and what this client makes of it.
#[derive(Debug, Clone)]
pub struct Caps {
    /// Digest functions both sides speak, preferred first (SHA-256, then BLAKE3).
    pub algorithms: Vec<DigestAlgorithm>,
    /// Largest encoded batch request or response (per-blob overhead counted).
    pub batch_limit: usize,
    /// Whether `UpdateActionResult` is allowed.
    pub update_enabled: bool,
    /// Whether absolute symlink targets are allowed.
    pub absolute_symlinks: bool,
    /// Where the server takes zstd (everything else is sent and asked for as it is).
    pub zstd: ZstdSupport,
}

/// Where a server lists zstd.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZstdSupport {
    /// In `supported_compressors`: ByteStream reads and writes use
    /// `compressed-blobs/zstd`, batch reads accept zstd.
    pub streams: bool,
    /// In `supported_batch_update_compressors`: batch updates send blobs that shrink
    /// compressed.
    pub batch_updates: bool,
}

impl Caps {
    /// The algorithm to store under: `wanted`, or the server's first.
    pub fn algorithm(
        &self,
        wanted: Option<DigestAlgorithm>,
        server: &str,
    ) -> BackendResult<DigestAlgorithm> {
        match wanted {
            Some(a) if self.algorithms.contains(&a) => Ok(a),
            Some(a) => Err(BackendError::rejected(format!(
                "{server} does not support the {} digest function (it lists {:?})",
                a.as_str(),
                self.algorithms
            ))),
            None => self.algorithms.first().copied().ok_or_else(|| {
                BackendError::rejected(format!("{server} supports neither SHA-256 nor BLAKE3"))
            }),
        }
    }
}

/// gRPC's default message limit, which servers apply to what they receive.
const GRPC_DEFAULT_MAX: usize = 4 << 20;

/// The REAPI digest function value of `a`.
pub fn digest_function(a: DigestAlgorithm) -> i32 {
    match a {
        // Unset: servers infer SHA-256 from the hash length (older servers know no field).
        DigestAlgorithm::Sha256 => 0,
        DigestAlgorithm::Blake3 => re::digest_function::Value::Blake3 as i32,
    }
}

/// The shared connection to one server and instance.
pub struct Client {
    pub(crate) config: RemoteConfig,
    pub(crate) describe: String,
    channel: Chan,
    caps: tokio::sync::OnceCell<Caps>,
    pub(crate) limit: Arc<tokio::sync::Semaphore>,
    /// Calls made, by RPC (attempts, retries included).
    pub(crate) rpcs: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Blob bytes sent (batches and ByteStream writes).
    pub(crate) bytes_sent: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.describe)
            .finish_non_exhaustive()
    }
}

/// The error a failed call's status stands for, by who owns it (each code chosen, none
/// by default):
///
/// * An outage ([`BackendError::Unavailable`]: the cache's, and a breaker that opens
///   on outages skips the server at once): `UNAVAILABLE`, `DEADLINE_EXCEEDED`,
///   `RESOURCE_EXHAUSTED` (after its retries), `INTERNAL`, `UNKNOWN`, `ABORTED`,
///   `CANCELLED` (the server or a proxy gave up on the call).
/// * A refused permission ([`BackendError::PermissionDenied`], [`Fault::Permission`]:
///   not an outage; a tier refusing writes is still read): `PERMISSION_DENIED`,
///   `UNAUTHENTICATED`.
/// * A rejected request ([`BackendError::Rejected`]: the cache's, counted towards a
///   breaker's threshold, not an outage): `INVALID_ARGUMENT`, `FAILED_PRECONDITION`,
///   `OUT_OF_RANGE`, `ALREADY_EXISTS`, `UNIMPLEMENTED`, `DATA_LOSS`, and `NOT_FOUND`
///   where it does not mean a miss. The executor's input was valid (a key, outputs):
///   the server refuses this client's request (a digest it disputes, a size over its
///   limit, a service it lacks), so the task is not the caller's to fix, and other
///   requests a moment later may well succeed.
///
/// `NOT_FOUND` is decided per call before this: an action result or a blob that is
/// not there is a miss (`GetActionResult`, `BatchReadBlobs`), never an error.
///
/// The status message is the server's, truncated; no header is ever part of it.
///
/// [`Fault::Permission`]: cache_core::Fault::Permission
pub fn status_error(server: &str, what: &str, s: &Status) -> BackendError {
    let message: String = s.message().chars().take(300).collect();
    let detail = Detail::new(format!("{server} {what}: {:?}: {message}", s.code()));
    match s.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Internal
        | Code::Unknown
        | Code::Aborted
        | Code::Cancelled => BackendError::Unavailable(detail),
        Code::PermissionDenied | Code::Unauthenticated => BackendError::PermissionDenied(detail),
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::NotFound
        | Code::AlreadyExists
        | Code::Unimplemented
        | Code::DataLoss
        | Code::Ok => BackendError::Rejected(detail),
    }
}

/// Whether a failed call may succeed if repeated.
pub fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted | Code::DeadlineExceeded
    ) || (s.code() == Code::Unknown && s.message().contains("transport"))
}

fn jitter(max: Duration) -> Duration {
    let mut b = [0u8; 8];
    let r = getrandom::fill(&mut b).map_or(0, |()| u64::from_le_bytes(b));
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(r % nanos)
}

impl Client {
    /// Builds the channel (connected lazily: opening never waits for the server).
    pub fn new(config: RemoteConfig) -> BackendResult<Self> {
        let describe = config.describe();
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            BackendError::Connection(Detail::new(format!("{describe}: {what}: {e}")))
        };
        let mut ep = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| bad("bad endpoint", &e))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .http2_adaptive_window(true)
            .keep_alive_while_idle(false);
        if let Some(tls) = &config.tls {
            let mut t = ClientTlsConfig::new();
            t = match &tls.ca_pem {
                Some(ca) => t.ca_certificate(Certificate::from_pem(ca)),
                None => t.with_native_roots(),
            };
            match (&tls.cert_pem, &tls.key_pem) {
                (Some(cert), Some(key)) => {
                    t = t.identity(Identity::from_pem(cert, key.expose()));
                }
                (None, None) => {}
                _ => {
                    return Err(BackendError::Connection(Detail::new(format!(
                        "{describe}: mutual TLS needs both a client certificate and its key"
                    ))));
                }
            }
            // The error names no key material: only that TLS could not be set up.
            ep = ep
                .tls_config(t)
                .map_err(|_| bad("TLS setup failed", &"check the CA, certificate and key"))?;
        }
        let mut headers = Vec::new();
        for (k, v) in &config.headers {
            let key =
                MetadataKey::from_bytes(k.as_bytes()).map_err(|_| bad("bad header name", &k))?;
            let mut value =
                MetadataValue::try_from(v.expose()).map_err(|_| bad("bad header value for", &k))?;
            value.set_sensitive(true);
            headers.push((key, value));
        }
        let channel = InterceptedService::new(ep.connect_lazy(), Headers(Arc::new(headers)));
        let limit = Arc::new(tokio::sync::Semaphore::new(config.concurrency.max(1)));
        Ok(Client {
            config,
            describe,
            channel,
            caps: tokio::sync::OnceCell::new(),
            limit,
            rpcs: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            bytes_sent: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The instance name.
    pub fn instance(&self) -> &str {
        &self.config.instance
    }

    pub(crate) fn cas(&self) -> ContentAddressableStorageClient<Chan> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20)
    }

    pub(crate) fn ac(&self) -> ActionCacheClient<Chan> {
        ActionCacheClient::new(self.channel.clone()).max_decoding_message_size(256 << 20)
    }

    pub(crate) fn bytestream(&self) -> ByteStreamClient<Chan> {
        ByteStreamClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }

    /// A call failed: the error its status stands for ([`status_error`]), naming the
    /// server and what was asked.
    pub fn error(&self, what: &str, s: &Status) -> BackendError {
        status_error(&self.describe, what, s)
    }

    /// Runs `f` under the concurrency bound with a deadline per attempt, retrying
    /// retryable failures with exponential backoff and full jitter. A deadline that
    /// expires here is not retried: a stalled server would cost one more full deadline
    /// per attempt, and a dead cache should cost one.
    pub async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> BackendResult<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut backoff = self.config.backoff;
        let mut attempt = 1;
        loop {
            self.count(what);
            let permit = self.limit.acquire().await.ok();
            let outcome = tokio::time::timeout(self.config.call_timeout, f()).await;
            drop(permit);
            let status = match outcome {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(s)) => s,
                Err(_) => {
                    return Err(self.error(
                        what,
                        &Status::deadline_exceeded(format!(
                            "no answer within {:?}",
                            self.config.call_timeout
                        )),
                    ));
                }
            };
            if !retryable(&status) || attempt >= self.config.max_attempts {
                return Err(self.error(what, &status));
            }
            tracing::debug!(server = %self.describe, what, attempt, code = ?status.code(), "retrying");
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            attempt += 1;
        }
    }

    /// Counts one call of `rpc`.
    pub(crate) fn count(&self, rpc: &str) {
        *self
            .rpcs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(rpc.to_owned())
            .or_default() += 1;
    }

    /// The server's capabilities, asked once and kept.
    pub async fn caps(&self) -> BackendResult<&Caps> {
        self.caps.get_or_try_init(|| self.fetch_caps()).await
    }

    /// Asks the server for its capabilities (uncached: also the health check).
    pub async fn fetch_caps(&self) -> BackendResult<Caps> {
        let req = re::GetCapabilitiesRequest {
            instance_name: self.config.instance.clone(),
        };
        let caps = self
            .call("GetCapabilities", || {
                let mut c = CapabilitiesClient::new(self.channel.clone());
                let req = req.clone();
                async move { c.get_capabilities(req).await }
            })
            .await?
            .into_inner();
        let cache = caps.cache_capabilities.unwrap_or_default();
        let listed = |v: re::digest_function::Value| cache.digest_functions.contains(&(v as i32));
        let mut algorithms = Vec::new();
        // A server that lists nothing predates the field: SHA-256.
        if cache.digest_functions.is_empty() || listed(re::digest_function::Value::Sha256) {
            algorithms.push(DigestAlgorithm::Sha256);
        }
        if listed(re::digest_function::Value::Blake3) {
            algorithms.push(DigestAlgorithm::Blake3);
        }
        let advertised = usize::try_from(cache.max_batch_total_size_bytes).unwrap_or(0);
        let batch_limit = if advertised == 0 {
            GRPC_DEFAULT_MAX - 1024
        } else {
            advertised.min(GRPC_DEFAULT_MAX - 1024)
        };
        let update_enabled = cache
            .action_cache_update_capabilities
            .is_some_and(|u| u.update_enabled);
        let out = Caps {
            algorithms,
            batch_limit,
            update_enabled,
            absolute_symlinks: cache.symlink_absolute_path_strategy
                == re::symlink_absolute_path_strategy::Value::Allowed as i32,
            zstd: ZstdSupport {
                streams: cache
                    .supported_compressors
                    .contains(&(re::compressor::Value::Zstd as i32)),
                batch_updates: cache
                    .supported_batch_update_compressors
                    .contains(&(re::compressor::Value::Zstd as i32)),
            },
        };
        tracing::debug!(server = %self.describe, caps = ?out, "capabilities");
        Ok(out)
    }

    /// Which of `blobs` (all under `algorithm`) the server lacks. Empty blobs are always
    /// present (REAPI).
    pub async fn find_missing(
        &self,
        algorithm: DigestAlgorithm,
        blobs: &[BlobRef],
    ) -> BackendResult<Vec<BlobRef>> {
        let mut missing = Vec::new();
        let asked: Vec<&BlobRef> = blobs.iter().filter(|b| b.size > 0).collect();
        for chunk in asked.chunks(8192) {
            let req = re::FindMissingBlobsRequest {
                instance_name: self.config.instance.clone(),
                blob_digests: chunk.iter().map(|b| to_digest(b)).collect(),
                digest_function: digest_function(algorithm),
            };
            let resp = self
                .call("FindMissingBlobs", || {
                    let mut c = self.cas();
                    let req = req.clone();
                    async move { c.find_missing_blobs(req).await }
                })
                .await?
                .into_inner();
            for d in resp.missing_blob_digests {
                let b = from_digest(&d, algorithm).map_err(|e| {
                    BackendError::unavailable(format!(
                        "{}: FindMissingBlobs answered a malformed digest: {e}",
                        self.describe
                    ))
                })?;
                missing.push(b);
            }
        }
        Ok(missing)
    }

    /// The stored result of `action`, `None` if there is none.
    pub async fn get_action_result(
        &self,
        algorithm: DigestAlgorithm,
        action: &BlobRef,
    ) -> BackendResult<Option<re::ActionResult>> {
        let req = re::GetActionResultRequest {
            instance_name: self.config.instance.clone(),
            action_digest: Some(to_digest(action)),
            inline_stdout: true,
            inline_stderr: true,
            inline_output_files: Vec::new(),
            digest_function: digest_function(algorithm),
        };
        let r = self
            .call("GetActionResult", || {
                let mut c = self.ac();
                let req = req.clone();
                async move {
                    match c.get_action_result(req).await {
                        Ok(r) => Ok(Some(r.into_inner())),
                        Err(s) if s.code() == Code::NotFound => Ok(None),
                        Err(s) => Err(s),
                    }
                }
            })
            .await?;
        Ok(r)
    }

    /// Stores `result` for `action`.
    pub async fn update_action_result(
        &self,
        algorithm: DigestAlgorithm,
        action: &BlobRef,
        result: re::ActionResult,
    ) -> BackendResult<()> {
        let req = re::UpdateActionResultRequest {
            instance_name: self.config.instance.clone(),
            action_digest: Some(to_digest(action)),
            action_result: Some(result),
            results_cache_policy: None,
            digest_function: digest_function(algorithm),
        };
        self.call("UpdateActionResult", || {
            let mut c = self.ac();
            let req = req.clone();
            async move { c.update_action_result(req).await }
        })
        .await?;
        Ok(())
    }
}
