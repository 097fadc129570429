//! Task digests: the cache key of a task, from its command, declared environment,
//! declared outputs, the *contents* of its input files, the platform it runs on, and
//! the caller's salt, if any.
//!
//! # One key for executors and the `taskcache` command
//!
//! [`TaskKeyBuilder::from_task`] is the key. `taskcache key` and `taskcache run`
//! describe their task as a [`Task`] and key it with exactly this function, adding no
//! salt and no platform of their own. So an executor that describes the same task the
//! same way, and hashes with BLAKE3 (the command's algorithm), gets the key the command
//! prints for the same workspace contents, on the same platform, and the two share
//! entries. "The same way" means: `command` the arguments as given (the command never
//! uses a shell: `shell` is false), `env` the declared variables that are set, with
//! their values (a declared variable that is unset is left out), `inputs` the `-i`
//! patterns, `outputs` the `-o` paths, `allow_absolute_symlinks` as
//! `--allow-absolute-symlinks`. The task's `id` and policy do not join the key.
//! (The command writes an argument or value that is not UTF-8 as `"\0"` and the hex of
//! its bytes; a `Task` holds only UTF-8.)
//!
//! ```
//! use cache_core::{DigestAlgorithm, Platform, Task, TaskKeyBuilder, TaskOutput};
//! # fn main() -> cache_core::BackendResult<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let ws = dir.path();
//! std::fs::write(ws.join("main.c"), "int main(){}").unwrap();
//! let mut task = Task::new("build", ["cc", "main.c"]);
//! task.env.insert("CC".into(), "gcc".into());
//! task.inputs.push("*.c".into());
//! task.outputs.push(TaskOutput { path: "a.out".into(), kind: Default::default() });
//! // With CC=gcc set, `taskcache key -e CC -i '*.c' -o a.out -- cc main.c` prints this:
//! let key = TaskKeyBuilder::from_task(&task, DigestAlgorithm::Blake3).build(ws)?;
//!
//! // A key names its platform: the same task on two platforms has two keys.
//! let on = |os, arch| {
//!     TaskKeyBuilder::from_task(&task, DigestAlgorithm::Blake3)
//!         .platform(Platform::new(os, arch))
//!         .build(ws)
//! };
//! assert_ne!(on("linux", "x86_64")?, on("macos", "aarch64")?);
//! assert_eq!(key, on(std::env::consts::OS, std::env::consts::ARCH)?);
//!
//! // Outputs that are the same everywhere may opt out: one key on every platform.
//! let anywhere = TaskKeyBuilder::from_task(&task, DigestAlgorithm::Blake3).portable();
//! assert_ne!(anywhere.build(ws)?, key);
//! # Ok(()) }
//! ```
//!
//! # Platform
//!
//! By default a key names the platform it is computed on, [`Platform::current`]: the
//! operating system and CPU architecture as Rust names them (`linux`, `macos`,
//! `windows`; `x86_64`, `aarch64`). A tier shared by Linux and macOS runners (or x86-64
//! and ARM ones) thus never hands one the other's binaries. Two opt-outs, both explicit:
//!
//! * [`TaskKeyBuilder::portable`]: no platform, for a caller who knows the task's
//!   outputs are the same wherever it runs (a formatter's check, generated sources,
//!   documentation); every platform then shares one entry. A portable key never equals
//!   a key with a platform.
//! * [`TaskKeyBuilder::platform`]: another platform's key (to look up what a runner of
//!   that platform stored; tests).
//!
//! Anything finer that outputs depend on (the C library, a compiler's version) is the
//! caller's to add: declare the variable that carries it, or a [`TaskKeyBuilder::salt`].
//!
//! # Encoding (version 2, [`KEY_FORMAT_VERSION`])
//!
//! The key is `<algorithm>:<hex>` of the hash, with the same algorithm, of this byte
//! string. `str(x)` is the UTF-8 bytes of `x` preceded by their length as a u64
//! little-endian; `u64(n)` is 8 bytes little-endian; lists are sorted by their first
//! field and have no duplicates.
//!
//! ```text
//! "taskcache-key\0" u64(2)
//! 'A' str(algorithm name: "sha256" | "blake3")
//! 'P' 1 str(os) str(arch)                 the platform (default: the current one)
//!   | 0                                   portable: no platform
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
//! 'T' str(salt)                           the caller's salt (empty unless set)
//! 'Y'                                     only when the task allows absolute symlink outputs
//! ```
//!
//! `kind` is `"fifo"`, `"socket"`, `"char-device"`, `"block-device"` or `"unknown"`.
//!
//! Version 1 had no `'P'`: a key named a platform only if its caller salted it with
//! one, which the command did (`taskcache-cli-key/2`, the OS and the architecture) and
//! the library did not, so the two disagreed and a library key fit every platform.
//! The version is hashed, so no version-2 key equals a version-1 key: entries stored
//! under version-1 keys are misses once, and are replaced as tasks run. (Within
//! version 1, symlinks were once keyed as `str(path) 'l' str(link text)`; that tag is
//! retired.)
//!
//! Paths are relative to the workspace with `/` separators, so the key does not depend
//! on where the workspace is, nor on how the platform spells paths. Patterns are globs
//! (`*` stays within a directory, `**` crosses directories); a pattern without glob characters naming a
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
use std::fmt;
use std::path::Path;

mod inputs;

/// The version of the key encoding (see the module docs). Every key changes when it
/// does; it is hashed into every key.
pub const KEY_FORMAT_VERSION: u64 = 2;

/// The platform a key is for: an operating system and a CPU architecture, named as
/// Rust names them (`std::env::consts::OS` and `ARCH`). Displayed as `os/arch`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    os: String,
    arch: String,
}

impl Platform {
    /// The platform this process runs on (the default of every key).
    #[must_use]
    pub fn current() -> Self {
        Platform::new(std::env::consts::OS, std::env::consts::ARCH)
    }

    /// A platform by name: `os` as `"linux"`, `"macos"`, `"windows"`, and `arch` as
    /// `"x86_64"`, `"aarch64"` (other spellings make other keys).
    #[must_use]
    pub fn new(os: impl Into<String>, arch: impl Into<String>) -> Self {
        Platform {
            os: os.into(),
            arch: arch.into(),
        }
    }

    /// The operating system.
    #[must_use]
    pub fn os(&self) -> &str {
        &self.os
    }

    /// The CPU architecture.
    #[must_use]
    pub fn arch(&self) -> &str {
        &self.arch
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)
    }
}

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

/// Builds task digests: [`TaskKeyBuilder::from_task`] is the key the `taskcache`
/// command computes too. Every key names [`Platform::current`] unless told otherwise
/// ([`TaskKeyBuilder::platform`], [`TaskKeyBuilder::portable`]). See the module docs
/// for the exact encoding.
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
    /// `None`: portable.
    platform: Option<Platform>,
}

impl Default for TaskKeyBuilder {
    fn default() -> Self {
        TaskKeyBuilder::new(DigestAlgorithm::Blake3)
    }
}

impl TaskKeyBuilder {
    /// An empty builder hashing with `algorithm`, for the current platform.
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
            platform: Some(Platform::current()),
        }
    }

    /// The key of `task`: everything it declares (command, shell, env with its declared
    /// values, inputs, outputs, whether absolute symlinks are allowed) and the current
    /// platform. `taskcache key` prints this key for the task it describes (see "One
    /// key for executors and the `taskcache` command" in the module docs).
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

    /// Adds a salt, e.g. a cache version or the toolchain's identity. The `taskcache`
    /// command adds none: a salted key is not the command's key.
    #[must_use]
    pub fn salt(mut self, salt: impl Into<Vec<u8>>) -> Self {
        self.salt = salt.into();
        self
    }

    /// Keys for `platform` instead of the current one (another platform's key, to find
    /// what its runners stored; tests).
    #[must_use]
    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = Some(platform);
        self
    }

    /// Leaves the platform out of the key: one key on every platform. Only for a task
    /// whose outputs are the same wherever it runs (formatting checks, generated
    /// sources, documentation); a binary keyed this way would be handed to every
    /// platform sharing the tier. A portable key never equals a key with a platform,
    /// nor the command's key.
    #[must_use]
    pub fn portable(mut self) -> Self {
        self.platform = None;
        self
    }

    /// The platform the keys name, `None` when portable.
    #[must_use]
    pub fn key_platform(&self) -> Option<&Platform> {
        self.platform.as_ref()
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
        e.u64(KEY_FORMAT_VERSION);
        e.tag(b'A');
        e.str(self.algorithm.as_str());
        e.tag(b'P');
        match &self.platform {
            None => e.raw(&[0]),
            Some(p) => {
                e.raw(&[1]);
                e.str(&p.os);
                e.str(&p.arch);
            }
        }
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
