//! The task description the cache is keyed on, as the origin executor's IR gives it.

use crate::CachePolicy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How an output is handed on after the task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputType {
    /// Kept in the cache (the default).
    #[default]
    Cas,
    /// Kept in the cache and also handed to the CI system's own artifact store by the executor.
    Orchestrator,
}

/// A declared output of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutput {
    /// Path relative to the workspace: a file or a directory.
    pub path: String,
    /// Where the executor sends it besides the cache.
    #[serde(rename = "type", default)]
    pub kind: OutputType,
}

/// A task as the executor describes it. Deserializes from the origin's task JSON;
/// fields the cache does not use (`runtime`, `depends_on`, `label`, ...) are ignored.
///
/// ```
/// let task: cache_core::Task = serde_json::from_str(r#"{
///     "id": "build-web", "command": ["npm", "run", "build"], "runtime": "node-20",
///     "outputs": [{"path": "web/dist", "type": "cas"}], "cache_policy": "readonly"
/// }"#).unwrap();
/// assert_eq!(task.cache_policy, cache_core::CachePolicy::Readonly);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Task name, for logs and metrics.
    pub id: String,
    /// The command and its arguments.
    #[serde(default)]
    pub command: Vec<String>,
    /// Whether `command` is run through a shell.
    #[serde(default)]
    pub shell: bool,
    /// Declared environment: these variables (and only these) join the task digest.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Input globs, relative to the workspace; the matching files' contents join the digest.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Declared outputs.
    #[serde(default)]
    pub outputs: Vec<TaskOutput>,
    /// The task's own cache policy.
    #[serde(default)]
    pub cache_policy: CachePolicy,
    /// A deployment task is never cached (see [`crate::effective_policy`]).
    #[serde(default)]
    pub deployment: bool,
    /// Opt-in: symlink outputs with absolute targets (a Python `.venv`) are cached and
    /// restored as link text, never followed. Off by default, and part of the key, so
    /// a task that does not opt in never restores such a link.
    #[serde(default)]
    pub allow_absolute_symlinks: bool,
}

impl Task {
    /// A task with the given id and command and every other field at its default.
    pub fn new<I, S>(id: impl Into<String>, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Task {
            id: id.into(),
            command: command.into_iter().map(Into::into).collect(),
            shell: false,
            env: BTreeMap::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            cache_policy: CachePolicy::Normal,
            deployment: false,
            allow_absolute_symlinks: false,
        }
    }
}

impl Task {
    /// The declared output paths, normalized; a path that is not a valid relative path
    /// is [`crate::BackendError::InvalidOutput`] naming it (the caller's fault).
    pub fn declared_outputs(&self) -> crate::BackendResult<Vec<crate::RelPath>> {
        self.outputs
            .iter()
            .map(|o| {
                crate::RelPath::parse(&o.path).map_err(|e| crate::BackendError::InvalidOutput {
                    path: crate::error::truncate(&o.path),
                    reason: format!("the task declares an output path that is not valid: {e}"),
                })
            })
            .collect()
    }

    /// After the command ran: this task's declared outputs under `workspace`, ready for
    /// the entry handed to [`crate::CacheBackend::store_key`] ([`crate::collect_outputs_with`]
    /// with [`Task::declared_outputs`] and the task's [`Task::allow_absolute_symlinks`]
    /// opt-in). Files are named, never read.
    ///
    /// Blocking filesystem work: call it on a blocking thread from async code. An error
    /// is [`crate::BackendError::InvalidOutput`] naming the output (a declared output
    /// missing, an escaping symlink, a special file): the caller's, so the run is not
    /// stored.
    ///
    /// ```
    /// let ws = tempfile::tempdir()?;
    /// let ws = ws.path().canonicalize()?;
    /// std::fs::create_dir_all(ws.join("dist"))?;
    /// std::fs::write(ws.join("dist/app.js"), b"console.log(1)")?;
    /// let mut task = cache_core::Task::new("build", ["npm", "run", "build"]);
    /// task.outputs.push(cache_core::TaskOutput { path: "dist".into(), kind: Default::default() });
    /// let outs = task.collect_outputs(&ws)?;
    /// let paths: Vec<&str> = outs.iter().map(|o| o.path.as_str()).collect();
    /// assert_eq!(paths, ["dist", "dist/app.js"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn collect_outputs(
        &self,
        workspace: &std::path::Path,
    ) -> crate::BackendResult<Vec<crate::CacheOutput>> {
        crate::collect_outputs_with(
            workspace,
            &self.declared_outputs()?,
            self.allow_absolute_symlinks,
        )
    }
}
