//! `drill crash`: `taskcache run` storing entries (small, 20 MiB and 100 MiB outputs)
//! is SIGKILLed, with the step it runs, at a random moment of its run; afterwards the
//! key must be a miss or restore byte-identical outputs and stdout, and
//! `taskcache verify` must find nothing corrupt. Every 20 trials the cache is checked
//! whole (every key stored into it) and a new one is started.
//!
//! A backend without `verify` (S3, REAPI) has every key of its cache checked after
//! each kill instead, and a new cache every 5 trials (so that costs 3 checks a trial,
//! not 10).

use super::taskcache::{Backend, Checked, Tc, keep_evidence};
use super::workload::Class;
use super::{Outcome, Rng};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

/// Trials per cache, with and without `verify`.
const PER_CACHE: u32 = 20;
const PER_CACHE_UNVERIFIED: u32 = 5;

pub fn run(
    tc: &Tc,
    backend: &mut dyn Backend,
    trials: u32,
    rng: &mut Rng,
) -> Result<Outcome, String> {
    let started = Instant::now();
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let took = measure(tc, backend, scratch.path())?;
    let per_cache = if backend.verifies() {
        PER_CACHE
    } else {
        PER_CACHE_UNVERIFIED
    };
    let mut out = Outcome::default();
    let (mut in_cache, mut killed_running, mut hits, mut misses) = (Vec::new(), 0u32, 0u64, 0u64);
    backend.fresh()?;
    for n in 0..trials {
        let roll = rng.range(0, 100);
        let class = match roll {
            0..5 => Class::Large,
            5..15 => Class::Medium,
            _ => Class::Small,
        };
        // Now and then a store over an entry that exists (writeonly: no lookup).
        let overwrite = !in_cache.is_empty() && rng.range(0, 10) == 0;
        let (i, class) = if overwrite {
            in_cache[usize::try_from(rng.range(0, in_cache.len() as u64)).unwrap_or(0)]
        } else {
            (u64::from(n), class)
        };
        let limit = took[class as usize].as_micros() * 6 / 5;
        let delay = Duration::from_micros(rng.range(0, u64::try_from(limit).unwrap_or(u64::MAX)));
        let result = trial(tc, backend, scratch.path(), i, class, overwrite, delay);
        out.trials += 1;
        match result {
            Ok((running, checked)) => {
                killed_running += u32::from(running);
                match checked {
                    Checked::Hit => hits += 1,
                    Checked::Miss => misses += 1,
                }
                if !overwrite {
                    in_cache.push((i, class));
                }
                if !backend.verifies() {
                    // No verify: every other key of the cache must still be a miss or
                    // a byte-exact hit after this kill.
                    let others: Vec<_> =
                        in_cache.iter().filter(|(k, _)| *k != i).copied().collect();
                    out.failures += check_all(tc, backend, &others, &format!("{n}-others"));
                }
            }
            Err(e) => {
                out.failures += 1;
                eprintln!(
                    "drill crash: trial {n} (entry {i}, {}): FAILURE: {e}",
                    class.as_str()
                );
                keep_evidence(backend, &format!("crash-{n}"));
            }
        }
        if (n + 1) % per_cache == 0 || n + 1 == trials {
            // The whole cache: every key ever stored into it.
            out.failures += check_all(tc, backend, &in_cache, &format!("{n}-whole"));
            in_cache.clear();
            backend.fresh()?;
        }
        if (n + 1) % 100 == 0 {
            eprintln!(
                "drill crash: {} trials, {} failures ({:.0?})",
                n + 1,
                out.failures,
                started.elapsed()
            );
        }
    }
    if killed_running == 0 && trials > 0 {
        return Err(
            "crash: no kill landed while taskcache was running; the drill proved nothing".into(),
        );
    }
    out.note = format!(
        "{killed_running} kills landed mid-run; afterwards {hits} hits, {misses} misses{}",
        if backend.verifies() {
            ""
        } else {
            "; every key checked after each kill (no verify)"
        }
    );
    out.time = started.elapsed();
    Ok(out)
}

/// How long a whole run of each class takes here, stored without a kill (which also
/// proves the happy path): kills are spread over that time.
fn measure(
    tc: &Tc,
    backend: &mut dyn Backend,
    scratch: &std::path::Path,
) -> Result<Vec<Duration>, String> {
    backend.fresh()?;
    let mut took = Vec::new();
    for (n, class) in [Class::Small, Class::Medium, Class::Large]
        .into_iter()
        .enumerate()
    {
        let ws = tempfile::tempdir_in(scratch).map_err(|e| e.to_string())?;
        let t = Instant::now();
        tc.run_step(backend, ws.path(), 1_000_000 + n as u64, class)?;
        took.push(t.elapsed());
        if tc.check_entry(backend, 1_000_000 + n as u64, class)? != Checked::Hit {
            return Err(format!(
                "crash: a {} entry stored without a kill does not hit",
                class.as_str()
            ));
        }
    }
    eprintln!(
        "drill crash: a whole run takes {:.0?} (small), {:.0?} (20 MiB), {:.0?} (100 MiB)",
        took[0], took[1], took[2]
    );
    Ok(took)
}

/// Checks each of `keys` (a miss or a byte-exact hit); returns how many failed.
fn check_all(tc: &Tc, backend: &dyn Backend, keys: &[(u64, Class)], what: &str) -> u64 {
    let mut failures = 0;
    for &(i, class) in keys {
        if let Err(e) = tc.check_entry(backend, i, class) {
            failures += 1;
            eprintln!("drill crash: after trial {what}: FAILURE: {e}");
            keep_evidence(backend, &format!("crash-{what}"));
        }
    }
    failures
}

/// One store killed after `delay`; then the key is checked and `verify` run.
fn trial(
    tc: &Tc,
    backend: &dyn Backend,
    scratch: &std::path::Path,
    i: u64,
    class: Class,
    overwrite: bool,
    delay: Duration,
) -> Result<(bool, Checked), String> {
    let ws = tempfile::tempdir_in(scratch).map_err(|e| e.to_string())?;
    let opts: &[&str] = if overwrite {
        &["--policy", "writeonly"]
    } else {
        &[]
    };
    let mut cmd = tc.run_cmd_with(backend, ws.path(), i, class, opts);
    // Its own process group: the kill takes the step with it, as a runner's would.
    cmd.process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().map_err(|e| format!("start taskcache: {e}"))?;
    std::thread::sleep(delay);
    let running = child.try_wait().map_err(|e| e.to_string())?.is_none();
    let pid = rustix::process::Pid::from_child(&child);
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    let status = child.wait().map_err(|e| e.to_string())?;
    if !running && !status.success() {
        return Err(format!("taskcache failed on its own: {status}"));
    }
    let checked = tc.check_entry(backend, i, class)?;
    if !running && checked != Checked::Hit {
        return Err("a run that finished before the kill left no entry".into());
    }
    if backend.verifies() {
        let v = tc.verify(backend)?;
        if v.removed_any() {
            return Err(format!("verify found corruption after the kill: {v:?}"));
        }
    }
    Ok((running, checked))
}
