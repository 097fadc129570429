//! `drill remote`: the shared tier's server (moto for `s3://`, BuildGrid for
//! `grpc://`), a private one started by the drill, is SIGKILLed and restarted on the
//! same port, frozen with SIGSTOP and thawed with SIGCONT, or left down, at random
//! moments of `taskcache run` storing into it or restoring from it (an empty local
//! tier, so a hit comes from the server). Every step must exit 0 with its exact outputs
//! and stdout (a hit, or run uncached) within the deadline bound plus [`MARGIN`];
//! afterwards its key, looked up with an empty local tier, is a miss or restores every
//! byte. Then the breaker ([`breaker`]): a frozen or dead server costs a run one
//! deadline, and the runs after it is back store and hit through it again; and in
//! this process ([`stack`]): trip, skip, half-open, closed.

mod breaker;
pub(super) mod server;
mod stack;

use super::taskcache::Tc;
use super::workload::{self, CHECK_ENV, CHECK_EXIT, Class, MARK_ENV};
use super::{Outcome, Rng};
use server::{Kind, Server};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `--cache-timeout` of every run.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Over the deadline bound: starting `taskcache`, runtimes, the step itself on a
/// machine shared with builds (a bound on waiting for a dead server, not a speed).
pub const MARGIN: Duration = Duration::from_secs(3);

/// The deadline of a transfer of `bytes` with `--cache-timeout timeout`, as the CLI
/// computes it (`cache_core`'s `Deadlines`: the timeout plus 1 s per 8 MiB).
pub fn for_bytes(timeout: Duration, bytes: u64) -> Duration {
    cache_core::Deadlines::new(timeout).for_bytes(bytes)
}

/// Bytes an entry moves: its files and its stdout.
fn entry_bytes(i: u64, class: Class) -> u64 {
    workload::files(i, class).iter().map(|f| f.len).sum::<u64>()
        + workload::stdout(i, class).len() as u64
}

/// The most a run may wait on the cache: the lookup (one call deadline), then one
/// transfer's deadline, for the copy of a hit into the local tier or the store of a
/// miss. A server that stops answering costs one deadline: a copy that times out is a
/// miss (not a second wait to restore from the server), and opens the breaker, so the
/// store after the run skips the server.
pub fn deadline_bound(timeout: Duration, i: u64, class: Class) -> Duration {
    timeout + for_bytes(timeout, entry_bytes(i, class))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillStore,
    KillRestore,
    FreezeStore,
    FreezeRestore,
    Down,
}

impl Fault {
    fn as_str(self) -> &'static str {
        match self {
            Fault::KillStore => "kill mid-store",
            Fault::KillRestore => "kill mid-restore",
            Fault::FreezeStore => "freeze mid-store",
            Fault::FreezeRestore => "freeze mid-restore",
            Fault::Down => "down",
        }
    }
}

/// One finished `taskcache run`.
pub struct Ran {
    pub wall: Duration,
    pub stderr: String,
}

impl Ran {
    /// Calls to the server that failed in the run (each is one warning; the calls
    /// the open breaker skipped say so and are not counted).
    pub fn failed_calls(&self) -> usize {
        self.stderr
            .lines()
            .filter(|l| l.contains("cache tier failed") && !l.contains("skipped for the rest"))
            .count()
    }
}

/// The drill against one server.
pub struct Ctx<'a> {
    tc: &'a Tc,
    pub server: Server,
    /// `--cache-timeout` of the runs ([`TIMEOUT`] but in the breaker's check).
    pub timeout: Duration,
    scratch: PathBuf,
    dirs: u64,
    next: u64,
    /// Entries stored since the server last started.
    stored: Vec<(u64, Class)>,
    /// How long an undisturbed miss and remote hit of each class take here.
    miss_time: [Duration; 3],
    hit_time: [Duration; 3],
    /// When the drill started, for progress lines.
    started: Instant,
    pub max_over: Duration,
    pub max_over_what: String,
    pub hits: u64,
    pub misses: u64,
    pub landed: u64,
    pub multi_deadline_runs: u64,
}

impl<'a> Ctx<'a> {
    pub fn new(tc: &'a Tc, kind: Kind, scratch: &Path) -> Result<Self, String> {
        let server = Server::new(kind, &scratch.join(format!("{}-server", kind.as_str())))?;
        Ok(Ctx {
            tc,
            server,
            timeout: TIMEOUT,
            scratch: scratch.to_path_buf(),
            dirs: 0,
            next: u64::from(kind == Kind::Reapi) * 1_000_000,
            stored: Vec::new(),
            miss_time: [Duration::ZERO; 3],
            hit_time: [Duration::ZERO; 3],
            started: Instant::now(),
            max_over: Duration::ZERO,
            max_over_what: String::new(),
            hits: 0,
            misses: 0,
            landed: 0,
            multi_deadline_runs: 0,
        })
    }

    /// A new empty directory under the scratch directory.
    pub fn dir(&mut self, what: &str) -> Result<PathBuf, String> {
        self.dirs += 1;
        let d = self.scratch.join(format!("{what}-{}", self.dirs));
        std::fs::create_dir_all(&d).map_err(|e| format!("create {}: {e}", d.display()))?;
        Ok(d)
    }

    pub fn new_entry(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// `taskcache run` of entry `i` in `ws`, the local tier in `local`, the server as
    /// the shared tier.
    pub fn cmd(&self, local: &Path, ws: &Path, i: u64, class: Class, opts: &[&str]) -> Command {
        let mut c = Command::new(&self.tc.bin);
        c.arg("run")
            .arg("-C")
            .arg(ws)
            .arg("--cache")
            .arg(local)
            .args(["--remote", &self.server.url()])
            .arg("--cache-timeout")
            .arg(format!("{}ms", self.timeout.as_millis()))
            .args(opts)
            .args([
                "-o",
                &format!("out/{i}"),
                "--id",
                &format!("drill-{i}"),
                "--",
            ])
            .arg(&self.tc.xtask)
            .args(["drill", "produce", &i.to_string(), class.as_str()])
            .env_remove(CHECK_ENV)
            .env_remove(MARK_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.server.env(&mut c);
        c
    }

    /// How long an undisturbed run of `class` takes (the longer of a miss and a hit).
    pub fn undisturbed(&self, class: Class) -> Duration {
        self.miss_time[class as usize].max(self.hit_time[class as usize])
    }

    /// Checks a finished step: exit 0, its stdout, its outputs in `ws`, and its wall
    /// time against the deadline bound.
    pub fn judge(
        &mut self,
        out: &Output,
        wall: Duration,
        ws: &Path,
        i: u64,
        class: Class,
        what: &str,
    ) -> Result<Ran, String> {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(format!(
                "entry {i} ({what}): taskcache exited {}: {}",
                out.status,
                stderr.trim()
            ));
        }
        if out.stdout != workload::stdout(i, class) {
            return Err(format!("entry {i} ({what}): wrong stdout"));
        }
        workload::check(ws, i, class).map_err(|e| format!("{what}: {e}"))?;
        let own = self.undisturbed(class);
        let bound = deadline_bound(self.timeout, i, class);
        let over = wall.saturating_sub(own);
        // The breaker's runs, with a longer timeout, report their own times.
        if over > self.max_over && self.timeout == TIMEOUT {
            self.max_over = over;
            self.max_over_what = format!("{what}, {}", class.as_str());
        }
        if verbose() && over > self.timeout {
            eprintln!(
                "drill remote: entry {i} ({what}, {}) took {wall:.1?}, {over:.1?} over an \
                 undisturbed run; its stderr:\n{}",
                class.as_str(),
                stderr.trim()
            );
        }
        if over > bound + MARGIN {
            return Err(format!(
                "entry {i} ({what}): took {wall:.1?}, {over:.1?} more than an undisturbed \
                 run ({own:.1?}); the deadlines allow {bound:.1?} (+{MARGIN:?} margin): {}",
                stderr.trim()
            ));
        }
        let ran = Ran { wall, stderr };
        if ran.failed_calls() > 1 {
            self.multi_deadline_runs += 1;
        }
        Ok(ran)
    }

    /// An undisturbed run of entry `i` with a new local tier (a miss stores, a hit
    /// comes from the server), checked.
    pub fn step(&mut self, i: u64, class: Class, what: &str) -> Result<Ran, String> {
        let (local, ws) = (self.dir("local")?, self.dir("ws")?);
        let t = Instant::now();
        let out = self
            .cmd(&local, &ws, i, class, &[])
            .output()
            .map_err(|e| format!("start taskcache: {e}"))?;
        let wall = t.elapsed();
        self.judge(&out, wall, &ws, i, class, what)
    }

    /// Entry `i` looked up read-only with an empty local tier (so a hit comes from the
    /// server), never produced: a miss, or a hit restoring exactly its bytes.
    pub fn check(&mut self, i: u64, class: Class) -> Result<bool, String> {
        let (local, ws) = (self.dir("local")?, self.dir("ws")?);
        let out = self
            .cmd(&local, &ws, i, class, &["--policy", "readonly"])
            .env(CHECK_ENV, "1")
            .output()
            .map_err(|e| format!("start taskcache: {e}"))?;
        match out.status.code() {
            Some(CHECK_EXIT) => {
                self.misses += 1;
                Ok(false)
            }
            Some(0) => {
                if out.stdout != workload::stdout(i, class) {
                    return Err(format!("entry {i}: a hit replayed the wrong stdout"));
                }
                workload::check(&ws, i, class)?;
                self.hits += 1;
                Ok(true)
            }
            _ => Err(format!(
                "entry {i}: the check run exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }

    /// Undisturbed runs of each class, to spread faults over and to judge times by:
    /// a miss that stores, a hit from the server with an empty local tier.
    fn measure(&mut self, classes: &[Class]) -> Result<(), String> {
        for &class in classes {
            let i = self.new_entry();
            let t = Instant::now();
            self.step(i, class, "undisturbed miss")?;
            self.miss_time[class as usize] = t.elapsed();
            let t = Instant::now();
            let ran = self.step(i, class, "undisturbed hit")?;
            self.hit_time[class as usize] = t.elapsed();
            if !self.check(i, class)? {
                return Err(format!(
                    "{}: an entry stored without a fault does not hit: {}",
                    self.server.kind.as_str(),
                    ran.stderr
                ));
            }
            self.stored.push((i, class));
        }
        Ok(())
    }

    /// One fault at a random moment of one run; then that key is checked.
    fn trial(&mut self, fault: Fault, class: Class, rng: &mut Rng) -> Result<(), String> {
        let restore = matches!(fault, Fault::KillRestore | Fault::FreezeRestore);
        let (i, class) = if restore {
            if self.stored.is_empty() {
                let i = self.new_entry();
                self.step(i, class, "a store to restore later")?;
                self.stored.push((i, class));
            }
            self.stored[usize::try_from(rng.range(0, self.stored.len() as u64)).unwrap_or(0)]
        } else {
            (self.new_entry(), class)
        };
        let what = fault.as_str();
        if fault == Fault::Down {
            self.server.kill();
            // One or two runs while it is down (connections refused).
            for _ in 0..rng.range(1, 3) {
                let j = self.new_entry();
                self.step(j, Class::Small, what)?;
            }
            self.server.start()?;
            self.stored.clear();
            self.step(i, class, "after a restart")?;
            if self.check(i, class)? {
                self.stored.push((i, class));
            }
            return Ok(());
        }
        let took = if restore {
            self.hit_time[class as usize]
        } else {
            self.miss_time[class as usize]
        };
        let limit = u64::try_from(took.as_micros() * 6 / 5).unwrap_or(u64::MAX);
        let delay = Duration::from_micros(rng.range(0, limit.max(1)));
        let (local, ws) = (self.dir("local")?, self.dir("ws")?);
        let t = Instant::now();
        let child = self
            .cmd(&local, &ws, i, class, &[])
            .spawn()
            .map_err(|e| format!("start taskcache: {e}"))?;
        // Its pipes are read on a thread while the fault happens here.
        // The wall time ends when the run does, not when the drill thaws the server.
        let reader = std::thread::spawn(move || {
            let out = child.wait_with_output();
            (out, t.elapsed())
        });
        std::thread::sleep(delay);
        let running = !reader.is_finished();
        self.landed += u64::from(running);
        let frozen_for = match fault {
            Fault::KillStore | Fault::KillRestore => {
                self.server.kill();
                None
            }
            _ => {
                self.server.freeze();
                Some(Duration::from_millis(rng.range(
                    0,
                    u64::try_from(TIMEOUT.as_millis() * 3).unwrap_or(6000),
                )))
            }
        };
        if let Some(d) = frozen_for {
            let until = Instant::now() + d;
            while Instant::now() < until && !reader.is_finished() {
                std::thread::sleep(Duration::from_millis(20));
            }
            // Thawed after the run when it ended first: the run faced a silent server.
            let rest = until.saturating_duration_since(Instant::now());
            std::thread::sleep(rest);
            self.server.thaw();
        }
        let (out, wall) = reader.join().map_err(|_| "the reader thread panicked")?;
        let out = out.map_err(|e| format!("wait for taskcache: {e}"))?;
        self.judge(&out, wall, &ws, i, class, what)?;
        if frozen_for.is_none() {
            self.server.start()?;
            // A restart keeps no entry (see `Kind::restart_keeps`).
            self.stored.clear();
        }
        let hit = self.check(i, class)?;
        if hit && !self.stored.contains(&(i, class)) {
            self.stored.push((i, class));
        }
        Ok(())
    }
}

/// `TASKCACHE_DRILL_VERBOSE` set: a line per trial.
fn verbose() -> bool {
    std::env::var_os("TASKCACHE_DRILL_VERBOSE").is_some()
}

/// `trials` faults of random kinds against `ctx`'s server; how many of each.
fn faults(
    ctx: &mut Ctx,
    trials: u32,
    ci: bool,
    rng: &mut Rng,
    out: &mut Outcome,
) -> Result<[u32; 5], String> {
    let kind = ctx.server.kind;
    let mut faults = [0u32; 5];
    for n in 0..trials {
        let roll = rng.range(0, 100);
        let fault = match roll {
            0..25 => Fault::KillStore,
            25..45 => Fault::KillRestore,
            45..65 => Fault::FreezeStore,
            65..85 => Fault::FreezeRestore,
            _ => Fault::Down,
        };
        let class = match (ci, rng.range(0, 100)) {
            (false, 0..3) => Class::Large,
            (false, 3..25) => Class::Medium,
            _ => Class::Small,
        };
        faults[fault as usize] += 1;
        out.trials += 1;
        let t = Instant::now();
        let result = ctx.trial(fault, class, rng);
        if verbose() {
            eprintln!(
                "drill remote: {} trial {n}: {}, {}: {:.1?}",
                kind.as_str(),
                fault.as_str(),
                class.as_str(),
                t.elapsed()
            );
        }
        if let Err(e) = result {
            out.failures += 1;
            eprintln!(
                "drill remote: {} trial {n} ({}, {}): FAILURE: {e}\nthe server's log ends:\n{}",
                kind.as_str(),
                fault.as_str(),
                class.as_str(),
                ctx.server.log_tail()
            );
            if !ctx.server.running() {
                ctx.server.start()?;
            }
        }
        if (n + 1) % 25 == 0 {
            eprintln!(
                "drill remote: {}: {} trials, {} failures ({:.0?})",
                kind.as_str(),
                n + 1,
                out.failures,
                ctx.started.elapsed()
            );
        }
    }
    Ok(faults)
}

/// The remote-fault drill: `trials` faults against each server, then the breaker.
pub fn run(tc: &Tc, trials: u32, ci: bool, rng: &mut Rng) -> Result<Outcome, String> {
    let started = Instant::now();
    let scratch = tempfile::Builder::new()
        .prefix("taskcache-drill-remote-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let mut out = Outcome::default();
    let mut notes = Vec::new();
    for kind in [Kind::S3, Kind::Reapi] {
        let mut ctx = Ctx::new(tc, kind, scratch.path())?;
        let classes: &[Class] = if ci {
            &[Class::Small]
        } else {
            &[Class::Small, Class::Medium, Class::Large]
        };
        ctx.measure(classes)?;
        eprintln!(
            "drill remote: {}: an undisturbed miss takes {:.1?}, a hit from the server {:.1?} (small)",
            kind.as_str(),
            ctx.miss_time[0],
            ctx.hit_time[0]
        );
        let faults = faults(&mut ctx, trials, ci, rng, &mut out)?;
        // Every key stored since the last restart, from the server alone.
        for (i, class) in ctx.stored.clone() {
            if let Err(e) = ctx.check(i, class) {
                out.failures += 1;
                eprintln!("drill remote: {}: FAILURE: {e}", kind.as_str());
            }
        }
        let b = breaker::run(&mut ctx)?;
        out.trials += 1;
        let local = ctx.dir("stack")?;
        let in_process = stack::run(&mut ctx.server, &local).unwrap_or_else(|e| {
            out.failures += 1;
            eprintln!(
                "drill remote: {}: in one process: FAILURE: {e}",
                kind.as_str()
            );
            if !ctx.server.running() {
                let _ = ctx.server.start();
            }
            format!("in one process: FAILED ({e})")
        });
        out.trials += b.trials;
        out.failures += b.failures;
        notes.push(format!(
            "{}: {} kill/{} freeze/{} down ({} landed mid-run), {} restarts keeping {} ({:.1}s each), \
             afterwards {} hits {} misses; at most {:.1}s over an undisturbed run ({}), \
             {} runs had more than one failed call to the server; {}; {}",
            kind.as_str(),
            faults[0] + faults[1],
            faults[2] + faults[3],
            faults[4],
            ctx.landed,
            ctx.server.starts - 1,
            kind.restart_keeps(),
            ctx.server.start_time.as_secs_f64() / f64::from(ctx.server.starts),
            ctx.hits,
            ctx.misses,
            ctx.max_over.as_secs_f64(),
            ctx.max_over_what,
            ctx.multi_deadline_runs,
            b.note,
            in_process
        ));
    }
    out.note = notes.join("; ");
    out.time = started.elapsed();
    Ok(out)
}
