//! moto (an S3 server, from the Python package registry) in a venv under
//! `target/peers/moto`, on a free port of 127.0.0.1, with one bucket for the tests.

use super::net;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const VERSION: &str = "5.2.5";
/// The bucket tests share (each test works under its own prefix).
pub const BUCKET: &str = "taskcache-test";

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Installs moto once (idempotent: a venv that already has this version is kept).
pub fn install(dir: &Path) -> Result<(), String> {
    let venv = dir.join("venv");
    let py = venv.join("bin/python");
    let check = format!("import moto, flask, sys; sys.exit(moto.__version__ != '{VERSION}')");
    if net::quiet(Command::new(&py).args(["-c", &check])).is_ok() {
        return Ok(());
    }
    eprintln!(
        "xtask: peers: installing moto {VERSION} into {} (once)",
        venv.display()
    );
    net::venv_with(
        Path::new(&python()),
        &venv,
        &format!("moto[server]=={VERSION}"),
    )
}

/// The AWS CLI (the benchmark's reference client) in the same venv, installed once;
/// returns the `aws` program.
pub fn install_awscli(dir: &Path) -> Result<std::path::PathBuf, String> {
    install(dir)?;
    let aws = dir.join("venv/bin/aws");
    if net::quiet(Command::new(&aws).arg("--version")).is_ok() {
        return Ok(aws);
    }
    eprintln!(
        "xtask: peers: installing the AWS CLI into {} (once)",
        dir.display()
    );
    net::quiet(Command::new(dir.join("venv/bin/pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        "awscli<2",
    ]))?;
    Ok(aws)
}

/// Starts moto (or finds it running) and creates the test bucket.
pub fn up(dir: &Path) -> Result<Vec<(&'static str, String)>, String> {
    install(dir)?;
    let pid_file = dir.join("moto.pid");
    let port_file = dir.join("moto.port");
    let port = net::running_or_start(&pid_file, &port_file, |port| {
        start(dir, &dir.join("venv"), port)
    })?;
    Ok(vec![
        (
            "TASKCACHE_TEST_S3_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("TASKCACHE_TEST_S3_BUCKET", BUCKET.into()),
        // For tests that need a server of their own (to stop it mid-run).
        (
            "TASKCACHE_TEST_MOTO_SERVER",
            dir.join("venv/bin/moto_server").display().to_string(),
        ),
    ])
}

/// Starts moto from `venv` on `port` of 127.0.0.1, its log (`moto.log`), pid file
/// (`moto.pid`) and port file in `dir`; waits until it answers and creates the test
/// bucket. Returns its pid. A drill that kills and restarts a server calls this again
/// with the same port (moto keeps nothing: each start is an empty server).
pub fn start(dir: &Path, venv: &Path, port: u16) -> Result<u32, String> {
    let pid_file = dir.join("moto.pid");
    let pid = net::spawn(
        Command::new(venv.join("bin/moto_server")).args([
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ]),
        &dir.join("moto.log"),
        &pid_file,
    )?;
    std::fs::write(dir.join("moto.port"), port.to_string()).map_err(|e| e.to_string())?;
    if let Err(e) = net::wait_until(pid, Duration::from_secs(60), || {
        net::http(port, "GET", "/").is_ok()
    }) {
        net::stop(&pid_file);
        let log = std::fs::read_to_string(dir.join("moto.log")).unwrap_or_default();
        return Err(format!("{e}; log:\n{log}"));
    }
    // moto accepts unsigned requests: a plain PUT creates the bucket (200 also when
    // it exists already).
    match net::http(port, "PUT", &format!("/{BUCKET}"))? {
        200 | 409 => Ok(pid),
        code => Err(format!("creating bucket {BUCKET}: HTTP {code}")),
    }
}

/// Stops moto if it runs.
#[allow(clippy::unnecessary_wraps)] // the interface every server module has
pub fn down(dir: &Path) -> Result<(), String> {
    net::stop(&dir.join("moto.pid"));
    Ok(())
}
