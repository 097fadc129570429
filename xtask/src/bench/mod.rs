//! `cargo xtask bench [local|cli|s3|remote|all]` (`all` is local and cli; s3 and remote
//! need their servers, which each bench installs and starts itself).
//!
//! Every figure is printed as a ratio against a reference measured in the same run,
//! with peak RSS, and the medians go in `BENCHMARKS.md` with the machine they ran on.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

mod cli;
mod local;
mod local_child;
mod remote;
mod s3;
mod s3_real;
mod s3_tree;

pub fn run(args: &[String]) -> Result<(), String> {
    match args.first().map_or("all", String::as_str) {
        "local" => local::run(&args[1..]),
        "cli" => cli::run(&args[1..]),
        "s3" => s3::run(&args[1..]),
        "remote" => remote::run(&args[1..]),
        "all" => {
            local::run(&[])?;
            cli::run(&[])
        }
        other => Err(format!(
            "unknown benchmark {other:?}: use local, cli, s3, remote or all"
        )),
    }
}

/// What a bench child reported: `key=value` pairs.
type Report = BTreeMap<String, f64>;

/// The value of `--reps` (the next argument), a positive number.
fn reps(next: Option<&String>) -> Result<usize, String> {
    next.and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| "--reps needs a positive number".to_owned())
}

/// Runs `exe bench <bench> --child <args>` and reads its `RESULT key=value ...` line.
fn child_report(exe: &Path, bench: &str, args: &[&str]) -> Result<Report, String> {
    let out = Command::new(exe)
        .args(["bench", bench, "--child"])
        .args(args)
        .output()
        .map_err(|e| format!("start the bench child: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "bench child {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| format!("bench child {args:?} printed no result: {text}"))?;
    Ok(line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect())
}

/// The large file of the local benches (1 GiB).
pub(super) const BIG: usize = 1 << 30;

/// The median of `v` (the mean of the middle two for an even count; NaN if empty).
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

/// Reads every file under `path` so it starts in the page cache.
pub(super) fn warm_up(path: &Path) {
    if path.is_dir() {
        if let Ok(rd) = std::fs::read_dir(path) {
            for e in rd.flatten() {
                warm_up(&e.path());
            }
        }
    } else if let Ok(mut f) = std::fs::File::open(path) {
        let _ = std::io::copy(&mut f, &mut std::io::sink());
    }
}
