//! The stored form of an entry (the action result) and its self-checking encoding.
//!
//! Wire format (what local and object-store backends write):
//!
//! ```text
//! magic   4 bytes  "TCAR"
//! version 1 byte   1..=4
//! check  32 bytes  BLAKE3 of the payload
//! payload          version 1: the record (postcard 1.x encoding of `ActionRecord`)
//!                  version 2: postcard of { record bytes, signature }
//!                  version 3: the record, then postcard of the extras (the log order)
//!                  version 4: version 3's bytes, signed as in version 2
//! ```
//!
//! A record without extras is written as version 1 or 2, so every taskcache that reads
//! those still reads it; only a record that carries the order its logs were written in
//! needs version 3 or 4 (older readers leave those alone as a newer format).
//!
//! [`ActionRecord::encode`] refuses to write an entry over [`MAX_ENTRY_BYTES`], and
//! [`ActionRecord::decode`] refuses anything over it, a wrong magic,
//! an unknown version, a failed checksum, a payload that does not decode, a record
//! stored under another key, and any record that names an unsafe path. Decoding reads
//! from a bounded slice, so no declared length can make it allocate more than the slice.

use crate::path::{OutputKind, check_layout};
use crate::{BackendError, BackendResult, BlobRef, Digest};
use serde::{Deserialize, Serialize};

/// Which captured stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Largest encoded entry accepted. Logs over [`INLINE_LOG_MAX`] live in blobs, so this
/// bounds only the output list (about 300,000 outputs with typical path lengths).
pub const MAX_ENTRY_BYTES: usize = 64 << 20;

/// Logs up to this size are stored inside the entry; larger ones become blobs.
pub const INLINE_LOG_MAX: usize = 64 << 10;

const MAGIC: &[u8; 4] = b"TCAR";
/// Unsigned entries (readable by every taskcache since the first).
const VERSION_UNSIGNED: u8 = 1;
/// Signed entries.
const VERSION_SIGNED: u8 = 2;
/// Added to the version when the record carries extras (the log order).
const WITH_EXTRAS: u8 = 2;
/// The newest format this taskcache writes and reads: signed, with extras.
const VERSION: u8 = VERSION_SIGNED + WITH_EXTRAS;

/// Most chunks a log order may have: a task that alternates streams more often than
/// this is replayed stdout first, then stderr.
pub const MAX_LOG_CHUNKS: usize = 100_000;

/// A run of bytes one stream carried: a [`LogOrder`] lists them in the order the task
/// wrote them, so a hit replays stdout and stderr interleaved as they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// Which stream.
    pub stream: LogStream,
    /// How many of its bytes, in order.
    pub len: u64,
}

/// The order of a task's output across stdout and stderr (empty: not recorded, so
/// stdout is replayed, then stderr).
pub type LogOrder = Vec<LogChunk>;

/// A symlink output whose target is an absolute path, kept only for tasks that opt in
/// ([`crate::Task::allow_absolute_symlinks`]); restored as its text, never followed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbsoluteSymlink {
    /// Relative path of the link.
    pub path: String,
    /// The absolute target.
    pub target: String,
}

/// What follows the record in versions 3 and 4.
#[derive(Serialize, Deserialize)]
struct Extras {
    #[serde(deserialize_with = "bounded_chunks")]
    log_order: LogOrder,
    #[serde(deserialize_with = "bounded_links")]
    absolute_symlinks: Vec<AbsoluteSymlink>,
}

fn bounded_links<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<AbsoluteSymlink>, D::Error> {
    d.deserialize_seq(Bounded::<AbsoluteSymlink, MAX_OUTPUTS>(
        std::marker::PhantomData,
    ))
}

fn bounded_chunks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<LogOrder, D::Error> {
    d.deserialize_seq(Bounded::<LogChunk, MAX_LOG_CHUNKS>(
        std::marker::PhantomData,
    ))
}

/// A sequence of at most `MAX` elements. The declared length is the cache writer's:
/// never allocate from it, and stop at the first element past the bound.
struct Bounded<T, const MAX: usize>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>, const MAX: usize> serde::de::Visitor<'de> for Bounded<T, MAX> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at most {MAX} elements")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(x) = seq.next_element()? {
            if out.len() == MAX {
                return Err(serde::de::Error::custom(format!(
                    "more than {MAX} elements"
                )));
            }
            out.push(x);
        }
        Ok(out)
    }
}
const HEADER: usize = 4 + 1 + 32;

/// One captured stream (stdout or stderr).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogRecord {
    /// The task produced no such stream (`None` in [`crate::CacheEntry`]).
    Absent,
    /// Small logs, kept in the entry.
    Inline(Vec<u8>),
    /// Large logs, kept as a blob.
    Blob(BlobRef),
}

/// One stored output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputRecord {
    /// A regular file.
    File {
        /// Relative path.
        path: String,
        /// Its content.
        blob: BlobRef,
        /// Executable bit.
        executable: bool,
    },
    /// A directory (restored even when empty).
    Directory {
        /// Relative path.
        path: String,
    },
    /// A relative symlink inside the workspace.
    Symlink {
        /// Relative path of the link.
        path: String,
        /// The link text.
        target: String,
    },
}

impl OutputRecord {
    /// The output's relative path as stored.
    #[must_use]
    pub fn path(&self) -> &str {
        match self {
            OutputRecord::File { path, .. }
            | OutputRecord::Directory { path }
            | OutputRecord::Symlink { path, .. } => path,
        }
    }
}

/// What a backend stores for a task digest: the result of running the task once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// The task digest this record belongs to (guards against misplaced entries).
    pub key: Digest,
    /// Exit code of the task.
    pub exit_code: i32,
    /// How long the task ran.
    pub duration_ms: u64,
    /// Captured stdout.
    pub stdout: LogRecord,
    /// Captured stderr.
    pub stderr: LogRecord,
    /// Outputs, in the order they are restored (directories, files, symlinks); at
    /// most [`MAX_OUTPUTS`].
    #[serde(deserialize_with = "bounded_outputs")]
    pub outputs: Vec<OutputRecord>,
    /// The order the task wrote its stdout and stderr in (empty: not recorded). Kept
    /// after the record (format versions 3 and 4) and covered by its signature.
    #[serde(skip)]
    pub log_order: LogOrder,
    /// Symlink outputs with absolute targets (only for a task that opted in; `Cache`
    /// refuses a record that has any for a task that did not). Kept after the record,
    /// like the log order, and signed with it.
    #[serde(skip)]
    pub absolute_symlinks: Vec<AbsoluteSymlink>,
    /// The writer's signature over [`ActionRecord::signed_bytes`], if it signed.
    /// Carried beside the record (format version 2), not inside what is signed.
    #[serde(skip)]
    pub signature: Option<crate::sign::EntrySignature>,
}

/// Format version 2: a version-1 payload and the signature over exactly those bytes.
#[derive(Serialize, Deserialize)]
struct SignedPayload {
    record: Vec<u8>,
    signature: crate::sign::EntrySignature,
}

/// Most outputs one entry may list. Decoding stops at the first output past it, so a
/// hostile entry of tiny records cannot make a decode allocate gigabytes (each
/// decoded output takes far more memory than its few encoded bytes).
pub const MAX_OUTPUTS: usize = 1_000_000;

fn bounded_outputs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<OutputRecord>, D::Error> {
    d.deserialize_seq(Bounded::<OutputRecord, MAX_OUTPUTS>(
        std::marker::PhantomData,
    ))
}

impl ActionRecord {
    /// Every blob the record needs: file contents and large logs.
    pub fn blobs(&self) -> impl Iterator<Item = BlobRef> + '_ {
        let logs = [&self.stdout, &self.stderr]
            .into_iter()
            .filter_map(|l| match l {
                LogRecord::Blob(b) => Some(*b),
                _ => None,
            });
        let files = self.outputs.iter().filter_map(|o| match o {
            OutputRecord::File { blob, .. } => Some(*blob),
            _ => None,
        });
        logs.chain(files)
    }

    /// Encodes with header and checksum: what a byte store (a directory, an object
    /// store) keeps as the entry. It does not validate (a record reaches a storage
    /// from `Cache`, which built it from checked outputs); [`ActionRecord::decode`]
    /// checks everything on the way back.
    pub fn encode(&self) -> BackendResult<Vec<u8>> {
        let record = self.signed_bytes()?;
        let extras = if self.has_extras() { WITH_EXTRAS } else { 0 };
        let (version, payload) = match &self.signature {
            // Unsigned entries without extras keep version 1, so older readers use them.
            None => (VERSION_UNSIGNED + extras, record),
            Some(signature) => (
                VERSION_SIGNED + extras,
                postcard::to_stdvec(&SignedPayload {
                    record,
                    signature: signature.clone(),
                })
                .map_err(|e| BackendError::serialization("encode a cache entry", e))?,
            ),
        };
        // One bound for writing and reading: an entry that `decode` would refuse is
        // never written (it would be a miss for every reader, stored anyway).
        if HEADER + payload.len() > MAX_ENTRY_BYTES {
            return Err(BackendError::Serialization(
                format!(
                    "the entry for {} takes {} bytes, over the {MAX_ENTRY_BYTES}-byte limit \
                     (declare fewer outputs, e.g. a directory's parent rather than its files)",
                    self.key,
                    HEADER + payload.len()
                )
                .into(),
            ));
        }
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.extend_from_slice(MAGIC);
        out.push(version);
        out.extend_from_slice(blake3::hash(&payload).as_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Decodes and validates an entry read for `key`. Every failure is
    /// [`BackendError::CorruptEntry`] naming the key and the failed check.
    pub fn decode(key: &Digest, bytes: &[u8]) -> BackendResult<Self> {
        let corrupt = |reason: String| BackendError::CorruptEntry { key: *key, reason };
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(corrupt(format!(
                "{} bytes is over the {MAX_ENTRY_BYTES}-byte limit",
                bytes.len()
            )));
        }
        if bytes.len() < HEADER || &bytes[..4] != MAGIC {
            return Err(corrupt("not a taskcache entry (bad header)".into()));
        }
        if bytes[4] > VERSION {
            // Written by a newer taskcache sharing this cache: not ours to judge or delete.
            return Err(BackendError::NewerEntryFormat {
                key: *key,
                version: bytes[4],
            });
        }
        if bytes[4] < VERSION_UNSIGNED {
            return Err(corrupt(format!(
                "entry format version {} is not understood by this taskcache (it reads versions {VERSION_UNSIGNED} to {VERSION})",
                bytes[4]
            )));
        }
        let payload = &bytes[HEADER..];
        if blake3::hash(payload).as_bytes() != &bytes[5..HEADER] {
            return Err(corrupt("checksum mismatch (torn or altered file)".into()));
        }
        let extras = bytes[4] > VERSION_SIGNED;
        if bytes[4] % 2 == VERSION_UNSIGNED % 2 {
            return Self::decode_record(key, payload, None, extras);
        }
        let (signed, rest): (SignedPayload, _) = postcard::take_from_bytes(payload)
            .map_err(|e| corrupt(format!("signed payload does not decode: {e}")))?;
        if !rest.is_empty() {
            return Err(corrupt("trailing bytes after the payload".into()));
        }
        // Decoded from the very bytes the signature covers.
        Self::decode_record(key, &signed.record, Some(signed.signature), extras)
    }

    /// The bytes a signature covers: the record's own encoding, then its extras (the
    /// log order) if it has any.
    pub fn signed_bytes(&self) -> BackendResult<Vec<u8>> {
        let encode = |e| BackendError::serialization("encode a cache entry", e);
        let mut bytes = postcard::to_stdvec(self).map_err(encode)?;
        if self.has_extras() {
            let extras = Extras {
                log_order: self.log_order.clone(),
                absolute_symlinks: self.absolute_symlinks.clone(),
            };
            bytes.extend(postcard::to_stdvec(&extras).map_err(encode)?);
        }
        Ok(bytes)
    }

    fn decode_record(
        key: &Digest,
        payload: &[u8],
        signature: Option<crate::sign::EntrySignature>,
        extras: bool,
    ) -> BackendResult<Self> {
        let corrupt = |reason: String| BackendError::CorruptEntry { key: *key, reason };
        let (mut record, mut rest): (ActionRecord, _) = postcard::take_from_bytes(payload)
            .map_err(|e| corrupt(format!("payload does not decode: {e}")))?;
        if extras {
            let (x, after): (Extras, _) = postcard::take_from_bytes(rest)
                .map_err(|e| corrupt(format!("extras do not decode: {e}")))?;
            if x.log_order.is_empty() && x.absolute_symlinks.is_empty() {
                return Err(corrupt(
                    "empty extras (the writer would have left them out)".into(),
                ));
            }
            record.log_order = x.log_order;
            record.absolute_symlinks = x.absolute_symlinks;
            rest = after;
        }
        if !rest.is_empty() {
            return Err(corrupt("trailing bytes after the payload".into()));
        }
        record.signature = signature;
        if record.key != *key {
            return Err(corrupt(format!("entry belongs to key {}", record.key)));
        }
        record.validate().map_err(|e| corrupt(e.to_string()))?;
        Ok(record)
    }

    fn has_extras(&self) -> bool {
        !self.log_order.is_empty() || !self.absolute_symlinks.is_empty()
    }

    /// Checks the output layout ([`crate::check_layout`], absolute symlinks included as
    /// leaves, their targets by [`crate::check_absolute_symlink_target`]), inline log
    /// sizes and the log order.
    pub fn validate(&self) -> BackendResult<()> {
        let absolute = self
            .absolute_symlinks
            .iter()
            .map(|l| (l.path.as_str(), OutputKind::File));
        let rels = check_layout(
            self.outputs
                .iter()
                .map(|o| match o {
                    OutputRecord::File { path, .. } => (path.as_str(), OutputKind::File),
                    OutputRecord::Directory { path } => (path.as_str(), OutputKind::Directory),
                    OutputRecord::Symlink { path, target } => {
                        (path.as_str(), OutputKind::Symlink(target))
                    }
                })
                .chain(absolute),
        )?;
        for (rel, l) in rels[self.outputs.len()..]
            .iter()
            .zip(&self.absolute_symlinks)
        {
            crate::path::check_absolute_symlink_target(rel, &l.target)?;
        }
        for log in [&self.stdout, &self.stderr] {
            if let LogRecord::Inline(b) = log {
                if b.len() > INLINE_LOG_MAX {
                    return Err(BackendError::Serialization(
                        "inline log over its size limit".into(),
                    ));
                }
            }
        }
        check_log_order(&self.log_order, self.stdout.len(), self.stderr.len())
            .map_err(|e| BackendError::Serialization(e.into()))
    }
}

impl LogRecord {
    /// The stream's length in bytes (0 when absent).
    #[must_use]
    pub fn len(&self) -> u64 {
        match self {
            LogRecord::Absent => 0,
            LogRecord::Inline(b) => b.len() as u64,
            LogRecord::Blob(b) => b.size,
        }
    }

    /// Whether the stream is absent or empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A log order must account for every byte of both streams, in at most
/// [`MAX_LOG_CHUNKS`] chunks (an empty order: none recorded).
pub(crate) fn check_log_order(order: &[LogChunk], stdout: u64, stderr: u64) -> Result<(), String> {
    if order.is_empty() {
        return Ok(());
    }
    if order.len() > MAX_LOG_CHUNKS {
        return Err(format!("log order has more than {MAX_LOG_CHUNKS} chunks"));
    }
    let (mut out, mut err) = (0u64, 0u64);
    for c in order {
        let n = match c.stream {
            LogStream::Stdout => &mut out,
            LogStream::Stderr => &mut err,
        };
        *n = n.saturating_add(c.len);
    }
    if (out, err) == (stdout, stderr) {
        Ok(())
    } else {
        Err(format!(
            "log order covers {out} stdout and {err} stderr bytes, the logs have {stdout} and {stderr}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DigestAlgorithm;

    fn sample() -> ActionRecord {
        let key = DigestAlgorithm::Blake3.digest(b"k");
        ActionRecord {
            key,
            exit_code: 3,
            duration_ms: 42,
            stdout: LogRecord::Inline(b"out\n".to_vec()),
            stderr: LogRecord::Absent,
            outputs: vec![
                OutputRecord::Directory { path: "d".into() },
                OutputRecord::File {
                    path: "d/f".into(),
                    blob: BlobRef::of(DigestAlgorithm::Blake3, b"x"),
                    executable: true,
                },
                OutputRecord::Symlink {
                    path: "l".into(),
                    target: "d/f".into(),
                },
            ],
            log_order: Vec::new(),
            absolute_symlinks: Vec::new(),
            signature: None,
        }
    }

    #[test]
    fn an_entry_over_the_limit_is_never_encoded() {
        // Paths of 4000 bytes: ~17k outputs make an encoding over 64 MiB.
        let mut r = sample();
        let long = "p".repeat(4000);
        r.outputs = (0..(MAX_ENTRY_BYTES / 4000 + 16))
            .map(|i| OutputRecord::Directory {
                path: format!("{long}{i}"),
            })
            .collect();
        let e = r.encode().unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        r.outputs.truncate(MAX_ENTRY_BYTES / 4100);
        let bytes = r.encode().unwrap();
        assert!(bytes.len() <= MAX_ENTRY_BYTES);
        ActionRecord::decode(&r.key, &bytes).unwrap();
    }

    fn chunk(stream: LogStream, len: u64) -> LogChunk {
        LogChunk { stream, len }
    }

    #[test]
    fn log_order_round_trips_in_version_3_and_leaves_version_1_alone() {
        let plain = sample();
        assert_eq!(plain.encode().unwrap()[4], 1, "no order: still version 1");
        let mut r = sample();
        r.stderr = LogRecord::Inline(b"err\n".to_vec());
        r.log_order = vec![
            chunk(LogStream::Stdout, 2),
            chunk(LogStream::Stderr, 4),
            chunk(LogStream::Stdout, 2),
        ];
        let bytes = r.encode().unwrap();
        assert_eq!(bytes[4], 3);
        assert_eq!(ActionRecord::decode(&r.key, &bytes).unwrap(), r);
    }

    #[test]
    fn a_log_order_that_misdescribes_the_logs_is_corrupt() {
        let mut r = sample();
        r.log_order = vec![chunk(LogStream::Stdout, 3)]; // stdout has 4 bytes
        let err = ActionRecord::decode(&r.key, &r.encode().unwrap()).unwrap_err();
        assert_eq!(err.kind(), "corrupt_entry", "{err}");
        assert!(err.to_string().contains("log order"), "{err}");
        r.log_order = vec![chunk(LogStream::Stdout, 4), chunk(LogStream::Stderr, 1)];
        assert!(ActionRecord::decode(&r.key, &r.encode().unwrap()).is_err());
    }

    #[test]
    fn versions_past_4_are_newer_formats() {
        let mut bytes = sample().encode().unwrap();
        bytes[4] = 5;
        let err = ActionRecord::decode(&sample().key, &bytes).unwrap_err();
        assert_eq!(err.kind(), "newer_entry_format", "{err}");
    }

    #[test]
    fn round_trip() {
        let r = sample();
        let bytes = r.encode().unwrap();
        assert_eq!(ActionRecord::decode(&r.key, &bytes).unwrap(), r);
        assert_eq!(r.blobs().count(), 1);
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let r = sample();
        let bytes = r.encode().unwrap();
        for i in 0..bytes.len() {
            for bit in [0, 7] {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(
                    ActionRecord::decode(&r.key, &b).is_err(),
                    "byte {i} bit {bit}"
                );
            }
        }
        for n in 0..bytes.len() {
            assert!(ActionRecord::decode(&r.key, &bytes[..n]).is_err());
        }
    }

    #[test]
    fn hostile_records_are_refused() {
        let other = DigestAlgorithm::Blake3.digest(b"other");
        let r = sample();
        assert!(ActionRecord::decode(&other, &r.encode().unwrap()).is_err());
        for bad in ["../escape", "/abs", "", "a/../../b"] {
            let mut h = sample();
            h.outputs.push(OutputRecord::Directory { path: bad.into() });
            let err = ActionRecord::decode(&h.key, &h.encode().unwrap()).unwrap_err();
            assert!(
                matches!(err, BackendError::CorruptEntry { .. }),
                "{bad}: {err}"
            );
        }
        let mut h = sample();
        h.outputs.push(OutputRecord::Symlink {
            path: "x".into(),
            target: "../../etc".into(),
        });
        assert!(ActionRecord::decode(&h.key, &h.encode().unwrap()).is_err());
        let mut h = sample();
        h.outputs.push(OutputRecord::Directory {
            path: "./d/".into(),
        });
        assert!(
            ActionRecord::decode(&h.key, &h.encode().unwrap()).is_err(),
            "duplicate path"
        );
    }
}
