//! `ActionResult` (and the blobs it names) -> record, strictly.

use super::{
    EXTENSION_TYPE, Extension, FORMAT, LOG_ABSENT, LOG_BLOB, LOG_INLINE, P_FORMAT, from_digest,
    message_blob, record_checksum, truncate,
};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::protobuf::Timestamp;
use cache_core::storage::{ActionRecord, LogRecord, MAX_OUTPUTS, OutputRecord};
use cache_core::{BackendError, BlobRef, Digest, DigestAlgorithm, MAX_PATH_DEPTH};
use prost::Message;
use std::collections::HashMap;

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
        (
            ext.as_ref().map(|e| e.stdout),
            &result.stdout_raw,
            &result.stdout_digest,
        ),
        (
            ext.as_ref().map(|e| e.stderr),
            &result.stderr_raw,
            &result.stderr_digest,
        ),
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
        let digest = d
            .digest
            .as_ref()
            .ok_or("a directory node without a digest")?;
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
pub fn decode_result<H: std::hash::BuildHasher>(
    key: &Digest,
    result: &re::ActionResult,
    blobs: &HashMap<BlobRef, Vec<u8>, H>,
    algorithm: DigestAlgorithm,
) -> Result<Option<ActionRecord>, BackendError> {
    let corrupt = |reason: String| BackendError::CorruptEntry {
        key: *key,
        reason: format!("unmappable ActionResult: {reason}"),
    };
    let Some(ext) = extension(result).map_err(corrupt)? else {
        // Only taskcache writes under its actions' keys, and one flipped bit (a tag, the
        // `type_url`) can make the extension vanish: such a result may be damaged.
        return Err(corrupt("no taskcache extension".into()));
    };
    if ext.format > FORMAT {
        return Err(BackendError::NewerEntryFormat {
            key: *key,
            version: u8::try_from(ext.format).unwrap_or(u8::MAX),
        });
    }
    if ext.format < FORMAT {
        return Err(corrupt(format!(
            "extension format {} (this taskcache reads format {FORMAT}, which has a checksum)",
            ext.format
        )));
    }
    if ext.removed {
        return Ok(None);
    }
    let checksum = ext
        .checksum
        .ok_or_else(|| corrupt("no record checksum".into()))?;
    let record_key = Digest::parse(&ext.key).map_err(|_| corrupt("malformed key".into()))?;
    let found = outputs_of(result, blobs, algorithm).map_err(corrupt)?;
    let outputs = in_order(found, &ext.order).map_err(corrupt)?;
    let stdout = log_of(
        ext.stdout,
        &result.stdout_raw,
        result.stdout_digest.as_ref(),
        blobs,
        algorithm,
    )
    .map_err(corrupt)?;
    let stderr = log_of(
        ext.stderr,
        &result.stderr_raw,
        result.stderr_digest.as_ref(),
        blobs,
        algorithm,
    )
    .map_err(corrupt)?;
    let signature = (!ext.signer.is_empty()).then_some(cache_core::sign::EntrySignature {
        public_key: ext.signer,
        signature: ext.signature,
    });
    if ext.absolute_symlinks.iter().any(|l| l.target.is_empty()) {
        return Err(corrupt("an absolute symlink without its target".into()));
    }
    let record = ActionRecord {
        key: record_key,
        exit_code: result.exit_code,
        duration_ms: result.execution_metadata.as_ref().map_or(0, duration_of),
        stdout,
        stderr,
        outputs,
        log_order: ext.log_order,
        absolute_symlinks: ext.absolute_symlinks,
        signature,
    };
    // Blobs are checked by digest; this checks every field around them (modes, paths,
    // targets, exit code, logs, order), which the server keeps unprotected.
    if record_checksum(&record)? != checksum {
        return Err(corrupt(
            "the record does not match its checksum (a damaged result)".into(),
        ));
    }
    Ok(Some(record))
}

/// Every output the result names: trees expanded, then files, then symlinks.
fn outputs_of<H: std::hash::BuildHasher>(
    result: &re::ActionResult,
    blobs: &HashMap<BlobRef, Vec<u8>, H>,
    algorithm: DigestAlgorithm,
) -> Result<Vec<OutputRecord>, String> {
    let mut found = Found {
        outputs: Vec::new(),
    };
    for d in &result.output_directories {
        let t = d.tree_digest.as_ref().ok_or("no tree")?;
        let tree_ref = from_digest(t, algorithm)?;
        let bytes = blobs
            .get(&tree_ref)
            .ok_or_else(|| format!("tree {tree_ref} was not read"))?;
        let decoded = re::Tree::decode(bytes.as_slice())
            .map_err(|e| format!("tree {tree_ref} does not decode: {e}"))?;
        let root = decoded.root.as_ref().ok_or("a tree without a root")?;
        let children: HashMap<BlobRef, &re::Directory> = decoded
            .children
            .iter()
            .map(|c| (message_blob(c, algorithm).0, c))
            .collect();
        expand(root, &d.path, 0, &children, algorithm, &mut found)?;
    }
    for f in &result.output_files {
        let d = f.digest.as_ref().ok_or("a file without a digest")?;
        found.push(OutputRecord::File {
            path: f.path.clone(),
            blob: from_digest(d, algorithm)?,
            executable: f.is_executable,
        })?;
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
        found.push(OutputRecord::Symlink {
            path: s.path.clone(),
            target: s.target.clone(),
        })?;
    }
    Ok(found.outputs)
}

/// One log: absent, inline (checked against its digest) or a blob.
fn log_of<H: std::hash::BuildHasher>(
    kind: u32,
    raw: &[u8],
    digest: Option<&re::Digest>,
    blobs: &HashMap<BlobRef, Vec<u8>, H>,
    algorithm: DigestAlgorithm,
) -> Result<LogRecord, String> {
    let digest = digest.map(|d| from_digest(d, algorithm)).transpose()?;
    match (kind, digest) {
        (LOG_ABSENT, _) => Ok(LogRecord::Absent),
        (LOG_INLINE, None) => Ok(LogRecord::Inline(raw.to_vec())),
        (LOG_INLINE, Some(d)) => {
            let bytes = if raw.is_empty() && d.size > 0 {
                blobs
                    .get(&d)
                    .cloned()
                    .ok_or_else(|| format!("inline log {d} was not read"))?
            } else {
                raw.to_vec()
            };
            if BlobRef::of(algorithm, &bytes) != d {
                return Err(format!("inline log does not match its digest {d}"));
            }
            Ok(LogRecord::Inline(bytes))
        }
        (LOG_BLOB, Some(d)) => Ok(LogRecord::Blob(d)),
        (LOG_BLOB, None) => Err("a log blob without a digest".into()),
        (k, _) => Err(format!("unknown log kind {k}")),
    }
}

/// The duration the timestamps carry (execution, else worker), in milliseconds.
fn duration_of(m: &re::ExecutedActionMetadata) -> u64 {
    if m.execution_start_timestamp.is_some() {
        millis_between(
            m.execution_start_timestamp.as_ref(),
            m.execution_completed_timestamp.as_ref(),
        )
    } else {
        millis_between(
            m.worker_start_timestamp.as_ref(),
            m.worker_completed_timestamp.as_ref(),
        )
    }
}

/// Puts `found` in the order the writer recorded. Directories implied by a tree but
/// not recorded (the parents of recorded outputs) are left out; any other difference
/// is an error. A directory with nothing recorded below it is not implied by
/// anything: the writer recorded it, so the order lost it (a damaged result) and a
/// restore without it would be partial.
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
    let implied = |dir: &str| {
        order
            .iter()
            .any(|p| p.len() > dir.len() && p.starts_with(dir) && p.as_bytes()[dir.len()] == b'/')
    };
    if let Some(extra) = by_path
        .values()
        .find(|o| !matches!(o, OutputRecord::Directory { path } if implied(path)))
    {
        return Err(format!(
            "output {:?} is in the result but not recorded",
            truncate(extra.path())
        ));
    }
    Ok(out)
}
