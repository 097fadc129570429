//! The breaker inside one process: the library stack as `taskcache` composes it
//! (`cache-cli/src/backend.rs`: a local tier, then `CircuitBreaker` over `Deadline` over
//! the server's `Cache`), here with a cool-down, driven in this process while the real
//! server is frozen and thawed, or killed and restarted: it trips at the first call
//! that meets the silent server, skips it at once while open, and after the cool-down
//! lets one call through (half-open) that closes it again.

use super::server::{Kind, Server};
use super::{MARGIN, TIMEOUT};
use cache_core::{
    Cache, CacheBackend, CachePolicy, CircuitBreaker, Deadline, Deadlines, Digest, Sleep, Task,
    Tiered,
};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the breaker skips the server before trying it again.
const COOLDOWN: Duration = Duration::from_secs(1);

fn shared(server: &Server) -> Result<Arc<dyn CacheBackend>, String> {
    let spawn = |job: Box<dyn FnOnce() + Send>| {
        tokio::task::spawn_blocking(job);
    };
    Ok(match server.kind {
        Kind::S3 => {
            let url = url::Url::parse(&server.url()).map_err(|e| e.to_string())?;
            let vars = server.vars();
            let options = cache_s3::S3Options::default().with_timeout(TIMEOUT);
            let s = cache_s3::S3Storage::open_with_env(&url, options, &|k| {
                vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
            })
            .map_err(|e| e.to_string())?;
            Arc::new(Cache::new(s, spawn))
        }
        Kind::Reapi => {
            let mut c = cache_remote::RemoteConfig::from_url(&server.url())?;
            c.call_timeout = TIMEOUT;
            c.connect_timeout = TIMEOUT;
            let s = cache_remote::RemoteStorage::open(c).map_err(|e| e.to_string())?;
            Arc::new(Cache::new(s, spawn))
        }
    })
}

/// Trip, skip, half-open, closed: once with the server frozen, once killed. Returns
/// what it saw, or what went wrong.
pub fn run(server: &mut Server, local: &Path) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let _in = rt.enter();
    let sleep: Sleep = Arc::new(|d| Box::pin(tokio::time::sleep(d)));
    let deadlines = Deadlines::new(TIMEOUT);
    let local = cache_local::open(local, cache_local::LocalOptions::default())
        .map_err(|e| e.to_string())?;
    let front: Arc<dyn CacheBackend> =
        Arc::new(Deadline::new(Arc::new(local), deadlines, sleep.clone()));
    let bounded: Arc<dyn CacheBackend> = Arc::new(Deadline::new(shared(server)?, deadlines, sleep));
    let breaker = Arc::new(
        CircuitBreaker::new(bounded, 3)
            .open_on_outage()
            .with_cooldown(COOLDOWN),
    );
    let stack = Tiered::new(front, breaker.clone());
    let task = Task::new("drill-stack", ["true"]);
    let mut n = 0u8;
    // A new key per lookup, so the local tier never answers.
    let mut lookup = || {
        n = n.wrapping_add(1);
        let key = Digest::parse(&format!("blake3:{:02x}{}", n, "5a".repeat(31)))
            .map_err(|e| e.to_string())?;
        let t = Instant::now();
        let r = rt.block_on(stack.lookup(&task, &key, CachePolicy::Normal));
        match r {
            Ok(None) => Ok(t.elapsed()),
            Ok(Some(_)) => Err("an unknown key hit".to_owned()),
            Err(e) => Err(format!("the tiered lookup failed: {e}")),
        }
    };
    let mut seen = Vec::new();
    for freeze in [true, false] {
        let what = if freeze { "frozen" } else { "killed" };
        lookup()?;
        if breaker.is_open() {
            return Err(format!("{what}: open before the fault"));
        }
        if freeze {
            server.freeze();
        } else {
            server.kill();
        }
        let tripped = lookup()?;
        if !breaker.is_open() {
            return Err(format!("{what}: a failed lookup did not open the breaker"));
        }
        if tripped > TIMEOUT + MARGIN {
            return Err(format!(
                "{what}: the lookup took {tripped:?}, over its deadline"
            ));
        }
        let skipped = lookup()?;
        if skipped > Duration::from_millis(500) || !breaker.is_open() {
            return Err(format!(
                "{what}: while open a lookup took {skipped:?} (open: {})",
                breaker.is_open()
            ));
        }
        if freeze {
            server.thaw();
        } else {
            server.start()?;
        }
        std::thread::sleep(COOLDOWN);
        let probe = lookup()?;
        if breaker.is_open() {
            return Err(format!(
                "{what}: after the server was back and the cool-down passed, a lookup \
                 ({probe:?}) did not close the breaker"
            ));
        }
        seen.push(format!(
            "{what}: tripped in {:.1}s, skipped in {:.0}ms, half-open lookup closed it in {:.0}ms",
            tripped.as_secs_f64(),
            skipped.as_secs_f64() * 1000.0,
            probe.as_secs_f64() * 1000.0
        ));
    }
    Ok(format!("in one process: {}", seen.join("; ")))
}
