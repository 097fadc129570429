//! The `taskcache` binary against object-store configuration and endpoints that are
//! wrong or hostile, with no real server: everything stays on 127.0.0.1, and every
//! run is given test credentials, so nothing asks an instance metadata service.

mod support;

use cache_testkit::loopback::LoopbackHttp;
use std::process::Command;
use std::time::Duration;
use support::{Fixture, exec_within};

/// Longer than any run here may take: a bound that catches a hang, not a speed test.
const HANG: Duration = Duration::from_secs(60);

/// `taskcache` with explicit test credentials and `endpoint` as AWS_ENDPOINT_URL.
fn cmd(f: &Fixture, endpoint: &str) -> Command {
    let mut c = f.cmd();
    c.env("AWS_ACCESS_KEY_ID", "test-access-key")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret-access-key")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ENDPOINT_URL", endpoint);
    c
}

/// An endpoint with credentials in it (one with a `/` in the password once panicked
/// the request signer, exit 101, and the command never ran; a plain one was printed
/// in every warning): the command runs uncached with its own exit code, the warning
/// names the variable, and the password is never printed.
#[test]
fn an_endpoint_with_credentials_is_refused_and_the_command_runs() {
    let script = "echo ran >> ../counter; echo out > out.txt; exit 7";
    for (endpoint, password) in [
        ("http://user:pa/ss@127.0.0.1:1", "pa/ss"),
        ("http://user:hunter2@127.0.0.1:1", "hunter2"),
    ] {
        for flag in ["--cache", "--remote"] {
            let f = Fixture::new();
            let mut c = cmd(&f, endpoint);
            c.args(["run", "-v", flag, "s3://bucket/ci", "-o", "out.txt"])
                .args(["--", "sh", "-c", script]);
            let o = exec_within(c, HANG);
            let what = format!("{flag} with AWS_ENDPOINT_URL={endpoint}: {o:?}");
            assert_eq!(o.code, 7, "not the command's exit code: {what}");
            assert_eq!(f.runs(), 1, "the command did not run once: {what}");
            assert!(!o.stderr.contains(password), "the password leaked: {what}");
            assert!(!o.stderr.contains("panicked"), "{what}");
            assert!(o.stderr.contains("AWS_ENDPOINT_URL"), "{what}");
        }
    }
}

/// A server whose listing says "more follow" forever (a fresh continuation token each
/// time): `stats` stops at its deadline (here from TASKCACHE_CACHE_TIMEOUT, as `run`
/// reads it), prints what it counted, says the counts are partial and how far it got,
/// and exits 3. It once listed for as long as the server liked.
#[test]
fn stats_of_an_endless_listing_ends_at_its_deadline_with_partial_counts() {
    let server = LoopbackHttp::endless_s3_listing();
    let f = Fixture::new();
    for json in [false, true] {
        let mut c = cmd(&f, &server.url());
        c.env("TASKCACHE_CACHE_TIMEOUT", "2s")
            .args(["stats", "--cache", "s3://bucket/ci"]);
        if json {
            c.arg("--json");
        }
        let o = exec_within(c, Duration::from_secs(30));
        assert_eq!(o.code, 3, "{o:?}");
        assert!(
            o.stderr.contains("partial") && o.stderr.contains(&server.url()),
            "{o:?}"
        );
        assert!(o.stderr.contains("deadline"), "{o:?}");
        if json {
            let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(stats["complete"], false, "{stats}");
            assert!(stats["pages"].as_u64().unwrap() > 0, "{stats}");
            assert_eq!(stats["entries"], stats["pages"], "{stats}");
        } else {
            assert!(o.stdout_str().contains("partial: listed"), "{o:?}");
        }
    }
}

/// A server that accepts and never answers: `stats --cache-timeout 2s` ends at its
/// deadline, naming the endpoint, instead of waiting on the client's own timeouts
/// (a minute and more).
#[test]
fn stats_of_a_silent_server_ends_at_its_deadline_naming_the_endpoint() {
    let server = LoopbackHttp::silent();
    let f = Fixture::new();
    let mut c = cmd(&f, &server.url());
    c.args([
        "stats",
        "--cache",
        "s3://bucket/ci",
        "--cache-timeout",
        "2s",
    ]);
    let o = exec_within(c, Duration::from_secs(30));
    assert_eq!(o.code, 3, "{o:?}");
    assert!(o.stderr.contains(&server.url()), "{o:?}");
    assert!(
        o.stdout_str().contains("listed 0 objects in 0 pages"),
        "{o:?}"
    );
    assert!(server.requests() >= 1, "the server was never asked");
}
