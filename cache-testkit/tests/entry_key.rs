//! A storage is told the task behind every entry it reads, writes, removes or touches
//! (what a REAPI storage needs to build its `Action`), and never an environment value.

use cache_core::storage::{ActionRecord, BlobSource, EntryKey, Storage, StoredEntry};
use cache_core::{
    BackendResult, BlobRef, Cache, CacheBackend, CacheEntry, CacheOutput, CachePolicy, Digest,
    TaskOutput,
};
use cache_testkit::fixtures::{TempWorkspace, fresh_key, task};
use cache_testkit::{MemoryStorage, spawn_blocking};
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Recording(MemoryStorage, Arc<Mutex<Vec<(&'static str, EntryKey)>>>);

impl Recording {
    fn saw(&self, call: &'static str, key: &EntryKey) {
        self.1.lock().unwrap().push((call, key.clone()));
    }
}

#[async_trait::async_trait]
impl Storage for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }
    async fn get_entry(&self, k: &EntryKey) -> BackendResult<Option<StoredEntry>> {
        self.saw("get", k);
        self.0.get_entry(k).await
    }
    async fn put_entry(&self, k: &EntryKey, r: Arc<ActionRecord>) -> BackendResult<()> {
        assert_eq!(r.key, k.digest, "the record and its entry key agree");
        self.saw("put", k);
        self.0.put_entry(k, r).await
    }
    async fn remove_entry(&self, k: &EntryKey) -> BackendResult<()> {
        self.saw("remove", k);
        self.0.remove_entry(k).await
    }
    async fn find_missing_blobs(&self, b: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>> {
        self.0.find_missing_blobs(b).await
    }
    async fn put_blobs(
        &self,
        s: Vec<BlobSource>,
        a: Option<cache_core::DigestAlgorithm>,
    ) -> BackendResult<Vec<BlobRef>> {
        self.0.put_blobs(s, a).await
    }
    async fn open_blobs(&self, b: Vec<BlobRef>) -> BackendResult<Vec<Option<BlobSource>>> {
        self.0.open_blobs(b).await
    }
    async fn remove_blob(&self, b: &BlobRef) -> BackendResult<()> {
        self.0.remove_blob(b).await
    }
    async fn touch(&self, k: &EntryKey) -> BackendResult<()> {
        self.saw("touch", k);
        self.0.touch(k).await
    }
    async fn health_check(&self) -> BackendResult<()> {
        self.0.health_check().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_call_names_the_task_without_environment_values() {
    let storage = Recording::default();
    let cache = Cache::new(storage.clone(), spawn_blocking);
    let mut t = task();
    t.command = vec!["make".into(), "all".into()];
    t.env.insert("API_TOKEN".into(), "hunter2-secret".into());
    t.outputs = vec![TaskOutput {
        path: "out".into(),
        kind: cache_core::OutputType::default(),
    }];
    let key = fresh_key();
    let entry = CacheEntry {
        outputs: vec![CacheOutput::bytes("out/a.txt", b"a".to_vec(), false)],
        ..CacheEntry::default()
    };
    cache
        .store(&t, &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    let hit = cache
        .lookup(&t, &Digest::parse(&key).unwrap(), CachePolicy::Normal)
        .await
        .unwrap()
        .expect("hit");
    let ws = TempWorkspace::new();
    hit.restore(ws.root()).await.unwrap();

    let calls = storage.1.lock().unwrap().clone();
    let names: Vec<&str> = calls.iter().map(|(c, _)| *c).collect();
    assert_eq!(names, ["put", "get", "touch"]);
    for (call, k) in &calls {
        assert_eq!(k.digest.to_string(), key, "{call}");
        assert_eq!(k.task.command, ["make", "all"], "{call}");
        assert_eq!(k.task.outputs, ["out"], "{call}");
        assert_eq!(k.task.env_names, ["API_TOKEN"], "{call}");
        assert!(
            !format!("{k:?}").contains("hunter2"),
            "{call}: an environment value reached the storage"
        );
    }
}

/// A shared tier that addresses blobs by SHA-256 (as REAPI servers do) in front of a
/// fast tier that chooses BLAKE3: the import keeps the record's refs, so the fast tier
/// serves the same record afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_keeps_the_records_digest_algorithm() {
    use cache_core::{DigestAlgorithm, Tiered};
    let fast_storage = MemoryStorage::with_algorithm(DigestAlgorithm::Blake3);
    let fast = Arc::new(Cache::new(fast_storage.clone(), spawn_blocking));
    let shared = Arc::new(Cache::new(
        MemoryStorage::with_algorithm(DigestAlgorithm::Sha256),
        spawn_blocking,
    ));
    let t = task();
    let key = fresh_key();
    let big = vec![7u8; 200_000]; // a log over the inline limit becomes a blob too
    let entry = CacheEntry {
        stdout: Some(big.clone()),
        outputs: vec![CacheOutput::bytes("a.txt", b"alpha".to_vec(), true)],
        ..CacheEntry::default()
    };
    shared
        .store(&t, &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    let tiered = Tiered::new(fast.clone(), shared);
    let d = Digest::parse(&key).unwrap();
    assert!(
        tiered
            .lookup(&t, &d, CachePolicy::Normal)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        fast_storage.blob_count() >= 2,
        "the import stored the blobs"
    );
    let hit = fast
        .lookup(&t, &d, CachePolicy::Readonly)
        .await
        .unwrap()
        .expect("the fast tier serves the imported record");
    assert!(
        hit.record()
            .blobs()
            .all(|b| b.digest.algorithm() == DigestAlgorithm::Sha256)
    );
    let ws = TempWorkspace::new();
    hit.restore(ws.root()).await.unwrap();
    assert_eq!(std::fs::read(ws.root().join("a.txt")).unwrap(), b"alpha");
    assert_eq!(hit.logs().await.unwrap().0.unwrap(), big);
}
