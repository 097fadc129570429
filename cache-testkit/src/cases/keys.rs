//! Keys: dedup, overwrite, validation.

use super::common::{check, restore_and_compare, store};
use crate::Harness;
use crate::fixtures::{OutputTree, TempWorkspace, expect_err, expect_ok, fresh_seed, task};
use cache_core::{CacheEntry, CachePolicy, DigestAlgorithm};

fn entry_with_logs(tree: &OutputTree, stdout: &str, exit_code: i32) -> CacheEntry {
    CacheEntry {
        stdout: Some(stdout.as_bytes().to_vec()),
        exit_code,
        ..tree.entry()
    }
}

async fn logs(h: &Harness, key: &str) -> Option<Vec<u8>> {
    expect_ok(h.backend.get_log_bytes(&task(), key).await, "get_log_bytes").0
}

/// The same outputs under two keys (stored once, by content) restore independently:
/// replacing one key's entry does not change the other's.
pub async fn keys_dedup_is_invisible(h: Harness) {
    let seed = fresh_seed();
    let tree = OutputTree::sample(seed, h.capabilities.symlinks);
    let (k1, k2) = (crate::fixtures::fresh_key(), crate::fixtures::fresh_key());
    store(&h, &k1, &entry_with_logs(&tree, "one", 1)).await;
    store(&h, &k2, &entry_with_logs(&tree, "two", 2)).await;
    restore_and_compare(&h, &k1, &tree, "first key").await;
    restore_and_compare(&h, &k2, &tree, "second key").await;
    let other = OutputTree::new().file("other.txt", format!("other {seed}"), false);
    store(&h, &k1, &entry_with_logs(&other, "one again", 3)).await;
    restore_and_compare(&h, &k1, &other, "first key, replaced").await;
    restore_and_compare(&h, &k2, &tree, "second key after the first was replaced").await;
    assert_eq!(logs(&h, &k2).await.as_deref(), Some(&b"two"[..]));
    assert_eq!(check(&h, &k2, CachePolicy::Normal).await.exit_code, Some(2));
}

/// Storing a key again replaces its entry: the entry published last wins, whole
/// (exit code, logs and outputs all come from it; nothing of the first remains).
pub async fn keys_overwrite_last_write_wins(h: Harness) {
    let seed = fresh_seed();
    let key = crate::fixtures::fresh_key();
    let first = OutputTree::new()
        .file("first-only.txt", format!("first {seed}"), true)
        .file("both.txt", format!("first {seed}"), true);
    let second = OutputTree::new().file("both.txt", format!("second {seed}"), false);
    store(&h, &key, &entry_with_logs(&first, "first", 1)).await;
    store(&h, &key, &entry_with_logs(&second, "second", 2)).await;
    let r = check(&h, &key, CachePolicy::Normal).await;
    assert!(r.hit);
    assert_eq!(r.exit_code, Some(2), "the last write wins");
    assert_eq!(logs(&h, &key).await.as_deref(), Some(&b"second"[..]));
    restore_and_compare(&h, &key, &second, "the last write wins").await;
}

/// Key strings that are not `sha256:`/`blake3:` + 64 lowercase hex digits are an
/// `InvalidKey` error from every call under every policy, with no storage I/O and
/// nothing written to the workspace.
pub async fn keys_invalid_are_refused_and_touch_nothing(h: Harness) {
    let hex = "ab".repeat(32);
    let bad = [
        String::new(),
        "../x".to_owned(),
        "../../outside/sentinel.txt".to_owned(),
        format!("blake3:{}", hex.to_uppercase()),
        format!("sha256:{}", &hex[..63]),
        format!("blake3:{hex}0"),
        format!("blake3:{}/..", &hex[..61]),
        format!("sha256:../{}", &hex[..61]),
        format!("md5:{hex}"),
        format!("BLAKE3:{hex}"),
        format!(" blake3:{hex}"),
        format!("blake3:{hex}\n"),
        format!("blake3:{}\0", &hex[..63]),
        hex.clone(),
        "blake3:".to_owned(),
    ];
    let ws = TempWorkspace::new();
    ws.write("existing.txt", b"existing", false);
    let tree = OutputTree::new().file("out.txt", b"data".to_vec(), false);
    let before_ws = ws.tree();
    let before = h.io.snapshot();
    for key in &bad {
        let what = |op: &str| format!("{op} with key {key:?}");
        for policy in CachePolicy::ALL {
            let r = h.backend.check(&task(), key, policy).await;
            expect_err(r, &["invalid_key"], &what(&format!("check ({policy})")));
            let r = h.backend.store(&task(), key, &tree.entry(), policy).await;
            expect_err(r, &["invalid_key"], &what(&format!("store ({policy})")));
        }
        let r = h.backend.restore_outputs(&task(), key, ws.root()).await;
        expect_err(r, &["invalid_key"], &what("restore_outputs"));
        let r = h.backend.get_log_bytes(&task(), key).await;
        expect_err(r, &["invalid_key"], &what("get_log_bytes"));
        let r = h.backend.get_logs(&task(), key).await;
        let e = expect_err(r, &["invalid_key"], &what("get_logs"));
        assert!(
            e.to_string().contains("64 lowercase hex"),
            "the error should say what a key looks like: {e}"
        );
    }
    let io = h.io.snapshot().since(before);
    assert_eq!(io.total(), 0, "invalid keys must not reach storage: {io:?}");
    ws.tree()
        .assert_same(&before_ws, "workspace after invalid keys");
    ws.assert_outside_unchanged();
}

/// The same 64 hex digits under `sha256:` and `blake3:` are two different keys.
pub async fn keys_algorithms_are_distinct(h: Harness) {
    let seed = fresh_seed();
    let hex = DigestAlgorithm::Blake3.digest(&seed.to_le_bytes()).hex();
    let (b3, sha) = (format!("blake3:{hex}"), format!("sha256:{hex}"));
    let a = OutputTree::new().file("a.txt", format!("blake3 {seed}"), false);
    store(&h, &b3, &a.entry()).await;
    assert!(
        !check(&h, &sha, CachePolicy::Normal).await.hit,
        "sha256 key must miss"
    );
    let b = OutputTree::new().file("b.txt", format!("sha256 {seed}"), true);
    store(&h, &sha, &b.entry()).await;
    restore_and_compare(&h, &b3, &a, "blake3 key").await;
    restore_and_compare(&h, &sha, &b, "sha256 key").await;
}
