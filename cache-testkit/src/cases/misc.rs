//! Health and identity.

use super::common::store;
use crate::Harness;
use crate::fixtures::{OutputTree, expect_ok, fresh_key, fresh_seed};

/// `health_check` succeeds on a working backend, before and after use.
pub async fn health_check_succeeds(h: Harness) {
    expect_ok(
        h.backend.health_check().await,
        "health_check of a fresh backend",
    );
    let tree = OutputTree::new().file("f", format!("{}", fresh_seed()), false);
    store(&h, &fresh_key(), &tree.entry()).await;
    expect_ok(h.backend.health_check().await, "health_check after a store");
    expect_ok(h.backend.health_check().await, "health_check again");
}

/// `name()` is a non-empty label fit for logs and metrics, and does not change.
pub async fn name_is_stable(h: Harness) {
    let name = h.backend.name();
    assert!(!name.is_empty(), "the backend name is empty");
    assert!(
        name.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\'),
        "the backend name {name:?} should be a plain label (no spaces, quotes or backslashes)"
    );
    let tree = OutputTree::new().file("f", format!("{}", fresh_seed()), false);
    store(&h, &fresh_key(), &tree.entry()).await;
    let _ = h.backend.health_check().await;
    assert_eq!(h.backend.name(), name, "name() changed after use");
}
