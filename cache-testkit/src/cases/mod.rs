//! The conformance cases: plain `async fn(Harness)` functions that panic when the
//! backend misbehaves.
//!
//! [`conformance_suite!`](crate::conformance_suite) runs each one as its own test;
//! [`ALL`] lists them for callers who drive the cases themselves (e.g. to show that a
//! deliberately broken backend fails specific cases).
//!
//! | group | cases |
//! |---|---|
//! | policy matrix | `policy_*`: every policy with `check` and `store`, counting I/O |
//! | round trip | `round_trip_*`: exit code, duration, logs up to 8 MiB, every output kind, 1,000 files, a 256 MiB file |
//! | restore semantics | `restore_*`: non-empty and fresh workspaces, exec bit set and cleared, idempotence, files already in place |
//! | keys | `keys_*`: dedup, overwrite (the last published entry wins), invalid keys |
//! | misses and degradation | `miss_*`, `degradation_*`: unknown keys, [`cache_core::Tiered`] with a failing tier |
//! | hostile data | `hostile_*`: escaping paths and symlinks, garbage, flipped and deleted blobs, undeclared outputs, newer-format entries, huge declared logs, adversarial entries |
//! | trust boundary | `store_refuses_undeclared_outputs` (a caller's store of undeclared outputs writes nothing), `trust_absolute_symlinks_only_when_opted_in` |
//! | concurrency | `concurrent_stores_and_readers` |
//! | cancellation | `cancel_*`: restore, store, import and log reads dropped mid-way (and a restore timed out by [`cache_core::Deadline`]) write and publish nothing afterwards, stop reading, and leak nothing |
//! | concurrency | `concurrent_stores_and_readers`, `concurrent_transfers_stay_within_memory_bound` (peak memory of 16 stores and 16 imports at once against the documented bounds) |
//! | model | `model_state_machine`: random operation sequences against a reference |
//! | misc | `health_check_succeeds`, `name_is_stable` |
//!
//! Which write wins: when a key is stored twice, the entry **published last** wins
//! (`keys_overwrite_last_write_wins`); concurrent writers of one key both succeed and
//! readers see one whole entry or the other (`concurrent_stores_and_readers`).
#![allow(clippy::missing_panics_doc)]

mod bounds;
mod cancel;
mod common;
mod concurrency;
mod hostile;
mod keys;
mod misc;
mod misses;
mod model;
mod policy;
mod restore;
mod round_trip;
mod trust;

pub use bounds::{MEMORY_ALLOWANCE, concurrent_transfers_stay_within_memory_bound};
pub use cancel::{
    cancel_import_dropped_midway, cancel_logs_dropped_midway, cancel_restore_dropped_midway,
    cancel_restore_timed_out_keeps_callers_outputs, cancel_store_dropped_midway,
};
pub use concurrency::concurrent_stores_and_readers;
pub use hostile::{
    hostile_absolute_paths, hostile_deleted_blob, hostile_deleted_log_blob,
    hostile_existing_symlink_to_outside, hostile_flipped_big_blob_leaves_no_temp_file,
    hostile_flipped_blob_byte, hostile_flipped_blob_is_repaired_by_next_store,
    hostile_flipped_blob_readonly_deletes_nothing, hostile_flipped_log_blob,
    hostile_garbage_entries, hostile_huge_declared_blob_size, hostile_oversized_entry,
    hostile_parent_dir_paths, hostile_symlink_chains_leaving_workspace,
    hostile_symlink_targets_leaving_workspace,
};
pub use keys::{
    keys_algorithms_are_distinct, keys_dedup_is_invisible,
    keys_invalid_are_refused_and_touch_nothing, keys_overwrite_last_write_wins,
};
pub use misc::{health_check_succeeds, name_is_stable};
pub use misses::{
    degradation_backend_as_shared_tier, degradation_executor_runs_the_task_when_the_cache_fails,
    degradation_hung_backend_costs_one_deadline, degradation_tiered_with_failing_shared_tier,
    miss_unknown_key,
};
pub use model::model_state_machine;
pub use policy::{policy_disabled, policy_normal, policy_readonly, policy_writeonly};
pub use restore::{
    restore_into_fresh_workspace, restore_into_non_empty_workspace, restore_over_matching_files,
    restore_replaces_file_symlink_without_following, restore_sets_and_clears_exec_bit,
    restore_twice_is_idempotent,
};
pub use round_trip::{
    round_trip_256mib_file_from_disk, round_trip_1000_small_files, round_trip_every_output_kind,
    round_trip_exit_code_and_duration, round_trip_log_order, round_trip_logs_8mib,
    round_trip_logs_absent_and_empty, round_trip_logs_multiline_and_binary,
    round_trip_returned_outputs,
};
pub use trust::{
    hostile_adversarial_entries, hostile_huge_declared_log,
    hostile_newer_format_entry_is_left_in_place, hostile_undeclared_outputs,
    hostile_unsigned_and_forged_entries, store_refuses_undeclared_outputs,
    trust_absolute_symlinks_only_when_opted_in,
};

use crate::Harness;
use std::future::Future;
use std::pin::Pin;

/// The future a case returns, boxed.
pub type CaseFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One named case.
#[derive(Clone, Copy)]
pub struct Case {
    /// The case's name (its function's name, and the test's name).
    pub name: &'static str,
    /// Runs the case.
    pub run: fn(Harness) -> CaseFuture,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

crate::conformance_suite!(@list table ());

/// The case called `name`.
#[must_use]
pub fn by_name(name: &str) -> Option<&'static Case> {
    ALL.iter().find(|c| c.name == name)
}
