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

/// A file already in place with the cached bytes and mode is kept, with its
/// modification time set to now as a rewrite would; every near miss is rewritten: the
/// same size with one byte changed, the right bytes with the wrong mode, the right bytes
/// and mode through a hard link or a symlink to a file outside the workspace (which stays
/// exactly as it was, mtime included).
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
    let outside_before = ws.outside_tree();

    let started = SystemTime::now() - Duration::from_secs(2);
    restore(&h, &key, &ws).await;
    ws.tree_async().await.assert_same(
        tree.expected(),
        "workspace after restoring over near misses",
    );
    let meta = |p: &std::path::Path| std::fs::symlink_metadata(p).expect("stat");
    assert!(
        meta(&ws.root().join("same.bin")).modified().expect("mtime") >= started,
        "a file kept in place must look freshly restored (mtime now)"
    );
    assert_eq!(
        meta(&ws.root().join("linked.bin")).nlink(),
        1,
        "a hard-linked output is replaced, not shared"
    );
    ws.outside_tree()
        .assert_same(&outside_before, "outside files behind links");
    for path in [&outside_linked, &outside_via] {
        assert_eq!(
            meta(path).modified().expect("mtime"),
            long_ago,
            "{} is outside the workspace: its mtime must not change",
            path.display()
        );
    }
    assert!(ws.tree().temporaries().is_empty());
}
