//! `ActionRecord` <-> REAPI messages: the `Action` an entry is keyed by, and the
//! `ActionResult` (with its `Tree` blobs) it is stored as.
//!
//! Every record maps to a result any REAPI tool reads: files, directories as `Tree`s
//! (holding what lies below them, empty directories included), symlinks, exit code,
//! logs and timestamps. What REAPI has no field for (whether a log was absent or empty,
//! the record's output order, its signature) travels in one `Any` of
//! `execution_metadata.auxiliary_metadata`, which other tools ignore. Reading is
//! strict: anything this module cannot map exactly is a corrupt entry (a miss).

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::protobuf::{Any, Timestamp};
use cache_core::storage::{ActionRecord, EntryKey, LogRecord, MAX_OUTPUTS, OutputRecord};
use cache_core::{BackendError, BlobRef, Digest, DigestAlgorithm, MAX_PATH_DEPTH};
use prost::Message;
use std::collections::{BTreeMap, HashMap};

/// The `type_url` of taskcache's extension in `auxiliary_metadata`: a REAPI
/// `Platform` (name/value pairs), a type every REAPI tool knows, so tools that print
/// results as JSON (`bgd actioncache get --json`) can show it. A private message type
/// there makes such tools fail.
pub const EXTENSION_TYPE: &str = "type.googleapis.com/build.bazel.remote.execution.v2.Platform";
/// The extension format this build writes and the newest it reads.
pub const FORMAT: u32 = 1;

const LOG_ABSENT: u32 = 0;
const LOG_INLINE: u32 = 1;
const LOG_BLOB: u32 = 2;
const LOG_WORDS: [&str; 3] = ["absent", "inline", "blob"];

const P_FORMAT: &str = "taskcache.format";
const P_KEY: &str = "taskcache.key";
const P_STDOUT: &str = "taskcache.stdout";
const P_STDERR: &str = "taskcache.stderr";
const P_OUTPUT: &str = "taskcache.output";
const P_SIGNER: &str = "taskcache.signer";
const P_SIGNATURE: &str = "taskcache.signature";
const P_REMOVED: &str = "taskcache.removed";

/// What REAPI has no field for.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Extension {
    /// Format version ([`FORMAT`]).
    pub format: u32,
    /// The task digest (`blake3:...`), guarding against misplaced results.
    pub key: String,
    /// stdout: absent, inline or blob.
    pub stdout: u32,
    /// stderr: absent, inline or blob.
    pub stderr: u32,
    /// The record's output paths in record order.
    pub order: Vec<String>,
    /// The signer's public key, when signed.
    pub signer: Vec<u8>,
    /// The signature, when signed.
    pub signature: Vec<u8>,
    /// A tombstone: REAPI cannot delete a result, so removal overwrites it with one.
    pub removed: bool,
}

impl Extension {
    fn to_platform(&self) -> re::Platform {
        let p = |name: &str, value: String| re::platform::Property {
            name: name.into(),
            value,
        };
        let mut props = vec![
            p(P_FORMAT, self.format.to_string()),
            p(P_KEY, self.key.clone()),
            p(P_STDOUT, log_word(self.stdout)),
            p(P_STDERR, log_word(self.stderr)),
        ];
        props.extend(self.order.iter().map(|o| p(P_OUTPUT, o.clone())));
        if !self.signer.is_empty() {
            props.push(p(P_SIGNER, hex::encode(&self.signer)));
            props.push(p(P_SIGNATURE, hex::encode(&self.signature)));
        }
        if self.removed {
            props.push(p(P_REMOVED, "true".into()));
        }
        re::Platform { properties: props }
    }

    fn from_platform(platform: &re::Platform) -> Result<Self, String> {
        let mut ext = Extension::default();
        let log = |v: &str| {
            LOG_WORDS
                .iter()
                .position(|w| *w == v)
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| format!("unknown log kind {:?}", truncate(v)))
        };
        let bytes = |v: &str| hex::decode(v).map_err(|_| "a malformed signature".to_owned());
        for prop in &platform.properties {
            let v = prop.value.as_str();
            match prop.name.as_str() {
                P_FORMAT => {
                    ext.format = v
                        .parse()
                        .map_err(|_| format!("format {:?} is not a number", truncate(v)))?;
                }
                P_KEY => ext.key = v.to_owned(),
                P_STDOUT => ext.stdout = log(v)?,
                P_STDERR => ext.stderr = log(v)?,
                P_OUTPUT => ext.order.push(v.to_owned()),
                P_SIGNER => ext.signer = bytes(v)?,
                P_SIGNATURE => ext.signature = bytes(v)?,
                P_REMOVED => ext.removed = v == "true",
                // Names of a newer format are judged by its version, not here.
                _ => {}
            }
        }
        Ok(ext)
    }
}

fn log_word(kind: u32) -> String {
    LOG_WORDS
        .get(usize::try_from(kind).unwrap_or(usize::MAX))
        .map_or_else(|| kind.to_string(), |w| (*w).to_owned())
}

/// A REAPI digest of `blob`.
pub fn to_digest(blob: &BlobRef) -> re::Digest {
    re::Digest {
        hash: blob.digest.hex(),
        size_bytes: i64::try_from(blob.size).unwrap_or(i64::MAX),
    }
}

/// Parses a REAPI digest under `algorithm` (64 lowercase hex digits, size >= 0).
pub fn from_digest(d: &re::Digest, algorithm: DigestAlgorithm) -> Result<BlobRef, String> {
    let size = u64::try_from(d.size_bytes).map_err(|_| format!("negative size {}", d.size_bytes))?;
    if d.hash.len() != 64 || !d.hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!("malformed hash {:?}", truncate(&d.hash)));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(&d.hash, &mut bytes).map_err(|e| e.to_string())?;
    Ok(BlobRef {
        digest: Digest::from_bytes(algorithm, bytes),
        size,
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The encoding of a message and its blob address.
pub fn message_blob<M: Message>(m: &M, algorithm: DigestAlgorithm) -> (BlobRef, Vec<u8>) {
    let bytes = m.encode_to_vec();
    (BlobRef::of(algorithm, &bytes), bytes)
}

/// The `Action` an entry is keyed by, and the blobs it names.
pub struct ActionBlobs {
    /// The action-cache key: the digest and size of the serialized `Action`.
    pub action: BlobRef,
    /// The `Command`, the (empty) input root and the `Action` itself, to upload.
    pub blobs: Vec<(BlobRef, Vec<u8>)>,
}

/// Builds the `Action` for `key`: a `Command` running the task's command, an empty
/// input root, and the task digest as salt, so the digest determines the key.
///
/// The `Command` holds the arguments only: declared outputs and environment names are
/// left out, because `Cache` (not the storage) decides what a hit may write, and a
/// lookup by a task declaring other outputs must find the same entry.
pub fn action_for(key: &EntryKey, algorithm: DigestAlgorithm) -> ActionBlobs {
    let task = &key.task;
    let arguments = if task.shell {
        vec!["/bin/sh".to_owned(), "-c".to_owned(), task.command.join(" ")]
    } else {
        task.command.clone()
    };
    let command = re::Command {
        arguments,
        ..re::Command::default()
    };
    let (command_ref, command_bytes) = message_blob(&command, algorithm);
    let (root_ref, root_bytes) = message_blob(&re::Directory::default(), algorithm);
    let action = re::Action {
        command_digest: Some(to_digest(&command_ref)),
        input_root_digest: Some(to_digest(&root_ref)),
        salt: key.digest.to_string().into_bytes(),
        ..re::Action::default()
    };
    let (action_ref, action_bytes) = message_blob(&action, algorithm);
    ActionBlobs {
        action: action_ref,
        blobs: vec![
            (command_ref, command_bytes),
            (root_ref, root_bytes),
            (action_ref, action_bytes),
        ],
    }
}

/// A record as an `ActionResult`, and the `Tree` blobs it names.
pub struct Encoded {
    /// The result to store.
    pub result: re::ActionResult,
    /// `Tree` blobs to upload before it.
    pub trees: Vec<(BlobRef, Vec<u8>)>,
}

/// A directory being assembled into a `Tree`.
#[derive(Default)]
struct Node {
    files: BTreeMap<String, (BlobRef, bool)>,
    links: BTreeMap<String, String>,
    dirs: BTreeMap<String, Node>,
}

impl Node {
    fn taken(&self, name: &str) -> bool {
        self.files.contains_key(name) || self.links.contains_key(name) || self.dirs.contains_key(name)
    }

    /// Inserts `o` at `rel` (components), or says no on any conflict.
    fn insert(&mut self, rel: &[&str], o: &OutputRecord) -> bool {
        let Some((last, parents)) = rel.split_last() else {
            return false;
        };
        let mut node = self;
        for p in parents {
            if node.files.contains_key(*p) || node.links.contains_key(*p) {
                return false;
            }
            node = node.dirs.entry((*p).to_owned()).or_default();
        }
        match o {
            OutputRecord::Directory { .. } => {
                if node.files.contains_key(*last) || node.links.contains_key(*last) {
                    return false;
                }
                node.dirs.entry((*last).to_owned()).or_default();
            }
            OutputRecord::File {
                blob, executable, ..
            } => {
                if node.taken(last) {
                    return false;
                }
                node.files.insert((*last).to_owned(), (*blob, *executable));
            }
            OutputRecord::Symlink { target, .. } => {
                if node.taken(last) {
                    return false;
                }
                node.links.insert((*last).to_owned(), target.clone());
            }
        }
        true
    }

    /// This directory's message; every descendant is pushed to `children`.
    fn build(&self, algorithm: DigestAlgorithm, children: &mut Vec<re::Directory>) -> re::Directory {
        let mut dir = re::Directory::default();
        for (name, (blob, executable)) in &self.files {
            dir.files.push(re::FileNode {
                name: name.clone(),
                digest: Some(to_digest(blob)),
                is_executable: *executable,
                node_properties: None,
            });
        }
        for (name, node) in &self.dirs {
            let child = node.build(algorithm, children);
            let (child_ref, _) = message_blob(&child, algorithm);
            children.push(child);
            dir.directories.push(re::DirectoryNode {
                name: name.clone(),
                digest: Some(to_digest(&child_ref)),
            });
        }
        for (name, target) in &self.links {
            dir.symlinks.push(re::SymlinkNode {
                name: name.clone(),
                target: target.clone(),
                node_properties: None,
            });
        }
        dir
    }
}

/// A path made of plain components (no empty, `.` or `..` component, no backslash or
/// NUL, not absolute): only those are nested into a `Tree`, so every other path keeps
/// its exact bytes as a top-level output and is judged by `Cache` as written.
fn plain(path: &str) -> Option<Vec<&str>> {
    if path.is_empty() || path.contains(['\\', '\0']) {
        return None;
    }
    let parts: Vec<&str> = path.split('/').collect();
    parts
        .iter()
        .all(|p| !p.is_empty() && *p != "." && *p != "..")
        .then_some(parts)
}

fn timestamp(nanos_since_epoch: i128) -> Timestamp {
    Timestamp {
        seconds: i64::try_from(nanos_since_epoch.div_euclid(1_000_000_000)).unwrap_or(0),
        nanos: i32::try_from(nanos_since_epoch.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

fn log_fields(log: &LogRecord, algorithm: DigestAlgorithm) -> (u32, Vec<u8>, Option<re::Digest>) {
    match log {
        LogRecord::Absent => (LOG_ABSENT, Vec::new(), None),
        // Inline logs are also named by digest (the blob is uploaded), so a server that
        // drops `stdout_raw` still serves them.
        LogRecord::Inline(b) => (
            LOG_INLINE,
            b.clone(),
            Some(to_digest(&BlobRef::of(algorithm, b))),
        ),
        LogRecord::Blob(b) => (LOG_BLOB, Vec::new(), Some(to_digest(b))),
    }
}

/// Maps `record` to an `ActionResult`. Directory outputs become `Tree`s holding the
/// outputs below them; outputs whose paths are not plain stay top-level.
pub fn encode_record(record: &ActionRecord, algorithm: DigestAlgorithm) -> Encoded {
    // Tree roots: plain directory outputs not below another plain directory output.
    let plain_dirs: Vec<&str> = record
        .outputs
        .iter()
        .filter_map(|o| match o {
            OutputRecord::Directory { path } if plain(path).is_some() => Some(path.as_str()),
            _ => None,
        })
        .collect();
    let below = |path: &str, dir: &str| {
        path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
    };
    let mut roots: BTreeMap<String, Node> = BTreeMap::new();
    for d in &plain_dirs {
        if !plain_dirs.iter().any(|p| below(d, p)) {
            roots.entry((*d).to_owned()).or_default();
        }
    }
    let mut result = re::ActionResult::default();
    let mut flat_dirs = Vec::new();
    for o in &record.outputs {
        let path = o.path();
        let nested = plain(path).and_then(|_| {
            roots
                .iter_mut()
                .find(|(root, _)| below(path, root))
                .map(|(root, node)| (root.len(), node))
        });
        let placed = match nested {
            Some((len, node)) => {
                let rel: Vec<&str> = path[len + 1..].split('/').collect();
                node.insert(&rel, o)
            }
            None => roots.contains_key(path) && matches!(o, OutputRecord::Directory { .. }),
        };
        if placed {
            continue;
        }
        match o {
            OutputRecord::Directory { path } => flat_dirs.push(path.clone()),
            OutputRecord::File {
                path,
                blob,
                executable,
            } => result.output_files.push(re::OutputFile {
                path: path.clone(),
                digest: Some(to_digest(blob)),
                is_executable: *executable,
                ..re::OutputFile::default()
            }),
            OutputRecord::Symlink { path, target } => {
                result.output_symlinks.push(re::OutputSymlink {
                    path: path.clone(),
                    target: target.clone(),
                    node_properties: None,
                });
            }
        }
    }
    let mut trees = Vec::new();
    let empty = Node::default();
    let all_dirs = roots
        .iter()
        .map(|(p, n)| (p.clone(), n))
        .chain(flat_dirs.into_iter().map(|p| (p, &empty)));
    for (path, node) in all_dirs {
        let mut children = Vec::new();
        let root = node.build(algorithm, &mut children);
        let tree = re::Tree {
            root: Some(root),
            children,
        };
        let (tree_ref, bytes) = message_blob(&tree, algorithm);
        result.output_directories.push(re::OutputDirectory {
            path,
            tree_digest: Some(to_digest(&tree_ref)),
            ..re::OutputDirectory::default()
        });
        trees.push((tree_ref, bytes));
    }
    result.exit_code = record.exit_code;
    let (stdout, raw, digest) = log_fields(&record.stdout, algorithm);
    result.stdout_raw = raw;
    result.stdout_digest = digest;
    let (stderr, raw, digest) = log_fields(&record.stderr, algorithm);
    result.stderr_raw = raw;
    result.stderr_digest = digest;
    let ext = Extension {
        format: FORMAT,
        key: record.key.to_string(),
        stdout,
        stderr,
        order: record.outputs.iter().map(|o| o.path().to_owned()).collect(),
        signer: record
            .signature
            .as_ref()
            .map(|s| s.public_key.clone())
            .unwrap_or_default(),
        signature: record
            .signature
            .as_ref()
            .map(|s| s.signature.clone())
            .unwrap_or_default(),
        removed: false,
    };
    // The duration survives as the span between two timestamps ending now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(0));
    let start = now - i128::from(record.duration_ms) * 1_000_000;
    result.execution_metadata = Some(re::ExecutedActionMetadata {
        worker: "taskcache".into(),
        worker_start_timestamp: Some(timestamp(start)),
        worker_completed_timestamp: Some(timestamp(now)),
        execution_start_timestamp: Some(timestamp(start)),
        execution_completed_timestamp: Some(timestamp(now)),
        auxiliary_metadata: vec![extension_any(&ext)],
        ..re::ExecutedActionMetadata::default()
    });
    Encoded { result, trees }
}

/// The extension as an `Any`.
pub fn extension_any(ext: &Extension) -> Any {
    Any {
        type_url: EXTENSION_TYPE.into(),
        value: ext.to_platform().encode_to_vec(),
    }
}

/// A result that stands for a removed entry (REAPI has no way to delete one).
pub fn tombstone(key: &Digest) -> re::ActionResult {
    let ext = Extension {
        format: FORMAT,
        key: key.to_string(),
        removed: true,
        ..Extension::default()
    };
    re::ActionResult {
        exit_code: 0,
        execution_metadata: Some(re::ExecutedActionMetadata {
            worker: "taskcache".into(),
            auxiliary_metadata: vec![extension_any(&ext)],
            ..re::ExecutedActionMetadata::default()
        }),
        ..re::ActionResult::default()
    }
}

/// The blobs `decode_result` needs besides the result: its `Tree`s, and inline logs
/// whose bytes the server did not inline.
pub fn needed_blobs(
    result: &re::ActionResult,
    algorithm: DigestAlgorithm,
) -> Result<Vec<BlobRef>, String> {
    let mut out = Vec::new();
    for d in &result.output_directories {
        let t = d
            .tree_digest
            .as_ref()
            .ok_or_else(|| format!("output directory {:?} has no tree", truncate(&d.path)))?;
        out.push(from_digest(t, algorithm)?);
    }
    let ext = extension(result)?;
    for (kind, raw, digest) in [
        (ext.as_ref().map(|e| e.stdout), &result.stdout_raw, &result.stdout_digest),
        (ext.as_ref().map(|e| e.stderr), &result.stderr_raw, &result.stderr_digest),
    ] {
        if kind == Some(LOG_INLINE) && raw.is_empty() {
            if let Some(d) = digest {
                let b = from_digest(d, algorithm)?;
                if b.size > 0 {
                    out.push(b);
                }
            }
        }
    }
    Ok(out)
}

/// The taskcache extension of `result`, if it has one: the `Platform` in
/// `auxiliary_metadata` that names a taskcache format.
pub fn extension(result: &re::ActionResult) -> Result<Option<Extension>, String> {
    let Some(meta) = &result.execution_metadata else {
        return Ok(None);
    };
    for any in meta
        .auxiliary_metadata
        .iter()
        .filter(|a| a.type_url == EXTENSION_TYPE)
    {
        let platform = re::Platform::decode(any.value.as_slice())
            .map_err(|e| format!("auxiliary metadata does not decode: {e}"))?;
        if platform.properties.iter().any(|p| p.name == P_FORMAT) {
            return Extension::from_platform(&platform).map(Some);
        }
    }
    Ok(None)
}

fn millis_between(start: Option<&Timestamp>, end: Option<&Timestamp>) -> u64 {
    let (Some(s), Some(e)) = (start, end) else {
        return 0;
    };
    let nanos = |t: &Timestamp| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    u64::try_from((nanos(e) - nanos(s)).div_euclid(1_000_000)).unwrap_or(0)
}

/// Outputs found while expanding trees, by path.
struct Found {
    outputs: Vec<OutputRecord>,
}

impl Found {
    fn push(&mut self, o: OutputRecord) -> Result<(), String> {
        if self.outputs.len() >= MAX_OUTPUTS {
            return Err(format!("more than {MAX_OUTPUTS} outputs"));
        }
        self.outputs.push(o);
        Ok(())
    }
}

fn expand(
    dir: &re::Directory,
    path: &str,
    depth: usize,
    children: &HashMap<BlobRef, &re::Directory>,
    algorithm: DigestAlgorithm,
    found: &mut Found,
) -> Result<(), String> {
    if depth > MAX_PATH_DEPTH {
        return Err(format!("a tree deeper than {MAX_PATH_DEPTH}"));
    }
    found.push(OutputRecord::Directory { path: path.into() })?;
    for f in &dir.files {
        let d = f.digest.as_ref().ok_or("a file node without a digest")?;
        found.push(OutputRecord::File {
            path: format!("{path}/{}", f.name),
            blob: from_digest(d, algorithm)?,
            executable: f.is_executable,
        })?;
    }
    for s in &dir.symlinks {
        found.push(OutputRecord::Symlink {
            path: format!("{path}/{}", s.name),
            target: s.target.clone(),
        })?;
    }
    for d in &dir.directories {
        let digest = d.digest.as_ref().ok_or("a directory node without a digest")?;
        let child = children
            .get(&from_digest(digest, algorithm)?)
            .ok_or_else(|| format!("the tree lacks directory {}", digest.hash))?;
        expand(
            child,
            &format!("{path}/{}", d.name),
            depth + 1,
            children,
            algorithm,
            found,
        )?;
    }
    Ok(())
}

/// Maps a stored result back to the record for `key`. `blobs` holds the bytes of every
/// blob [`needed_blobs`] named. `Ok(None)`: a tombstone (the entry was removed).
pub fn decode_result(
    key: &Digest,
    result: &re::ActionResult,
    blobs: &HashMap<BlobRef, Vec<u8>>,
    algorithm: DigestAlgorithm,
) -> Result<Option<ActionRecord>, BackendError> {
    let corrupt = |reason: String| BackendError::CorruptEntry {
        key: *key,
        reason: format!("unmappable ActionResult: {reason}"),
    };
    let ext = extension(result).map_err(corrupt)?;
    if let Some(ext) = &ext {
        if ext.format > FORMAT {
            return Err(BackendError::NewerEntryFormat {
                key: *key,
                version: u8::try_from(ext.format).unwrap_or(u8::MAX),
            });
        }
        if ext.format == 0 {
            return Err(corrupt("extension format 0".into()));
        }
        if ext.removed {
            return Ok(None);
        }
    }
    let record_key = match &ext {
        Some(e) => Digest::parse(&e.key).map_err(|_| corrupt("malformed key".into()))?,
        None => *key,
    };
    let mut found = Found {
        outputs: Vec::new(),
    };
    for d in &result.output_directories {
        let t = d.tree_digest.as_ref().ok_or_else(|| corrupt("no tree".into()))?;
        let tref = from_digest(t, algorithm).map_err(corrupt)?;
        let bytes = blobs
            .get(&tref)
            .ok_or_else(|| corrupt(format!("tree {tref} was not read")))?;
        let tree = re::Tree::decode(bytes.as_slice())
            .map_err(|e| corrupt(format!("tree {tref} does not decode: {e}")))?;
        let root = tree.root.as_ref().ok_or_else(|| corrupt("a tree without a root".into()))?;
        let children: HashMap<BlobRef, &re::Directory> = tree
            .children
            .iter()
            .map(|c| (message_blob(c, algorithm).0, c))
            .collect();
        expand(root, &d.path, 0, &children, algorithm, &mut found).map_err(corrupt)?;
    }
    for f in &result.output_files {
        let d = f.digest.as_ref().ok_or_else(|| corrupt("a file without a digest".into()))?;
        found
            .push(OutputRecord::File {
                path: f.path.clone(),
                blob: from_digest(d, algorithm).map_err(corrupt)?,
                executable: f.is_executable,
            })
            .map_err(corrupt)?;
    }
    // Older servers fill only the deprecated lists.
    #[allow(deprecated)]
    let symlinks = if result.output_symlinks.is_empty() {
        result
            .output_file_symlinks
            .iter()
            .chain(&result.output_directory_symlinks)
            .collect::<Vec<_>>()
    } else {
        result.output_symlinks.iter().collect()
    };
    for s in symlinks {
        found
            .push(OutputRecord::Symlink {
                path: s.path.clone(),
                target: s.target.clone(),
            })
            .map_err(corrupt)?;
    }
    let outputs = match &ext {
        Some(ext) => in_order(found.outputs, &ext.order).map_err(corrupt)?,
        None => {
            // Another tool's result: directories, then files, then symlinks.
            let mut o = found.outputs;
            o.sort_by_key(|x| match x {
                OutputRecord::Directory { .. } => 0,
                OutputRecord::File { .. } => 1,
                OutputRecord::Symlink { .. } => 2,
            });
            o
        }
    };
    let log = |kind: Option<u32>, raw: &Vec<u8>, digest: &Option<re::Digest>| {
        let digest = digest
            .as_ref()
            .map(|d| from_digest(d, algorithm))
            .transpose()
            .map_err(corrupt)?;
        match (kind, digest) {
            (Some(LOG_ABSENT), _) => Ok(LogRecord::Absent),
            (Some(LOG_INLINE), None) => Ok(LogRecord::Inline(raw.clone())),
            (Some(LOG_INLINE), Some(d)) => {
                let bytes = if raw.is_empty() && d.size > 0 {
                    blobs
                        .get(&d)
                        .cloned()
                        .ok_or_else(|| corrupt(format!("inline log {d} was not read")))?
                } else {
                    raw.clone()
                };
                if BlobRef::of(algorithm, &bytes) != d {
                    return Err(corrupt(format!("inline log does not match its digest {d}")));
                }
                Ok(LogRecord::Inline(bytes))
            }
            (Some(LOG_BLOB) | None, Some(d)) => Ok(LogRecord::Blob(d)),
            (None, None) => Ok(LogRecord::Inline(raw.clone())),
            (Some(k), _) => Err(corrupt(format!("unknown log kind {k}"))),
        }
    };
    let stdout = log(
        ext.as_ref().map(|e| e.stdout),
        &result.stdout_raw,
        &result.stdout_digest,
    )?;
    let stderr = log(
        ext.as_ref().map(|e| e.stderr),
        &result.stderr_raw,
        &result.stderr_digest,
    )?;
    let meta = result.execution_metadata.as_ref();
    let duration_ms = meta.map_or(0, |m| {
        let exec = millis_between(
            m.execution_start_timestamp.as_ref(),
            m.execution_completed_timestamp.as_ref(),
        );
        if m.execution_start_timestamp.is_some() {
            exec
        } else {
            millis_between(
                m.worker_start_timestamp.as_ref(),
                m.worker_completed_timestamp.as_ref(),
            )
        }
    });
    let signature = ext.as_ref().filter(|e| !e.signer.is_empty()).map(|e| {
        cache_core::sign::EntrySignature {
            public_key: e.signer.clone(),
            signature: e.signature.clone(),
        }
    });
    Ok(Some(ActionRecord {
        key: record_key,
        exit_code: result.exit_code,
        duration_ms,
        stdout,
        stderr,
        outputs,
        signature,
    }))
}

/// Puts `found` in the order the writer recorded. Directories implied by a tree but
/// not recorded are left out; any other difference is an error.
fn in_order(found: Vec<OutputRecord>, order: &[String]) -> Result<Vec<OutputRecord>, String> {
    let mut by_path: HashMap<String, OutputRecord> = HashMap::with_capacity(found.len());
    for o in found {
        let path = o.path().to_owned();
        if by_path.insert(path.clone(), o).is_some() {
            return Err(format!("output {:?} appears twice", truncate(&path)));
        }
    }
    let mut out = Vec::with_capacity(order.len());
    for p in order {
        let o = by_path
            .remove(p)
            .ok_or_else(|| format!("recorded output {:?} is not in the result", truncate(p)))?;
        out.push(o);
    }
    if let Some(extra) = by_path
        .values()
        .find(|o| !matches!(o, OutputRecord::Directory { .. }))
    {
        return Err(format!(
            "output {:?} is in the result but not recorded",
            truncate(extra.path())
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(b: &[u8]) -> BlobRef {
        BlobRef::of(DigestAlgorithm::Sha256, b)
    }

    fn sample() -> ActionRecord {
        ActionRecord {
            key: DigestAlgorithm::Blake3.digest(b"k"),
            exit_code: 3,
            duration_ms: 1234,
            stdout: LogRecord::Inline(b"out".to_vec()),
            stderr: LogRecord::Absent,
            outputs: vec![
                OutputRecord::Directory { path: "d".into() },
                OutputRecord::Directory {
                    path: "d/empty".into(),
                },
                OutputRecord::Directory { path: "e".into() },
                OutputRecord::File {
                    path: "d/sub/f".into(),
                    blob: blob(b"f"),
                    executable: true,
                },
                OutputRecord::File {
                    path: "top.txt".into(),
                    blob: blob(b"t"),
                    executable: false,
                },
                OutputRecord::Symlink {
                    path: "d/l".into(),
                    target: "sub/f".into(),
                },
                OutputRecord::Symlink {
                    path: "l2".into(),
                    target: "top.txt".into(),
                },
            ],
            signature: None,
        }
    }

    fn round_trip(r: &ActionRecord) -> ActionRecord {
        let alg = DigestAlgorithm::Sha256;
        let enc = encode_record(r, alg);
        let blobs: HashMap<BlobRef, Vec<u8>> = enc.trees.into_iter().collect();
        let bytes = enc.result.encode_to_vec();
        let back = re::ActionResult::decode(bytes.as_slice()).unwrap();
        decode_result(&r.key, &back, &blobs, alg).unwrap().unwrap()
    }

    #[test]
    fn records_round_trip_exactly_through_trees() {
        let r = sample();
        let enc = encode_record(&r, DigestAlgorithm::Sha256);
        // `d` (with its subtree, the empty directory included) and `e` are trees.
        assert_eq!(enc.result.output_directories.len(), 2);
        assert_eq!(enc.result.output_files.len(), 1);
        assert_eq!(enc.result.output_symlinks.len(), 1);
        let tree = re::Tree::decode(enc.trees[0].1.as_slice()).unwrap();
        assert_eq!(tree.children.len(), 2, "d/empty and d/sub");
        assert_eq!(round_trip(&r), r);
    }

    #[test]
    fn hostile_paths_keep_their_bytes() {
        let mut r = sample();
        r.outputs.push(OutputRecord::Directory {
            path: "../up".into(),
        });
        r.outputs.push(OutputRecord::File {
            path: "d/../../x".into(),
            blob: blob(b"x"),
            executable: false,
        });
        r.outputs.push(OutputRecord::Directory {
            path: String::new(),
        });
        assert_eq!(round_trip(&r), r);
    }

    #[test]
    fn unmappable_results_are_corrupt_and_newer_formats_are_named() {
        let r = sample();
        let alg = DigestAlgorithm::Sha256;
        let enc = encode_record(&r, alg);
        let mut res = enc.result.clone();
        res.output_files[0].path = "other".into();
        let blobs: HashMap<BlobRef, Vec<u8>> = enc.trees.into_iter().collect();
        let e = decode_result(&r.key, &res, &blobs, alg).unwrap_err();
        assert!(matches!(e, BackendError::CorruptEntry { .. }), "{e}");
        let e = decode_result(&r.key, &enc.result, &HashMap::new(), alg).unwrap_err();
        assert!(e.to_string().contains("was not read"), "{e}");
        let mut res = enc.result.clone();
        let mut ext = extension(&res).unwrap().unwrap();
        ext.format = 9;
        res.execution_metadata.as_mut().unwrap().auxiliary_metadata = vec![extension_any(&ext)];
        let e = decode_result(&r.key, &res, &blobs, alg).unwrap_err();
        assert!(matches!(e, BackendError::NewerEntryFormat { version: 9, .. }));
    }

    #[test]
    fn the_task_digest_determines_the_action_key() {
        let task = cache_core::Task::new("t", ["echo", "hi"]);
        let k1 = EntryKey::new(DigestAlgorithm::Blake3.digest(b"1"), &task);
        let k2 = EntryKey::new(DigestAlgorithm::Blake3.digest(b"2"), &task);
        let a1 = action_for(&k1, DigestAlgorithm::Sha256);
        assert_eq!(a1.action, action_for(&k1, DigestAlgorithm::Sha256).action);
        assert_ne!(a1.action, action_for(&k2, DigestAlgorithm::Sha256).action);
        assert!(a1.action.size > 0);
        let action = re::Action::decode(a1.blobs[2].1.as_slice()).unwrap();
        assert_eq!(action.salt, k1.digest.to_string().into_bytes());
        let command = re::Command::decode(a1.blobs[0].1.as_slice()).unwrap();
        assert_eq!(command.arguments, ["echo", "hi"]);
    }
}
