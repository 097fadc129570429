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
//! 'I' u64(n) entries...                   every input found
//!     file:    str(path) 'f' content
//!     special: str(path) 's' str(kind)    a FIFO, socket or device: never opened
//!     symlink: str(path) 'L' str(link text) target
//!       content: 0|1(executable) 32 bytes(content digest) u64(size)
//!       target:  'f' content              a regular file, wherever it is
//!              | 's' str(kind)            a FIFO, socket or device: never opened
//!              | 'd'                      a directory inside the workspace (walked)
//!              | 'n' str(reason)          not followed: "outside-workspace" | "cycle" | "dangling"
//! 'T' str(salt)
//! 'Y'                                     only when the task allows absolute symlink outputs
//! ```
//!
//! `kind` is `"fifo"`, `"socket"`, `"char-device"`, `"block-device"` or `"unknown"`.
//! Until symlink targets joined the key a symlink was `str(path) 'l' str(link text)`;
//! that tag is retired, so a key computed with a symlink among the inputs never equals
//! one computed the old way, and a key without one is unchanged (hence still version 1).
//!
//! Paths are relative to the workspace with `/` separators, so the key does not depend
//! on where the workspace is or on the platform. Patterns are globs (`*` stays within a
//! directory, `**` crosses directories); a pattern without glob characters naming a
//! directory means every file below it. A pattern that matches nothing is an error,
//! because it is almost always a typo that would make the key ignore real inputs.
//!
//! # Symlinks and special files
//!
//! What a build reads through a path is what joins the key under that path, whether a
//! glob matched it or it was named literally:
//!
//! * A symlink joins with its link text **and** its target, resolved through any chain
//!   of links: a regular file's content and executable bit (even when the file is
//!   outside the workspace: reading it is bounded), or a directory inside the workspace,
//!   which is walked like a real one, its files keyed under the path through the link
//!   (`src/a.rs` for a link `src -> real`) and filtered by the same glob.
//! * A directory outside the workspace is never walked. A link to one met by a walk
//!   joins as `"outside-workspace"` with a warning (the key cannot see its files; name
//!   them one by one, which reads them, or copy them in). A pattern that names such a
//!   link, or whose base directory is reached through one (`-i out/*.h` with
//!   `out -> /usr/include`), is an error: nothing it names could be keyed.
//! * A link to a directory that contains the link, or contains a link being followed,
//!   would loop: it joins as `"cycle"` and is not walked again. A link to nothing (or
//!   to a chain of links that loops) joins as `"dangling"`.
//! * Links are followed at most 40 deep inside one another, and at most 100,000 entries
//!   are visited below followed links per key; beyond either the key is an error rather
//!   than an unbounded walk.
//! * A FIFO, socket or device (met directly or through a link) is never opened: it joins
//!   by its kind and path with a warning, so adding or removing one changes the key and
//!   a socket left by a dev server does not break the build. Regular files are opened
//!   without following a final symlink and without blocking, and their type is checked
//!   through the open handle.

use crate::{BackendResult, BlobRef, Digest, DigestAlgorithm, RelPath, Task};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

mod inputs;

/// One input as it joined the key (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputFile {
    /// A regular file.
    File {
        /// Content address.
        blob: BlobRef,
        /// Executable bit.
        executable: bool,
    },
    /// A FIFO, socket or device: never opened; only its kind and path join the key.
    Special {
        /// `"fifo"`, `"socket"`, `"char-device"`, `"block-device"` or `"unknown"`.
        kind: &'static str,
    },
    /// A symlink: its text and what it leads to.
    Symlink {
        /// The link text.
        text: String,
        /// A [`InputFile::File`], [`InputFile::Special`], [`InputFile::Directory`] or
        /// [`InputFile::Unfollowed`] (chains of links are resolved to their end).
        target: Box<InputFile>,
    },
    /// A symlink's target: a directory inside the workspace, walked (its files are
    /// inputs of their own, under the link's path).
    Directory,
    /// A symlink's target that is not followed.
    Unfollowed {
        /// `"outside-workspace"` (a directory outside the workspace), `"cycle"` (a
        /// directory holding the link or a link being followed) or `"dangling"`.
        reason: &'static str,
    },
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
    absolute_symlinks: bool,
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
            absolute_symlinks: false,
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
        b.absolute_symlinks(task.allow_absolute_symlinks)
    }

    /// Whether the task may cache symlinks with absolute targets
    /// ([`Task::allow_absolute_symlinks`]): such a task has a key of its own.
    #[must_use]
    pub fn absolute_symlinks(mut self, allow: bool) -> Self {
        self.absolute_symlinks = allow;
        self
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
            encode_input(&mut e, f);
        }
        e.tag(b'T');
        e.u64(self.salt.len() as u64);
        e.raw(&self.salt);
        if self.absolute_symlinks {
            e.tag(b'Y');
        }
        Ok((e.0.finalize(), inputs))
    }

    fn collect_inputs(&self, workspace: &Path) -> BackendResult<BTreeMap<String, InputFile>> {
        inputs::collect(workspace, self.algorithm, &self.patterns)
    }
}

fn encode_input(e: &mut Enc, f: &InputFile) {
    match f {
        InputFile::File { blob, executable } => {
            e.raw(b"f");
            e.raw(&[u8::from(*executable)]);
            e.raw(blob.digest.as_bytes());
            e.u64(blob.size);
        }
        InputFile::Special { kind } => {
            e.raw(b"s");
            e.str(kind);
        }
        InputFile::Symlink { text, target } => {
            e.raw(b"L");
            e.str(text);
            encode_input(e, target);
        }
        InputFile::Directory => e.raw(b"d"),
        InputFile::Unfollowed { reason } => {
            e.raw(b"n");
            e.str(reason);
        }
    }
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
