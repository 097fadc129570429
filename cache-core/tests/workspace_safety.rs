//! Property tests: no generated path or pre-existing symlink layout lets a write land
//! outside the workspace, and refused writes leave no trace.

#![cfg(unix)]

use cache_core::{BlobRef, DigestAlgorithm, RelPath, Workspace};
use proptest::prelude::*;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

/// Path pieces chosen to hit every rule: traversal, absolute, NUL, backslash, drive
/// prefixes, dots, and the names used by the planted symlinks.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just(String::new()),
        Just("/".to_string()),
        Just("C:".to_string()),
        Just("a\\b".to_string()),
        Just("nul\0".to_string()),
        Just("out_link".to_string()),
        Just("in_link".to_string()),
        Just("file".to_string()),
        Just("dir".to_string()),
        "[a-c]{1,2}",
    ]
}

fn raw_path() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 1..5).prop_map(|v| v.join("/"))
}

/// A symlink target: inside, outside (relative or absolute), or dangling.
fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("../outside".to_string()),
        Just("../../outside".to_string()),
        Just("dir".to_string()),
        Just("dir/../..".to_string()),
        Just("missing".to_string()),
        raw_path(),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    File(String, bool),
    Dir(String),
    Link(String, String),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (raw_path(), any::<bool>()).prop_map(|(p, x)| Op::File(p, x)),
        raw_path().prop_map(Op::Dir),
        (raw_path(), target()).prop_map(|(p, t)| Op::Link(p, t)),
    ]
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walk(dir);
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let meta = fs::symlink_metadata(&p).unwrap();
            let len = if meta.is_file() { meta.len() } else { 0 };
            out.push(format!("{}:{len}", p.display()));
            if meta.is_dir() {
                out.extend(walk(&p));
            }
        }
    }
    out
}

/// Lays out: sandbox/{outside/secret, ws/{dir/, file, out_link -> ../outside, in_link -> dir, abs_link -> /sandbox/outside}}.
fn sandbox() -> (tempfile::TempDir, Workspace) {
    let sb = tempfile::tempdir().unwrap();
    let outside = sb.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), "keep").unwrap();
    let ws = sb.path().join("ws");
    fs::create_dir_all(ws.join("dir")).unwrap();
    fs::write(ws.join("file"), "f").unwrap();
    symlink("../outside", ws.join("out_link")).unwrap();
    symlink("dir", ws.join("in_link")).unwrap();
    symlink(&outside, ws.join("abs_link")).unwrap();
    let w = Workspace::open(&ws).unwrap();
    (sb, w)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn nothing_lands_outside(ops in prop::collection::vec(op(), 1..8)) {
        let (sb, ws) = sandbox();
        let outside = sb.path().join("outside");
        let before = listing(&outside);
        let data = b"payload".to_vec();
        let blob = BlobRef::of(DigestAlgorithm::Blake3, &data);
        for op in ops {
            let result = match &op {
                Op::File(p, x) => RelPath::parse(p).and_then(|r| ws.write_file(&r, blob, *x, &mut &data[..])),
                Op::Dir(p) => RelPath::parse(p).and_then(|r| ws.create_dir(&r)),
                Op::Link(p, t) => RelPath::parse(p).and_then(|r| ws.create_symlink(&r, t)),
            };
            if let Ok(written) = result {
                // What was written is inside the workspace once its parent is resolved.
                let parent = fs::canonicalize(written.parent().unwrap()).unwrap();
                prop_assert!(parent.starts_with(ws.root()), "{op:?} wrote under {}", parent.display());
            }
            prop_assert_eq!(&listing(&outside), &before, "after {:?}", op);
        }
        // Nothing new beside the workspace either.
        let mut top: Vec<_> = fs::read_dir(sb.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        top.sort();
        prop_assert_eq!(top, vec![std::ffi::OsString::from("outside"), "ws".into()]);
    }

    /// A workspace check that fails writes nothing; one that passes is followed by a
    /// successful write.
    #[test]
    fn check_predicts_writes(p in raw_path()) {
        let (_sb, ws) = sandbox();
        let Ok(rel) = RelPath::parse(&p) else { return Ok(()) };
        let before = listing(ws.root());
        let data = b"x".to_vec();
        let blob = BlobRef::of(DigestAlgorithm::Blake3, &data);
        if ws.check(&rel, false).is_err() {
            prop_assert!(ws.write_file(&rel, blob, false, &mut &data[..]).is_err());
            prop_assert_eq!(listing(ws.root()), before);
        } else {
            prop_assert!(ws.write_file(&rel, blob, false, &mut &data[..]).is_ok());
        }
    }
}

#[test]
fn refuses_symlink_escapes_with_clear_errors() {
    let (_sb, ws) = sandbox();
    let data = b"x".to_vec();
    let blob = BlobRef::of(DigestAlgorithm::Blake3, &data);
    for p in ["out_link/x", "abs_link/x", "out_link/deeper/x"] {
        let rel = RelPath::parse(p).unwrap();
        let err = ws
            .write_file(&rel, blob, false, &mut &data[..])
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the workspace"), "{p}: {err}");
        assert!(ws.check(&rel, false).is_err());
    }
    let rel = RelPath::parse("file/x").unwrap();
    let err = ws
        .write_file(&rel, blob, false, &mut &data[..])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a directory"), "{err}");
    // Through a symlink that stays inside: allowed, lands in `dir`.
    let rel = RelPath::parse("in_link/x").unwrap();
    let written = ws.write_file(&rel, blob, false, &mut &data[..]).unwrap();
    assert_eq!(fs::read(ws.root().join("dir/x")).unwrap(), data);
    assert!(written.starts_with(ws.root()));
}

#[test]
fn replaces_atomically_and_sets_and_clears_exec_bit() {
    use std::os::unix::fs::PermissionsExt;
    let (_sb, ws) = sandbox();
    let rel = RelPath::parse("bin/tool").unwrap();
    let v1 = b"#!/bin/sh\necho 1\n".to_vec();
    let v2 = b"data".to_vec();
    let p = ws
        .write_file(
            &rel,
            BlobRef::of(DigestAlgorithm::Blake3, &v1),
            true,
            &mut &v1[..],
        )
        .unwrap();
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let p = ws
        .write_file(
            &rel,
            BlobRef::of(DigestAlgorithm::Sha256, &v2),
            false,
            &mut &v2[..],
        )
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), v2);
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // Replacing a symlink replaces the link, not its target.
    let rel = RelPath::parse("in_link").unwrap();
    ws.write_file(
        &rel,
        BlobRef::of(DigestAlgorithm::Blake3, &v2),
        false,
        &mut &v2[..],
    )
    .unwrap();
    assert!(
        fs::symlink_metadata(ws.root().join("in_link"))
            .unwrap()
            .is_file()
    );
    assert!(ws.root().join("dir").is_dir());
}

#[test]
fn corrupt_bytes_leave_no_file_and_no_temp() {
    let (_sb, ws) = sandbox();
    let good = b"good bytes".to_vec();
    let blob = BlobRef::of(DigestAlgorithm::Blake3, &good);
    let rel = RelPath::parse("dir/out.bin").unwrap();
    let before = listing(ws.root());
    for bad in [
        &b"bad bytes!"[..],
        &b"good byte"[..],
        &b"good bytes and more"[..],
    ] {
        let err = ws.write_file(&rel, blob, false, &mut &bad[..]).unwrap_err();
        assert!(
            matches!(err, cache_core::BackendError::DigestMismatch { .. }),
            "{err}"
        );
        assert_eq!(
            listing(ws.root()),
            before,
            "no file and no temporary file may remain"
        );
    }
    // An existing good file survives a failed replacement.
    ws.write_file(&rel, blob, false, &mut &good[..]).unwrap();
    assert!(ws.write_file(&rel, blob, false, &mut &b"evil"[..]).is_err());
    assert_eq!(fs::read(ws.root().join("dir/out.bin")).unwrap(), good);
}

#[test]
fn directories_and_symlinks() {
    let (_sb, ws) = sandbox();
    ws.create_dir(&RelPath::parse("a/b/empty").unwrap())
        .unwrap();
    assert!(ws.root().join("a/b/empty").is_dir());
    ws.create_dir(&RelPath::parse("a/b/empty").unwrap())
        .unwrap(); // idempotent
    ws.create_symlink(&RelPath::parse("a/link").unwrap(), "b/empty")
        .unwrap();
    assert_eq!(
        fs::read_link(ws.root().join("a/link")).unwrap(),
        Path::new("b/empty")
    );
    ws.create_symlink(&RelPath::parse("a/link").unwrap(), "../dir")
        .unwrap(); // replace
    assert_eq!(
        fs::read_link(ws.root().join("a/link")).unwrap(),
        Path::new("../dir")
    );
    assert!(
        ws.create_symlink(&RelPath::parse("a/esc").unwrap(), "../../x")
            .is_err()
    );
    assert!(
        ws.create_symlink(&RelPath::parse("dir").unwrap(), "a")
            .is_err(),
        "a directory is in the way"
    );
    assert!(
        ws.create_dir(&RelPath::parse("file").unwrap()).is_err(),
        "a file is in the way"
    );
    assert!(
        ws.create_dir(&RelPath::parse("out_link").unwrap()).is_err(),
        "symlink leaving the workspace"
    );
}
