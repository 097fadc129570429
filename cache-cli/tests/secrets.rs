//! taskcache's own secrets never reach the command, so they never reach its logs, so
//! no cache tier ever holds them: a step that prints its environment (the real `env`)
//! under a signing key, remote headers and a TLS client key stores and replays none of
//! them, whether the entry is read back from the local cache, from an S3 bucket (moto)
//! or from a REAPI server (BuildGrid), the peers of `cargo xtask peers up`.

#![cfg(unix)]

mod support;

use cache_s3::object_store::path::Path as ObjectPath;
use cache_s3::object_store::{ObjectStore, ObjectStoreExt};
use futures::TryStreamExt;
use std::process::Command;
use std::time::Duration;
use support::{Fixture, Out, exec_within, find, walk};

const HEADERS: &str = "x-taskcache-e2e: HEADER-SECRET-never-stored";
const TLS_KEY: &str = "/nonexistent/TLS-KEY-PATH-never-stored.pem";

struct Peers {
    endpoint: String,
    bucket: String,
    reapi: String,
}

/// `taskcache` with a local cache in `local` and the S3 peer's endpoint and test
/// credentials, given `env` (the secrets, for a writer).
fn cmd(f: &Fixture, p: &Peers, local: &str, env: &[(&str, &str)]) -> Command {
    let mut c = f.cmd();
    c.env("TASKCACHE_CACHE", f.root.join(local))
        .env("AWS_ACCESS_KEY_ID", "e2e-access-key")
        .env("AWS_SECRET_ACCESS_KEY", "e2e-secret-access-key")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", &p.endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("TASKCACHE_E2E_MARKER", "visible-to-the-command");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run(mut c: Command, args: &[&str], command: &[&str]) -> Out {
    c.arg("run").args(args).arg("--").args(command);
    let o = exec_within(c, Duration::from_secs(120));
    assert_eq!(o.code, 0, "{args:?}: {o:?}");
    o
}

/// Which of `secrets` `bytes` holds.
fn leaked<'a>(bytes: &[u8], secrets: &[&'a str]) -> Vec<&'a str> {
    secrets
        .iter()
        .copied()
        .filter(|s| find(bytes, s.as_bytes()).is_some())
        .collect()
}

/// `bytes`, all that `tier` stores, hold the command's log (so a secret in it would be
/// found) and none of `secrets`.
fn stored_without_secrets(tier: &str, bytes: &[u8], secrets: &[&str]) {
    assert!(
        find(bytes, b"TASKCACHE_E2E_MARKER=visible").is_some(),
        "{tier}: the log is not there"
    );
    assert_eq!(leaked(bytes, secrets), Vec::<&str>::new(), "{tier}");
}

/// Every byte stored under `prefix` in the S3 peer's bucket.
fn bucket_bytes(p: &Peers, prefix: &str) -> Vec<u8> {
    let store = cache_s3::object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&p.bucket)
        .with_endpoint(&p.endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("e2e")
        .with_secret_access_key("e2e-secret")
        .build()
        .unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let listed: Vec<_> = store
                .list(Some(&ObjectPath::from(prefix)))
                .try_collect()
                .await
                .unwrap();
            let mut all = Vec::new();
            for meta in listed {
                let got = store.get(&meta.location).await.unwrap();
                all.extend_from_slice(&got.bytes().await.unwrap());
            }
            all
        })
}

#[test]
fn secrets_never_reach_the_command_nor_any_tier() {
    let Some(vars) = support::peers(
        "secrets_never_reach_the_command_nor_any_tier",
        &[
            "TASKCACHE_TEST_S3_ENDPOINT",
            "TASKCACHE_TEST_S3_BUCKET",
            "TASKCACHE_TEST_REAPI",
        ],
    ) else {
        return;
    };
    let [endpoint, bucket, reapi] = <[String; 3]>::try_from(vars).unwrap();
    let p = Peers {
        endpoint,
        bucket,
        reapi,
    };
    let f = Fixture::new();
    let (signing, trusted) = f.keygen();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("e2e/secrets-{}-{nonce}", std::process::id());
    let s3 = format!("s3://{}/{prefix}", p.bucket);
    // Unsets a variable nobody has: the same output, a key of this test run's own.
    let unset = format!("TASKCACHE_E2E_UNSET_{nonce}");
    let command = ["env", "-u", unset.as_str()];
    let secrets = [signing.as_str(), "HEADER-SECRET", "TLS-KEY-PATH"];
    let writer = [
        ("TASKCACHE_SIGNING_KEY", signing.as_str()),
        ("TASKCACHE_TRUSTED_KEYS", trusted.as_str()),
        ("TASKCACHE_REMOTE_HEADERS", HEADERS),
    ];
    let reader = [("TASKCACHE_TRUSTED_KEYS", trusted.as_str())];
    let visible = |o: &Out, what: &str| {
        assert!(
            o.stdout_str().contains("TASKCACHE_E2E_MARKER=visible"),
            "{what}: {o:?}"
        );
        // Public, and what a nested taskcache needs to verify: still passed on.
        assert!(
            o.stdout_str()
                .contains(&format!("TASKCACHE_TRUSTED_KEYS={trusted}")),
            "{what}: {o:?}"
        );
        assert_eq!(
            leaked(&o.stdout, &secrets),
            Vec::<&str>::new(),
            "{what}: {o:?}"
        );
    };

    // A run: it exits 0, says `expect` on stderr, and its stdout is `env`'s, with no secret.
    let step = |what: &str, local: &str, env: &[(&str, &str)], args: &[&str], expect: &str| {
        let o = run(cmd(&f, &p, local, env), args, &command);
        assert!(o.stderr.contains(expect), "{what}: {o:?}");
        visible(&o, what);
    };

    // Writers: local + S3 (the TLS key variable too, which an S3 tier ignores), and
    // local + REAPI; the command's own output already holds no secret.
    let mut with_key = writer.to_vec();
    with_key.push(("TASKCACHE_REMOTE_KEY", TLS_KEY));
    step(
        "the run with S3",
        "local-s3",
        &with_key,
        &["-v", "--remote", &s3],
        "stored",
    );
    let to_reapi = ["-v", "--remote", p.reapi.as_str()];
    step(
        "the run with REAPI",
        "local-reapi",
        &writer,
        &to_reapi,
        "stored",
    );

    // Every byte of both local caches and of the bucket: the log is there, no secret is.
    for local in ["local-s3", "local-reapi"] {
        let all: Vec<u8> = walk(&f.root.join(local))
            .iter()
            .flat_map(|p| std::fs::read(p).unwrap())
            .collect();
        stored_without_secrets(local, &all, &secrets);
    }
    stored_without_secrets("the bucket", &bucket_bytes(&p, &prefix), &secrets);

    // Hits replayed from each tier alone, by a reader that trusts only signed entries:
    // the local cache, the bucket as the cache, REAPI behind an empty local cache.
    let hit = "taskcache: hit ";
    step("the local hit", "local-s3", &reader, &["-v"], hit);
    step(
        "the S3 hit",
        "unused",
        &reader,
        &["-v", "--cache", &s3],
        hit,
    );
    step(
        "the REAPI hit",
        "empty",
        &reader,
        &to_reapi,
        "(remote tier)",
    );
}
