//! `taskcache --remote grpc://...` end to end against a real BuildGrid (`cargo xtask
//! peers up`): a miss stores through the server, a fresh local cache hits from it, and
//! a server stopped mid-run costs one deadline, never the step.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{Fixture, exec_within};

fn peer(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("TASKCACHE_REQUIRE_PEERS").as_deref() != Ok("1"),
                "{var} is not set and TASKCACHE_REQUIRE_PEERS=1: run `cargo xtask peers up`"
            );
            eprintln!("skipped: {var} is not set (start BuildGrid with `cargo xtask peers up`)");
            None
        }
    }
}

/// A task unique to this test run, counting its runs in `../counter`.
fn counting_script() -> String {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{} # {nonce}", support::COUNTING)
}

#[test]
fn a_fresh_local_cache_hits_from_buildgrid() {
    let Some(url) = peer("TASKCACHE_TEST_REAPI") else {
        return;
    };
    let f = Fixture::new();
    let script = counting_script();
    let first = f.sh(&["-v", "--remote", &url, "-o", "out.txt"], &script);
    assert_eq!(first.code, 0, "{first:?}");
    assert!(first.stderr.contains("stored"), "{first:?}");
    assert_eq!(f.runs(), 1);
    std::fs::remove_file(f.ws.join("out.txt")).unwrap();
    let other_cache = f.root.join("empty-local-cache");
    let second = f.sh(
        &[
            "-v",
            "--cache",
            other_cache.to_str().unwrap(),
            "--remote",
            &url,
            "-o",
            "out.txt",
        ],
        &script,
    );
    assert_eq!(second.code, 0, "{second:?}");
    assert!(second.stderr.contains("(remote tier)"), "{second:?}");
    assert_eq!(f.runs(), 1, "the hit did not run the command");
    assert_eq!(second.stdout_str(), "done\n");
    assert_eq!(
        std::fs::read_to_string(f.ws.join("out.txt")).unwrap(),
        "result\n"
    );
}

#[test]
fn header_values_never_appear_in_the_output() {
    let Some(url) = peer("TASKCACHE_TEST_REAPI") else {
        return;
    };
    let f = Fixture::new();
    let mut c = f.cmd();
    c.env("TASKCACHE_REMOTE_HEADERS", "x-api-key: ENVSECRET-1")
        .args(["run", "-vv", "--remote", &url])
        .args(["--remote-header", "authorization: Bearer FLAGSECRET-2"])
        .args(["-o", "out.txt", "--", "sh", "-c", &counting_script()]);
    let o = exec_within(c, Duration::from_secs(120));
    assert_eq!(o.code, 0, "{o:?}");
    let all = format!("{}{}", o.stderr, o.stdout_str());
    assert!(
        all.contains("GetActionResult") || all.contains("stored"),
        "{all}"
    );
    for secret in ["ENVSECRET-1", "FLAGSECRET-2"] {
        assert!(!all.contains(secret), "{all}");
    }
}

/// A BuildGrid of this test's own, on a free port (so stopping it disturbs no one).
struct OwnServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn own_buildgrid(bgd: &Path) -> OwnServer {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("bgd.yml");
    std::fs::write(
        &conf,
        format!(
            "server:\n  - !channel\n    address: \"127.0.0.1:{port}\"\n    insecure-mode: true\n\
             authorization:\n  method: none\nmonitoring:\n  enabled: false\n\
             storages:\n  - !lru-storage &cas\n    size: 256MB\n\
             caches:\n  - !lru-action-cache &ac\n    storage: *cas\n    max-cached-refs: 1000\n    allow-updates: true\n    cache-failed-actions: true\n\
             instances:\n  - name: \"\"\n    services:\n      - !cas\n        storage: *cas\n      - !bytestream\n        storage: *cas\n        stream-blob: false\n      - !action-cache\n        cache: *ac\n"
        ),
    )
    .unwrap();
    let child = Command::new(bgd)
        .args(["server", "start"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = OwnServer {
        child,
        port,
        _dir: dir,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let ready = rt.block_on(async {
        let config =
            cache_remote::RemoteConfig::from_url(&format!("grpc://127.0.0.1:{port}")).unwrap();
        let storage = cache_remote::RemoteStorage::open(config).unwrap();
        while started.elapsed() < Duration::from_secs(90) {
            if cache_core::storage::Storage::health_check(&storage)
                .await
                .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    });
    assert!(ready, "a private BuildGrid did not start within 90 s");
    server
}

#[test]
fn a_server_stopped_mid_run_costs_one_deadline_and_the_step_succeeds() {
    let (Some(_), Some(bgd)) = (peer("TASKCACHE_TEST_REAPI"), peer("TASKCACHE_TEST_BGD")) else {
        return;
    };
    let server = own_buildgrid(Path::new(&bgd));
    let f = Fixture::new();
    let url = format!("grpc://127.0.0.1:{}", server.port);
    // The step freezes the server (SIGSTOP: connections stay open, nothing answers),
    // so storing its result meets a silent server.
    let script = format!(
        "kill -STOP {}; echo ran >> ../counter; printf 'result\\n' > out.txt",
        server.child.id()
    );
    let mut c = f.cmd();
    c.env("TASKCACHE_REMOTE_TIMEOUT", "2").args([
        "run", "--remote", &url, "-o", "out.txt", "--", "sh", "-c", &script,
    ]);
    let started = Instant::now();
    let o = exec_within(c, Duration::from_secs(120));
    let took = started.elapsed();
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(f.runs(), 1);
    assert!(f.ws.join("out.txt").exists());
    assert!(o.stderr.contains("no answer within"), "{o:?}");
    // One 2 s deadline, plus a generous margin for a loaded machine: not one per call.
    assert!(took < Duration::from_secs(2 + 30), "took {took:?}");
    let _ = Command::new("kill")
        .args(["-CONT", &server.child.id().to_string()])
        .status();
}
