//! The example executor against a flaky shared tier: outages, hangs, a tier that
//! refuses writes. Every task's outputs must be a real run's, a cancelled restore
//! must not write late, and the breaker must let the healed tier back in.

use cache_core::{Cache, CacheBackend};
use cache_local::LocalStorage;
use cache_testkit::{FaultError, FaultPlan, FaultyStorage, StorageOp};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use taskcache_example_executor::{Config, Executor, Source, Stack, shell_task, snapshot};

type Shared = Arc<Cache<FaultyStorage<LocalStorage>>>;

struct Fixture {
    dir: tempfile::TempDir,
    shared: Shared,
    config: Config,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::open(
            dir.path().join("shared"),
            cache_local::LocalOptions::default(),
        )
        .unwrap();
        let shared = Arc::new(Cache::new(
            FaultyStorage::new(storage, FaultPlan::healthy()),
            |job| {
                tokio::task::spawn_blocking(job);
            },
        ));
        let config = Config {
            cache_budget: Duration::from_millis(300),
            breaker_cooldown: Duration::from_millis(50),
            ..Config::default()
        };
        Fixture {
            dir,
            shared,
            config,
        }
    }

    fn plan(&self, plan: FaultPlan<StorageOp>) {
        self.shared.storage().faults().set_plan(plan);
    }

    /// An executor with a new, empty local tier (a fresh CI machine) and the shared tier.
    fn executor(&self, name: &str) -> Arc<Executor> {
        let local = cache_local::open(
            self.dir.path().join(name),
            cache_local::LocalOptions::default(),
        )
        .unwrap();
        let shared: Arc<dyn CacheBackend> = self.shared.clone();
        Arc::new(Executor::new(
            Stack::new(Arc::new(local), shared, &self.config),
            self.config,
        ))
    }

    fn workspace(&self, name: &str) -> PathBuf {
        let ws = self.dir.path().join("ws").join(name);
        std::fs::create_dir_all(&ws).unwrap();
        ws.canonicalize().unwrap()
    }
}

/// A task whose outputs differ on every run (the shell's pid), so a restore can be told
/// from a run.
fn task(i: usize) -> cache_core::Task {
    let id = format!("t{i}");
    shell_task(
        &id,
        &format!(
            "mkdir -p out/{id}/sub && echo {i} > out/{id}/n && echo $$ > out/{id}/sub/pid && echo ran {i} && echo warn {i} >&2"
        ),
    )
}

/// Runs tasks `ids` at once, each in workspace `<round>-<i>`; returns each workspace.
async fn run_all(f: &Fixture, ex: &Arc<Executor>, round: &str, ids: &[usize]) -> Vec<PathBuf> {
    let mut set = tokio::task::JoinSet::new();
    for &i in ids {
        let (ex, ws) = (ex.clone(), f.workspace(&format!("{round}-{i}")));
        set.spawn(async move {
            let o = ex.run(&task(i), &ws).await.unwrap();
            assert_eq!(o.exit_code, 0);
            assert_eq!(o.stdout, format!("ran {i}\n").as_bytes(), "{o:?}");
            assert_eq!(o.stderr, format!("warn {i}\n").as_bytes(), "{o:?}");
            (i, ws)
        });
    }
    let mut done = set.join_all().await;
    done.sort();
    done.into_iter().map(|(_, ws)| ws).collect()
}

fn outputs(ws: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    snapshot(&ws.join("out")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tasks_restore_a_real_runs_outputs_and_a_cancelled_restore_writes_nothing_late()
{
    let f = Fixture::new();
    let ids: Vec<usize> = (0..16).collect();
    // Cold: every task runs and is stored in both tiers.
    let cold = f.executor("cold");
    let real = run_all(&f, &cold, "cold", &ids).await;
    assert_eq!(cold.counters.runs.load(Ordering::Relaxed), 16);
    assert_eq!(cold.counters.stored.load(Ordering::Relaxed), 16);

    // A new machine, healthy shared tier: every task is a hit with the stored run's bytes.
    let warm = f.executor("warm");
    let hits = run_all(&f, &warm, "warm", &ids).await;
    assert_eq!(warm.counters.hits.load(Ordering::Relaxed), 16);
    for (real, hit) in real.iter().zip(&hits) {
        assert_eq!(outputs(real), outputs(hit), "{}", hit.display());
    }

    // Another new machine, and the shared tier hangs reading blobs, longer than the
    // task's cache budget: every copy from it is cancelled mid-way and the task runs.
    let hang = Duration::from_millis(900);
    f.plan(
        FaultPlan::healthy()
            .only([StorageOp::OpenBlobs])
            .with_latency(hang),
    );
    let stalled = f.executor("hung");
    let ran = run_all(&f, &stalled, "hung", &ids).await;
    assert_eq!(stalled.counters.runs.load(Ordering::Relaxed), 16);
    assert!(stalled.counters.cancelled.load(Ordering::Relaxed) >= 16);
    let right_after: Vec<_> = ran.iter().map(|ws| outputs(ws)).collect();
    for (real, now) in real.iter().zip(&right_after) {
        // Runs, not restores: the pid differs from the stored run's.
        assert_ne!(&outputs(real), now);
    }
    // Past the hang: a cancelled copy or restore that went on would have written the
    // stored run's bytes over the run's by now.
    tokio::time::sleep(hang * 2).await;
    for (ws, then) in ran.iter().zip(&right_after) {
        assert_eq!(
            &outputs(ws),
            then,
            "a cancelled restore wrote late: {}",
            ws.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_breaker_skips_a_dead_shared_tier_and_lets_it_back_when_it_heals() {
    let f = Fixture::new();
    f.plan(FaultPlan::always(FaultError::Unavailable));
    // One long-lived executor for the whole test.
    let ex = f.executor("local");
    let ws = run_all(&f, &ex, "down", &[0, 1, 2, 3, 4, 5]).await;
    assert!(ex.stack().breaker.is_open(), "an outage opens the breaker");
    for w in &ws {
        assert_eq!(outputs(w).len(), 2, "the tasks ran and wrote their outputs");
    }
    let injected = f.shared.storage().faults().injected();

    // The tier heals; after the cool-down the next call is the breaker's trial. Bounded:
    // each try waits one cool-down.
    f.plan(FaultPlan::healthy());
    let mut next = 10;
    while ex.stack().breaker.is_open() {
        assert!(next < 60, "the breaker never closed after the tier healed");
        tokio::time::sleep(f.config.breaker_cooldown).await;
        run_all(&f, &ex, "healed", &[next]).await;
        next += 1;
    }
    assert_eq!(f.shared.storage().faults().injected(), injected);
    // The task run after the heal reached the shared tier: a new machine hits it.
    let fresh = f.executor("fresh");
    let ws = f.workspace("fresh");
    let o = fresh.run(&task(next - 1), &ws).await.unwrap();
    assert_eq!(o.source, Source::Cache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_tier_that_refuses_writes_is_still_read() {
    let f = Fixture::new();
    let seeded = f.executor("seed");
    let real = run_all(&f, &seeded, "seed", &[0]).await;
    // A read-only token from now on: writes refused by permission.
    f.plan(
        FaultPlan::always(FaultError::PermissionDenied)
            .only([StorageOp::PutBlobs, StorageOp::PutEntry]),
    );
    let ex = f.executor("reader");
    let served = run_all(&f, &ex, "reader", &[0, 1, 2]).await;
    assert_eq!(
        ex.counters.hits.load(Ordering::Relaxed),
        1,
        "the seeded task is read"
    );
    assert_eq!(outputs(&real[0]), outputs(&served[0]));
    assert_eq!(ex.counters.runs.load(Ordering::Relaxed), 2);
    assert_eq!(
        ex.counters.stored.load(Ordering::Relaxed),
        2,
        "stored locally"
    );
    assert!(
        ex.stack()
            .tiers
            .shared_writes_refused
            .load(Ordering::Relaxed)
            >= 1
    );
    assert!(!ex.stack().breaker.is_open(), "a refusal is not an outage");
    // Kept locally: the same machine hits them.
    let again = run_all(&f, &ex, "again", &[1, 2]).await;
    assert_eq!(ex.counters.hits.load(Ordering::Relaxed), 3);
    assert_eq!(outputs(&served[1]), outputs(&again[0]));
    // Not in the shared tier: a new machine runs them.
    f.plan(FaultPlan::healthy());
    let fresh = f.executor("fresh");
    run_all(&f, &fresh, "fresh", &[1]).await;
    assert_eq!(fresh.counters.runs.load(Ordering::Relaxed), 1);
}
