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
//! * `grpc(s)://` is recognised and refused: its backend is being added. Refusing beats
//!   silently running uncached, which would look like a working remote.

use crate::Failure;
use crate::location::Location;
use cache_core::sign::{PublicKey, SigningKey, parse_trusted_keys};
use cache_core::storage::Storage;
use cache_core::{Cache, CacheBackend, CircuitBreaker, Deadline, Deadlines, Tiered, TieredStats};
use cache_local::{LocalCache, LocalOptions, LocalStorage};
use cache_s3::{S3Options, S3Storage};
use std::path::PathBuf;
use std::sync::Arc;

/// Consecutive transport failures after which the remote is skipped for the run.
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
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tier::Local(p) => write!(f, "local {}", p.display()),
            Tier::Object { shown, .. } => write!(f, "object store {shown}"),
        }
    }
}

/// The tier for `role`, refusing kinds this build has no backend for.
pub fn require_supported(loc: Location, role: Role) -> Result<Tier, Failure> {
    match loc {
        Location::ObjectStore { url, shown } => Ok(Tier::Object { url, shown }),
        other => require_local(other, role).map(Tier::Local),
    }
}

/// Object store client options for calls bounded by `deadlines`: each request, with
/// its retries, gives up within the same time the tier's deadline allows.
pub fn s3_options(deadlines: Deadlines) -> S3Options {
    S3Options::default().with_timeout(deadlines.call)
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
    };
    let Some(remote) = remote else {
        return Ok(Opened {
            backend: front,
            describe,
            tiered: None,
            local: cache,
        });
    };
    let shared: cache_core::BackendResult<Arc<dyn CacheBackend>> = match remote {
        Tier::Local(dir) => cache_local::open(dir, LocalOptions::default())
            .map(|c| Arc::new(signing.apply(c)) as Arc<dyn CacheBackend>),
        Tier::Object { url, .. } => open_object(url, &s3_options(deadlines), signing)
            .map(|c| Arc::new(c) as Arc<dyn CacheBackend>),
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
/// [`CircuitBreaker`] (timeouts count), so a dead remote costs one deadline per run.
pub fn tiered(
    local: Arc<dyn CacheBackend>,
    shared: Arc<dyn CacheBackend>,
    describe: String,
    deadlines: Deadlines,
) -> Opened {
    let shared: Arc<dyn CacheBackend> = Arc::new(CircuitBreaker::new(
        bounded(shared, deadlines),
        BREAKER_THRESHOLD,
    ));
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
            let Err(Failure::Usage(msg)) = require_local(loc, Role::Remote) else {
                panic!("{raw} accepted")
            };
            assert!(
                msg.contains("not yet supported") && msg.contains("--remote"),
                "{msg}"
            );
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
