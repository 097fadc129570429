//! gcp-storage-emulator (a Google Cloud Storage emulator, from the Python package
//! registry) in a venv under `target/peers/gcs`, on a free port of 127.0.0.1, in
//! memory, with one bucket for the tests. The Python is picked as for BuildGrid (the
//! newest >= 3.13 on PATH or under the pyenv root, else `python3`).
//!
//! The bucket's name has no `-`: `object_store` percent-encodes it in the XML API's
//! paths (`taskcache%2Dtest`), and the emulator's routes only match a bucket name as
//! it is spelled. What else the emulator lacks for `object_store`'s GCS client is in
//! `cache-s3/tests/conformance_gcs.rs` and ARCHITECTURE.md.

use super::net;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const VERSION: &str = "2026.7.19";
/// The bucket tests share (each test works under its own prefix).
pub const BUCKET: &str = "taskcachetest";

/// Installs the emulator once (idempotent: a venv that already has this version is
/// kept).
pub fn install(dir: &Path) -> Result<(), String> {
    let venv = dir.join("venv");
    let check = format!(
        "import importlib.metadata as m, sys; \
         sys.exit(m.version('gcp-storage-emulator') != '{VERSION}')"
    );
    if net::quiet(Command::new(venv.join("bin/python")).args(["-c", &check])).is_ok() {
        return Ok(());
    }
    let python = super::buildgrid::pick_python();
    eprintln!(
        "xtask: peers: installing gcp-storage-emulator {VERSION} with {} into {} (once)",
        python.display(),
        venv.display()
    );
    net::venv_with(&python, &venv, &format!("gcp-storage-emulator=={VERSION}"))
}

/// Starts the emulator (or finds it running) with the test bucket.
pub fn up(dir: &Path) -> Result<Vec<(&'static str, String)>, String> {
    install(dir)?;
    let pid_file = dir.join("gcs.pid");
    let port_file = dir.join("gcs.port");
    let port = net::running_or_start(&pid_file, &port_file, |port| start(dir, port))?;
    Ok(vec![
        (
            "TASKCACHE_TEST_GCS_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("TASKCACHE_TEST_GCS_BUCKET", BUCKET.into()),
    ])
}

/// Starts the emulator on `port` of 127.0.0.1, in memory, creating the test bucket
/// (`--default-bucket`); its log, pid and port files in `dir`; waits until it answers
/// its health check.
fn start(dir: &Path, port: u16) -> Result<u32, String> {
    let pid_file = dir.join("gcs.pid");
    let pid = net::spawn(
        Command::new(dir.join("venv/bin/gcp-storage-emulator")).args([
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--in-memory",
            "--default-bucket",
            BUCKET,
            "--quiet",
        ]),
        &dir.join("gcs.log"),
        &pid_file,
    )?;
    std::fs::write(dir.join("gcs.port"), port.to_string()).map_err(|e| e.to_string())?;
    net::wait_until(pid, Duration::from_secs(60), || {
        net::http(port, "GET", "/") == Ok(200)
    })
    .map_err(|e| {
        net::stop(&pid_file);
        let log = std::fs::read_to_string(dir.join("gcs.log")).unwrap_or_default();
        format!("{e}; log:\n{log}")
    })?;
    Ok(pid)
}

/// Stops the emulator if it runs.
#[allow(clippy::unnecessary_wraps)] // the interface every server module has
pub fn down(dir: &Path) -> Result<(), String> {
    net::stop(&dir.join("gcs.pid"));
    let _ = std::fs::remove_file(dir.join("gcs.port"));
    Ok(())
}
