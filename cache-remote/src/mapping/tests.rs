//! Round trips and refusals of the mapping.

use super::decode::{Work, decode_counted};
use super::*;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use cache_core::storage::{ActionRecord, EntryKey, LogRecord, OutputRecord};
use cache_core::{BackendError, BlobRef, DigestAlgorithm};
use prost::Message;
use std::collections::HashMap;

fn blob(b: &[u8]) -> BlobRef {
    BlobRef::of(DigestAlgorithm::Sha256, b)
}

fn sample() -> ActionRecord {
    ActionRecord {
        key: DigestAlgorithm::Blake3.digest(b"k"),
        exit_code: 3,
        duration_ms: 1234,
        stdout: LogRecord::Inline(b"out".to_vec()),
        stderr: LogRecord::Absent,
        outputs: vec![
            OutputRecord::Directory { path: "d".into() },
            OutputRecord::Directory {
                path: "d/empty".into(),
            },
            OutputRecord::Directory { path: "e".into() },
            OutputRecord::File {
                path: "d/sub/f".into(),
                blob: blob(b"f"),
                executable: true,
            },
            OutputRecord::File {
                path: "top.txt".into(),
                blob: blob(b"t"),
                executable: false,
            },
            OutputRecord::Symlink {
                path: "d/l".into(),
                target: "sub/f".into(),
            },
            OutputRecord::Symlink {
                path: "l2".into(),
                target: "top.txt".into(),
            },
        ],
        log_order: Vec::new(),
        absolute_symlinks: Vec::new(),
        signature: None,
    }
}

fn round_trip(r: &ActionRecord) -> ActionRecord {
    let alg = DigestAlgorithm::Sha256;
    let enc = encode_record(r, alg).unwrap();
    let blobs: HashMap<BlobRef, Vec<u8>> = enc.trees.into_iter().collect();
    let bytes = enc.result.encode_to_vec();
    let back = re::ActionResult::decode(bytes.as_slice()).unwrap();
    decode_result(&r.key, &back, &blobs, alg).unwrap().unwrap()
}

#[test]
fn records_round_trip_exactly_through_trees() {
    let r = sample();
    let enc = encode_record(&r, DigestAlgorithm::Sha256).unwrap();
    // `d` (with its subtree, the empty directory included) and `e` are trees.
    assert_eq!(enc.result.output_directories.len(), 2);
    assert_eq!(enc.result.output_files.len(), 1);
    assert_eq!(enc.result.output_symlinks.len(), 1);
    let tree = re::Tree::decode(enc.trees[0].1.as_slice()).unwrap();
    assert_eq!(tree.children.len(), 2, "d/empty and d/sub");
    assert_eq!(round_trip(&r), r);
}

#[test]
fn log_order_and_absolute_symlinks_round_trip() {
    use cache_core::LogStream::{Stderr, Stdout};
    use cache_core::storage::{AbsoluteSymlink, LogChunk};
    let mut r = sample();
    r.stderr = LogRecord::Inline(b"err".to_vec());
    r.log_order = vec![
        LogChunk {
            stream: Stdout,
            len: 1,
        },
        LogChunk {
            stream: Stderr,
            len: 3,
        },
        LogChunk {
            stream: Stdout,
            len: 2,
        },
    ];
    r.absolute_symlinks = vec![AbsoluteSymlink {
        path: "venv/python".into(),
        target: "/usr/bin/python3".into(),
    }];
    assert_eq!(round_trip(&r), r);
}

#[test]
fn hostile_paths_keep_their_bytes() {
    let mut r = sample();
    r.outputs.push(OutputRecord::Directory {
        path: "../up".into(),
    });
    r.outputs.push(OutputRecord::File {
        path: "d/../../x".into(),
        blob: blob(b"x"),
        executable: false,
    });
    r.outputs.push(OutputRecord::Directory {
        path: String::new(),
    });
    assert_eq!(round_trip(&r), r);
}

#[test]
fn unmappable_results_are_corrupt_and_newer_formats_are_named() {
    let r = sample();
    let alg = DigestAlgorithm::Sha256;
    let enc = encode_record(&r, alg).unwrap();
    let mut res = enc.result.clone();
    res.output_files[0].path = "other".into();
    let blobs: HashMap<BlobRef, Vec<u8>> = enc.trees.into_iter().collect();
    let e = decode_result(&r.key, &res, &blobs, alg).unwrap_err();
    assert!(matches!(e, BackendError::CorruptEntry { .. }), "{e}");
    let e = decode_result(&r.key, &enc.result, &HashMap::new(), alg).unwrap_err();
    assert!(e.to_string().contains("was not read"), "{e}");
    let mut res = enc.result.clone();
    let mut ext = extension(&res).unwrap().unwrap();
    ext.format = 9;
    res.execution_metadata.as_mut().unwrap().auxiliary_metadata = vec![extension_any(&ext)];
    let e = decode_result(&r.key, &res, &blobs, alg).unwrap_err();
    assert!(matches!(
        e,
        BackendError::NewerEntryFormat { version: 9, .. }
    ));
}

#[test]
fn the_task_digest_determines_the_action_key() {
    let task = cache_core::Task::new("t", ["echo", "hi"]);
    let k1 = EntryKey::new(DigestAlgorithm::Blake3.digest(b"1"), &task);
    let k2 = EntryKey::new(DigestAlgorithm::Blake3.digest(b"2"), &task);
    let a1 = action_for(&k1, DigestAlgorithm::Sha256);
    assert_eq!(a1.action, action_for(&k1, DigestAlgorithm::Sha256).action);
    assert_ne!(a1.action, action_for(&k2, DigestAlgorithm::Sha256).action);
    assert!(a1.action.size > 0);
    let action = re::Action::decode(a1.blobs[2].1.as_slice()).unwrap();
    assert_eq!(action.salt, k1.digest.to_string().into_bytes());
    let command = re::Command::decode(a1.blobs[0].1.as_slice()).unwrap();
    assert_eq!(command.arguments, ["echo", "hi"]);
}

/// Found by `cargo xtask drill corrupt --backend remote`: one flipped bit in a stored
/// result turned the property `taskcache.output` of `out/2/empty-dir` into
/// `taskcache.outpUt`; the directory, still in its tree but no longer in the order,
/// was left out as "implied", and the hit restored the outputs without it.
#[test]
fn a_recorded_directory_missing_from_the_order_is_corrupt_not_left_out() {
    let r = sample();
    let alg = DigestAlgorithm::Sha256;
    let enc = encode_record(&r, alg).unwrap();
    let blobs: HashMap<BlobRef, Vec<u8>> = enc.trees.into_iter().collect();
    for lost in ["d/empty", "e"] {
        let mut res = enc.result.clone();
        let mut ext = extension(&res).unwrap().unwrap();
        ext.order.retain(|p| p != lost);
        res.execution_metadata.as_mut().unwrap().auxiliary_metadata = vec![extension_any(&ext)];
        let e = decode_result(&r.key, &res, &blobs, alg).unwrap_err();
        assert!(
            matches!(e, BackendError::CorruptEntry { .. }),
            "{lost}: {e}"
        );
        assert!(e.to_string().contains(lost), "{lost}: {e}");
    }
    // A directory only implied by what lies below it (`d/sub`, parent of `d/sub/f`)
    // is still left out: the writer never recorded it.
    let back = decode_result(&r.key, &enc.result, &blobs, alg)
        .unwrap()
        .unwrap();
    assert!(back.outputs.iter().all(|o| o.path() != "d/sub"));
    assert_eq!(back, r);
}

#[test]
fn results_without_a_current_extension_or_checksum_are_corrupt() {
    let r = sample();
    let alg = DigestAlgorithm::Sha256;
    let enc = encode_record(&r, alg).unwrap();
    let blobs: HashMap<BlobRef, Vec<u8>> = enc.trees.into_iter().collect();
    let with = |f: &dyn Fn(&mut Extension)| {
        let mut res = enc.result.clone();
        let mut ext = extension(&res).unwrap().unwrap();
        f(&mut ext);
        res.execution_metadata.as_mut().unwrap().auxiliary_metadata = vec![extension_any(&ext)];
        decode_result(&r.key, &res, &blobs, alg)
    };
    let corrupt = |got: Result<Option<ActionRecord>, BackendError>, why: &str| {
        let e = got.unwrap_err();
        assert!(matches!(e, BackendError::CorruptEntry { .. }), "{e}");
        assert!(e.to_string().contains(why), "{e}");
    };
    corrupt(with(&|e| e.checksum = None), "no record checksum");
    corrupt(
        with(&|e| e.checksum = Some(DigestAlgorithm::Blake3.digest(b"x"))),
        "does not match its checksum",
    );
    // Format 1 (before the checksum) is not read, checksum or not.
    corrupt(with(&|e| e.format = 1), "extension format 1");
    corrupt(
        with(&|e| {
            e.format = 1;
            e.checksum = None;
        }),
        "extension format 1",
    );
    // A result without the extension (another tool's, or one whose extension a flipped
    // bit made unreadable) cannot be checked.
    let mut res = enc.result.clone();
    res.execution_metadata.as_mut().unwrap().auxiliary_metadata[0].type_url = "x".into();
    corrupt(
        decode_result(&r.key, &res, &blobs, alg),
        "no taskcache extension",
    );
    res.execution_metadata = None;
    corrupt(
        decode_result(&r.key, &res, &blobs, alg),
        "no taskcache extension",
    );
    // Tombstones carry no checksum.
    let t = tombstone(&r.key);
    assert_eq!(decode_result(&r.key, &t, &blobs, alg).unwrap(), None);
}

/// A record using every field a result carries.
fn full_sample() -> ActionRecord {
    use cache_core::LogStream::{Stderr, Stdout};
    use cache_core::storage::{AbsoluteSymlink, LogChunk};
    let mut r = sample();
    r.stderr = LogRecord::Blob(blob(b"a large log"));
    r.log_order = vec![
        LogChunk {
            stream: Stdout,
            len: 2,
        },
        LogChunk {
            stream: Stderr,
            len: 11,
        },
        LogChunk {
            stream: Stdout,
            len: 1,
        },
    ];
    r.absolute_symlinks = vec![AbsoluteSymlink {
        path: "venv/python".into(),
        target: "/usr/bin/python3".into(),
    }];
    r.signature = Some(cache_core::sign::EntrySignature {
        public_key: vec![7; 32],
        signature: vec![9; 64],
    });
    r
}

/// Every single-bit flip of a stored result (the damage a server that keeps results
/// as CAS blobs serves as it is) is a miss, or yields the very record written.
#[test]
fn every_single_bit_flip_of_a_result_is_refused_or_harmless() {
    let r = full_sample();
    let alg = DigestAlgorithm::Sha256;
    let enc = encode_record(&r, alg).unwrap();
    assert_eq!(round_trip(&r), r);
    // The server's CAS: the trees and the inline log, found by digest.
    let mut cas: HashMap<BlobRef, Vec<u8>> = enc.trees.into_iter().collect();
    if let LogRecord::Inline(b) = &r.stdout {
        cas.insert(blob(b), b.clone());
    }
    let bytes = enc.result.encode_to_vec();
    let (mut refused, mut same) = (0, 0);
    for bit in 0..bytes.len() * 8 {
        let mut damaged = bytes.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        let Ok(result) = re::ActionResult::decode(damaged.as_slice()) else {
            refused += 1;
            continue;
        };
        // As `RemoteStorage::get_entry` reads: a blob the server lacks is a miss.
        let Ok(needed) = needed_blobs(&result, alg) else {
            refused += 1;
            continue;
        };
        let Some(blobs) = needed
            .iter()
            .map(|b| cas.get(b).map(|v| (*b, v.clone())))
            .collect::<Option<HashMap<_, _>>>()
        else {
            refused += 1;
            continue;
        };
        match decode_result(&r.key, &result, &blobs, alg) {
            Ok(Some(back)) => {
                assert_eq!(back, r, "bit {bit} of {} changed the record", bytes.len());
                same += 1;
            }
            Ok(None) | Err(_) => refused += 1,
        }
    }
    // Flips in what the record does not keep (the worker name, say) are harmless.
    assert!(
        same > 0 && refused > 0,
        "{same} harmless, {refused} refused"
    );
}

/// Decodes `record` as planted with `tree` under `out`, counting the entries examined.
fn decode_work(record: &ActionRecord, tree: &re::Tree) -> (Result<(), String>, Work) {
    let (result, blobs) = crate::fuzz::planted(record, "out", tree.encode_to_vec());
    let mut work = Work::default();
    let stop = cache_core::cancel::CancelToken::default();
    let got = decode_counted(
        &record.key,
        &result,
        &blobs,
        DigestAlgorithm::Sha256,
        &stop,
        &mut work,
    );
    assert!(work.examined <= work.bound, "{work:?}");
    let got = match got {
        Ok(Some(r)) => {
            assert_eq!(&r, record);
            Ok(())
        }
        Ok(None) => panic!("a tombstone"),
        Err(BackendError::CorruptEntry { reason, .. }) => Err(reason),
        Err(e) => panic!("{e}"),
    };
    (got, work)
}

fn dirs(paths: &[String]) -> ActionRecord {
    let mut r = sample();
    r.outputs = paths
        .iter()
        .map(|p| OutputRecord::Directory { path: p.clone() })
        .collect();
    r
}

/// The DAG (2^20 paths if expanded) costs a handful of lookups: the first
/// path that is neither recorded nor above a recorded one ends the decode.
#[test]
fn a_dag_costs_as_many_lookups_as_the_paths_recorded() {
    let (a, b) = ("a".repeat(200), "b".repeat(200));
    let tree = crate::fuzz::dag_tree(20, &[&a, &b]);
    let (got, work) = decode_work(&dirs(&["out".into()]), &tree);
    assert!(got.unwrap_err().contains("not recorded"));
    assert_eq!(work.examined, 2, "the root and its first entry");
    // One whole branch recorded: its 20 levels, then the other name at the deepest.
    let mut paths = vec!["out".to_owned()];
    for _ in 0..19 {
        paths.push(format!("{}/{a}", paths.last().unwrap()));
    }
    let (got, work) = decode_work(&dirs(&paths), &tree);
    assert!(got.unwrap_err().contains("not recorded"));
    assert!(work.examined <= 22, "{work:?}");
    // With 1,000-byte names nothing is looked up below the root.
    let (a, b) = ("a".repeat(1000), "b".repeat(1000));
    let tree = crate::fuzz::dag_tree(20, &[&a, &b]);
    let (got, work) = decode_work(&dirs(&["out".into()]), &tree);
    assert!(got.unwrap_err().contains("tree entry named"));
    assert_eq!(work.examined, 1);
}

/// Shared children are expanded where the recorded paths reach them, every time.
#[test]
fn a_dag_whose_every_path_is_recorded_is_read() {
    let tree = crate::fuzz::dag_tree(3, &["x", "y"]);
    let mut paths = vec!["out".to_owned()];
    let mut level = vec!["out".to_owned()];
    for _ in 0..3 {
        level = level
            .iter()
            .flat_map(|p| [format!("{p}/x"), format!("{p}/y")])
            .collect();
        paths.extend(level.iter().cloned());
    }
    let (got, work) = decode_work(&dirs(&paths), &tree);
    assert_eq!(got, Ok(()));
    assert_eq!(work.examined, 15);
    // Only the leaves recorded: the directories above them are paid for by their `/`s.
    let (got, work) = decode_work(&dirs(&level), &tree);
    assert_eq!(got, Ok(()));
    assert_eq!(work.examined, 15);
}

/// The order is checked before any tree is read or expanded.
#[test]
fn recorded_paths_twice_are_refused_before_any_tree() {
    let r = dirs(&["out".into(), "out/a".into(), "out/a".into()]);
    let (got, work) = decode_work(&r, &crate::fuzz::dag_tree(20, &["s", "s"]));
    assert!(got.unwrap_err().contains("recorded twice"));
    assert_eq!(work.examined, 0);
}

/// The token of a call that was dropped.
fn cancelled() -> cache_core::cancel::CancelToken {
    let call = cache_core::cancel::scoped(async { cache_core::cancel::CancelToken::current() });
    // A call is cancelled when dropped, finished or not.
    let token = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(call);
    assert!(token.is_cancelled());
    token
}

/// A cancelled lookup (dropped, timed out) ends the decode as `Unavailable`, never as
/// a corrupt entry (which would remove a good one).
#[test]
fn a_set_stop_flag_ends_the_decode_without_calling_it_corrupt() {
    let r = sample();
    let alg = DigestAlgorithm::Sha256;
    let enc = encode_record(&r, alg).unwrap();
    let blobs: HashMap<BlobRef, Vec<u8>> = enc.trees.into_iter().collect();
    let stop = cancelled();
    let mut work = Work::default();
    let e = decode_counted(&r.key, &enc.result, &blobs, alg, &stop, &mut work).unwrap_err();
    assert!(matches!(e, BackendError::Unavailable(_)), "{e}");
    assert_eq!(work.examined, 0);
    let e = decode_result_until(&r.key, &enc.result, &blobs, alg, &stop).unwrap_err();
    assert!(e.is_cache_fault() && !matches!(e, BackendError::CorruptEntry { .. }));
}

/// The writer refuses what no reader would accept: a record over the entry limit.
#[test]
fn records_over_the_entry_limit_are_not_written() {
    let mut r = sample();
    r.outputs = (0..20_000)
        .map(|i| OutputRecord::Directory {
            path: format!("{i:04000}"),
        })
        .collect();
    let e = encode_record(&r, DigestAlgorithm::Sha256).err().unwrap();
    assert!(e.to_string().contains("limit"), "{e}");
}
