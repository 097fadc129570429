//! `cargo xtask bench cli [--runs N]`: how long a whole `taskcache run` process takes
//! on a cache hit.
//!
//! The task has one small output. The cache is populated once, then each round runs,
//! interleaved so that machine noise hits all of them alike:
//!
//! * `true`: the reference, the cheapest process there is;
//! * `taskcache --version`: process start-up of our binary alone;
//! * `taskcache key`: start-up plus argument parsing and the task digest;
//! * `taskcache run` (hit): the above plus opening the cache, the lookup, restoring the
//!   output (deleted before each round, outside the timing) and replaying the logs.
//!
//! The binary is built in release mode first. Medians and 90th percentiles of wall time
//! are printed, each also as a multiple of `true`, with the hit's peak RSS when GNU
//! `time` is installed. The target is a median hit of at most 10 ms.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const TASK: &str = "echo ran >> ../counter; printf 'small output\\n' > out.txt; echo built";

pub fn run(args: &[String]) -> Result<(), String> {
    let mut runs = 300usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                runs = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("--runs needs a positive number")?;
            }
            other => {
                return Err(format!(
                    "bench cli: unknown argument {other:?} (use --runs N)"
                ));
            }
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    crate::run(Command::new(cargo).args(["build", "--release", "-q", "-p", "cache-cli"]))?;
    let target = crate::target_dir();
    let bin = target.join("release").join("taskcache");
    if !bin.is_file() {
        return Err(format!("{} was not built", bin.display()));
    }
    let scratch = Scratch::new()?;
    let result = measure(&bin, &scratch.0, runs);
    drop(scratch);
    result
}

/// A temporary directory removed on drop (std only, so xtask needs no dependency for it).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "taskcache-bench-cli-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(dir.join("ws"))
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hit_command(bin: &Path, dir: &Path) -> Command {
    let mut c = Command::new(bin);
    c.current_dir(dir.join("ws"))
        .env("TASKCACHE_CACHE", dir.join("cache"))
        .env_remove("TASKCACHE_REMOTE")
        .env_remove("TASKCACHE_POLICY")
        .env_remove("TASKCACHE_LOG")
        .args(["run", "-o", "out.txt", "--", "sh", "-c", TASK]);
    c
}

/// Runs `cmd` with its output discarded; returns the wall time in milliseconds.
fn timed(cmd: &mut Command) -> Result<f64, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if !status.success() {
        return Err(format!("{:?} failed: {status}", cmd.get_program()));
    }
    Ok(ms)
}

fn runs_of(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("counter")).map_or(0, |s| s.lines().count())
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short list"
    )]
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn measure(bin: &Path, dir: &Path, runs: usize) -> Result<(), String> {
    // Populate, then check that the next run is a hit (the task does not run again).
    timed(&mut hit_command(bin, dir))?;
    std::fs::remove_file(dir.join("ws/out.txt")).map_err(|e| e.to_string())?;
    timed(&mut hit_command(bin, dir))?;
    if runs_of(dir) != 1 || !dir.join("ws/out.txt").is_file() {
        return Err("the second run was not a cache hit; is the cache working?".into());
    }

    let key_args: Vec<String> = ["key", "-o", "out.txt", "--", "sh", "-c", TASK]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();

    let (mut t_true, mut t_version, mut t_key, mut t_hit) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        t_true.push(timed(&mut Command::new("true"))?);
        t_version.push(timed(Command::new(bin).arg("--version"))?);
        t_key.push(timed(
            Command::new(bin)
                .current_dir(dir.join("ws"))
                .args(&key_args),
        )?);
        let _ = std::fs::remove_file(dir.join("ws/out.txt"));
        t_hit.push(timed(&mut hit_command(bin, dir))?);
    }
    if runs_of(dir) != 1 {
        return Err("the task ran again during the benchmark: some runs were misses".into());
    }
    let rss = peak_rss_kib(bin, dir);

    let base = percentile(&mut t_true.clone(), 0.5);
    println!("taskcache CLI, whole process, {runs} interleaved rounds (wall ms):");
    println!("| what | median | p90 | median / true |\n|---|---|---|---|");
    for (name, v) in [
        ("`true` (reference)", &mut t_true),
        ("`taskcache --version`", &mut t_version),
        ("`taskcache key`", &mut t_key),
        ("`taskcache run`, hit, 1 small output", &mut t_hit),
    ] {
        let med = percentile(v, 0.5);
        let p90 = percentile(v, 0.9);
        println!("| {name} | {med:.2} | {p90:.2} | {:.1}x |", med / base);
    }
    match rss {
        Some(kib) => println!("peak RSS of a hit: {:.1} MiB", f64::from(kib) / 1024.0),
        None => println!("peak RSS of a hit: n/a (GNU time not installed at /usr/bin/time)"),
    }
    let hit = percentile(&mut t_hit, 0.5);
    println!(
        "target: median hit <= 10 ms: {}",
        if hit <= 10.0 { "met" } else { "NOT met" }
    );
    Ok(())
}

/// Peak RSS of one hit through GNU `time`, when it is installed.
fn peak_rss_kib(bin: &Path, dir: &Path) -> Option<u32> {
    let time = Path::new("/usr/bin/time");
    if !time.is_file() {
        return None;
    }
    let _ = std::fs::remove_file(dir.join("ws/out.txt"));
    let hit = hit_command(bin, dir);
    let out = Command::new(time)
        .args(["-f", "%M"])
        .arg(hit.get_program())
        .args(hit.get_args())
        .current_dir(dir.join("ws"))
        .env("TASKCACHE_CACHE", dir.join("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()?
        .trim()
        .parse()
        .ok()
}
