//! # An example executor on taskcache
//!
//! A long-lived process that runs many tasks at once through one cache stack, written
//! from the crates' public docs only. It is documentation: read it top to bottom.
//!
//! * **The stack** ([`Stack::new`]): a fast local tier in front of a shared one
//!   ([`Tiered`]), each tier bounded by a [`Deadline`], the shared one behind a
//!   [`CircuitBreaker`] with a cool-down (a long-lived process must get its shared tier
//!   back once it heals).
//! * **A task** ([`Executor::run`]): key ([`TaskKeyBuilder::from_task`]), lookup, the
//!   cached-failure rule ([`Hit::is_accepted`](cache_core::Hit::is_accepted)), logs in
//!   their recorded order ([`Hit::replay_logs`](cache_core::Hit::replay_logs)), restore;
//!   on a miss run the command, collect its outputs ([`Task::collect_outputs`]) and
//!   store them under the same key ([`CacheBackend::store_key`]).
//! * **Cancelling**: the executor gives the cache a time budget per task (restore and
//!   store alike) and drops the call when it is spent. Dropping is cancelling: once the
//!   drop returns, nothing of that restore lands in the workspace and that store
//!   publishes nothing ([`cache_core::cancel`]), so the command may run and write its
//!   outputs at once.
//! * **Faults**: the cache's faults and refusals run the task uncached (or keep the
//!   result local); only the caller's own mistakes ([`Fault::Caller`]) fail the task.

use cache_core::{
    BackendError, CacheBackend, CacheEntry, CircuitBreaker, Deadline, Deadlines, DigestAlgorithm,
    Fault, Sleep, Task, TaskKeyBuilder, Tiered, TieredStats, effective_policy,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Settings of an [`Executor`].
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Each cache call's own deadline (the [`Deadline`] around each tier).
    pub call_timeout: Duration,
    /// How long a task waits for the cache (the restore, then the store) before the
    /// executor cancels the call and goes on without it.
    pub cache_budget: Duration,
    /// After opening, the breaker lets one trial call through this long later.
    pub breaker_cooldown: Duration,
    /// The most bytes of each log captured and replayed.
    pub max_log: u64,
    /// Cache and replay runs that failed.
    pub cache_failures: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            call_timeout: Duration::from_secs(30),
            cache_budget: Duration::from_secs(60),
            breaker_cooldown: Duration::from_secs(30),
            max_log: 16 << 20,
            cache_failures: false,
        }
    }
}

/// The one cache stack the process keeps for its whole life.
pub struct Stack {
    /// What tasks call.
    pub cache: Arc<dyn CacheBackend>,
    /// The shared tier's breaker, to watch.
    pub breaker: Arc<CircuitBreaker>,
    /// Shared hits, refused writes and errors of the two tiers.
    pub tiers: Arc<TieredStats>,
}

impl Stack {
    /// `local` in front of `shared`, as the crate docs stack them (see the module docs).
    pub fn new(local: Arc<dyn CacheBackend>, shared: Arc<dyn CacheBackend>, c: &Config) -> Stack {
        let sleep: Sleep = Arc::new(|d| Box::pin(tokio::time::sleep(d)));
        let limits = Deadlines::new(c.call_timeout);
        let local = Arc::new(Deadline::new(local, limits, sleep.clone()));
        let shared = Arc::new(Deadline::new(shared, limits, sleep));
        let breaker = Arc::new(CircuitBreaker::new(shared, 3).with_cooldown(c.breaker_cooldown));
        let tiered = Tiered::new(local, breaker.clone());
        let tiers = tiered.stats();
        Stack {
            cache: Arc::new(tiered),
            breaker,
            tiers,
        }
    }
}

/// Where a task's result came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A hit, restored and replayed.
    Cache,
    /// The command ran.
    Ran,
}

/// A finished task.
#[derive(Debug)]
pub struct Outcome {
    /// The exit code (the cached one on a hit).
    pub exit_code: i32,
    /// Hit or run.
    pub source: Source,
    /// What the task printed (replayed on a hit).
    pub stdout: Vec<u8>,
    /// What the task printed on stderr.
    pub stderr: Vec<u8>,
}

/// What the executor saw, over its life.
#[derive(Debug, Default)]
pub struct Counters {
    /// Tasks answered from the cache.
    pub hits: AtomicU64,
    /// Tasks whose command ran.
    pub runs: AtomicU64,
    /// Cache calls cancelled because the task's budget was spent.
    pub cancelled: AtomicU64,
    /// Cache faults and refusals a task went on without.
    pub degraded: AtomicU64,
    /// Results stored.
    pub stored: AtomicU64,
}

/// A task failed for a reason of its own (never the cache's).
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Runs tasks through one [`Stack`]; share it (`Arc<Executor>`) between tasks.
pub struct Executor {
    stack: Stack,
    config: Config,
    /// What happened so far.
    pub counters: Counters,
}

impl Executor {
    /// An executor over `stack`.
    pub fn new(stack: Stack, config: Config) -> Self {
        Executor {
            stack,
            config,
            counters: Counters::default(),
        }
    }

    /// The stack, to watch its breaker and tiers.
    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    /// Runs `task` in `workspace` (an existing directory), from the cache when it can.
    pub async fn run(&self, task: &Task, workspace: &Path) -> Result<Outcome, Error> {
        // The key reads the inputs: blocking work, off the async threads.
        let key = {
            let (t, ws) = (task.clone(), workspace.to_owned());
            tokio::task::spawn_blocking(move || {
                TaskKeyBuilder::from_task(&t, DigestAlgorithm::Blake3).build(&ws)
            })
            .await??
        };
        let policy = effective_policy(task, None);
        let cache = &*self.stack.cache;

        let replayed = async {
            let Some(hit) = cache.lookup(task, &key, policy).await? else {
                return Ok(None);
            };
            if !hit.is_accepted(self.config.cache_failures) {
                return Ok(None);
            }
            // Logs into memory first (bounded), then the outputs: if the restore fails
            // nothing was shown and the task simply runs.
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            hit.replay_logs(self.config.max_log, &mut stdout, &mut stderr)
                .await?;
            hit.restore(workspace).await?;
            Ok::<_, BackendError>(Some(Outcome {
                exit_code: hit.exit_code(),
                source: Source::Cache,
                stdout,
                stderr,
            }))
        };
        match self.within_budget(replayed).await {
            Some(Ok(Some(hit))) => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(hit);
            }
            Some(Ok(None)) | None => {}
            Some(Err(e)) => self.degrade(e)?,
        }

        // A miss, a fault or a cancelled restore: run. Nothing the cache started writes
        // into the workspace any more.
        let started = Instant::now();
        let ran = run_command(task, workspace).await?;
        self.counters.runs.fetch_add(1, Ordering::Relaxed);
        let exit_code = ran.status.code().unwrap_or(1);
        let outcome = Outcome {
            exit_code,
            source: Source::Ran,
            stdout: ran.stdout,
            stderr: ran.stderr,
        };
        let too_long = |log: &[u8]| log.len() as u64 > self.config.max_log;
        let killed = ran.status.code().is_none();
        if killed
            || (exit_code != 0 && !self.config.cache_failures)
            || too_long(&outcome.stdout)
            || too_long(&outcome.stderr)
        {
            return Ok(outcome);
        }

        let outputs = {
            let (t, ws) = (task.clone(), workspace.to_owned());
            match tokio::task::spawn_blocking(move || t.collect_outputs(&ws)).await? {
                Ok(outputs) => outputs,
                // The task did not produce what it declares: the result is not cached.
                Err(_) => return Ok(outcome),
            }
        };
        let entry = CacheEntry {
            stdout: Some(outcome.stdout.clone()),
            stderr: Some(outcome.stderr.clone()),
            exit_code,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            outputs,
            log_order: Vec::new(),
        };
        match self
            .within_budget(cache.store_key(task, &key, &entry, policy))
            .await
        {
            Some(Ok(())) => {
                self.counters.stored.fetch_add(1, Ordering::Relaxed);
            }
            // A failed or cancelled store is never the task's failure: it already ran.
            Some(Err(e)) => {
                let _ = self.degrade(e);
            }
            None => {}
        }
        Ok(outcome)
    }

    /// `call`, or `None` when the task's cache budget ran out first: the call's
    /// future is dropped, which cancels it.
    async fn within_budget<T>(&self, call: impl Future<Output = T>) -> Option<T> {
        let done = tokio::time::timeout(self.config.cache_budget, call)
            .await
            .ok();
        if done.is_none() {
            self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        done
    }

    /// A cache error: the caller's fails the task, any other is gone around.
    fn degrade(&self, e: BackendError) -> Result<(), Error> {
        if e.fault() == Fault::Caller {
            return Err(e.into());
        }
        self.counters.degraded.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Runs the task's command in `workspace`, capturing both logs.
async fn run_command(task: &Task, workspace: &Path) -> std::io::Result<std::process::Output> {
    let mut command = if task.shell {
        let mut c = tokio::process::Command::new("sh");
        c.arg("-c").arg(task.command.join(" "));
        c
    } else {
        let (program, args) = task.command.split_first().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "the task has no command")
        })?;
        let mut c = tokio::process::Command::new(program);
        c.args(args);
        c
    };
    command
        .current_dir(workspace)
        .envs(&task.env)
        .stdin(std::process::Stdio::null())
        .output()
        .await
}

/// A shell task that writes `outputs` under `out/<id>` (the declared output) and one
/// line to each log: the demo's and the tests' task.
pub fn shell_task(id: &str, script: &str) -> Task {
    let mut task = Task::new(id, [script]);
    task.shell = true;
    task.outputs.push(cache_core::TaskOutput {
        path: format!("out/{id}"),
        kind: cache_core::OutputType::Cas,
    });
    task
}

/// Every file under `dir` with its bytes, by path relative to `dir` (for comparing a
/// workspace with a real run's).
pub fn snapshot(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                todo.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).map(Path::to_owned);
                files.push((rel.unwrap_or_default(), std::fs::read(e.path())?));
            }
        }
    }
    files.sort();
    Ok(files)
}
