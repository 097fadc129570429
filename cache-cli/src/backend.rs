//! From `--cache` / `--remote` to a [`CacheBackend`].
//!
//! * The cache (`--cache`, `$TASKCACHE_CACHE`, else the platform cache dir) is a local
//!   directory opened with `cache-local`.
//! * A remote (`--remote`) that is a local directory becomes the shared tier of a
//!   [`Tiered`] cache, behind a [`CircuitBreaker`] so that a remote that keeps failing
//!   is skipped for the rest of the run instead of costing a timeout per call.
//! * `s3://`, `gs://`, `az://` and `grpc(s)://` are recognised and refused: their
//!   backends are being added. Refusing beats silently running uncached, which would
//!   look like a working remote.

use crate::Failure;
use crate::location::Location;
use cache_core::sign::{PublicKey, SigningKey, parse_trusted_keys};
use cache_core::{CacheBackend, CircuitBreaker, Deadline, Deadlines, Tiered, TieredStats};
use cache_local::{LocalCache, LocalOptions, LocalStorage};
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
        other @ Location::Planned { .. } => Err(Failure::Usage(format!(
            "{} {other}: {} caches are not yet supported in this build; \
             use a local directory or a file:// URL for now",
            role.flag(),
            other.kind()
        ))),
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

    fn apply(&self, mut cache: LocalCache) -> LocalCache {
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
    dir: &PathBuf,
    remote: Option<&PathBuf>,
    signing: &Signing,
    deadlines: Deadlines,
) -> cache_core::BackendResult<Opened> {
    let cache = signing.apply(cache_local::open(dir, LocalOptions::default())?);
    // Even the local directory may hang (a network filesystem): every tier is bounded.
    let local = bounded(Arc::new(cache.clone()), deadlines);
    let describe = format!("local {}", dir.display());
    let Some(remote) = remote else {
        return Ok(Opened {
            backend: local,
            describe,
            tiered: None,
            local: Some(cache),
        });
    };
    match cache_local::open(remote, LocalOptions::default()).map(|c| signing.apply(c)) {
        Ok(shared) => Ok(Opened {
            local: Some(cache),
            ..tiered(
                local,
                Arc::new(shared),
                format!("{describe} + remote {}", remote.display()),
                deadlines,
            )
        }),
        Err(e) => {
            tracing::warn!(
                "remote cache {} cannot be opened, continuing with the local cache only: {e}",
                remote.display()
            );
            Ok(Opened {
                backend: local,
                describe,
                tiered: None,
                local: Some(cache),
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
        for raw in [
            "s3://my-bucket/ci",
            "grpc://cache.internal:8980/main",
            "grpcs://h",
        ] {
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
    fn bad_locations_are_usage_errors() {
        let Err(Failure::Usage(msg)) = parse("ftp://nohost/x", Role::Remote) else {
            panic!("accepted")
        };
        assert!(msg.starts_with("--remote"), "{msg}");
    }
}
