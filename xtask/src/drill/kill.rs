//! `drill kill`: a child process stores entries into a local cache through the library
//! in a loop and is SIGKILLed at a random moment; then every entry on disk must read
//! as a hit and restore whole and correct, and `verify` must find nothing corrupt
//! (`cache-local/tests/support/drill.rs`, shared with cache-local's `kill` test).

use super::harness as drill;
use super::{Outcome, Rng};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub fn run(trials: u64, rng: &mut Rng) -> Result<Outcome, String> {
    let exe = std::env::current_exe().map_err(|e| format!("find this program: {e}"))?;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut out = Outcome::default();
    let (mut killed_running, mut entries) = (0u32, 0u64);
    for n in 0..trials {
        // A new directory now and then, so checks stay quick and both fresh and
        // long-lived caches are killed into.
        let dir = tmp.path().join(format!("cache-{}", n / 25));
        let mut child = Command::new(&exe);
        child.args(["drill", "kill-child"]);
        let start = rng.range(0, 60);
        let delay = Duration::from_millis(rng.range(20, 700));
        out.trials += 1;
        match drill::trial(child, &dir, start, delay) {
            Ok(t) => {
                killed_running += u32::from(t.killed_running);
                entries += t.report.entries;
            }
            Err(e) => {
                out.failures += 1;
                eprintln!("drill kill: trial {n}: FAILURE: {e}");
                keep_evidence(&dir, n);
            }
        }
        if (n + 1) % 50 == 0 {
            eprintln!(
                "drill kill: {} trials, {} failures ({:.0?})",
                n + 1,
                out.failures,
                started.elapsed()
            );
        }
    }
    if killed_running == 0 && trials > 0 {
        return Err(
            "kill: no kill landed while the child was storing; the drill proved nothing".into(),
        );
    }
    out.note = format!("{killed_running} kills landed while storing, {entries} entries checked");
    Ok(out)
}

/// Copies a failing cache directory to `target/drill-failures/kill-<n>` for inspection.
fn keep_evidence(dir: &Path, n: u64) {
    let dest = crate::workspace_root().join(format!("target/drill-failures/kill-{n}"));
    let _ = std::fs::create_dir_all(dest.parent().unwrap_or(&dest));
    let status = Command::new("cp").arg("-a").arg(dir).arg(&dest).status();
    if status.is_ok_and(|s| s.success()) {
        eprintln!("drill kill: kept the cache directory in {}", dest.display());
    }
}
