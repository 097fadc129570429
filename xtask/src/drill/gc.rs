//! `drill gc`: runner processes store and hit entries in one bucket while
//! `taskcache gc --unused-for U --grace G` runs on it again and again.
//!
//! A private moto (started by the drill, as `drill remote` does) holds the bucket.
//! Each trial is a new prefix. Runner threads each run `taskcache run --cache s3://…`
//! (no local tier: every hit comes from the bucket) of the entry in use that was
//! picked longest ago; entries share packs and blobs by group, some are hot (in use
//! until the runners stop), the others go cold, and groups whose entries were all
//! dropped come back about when gc evicts them, storing the same pack and blob again
//! ([`plan`]). Every process gets `TASKCACHE_TOUCH_INTERVAL` (markers rewritten every
//! second) and a long `--cache-timeout`. Checked:
//!
//! * every run exits 0 with its exact outputs and stdout;
//! * an entry in use is never lost: once a run stored or hit it cleanly, a later run
//!   of it misses only if its last clean use started more than `U - touch - 1 s`
//!   before (gc may then evict it: markers lag by up to `touch`, and the server's
//!   times have whole seconds), or if since its last store one clean use ended that
//!   long after the one before it started (gc may have evicted it while that use was
//!   under way: the use is served, the entry is gone after); such a miss is counted as
//!   lapsed, any other one is a loss; right after the runners stop every hot entry in
//!   use hits;
//! * cold entries go: each last used longer ago than `U` plus two gc cycles is gone;
//! * a quiet gc leaves a closed bucket: every pack and blob is named by an entry,
//!   every named one is there, every marker is an entry's, every entry hits;
//! * a gc with `--unused-for 0s --grace 0s` leaves the prefix empty.

mod bucket;
mod plan;

use super::backend_s3::S3;
use super::remote::server::{Kind, Server};
use super::taskcache::{Backend, Checked, Tc, keep_evidence};
use super::workload::{self, Class, MARK_ENV, SHARED_GROUPS};
use super::{Outcome, Rng};
use bucket::{Bucket, Listing};
use plan::{Task, Timing};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The times and sizes of a run of the drill.
struct Size {
    runners: usize,
    timing: Timing,
}

fn size(ci: bool) -> Size {
    Size {
        runners: if ci { 3 } else { 4 },
        timing: Timing {
            unused_for: Duration::from_secs(8),
            grace: Duration::from_secs(4),
            touch: Duration::from_secs(1),
            activity: Duration::from_secs(if ci { 20 } else { 75 }),
        },
    }
}

/// What happened to one entry.
#[derive(Debug, Default, Clone)]
struct State {
    /// When a runner last picked it.
    picked: Option<Instant>,
    /// When the first run that stored or hit it cleanly ended.
    established: Option<Instant>,
    /// When the last clean store or hit of it started (its use is at least that late).
    last_use: Option<Instant>,
    /// Whether, since its last clean store, a clean use ended `safe_for` or more after
    /// the one before started: the server may then have seen it unused for longer
    /// than `unused_for` while that use was under way, and gc may have evicted it (the
    /// use served, the entry gone after). A miss then is not a loss.
    gap: bool,
    /// When its last run ended.
    last_end: Option<Instant>,
    /// Its last runs (seconds into the trial: start, end, hit or miss, clean), for a
    /// failure's report.
    history: std::collections::VecDeque<(f64, f64, bool, bool)>,
}

/// Counts of a trial (and of the whole drill).
#[derive(Debug, Default, Clone)]
struct Tally {
    runs: u64,
    hits: u64,
    misses: u64,
    /// Misses before the entry was first stored (several runners at its start).
    first: u64,
    /// Misses of an entry not used for longer than gc may leave it.
    lapsed: u64,
    /// Misses of an entry in use: losses.
    lost: u64,
    /// Runs whose stderr said more than the step's own line (a warning).
    warned: u64,
    gcs: u64,
    removed: [u64; 4],
    longest_gc: Duration,
    longest_store: Duration,
    cold_due: u64,
    cold_gone: u64,
    hot_checked: u64,
    closed_entries: u64,
    closed_objects: u64,
    /// Objects a gc of everything left.
    left: u64,
    failures: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.runs += o.runs;
        self.hits += o.hits;
        self.misses += o.misses;
        self.first += o.first;
        self.lapsed += o.lapsed;
        self.lost += o.lost;
        self.warned += o.warned;
        self.gcs += o.gcs;
        for (a, b) in self.removed.iter_mut().zip(o.removed) {
            *a += b;
        }
        self.longest_gc = self.longest_gc.max(o.longest_gc);
        self.longest_store = self.longest_store.max(o.longest_store);
        self.cold_due += o.cold_due;
        self.cold_gone += o.cold_gone;
        self.hot_checked += o.hot_checked;
        self.closed_entries += o.closed_entries;
        self.closed_objects += o.closed_objects;
        self.left += o.left;
        self.failures += o.failures;
    }
}

/// One trial in progress: the plan, what each entry went through, the counts.
struct Trial<'a> {
    tc: &'a Tc,
    s3: &'a S3,
    timing: Timing,
    tasks: Vec<Task>,
    keys: Vec<String>,
    t0: Instant,
    state: Mutex<Vec<State>>,
    tally: Mutex<Tally>,
    /// The gc loop stops when set.
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn fail(t: &Trial, what: &str) {
    eprintln!("drill gc: FAILURE: {what}");
    lock(&t.tally).failures += 1;
}

fn verbose() -> bool {
    std::env::var_os("TASKCACHE_DRILL_VERBOSE").is_some()
}

/// What runs and gc trace with `TASKCACHE_DRILL_VERBOSE`: warnings, and cache-s3's
/// claims and sweeps of packs and blobs.
const TRACE: &str = "warn,cache_s3::gc=debug";

impl Trial<'_> {
    /// The longest a clean use keeps an entry safe from gc: `unused_for` less the
    /// marker interval (a hit within it writes no marker) and a second (the server's
    /// times are whole seconds).
    fn safe_for(&self) -> Duration {
        self.timing
            .unused_for
            .saturating_sub(self.timing.touch + Duration::from_secs(1))
    }

    /// The entry in use now that was picked longest ago (never picked first), if any.
    fn pick(&self, rng: &mut Rng) -> Option<usize> {
        let at = self.t0.elapsed();
        let mut state = lock(&self.state);
        let mut best: Option<(Option<Instant>, u64, usize)> = None;
        for (n, task) in self.tasks.iter().enumerate() {
            if !task.in_use(at) {
                continue;
            }
            let candidate = (state[n].picked, rng.next_u64(), n);
            if best
                .as_ref()
                .is_none_or(|b| (candidate.0, candidate.1) < (b.0, b.1))
            {
                best = Some(candidate);
            }
        }
        let n = best?.2;
        state[n].picked = Some(Instant::now());
        Some(n)
    }

    fn runner(&self, scratch: &Path, seed: u64) {
        let mut rng = Rng::from_seed(seed);
        while self.t0.elapsed() < self.timing.activity {
            let Some(n) = self.pick(&mut rng) else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            if let Err(e) = self.run_one(n, scratch) {
                fail(self, &e);
            }
        }
    }

    /// One `taskcache run` of entry `n`, judged.
    fn run_one(&self, n: usize, scratch: &Path) -> Result<(), String> {
        let id = self.tasks[n].id;
        let ws = tempfile::tempdir_in(scratch).map_err(|e| e.to_string())?;
        let mark = ws.path().join("ran");
        let before = lock(&self.state)[n].clone();
        let start = Instant::now();
        let mut cmd = self.tc.run_cmd(self.s3, ws.path(), id, Class::Shared);
        cmd.env(MARK_ENV, &mark);
        if verbose() {
            cmd.env("TASKCACHE_LOG", TRACE);
        }
        let out = cmd.output().map_err(|e| format!("start taskcache: {e}"))?;
        let end = Instant::now();
        let stderr = self.traced(
            &format!(
                "entry {id} ({:.1}s)",
                start.duration_since(self.t0).as_secs_f64()
            ),
            &String::from_utf8_lossy(&out.stderr),
        );
        if !out.status.success() {
            return Err(format!(
                "run of entry {id} exited {}: {}",
                out.status,
                stderr.trim()
            ));
        }
        if out.stdout != workload::stdout(id, Class::Shared) {
            return Err(format!("run of entry {id}: wrong stdout"));
        }
        workload::check(ws.path(), id, Class::Shared)?;
        let missed = mark.exists();
        let clean = stderr == format!("entry {id} produced\n");
        let at = start.duration_since(self.t0).as_secs_f64();
        {
            let mut t = lock(&self.tally);
            t.runs += 1;
            t.warned += u64::from(!clean);
            if missed {
                t.misses += 1;
                t.longest_store = t.longest_store.max(end.saturating_duration_since(start));
            } else {
                t.hits += 1;
            }
        }
        if !clean && verbose() {
            eprintln!("drill gc: entry {id} at {at:.1}s warned: {}", stderr.trim());
        }
        let mut loss = None;
        if missed {
            let mut t = lock(&self.tally);
            match (before.established, before.last_use) {
                (Some(_), Some(used))
                    if !before.gap && start.saturating_duration_since(used) < self.safe_for() =>
                {
                    t.lost += 1;
                    loss = Some(format!(
                        "entry {id} (group {}) was lost: a run at {at:.1}s missed, {:.1}s after \
                         a clean use, in use without a gap since its store (gc keeps an entry \
                         used within {:.1}s); its last runs (start, end, hit, clean): {:?}; \
                         stderr: {}",
                        self.tasks[n].group(),
                        start.saturating_duration_since(used).as_secs_f64(),
                        self.safe_for().as_secs_f64(),
                        before.history,
                        stderr.trim()
                    ));
                }
                (Some(_), _) => t.lapsed += 1,
                (None, _) => t.first += 1,
            }
        }
        {
            let mut state = lock(&self.state);
            let s = &mut state[n];
            if clean {
                s.established.get_or_insert(end);
                if missed {
                    s.gap = false;
                } else if s
                    .last_use
                    .is_some_and(|u| end.saturating_duration_since(u) >= self.safe_for())
                {
                    s.gap = true;
                }
                s.last_use = Some(s.last_use.map_or(start, |u| u.max(start)));
            }
            s.last_end = Some(s.last_end.map_or(end, |e| e.max(end)));
            let since = |i: Instant| i.saturating_duration_since(self.t0).as_secs_f64();
            s.history
                .push_back((since(start), since(end), !missed, clean));
            if s.history.len() > 6 {
                s.history.pop_front();
            }
        }
        match loss {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Prints the claims and sweeps a process traced (with `TASKCACHE_DRILL_VERBOSE`),
    /// and returns the rest of its stderr.
    fn traced(&self, who: &str, stderr: &str) -> String {
        let mut rest = String::new();
        for line in stderr.lines() {
            if let Some(traced) = line.strip_prefix("taskcache: debug: ") {
                eprintln!(
                    "drill gc: {:.2}s {who}: {traced}",
                    self.t0.elapsed().as_secs_f64()
                );
            } else {
                rest.push_str(line);
                rest.push('\n');
            }
        }
        rest
    }

    /// `taskcache gc` with `args`; the numbers it printed (entries, packs, blobs and
    /// markers removed).
    fn gc(&self, args: &[&str]) -> Result<[u64; 4], String> {
        let mut cmd = Command::new(&self.tc.bin);
        cmd.arg("gc")
            .args(args)
            .args(self.s3.admin_args())
            .envs(self.s3.envs())
            .env_remove("TASKCACHE_LOG")
            .stdin(Stdio::null());
        if verbose() {
            cmd.env("TASKCACHE_LOG", TRACE);
        }
        let start = self.t0.elapsed().as_secs_f64();
        let out = cmd
            .output()
            .map_err(|e| format!("start taskcache gc: {e}"))?;
        self.traced(
            &format!("gc ({start:.1}s)"),
            &String::from_utf8_lossy(&out.stderr),
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!(
                "gc {} exited {}: {}{}",
                args.join(" "),
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        parse_gc(&stdout).ok_or_else(|| format!("gc printed {stdout:?}"))
    }

    /// `gc` again and again until told to stop.
    fn gc_loop(&self, seed: u64) {
        let mut rng = Rng::from_seed(seed);
        let (u, g) = (secs(self.timing.unused_for), secs(self.timing.grace));
        while !self.stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            match self.gc(&["--unused-for", &u, "--grace", &g]) {
                Ok(removed) => {
                    let mut tally = lock(&self.tally);
                    tally.gcs += 1;
                    for (a, b) in tally.removed.iter_mut().zip(removed) {
                        *a += b;
                    }
                    tally.longest_gc = tally.longest_gc.max(t.elapsed());
                    if verbose() && removed.iter().any(|&r| r > 0) {
                        eprintln!(
                            "drill gc: at {:.1}s gc removed {removed:?} (entries, packs, blobs, markers)",
                            self.t0.elapsed().as_secs_f64()
                        );
                    }
                }
                Err(e) => fail(self, &e),
            }
            std::thread::sleep(Duration::from_millis(rng.range(0, 400)));
        }
    }

    fn listing(&self) -> Result<Listing, String> {
        Ok(Listing::of(&self.s3.objects()?))
    }

    /// Right after the runners stop: every hot entry hits; every cold one last used
    /// long enough ago is gone.
    fn after_runs(&self, gc_stopped: Instant) -> Result<(), String> {
        let state = lock(&self.state).clone();
        let mut problems = Vec::new();
        for (n, task) in self.tasks.iter().enumerate() {
            let s = &state[n];
            if !task.hot() || s.established.is_none() || s.gap {
                continue;
            }
            let Some(used) = s.last_use else { continue };
            if used.elapsed() >= self.safe_for() {
                continue;
            }
            lock(&self.tally).hot_checked += 1;
            if self.tc.check_entry(self.s3, task.id, Class::Shared)? != Checked::Hit {
                lock(&self.tally).lost += 1;
                problems.push(format!("hot entry {} missed after the runs", task.id));
            }
        }
        // Evicted for sure: unused (as the server saw it: its last run ended) for
        // longer than `unused_for` plus two of the longest gc cycles before gc stopped.
        let cycle = lock(&self.tally).longest_gc + Duration::from_millis(400);
        let listing = self.listing()?;
        for (n, task) in self.tasks.iter().enumerate() {
            let Some(end) = state[n].last_end else {
                continue;
            };
            if task.hot() || end + self.timing.unused_for + cycle * 2 >= gc_stopped {
                continue;
            }
            let mut t = lock(&self.tally);
            t.cold_due += 1;
            if listing.entries.contains(&self.keys[n]) {
                problems.push(format!(
                    "cold entry {} (last run ended {:.1}s before gc stopped) was not evicted",
                    task.id,
                    gc_stopped.saturating_duration_since(end).as_secs_f64()
                ));
            } else {
                t.cold_gone += 1;
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The quiet end: a gc once the grace has passed leaves a closed bucket whose
    /// entries all hit; a gc of everything leaves nothing.
    fn quiet_end(&self) -> Result<(), String> {
        std::thread::sleep(self.timing.grace + Duration::from_millis(1100));
        self.gc(&[
            "--unused-for",
            &secs(self.timing.unused_for),
            "--grace",
            &secs(self.timing.grace),
        ])?;
        let listing = self.listing()?;
        let bucket = Bucket::open(&self.s3.url(), &self.s3.envs())?;
        let refs = bucket
            .check_closed(&listing)
            .map_err(|e| format!("after a quiet gc: {e}"))?;
        {
            let mut t = lock(&self.tally);
            t.closed_entries += refs.len() as u64;
            t.closed_objects += listing.len() as u64;
        }
        for (n, task) in self.tasks.iter().enumerate() {
            if refs.contains_key(&self.keys[n])
                && self.tc.check_entry(self.s3, task.id, Class::Shared)? != Checked::Hit
            {
                return Err(format!(
                    "entry {} is in the bucket after a quiet gc but does not hit",
                    task.id
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(1100));
        self.gc(&["--unused-for", "0s", "--grace", "0s"])?;
        let left = self.s3.objects()?;
        lock(&self.tally).left += left.len() as u64;
        if !left.is_empty() {
            return Err(format!(
                "a gc of everything left {} objects: {}",
                left.len(),
                left.join(", ")
            ));
        }
        Ok(())
    }
}

/// `8s` for 8 seconds (whole seconds: the drill's times are).
fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// "removed E entries (...), P packs, B blobs and M use markers; ..." → [E, P, B, M].
fn parse_gc(stdout: &str) -> Option<[u64; 4]> {
    let line = stdout.lines().find(|l| l.starts_with("removed "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let before = |what: &str| {
        words
            .windows(2)
            .find(|w| w[1].trim_end_matches([',', ';']) == what)
            .and_then(|w| w[0].parse().ok())
    };
    Some([
        before("entries")?,
        before("packs")?,
        before("blobs")?,
        before("use")?,
    ])
}

/// One trial on a fresh prefix.
fn trial(tc: &Tc, s3: &mut S3, n: u32, sz: &Size, rng: &mut Rng) -> Result<Tally, String> {
    s3.fresh()?;
    let tasks = plan::plan(u64::from(n) * 1000 * SHARED_GROUPS, &sz.timing, rng);
    let keys = tasks
        .iter()
        .map(|t| tc.key(t.id, Class::Shared))
        .collect::<Result<Vec<_>, _>>()?;
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let s3: &S3 = s3;
    let trial = Trial {
        tc,
        s3,
        timing: sz.timing,
        state: Mutex::new(vec![State::default(); tasks.len()]),
        tasks,
        keys,
        t0: Instant::now(),
        tally: Mutex::new(Tally::default()),
        stop: AtomicBool::new(false),
    };
    let seeds: Vec<u64> = (0..=sz.runners).map(|_| rng.next_u64()).collect();
    let gc_stopped = std::thread::scope(|s| {
        let gc = s.spawn(|| trial.gc_loop(seeds[0]));
        let runners: Vec<_> = seeds[1..]
            .iter()
            .map(|&seed| {
                let (trial, scratch) = (&trial, scratch.path());
                s.spawn(move || trial.runner(scratch, seed))
            })
            .collect();
        for r in runners {
            let _ = r.join();
        }
        trial.stop.store(true, Ordering::SeqCst);
        let _ = gc.join();
        Instant::now()
    });
    if let Err(e) = trial.after_runs(gc_stopped) {
        fail(&trial, &format!("trial {n}: {e}"));
    }
    // The bucket as the runs left it, before the quiet end empties it.
    if lock(&trial.tally).failures > 0 {
        keep_evidence(s3, &format!("gc-trial-{n}-runs"));
    }
    if let Err(e) = trial.quiet_end() {
        fail(&trial, &format!("trial {n}: {e}"));
        keep_evidence(s3, &format!("gc-trial-{n}-end"));
    }
    let tally = lock(&trial.tally).clone();
    eprintln!(
        "drill gc: trial {n}: {} entries, {} runs ({} hits, {} misses: {} first stores, \
         {} lapsed, {} lost), {} gc, {} failures",
        trial.tasks.len(),
        tally.runs,
        tally.hits,
        tally.misses,
        tally.first,
        tally.lapsed,
        tally.lost,
        tally.gcs,
        tally.failures
    );
    Ok(tally)
}

/// `trials` trials, each a fresh prefix on a moto of the drill's own.
pub fn run(tc: &Tc, trials: u32, ci: bool, rng: &mut Rng) -> Result<Outcome, String> {
    let started = Instant::now();
    let sz = size(ci);
    let scratch = tempfile::Builder::new()
        .prefix("taskcache-drill-gc-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let server = Server::new(Kind::S3, &scratch.path().join("moto"))?;
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    let extra = vec![
        (
            "TASKCACHE_TOUCH_INTERVAL".to_owned(),
            format!("{}ms", sz.timing.touch.as_millis()),
        ),
        // A step never runs uncached because moto is slow on a loaded machine.
        ("TASKCACHE_CACHE_TIMEOUT".to_owned(), "60s".to_owned()),
    ];
    let mut s3 = S3::on(&endpoint, crate::peers::moto::BUCKET, "gc-drill", extra)?;
    let mut all = Tally::default();
    for n in 0..trials {
        let t = trial(tc, &mut s3, n, &sz, rng)?;
        all.add(&t);
    }
    drop(s3);
    drop(server);
    let t = &sz.timing;
    let outcome = Outcome {
        trials: all.runs,
        failures: all.failures,
        time: started.elapsed(),
        note: format!(
            "{trials} x {}s, {} runners, gc --unused-for {}s --grace {}s, markers every {}s: \
             {} runs ({} hits, {} misses: {} first stores, {} lapsed, {} lost; {} warned), \
             longest store {:.1}s; {} gc (longest {:.1}s) removed {} entries, {} packs, {} blobs, \
             {} markers; hot entries checked after the runs {}; cold entries evicted {}/{} due; \
             after a quiet gc {} entries, {} objects, all referenced; a gc of everything left {}",
            t.activity.as_secs(),
            sz.runners,
            t.unused_for.as_secs(),
            t.grace.as_secs(),
            t.touch.as_secs(),
            all.runs,
            all.hits,
            all.misses,
            all.first,
            all.lapsed,
            all.lost,
            all.warned,
            all.longest_store.as_secs_f64(),
            all.gcs,
            all.longest_gc.as_secs_f64(),
            all.removed[0],
            all.removed[1],
            all.removed[2],
            all.removed[3],
            all.hot_checked,
            all.cold_gone,
            all.cold_due,
            all.closed_entries,
            all.closed_objects,
            all.left,
        ),
        skipped: None,
    };
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::parse_gc;

    #[test]
    fn the_numbers_gc_printed_are_read() {
        let out = "removed 3 entries (3 unused for 8.0s, 0 for the size), 2 packs, 1 blobs and \
                   3 use markers; kept 5 entries; 10.0 MiB -> 4.0 MiB\n";
        assert_eq!(parse_gc(out), Some([3, 2, 1, 3]));
        assert_eq!(parse_gc("nothing"), None);
    }
}
