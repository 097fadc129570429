//! BuildGrid, a real REAPI v2 server (CAS, ByteStream, ActionCache, Capabilities), from
//! the Python package registry into a venv under `target/peers/buildgrid`.
//!
//! A Python >= 3.13 (on PATH, or under the pyenv root) gets BuildGrid 0.9.1; 3.12 gets
//! 0.8.16; otherwise `python3` (3.11) gets 0.4.4. ByteStream's `stream-blob` mode is
//! off: in 0.4.4 it fails reads whose `read_limit` is under 1 MiB. The benchmark starts
//! its own server with a 16 MiB receive limit ([`start`]): BuildGrid's own CLI packs
//! batches by data alone and overruns gRPC's 4 MiB.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn runs(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import sys"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The newest Python >= 3.13 found, else `python3`.
pub fn pick_python() -> PathBuf {
    for p in ["python3.14", "python3.13"] {
        if runs(Path::new(p)) {
            return PathBuf::from(p);
        }
    }
    let pyenv = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")));
    if let Some(root) = pyenv {
        let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(root.join("versions"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let v: Vec<u32> = name.split('.').map_while(|p| p.parse().ok()).collect();
                let python = e.path().join("bin/python3");
                (v.len() >= 2 && v[0] == 3 && v[1] >= 13 && runs(&python)).then_some((v, python))
            })
            .collect();
        found.sort();
        if let Some((_, p)) = found.pop() {
            return p;
        }
    }
    PathBuf::from("python3")
}

fn buildgrid_version(python: &Path) -> Result<&'static str, String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import sys; print(sys.version_info[0], sys.version_info[1])",
        ])
        .output()
        .map_err(|e| format!("run {}: {e}", python.display()))?;
    let v = String::from_utf8_lossy(&out.stdout);
    let mut it = v.split_whitespace().map(|x| x.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    Ok(match (major, minor) {
        (3, m) if m >= 13 => "0.9.1",
        (3, 12) => "0.8.16",
        _ => "0.4.4",
    })
}

/// Installs BuildGrid (once) into `dir/venv`; returns the venv.
pub fn install(dir: &Path) -> Result<PathBuf, String> {
    let venv = dir.join("venv");
    let vpython = venv.join("bin/python");
    let python = pick_python();
    let version = buildgrid_version(&python)?;
    let have = Command::new(&vpython)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('buildgrid'))",
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if have.as_deref() != Some(version) {
        eprintln!(
            "xtask: peers: installing BuildGrid {version} with {} (once)",
            python.display()
        );
        crate::run(
            Command::new(&python)
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
        )?;
        crate::run(
            Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "--disable-pip-version-check"])
                .arg(format!("buildgrid=={version}")),
        )?;
    }
    Ok(venv)
}

/// How [`start`] configures a server beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// gRPC's receive limit in bytes (default: gRPC's 4 MiB).
    pub max_recv: Option<u64>,
    /// Keep the CAS in this directory (BuildGrid's disk storage, one file per blob)
    /// instead of memory, so a drill can damage blobs behind the server's back.
    pub disk: Option<PathBuf>,
    /// Listen on this port instead of a free one.
    pub port: Option<u16>,
}

// `maximum-concurrent-rpcs`: BuildGrid refuses calls beyond its thread pool (10) with
// RESOURCE_EXHAUSTED by default; the suite's 32 concurrent writers, 8 transfers each,
// could exhaust the client's retries. Above the pool, calls now queue.
fn config(port: u16, opts: &Options) -> String {
    let grpc = opts.max_recv.map_or_else(String::new, |n| {
        format!("grpc-server-options:\n  grpc.max_receive_message_length: {n}\n")
    });
    let storage = opts.disk.as_ref().map_or_else(
        || "!lru-storage &cas\n    size: 2GB".to_owned(),
        |dir| format!("!disk-storage &cas\n    path: \"{}\"", dir.display()),
    );
    format!(
        "{grpc}server:
  - !channel
    address: \"127.0.0.1:{port}\"
    insecure-mode: true
authorization:
  method: none
monitoring:
  enabled: false
storages:
  - {storage}
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: true
instances:
  - name: \"\"
    services:
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
        stream-blob: false
      - !action-cache
        cache: *ac
thread-pool-size: 10
maximum-concurrent-rpcs: 1000
"
    )
}

/// Whether the server on `port` answers GetCapabilities (asked with BuildGrid's own
/// Python stubs).
fn answers(venv: &Path, port: u16) -> bool {
    let probe = "import sys, grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re, remote_execution_pb2_grpc as rg
ch = grpc.insecure_channel('127.0.0.1:' + sys.argv[1])
rg.CapabilitiesStub(ch).GetCapabilities(re.GetCapabilitiesRequest(instance_name=''), timeout=1)
";
    Command::new(venv.join("bin/python"))
        .args(["-c", probe, &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn vars(venv: &Path, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("TASKCACHE_TEST_REAPI", format!("grpc://127.0.0.1:{port}")),
        (
            "TASKCACHE_TEST_BGD",
            venv.join("bin/bgd").display().to_string(),
        ),
    ]
}

/// Installs (once) and starts BuildGrid on a free port.
pub fn up(dir: &Path) -> Result<Vec<(&'static str, String)>, String> {
    let venv = install(dir)?;
    start(dir, &venv, &Options::default())
}

/// Starts BuildGrid from `venv` with its files in `dir` (reusing one already running
/// there), configured by `opts`.
pub fn start(
    dir: &Path,
    venv: &Path,
    opts: &Options,
) -> Result<Vec<(&'static str, String)>, String> {
    let venv = venv.to_path_buf();
    let pid_file = dir.join("pid");
    let port_file = dir.join("port");
    if let (Ok(pid), Ok(port)) = (
        std::fs::read_to_string(&pid_file),
        std::fs::read_to_string(&port_file),
    ) {
        let port: u16 = port.trim().parse().unwrap_or(0);
        let alive = Command::new("kill")
            .args(["-0", pid.trim()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if alive && answers(&venv, port) {
            return Ok(vars(&venv, port));
        }
        super::net::stop(&pid_file);
    }
    let port = match opts.port {
        Some(p) => p,
        None => super::net::free_port()?,
    };
    if let Some(disk) = &opts.disk {
        std::fs::create_dir_all(disk).map_err(|e| format!("create {}: {e}", disk.display()))?;
    }
    let conf = dir.join("bgd.yml");
    std::fs::write(&conf, config(port, opts))
        .map_err(|e| format!("write {}: {e}", conf.display()))?;
    let log = std::fs::File::create(dir.join("bgd.log")).map_err(|e| format!("log: {e}"))?;
    let err = log.try_clone().map_err(|e| format!("log: {e}"))?;
    let mut child = Command::new(venv.join("bin/bgd"))
        .args(["server", "start"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("start bgd: {e}"))?;
    std::fs::write(&pid_file, child.id().to_string()).map_err(|e| format!("pid file: {e}"))?;
    std::fs::write(&port_file, port.to_string()).map_err(|e| format!("port file: {e}"))?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if answers(&venv, port) {
            return Ok(vars(&venv, port));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "bgd exited ({status}); see {}",
                dir.join("bgd.log").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = child.kill();
    Err(format!(
        "bgd did not answer on port {port} within 60 s; see {}",
        dir.join("bgd.log").display()
    ))
}

/// Stops the server started by [`up`].
#[allow(clippy::unnecessary_wraps)] // the shape every peer's `down` has
pub fn down(dir: &Path) -> Result<(), String> {
    // BuildGrid exits within 2-3 s of SIGTERM; net::stop waits 5 s, then kills.
    super::net::stop(&dir.join("pid"));
    let _ = std::fs::remove_file(dir.join("port"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Options, config};
    use std::path::PathBuf;

    #[test]
    fn the_cas_is_in_memory_unless_a_disk_directory_is_given() {
        let memory = config(4000, &Options::default());
        assert!(
            memory.contains("- !lru-storage &cas\n    size: 2GB\n"),
            "{memory}"
        );
        assert!(!memory.contains("grpc-server-options"), "{memory}");
        let disk = config(
            4001,
            &Options {
                disk: Some(PathBuf::from("/tmp/bgd cas")),
                max_recv: Some(1 << 24),
                port: None,
            },
        );
        assert!(
            disk.contains("- !disk-storage &cas\n    path: \"/tmp/bgd cas\"\n"),
            "{disk}"
        );
        assert!(!disk.contains("lru-storage"), "{disk}");
        assert!(
            disk.contains("grpc.max_receive_message_length: 16777216"),
            "{disk}"
        );
        assert!(disk.contains("address: \"127.0.0.1:4001\""), "{disk}");
    }
}
