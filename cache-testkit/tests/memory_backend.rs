//! MemoryBackend specifics, beyond the conformance suite: dedup, I/O counting, the
//! tamper hook's own errors, limits, and a SHA-256 addressed store.

use cache_core::storage::{BlobSource, EntryKey, MAX_ENTRY_BYTES, Storage};
use cache_core::{BlobRef, CacheBackend, CacheEntry, CachePolicy, Digest, DigestAlgorithm};
use cache_testkit::fixtures::{OutputTree, TempWorkspace, digest, fresh_key, task};
use cache_testkit::{Harness, MemoryBackend, MemoryStorage, Tamper, cases};
use std::sync::Arc;

#[tokio::test]
async fn identical_content_is_stored_once() {
    let b = MemoryBackend::new();
    let tree = OutputTree::new()
        .file("a.txt", b"same".to_vec(), false)
        .file("b.txt", b"same".to_vec(), true)
        .file("c.txt", b"different".to_vec(), false);
    for _ in 0..3 {
        b.store(&task(), &fresh_key(), &tree.entry(), CachePolicy::Normal)
            .await
            .unwrap();
    }
    assert_eq!(b.storage().entry_count(), 3);
    assert_eq!(b.storage().blob_count(), 2);
    assert_eq!(b.storage().blob_bytes(), 4 + 9);
}

#[tokio::test]
async fn clones_share_contents_and_counters() {
    let a = MemoryBackend::new();
    let b = a.clone();
    let key = fresh_key();
    a.store(&task(), &key, &CacheEntry::default(), CachePolicy::Normal)
        .await
        .unwrap();
    let before = a.io().snapshot();
    assert!(
        b.check(&task(), &key, CachePolicy::Normal)
            .await
            .unwrap()
            .hit
    );
    let io = a.io().snapshot().since(before);
    assert!(io.reads >= 1 && io.writes == 0, "{io:?}");
    // A backend over the same storage sees the same entries.
    let c = MemoryBackend::from_storage(a.storage().clone());
    assert!(
        c.check(&task(), &key, CachePolicy::Normal)
            .await
            .unwrap()
            .hit
    );
}

#[tokio::test]
async fn corrupt_blob_is_dropped_on_restore() {
    let b = MemoryBackend::new();
    let tree = OutputTree::new().file("f.bin", vec![7u8; 1000], false);
    let key = fresh_key();
    b.store(&task(), &key, &tree.entry(), CachePolicy::Normal)
        .await
        .unwrap();
    let blob = BlobRef::of(DigestAlgorithm::Blake3, &[7u8; 1000]);
    b.flip_blob_byte(&blob).await.unwrap();
    let ws = TempWorkspace::new();
    let e = b
        .restore_outputs(&task(), &key, ws.root())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "digest_mismatch");
    assert_eq!(b.storage().blob_count(), 0, "the corrupt copy is gone");
    assert!(
        !b.check(&task(), &key, CachePolicy::Normal)
            .await
            .unwrap()
            .hit
    );
}

#[tokio::test]
async fn tamper_reports_what_it_cannot_do() {
    let s = MemoryStorage::new();
    let missing = BlobRef::of(DigestAlgorithm::Blake3, b"never stored");
    assert_eq!(
        s.flip_blob_byte(&missing).await.unwrap_err().kind(),
        "blob_not_found"
    );
    assert_eq!(
        s.delete_blob(&missing).await.unwrap_err().kind(),
        "blob_not_found"
    );
    let empty = s
        .put_blobs(vec![BlobSource::Bytes(Vec::new().into())], None)
        .await
        .unwrap();
    assert_eq!(
        s.flip_blob_byte(&empty[0]).await.unwrap_err().kind(),
        "invalid_output"
    );
}

#[tokio::test]
async fn oversized_entries_are_not_read() {
    let s = MemoryStorage::new();
    let key: Digest = digest(&fresh_key());
    s.write_raw_entry(&key, vec![0; MAX_ENTRY_BYTES + 1])
        .await
        .unwrap();
    let err = s.get_entry(&EntryKey::digest_only(key)).await.unwrap_err();
    assert_eq!(err.kind(), "corrupt_entry");
    assert!(err.to_string().contains("limit"), "{err}");
    // Garbage under the limit is corrupt too, for a decoding reason.
    s.write_raw_entry(&key, vec![0; 10]).await.unwrap();
    let err = s.get_entry(&EntryKey::digest_only(key)).await.unwrap_err();
    assert_eq!(err.kind(), "corrupt_entry");
    assert!(!err.to_string().contains("limit"), "{err}");
}

fn sha256_harness() -> Harness {
    let b = MemoryBackend::from_storage(MemoryStorage::with_algorithm(DigestAlgorithm::Sha256));
    Harness::new(
        Arc::new(b.clone()),
        Arc::new(b.storage().clone()),
        b.io().clone(),
    )
}

/// The suite does not assume BLAKE3 blob addresses: cases that compute or inspect
/// blob addresses pass against a SHA-256 addressed store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_cases_hold_with_sha256_blob_addresses() {
    for name in [
        "round_trip_returned_outputs",
        "round_trip_logs_multiline_and_binary",
        "hostile_flipped_blob_byte",
        "hostile_flipped_log_blob",
        "hostile_flipped_blob_is_repaired_by_next_store",
        "hostile_flipped_blob_readonly_deletes_nothing",
        "hostile_deleted_blob",
        "hostile_deleted_log_blob",
        "hostile_huge_declared_blob_size",
    ] {
        let case = cases::by_name(name).expect("a case");
        (case.run)(sha256_harness()).await;
    }
    let b = MemoryBackend::from_storage(MemoryStorage::with_algorithm(DigestAlgorithm::Sha256));
    let tree = OutputTree::new().file("f", b"abc".to_vec(), false);
    let key = fresh_key();
    b.store(&task(), &key, &tree.entry(), CachePolicy::Normal)
        .await
        .unwrap();
    let ws = TempWorkspace::new();
    let out = b.restore_outputs(&task(), &key, ws.root()).await.unwrap();
    let cache_core::OutputContent::File {
        blob: Some(blob), ..
    } = &out[0].content
    else {
        panic!("{out:?}")
    };
    assert_eq!(*blob, BlobRef::of(DigestAlgorithm::Sha256, b"abc"));
}

#[test]
fn every_case_is_listed_once() {
    let mut names: Vec<&str> = cases::ALL.iter().map(|c| c.name).collect();
    let n = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), n, "a case is listed twice");
    assert!(n >= 40, "{n} cases");
    assert!(cases::by_name("policy_readonly").is_some());
    assert!(cases::by_name("no_such_case").is_none());
}
