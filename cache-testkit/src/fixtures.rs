//! Fixtures shared by the suite and by backends' own tests: temporary workspaces with
//! a watched outside, output trees with known bytes, snapshots of what is on disk and
//! their comparison, fresh keys, and builders for hostile entries.
//!
//! These are test helpers: they panic (with a message saying what failed) instead of
//! returning errors.
#![allow(clippy::missing_panics_doc)]

use cache_core::mode::is_executable;
use cache_core::storage::{ActionRecord, LogRecord};
use cache_core::{
    BackendError, BackendResult, BlobRef, CacheEntry, CacheOutput, Digest, DigestAlgorithm, Task,
};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The task every case passes (backends must not depend on its contents).
#[must_use]
pub fn task() -> Task {
    Task::new("cache-testkit", ["true"])
}

/// A number never returned before in this process, and unlikely in any other: seeds
/// content and keys so that cases sharing a persistent server never collide.
#[must_use]
pub fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = DigestAlgorithm::Blake3.hasher();
    h.update(&n.to_le_bytes());
    h.update(&nanos.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// A fresh, valid BLAKE3 cache key that no other call returns.
#[must_use]
pub fn fresh_key() -> String {
    fresh_key_with(DigestAlgorithm::Blake3)
}

/// A fresh, valid cache key using `algorithm`.
#[must_use]
pub fn fresh_key_with(algorithm: DigestAlgorithm) -> String {
    algorithm.digest(&fresh_seed().to_le_bytes()).to_string()
}

/// Parses a key the fixtures made.
#[must_use]
pub fn digest(key: &str) -> Digest {
    Digest::parse(key).expect("fixture keys are valid")
}

/// `len` deterministic pseudo-random bytes for `seed` (the same as
/// [`write_pattern_file`] writes).
#[must_use]
pub fn pattern_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut state = seed;
    while out.len() < len {
        let word = splitmix(&mut state).to_le_bytes();
        let take = word.len().min(len - out.len());
        out.extend_from_slice(&word[..take]);
    }
    out
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes `len` bytes of [`pattern_bytes`]`(seed, ..)` to `path` in bounded memory
/// (blocking) and returns their BLAKE3 [`BlobRef`].
pub fn write_pattern_file(path: &Path, seed: u64, len: u64) -> std::io::Result<BlobRef> {
    const CHUNK: usize = 1 << 20;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = DigestAlgorithm::Blake3.hasher();
    let mut state = seed;
    let mut buf = Vec::with_capacity(CHUNK);
    let mut left = len;
    while left > 0 {
        buf.clear();
        let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        while buf.len() < n {
            let word = splitmix(&mut state).to_le_bytes();
            let take = word.len().min(n - buf.len());
            buf.extend_from_slice(&word[..take]);
        }
        hasher.update(&buf);
        file.write_all(&buf)?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(BlobRef {
        digest: hasher.finalize(),
        size: len,
    })
}

/// One thing on disk, as [`Tree`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A regular file: its BLAKE3 content address and whether any execute bit is set.
    File {
        /// BLAKE3 digest and size of the content.
        blob: BlobRef,
        /// Whether the file is executable.
        executable: bool,
    },
    /// A directory.
    Dir,
    /// A symlink and its link text.
    Symlink(String),
}

impl Node {
    /// The node of an in-memory file.
    #[must_use]
    pub fn file(bytes: &[u8], executable: bool) -> Self {
        Node::File {
            blob: BlobRef::of(DigestAlgorithm::Blake3, bytes),
            executable,
        }
    }
}

/// A snapshot of a directory: every path below it (with `/` separators) and what is
/// there, symlinks not followed. File contents are kept as digests, so a snapshot of a
/// multi-GiB tree is small.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    /// Relative path to node.
    pub nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// Reads the tree under `root` (blocking; see [`Tree::read_async`]).
    pub fn read(root: &Path) -> Self {
        let mut tree = Tree::default();
        tree.read_dir(root, "");
        tree
    }

    /// Reads the tree under `root` on tokio's blocking pool.
    pub async fn read_async(root: &Path) -> Self {
        let root = root.to_path_buf();
        tokio::task::spawn_blocking(move || Tree::read(&root))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    fn read_dir(&mut self, dir: &Path, prefix: &str) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)
                .unwrap_or_else(|e| panic!("cannot inspect {}: {e}", path.display()));
            let node = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)
                    .unwrap_or_else(|e| panic!("cannot read link {}: {e}", path.display()));
                Node::Symlink(target.to_string_lossy().into_owned())
            } else if meta.is_dir() {
                self.read_dir(&path, &rel);
                Node::Dir
            } else {
                let mut f = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
                let blob = cache_core::storage::hash_reader(&mut f, DigestAlgorithm::Blake3)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                Node::File {
                    blob,
                    executable: is_executable(&meta),
                }
            };
            self.nodes.insert(rel, node);
        }
    }

    /// Adds a node and every missing parent directory.
    pub fn insert(&mut self, path: &str, node: Node) {
        let mut parent = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.nodes.insert(parent.clone(), Node::Dir);
        }
        self.nodes.insert(path.to_owned(), node);
    }

    /// The node at `path`, if any.
    #[must_use]
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// The paths that differ between `self` and `expected`, described for a human.
    #[must_use]
    pub fn diff(&self, expected: &Tree) -> Vec<String> {
        let mut out = Vec::new();
        for (path, want) in &expected.nodes {
            match self.nodes.get(path) {
                None => out.push(format!("missing {path:?} (expected {want:?})")),
                Some(got) if got != want => {
                    out.push(format!("{path:?}: expected {want:?}, found {got:?}"));
                }
                Some(_) => {}
            }
        }
        for (path, got) in &self.nodes {
            if !expected.nodes.contains_key(path) {
                out.push(format!("unexpected {path:?} ({got:?})"));
            }
        }
        out
    }

    /// Panics unless `self` is exactly `expected`, listing the differences.
    #[track_caller]
    pub fn assert_same(&self, expected: &Tree, what: &str) {
        let diff = self.diff(expected);
        assert!(
            diff.is_empty(),
            "{what}: trees differ:\n  {}",
            diff.join("\n  ")
        );
    }

    /// Panics unless every node of `subset` is in `self` as it is in `subset`.
    #[track_caller]
    pub fn assert_contains(&self, subset: &Tree, what: &str) {
        let mut problems = Vec::new();
        for (path, want) in &subset.nodes {
            match self.nodes.get(path) {
                Some(got) if got == want => {}
                got => problems.push(format!("{path:?}: expected {want:?}, found {got:?}")),
            }
        }
        assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
    }

    /// Paths of files whose names mark them as leftovers of an interrupted write
    /// (`.taskcache-*` temporaries, `*.tmp`).
    #[must_use]
    pub fn temporaries(&self) -> Vec<&str> {
        self.nodes
            .keys()
            .filter(|p| {
                let name = p.rsplit('/').next().unwrap_or(p);
                name.starts_with(".taskcache-")
                    || Path::new(name)
                        .extension()
                        .is_some_and(|e| e.eq_ignore_ascii_case("tmp"))
            })
            .map(String::as_str)
            .collect()
    }
}

/// A workspace in a temporary directory, with a watched neighbourhood.
///
/// Layout: `<base>/ws` is the workspace; `<base>/outside` holds a sentinel file and a
/// directory, as targets for hostile entries. Everything under `<base>` except the
/// workspace is snapshotted at creation, so [`TempWorkspace::assert_outside_unchanged`]
/// proves that nothing was written outside the workspace (through `..`, an absolute
/// path or a symlink). Hostile paths the suite uses never climb above `<base>`.
#[derive(Debug)]
pub struct TempWorkspace {
    dir: tempfile::TempDir,
    root: PathBuf,
    outside_baseline: Tree,
}

impl Default for TempWorkspace {
    fn default() -> Self {
        Self::new()
    }
}

impl TempWorkspace {
    /// Creates the layout.
    #[must_use]
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("taskcache-testkit-")
            .tempdir()
            .expect("create a temporary directory");
        let base = dir.path();
        let root = base.join("ws");
        std::fs::create_dir(&root).expect("create the workspace");
        std::fs::create_dir_all(base.join("outside/sub")).expect("create the outside directory");
        std::fs::write(
            base.join("outside/sentinel.txt"),
            b"outside the workspace: must never change\n",
        )
        .expect("write the sentinel");
        let mut ws = TempWorkspace {
            dir,
            root,
            outside_baseline: Tree::default(),
        };
        ws.outside_baseline = ws.outside_tree();
        ws
    }

    /// The workspace root (`<base>/ws`).
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding the workspace.
    #[must_use]
    pub fn base(&self) -> &Path {
        self.dir.path()
    }

    /// `<base>/outside`: a directory beside the workspace.
    #[must_use]
    pub fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    /// A snapshot of everything under `<base>` except the workspace.
    #[must_use]
    pub fn outside_tree(&self) -> Tree {
        let mut tree = Tree::read(self.dir.path());
        tree.nodes.retain(|p, _| p != "ws" && !p.starts_with("ws/"));
        tree
    }

    /// Panics if anything outside the workspace changed since creation.
    #[track_caller]
    pub fn assert_outside_unchanged(&self) {
        self.outside_tree()
            .assert_same(&self.outside_baseline, "outside the workspace");
    }

    /// A snapshot of the workspace (blocking).
    #[must_use]
    pub fn tree(&self) -> Tree {
        Tree::read(&self.root)
    }

    /// A snapshot of the workspace, read on tokio's blocking pool.
    pub async fn tree_async(&self) -> Tree {
        Tree::read_async(&self.root).await
    }

    /// Writes a file into the workspace (creating parents), with the given mode.
    pub fn write(&self, rel: &str, bytes: &[u8], executable: bool) {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent directories");
        }
        std::fs::write(&path, bytes).expect("write a workspace file");
        set_executable(&path, executable);
    }

    /// Creates a directory in the workspace (with parents).
    pub fn mkdir(&self, rel: &str) {
        std::fs::create_dir_all(self.root.join(rel)).expect("create a workspace directory");
    }

    /// Creates a symlink in the workspace (creating parents).
    #[cfg(unix)]
    pub fn symlink(&self, rel: &str, target: &str) {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent directories");
        }
        std::os::unix::fs::symlink(target, &path).expect("create a workspace symlink");
    }

    /// Symlinks in the workspace that resolve (now, or lexically if dangling) to a
    /// place outside it.
    #[must_use]
    pub fn escaping_symlinks(&self) -> Vec<String> {
        let root = std::fs::canonicalize(&self.root).expect("canonicalize the workspace");
        let mut out = Vec::new();
        for (rel, node) in &self.tree().nodes {
            let Node::Symlink(target) = node else {
                continue;
            };
            let link = self.root.join(rel);
            let resolved = std::fs::canonicalize(&link).ok().or_else(|| {
                // Dangling: resolve the target lexically from the link's real directory.
                let mut at = std::fs::canonicalize(link.parent()?).ok()?;
                for part in target.split('/') {
                    match part {
                        "" | "." => {}
                        ".." => {
                            at.pop();
                        }
                        p => at.push(p),
                    }
                }
                Some(at)
            });
            if resolved.is_none_or(|r| !r.starts_with(&root)) {
                out.push(format!("{rel} -> {target}"));
            }
        }
        out
    }
}

fn set_executable(path: &Path, executable: bool) {
    if let Some(p) = cache_core::mode::restored_permissions(executable) {
        std::fs::set_permissions(path, p).expect("set mode");
    }
}

/// The outputs of a task with known content, and the tree restoring them must produce.
///
/// ```
/// use cache_testkit::fixtures::OutputTree;
/// let tree = OutputTree::new()
///     .file("bin/tool", b"#!/bin/sh\n".to_vec(), true)
///     .dir("cache")
///     .symlink("bin/latest", "tool");
/// assert_eq!(tree.entry().outputs.len(), 3);
/// assert_eq!(tree.expected().nodes.len(), 4); // bin, bin/tool, bin/latest, cache
/// ```
#[derive(Debug, Clone, Default)]
pub struct OutputTree {
    outputs: Vec<CacheOutput>,
    expected: Tree,
}

impl OutputTree {
    /// No outputs.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A file output from memory.
    #[must_use]
    pub fn file(mut self, path: &str, bytes: impl Into<Vec<u8>>, executable: bool) -> Self {
        let bytes = bytes.into();
        self.expected.insert(path, Node::file(&bytes, executable));
        self.outputs
            .push(CacheOutput::bytes(path, bytes, executable));
        self
    }

    /// A file output streamed from `source` on disk, whose BLAKE3 content address is
    /// `blob` (as [`write_pattern_file`] returns).
    #[must_use]
    pub fn file_on_disk(
        mut self,
        path: &str,
        source: &Path,
        blob: BlobRef,
        executable: bool,
    ) -> Self {
        self.expected.insert(path, Node::File { blob, executable });
        self.outputs
            .push(CacheOutput::file(path, source, executable));
        self
    }

    /// A directory output (restored even when empty).
    #[must_use]
    pub fn dir(mut self, path: &str) -> Self {
        self.expected.insert(path, Node::Dir);
        self.outputs.push(CacheOutput::directory(path));
        self
    }

    /// A symlink output.
    #[must_use]
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.expected.insert(path, Node::Symlink(target.to_owned()));
        self.outputs.push(CacheOutput::symlink(path, target));
        self
    }

    /// A tree with every kind of output: empty, binary, executable and plain files,
    /// nested and empty directories, Unicode names, and (with `symlinks`) relative
    /// symlinks, one climbing with `..`. Contents depend on `seed`.
    #[must_use]
    pub fn sample(seed: u64, symlinks: bool) -> Self {
        let all_bytes: Vec<u8> = (0..=255u8).chain(pattern_bytes(seed, 4096)).collect();
        let tree = OutputTree::new()
            .dir("empty-dir")
            .dir("deep/a")
            .file("empty.txt", Vec::new(), false)
            .file("bin/all-bytes.bin", all_bytes, false)
            .file("bin/tool.sh", format!("#!/bin/sh\necho {seed}\n"), true)
            .file("deep/a/b/c/d/nested.txt", format!("nested {seed}\n"), false)
            .file(
                "ünïcødé/日本語 ファイル.txt",
                format!("こんにちは {seed}\n"),
                false,
            )
            .file("emoji-🦀 and spaces.txt", b"crab\n".to_vec(), true)
            .file(".hidden", b"dotfile\n".to_vec(), false);
        if symlinks {
            tree.symlink("deep/link", "a/b/c/d/nested.txt")
                .symlink("bin/up", "../empty.txt")
                .symlink("dir-link", "deep/a")
        } else {
            tree
        }
    }

    /// The outputs, as handed to `store`.
    #[must_use]
    pub fn outputs(&self) -> &[CacheOutput] {
        &self.outputs
    }

    /// What the workspace must contain after restoring into an empty one.
    #[must_use]
    pub fn expected(&self) -> &Tree {
        &self.expected
    }

    /// An entry with these outputs, exit code 0 and no logs.
    #[must_use]
    pub fn entry(&self) -> CacheEntry {
        CacheEntry {
            outputs: self.outputs.clone(),
            ..CacheEntry::default()
        }
    }
}

/// Panics unless `result` is an error of one of `kinds` ([`BackendError::kind`]);
/// returns the error.
#[track_caller]
pub fn expect_err<T: std::fmt::Debug>(
    result: BackendResult<T>,
    kinds: &[&str],
    what: &str,
) -> BackendError {
    match result {
        Ok(v) => {
            let mut shown = format!("{v:?}");
            if shown.len() > 300 {
                let mut end = 300;
                while !shown.is_char_boundary(end) {
                    end -= 1;
                }
                shown.truncate(end);
                shown.push_str("...");
            }
            panic!("{what}: expected an error of kind {kinds:?}, got Ok({shown})")
        }
        Err(e) => {
            assert!(
                kinds.contains(&e.kind()),
                "{what}: expected an error of kind {kinds:?}, got {}: {e}",
                e.kind()
            );
            e
        }
    }
}

/// Panics with `what` and the error unless `result` is `Ok`; returns the value.
#[track_caller]
pub fn expect_ok<T>(result: BackendResult<T>, what: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected {} error: {e}", e.kind()),
    }
}

/// Length of the entry header written by [`ActionRecord::encode`]: magic, version,
/// BLAKE3 of the payload.
pub const ENTRY_HEADER: usize = 4 + 1 + 32;

/// Wraps `payload` in a valid entry header (magic, version 1, BLAKE3 checksum), so a
/// hand-made payload passes the checksum and reaches the decoder.
#[must_use]
pub fn seal_entry(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENTRY_HEADER + payload.len());
    out.extend_from_slice(b"TCAR");
    out.push(1);
    out.extend_from_slice(DigestAlgorithm::Blake3.digest(payload).as_bytes());
    out.extend_from_slice(payload);
    out
}

/// A minimal record for `key`: exit code 0, no logs, no outputs.
#[must_use]
pub fn empty_record(key: &Digest) -> ActionRecord {
    ActionRecord {
        key: *key,
        exit_code: 0,
        duration_ms: 0,
        stdout: LogRecord::Absent,
        stderr: LogRecord::Absent,
        outputs: Vec::new(),
        log_order: Vec::new(),
        absolute_symlinks: Vec::new(),
        signature: None,
    }
}

/// An entry for `key` whose checksum is valid but whose output list declares 2^40
/// elements: decoding it must fail without trying to allocate them.
#[must_use]
pub fn huge_length_entry(key: &Digest) -> Vec<u8> {
    let encoded = empty_record(key).encode().expect("encode");
    let payload = &encoded[ENTRY_HEADER..];
    // The payload ends with the output list's length, a varint 0.
    assert_eq!(
        payload.last(),
        Some(&0),
        "an empty output list ends the payload"
    );
    let mut hostile = payload[..payload.len() - 1].to_vec();
    let mut n: u64 = 1 << 40;
    while n >= 0x80 {
        hostile.push(u8::try_from(n & 0x7f).expect("7 bits") | 0x80);
        n >>= 7;
    }
    hostile.push(u8::try_from(n).expect("7 bits"));
    seal_entry(&hostile)
}

/// Garbage entries for `key`, each with a name: empty, random bytes, bad magic, unknown
/// version, failed checksum, truncated, trailing bytes, a payload that does not decode,
/// and a valid entry of another key.
#[must_use]
pub fn garbage_entries(key: &Digest) -> Vec<(&'static str, Vec<u8>)> {
    let valid = empty_record(key).encode().expect("encode");
    let other = DigestAlgorithm::Blake3.digest(b"some other key");
    // An older, unknown version (a newer one is a miss left in place:
    // `hostile_newer_format_entry_is_left_in_place`).
    let mut bad_version = valid.clone();
    bad_version[4] = 0;
    let mut bad_magic = valid.clone();
    bad_magic[0] = b'X';
    let mut bad_checksum = valid.clone();
    let last = bad_checksum.len() - 1;
    bad_checksum[last] ^= 0x01;
    let mut trailing = valid[ENTRY_HEADER..].to_vec();
    trailing.push(0);
    vec![
        ("empty", Vec::new()),
        ("random bytes", pattern_bytes(fresh_seed(), 1024)),
        ("magic only", b"TCAR".to_vec()),
        ("bad magic", bad_magic),
        ("unknown version", bad_version),
        ("failed checksum", bad_checksum),
        ("truncated", valid[..valid.len() - 3].to_vec()),
        ("trailing bytes", seal_entry(&trailing)),
        ("undecodable payload", seal_entry(&[0xff; 64])),
        (
            "another key's entry",
            empty_record(&other).encode().expect("encode"),
        ),
        ("huge declared length", huge_length_entry(key)),
    ]
}

/// Renders a list of problems, or `None` if there are none (for assertion messages).
#[must_use]
pub fn problems(list: &[String]) -> Option<String> {
    if list.is_empty() {
        return None;
    }
    let mut s = String::new();
    for p in list {
        let _ = writeln!(s, "  {p}");
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_matches_encode() {
        let key = DigestAlgorithm::Blake3.digest(b"k");
        let encoded = empty_record(&key).encode().unwrap();
        assert_eq!(seal_entry(&encoded[ENTRY_HEADER..]), encoded);
        assert!(ActionRecord::decode(&key, &encoded).is_ok());
    }

    #[test]
    fn every_garbage_entry_is_refused() {
        let key = DigestAlgorithm::Blake3.digest(b"k");
        for (name, bytes) in garbage_entries(&key) {
            let err = ActionRecord::decode(&key, &bytes).unwrap_err();
            assert!(
                matches!(err, BackendError::CorruptEntry { .. }),
                "{name}: {err}"
            );
        }
        let err = ActionRecord::decode(&key, &huge_length_entry(&key)).unwrap_err();
        assert!(err.to_string().contains("does not decode"), "{err}");
    }

    #[test]
    fn pattern_file_matches_pattern_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let len = (1 << 20) + 13;
        let blob = write_pattern_file(&path, 7, len as u64).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes, pattern_bytes(7, len));
        assert_eq!(blob, BlobRef::of(DigestAlgorithm::Blake3, &bytes));
        assert_ne!(pattern_bytes(7, 64), pattern_bytes(8, 64));
    }

    #[test]
    fn tree_sees_files_modes_links_and_dirs() {
        let ws = TempWorkspace::new();
        ws.write("a/b.txt", b"x", true);
        ws.mkdir("empty");
        #[cfg(unix)]
        ws.symlink("l", "a/b.txt");
        let mut expected = Tree::default();
        expected.insert("a/b.txt", Node::file(b"x", true));
        expected.insert("empty", Node::Dir);
        #[cfg(unix)]
        expected.insert("l", Node::Symlink("a/b.txt".into()));
        ws.tree().assert_same(&expected, "fixture");
        assert!(!ws.tree().diff(&Tree::default()).is_empty());
        ws.assert_outside_unchanged();
    }

    #[cfg(unix)]
    #[test]
    fn escaping_symlinks_are_found() {
        let ws = TempWorkspace::new();
        ws.symlink("in", "a/b");
        ws.symlink("d/up", "../x");
        assert!(ws.escaping_symlinks().is_empty());
        ws.symlink("out", "../outside");
        ws.symlink("dangling-out", "../nowhere");
        ws.symlink("self", ".");
        ws.symlink("sneaky", "self/../outside");
        let mut found = ws.escaping_symlinks();
        found.sort();
        assert_eq!(
            found,
            [
                "dangling-out -> ../nowhere",
                "out -> ../outside",
                "sneaky -> self/../outside"
            ]
        );
    }

    #[test]
    #[should_panic(expected = "outside the workspace")]
    fn writes_outside_are_noticed() {
        let ws = TempWorkspace::new();
        std::fs::write(ws.base().join("escape"), b"!").unwrap();
        ws.assert_outside_unchanged();
    }
}
