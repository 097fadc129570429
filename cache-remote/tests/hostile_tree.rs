//! Hostile `Tree`s from whoever can write the REAPI cache (issue 20, finding 1): a
//! result whose tree would expand past the bounds is refused before it is expanded,
//! and legitimate trees (identical directories sharing one digest) still read back.
//!
//! Each result here carries a valid checksum of the record its tree claims, so only
//! the tree's own bounds can refuse it.

mod common;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use cache_core::storage::{ActionRecord, OutputRecord, Storage};
use cache_core::{BackendError, BlobRef, Cache, CacheBackend, CachePolicy, DigestAlgorithm};
use cache_remote::fuzz::{dag_tree, planted, record_of};
use cache_remote::mapping;
use cache_remote::{RemoteConfig, RemoteStorage};
use cache_testkit::fixtures::{digest, fresh_key, task};
use prost::Message;
use std::collections::HashMap;

const ALG: DigestAlgorithm = DigestAlgorithm::Sha256;

fn dir(path: &str) -> OutputRecord {
    OutputRecord::Directory { path: path.into() }
}

fn node(name: &str, child: &re::Directory) -> re::DirectoryNode {
    re::DirectoryNode {
        name: name.into(),
        digest: Some(mapping::to_digest(&mapping::message_blob(child, ALG).0)),
    }
}

fn decode(record: &ActionRecord, root: &str, tree: &re::Tree) -> Result<ActionRecord, String> {
    let (result, blobs) = planted(record, root, tree.encode_to_vec());
    match mapping::decode_result(&record.key, &result, &blobs, ALG) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => panic!("not a tombstone"),
        Err(BackendError::CorruptEntry { reason, .. }) => Err(reason),
        Err(e) => panic!("not a corrupt entry: {e}"),
    }
}

fn refused(record: &ActionRecord, root: &str, tree: &re::Tree, why: &str) {
    let Err(reason) = decode(record, root, tree) else {
        panic!("a hostile tree was accepted (expected a refusal naming {why:?})");
    };
    assert!(reason.contains(why), "{reason}");
    assert!(reason.len() < 400, "a long message: {reason}");
}

/// A directory holding the chain `names[0]/names[1]/...`, the last one empty.
fn chain(names: &[&str]) -> re::Directory {
    names
        .iter()
        .rev()
        .fold(re::Directory::default(), |below, n| re::Directory {
            directories: vec![node(n, &below)],
            ..re::Directory::default()
        })
}

/// The tree of [`chain`] (`root` holds the chain).
fn chain_tree(names: &[&str]) -> re::Tree {
    let mut children = Vec::new();
    for i in 1..=names.len() {
        children.push(chain(&names[i..]));
    }
    re::Tree {
        root: Some(chain(names)),
        children,
    }
}

/// The 43 KB tree (20 levels, two 1,000-byte names for one child: 2^20 paths of
/// about 20 KB), and the same with names of legal length: refused at once, not after
/// expanding gigabytes of paths.
#[test]
fn a_dag_naming_one_child_twice_per_level_is_refused_before_expansion() {
    let (a, b) = ("a".repeat(1000), "b".repeat(1000));
    refused(
        &record_of(vec![dir("out")]),
        "out",
        &dag_tree(20, &[&a, &b]),
        "tree entry named",
    );
    let (a, b) = ("a".repeat(200), "b".repeat(200));
    let tree = dag_tree(20, &[&a, &b]);
    refused(&record_of(vec![dir("out")]), "out", &tree, "not recorded");
    // Recording one whole branch does not open the other.
    let mut path = "out".to_owned();
    let mut outputs = vec![dir("out")];
    for _ in 0..19 {
        path = format!("{path}/{a}");
        outputs.push(dir(&path));
    }
    refused(&record_of(outputs), "out", &tree, "not recorded");
}

#[test]
fn names_that_are_not_plain_are_refused_and_such_paths_stay_top_level() {
    let long = "n".repeat(256);
    for name in [long.as_str(), "", ".", "..", "a/b", "nul\0", "back\\slash"] {
        let path = format!("out/{name}");
        let blob = BlobRef::of(ALG, b"f");
        let r = record_of(vec![
            dir("out"),
            OutputRecord::File {
                path: path.clone(),
                blob,
                executable: false,
            },
        ]);
        let tree = re::Tree {
            root: Some(re::Directory {
                files: vec![re::FileNode {
                    name: name.into(),
                    digest: Some(mapping::to_digest(&blob)),
                    ..re::FileNode::default()
                }],
                ..re::Directory::default()
            }),
            children: Vec::new(),
        };
        refused(&r, "out", &tree, "tree entry named");
        // The writer keeps such a path out of the tree: it reads back as written.
        let enc = mapping::encode_record(&r, ALG).unwrap();
        let blobs: HashMap<BlobRef, Vec<u8>> = enc.trees.into_iter().collect();
        let back = mapping::decode_result(&r.key, &enc.result, &blobs, ALG);
        assert_eq!(back.unwrap(), Some(r), "{name:?}");
    }
    // 255 bytes is a plain name.
    let name = "n".repeat(255);
    let r = record_of(vec![dir("out"), dir(&format!("out/{name}"))]);
    assert_eq!(decode(&r, "out", &chain_tree(&[&name])), Ok(r));
}

#[test]
fn a_directory_holding_one_name_twice_is_refused() {
    let r = record_of(vec![dir("out"), dir("out/s")]);
    refused(&r, "out", &dag_tree(1, &["s", "s"]), "two entries named");
    // 24 levels of it: 2^24 paths if expanded.
    refused(&r, "out", &dag_tree(24, &["s", "s"]), "two entries named");
    // A file and a directory of one name.
    let mut tree = dag_tree(1, &["s"]);
    tree.root.as_mut().unwrap().files.push(re::FileNode {
        name: "s".into(),
        digest: Some(mapping::to_digest(&BlobRef::of(ALG, b""))),
        ..re::FileNode::default()
    });
    refused(&r, "out", &tree, "two entries named");
}

/// `out` holding a chain of `n` directories named `name`: the record of `out` and the
/// deepest one, and the tree.
fn chain_of(name: &str, n: usize) -> (ActionRecord, re::Tree) {
    let names = vec![name; n];
    let leaf = format!("out/{}", names.join("/"));
    (record_of(vec![dir("out"), dir(&leaf)]), chain_tree(&names))
}

/// The last chain within a bound reads; one level more is refused with `why`.
fn bounded_at(name: &str, most: usize, why: &str) {
    let (r, tree) = chain_of(name, most);
    assert_eq!(decode(&r, "out", &tree), Ok(r));
    let (r, tree) = chain_of(name, most + 1);
    refused(&r, "out", &tree, why);
}

#[test]
fn tree_paths_deeper_than_256_levels_are_refused() {
    // `out` and 255 levels below: 256 components, the most a path may have.
    bounded_at("d", 255, "deeper than 256");
}

#[test]
fn tree_paths_longer_than_4096_bytes_are_refused() {
    // 3 + 15 * 256 = 3,843 bytes; 16 levels make 4,099.
    bounded_at(&"n".repeat(255), 15, "longer than 4096");
}

/// Identical directories have one digest: a legitimate tree names it more than once.
#[test]
fn identical_subdirectories_sharing_one_digest_still_round_trip() {
    let blob = BlobRef::of(ALG, b"same");
    let file = |path: &str| OutputRecord::File {
        path: path.into(),
        blob,
        executable: true,
    };
    let r = record_of(vec![
        dir("out"),
        dir("out/a"),
        dir("out/b"),
        file("out/c/f"),
        file("out/d/f"),
        dir("out/e/x"),
        dir("out/e/y"),
        dir("out/empty"),
        dir("also-empty"),
    ]);
    let enc = mapping::encode_record(&r, ALG).unwrap();
    let out = (enc.result.output_directories.iter())
        .position(|d| d.path == "out")
        .unwrap();
    let tree = re::Tree::decode(enc.trees[out].1.as_slice()).unwrap();
    let root = tree.root.as_ref().unwrap();
    let digests: std::collections::HashSet<_> = root
        .directories
        .iter()
        .map(|d| d.digest.clone().unwrap().hash)
        .collect();
    assert_eq!(root.directories.len(), 6);
    assert_eq!(digests.len(), 3, "a, b and empty share one; c and d one; e");
    let blobs: HashMap<BlobRef, Vec<u8>> = enc.trees.into_iter().collect();
    let back = mapping::decode_result(&r.key, &enc.result, &blobs, ALG);
    assert_eq!(back.unwrap(), Some(r));
}

/// End to end: the tree planted on the in-process server is a miss for a
/// lookup (a corrupt entry to the storage), without expanding it.
#[test]
fn a_hostile_tree_on_a_server_is_a_miss() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let (url, _state) = common::fake::start().await;
            let storage = RemoteStorage::open(RemoteConfig::from_url(&url).unwrap()).unwrap();
            let key = fresh_key();
            let mut r = record_of(vec![dir("out")]);
            r.key = digest(&key);
            let (a, b) = ("a".repeat(1000), "b".repeat(1000));
            let tree = dag_tree(20, &[&a, &b]);
            let (result, blobs) = planted(&r, "out", tree.encode_to_vec());
            let entry_key = cache_core::storage::EntryKey::new(r.key, &task());
            storage
                .put_raw_result(&entry_key, result, blobs.into_iter().collect())
                .await
                .unwrap();
            let e = storage.get_entry(&entry_key).await.unwrap_err();
            assert!(matches!(e, BackendError::CorruptEntry { .. }), "{e}");
            let cache = Cache::new(storage, cache_testkit::spawn_blocking);
            let hit = cache.lookup(&task(), &r.key, CachePolicy::Readonly).await;
            assert!(hit.unwrap().is_none());
        });
}
