//! Placement cannot be redirected: while another process swaps a parent directory of
//! the outputs for a symlink to outside the workspace, over and over, restores of
//! files, directories and symlinks below it never put anything outside.

#![cfg(unix)]

use cache_core::{BlobRef, DigestAlgorithm, RelPath, Workspace};
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn entries(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).min_depth(1) {
        let e = e.expect("walk");
        out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
    }
    out.sort();
    out
}

#[test]
fn swapping_a_parent_for_a_symlink_never_lands_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ws");
    let outside = tmp.path().join("outside");
    // A deep tree below the swapped directory, mirrored outside: the longer the walk
    // to the parent, the wider a check-then-write-by-path window.
    let deep = "b/c/d/e/f/g/h/i/j/k";
    fs::create_dir_all(root.join("a").join(deep)).unwrap();
    fs::create_dir_all(outside.join(deep)).unwrap();
    std::os::unix::fs::symlink(&outside, root.join(".link")).unwrap();
    let before = entries(&outside);

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (root, stop) = (root.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            use rustix::fs::{CWD, RenameFlags, renameat_with};
            let (a, link) = (root.join("a"), root.join(".link"));
            let mut swaps = 0u64;
            // `a` is always there, a directory or a symlink to outside by turns (an
            // atomic exchange). Bounded: stops when told, or after a fixed count.
            while !stop.load(Ordering::Relaxed) && swaps < 5_000_000 {
                if renameat_with(CWD, &a, CWD, &link, RenameFlags::EXCHANGE).is_ok() {
                    swaps += 1;
                }
            }
            swaps
        })
    };

    let ws = Workspace::open(&root).unwrap();
    let data = b"cached bytes".to_vec();
    let blob = BlobRef::of(DigestAlgorithm::Blake3, &data);
    let (file, dir, link) = (
        RelPath::parse(&format!("a/{deep}/out.txt")).unwrap(),
        RelPath::parse(&format!("a/{deep}/dir")).unwrap(),
        RelPath::parse(&format!("a/{deep}/link")).unwrap(),
    );
    let mut landed = 0u32;
    for i in 0..3_000 {
        if ws.write_file(&file, blob, false, &mut &data[..]).is_ok() {
            landed += 1;
        }
        let _ = ws.create_dir(&dir);
        let _ = ws.create_symlink(&link, "out.txt");
        if i % 500 == 0 {
            assert_eq!(entries(&outside), before, "something was written outside");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert_eq!(
        entries(&outside),
        before,
        "something was written outside the workspace ({landed} writes succeeded, {swaps} swaps)"
    );
    assert!(swaps > 0, "the swapper never ran");
}
