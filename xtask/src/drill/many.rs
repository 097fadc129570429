//! `drill many`: 8 `taskcache` processes at a time on one cache directory, each of 8
//! workers doing 500 operations: runs of 40 keys (hits and misses, small and 20 MiB
//! entries), read-only check runs, `gc --max-size` (random limit, 2 s grace) and
//! `verify`. No operation may fail, no run may restore a wrong or torn byte, `verify`
//! must never find anything to remove, and at the end `taskcache stats` must count
//! exactly the hits and misses the runs had (a run whose step executed was a miss),
//! and as many entries, blobs and bytes as the directory holds.

use super::taskcache::{Backend, Checked, Tc, keep_evidence};
use super::workload::{Class, MARK_ENV};
use super::{Outcome, Rng};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

const KEYS: u64 = 40;

fn class_of(i: u64) -> Class {
    if i % 10 == 3 {
        Class::Medium
    } else {
        Class::Small
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ops: u64,
    failures: u64,
    hits: u64,
    misses: u64,
    gcs: u64,
    verifies: u64,
}

pub fn run(
    tc: &Tc,
    backend: &mut dyn Backend,
    ci: bool,
    ops: Option<u64>,
    rng: &mut Rng,
) -> Result<Outcome, String> {
    let started = Instant::now();
    let (workers, ops) = if ci {
        (4, ops.unwrap_or(100))
    } else {
        (8, ops.unwrap_or(500))
    };
    backend.fresh()?;
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    // The cache exists before the workers start (housekeeping never creates one): a
    // first run of key 0, a miss.
    let ws = tempfile::tempdir_in(scratch.path()).map_err(|e| e.to_string())?;
    tc.run_step(backend, ws.path(), 0, class_of(0))?;
    let total = Mutex::new(Tally {
        misses: 1,
        ..Tally::default()
    });
    let seeds: Vec<u64> = (0..workers).map(|_| rng.next_u64()).collect();
    let shared: &dyn Backend = backend;
    // One thread per worker, each waiting on its own `taskcache` process.
    std::thread::scope(|s| {
        for (w, seed) in seeds.iter().enumerate() {
            let (total, scratch) = (&total, scratch.path());
            s.spawn(move || {
                let t = worker_loop(tc, shared, w, ops, *seed, scratch);
                let mut all = total
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                all.ops += t.ops;
                all.failures += t.failures;
                all.hits += t.hits;
                all.misses += t.misses;
                all.gcs += t.gcs;
                all.verifies += t.verifies;
            });
        }
    });
    let t = total
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = Outcome {
        trials: t.ops,
        failures: t.failures,
        ..Outcome::default()
    };
    // Quiet now: the counts must add up, and the cache must be whole.
    if let Err(e) = settle(tc, backend, t) {
        out.failures += 1;
        eprintln!("drill many: FAILURE after the runs: {e}");
        keep_evidence(backend, "many-end");
    }
    out.note = format!(
        "{workers} processes x {ops} ops: {} hits, {} misses, {} gc, {} verify",
        t.hits, t.misses, t.gcs, t.verifies
    );
    out.time = started.elapsed();
    Ok(out)
}

fn worker_loop(
    tc: &Tc,
    backend: &dyn Backend,
    w: usize,
    ops: u64,
    seed: u64,
    scratch: &Path,
) -> Tally {
    let mut rng = Rng::from_seed(seed);
    let mut t = Tally::default();
    for n in 0..ops {
        t.ops += 1;
        if let Err(e) = op(tc, backend, &mut rng, scratch, &mut t) {
            t.failures += 1;
            eprintln!("drill many: worker {w} op {n}: FAILURE: {e}");
        }
    }
    t
}

fn op(
    tc: &Tc,
    backend: &dyn Backend,
    rng: &mut Rng,
    scratch: &Path,
    t: &mut Tally,
) -> Result<(), String> {
    let roll = rng.range(0, 100);
    let i = rng.range(0, KEYS);
    match roll {
        0..4 => {
            let max = rng.range(1 << 20, 60 << 20).to_string();
            let out = tc.admin(backend, &["gc", "--max-size", &max, "--grace", "2s"])?;
            t.gcs += 1;
            if !out.status.success() {
                return Err(format!(
                    "gc exited {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        4..8 => {
            let v = tc.verify(backend)?;
            t.verifies += 1;
            if v.removed_any() {
                return Err(format!("verify found something to remove: {v:?}"));
            }
        }
        8..16 => match tc.check_entry(backend, i, class_of(i))? {
            Checked::Hit => t.hits += 1,
            Checked::Miss => t.misses += 1,
        },
        _ => {
            let ws = tempfile::tempdir_in(scratch).map_err(|e| e.to_string())?;
            let mark = ws.path().join("ran");
            let mut cmd = tc.run_cmd(backend, ws.path(), i, class_of(i));
            cmd.env(MARK_ENV, &mark);
            let out = cmd.output().map_err(|e| format!("start taskcache: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "run of entry {i} exited {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            // A hit replays the step's stderr, and says nothing of its own.
            if !mark.exists() && out.stderr != format!("entry {i} produced\n").as_bytes() {
                return Err(format!(
                    "a hit of entry {i} warned: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            if out.stdout != super::workload::stdout(i, class_of(i)) {
                return Err(format!("run of entry {i}: wrong stdout"));
            }
            super::workload::check(ws.path(), i, class_of(i))?;
            if mark.exists() {
                t.misses += 1;
            } else {
                t.hits += 1;
            }
        }
    }
    Ok(())
}

fn settle(tc: &Tc, backend: &dyn Backend, t: Tally) -> Result<(), String> {
    let out = tc.admin(backend, &["stats", "--json"])?;
    if !out.status.success() {
        return Err(format!("stats exited {}", out.status));
    }
    let stats: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("stats --json: {e}"))?;
    let get = |k: &str| {
        stats
            .get(k)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(u64::MAX)
    };
    if (get("hits"), get("misses")) != (t.hits, t.misses) {
        return Err(format!(
            "stats counts {} hits and {} misses, the runs had {} and {}",
            get("hits"),
            get("misses"),
            t.hits,
            t.misses
        ));
    }
    let objects = backend.objects()?;
    let (mut entries, mut blobs, mut bytes) = (0u64, 0u64, 0u64);
    for o in &objects {
        let area = o.split('/').next().unwrap_or("");
        if area == "entries" || area == "blobs" {
            bytes += backend.read_object(o)?.len() as u64;
            if area == "entries" {
                entries += 1;
            } else {
                blobs += 1;
            }
        }
    }
    if (get("entries"), get("blobs"), get("bytes")) != (entries, blobs, bytes) {
        return Err(format!(
            "stats says {} entries, {} blobs, {} bytes; the directory holds {entries}, {blobs}, {bytes}",
            get("entries"),
            get("blobs"),
            get("bytes")
        ));
    }
    let v = tc.verify(backend)?;
    if v.removed_any() {
        return Err(format!("the final verify found something to remove: {v:?}"));
    }
    for i in 0..KEYS {
        tc.check_entry(backend, i, class_of(i))?;
    }
    Ok(())
}
