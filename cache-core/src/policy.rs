//! Cache policy: who may read and write, and how a global override combines with a task's own.

use serde::{Deserialize, Serialize};

/// What a task may do with the cache.
///
/// | policy | `check` | `store` |
/// |---|---|---|
/// | `Normal` | looks up | writes |
/// | `Readonly` | looks up | no-op |
/// | `Writeonly` | miss, no I/O | writes |
/// | `Disabled` | miss, no I/O | no-op |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CachePolicy {
    /// Read and write.
    #[default]
    Normal,
    /// Read only: hits are used, results are never stored (e.g. untrusted pull requests).
    Readonly,
    /// Write only: always run, store the result (e.g. to re-seed a cache).
    Writeonly,
    /// No cache at all.
    Disabled,
}

impl CachePolicy {
    /// All four policies, for exhaustive tests.
    pub const ALL: [CachePolicy; 4] = [
        CachePolicy::Normal,
        CachePolicy::Readonly,
        CachePolicy::Writeonly,
        CachePolicy::Disabled,
    ];

    fn from_flags(read: bool, write: bool) -> Self {
        match (read, write) {
            (true, true) => CachePolicy::Normal,
            (true, false) => CachePolicy::Readonly,
            (false, true) => CachePolicy::Writeonly,
            (false, false) => CachePolicy::Disabled,
        }
    }

    /// The lowercase name, as in task JSON and on the command line.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CachePolicy::Normal => "normal",
            CachePolicy::Readonly => "readonly",
            CachePolicy::Writeonly => "writeonly",
            CachePolicy::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for CachePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CachePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "normal" => Ok(CachePolicy::Normal),
            "readonly" => Ok(CachePolicy::Readonly),
            "writeonly" => Ok(CachePolicy::Writeonly),
            "disabled" => Ok(CachePolicy::Disabled),
            other => Err(format!(
                "unknown cache policy {other:?}: use normal, readonly, writeonly or disabled"
            )),
        }
    }
}

/// Determine if cache read is allowed for a policy.
#[must_use]
pub fn policy_allows_read(policy: CachePolicy) -> bool {
    matches!(policy, CachePolicy::Normal | CachePolicy::Readonly)
}

/// Determine if cache write is allowed for a policy.
#[must_use]
pub fn policy_allows_write(policy: CachePolicy) -> bool {
    matches!(policy, CachePolicy::Normal | CachePolicy::Writeonly)
}

/// The policy a backend call should use for a task.
///
/// * A `deployment` task is always [`CachePolicy::Disabled`]: deploying is a side
///   effect, and replaying a cached "success" would skip it.
/// * The task's own `cache_policy` and the global override (`None` for no override)
///   are **intersected**: a read (or write) is allowed only if both allow it. So a
///   global `Readonly` (the usual setting for untrusted pull requests) can never be
///   widened back to writing by a task, and a task that says `Disabled` stays disabled
///   whatever the global setting.
///
/// ```
/// use cache_core::{effective_policy, CachePolicy, Task};
/// let task = Task::new("build", ["make"]);
/// assert_eq!(effective_policy(&task, Some(CachePolicy::Readonly)), CachePolicy::Readonly);
/// let mut deploy = Task::new("deploy", ["./deploy.sh"]);
/// deploy.deployment = true;
/// assert_eq!(effective_policy(&deploy, None), CachePolicy::Disabled);
/// ```
#[must_use]
pub fn effective_policy(task: &crate::Task, global_override: Option<CachePolicy>) -> CachePolicy {
    if task.deployment {
        return CachePolicy::Disabled;
    }
    let own = task.cache_policy;
    let global = global_override.unwrap_or(CachePolicy::Normal);
    CachePolicy::from_flags(
        policy_allows_read(own) && policy_allows_read(global),
        policy_allows_write(own) && policy_allows_write(global),
    )
}
