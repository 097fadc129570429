//! `taskcache run` and `taskcache key`: the origin executor loop (digest → check →
//! restore and replay, or run → store) for one command.
//!
//! # Hit
//!
//! `check`, then the logs are fetched (into memory), then the outputs are restored, and
//! only then is anything printed: every cache operation that can fail happens before
//! the first replayed byte, so a failure can still fall back to running the command
//! without the user seeing a half-replayed log followed by a real one.
//!
//! Restoring over an existing tree gives every cached file, directory and symlink
//! exactly (bytes and executable bit), atomically per file. Files present in a
//! directory output but absent from the entry are **left alone**: deleting is
//! irreversible, several tasks may write into one directory (`dist/`), and a miss
//! runs the command over the same tree without cleaning it either, so leaving them
//! keeps a hit equivalent to a run. Delete the directory first for a pristine copy.
//!
//! A cached *failure* (only stored with `--cache-failures`) is replayed only when
//! this run also passes `--cache-failures`; otherwise the command runs.
//!
//! # Errors of the cache
//!
//! * Degradable (`Unavailable`, `Connection`, `ActionNotFound`): a warning, the command
//!   runs uncached; its exit code is unaffected.
//! * Hard errors on check or restore (a digest mismatch, a corrupt entry, a local I/O
//!   error, an unsafe path in the workspace): also a warning, and the command runs.
//!   This is safe because nothing has been replayed yet (see above), the backend never
//!   lets an unverified byte reach the workspace (a mismatching file is not written),
//!   and whatever *was* restored before the failure holds the right bytes for this very
//!   key and is overwritten by the run. Failing the CI step instead would turn a cache
//!   problem into a build failure, which is exactly what a cache must not do. The
//!   result is then stored as usual, which repairs the entry.
//! * A cache directory that is not recognisably a cache (`check_cache_dir` refuses it:
//!   someone else's directory, or a cache whose `LAYOUT` is gone and that holds a stray
//!   file) is a warning too: the command runs uncached and nothing is written there.
//!   Tampering with a cache must not fail a step; `stats`, `gc` and `verify` refuse it.
//! * Refused permission (`Fault::Permission`: credentials that may read and not write,
//!   an HTTP 401/403, a REAPI action cache that is read-only): a warning, once per run,
//!   and the step passes. A shared tier that refuses writes is still read (its hits
//!   are replayed) and the result is stored in the local tier only; a cache that
//!   refuses reads runs the command uncached.
//! * A cache call that times out (every tier is under a [`cache_core::Deadline`]) was
//!   cancelled before the timeout came back ([`cache_core::cancel`]): nothing the
//!   restore started is renamed, created or re-timed in the workspace afterwards, and
//!   its temporary files are gone, so the command never races a late restore over
//!   its outputs.
//! * Errors on store: a warning; the exit code stays the command's.
//!
//! # Miss
//!
//! The command runs in the workspace (see [`crate::runner`]). The result is stored
//! when the policy allows writes, the exit code is 0 (or `--cache-failures`), the
//! command was not killed by a signal, both logs fit the capture cap, and every
//! declared output exists (see [`cache_core::collect_outputs`]).

use crate::Failure;
use crate::backend::{self, Opened, Role, Tier};
use crate::cli::TaskArgs;
use crate::explain::Why;
use crate::key::{TaskSpec, input_inside_output, task_key};
use crate::location::{Location, RawLocation};
use crate::size::{format_duration, format_size};
use cache_core::{
    CacheBackend, CacheEntry, CachePolicy, Fault, InputFile, Task, effective_policy,
    policy_allows_read, policy_allows_write,
};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Everything `run` and `key` need, validated: usage errors come out of here.
struct Prepared {
    workspace: PathBuf,
    spec: TaskSpec,
    /// The key, looked up and stored under.
    digest: cache_core::Digest,
    /// Its text, as printed.
    key: String,
    /// The input files that joined the key.
    inputs: BTreeMap<String, InputFile>,
    id: String,
    cache: Option<Location>,
    remote: Option<Location>,
    /// The capture limit, which also bounds a replayed log (the size comes from the cache).
    max_log: u64,
    /// Signed entries (from the environment).
    signing: backend::Signing,
    /// How long cache calls may take.
    deadlines: cache_core::Deadlines,
    /// Headers, TLS files and deadline for a REAPI remote.
    reapi: backend::ReapiSettings,
}

fn prepare(args: &TaskArgs) -> Result<Prepared, Failure> {
    let given = args.workspace.clone().unwrap_or_else(|| PathBuf::from("."));
    let workspace = std::fs::canonicalize(&given)
        .ok()
        .filter(|p| p.is_dir())
        .ok_or_else(|| {
            Failure::Usage(format!(
                "workspace {} is not a directory; pass an existing directory to -C",
                given.display()
            ))
        })?;
    let cache = args
        .cache
        .cache
        .as_ref()
        .map(RawLocation::as_str)
        .filter(|s| !s.is_empty())
        .map(|raw| backend::parse(raw, Role::Cache))
        .transpose()?;
    let remote = args
        .remote
        .as_ref()
        .map(RawLocation::as_str)
        .filter(|s| !s.is_empty())
        .map(|raw| backend::parse(raw, Role::Remote))
        .transpose()?;
    let spec = TaskSpec {
        command: args.command.clone(),
        env: args.env.clone(),
        inputs: args.inputs.clone(),
        outputs: args.outputs.clone(),
        absolute_symlinks: args.allow_absolute_symlinks,
    };
    let (key, inputs) = task_key(&spec, &workspace, |n| std::env::var_os(n))
        .map_err(|e| Failure::Usage(format!("cannot compute the task key: {e}")))?;
    if let Some((input, output)) = input_inside_output(&inputs, &spec.outputs) {
        tracing::warn!(
            "input {input} is inside the declared output {output}: the key changes whenever \
             the output does, so this task will rarely hit; narrow the -i pattern"
        );
    }
    let digest = key;
    let key = key.to_string();
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| command_line(&args.command));
    Ok(Prepared {
        workspace,
        spec,
        digest,
        key,
        inputs,
        id,
        cache,
        remote,
        max_log: args.max_log_size,
        signing: backend::Signing::from_env(|k| std::env::var(k).ok())?,
        deadlines: cache_core::Deadlines::new(args.cache_timeout),
        reapi: backend::ReapiSettings::new(
            args.remote_headers.iter().map(|h| h.0.clone()).collect(),
            |k| std::env::var(k).ok(),
        ),
    })
}

/// Explains the key of `p` (see [`crate::explain`]); the manifests of `--id` are in
/// the local cache: `cache_dir` if given, else the default one.
fn why<'a>(p: &'a Prepared, args: &TaskArgs, cache_dir: Option<PathBuf>) -> Why<'a> {
    let dir = cache_dir.or_else(|| backend::cache_dir(None).ok());
    Why::new(&p.spec, &p.key, &p.inputs, args.id.as_deref(), dir)
}

/// `taskcache key`: prints the digest and nothing else; with `explain`, everything that
/// went into it first.
pub fn key(args: &TaskArgs, explain: bool) -> Result<u8, Failure> {
    let p = prepare(args)?;
    let cache_dir = p
        .cache
        .clone()
        .and_then(|loc| backend::require_local(loc, Role::Cache).ok());
    let why = why(&p, args, cache_dir);
    let text = if explain {
        why.report()
    } else {
        why.log_changes();
        format!("{}\n", p.key)
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Fatal(format!("cannot write the key: {e}")))?;
    Ok(0)
}

/// The command line as a readable string (for the default task id).
fn command_line(command: &[OsString]) -> String {
    command
        .iter()
        .map(|a| {
            let s = a.to_string_lossy();
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                s.into_owned()
            } else {
                format!("'{}'", s.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn task_of(p: &Prepared, policy: CachePolicy) -> Task {
    let mut task = p.spec.to_task(&p.id, |n| std::env::var_os(n));
    task.cache_policy = policy;
    task
}

fn runtime() -> std::io::Result<Runtime> {
    // One task at a time: a current-thread runtime (plus tokio's blocking pool, which
    // the local storage uses) is all a single run needs, and it starts fastest.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| Runtime(Some(rt)))
}

/// The runtime, shut down without waiting for blocking jobs: a cache call that timed
/// out may still be stuck in one (a hung network filesystem), and the step must not
/// wait for it on the way out.
struct Runtime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for Runtime {
    type Target = tokio::runtime::Runtime;
    fn deref(&self) -> &tokio::runtime::Runtime {
        self.0
            .as_ref()
            .expect("the runtime lives until the session is dropped")
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// What a hit replays.
struct Replay {
    stdout: Option<Vec<u8>>,
    stderr: Option<Vec<u8>>,
    order: cache_core::storage::LogOrder,
    exit_code: i32,
    cached: Duration,
    /// Where the hit came from (which tier).
    source: cache_core::HitSource,
}

enum Lookup {
    Hit(Replay),
    Miss,
    /// A hit on a failure that this run does not accept.
    CachedFailure(i32),
}

async fn look_up(
    backend: &dyn CacheBackend,
    task: &Task,
    key: &cache_core::Digest,
    policy: CachePolicy,
    workspace: &std::path::Path,
    accept_failures: bool,
    max_log: u64,
) -> cache_core::BackendResult<Lookup> {
    // One lookup: the exit code, outputs and logs replayed all come from this hit.
    let Some(hit) = backend.lookup(task, key, policy).await? else {
        return Ok(Lookup::Miss);
    };
    let exit_code = hit.exit_code();
    if !hit.is_accepted(accept_failures) {
        return Ok(Lookup::CachedFailure(exit_code));
    }
    // Logs first (into memory), outputs second, printing last: see the module docs.
    let (stdout, stderr) = hit.logs_up_to(max_log).await?;
    hit.restore(workspace).await?;
    Ok(Lookup::Hit(Replay {
        stdout,
        stderr,
        order: hit.log_order().to_vec(),
        exit_code,
        cached: Duration::from_millis(hit.duration_ms()),
        source: hit.source(),
    }))
}

fn exit_byte(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(1)
}

fn seconds(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// An opened cache and the runtime its calls run on.
struct Session {
    rt: Runtime,
    opened: Opened,
}

/// Opens the cache unless the policy means it would not be used at all. A cache that
/// cannot be opened, or a directory that is not a cache, is a warning: the command
/// then runs uncached.
fn open_session(
    p: &Prepared,
    policy: CachePolicy,
    cache: Option<Tier>,
    remote: Option<&Tier>,
) -> Result<Option<Session>, Failure> {
    if policy == CachePolicy::Disabled {
        tracing::info!("uncached {}: key {}, policy {policy}", p.id, p.key);
        return Ok(None);
    }
    let cache = match cache {
        Some(tier) => tier,
        None => Tier::Local(backend::cache_dir(None)?),
    };
    // A directory that is not recognisably a cache (someone else's, or a cache that
    // was tampered with) is never used, never written, and never fails the step.
    if let Tier::Local(cache_dir) = &cache {
        if let Err(e) = cache_local::check_cache_dir(cache_dir, true) {
            tracing::warn!(
                "running {} uncached, writing nothing into the cache directory: {e}",
                p.id
            );
            return Ok(None);
        }
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!("cannot start the async runtime, running uncached: {e}");
            return Ok(None);
        }
    };
    // Opened inside the runtime: an object store's client needs one.
    let opened = {
        let _in_runtime = rt.enter();
        backend::open(&cache, remote, &p.signing, p.deadlines, &p.reapi)
    };
    match opened {
        Ok(opened) => Ok(Some(Session { rt, opened })),
        Err(e) => {
            tracing::warn!(
                "cache {cache} cannot be opened, running {} uncached: {e}",
                p.id
            );
            Ok(None)
        }
    }
}

/// Looks the task up and, on a hit, restores and replays it; returns the exit code
/// then. `Err`: run the command (a miss, or a cache error, which is logged here); it
/// says which (a word and a note), for the `-v` line after the run.
fn try_hit(
    p: &Prepared,
    task: &Task,
    policy: CachePolicy,
    s: &Session,
    accept_failures: bool,
    started: Instant,
) -> Result<u8, (&'static str, String)> {
    let (id, key, describe) = (&p.id, &p.key, &s.opened.describe);
    if !policy_allows_read(policy) {
        tracing::debug!("skip lookup {id}: key {key}, backend {describe}, policy {policy}");
        return Err(("no lookup", format!(" (policy {policy})")));
    }
    let looked = s.rt.block_on(crate::progress::shown(
        "looking up and restoring from the cache",
        look_up(
            s.opened.backend.as_ref(),
            task,
            &p.digest,
            policy,
            &p.workspace,
            accept_failures,
            p.max_log,
        ),
    ));
    // What this run was, for `taskcache stats`: a hit if it is replayed, else a miss.
    if let Some(local) = &s.opened.local {
        let hit = matches!(looked, Ok(Lookup::Hit(_)));
        s.rt.block_on(
            local
                .storage()
                .record_lookups(u64::from(hit), u64::from(!hit)),
        );
    }
    match looked {
        Ok(Lookup::Hit(replay)) => {
            // As the task wrote them; a closed pipe (`| head`) is not worth a warning.
            let replayed = cache_core::replay_logs(
                replay.stdout.as_deref().unwrap_or_default(),
                replay.stderr.as_deref().unwrap_or_default(),
                &replay.order,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            );
            for (stream, e) in replayed.errors() {
                tracing::warn!("could not replay the cached {stream}: {e}");
            }
            let from = match replay.source.tier {
                Some(cache_core::HitTier::Shared) => " (remote tier)",
                _ => "",
            };
            let took = started.elapsed();
            // Saved: the stored run's duration (the hit's own time is at debug level).
            tracing::info!(
                "hit {key}, saved {} ({id}, from {describe}{from})",
                format_duration(replay.cached)
            );
            tracing::debug!(
                "hit {id}: exit {}, the run took {}, the hit {}",
                replay.exit_code,
                seconds(replay.cached),
                seconds(took),
            );
            return Ok(exit_byte(replay.exit_code));
        }
        Ok(Lookup::Miss) => {
            tracing::debug!("miss {id}: key {key}, backend {describe}, policy {policy}");
            return Err(("miss", String::new()));
        }
        Ok(Lookup::CachedFailure(code)) => {
            return Err((
                "miss",
                format!(" (the cached run failed with exit {code}; --cache-failures is not set)"),
            ));
        }
        Err(e) if e.fault() == Fault::Permission => {
            tracing::warn!("the cache refuses access, running {id} uncached: {e}");
        }
        Err(e) if e.is_cache_fault() => {
            tracing::warn!("cache trouble, running {id} uncached: {e}");
        }
        Err(e) => tracing::warn!("cache lookup for {id} failed, running the command instead: {e}"),
    }
    Err(("lookup failed", " (see the warning)".into()))
}

/// Stores a finished run if the policy and the outcome allow it (see the module docs).
/// Says what it did (`Ok`) or why it stored nothing (`Err`), for the `-v` line; what a
/// user must see anyway is a warning here.
fn store_result(
    p: &Prepared,
    task: &Task,
    policy: CachePolicy,
    s: &Session,
    args: &TaskArgs,
    finished: crate::runner::Finished,
) -> Result<String, String> {
    let id = &p.id;
    let code = finished.exit_code;
    if !policy_allows_write(policy) {
        return Err(format!("policy {policy}"));
    }
    if let Some(sig) = finished.forwarded {
        tracing::warn!("not storing {id}: cancelled by signal {sig} (passed on to the command)");
        return Err(format!("cancelled by signal {sig}"));
    }
    if let Some(sig) = finished.signal {
        return Err(format!("killed by signal {sig}"));
    }
    if code != 0 && !args.cache_failures {
        return Err(format!(
            "exit {code} (pass --cache-failures to cache failures)"
        ));
    }
    for (name, c) in [("stdout", &finished.stdout), ("stderr", &finished.stderr)] {
        if c.failed {
            tracing::warn!("not caching {id}: its {name} could not be captured whole");
            return Err(format!("its {name} could not be captured whole"));
        }
        if c.overflowed {
            tracing::warn!(
                "not caching {id}: its {name} ({}) is over the capture limit of {}",
                format_size(c.total),
                format_size(args.max_log_size)
            );
            return Err(format!("its {name} is over the capture limit"));
        }
    }
    let outputs = match task.collect_outputs(&p.workspace) {
        Ok(o) => o,
        Err(msg) => {
            tracing::warn!("not caching {id}: {msg}");
            return Err("an output could not be cached (see the warning)".into());
        }
    };
    let n_outputs = outputs.len();
    let entry = CacheEntry {
        stdout: Some(finished.stdout.bytes),
        stderr: Some(finished.stderr.bytes),
        exit_code: code,
        duration_ms: u64::try_from(finished.duration.as_millis()).unwrap_or(u64::MAX),
        outputs,
        log_order: finished.log_order,
    };
    let stored_at = Instant::now();
    match s.rt.block_on(crate::progress::shown(
        &format!("storing {n_outputs} output(s) in the cache"),
        s.opened.backend.store_key(task, &p.digest, &entry, policy),
    )) {
        Ok(()) => {
            // A shared tier that refuses writes said so itself (one warning: `Tiered`).
            let refused = match &s.opened.tiered {
                Some(t) if t.shared_writes_refused.load(Ordering::Relaxed) > 0 => {
                    " (not in the remote tier: it refuses writes)"
                }
                _ => "",
            };
            Ok(format!(
                "stored {n_outputs} output(s) and exit {code} in {} ({id}, in {}{refused})",
                format_duration(stored_at.elapsed()),
                s.opened.describe,
            ))
        }
        Err(e) if e.fault() == Fault::Permission => {
            tracing::warn!(
                "the cache refuses writes, {id} is not stored (reads from it go on): {e}"
            );
            Err("the cache refuses writes (see the warning)".into())
        }
        Err(e) => {
            tracing::warn!("could not store the result of {id} in the cache: {e}");
            Err("the cache refused it (see the warning)".into())
        }
    }
}

/// `taskcache run`. Returns the exit code to use.
pub fn run(args: &TaskArgs) -> Result<u8, Failure> {
    let started = Instant::now();
    let p = prepare(args)?;
    // Explicit locations are checked even when the policy would not use them.
    let cache = p
        .cache
        .clone()
        .map(|loc| backend::require_supported(loc, Role::Cache))
        .transpose()?;
    let remote = p
        .remote
        .clone()
        .map(|loc| backend::require_supported(loc, Role::Remote))
        .transpose()?;
    let task = task_of(&p, CachePolicy::Normal);
    let policy = effective_policy(&task, Some(args.policy));
    let session = open_session(&p, policy, cache.clone(), remote.as_ref())?;
    // Manifests for --id live in a local cache directory; a bucket alone keeps none.
    let why = match cache {
        // (A REAPI server is never the cache itself: refused above.)
        Some(Tier::Object { .. } | Tier::Reapi(_)) => {
            Why::new(&p.spec, &p.key, &p.inputs, args.id.as_deref(), None)
        }
        Some(Tier::Local(dir)) => why(&p, args, Some(dir)),
        None => why(&p, args, None),
    };

    let mut looked = ("uncached", String::new());
    if let Some(s) = &session {
        match try_hit(&p, &task, policy, s, args.cache_failures, started) {
            Ok(code) => return Ok(code),
            Err(what) => looked = what,
        }
    }
    why.log_changes();
    // A failed or timed-out restore was cancelled before `try_hit` returned: nothing
    // of it writes into the workspace from here on (see the module docs).
    let finished = match crate::runner::run(&args.command, &p.workspace, args.max_log_size) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("{}", e.message);
            return Ok(e.exit_code);
        }
    };
    let code = exit_byte(finished.exit_code);
    if let Some(s) = &session {
        let (what, note) = looked;
        let ran = format!(
            "{what} {}{note}, ran {}",
            p.key,
            format_duration(finished.duration)
        );
        match store_result(&p, &task, policy, s, args, finished) {
            Ok(stored) => {
                tracing::info!("{ran}, {stored}");
                why.save();
            }
            Err(why_not) => tracing::info!("{ran}, not stored: {why_not}"),
        }
    }
    Ok(code)
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
