//! s3s-fs (a fast S3 server on a directory, from the crate registry) under
//! `target/peers/s3s`: the throughput benchmark's server, started by name only
//! (`cargo xtask peers up s3s`); the build takes minutes once.

use super::net;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The newest release that builds on the workspace's rustc.
const VERSION: &str = "0.14.1";
/// Keys the server checks signatures with (loopback-only test credentials).
pub const ACCESS_KEY: &str = "taskcache";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "taskcache-bench-secret";
/// The bucket the benchmark uses.
pub const BUCKET: &str = "taskcache-bench";

/// Installs s3s-fs once.
pub fn install(dir: &Path) -> Result<(), String> {
    let bin = dir.join("cargo/bin/s3s-fs");
    let ok = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == format!("s3s-fs {VERSION}"));
    if ok {
        return Ok(());
    }
    eprintln!(
        "xtask: peers: building s3s-fs {VERSION} into {} (once, minutes)",
        dir.display()
    );
    net::quiet(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "--quiet",
                "--locked",
                &format!("s3s-fs@{VERSION}"),
            ])
            .args(["--features", "binary", "--root"])
            .arg(dir.join("cargo"))
            // Its own target directory, not the workspace's.
            .env_remove("CARGO_TARGET_DIR")
            .env("CARGO_TARGET_DIR", dir.join("build")),
    )
}

/// Starts s3s-fs on a fresh data directory with the benchmark bucket.
pub fn up(dir: &Path) -> Result<Vec<(&'static str, String)>, String> {
    install(dir)?;
    let pid_file = dir.join("s3s.pid");
    net::stop(&pid_file);
    let data = dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    // s3s-fs maps a bucket to a directory.
    std::fs::create_dir_all(data.join(BUCKET)).map_err(|e| e.to_string())?;
    let port = net::free_port()?;
    let pid = net::spawn(
        Command::new(dir.join("cargo/bin/s3s-fs"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&data),
        &dir.join("s3s.log"),
        &pid_file,
    )?;
    net::wait_until(pid, Duration::from_secs(30), || {
        net::http(port, "GET", "/").is_ok()
    })?;
    Ok(vec![
        (
            "TASKCACHE_BENCH_S3S_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("TASKCACHE_BENCH_S3S_BUCKET", BUCKET.into()),
    ])
}

/// Stops s3s-fs if it runs.
#[allow(clippy::unnecessary_wraps)] // the interface every server module has
pub fn down(dir: &Path) -> Result<(), String> {
    net::stop(&dir.join("s3s.pid"));
    Ok(())
}
