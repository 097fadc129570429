//! Why a task hit or missed: what went into its key, and what changed since the last
//! entry stored under its `--id`.
//!
//! `taskcache key --explain` prints a [`Why`]'s report; `taskcache run -vv` logs the
//! same at debug level. When a run with `--id ID` stores an entry, a small manifest of
//! that key's inputs is kept at `<cache>/ids/<digest of ID>.json`; when a later run
//! (at `-v`) or `key --explain` with the same id computes another key, the difference
//! is shown: files added, removed or changed, variables whose value changed, arguments,
//! outputs, patterns, or the key format or platform.
//!
//! The manifest holds the declared variables' names with a digest of each value,
//! never the value. That tells nothing the key does not already: the key is itself a
//! digest over the same values. It holds at most [`MAX_FILES`] file digests (beyond
//! that only their count) and at most [`MAX_MANIFEST_BYTES`], is written to a temporary
//! file renamed into place, and is only ever used to explain: one that is missing,
//! too large, malformed, for another id or behind a symlink is ignored with a debug
//! log. It never changes a key, a hit or an exit code.

use crate::key::{TaskSpec, format_and_platform, key_builder, key_text};
use cache_core::{BlobRef, DigestAlgorithm, InputFile};
use serde_json::{Value, json};
use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The directory under the cache that holds the per-id manifests.
pub const IDS_DIR: &str = "ids";

/// Input files listed in a manifest, at most; beyond that only their count is kept.
pub const MAX_FILES: usize = 50_000;

/// Size of a manifest file, at most (written or read).
pub const MAX_MANIFEST_BYTES: u64 = 8 << 20;

/// Names the manifest's format; a file without it is not a manifest.
const MANIFEST_FORMAT: &str = "taskcache-id-manifest/1";

/// Names listed per kind of change in the one-line summary of `-v`.
const SUMMARY_NAMES: usize = 5;

/// What went into one key, in the form that is compared between runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The task digest.
    pub key: String,
    /// The key format version and platform ([`format_and_platform`]). Kept in the
    /// file as `"salt"`, its name when the command salted its keys with them, so an
    /// older manifest still compares and says the format changed.
    pub format: String,
    /// The command and arguments as they joined the key.
    pub args: Vec<String>,
    /// Whether the command ran through a shell.
    pub shell: bool,
    /// Declared variable name → digest of its value (`None`: unset).
    pub env: BTreeMap<String, Option<String>>,
    /// Input patterns as given.
    pub patterns: Vec<String>,
    /// Declared outputs, normalized.
    pub outputs: Vec<String>,
    /// Input path → what joined the key for it (digest, size, mode or link).
    pub files: BTreeMap<String, String>,
    /// Input files not listed (a stored manifest over [`MAX_FILES`]).
    pub files_omitted: u64,
}

/// A variable's value as the manifest keeps it: a digest, domain-separated by name.
fn value_digest(name: &str, value: &str) -> String {
    let mut bytes = Vec::with_capacity(name.len() + value.len() + 32);
    bytes.extend_from_slice(b"taskcache-env-value\0");
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(value.as_bytes());
    BlobRef::of(DigestAlgorithm::Blake3, &bytes)
        .digest
        .to_string()
}

/// One input as it joined the key, for people.
pub fn describe(f: &InputFile) -> String {
    match f {
        InputFile::File { blob, executable } => format!(
            "{} {} bytes{}",
            blob.digest,
            blob.size,
            if *executable { ", executable" } else { "" }
        ),
        InputFile::Special { kind } => format!("{kind} (not read)"),
        InputFile::Symlink { text, target } => {
            format!("symlink to {text:?}: {}", describe(target))
        }
        InputFile::Directory => "directory inside the workspace (walked)".into(),
        InputFile::Unfollowed { reason } => format!("not followed ({reason})"),
    }
}

impl Manifest {
    /// What went into `key` for `spec`, with variables read through `var`.
    pub fn new(
        spec: &TaskSpec,
        key: &str,
        inputs: &BTreeMap<String, InputFile>,
        var: impl Fn(&str) -> Option<OsString>,
    ) -> Manifest {
        let mut patterns = spec.inputs.clone();
        patterns.sort();
        patterns.dedup();
        let mut outputs: Vec<String> = spec.outputs.iter().map(ToString::to_string).collect();
        outputs.sort();
        outputs.dedup();
        Manifest {
            key: key.to_owned(),
            format: format_and_platform(&key_builder(spec, &var)),
            args: spec.command.iter().map(|a| key_text(a)).collect(),
            shell: false,
            env: spec
                .env
                .iter()
                .map(|n| {
                    let digest = var(n).map(|v| value_digest(n, &key_text(&v)));
                    (n.clone(), digest)
                })
                .collect(),
            patterns,
            outputs,
            files: inputs
                .iter()
                .map(|(path, f)| (path.clone(), describe(f)))
                .collect(),
            files_omitted: 0,
        }
    }

    /// Everything that went into the key, one line each (no trailing key line).
    pub fn detail_lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!("key format: {}", shown(&self.format)),
            format!(
                "command ({}): {}",
                if self.shell {
                    "through a shell"
                } else {
                    "no shell"
                },
                quoted(&self.args)
            ),
        ];
        if self.env.is_empty() {
            lines.push("variables: none declared".into());
        } else {
            let names: Vec<String> = self
                .env
                .iter()
                .map(|(n, v)| {
                    let set = if v.is_some() { "set" } else { "unset" };
                    format!("{} ({set})", shown(n))
                })
                .collect();
            lines.push(format!(
                "variables (names only; values are never shown): {}",
                names.join(", ")
            ));
        }
        lines.push(format!("outputs: {}", list_or_none(&self.outputs)));
        lines.push(format!("input patterns: {}", list_or_none(&self.patterns)));
        lines.push(format!("input files: {}", self.files.len()));
        for (path, what) in &self.files {
            lines.push(format!("  {}  {what}", shown(path)));
        }
        lines
    }

    /// The manifest file's content for `id`, or why it is not kept.
    fn to_json(&self, id: &str) -> Result<Vec<u8>, String> {
        let (files, omitted) = if self.files.len() > MAX_FILES {
            (BTreeMap::new(), self.files.len() as u64)
        } else {
            (self.files.clone(), self.files_omitted)
        };
        let value = json!({
            "format": MANIFEST_FORMAT,
            "id": id,
            "key": self.key,
            "salt": self.format,
            "args": self.args,
            "shell": self.shell,
            "env": self.env,
            "patterns": self.patterns,
            "outputs": self.outputs,
            "files": files,
            "files_omitted": omitted,
        });
        let bytes = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(format!(
                "it would take {} bytes, over the limit of {MAX_MANIFEST_BYTES}",
                bytes.len()
            ));
        }
        Ok(bytes)
    }

    /// Parses a manifest file; `Err` says why it is not one (for `id`).
    fn from_json(bytes: &[u8], id: &str) -> Result<Manifest, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let field = |name: &str| v.get(name).ok_or_else(|| format!("no {name:?} field"));
        let string = |name: &str| {
            field(name)?
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{name:?} is not a string"))
        };
        let strings = |name: &str| -> Result<Vec<String>, String> {
            field(name)?
                .as_array()
                .ok_or_else(|| format!("{name:?} is not a list"))?
                .iter()
                .map(|s| s.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| format!("{name:?} holds a non-string"))
        };
        if string("format")? != MANIFEST_FORMAT {
            return Err("another manifest format".into());
        }
        if string("id")? != id {
            return Err("it belongs to another id".into());
        }
        let env = field("env")?
            .as_object()
            .ok_or("\"env\" is not an object")?
            .iter()
            .map(|(k, d)| match d {
                Value::Null => Ok((k.clone(), None)),
                Value::String(s) => Ok((k.clone(), Some(s.clone()))),
                _ => Err(format!("the digest of {k:?} is not a string")),
            })
            .collect::<Result<_, String>>()?;
        let files = field("files")?
            .as_object()
            .ok_or("\"files\" is not an object")?
            .iter()
            .map(|(k, d)| {
                d.as_str()
                    .map(|s| (k.clone(), s.to_owned()))
                    .ok_or_else(|| format!("the entry of {k:?} is not a string"))
            })
            .collect::<Result<_, String>>()?;
        let key = string("key")?;
        cache_core::Digest::parse(&key).map_err(|_| "\"key\" is not a digest".to_owned())?;
        Ok(Manifest {
            key,
            format: string("salt")?,
            args: strings("args")?,
            shell: field("shell")?.as_bool().ok_or("\"shell\" is not a bool")?,
            env,
            patterns: strings("patterns")?,
            outputs: strings("outputs")?,
            files,
            files_omitted: field("files_omitted")?
                .as_u64()
                .ok_or("\"files_omitted\" is not a count")?,
        })
    }
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items
            .iter()
            .map(|i| shown(i))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A name as printed: quoted and escaped if it holds a control character, so that a
/// file name (or a planted manifest) cannot forge lines or escape sequences in a log.
fn shown(s: &str) -> String {
    if s.chars().any(char::is_control) {
        format!("{s:?}")
    } else {
        s.to_owned()
    }
}

/// What differs between the manifest of the last stored entry and this key's.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Input files in this key only.
    pub added: Vec<String>,
    /// Input files in the last stored key only.
    pub removed: Vec<String>,
    /// Input files whose content, size, mode or link differs.
    pub changed: Vec<String>,
    /// Variables whose value (or whether they are set or declared) differs, with how.
    pub env: Vec<String>,
    /// Other parts, each a line saying what they were.
    pub other: Vec<String>,
    /// The files of the last manifest were not listed (too many), so were not compared.
    pub files_unknown: bool,
}

impl Changes {
    /// The difference from `last` (the stored entry's manifest) to `now`.
    pub fn between(last: &Manifest, now: &Manifest) -> Changes {
        let mut c = Changes::default();
        if last.files_omitted > 0 {
            c.files_unknown = true;
        } else {
            for (path, what) in &now.files {
                match last.files.get(path) {
                    None => c.added.push(shown(path)),
                    Some(was) if was != what => c.changed.push(shown(path)),
                    Some(_) => {}
                }
            }
            c.removed = last
                .files
                .keys()
                .filter(|p| !now.files.contains_key(*p))
                .map(|p| shown(p))
                .collect();
        }
        for (name, value) in &now.env {
            let how = match (last.env.get(name), value) {
                (None, _) => "newly declared",
                (Some(was), now) if was == now => continue,
                (Some(None), Some(_)) => "now set",
                (Some(Some(_)), None) => "now unset",
                (Some(_), _) => "value changed",
            };
            c.env.push(format!("{} ({how})", shown(name)));
        }
        for name in last.env.keys().filter(|n| !now.env.contains_key(*n)) {
            c.env.push(format!("{} (no longer declared)", shown(name)));
        }
        if last.args != now.args || last.shell != now.shell {
            c.other
                .push(format!("command changed; it was: {}", quoted(&last.args)));
        }
        if last.outputs != now.outputs {
            let was = list_or_none(&last.outputs);
            c.other.push(format!("outputs changed; they were: {was}"));
        }
        if last.patterns != now.patterns {
            let was = list_or_none(&last.patterns);
            c.other
                .push(format!("input patterns changed; they were: {was}"));
        }
        if last.format != now.format {
            c.other.push(format!(
                "key format or platform changed; it was: {}",
                shown(&last.format)
            ));
        }
        c
    }

    fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.env.is_empty()
            && self.other.is_empty()
            && !self.files_unknown
    }

    /// One line per change.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        lines.extend(self.changed.iter().map(|p| format!("file changed: {p}")));
        lines.extend(self.added.iter().map(|p| format!("file added: {p}")));
        lines.extend(self.removed.iter().map(|p| format!("file removed: {p}")));
        lines.extend(self.env.iter().map(|v| format!("variable {v}")));
        lines.extend(self.other.iter().cloned());
        if self.files_unknown {
            lines.push("files not compared: the last manifest had too many to list".into());
        }
        lines
    }

    /// The changes in one line, naming at most a few files per kind.
    pub fn summary(&self) -> String {
        let names = |what: &str, list: &[String]| {
            let shown: Vec<&str> = list
                .iter()
                .take(SUMMARY_NAMES)
                .map(String::as_str)
                .collect();
            let more = list.len().saturating_sub(SUMMARY_NAMES);
            if more > 0 {
                format!("{what}: {} and {more} more", shown.join(", "))
            } else {
                format!("{what}: {}", shown.join(", "))
            }
        };
        let mut parts = Vec::new();
        for (what, list) in [
            ("changed", &self.changed),
            ("added", &self.added),
            ("removed", &self.removed),
        ] {
            if !list.is_empty() {
                parts.push(names(what, list));
            }
        }
        if !self.env.is_empty() {
            parts.push(format!("variables: {}", self.env.join(", ")));
        }
        parts.extend(self.other.iter().cloned());
        if self.files_unknown {
            parts.push("files not compared (too many)".into());
        }
        parts.join("; ")
    }
}

/// Where `id`'s manifest lives under `cache_dir`.
pub fn manifest_path(cache_dir: &Path, id: &str) -> PathBuf {
    let digest = BlobRef::of(
        DigestAlgorithm::Blake3,
        format!("taskcache-id\0{id}").as_bytes(),
    )
    .digest;
    cache_dir
        .join(IDS_DIR)
        .join(format!("{}.json", digest.hex()))
}

/// Keeps `m` as `id`'s manifest in the cache at `cache_dir`. Never fails the run: a
/// manifest that cannot be written is a debug log.
pub fn save(cache_dir: &Path, id: &str, m: &Manifest) {
    let path = manifest_path(cache_dir, id);
    if let Err(e) = try_save(cache_dir, &path, id, m) {
        tracing::debug!(
            "not keeping the manifest of {id} at {}: {e}",
            path.display()
        );
    }
}

fn try_save(cache_dir: &Path, path: &Path, id: &str, m: &Manifest) -> io::Result<()> {
    let other = |msg: String| io::Error::other(msg);
    // Only inside a cache, and never through a link planted in place of `ids`.
    if !std::fs::symlink_metadata(cache_dir.join(cache_local::LAYOUT_FILE))
        .is_ok_and(|m| m.is_file())
    {
        return Err(other("the directory is not a taskcache cache".into()));
    }
    let ids = cache_dir.join(IDS_DIR);
    match std::fs::symlink_metadata(&ids) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(other(format!("{} is not a directory", ids.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::create_dir(&ids) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        },
        Err(e) => return Err(e),
    }
    let bytes = m.to_json(id).map_err(other)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = ids.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    // `create_new` never follows a link at `tmp`; the rename replaces whatever is at
    // `path` (a link included) without following it.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    sweep(&ids);
    Ok(())
}

/// A temporary manifest older than this was left by a writer that died mid-write.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Entries of `ids/` looked at per sweep, at most: the sweep runs after every save.
const MAX_SWEEP: usize = 10_000;

/// Manifests kept, at most: beyond it (or [`MAX_IDS_BYTES`]) the least recently
/// written go, so `ids/` stays small with no `gc` (one per `--id`, and ids such as
/// `build-$BRANCH` keep coming).
pub const MAX_IDS: usize = 2_000;

/// Bytes of manifests kept, at most (see [`MAX_IDS`]).
pub const MAX_IDS_BYTES: u64 = 256 << 20;

/// After a save: removes temporary manifests (`.*.tmp` regular files) left over an
/// hour ago by writers that died before their rename, and the least recently written
/// manifests beyond [`MAX_IDS`] or [`MAX_IDS_BYTES`]. Nothing else in `ids/` is
/// touched, and no link is followed.
fn sweep(ids: &Path) {
    sweep_with(ids, MAX_IDS, MAX_IDS_BYTES);
}

fn sweep_with(ids: &Path, max_count: usize, max_bytes: u64) {
    let Ok(entries) = std::fs::read_dir(ids) else {
        return;
    };
    let now = std::time::SystemTime::now();
    let mut manifests = Vec::new();
    for entry in entries.take(MAX_SWEEP).flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let temp = name.starts_with('.') && name.ends_with(".tmp");
        let manifest = !name.starts_with('.') && name.ends_with(".json");
        if !(temp || manifest) {
            continue;
        }
        // `DirEntry::metadata` does not follow a symlink: only real files go.
        let Some(meta) = entry.metadata().ok().filter(std::fs::Metadata::is_file) else {
            continue;
        };
        let written = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        if manifest {
            manifests.push((written, meta.len(), entry.path()));
        } else if now
            .duration_since(written)
            .is_ok_and(|age| age > STALE_TEMP)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let mut bytes: u64 = manifests.iter().map(|m| m.1).sum();
    let mut count = manifests.len();
    if count <= max_count && bytes <= max_bytes {
        return;
    }
    // Oldest first; the manifest just written is the newest and is kept.
    manifests.sort_by_key(|m| m.0);
    for (_, len, path) in &manifests[..manifests.len().saturating_sub(1)] {
        if count <= max_count && bytes <= max_bytes {
            break;
        }
        if std::fs::remove_file(path).is_ok() {
            count -= 1;
            bytes = bytes.saturating_sub(*len);
        }
    }
}

/// `id`'s manifest in the cache at `cache_dir`, if there is a valid one.
pub fn load(cache_dir: &Path, id: &str) -> Option<Manifest> {
    let path = manifest_path(cache_dir, id);
    let bytes = match read_bounded(&path) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return None,
        Err(e) => {
            tracing::debug!("ignoring the manifest of {id} at {}: {e}", path.display());
            return None;
        }
    };
    match Manifest::from_json(&bytes, id) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::debug!("ignoring the manifest of {id} at {}: {e}", path.display());
            None
        }
    }
}

/// The file at `path` (not through a final symlink), at most [`MAX_MANIFEST_BYTES`];
/// `None` if there is none.
fn read_bounded(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match open_no_follow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(io::Error::other(format!(
            "larger than {MAX_MANIFEST_BYTES} bytes"
        )));
    }
    Ok(Some(bytes))
}

#[cfg(unix)]
fn open_no_follow(path: &Path) -> io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    Ok(rustix::fs::open(path, flags, Mode::empty())?.into())
}

#[cfg(not(unix))]
fn open_no_follow(path: &Path) -> io::Result<std::fs::File> {
    if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Err(io::Error::other("a symlink"));
    }
    std::fs::File::open(path)
}

/// The manifest of the last entry stored under an id, and what changed since.
type Last = Option<(Manifest, Changes)>;

/// One key's explanation, for one `run` or `key`: its manifest, and where the last
/// stored entry's manifest for an explicit `--id` is.
pub struct Why<'a> {
    spec: &'a TaskSpec,
    key: &'a str,
    inputs: &'a BTreeMap<String, InputFile>,
    /// What went into the key, worked out on first use: a hit never needs it, and
    /// listing every input costs time on large trees.
    now: OnceCell<Manifest>,
    /// The explicit `--id` and the local cache directory, when both are known.
    id_in: Option<(String, PathBuf)>,
}

impl<'a> Why<'a> {
    /// Explains `key`; logs what went into it at debug level (`-vv`).
    pub fn new(
        spec: &'a TaskSpec,
        key: &'a str,
        inputs: &'a BTreeMap<String, InputFile>,
        id: Option<&str>,
        cache_dir: Option<PathBuf>,
    ) -> Why<'a> {
        let id_in = id.zip(cache_dir).map(|(id, dir)| (id.to_owned(), dir));
        let why = Why {
            spec,
            key,
            inputs,
            now: OnceCell::new(),
            id_in,
        };
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!("key {key} is made of:");
            for line in why.now().detail_lines() {
                tracing::debug!("  {line}");
            }
        }
        why
    }

    fn now(&self) -> &Manifest {
        self.now.get_or_init(|| {
            Manifest::new(self.spec, self.key, self.inputs, |n| std::env::var_os(n))
        })
    }

    /// The `--id`, this key's manifest, and the last stored entry's with the changes
    /// since (if there is a valid one); `None` without an `--id`.
    fn changes(&self) -> Option<(&str, &Manifest, Last)> {
        let (id, dir) = self.id_in.as_ref()?;
        let now = self.now();
        let last = load(dir, id);
        Some((
            id,
            now,
            last.map(|l| {
                let c = Changes::between(&l, now);
                (l, c)
            }),
        ))
    }

    /// At `-v`: one line on what changed since the last entry stored under the `--id`.
    pub fn log_changes(&self) {
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        match self.changes() {
            None => {}
            Some((id, _, None)) => {
                tracing::debug!("{id}: no manifest of an earlier stored entry to compare with");
            }
            Some((id, now, Some((last, c)))) if c.is_empty() => tracing::info!(
                "{id}: no input changed since its last stored entry (key {}{})",
                last.key,
                if last.key == now.key {
                    ", the same key: the entry may have been evicted or not be readable"
                } else {
                    ""
                }
            ),
            Some((id, _, Some((last, c)))) => tracing::info!(
                "{id}: changed since its last stored entry (key {}): {}",
                last.key,
                c.summary()
            ),
        }
    }

    /// The full report of `key --explain`: what went into the key, what changed since
    /// the `--id`'s last stored entry, and the key last.
    pub fn report(&self) -> String {
        let now = self.now();
        let mut lines = now.detail_lines();
        match self.changes() {
            None => {}
            Some((id, _, None)) => lines.push(format!(
                "since the last entry stored under --id {id:?}: unknown (no manifest: one is \
                 kept when a run with this --id stores an entry)"
            )),
            Some((id, _, Some((last, c)))) => {
                let changed = c.lines();
                if changed.is_empty() {
                    lines.push(format!(
                        "since the last entry stored under --id {id:?} (key {}): nothing changed",
                        last.key
                    ));
                } else {
                    lines.push(format!(
                        "since the last entry stored under --id {id:?} (key {}):",
                        last.key
                    ));
                    lines.extend(changed.into_iter().map(|l| format!("  {l}")));
                }
            }
        }
        lines.push(format!("key: {}", now.key));
        let mut out = lines.join("\n");
        out.push('\n');
        out
    }

    /// After a stored run: keeps this key's manifest for its `--id`.
    pub fn save(&self) {
        if let Some((id, dir)) = &self.id_in {
            save(dir, id, self.now());
        }
    }
}

#[cfg(test)]
mod tests;
