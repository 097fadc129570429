//! `cargo xtask drill [NAME|all] [--trials N] [--backend local|s3|remote|all] [--ci]`:
//! reliability drills. Each prints trials, failures and time; `all` ends with a table.
//! `RELIABILITY.md` says what each proves and holds the numbers of a full run.
//!
//! * `kill`: the library stores in a loop and is SIGKILLed (`cache-local`'s harness).
//! * `crash`: the real `taskcache run` is SIGKILLed mid-store (small, 20 MiB, 100 MiB).
//! * `corrupt`: every file of a cache flipped, truncated, zeroed or deleted in turn.
//! * `fuzz`: cargo-fuzz targets under `fuzz/` on the nightly toolchain.
//! * `many`: 8 processes × 500 mixed runs, `gc` and `verify` on one cache.
//! * `disk`: stores onto a small filesystem that fills up.
//! * `remote`: the S3 and REAPI servers behind a local tier killed and restarted,
//!   frozen, or down, mid-store and mid-restore; and the breaker (servers of its own,
//!   whatever `--backend` says).
//! * `gc`: runner processes store and hit entries sharing packs and blobs in one bucket
//!   (a moto of its own) while `taskcache gc --unused-for` runs again and again.
//!
//! Crash and corrupt run against a [`taskcache::Backend`]: `local` (a directory), `s3`
//! (a bucket on moto) and `remote` (a BuildGrid of the drill's own, CAS on disk), the
//! servers started through `peers` if they do not run. `--backend` chooses (default:
//! `local` for one drill, every backend for `all`); `kill`, `fuzz`, `many` and `disk`
//! are local only.
//!
//! `--ci` runs the CI-sized version (what `cargo xtask ci` runs). Failures keep their
//! cache directory under `target/drill-failures/`; `TASKCACHE_DRILL_SEED` replays the
//! random choices of an earlier run.

mod backend_reapi;
mod backend_s3;
mod backends;
mod corrupt;
mod crash;
mod disk;
mod fuzz;
mod gc;
mod kill;
mod many;
mod remote;
mod taskcache;
mod workload;

// The kill harness is test code of cache-local, not part of its library.
#[path = "../../../cache-local/tests/support/drill.rs"]
mod harness;

pub use harness::Rng;
use std::time::{Duration, Instant};

/// What a drill did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub trials: u64,
    pub failures: u64,
    pub time: Duration,
    /// One line of what the trials covered.
    pub note: String,
    /// Why it did not run, if it did not.
    pub skipped: Option<String>,
}

const DRILLS: [&str; 8] = [
    "kill", "crash", "corrupt", "fuzz", "many", "disk", "remote", "gc",
];

struct Options {
    trials: Option<u64>,
    /// `--backend`: where crash and corrupt run (`None`: local for one drill, every
    /// backend for `all`).
    backend: Option<String>,
    ci: bool,
}

impl Options {
    /// The backends crash and corrupt run on.
    fn backends(&self, all: bool) -> Result<Vec<&'static str>, String> {
        match self.backend.as_deref() {
            None if all => Ok(backends::ALL.to_vec()),
            None => Ok(vec!["local"]),
            Some("all") => Ok(backends::ALL.to_vec()),
            Some(name) => backends::ALL
                .iter()
                .find(|&&b| b == name)
                .map(|&b| vec![b])
                .ok_or_else(|| format!("unknown backend {name:?} (local, s3, remote or all)")),
        }
    }
}

pub fn run(args: &[String]) -> Result<(), String> {
    // A re-executed child of `drill kill`: store until killed.
    harness::child_if_requested();
    let usage = "usage: cargo xtask drill [kill|crash|corrupt|fuzz|many|disk|remote|gc|all] \
                 [--trials N] [--backend local|s3|remote|all] [--ci]";
    let Some(name) = args.first().map(String::as_str) else {
        return Err(usage.into());
    };
    match name {
        // The step the drills cache, run by `taskcache run`.
        "produce" => return workload::produce(&args[1..]),
        // Writes the seeds of the fuzz corpus (`fuzz/corpus/<target>/seed-*`).
        "seeds" => return write_seeds(),
        _ => {}
    }
    let mut opts = Options {
        trials: None,
        backend: None,
        ci: false,
    };
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--trials" => {
                opts.trials = Some(
                    it.next()
                        .and_then(|n| n.parse().ok())
                        .filter(|&n| n > 0)
                        .ok_or("--trials needs a positive number")?,
                );
            }
            "--backend" => opts.backend = Some(it.next().ok_or("--backend needs a name")?.clone()),
            "--ci" => opts.ci = true,
            other => return Err(format!("unknown argument {other:?}; {usage}")),
        }
    }
    let names: Vec<&str> = match name {
        "all" => DRILLS.to_vec(),
        n if DRILLS.contains(&n) => vec![n],
        other => return Err(format!("unknown drill {other:?}; {usage}")),
    };
    let backends = opts.backends(name == "all")?;
    let rows = run_drills(&names, &backends, &opts)?;
    if rows.len() > 1 {
        print_table(&rows, &opts);
    }
    let failed: u64 = rows.iter().map(|(_, o)| o.failures).sum();
    if failed > 0 {
        return Err(format!("{failed} drill trials failed"));
    }
    Ok(())
}

/// The CI-sized drills, as `cargo xtask ci` runs them: crash and corrupt on every
/// backend (moto and BuildGrid are started if they do not run).
pub fn ci() -> Result<(), String> {
    let opts = Options {
        trials: None,
        backend: None,
        ci: true,
    };
    let rows = run_drills(&DRILLS, &backends::ALL, &opts)?;
    print_table(&rows, &opts);
    let failed: u64 = rows.iter().map(|(_, o)| o.failures).sum();
    if failed > 0 {
        return Err(format!("{failed} drill trials failed"));
    }
    Ok(())
}

fn run_drills(
    names: &[&str],
    backends: &[&'static str],
    opts: &Options,
) -> Result<Vec<(String, Outcome)>, String> {
    let root = tempfile::Builder::new()
        .prefix("taskcache-drill-")
        .tempdir()
        .map_err(|e| format!("a scratch directory: {e}"))?;
    let mut rng = Rng::from_env_or_time("drill");
    // Built before any drill's clock starts (a release build takes minutes here).
    let tc = if names
        .iter()
        .any(|n| matches!(*n, "crash" | "corrupt" | "many" | "disk" | "remote" | "gc"))
    {
        Some(taskcache::Tc::build()?)
    } else {
        None
    };
    // Each backend is opened once (its server started once) and dropped at the end
    // (which stops a server the drill started).
    let mut opened: Vec<Box<dyn taskcache::Backend>> = Vec::new();
    let mut rows = Vec::new();
    for &name in names {
        // Crash and corrupt run on every chosen backend; many and disk on a local
        // directory only (they drive `gc`, `verify`, `stats` and a full filesystem).
        let on: Vec<&'static str> = match name {
            "crash" | "corrupt" => backends.to_vec(),
            "many" | "disk" if !backends.contains(&"local") => {
                let outcome = Outcome {
                    skipped: Some("local only (--backend local or all)".into()),
                    ..Outcome::default()
                };
                println!("drill {name}: skipped: local only");
                rows.push((name.to_owned(), outcome));
                continue;
            }
            _ => vec!["local"],
        };
        for backend_name in on {
            let started = Instant::now();
            let mut setup = Duration::ZERO;
            let mut outcome = match name {
                "kill" => kill::run(
                    opts.trials.unwrap_or(if opts.ci { 5 } else { 200 }),
                    &mut rng,
                )?,
                "fuzz" => fuzz::run(opts.trials.unwrap_or(1_000_000), opts.ci)?,
                "remote" => {
                    let tc = tc.as_ref().ok_or("no taskcache")?;
                    remote::run(tc, trials(opts, 3, 300), opts.ci, &mut rng)?
                }
                "gc" => {
                    let tc = tc.as_ref().ok_or("no taskcache")?;
                    gc::run(tc, trials(opts, 1, 4), opts.ci, &mut rng)?
                }
                "disk" | "crash" | "corrupt" | "many" => {
                    let tc = tc.as_ref().ok_or("no taskcache")?;
                    let at = if let Some(at) = opened.iter().position(|b| b.name() == backend_name)
                    {
                        at
                    } else {
                        // Starting a server is not the drill's time either.
                        let t = Instant::now();
                        opened.push(backends::open(backend_name, root.path())?);
                        setup = t.elapsed();
                        opened.len() - 1
                    };
                    let b = &mut *opened[at];
                    let local = backend_name == "local";
                    match name {
                        "crash" => crash::run(
                            tc,
                            b,
                            trials(opts, if local { 100 } else { 20 }, 1000),
                            &mut rng,
                        )?,
                        "corrupt" => corrupt::run(tc, b, trials(opts, 1, 3), opts.ci, &mut rng)?,
                        "many" => many::run(tc, b, opts.ci, opts.trials, &mut rng)?,
                        _ => disk::run(tc, b, trials(opts, 4, 20), &mut rng)?,
                    }
                }
                _ => return Err(format!("unknown drill {name:?}")),
            };
            outcome.time = started.elapsed().saturating_sub(setup);
            let row = match name {
                "crash" | "corrupt" => format!("{name} ({backend_name})"),
                "many" | "disk" => format!("{name} (local only)"),
                _ => name.to_owned(),
            };
            match &outcome.skipped {
                Some(why) => println!("drill {row}: skipped: {why}"),
                None => println!(
                    "drill {row}: {} trials, {} failures, {:.1}s ({})",
                    outcome.trials,
                    outcome.failures,
                    outcome.time.as_secs_f64(),
                    outcome.note
                ),
            }
            rows.push((row, outcome));
        }
    }
    Ok(rows)
}

fn write_seeds() -> Result<(), String> {
    let root = crate::workspace_root().join("fuzz/corpus");
    let mut seeds = cache_testkit::fuzz::seeds();
    seeds.extend(cache_remote::fuzz::seeds());
    for (target, name, bytes) in &seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes).map_err(|e| e.to_string())?;
    }
    println!("wrote {} seeds under {}", seeds.len(), root.display());
    Ok(())
}

fn trials(opts: &Options, ci: u32, full: u32) -> u32 {
    opts.trials.map_or(if opts.ci { ci } else { full }, |n| {
        u32::try_from(n).unwrap_or(u32::MAX)
    })
}

fn print_table(rows: &[(String, Outcome)], opts: &Options) {
    println!();
    println!(
        "| drill | trials | failures | time | {} |",
        if opts.ci { "CI-sized" } else { "what ran" }
    );
    println!("|---|---:|---:|---:|---|");
    for (name, o) in rows {
        match &o.skipped {
            Some(why) => println!(
                "| {name} | – | – | {:.1}s | skipped: {why} |",
                o.time.as_secs_f64()
            ),
            None => println!(
                "| {name} | {} | {} | {:.1}s | {} |",
                o.trials,
                o.failures,
                o.time.as_secs_f64(),
                o.note
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Options;

    fn opts(backend: Option<&str>) -> Options {
        Options {
            trials: None,
            backend: backend.map(str::to_owned),
            ci: false,
        }
    }

    #[test]
    fn crash_and_corrupt_run_on_every_backend_for_all_and_on_local_alone_by_default() {
        assert_eq!(
            opts(None).backends(true).unwrap(),
            ["local", "s3", "remote"]
        );
        assert_eq!(opts(None).backends(false).unwrap(), ["local"]);
        assert_eq!(
            opts(Some("all")).backends(false).unwrap(),
            ["local", "s3", "remote"]
        );
        assert_eq!(opts(Some("s3")).backends(true).unwrap(), ["s3"]);
        assert_eq!(opts(Some("remote")).backends(false).unwrap(), ["remote"]);
        let e = opts(Some("gcs")).backends(true).unwrap_err();
        assert!(e.contains("unknown backend") && e.contains("remote"), "{e}");
    }
}
