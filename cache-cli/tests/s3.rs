//! The `taskcache` binary against a real S3 server on 127.0.0.1 (moto, from `cargo
//! xtask peers up`): a miss, a hit from an empty local tier, a corrupted object in the
//! bucket, and the server stopped mid-run.

mod support;

use cache_s3::object_store::path::Path as ObjectPath;
use cache_s3::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use cache_testkit::loopback::LoopbackHttp;
use futures::TryStreamExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{COUNTING, Fixture, exec, exec_within};

/// The shared server: endpoint and bucket, or `None` (skipped, said why).
fn peer(test: &str) -> Option<(String, String)> {
    let get = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
    let endpoint = get("TASKCACHE_TEST_S3_ENDPOINT");
    if let (Some(e), Some(b)) = (endpoint, get("TASKCACHE_TEST_S3_BUCKET")) {
        return Some((e, b));
    }
    assert!(
        std::env::var("TASKCACHE_REQUIRE_PEERS").as_deref() != Ok("1"),
        "{test}: TASKCACHE_REQUIRE_PEERS=1 but no S3 server is configured"
    );
    eprintln!("skipped {test}: no S3 server (run `cargo xtask peers up`)");
    None
}

fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("e2e/{test}-{}-{nanos}", std::process::id())
}

const SECRET: &str = "e2e-secret-access-key-never-shown";

/// `taskcache` configured for the server at `endpoint`, with a local cache in `local`.
fn cmd(f: &Fixture, endpoint: &str, local: &str) -> Command {
    let mut c = f.cmd();
    c.env("TASKCACHE_CACHE", f.root.join(local))
        .env("AWS_ACCESS_KEY_ID", "e2e-access-key")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ALLOW_HTTP", "true");
    c
}

fn store_client(endpoint: &str, bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        cache_s3::object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("e2e")
            .with_secret_access_key("e2e-secret")
            .build()
            .unwrap(),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn miss_then_hit_from_an_empty_local_tier_then_a_corrupt_object_is_never_restored() {
    let Some((endpoint, bucket)) = peer("miss_then_hit_from_an_empty_local_tier") else {
        return;
    };
    let prefix = unique("tiers");
    let remote = format!("s3://{bucket}/{prefix}");
    let f = Fixture::new();
    let task = ["-v", "-o", "out.txt", "--", "sh", "-c", COUNTING];

    let mut c = cmd(&f, &endpoint, "local-a");
    c.args(["run", "--remote", &remote]).args(task);
    let o = exec(c);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("miss"), "{o:?}");
    assert!(!o.stderr.contains(SECRET), "{o:?}");
    assert_eq!(f.runs(), 1);

    // A new runner: empty local cache, same bucket.
    std::fs::remove_file(f.ws.join("out.txt")).unwrap();
    let mut c = cmd(&f, &endpoint, "local-b");
    c.args(["run", "--remote", &remote]).args(task);
    let o = exec(c);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stderr.contains("hit") && o.stderr.contains("remote tier"),
        "{o:?}"
    );
    assert_eq!(f.runs(), 1, "the command ran again");
    assert_eq!(std::fs::read(f.ws.join("out.txt")).unwrap(), b"result\n");

    // `stats` on the bucket: one entry, its blobs, by listing.
    let mut c = cmd(&f, &endpoint, "local-b");
    c.args(["stats", "--json", "--cache", &remote]);
    let o = exec(c);
    assert_eq!(o.code, 0, "{o:?}");
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(stats["entries"], 1, "{stats}");
    assert!(
        stats["blobs"].as_u64().unwrap() + stats["packs"].as_u64().unwrap() >= 1,
        "{stats}"
    );

    // Flip a byte of every blob in the bucket: a third runner gets the right bytes
    // (by running the command again), never the flipped ones.
    let store = store_client(&endpoint, &bucket);
    runtime().block_on(async {
        // Blobs on their own and packs of small files alike.
        let all = ObjectPath::from(prefix.clone());
        let listed: Vec<_> = store.list(Some(&all)).try_collect().await.unwrap();
        let listed: Vec<_> = listed
            .into_iter()
            .filter(|m| !m.location.as_ref().contains("/entries/"))
            .collect();
        assert!(!listed.is_empty());
        for meta in listed {
            let mut bytes = store
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .to_vec();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x20;
            store
                .put(&meta.location, PutPayload::from(bytes))
                .await
                .unwrap();
        }
    });
    std::fs::remove_file(f.ws.join("out.txt")).unwrap();
    let mut c = cmd(&f, &endpoint, "local-c");
    c.args(["run", "--remote", &remote]).args(task);
    let o = exec(c);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(
        std::fs::read(f.ws.join("out.txt")).unwrap(),
        b"result\n",
        "{o:?}"
    );
    assert_eq!(f.runs(), 2, "a corrupt blob must mean a re-run: {o:?}");
}

/// Issue 22: credentials that may read the bucket and not write it (moto behind a
/// front that answers 403 to every write). The run says so in one warning, the step
/// passes, the result is kept locally, and the bucket's hits are still replayed.
#[test]
fn a_bucket_that_refuses_writes_is_still_read_and_said_once() {
    let Some((endpoint, bucket)) = peer("a_bucket_that_refuses_writes_is_still_read") else {
        return;
    };
    let remote = format!("s3://{bucket}/{}", unique("read-only"));
    let front = LoopbackHttp::refusing_writes(&endpoint);
    let f = Fixture::new();
    let run = |endpoint: &str, local: &str, script: &str| {
        let mut c = cmd(&f, endpoint, local);
        c.args([
            "run", "-v", "--remote", &remote, "-o", "out.txt", "--", "sh", "-c", script,
        ]);
        exec(c)
    };
    // A writer stores through the real server.
    let o = run(&endpoint, "local-a", COUNTING);
    assert_eq!((o.code, f.runs()), (0, 1), "{o:?}");

    // A read-only runner: its lookup hits from the bucket.
    std::fs::remove_file(f.ws.join("out.txt")).unwrap();
    let o = run(&front.url(), "local-b", COUNTING);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("remote tier"), "{o:?}");
    assert_eq!(f.runs(), 1, "replayed from the bucket: {o:?}");
    assert_eq!(std::fs::read(f.ws.join("out.txt")).unwrap(), b"result\n");

    // Its miss runs, is stored locally, and the bucket's refusal is one warning.
    let other = format!("{COUNTING} # read-only miss");
    let o = run(&front.url(), "local-b", &other);
    assert_eq!((o.code, f.runs()), (0, 2), "{o:?}");
    let warnings: Vec<&str> = o.stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{o:?}");
    assert!(warnings[0].contains("refuses writes"), "{o:?}");
    assert!(
        o.stderr.contains("it refuses writes)"),
        "the stored line says so: {o:?}"
    );
    assert!(
        !o.stderr.contains("skipping it"),
        "no breaker opened: {o:?}"
    );
    assert!(!o.stderr.contains(SECRET), "{o:?}");
    // Kept locally (a hit from the local tier), not in the bucket.
    let o = run(&front.url(), "local-b", &other);
    assert_eq!((o.code, f.runs()), (0, 2), "{o:?}");
    let o = run(&endpoint, "local-c", &other);
    assert_eq!((o.code, f.runs()), (0, 3), "the bucket never got it: {o:?}");
}

#[test]
fn the_bucket_alone_as_the_cache() {
    let Some((endpoint, bucket)) = peer("the_bucket_alone_as_the_cache") else {
        return;
    };
    let cache = format!("s3://{bucket}/{}", unique("alone"));
    let f = Fixture::new();
    for expected_runs in [1, 1] {
        let mut c = cmd(&f, &endpoint, "unused");
        c.args([
            "run", "-v", "--cache", &cache, "-o", "out.txt", "--", "sh", "-c", COUNTING,
        ]);
        let o = exec(c);
        assert_eq!(o.code, 0, "{o:?}");
        assert_eq!(f.runs(), expected_runs, "{o:?}");
        assert_eq!(std::fs::read(f.ws.join("out.txt")).unwrap(), b"result\n");
    }
    assert!(!f.root.join("unused").exists(), "a local cache was made");
    let mut c = cmd(&f, &endpoint, "unused");
    c.args(["gc", "--cache", &cache, "--max-size", "1GiB"]);
    let o = exec(c);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("--unused-for"), "{o:?}");
}

#[test]
fn gc_on_the_bucket_evicts_by_last_use() {
    let Some((endpoint, bucket)) = peer("gc_on_the_bucket_evicts_by_last_use") else {
        return;
    };
    let cache = format!("s3://{bucket}/{}", unique("gc"));
    let f = Fixture::new();
    let run = || {
        let mut c = cmd(&f, &endpoint, "unused");
        c.args([
            "run", "--cache", &cache, "-o", "out.txt", "--", "sh", "-c", COUNTING,
        ]);
        let o = exec(c);
        assert_eq!(o.code, 0, "{o:?}");
    };
    let gc = |args: &[&str]| {
        let mut c = cmd(&f, &endpoint, "unused");
        c.args(["gc", "--cache", &cache, "--cache-timeout", "60s"]);
        c.args(args);
        exec(c)
    };
    run();
    run();
    assert_eq!(f.runs(), 1);
    // Used within the hour: kept.
    let o = gc(&["--unused-for", "1h"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.starts_with(b"removed 0 entries"), "{o:?}");
    run();
    assert_eq!(f.runs(), 1, "the entry survived: {o:?}");
    // Everything is unused for 0 s, and no grace: the entry and its objects go.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let o = gc(&["--unused-for", "0", "--grace", "0"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.starts_with(b"removed 1 entries"), "{o:?}");
    run();
    assert_eq!(f.runs(), 2, "the entry was evicted: {o:?}");
}

/// A moto of this test's own, killed when dropped.
struct OwnServer {
    child: Child,
    endpoint: String,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn own_server(test: &str) -> Option<OwnServer> {
    peer(test)?;
    let bin = std::env::var("TASKCACHE_TEST_MOTO_SERVER")
        .ok()
        .filter(|v| !v.is_empty());
    let Some(bin) = bin else {
        assert!(
            std::env::var("TASKCACHE_REQUIRE_PEERS").as_deref() != Ok("1"),
            "{test}: TASKCACHE_TEST_MOTO_SERVER is unset"
        );
        eprintln!("skipped {test}: TASKCACHE_TEST_MOTO_SERVER unset (run `cargo xtask peers up`)");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = OwnServer {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let store = store_client(&server.endpoint, "own");
    let started = Instant::now();
    // Up when it answers; then the bucket (moto takes an unsigned PUT).
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "moto did not start"
        );
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(
        &mut s,
        format!("PUT /own HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(store);
    Some(server)
}

/// The server dies (or freezes) while the command runs: the step still succeeds, its
/// outputs are there, nothing is cached, and taskcache ends within the configured
/// timeout plus a margin.
fn server_stops_mid_run(test: &str, signal: &str) {
    let Some(server) = own_server(test) else {
        return;
    };
    let f = Fixture::new();
    let pid = server.child.id();
    let script = format!("kill -{signal} {pid}; {COUNTING}");
    let timeout_s = 3;
    let mut c = cmd(&f, &server.endpoint, "local");
    c.env("TASKCACHE_CACHE_TIMEOUT", format!("{timeout_s}s"))
        .args([
            "run",
            "--remote",
            "s3://own/ci",
            "-o",
            "out.txt",
            "--",
            "sh",
            "-c",
            &script,
        ]);
    let started = Instant::now();
    let o = exec_within(c, Duration::from_secs(120));
    let took = started.elapsed();
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(f.runs(), 1);
    assert_eq!(std::fs::read(f.ws.join("out.txt")).unwrap(), b"result\n");
    assert!(!o.stderr.contains(SECRET), "{o:?}");
    eprintln!("{test}: the run took {took:?} with a {timeout_s}s timeout");
    // The configured timeout plus a margin for a loaded machine (a bound on waiting
    // for a dead server, not a speed measurement: a quiet machine takes ~timeout).
    assert!(
        took < Duration::from_secs(timeout_s + 10),
        "waited {took:?} for a server that stopped, with a {timeout_s}s timeout: {o:?}"
    );
}

#[test]
fn the_server_killed_mid_run_leaves_the_step_successful() {
    server_stops_mid_run(
        "the_server_killed_mid_run_leaves_the_step_successful",
        "KILL",
    );
}

#[test]
fn the_server_frozen_mid_run_leaves_the_step_successful_within_the_timeout() {
    server_stops_mid_run(
        "the_server_frozen_mid_run_leaves_the_step_successful_within_the_timeout",
        "STOP",
    );
}
