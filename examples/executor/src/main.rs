//! The example executor as a program: 32 tasks at once, twice, through a local tier
//! and a shared tier that hangs, goes down and comes back (`cargo run -p
//! taskcache-example-executor`). It prints what it saw.

use cache_testkit::{FaultError, FaultPlan, FaultyStorage, StorageOp};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use taskcache_example_executor::{Config, Executor, Stack, shell_task};

#[tokio::main]
async fn main() -> Result<(), taskcache_example_executor::Error> {
    let dir = tempfile::tempdir()?;
    // The shared tier: a local store behind fault injection (a real one would be an
    // object store, e.g. `cache_s3`).
    let shared = Arc::new(cache_core::Cache::new(
        FaultyStorage::new(
            cache_local::LocalStorage::open(
                dir.path().join("shared"),
                cache_local::LocalOptions::default(),
            )?,
            FaultPlan::healthy(),
        ),
        |job| {
            tokio::task::spawn_blocking(job);
        },
    ));
    let config = Config {
        cache_budget: Duration::from_millis(500),
        breaker_cooldown: Duration::from_millis(200),
        ..Config::default()
    };
    for (round, plan) in [
        ("cold, shared tier healthy", FaultPlan::healthy()),
        (
            "new local tier, shared tier hangs on blob reads",
            FaultPlan::healthy()
                .only([StorageOp::OpenBlobs])
                .with_latency(Duration::from_secs(2)),
        ),
        (
            "new local tier, shared tier down",
            FaultPlan::always(FaultError::Unavailable),
        ),
        ("new local tier, shared tier back", FaultPlan::healthy()),
    ] {
        shared.storage().faults().set_plan(plan);
        // A fresh local tier each round, as on a new CI machine.
        let local =
            cache_local::open(dir.path().join(round), cache_local::LocalOptions::default())?;
        let stack = Stack::new(Arc::new(local), shared.clone(), &config);
        let executor = Arc::new(Executor::new(stack, config));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..32 {
            let (executor, ws) = (executor.clone(), dir.path().join(format!("ws-{round}-{i}")));
            tasks.spawn(async move {
                std::fs::create_dir_all(&ws)?;
                let id = format!("t{i}");
                let task = shell_task(&id, &format!("mkdir -p out/{id} && echo {i} > out/{id}/n"));
                executor.run(&task, &ws).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        let c = &executor.counters;
        println!(
            "{round}: {} hits, {} runs, {} cancelled, {} degraded, {} stored; breaker {}",
            c.hits.load(Ordering::Relaxed),
            c.runs.load(Ordering::Relaxed),
            c.cancelled.load(Ordering::Relaxed),
            c.degraded.load(Ordering::Relaxed),
            c.stored.load(Ordering::Relaxed),
            if executor.stack().breaker.is_open() {
                "open"
            } else {
                "closed"
            },
        );
    }
    Ok(())
}
