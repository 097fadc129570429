//! What only an object store does: request counts, error messages and secrets,
//! degradation when the server is gone. Behaviour shared by every backend is in the
//! conformance suites.

mod common;

use cache_core::{BackendError, Cache, CacheBackend, CacheEntry, CacheOutput, CachePolicy, Digest};
use cache_s3::{CountingStore, ListLimits, S3Options, S3Storage, Stopped};
use cache_testkit::fixtures::{fresh_key, task};
use cache_testkit::loopback::{LoopbackHttp, Reply};
use std::sync::Arc;
use std::time::Duration;

fn cache(storage: S3Storage) -> Cache<S3Storage> {
    Cache::new(storage, cache_testkit::spawn_blocking)
}

fn counting_storage() -> (CountingStore, S3Storage) {
    let memory = Arc::new(cache_s3::object_store::memory::InMemory::new());
    let counting = CountingStore::new(memory);
    let storage = S3Storage::from_store(
        Arc::new(counting.clone()),
        "ci",
        "memory",
        S3Options::default(),
    );
    (counting, storage)
}

fn entry_with(outputs: Vec<CacheOutput>) -> CacheEntry {
    CacheEntry {
        stdout: Some(b"built\n".to_vec()),
        exit_code: 0,
        duration_ms: 5,
        outputs,
        ..CacheEntry::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_of_one_small_output_takes_at_most_three_requests() {
    let (counting, storage) = counting_storage();
    let key = fresh_key();
    let t = task();
    let c = cache(storage);
    let entry = entry_with(vec![CacheOutput::bytes(
        "out/a.txt",
        b"hello".to_vec(),
        false,
    )]);
    c.store(&t, &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    let before = counting.counts();
    let ws = tempfile::tempdir().unwrap();
    let hit = c
        .lookup(&t, &Digest::parse(&key).unwrap(), CachePolicy::Normal)
        .await
        .unwrap()
        .expect("a hit");
    hit.restore(ws.path()).await.unwrap();
    assert_eq!(
        std::fs::read(ws.path().join("out/a.txt")).unwrap(),
        b"hello"
    );
    let used = counting.counts().total() - before.total();
    assert!(
        used <= 3,
        "a hit took {used} requests: {}",
        counting.counts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_store_sends_no_blob_bytes() {
    let (counting, storage) = counting_storage();
    let src = tempfile::tempdir().unwrap();
    let big = src.path().join("big.bin");
    // Over the multipart threshold, so the large path is the one proven idle.
    let bytes: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&big, &bytes).unwrap();
    let outputs = vec![
        CacheOutput::bytes("out/small.txt", b"small".to_vec(), false),
        CacheOutput::file("out/big.bin", &big, false),
    ];
    let c = cache(storage.clone());
    let t = task();
    c.store(
        &t,
        &fresh_key(),
        &entry_with(outputs.clone()),
        CachePolicy::Normal,
    )
    .await
    .unwrap();
    let cold = counting.counts();
    assert!(cold.bytes_sent >= bytes.len() as u64, "{cold}");
    let key = fresh_key();
    c.store(&t, &key, &entry_with(outputs), CachePolicy::Normal)
        .await
        .unwrap();
    let warm = counting.counts();
    let sent = warm.bytes_sent - cold.bytes_sent;
    let entry_bytes = storage
        .raw_entry(&Digest::parse(&key).unwrap())
        .await
        .unwrap()
        .unwrap()
        .len() as u64;
    // Every blob was asked about and found: three PUTs, the entry and an empty claim
    // for each of the pack and the large blob reused (what gc reads before sweeping).
    assert_eq!(warm.puts - cold.puts, 3, "{warm}");
    assert_eq!(sent, entry_bytes, "a warm store sent blob bytes: {warm}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_entries_blobs_and_bytes() {
    let (_, storage) = counting_storage();
    let c = cache(storage.clone());
    let outputs = vec![
        CacheOutput::bytes("a", b"12345".to_vec(), false),
        CacheOutput::bytes("b", b"678".to_vec(), false),
    ];
    c.store(
        &task(),
        &fresh_key(),
        &entry_with(outputs),
        CachePolicy::Normal,
    )
    .await
    .unwrap();
    let stats = storage
        .stats(ListLimits::new(Duration::from_secs(30)))
        .await
        .unwrap();
    // Both files in one pack.
    assert_eq!(
        (stats.entries, stats.blobs, stats.packs),
        (1, 0, 1),
        "{stats:?}"
    );
    assert!(stats.pack_bytes > 8, "{stats:?}");
    assert_eq!(stats.objects(), 2, "{stats:?}");
    assert!(stats.is_complete(), "{stats:?}");
    assert!(stats.entry_bytes > 0);
}

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzSECRETzz";
const TOKEN: &str = "FwoGZXIvYXdzEXAMPLESESSIONTOKENzzTOKENzz";

fn env_with_secrets(endpoint: String) -> impl Fn(&str) -> Option<String> {
    move |k: &str| match k {
        "AWS_ACCESS_KEY_ID" => Some("AKIAEXAMPLEKEYID".into()),
        "AWS_SECRET_ACCESS_KEY" => Some(SECRET.into()),
        "AWS_SESSION_TOKEN" => Some(TOKEN.into()),
        "AWS_REGION" => Some("us-east-1".into()),
        "AWS_ENDPOINT_URL" => Some(endpoint.clone()),
        "AWS_ALLOW_HTTP" => Some("true".into()),
        _ => None,
    }
}

fn assert_no_secret(text: &str) {
    assert!(
        !text.contains(SECRET) && !text.contains(TOKEN),
        "a secret leaked: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_gone_is_a_degradable_fault_named_without_secrets() {
    // A port nobody listens on: connections are refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = url::Url::parse("s3://some-bucket/ci").unwrap();
    let options = S3Options::default().with_timeout(Duration::from_secs(2));
    let storage = S3Storage::open_with_env(
        &url,
        options,
        &env_with_secrets(format!("http://127.0.0.1:{port}")),
    )
    .unwrap();
    assert_no_secret(&format!("{storage:?}"));
    let c = cache(storage.clone());
    let start = std::time::Instant::now();
    let e = c
        .lookup(
            &task(),
            &Digest::parse(&fresh_key()).unwrap(),
            CachePolicy::Normal,
        )
        .await
        .unwrap_err();
    let elapsed = start.elapsed();
    assert!(e.is_cache_fault() && e.is_gracefully_degradable(), "{e:?}");
    assert!(
        matches!(
            e,
            BackendError::Connection(_) | BackendError::Unavailable(_)
        ),
        "{e:?}"
    );
    let text = format!("{e} {e:?}");
    assert_no_secret(&text);
    assert!(
        text.contains("some-bucket") && text.contains(&format!("127.0.0.1:{port}")),
        "{text}"
    );
    // Bounded by the configured timeout (generous margin: this asserts a bound, not speed).
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_url_are_refused_without_echoing_them() {
    let url = url::Url::parse(&format!("s3://AKIA:{}@bucket/p", "topsecretvalue1")).unwrap();
    let e = S3Storage::open_with_env(&url, S3Options::default(), &|_| None).unwrap_err();
    assert!(!e.to_string().contains("topsecretvalue1"), "{e}");
    assert!(e.to_string().contains("environment"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_names_bucket_endpoint_and_credential_source() {
    let Some((endpoint, _)) =
        common::s3_peer("a_missing_bucket_names_bucket_endpoint_and_credential_source")
    else {
        return;
    };
    let url = url::Url::parse("s3://no-such-bucket-taskcache/ci").unwrap();
    let storage = S3Storage::open_with_env(
        &url,
        S3Options::default(),
        &env_with_secrets(endpoint.clone()),
    )
    .unwrap();
    let e = cache_core::storage::Storage::health_check(&storage)
        .await
        .unwrap_err();
    let text = e.to_string();
    assert_no_secret(&format!("{text} {e:?}"));
    assert!(
        text.contains("no-such-bucket-taskcache") && text.contains(&endpoint),
        "{text}"
    );
    assert!(
        text.contains("does not exist") && text.contains("AWS_ACCESS_KEY_ID"),
        "{text}"
    );
    // A lookup says the same, rather than calling it a miss.
    let e = cache(storage)
        .lookup(
            &task(),
            &Digest::parse(&fresh_key()).unwrap(),
            CachePolicy::Normal,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_storing_one_blob_at_once_both_succeed_on_a_real_server() {
    let Some((endpoint, bucket)) =
        common::s3_peer("two_runners_storing_one_blob_at_once_both_succeed_on_a_real_server")
    else {
        return;
    };
    let url = url::Url::parse(&format!("s3://{bucket}/{}", common::unique_prefix("race"))).unwrap();
    let env = common::s3_env(&endpoint);
    let outputs = vec![CacheOutput::bytes(
        "out/same.txt",
        b"same bytes".to_vec(),
        false,
    )];
    let key = fresh_key();
    let mut runners = Vec::new();
    for _ in 0..8 {
        let c = cache(S3Storage::open_with_env(&url, S3Options::default(), &env).unwrap());
        let (key, entry) = (key.clone(), entry_with(outputs.clone()));
        runners.push(tokio::spawn(async move {
            c.store(&task(), &key, &entry, CachePolicy::Normal).await
        }));
    }
    for r in runners {
        r.await.unwrap().unwrap();
    }
    let c = cache(S3Storage::open_with_env(&url, S3Options::default(), &env).unwrap());
    let ws = tempfile::tempdir().unwrap();
    c.lookup(&task(), &Digest::parse(&key).unwrap(), CachePolicy::Normal)
        .await
        .unwrap()
        .expect("a hit")
        .restore(ws.path())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(ws.path().join("out/same.txt")).unwrap(),
        b"same bytes"
    );
}

/// A loopback HTTP server that answers every request with `status` and `body`, for
/// the answers a real server gives only when misconfigured or overloaded.
fn answering(status: u16, body: &'static str) -> LoopbackHttp {
    LoopbackHttp::start(move |_| Some(Reply::new(status, body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_name_bucket_endpoint_and_source_but_no_secret() {
    let server = answering(
        403,
        "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
    );
    let endpoint = server.url();
    let url = url::Url::parse("s3://team-cache/ci").unwrap();
    let options = S3Options::default().with_timeout(Duration::from_secs(2));
    let storage =
        S3Storage::open_with_env(&url, options, &env_with_secrets(endpoint.clone())).unwrap();
    let e = cache(storage)
        .lookup(
            &task(),
            &Digest::parse(&fresh_key()).unwrap(),
            CachePolicy::Normal,
        )
        .await
        .unwrap_err();
    let text = e.to_string();
    assert_no_secret(&format!("{text} {e:?}"));
    for part in [
        "access denied",
        "team-cache",
        endpoint.as_str(),
        "AWS_SESSION_TOKEN from the environment",
    ] {
        assert!(text.contains(part), "{part:?} missing: {text}");
    }
    // A refused permission, not an outage: the task runs uncached.
    assert_eq!(e.fault(), cache_core::Fault::Permission, "{e:?}");
    assert!(e.is_gracefully_degradable() && !e.is_outage(), "{e:?}");
}

/// Issue 22: a bucket that answers 403 to writes (a read-only token) is a permission
/// fault, not an outage: behind `Tiered` and a breaker it is written once, then no
/// more, and still read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_refusing_writes_with_403_is_read_on_and_written_once() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let (reads, writes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (r, w) = (Arc::clone(&reads), Arc::clone(&writes));
    let server = LoopbackHttp::start(move |req| {
        if matches!(req.method.as_str(), "GET" | "HEAD") {
            r.fetch_add(1, Ordering::Relaxed);
            Some(Reply::new(
                404,
                "<Error><Code>NoSuchKey</Code><Message>not found</Message></Error>",
            ))
        } else {
            w.fetch_add(1, Ordering::Relaxed);
            Some(Reply::new(
                403,
                "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
            ))
        }
    });
    let url = url::Url::parse("s3://team-cache/ci").unwrap();
    let options = S3Options::default().with_timeout(Duration::from_secs(5));
    let storage = S3Storage::open_with_env(&url, options, &env_with_secrets(server.url())).unwrap();
    let shared =
        Arc::new(cache_core::CircuitBreaker::new(Arc::new(cache(storage)), 1).open_on_outage());
    let tiered = cache_core::Tiered::new(
        Arc::new(cache_testkit::MemoryBackend::new()),
        shared.clone(),
    );
    let stats = tiered.stats();
    let entry = entry_with(vec![CacheOutput::bytes("a.txt", b"a".to_vec(), false)]);
    tiered
        .store(&task(), &fresh_key(), &entry, CachePolicy::Normal)
        .await
        .unwrap();
    let refused = writes.load(Ordering::Relaxed);
    assert!(refused > 0, "the first store reached the bucket");
    for _ in 0..3 {
        tiered
            .store(&task(), &fresh_key(), &entry, CachePolicy::Normal)
            .await
            .unwrap();
    }
    assert_eq!(
        writes.load(Ordering::Relaxed),
        refused,
        "no write after the refusal"
    );
    assert_eq!(
        stats
            .shared_writes_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
    assert!(!shared.is_open(), "a 403 is not an outage");
    let before = reads.load(Ordering::Relaxed);
    let found = tiered
        .lookup(
            &task(),
            &Digest::parse(&fresh_key()).unwrap(),
            CachePolicy::Normal,
        )
        .await;
    assert!(matches!(found, Ok(None)), "{found:?}");
    assert!(
        reads.load(Ordering::Relaxed) > before,
        "the bucket is still read"
    );
    assert!(!shared.is_open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_after_retries_is_a_degradable_fault() {
    let server = answering(
        503,
        "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
    );
    let endpoint = server.url();
    let url = url::Url::parse("s3://team-cache/ci").unwrap();
    let options = S3Options::default().with_timeout(Duration::from_secs(2));
    let storage = S3Storage::open_with_env(&url, options, &env_with_secrets(endpoint)).unwrap();
    let e = cache(storage)
        .lookup(
            &task(),
            &Digest::parse(&fresh_key()).unwrap(),
            CachePolicy::Normal,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, BackendError::Unavailable(_)), "{e:?}");
    assert!(e.is_gracefully_degradable() && e.is_cache_fault(), "{e:?}");
    assert_no_secret(&format!("{e} {e:?}"));
}

/// `stats` against `server` (its endpoint, test credentials) within `limits`.
async fn stats_from(server: &LoopbackHttp, limits: ListLimits) -> cache_s3::BucketStats {
    let url = url::Url::parse("s3://team-cache/ci").unwrap();
    let options = S3Options::default().with_timeout(Duration::from_secs(5));
    let storage = S3Storage::open_with_env(&url, options, &env_with_secrets(server.url())).unwrap();
    storage.stats(limits).await.unwrap()
}

/// A listing that says "more follow" forever stops at the page limit, with what it
/// counted (a hostile server once kept `stats` listing for as long as it liked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_listing_stops_at_the_page_limit_with_partial_counts() {
    let server = LoopbackHttp::endless_s3_listing();
    let limits = ListLimits::new(Duration::from_secs(60)).with_max_pages(5);
    let stats = stats_from(&server, limits).await;
    assert_eq!(stats.stopped, Some(Stopped::MaxPages(5)), "{stats:?}");
    assert_eq!((stats.pages, stats.entries), (5, 5), "{stats:?}");
    assert!(!stats.is_complete());
    assert_eq!(server.requests(), 5);
}

/// `stats` against `server` with a 1 s deadline, which must be what stopped it.
async fn stopped_at_the_deadline(server: &LoopbackHttp) -> cache_s3::BucketStats {
    let started = std::time::Instant::now();
    let stats = stats_from(server, ListLimits::new(Duration::from_secs(1))).await;
    assert_eq!(
        stats.stopped,
        Some(Stopped::Deadline(Duration::from_secs(1))),
        "{stats:?}"
    );
    // A bound that catches a hang, not a speed test.
    assert!(started.elapsed() < Duration::from_secs(30));
    stats
}

/// ...and at the deadline, however many pages that is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_listing_stops_at_the_deadline() {
    let stats = stopped_at_the_deadline(&LoopbackHttp::endless_s3_listing()).await;
    assert!(stats.pages > 0 && stats.entries == stats.pages, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_continuation_token_stops_the_listing() {
    let server = LoopbackHttp::s3_listing_repeating_its_token();
    let stats = stats_from(&server, ListLimits::new(Duration::from_secs(60))).await;
    assert_eq!(stats.stopped, Some(Stopped::RepeatedToken), "{stats:?}");
    assert_eq!(stats.pages, 2, "{stats:?}");
}

/// A server that never answers costs the deadline, not the client's own timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_stops_the_listing_at_the_deadline() {
    let server = LoopbackHttp::silent();
    let stats = stopped_at_the_deadline(&server).await;
    assert_eq!((stats.pages, stats.entries), (0, 0), "{stats:?}");
    assert!(server.requests() >= 1);
}
