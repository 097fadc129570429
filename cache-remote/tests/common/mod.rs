//! Shared by the REAPI test files: the peer lookup, and the `Tamper` that plants
//! entries as `ActionResult`s.
#![allow(dead_code, missing_docs)]

pub mod fake;

use async_trait::async_trait;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use cache_core::storage::{ActionRecord, EntryKey, LogRecord};
use cache_core::{BackendError, BackendResult, BlobRef, Digest, DigestAlgorithm};
use cache_remote::RemoteStorage;
use cache_remote::mapping::{self, Extension};
use std::collections::HashMap;
use std::sync::Mutex;

/// The REAPI server started by `cargo xtask peers up`, or `None` (with one line saying
/// why) when it is not running; with `TASKCACHE_REQUIRE_PEERS=1` a missing peer fails.
pub fn peer(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("TASKCACHE_REQUIRE_PEERS").as_deref() != Ok("1"),
                "{var} is not set and TASKCACHE_REQUIRE_PEERS=1: run `cargo xtask peers up`"
            );
            eprintln!("skipped: {var} is not set (start BuildGrid with `cargo xtask peers up`)");
            None
        }
    }
}

/// The key the conformance suite's task has under `digest`.
pub fn suite_key(digest: &Digest) -> EntryKey {
    EntryKey::new(*digest, &cache_testkit::fixtures::task())
}

#[derive(serde::Deserialize)]
struct SignedPayload {
    record: Vec<u8>,
    signature: cache_core::sign::EntrySignature,
}

/// Reads taskcache's entry encoding *without* validating it (hostile records must reach
/// the server as they are; `Cache` judges them when they come back).
pub fn lenient_decode(bytes: &[u8]) -> Option<ActionRecord> {
    if bytes.len() < 37 || &bytes[..4] != b"TCAR" {
        return None;
    }
    let payload = &bytes[37..];
    if blake3::hash(payload).as_bytes() != &bytes[5..37] {
        return None;
    }
    match bytes[4] {
        1 => {
            let (r, rest): (ActionRecord, _) = postcard::take_from_bytes(payload).ok()?;
            rest.is_empty().then_some(r)
        }
        2 => {
            let (s, rest): (SignedPayload, _) = postcard::take_from_bytes(payload).ok()?;
            let (mut r, tail): (ActionRecord, _) = postcard::take_from_bytes(&s.record).ok()?;
            (rest.is_empty() && tail.is_empty()).then(|| {
                r.signature = Some(s.signature);
                r
            })
        }
        _ => None,
    }
}

/// The `ActionResult` that stands for the raw entry `bytes`, and the blobs it needs:
/// a decodable record is mapped as the backend maps it (hostile paths and all); an
/// entry of a newer format becomes a result whose extension names that format; any
/// other bytes become a result whose extension does not decode.
pub fn result_for_raw(
    key: &Digest,
    bytes: &[u8],
    algorithm: DigestAlgorithm,
) -> (re::ActionResult, Vec<(BlobRef, Vec<u8>)>) {
    if let Some(record) = lenient_decode(bytes) {
        let enc = mapping::encode_record(&record, algorithm).expect("a decodable record encodes");
        let mut blobs = enc.trees;
        for log in [&record.stdout, &record.stderr] {
            if let LogRecord::Inline(b) = log {
                blobs.push((BlobRef::of(algorithm, b), b.clone()));
            }
        }
        return (enc.result, blobs);
    }
    let any = if bytes.len() > 5 && &bytes[..4] == b"TCAR" && bytes[4] > 2 {
        mapping::extension_any(&Extension {
            format: u32::from(bytes[4]),
            key: key.to_string(),
            ..Extension::default()
        })
    } else {
        // A zero tag never decodes: these bytes are not an extension.
        let mut value = vec![0u8];
        value.extend_from_slice(&bytes[..bytes.len().min(4096)]);
        bazel_remote_apis::google::protobuf::Any {
            type_url: mapping::EXTENSION_TYPE.into(),
            value,
        }
    };
    let result = re::ActionResult {
        execution_metadata: Some(re::ExecutedActionMetadata {
            auxiliary_metadata: vec![any],
            ..re::ExecutedActionMetadata::default()
        }),
        ..re::ActionResult::default()
    };
    (result, Vec::new())
}

/// Plants entries on a real server through a second [`RemoteStorage`]. A real server
/// verifies every blob it receives and deletes none: flipping or deleting a blob is
/// impossible there, so those cases run against the in-process server (`tests/fake.rs`).
pub struct ServerTamper {
    pub storage: RemoteStorage,
    planted: Mutex<HashMap<Digest, (Vec<u8>, re::ActionResult)>>,
}

impl ServerTamper {
    pub fn new(storage: RemoteStorage) -> Self {
        ServerTamper {
            storage,
            planted: Mutex::new(HashMap::new()),
        }
    }
}

fn same_extension(a: &re::ActionResult, b: &re::ActionResult) -> bool {
    let ext = |r: &re::ActionResult| {
        r.execution_metadata
            .as_ref()
            .map(|m| m.auxiliary_metadata.clone())
    };
    ext(a) == ext(b)
}

#[async_trait]
impl cache_testkit::Tamper for ServerTamper {
    async fn write_raw_entry(&self, key: &Digest, bytes: Vec<u8>) -> BackendResult<()> {
        let algorithm = self
            .storage
            .capabilities()
            .await?
            .algorithm(None, "test server")?;
        let (result, blobs) = result_for_raw(key, &bytes, algorithm);
        self.storage
            .put_raw_result(&suite_key(key), result.clone(), blobs)
            .await?;
        self.planted.lock().unwrap().insert(*key, (bytes, result));
        Ok(())
    }

    async fn read_raw_entry(&self, key: &Digest) -> BackendResult<Option<Vec<u8>>> {
        let Some(stored) = self.storage.get_raw_result(&suite_key(key)).await? else {
            return Ok(None);
        };
        // What was planted, while the server still holds the result it was planted as;
        // otherwise the stored result itself.
        if let Some((bytes, planted)) = self.planted.lock().unwrap().get(key) {
            if same_extension(planted, &stored) {
                return Ok(Some(bytes.clone()));
            }
        }
        Ok(Some(prost::Message::encode_to_vec(&stored)))
    }

    async fn flip_blob_byte(&self, _blob: &BlobRef) -> BackendResult<()> {
        Err(BackendError::unavailable(
            "a REAPI server verifies what it stores: bytes cannot be flipped under a digest",
        ))
    }

    async fn delete_blob(&self, _blob: &BlobRef) -> BackendResult<()> {
        Err(BackendError::unavailable(
            "REAPI has no way to delete a CAS blob",
        ))
    }
}

/// What a REAPI storage's harness declares: the memory bounds cache-remote documents.
pub fn capabilities() -> cache_testkit::Capabilities {
    cache_testkit::Capabilities::default().with_memory_bound(
        cache_remote::MEMORY_PER_PROCESS,
        cache_remote::MEMORY_PER_CALL,
    )
}
