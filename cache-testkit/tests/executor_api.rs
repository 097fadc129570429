//! What an executor author gets from the crates alone: output collection from declared
//! paths, the documented stack of combinators, and metrics that count what moved.

use cache_core::{
    Cache, CacheBackend, CacheEntry, CachePolicy, CircuitBreaker, Deadline, Deadlines, Digest,
    Instrumented, RelPath, Tiered, collect_outputs,
};
use cache_testkit::fixtures::{TempWorkspace, fresh_key, task};
use cache_testkit::{MemoryStorage, spawn_blocking, tokio_sleep};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collected_outputs_go_through_the_documented_stack_and_are_counted() {
    let ws = TempWorkspace::new();
    ws.write("dist/app.js", &[b'a'; 1000], false);
    ws.write("dist/bin/tool", &[b'b'; 500], true);
    ws.mkdir("dist/empty");
    let root = ws.root().to_path_buf();
    let outputs = tokio::task::spawn_blocking(move || {
        collect_outputs(&root, &[RelPath::parse("dist").unwrap()])
    })
    .await
    .unwrap()
    .unwrap();

    // The stack the crate docs show: a fast tier in front of a shared tier that is
    // bounded by deadlines and skipped by a breaker when it keeps failing; metrics on top.
    let fast: Arc<dyn CacheBackend> = Arc::new(Cache::new(MemoryStorage::new(), spawn_blocking));
    let shared: Arc<dyn CacheBackend> = Arc::new(Cache::new(MemoryStorage::new(), spawn_blocking));
    let shared = Arc::new(CircuitBreaker::new(
        Arc::new(Deadline::new(
            shared,
            Deadlines::new(Duration::from_secs(30)),
            tokio_sleep(),
        )),
        3,
    ));
    let cache = Instrumented::new(Arc::new(Tiered::new(fast, shared)));
    let metrics = cache.metrics();

    let key = fresh_key();
    let entry = CacheEntry {
        stdout: Some(b"built\n".to_vec()),
        outputs,
        ..CacheEntry::default()
    };
    cache
        .store(&task(), &key, &entry, CachePolicy::Normal)
        .await
        .unwrap();
    assert_eq!(
        metrics.bytes_up.load(Ordering::Relaxed),
        1000 + 500 + 6,
        "file outputs the caller did not hash count as bytes up"
    );

    let restored = TempWorkspace::new();
    let hit = cache
        .lookup(&task(), &Digest::parse(&key).unwrap(), CachePolicy::Normal)
        .await
        .unwrap()
        .expect("hit");
    hit.restore(restored.root()).await.unwrap();
    restored.tree().assert_same(&ws.tree(), "restored tree");
}
