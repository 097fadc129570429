//! The stored form of an entry (the action result) and its self-checking encoding.
//!
//! Wire format, version 1 (what local and object-store backends write):
//!
//! ```text
//! magic   4 bytes  "TCAR"
//! version 1 byte   1
//! check  32 bytes  BLAKE3 of the payload
//! payload          postcard 1.x encoding of `ActionRecord`
//! ```
//!
//! [`ActionRecord::decode`] refuses anything over [`MAX_ENTRY_BYTES`], a wrong magic,
//! an unknown version, a failed checksum, a payload that does not decode, a record
//! stored under another key, and any record that names an unsafe path. Decoding reads
//! from a bounded slice, so no declared length can make it allocate more than the slice.

use crate::path::{OutputKind, check_layout};
use crate::{BackendError, BackendResult, BlobRef, Digest};
use serde::{Deserialize, Serialize};

/// Largest encoded entry accepted. Logs over [`INLINE_LOG_MAX`] live in blobs, so this
/// bounds only the output list (about 300,000 outputs with typical path lengths).
pub const MAX_ENTRY_BYTES: usize = 64 << 20;

/// Logs up to this size are stored inside the entry; larger ones become blobs.
pub const INLINE_LOG_MAX: usize = 64 << 10;

const MAGIC: &[u8; 4] = b"TCAR";
/// Unsigned entries (readable by every taskcache since the first).
const VERSION_UNSIGNED: u8 = 1;
/// Signed entries: the newest format this taskcache writes and reads.
const VERSION: u8 = 2;
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
    struct Bounded;
    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = Vec<OutputRecord>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "at most {MAX_OUTPUTS} outputs")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            // The declared length is the cache writer's: never allocate from it.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(o) = seq.next_element()? {
                if out.len() == MAX_OUTPUTS {
                    return Err(serde::de::Error::custom(format!(
                        "more than {MAX_OUTPUTS} outputs"
                    )));
                }
                out.push(o);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded)
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
        let (version, payload) = match &self.signature {
            // Unsigned entries keep version 1, so older readers still use them.
            None => (VERSION_UNSIGNED, record),
            Some(signature) => (
                VERSION,
                postcard::to_stdvec(&SignedPayload {
                    record,
                    signature: signature.clone(),
                })
                .map_err(|e| BackendError::serialization("encode a cache entry", e))?,
            ),
        };
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
        let (payload, signature) = if bytes[4] == VERSION_UNSIGNED {
            (payload, None)
        } else {
            let (signed, rest): (SignedPayload, _) = postcard::take_from_bytes(payload)
                .map_err(|e| corrupt(format!("signed payload does not decode: {e}")))?;
            if !rest.is_empty() {
                return Err(corrupt("trailing bytes after the payload".into()));
            }
            // Decoded below from the very bytes the signature covers.
            let record = signed.record;
            return Self::decode_record(key, &record, Some(signed.signature));
        };
        Self::decode_record(key, payload, signature)
    }

    /// The bytes a signature covers: the record's own encoding (version 1 payload).
    pub fn signed_bytes(&self) -> BackendResult<Vec<u8>> {
        postcard::to_stdvec(self)
            .map_err(|e| BackendError::serialization("encode a cache entry", e))
    }

    fn decode_record(
        key: &Digest,
        payload: &[u8],
        signature: Option<crate::sign::EntrySignature>,
    ) -> BackendResult<Self> {
        let corrupt = |reason: String| BackendError::CorruptEntry { key: *key, reason };
        let (mut record, rest): (ActionRecord, _) = postcard::take_from_bytes(payload)
            .map_err(|e| corrupt(format!("payload does not decode: {e}")))?;
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

    /// Checks the output layout ([`crate::check_layout`]) and inline log sizes.
    pub fn validate(&self) -> BackendResult<()> {
        check_layout(self.outputs.iter().map(|o| match o {
            OutputRecord::File { path, .. } => (path.as_str(), OutputKind::File),
            OutputRecord::Directory { path } => (path.as_str(), OutputKind::Directory),
            OutputRecord::Symlink { path, target } => (path.as_str(), OutputKind::Symlink(target)),
        }))?;
        for log in [&self.stdout, &self.stderr] {
            if let LogRecord::Inline(b) = log {
                if b.len() > INLINE_LOG_MAX {
                    return Err(BackendError::Serialization(
                        "inline log over its size limit".into(),
                    ));
                }
            }
        }
        Ok(())
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
            signature: None,
        }
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
