//! The cache-testkit suite against a real BuildGrid (`cargo xtask peers up`).
//!
//! Every case runs except the four that flip a stored blob's bytes and the two that
//! delete one: a real server verifies what it stores and has no delete, so those run
//! against the in-process server in `tests/fake.rs`. Keys are fresh per case, so
//! cases share the server without interfering.

mod common;

use cache_remote::{RemoteConfig, RemoteStorage};
use cache_testkit::Harness;
use std::sync::Arc;

const VAR: &str = "TASKCACHE_TEST_REAPI";

#[allow(clippy::unused_async)] // `run_case` takes an async maker
async fn harness(url: String) -> Harness {
    let open = || RemoteStorage::open(RemoteConfig::from_url(&url).unwrap()).unwrap();
    let tamper = common::ServerTamper::new(open());
    Harness::from_storage(open(), Arc::new(tamper)).with_capabilities(common::capabilities())
}

macro_rules! against_buildgrid {
    ($($case:ident)*) => {
        /// The cases listed below.
        const LISTED: &[&str] = &[$(stringify!($case)),*];
        $(
        #[test]
        fn $case() {
            let Some(url) = common::peer(VAR) else { return };
            cache_testkit::run_case(|| harness(url), cache_testkit::cases::$case);
        }
        )*
    };
}

against_buildgrid! {
    policy_normal
    policy_readonly
    policy_writeonly
    policy_disabled
    round_trip_exit_code_and_duration
    round_trip_logs_absent_and_empty
    round_trip_logs_multiline_and_binary
    round_trip_logs_8mib
    round_trip_log_order
    round_trip_every_output_kind
    round_trip_returned_outputs
    round_trip_1000_small_files
    round_trip_256mib_file_from_disk
    restore_into_non_empty_workspace
    restore_sets_and_clears_exec_bit
    restore_twice_is_idempotent
    restore_into_fresh_workspace
    restore_replaces_file_symlink_without_following
    restore_over_matching_files
    keys_dedup_is_invisible
    keys_overwrite_last_write_wins
    keys_invalid_are_refused_and_touch_nothing
    keys_algorithms_are_distinct
    miss_unknown_key
    degradation_tiered_with_failing_shared_tier
    degradation_backend_as_shared_tier
    degradation_executor_runs_the_task_when_the_cache_fails
    degradation_hung_backend_costs_one_deadline
    hostile_parent_dir_paths
    hostile_absolute_paths
    hostile_symlink_targets_leaving_workspace
    hostile_symlink_chains_leaving_workspace
    hostile_existing_symlink_to_outside
    hostile_garbage_entries
    hostile_oversized_entry
    hostile_huge_declared_blob_size
    hostile_undeclared_outputs
    store_refuses_undeclared_outputs
    hostile_newer_format_entry_is_left_in_place
    hostile_huge_declared_log
    hostile_adversarial_entries
    hostile_unsigned_and_forged_entries
    trust_absolute_symlinks_only_when_opted_in
    concurrent_stores_and_readers
    cancel_restore_dropped_midway
    cancel_restore_timed_out_keeps_callers_outputs
    cancel_store_dropped_midway
    cancel_import_dropped_midway
    cancel_logs_dropped_midway
    concurrent_transfers_stay_within_memory_bound
    model_state_machine
    health_check_succeeds
    name_is_stable
}

/// A case added to the suite runs here unless it is one of the seven that plant bytes
/// a verifying server without delete cannot hold (those run in `tests/fake.rs`).
#[test]
fn every_suite_case_runs_against_buildgrid_or_is_named_fake_only() {
    const FAKE_ONLY: &[&str] = &[
        "hostile_flipped_blob_byte",
        "hostile_flipped_big_blob_leaves_no_temp_file",
        "hostile_flipped_log_blob",
        "hostile_flipped_blob_is_repaired_by_next_store",
        "hostile_flipped_blob_readonly_deletes_nothing",
        "hostile_deleted_blob",
        "hostile_deleted_log_blob",
    ];
    let missing: Vec<&str> = cache_testkit::cases::ALL
        .iter()
        .map(|c| c.name)
        .filter(|n| !LISTED.contains(n))
        .collect();
    assert_eq!(missing, FAKE_ONLY);
}
