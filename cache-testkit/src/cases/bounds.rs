//! Memory under concurrency: what a process holds while many transfers run at once.

use crate::Harness;
use crate::fixtures::{OutputTree, expect_ok, fresh_key, fresh_seed, pattern_bytes, task};
use async_trait::async_trait;
use cache_core::storage::{ActionRecord, BlobSource, EntryKey, Storage, StoredEntry, copy_hashing};
use cache_core::{
    BackendResult, BlobRef, Cache, CacheBackend, CachePolicy, Digest, DigestAlgorithm,
};
use std::sync::Arc;

/// Calls in flight at once, of each kind.
const CALLS: usize = 16;
/// Files per entry, and their size: larger than what any storage fetches whole
/// (S3: 1 MiB; a REAPI batch: 4 MiB), as large as one S3 part.
const FILES: usize = 6;
const FILE_BYTES: u64 = 8 << 20;
/// Files per entry that a storage may fetch whole when they are opened: REAPI reads
/// blobs up to its 4 MiB batch limit in batches, S3 fetches the first 8 MiB part.
const MID_FILES: usize = 12;
const MID_BYTES: u64 = 2 << 20;
/// Files per entry that S3 packs.
const SMALL_FILES: usize = 8;
const SMALL_BYTES: u64 = 256 << 10;

/// What the process may grow by beyond the bounds the crates document: the runtime,
/// threads' stacks, the allocator's slack, the HTTP/2 windows of a network backend.
pub const MEMORY_ALLOWANCE: u64 = 96 << 20;

/// A fast tier that keeps nothing: it reads every byte handed to it, hashes it, and
/// forgets it (so what an import holds is what the copy costs, not what it stores).
struct Discard;

#[async_trait]
impl Storage for Discard {
    fn name(&self) -> &'static str {
        "discard"
    }
    async fn get_entry(&self, _: &EntryKey) -> BackendResult<Option<StoredEntry>> {
        Ok(None)
    }
    async fn put_entry(&self, _: &EntryKey, _: Arc<ActionRecord>) -> BackendResult<()> {
        Ok(())
    }
    async fn remove_entry(&self, _: &EntryKey) -> BackendResult<()> {
        Ok(())
    }
    async fn find_missing_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>> {
        Ok(blobs)
    }
    async fn put_blobs(
        &self,
        sources: Vec<BlobSource>,
        algorithm: Option<DigestAlgorithm>,
    ) -> BackendResult<Vec<BlobRef>> {
        let algorithm = algorithm.unwrap_or(DigestAlgorithm::Blake3);
        // One blocking job reads the sources one after another, as a local tier does.
        tokio::task::spawn_blocking(move || {
            sources
                .into_iter()
                .map(|s| {
                    let mut reader = s.into_reader()?;
                    copy_hashing(&mut reader, &mut std::io::sink(), algorithm)
                        .map_err(cache_core::BackendError::Io)
                })
                .collect()
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
    async fn open_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<Option<BlobSource>>> {
        Ok(blobs.iter().map(|_| None).collect())
    }
    async fn remove_blob(&self, _: &BlobRef) -> BackendResult<()> {
        Ok(())
    }
    async fn touch(&self, _: &EntryKey) -> BackendResult<()> {
        Ok(())
    }
    async fn health_check(&self) -> BackendResult<()> {
        Ok(())
    }
}

/// The process's resident set now and its peak since the last [`reset_peak`], in
/// bytes (Linux).
fn rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|kb| kb << 10)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets the peak to the current resident set (Linux 4.0+): each phase is measured
/// on its own.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

/// Runs `phase` and returns how far the process's peak resident set rose above where
/// it stood when the phase began (`None` where that cannot be read).
async fn peak_growth<T>(phase: impl std::future::Future<Output = T>) -> Option<u64> {
    let measured = reset_peak();
    let before = rss();
    let _ = phase.await;
    let after = rss();
    match (measured, before, after) {
        (true, Some((start, _)), Some((_, peak))) => Some(peak.saturating_sub(start)),
        _ => None,
    }
}

const MIB: u64 = 1 << 20;

/// Writes `len` bytes to `path` (blocking, 1 MiB at a time): `block` with each MiB's
/// first 16 bytes replaced by `seed` and its index, so every file and every MiB differ
/// at little cost.
fn write_distinct_file(path: &std::path::Path, block: &[u8], seed: u64, len: u64) -> BlobRef {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("create a source file");
    let mut hasher = DigestAlgorithm::Blake3.hasher();
    let mut chunk = block.to_vec();
    let mut at = 0u64;
    while at < len {
        let n = usize::try_from((len - at).min(block.len() as u64)).expect("a chunk");
        chunk[..8].copy_from_slice(&seed.to_le_bytes());
        chunk[8..16].copy_from_slice(&at.to_le_bytes());
        hasher.update(&chunk[..n]);
        file.write_all(&chunk[..n]).expect("write a source file");
        at += n as u64;
    }
    BlobRef {
        digest: hasher.finalize(),
        size: len,
    }
}

/// Writes entry `e`'s files under `dir` (bounded memory, blocking).
fn write_entry(dir: &std::path::Path, block: &[u8], seed: u64, e: usize) -> OutputTree {
    let mut tree = OutputTree::new();
    let sizes = std::iter::repeat_n(FILE_BYTES, FILES)
        .chain(std::iter::repeat_n(MID_BYTES, MID_FILES))
        .chain(std::iter::repeat_n(SMALL_BYTES, SMALL_FILES));
    for (f, size) in sizes.enumerate() {
        let path = dir.join(format!("{e}-{f}.bin"));
        let blob = write_distinct_file(&path, block, seed ^ ((e as u64) << 16) ^ f as u64, size);
        tree = tree.file_on_disk(&format!("out/{f}.bin"), &path, blob, false);
    }
    tree
}

/// Runs `call(i)` for every `i` below [`CALLS`] at once, each as its own task, and
/// panics naming the first that failed.
async fn all_at_once<T, F, Fut>(what: &str, call: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = BackendResult<T>> + Send + 'static,
{
    let running: Vec<_> = (0..CALLS).map(|i| tokio::spawn(call(i))).collect();
    let mut out = Vec::with_capacity(CALLS);
    for (i, r) in running.into_iter().enumerate() {
        let r = r
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        out.push(expect_ok(r, &format!("{what} {i} of {CALLS} at once")));
    }
    out
}

/// Sixteen stores at once, then sixteen imports at once (each a hit of this backend
/// copied into a fast tier that keeps nothing), of entries with six 8 MiB files,
/// twelve of 2 MiB (a REAPI batch reads them) and eight of 256 KiB (S3 packs them):
/// the process's peak resident set grows
/// by at most the bounds the crates document (`Cache`'s window budget,
/// [`cache_core::storage::WINDOW_BUDGET`], the backend's
/// [`crate::Capabilities::memory_per_process`], and its
/// [`crate::Capabilities::memory_per_call`] for each of the sixteen calls) and
/// [`MEMORY_ALLOWANCE`]; a backend that keeps what it stores in this process's memory
/// may also grow by what it stores. Checked on Linux when each test runs in its own
/// process (nextest); elsewhere the growth is printed.
pub async fn concurrent_transfers_stay_within_memory_bound(h: Harness) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let seed = fresh_seed();
    let trees: Arc<Vec<OutputTree>> = {
        let root = dir.path().to_path_buf();
        let written = tokio::task::spawn_blocking(move || {
            let block = pattern_bytes(seed, 1 << 20);
            (0..CALLS)
                .map(|e| write_entry(&root, &block, seed, e))
                .collect()
        });
        Arc::new(written.await.expect("write the sources"))
    };
    let keys: Arc<Vec<String>> = Arc::new((0..CALLS).map(|_| fresh_key()).collect());
    let data = (FILES as u64 * FILE_BYTES
        + MID_FILES as u64 * MID_BYTES
        + SMALL_FILES as u64 * SMALL_BYTES)
        * CALLS as u64;

    let started = std::time::Instant::now();
    let stores = peak_growth(all_at_once("store", |i| {
        let (backend, entry, key) = (Arc::clone(&h.backend), trees[i].entry(), keys[i].clone());
        async move {
            backend
                .store(&task(), &key, &entry, CachePolicy::Normal)
                .await
        }
    }))
    .await;
    let stored_in = started.elapsed();

    let mut hits = Vec::new();
    for key in keys.iter() {
        let digest = Digest::parse(key).expect("a valid key");
        let found = h
            .backend
            .lookup(&task(), &digest, CachePolicy::Normal)
            .await;
        hits.push(expect_ok(found, "lookup").unwrap_or_else(|| panic!("{key} was stored")));
    }
    let fast = Arc::new(Cache::new(Discard, crate::spawn_blocking));
    let started = std::time::Instant::now();
    let imports = peak_growth(async {
        let copied = all_at_once("import", |i| {
            let (fast, hit) = (Arc::clone(&fast), hits[i].clone());
            async move { fast.import(&task(), &hit, CachePolicy::Normal).await }
        })
        .await;
        assert!(copied.iter().all(Option::is_some), "every hit was copied");
    })
    .await;
    let imported_in = started.elapsed();

    let caps = &h.capabilities;
    let bound = cache_core::storage::WINDOW_BUDGET
        + caps.memory_per_process
        + CALLS as u64 * caps.memory_per_call;
    let kept = if caps.in_process_data { data } else { 0 };
    let mib = |b: Option<u64>| b.map_or_else(|| "?".to_owned(), |b| (b / MIB).to_string());
    let report = format!(
        "{} MiB in {CALLS} entries on {}: stores grew the peak by {} MiB ({stored_in:.1?}), \
         imports by {} MiB ({imported_in:.1?}); bound {} MiB + allowance {} MiB{}",
        data / MIB,
        h.backend.name(),
        mib(stores),
        mib(imports),
        bound / MIB,
        MEMORY_ALLOWANCE / MIB,
        if kept > 0 {
            format!(
                " (+ {} MiB kept in memory by the backend, for stores)",
                kept / MIB
            )
        } else {
            String::new()
        }
    );
    println!("{report}");
    if std::env::var("NEXTEST_EXECUTION_MODE").as_deref() != Ok("process-per-test") {
        println!("(not checked: other tests may share this process; run it under nextest)");
        return;
    }
    if let Some(grown) = stores {
        assert!(
            grown <= bound + MEMORY_ALLOWANCE + kept,
            "concurrent stores: {report}"
        );
    }
    if let Some(grown) = imports {
        assert!(
            grown <= bound + MEMORY_ALLOWANCE,
            "concurrent imports: {report}"
        );
    }
}
