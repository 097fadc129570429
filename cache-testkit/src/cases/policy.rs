//! The policy matrix: every policy with `check` and `store`, with I/O counted.

use super::common::{check, restore_and_compare};
use crate::Harness;
use crate::fixtures::{OutputTree, expect_ok, fresh_key, fresh_seed, task};
use cache_core::{CachePolicy, policy_allows_read, policy_allows_write};

/// A restore under `policy` (if it reads): a read-only one writes nothing to the
/// cache, recency included.
async fn restore_writes_only_if_allowed(h: &Harness, existing: &str, policy: CachePolicy) {
    if policy_allows_read(policy) {
        let hit = expect_ok(
            h.backend
                .lookup(
                    &task(),
                    &cache_core::Digest::parse(existing).unwrap(),
                    policy,
                )
                .await,
            &format!("{policy} lookup"),
        )
        .expect("a stored key hits");
        let ws = crate::fixtures::TempWorkspace::new();
        let before = h.io.snapshot();
        expect_ok(hit.restore(ws.root()).await, &format!("{policy} restore"));
        let io = h.io.snapshot().since(before);
        if !policy_allows_write(policy) {
            // `other` counts `touch`: recency is a write too.
            assert_eq!(
                (io.writes, io.other),
                (0, 0),
                "{policy} restore must write nothing to the cache, recency included; did {io:?}"
            );
        }
    }
}

/// Runs `check` and `store` with `policy` and checks what happened.
async fn matrix(h: &Harness, policy: CachePolicy) {
    let seed = fresh_seed();
    let stored = OutputTree::new().file("out.txt", format!("stored {seed}"), false);
    let mut stored_entry = stored.entry();
    stored_entry.exit_code = 3;
    stored_entry.duration_ms = 1234;
    let existing = fresh_key();
    expect_ok(
        h.backend
            .store(&task(), &existing, &stored_entry, CachePolicy::Normal)
            .await,
        "store with Normal",
    );

    // check
    let before = h.io.snapshot();
    let r = check(h, &existing, policy).await;
    let io = h.io.snapshot().since(before);
    if policy_allows_read(policy) {
        assert!(r.hit, "{policy} check of a stored key must hit");
        assert_eq!(r.exit_code, Some(3), "{policy} hit carries the exit code");
        assert_eq!(
            r.cached_duration_ms,
            Some(1234),
            "{policy} hit carries the duration"
        );
        assert!(
            io.reads > 0,
            "{policy} check read nothing according to the harness's IoCounter: \
             the backend's I/O is not being counted, so the no-I/O cases prove nothing"
        );
    } else {
        assert!(
            !r.hit,
            "{policy} check must be a miss even for a stored key"
        );
        assert_eq!(
            io.total(),
            0,
            "{policy} check must do no storage I/O, did {io:?}"
        );
    }

    restore_writes_only_if_allowed(h, &existing, policy).await;

    // store over the existing key, and under a fresh key
    let other = OutputTree::new().file("out.txt", format!("other {seed}"), true);
    let fresh = fresh_key();
    let before = h.io.snapshot();
    for key in [&existing, &fresh] {
        expect_ok(
            h.backend.store(&task(), key, &other.entry(), policy).await,
            &format!("store with {policy}"),
        );
    }
    let io = h.io.snapshot().since(before);
    if policy_allows_write(policy) {
        assert!(
            io.writes > 0,
            "{policy} store wrote nothing according to the IoCounter"
        );
        assert!(
            check(h, &fresh, CachePolicy::Normal).await.hit,
            "{policy} store must write"
        );
        restore_and_compare(
            h,
            &existing,
            &other,
            &format!("{policy} store replaced the entry"),
        )
        .await;
    } else {
        assert_eq!(
            io.writes, 0,
            "{policy} store must write nothing, did {io:?}"
        );
        assert!(
            !check(h, &fresh, CachePolicy::Normal).await.hit,
            "{policy} store must not create an entry"
        );
        restore_and_compare(
            h,
            &existing,
            &stored,
            &format!("{policy} store left the entry"),
        )
        .await;
    }
}

/// `Normal`: `check` looks up (and the harness counts its reads), `store` writes.
pub async fn policy_normal(h: Harness) {
    matrix(&h, CachePolicy::Normal).await;
}

/// `Readonly`: `check` looks up, `store` is a no-op that writes nothing.
pub async fn policy_readonly(h: Harness) {
    matrix(&h, CachePolicy::Readonly).await;
}

/// `Writeonly`: `check` is a miss without any storage I/O, `store` writes.
pub async fn policy_writeonly(h: Harness) {
    matrix(&h, CachePolicy::Writeonly).await;
}

/// `Disabled`: `check` is a miss without any storage I/O, `store` writes nothing.
pub async fn policy_disabled(h: Harness) {
    matrix(&h, CachePolicy::Disabled).await;
}
