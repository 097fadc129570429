//! `cache_core::Cache` itself: one hit reads its entry once, and its three calls see one
//! record even when another writer replaces the entry meanwhile.

use cache_core::{Cache, CacheBackend, CacheEntry, CacheOutput, CachePolicy};
use cache_testkit::fixtures::{TempWorkspace, fresh_key, task};
use cache_testkit::{CountingStorage, IoCounter, MemoryStorage};

fn entry(version: &str, exit_code: i32) -> CacheEntry {
    CacheEntry {
        exit_code,
        stdout: Some(format!("stdout {version}\n").into_bytes()),
        outputs: vec![CacheOutput::bytes(
            "out.txt",
            format!("output {version}\n").into_bytes(),
            false,
        )],
        ..CacheEntry::default()
    }
}

async fn restored(cache: &dyn CacheBackend, key: &str) -> (String, String) {
    let ws = TempWorkspace::new();
    cache
        .restore_outputs(&task(), key, ws.root())
        .await
        .expect("restore");
    let out = std::fs::read_to_string(ws.root().join("out.txt")).expect("read output");
    let (stdout, _) = cache.get_log_bytes(&task(), key).await.expect("logs");
    (
        out,
        String::from_utf8(stdout.expect("stdout")).expect("utf-8"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_restores_the_record_its_check_saw() {
    let storage = MemoryStorage::new();
    let ours = Cache::new(storage.clone());
    let other = Cache::new(storage);
    let key = fresh_key();
    let p = CachePolicy::Normal;
    ours.store(&task(), &key, &entry("one", 0), p)
        .await
        .unwrap();

    let hit = ours.check(&task(), &key, p).await.unwrap();
    assert_eq!((hit.hit, hit.exit_code), (true, Some(0)));
    // Another process replaces the entry between our check and our restore.
    other
        .store(&task(), &key, &entry("two", 3), p)
        .await
        .unwrap();
    assert_eq!(
        restored(&ours, &key).await,
        ("output one\n".into(), "stdout one\n".into()),
        "exit code 0 came with version one: its outputs and logs must be version one"
    );
    // Without a check of its own, the other handle reads what is stored now.
    assert_eq!(
        restored(&other, &key).await,
        ("output two\n".into(), "stdout two\n".into())
    );
    // A new check sees the new entry, and the restore follows it.
    let hit = ours.check(&task(), &key, p).await.unwrap();
    assert_eq!(hit.exit_code, Some(3));
    assert_eq!(restored(&ours, &key).await.0, "output two\n");
    // A store through this handle is seen at once, check or not.
    ours.store(&task(), &key, &entry("three", 0), p)
        .await
        .unwrap();
    assert_eq!(restored(&ours, &key).await.0, "output three\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_reads_its_entry_once() {
    let io = IoCounter::new();
    let cache = Cache::new(CountingStorage::new(MemoryStorage::new(), io.clone()));
    let key = fresh_key();
    let p = CachePolicy::Normal;
    cache
        .store(&task(), &key, &entry("one", 0), p)
        .await
        .unwrap();
    let before = io.snapshot();
    assert!(cache.check(&task(), &key, p).await.unwrap().hit);
    let checked = io.snapshot();
    assert_eq!(
        checked.since(before).reads,
        1,
        "a check is one lookup (entry and blobs)"
    );
    restored(&cache, &key).await;
    let after = io.snapshot().since(checked);
    assert_eq!(
        (after.reads, after.writes),
        (1, 1),
        "after its check, a hit's restore and inline logs are one storage call \
         (the restore, with its recency update): the entry is not read again"
    );
}
