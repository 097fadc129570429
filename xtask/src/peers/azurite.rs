//! Azurite (Azure's blob storage emulator, from the npm registry) in
//! `target/peers/azurite`, on a free port of 127.0.0.1, with one container for the
//! tests. Needs Node.js (`node` and `npm` on PATH).

use super::net;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const VERSION: &str = "3.35.0";
/// The container tests share (each test works under its own prefix).
pub const CONTAINER: &str = "taskcache-test";

/// Creates a container with a request signed by the emulator's development account
/// (Azurite refuses unsigned requests, and `object_store` cannot create containers):
/// `node -e SCRIPT PORT CONTAINER` exits 0 when the container is there.
const CREATE_CONTAINER: &str = r"
const http = require('http'), crypto = require('crypto');
const [port, container] = process.argv.slice(1);
const account = 'devstoreaccount1';
const key = Buffer.from('Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==', 'base64');
const date = new Date().toUTCString(), version = '2021-08-06';
const path = '/' + account + '/' + container;
const canonical = ['PUT', '', '', '', '', '', '', '', '', '', '', '',
  'x-ms-date:' + date, 'x-ms-version:' + version,
  '/' + account + path + '\nrestype:container'].join('\n');
const signature = crypto.createHmac('sha256', key).update(canonical, 'utf8').digest('base64');
const req = http.request({host: '127.0.0.1', port, method: 'PUT', path: path + '?restype=container',
  headers: {'x-ms-date': date, 'x-ms-version': version, 'Content-Length': 0,
            'Authorization': 'SharedKey ' + account + ':' + signature}}, res => {
  res.resume();
  if (res.statusCode !== 201 && res.statusCode !== 409) {
    console.error('create container: HTTP ' + res.statusCode);
    process.exit(1);
  }
});
req.on('error', e => { console.error('create container: ' + e.message); process.exit(1); });
req.end();
";

/// Node.js must be there: say so, and how to get it, rather than fail inside npm.
fn check_node() -> Result<(), String> {
    for tool in ["node", "npm"] {
        if net::quiet(Command::new(tool).arg("--version")).is_err() {
            return Err(format!(
                "Azurite needs Node.js, and `{tool}` is not on PATH: install Node.js with \
                 npm (e.g. `apt-get install nodejs npm`), then run `cargo xtask peers up` again"
            ));
        }
    }
    Ok(())
}

/// Installs Azurite once (idempotent: a folder that already has this version is kept).
pub fn install(dir: &Path) -> Result<(), String> {
    check_node()?;
    let manifest = dir.join("node_modules/azurite/package.json");
    let have = std::fs::read_to_string(&manifest).unwrap_or_default();
    if have.contains(&format!("\"version\": \"{VERSION}\"")) {
        return Ok(());
    }
    eprintln!(
        "xtask: peers: installing Azurite {VERSION} into {} (once)",
        dir.display()
    );
    net::quiet(
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(dir)
            .arg(format!("azurite@{VERSION}")),
    )
}

/// Starts Azurite (or finds it running) and creates the test container.
pub fn up(dir: &Path) -> Result<Vec<(&'static str, String)>, String> {
    install(dir)?;
    let pid_file = dir.join("azurite.pid");
    let port_file = dir.join("azurite.port");
    let port = net::running_or_start(&pid_file, &port_file, |port| start(dir, port))?;
    let created = Command::new("node")
        .args(["-e", CREATE_CONTAINER, &port.to_string(), CONTAINER])
        .output()
        .map_err(|e| format!("run node: {e}"))?;
    if !created.status.success() {
        return Err(String::from_utf8_lossy(&created.stderr).trim().to_owned());
    }
    Ok(vec![
        (
            "TASKCACHE_TEST_AZURITE_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("TASKCACHE_TEST_AZURITE_CONTAINER", CONTAINER.into()),
    ])
}

/// Starts the blob service on `port` of 127.0.0.1 with an empty data folder
/// (`dir/data`), its log (`azurite.log`), pid and port files in `dir`, and waits until
/// it answers. Telemetry is off: the tests talk to 127.0.0.1 only.
fn start(dir: &Path, port: u16) -> Result<u32, String> {
    let data = dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).map_err(|e| format!("create {}: {e}", data.display()))?;
    let pid_file = dir.join("azurite.pid");
    let pid = net::spawn(
        Command::new(dir.join("node_modules/.bin/azurite-blob"))
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(&data)
            .args(["--silent", "--skipApiVersionCheck", "--disableTelemetry"]),
        &dir.join("azurite.log"),
        &pid_file,
    )?;
    std::fs::write(dir.join("azurite.port"), port.to_string()).map_err(|e| e.to_string())?;
    // Any HTTP answer will do (an unsigned request gets 403).
    net::wait_until(pid, Duration::from_secs(60), || {
        net::http(port, "GET", "/").is_ok()
    })
    .map_err(|e| {
        net::stop(&pid_file);
        let log = std::fs::read_to_string(dir.join("azurite.log")).unwrap_or_default();
        format!("{e}; log:\n{log}")
    })?;
    Ok(pid)
}

/// Stops Azurite if it runs.
#[allow(clippy::unnecessary_wraps)] // the interface every server module has
pub fn down(dir: &Path) -> Result<(), String> {
    net::stop(&dir.join("azurite.pid"));
    let _ = std::fs::remove_file(dir.join("azurite.port"));
    Ok(())
}
