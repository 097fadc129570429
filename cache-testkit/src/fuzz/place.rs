//! The placement target: a crafted record restored into a crafted workspace.

use super::{Input, fuzz_key};
use crate::MemoryStorage;
use crate::Tamper;
use cache_core::storage::{ActionRecord, BlobSource, LogRecord, OutputRecord, Storage};
use cache_core::{BlobRef, Cache, CacheBackend, CachePolicy, Task, TaskOutput};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");
}

/// What a sandbox directory holds: path, kind, bytes or link text.
pub(crate) fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let what = if meta.is_symlink() {
                format!("link {:?}", std::fs::read_link(&p).ok())
            } else if meta.is_dir() {
                stack.push(p.clone());
                "dir".to_owned()
            } else {
                format!("file {:?}", std::fs::read(&p).ok())
            };
            out.insert(p, what);
        }
    }
    out
}

enum Out {
    File {
        path: String,
        content: Vec<u8>,
        executable: bool,
        tamper: bool,
    },
    Dir(String),
    Link(String, String),
}

/// See the [module docs](super).
///
/// # Panics
///
/// When a property fails (a write outside the workspace, a wrong byte restored).
pub fn place(data: &[u8]) {
    let mut input = Input::new(data);
    let sandbox = tempfile::tempdir().expect("a sandbox");
    let outside = sandbox.path().join("outside");
    let ws = std::fs::canonicalize(sandbox.path())
        .expect("the sandbox")
        .join("workspace-1c9e");
    std::fs::create_dir_all(outside.join("dir")).expect("outside");
    std::fs::write(outside.join("secret"), b"keep").expect("outside");
    std::fs::create_dir_all(ws.join("dir")).expect("ws");
    std::fs::write(ws.join("file"), b"f").expect("ws");
    let link = |t: &Path, l: &str| {
        let _ = std::os::unix::fs::symlink(t, ws.join(l));
    };
    link(Path::new("../outside"), "out_link");
    link(Path::new("dir"), "in_link");
    link(&outside, "abs_link");
    let planted = plant(&mut input, &ws, &outside);
    let outs = outputs(&mut input, &outside);
    let declare = input.below(3);
    let before = snapshot(&outside);
    let listing: BTreeSet<_> = std::fs::read_dir(sandbox.path())
        .expect("sandbox")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    RUNTIME.with(|rt| rt.block_on(restore(&ws, &outs, declare, &planted)));
    assert_eq!(
        snapshot(&outside),
        before,
        "a restore changed something outside the workspace"
    );
    let after: BTreeSet<_> = std::fs::read_dir(sandbox.path())
        .expect("sandbox")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        after, listing,
        "a restore created something beside the workspace"
    );
}

/// Crafted layout: files, directories and links (some out of the workspace); returns
/// the contents of the files planted.
fn plant(input: &mut Input<'_>, ws: &Path, outside: &Path) -> Vec<Vec<u8>> {
    let mut planted = vec![b"f".to_vec(), b"keep".to_vec()];
    for _ in 0..input.below(6) {
        let p = input.path();
        let Ok(rel) = cache_core::RelPath::parse(&p) else {
            continue;
        };
        let at = ws.join(rel.to_string());
        if !super::make_parent(ws, &at) {
            continue;
        }
        match input.below(4) {
            0 => {
                let content = input.bytes(16).to_vec();
                let _ = std::fs::write(&at, &content);
                planted.push(content);
            }
            1 => {
                let _ = std::fs::create_dir(&at);
            }
            2 => {
                let _ = std::os::unix::fs::symlink(outside, &at);
            }
            _ => {
                let t = input.path();
                if !t.starts_with('/') {
                    let _ = std::os::unix::fs::symlink(&t, &at);
                }
            }
        }
    }
    planted
}

/// The record's outputs: in restore order (directories, files, links) unless the
/// input asks for a raw order.
fn outputs(input: &mut Input<'_>, outside: &Path) -> Vec<Out> {
    let mut outs = Vec::new();
    for _ in 0..input.below(8) {
        outs.push(match input.below(4) {
            0 | 1 => Out::File {
                path: input.path(),
                content: input.bytes(64).to_vec(),
                executable: input.below(2) == 1,
                tamper: input.below(4) == 0,
            },
            2 => Out::Dir(input.path()),
            _ => {
                let path = input.path();
                let target = match input.below(5) {
                    0 => "../outside".to_owned(),
                    1 => outside.display().to_string(),
                    _ => input.path(),
                };
                Out::Link(path, target)
            }
        });
    }
    if input.below(4) != 0 {
        outs.sort_by_key(|o| match o {
            Out::Dir(_) => 0,
            Out::File { .. } => 1,
            Out::Link(..) => 2,
        });
    }
    outs
}

async fn restore(ws: &Path, outs: &[Out], declare: u8, planted: &[Vec<u8>]) {
    let storage = MemoryStorage::new();
    let mut records = Vec::new();
    let mut expected: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let mut tampered = Vec::new();
    for o in outs {
        records.push(match o {
            Out::File {
                path,
                content,
                executable,
                tamper,
            } => {
                let blob = BlobRef::of(cache_core::DigestAlgorithm::Blake3, content);
                storage
                    .put_blobs(vec![BlobSource::Bytes(Arc::from(content.as_slice()))], None)
                    .await
                    .expect("a memory store");
                if *tamper && !content.is_empty() {
                    let _ = storage.flip_blob_byte(&blob).await;
                    let mut bad = content.clone();
                    let mid = bad.len() / 2;
                    bad[mid] ^= 0xff;
                    tampered.push((blob, bad));
                }
                expected
                    .entry(path.clone())
                    .or_default()
                    .push(content.clone());
                OutputRecord::File {
                    path: path.clone(),
                    blob,
                    executable: *executable,
                }
            }
            Out::Dir(path) => OutputRecord::Directory { path: path.clone() },
            Out::Link(path, target) => OutputRecord::Symlink {
                path: path.clone(),
                target: target.clone(),
            },
        });
    }
    let key = fuzz_key();
    let record = ActionRecord {
        key,
        exit_code: 0,
        duration_ms: 1,
        stdout: LogRecord::Absent,
        stderr: LogRecord::Absent,
        outputs: records,
        log_order: Vec::new(),
        absolute_symlinks: Vec::new(),
        signature: None,
    };
    let Ok(bytes) = record.encode() else {
        return;
    };
    storage
        .write_raw_entry(&key, bytes)
        .await
        .expect("a memory store");
    let mut task = Task::new("fuzz", ["place"]);
    if declare > 0 {
        for (n, o) in record.outputs.iter().enumerate() {
            // declare == 2: every other output undeclared (such an entry is a miss).
            if declare == 1 || n % 2 == 0 {
                task.outputs.push(TaskOutput {
                    path: o.path().to_owned(),
                    kind: cache_core::OutputType::Cas,
                });
            }
        }
    }
    let cache = Cache::new(storage, |job| job());
    let Ok(Some(hit)) = cache.lookup(&task, &key, CachePolicy::Normal).await else {
        return;
    };
    let restored = hit.restore(ws).await;
    check_restored(ws, &record, restored.is_ok(), &expected, &tampered, planted);
}

/// Never a tampered byte, restored or not; after a restore that succeeded, every
/// file holds its bytes.
fn check_restored(
    ws: &Path,
    record: &ActionRecord,
    restored: bool,
    expected: &BTreeMap<String, Vec<Vec<u8>>>,
    tampered: &[(BlobRef, Vec<u8>)],
    planted: &[Vec<u8>],
) {
    let bad_blobs: BTreeSet<BlobRef> = tampered.iter().map(|(b, _)| *b).collect();
    let tampered_bytes: Vec<&Vec<u8>> = tampered
        .iter()
        .map(|(_, b)| b)
        .filter(|b| !planted.contains(b) && !expected.values().flatten().any(|c| c == *b))
        .collect();
    for (path, what) in snapshot(ws) {
        if let Some(content) = what.strip_prefix("file ") {
            for bad in &tampered_bytes {
                assert_ne!(
                    content,
                    format!("{:?}", Some(bad)),
                    "{} holds a tampered blob's bytes",
                    path.display()
                );
            }
        }
    }
    if !restored {
        return;
    }
    // A restore that succeeded put every file's bytes in place (two outputs that are
    // one file through a workspace link: either one's bytes).
    // Stored paths are read the way the restore read them ("b/" is the file "b").
    let at =
        |p: &str| ws.join(cache_core::RelPath::parse(p).map_or(p.to_owned(), |r| r.to_string()));
    for o in &record.outputs {
        if let OutputRecord::File { path, blob, .. } = o {
            let got = std::fs::read(at(path)).unwrap_or_else(|e| panic!("restored {path}: {e}"));
            let canon = std::fs::canonicalize(at(path)).expect("restored file");
            let aliases: Vec<&Vec<u8>> = record
                .outputs
                .iter()
                .filter_map(|other| match other {
                    OutputRecord::File { path: p, .. }
                        if std::fs::canonicalize(at(p)).ok().as_ref() == Some(&canon) =>
                    {
                        expected.get(p)
                    }
                    _ => None,
                })
                .flatten()
                .collect();
            assert!(
                aliases.iter().any(|c| **c == got),
                "{path} was restored with bytes no output of the entry has (blob {blob}, tampered: {})",
                bad_blobs.contains(blob)
            );
        }
    }
}
