//! The executor's memory stays bounded while many tasks store and restore large
//! outputs at once: outputs stream between the workspace and the tiers, never held
//! whole. Its own test binary, so the peak measured is this test's alone.

#![cfg(target_os = "linux")]

use cache_core::CacheBackend;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use taskcache_example_executor::{Config, Executor, Stack, shell_task};

const TASKS: usize = 16;
const FILE_BYTES: u64 = 8 << 20;
/// Peak resident memory of the whole test process. Holding each task's output whole
/// would take TASKS × FILE_BYTES (128 MiB) at once; streaming takes a few buffers per
/// task on top of the runtime (measured: 33 MiB in all, debug build, Linux).
const BOUND: u64 = 64 << 20;

/// The process's peak resident set (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_tasks_storing_and_restoring_8_mib_outputs_stay_under_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let shared: Arc<dyn CacheBackend> = Arc::new(
        cache_local::open(
            dir.path().join("shared"),
            cache_local::LocalOptions::default(),
        )
        .unwrap(),
    );
    let config = Config::default();
    let executor = |name: &str| {
        let local =
            cache_local::open(dir.path().join(name), cache_local::LocalOptions::default()).unwrap();
        Arc::new(Executor::new(
            Stack::new(Arc::new(local), shared.clone(), &config),
            config,
        ))
    };
    // Stored by one machine (both tiers), then copied from the shared tier and
    // restored by another.
    for (round, source) in [("cold", "runs"), ("warm", "hits")] {
        let ex = executor(round);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..TASKS {
            let ws = dir.path().join(format!("{round}-{i}"));
            std::fs::create_dir_all(&ws).unwrap();
            let id = format!("t{i}");
            let task = shell_task(
                &id,
                &format!("mkdir -p out/{id} && head -c {FILE_BYTES} /dev/urandom > out/{id}/big"),
            );
            let ex = ex.clone();
            set.spawn(async move {
                let o = ex.run(&task, &ws).await.unwrap();
                assert_eq!(o.exit_code, 0, "{o:?}");
                let big = ws.join(format!("out/{id}/big"));
                assert_eq!(std::fs::metadata(big).unwrap().len(), FILE_BYTES);
            });
        }
        set.join_all().await;
        let counted = match source {
            "runs" => &ex.counters.runs,
            _ => &ex.counters.hits,
        };
        assert_eq!(counted.load(Ordering::Relaxed), TASKS as u64, "{round}");
    }
    let peak = peak_rss();
    assert!(
        peak < BOUND,
        "peak RSS {} MiB, bound {} MiB",
        peak >> 20,
        BOUND >> 20
    );
    // The restored bytes are the stored run's.
    for i in 0..TASKS {
        let file =
            |round: &str| std::fs::read(dir.path().join(format!("{round}-{i}/out/t{i}/big")));
        assert!(file("cold").unwrap() == file("warm").unwrap(), "t{i}");
    }
}
