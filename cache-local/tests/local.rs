//! Local-specific behaviour: layout, dedup, stats, GC, verify, repair, durability.

#![allow(clippy::cast_possible_truncation)]

use cache_core::storage::{BlobSource, EntryKey, MAX_ENTRY_BYTES, Storage};
use cache_core::{
    BackendError, BlobRef, CacheBackend, CacheEntry, CacheOutput, CachePolicy, Digest,
    DigestAlgorithm, Task,
};
use cache_local::{GcOptions, LocalCache, LocalOptions, LocalStorage};
use std::path::Path;
use std::time::{Duration, SystemTime};

fn task() -> Task {
    Task::new("t", ["true"])
}

fn key(n: u64) -> String {
    DigestAlgorithm::Blake3
        .digest(format!("key {n}").as_bytes())
        .to_string()
}

fn content(n: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    blake3::Hasher::new()
        .update(&n.to_le_bytes())
        .finalize_xof()
        .fill(&mut v);
    v
}

fn blob_of(data: &[u8]) -> BlobRef {
    BlobRef::of(DigestAlgorithm::Blake3, data)
}

fn open(dir: &Path) -> LocalCache {
    cache_local::open(dir, LocalOptions::default()).unwrap()
}

fn no_grace() -> GcOptions {
    GcOptions {
        blob_grace: Duration::ZERO,
        temp_age: Duration::from_secs(3600),
    }
}

async fn store_bytes(cache: &LocalCache, k: &str, files: &[(&str, Vec<u8>)]) {
    let entry = CacheEntry {
        stdout: Some(b"log".to_vec()),
        outputs: files
            .iter()
            .map(|(p, b)| CacheOutput::bytes(*p, b.clone(), false))
            .collect(),
        ..CacheEntry::default()
    };
    cache
        .store(&task(), k, &entry, CachePolicy::Normal)
        .await
        .unwrap();
}

async fn is_hit(cache: &LocalCache, k: &str) -> bool {
    cache
        .check(&task(), k, CachePolicy::Normal)
        .await
        .unwrap()
        .hit
}

fn set_mtime(path: &Path, ago: Duration) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - ago)
        .unwrap();
}

#[test]
fn open_creates_layout_and_refuses_other_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let s = LocalStorage::open(&dir, LocalOptions::default()).unwrap();
    assert_eq!(s.dir(), dir);
    assert_eq!(Storage::name(&s), "local");
    for sub in ["blobs", "entries", "tmp", "stats"] {
        assert!(dir.join(sub).is_dir(), "{sub}");
    }
    let text = std::fs::read_to_string(dir.join(cache_local::LAYOUT_FILE)).unwrap();
    assert_eq!(text.trim(), "taskcache-local-layout 1");
    drop(s);
    LocalStorage::open(&dir, LocalOptions::default()).unwrap();

    std::fs::write(dir.join("LAYOUT"), "taskcache-local-layout 2\n").unwrap();
    let err = LocalStorage::open(&dir, LocalOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("layout version 2") && msg.contains("LAYOUT"),
        "{msg}"
    );

    std::fs::write(dir.join("LAYOUT"), "something else").unwrap();
    let msg = LocalStorage::open(&dir, LocalOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not a taskcache layout file"), "{msg}");
}

#[test]
fn default_dir_follows_xdg() {
    let d = LocalStorage::default_dir();
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        assert_eq!(d.unwrap(), Path::new(&xdg).join("taskcache"));
    } else if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        assert_eq!(d.unwrap(), Path::new(&home).join(".cache/taskcache"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_files_from_disk_and_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(&tmp.path().join("c"));
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let big = content(1, (3 << 20) + 17); // streamed path
    let mid = content(2, 70_000); // in-memory path, from a file
    std::fs::write(src.join("big"), &big).unwrap();
    std::fs::write(src.join("mid"), &mid).unwrap();
    let entry = CacheEntry {
        stdout: Some(content(3, 100_000)), // a log blob
        stderr: Some(b"warn".to_vec()),
        exit_code: 3,
        duration_ms: 9,
        outputs: vec![
            CacheOutput::directory("empty"),
            CacheOutput::file("bin/big", src.join("big"), true),
            CacheOutput::file("mid", src.join("mid"), false),
            CacheOutput::bytes("small", b"hi".to_vec(), false),
            CacheOutput::bytes("zero", Vec::new(), false),
            CacheOutput::symlink("link", "bin/big"),
        ],
        log_order: Vec::new(),
    };
    let k = key(1);
    cache
        .store(&task(), &k, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    let blob = blob_of(&big);
    assert!(cache.storage().blob_path(&blob.digest).is_file());
    assert!(
        cache
            .storage()
            .entry_path(&Digest::parse(&k).unwrap())
            .is_file()
    );
    // Nothing is left in tmp/ after a successful store.
    assert_eq!(
        std::fs::read_dir(tmp.path().join("c/tmp")).unwrap().count(),
        0
    );

    let hit = cache.check(&task(), &k, CachePolicy::Normal).await.unwrap();
    assert!(hit.hit);
    assert_eq!(hit.exit_code, Some(3));
    let ws = tmp.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    cache.restore_outputs(&task(), &k, &ws).await.unwrap();
    assert_eq!(std::fs::read(ws.join("bin/big")).unwrap(), big);
    assert_eq!(std::fs::read(ws.join("mid")).unwrap(), mid);
    assert_eq!(std::fs::read(ws.join("small")).unwrap(), b"hi");
    assert_eq!(std::fs::read(ws.join("zero")).unwrap(), b"");
    assert!(ws.join("empty").is_dir());
    assert_eq!(
        std::fs::read_link(ws.join("link")).unwrap(),
        Path::new("bin/big")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| std::fs::metadata(ws.join(p)).unwrap().permissions().mode();
        assert_ne!(mode("bin/big") & 0o111, 0);
        assert_eq!(mode("mid") & 0o111, 0);
    }
    let (out, err) = cache.get_log_bytes(&task(), &k).await.unwrap();
    assert_eq!(out.unwrap(), content(3, 100_000));
    assert_eq!(err.unwrap(), b"warn");
    cache.health_check().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_files_keep_their_order() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(&tmp.path().join("c"));
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut outputs = Vec::new();
    for n in 0..600u64 {
        let data = content(n, 100 + (n % 50) as usize);
        if n % 2 == 0 {
            std::fs::write(src.join(n.to_string()), &data).unwrap();
            outputs.push(CacheOutput::file(
                format!("d{}/f{n}", n % 10),
                src.join(n.to_string()),
                false,
            ));
        } else {
            outputs.push(CacheOutput::bytes(format!("d{}/f{n}", n % 10), data, false));
        }
    }
    let entry = CacheEntry {
        outputs,
        ..CacheEntry::default()
    };
    cache
        .store(&task(), &key(7), &entry, CachePolicy::Normal)
        .await
        .unwrap();
    let ws = tmp.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    cache.restore_outputs(&task(), &key(7), &ws).await.unwrap();
    for n in 0..600u64 {
        let got = std::fs::read(ws.join(format!("d{}/f{n}", n % 10))).unwrap();
        assert_eq!(got, content(n, 100 + (n % 50) as usize), "file {n}");
    }
    let s = cache.storage().stats().await.unwrap();
    assert_eq!((s.entries, s.blobs), (1, 600));
}

#[tokio::test]
async fn identical_outputs_are_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(&tmp.path().join("c"));
    let shared = content(9, 200_000);
    for n in 0..5 {
        store_bytes(
            &cache,
            &key(n),
            &[("shared", shared.clone()), ("own", content(100 + n, 10))],
        )
        .await;
    }
    let s = cache.storage().stats().await.unwrap();
    assert_eq!(s.entries, 5);
    assert_eq!(s.blobs, 6);
    assert!(s.bytes < 2 * 200_000, "{s:?}");
}

#[tokio::test]
async fn hits_and_misses_survive_the_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    {
        let cache = open(&dir);
        store_bytes(&cache, &key(1), &[("a", b"a".to_vec())]).await;
        // The caller decides what a lookup was (the CLI: one per run) and records it.
        cache.storage().record_lookups(1, 2).await;
    }
    // Another "process": a fresh storage on the same directory.
    let other = open(&dir);
    other.storage().record_lookups(1, 0).await;
    let s = other.storage().stats().await.unwrap();
    assert_eq!((s.hits, s.misses), (2, 2), "{s:?}");
    assert_eq!((s.entries, s.blobs), (1, 1));
}

#[tokio::test]
async fn the_counter_log_is_compacted_without_losing_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let cache = open(&dir);
    // Planted history, as many processes would leave it: 150,000 hits, one torn record.
    let mut log = "h\n".repeat(150_000);
    log.push_str("m\nm\nh\0\0\n");
    std::fs::write(dir.join("stats/log"), log).unwrap();
    let s = cache.storage().stats().await.unwrap();
    assert_eq!((s.hits, s.misses), (150_000, 2));
    assert!(std::fs::metadata(dir.join("stats/log")).unwrap().len() < 100);
    let s = cache.storage().stats().await.unwrap();
    assert_eq!((s.hits, s.misses), (150_000, 2));
}

#[tokio::test]
async fn huge_counts_in_the_stats_log_saturate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let cache = open(&dir);
    // Planted counts that would overflow: sums saturate instead of panicking or wrapping.
    let max = u64::MAX;
    std::fs::write(
        dir.join("stats/log"),
        format!("H {max}\nh\nM {max}\nM 1\nm\n={max}\n+{max}\n+5\n"),
    )
    .unwrap();
    let s = cache.storage().stats().await.unwrap();
    assert_eq!((s.hits, s.misses), (max, max), "{s:?}");
    // The size estimate saturates too (a store with a size limit reads it).
    let limited = cache_local::open(
        &dir,
        LocalOptions {
            max_size: Some(1 << 30),
            ..LocalOptions::default()
        },
    )
    .unwrap();
    store_bytes(&limited, &key(1), &[("a", b"a".to_vec())]).await;
    assert!(is_hit(&limited, &key(1)).await);
}

#[tokio::test]
async fn a_corrupt_blob_is_removed_and_repaired_by_the_next_store() {
    // 5,000 bytes goes through the streaming restore; 17 MiB through the kernel copy
    // (`copy_file_range` into the temp file, then hashing what landed).
    for (n, len) in [(5u64, 5000usize), (7, (17 << 20) + 3)] {
        let tmp = tempfile::tempdir().unwrap();
        let cache = open(&tmp.path().join("c"));
        let data = content(n, len);
        store_bytes(&cache, &key(1), &[("f", data.clone())]).await;
        let path = cache.storage().blob_path(&blob_of(&data).digest);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[len - 100] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();

        let ws = tempfile::tempdir().unwrap();
        std::fs::write(ws.path().join("f"), b"old").unwrap();
        let err = cache
            .restore_outputs(&task(), &key(1), ws.path())
            .await
            .unwrap_err();
        assert!(
            matches!(err, BackendError::DigestMismatch { .. }),
            "{len}: {err}"
        );
        assert_eq!(
            std::fs::read(ws.path().join("f")).unwrap(),
            b"old",
            "{len}: nothing corrupt reaches the workspace"
        );
        assert_eq!(
            std::fs::read_dir(ws.path()).unwrap().count(),
            1,
            "{len}: no temporary file is left"
        );
        assert!(!path.exists(), "{len}: the corrupt blob is removed");
        assert!(
            !is_hit(&cache, &key(1)).await,
            "{len}: its entry is now a miss"
        );

        store_bytes(&cache, &key(1), &[("f", data.clone())]).await;
        assert!(is_hit(&cache, &key(1)).await);
        cache
            .restore_outputs(&task(), &key(1), ws.path())
            .await
            .unwrap();
        assert!(std::fs::read(ws.path().join("f")).unwrap() == data, "{len}");
    }
}

#[tokio::test]
async fn a_blob_of_the_wrong_size_is_a_miss_and_is_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(&tmp.path().join("c"));
    let data = content(6, 3000);
    store_bytes(&cache, &key(1), &[("f", data.clone())]).await;
    let path = cache.storage().blob_path(&blob_of(&data).digest);
    std::fs::write(&path, &data[..1000]).unwrap(); // torn
    assert!(!is_hit(&cache, &key(1)).await);
    store_bytes(&cache, &key(1), &[("f", data.clone())]).await;
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert!(is_hit(&cache, &key(1)).await);
}

#[tokio::test]
async fn corrupt_and_oversized_entries_are_misses() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(&tmp.path().join("c"));
    let k = Digest::parse(&key(1)).unwrap();
    let entry = cache.storage().entry_path(&k);
    std::fs::create_dir_all(entry.parent().unwrap()).unwrap();
    std::fs::write(&entry, b"TCAR garbage").unwrap();
    assert!(
        !cache
            .check(&task(), &key(1), CachePolicy::Readonly)
            .await
            .unwrap()
            .hit
    );
    assert!(
        cache.storage().entry_path(&k).exists(),
        "readonly: left alone"
    );
    assert!(!is_hit(&cache, &key(1)).await);
    assert!(
        !cache.storage().entry_path(&k).exists(),
        "removed for the next store"
    );

    // Larger than MAX_ENTRY_BYTES: refused without reading it all.
    let k2 = Digest::parse(&key(2)).unwrap();
    let path = cache.storage().entry_path(&k2);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::File::create(&path)
        .unwrap()
        .set_len(MAX_ENTRY_BYTES as u64 + 10)
        .unwrap();
    let err = cache
        .storage()
        .get_entry(&EntryKey::digest_only(k2))
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::CorruptEntry { .. }), "{err}");
    assert!(!is_hit(&cache, &key(2)).await);
}

#[tokio::test]
async fn gc_evicts_least_recently_used_entries_then_their_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(&tmp.path().join("c"));
    let shared = content(50, 10_000);
    for n in 0..3u64 {
        store_bytes(
            &cache,
            &key(n),
            &[("own", content(n, 100_000)), ("shared", shared.clone())],
        )
        .await;
    }
    let storage = cache.storage();
    // Entry 0 is oldest, then 1, then 2 ...
    for n in 0..3u64 {
        let p = storage.entry_path(&Digest::parse(&key(n)).unwrap());
        set_mtime(&p, Duration::from_secs(1000 - n * 100));
    }
    // ... but a restore of entry 0 makes it the most recently used.
    let ws = tempfile::tempdir().unwrap();
    cache
        .restore_outputs(&task(), &key(0), ws.path())
        .await
        .unwrap();

    // With the default grace, blobs written moments ago stay.
    let before = storage.stats().await.unwrap();
    let r = storage.gc(250_000).await.unwrap();
    assert_eq!(r.entries_removed, 1, "{r:?}");
    assert_eq!(r.blobs_removed, 0, "{r:?}");
    assert_eq!(r.blobs_kept_young, 1, "{r:?}");
    assert_eq!(r.bytes_before, before.bytes);
    assert!(
        !is_hit(&cache, &key(1)).await,
        "entry 1 was least recently used"
    );
    assert!(is_hit(&cache, &key(0)).await && is_hit(&cache, &key(2)).await);

    // Without grace, the evicted entry's own blob goes; the shared one stays.
    let r = storage.gc_with(250_000, no_grace()).await.unwrap();
    assert_eq!((r.entries_removed, r.blobs_removed), (0, 1), "{r:?}");
    assert!(
        !storage
            .blob_path(&blob_of(&content(1, 100_000)).digest)
            .exists()
    );
    assert!(storage.blob_path(&blob_of(&shared).digest).exists());
    let s = storage.stats().await.unwrap();
    assert_eq!((s.entries, s.blobs), (2, 3));
    assert!(s.bytes <= 250_000, "{s:?}");
    assert_eq!(r.bytes_after, s.bytes);

    // Down to nothing.
    let r = storage.gc_with(0, no_grace()).await.unwrap();
    assert_eq!(
        (r.entries_removed, r.blobs_removed, r.bytes_after),
        (2, 3, 0)
    );
    assert_eq!(storage.stats().await.unwrap().bytes, 0);
}

#[tokio::test]
async fn gc_keeps_young_blobs_and_removes_unreferenced_old_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(&tmp.path().join("c"));
    let storage = cache.storage();
    // Blobs with no entry: one as left by a store still in progress, one long orphaned.
    let young = content(1, 1000);
    let old = content(2, 1000);
    storage
        .put_blobs(
            vec![
                BlobSource::Bytes(young.clone().into()),
                BlobSource::Bytes(old.clone().into()),
            ],
            None,
        )
        .await
        .unwrap();
    let old_path = storage.blob_path(&blob_of(&old).digest);
    set_mtime(&old_path, Duration::from_secs(3600));
    let r = storage.gc(u64::MAX).await.unwrap();
    assert_eq!((r.blobs_removed, r.blobs_kept_young), (1, 1), "{r:?}");
    assert!(!old_path.exists());
    assert!(storage.blob_path(&blob_of(&young).digest).exists());

    // A store that reuses an old blob refreshes it, so GC leaves it for its entry.
    set_mtime(
        &storage.blob_path(&blob_of(&young).digest),
        Duration::from_secs(3600),
    );
    store_bytes(&cache, &key(1), &[("f", young.clone())]).await;
    let r = storage.gc(u64::MAX).await.unwrap();
    assert_eq!(r.blobs_removed, 0, "{r:?}");
    assert!(is_hit(&cache, &key(1)).await);
}

#[tokio::test]
async fn stale_temporary_files_are_cleaned_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let cache = open(&dir);
    let stale = dir.join("tmp/wcrashed");
    let fresh = dir.join("tmp/wwriting");
    std::fs::write(&stale, b"partial").unwrap();
    std::fs::write(&fresh, b"partial").unwrap();
    set_mtime(&stale, Duration::from_secs(2 * 3600));
    let r = cache.storage().gc(u64::MAX).await.unwrap();
    assert_eq!(r.temp_files_removed, 1);
    assert!(!stale.exists() && fresh.exists());
    // verify cleans them too, with its own age threshold.
    let v = cache
        .storage()
        .verify_with(GcOptions {
            temp_age: Duration::ZERO,
            ..GcOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(v.temp_files_removed, 1);
    assert!(!fresh.exists());
}

#[tokio::test]
async fn verify_rehashes_blobs_and_checks_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(&tmp.path().join("c"));
    let storage = cache.storage();
    let a = content(1, 4000);
    let b = content(2, 4000);
    store_bytes(&cache, &key(1), &[("a", a.clone())]).await;
    store_bytes(&cache, &key(2), &[("b", b.clone())]).await;
    store_bytes(&cache, &key(3), &[("c", content(3, 10))]).await;
    let v = storage.verify().await.unwrap();
    assert_eq!(
        (
            v.blobs_checked,
            v.entries_checked,
            v.blobs_removed,
            v.entries_removed
        ),
        (3, 3, 0, 0),
        "{v:?}"
    );
    // Flip a byte of a (same size: only re-hashing finds it), garble entry 3.
    let pa = storage.blob_path(&blob_of(&a).digest);
    let mut bytes = std::fs::read(&pa).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&pa, bytes).unwrap();
    let k3 = Digest::parse(&key(3)).unwrap();
    let mut e3 = std::fs::read(storage.entry_path(&k3)).unwrap();
    let last = e3.len() - 1;
    e3[last] ^= 1;
    std::fs::write(storage.entry_path(&k3), e3).unwrap();

    let v = storage.verify().await.unwrap();
    assert_eq!(v.blobs_removed, 1, "{v:?}");
    assert_eq!(v.entries_removed, 1, "{v:?}");
    assert_eq!(
        v.entries_incomplete_removed, 1,
        "entry 1 lost its blob: {v:?}"
    );
    assert!(!pa.exists());
    assert!(is_hit(&cache, &key(2)).await);
    let s = storage.stats().await.unwrap();
    assert_eq!((s.entries, s.blobs), (1, 2), "{s:?}");
}

#[tokio::test]
async fn durable_stores_work_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = cache_local::open(
        tmp.path().join("c"),
        LocalOptions {
            durable: true,
            max_size: None,
        },
    )
    .unwrap();
    let big = content(1, (2 << 20) + 3);
    let src = tmp.path().join("big");
    std::fs::write(&src, &big).unwrap();
    let entry = CacheEntry {
        outputs: vec![
            CacheOutput::file("big", &src, false),
            CacheOutput::bytes("s", b"x".to_vec(), false),
        ],
        ..CacheEntry::default()
    };
    cache
        .store(&task(), &key(1), &entry, CachePolicy::Normal)
        .await
        .unwrap();
    let ws = tempfile::tempdir().unwrap();
    cache
        .restore_outputs(&task(), &key(1), ws.path())
        .await
        .unwrap();
    assert_eq!(std::fs::read(ws.path().join("big")).unwrap(), big);
}

#[tokio::test]
async fn max_size_evicts_after_stores() {
    let tmp = tempfile::tempdir().unwrap();
    let max = 300_000;
    let cache: LocalCache = LocalStorage::open(
        tmp.path().join("c"),
        LocalOptions {
            durable: false,
            max_size: Some(max),
        },
    )
    .unwrap()
    .with_gc_options(no_grace())
    .into_cache();
    for n in 0..10u64 {
        store_bytes(&cache, &key(n), &[("f", content(n, 100_000))]).await;
        let s = cache.storage().stats().await.unwrap();
        assert!(s.bytes <= max, "after store {n}: {s:?}");
    }
    assert!(is_hit(&cache, &key(9)).await, "the newest entry stays");
    assert!(!is_hit(&cache, &key(0)).await, "the oldest went");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_key_all_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        // Separate storages: like separate processes on one directory.
        let cache = open(&dir);
        tasks.push(tokio::spawn(async move {
            for round in 0..5u64 {
                store_bytes(
                    &cache,
                    &key(1),
                    &[("f", content(round, 50_000)), ("w", content(w, 100))],
                )
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let cache = open(&dir);
    assert!(is_hit(&cache, &key(1)).await);
    let ws = tempfile::tempdir().unwrap();
    cache
        .restore_outputs(&task(), &key(1), ws.path())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(ws.path().join("f")).unwrap(),
        content(4, 50_000)
    );
    let v = cache.storage().verify().await.unwrap();
    assert_eq!(v.blobs_removed + v.entries_removed, 0, "{v:?}");
}

/// Versions sharing a directory: an entry in a newer format is a miss for this
/// taskcache, and neither a lookup, `verify` nor `gc` deletes it.
#[tokio::test]
async fn a_newer_format_entry_survives_lookups_verify_and_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(&tmp.path().join("c"));
    store_bytes(&cache, &key(1), &[("f", content(1, 100))]).await;
    let k = Digest::parse(&key(1)).unwrap();
    let path = cache.storage().entry_path(&k);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4] = 200; // a format version from the future
    std::fs::write(&path, &bytes).unwrap();
    assert!(!is_hit(&cache, &key(1)).await, "a newer format is a miss");
    let v = cache.storage().verify().await.unwrap();
    assert_eq!(v.entries_removed, 0, "{v:?}");
    let g = cache.storage().gc_with(0, no_grace()).await.unwrap();
    assert_eq!(g.corrupt_entries_removed, 0, "{g:?}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "left in place, unchanged"
    );
}
