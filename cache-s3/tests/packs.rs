//! Packed entries: the small files of an entry travel as a few pack objects. How many
//! objects an entry takes, what a warm store sends, a second runner's hit, and packs
//! written by a hostile writer (each a miss or a verified failure, never a wrong byte).

#![allow(clippy::cast_possible_truncation)]

mod common;

use cache_core::{
    BackendError, BlobRef, Cache, CacheBackend, CacheEntry, CacheOutput, CachePolicy, Digest,
    DigestAlgorithm,
};
use cache_s3::object_store::memory::InMemory;
use cache_s3::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use cache_s3::{CountingStore, S3Options, S3Storage};
use cache_testkit::fixtures::{fresh_key, task};
use futures::TryStreamExt;
use std::path::Path;
use std::sync::Arc;

/// A storage under `ci/` of `store`, with the default options (packing on).
fn storage_on(store: Arc<dyn ObjectStore>) -> S3Storage {
    S3Storage::from_store(store, "ci", "memory", S3Options::default())
}

fn cache(storage: S3Storage) -> Cache<S3Storage> {
    Cache::new(storage, cache_testkit::spawn_blocking)
}

/// `n` files of about 4 KiB under `dir`, each different, as outputs `t/<i>.txt`.
fn tree(dir: &Path, n: usize, salt: u64) -> Vec<CacheOutput> {
    (0..n)
        .map(|i| {
            let path = dir.join(format!("{i}.txt"));
            let line = format!("file {i} of the tree, salt {salt}: some text that compresses\n");
            let bytes: Vec<u8> = line.bytes().cycle().take(4000 + i % 200).collect();
            std::fs::write(&path, bytes).unwrap();
            CacheOutput::file(format!("t/{i}.txt"), path, false)
        })
        .collect()
}

/// Stores `outputs` under `key` through `storage`, with Normal policy.
async fn store(storage: &S3Storage, key: &str, outputs: Vec<CacheOutput>) {
    cache(storage.clone())
        .store(&task(), key, &entry(outputs), CachePolicy::Normal)
        .await
        .unwrap();
}

fn entry(outputs: Vec<CacheOutput>) -> CacheEntry {
    CacheEntry {
        stdout: Some(b"built\n".to_vec()),
        outputs,
        ..CacheEntry::default()
    }
}

async fn objects(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    let prefix = cache_s3::object_store::path::Path::from(prefix);
    let listed: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
    listed
        .into_iter()
        .map(|m| m.location.as_ref().to_owned())
        .collect()
}

/// The packs a stored entry names (its `TCPE` wrapper: magic, version, 3 zero bytes,
/// count, then per pack a 32-byte name and a u32 trailer length).
async fn packs_of(storage: &S3Storage, key: &str) -> Vec<String> {
    let raw = storage
        .raw_entry(&Digest::parse(key).unwrap())
        .await
        .unwrap()
        .expect("the entry is stored");
    assert_eq!(&raw[..4], b"TCPE", "a packed entry");
    assert_eq!(raw[4], 2, "wrapper format version 2");
    let n = u32::from_le_bytes(raw[8..12].try_into().unwrap()) as usize;
    raw[12..12 + 36 * n]
        .chunks(36)
        .map(|c| {
            c[..32].iter().fold(String::new(), |mut s, b| {
                use std::fmt::Write as _;
                let _ = write!(s, "{b:02x}");
                s
            })
        })
        .collect()
}

async fn restore_all(c: &Cache<S3Storage>, key: &str, ws: &Path) {
    let hit = c
        .lookup(&task(), &Digest::parse(key).unwrap(), CachePolicy::Normal)
        .await
        .unwrap()
        .expect("a hit");
    hit.restore(ws).await.unwrap();
}

fn same_tree(src: &Path, ws: &Path, n: usize) {
    for i in 0..n {
        let want = std::fs::read(src.join(format!("{i}.txt"))).unwrap();
        let got = std::fs::read(ws.join(format!("t/{i}.txt"))).unwrap();
        assert!(want == got, "t/{i}.txt differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_small_files_are_at_most_three_objects_and_hit_on_another_runner() {
    let n = 10_000;
    let (memory, _, src, key) = stored_tree(n, 1).await;
    let stored = objects(&*memory, "ci").await;
    assert!(stored.len() <= 3, "{} objects: {stored:?}", stored.len());
    assert!(
        stored.iter().any(|o| o.starts_with("ci/packs/")),
        "{stored:?}"
    );
    // Another runner: a storage of its own, sharing the bucket.
    let counting = CountingStore::new(Arc::clone(&memory));
    let b = storage_on(Arc::new(counting.clone()));
    let ws = tempfile::tempdir().unwrap();
    restore_all(&cache(b), &key, ws.path()).await;
    same_tree(src.path(), ws.path(), n);
    let used = counting.counts();
    // The entry, the pack's trailer (one ranged GET: the entry says how long it is)
    // and its ~4 MiB segments (a few twice, where the restore's chunks of 4,096 files
    // cut one): no request per file.
    assert!(used.total() < 25, "{used}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_store_of_an_unchanged_tree_sends_no_pack_bytes() {
    let counting = CountingStore::new(Arc::new(InMemory::new()));
    let storage = storage_on(Arc::new(counting.clone()));
    let src = tempfile::tempdir().unwrap();
    let outputs = tree(src.path(), 500, 2);
    // Another runner stored the tree: this storage knows nothing of its packs.
    let other = storage_on(Arc::new(counting.clone()));
    store(&other, &fresh_key(), outputs.clone()).await;
    let cold = counting.counts();
    let key = fresh_key();
    store(&storage, &key, outputs).await;
    let warm = counting.counts();
    let entry = storage.raw_entry(&Digest::parse(&key).unwrap()).await;
    assert_eq!(
        warm.puts - cold.puts,
        2,
        "two PUTs, the pack's empty claim and the entry: {warm}"
    );
    assert_eq!(
        warm.bytes_sent - cold.bytes_sent,
        entry.unwrap().unwrap().len() as u64,
        "a warm store sent pack bytes: {warm}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_stays_a_single_object_beside_the_pack() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let a = storage_on(Arc::clone(&memory));
    let src = tempfile::tempdir().unwrap();
    let mut outputs = tree(src.path(), 20, 3);
    let big = src.path().join("big.bin");
    std::fs::write(&big, vec![7u8; (1 << 20) + 1]).unwrap();
    outputs.push(CacheOutput::file("big.bin", &big, false));
    let key = fresh_key();
    store(&a, &key, outputs).await;
    let stored = objects(&*memory, "ci").await;
    let count = |kind: &str| stored.iter().filter(|o| o.contains(kind)).count();
    assert_eq!(
        (count("/entries/"), count("/packs/"), count("/blobs/")),
        (1, 1, 1),
        "{stored:?}"
    );
    let b = storage_on(Arc::clone(&memory));
    let ws = tempfile::tempdir().unwrap();
    restore_all(&cache(b), &key, ws.path()).await;
    same_tree(src.path(), ws.path(), 20);
    assert_eq!(
        std::fs::read(ws.path().join("big.bin")).unwrap().len(),
        (1 << 20) + 1
    );
}

/// The record inside a packed entry is compressed (wrapper version 2): a damaged frame
/// or one that makes other bytes is a miss, never a hit, an error or a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packed_entry_whose_compressed_record_is_damaged_is_a_miss() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let a = storage_on(Arc::clone(&memory));
    let src = tempfile::tempdir().unwrap();
    let key = fresh_key();
    store(&a, &key, tree(src.path(), 50, 9)).await;
    let d = Digest::parse(&key).unwrap();
    let raw = a.raw_entry(&d).await.unwrap().unwrap().to_vec();
    // Magic, version, count, one pack (36 bytes), the record's length, its frame.
    let frame = 12 + 36 + 4;
    for at in [frame, frame + 5, raw.len() / 2 + frame / 2, raw.len() - 1] {
        let mut bad = raw.clone();
        bad[at] ^= 0x55;
        a.write_raw_entry(&d, bad).await.unwrap();
        let b = cache(storage_on(Arc::clone(&memory)));
        let got = b.lookup(&task(), &d, CachePolicy::Readonly).await;
        assert!(
            matches!(got, Ok(None)),
            "a record damaged at byte {at} of {}: {:?}",
            raw.len(),
            got.map(|h| h.is_some())
        );
    }
    // Put back, it hits.
    a.write_raw_entry(&d, raw).await.unwrap();
    let ws = tempfile::tempdir().unwrap();
    restore_all(&cache(storage_on(memory)), &key, ws.path()).await;
    same_tree(src.path(), ws.path(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_without_packs_still_read_and_mix_with_packed_ones() {
    // Written by a storage that does not pack (as earlier versions did): plain
    // records and single blobs, read by a packing storage.
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let old = S3Storage::from_store(
        Arc::clone(&memory),
        "ci",
        "memory",
        S3Options::default().with_packing(false),
    );
    let src = tempfile::tempdir().unwrap();
    let outputs = tree(src.path(), 30, 4);
    let key = fresh_key();
    store(&old, &key, outputs.clone()).await;
    let raw = old
        .raw_entry(&Digest::parse(&key).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&raw[..4], b"TCAR");
    let new = storage_on(Arc::clone(&memory));
    let ws = tempfile::tempdir().unwrap();
    restore_all(&cache(new.clone()), &key, ws.path()).await;
    same_tree(src.path(), ws.path(), 30);
    // The new storage stores the same tree in a pack; both entries keep hitting.
    let key2 = fresh_key();
    store(&new, &key2, outputs).await;
    assert_eq!(packs_of(&new, &key2).await.len(), 1);
    for k in [&key, &key2] {
        let ws = tempfile::tempdir().unwrap();
        let fresh = storage_on(Arc::clone(&memory));
        restore_all(&cache(fresh), k, ws.path()).await;
        same_tree(src.path(), ws.path(), 30);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_suffix_ranges_reads_trailers_by_size() {
    let counting = CountingStore::new(Arc::new(InMemory::new())).without_suffix_ranges();
    let storage = storage_on(Arc::new(counting));
    let src = tempfile::tempdir().unwrap();
    let key = fresh_key();
    // Trailers both shorter and longer than the first ranged GET.
    for n in [3, 2_000] {
        store(&storage, &key, tree(src.path(), n, 6)).await;
        let ws = tempfile::tempdir().unwrap();
        restore_all(&cache(storage.clone()), &key, ws.path()).await;
        same_tree(src.path(), ws.path(), n);
    }
}

// ---- hostile packs ------------------------------------------------------------

/// A pack in format version 1, built here from the documented layout: `segments` are
/// (zstd frame, declared raw length), `members` (blob, segment, offset).
fn build_pack(segments: &[(Vec<u8>, u64)], members: &[(BlobRef, u32, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut table = Vec::new();
    for (frame, raw) in segments {
        table.push((out.len() as u64, frame.len() as u64, *raw));
        out.extend_from_slice(frame);
    }
    let mut t = Vec::new();
    t.extend_from_slice(b"TCPK");
    t.extend_from_slice(&[1, 0, 0, 0]);
    t.extend_from_slice(&(table.len() as u32).to_le_bytes());
    t.extend_from_slice(&(members.len() as u32).to_le_bytes());
    for (offset, len, raw) in table {
        t.extend_from_slice(&offset.to_le_bytes());
        t.extend_from_slice(&len.to_le_bytes());
        t.extend_from_slice(&raw.to_le_bytes());
    }
    for (blob, segment, offset) in members {
        t.push(match blob.digest.algorithm() {
            DigestAlgorithm::Sha256 => 1,
            DigestAlgorithm::Blake3 => 2,
        });
        t.extend_from_slice(blob.digest.as_bytes());
        t.extend_from_slice(&blob.size.to_le_bytes());
        t.extend_from_slice(&segment.to_le_bytes());
        t.extend_from_slice(&offset.to_le_bytes());
    }
    out.extend_from_slice(&t);
    out.extend_from_slice(&(t.len() as u64).to_le_bytes());
    out.extend_from_slice(b"TCPK");
    out.extend_from_slice(&[1, 0, 0, 0]);
    out
}

/// A zstd frame of `n` zero bytes, made without holding them.
fn zeros_frame(n: u64) -> Vec<u8> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        std::io::Write::write_all(&mut enc, &chunk[..k]).unwrap();
        left -= k as u64;
    }
    enc.finish().unwrap()
}

const FILES: [(&str, &[u8]); 3] = [
    ("out/a.txt", b"alpha alpha alpha\n"),
    ("out/b.txt", b"bravo bravo\n"),
    ("out/c.txt", b"charlie\n"),
];

fn file_outputs() -> Vec<CacheOutput> {
    FILES
        .iter()
        .map(|(p, b)| CacheOutput::bytes(*p, b.to_vec(), false))
        .collect()
}

/// An in-memory bucket holding a tree of `n` files stored under a fresh key by a
/// storage, and the tree's directory.
async fn stored_tree(
    n: usize,
    salt: u64,
) -> (Arc<dyn ObjectStore>, S3Storage, tempfile::TempDir, String) {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let storage = storage_on(Arc::clone(&memory));
    let src = tempfile::tempdir().unwrap();
    let key = fresh_key();
    store(&storage, &key, tree(src.path(), n, salt)).await;
    (memory, storage, src, key)
}

/// An in-memory bucket holding [`FILES`] stored under a fresh key by a storage.
async fn stored_files() -> (Arc<dyn ObjectStore>, S3Storage, String) {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let storage = storage_on(Arc::clone(&memory));
    let key = fresh_key();
    store(&storage, &key, file_outputs()).await;
    (memory, storage, key)
}

fn blobs() -> Vec<BlobRef> {
    FILES
        .iter()
        .map(|(_, b)| BlobRef::of(DigestAlgorithm::Blake3, b))
        .collect()
}

/// What a lookup and restore by a fresh runner make of the planted pack: `Ok(false)`
/// for a miss, `Ok(true)` for a hit whose restore wrote the right bytes, or the
/// restore's error. Never wrong bytes in the workspace.
async fn outcome(memory: &Arc<dyn ObjectStore>, key: &str) -> Result<bool, BackendError> {
    let storage = storage_on(Arc::clone(memory));
    let c = cache(storage);
    let Some(hit) = c
        .lookup(&task(), &Digest::parse(key).unwrap(), CachePolicy::Normal)
        .await?
    else {
        return Ok(false);
    };
    let ws = tempfile::tempdir().unwrap();
    let restored = hit.restore(ws.path()).await;
    for (path, bytes) in FILES {
        if let Ok(got) = std::fs::read(ws.path().join(path)) {
            assert_eq!(got, bytes, "{path}: a wrong byte reached the workspace");
        }
    }
    restored.map(|_| true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_packs_are_misses_or_verified_failures() {
    let (memory, storage, key) = stored_files().await;
    let packs = packs_of(&storage, &key).await;
    assert_eq!(packs.len(), 1);
    let path = storage.pack_path(&packs[0]);
    let good = memory.get(&path).await.unwrap().bytes().await.unwrap();
    assert!(outcome(&memory, &key).await.unwrap(), "the good pack hits");

    let refs = blobs();
    let raw: Vec<u8> = FILES.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    let frame = zstd::bulk::compress(&raw, 3).unwrap();
    let mut at = 0;
    let honest: Vec<(BlobRef, u32, u64)> = refs
        .iter()
        .map(|b| {
            let m = (*b, 0, at);
            at += b.size;
            m
        })
        .collect();
    assert_eq!(
        build_pack(&[(frame.clone(), raw.len() as u64)], &honest).len(),
        good.len(),
        "the layout built here is the one written"
    );

    let mut huge_counts = good.to_vec();
    let trailer_at = good.len() - 16 - (16 + 24 + 3 * 53);
    huge_counts[trailer_at + 8..trailer_at + 16].copy_from_slice(&[0xff; 8]);
    let mut huge_trailer = good.to_vec();
    let n = huge_trailer.len();
    huge_trailer[n - 16..n - 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut past_the_end = build_pack(&[(frame.clone(), raw.len() as u64)], &honest);
    // The segment's compressed length, claimed far past the object's end.
    let seg_len_at = past_the_end.len() - 16 - (16 + 24 + 3 * 53) + 16 + 8;
    past_the_end[seg_len_at..seg_len_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    // A zip bomb: a frame of 64 MiB of zeros declared as the members' few bytes.
    let bomb = build_pack(&[(zeros_frame(64 << 20), raw.len() as u64)], &honest);
    // A member list that lies: the right digests over other bytes.
    let other: Vec<u8> = raw.iter().map(|b| b ^ 0x20).collect();
    let liar = build_pack(
        &[(zstd::bulk::compress(&other, 3).unwrap(), other.len() as u64)],
        &honest,
    );
    // A segment declared longer than any a writer makes.
    let oversized = {
        let mut m = honest.clone();
        m[2].0.size = 64 << 20;
        build_pack(&[(frame.clone(), raw.len() as u64 - 8 + (64 << 20))], &m)
    };
    // What each must be: a miss (`None`), or a hit whose restore fails verification.
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        (
            "garbage",
            b"not a pack at all, just some bytes".repeat(100),
            None,
        ),
        ("empty", Vec::new(), None),
        ("huge counts", huge_counts, None),
        ("huge trailer length", huge_trailer, None),
        ("segment past the end", past_the_end, None),
        ("oversized segment", oversized, None),
        ("zip bomb", bomb, Some("digest_mismatch")),
        ("lying member list", liar, Some("digest_mismatch")),
    ];
    for (what, bytes, expected) in cases {
        memory.put(&path, PutPayload::from(bytes)).await.unwrap();
        match (outcome(&memory, &key).await, expected) {
            (Ok(false), None) => {}
            (Err(e), Some(kind)) => assert_eq!(e.kind(), kind, "{what}: {e}"),
            (other, _) => panic!("{what}: {other:?}, expected {expected:?}"),
        }
        // A verified failure removed what was wrong: the next lookup is a miss.
        assert_eq!(
            outcome(&memory, &key).await.ok(),
            Some(false),
            "{what}: then a miss"
        );
        // And the next store repairs it.
        memory
            .put(&path, PutPayload::from(good.clone()))
            .await
            .unwrap();
        assert!(outcome(&memory, &key).await.unwrap(), "{what}: repaired");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_after_a_pack_went_bad_sends_it_again() {
    let (memory, storage, key) = stored_files().await;
    let path = storage.pack_path(&packs_of(&storage, &key).await[0]);
    memory
        .put(&path, PutPayload::from(b"junk".to_vec()))
        .await
        .unwrap();
    assert!(!outcome(&memory, &key).await.unwrap());
    // Another runner stores the same outputs: the junk under the pack's name is
    // replaced, and the entry hits again.
    let other = storage_on(Arc::clone(&memory));
    store(&other, &key, file_outputs()).await;
    assert!(outcome(&memory, &key).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_on_a_real_server() {
    let Some((endpoint, bucket)) = common::s3_peer("packs_on_a_real_server") else {
        return;
    };
    let prefix = common::unique_prefix("packs");
    let url = url::Url::parse(&format!("s3://{bucket}/{prefix}")).unwrap();
    let open = || {
        S3Storage::open_with_env(&url, S3Options::default(), &common::s3_env(&endpoint)).unwrap()
    };
    let a = open();
    let src = tempfile::tempdir().unwrap();
    let n = 2_000;
    let key = fresh_key();
    store(&a, &key, tree(src.path(), n, 5)).await;
    let stored = objects(&**a.store(), &prefix).await;
    assert!(stored.len() <= 3, "{stored:?}");
    let ws = tempfile::tempdir().unwrap();
    restore_all(&cache(open()), &key, ws.path()).await;
    same_tree(src.path(), ws.path(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_whose_small_files_this_storage_cannot_place_is_not_published() {
    use cache_core::storage::{EntryKey, Storage};
    let (memory, a, key) = stored_files().await;
    let digest = Digest::parse(&key).unwrap();
    let record = a
        .get_entry(&EntryKey::digest_only(digest))
        .await
        .unwrap()
        .unwrap()
        .record;
    // Another storage that never stored nor read those blobs: it cannot name their
    // pack, and they are not single objects either.
    let other_key = fresh_key();
    let other_digest = Digest::parse(&other_key).unwrap();
    let record = cache_core::storage::ActionRecord {
        key: other_digest,
        ..record
    };
    let b = storage_on(Arc::clone(&memory));
    let e = b
        .put_entry(
            &EntryKey::digest_only(other_digest),
            Arc::new(record.clone()),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "unavailable", "{e}");
    assert!(b.raw_entry(&other_digest).await.unwrap().is_none());
    // Once it has read them (a lookup), it can.
    b.get_entry(&EntryKey::digest_only(digest)).await.unwrap();
    b.put_entry(&EntryKey::digest_only(other_digest), Arc::new(record))
        .await
        .unwrap();
    assert!(outcome(&memory, &other_key).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_trailer_length_in_the_entry_costs_a_request_not_a_hit() {
    let (memory, storage, src, key) = stored_tree(2_000, 7).await;
    let digest = Digest::parse(&key).unwrap();
    let raw = storage.raw_entry(&digest).await.unwrap().unwrap().to_vec();
    for hint in [0u32, 1, 17, u32::MAX] {
        let mut lying = raw.clone();
        lying[44..48].copy_from_slice(&hint.to_le_bytes());
        storage.write_raw_entry(&digest, lying).await.unwrap();
        let ws = tempfile::tempdir().unwrap();
        restore_all(&cache(storage_on(Arc::clone(&memory))), &key, ws.path()).await;
        same_tree(src.path(), ws.path(), 2_000);
    }
}
