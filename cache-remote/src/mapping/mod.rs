//! `ActionRecord` <-> REAPI messages: the `Action` an entry is keyed by, and the
//! `ActionResult` (with its `Tree` blobs) it is stored as.
//!
//! Every record maps to a result any REAPI tool reads: files, directories as `Tree`s
//! (holding what lies below them, empty directories included), symlinks, exit code,
//! logs and timestamps. What REAPI has no field for (whether a log was absent or empty,
//! the record's output order, its signature) travels in one `Any` of
//! `execution_metadata.auxiliary_metadata`, which other tools ignore. Reading is
//! strict: anything this module cannot map exactly is a corrupt entry (a miss).
//!
//! Reading is also bounded before anything is expanded, since any job that can write
//! the cache writes these messages and a `Tree` is a DAG: the recorded paths (the
//! extension's order) are checked and sorted first, every tree `Directory` is checked
//! once ([`plain_name`]s, none twice), and a tree expands only into recorded paths and
//! the directories above them, each checked for length and depth before it is formed,
//! so the work follows the bytes received ([`decode_result_until`] can also be stopped).
//!
//! The server keeps results as it got them, damage included, and only blobs are
//! named by their digest: so the extension also carries a checksum of the whole record
//! (of its cache-core encoding, [`record_checksum`]), and a read recomputes it over
//! what it decoded. A result without a readable extension is refused too: one flipped
//! bit (a tag, a `type_url`) can make the extension vanish, and a result without one
//! cannot then be told from a damaged one.

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::protobuf::Any;
use cache_core::storage::{ActionRecord, EntryKey};
use cache_core::{BackendError, BlobRef, Digest, DigestAlgorithm};
use prost::Message;

mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub use decode::{
    MAX_NAME_BYTES, decode_result, decode_result_until, extension, needed_blobs, plain_name,
};
pub(crate) use decode::{Work, check_names, decode_counted};
pub use encode::{Encoded, encode_record, tombstone};

/// The `type_url` of taskcache's extension in `auxiliary_metadata`: a REAPI
/// `Platform` (name/value pairs), a type every REAPI tool knows, so tools that print
/// results as JSON (`bgd actioncache get --json`) can show it. A private message type
/// there makes such tools fail.
pub const EXTENSION_TYPE: &str = "type.googleapis.com/build.bazel.remote.execution.v2.Platform";
/// The extension format this build writes and the newest it reads. Format 2 adds the
/// record checksum and is the only one read: format-1 results (development builds
/// before the checksum) are corrupt entries, replaced by the next store.
pub const FORMAT: u32 = 2;

pub(crate) const LOG_ABSENT: u32 = 0;
pub(crate) const LOG_INLINE: u32 = 1;
pub(crate) const LOG_BLOB: u32 = 2;
const LOG_WORDS: [&str; 3] = ["absent", "inline", "blob"];

pub(crate) const P_FORMAT: &str = "taskcache.format";
const P_KEY: &str = "taskcache.key";
const P_STDOUT: &str = "taskcache.stdout";
const P_STDERR: &str = "taskcache.stderr";
const P_OUTPUT: &str = "taskcache.output";
const P_SIGNER: &str = "taskcache.signer";
const P_SIGNATURE: &str = "taskcache.signature";
const P_REMOVED: &str = "taskcache.removed";
const P_LOG_ORDER: &str = "taskcache.log-order";
const P_ABS_PATH: &str = "taskcache.absolute-symlink.path";
const P_ABS_TARGET: &str = "taskcache.absolute-symlink.target";
const P_CHECKSUM: &str = "taskcache.checksum";

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
    /// The order stdout and stderr were written in (`o12,e3,...`; empty: none).
    pub log_order: cache_core::storage::LogOrder,
    /// Symlinks with absolute targets (a task that opted in), as path and target.
    pub absolute_symlinks: Vec<cache_core::storage::AbsoluteSymlink>,
    /// The record's [`record_checksum`] (none in a tombstone).
    pub checksum: Option<Digest>,
}

impl Extension {
    pub(crate) fn to_platform(&self) -> re::Platform {
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
        if !self.log_order.is_empty() {
            let chunks: Vec<String> = self
                .log_order
                .iter()
                .map(|c| {
                    let s = if c.stream == cache_core::LogStream::Stdout {
                        'o'
                    } else {
                        'e'
                    };
                    format!("{s}{}", c.len)
                })
                .collect();
            props.push(p(P_LOG_ORDER, chunks.join(",")));
        }
        for l in &self.absolute_symlinks {
            props.push(p(P_ABS_PATH, l.path.clone()));
            props.push(p(P_ABS_TARGET, l.target.clone()));
        }
        if let Some(c) = &self.checksum {
            props.push(p(P_CHECKSUM, c.to_string()));
        }
        re::Platform { properties: props }
    }

    pub(crate) fn from_platform(platform: &re::Platform) -> Result<Self, String> {
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
                P_KEY => v.clone_into(&mut ext.key),
                P_STDOUT => ext.stdout = log(v)?,
                P_STDERR => ext.stderr = log(v)?,
                P_OUTPUT => ext.order.push(v.to_owned()),
                P_SIGNER => ext.signer = bytes(v)?,
                P_SIGNATURE => ext.signature = bytes(v)?,
                P_REMOVED if v == "true" => ext.removed = true,
                P_REMOVED => return Err(format!("removed {:?}", truncate(v))),
                P_LOG_ORDER => ext.log_order = log_order(v)?,
                P_ABS_PATH => ext
                    .absolute_symlinks
                    .push(cache_core::storage::AbsoluteSymlink {
                        path: v.to_owned(),
                        target: String::new(),
                    }),
                P_ABS_TARGET => match ext.absolute_symlinks.last_mut() {
                    Some(l) if l.target.is_empty() => v.clone_into(&mut l.target),
                    _ => return Err("an absolute symlink target without its path".into()),
                },
                P_CHECKSUM => {
                    ext.checksum =
                        Some(Digest::parse(v).map_err(|_| "a malformed checksum".to_owned())?);
                }
                // Names of a newer format are judged by its version, not here.
                _ => {}
            }
        }
        Ok(ext)
    }
}

/// `o12,e3,...` as chunks (at most [`cache_core::storage::MAX_LOG_CHUNKS`]).
fn log_order(v: &str) -> Result<cache_core::storage::LogOrder, String> {
    let bad = || format!("malformed log order {:?}", truncate(v));
    let mut order = Vec::new();
    for part in v.split(',') {
        if order.len() == cache_core::storage::MAX_LOG_CHUNKS {
            return Err("a log order with too many chunks".into());
        }
        let stream = match part.as_bytes().first() {
            Some(b'o') => cache_core::LogStream::Stdout,
            Some(b'e') => cache_core::LogStream::Stderr,
            _ => return Err(bad()),
        };
        let len = part[1..].parse().map_err(|_| bad())?;
        order.push(cache_core::storage::LogChunk { stream, len });
    }
    Ok(order)
}

fn log_word(kind: u32) -> String {
    LOG_WORDS
        .get(usize::try_from(kind).unwrap_or(usize::MAX))
        .map_or_else(|| kind.to_string(), |w| (*w).to_owned())
}

/// The checksum a result carries for `record`: the BLAKE3 digest of its cache-core
/// encoding ([`ActionRecord::encode`], the bytes a local entry keeps, signature
/// included), so it covers every field a hit restores.
pub fn record_checksum(record: &ActionRecord) -> Result<Digest, BackendError> {
    Ok(DigestAlgorithm::Blake3.digest(&record.encode()?))
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
    let size =
        u64::try_from(d.size_bytes).map_err(|_| format!("negative size {}", d.size_bytes))?;
    if d.hash.len() != 64
        || !d
            .hash
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(format!("malformed hash {:?}", truncate(&d.hash)));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(&d.hash, &mut bytes).map_err(|e| e.to_string())?;
    Ok(BlobRef {
        digest: Digest::from_bytes(algorithm, bytes),
        size,
    })
}

pub(crate) fn truncate(s: &str) -> String {
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
        vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            task.command.join(" "),
        ]
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

/// The extension as an `Any`.
pub fn extension_any(ext: &Extension) -> Any {
    Any {
        type_url: EXTENSION_TYPE.into(),
        value: ext.to_platform().encode_to_vec(),
    }
}
