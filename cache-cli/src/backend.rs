//! From `--cache` / `--remote` to a [`CacheBackend`].
//!
//! * The cache (`--cache`, `$TASKCACHE_CACHE`, else the platform cache dir) is a local
//!   directory opened with `cache-local`.
//! * A remote (`--remote`) that is a local directory becomes the shared tier of a
//!   [`Tiered`] cache, behind a [`CircuitBreaker`] so that a remote that keeps failing
//!   is skipped for the rest of the run instead of costing a timeout per call.
//! * An object store (`s3://`, `gs://`, `az://`, [`cache_s3`]) may be the cache itself
//!   (`--cache s3://...`: no local tier) or the shared tier behind the local one
//!   (`--remote s3://...`), configured by the environment (`AWS_*`); its client's
//!   request timeout and retry budget are the `--cache-timeout` every tier has.
//! * A remote that is `grpc://` or `grpcs://` is a REAPI v2 cache (`cache-remote`),
//!   the shared tier the same way, with headers, CA and client certificate from
//!   `--remote-header` and the `TASKCACHE_REMOTE_*` variables ([`ReapiSettings`]); its
//!   per-call deadline is `--cache-timeout` too.

use crate::Failure;
use crate::location::Location;
use cache_core::sign::{PublicKey, SigningKey, parse_trusted_keys};
use cache_core::storage::Storage;
use cache_core::{Cache, CacheBackend, CircuitBreaker, Deadline, Deadlines, Tiered, TieredStats};
use cache_local::{LocalCache, LocalOptions, LocalStorage};
use cache_s3::{S3Options, S3Storage};
use std::path::PathBuf;
use std::sync::Arc;

/// Consecutive cache faults (a corrupt entry, ...) after which the remote is skipped
/// for the run. A timeout or an unreachable server skips it at once
/// ([`CircuitBreaker::open_on_outage`]): a run makes only two calls (a lookup and a
/// store), so counting to three would never skip anything.
pub const BREAKER_THRESHOLD: u32 = 3;

/// Which flag a location came from, for messages.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// `--cache`.
    Cache,
    /// `--remote`.
    Remote,
}

impl Role {
    fn flag(self) -> &'static str {
        match self {
            Role::Cache => "--cache",
            Role::Remote => "--remote",
        }
    }
}

/// Parses a location given for `role`, without refusing unsupported kinds.
pub fn parse(raw: &str, role: Role) -> Result<Location, Failure> {
    Location::parse(raw).map_err(|e| Failure::Usage(format!("{}: {e}", role.flag())))
}

/// The local directory for `role`, refusing kinds this build has no backend for.
pub fn require_local(loc: Location, role: Role) -> Result<PathBuf, Failure> {
    match loc {
        Location::Local(p) => Ok(p),
        Location::ObjectStore { shown, .. } => Err(Failure::Usage(format!(
            "{} {shown}: this command works on a local cache directory only",
            role.flag()
        ))),
        Location::Reapi(url) => Err(Failure::Usage(format!(
            "{} {url}: a REAPI server can only be the shared tier (--remote), \
             behind a local cache directory",
            role.flag()
        ))),
        other @ Location::Planned { .. } => Err(Failure::Usage(format!(
            "{} {other}: {} caches are not yet supported in this build; \
             use a local directory or a file:// URL for now",
            role.flag(),
            other.kind()
        ))),
    }
}

/// A cache tier this build can open.
#[derive(Debug, Clone)]
pub enum Tier {
    /// A local cache directory.
    Local(PathBuf),
    /// An object store bucket and prefix.
    Object {
        /// The URL (no credentials: those come from the environment).
        url: url::Url,
        /// The URL as shown.
        shown: String,
    },
    /// A REAPI v2 server (`--remote` only): a checked, credential-free `grpc(s)://` URL.
    Reapi(String),
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tier::Local(p) => write!(f, "local {}", p.display()),
            Tier::Object { shown, .. } => write!(f, "object store {shown}"),
            Tier::Reapi(url) => write!(f, "REAPI {url}"),
        }
    }
}

/// The tier for `role`, refusing kinds this build has no backend for.
pub fn require_supported(loc: Location, role: Role) -> Result<Tier, Failure> {
    match loc {
        Location::ObjectStore { url, shown } => Ok(Tier::Object { url, shown }),
        Location::Reapi(url) if matches!(role, Role::Remote) => Ok(Tier::Reapi(url)),
        other => require_local(other, role).map(Tier::Local),
    }
}

/// Object store client options for calls bounded by `deadlines`: each request, with
/// its retries, gives up within the time the tier's deadline allows it. The interval
/// between rewrites of an entry's `used/` marker is [`TOUCH_INTERVAL_VAR`]'s, if set.
pub fn s3_options(deadlines: Deadlines) -> S3Options {
    let options = S3Options::default().with_deadlines(deadlines);
    let interval = touch_interval(
        std::env::var(TOUCH_INTERVAL_VAR).ok().as_deref(),
        options.touch_interval,
    );
    options.with_touch_interval(interval)
}

/// How often a hit on an object store may rewrite its entry's `used/` marker (the
/// last use `gc --unused-for` reads). It can only be shortened from the default (a
/// day): for tests and drills that evict by last use within seconds, where a marker
/// written once a day would make every entry look unused.
pub const TOUCH_INTERVAL_VAR: &str = "TASKCACHE_TOUCH_INTERVAL";

/// [`TOUCH_INTERVAL_VAR`]'s value, `raw`, as an interval no longer than `default`; a
/// longer or unreadable value is warned about and `default` used.
fn touch_interval(raw: Option<&str>, default: std::time::Duration) -> std::time::Duration {
    let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
        return default;
    };
    match crate::cli::parse_duration(raw) {
        Ok(d) if d <= default => d,
        Ok(_) => {
            tracing::warn!(
                "{TOUCH_INTERVAL_VAR} can only shorten the interval (at most {}): using {0}",
                crate::size::format_duration(default)
            );
            default
        }
        Err(e) => {
            tracing::warn!(
                "{TOUCH_INTERVAL_VAR}: {e}; using the default ({})",
                crate::size::format_duration(default)
            );
            default
        }
    }
}

/// Opens the object store `url` as a cache (no local tier), its blocking work on
/// tokio's pool.
pub fn open_object(
    url: &url::Url,
    options: &S3Options,
    signing: &Signing,
) -> cache_core::BackendResult<Cache<S3Storage>> {
    let storage = S3Storage::open(url, options.clone())?;
    Ok(signing.apply(Cache::new(storage, |job| {
        tokio::task::spawn_blocking(job);
    })))
}

/// How to reach a REAPI remote beyond its URL: headers (`--remote-header NAME:VALUE`,
/// `TASKCACHE_REMOTE_HEADERS`), a CA (`TASKCACHE_REMOTE_CA`), a client certificate and
/// key for mutual TLS (`TASKCACHE_REMOTE_CERT`, `TASKCACHE_REMOTE_KEY`: PEM files) and
/// the per-call deadline in seconds (`TASKCACHE_REMOTE_TIMEOUT`, default: `--cache-timeout`). Header
/// values and the key are secrets: never in `Debug`, errors or logs.
#[derive(Clone, Default)]
pub struct ReapiSettings {
    headers: Vec<String>,
    env: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for ReapiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReapiSettings")
            .field("headers", &self.headers.len())
            .field("env", &self.env.iter().map(|(k, _)| *k).collect::<Vec<_>>())
            .finish()
    }
}

/// The headers variable (secret: tokens).
pub const REMOTE_HEADERS_VAR: &str = "TASKCACHE_REMOTE_HEADERS";
/// The variable naming the client key file for mutual TLS.
pub const REMOTE_KEY_VAR: &str = "TASKCACHE_REMOTE_KEY";

/// The variables [`ReapiSettings`] reads.
pub const REAPI_VARS: &[&str] = &[
    REMOTE_HEADERS_VAR,
    "TASKCACHE_REMOTE_CA",
    "TASKCACHE_REMOTE_CERT",
    REMOTE_KEY_VAR,
    "TASKCACHE_REMOTE_TIMEOUT",
];

/// The variables holding taskcache's own secrets, or naming where one is: the signing
/// key, the remote's headers, the client key file. They are removed from the
/// command's environment ([`crate::runner`]): its output is stored in the cache and
/// replayed to every job that shares it, so a step that prints its environment would
/// hand out the key that makes an entry trusted. Not here: the public ones
/// (`TASKCACHE_TRUSTED_KEYS`, the CA and certificate, locations, deadlines), and the
/// cloud provider's own credentials (`AWS_*`, ...), which taskcache does not own and the
/// step may need.
pub const SECRET_VARS: &[&str] = &[SIGNING_KEY_VAR, REMOTE_HEADERS_VAR, REMOTE_KEY_VAR];

impl ReapiSettings {
    /// `headers` from the flag; the variables through `var`.
    pub fn new(headers: Vec<String>, var: impl Fn(&str) -> Option<String>) -> Self {
        let env = REAPI_VARS
            .iter()
            .filter_map(|k| var(k).filter(|v| !v.trim().is_empty()).map(|v| (*k, v)))
            .collect();
        ReapiSettings { headers, env }
    }

    fn var(&self, k: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.as_str())
    }

    /// The configuration for `url`. Errors name the flag or variable, never a value.
    pub fn config(
        &self,
        url: &str,
        deadlines: Deadlines,
    ) -> Result<cache_remote::RemoteConfig, String> {
        let mut c = cache_remote::RemoteConfig::from_url(url)?;
        c.call_timeout = deadlines.call;
        c.connect_timeout = std::time::Duration::from_secs(3).min(c.call_timeout);
        if let Some(t) = self.var("TASKCACHE_REMOTE_TIMEOUT") {
            let secs: f64 = t
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s > 0.0)
                .ok_or("TASKCACHE_REMOTE_TIMEOUT must be a number of seconds")?;
            c.call_timeout = std::time::Duration::from_secs_f64(secs);
            c.connect_timeout = c.connect_timeout.min(c.call_timeout);
        }
        if let Some(list) = self.var("TASKCACHE_REMOTE_HEADERS") {
            c = c
                .headers_from_list(list)
                .map_err(|e| format!("TASKCACHE_REMOTE_HEADERS: {e}"))?;
        }
        for h in &self.headers {
            c = c
                .headers_from_list(h)
                .map_err(|e| format!("--remote-header: {e}"))?;
        }
        let read = |k: &str| -> Result<Option<Vec<u8>>, String> {
            self.var(k)
                .map(|p| std::fs::read(p).map_err(|e| format!("{k}: cannot read the file: {e}")))
                .transpose()
        };
        let (ca, cert, key) = (
            read("TASKCACHE_REMOTE_CA")?,
            read("TASKCACHE_REMOTE_CERT")?,
            read("TASKCACHE_REMOTE_KEY")?,
        );
        if ca.is_some() || cert.is_some() || key.is_some() {
            let Some(tls) = c.tls.as_mut() else {
                return Err("TASKCACHE_REMOTE_CA/CERT/KEY need a grpcs:// remote".into());
            };
            tls.ca_pem = ca;
            tls.cert_pem = cert;
            tls.key_pem = key
                .map(|k| String::from_utf8(k).map(cache_remote::Secret::new))
                .transpose()
                .map_err(|_| "TASKCACHE_REMOTE_KEY is not a PEM file")?;
        }
        Ok(c)
    }
}

/// The cache directory: `--cache`/`$TASKCACHE_CACHE` if given, else the platform default.
pub fn cache_dir(raw: Option<&str>) -> Result<PathBuf, Failure> {
    match raw.filter(|s| !s.is_empty()) {
        Some(raw) => require_local(parse(raw, Role::Cache)?, Role::Cache),
        None => LocalStorage::default_dir().ok_or_else(|| {
            Failure::Usage(
                "no cache directory: neither XDG_CACHE_HOME nor HOME is set; \
                 pass --cache DIR or set TASKCACHE_CACHE"
                    .into(),
            )
        }),
    }
}

/// An opened cache and how to describe it.
pub struct Opened {
    /// The backend to call.
    pub backend: Arc<dyn CacheBackend>,
    /// For `-v` lines: `local /path` or `local /path + remote /other`.
    pub describe: String,
    /// When tiered: what the shared tier did.
    pub tiered: Option<Arc<TieredStats>>,
    /// The local cache directory's own handle, where each run's outcome is counted.
    pub local: Option<LocalCache>,
}

/// Opens the local cache in `dir` and, if given, the remote directory behind it.
///
/// A remote that cannot be opened is a warning, not an error: the run goes on with the
/// local tier only, as it would with a remote that is down.
/// Signed entries, from the environment: `TASKCACHE_SIGNING_KEY` (a trusted writer's
/// secret) signs what this run stores; `TASKCACHE_TRUSTED_KEYS` (public keys) makes
/// every tier accept only entries signed by one of them.
#[derive(Debug, Clone, Default)]
pub struct Signing {
    signer: Option<SigningKey>,
    trusted: Option<Vec<PublicKey>>,
}

/// The signing-key variable.
pub const SIGNING_KEY_VAR: &str = "TASKCACHE_SIGNING_KEY";
/// The trusted-keys variable.
pub const TRUSTED_KEYS_VAR: &str = "TASKCACHE_TRUSTED_KEYS";

impl Signing {
    /// Reads both variables through `var`; a malformed value is a usage error that
    /// names the variable, never its value.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, Failure> {
        let nonempty = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let signer = nonempty(SIGNING_KEY_VAR)
            .map(|v| {
                v.parse::<SigningKey>().map_err(|_| {
                    Failure::Usage(format!(
                        "{SIGNING_KEY_VAR} is not a signing key (expected taskcache-sk- and 64 hex \
                         digits, as `taskcache keygen` prints)"
                    ))
                })
            })
            .transpose()?;
        let trusted = nonempty(TRUSTED_KEYS_VAR)
            .map(|v| {
                parse_trusted_keys(&v).map_err(|_| {
                    Failure::Usage(format!(
                        "{TRUSTED_KEYS_VAR} must list public keys (taskcache-pk- and 64 hex digits), \
                         separated by commas or spaces"
                    ))
                })
            })
            .transpose()?;
        Ok(Signing { signer, trusted })
    }

    fn apply<S: Storage>(&self, mut cache: Cache<S>) -> Cache<S> {
        if let Some(key) = &self.signer {
            cache = cache.with_signer(key.clone());
        }
        if let Some(keys) = &self.trusted {
            cache = cache.with_trusted_keys(keys.clone());
        }
        cache
    }
}

pub fn open(
    front: &Tier,
    remote: Option<&Tier>,
    signing: &Signing,
    deadlines: Deadlines,
    reapi: &ReapiSettings,
) -> cache_core::BackendResult<Opened> {
    let describe = front.to_string();
    // Every tier is bounded, even a local directory (a network filesystem may hang).
    let (front, cache): (Arc<dyn CacheBackend>, Option<LocalCache>) = match front {
        Tier::Local(dir) => {
            let cache = signing.apply(cache_local::open(dir, LocalOptions::default())?);
            (bounded(Arc::new(cache.clone()), deadlines), Some(cache))
        }
        Tier::Object { url, .. } => (
            bounded(
                Arc::new(open_object(url, &s3_options(deadlines), signing)?),
                deadlines,
            ),
            None,
        ),
        Tier::Reapi(url) => {
            return Err(cache_core::BackendError::unavailable(format!(
                "{url}: a REAPI server can only be the shared tier (--remote)"
            )));
        }
    };
    let Some(remote) = remote else {
        return Ok(Opened {
            backend: front,
            describe,
            tiered: None,
            local: cache,
        });
    };
    let shared: Result<Arc<dyn CacheBackend>, String> = match remote {
        Tier::Local(dir) => cache_local::open(dir, LocalOptions::default())
            .map(|c| Arc::new(signing.apply(c)) as Arc<dyn CacheBackend>)
            .map_err(|e| e.to_string()),
        Tier::Object { url, .. } => open_object(url, &s3_options(deadlines), signing)
            .map(|c| Arc::new(c) as Arc<dyn CacheBackend>)
            .map_err(|e| e.to_string()),
        Tier::Reapi(url) => reapi.config(url, deadlines).and_then(|config| {
            // Needs the runtime (the channel connects lazily on it): callers enter it.
            cache_remote::RemoteStorage::open(config)
                .map(|s| {
                    let c = Cache::new(s, |job| {
                        tokio::task::spawn_blocking(job);
                    });
                    Arc::new(signing.apply(c)) as Arc<dyn CacheBackend>
                })
                .map_err(|e| e.to_string())
        }),
    };
    match shared {
        Ok(shared) => Ok(Opened {
            local: cache,
            ..tiered(
                front,
                shared,
                format!("{describe} + remote {remote}"),
                deadlines,
            )
        }),
        Err(e) => {
            tracing::warn!(
                "remote cache {remote} cannot be opened, continuing with the local cache only: {e}"
            );
            Ok(Opened {
                backend: front,
                describe,
                tiered: None,
                local: cache,
            })
        }
    }
}

/// `backend` with a deadline on every call (tokio's timer).
pub fn bounded(backend: Arc<dyn CacheBackend>, deadlines: Deadlines) -> Arc<dyn CacheBackend> {
    Arc::new(Deadline::new(
        backend,
        deadlines,
        Arc::new(|d| Box::pin(tokio::time::sleep(d))),
    ))
}

/// `local` in front of `shared`, the shared tier bounded by `deadlines` and behind a
/// [`CircuitBreaker`] that opens at the first outage, so a dead or silent remote costs
/// one deadline per run.
pub fn tiered(
    local: Arc<dyn CacheBackend>,
    shared: Arc<dyn CacheBackend>,
    describe: String,
    deadlines: Deadlines,
) -> Opened {
    let shared: Arc<dyn CacheBackend> = Arc::new(
        CircuitBreaker::new(bounded(shared, deadlines), BREAKER_THRESHOLD).open_on_outage(),
    );
    let tiered = Tiered::new(local, shared);
    let stats = tiered.stats();
    Opened {
        backend: Arc::new(tiered),
        describe,
        tiered: Some(stats),
        local: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_kinds_are_refused_with_a_usage_error() {
        for raw in ["grpc://cache.internal:8980/main", "grpcs://h"] {
            let loc = Location::parse(raw).unwrap();
            let Err(Failure::Usage(msg)) = require_supported(loc.clone(), Role::Cache) else {
                panic!("{raw} accepted as the cache")
            };
            assert!(msg.contains("shared tier (--remote)"), "{msg}");
            assert!(matches!(
                require_supported(loc, Role::Remote),
                Ok(Tier::Reapi(_))
            ));
        }
        assert_eq!(
            require_local(Location::Local("/x".into()), Role::Cache).ok(),
            Some(PathBuf::from("/x"))
        );
    }

    #[test]
    fn object_stores_are_tiers_but_not_local_directories() {
        let loc = Location::parse("s3://my-bucket/ci").unwrap();
        assert!(matches!(
            require_supported(loc.clone(), Role::Remote),
            Ok(Tier::Object { .. })
        ));
        let Err(Failure::Usage(msg)) = require_local(loc, Role::Cache) else {
            panic!("an object store taken for a directory")
        };
        assert!(msg.contains("local cache directory only"), "{msg}");
    }

    #[test]
    fn the_touch_interval_can_only_be_shortened() {
        use std::time::Duration;
        let day = Duration::from_secs(86_400);
        assert_eq!(touch_interval(None, day), day);
        assert_eq!(touch_interval(Some(" "), day), day);
        assert_eq!(touch_interval(Some("2s"), day), Duration::from_secs(2));
        assert_eq!(touch_interval(Some("0"), day), Duration::ZERO);
        assert_eq!(touch_interval(Some("1d"), day), day);
        assert_eq!(touch_interval(Some("2d"), day), day, "longer: the default");
        assert_eq!(
            touch_interval(Some("soon"), day),
            day,
            "unreadable: the default"
        );
    }

    #[test]
    fn the_object_store_client_gives_up_within_the_cache_timeout() {
        use std::time::Duration;
        let o = s3_options(Deadlines::new(Duration::from_secs(3)));
        assert_eq!(o.retry.retry_timeout, Duration::from_secs(3));
    }

    #[test]
    fn bad_locations_are_usage_errors() {
        let Err(Failure::Usage(msg)) = parse("ftp://nohost/x", Role::Remote) else {
            panic!("accepted")
        };
        assert!(msg.starts_with("--remote"), "{msg}");
    }
}
