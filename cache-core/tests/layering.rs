//! The open API, used as a crate outside cache-core would: a storage and a backend of
//! its own, a layer of its own on the hits, and the hits' sources behind `Tiered`.

use async_trait::async_trait;
use cache_core::layer::{HitCall, HitFuture, HitLayer, HitOp};
use cache_core::storage::{ActionRecord, BlobSource, EntryKey, Storage, StoredEntry};
use cache_core::{
    BackendError, BackendResult, BlobRef, Cache, CacheBackend, CacheEntry, CacheOutput,
    CachePolicy, Deadline, Deadlines, Digest, DigestAlgorithm, Hit, HitTier, Instrumented, Sleep,
    Task, TaskOutput, Tiered,
};
use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A storage written outside the crate: entries and blobs in memory.
/// Clones share the contents.
#[derive(Clone, Default)]
struct MemStore {
    name: &'static str,
    entries: Arc<Mutex<HashMap<Digest, Arc<ActionRecord>>>>,
    blobs: Arc<Mutex<HashMap<BlobRef, Arc<[u8]>>>>,
}

impl MemStore {
    fn named(name: &'static str) -> Self {
        MemStore {
            name,
            ..MemStore::default()
        }
    }

    fn forget_blobs(&self) {
        self.blobs.lock().unwrap().clear();
    }
}

#[async_trait]
impl Storage for MemStore {
    fn name(&self) -> &'static str {
        self.name
    }
    async fn get_entry(&self, key: &EntryKey) -> BackendResult<Option<StoredEntry>> {
        let found = self.entries.lock().unwrap().get(&key.digest).cloned();
        Ok(found.map(|r| StoredEntry::new((*r).clone())))
    }
    async fn put_entry(&self, key: &EntryKey, record: Arc<ActionRecord>) -> BackendResult<()> {
        self.entries.lock().unwrap().insert(key.digest, record);
        Ok(())
    }
    async fn remove_entry(&self, key: &EntryKey) -> BackendResult<()> {
        self.entries.lock().unwrap().remove(&key.digest);
        Ok(())
    }
    async fn find_missing_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>> {
        let have = self.blobs.lock().unwrap();
        Ok(blobs
            .into_iter()
            .filter(|b| !have.contains_key(b))
            .collect())
    }
    async fn put_blobs(
        &self,
        sources: Vec<BlobSource>,
        algorithm: Option<DigestAlgorithm>,
    ) -> BackendResult<Vec<BlobRef>> {
        let algorithm = algorithm.unwrap_or(DigestAlgorithm::Blake3);
        let mut refs = Vec::new();
        for source in sources {
            // Small test blobs: read whole (a real storage streams them).
            let mut bytes = Vec::new();
            source
                .into_reader()?
                .read_to_end(&mut bytes)
                .map_err(BackendError::Io)?;
            let blob = BlobRef::of(algorithm, &bytes);
            self.blobs.lock().unwrap().insert(blob, Arc::from(bytes));
            refs.push(blob);
        }
        Ok(refs)
    }
    async fn open_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<Option<BlobSource>>> {
        let have = self.blobs.lock().unwrap();
        Ok(blobs
            .iter()
            .map(|b| have.get(b).map(|d| BlobSource::Bytes(Arc::clone(d))))
            .collect())
    }
    async fn remove_blob(&self, blob: &BlobRef) -> BackendResult<()> {
        self.blobs.lock().unwrap().remove(blob);
        Ok(())
    }
    async fn touch(&self, _: &EntryKey) -> BackendResult<()> {
        Ok(())
    }
    async fn health_check(&self) -> BackendResult<()> {
        Ok(())
    }
}

/// A `CacheBackend` written outside the crate: its own storage through `Cache<S>`, and
/// a policy of its own (it never stores failures).
struct OwnBackend {
    cache: Cache<MemStore>,
}

#[async_trait]
impl CacheBackend for OwnBackend {
    async fn lookup(
        &self,
        task: &Task,
        key: &Digest,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        self.cache.lookup(task, key, policy).await
    }
    async fn store(
        &self,
        task: &Task,
        digest: &str,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<()> {
        if entry.exit_code != 0 {
            return Ok(());
        }
        self.cache.store(task, digest, entry, policy).await
    }
    fn name(&self) -> &'static str {
        "own"
    }
    async fn health_check(&self) -> BackendResult<()> {
        self.cache.health_check().await
    }
}

/// A layer written outside the crate: counts each hit call and the faults it sees.
#[derive(Default)]
struct Counting {
    calls: Mutex<HashMap<HitOp, u64>>,
    bytes: AtomicU64,
    errors: Mutex<Vec<&'static str>>,
    reported: AtomicU64,
}

impl HitLayer for Counting {
    fn wrap<'a>(&'a self, _: &'a Hit, call: HitCall, inner: HitFuture<'a>) -> HitFuture<'a> {
        Box::pin(async move {
            *self.calls.lock().unwrap().entry(call.op).or_default() += 1;
            let served = inner.await;
            match &served {
                Ok(s) => {
                    self.bytes.fetch_add(s.bytes, Ordering::Relaxed);
                }
                Err(e) => self.errors.lock().unwrap().push(e.kind()),
            }
            served
        })
    }

    fn fault(&self, _: &Hit, _: &BackendError) {
        self.reported.fetch_add(1, Ordering::Relaxed);
    }
}

fn spawn(job: cache_core::Job) {
    tokio::task::spawn_blocking(job);
}

fn cache(store: &MemStore) -> Cache<MemStore> {
    Cache::new(store.clone(), spawn)
}

fn sleep() -> Sleep {
    Arc::new(|d| Box::pin(tokio::time::sleep(d)))
}

fn task() -> Task {
    let mut task = Task::new("layering", ["true"]);
    task.outputs.push(TaskOutput {
        path: "out.bin".into(),
        kind: cache_core::OutputType::Cas,
    });
    task
}

const FILE: &[u8] = &[7; 3000];
const STDOUT: &[u8] = b"hello from the cached run\n";

/// Stores one entry (a 3000-byte file, a 26-byte stdout, 1234 ms) under a fresh key.
async fn stored(backend: &dyn CacheBackend) -> Digest {
    let key = DigestAlgorithm::Blake3.digest(format!("{:?}", std::time::Instant::now()).as_bytes());
    let entry = CacheEntry {
        stdout: Some(STDOUT.to_vec()),
        duration_ms: 1234,
        outputs: vec![CacheOutput::bytes("out.bin", FILE, false)],
        ..CacheEntry::default()
    };
    backend
        .store(&task(), &key.to_string(), &entry, CachePolicy::Normal)
        .await
        .unwrap();
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_layer_counts_restores_and_log_reads_and_sees_faults() {
    let store = MemStore::named("mem");
    let backend = cache(&store);
    let key = stored(&backend).await;
    let layer = Arc::new(Counting::default());
    let hit = backend
        .lookup(&task(), &key, CachePolicy::Normal)
        .await
        .unwrap()
        .unwrap()
        .layered(Arc::clone(&layer) as Arc<dyn HitLayer>);

    let (stdout, _) = hit.logs().await.unwrap();
    assert_eq!(stdout.as_deref(), Some(STDOUT));
    let ws = tempfile::tempdir().unwrap();
    hit.restore(ws.path()).await.unwrap();
    assert_eq!(std::fs::read(ws.path().join("out.bin")).unwrap(), FILE);
    let reader = hit.log_reader(cache_core::LogStream::Stdout).await.unwrap();
    assert!(reader.is_some());
    {
        let calls = layer.calls.lock().unwrap();
        assert_eq!(calls.get(&HitOp::Restore), Some(&1));
        assert_eq!(calls.get(&HitOp::Logs), Some(&1));
        assert_eq!(calls.get(&HitOp::LogReader), Some(&1));
    }
    let served = (FILE.len() + 2 * STDOUT.len()) as u64;
    assert_eq!(layer.bytes.load(Ordering::Relaxed), served);
    assert!(layer.errors.lock().unwrap().is_empty());

    // The blobs go between the lookup and the next restore: the layer sees the fault.
    store.forget_blobs();
    let ws = tempfile::tempdir().unwrap();
    let e = hit.restore(ws.path()).await.unwrap_err();
    assert!(e.is_cache_fault(), "{e}");
    assert_eq!(*layer.errors.lock().unwrap(), vec![e.kind()]);
    assert_eq!(
        layer.bytes.load(Ordering::Relaxed),
        served,
        "nothing served"
    );

    // A fault met elsewhere with the hit (a copy into another tier) reaches it too;
    // a caller's fault does not.
    hit.report_fault(&BackendError::unavailable("copy lost the server"));
    hit.report_fault(&BackendError::InvalidKey {
        value: "not a key".into(),
        reason: "test",
    });
    assert_eq!(layer.reported.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instrumented_counts_bytes_when_a_hit_restores_them() {
    let store = MemStore::named("mem");
    let instrumented = Instrumented::new(Arc::new(cache(&store)));
    let metrics = instrumented.metrics();
    let key = stored(&instrumented).await;
    let hit = instrumented
        .lookup(&task(), &key, CachePolicy::Normal)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(metrics.hits.load(Ordering::Relaxed), 1);
    assert_eq!(
        metrics.bytes_down.load(Ordering::Relaxed),
        0,
        "a hit found serves nothing yet"
    );

    let ws = tempfile::tempdir().unwrap();
    hit.restore(ws.path()).await.unwrap();
    assert_eq!(metrics.calls("restore"), 1);
    assert_eq!(
        metrics.bytes_down.load(Ordering::Relaxed),
        FILE.len() as u64
    );
    hit.logs().await.unwrap();
    assert_eq!(metrics.calls("logs"), 1);
    assert_eq!(
        metrics.bytes_down.load(Ordering::Relaxed),
        (FILE.len() + STDOUT.len()) as u64
    );

    // A restore that fails is counted as a failed restore, serving nothing.
    store.forget_blobs();
    let e = hit.restore(ws.path()).await.unwrap_err();
    assert_eq!(metrics.calls("restore"), 2);
    assert_eq!(metrics.errors("restore", e.kind()), 1);
    assert_eq!(
        metrics.bytes_down.load(Ordering::Relaxed),
        (FILE.len() + STDOUT.len()) as u64
    );
    assert!(
        metrics
            .render_prometheus("mem")
            .contains("op=\"restore\",kind=\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_backend_works_behind_deadline_and_tiered_and_hits_say_their_tier() {
    let fast_store = MemStore::named("fast-mem");
    let shared_store = MemStore::named("shared-mem");
    let own: Arc<dyn CacheBackend> = Arc::new(OwnBackend {
        cache: cache(&shared_store),
    });
    let shared = Arc::new(Deadline::new(
        own,
        Deadlines::new(Duration::from_secs(30)),
        sleep(),
    ));
    let fast = Arc::new(Deadline::new(
        Arc::new(cache(&fast_store)),
        Deadlines::new(Duration::from_secs(30)),
        sleep(),
    ));
    let key = stored(&*shared).await;
    let tiered = Tiered::new(fast, shared);

    // From the shared tier (the outside backend), copied into the fast tier.
    let hit = tiered
        .lookup(&task(), &key, CachePolicy::Normal)
        .await
        .unwrap()
        .unwrap();
    let source = hit.source();
    assert_eq!(source.tier, Some(HitTier::Shared));
    assert_eq!(source.backend, "shared-mem", "found in the shared tier");
    assert_eq!(source.duration_ms, 1234);
    assert_eq!(source.bytes, (FILE.len() + STDOUT.len()) as u64);
    assert_eq!(
        hit.backend(),
        "fast-mem",
        "restored from the fast tier's copy"
    );
    let ws = tempfile::tempdir().unwrap();
    hit.restore(ws.path()).await.unwrap();
    assert_eq!(std::fs::read(ws.path().join("out.bin")).unwrap(), FILE);

    // Now the fast tier has it.
    let hit = tiered
        .lookup(&task(), &key, CachePolicy::Normal)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hit.source().tier, Some(HitTier::Fast));
    assert_eq!(hit.source().backend, "fast-mem");

    // A read-only lookup is served from the shared tier without a copy.
    let other = stored(&*tiered_shared_only(&shared_store)).await;
    let hit = tiered
        .lookup(&task(), &other, CachePolicy::Readonly)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hit.source().tier, Some(HitTier::Shared));
    assert_eq!(hit.backend(), "shared-mem");

    // The outside backend's own rule holds behind the stack: failures are not stored.
    let failed = DigestAlgorithm::Blake3.digest(b"a failed run");
    let entry = CacheEntry {
        exit_code: 1,
        ..CacheEntry::default()
    };
    tiered
        .store(&task(), &failed.to_string(), &entry, CachePolicy::Normal)
        .await
        .unwrap();
    assert!(shared_store.entries.lock().unwrap().get(&failed).is_none());
    assert!(fast_store.entries.lock().unwrap().get(&failed).is_some());
}

/// The shared store alone, to plant an entry the fast tier does not have.
fn tiered_shared_only(store: &MemStore) -> Arc<dyn CacheBackend> {
    Arc::new(OwnBackend {
        cache: cache(store),
    })
}
