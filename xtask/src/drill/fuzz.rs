//! `drill fuzz`: the cargo-fuzz targets under `fuzz/` (`decode_record`, `place`,
//! `key_inputs`, whose checks are `cache_testkit::fuzz`, and `decode_tree`, whose check
//! is `cache_remote::fuzz`: the testkit may not depend on a backend), each for N
//! executions (default 1,000,000) on the nightly toolchain, side by side, with
//! libFuzzer's memory limits (`-rss_limit_mb`, `-malloc_limit_mb`): no panic, bounded
//! allocation, no write outside the workspace. cargo-fuzz is installed from the crate registry into the
//! user's cargo if missing. New inputs go to `target/fuzz-corpus/`, the repository's
//! `fuzz/corpus/` is only read. Without a nightly toolchain it says so and skips.
//!
//! `--ci` replays `fuzz/corpus/` through the same checks on stable, in this process
//! (the test suite does the same in `cache-testkit/tests/fuzz_corpus.rs` and
//! `cache-remote/tests/fuzz_corpus.rs`).

use super::Outcome;
use std::path::Path;
use std::process::{Command, Stdio};

/// Every target: the testkit's, then cache-remote's.
fn targets() -> impl Iterator<Item = &'static str> {
    cache_testkit::fuzz::TARGETS
        .into_iter()
        .chain(cache_remote::fuzz::TARGETS)
}

/// Runs target `t`'s check on `data` (panics on a failed property).
fn check(t: &str, data: &[u8]) {
    if cache_remote::fuzz::TARGETS.contains(&t) {
        cache_remote::fuzz::run(t, data);
    } else {
        cache_testkit::fuzz::run(t, data);
    }
}

/// Bounds for one target process: resident memory and any single allocation.
const RSS_LIMIT_MB: u32 = 2048;
const MALLOC_LIMIT_MB: u32 = 256;

pub fn run(executions: u64, ci: bool) -> Result<Outcome, String> {
    if ci {
        return replay();
    }
    let quiet = |c: &mut Command| {
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !quiet(rustup_cargo().args(["+nightly", "--version"])) {
        return Ok(Outcome {
            skipped: Some(
                "no nightly toolchain (cargo-fuzz needs one: `rustup toolchain install nightly`)"
                    .into(),
            ),
            ..Outcome::default()
        });
    }
    if !quiet(rustup_cargo().args(["fuzz", "--version"])) {
        eprintln!("drill fuzz: installing cargo-fuzz (once)");
        crate::run(crate::cargo().args(["install", "--locked", "--quiet", "cargo-fuzz"]))?;
    }
    let root = crate::workspace_root();
    let target_dir = crate::target_dir();
    // Built once, then the targets run side by side (one process each).
    crate::run(
        rustup_cargo()
            .args([
                "+nightly",
                "fuzz",
                "build",
                "--sanitizer",
                "none",
                "--target-dir",
            ])
            .arg(target_dir.join("fuzz")),
    )?;
    let mut running = Vec::new();
    for t in targets() {
        let work = target_dir.join("fuzz-corpus").join(t);
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        let mut cmd = fuzz_run(&root, &target_dir, t, &work, executions);
        // To a file, not a pipe: children writing to pipes read one after the
        // other would block on a full pipe while the first is waited for.
        let log_path = target_dir.join("fuzz-logs").join(format!("{t}.log"));
        std::fs::create_dir_all(log_path.parent().unwrap_or(&target_dir))
            .map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        cmd.stderr(log);
        eprintln!("drill fuzz: {t}: {executions} executions");
        let child = cmd.spawn().map_err(|e| format!("start cargo fuzz: {e}"))?;
        running.push((t, log_path, child));
    }
    let mut out = Outcome::default();
    let mut notes = Vec::new();
    for (t, log_path, mut child) in running {
        let status = child
            .wait()
            .map_err(|e| format!("wait for cargo fuzz: {e}"))?;
        let stderr = std::fs::read_to_string(&log_path).unwrap_or_default();
        let done = stat(&stderr, "stat::number_of_executed_units:").unwrap_or(0);
        out.trials += done;
        if status.success() && done >= executions {
            let per_sec = stat(&stderr, "stat::average_exec_per_sec:").unwrap_or(0);
            notes.push(format!("{t} {done} ({per_sec}/s)"));
        } else {
            out.failures += 1;
            // The panic and its message, then libFuzzer's word on the input.
            let panic: Vec<&str> = stderr
                .lines()
                .skip_while(|l| !l.contains("panicked at") && !l.contains("==ERROR"))
                .take(3)
                .collect();
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            eprintln!(
                "drill fuzz: {t}: FAILURE ({}, {done} executions):\n{}\n...\n{}",
                status,
                panic.join("\n"),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            notes.push(format!("{t} FAILED"));
        }
    }
    out.note = format!(
        "executions: {}; rss <= {RSS_LIMIT_MB} MB, malloc <= {MALLOC_LIMIT_MB} MB",
        notes.join(", ")
    );
    Ok(out)
}

/// `cargo +nightly fuzz run` of target `t` for `executions`, within the memory bounds.
fn fuzz_run(root: &Path, target_dir: &Path, t: &str, work: &Path, executions: u64) -> Command {
    let mut cmd = rustup_cargo();
    cmd.current_dir(root)
        .args([
            "+nightly",
            "fuzz",
            "run",
            "--sanitizer",
            "none",
            "--target-dir",
        ])
        .arg(target_dir.join("fuzz"))
        .arg(t)
        .arg(work)
        .arg(root.join("fuzz/corpus").join(t))
        .arg("--")
        .arg(format!("-runs={executions}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
        .args(["-max_len=4096", "-timeout=20", "-print_final_stats=1"])
        .stdout(Stdio::null());
    // The targets build a sandbox directory per execution: in memory where there is
    // a shared-memory filesystem, so a million of them do not wait on the disk.
    if std::fs::metadata("/dev/shm").is_ok_and(|m| m.is_dir()) {
        cmd.env("TMPDIR", "/dev/shm");
    }
    cmd
}

/// `cargo` through rustup (so `+nightly` works), without the stable toolchain's
/// variables that `cargo run` set for this program.
fn rustup_cargo() -> Command {
    let mut c = Command::new("cargo");
    for v in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
    ] {
        c.env_remove(v);
    }
    c
}

fn stat(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

/// The corpus through the same checks, on this (stable) toolchain.
fn replay() -> Result<Outcome, String> {
    let root = crate::workspace_root().join("fuzz/corpus");
    let mut out = Outcome::default();
    for t in targets() {
        let dir = root.join(t);
        let rd = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for f in rd {
            let path = f.map_err(|e| e.to_string())?.path();
            let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            out.trials += 1;
            if std::panic::catch_unwind(|| check(t, &data)).is_err() {
                out.failures += 1;
                eprintln!("drill fuzz: {}: FAILURE", path.display());
            }
        }
    }
    out.note = "the corpus replayed on stable (libFuzzer runs in the full drill)".into();
    Ok(out)
}
