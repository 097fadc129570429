//! The cache-testkit suite against gcp-storage-emulator, started by `cargo xtask
//! peers up`, through a `gs://` URL as a user gives it, each test under its own prefix.
//!
//! `object_store`'s GCS client speaks GCS's XML API for objects; this emulator
//! implements the JSON API, and on the XML API's paths only PUT and GET, both answered
//! without the `ETag` (and GET without the `Last-Modified`) the client requires. So
//! every write fails, and only the cases below, which never write, run here; the
//! others are named in [`GCS_CANNOT_HOST`], and
//! `the_emulator_still_lacks_what_the_other_cases_need` fails when a new version of
//! the emulator fills the gap (then run them again and shorten the list).

mod common;

use cache_s3::object_store::{ObjectStoreExt, PutPayload};
use cache_s3::{S3Options, S3Storage};
use cache_testkit::Harness;
use std::sync::Arc;

/// The storage on the emulator under a fresh prefix, or `None` when it is not up.
fn storage(test: &str) -> Option<S3Storage> {
    let (endpoint, bucket) = common::gcs_peer(test)?;
    let url = url::Url::parse(&format!("gs://{bucket}/{}", common::unique_prefix(test))).unwrap();
    Some(S3Storage::open_with_env(&url, S3Options::default(), &common::gcs_env(&endpoint)).unwrap())
}

#[allow(clippy::unused_async)] // `run_case` takes an async maker
async fn harness(storage: S3Storage) -> Harness {
    let tamper = common::S3Tamper(storage.clone());
    Harness::from_storage(storage, Arc::new(tamper)).with_capabilities(common::capabilities())
}

macro_rules! hosted_by_the_emulator {
    ($($case:ident)*) => {
        /// The cases listed below.
        const LISTED: &[&str] = &[$(stringify!($case)),*];
        $(
        #[test]
        fn $case() {
            let Some(storage) = storage(stringify!($case)) else { return };
            cache_testkit::run_case(|| harness(storage), cache_testkit::cases::$case);
        }
        )*
    };
}

hosted_by_the_emulator! {
    keys_invalid_are_refused_and_touch_nothing
    store_refuses_undeclared_outputs
    miss_unknown_key
    degradation_hung_backend_costs_one_deadline
}

/// Every case that stores an entry or a blob, or reads, lists or deletes one that was
/// stored: gcp-storage-emulator answers the XML API's PUT without an `ETag` (the
/// client fails the write), and has no HEAD, DELETE, listing or multipart upload
/// there (501); its GET has no `ETag` nor `Last-Modified`; a create-only PUT
/// (`x-goog-if-generation-match: 0`) overwrites. They run on Azurite, moto, a
/// directory and memory.
const GCS_CANNOT_HOST: &[&str] = &[
    "policy_normal",
    "policy_readonly",
    "policy_writeonly",
    "policy_disabled",
    "round_trip_exit_code_and_duration",
    "round_trip_logs_absent_and_empty",
    "round_trip_logs_multiline_and_binary",
    "round_trip_logs_8mib",
    "round_trip_log_order",
    "round_trip_every_output_kind",
    "round_trip_returned_outputs",
    "round_trip_1000_small_files",
    "round_trip_256mib_file_from_disk",
    "restore_into_non_empty_workspace",
    "restore_sets_and_clears_exec_bit",
    "restore_twice_is_idempotent",
    "restore_into_fresh_workspace",
    "restore_replaces_file_symlink_without_following",
    "restore_over_matching_files",
    "keys_dedup_is_invisible",
    "keys_overwrite_last_write_wins",
    "keys_algorithms_are_distinct",
    "degradation_tiered_with_failing_shared_tier",
    "degradation_backend_as_shared_tier",
    "degradation_executor_runs_the_task_when_the_cache_fails",
    "hostile_parent_dir_paths",
    "hostile_absolute_paths",
    "hostile_symlink_targets_leaving_workspace",
    "hostile_symlink_chains_leaving_workspace",
    "hostile_existing_symlink_to_outside",
    "hostile_garbage_entries",
    "hostile_oversized_entry",
    "hostile_huge_declared_blob_size",
    "hostile_flipped_blob_byte",
    "hostile_flipped_big_blob_leaves_no_temp_file",
    "hostile_flipped_log_blob",
    "hostile_flipped_blob_is_repaired_by_next_store",
    "hostile_flipped_blob_readonly_deletes_nothing",
    "hostile_deleted_blob",
    "hostile_deleted_log_blob",
    "hostile_undeclared_outputs",
    "hostile_newer_format_entry_is_left_in_place",
    "hostile_huge_declared_log",
    "hostile_adversarial_entries",
    "hostile_unsigned_and_forged_entries",
    "trust_absolute_symlinks_only_when_opted_in",
    "concurrent_stores_and_readers",
    "cancel_restore_dropped_midway",
    "cancel_restore_timed_out_keeps_callers_outputs",
    "cancel_store_dropped_midway",
    "cancel_import_dropped_midway",
    "cancel_logs_dropped_midway",
    "concurrent_transfers_stay_within_memory_bound",
    "model_state_machine",
    "health_check_succeeds",
    "name_is_stable",
];

/// A case added to the suite runs here, or is named above with the rest.
#[test]
fn every_suite_case_runs_on_the_gcs_emulator_or_is_named() {
    let missing: Vec<&str> = cache_testkit::cases::ALL
        .iter()
        .map(|c| c.name)
        .filter(|n| !LISTED.contains(n))
        .collect();
    assert_eq!(missing, GCS_CANNOT_HOST);
}

/// What [`GCS_CANNOT_HOST`] rests on, asked of the emulator through the same client:
/// when this fails, the emulator does more than it did; run the named cases against it
/// and shorten the list.
#[test]
fn the_emulator_still_lacks_what_the_other_cases_need() {
    let Some(storage) = storage("gcs_capabilities") else {
        return;
    };
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = storage.store();
        let path = storage.prefix().clone().join("probe");
        let put = store.put(&path, PutPayload::from_static(b"probe")).await;
        let Err(e) = put else {
            panic!("the GCS emulator now completes a PUT: run GCS_CANNOT_HOST again");
        };
        assert!(e.to_string().contains("ETag"), "PUT: {e}");
        let head = store.head(&path).await;
        let Err(e) = head else {
            panic!("the GCS emulator now answers HEAD: run GCS_CANNOT_HOST again");
        };
        assert!(e.to_string().contains("501"), "HEAD: {e}");
        let get = store.get(&path).await;
        let Err(e) = get else {
            panic!("the GCS emulator now answers GET with its headers: run GCS_CANNOT_HOST again");
        };
        assert!(
            e.to_string().contains("Last-Modified Header missing"),
            "GET: {e}"
        );
    });
}
