//! `ActionResult` (and the blobs it names) -> record, strictly and within bounds.
//!
//! Whoever can write the REAPI cache writes these bytes, and a `Tree` is a DAG: its
//! directories name children by digest, so a few kilobytes whose directories name
//! one child twice, level after level, would expand to millions of paths. Nothing is
//! therefore expanded before it is bounded, and the work follows the bytes received:
//!
//! * The cheap fields first: the extension (format, key, checksum), the recorded paths
//!   (its `order`: at most [`MAX_OUTPUTS`], at most [`MAX_ENTRY_BYTES`] in all, none
//!   twice), sorted once so every lookup below is a binary search, and the logs.
//! * Every `Directory` of a `Tree`, once, before any expansion: each name plain
//!   ([`plain_name`]: not empty, `.` or `..`; no `/`, `\` or NUL; at most
//!   [`MAX_NAME_BYTES`]) and no name twice among its files, symlinks and directories.
//! * Each path the expansion reaches: its length ([`MAX_PATH_BYTES`]) and depth
//!   ([`MAX_PATH_DEPTH`]) before it is formed; then it must be a recorded output (each
//!   found once) or a directory above one (at most as many such visits as the
//!   recorded paths have `/`s), or the expansion stops there. So a tree expands only
//!   as far as the recorded paths reach (directories that share a child, as identical
//!   ones legitimately do, included), and every entry examined is paid for by one
//!   recorded path or one of its `/`s ([`Work`]).
//! * Symlink targets share the [`MAX_ENTRY_BYTES`] budget with the recorded paths: the
//!   writer refuses a record whose encoding is larger, so no record it wrote needs more.
//! * A stop signal ([`decode_result_until`]: the lookup's [`CancelToken`], cancelled
//!   when the lookup is dropped or times out) is checked at every directory.

use super::{
    EXTENSION_TYPE, Extension, FORMAT, LOG_ABSENT, LOG_BLOB, LOG_INLINE, P_FORMAT, from_digest,
    message_blob, record_checksum, truncate,
};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::protobuf::Timestamp;
use cache_core::cancel::CancelToken;
use cache_core::storage::{ActionRecord, LogRecord, MAX_ENTRY_BYTES, MAX_OUTPUTS, OutputRecord};
use cache_core::{BackendError, BlobRef, Digest, DigestAlgorithm, MAX_PATH_BYTES, MAX_PATH_DEPTH};
use prost::Message;
use std::collections::HashMap;
use std::ops::Range;

/// Longest name of a `Tree` entry, in bytes (Linux's `NAME_MAX`). The writer nests
/// only paths whose every component fits; others stay top-level outputs.
pub const MAX_NAME_BYTES: usize = 255;

/// Whether `name` may name a `Tree` entry: not empty, `.` or `..`, no `/`, `\` or NUL,
/// at most [`MAX_NAME_BYTES`]. The writer nests only paths made of such names.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= MAX_NAME_BYTES
        && !name.contains(['/', '\\', '\0'])
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

/// Why a decode did not finish: the result cannot be mapped, or the stop flag was set.
enum Refusal {
    Corrupt(String),
    Stopped,
}

impl From<String> for Refusal {
    fn from(s: String) -> Self {
        Refusal::Corrupt(s)
    }
}

impl From<&str> for Refusal {
    fn from(s: &str) -> Self {
        Refusal::Corrupt(s.to_owned())
    }
}

/// What a decode examined: every output directory, file, symlink and `Tree` entry it
/// looked up. Each is paid for by a recorded path or one `/` of one, so `examined`
/// never exceeds `bound` (the count of recorded paths and their `/`s, plus the one
/// entry that ended a refused decode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Work {
    /// Entries looked up.
    pub(crate) examined: usize,
    /// The most that may be looked up (0 until the recorded paths were read).
    pub(crate) bound: usize,
}

/// The recorded output paths (the extension's `order`), sorted once for lookups, and
/// the outputs found for them.
struct Order<'a> {
    paths: &'a [String],
    /// Indices into `paths`, by path.
    sorted: Vec<usize>,
    /// The output found for each recorded path, by index into `paths`.
    found: Vec<Option<OutputRecord>>,
    /// Visits left for directories found only above recorded paths.
    above_left: usize,
    /// Bytes left for symlink targets.
    target_bytes_left: usize,
}

impl<'a> Order<'a> {
    fn new(paths: &'a [String]) -> Result<Self, String> {
        if paths.len() > MAX_OUTPUTS {
            return Err(format!("more than {MAX_OUTPUTS} outputs"));
        }
        let bytes = paths.iter().fold(0usize, |n, p| n.saturating_add(p.len()));
        if bytes > MAX_ENTRY_BYTES {
            return Err(format!(
                "its paths take {bytes} bytes, over the {MAX_ENTRY_BYTES}-byte limit"
            ));
        }
        let mut sorted: Vec<usize> = (0..paths.len()).collect();
        sorted.sort_unstable_by(|&a, &b| paths[a].cmp(&paths[b]));
        if let Some(w) = sorted.windows(2).find(|w| paths[w[0]] == paths[w[1]]) {
            return Err(format!(
                "output {:?} is recorded twice",
                truncate(&paths[w[0]])
            ));
        }
        Ok(Order {
            paths,
            sorted,
            found: vec![None; paths.len()],
            above_left: paths
                .iter()
                .map(|p| p.bytes().filter(|&b| b == b'/').count())
                .sum(),
            target_bytes_left: MAX_ENTRY_BYTES - bytes,
        })
    }

    fn all(&self) -> Range<usize> {
        0..self.sorted.len()
    }

    /// The first position in `from..to` of `sorted` whose path, past its first `skip`
    /// bytes, fails `pred` (which must hold for a prefix of that range).
    fn partition(
        &self,
        from: usize,
        to: usize,
        skip: usize,
        pred: impl Fn(&[u8]) -> bool,
    ) -> usize {
        from + self.sorted[from..to]
            .partition_point(|&i| pred(self.paths[i].as_bytes().get(skip..).unwrap_or_default()))
    }

    /// `name` among the positions `within`, whose paths all begin with the same `skip`
    /// bytes: the index of the recorded path it completes, if any, and the positions of
    /// the recorded paths below it (`name/...`). Compares only bytes past `skip`.
    fn find(
        &self,
        within: &Range<usize>,
        skip: usize,
        name: &str,
    ) -> (Option<usize>, Range<usize>) {
        let name = name.as_bytes();
        let end = within.end;
        let first = self.partition(within.start, end, skip, |s| s < name);
        let recorded = self
            .sorted
            .get(first)
            .filter(|&&i| first < end && self.paths[i].as_bytes().get(skip..) == Some(name))
            .copied();
        let dir = name.iter().chain(std::iter::once(&b'/'));
        let lo = self.partition(first, end, skip, |s| s.iter().lt(dir.clone()));
        let hi = self.partition(lo, end, skip, |s| {
            s.len() > name.len() && s.starts_with(name) && s[name.len()] == b'/'
        });
        (recorded, lo..hi)
    }

    /// Keeps `o` as the output of recorded path `i`; a second one is an error.
    fn place(&mut self, i: usize, o: OutputRecord) -> Result<(), String> {
        let slot = &mut self.found[i];
        if slot.is_some() {
            return Err(format!("output {:?} appears twice", truncate(o.path())));
        }
        *slot = Some(o);
        Ok(())
    }

    /// A directory `path` that is not recorded: allowed only above recorded paths
    /// (`below` not empty), and only as often as the recorded paths have levels.
    fn above(&mut self, path: &str, below: &Range<usize>) -> Result<(), String> {
        if below.is_empty() {
            return Err(unrecorded(path));
        }
        self.above_left = self
            .above_left
            .checked_sub(1)
            .ok_or("more directories than its recorded paths have levels")?;
        Ok(())
    }

    /// Takes `target`'s bytes from the budget.
    fn target(&mut self, target: &str) -> Result<String, String> {
        self.target_bytes_left = self
            .target_bytes_left
            .checked_sub(target.len())
            .ok_or_else(|| format!("its paths and targets take over {MAX_ENTRY_BYTES} bytes"))?;
        Ok(target.to_owned())
    }

    /// The outputs in record order; a recorded path not found is an error. A directory
    /// with nothing recorded below it is not implied by anything: the writer recorded
    /// it, so a result without it is damaged and a restore without it would be partial.
    fn into_outputs(self) -> Result<Vec<OutputRecord>, String> {
        let paths = self.paths;
        self.found
            .into_iter()
            .zip(paths)
            .map(|(o, p)| {
                o.ok_or_else(|| format!("recorded output {:?} is not in the result", truncate(p)))
            })
            .collect()
    }
}

fn unrecorded(path: &str) -> String {
    format!(
        "output {:?} is in the result but not recorded",
        truncate(path)
    )
}

/// Refuses a `Directory` with a name that is not plain or that it holds twice (among
/// its files, symlinks and directories together).
pub(crate) fn check_names(dir: &re::Directory) -> Result<(), String> {
    let mut names: Vec<&str> =
        Vec::with_capacity(dir.files.len() + dir.symlinks.len() + dir.directories.len());
    let all = (dir.files.iter().map(|f| f.name.as_str()))
        .chain(dir.symlinks.iter().map(|s| s.name.as_str()))
        .chain(dir.directories.iter().map(|d| d.name.as_str()));
    for name in all {
        if !plain_name(name) {
            return Err(format!(
                "a tree entry named {:?} ({} bytes; names are plain, at most {MAX_NAME_BYTES})",
                truncate(name),
                name.len()
            ));
        }
        names.push(name);
    }
    names.sort_unstable();
    match names.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(format!(
            "a tree directory holds two entries named {:?}",
            truncate(w[0])
        )),
        None => Ok(()),
    }
}

/// One decode: the recorded paths, the stop flag, the work done.
struct Decoder<'a, 'w> {
    order: Order<'a>,
    algorithm: DigestAlgorithm,
    stop: &'w CancelToken,
    work: &'w mut Work,
}

impl Decoder<'_, '_> {
    fn check_stop(&self) -> Result<(), Refusal> {
        if self.stop.is_cancelled() {
            return Err(Refusal::Stopped);
        }
        Ok(())
    }

    /// A top-level output's path: the index of the recorded path it is, if any, and
    /// the recorded paths below it.
    fn top(&mut self, path: &str) -> (Option<usize>, Range<usize>) {
        self.work.examined += 1;
        self.order.find(&self.order.all(), 0, path)
    }

    /// Entry `name` of the directory at `path` (`depth` components), whose recorded
    /// descendants are `within`: checked for length and depth before it is looked up.
    fn entry(
        &mut self,
        path: &str,
        depth: usize,
        within: &Range<usize>,
        name: &str,
    ) -> Result<(Option<usize>, Range<usize>), String> {
        self.work.examined += 1;
        if depth >= MAX_PATH_DEPTH {
            return Err(format!(
                "a tree path deeper than {MAX_PATH_DEPTH} levels below {:?}",
                truncate(path)
            ));
        }
        if path.len() + 1 + name.len() > MAX_PATH_BYTES {
            return Err(format!(
                "a tree path longer than {MAX_PATH_BYTES} bytes below {:?}",
                truncate(path)
            ));
        }
        Ok(self.order.find(within, path.len() + 1, name))
    }

    /// The output directory `d`: its tree read, checked and expanded.
    fn output_directory<H: std::hash::BuildHasher>(
        &mut self,
        d: &re::OutputDirectory,
        blobs: &HashMap<BlobRef, Vec<u8>, H>,
    ) -> Result<(), Refusal> {
        self.check_stop()?;
        let (recorded, below) = self.top(&d.path);
        match recorded {
            Some(i) => self.order.place(
                i,
                OutputRecord::Directory {
                    path: d.path.clone(),
                },
            )?,
            None => self.order.above(&d.path, &below)?,
        }
        let t = d.tree_digest.as_ref().ok_or("no tree")?;
        let tree_ref = from_digest(t, self.algorithm)?;
        let bytes = blobs
            .get(&tree_ref)
            .ok_or_else(|| format!("tree {tree_ref} was not read"))?;
        let tree = re::Tree::decode(bytes.as_slice())
            .map_err(|e| format!("tree {tree_ref} does not decode: {e}"))?;
        let root = tree.root.as_ref().ok_or("a tree without a root")?;
        check_names(root)?;
        let mut children = HashMap::with_capacity(tree.children.len());
        for c in &tree.children {
            self.check_stop()?;
            check_names(c)?;
            children.insert(message_blob(c, self.algorithm).0, c);
        }
        let mut path = d.path.clone();
        let depth = d.path.split('/').count();
        self.expand(root, &mut path, depth, &below, &children)
    }

    /// Expands `dir`, found at `path` (`depth` components) with the recorded paths
    /// `within` below it. `path` is one buffer, grown and cut back: no path is formed
    /// before it is checked.
    fn expand(
        &mut self,
        dir: &re::Directory,
        path: &mut String,
        depth: usize,
        within: &Range<usize>,
        children: &HashMap<BlobRef, &re::Directory>,
    ) -> Result<(), Refusal> {
        self.check_stop()?;
        let join = |path: &str, name: &str| format!("{path}/{name}");
        for f in &dir.files {
            let (recorded, _) = self.entry(path, depth, within, &f.name)?;
            let i = recorded.ok_or_else(|| unrecorded(&join(path, &f.name)))?;
            let d = f.digest.as_ref().ok_or("a file node without a digest")?;
            let blob = from_digest(d, self.algorithm)?;
            self.order.place(
                i,
                OutputRecord::File {
                    path: join(path, &f.name),
                    blob,
                    executable: f.is_executable,
                },
            )?;
        }
        for s in &dir.symlinks {
            let (recorded, _) = self.entry(path, depth, within, &s.name)?;
            let i = recorded.ok_or_else(|| unrecorded(&join(path, &s.name)))?;
            let target = self.order.target(&s.target)?;
            self.order.place(
                i,
                OutputRecord::Symlink {
                    path: join(path, &s.name),
                    target,
                },
            )?;
        }
        for d in &dir.directories {
            let (recorded, below) = self.entry(path, depth, within, &d.name)?;
            let digest = d
                .digest
                .as_ref()
                .ok_or("a directory node without a digest")?;
            let child = children
                .get(&from_digest(digest, self.algorithm)?)
                .ok_or_else(|| format!("the tree lacks directory {}", truncate(&digest.hash)))?;
            let len = path.len();
            path.push('/');
            path.push_str(&d.name);
            let placed = match recorded {
                Some(i) => self
                    .order
                    .place(i, OutputRecord::Directory { path: path.clone() }),
                None => self.order.above(path, &below),
            };
            let expanded = placed
                .map_err(Refusal::from)
                .and_then(|()| self.expand(child, path, depth + 1, &below, children));
            path.truncate(len);
            expanded?;
        }
        Ok(())
    }

    /// Every output the result names: files and symlinks, then trees expanded.
    fn outputs<H: std::hash::BuildHasher>(
        &mut self,
        result: &re::ActionResult,
        blobs: &HashMap<BlobRef, Vec<u8>, H>,
    ) -> Result<(), Refusal> {
        self.check_stop()?;
        for f in &result.output_files {
            let i = self.top(&f.path).0.ok_or_else(|| unrecorded(&f.path))?;
            let d = f.digest.as_ref().ok_or("a file without a digest")?;
            let blob = from_digest(d, self.algorithm)?;
            self.order.place(
                i,
                OutputRecord::File {
                    path: f.path.clone(),
                    blob,
                    executable: f.is_executable,
                },
            )?;
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
            let i = self.top(&s.path).0.ok_or_else(|| unrecorded(&s.path))?;
            let target = self.order.target(&s.target)?;
            self.order.place(
                i,
                OutputRecord::Symlink {
                    path: s.path.clone(),
                    target,
                },
            )?;
        }
        for d in &result.output_directories {
            self.output_directory(d, blobs)?;
        }
        Ok(())
    }
}

/// Maps a stored result back to the record for `key`. `blobs` holds the bytes of every
/// blob [`needed_blobs`] named. `Ok(None)`: a tombstone (the entry was removed).
pub fn decode_result<H: std::hash::BuildHasher>(
    key: &Digest,
    result: &re::ActionResult,
    blobs: &HashMap<BlobRef, Vec<u8>, H>,
    algorithm: DigestAlgorithm,
) -> Result<Option<ActionRecord>, BackendError> {
    decode_result_until(key, result, blobs, algorithm, &CancelToken::default())
}

/// [`decode_result`] that gives up once `stop` is set (checked at every directory), with
/// an `Unavailable` error: nothing is wrong with the result, nobody waits for it.
pub fn decode_result_until<H: std::hash::BuildHasher>(
    key: &Digest,
    result: &re::ActionResult,
    blobs: &HashMap<BlobRef, Vec<u8>, H>,
    algorithm: DigestAlgorithm,
    stop: &CancelToken,
) -> Result<Option<ActionRecord>, BackendError> {
    decode_counted(key, result, blobs, algorithm, stop, &mut Work::default())
}

/// [`decode_result_until`], counting the entries it examines in `work`.
pub(crate) fn decode_counted<H: std::hash::BuildHasher>(
    key: &Digest,
    result: &re::ActionResult,
    blobs: &HashMap<BlobRef, Vec<u8>, H>,
    algorithm: DigestAlgorithm,
    stop: &CancelToken,
    work: &mut Work,
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
    if ext.absolute_symlinks.iter().any(|l| l.target.is_empty()) {
        return Err(corrupt("an absolute symlink without its target".into()));
    }
    let order = Order::new(&ext.order).map_err(corrupt)?;
    work.bound = order.paths.len() + order.above_left + 1;
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
    let mut decoder = Decoder {
        order,
        algorithm,
        stop,
        work,
    };
    decoder.outputs(result, blobs).map_err(|r| match r {
        Refusal::Corrupt(reason) => corrupt(reason),
        Refusal::Stopped => {
            BackendError::unavailable("the lookup was dropped while its result was decoded")
        }
    })?;
    let outputs = decoder.order.into_outputs().map_err(corrupt)?;
    let signature = (!ext.signer.is_empty()).then_some(cache_core::sign::EntrySignature {
        public_key: ext.signer,
        signature: ext.signature,
    });
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
