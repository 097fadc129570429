//! The property the cargo-fuzz target `decode_tree` (`fuzz/fuzz_targets/decode_tree.rs`)
//! checks, as a plain function: cache-testkit (home of the other targets' checks) may
//! not depend on a backend crate. `tests/fuzz_corpus.rs` replays `fuzz/corpus/decode_tree/`
//! on stable; `cargo xtask drill fuzz` runs it under libFuzzer. Not an API.
//!
//! [`decode_tree`] reads a result whose `Tree` comes from the input, three ways (the
//! first byte): the rest is a `Tree` message as stored (0), a small DAG of directories
//! described a few bytes per entry (1: names from a table of plain, hostile and long
//! ones, children shared freely), or a record to encode and read back (2). It checks:
//!
//! * reading never panics, refuses only as a corrupt entry, and examines no more
//!   entries than the recorded paths pay for ([`crate::mapping`]'s `Work`);
//! * a result it accepts holds exactly the recorded paths, in order, with tree paths
//!   within the bounds, and writes and reads back as itself;
//! * a tree of plain, distinct names within the bounds, with every path recorded, is
//!   accepted whatever children it shares, and so is every record that validates.
//!
//! ```
//! cache_remote::fuzz::decode_tree(&[1, 0, 3, 1, 2, 15, 0, 2, 16, 0]);
//! ```

use crate::mapping::{self, Work, check_names, decode_counted};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use cache_core::storage::{ActionRecord, LogRecord, OutputRecord};
use cache_core::{BackendError, BlobRef, Digest, DigestAlgorithm, MAX_PATH_BYTES, MAX_PATH_DEPTH};
use prost::Message;
use std::collections::HashMap;

/// The targets whose checks live here, by the names of their corpus directories.
pub const TARGETS: [&str; 1] = ["decode_tree"];

const ALG: DigestAlgorithm = DigestAlgorithm::Sha256;
/// Where every fuzzed tree is an output directory.
const ROOT: &str = "out";

/// Runs target `name` on `data`.
///
/// # Panics
///
/// On a failed property, or an unknown target name.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "decode_tree" => decode_tree(data),
        other => panic!("no fuzz target {other:?} in cache-remote"),
    }
}

/// See the [module docs](self).
///
/// # Panics
///
/// When a property fails.
pub fn decode_tree(data: &[u8]) {
    let mut input = Input(data);
    match input.next() % 3 {
        0 => {
            let order = input.next();
            if let Ok(tree) = re::Tree::decode(input.0) {
                check_tree(&tree, input.0.to_vec(), order);
            }
        }
        1 => {
            let order = input.next();
            let tree = described_tree(&mut input);
            check_tree(&tree, tree.encode_to_vec(), order);
        }
        _ => check_record(&described_record(&mut input)),
    }
}

/// The key every fuzzed record is for.
fn key() -> Digest {
    DigestAlgorithm::Blake3.digest(b"taskcache decode_tree fuzz key")
}

/// Input bytes, one at a time; zeros past the end.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn next(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    fn below(&mut self, n: usize) -> usize {
        usize::from(self.next()) % n.max(1)
    }

    /// A name from a table: plain ones (short, spaced, non-ASCII, 255 bytes, 200 bytes)
    /// and hostile ones (empty, `.`, `..`, a slash, NUL, backslash, 256 and 1,000 bytes).
    fn name(&mut self) -> String {
        match self.next() % 17 {
            0 => "a".into(),
            1 => "b".into(),
            2 => "c".into(),
            3 => "x y".into(),
            4 => "é".into(),
            5 => String::new(),
            6 => ".".into(),
            7 => "..".into(),
            8 => "a/b".into(),
            9 => "n\0".into(),
            10 => "b\\s".into(),
            11 => "n".repeat(255),
            12 => "n".repeat(256),
            13 => "A".repeat(1000),
            14 => "B".repeat(1000),
            15 => "a".repeat(200),
            _ => "b".repeat(200),
        }
    }
}

/// Up to 24 directories, each with up to 4 entries (kind, name, and for a directory
/// which later directory it names), so any directory may be named from many places.
/// Directory 0 is the root.
fn described_tree(input: &mut Input) -> re::Tree {
    let n = 1 + input.below(24);
    let mut specs = Vec::with_capacity(n);
    for i in 0..n {
        let mut entries = Vec::new();
        for _ in 0..input.below(5) {
            let kind = input.below(3);
            let name = input.name();
            let child = if kind == 2 {
                i + 1 + input.below(n - i - 1)
            } else {
                0
            };
            entries.push((kind, name, child));
        }
        specs.push(entries);
    }
    let mut built: Vec<re::Directory> = vec![re::Directory::default(); n];
    for i in (0..n).rev() {
        let mut dir = re::Directory::default();
        for (kind, name, child) in &specs[i] {
            let name = name.clone();
            match kind {
                0 => dir.files.push(re::FileNode {
                    digest: Some(mapping::to_digest(&BlobRef::of(ALG, name.as_bytes()))),
                    is_executable: name.len() % 2 == 1,
                    name,
                    ..re::FileNode::default()
                }),
                1 => dir.symlinks.push(re::SymlinkNode {
                    name,
                    target: "t".into(),
                    node_properties: None,
                }),
                _ if *child < n => dir.directories.push(re::DirectoryNode {
                    name,
                    digest: Some(dir_digest(&built[*child])),
                }),
                // The last directory names none below it.
                _ => {}
            }
        }
        built[i] = dir;
    }
    let root = built.remove(0);
    re::Tree {
        root: Some(root),
        children: built,
    }
}

fn dir_digest(d: &re::Directory) -> re::Digest {
    mapping::to_digest(&mapping::message_blob(d, ALG).0)
}

/// `levels` directories, each naming the one below it by every name in `names` (the
/// last one empty): a DAG of a few kilobytes that expands to `names.len()^levels` paths.
pub fn dag_tree(levels: usize, names: &[&str]) -> re::Tree {
    let mut below = re::Directory::default();
    let mut children = Vec::with_capacity(levels);
    for _ in 0..levels {
        let next = re::Directory {
            directories: (names.iter())
                .map(|n| re::DirectoryNode {
                    name: (*n).to_owned(),
                    digest: Some(dir_digest(&below)),
                })
                .collect(),
            ..re::Directory::default()
        };
        children.push(below);
        below = next;
    }
    re::Tree {
        root: Some(below),
        children,
    }
}

/// The result of `record` with its outputs replaced by one output directory `root`
/// holding the tree stored as `tree_bytes`, and the blobs it needs. The extension
/// (order, checksum) is `record`'s.
///
/// # Panics
///
/// If `record` does not encode.
pub fn planted(
    record: &ActionRecord,
    root: &str,
    tree_bytes: Vec<u8>,
) -> (re::ActionResult, HashMap<BlobRef, Vec<u8>>) {
    let mut result = mapping::encode_record(record, ALG)
        .expect("the record encodes")
        .result;
    let tree_ref = BlobRef::of(ALG, &tree_bytes);
    result.output_directories = vec![re::OutputDirectory {
        path: root.into(),
        tree_digest: Some(mapping::to_digest(&tree_ref)),
        ..re::OutputDirectory::default()
    }];
    result.output_files.clear();
    result.output_symlinks.clear();
    (result, HashMap::from([(tree_ref, tree_bytes)]))
}

/// A record for the fuzz key with `outputs` and nothing else.
pub fn record_of(outputs: Vec<OutputRecord>) -> ActionRecord {
    ActionRecord {
        key: key(),
        exit_code: 0,
        duration_ms: 0,
        stdout: LogRecord::Absent,
        stderr: LogRecord::Absent,
        outputs,
        log_order: Vec::new(),
        absolute_symlinks: Vec::new(),
        signature: None,
    }
}

/// A bounded, naive expansion of a tree: what it holds (until the bounds), and whether
/// it is a tree the reader must accept (plain distinct names, every child present,
/// every path within the bounds, all of it expanded).
struct Naive<'t> {
    children: HashMap<BlobRef, &'t re::Directory>,
    outputs: Vec<OutputRecord>,
    bytes: usize,
    legit: bool,
}

impl Naive<'_> {
    const MAX_PATHS: usize = 2_000;
    const MAX_BYTES: usize = 1 << 20;

    /// Keeps `o` (at `depth` components) if the bounds allow; false to stop.
    fn push(&mut self, o: OutputRecord, depth: usize) -> bool {
        let path = o.path();
        if self.outputs.len() >= Self::MAX_PATHS || self.bytes > Self::MAX_BYTES {
            self.legit = false;
            return false;
        }
        if path.len() > MAX_PATH_BYTES || depth > MAX_PATH_DEPTH {
            self.legit = false;
        }
        self.bytes += path.len();
        self.outputs.push(o);
        true
    }

    fn walk(&mut self, dir: &re::Directory, path: &str, depth: usize) {
        if check_names(dir).is_err() {
            self.legit = false;
        }
        for f in &dir.files {
            let Some(blob) = (f.digest.as_ref()).and_then(|d| mapping::from_digest(d, ALG).ok())
            else {
                self.legit = false;
                continue;
            };
            let o = OutputRecord::File {
                path: format!("{path}/{}", f.name),
                blob,
                executable: f.is_executable,
            };
            if !self.push(o, depth + 1) {
                return;
            }
        }
        for s in &dir.symlinks {
            let o = OutputRecord::Symlink {
                path: format!("{path}/{}", s.name),
                target: s.target.clone(),
            };
            if !self.push(o, depth + 1) {
                return;
            }
        }
        for d in &dir.directories {
            let sub = format!("{path}/{}", d.name);
            if !self.push(OutputRecord::Directory { path: sub.clone() }, depth + 1) {
                return;
            }
            let child = (d.digest.as_ref())
                .and_then(|d| mapping::from_digest(d, ALG).ok())
                .and_then(|b| self.children.get(&b).copied());
            match child {
                Some(c) if depth < 2 * MAX_PATH_DEPTH => self.walk(c, &sub, depth + 1),
                _ => self.legit = false,
            }
        }
    }
}

/// Reads `tree` (stored as `bytes`) as the output directory [`ROOT`], its naive
/// expansion recorded as `order_mode` says: as it is (0), without its last path (1), with
/// its first path twice (2), reversed (3), or only the root (4 and up).
fn check_tree(tree: &re::Tree, bytes: Vec<u8>, order_mode: u8) {
    let Some(root) = &tree.root else {
        return;
    };
    let mut naive = Naive {
        children: (tree.children.iter())
            .map(|c| (mapping::message_blob(c, ALG).0, c))
            .collect(),
        outputs: vec![OutputRecord::Directory { path: ROOT.into() }],
        bytes: 0,
        // The reader checks every directory of a tree, named or not.
        legit: tree.children.iter().all(|c| check_names(c).is_ok()),
    };
    naive.walk(root, ROOT, 1);
    let mut outputs = naive.outputs;
    match order_mode % 5 {
        0 => {}
        1 => {
            outputs.pop();
        }
        2 => outputs.push(outputs[0].clone()),
        3 => outputs.reverse(),
        _ => outputs.truncate(1),
    }
    let must_accept = naive.legit && order_mode % 5 == 0;
    let record = record_of(outputs);
    let (result, blobs) = planted(&record, ROOT, bytes);
    let got = checked_decode(&result, &blobs);
    match got {
        Some(back) => assert_eq!(back, record, "accepted a record other than the one written"),
        None => assert!(
            !must_accept,
            "refused a plain tree with every path recorded"
        ),
    }
}

/// Decodes, checks the properties every decode has, and returns what was accepted.
fn checked_decode(
    result: &re::ActionResult,
    blobs: &HashMap<BlobRef, Vec<u8>>,
) -> Option<ActionRecord> {
    let mut work = Work::default();
    let got = decode_counted(
        &key(),
        result,
        blobs,
        ALG,
        &cache_core::cancel::CancelToken::default(),
        &mut work,
    );
    assert!(
        work.examined <= work.bound,
        "examined {} entries, more than the {} the recorded paths pay for",
        work.examined,
        work.bound
    );
    let record = match got {
        Ok(Some(r)) => r,
        Ok(None) => panic!("a result without a tombstone read as one"),
        Err(BackendError::CorruptEntry { reason, .. }) => {
            assert!(reason.len() < 1024, "a long reason: {} bytes", reason.len());
            return None;
        }
        Err(e) => panic!("refused with an unexpected error: {e:?}"),
    };
    let order = mapping::extension(result)
        .expect("an accepted extension reads")
        .expect("an accepted result has an extension")
        .order;
    let paths: Vec<&str> = record.outputs.iter().map(OutputRecord::path).collect();
    assert_eq!(paths, order, "the outputs are not the recorded paths");
    // Written again and read back: itself.
    let enc = mapping::encode_record(&record, ALG).expect("an accepted record encodes");
    let blobs: HashMap<BlobRef, Vec<u8>> = enc.trees.into_iter().collect();
    let again = mapping::decode_result(&key(), &enc.result, &blobs, ALG);
    assert_eq!(
        again.ok().flatten().as_ref(),
        Some(&record),
        "an accepted record does not read back as itself"
    );
    Some(record)
}

/// Up to 12 outputs of every kind, at paths of 1 to 4 components from the name table.
fn described_record(input: &mut Input) -> ActionRecord {
    let mut outputs = Vec::new();
    for _ in 0..input.below(13) {
        let kind = input.below(3);
        let parts: Vec<String> = (0..=input.below(4)).map(|_| input.name()).collect();
        let path = parts.join("/");
        outputs.push(match kind {
            0 => OutputRecord::Directory { path },
            1 => OutputRecord::File {
                blob: BlobRef::of(ALG, path.as_bytes()),
                executable: input.next() % 2 == 1,
                path,
            },
            _ => OutputRecord::Symlink {
                path,
                target: input.name(),
            },
        });
    }
    record_of(outputs)
}

/// A record written and read back: itself if it validates; a refusal or itself if not.
fn check_record(record: &ActionRecord) {
    let enc = mapping::encode_record(record, ALG).expect("a small record encodes");
    let blobs: HashMap<BlobRef, Vec<u8>> = enc.trees.into_iter().collect();
    match checked_decode(&enc.result, &blobs) {
        Some(back) => assert_eq!(&back, record, "read back as another record"),
        None => assert!(
            record.validate().is_err(),
            "a record that validates does not read back"
        ),
    }
}

/// `(target, name, bytes)` for the seeds of `fuzz/corpus/decode_tree/` (written by
/// `cargo xtask drill seeds`): the issue's hostile DAG, its variants, and plain trees.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| out.push(("decode_tree", name.to_owned(), bytes));
    // Mode 1: 21 directories, each naming the next twice (names 13 and 14: 1,000 bytes).
    let dag = |a: u8, b: u8| {
        let mut v = vec![1, 0, 20];
        for _ in 0..20 {
            v.extend_from_slice(&[2, 2, a, 0, 2, b, 0]);
        }
        v.push(0);
        v
    };
    add("hostile-dag-1000-byte-names", dag(13, 14));
    add("hostile-dag-200-byte-names", dag(15, 16));
    add("hostile-dag-one-name-twice", dag(0, 0));
    // Two empty directories and two identical ones holding a file: shared children.
    add(
        "shared-children",
        vec![1, 0, 2, 4, 2, 0, 1, 2, 1, 1, 2, 2, 1, 2, 3, 1, 1, 0, 4],
    );
    // A 255-byte name (plain) and a 256-byte one.
    add("long-names", vec![1, 0, 0, 2, 2, 11, 0, 0, 12]);
    // Trees as stored (mode 0): a plain one the writer made, and a DAG of one name twice.
    let r = record_of(vec![
        OutputRecord::Directory { path: ROOT.into() },
        OutputRecord::Directory {
            path: "out/a/empty".into(),
        },
        OutputRecord::File {
            path: "out/a/f".into(),
            blob: BlobRef::of(ALG, b"f"),
            executable: true,
        },
        OutputRecord::Symlink {
            path: "out/l".into(),
            target: "a/f".into(),
        },
    ]);
    let written = mapping::encode_record(&r, ALG).expect("the seed record encodes");
    let mut stored = vec![0, 0];
    stored.extend_from_slice(&written.trees[0].1);
    add("stored-tree", stored);
    let mut stored = vec![0, 4];
    stored.extend_from_slice(&dag_tree(12, &["s", "s"]).encode_to_vec());
    add("stored-dag", stored);
    // Records (mode 2): plain, nested, with hostile components.
    add(
        "record-plain",
        vec![2, 3, 0, 0, 0, 1, 1, 0, 1, 1, 2, 0, 0, 2, 1],
    );
    add(
        "record-hostile",
        vec![2, 4, 0, 1, 7, 1, 2, 0, 12, 0, 2, 1, 0, 9, 4],
    );
    out
}
