//! Hostile cache directories. Whoever can write the cache directory (restored from an
//! untrusted CI artifact, shared between jobs) can plant symlinks, FIFOs, devices and
//! huge files anywhere in it. The cache directory is opened, never followed: nothing
//! outside it is written, removed or touched, nothing hangs, every read is bounded.
//!
//! Every operation that could hang runs under [`run`], which fails the test after
//! [`PATIENCE`] instead of hanging the suite.

use cache_core::storage::{EntryKey, Storage};
use cache_core::{BlobRef, CacheBackend, CacheEntry, CacheOutput, CachePolicy, Digest, Task};
use cache_local::{GcOptions, LocalCache, LocalOptions, LocalStorage};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const PATIENCE: Duration = Duration::from_secs(20);

/// Runs `f` on its own thread; panics if it takes longer than [`PATIENCE`].
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: still running after {PATIENCE:?} (hung)")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => unreachable!("the thread sends"),
    }
}

/// Runs a future on a runtime of its own, under [`within`].
fn run<T: Send + 'static>(what: &str, fut: impl Future<Output = T> + Send + 'static) -> T {
    within(what, move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(fut)
    })
}

fn task() -> Task {
    Task::new("t", ["true"])
}

fn key(n: u64) -> String {
    cache_core::DigestAlgorithm::Blake3
        .digest(format!("key {n}").as_bytes())
        .to_string()
}

fn digest(k: &str) -> Digest {
    Digest::parse(k).unwrap()
}

fn blob_of(data: &[u8]) -> BlobRef {
    BlobRef::of(cache_core::DigestAlgorithm::Blake3, data)
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

async fn store(cache: &LocalCache, k: &str, data: &[u8]) {
    let entry = CacheEntry {
        stdout: Some(b"log".to_vec()),
        outputs: vec![CacheOutput::bytes("f", data.to_vec(), false)],
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

fn mkfifo(path: &Path) {
    use rustix::fs::{CWD, FileType, Mode, mknodat};
    mknodat(CWD, path, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
}

fn set_old(path: &Path) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(5 * 3600))
        .unwrap();
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

fn gone(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_err()
}

fn is_real_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_dir())
}

/// A cache directory `c` and an `outside` directory (someone's home) in one tempdir.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    drop(LocalStorage::open(&dir, LocalOptions::default()).unwrap());
    (tmp, dir, outside)
}

/// Files in `outside` that look like stale temporary files, a blob and a corrupt entry.
fn precious(outside: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for name in ["wcrashed", "notes.txt", "stats-log-1-2"] {
        let p = outside.join(name);
        std::fs::write(&p, b"precious").unwrap();
        set_old(&p);
        files.push(p);
    }
    files
}

#[test]
fn gc_and_verify_never_follow_a_tmp_symlink() {
    let (_tmp, dir, outside) = setup();
    let files = precious(&outside);
    std::fs::remove_dir(dir.join("tmp")).unwrap();
    symlink(&outside, dir.join("tmp")).unwrap();
    run("gc and verify", async move {
        let cache = open(&dir);
        assert!(
            is_real_dir(&dir.join("tmp")),
            "the planted link is replaced"
        );
        let zero = GcOptions {
            temp_age: Duration::ZERO,
            ..no_grace()
        };
        cache.storage().gc_with(u64::MAX, zero).await.unwrap();
        cache.storage().verify_with(zero).await.unwrap();
        store(&cache, &key(1), b"data").await;
        assert!(is_hit(&cache, &key(1)).await);
    });
    for f in &files {
        assert!(is_real_file(f), "{} must survive", f.display());
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), files.len());
}

#[test]
fn a_tmp_swapped_for_a_symlink_after_open_is_not_followed() {
    let (_tmp, dir, outside) = setup();
    let files = precious(&outside);
    run("gc and verify", async move {
        let cache = open(&dir);
        std::fs::remove_dir(dir.join("tmp")).unwrap();
        symlink(&outside, dir.join("tmp")).unwrap();
        let zero = GcOptions {
            temp_age: Duration::ZERO,
            ..no_grace()
        };
        let g = cache.storage().gc_with(u64::MAX, zero).await;
        let v = cache.storage().verify_with(zero).await;
        // Whatever they say, they must not have removed anything outside.
        if let (Ok(g), Ok(v)) = (g, v) {
            assert_eq!((g.temp_files_removed, v.temp_files_removed), (0, 0));
        }
    });
    for f in &files {
        assert!(is_real_file(f), "{} must survive", f.display());
    }
}

#[test]
fn own_temp_files_only_are_cleaned_up() {
    let (_tmp, dir, outside) = setup();
    let target = outside.join("target");
    std::fs::write(&target, b"precious").unwrap();
    let foreign = dir.join("tmp/notes.txt");
    std::fs::write(&foreign, b"not ours").unwrap();
    set_old(&foreign);
    let link = dir.join("tmp/wlinked");
    symlink(&target, &link).unwrap();
    let ours = dir.join("tmp/wcrashed");
    std::fs::write(&ours, b"partial").unwrap();
    set_old(&ours);
    let r = run("gc", async move {
        let cache = open(&dir);
        cache.storage().gc_with(u64::MAX, no_grace()).await.unwrap()
    });
    assert!(gone(&ours), "a stale temporary file is removed");
    assert!(gone(&link), "a planted link is removed, not followed");
    assert!(is_real_file(&foreign), "a file that is not ours stays");
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    assert_eq!((r.temp_files_removed, r.foreign_removed), (1, 1), "{r:?}");
}

#[test]
fn symlinked_layout_directories_are_replaced_at_open() {
    let (_tmp, dir, outside) = setup();
    for sub in ["blobs", "entries", "tmp", "stats"] {
        std::fs::remove_dir_all(dir.join(sub)).unwrap();
        std::fs::create_dir(outside.join(sub)).unwrap();
        symlink(outside.join(sub), dir.join(sub)).unwrap();
    }
    run("store and lookup", {
        let dir = dir.clone();
        async move {
            let cache = open(&dir);
            store(&cache, &key(1), b"data").await;
            cache.storage().record_lookups(1, 1).await;
            assert!(is_hit(&cache, &key(1)).await);
            cache.storage().gc_with(u64::MAX, no_grace()).await.unwrap();
        }
    });
    for sub in ["blobs", "entries", "tmp", "stats"] {
        assert!(is_real_dir(&dir.join(sub)), "{sub}");
        let written = std::fs::read_dir(outside.join(sub)).unwrap().count();
        assert_eq!(written, 0, "nothing is written through {sub}");
    }
}

#[test]
fn gc_never_follows_a_symlinked_fanout_directory() {
    let (_tmp, dir, outside) = setup();
    let blob = blob_of(b"some blob");
    let hex = blob.digest.hex();
    let fan = &hex[..2];
    let victim_blob = outside.join("blobs").join(&hex);
    let k = digest(&key(9));
    let victim_entry = outside.join("entries").join(k.hex());
    for (area, algo_dir, victim, name) in [
        (
            "blobs",
            dir.join("blobs/blake3"),
            &victim_blob,
            fan.to_string(),
        ),
        (
            "entries",
            dir.join("entries/blake3"),
            &victim_entry,
            k.hex()[..2].to_string(),
        ),
    ] {
        std::fs::create_dir_all(outside.join(area)).unwrap();
        std::fs::write(victim, b"garbage").unwrap();
        set_old(victim);
        std::fs::create_dir_all(&algo_dir).unwrap();
        let _ = std::fs::remove_dir(algo_dir.join(&name));
        symlink(outside.join(area), algo_dir.join(&name)).unwrap();
    }
    let planted = [
        dir.join("blobs/blake3").join(fan),
        dir.join("entries/blake3").join(&k.hex()[..2]),
    ];
    run("gc and verify", {
        let dir = dir.clone();
        async move {
            let cache = open(&dir);
            let r = cache.storage().gc_with(0, no_grace()).await.unwrap();
            assert_eq!(r.foreign_removed, 2, "{r:?}");
            cache.storage().verify().await.unwrap();
        }
    });
    assert_eq!(std::fs::read(&victim_blob).unwrap(), b"garbage");
    assert_eq!(std::fs::read(&victim_entry).unwrap(), b"garbage");
    for p in planted {
        assert!(gone(&p), "the planted link {} is removed", p.display());
    }
}

#[test]
fn the_stats_log_never_writes_through_a_symlink() {
    let (_tmp, dir, outside) = setup();
    let target = outside.join("file");
    std::fs::write(&target, b"precious\n").unwrap();
    let _ = std::fs::remove_file(dir.join("stats/log"));
    symlink(&target, dir.join("stats/log")).unwrap();
    run("record and store", async move {
        let cache = open(&dir);
        cache.storage().record_lookups(2, 1).await;
        store(&cache, &key(1), b"data").await;
        let s = cache.storage().stats().await.unwrap();
        assert!(s.hits <= 2, "{s:?}");
    });
    assert_eq!(std::fs::read(&target).unwrap(), b"precious\n");
}

#[test]
fn stats_never_replaces_a_log_in_a_symlinked_stats_dir() {
    let (_tmp, dir, outside) = setup();
    let foreign = outside.join("log");
    let text = "h\n".repeat(200_000);
    std::fs::write(&foreign, &text).unwrap();
    std::fs::remove_dir_all(dir.join("stats")).unwrap();
    symlink(&outside, dir.join("stats")).unwrap();
    run("stats", async move {
        let cache = open(&dir);
        cache.storage().stats().await.unwrap();
        cache.storage().record_lookups(1, 0).await;
    });
    assert!(std::fs::read(&foreign).unwrap() == text.as_bytes());
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
}

#[test]
fn a_fifo_as_layout_is_a_clear_error() {
    let (_tmp, dir, _outside) = setup();
    let layout = dir.join(cache_local::LAYOUT_FILE);
    std::fs::remove_file(&layout).unwrap();
    mkfifo(&layout);
    let msg = within("open", move || {
        LocalStorage::open(&dir, LocalOptions::default())
            .unwrap_err()
            .to_string()
    });
    assert!(
        msg.contains("LAYOUT") && msg.contains("FIFO") && msg.contains("remove"),
        "{msg}"
    );
}

#[test]
fn a_symlink_as_layout_is_a_clear_error() {
    let (_tmp, dir, outside) = setup();
    let layout = dir.join(cache_local::LAYOUT_FILE);
    let target = outside.join("LAYOUT");
    std::fs::rename(&layout, &target).unwrap();
    symlink(&target, &layout).unwrap();
    let msg = within("open", move || {
        LocalStorage::open(&dir, LocalOptions::default())
            .unwrap_err()
            .to_string()
    });
    assert!(
        msg.contains("LAYOUT") && msg.contains("symbolic link") && msg.contains("remove"),
        "{msg}"
    );
}

#[test]
fn a_layout_to_dev_zero_or_huge_is_read_with_a_bound() {
    let (_tmp, dir, _outside) = setup();
    let layout = dir.join(cache_local::LAYOUT_FILE);
    std::fs::remove_file(&layout).unwrap();
    symlink("/dev/zero", &layout).unwrap();
    let d = dir.clone();
    let msg = within("open", move || {
        LocalStorage::open(&d, LocalOptions::default())
            .unwrap_err()
            .to_string()
    });
    assert!(msg.contains("LAYOUT"), "{msg}");

    // A sparse 64 GiB regular file: refused after reading a few hundred bytes.
    std::fs::remove_file(&layout).unwrap();
    std::fs::File::create(&layout)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let msg = within("open", move || {
        LocalStorage::open(&dir, LocalOptions::default())
            .unwrap_err()
            .to_string()
    });
    assert!(msg.contains("not a taskcache layout file"), "{msg}");
}

#[test]
fn a_fifo_as_stats_log_does_not_hang() {
    let (_tmp, dir, _outside) = setup();
    let log = dir.join("stats/log");
    let _ = std::fs::remove_file(&log);
    mkfifo(&log);
    let d = dir.clone();
    run("stats and record", async move {
        let cache = open(&d);
        let s = cache.storage().stats().await.unwrap();
        assert_eq!((s.hits, s.misses), (0, 0));
        cache.storage().record_lookups(1, 0).await;
        let s = cache.storage().stats().await.unwrap();
        assert_eq!((s.hits, s.misses), (1, 0), "the log is recreated");
    });
    assert!(is_real_file(&log));
}

#[test]
fn a_stats_log_to_dev_zero_or_huge_is_read_with_a_bound() {
    let (_tmp, dir, _outside) = setup();
    let log = dir.join("stats/log");
    let _ = std::fs::remove_file(&log);
    symlink("/dev/zero", &log).unwrap();
    let d = dir.clone();
    run("stats", async move {
        let cache = open(&d);
        let s = cache.storage().stats().await.unwrap();
        assert_eq!((s.hits, s.misses), (0, 0));
    });
    // A sparse 64 GiB regular log: read up to a bound, then compacted.
    std::fs::remove_file(&log).unwrap();
    std::fs::File::create(&log)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let d = dir.clone();
    run("stats", async move {
        let cache = open(&d);
        cache.storage().stats().await.unwrap();
        cache.storage().record_lookups(1, 0).await;
        let s = cache.storage().stats().await.unwrap();
        assert_eq!(s.hits, 1, "{s:?}");
    });
    assert!(std::fs::metadata(&log).unwrap().len() < 1 << 20);
}

#[test]
fn a_fifo_as_entry_file_is_a_miss_and_removed() {
    let (_tmp, dir, _outside) = setup();
    run("lookup", async move {
        let cache = open(&dir);
        let k = digest(&key(1));
        let path = cache.storage().entry_path(&k);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        mkfifo(&path);
        let readonly = cache
            .check(&task(), &key(1), CachePolicy::Readonly)
            .await
            .unwrap();
        assert!(!readonly.hit);
        assert!(!gone(&path), "readonly: left alone");
        assert!(!is_hit(&cache, &key(1)).await);
        assert!(gone(&path), "a FIFO entry is corrupt: removed");
        // And a restore-refresh or GC of one planted later does not hang either.
        mkfifo(&path);
        cache.storage().gc_with(0, no_grace()).await.unwrap();
        assert!(gone(&path), "gc removes a planted FIFO");
        mkfifo(&path);
        cache
            .storage()
            .touch(&EntryKey::digest_only(k))
            .await
            .unwrap();
        cache.storage().verify().await.unwrap();
        assert!(gone(&path), "verify removes a planted FIFO");
    });
}

#[test]
fn an_entry_symlink_is_a_miss_and_is_removed() {
    let (_tmp, dir, outside) = setup();
    let moved = outside.join("entry");
    let target = moved.clone();
    run("lookup", async move {
        let cache = open(&dir);
        store(&cache, &key(1), b"data").await;
        let path = cache.storage().entry_path(&digest(&key(1)));
        std::fs::rename(&path, &target).unwrap();
        symlink(&target, &path).unwrap();
        set_old(&target);
        let before = mtime(&target);
        cache
            .storage()
            .touch(&EntryKey::digest_only(digest(&key(1))))
            .await
            .unwrap();
        assert_eq!(
            mtime(&target),
            before,
            "recency is never refreshed through a link"
        );
        assert!(!is_hit(&cache, &key(1)).await, "a link is not an entry");
        assert!(gone(&path), "the link is removed");
        store(&cache, &key(1), b"data").await;
        assert!(is_real_file(&path));
        assert!(is_hit(&cache, &key(1)).await);
    });
    assert!(is_real_file(&moved));
}

#[test]
fn a_symlink_at_a_blob_path_is_repaired_by_the_next_store() {
    let (_tmp, dir, outside) = setup();
    let target = outside.join("blob");
    let t = target.clone();
    run("store", async move {
        let cache = open(&dir);
        let data = b"some output".repeat(100);
        store(&cache, &key(1), &data).await;
        let blob = blob_of(&data);
        let path = cache.storage().blob_path(&blob.digest);
        std::fs::write(&t, &data).unwrap();
        set_old(&t);
        let before = mtime(&t);
        std::fs::remove_file(&path).unwrap();
        symlink(&t, &path).unwrap();

        let missing = cache
            .storage()
            .find_missing_blobs(vec![blob])
            .await
            .unwrap();
        assert_eq!(missing, vec![blob], "a link is not a stored blob");
        assert!(!is_hit(&cache, &key(1)).await);
        store(&cache, &key(1), &data).await;
        assert_eq!(mtime(&t), before, "the link's target is never touched");
        assert!(is_real_file(&path), "the store replaced the link");
        assert!(is_hit(&cache, &key(1)).await);

        // A FIFO at the blob path is replaced the same way, without hanging.
        std::fs::remove_file(&path).unwrap();
        mkfifo(&path);
        assert!(!is_hit(&cache, &key(1)).await);
        store(&cache, &key(1), &data).await;
        assert!(is_real_file(&path));
        assert!(is_hit(&cache, &key(1)).await);
    });
    assert!(is_real_file(&target));
}

#[test]
fn gc_and_verify_remove_planted_links_and_special_files() {
    let (_tmp, dir, outside) = setup();
    let target = outside.join("target");
    std::fs::write(&target, b"precious").unwrap();
    set_old(&target);
    let t = target.clone();
    run("gc and verify", async move {
        let cache = open(&dir);
        let s = cache.storage();
        store(&cache, &key(1), b"kept").await;
        let plant = || {
            let link = s.blob_path(&blob_of(b"x").digest);
            let fifo = s.blob_path(&blob_of(b"y").digest);
            let entry = s.entry_path(&digest(&key(2)));
            for p in [&link, &fifo, &entry] {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            }
            symlink(&t, &link).unwrap();
            mkfifo(&fifo);
            symlink(&t, &entry).unwrap();
            [link, fifo, entry]
        };
        let planted = plant();
        let r = s.gc_with(u64::MAX, no_grace()).await.unwrap();
        assert_eq!(r.foreign_removed, 3, "{r:?}");
        for p in &planted {
            assert!(gone(p), "gc removes {}", p.display());
        }
        let planted = plant();
        let r = s.verify().await.unwrap();
        assert_eq!(r.foreign_removed, 3, "{r:?}");
        for p in &planted {
            assert!(gone(p), "verify removes {}", p.display());
        }
        assert!(is_hit(&cache, &key(1)).await);
    });
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
}

/// An entry naming a terabyte blob whose file is all holes (no disk used): the restore
/// refuses it as damaged without reading it (reading would take hours), a read-only
/// reader leaves it in place, a writer removes it, and `verify` removes one unread.
#[test]
fn a_sparse_terabyte_blob_is_refused_unread() {
    const TIB: u64 = 1 << 40;
    let (_tmp, dir, _outside) = setup();
    run("sparse blob", async move {
        let cache = open(&dir);
        let claimed = BlobRef {
            digest: cache_core::DigestAlgorithm::Blake3.digest(b"a terabyte of something"),
            size: TIB,
        };
        let plant = |path: &Path| {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::File::create(path).unwrap().set_len(TIB).unwrap();
        };
        let k = key(7);
        let record = cache_core::storage::ActionRecord {
            key: digest(&k),
            exit_code: 0,
            duration_ms: 1,
            stdout: cache_core::storage::LogRecord::Absent,
            stderr: cache_core::storage::LogRecord::Absent,
            outputs: vec![cache_core::storage::OutputRecord::File {
                path: "f".into(),
                blob: claimed,
                executable: false,
            }],
            log_order: Vec::new(),
            absolute_symlinks: Vec::new(),
            signature: None,
        };
        cache
            .storage()
            .put_entry(&EntryKey::new(digest(&k), &task()), record.into())
            .await
            .unwrap();
        let blob_path = cache.storage().blob_path(&claimed.digest);
        plant(&blob_path);

        let ws = tempfile::tempdir().unwrap();
        for policy in [CachePolicy::Readonly, CachePolicy::Normal] {
            let hit = cache
                .lookup(&task(), &digest(&k), policy)
                .await
                .unwrap()
                .expect("the blob file has the claimed length: a hit");
            let e = hit.restore(ws.path()).await.unwrap_err();
            assert_eq!(e.kind(), "damaged_blob", "{policy:?}: {e}");
            assert!(e.is_cache_fault());
            assert!(
                std::fs::read_dir(ws.path()).unwrap().next().is_none(),
                "nothing written"
            );
            assert_eq!(
                is_real_file(&blob_path),
                policy == CachePolicy::Readonly,
                "{policy:?}: a read-only reader keeps it, a writer removes it"
            );
        }
        assert!(!is_hit(&cache, &k).await);

        plant(&blob_path);
        let report = cache.storage().verify_with(no_grace()).await.unwrap();
        assert_eq!(report.blobs_removed, 1, "{report:?}");
        assert!(gone(&blob_path));
    });
}
