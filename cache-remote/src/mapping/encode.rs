//! Record -> `ActionResult` and `Tree` blobs.

use super::{
    Extension, FORMAT, LOG_ABSENT, LOG_BLOB, LOG_INLINE, extension_any, message_blob, plain_name,
    to_digest,
};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::protobuf::Timestamp;
use cache_core::storage::{ActionRecord, LogRecord, OutputRecord};
use cache_core::{BackendError, BlobRef, Digest, DigestAlgorithm, MAX_PATH_BYTES, MAX_PATH_DEPTH};
use std::collections::BTreeMap;

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
        self.files.contains_key(name)
            || self.links.contains_key(name)
            || self.dirs.contains_key(name)
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
    fn build(
        &self,
        algorithm: DigestAlgorithm,
        children: &mut Vec<re::Directory>,
    ) -> re::Directory {
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

/// A path made of plain components ([`plain_name`]: no empty, `.` or `..` component, no
/// backslash or NUL, none over 255 bytes, not absolute) within [`MAX_PATH_BYTES`] and
/// [`MAX_PATH_DEPTH`]: only those are nested into a `Tree`, exactly what the reader
/// accepts there, so every other path keeps its exact bytes as a top-level output and
/// is judged by `Cache` as written.
fn plain(path: &str) -> Option<Vec<&str>> {
    if path.len() > MAX_PATH_BYTES {
        return None;
    }
    let parts: Vec<&str> = path.split('/').collect();
    (parts.len() <= MAX_PATH_DEPTH && parts.iter().all(|p| plain_name(p))).then_some(parts)
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
/// outputs below them; outputs whose paths are not plain stay top-level. Fails if the
/// record does not encode (its checksum is over its encoding), which includes an
/// encoding over [`cache_core::storage::MAX_ENTRY_BYTES`]: the reader's budget for
/// paths and targets relies on that bound.
pub fn encode_record(
    record: &ActionRecord,
    algorithm: DigestAlgorithm,
) -> Result<Encoded, BackendError> {
    // `encode` refuses an encoding over the limit.
    let encoding = record.encode()?;
    let checksum = DigestAlgorithm::Blake3.digest(&encoding);
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
    let trees = add_trees(&mut result, &roots, flat_dirs, algorithm);
    result.exit_code = record.exit_code;
    let (stdout, raw, digest) = log_fields(&record.stdout, algorithm);
    result.stdout_raw = raw;
    result.stdout_digest = digest;
    let (stderr, raw, digest) = log_fields(&record.stderr, algorithm);
    result.stderr_raw = raw;
    result.stderr_digest = digest;
    result.execution_metadata = Some(metadata(record, stdout, stderr, checksum));
    Ok(Encoded { result, trees })
}

/// One `Tree` per root (with what lies below it) and per flat directory (empty).
fn add_trees(
    result: &mut re::ActionResult,
    roots: &BTreeMap<String, Node>,
    flat_dirs: Vec<String>,
    algorithm: DigestAlgorithm,
) -> Vec<(BlobRef, Vec<u8>)> {
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
    trees
}

/// Timestamps carrying the duration, and the extension.
fn metadata(
    record: &ActionRecord,
    stdout: u32,
    stderr: u32,
    checksum: Digest,
) -> re::ExecutedActionMetadata {
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
        log_order: record.log_order.clone(),
        absolute_symlinks: record.absolute_symlinks.clone(),
        checksum: Some(checksum),
    };
    // The duration survives as the span between two timestamps ending now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(0));
    let start = now - i128::from(record.duration_ms) * 1_000_000;
    re::ExecutedActionMetadata {
        worker: "taskcache".into(),
        worker_start_timestamp: Some(timestamp(start)),
        worker_completed_timestamp: Some(timestamp(now)),
        execution_start_timestamp: Some(timestamp(start)),
        execution_completed_timestamp: Some(timestamp(now)),
        auxiliary_metadata: vec![extension_any(&ext)],
        ..re::ExecutedActionMetadata::default()
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
