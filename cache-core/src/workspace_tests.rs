//! Unit tests of the workspace writer (kernel copy, in-place files, symlink depth).

use super::*;

fn pattern(len: usize, salt: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from((i * 7 + salt) % 251).unwrap())
        .collect()
}

#[test]
fn kernel_copy_hashes_what_landed_up_to_the_limit() {
    use crate::DigestAlgorithm;
    use crate::digest::{COPY_BUFFER, kernel_copy_hashing};
    use std::io::Seek;
    let dir = tempfile::tempdir().unwrap();
    let alg = DigestAlgorithm::Blake3;
    for len in [
        0usize,
        1,
        COPY_BUFFER - 1,
        COPY_BUFFER,
        (8 << 20) + 5,
        (17 << 20) + 3,
    ] {
        let data = pattern(len, 0);
        let src_path = dir.path().join("src");
        fs::write(&src_path, &data).unwrap();
        for limit in [u64::MAX, len as u64 / 2] {
            let src = File::open(&src_path).unwrap();
            let mut dst = tempfile::tempfile_in(dir.path()).unwrap();
            let blob = kernel_copy_hashing(&src, &dst, limit, alg).unwrap();
            let want = &data[..len.min(usize::try_from(limit).unwrap_or(usize::MAX))];
            assert_eq!(blob, BlobRef::of(alg, want), "len {len} limit {limit}");
            let mut back = Vec::new();
            dst.rewind().unwrap();
            dst.read_to_end(&mut back).unwrap();
            assert!(back == want, "len {len} limit {limit}: the copy differs");
        }
    }
}

#[test]
fn kernel_copy_restore_verifies_before_it_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ws");
    fs::create_dir(&root).unwrap();
    let ws = Workspace::open(&root).unwrap();
    let rel = RelPath::parse("out/big.bin").unwrap();
    let data = pattern((17 << 20) + 3, 1);
    let blob = BlobRef::of(crate::DigestAlgorithm::Blake3, &data);
    let src_path = dir.path().join("blob");
    let leftovers = |root: &Path| {
        fs::read_dir(root.join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".taskcache-"))
            .count()
    };
    // Flipped byte, one byte too many, one too few: refused, old file kept, no temp.
    let mut flipped = data.clone();
    flipped[9 << 20] ^= 1;
    let mut longer = data.clone();
    longer.push(0);
    for (what, bad) in [
        ("flipped", &flipped[..]),
        ("longer", &longer[..]),
        ("shorter", &data[..data.len() - 1]),
    ] {
        fs::write(&src_path, bad).unwrap();
        ws.write_file(
            &rel,
            BlobRef::of(crate::DigestAlgorithm::Blake3, b"old"),
            false,
            &mut &b"old"[..],
        )
        .unwrap();
        let err = ws
            .begin_file(&rel, blob, true)
            .unwrap()
            .copy_from_file(&File::open(&src_path).unwrap())
            .unwrap_err();
        assert!(
            matches!(err, BackendError::DigestMismatch { .. }),
            "{what}: {err}"
        );
        assert_eq!(
            fs::read(root.join("out/big.bin")).unwrap(),
            b"old",
            "{what}"
        );
        assert_eq!(leftovers(&root), 0, "{what}: a temporary file was left");
    }
    fs::write(&src_path, &data).unwrap();
    let path = ws
        .begin_file(&rel, blob, true)
        .unwrap()
        .copy_from_file(&File::open(&src_path).unwrap())
        .unwrap();
    assert!(fs::read(&path).unwrap() == data);
    let perms = fs::metadata(&path).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&perms) & 0o777,
        0o755
    );
}

#[test]
fn in_place_needs_the_same_bytes_mode_and_a_single_link() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ws");
    fs::create_dir(&root).unwrap();
    let ws = Workspace::open(&root).unwrap();
    let data = pattern(5000, 2);
    let blob = BlobRef::of(crate::DigestAlgorithm::Blake3, &data);
    let rel = |p| RelPath::parse(p).unwrap();
    let put = |p: &str, bytes: &[u8], mode: u32| {
        fs::write(root.join(p), bytes).unwrap();
        fs::set_permissions(root.join(p), fs::Permissions::from_mode(mode)).unwrap();
    };
    put("same", &data, 0o644);
    assert!(ws.in_place(&rel("same"), blob, false));
    assert!(!ws.in_place(&rel("same"), blob, true), "mode differs");
    put("exec", &data, 0o755);
    assert!(ws.in_place(&rel("exec"), blob, true));
    let mut near = data.clone();
    near[4999] ^= 1;
    put("near", &near, 0o644);
    assert!(!ws.in_place(&rel("near"), blob, false), "one byte differs");
    put("short", &data[1..], 0o644);
    assert!(!ws.in_place(&rel("short"), blob, false), "size differs");
    fs::hard_link(root.join("same"), root.join("linked")).unwrap();
    assert!(!ws.in_place(&rel("linked"), blob, false), "hard-linked");
    assert!(
        !ws.in_place(&rel("same"), blob, false),
        "now hard-linked too"
    );
    std::os::unix::fs::symlink("exec", root.join("link")).unwrap();
    assert!(!ws.in_place(&rel("link"), blob, true), "a symlink");
    assert!(!ws.in_place(&rel("missing"), blob, false));
    assert!(!ws.in_place(&rel("nodir/missing"), blob, false));
}

#[test]
fn symlink_through_a_link_to_an_ancestor_cannot_climb_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ws");
    fs::create_dir(&root).unwrap();
    let ws = Workspace::open(&root).unwrap();
    let rel = |p| RelPath::parse(p).unwrap();
    // `a -> .` is harmless by itself...
    ws.create_symlink(&rel("a"), ".").unwrap();
    // ...but `a/l` really lives at the root, so `..` from it leaves the workspace.
    let err = ws.create_symlink(&rel("a/l"), "../x").unwrap_err();
    assert!(matches!(err, BackendError::UnsafePath { .. }), "{err}");
    assert!(fs::symlink_metadata(root.join("l")).is_err());
    // Within bounds it is still fine.
    ws.create_symlink(&rel("a/m"), "a").unwrap();
}

#[test]
fn two_outputs_a_link_joins_into_one_path_are_refused() {
    // The fuzz drill found it: `b/a` (a file) and `a` (a symlink to itself) with a
    // workspace link `b -> .`; the link, made last, replaced the file, and the restore
    // succeeded with `b/a` unreadable.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(".", dir.path().join("b")).unwrap();
    fs::create_dir(dir.path().join("d")).unwrap();
    let ws = Workspace::open(dir.path()).unwrap();
    let rel = |p: &str| RelPath::parse(p).unwrap();
    let e = ws.check_distinct(&[rel("b/a"), rel("a")]).unwrap_err();
    assert_eq!(e.kind(), "unsafe_path", "{e}");
    assert!(e.to_string().contains("b/a and a are one path"), "{e}");
    let e = ws.check_distinct(&[rel("x"), rel("b/b/x")]).unwrap_err();
    assert_eq!(e.kind(), "unsafe_path", "{e}");
    // Distinct places, also below directories that do not exist yet.
    ws.check_distinct(&[rel("b/a"), rel("d/a"), rel("n/a"), rel("n/m/a"), rel("a/n")])
        .unwrap();
}
