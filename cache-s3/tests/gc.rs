//! `S3Storage::gc`: eviction by last use (the `used/` markers `touch` writes), the
//! sweep of unreferenced packs and blobs with a grace period, gc beside a runner that
//! stores and hits, and a listing cut short. On `InMemory` and on moto.

mod common;

use async_trait::async_trait;
use cache_core::{Cache, CacheBackend, CacheEntry, CacheOutput, CachePolicy, Digest};
use cache_s3::object_store::memory::InMemory;
use cache_s3::object_store::path::Path as ObjectPath;
use cache_s3::object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use cache_s3::{GcOptions, GcReport, ListLimits, S3Options, S3Storage, Stopped};
use cache_testkit::fixtures::{fresh_key, task};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// Where a test's storages live: every call gives a new storage on the same prefix
/// (another runner).
type Open = Arc<dyn Fn() -> S3Storage + Send + Sync>;

fn memory(options: S3Options) -> Open {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    Arc::new(move || S3Storage::from_store(Arc::clone(&store), "ci", "memory", options.clone()))
}

fn moto(test: &str, options: S3Options) -> Option<Open> {
    let (endpoint, bucket) = common::s3_peer(test)?;
    let prefix = common::unique_prefix(test);
    let url = url::Url::parse(&format!("s3://{bucket}/{prefix}")).unwrap();
    Some(Arc::new(move || {
        S3Storage::open_with_env(&url, options.clone(), &common::s3_env(&endpoint)).unwrap()
    }))
}

fn cache(storage: S3Storage) -> Cache<S3Storage> {
    Cache::new(storage, cache_testkit::spawn_blocking)
}

/// Ten small files (one pack) of `small` and one 1.5 MiB file (a blob) of `large`.
fn outputs(dir: &Path, small: u64, large: u64) -> Vec<CacheOutput> {
    let mut out: Vec<CacheOutput> = (0..10)
        .map(|i| {
            let path = dir.join(format!("s{small}-{i}.txt"));
            std::fs::write(&path, format!("small file {i} of set {small}\n").repeat(50)).unwrap();
            CacheOutput::file(format!("t/{i}.txt"), path, false)
        })
        .collect();
    let path = dir.join(format!("l{large}.bin"));
    let line = format!("large file {large}\n");
    let bytes: Vec<u8> = line.bytes().cycle().take(1_500_000).collect();
    std::fs::write(&path, bytes).unwrap();
    out.push(CacheOutput::file("big.bin", path, false));
    out
}

async fn store(storage: S3Storage, key: &str, outputs: Vec<CacheOutput>) {
    let entry = CacheEntry {
        stdout: Some(b"built\n".to_vec()),
        outputs,
        ..CacheEntry::default()
    };
    cache(storage)
        .store(&task(), key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
}

/// Looks `key` up and restores it (which touches it); whether it hit.
async fn hit(storage: S3Storage, key: &str) -> bool {
    let ws = tempfile::tempdir().unwrap();
    let found = cache(storage)
        .lookup(&task(), &Digest::parse(key).unwrap(), CachePolicy::Normal)
        .await
        .unwrap();
    match found {
        Some(h) => {
            h.restore(ws.path()).await.unwrap();
            true
        }
        None => false,
    }
}

async fn names(storage: &S3Storage, kind: &str) -> Vec<String> {
    let prefix = format!("{}/{kind}", storage.prefix());
    let listed: Vec<_> = storage
        .store()
        .list(Some(&prefix.as_str().into()))
        .try_collect()
        .await
        .unwrap();
    listed.into_iter().map(|m| m.location.to_string()).collect()
}

async fn gc(storage: &S3Storage, unused: Duration, grace: Duration) -> GcReport {
    let options =
        GcOptions::new(unused, ListLimits::new(Duration::from_secs(60))).with_grace(grace);
    storage.gc(options).await.unwrap()
}

/// A and C are used after a pause, B and D are not. B shares its pack with C.
async fn recently_used_entries_survive(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c, d] = [fresh_key(), fresh_key(), fresh_key(), fresh_key()];
    store(open(), &a, outputs(dir.path(), 1, 1)).await;
    store(open(), &b, outputs(dir.path(), 2, 2)).await;
    store(open(), &c, outputs(dir.path(), 2, 3)).await;
    store(open(), &d, outputs(dir.path(), 4, 4)).await;
    assert_eq!(names(&open(), "packs").await.len(), 3);
    assert_eq!(names(&open(), "blobs").await.len(), 4);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(hit(open(), &a).await);
    assert!(hit(open(), &c).await);
    let used = names(&open(), "used").await;
    let claims = used
        .iter()
        .filter(|n| n.contains("/used/packs/") || n.contains("/used/blobs/"))
        .count();
    assert_eq!(claims, 1, "C's store claimed B's pack: {used:?}");
    assert_eq!(used.len() - claims, 2, "a hit writes a marker: {used:?}");

    let report = gc(&open(), Duration::from_secs(2), Duration::ZERO).await;
    assert_eq!(report.stopped, None);
    assert!(report.swept);
    assert_eq!(report.entries_removed_unused, 2, "{report:?}");
    assert_eq!(report.entries_kept, 2, "{report:?}");
    assert_eq!(
        report.packs_removed, 1,
        "D's pack; B's is C's too: {report:?}"
    );
    assert_eq!(
        report.blobs_removed, 2,
        "B's and D's large files: {report:?}"
    );
    assert!(report.bytes_after < report.bytes_before, "{report:?}");
    assert_eq!(names(&open(), "packs").await.len(), 2);
    assert_eq!(names(&open(), "blobs").await.len(), 2);
    assert!(hit(open(), &a).await);
    assert!(hit(open(), &c).await);
    assert!(!hit(open(), &b).await);
    assert!(!hit(open(), &d).await);

    // Nothing more to do: a second gc removes nothing.
    let again = gc(&open(), Duration::from_secs(2), Duration::ZERO).await;
    assert_eq!(again.entries_removed(), 0, "{again:?}");
    assert_eq!(again.packs_removed + again.blobs_removed, 0, "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recently_used_entries_survive_on_memory() {
    recently_used_entries_survive(memory(every_second())).await;
}

/// Hits are recorded when the last known use is a second old (a day by default).
fn every_second() -> S3Options {
    S3Options::default().with_touch_interval(Duration::from_secs(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recently_used_entries_survive_on_moto() {
    if let Some(open) = moto("gc_used", every_second()) {
        recently_used_entries_survive(open).await;
    }
}

/// Packs and blobs no entry names (an entry removed, or a store whose entry is not
/// published yet) stay while they are younger than the grace.
async fn young_objects_stay(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let key = fresh_key();
    store(open(), &key, outputs(dir.path(), 7, 7)).await;
    let storage = open();
    storage
        .store()
        .delete(&storage.entry_path(&Digest::parse(&key).unwrap()))
        .await
        .unwrap();
    let kept = gc(
        &storage,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    )
    .await;
    assert!(kept.swept);
    assert_eq!(kept.packs_removed + kept.blobs_removed, 0, "{kept:?}");
    assert_eq!(kept.kept_young, 2, "{kept:?}");
    assert_eq!(names(&storage, "packs").await.len(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let swept = gc(&storage, Duration::from_secs(3600), Duration::ZERO).await;
    assert_eq!(
        (swept.packs_removed, swept.blobs_removed),
        (1, 1),
        "{swept:?}"
    );
    assert!(names(&storage, "packs").await.is_empty());
    assert!(names(&storage, "blobs").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn young_objects_stay_on_memory() {
    young_objects_stay(memory(S3Options::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn young_objects_stay_on_moto() {
    if let Some(open) = moto("gc_young", S3Options::default()) {
        young_objects_stay(open).await;
    }
}

/// gc runs again and again while another runner stores and hits three keys: every
/// lookup after the first store of a key hits; two old entries go.
async fn gc_beside_a_runner_loses_no_entry_in_use(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let old = [fresh_key(), fresh_key()];
    for (i, k) in (10..).zip(&old) {
        store(open(), k, outputs(dir.path(), i, i)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let keys = [fresh_key(), fresh_key(), fresh_key()];
    let done = std::sync::atomic::AtomicBool::new(false);
    let runner = async {
        let storage = open();
        for round in 0..6 {
            for (i, k) in (20..).zip(&keys) {
                if hit(storage.clone(), k).await {
                    continue;
                }
                assert_eq!(round, 0, "{k} was lost in round {round}");
                store(storage.clone(), k, outputs(dir.path(), i, i)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let collector = async {
        let storage = open();
        let mut removed = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let r = gc(&storage, Duration::from_secs(3), Duration::from_secs(1)).await;
            assert_eq!(r.stopped, None);
            removed += r.entries_removed();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        removed
    };
    let ((), removed) = tokio::join!(runner, collector);
    assert_eq!(removed, 2);
    for k in &keys {
        assert!(hit(open(), k).await, "{k} is in use");
    }
    for k in &old {
        assert!(!hit(open(), k).await, "{k} was unused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_beside_a_runner_on_memory() {
    let options = S3Options::default().with_touch_interval(Duration::ZERO);
    gc_beside_a_runner_loses_no_entry_in_use(memory(options)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_beside_a_runner_on_moto() {
    let options = S3Options::default().with_touch_interval(Duration::ZERO);
    if let Some(open) = moto("gc_runner", options) {
        gc_beside_a_runner_loses_no_entry_in_use(open).await;
    }
}

/// A touch within the interval of the entry's store or of its marker sends no PUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_writes_a_marker_at_most_once_per_interval() {
    let open = memory(every_second());
    let dir = tempfile::tempdir().unwrap();
    let key = fresh_key();
    store(open(), &key, outputs(dir.path(), 1, 1)).await;
    let storage = open();
    let marker = storage.marker_path(&Digest::parse(&key).unwrap());
    assert!(hit(open(), &key).await);
    assert!(
        storage.store().head(&marker).await.is_err(),
        "a hit right after the store is that use"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let runner = open();
    assert!(hit(runner.clone(), &key).await);
    let first = storage.store().head(&marker).await.unwrap();
    assert!(hit(runner.clone(), &key).await);
    assert!(hit(open(), &key).await);
    let second = storage.store().head(&marker).await.unwrap();
    assert_eq!(first.e_tag, second.e_tag, "rewritten within the interval");
}

/// A listing cut short (the page limit, on a server that pages) deletes nothing from
/// the sweep; cut before the entries are known, nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_listing_sweeps_nothing() {
    let Some(open) = moto("gc_cut", S3Options::default()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = fresh_key();
    store(open(), &key, outputs(dir.path(), 3, 3)).await;
    let storage = open();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let limits = |pages| ListLimits::new(Duration::from_secs(60)).with_max_pages(pages);
    // One page: used/ is listed, entries/ is not.
    let none = storage
        .gc(GcOptions::new(Duration::ZERO, limits(1)).with_grace(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(none.stopped, Some(Stopped::MaxPages(1)), "{none:?}");
    assert_eq!(none.entries_removed(), 0);
    assert!(!none.swept);
    assert_eq!(names(&storage, "entries").await.len(), 1);
    // Two pages: the unused entry goes, but packs/ cannot be listed: no sweep.
    let partial = storage
        .gc(GcOptions::new(Duration::ZERO, limits(2)).with_grace(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(partial.stopped, Some(Stopped::MaxPages(2)), "{partial:?}");
    assert_eq!(partial.entries_removed_unused, 1, "{partial:?}");
    assert!(!partial.swept);
    assert_eq!(partial.packs_removed + partial.blobs_removed, 0);
    assert_eq!(names(&storage, "packs").await.len(), 1);
    assert_eq!(names(&storage, "blobs").await.len(), 1);
    // Whole: swept.
    let whole = gc(&storage, Duration::ZERO, Duration::ZERO).await;
    assert!(whole.swept, "{whole:?}");
    assert_eq!(
        (whole.packs_removed, whole.blobs_removed),
        (1, 1),
        "{whole:?}"
    );
}

/// `max_size` evicts least recently used entries beyond `unused_for`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_size_evicts_the_least_recently_used() {
    let open = memory(S3Options::default());
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = [fresh_key(), fresh_key()];
    store(open(), &a, outputs(dir.path(), 1, 1)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    store(open(), &b, outputs(dir.path(), 2, 2)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let options = GcOptions::new(
        Duration::from_secs(3600),
        ListLimits::new(Duration::from_secs(60)),
    )
    .with_grace(Duration::ZERO)
    .with_max_size(2_000_000);
    let report = open().gc(options).await.unwrap();
    assert_eq!(report.entries_removed_for_size, 1, "{report:?}");
    assert_eq!(report.entries_removed_unused, 0, "{report:?}");
    assert_eq!(
        (report.packs_removed, report.blobs_removed),
        (1, 1),
        "{report:?}"
    );
    assert!(report.bytes_after <= 2_000_000, "{report:?}");
    assert!(!hit(open(), &a).await, "the older one went");
    assert!(hit(open(), &b).await);
}

/// A corrupt entry is kept and counted and references nothing; an entry of a newer
/// format (whose references cannot be read) keeps the sweep from running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_entries_are_counted_and_newer_ones_stop_the_sweep() {
    let open = memory(S3Options::default());
    let dir = tempfile::tempdir().unwrap();
    let gone = fresh_key();
    store(open(), &gone, outputs(dir.path(), 5, 5)).await;
    let storage = open();
    let digest = |k: &str| Digest::parse(k).unwrap();
    storage
        .store()
        .delete(&storage.entry_path(&digest(&gone)))
        .await
        .unwrap();
    let corrupt = fresh_key();
    storage
        .write_raw_entry(&digest(&corrupt), b"not an entry".to_vec())
        .await
        .unwrap();
    let newer = fresh_key();
    let mut wrapper = b"TCPE".to_vec();
    wrapper.extend_from_slice(&[9, 0, 0, 0]);
    wrapper.extend_from_slice(&[0; 40]);
    storage
        .write_raw_entry(&digest(&newer), wrapper)
        .await
        .unwrap();
    let stopped = gc(&storage, Duration::from_secs(3600), Duration::ZERO).await;
    assert_eq!(stopped.entries_kept, 2, "{stopped:?}");
    assert_eq!(stopped.entries_unreadable, 1, "{stopped:?}");
    assert_eq!(stopped.entries_newer, 1, "{stopped:?}");
    assert!(!stopped.swept, "{stopped:?}");
    assert_eq!(stopped.packs_removed + stopped.blobs_removed, 0);
    assert_eq!(names(&storage, "packs").await.len(), 1);
    storage
        .store()
        .delete(&storage.entry_path(&digest(&newer)))
        .await
        .unwrap();
    let swept = gc(&storage, Duration::from_secs(3600), Duration::ZERO).await;
    assert!(swept.swept, "{swept:?}");
    assert_eq!(
        (swept.packs_removed, swept.blobs_removed),
        (1, 1),
        "{swept:?}"
    );
    assert_eq!(swept.entries_unreadable, 1, "{swept:?}");
}

/// A store that holds gc's second listing of `entries/` (its step 5) once it has read
/// it, until told to go on: gc then sweeps with what it saw before the pause.
#[derive(Debug)]
struct PausingStore {
    inner: Arc<dyn ObjectStore>,
    entry_lists: AtomicUsize,
    paused: Arc<Notify>,
    resume: Arc<Notify>,
}

impl std::fmt::Display for PausingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pausing({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for PausingStore {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> cache_s3::object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> cache_s3::object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> cache_s3::object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, cache_s3::object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, cache_s3::object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, cache_s3::object_store::Result<ObjectMeta>> {
        let listing = self.inner.list(prefix);
        let of_entries = prefix.is_some_and(|p| p.as_ref().ends_with("/entries"));
        if !of_entries || self.entry_lists.fetch_add(1, Ordering::SeqCst) != 1 {
            return listing;
        }
        let (paused, resume) = (Arc::clone(&self.paused), Arc::clone(&self.resume));
        futures::stream::once(async move {
            let read: Vec<_> = listing.collect().await;
            paused.notify_one();
            resume.notified().await;
            futures::stream::iter(read)
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> cache_s3::object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> cache_s3::object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// The race gc used to lose: an entry is evicted, so its pack and blob are named by no
/// entry and older than the grace; gc lists the entries a last time (step 5); then a
/// runner stores an entry with the same files, finds the pack and the blob there and
/// sends nothing, and publishes its entry; then gc sweeps. The new entry must keep its
/// pack and blob: a store that reuses them says so (a marker gc reads before it
/// deletes), so the new entry hits. Once it is the only entry, a gc leaves no marker
/// but its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_and_blob_reused_while_gc_sweeps_them_are_kept() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let runner = {
        let inner = Arc::clone(&inner);
        move || S3Storage::from_store(Arc::clone(&inner), "ci", "memory", S3Options::default())
    };
    let dir = tempfile::tempdir().unwrap();
    let old = fresh_key();
    store(runner(), &old, outputs(dir.path(), 1, 1)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let pausing = Arc::new(PausingStore {
        inner: Arc::clone(&inner),
        entry_lists: AtomicUsize::new(0),
        paused: Arc::new(Notify::new()),
        resume: Arc::new(Notify::new()),
    });
    let collector = S3Storage::from_store(pausing.clone(), "ci", "memory", S3Options::default());
    let second = Duration::from_secs(1);
    let new = fresh_key();
    let storing = async {
        pausing.paused.notified().await;
        store(runner(), &new, outputs(dir.path(), 1, 1)).await;
        pausing.resume.notify_one();
    };
    let (report, ()) = tokio::join!(gc(&collector, second, second), storing);
    assert_eq!(report.entries_removed_unused, 1, "{report:?}");
    assert!(report.swept, "{report:?}");
    assert!(
        hit(runner(), &new).await,
        "the entry stored while gc swept lost its pack or blob: {report:?}"
    );

    // A claim stays while its pack or blob does, and goes with it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let again = gc(&runner(), Duration::from_secs(3600), Duration::ZERO).await;
    assert_eq!(again.packs_removed + again.blobs_removed, 0, "{again:?}");
    assert_eq!(names(&runner(), "used").await.len(), 2, "{again:?}");
    assert!(hit(runner(), &new).await);
    let all = gc(&runner(), Duration::ZERO, Duration::ZERO).await;
    assert_eq!(
        (all.packs_removed, all.blobs_removed, all.markers_removed),
        (1, 1, 2),
        "{all:?}"
    );
    for kind in ["entries", "packs", "blobs", "used"] {
        assert!(names(&runner(), kind).await.is_empty(), "{kind}: {all:?}");
    }
}
