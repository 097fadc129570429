//! `cargo xtask drill ...`: reliability drills. Each prints trials run and failures found.
//!
//! * `drill kill [--trials N]` (default 200): a child process stores entries into a
//!   local cache in a loop and is SIGKILLed at a random moment; then every entry on
//!   disk must read as a hit and restore whole and correct, and `verify` must find
//!   nothing corrupt (`cache-local/tests/support/drill.rs`).

// The harness is test code of cache-local, not part of its library.
#[path = "../../cache-local/tests/support/drill.rs"]
mod harness;

use harness as drill;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub fn run(args: &[String]) -> Result<(), String> {
    // A re-executed child of `drill kill`: store until killed.
    drill::child_if_requested();
    match args.first().map(String::as_str) {
        Some("kill") => kill(&args[1..]),
        Some(other) => Err(format!(
            "unknown drill {other:?}: use `drill kill [--trials N]`"
        )),
        None => Err("usage: cargo xtask drill kill [--trials N]".into()),
    }
}

fn kill(args: &[String]) -> Result<(), String> {
    let mut trials = 200u32;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--trials" => {
                trials = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--trials needs a number")?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let exe = std::env::current_exe().map_err(|e| format!("find this program: {e}"))?;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut rng = drill::Rng::from_env_or_time("drill kill");
    let started = Instant::now();
    let (mut failures, mut killed_running, mut entries) = (0u32, 0u32, 0u64);
    for n in 0..trials {
        // A new directory now and then, so checks stay quick and both fresh and
        // long-lived caches are killed into.
        let dir = tmp.path().join(format!("cache-{}", n / 25));
        let mut child = Command::new(&exe);
        child.args(["drill", "kill-child"]);
        let start = rng.range(0, 60);
        let delay = Duration::from_millis(rng.range(20, 700));
        match drill::trial(child, &dir, start, delay) {
            Ok(t) => {
                killed_running += u32::from(t.killed_running);
                entries += t.report.entries;
            }
            Err(e) => {
                failures += 1;
                eprintln!("drill kill: trial {n}: FAILURE: {e}");
                keep_evidence(&dir, n);
            }
        }
        if (n + 1) % 25 == 0 {
            eprintln!(
                "drill kill: {} trials, {failures} failures ({:.0?})",
                n + 1,
                started.elapsed()
            );
        }
    }
    println!(
        "drill kill: {trials} trials run, {failures} failures found \
         ({killed_running} kills landed while storing, {entries} entries checked in all)"
    );
    if failures > 0 {
        return Err(format!(
            "{failures} of {trials} kill trials found a bad entry"
        ));
    }
    if killed_running == 0 {
        return Err("no kill landed while the child was storing; the drill proved nothing".into());
    }
    Ok(())
}

/// Copies a failing cache directory to `target/drill-kill-failure-<n>` for inspection.
fn keep_evidence(dir: &Path, n: u32) {
    let dest = crate::workspace_root().join(format!("target/drill-kill-failure-{n}"));
    let status = Command::new("cp").arg("-a").arg(dir).arg(&dest).status();
    if status.is_ok_and(|s| s.success()) {
        eprintln!("drill kill: kept the cache directory in {}", dest.display());
    }
}
