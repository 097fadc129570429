//! `cargo xtask peers up|down|env [NAME...]`: real servers the tests run against,
//! installed from the package registries into `target/peers/NAME` and started on
//! 127.0.0.1 by the project itself.
//!
//! Each server module has `up(dir)` (install idempotently, start on a free port, wait
//! until it answers, write a pid file, return the variables tests read) and
//! `down(dir)`. `up` writes every variable to `target/peers/env` (KEY=VALUE lines).

pub mod buildgrid;

use std::path::{Path, PathBuf};

type Up = fn(&Path) -> Result<Vec<(&'static str, String)>, String>;
type Down = fn(&Path) -> Result<(), String>;

/// The servers `peers up` starts when none is named.
const DEFAULT: &[(&str, Up, Down)] = &[("buildgrid", buildgrid::up, buildgrid::down)];

/// `target/peers`.
pub fn root() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| crate::workspace_root().join("target"), PathBuf::from);
    target.join("peers")
}

fn select(names: &[String]) -> Result<Vec<(&'static str, Up, Down)>, String> {
    if names.is_empty() {
        return Ok(DEFAULT.to_vec());
    }
    names
        .iter()
        .map(|n| {
            DEFAULT
                .iter()
                .find(|(name, _, _)| name == n)
                .copied()
                .ok_or_else(|| format!("no peer named {n:?}"))
        })
        .collect()
}

/// `cargo xtask peers ...`.
pub fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("up") => up(&args[1..]).map(drop),
        Some("down") => down(&args[1..]),
        Some("env") => {
            print!(
                "{}",
                std::fs::read_to_string(root().join("env")).unwrap_or_default()
            );
            Ok(())
        }
        _ => Err("usage: cargo xtask peers up|down|env [NAME...]".into()),
    }
}

/// Starts the named servers (default: all) and returns the variables the tests need;
/// also writes them to `target/peers/env`.
pub fn up(names: &[String]) -> Result<Vec<(&'static str, String)>, String> {
    let mut vars = Vec::new();
    for (name, up, _) in select(names)? {
        let dir = root().join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        eprintln!("xtask: peers: starting {name}");
        vars.extend(up(&dir).map_err(|e| format!("{name}: {e}"))?);
    }
    let mut env = String::new();
    for (k, v) in &vars {
        env.push_str(k);
        env.push('=');
        env.push_str(v);
        env.push('\n');
    }
    let file = root().join("env");
    std::fs::write(&file, env).map_err(|e| format!("write {}: {e}", file.display()))?;
    for (k, v) in &vars {
        eprintln!("xtask: peers: {k}={v}");
    }
    Ok(vars)
}

/// Stops the named servers (default: all).
pub fn down(names: &[String]) -> Result<(), String> {
    let mut first = None;
    for (name, _, down) in select(names)? {
        if let Err(e) = down(&root().join(name)) {
            first.get_or_insert(format!("{name}: {e}"));
        }
    }
    let _ = std::fs::remove_file(root().join("env"));
    first.map_or(Ok(()), Err)
}

/// A free TCP port on 127.0.0.1 (the OS picks it; it is released for the server).
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// Stops the process in `pid_file` (SIGTERM, then SIGKILL after `grace`), if any.
pub fn stop_pid_file(pid_file: &Path, grace: std::time::Duration) -> Result<(), String> {
    let Ok(pid) = std::fs::read_to_string(pid_file) else {
        return Ok(());
    };
    let pid = pid.trim().to_owned();
    let alive = |p: &str| {
        std::process::Command::new("kill")
            .args(["-0", p])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let _ = std::process::Command::new("kill").arg(&pid).status();
    let start = std::time::Instant::now();
    while alive(&pid) && start.elapsed() < grace {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if alive(&pid) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status();
    }
    std::fs::remove_file(pid_file).map_err(|e| format!("remove {}: {e}", pid_file.display()))
}
