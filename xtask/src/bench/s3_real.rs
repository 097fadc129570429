//! The real steps of `cargo xtask bench s3` (`bench s3 real [--steps A,B]`): outputs
//! made by real tools, each measured three ways on the same server in the same round:
//!
//! * the plain step, run again from nothing (its downloads already local: npm's cache,
//!   the crate registry's sources, a directory of wheels),
//! * taskcache: a store into an empty prefix and the shared hit of a runner with an
//!   empty local tier (`--cache s3://...` alone, so the figures are the bucket's and
//!   nothing else's), and the same hit through a fresh local directory as `--cache`
//!   with the bucket as `--remote` (what a team configures; that hit also fills the
//!   local tier),
//! * the actions/cache method (`s3_tree::tar_round`).
//!
//! Steps (fixtures in `xtask/fixtures/bench-s3`): `npm-2k` and `npm-10k` (`npm ci` of
//! two pinned `package.json`s; the lockfile is made at bench time by `npm install
//! --package-lock-only` with `--before`, so the dependencies' versions are fixed too),
//! `cargo` (a debug build of a small crate with pinned dependencies; the output is its
//! `target/`), `venv` (`python3 -m venv` and `pip install` of requests and pytest,
//! pinned; cached with `--allow-absolute-symlinks`). A tool or download that is
//! missing skips its step with a line saying why.

use super::s3::{Clients, Samples, remove, timed};
use super::s3_tree::{Side, tar_round, taskcache_round, tree_digest, tree_files};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The step names `--steps` takes.
pub(super) const NAMES: &str = "npm-2k,npm-10k,cargo,venv";

/// Files above this size are single objects, not pack members (cache-s3's limit).
const PACK_LIMIT: u64 = 1 << 20;

/// npm resolves every dependency as of this date (`--before`), so the lockfile it
/// writes names the same versions on every run.
const NPM_BEFORE: &str = "2025-06-01";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    NpmSmall,
    NpmLarge,
    Cargo,
    Venv,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::NpmSmall, Kind::NpmLarge, Kind::Cargo, Kind::Venv];

    fn name(self) -> &'static str {
        match self {
            Kind::NpmSmall => "npm-2k",
            Kind::NpmLarge => "npm-10k",
            Kind::Cargo => "cargo",
            Kind::Venv => "venv",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::NpmSmall | Kind::NpmLarge => "`npm ci`",
            Kind::Cargo => "`cargo build`",
            Kind::Venv => "venv + pip install",
        }
    }

    fn output(self) -> &'static str {
        match self {
            Kind::NpmSmall | Kind::NpmLarge => "node_modules",
            Kind::Cargo => "target",
            Kind::Venv => "venv",
        }
    }

    fn extra(self) -> &'static [&'static str] {
        match self {
            Kind::Venv => &["--allow-absolute-symlinks"],
            _ => &[],
        }
    }
}

/// `--steps a,b`: the named steps.
pub(super) fn select(list: &str) -> Result<Vec<Kind>, String> {
    list.split(',')
        .map(|n| {
            Kind::ALL
                .into_iter()
                .find(|k| k.name() == n.trim())
                .ok_or_else(|| format!("no real step {n:?} (use {NAMES})"))
        })
        .collect()
}

/// A step ready to run (its downloads done, its output made once), or why not.
pub(super) enum Prepared {
    Ready {
        kind: Kind,
        ws: PathBuf,
        plain: Command,
    },
    Skipped {
        kind: Kind,
        why: String,
    },
}

/// Sets up each step in its own workspace under `scratch/real`, with the tools' caches
/// in `tools` (kept between runs). A step that cannot be set up is skipped, and said so.
pub(super) fn prepare(scratch: &Path, tools: &Path, kinds: Option<&[Kind]>) -> Vec<Prepared> {
    kinds
        .unwrap_or(&Kind::ALL)
        .iter()
        .map(|&kind| {
            let ws = scratch.join("real").join(kind.name());
            eprintln!("xtask: bench s3 real: setting up {}", kind.name());
            match setup(kind, &ws, tools) {
                Ok(plain) => Prepared::Ready { kind, ws, plain },
                Err(why) => {
                    eprintln!("xtask: bench s3 real: skipping {}: {why}", kind.name());
                    Prepared::Skipped { kind, why }
                }
            }
        })
        .collect()
}

/// Writes the step's fixture into `ws`, downloads what it needs, runs it once (its
/// output is then in place) and returns the plain step's command.
fn setup(kind: Kind, ws: &Path, tools: &Path) -> Result<Command, String> {
    let write = |rel: &str, text: &str| -> Result<(), String> {
        let path = ws.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))
    };
    let plain = match kind {
        Kind::NpmSmall | Kind::NpmLarge => {
            tool("npm", &["--version"])?;
            write(
                "package.json",
                if kind == Kind::NpmSmall {
                    include_str!("../../fixtures/bench-s3/npm-2k/package.json")
                } else {
                    include_str!("../../fixtures/bench-s3/npm-10k/package.json")
                },
            )?;
            let npm = |args: &[&str]| {
                let mut c = Command::new("npm");
                c.current_dir(ws)
                    .args(args)
                    .args(["--no-audit", "--no-fund", "--loglevel=error"])
                    .env("npm_config_cache", tools.join("npm-cache"))
                    .env("npm_config_update_notifier", "false");
                c
            };
            let before = format!("--before={NPM_BEFORE}");
            quiet(&mut npm(&["install", "--package-lock-only", &before]))
                .map_err(|e| format!("npm could not write the lockfile (network?): {e}"))?;
            npm(&["ci", "--prefer-offline"])
        }
        Kind::Cargo => {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            tool(&cargo, &["--version"])?;
            write(
                "Cargo.toml",
                include_str!("../../fixtures/bench-s3/crate/Cargo.toml"),
            )?;
            write(
                "src/main.rs",
                include_str!("../../fixtures/bench-s3/crate/src/main.rs"),
            )?;
            let cargo_in = |args: &[&str]| {
                let mut c = Command::new(&cargo);
                c.current_dir(ws)
                    .args(args)
                    .env("CARGO_TARGET_DIR", ws.join("target"))
                    .env_remove("CARGO_BUILD_TARGET_DIR");
                c
            };
            quiet(&mut cargo_in(&["fetch", "--quiet"]))
                .map_err(|e| format!("cargo could not fetch the crates (network?): {e}"))?;
            cargo_in(&["build", "--offline", "--quiet"])
        }
        Kind::Venv => {
            tool("python3", &["--version"])?;
            write(
                "requirements.txt",
                include_str!("../../fixtures/bench-s3/venv/requirements.txt"),
            )?;
            let wheels = tools.join("wheels");
            quiet(
                Command::new("python3")
                    .current_dir(ws)
                    .args(["-m", "pip", "download", "-q", "--disable-pip-version-check"])
                    .arg("-d")
                    .arg(&wheels)
                    .args(["-r", "requirements.txt"]),
            )
            .map_err(|e| format!("pip could not download the packages (network?): {e}"))?;
            let mut c = Command::new("sh");
            c.current_dir(ws).args([
                "-c",
                "python3 -m venv venv && venv/bin/pip install -q --disable-pip-version-check \
                 --no-index --find-links \"$0\" -r requirements.txt",
            ]);
            c.arg(&wheels);
            c
        }
    };
    run_plain(kind, ws, &plain)?;
    Ok(plain)
}

/// Whether `program args` runs: else "PROGRAM not found".
fn tool(program: &str, args: &[&str]) -> Result<(), String> {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()
        .filter(std::process::ExitStatus::success)
        .map(drop)
        .ok_or_else(|| format!("{program} not found"))
}

/// Runs `cmd` with its output captured; an error carries its last lines.
fn quiet(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = text.lines().rev().take(5).collect();
    Err(format!(
        "{:?} failed ({}): {}",
        cmd.get_program(),
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
    ))
}

/// The plain step from nothing: its output removed first (not timed), then the step.
fn run_plain(kind: Kind, ws: &Path, plain: &Command) -> Result<(f64, f64), String> {
    remove(&ws.join(kind.output()))?;
    timed(plain).map_err(|e| format!("the plain step of {} failed: {e}", kind.name()))
}

/// A step's samples over the rounds.
#[derive(Default)]
struct Record {
    plain: Vec<(f64, f64)>,
    ours: Samples,
    tiered: Vec<(f64, f64)>,
    tiered_failed: Vec<String>,
    theirs: Samples,
    /// Of the last round: objects and bytes each side left, taskcache's objects by
    /// kind, and the output's files, bytes and files over the pack limit.
    stored_ours: (u64, u64),
    stored_theirs: (u64, u64),
    kinds: String,
    files: (u64, u64, u64),
}

/// Runs `reps` rounds over the ready steps and prints their tables.
pub(super) fn measure(c: &Clients<'_>, steps: &[Prepared], reps: usize) -> Result<(), String> {
    let mut records: Vec<Record> = steps.iter().map(|_| Record::default()).collect();
    let mut load = Vec::new();
    for r in 0..reps {
        load.push(load_average());
        for (step, rec) in steps.iter().zip(&mut records) {
            let Prepared::Ready { kind, ws, plain } = step else {
                continue;
            };
            let kind = *kind;
            eprintln!(
                "xtask: bench s3 real: {} round {}/{reps}",
                kind.name(),
                r + 1
            );
            rec.plain.push(run_plain(kind, ws, plain)?);
            let output = kind.output();
            let want = tree_digest(&ws.join(output))?;
            rec.files = tree_files(&ws.join(output), PACK_LIMIT);
            let tag = format!("{}-{r}", kind.name());
            let mut ours = || -> Result<(), String> {
                let prefix = format!("tc-{tag}");
                let side = taskcache_round(c, ws, output, &prefix, kind.extra(), want, true)?;
                rec.kinds.clone_from(&side.kinds);
                push(&mut rec.ours, &side);
                match side.tiered {
                    Some(Ok(sample)) => rec.tiered.push(sample),
                    Some(Err(why)) => rec.tiered_failed.push(why),
                    None => {}
                }
                rec.stored_ours = side.stored;
                Ok(())
            };
            let ours_first = r % 2 == 0;
            if ours_first {
                ours()?;
            }
            let side = tar_round(c, ws, output, &format!("tar-{tag}"), want)?;
            push(&mut rec.theirs, &side);
            rec.stored_theirs = side.stored;
            if !ours_first {
                ours()?;
            }
        }
    }
    report(c, steps, &records, reps, &load);
    Ok(())
}

fn push(samples: &mut Samples, side: &Side) {
    samples.up.push(side.up);
    samples.down.push(side.down);
}

/// Median seconds and largest peak RSS of samples.
fn summary(samples: &[(f64, f64)]) -> (f64, f64) {
    (
        super::median(samples.iter().map(|s| s.0).collect()),
        samples.iter().map(|s| s.1).fold(0.0, f64::max),
    )
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

#[allow(clippy::cast_precision_loss)] // byte counts, printed
fn report(c: &Clients<'_>, steps: &[Prepared], records: &[Record], reps: usize, load: &[f64]) {
    println!(
        "\n### bench s3 real: {reps} rounds against s3s-fs at {}, load average (1 min) at each round's start: {}\n",
        c.server.endpoint,
        list(load)
    );
    println!(
        "Medians. Store and shared hit: `taskcache run --cache s3://...` (no local tier); \
         \"hit, tiered\": a fresh local directory as `--cache`, the bucket as `--remote`. \
         Theirs: `tar | zstd -T0` + one upload / one download + `zstd -d | tar -x` (AWS CLI). \
         Targets: store and hit ≤ 1.2× theirs, both far under the plain step.\n"
    );
    println!(
        "| step | output | plain step | store | tar+zstd, upload | store / theirs | shared hit | download, unpack | hit / theirs | hit, tiered | hit / plain step |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let ready = || {
        steps.iter().zip(records).filter_map(|(s, r)| match s {
            Prepared::Ready { kind, .. } => Some((*kind, r)),
            Prepared::Skipped { .. } => None,
        })
    };
    for (kind, r) in ready() {
        let (plain, _) = summary(&r.plain);
        let (up, _) = summary(&r.ours.up);
        let (down, _) = summary(&r.ours.down);
        let (t_up, _) = summary(&r.theirs.up);
        let (t_down, _) = summary(&r.theirs.down);
        let tiered = if r.tiered.is_empty() {
            "failed".to_owned()
        } else {
            format!("{:.2} s", summary(&r.tiered).0)
        };
        let tiered = match r.tiered_failed.len() {
            0 => tiered,
            n => format!("{tiered} ({n} of {} failed)", n + r.tiered.len()),
        };
        println!(
            "| {} {} | {} files, {:.1} MB | {plain:.2} s | {up:.2} s | {t_up:.2} s | {:.2}× ({}) | {down:.2} s | {t_down:.2} s | {:.2}× ({}) | {tiered} | {:.2}× |",
            kind.name(),
            kind.what(),
            r.files.0,
            r.files.1 as f64 / 1e6,
            up / t_up,
            verdict(up <= 1.2 * t_up),
            down / t_down,
            verdict(down <= 1.2 * t_down),
            down / plain,
        );
    }
    println!(
        "\nIn the bucket (last round) and peak RSS (largest of all rounds). Targets: objects ≤ 3 + one per file over 1 MiB; bytes ≤ 1.1× the tar.zst; taskcache's peak RSS ≤ 128 MiB.\n"
    );
    println!(
        "| step | taskcache objects | allowed | taskcache bytes | tar.zst bytes | bytes / tar.zst | taskcache peak RSS store / hit / tiered hit | theirs peak RSS up / down |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (kind, r) in ready() {
        let allowed = 3 + r.files.2;
        let ratio = r.stored_ours.1 as f64 / r.stored_theirs.1.max(1) as f64;
        let rss = [
            summary(&r.ours.up).1,
            summary(&r.ours.down).1,
            summary(&r.tiered).1,
        ];
        let worst = rss.iter().copied().fold(0.0, f64::max);
        println!(
            "| {} | {} ({}; {}) | {allowed} | {} | {} | {ratio:.2}× ({}) | {:.0} / {:.0} / {:.0} MiB ({}) | {:.0} / {:.0} MiB |",
            kind.name(),
            r.stored_ours.0,
            r.kinds,
            verdict(r.stored_ours.0 <= allowed),
            r.stored_ours.1,
            r.stored_theirs.1,
            verdict(ratio <= 1.1),
            rss[0],
            rss[1],
            rss[2],
            verdict(worst <= 128.0),
            summary(&r.theirs.up).1,
            summary(&r.theirs.down).1,
        );
    }
    for (kind, r) in ready() {
        for why in &r.tiered_failed {
            println!("\n{} tiered hit: {why}", kind.name());
        }
    }
    for s in steps {
        if let Prepared::Skipped { kind, why } = s {
            println!("\nSkipped {}: {why}", kind.name());
        }
    }
}

/// The 1-minute load average now (0 if unreadable).
pub(super) fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// `a, b, c` with one decimal.
pub(super) fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line describing the machine: date, cores, memory, CPU, kernel, load.
pub(super) fn machine_line() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("?", |l| l.trim_start_matches([' ', '\t', ':']));
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches(" kB").parse::<f64>().ok())
        .map_or(0.0, |kib| kib / f64::from(1 << 20));
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "Machine: {date}; nproc {}; {mem_gib:.0} GiB RAM; CPU \"{cpu}\"; Linux {}; load average {}",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        read("/proc/sys/kernel/osrelease").trim(),
        read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}
