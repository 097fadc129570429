//! The whole cache-testkit suite (flipped and deleted blobs included) against the
//! in-process REAPI server, and the faults a real server will not produce on demand.

mod common;

use async_trait::async_trait;
use cache_core::storage::Storage;
use cache_core::{
    BackendError, BackendResult, BlobRef, Cache, CacheBackend, CacheEntry, CacheOutput,
    CachePolicy, CircuitBreaker, Digest, DigestAlgorithm, OutputContent,
};
use cache_remote::{RemoteConfig, RemoteStorage};
use cache_testkit::Harness;
use cache_testkit::fixtures::{TempWorkspace, digest, fresh_key, pattern_bytes, task};
use common::fake::{self, State};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

/// Plants entries like [`common::ServerTamper`], and alters the fake's CAS directly.
struct FakeTamper {
    server: common::ServerTamper,
    state: Arc<State>,
}

#[async_trait]
impl cache_testkit::Tamper for FakeTamper {
    async fn write_raw_entry(&self, key: &Digest, bytes: Vec<u8>) -> BackendResult<()> {
        self.server.write_raw_entry(key, bytes).await
    }
    async fn read_raw_entry(&self, key: &Digest) -> BackendResult<Option<Vec<u8>>> {
        self.server.read_raw_entry(key).await
    }
    async fn flip_blob_byte(&self, blob: &BlobRef) -> BackendResult<()> {
        let mut cas = self.state.cas.lock().unwrap();
        let data = cas
            .get_mut(&blob.digest.hex())
            .ok_or(cache_core::BackendError::BlobNotFound { digest: *blob })?;
        let mid = data.len() / 2;
        data[mid] ^= 1;
        Ok(())
    }
    async fn delete_blob(&self, blob: &BlobRef) -> BackendResult<()> {
        self.state.cas.lock().unwrap().remove(&blob.digest.hex());
        Ok(())
    }
}

fn open(url: &str, tweak: impl FnOnce(&mut RemoteConfig)) -> RemoteStorage {
    let mut c = RemoteConfig::from_url(url).unwrap();
    c.backoff = Duration::from_millis(5);
    tweak(&mut c);
    RemoteStorage::open(c).unwrap()
}

async fn harness() -> Harness {
    harness_on(fake::start().await)
}

/// The suite again on a server advertising zstd: every blob crosses compressed.
async fn harness_zstd() -> Harness {
    harness_on(fake::start_zstd().await)
}

fn harness_on((url, state): (String, Arc<State>)) -> Harness {
    let tamper = FakeTamper {
        server: common::ServerTamper::new(open(&url, |_| {})),
        state: Arc::clone(&state),
    };
    // The fake server keeps its CAS in this process.
    Harness::from_storage(open(&url, |_| {}), Arc::new(tamper))
        .with_capabilities(common::capabilities().with_in_process_data(true))
        .with_guard(state)
}

mod suite {
    use super::harness;
    cache_testkit::conformance_suite!(harness);
}

mod suite_zstd {
    use super::harness_zstd;
    cache_testkit::conformance_suite!(harness_zstd);
}

fn cache(storage: RemoteStorage) -> Cache<RemoteStorage> {
    Cache::new(storage, cache_testkit::spawn_blocking)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn file(path: &str, bytes: Vec<u8>) -> CacheOutput {
    CacheOutput {
        path: path.into(),
        content: OutputContent::Bytes(bytes),
        is_executable: false,
    }
}

fn entry(outputs: Vec<CacheOutput>) -> CacheEntry {
    CacheEntry {
        exit_code: 0,
        outputs,
        ..CacheEntry::default()
    }
}

async fn store(c: &Cache<RemoteStorage>, key: &str, e: &CacheEntry) {
    c.store(&task(), key, e, CachePolicy::Normal).await.unwrap();
}

async fn restore_bytes(c: &Cache<RemoteStorage>, key: &str, path: &str) -> Vec<u8> {
    let ws = TempWorkspace::new();
    c.restore_outputs(&task(), key, ws.root()).await.unwrap();
    std::fs::read(ws.root().join(path)).unwrap()
}

/// The plain fake, or (`zstd`) the one advertising zstd.
async fn start(zstd: bool) -> (String, Arc<State>) {
    if zstd {
        fake::start_zstd().await
    } else {
        fake::start().await
    }
}

/// A restore of `key` that must fail and place nothing: its error.
async fn restore_fails(c: &Cache<RemoteStorage>, key: &str, path: &str) -> BackendError {
    let ws = TempWorkspace::new();
    let e = c
        .restore_outputs(&task(), key, ws.root())
        .await
        .unwrap_err();
    assert!(!ws.root().join(path).exists());
    assert!(ws.tree().temporaries().is_empty());
    e
}

#[test]
fn a_read_stream_dropped_midway_resumes_at_the_offset_reached() {
    rt().block_on(async {
        // Compressed, the offset is into the uncompressed blob and the fake compresses
        // from there: a wrong offset would be a wrong file.
        for zstd in [false, true] {
            let (url, state) = start(zstd).await;
            let c = cache(open(&url, |_| {}));
            let big = pattern_bytes(1, 9 << 20);
            let key = fresh_key();
            store(&c, &key, &entry(vec![file("big.bin", big.clone())])).await;
            state.faults.lock().unwrap().drop_read_after = Some((3 << 20, 1));
            let reads = state.calls("Read");
            assert!(restore_bytes(&c, &key, "big.bin").await == big);
            assert_eq!(
                state.calls("Read") - reads,
                2,
                "one broken stream, one resumed (zstd: {zstd})"
            );
        }
    });
}

#[test]
fn a_write_stream_dropped_midway_resumes_from_query_write_status() {
    rt().block_on(async {
        // Compressed (random bytes: as long as the blob), it starts again instead.
        for zstd in [false, true] {
            let (url, state) = start(zstd).await;
            let c = cache(open(&url, |_| {}));
            state.faults.lock().unwrap().drop_write_after = Some((3 << 20, 1));
            let big = pattern_bytes(2, 9 << 20);
            let key = fresh_key();
            store(&c, &key, &entry(vec![file("big.bin", big.clone())])).await;
            assert_eq!(state.calls("QueryWriteStatus"), 1, "zstd: {zstd}");
            assert_eq!(state.calls("Write"), 2, "zstd: {zstd}");
            assert!(restore_bytes(&c, &key, "big.bin").await == big);
        }
    });
}

#[test]
fn resource_exhausted_and_unavailable_are_retried() {
    rt().block_on(async {
        let (url, state) = fake::start().await;
        let c = cache(open(&url, |_| {}));
        state.faults.lock().unwrap().exhausted = 2;
        let key = fresh_key();
        store(&c, &key, &entry(vec![file("a.txt", b"a".to_vec())])).await;
        state.faults.lock().unwrap().unavailable = 2;
        assert_eq!(restore_bytes(&c, &key, "a.txt").await, b"a");
        assert_eq!(state.faults.lock().unwrap().unavailable, 0);
    });
}

#[test]
fn per_blob_statuses_are_checked_and_retried_only_when_retryable() {
    rt().block_on(async {
        let (url, state) = fake::start().await;
        let c = cache(open(&url, |_| {}));
        state.faults.lock().unwrap().blob_status = Some((Code::ResourceExhausted, 1));
        let key = fresh_key();
        store(&c, &key, &entry(vec![file("a.txt", b"retried".to_vec())])).await;
        assert_eq!(restore_bytes(&c, &key, "a.txt").await, b"retried");

        state.faults.lock().unwrap().blob_status = Some((Code::InvalidArgument, 1));
        let key = fresh_key();
        let e = c
            .store(
                &task(),
                &key,
                &entry(vec![file("b.txt", b"refused".to_vec())]),
                CachePolicy::Normal,
            )
            .await
            .unwrap_err();
        assert!(
            e.is_cache_fault() && e.to_string().contains("InvalidArgument"),
            "{e}"
        );
        let found = c.lookup(&task(), &digest(&key), CachePolicy::Normal).await;
        assert!(
            found.unwrap().is_none(),
            "no result is written after a failed blob"
        );
    });
}

#[test]
fn wrong_bytes_are_a_digest_mismatch_and_nothing_is_placed() {
    rt().block_on(async {
        let (url, state) = fake::start().await;
        let c = cache(open(&url, |_| {}));
        let key = fresh_key();
        store(
            &c,
            &key,
            &entry(vec![file("out/a.txt", pattern_bytes(3, 1000))]),
        )
        .await;
        state.faults.lock().unwrap().wrong_bytes = true;
        let e = restore_fails(&c, &key, "out/a.txt").await;
        assert_eq!(e.kind(), "digest_mismatch", "{e}");
    });
}

#[test]
fn a_stall_past_the_deadline_is_a_cache_fault_not_a_hang() {
    rt().block_on(async {
        let (url, state) = fake::start().await;
        let c = cache(open(&url, |c| c.call_timeout = Duration::from_millis(300)));
        c.storage().capabilities().await.unwrap();
        state.faults.lock().unwrap().stall = Some(Duration::from_secs(30));
        let key = fresh_key();
        let e = c
            .lookup(&task(), &digest(&key), CachePolicy::Normal)
            .await
            .unwrap_err();
        assert!(e.is_cache_fault(), "{e}");
        assert!(e.to_string().contains("no answer within"), "{e}");
        assert_eq!(state.calls("GetActionResult"), 1, "a stall is not retried");
    });
}

#[test]
fn a_tiny_batch_limit_sends_everything_through_bytestream() {
    rt().block_on(async {
        let (url, state) = fake::start().await;
        state.caps.lock().unwrap().max_batch_total_size_bytes = 200;
        let c = cache(open(&url, |_| {}));
        let files: Vec<CacheOutput> = (0..5)
            .map(|i| file(&format!("f{i}"), pattern_bytes(10 + i, 4096)))
            .collect();
        let key = fresh_key();
        store(&c, &key, &entry(files)).await;
        // Only the action's own tiny blobs (command, input root, action) fit a batch.
        assert!(state.calls("Write") >= 5);
        assert_eq!(restore_bytes(&c, &key, "f3").await, pattern_bytes(13, 4096));
        assert_eq!(state.calls("BatchReadBlobs"), 0);
        assert!(state.calls("Read") >= 5);
    });
}

#[test]
fn batches_respect_the_limit_with_per_blob_overhead() {
    rt().block_on(async {
        let (url, state) = fake::start().await;
        let c = cache(open(&url, |_| {}));
        // 1,000 x 16 KiB: packed by data alone, a batch would be ~83 bytes a blob over.
        let files: Vec<CacheOutput> = (0..1000)
            .map(|i| file(&format!("d/f{i}"), pattern_bytes(100 + i, 16 << 10)))
            .collect();
        let key = fresh_key();
        store(&c, &key, &entry(files)).await;
        assert!(state.calls("BatchUpdateBlobs") >= 4);
        assert_eq!(state.calls("Write"), 0);
        assert_eq!(
            restore_bytes(&c, &key, "d/f999").await,
            pattern_bytes(1099, 16 << 10)
        );
        // The fake rejects what a data-only packer would send, as BuildGrid does.
        let mut cas = bazel_remote_apis::build::bazel::remote::execution::v2::content_addressable_storage_client::ContentAddressableStorageClient::connect(url.replace("grpc://", "http://")).await.unwrap();
        let requests = (0..255u32)
            .map(|i| {
                let data = pattern_bytes(5000 + u64::from(i), 16 << 10);
                bazel_remote_apis::build::bazel::remote::execution::v2::batch_update_blobs_request::Request {
                    digest: Some(cache_remote::mapping::to_digest(&BlobRef::of(DigestAlgorithm::Sha256, &data))),
                    data,
                    compressor: 0,
                }
            })
            .collect();
        let e = cas
            .batch_update_blobs(bazel_remote_apis::build::bazel::remote::execution::v2::BatchUpdateBlobsRequest {
                instance_name: String::new(),
                requests,
                digest_function: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    });
}

#[test]
fn a_result_whose_tree_or_files_are_gone_is_a_miss() {
    rt().block_on(async {
        let (url, state) = fake::start().await;
        let c = cache(open(&url, |_| {}));
        let key = fresh_key();
        let e = CacheEntry {
            outputs: vec![
                CacheOutput {
                    path: "dir".into(),
                    content: OutputContent::Directory,
                    is_executable: false,
                },
                file("dir/a.txt", b"inside".to_vec()),
            ],
            ..CacheEntry::default()
        };
        store(&c, &key, &e).await;
        let result = c
            .storage()
            .get_raw_result(&common::suite_key(&digest(&key)))
            .await
            .unwrap()
            .unwrap();
        let tree = result.output_directories[0].tree_digest.clone().unwrap();
        assert!(
            result.output_files.is_empty(),
            "the file is inside the tree"
        );
        state.cas.lock().unwrap().remove(&tree.hash);
        let found = c.lookup(&task(), &digest(&key), CachePolicy::Normal).await;
        assert!(found.unwrap().is_none());
    });
}

/// `len` bytes of build-output-like text: compresses well.
fn text_bytes(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("src/module_{}.rs:{}: compiled ok\n", i % 97, i).as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn received(state: &State) -> u64 {
    *state.received.lock().unwrap()
}

fn served(state: &State) -> u64 {
    *state.served.lock().unwrap()
}

/// An 8 MiB text file (ByteStream) and 200 small ones of 16 KiB (batches).
fn compressible_entry() -> CacheEntry {
    let mut files = vec![file("big.log", text_bytes(8 << 20))];
    files.extend((0..200).map(|i| file(&format!("small/{i}.txt"), text_bytes((16 << 10) + i))));
    entry(files)
}

#[test]
fn zstd_advertised_compresses_the_wire_both_ways() {
    rt().block_on(async {
        let (url, state) = fake::start_zstd().await;
        let s = open(&url, |_| {});
        let caps = s.capabilities().await.unwrap();
        assert!(caps.zstd.streams && caps.zstd.batch_updates);
        let c = cache(s);
        // The big file alone (ByteStream), then the small ones (batches).
        let mut small = compressible_entry().outputs;
        let big = vec![small.remove(0)];
        for outputs in [big, small] {
            let raw: u64 = outputs
                .iter()
                .map(|o| match &o.content {
                    OutputContent::Bytes(b) => b.len() as u64,
                    _ => 0,
                })
                .sum();
            let (up, down) = (received(&state), served(&state));
            let key = fresh_key();
            store(&c, &key, &entry(outputs.clone())).await;
            let up = received(&state) - up;
            let ws = TempWorkspace::new();
            c.restore_outputs(&task(), &key, ws.root()).await.unwrap();
            let down = served(&state) - down;
            eprintln!(
                "{} files, {raw} bytes: {up} bytes up and {down} down on the wire",
                outputs.len()
            );
            assert!(up < raw / 10 && down < raw / 10, "{up}, {down} of {raw}");
            for o in &outputs {
                let OutputContent::Bytes(b) = &o.content else {
                    unreachable!()
                };
                assert!(&std::fs::read(ws.root().join(&o.path)).unwrap() == b);
            }
        }
        assert!(c.storage().stats().blob_bytes_sent < received(&state) + 4096);
        for call in ["Write", "BatchUpdateBlobs", "Read", "BatchReadBlobs"] {
            assert!(state.calls(call) >= 1, "{call}");
        }
    });
}

#[test]
fn without_zstd_advertised_everything_crosses_as_it_is() {
    rt().block_on(async {
        // This fake refuses compressed data, as a server not advertising it may.
        let (url, state) = fake::start().await;
        let c = cache(open(&url, |_| {}));
        let key = fresh_key();
        store(&c, &key, &compressible_entry()).await;
        let raw: u64 = (8 << 20) + (0..200).map(|i| (16 << 10) + i).sum::<u64>();
        assert!(received(&state) >= raw, "{} of {raw}", received(&state));
        let ws = TempWorkspace::new();
        c.restore_outputs(&task(), &key, ws.root()).await.unwrap();
        assert!(served(&state) >= raw);
        assert!(std::fs::read(ws.root().join("big.log")).unwrap() == text_bytes(8 << 20));
    });
}

/// The peak resident memory of this process (nextest runs each test in its own).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb << 10)
}

#[test]
fn a_zip_bomb_is_refused_at_the_blobs_size_with_bounded_memory() {
    rt().block_on(async {
        let (url, state) = fake::start_zstd().await;
        let c = cache(open(&url, |_| {}));
        for (name, size) in [("small.txt", 100_000), ("big.bin", 6 << 20)] {
            let key = fresh_key();
            store(&c, &key, &entry(vec![file(name, text_bytes(size))])).await;
            state.faults.lock().unwrap().zstd_bomb = true;
            let before = peak_rss();
            let e = restore_fails(&c, &key, name).await;
            assert!(e.is_cache_fault(), "{e}");
            assert!(e.to_string().contains("decodes past"), "{e}");
            // The bomb is 256 MiB of zeros: none of it is ever held.
            let grew = peak_rss().saturating_sub(before);
            // Only where this test has its process to itself (nextest), not among
            // other tests' threads (cargo test).
            let alone = std::env::var_os("NEXTEST").is_some();
            eprintln!("{name}: peak memory grew by {grew} bytes (checked: {alone})");
            if alone {
                assert!(grew < 64 << 20, "{name}: peak memory grew by {grew} bytes");
            }
            state.faults.lock().unwrap().zstd_bomb = false;
        }
    });
}

#[test]
fn a_compressor_that_was_not_asked_for_is_a_cache_fault() {
    rt().block_on(async {
        use bazel_remote_apis::build::bazel::remote::execution::v2::compressor::Value;
        for (zstd, marked) in [(false, Value::Zstd), (true, Value::Deflate)] {
            let (url, state) = start(zstd).await;
            let c = cache(open(&url, |_| {}));
            let key = fresh_key();
            store(&c, &key, &entry(vec![file("a.txt", text_bytes(5000))])).await;
            state.faults.lock().unwrap().wrong_compressor = Some(marked as i32);
            let e = restore_fails(&c, &key, "a.txt").await;
            assert!(e.is_cache_fault(), "{e}");
            assert!(e.to_string().contains("not asked for"), "{e}");
        }
    });
}

#[test]
fn blake3_is_used_only_where_the_server_lists_it() {
    rt().block_on(async {
        let (url, state) = fake::start().await;
        let s = open(&url, |_| {});
        let e = s
            .put_blobs(
                vec![cache_core::storage::BlobSource::Bytes(Arc::from(&b"x"[..]))],
                Some(DigestAlgorithm::Blake3),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("does not support the blake3"), "{e}");
        state.caps.lock().unwrap().digest_functions.push(
            bazel_remote_apis::build::bazel::remote::execution::v2::digest_function::Value::Blake3
                as i32,
        );
        let s = open(&url, |_| {});
        let data = pattern_bytes(8, 3 << 20);
        let big = pattern_bytes(9, 6 << 20);
        let refs = s
            .put_blobs(
                vec![
                    cache_core::storage::BlobSource::Bytes(Arc::from(&data[..])),
                    cache_core::storage::BlobSource::Bytes(Arc::from(&big[..])),
                ],
                Some(DigestAlgorithm::Blake3),
            )
            .await
            .unwrap();
        assert_eq!(refs[0], BlobRef::of(DigestAlgorithm::Blake3, &data));
        assert!(s.find_missing_blobs(refs.clone()).await.unwrap().is_empty());
        let opened = s.open_blobs(refs).await.unwrap();
        let mut back = Vec::new();
        for o in opened {
            let mut r = o.unwrap().into_reader().unwrap();
            let mut v = Vec::new();
            tokio::task::spawn_blocking(move || {
                std::io::Read::read_to_end(&mut r, &mut v).map(|_| v)
            })
            .await
            .unwrap()
            .map(|v| back.push(v))
            .unwrap();
        }
        assert!(back[0] == data && back[1] == big);
    });
}

#[test]
fn the_breaker_opens_after_repeated_faults_and_a_success_resets_it() {
    rt().block_on(async {
        let (url, state) = fake::start().await;
        let inner: Arc<dyn CacheBackend> = Arc::new(cache(open(&url, |c| c.max_attempts = 1)));
        let breaker = CircuitBreaker::new(Arc::clone(&inner), 3);
        let key = digest(&fresh_key());
        breaker.health_check().await.unwrap();
        state.faults.lock().unwrap().unavailable = 2;
        for _ in 0..2 {
            assert!(
                breaker
                    .lookup(&task(), &key, CachePolicy::Normal)
                    .await
                    .is_err()
            );
        }
        // A success before the threshold: the count starts again.
        assert!(
            breaker
                .lookup(&task(), &key, CachePolicy::Normal)
                .await
                .unwrap()
                .is_none()
        );
        assert!(!breaker.is_open());
        state.faults.lock().unwrap().unavailable = 100;
        for _ in 0..3 {
            assert!(
                breaker
                    .lookup(&task(), &key, CachePolicy::Normal)
                    .await
                    .is_err()
            );
        }
        assert!(breaker.is_open());
        let before = state.total_calls();
        for _ in 0..10 {
            assert!(
                breaker
                    .lookup(&task(), &key, CachePolicy::Normal)
                    .await
                    .is_err()
            );
        }
        assert_eq!(state.total_calls(), before, "an open breaker calls nothing");
        // A fresh run (a new breaker) reaches the recovered server again.
        state.faults.lock().unwrap().unavailable = 0;
        let next = CircuitBreaker::new(inner, 3);
        assert!(
            next.lookup(&task(), &key, CachePolicy::Normal)
                .await
                .unwrap()
                .is_none()
        );
    });
}

#[test]
fn header_values_reach_the_server_but_never_debug_errors_or_logs() {
    let logs = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = Arc::clone(&logs);
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || Writer(Arc::clone(&sink)))
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (url, state) = fake::start().await;
        let s = open(&url, |c| {
            *c = c
                .clone()
                .header("authorization", "Bearer HEADER-SECRET-1")
                .unwrap()
                .header("x-buildbuddy-api-key", "HEADER-SECRET-2")
                .unwrap();
            c.max_attempts = 2;
        });
        let shown = format!("{s:?}");
        let c = cache(s);
        let key = fresh_key();
        store(&c, &key, &entry(vec![file("a", b"a".to_vec())])).await;
        assert!(
            state
                .auth_seen
                .lock()
                .unwrap()
                .iter()
                .all(|v| v == "Bearer HEADER-SECRET-1")
        );
        state.faults.lock().unwrap().unavailable = 10;
        let e = c
            .lookup(&task(), &digest(&key), CachePolicy::Normal)
            .await
            .unwrap_err();
        let text = format!("{shown} {e} {e:?}");
        let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        assert!(!logged.is_empty(), "the trace subscriber saw the calls");
        for secret in ["HEADER-SECRET-1", "HEADER-SECRET-2"] {
            assert!(!text.contains(secret), "{text}");
            assert!(!logged.contains(secret), "logged: {secret}");
        }
    });
}

struct Writer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_warm_store_sends_no_blob_bytes_and_a_small_hit_takes_three_calls() {
    rt().block_on(async {
        let (url, _state) = fake::start().await;
        let c = cache(open(&url, |_| {}));
        let files: Vec<CacheOutput> = (0..20)
            .map(|i| file(&format!("f{i}"), pattern_bytes(300 + i, 8 << 10)))
            .collect();
        let e = CacheEntry {
            stdout: Some(b"log\n".to_vec()),
            ..entry(files)
        };
        let key = fresh_key();
        store(&c, &key, &e).await;
        let cold = c.storage().stats();
        assert!(cold.blob_bytes_sent >= 20 * (8 << 10));
        // The same result again: nothing is sent but the result itself.
        store(&c, &key, &e).await;
        let warm = c.storage().stats();
        assert_eq!(warm.blob_bytes_sent, cold.blob_bytes_sent, "{warm:?}");
        // Under another key only that key's new `Action` (a few hundred bytes) is sent.
        store(&c, &fresh_key(), &e).await;
        let other = c.storage().stats().blob_bytes_sent - warm.blob_bytes_sent;
        assert!(other > 0 && other < 512, "{other} bytes");
        let before = c.storage().stats().calls();
        let ws = TempWorkspace::new();
        c.restore_outputs(&task(), &key, ws.root()).await.unwrap();
        let hit = c.storage().stats().calls() - before;
        assert!(
            hit <= 3,
            "a hit took {hit} calls: {:?}",
            c.storage().stats()
        );
    });
}
