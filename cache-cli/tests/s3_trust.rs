//! The `taskcache` binary against object-store configuration and endpoints that are
//! wrong or hostile, with no real server: everything stays on 127.0.0.1, and every
//! run is given test credentials, so nothing asks an instance metadata service.

mod support;

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
