//! `cargo xtask`: every chore of this repository, so the README commands stay short.
//!
//! * `cargo xtask ci`: format check, clippy with `-D warnings`, the whole test suite
//!   (nextest, with the real servers of `peers up` running and required, then
//!   doctests), the CI-sized drills (crash and corrupt also against those servers),
//!   docs with `-D warnings`.
//! * `cargo xtask bench [local|cli|s3|remote|all]`: benchmarks; results go in `BENCHMARKS.md`.
//! * `cargo xtask drill [NAME|all] [--trials N]`: reliability drills (`RELIABILITY.md`).
//! * `cargo xtask peers up|down|env [NAME...]`: the real servers tests run against
//!   (see [`peers`]); `ci` starts them, runs the tests with their variables and
//!   `TASKCACHE_REQUIRE_PEERS=1` and the drills, and always stops them.

mod bench;
mod drill;
mod peers;

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench::run(&args[1..]),
        Some("drill") => drill::run(&args[1..]),
        Some("peers") => peers::run(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | bench [local|cli|s3|remote|all] | drill [NAME|all] [--trials N] | peers up|down|env [NAME...]>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command from the workspace root, failing with its description if it fails.
pub fn run(cmd: &mut Command) -> Result<(), String> {
    let root = workspace_root();
    cmd.current_dir(&root);
    eprintln!("xtask: $ {}", describe(cmd));
    let status = cmd
        .status()
        .map_err(|e| format!("could not start {}: {e}", describe(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed ({status})", describe(cmd)))
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The repository root (the parent of this crate's manifest directory).
pub fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where cargo builds: `$CARGO_TARGET_DIR`, else `target/` of the workspace.
pub fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), std::path::PathBuf::from)
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ci() -> Result<(), String> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The object store providers that are off by default, and the build without any.
    run(cargo().args([
        "clippy",
        "-p",
        "cache-s3",
        "--all-features",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args([
        "check",
        "-p",
        "cache-s3",
        "--no-default-features",
        "--quiet",
    ]))?;
    if !has_nextest() {
        eprintln!("xtask: installing cargo-nextest (once)");
        run(cargo().args(["install", "--locked", "--quiet", "cargo-nextest"]))?;
    }
    // The real servers for the test run and the drills (crash and corrupt also run
    // against S3 and REAPI), stopped whatever happens.
    let with_peers = peers::up(&[]).and_then(|vars| {
        let mut cmd = cargo();
        cmd.args(["nextest", "run", "--workspace", "--profile", "ci"])
            .env("TASKCACHE_REQUIRE_PEERS", "1")
            .envs(vars);
        run(&mut cmd)?;
        run(cargo().args(["test", "--workspace", "--doc", "--quiet"]))?;
        // The reliability drills, CI-sized (the full ones: `cargo xtask drill all`).
        eprintln!("xtask: $ cargo xtask drill all --ci");
        drill::ci()
    });
    let stopped = peers::down(&[]);
    with_peers?;
    stopped?;
    run(cargo()
        .args(["doc", "--workspace", "--no-deps", "--quiet"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    eprintln!("xtask: ci passed");
    Ok(())
}
