//! Restore semantics: what a restore does to what is already in the workspace.

use super::common::{restore, restore_and_compare, store, store_tree};
use crate::Harness;
use crate::fixtures::{
    Node, OutputTree, TempWorkspace, Tree, fresh_key, fresh_seed, write_pattern_file,
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
