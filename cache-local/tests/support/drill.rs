//! The kill drill, shared by the `kill_during_store` test (`mod support`) and
//! `cargo xtask drill kill` (included by path): a child process stores entries in a
//! loop until it is SIGKILLed at a random moment; then every entry on disk must read as
//! a hit and restore whole and correct. Test code only: it is not shipped in the
//! library, and it uses the public API alone.

#![allow(dead_code)]

use cache_core::{
    CacheBackend, CacheEntry, CacheOutput, CachePolicy, Digest, DigestAlgorithm, Task,
};
use cache_local::LocalOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Set in a child's environment to the cache directory it must fill.
pub const CHILD_ENV: &str = "TASKCACHE_DRILL_CHILD_DIR";
/// Set in a child's environment to the first entry number it stores.
pub const START_ENV: &str = "TASKCACHE_DRILL_CHILD_START";

/// The key of entry `i`.
pub fn key(i: u64) -> Digest {
    DigestAlgorithm::Blake3.digest(format!("taskcache kill drill entry {i}").as_bytes())
}

fn bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// One expected file: path, content, executable bit.
pub type ExpectedFile = (String, Vec<u8>, bool);

/// The files entry `i` stores, and its stdout.
#[allow(clippy::cast_possible_truncation)]
pub fn expected(i: u64) -> (Vec<ExpectedFile>, Vec<u8>) {
    let mut files = vec![
        (
            format!("out/{i}/small.txt"),
            bytes(&format!("small {i}"), 100 + (i % 7) as usize),
            false,
        ),
        (
            format!("out/{i}/medium.bin"),
            bytes(
                &format!("medium {i}"),
                (64 << 10) + (i % 13) as usize * 1000,
            ),
            i % 2 == 0,
        ),
        // The same content in every entry: stores reuse (and refresh) one blob.
        (
            "shared/common.bin".to_owned(),
            bytes("common", 300 << 10),
            false,
        ),
    ];
    if i % 3 == 0 {
        // Large enough that a kill often lands in the middle of writing it.
        let len = (2 << 20) + (i % 5) as usize * (700 << 10);
        files.push((
            format!("out/{i}/large.bin"),
            bytes(&format!("large {i}"), len),
            false,
        ));
    }
    if i % 10 == 5 {
        // Over the size where a store copies in the kernel and hashes on a second thread.
        let len = (17 << 20) + (i % 3) as usize * (100 << 10);
        files.push((
            format!("out/{i}/huge.bin"),
            bytes(&format!("huge {i}"), len),
            false,
        ));
    }
    let stdout_len = if i % 4 == 0 { 100 << 10 } else { 200 };
    (files, bytes(&format!("stdout {i}"), stdout_len))
}

fn task() -> Task {
    Task::new("kill-drill", ["store-loop"])
}

/// The child: stores entries `start..` into `dir` until killed. Large files are
/// streamed from disk (a scratch directory beside the cache), small ones from memory.
pub fn child_main(dir: &Path, start: u64) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let scratch = scratch_dir(dir);
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    let cache = cache_local::open(dir, LocalOptions::default()).expect("open cache");
    rt.block_on(async {
        for i in start.. {
            let (files, stdout) = expected(i);
            let mut outputs = vec![CacheOutput::directory(format!("out/{i}"))];
            for (j, (path, content, exec)) in files.into_iter().enumerate() {
                if content.len() > (1 << 20) {
                    let src = scratch.join(format!("{i}-{j}.bin"));
                    std::fs::write(&src, &content).expect("scratch file");
                    outputs.push(CacheOutput::file(path, src, exec));
                } else {
                    outputs.push(CacheOutput::bytes(path, content, exec));
                }
            }
            outputs.push(CacheOutput::symlink(format!("out/{i}/link"), "small.txt"));
            let entry = CacheEntry {
                stdout: Some(stdout),
                stderr: None,
                exit_code: i32::try_from(i % 1_000_000).expect("small"),
                duration_ms: i,
                outputs,
                log_order: Vec::new(),
            };
            cache
                .store(&task(), &key(i).to_string(), &entry, CachePolicy::Normal)
                .await
                .expect("store");
            // Scratch copies are not needed once stored (the blobs are in the cache).
            for j in 0..8 {
                let _ = std::fs::remove_file(scratch.join(format!("{i}-{j}.bin")));
            }
        }
    });
    std::process::exit(0)
}

fn scratch_dir(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".scratch");
    PathBuf::from(s)
}

/// What one check of a cache directory found.
#[derive(Debug, Default, Clone, Copy)]
pub struct CheckReport {
    /// Entries found on disk (each one read as a hit and restored correctly).
    pub entries: u64,
    /// Temporary files the killed writer left (removed by GC once stale).
    pub temp_files: u64,
}

/// Checks every entry in `dir`: it must be a hit, restore exactly the files, symlink
/// and logs of its number, and `verify` must find nothing corrupt.
pub fn check(dir: &Path) -> Result<CheckReport, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(check_async(dir))
}

/// The task digests of the entry files under `<dir>/entries/<algorithm>/<2 hex>/`.
fn entry_keys(dir: &Path) -> Result<Vec<Digest>, String> {
    let mut keys = Vec::new();
    let Ok(algorithms) = std::fs::read_dir(dir.join("entries")) else {
        return Ok(keys);
    };
    for alg in algorithms {
        let alg = alg.map_err(|e| e.to_string())?;
        for fan in std::fs::read_dir(alg.path()).map_err(|e| e.to_string())? {
            let fan = fan.map_err(|e| e.to_string())?;
            for entry in std::fs::read_dir(fan.path()).map_err(|e| e.to_string())? {
                let entry = entry.map_err(|e| e.to_string())?;
                let name = format!(
                    "{}:{}",
                    alg.file_name().to_string_lossy(),
                    entry.file_name().to_string_lossy()
                );
                keys.push(Digest::parse(&name).map_err(|e| format!("entry file {name}: {e}"))?);
            }
        }
    }
    Ok(keys)
}

async fn check_async(dir: &Path) -> Result<CheckReport, String> {
    let cache = cache_local::open(dir, LocalOptions::default()).map_err(|e| e.to_string())?;
    let found = entry_keys(dir)?;
    let report = CheckReport {
        entries: found.len() as u64,
        temp_files: std::fs::read_dir(dir.join("tmp")).map_or(0, Iterator::count) as u64,
    };
    for digest in &found {
        let k = digest.to_string();
        // Readonly: a corrupt entry must not be silently removed before we see it.
        let hit = cache
            .lookup(&task(), digest, CachePolicy::Readonly)
            .await
            .map_err(|e| format!("lookup {k}: {e}"))?
            .ok_or_else(|| format!("entry {k} is on disk but does not read as a hit (partial?)"))?;
        let i = u64::try_from(hit.exit_code())
            .map_err(|_| format!("entry {k}: bad exit code {}", hit.exit_code()))?;
        let i = (0..)
            .map(|n: u64| n * 1_000_000 + i)
            .take(1000)
            .find(|&n| key(n) == *digest)
            .ok_or_else(|| format!("entry {k}: its exit code {i} names another key"))?;
        let ws = tempfile::tempdir().map_err(|e| e.to_string())?;
        hit.restore(ws.path())
            .await
            .map_err(|e| format!("restore {k} (entry {i}): {e}"))?;
        let (files, stdout) = expected(i);
        for (path, content, exec) in files {
            let p = ws.path().join(&path);
            let got = std::fs::read(&p).map_err(|e| format!("entry {i}: {path}: {e}"))?;
            if got != content {
                return Err(format!("entry {i}: {path} restored with wrong bytes"));
            }
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&p)
                    .map_err(|e| e.to_string())?
                    .permissions()
                    .mode();
                if (mode & 0o111 != 0) != exec {
                    return Err(format!("entry {i}: {path} has the wrong executable bit"));
                }
            }
        }
        let link = std::fs::read_link(ws.path().join(format!("out/{i}/link")))
            .map_err(|e| format!("entry {i}: symlink: {e}"))?;
        if link != Path::new("small.txt") {
            return Err(format!("entry {i}: symlink points to {}", link.display()));
        }
        let (out, err) = hit
            .logs()
            .await
            .map_err(|e| format!("logs of entry {i}: {e}"))?;
        if out.as_deref() != Some(&stdout[..]) || err.is_some() {
            return Err(format!("entry {i}: wrong logs"));
        }
    }
    let v = cache
        .storage()
        .verify()
        .await
        .map_err(|e| format!("verify: {e}"))?;
    if v.blobs_removed + v.entries_removed + v.entries_incomplete_removed > 0 {
        return Err(format!("verify found corruption after a kill: {v:?}"));
    }
    Ok(report)
}

/// Outcome of one trial.
#[derive(Debug, Clone, Copy)]
pub struct Trial {
    /// Whether the child was still running when killed (else it had died on its own).
    pub killed_running: bool,
    /// What the check found.
    pub report: CheckReport,
}

/// Starts `child` (a command that ends up in [`child_main`] for `dir`), SIGKILLs it
/// after `delay`, and checks the directory.
pub fn trial(mut child: Command, dir: &Path, start: u64, delay: Duration) -> Result<Trial, String> {
    let mut proc = child
        .env(CHILD_ENV, dir)
        .env(START_ENV, start.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("start the storing child: {e}"))?;
    std::thread::sleep(delay);
    let killed_running = proc.try_wait().map_err(|e| e.to_string())?.is_none();
    // std's kill is SIGKILL on Unix.
    proc.kill().map_err(|e| format!("kill the child: {e}"))?;
    let status = proc.wait().map_err(|e| e.to_string())?;
    if !killed_running && !status.success() {
        return Err(format!("the storing child failed on its own: {status}"));
    }
    let report = check(dir)?;
    Ok(Trial {
        killed_running,
        report,
    })
}

/// Set to a seed printed by an earlier run to replay its delays and start offsets.
pub const SEED_ENV: &str = "TASKCACHE_DRILL_SEED";

/// A small xorshift generator for delays and start offsets (no dependency).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from [`SEED_ENV`] if set, else from the clock and the process id. The
    /// seed is printed so a failure can be replayed.
    pub fn from_env_or_time(what: &str) -> Self {
        let seed = std::env::var(SEED_ENV)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_secs() ^ u64::from(d.subsec_nanos()) << 20);
                t ^ (u64::from(std::process::id()) << 32)
            });
        eprintln!("{what}: seed {seed} (replay with {SEED_ENV}={seed})");
        Rng(seed | 1)
    }

    /// A generator with a given seed (e.g. one drawn from another generator).
    pub fn from_seed(seed: u64) -> Self {
        Rng(seed | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// The child side of a re-executed test or tool: if this process is a drill child,
/// run the storing loop (never returns); otherwise return.
pub fn child_if_requested() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let start = std::env::var(START_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        child_main(Path::new(&dir), start);
    }
}
