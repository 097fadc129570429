//! `cache_core::Cache` itself: a hit is a value. Its exit code, outputs and logs come
//! from one record however long the caller takes and whatever other writers do; the
//! three-call form looks up anew each call; a hit reads its entry once.

use cache_core::storage::EntryKey;
use cache_core::{Cache, CacheBackend, CacheEntry, CacheOutput, CachePolicy, Digest, Hit};
use cache_testkit::fixtures::{TempWorkspace, fresh_key, task};
use cache_testkit::{CountingStorage, IoCounter, MemoryStorage, spawn_blocking};

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

/// What a hit replays: (exit code, output file, stdout).
async fn replay(hit: &Hit) -> (i32, String, String) {
    let ws = TempWorkspace::new();
    hit.restore(ws.root()).await.expect("restore");
    let out = std::fs::read_to_string(ws.root().join("out.txt")).expect("read output");
    let (stdout, _) = hit.logs().await.expect("logs");
    (
        hit.exit_code(),
        out,
        String::from_utf8(stdout.expect("stdout")).expect("utf-8"),
    )
}

fn digest(key: &str) -> Digest {
    Digest::parse(key).expect("valid key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_replays_the_record_it_found_whatever_happens_meanwhile() {
    let storage = MemoryStorage::new();
    let ours = Cache::new(storage.clone(), spawn_blocking);
    let other = Cache::new(storage, spawn_blocking);
    let key = fresh_key();
    let p = CachePolicy::Normal;
    ours.store(&task(), &key, &entry("one", 0), p)
        .await
        .unwrap();

    let hit = ours
        .lookup(&task(), &digest(&key), p)
        .await
        .unwrap()
        .expect("hit");
    // Another process replaces the entry after our lookup, and we take our time
    // (no clock is involved: this holds after any delay).
    other
        .store(&task(), &key, &entry("two", 3), p)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(
        replay(&hit).await,
        (0, "output one\n".into(), "stdout one\n".into()),
        "exit code 0 came with version one: its outputs and logs must be version one"
    );
    // A new lookup sees the new entry, whole.
    let hit = ours
        .lookup(&task(), &digest(&key), p)
        .await
        .unwrap()
        .expect("hit");
    assert_eq!(
        replay(&hit).await,
        (3, "output two\n".into(), "stdout two\n".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_call_form_reads_what_is_stored_at_each_call() {
    let storage = MemoryStorage::new();
    let ours = Cache::new(storage.clone(), spawn_blocking);
    let other = Cache::new(storage, spawn_blocking);
    let key = fresh_key();
    let p = CachePolicy::Normal;
    ours.store(&task(), &key, &entry("one", 0), p)
        .await
        .unwrap();
    let hit = ours.check(&task(), &key, p).await.unwrap();
    assert_eq!((hit.hit, hit.exit_code), (true, Some(0)));
    other
        .store(&task(), &key, &entry("two", 3), p)
        .await
        .unwrap();
    // As documented: each call looks up anew, and each is one whole record.
    let ws = TempWorkspace::new();
    ours.restore_outputs(&task(), &key, ws.root())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(ws.root().join("out.txt")).unwrap(),
        "output two\n"
    );
    let (stdout, _) = ours.get_log_bytes(&task(), &key).await.unwrap();
    assert_eq!(stdout.unwrap(), b"stdout two\n");
    // No entry: ActionNotFound, a cache fault (the caller runs uncached).
    let missing = fresh_key();
    let err = ours
        .restore_outputs(&task(), &missing, ws.root())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "action_not_found", "{err}");
    assert!(err.is_cache_fault());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_reads_its_entry_once() {
    let io = IoCounter::new();
    let cache = Cache::new(
        CountingStorage::new(MemoryStorage::new(), io.clone()),
        spawn_blocking,
    );
    let key = fresh_key();
    let p = CachePolicy::Normal;
    cache
        .store(&task(), &key, &entry("one", 0), p)
        .await
        .unwrap();
    let before = io.snapshot();
    let hit = cache
        .lookup(&task(), &digest(&key), p)
        .await
        .unwrap()
        .expect("hit");
    let looked_up = io.snapshot();
    assert_eq!(
        looked_up.since(before).reads,
        2,
        "a lookup is the entry and one question about its blobs"
    );
    replay(&hit).await;
    let after = io.snapshot().since(looked_up);
    assert_eq!(
        (after.reads, after.writes, after.other),
        (1, 0, 1),
        "a hit's restore and inline logs are one read of its blobs and the recency \
         update: the entry is not read again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_log_is_verified_before_its_end() {
    use cache_core::LogStream;
    use cache_testkit::Tamper;
    use std::io::Read;
    let storage = MemoryStorage::new();
    let cache = Cache::new(storage.clone(), spawn_blocking);
    let key = fresh_key();
    let big = cache_testkit::fixtures::pattern_bytes(7, 300 << 10);
    let entry = CacheEntry {
        stdout: Some(big.clone()),
        stderr: Some(b"small\n".to_vec()),
        ..CacheEntry::default()
    };
    cache
        .store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    let hit = cache
        .lookup(&task(), &digest(&key), CachePolicy::Normal)
        .await
        .unwrap()
        .expect("hit");
    let read_all = |mut r: Box<dyn Read + Send>| {
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            r.read_to_end(&mut out).map(|_| out)
        })
    };
    let r = hit.log_reader(LogStream::Stdout).await.unwrap().unwrap();
    assert!(read_all(r).await.unwrap().unwrap() == big);
    let r = hit.log_reader(LogStream::Stderr).await.unwrap().unwrap();
    assert_eq!(read_all(r).await.unwrap().unwrap(), b"small\n");

    storage
        .flip_blob_byte(&cache_core::BlobRef::of(
            cache_core::DigestAlgorithm::Blake3,
            &big,
        ))
        .await
        .unwrap();
    let r = hit.log_reader(LogStream::Stdout).await.unwrap().unwrap();
    let err = read_all(r).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("mismatch"), "{err}");
}

/// Stores `entry(version)` under `key` and returns its hit and a copy of its record
/// under a fresh key, for a test to tamper with.
async fn hit_and_copy(
    cache: &Cache<ByDigest>,
    key: &str,
    version: &str,
) -> (Hit, cache_core::storage::ActionRecord) {
    let p = CachePolicy::Normal;
    cache
        .store(&task(), key, &entry(version, 0), p)
        .await
        .unwrap();
    let hit = cache
        .lookup(&task(), &digest(key), p)
        .await
        .unwrap()
        .expect("hit");
    let mut record = hit.record().clone();
    record.key = digest(&fresh_key());
    (hit, record)
}

/// A storage that, like a directory, finds blobs by digest alone and does not check
/// sizes at lookup: the shape in which a record lying about a blob's size reaches a
/// restore.
struct ByDigest(MemoryStorage);

#[async_trait::async_trait]
impl cache_core::storage::Storage for ByDigest {
    fn name(&self) -> &'static str {
        "by-digest"
    }
    async fn get_entry(
        &self,
        k: &EntryKey,
    ) -> cache_core::BackendResult<Option<cache_core::storage::StoredEntry>> {
        self.0.get_entry(k).await
    }
    async fn put_entry(
        &self,
        key: &EntryKey,
        r: std::sync::Arc<cache_core::storage::ActionRecord>,
    ) -> cache_core::BackendResult<()> {
        self.0.put_entry(key, r).await
    }
    async fn remove_entry(&self, k: &EntryKey) -> cache_core::BackendResult<()> {
        self.0.remove_entry(k).await
    }
    async fn find_missing_blobs(
        &self,
        _: Vec<cache_core::BlobRef>,
    ) -> cache_core::BackendResult<Vec<cache_core::BlobRef>> {
        Ok(Vec::new())
    }
    async fn put_blobs(
        &self,
        s: Vec<cache_core::storage::BlobSource>,
        a: Option<cache_core::DigestAlgorithm>,
    ) -> cache_core::BackendResult<Vec<cache_core::BlobRef>> {
        self.0.put_blobs(s, a).await
    }
    async fn open_blobs(
        &self,
        b: Vec<cache_core::BlobRef>,
    ) -> cache_core::BackendResult<Vec<Option<cache_core::storage::BlobSource>>> {
        // The stored blob of that digest, whatever size the record says.
        let real: Vec<_> = b
            .iter()
            .map(|x| self.0.stored_blob_by_digest(&x.digest))
            .collect();
        self.0
            .open_blobs(real.into_iter().flatten().collect())
            .await
    }
    async fn remove_blob(&self, b: &cache_core::BlobRef) -> cache_core::BackendResult<()> {
        match self.0.stored_blob_by_digest(&b.digest) {
            Some(real) => self.0.remove_blob(&real).await,
            None => Ok(()),
        }
    }
    async fn touch(&self, k: &EntryKey) -> cache_core::BackendResult<()> {
        self.0.touch(k).await
    }
    async fn health_check(&self) -> cache_core::BackendResult<()> {
        self.0.health_check().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_lying_about_a_blob_does_not_delete_the_good_blob() {
    use cache_testkit::Tamper;
    let storage = MemoryStorage::new();
    let cache = Cache::new(ByDigest(storage.clone()), spawn_blocking);
    let key = fresh_key();
    let p = CachePolicy::Normal;
    let (good, mut record) = hit_and_copy(&cache, &key, "good").await;
    // Another entry names the same blob with a wrong size.
    for o in &mut record.outputs {
        if let cache_core::storage::OutputRecord::File { blob, .. } = o {
            blob.size += 1;
        }
    }
    storage
        .write_raw_entry(&record.key, record.encode().unwrap())
        .await
        .unwrap();
    let lying = cache
        .lookup(&task(), &record.key, p)
        .await
        .unwrap()
        .expect("this storage does not check sizes at lookup");
    let ws = TempWorkspace::new();
    let e = lying.restore(ws.root()).await.unwrap_err();
    assert_eq!(e.kind(), "digest_mismatch", "{e}");
    // The good entry still restores: its blob was checked, found intact, and kept.
    assert_eq!(
        replay(&good).await,
        (0, "output good\n".into(), "stdout good\n".into())
    );
    // A blob that really is corrupt is still removed.
    let blob = cache_core::BlobRef::of(cache_core::DigestAlgorithm::Blake3, b"output good\n");
    storage.flip_blob_byte(&blob).await.unwrap();
    let ws = TempWorkspace::new();
    assert_eq!(
        good.restore(ws.root()).await.unwrap_err().kind(),
        "digest_mismatch"
    );
    assert!(storage.stored_blob_by_digest(&blob.digest).is_none());
}

mod signed_entries {
    use super::*;
    use cache_core::sign::SigningKey;

    fn trusted_reader(storage: &MemoryStorage, keys: &[&SigningKey]) -> Cache<MemoryStorage> {
        Cache::new(storage.clone(), spawn_blocking)
            .with_trusted_keys(keys.iter().map(|k| k.public_key()).collect())
    }

    async fn hit(cache: &Cache<MemoryStorage>, key: &str) -> Option<Hit> {
        cache
            .lookup(&task(), &digest(key), CachePolicy::Readonly)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_entries_signed_by_a_trusted_key_are_hits() {
        let storage = MemoryStorage::new();
        let main = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let signer = Cache::new(storage.clone(), spawn_blocking).with_signer(main.clone());
        let stranger = Cache::new(storage.clone(), spawn_blocking).with_signer(other);
        let unsigned = Cache::new(storage.clone(), spawn_blocking);
        let reader = trusted_reader(&storage, &[&main]);
        let p = CachePolicy::Normal;

        let signed_key = fresh_key();
        signer
            .store(&task(), &signed_key, &entry("signed", 0), p)
            .await
            .unwrap();
        let got = hit(&reader, &signed_key)
            .await
            .expect("signed by a trusted key: a hit");
        assert_eq!(replay(&got).await.1, "output signed\n");
        assert!(got.record().signature.is_some());

        for (who, cache) in [("unsigned", &unsigned), ("another key", &stranger)] {
            let k = fresh_key();
            cache.store(&task(), &k, &entry(who, 0), p).await.unwrap();
            assert!(hit(&reader, &k).await.is_none(), "{who}: must miss");
            // A reader that trusts no particular key still uses it.
            assert!(hit(&unsigned, &k).await.is_some(), "{who}: left in place");
        }
        assert_eq!(reader.untrusted_entries(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_altered_signed_entry_is_refused() {
        use cache_testkit::Tamper;
        let storage = MemoryStorage::new();
        let main = SigningKey::generate().unwrap();
        let signer = Cache::new(storage.clone(), spawn_blocking).with_signer(main.clone());
        let reader = trusted_reader(&storage, &[&main]);
        let k = fresh_key();
        signer
            .store(&task(), &k, &entry("v", 0), CachePolicy::Normal)
            .await
            .unwrap();
        let original = hit(&reader, &k).await.expect("hit").record().clone();
        // The cache writer changes what the entry says (an exit code, a mode, a path),
        // keeping the signature.
        let mut altered = [original.clone(), original.clone(), original.clone()];
        altered[0].exit_code = 1;
        if let cache_core::storage::OutputRecord::File { executable, .. } =
            &mut altered[1].outputs[0]
        {
            *executable = true;
        }
        altered[2].stdout = cache_core::storage::LogRecord::Inline(b"pwned\n".to_vec());
        for (i, record) in altered.iter().enumerate() {
            storage
                .write_raw_entry(&record.key, record.encode().unwrap())
                .await
                .unwrap();
            assert!(hit(&reader, &k).await.is_none(), "alteration {i} must miss");
        }
        // Restored as signed, it is a hit again.
        storage
            .write_raw_entry(&original.key, original.encode().unwrap())
            .await
            .unwrap();
        assert!(hit(&reader, &k).await.is_some());
        assert_eq!(reader.untrusted_entries(), 3);
    }

    #[test]
    fn keys_parse_and_never_print_the_secret() {
        let key = SigningKey::generate().unwrap();
        let secret = key.expose_secret();
        assert!(secret.starts_with("taskcache-sk-") && secret.len() == 13 + 64);
        assert!(!format!("{key:?}").contains(&secret[13..]));
        let again: SigningKey = secret.parse().unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let keys = cache_core::sign::parse_trusted_keys(&format!(
            "{}, {}",
            key.public_key(),
            SigningKey::generate().unwrap().public_key()
        ))
        .unwrap();
        assert_eq!(keys.len(), 2);
        for bad in [
            "",
            "taskcache-pk-00",
            "taskcache-sk-zz",
            &secret.replace("sk", "pk")[..10],
        ] {
            let e = bad.parse::<SigningKey>().unwrap_err();
            assert!(!e.to_string().contains(&secret[13..]), "{e}");
        }
        // A secret pasted where a public key belongs is refused without echoing it.
        let e = secret.parse::<cache_core::sign::PublicKey>().unwrap_err();
        assert!(!e.to_string().contains(&secret[13..]), "{e}");
    }
}

/// Sizes come from the cache: two outputs recorded at `u64::MAX / 2 + 1` bytes make
/// a restore fail cleanly, never overflow (a panic in debug builds, a wrap in release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_sizes_never_overflow() {
    use cache_testkit::Tamper;
    let storage = MemoryStorage::new();
    let cache = Cache::new(ByDigest(storage.clone()), spawn_blocking);
    let key = fresh_key();
    let p = CachePolicy::Normal;
    let (_, mut record) = hit_and_copy(&cache, &key, "x").await;
    let cache_core::storage::OutputRecord::File { blob, .. } = record.outputs[0].clone() else {
        panic!("a file output")
    };
    record.outputs = ["a", "b"]
        .into_iter()
        .map(|p| cache_core::storage::OutputRecord::File {
            path: p.into(),
            blob: cache_core::BlobRef {
                size: u64::MAX / 2 + 1,
                ..blob
            },
            executable: false,
        })
        .collect();
    storage
        .write_raw_entry(&record.key, record.encode().unwrap())
        .await
        .unwrap();
    let hit = cache
        .lookup(&task(), &record.key, p)
        .await
        .unwrap()
        .expect("this storage does not check sizes at lookup");
    assert_eq!(hit.bytes(), u64::MAX);
    let ws = TempWorkspace::new();
    assert!(hit.restore(ws.root()).await.is_err());
    assert!(ws.tree().get("a").is_none() && ws.tree().get("b").is_none());
}
