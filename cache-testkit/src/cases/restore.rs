//! Restore semantics: what a restore does to what is already in the workspace.

use super::common::{restore, restore_and_compare, store, store_tree};
use crate::Harness;
use crate::fixtures::{
    Node, OutputTree, TempWorkspace, Tree, fresh_key, fresh_seed, pattern_bytes, write_pattern_file,
};
use cache_core::{CacheEntry, CacheOutput, OutputContent};

/// Restoring into a workspace that already holds other versions of the outputs
/// replaces them (content and mode: the exec bit is cleared where the cached file is
/// not executable), keeps unrelated files, and leaves no temporary files.
pub async fn restore_into_non_empty_workspace(h: Harness) {
    let seed = fresh_seed();
    let tree = OutputTree::sample(seed, h.capabilities.symlinks);
    let key = store_tree(&h, &tree).await;
    let ws = TempWorkspace::new();
    // Stale versions of every file output, with the opposite exec bit.
    for out in tree.outputs() {
        if let OutputContent::Bytes(b) = &out.content {
            let mut stale = b.clone();
            stale.extend_from_slice(b"stale");
            ws.write(&out.path, &stale, !out.is_executable);
        }
    }
    ws.write("unrelated/keep.txt", b"keep me", true);
    ws.write(
        "empty-dir/inside.txt",
        b"a file in an output directory",
        false,
    );
    let before = ws.tree();
    restore(&h, &key, &ws).await;
    let after = ws.tree_async().await;
    after.assert_contains(tree.expected(), "restored outputs");
    for kept in ["unrelated", "unrelated/keep.txt", "empty-dir/inside.txt"] {
        assert_eq!(
            after.get(kept),
            before.get(kept),
            "{kept} must be left alone"
        );
    }
    let extra: Vec<&String> = after
        .nodes
        .keys()
        .filter(|p| tree.expected().get(p).is_none() && before.get(p).is_none())
        .collect();
    assert!(extra.is_empty(), "restore left extra files: {extra:?}");
    ws.assert_outside_unchanged();
}

/// The exec bit is set and cleared by restore even when the content is unchanged.
pub async fn restore_sets_and_clears_exec_bit(h: Harness) {
    let seed = fresh_seed();
    let plain = format!("#!/bin/sh\n# plain {seed}\n");
    let exec = format!("#!/bin/sh\n# exec {seed}\n");
    let tree = OutputTree::new()
        .file("plain.sh", plain.clone(), false)
        .file("bin/exec.sh", exec.clone(), true);
    let key = store_tree(&h, &tree).await;
    let ws = TempWorkspace::new();
    ws.write("plain.sh", plain.as_bytes(), true);
    ws.write("bin/exec.sh", exec.as_bytes(), false);
    restore(&h, &key, &ws).await;
    let after = ws.tree_async().await;
    assert_eq!(
        after.get("plain.sh"),
        Some(&Node::file(plain.as_bytes(), false)),
        "restore must clear the exec bit of a non-executable cached file"
    );
    assert_eq!(
        after.get("bin/exec.sh"),
        Some(&Node::file(exec.as_bytes(), true)),
        "restore must set the exec bit of an executable cached file"
    );
    after.assert_same(tree.expected(), "restored tree");
}

/// Restoring twice into the same workspace gives the same tree and the same result.
pub async fn restore_twice_is_idempotent(h: Harness) {
    let tree = OutputTree::sample(fresh_seed(), h.capabilities.symlinks);
    let key = store_tree(&h, &tree).await;
    let (ws, first) = restore_and_compare(&h, &key, &tree, "first restore").await;
    let second = restore(&h, &key, &ws).await;
    ws.tree_async()
        .await
        .assert_same(tree.expected(), "second restore");
    let mut a = first;
    let mut b = second;
    a.sort_by(|x, y| x.path.cmp(&y.path));
    b.sort_by(|x, y| x.path.cmp(&y.path));
    assert_eq!(a, b, "both restores return the same outputs");
    assert!(ws.tree().temporaries().is_empty());
}

/// Outputs stored from files in one workspace (as a task leaves them) restore into a
/// fresh workspace; the source workspace is untouched.
pub async fn restore_into_fresh_workspace(h: Harness) {
    let seed = fresh_seed();
    let src = TempWorkspace::new();
    let big = tokio::task::spawn_blocking({
        let path = src.root().join("lib.a");
        move || write_pattern_file(&path, seed, 3 << 20).expect("write")
    })
    .await
    .expect("write a source file");
    src.write("bin/app", format!("app {seed}").as_bytes(), true);
    src.mkdir("logs");
    let source_tree = src.tree();
    let entry = CacheEntry {
        outputs: vec![
            CacheOutput::file("lib.a", src.root().join("lib.a"), false),
            CacheOutput::file("bin/app", src.root().join("bin/app"), true),
            CacheOutput::directory("logs"),
        ],
        ..CacheEntry::default()
    };
    let key = fresh_key();
    store(&h, &key, &entry).await;
    let mut expected = Tree::default();
    expected.insert(
        "lib.a",
        Node::File {
            blob: big,
            executable: false,
        },
    );
    expected.insert(
        "bin/app",
        Node::file(format!("app {seed}").as_bytes(), true),
    );
    expected.insert("logs", Node::Dir);
    let dst = TempWorkspace::new();
    restore(&h, &key, &dst).await;
    dst.tree_async()
        .await
        .assert_same(&expected, "fresh workspace");
    src.tree().assert_same(&source_tree, "source workspace");
    dst.assert_outside_unchanged();
}

/// An existing symlink where a file output goes is replaced by the file, never followed
/// (here it points outside the workspace).
pub async fn restore_replaces_file_symlink_without_following(h: Harness) {
    if !h.capabilities.symlinks {
        return;
    }
    let seed = fresh_seed();
    let tree = OutputTree::new()
        .file("out.txt", format!("cached {seed}"), false)
        .file("bin/tool", format!("tool {seed}"), true);
    let key = store_tree(&h, &tree).await;
    let ws = TempWorkspace::new();
    #[cfg(unix)]
    {
        ws.symlink("out.txt", "../outside/sentinel.txt");
        ws.symlink("bin/tool", "../../outside/sentinel.txt");
    }
    restore(&h, &key, &ws).await;
    ws.tree_async()
        .await
        .assert_same(tree.expected(), "symlinks replaced by files");
    ws.assert_outside_unchanged();
}

/// A file already in place with the cached bytes and mode is kept (the same inode), with
/// its modification time set to now as a rewrite would; every near miss is rewritten (a
/// new inode): the same size with one byte changed, the right bytes with the wrong mode,
/// the right bytes and mode through a hard link or a symlink to a file outside the
/// workspace (which stays exactly as it was: inode, content and mtime).
pub async fn restore_over_matching_files(h: Harness) {
    // Modes, hard links and symlinks are Unix notions; elsewhere every file is rewritten.
    #[cfg(unix)]
    over_matching_files_unix(h).await;
    #[cfg(not(unix))]
    drop(h);
}

#[cfg(unix)]
async fn over_matching_files_unix(h: Harness) {
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, SystemTime};
    let seed = fresh_seed();
    let bytes = |i: u64, len: usize| pattern_bytes(seed.wrapping_add(i), len);
    let (same, differs, mode, linked, via) = (
        bytes(0, 3000),
        bytes(1, 3000),
        bytes(2, 100),
        bytes(3, 200),
        bytes(4, 300),
    );
    let tree = OutputTree::new()
        .file("same.bin", same.clone(), false)
        .file("sub/differs.bin", differs.clone(), false)
        .file("mode.sh", mode.clone(), true)
        .file("linked.bin", linked.clone(), false)
        .file("via-symlink.bin", via.clone(), false);
    let key = store_tree(&h, &tree).await;

    let ws = TempWorkspace::new();
    let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let age = |path: &std::path::Path| {
        std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(long_ago))
            .expect("set an old mtime");
    };
    ws.write("same.bin", &same, false);
    age(&ws.root().join("same.bin"));
    let mut near = differs.clone();
    near[1500] ^= 1;
    ws.write("sub/differs.bin", &near, false);
    ws.write("mode.sh", &mode, false);
    let outside_linked = ws.outside().join("linked.bin");
    let outside_via = ws.outside().join("via.bin");
    for (path, content) in [(&outside_linked, &linked), (&outside_via, &via)] {
        std::fs::write(path, content).expect("write an outside file");
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod an outside file");
        age(path);
    }
    std::fs::hard_link(&outside_linked, ws.root().join("linked.bin")).expect("hard link");
    ws.symlink("via-symlink.bin", "../outside/via.bin");

    let kept = "same.bin";
    let rewritten = [
        "sub/differs.bin",
        "mode.sh",
        "linked.bin",
        "via-symlink.bin",
    ];
    let pins = InodePins::new(&ws, std::iter::once(kept).chain(rewritten));
    let outside_ids = [inode(&outside_linked), inode(&outside_via)];
    assert_eq!(
        pins.before["linked.bin"], outside_ids[0],
        "linked.bin is a hard link to the outside file"
    );
    let outside_before = ws.outside_tree();

    let started = SystemTime::now() - Duration::from_secs(2);
    restore(&h, &key, &ws).await;
    ws.tree_async().await.assert_same(
        tree.expected(),
        "workspace after restoring over near misses",
    );
    pins.assert_kept(kept, started);
    for rel in rewritten {
        pins.assert_rewritten(rel);
    }
    let meta = |p: &std::path::Path| std::fs::symlink_metadata(p).expect("stat");
    ws.outside_tree()
        .assert_same(&outside_before, "outside files behind links");
    for (path, before) in [&outside_linked, &outside_via].into_iter().zip(outside_ids) {
        assert_eq!(
            inode(path),
            before,
            "{} is outside the workspace: it must not be replaced",
            path.display()
        );
        assert_eq!(
            meta(path).modified().expect("mtime"),
            long_ago,
            "{} is outside the workspace: its mtime must not change",
            path.display()
        );
        assert_eq!(
            meta(path).nlink(),
            1,
            "{} is no longer linked from the workspace",
            path.display()
        );
    }
    assert!(ws.tree().temporaries().is_empty());
}

/// Which file `path` is (device and inode; a symlink is not followed).
#[cfg(unix)]
fn inode(path: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).expect("stat");
    (m.dev(), m.ino())
}

/// The inodes of workspace files before a restore, kept allocated until dropped, to
/// tell a file kept in place (the same inode) from one rewritten (a new file put in its
/// place). Pinning them (an open handle on a file; a second link, beside the workspace,
/// to a symlink) means no new file can be given an old inode number back, not even by a
/// backend that removes a file before it writes the new one. Neither adds a link to a
/// regular file, so whether it is in place is not changed.
#[cfg(unix)]
struct InodePins<'a> {
    ws: &'a TempWorkspace,
    before: std::collections::BTreeMap<&'a str, (u64, u64)>,
    _open: Vec<std::fs::File>,
}

#[cfg(unix)]
impl<'a> InodePins<'a> {
    fn new(ws: &'a TempWorkspace, rels: impl IntoIterator<Item = &'a str>) -> Self {
        let mut before = std::collections::BTreeMap::new();
        let mut open = Vec::new();
        for (n, rel) in rels.into_iter().enumerate() {
            let path = ws.root().join(rel);
            let id = inode(&path);
            if std::fs::symlink_metadata(&path)
                .expect("stat")
                .file_type()
                .is_symlink()
            {
                let pin = ws.base().join(format!("pinned-symlink-{n}"));
                std::fs::hard_link(&path, &pin).expect("link the symlink");
                assert_eq!(
                    inode(&pin),
                    id,
                    "a second link to {rel} itself, not its target"
                );
            } else {
                open.push(std::fs::File::open(&path).expect("open a workspace file"));
            }
            before.insert(rel, id);
        }
        InodePins {
            ws,
            before,
            _open: open,
        }
    }

    fn meta(&self, rel: &str) -> std::fs::Metadata {
        std::fs::symlink_metadata(self.ws.root().join(rel)).expect("stat")
    }

    /// `rel` already held the cached bytes and mode with a single link: it is the same
    /// inode, with its mtime set to now (not earlier than `started`).
    #[track_caller]
    fn assert_kept(&self, rel: &str, started: std::time::SystemTime) {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            inode(&self.ws.root().join(rel)),
            self.before[rel],
            "{rel} already held the cached bytes and mode with a single link: it must be \
             kept in place (the same inode), not rewritten"
        );
        let meta = self.meta(rel);
        let mtime = meta.modified().expect("mtime");
        let now = std::time::SystemTime::now() + std::time::Duration::from_secs(2);
        assert!(
            mtime >= started && mtime <= now,
            "{rel} was kept in place: it must look freshly restored (mtime now)"
        );
        assert_eq!(meta.nlink(), 1, "{rel} has one link");
    }

    /// `rel` did not hold the cached bytes, mode and a single link: it is a new inode,
    /// with a single link.
    #[track_caller]
    fn assert_rewritten(&self, rel: &str) {
        use std::os::unix::fs::MetadataExt;
        assert_ne!(
            inode(&self.ws.root().join(rel)),
            self.before[rel],
            "{rel} did not hold the cached bytes, mode and a single link: it must be \
             rewritten (a new inode), not kept or changed in place"
        );
        assert_eq!(
            self.meta(rel).nlink(),
            1,
            "{rel}: a restored file has one link"
        );
    }
}
