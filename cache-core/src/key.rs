//! Task digests: the cache key of a task, from its command, declared environment,
//! declared outputs, the *contents* of its input files, and a salt.
//!
//! # Encoding (version 1)
//!
//! The key is `<algorithm>:<hex>` of the hash, with the same algorithm, of this byte
//! string. `str(x)` is the UTF-8 bytes of `x` preceded by their length as a u64
//! little-endian; `u64(n)` is 8 bytes little-endian; lists are sorted by their first
//! field and have no duplicates.
//!
//! ```text
//! "taskcache-key\0" u64(1)
//! 'A' str(algorithm name: "sha256" | "blake3")
//! 'C' u64(n) str(arg)...                  command and arguments, in order
//! 'S' 0|1                                 run through a shell
//! 'E' u64(n) (str(name) 0 | str(name) 1 str(value))...   declared env, unset = 0
//! 'O' u64(n) str(path)...                 declared outputs, normalized
//! 'G' u64(n) str(pattern)...              input patterns as given
//! 'I' u64(n) entries...                   every input file found
//!     file:    str(path) 'f' 0|1(executable) 32 bytes(content digest) u64(size)
//!     symlink: str(path) 'l' str(link text)
//! 'T' str(salt)
//! ```
//!
//! Paths are relative to the workspace with `/` separators, so the key does not depend
//! on where the workspace is or on the platform. Patterns are globs (`*` stays within a
//! directory, `**` crosses directories); a pattern without glob characters naming a
//! directory means every file below it. A pattern that matches nothing is an error,
//! because it is almost always a typo that would make the key ignore real inputs.

use crate::error::truncate;
use crate::mode::is_executable;
use crate::{BackendError, BackendResult, BlobRef, Digest, DigestAlgorithm, RelPath, Task};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One input file as it joined the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputFile {
    /// A regular file.
    File {
        /// Content address.
        blob: BlobRef,
        /// Executable bit.
        executable: bool,
    },
    /// A symlink (not followed: its text joins the key).
    Symlink(String),
}

/// Builds task digests. See the module docs for the exact encoding.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("main.c"), "int main(){}").unwrap();
/// let key = cache_core::TaskKeyBuilder::default()
///     .command(["cc", "main.c"])
///     .env("CC", Some("gcc"))
///     .input("*.c")
///     .output("a.out")
///     .build(dir.path())
///     .unwrap();
/// assert!(key.to_string().starts_with("blake3:"));
/// ```
#[derive(Debug, Clone)]
pub struct TaskKeyBuilder {
    algorithm: DigestAlgorithm,
    command: Vec<String>,
    shell: bool,
    env: BTreeMap<String, Option<String>>,
    patterns: BTreeSet<String>,
    outputs: BTreeSet<String>,
    salt: Vec<u8>,
}

impl Default for TaskKeyBuilder {
    fn default() -> Self {
        TaskKeyBuilder::new(DigestAlgorithm::Blake3)
    }
}

impl TaskKeyBuilder {
    /// An empty builder hashing with `algorithm`.
    #[must_use]
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        TaskKeyBuilder {
            algorithm,
            command: Vec::new(),
            shell: false,
            env: BTreeMap::new(),
            patterns: BTreeSet::new(),
            outputs: BTreeSet::new(),
            salt: Vec::new(),
        }
    }

    /// A builder holding everything a [`Task`] declares (command, shell, env with its
    /// declared values, inputs, outputs).
    #[must_use]
    pub fn from_task(task: &Task, algorithm: DigestAlgorithm) -> Self {
        let mut b = TaskKeyBuilder::new(algorithm)
            .command(task.command.iter().cloned())
            .shell(task.shell);
        for (k, v) in &task.env {
            b = b.env(k, Some(v.as_str()));
        }
        for i in &task.inputs {
            b = b.input(i);
        }
        for o in &task.outputs {
            b = b.output(&o.path);
        }
        b
    }

    /// Sets the command and its arguments.
    #[must_use]
    pub fn command<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.command = args.into_iter().map(Into::into).collect();
        self
    }

    /// Whether the command runs through a shell.
    #[must_use]
    pub fn shell(mut self, shell: bool) -> Self {
        self.shell = shell;
        self
    }

    /// Declares an environment variable and its value (`None`: unset).
    #[must_use]
    pub fn env(mut self, name: impl Into<String>, value: Option<&str>) -> Self {
        self.env.insert(name.into(), value.map(str::to_owned));
        self
    }

    /// Adds an input glob, relative to the workspace.
    #[must_use]
    pub fn input(mut self, pattern: impl Into<String>) -> Self {
        self.patterns.insert(pattern.into());
        self
    }

    /// Declares an output path (its name joins the key; its content does not).
    #[must_use]
    pub fn output(mut self, path: impl Into<String>) -> Self {
        self.outputs.insert(path.into());
        self
    }

    /// Adds a salt, e.g. a cache version or the toolchain's identity.
    #[must_use]
    pub fn salt(mut self, salt: impl Into<Vec<u8>>) -> Self {
        self.salt = salt.into();
        self
    }

    /// Computes the key, reading inputs under `workspace` (blocking).
    pub fn build(&self, workspace: &Path) -> BackendResult<Digest> {
        self.build_with_inputs(workspace).map(|(k, _)| k)
    }

    /// Computes the key and also returns the input files that joined it.
    pub fn build_with_inputs(
        &self,
        workspace: &Path,
    ) -> BackendResult<(Digest, BTreeMap<String, InputFile>)> {
        let inputs = self.collect_inputs(workspace)?;
        let mut e = Enc(self.algorithm.hasher());
        e.raw(b"taskcache-key\0");
        e.u64(1);
        e.tag(b'A');
        e.str(self.algorithm.as_str());
        e.tag(b'C');
        e.u64(self.command.len() as u64);
        for a in &self.command {
            e.str(a);
        }
        e.tag(b'S');
        e.raw(&[u8::from(self.shell)]);
        e.tag(b'E');
        e.u64(self.env.len() as u64);
        for (k, v) in &self.env {
            e.str(k);
            match v {
                None => e.raw(&[0]),
                Some(v) => {
                    e.raw(&[1]);
                    e.str(v);
                }
            }
        }
        let outputs = self
            .outputs
            .iter()
            .map(|o| RelPath::parse(o).map(|r| r.to_string()))
            .collect::<BackendResult<BTreeSet<_>>>()?;
        e.tag(b'O');
        e.u64(outputs.len() as u64);
        for o in &outputs {
            e.str(o);
        }
        e.tag(b'G');
        e.u64(self.patterns.len() as u64);
        for p in &self.patterns {
            e.str(p);
        }
        e.tag(b'I');
        e.u64(inputs.len() as u64);
        for (path, f) in &inputs {
            e.str(path);
            match f {
                InputFile::File { blob, executable } => {
                    e.raw(b"f");
                    e.raw(&[u8::from(*executable)]);
                    e.raw(blob.digest.as_bytes());
                    e.u64(blob.size);
                }
                InputFile::Symlink(t) => {
                    e.raw(b"l");
                    e.str(t);
                }
            }
        }
        e.tag(b'T');
        e.u64(self.salt.len() as u64);
        e.raw(&self.salt);
        Ok((e.0.finalize(), inputs))
    }

    fn collect_inputs(&self, workspace: &Path) -> BackendResult<BTreeMap<String, InputFile>> {
        let mut found = BTreeMap::new();
        for pattern in &self.patterns {
            let before = found.len();
            let matched = expand(workspace, pattern, self.algorithm, &mut found)?;
            if !matched && found.len() == before {
                return Err(BackendError::InvalidInput {
                    pattern: truncate(pattern),
                    reason: format!(
                        "input pattern matched no files under {}; fix the pattern or remove it",
                        workspace.display()
                    ),
                });
            }
        }
        Ok(found)
    }
}

fn bad_pattern(pattern: &str, reason: &str) -> BackendError {
    BackendError::InvalidInput {
        pattern: truncate(pattern),
        reason: format!("bad input pattern: {reason}"),
    }
}

fn has_glob_chars(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

/// Expands one pattern into `found`; returns whether it matched anything.
fn expand(
    workspace: &Path,
    pattern: &str,
    algorithm: DigestAlgorithm,
    found: &mut BTreeMap<String, InputFile>,
) -> BackendResult<bool> {
    if pattern.starts_with('/') || pattern.contains('\\') || pattern.contains('\0') {
        return Err(bad_pattern(
            pattern,
            "give a relative pattern with `/` separators",
        ));
    }
    let parts: Vec<&str> = pattern
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(bad_pattern(
            pattern,
            "`..` is not allowed; inputs must be inside the workspace",
        ));
    }
    let literal: Vec<&str> = parts
        .iter()
        .take_while(|p| !has_glob_chars(p))
        .copied()
        .collect();
    let base_rel = literal.join("/");
    let base = literal
        .iter()
        .fold(workspace.to_path_buf(), |p, c| p.join(c));
    let normalized = parts.join("/");

    let Ok(meta) = std::fs::symlink_metadata(&base) else {
        return Ok(false);
    };
    if literal.len() == parts.len() {
        // No glob characters: a file, a symlink, or a directory meaning all below it.
        if !meta.is_dir() {
            found.insert(base_rel, read_input(&base, &meta, algorithm)?);
            return Ok(true);
        }
        return walk(workspace, &base, None, algorithm, found);
    }
    if !meta.is_dir() {
        return Ok(false);
    }
    let glob = globset::GlobBuilder::new(&normalized)
        .literal_separator(true)
        .build()
        .map_err(|e| bad_pattern(pattern, &e.to_string()))?
        .compile_matcher();
    walk(workspace, &base, Some(&glob), algorithm, found)
}

fn walk(
    workspace: &Path,
    base: &Path,
    glob: Option<&globset::GlobMatcher>,
    algorithm: DigestAlgorithm,
    found: &mut BTreeMap<String, InputFile>,
) -> BackendResult<bool> {
    let mut matched = false;
    for entry in walkdir::WalkDir::new(base)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| {
            let path = e
                .path()
                .map_or_else(|| base.to_path_buf(), Path::to_path_buf);
            BackendError::io_with_context("read input", path, e.into())
        })?;
        if entry.file_type().is_dir() {
            continue;
        }
        let rel = rel_string(workspace, entry.path())?;
        if let Some(g) = glob {
            if !g.is_match(&rel) {
                continue;
            }
        }
        matched = true;
        if found.contains_key(&rel) {
            continue;
        }
        let meta = entry
            .metadata()
            .map_err(|e| BackendError::io_with_context("inspect input", entry.path(), e.into()))?;
        let input = read_input(entry.path(), &meta, algorithm)?;
        found.insert(rel, input);
    }
    Ok(matched)
}

fn rel_string(workspace: &Path, path: &Path) -> BackendResult<String> {
    let rel = path.strip_prefix(workspace).unwrap_or(path);
    let mut parts = Vec::new();
    for c in rel.components() {
        let s = c
            .as_os_str()
            .to_str()
            .ok_or_else(|| BackendError::InvalidInput {
                pattern: rel.display().to_string(),
                reason: "input file names must be valid UTF-8 to join the key".into(),
            })?;
        parts.push(s);
    }
    Ok(parts.join("/"))
}

fn read_input(
    path: &Path,
    meta: &std::fs::Metadata,
    algorithm: DigestAlgorithm,
) -> BackendResult<InputFile> {
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path)
            .map_err(|e| BackendError::io_with_context("read input symlink", path, e))?;
        return Ok(InputFile::Symlink(target.to_string_lossy().into_owned()));
    }
    let mut f = std::fs::File::open(path)
        .map_err(|e| BackendError::io_with_context("read input", path, e))?;
    let blob = crate::digest::hash_reader(&mut f, algorithm)
        .map_err(|e| BackendError::io_with_context("read input", path, e))?;
    Ok(InputFile::File {
        blob,
        executable: is_executable(meta),
    })
}

struct Enc(crate::Hasher);

impl Enc {
    fn raw(&mut self, b: &[u8]) {
        self.0.update(b);
    }
    fn tag(&mut self, t: u8) {
        self.0.update(&[t]);
    }
    fn u64(&mut self, n: u64) {
        self.0.update(&n.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.update(s.as_bytes());
    }
}
