//! Model-based test: random operation sequences against a reference.

use crate::Harness;
use crate::MemoryBackend;
use crate::fixtures::{
    OutputTree, TempWorkspace, Tree, fresh_key, fresh_seed, pattern_bytes, task,
};
use cache_core::{
    BackendResult, CacheBackend, CacheEntry, CachePolicy, LogBytes, policy_allows_read,
    policy_allows_write,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRunner};
use std::collections::HashMap;
use std::sync::Arc;

const KEYS: usize = 3;
const VARIANTS: usize = 4;
/// Sequences tried per run: enough to mix every operation, few enough for seconds.
const CASES: u32 = 24;

#[derive(Debug, Clone)]
enum Op {
    Store {
        key: usize,
        variant: usize,
        policy: CachePolicy,
    },
    Check {
        key: usize,
        policy: CachePolicy,
    },
    Restore {
        key: usize,
    },
    Logs {
        key: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let policy = || proptest::sample::select(CachePolicy::ALL.to_vec());
    prop_oneof![
        (0..KEYS, 0..VARIANTS, policy()).prop_map(|(key, variant, policy)| Op::Store {
            key,
            variant,
            policy
        }),
        (0..KEYS, policy()).prop_map(|(key, policy)| Op::Check { key, policy }),
        (0..KEYS).prop_map(|key| Op::Restore { key }),
        (0..KEYS).prop_map(|key| Op::Logs { key }),
    ]
}

/// Entry `v` of a run: logs absent, empty, inline and blob-sized; every output kind.
fn variant(salt: u64, v: usize, symlinks: bool) -> (OutputTree, CacheEntry) {
    let (tree, stdout, stderr, exit_code, duration_ms) = match v {
        0 => (OutputTree::new(), Some(b"zero\n".to_vec()), None, 0, 0),
        1 => (
            OutputTree::new().file("x.txt", format!("one {salt}"), false),
            None,
            Some(pattern_bytes(salt, 70 << 10)),
            1,
            10,
        ),
        2 => {
            let t = OutputTree::new()
                .file("x.txt", format!("two {salt}"), true)
                .dir("d");
            let t = if symlinks { t.symlink("l", "x.txt") } else { t };
            (t, Some(Vec::new()), Some(b"warning\n".to_vec()), 0, 20)
        }
        _ => (
            OutputTree::new()
                .file("y/z.bin", pattern_bytes(salt ^ 3, 3000), false)
                .dir("y/empty"),
            Some(pattern_bytes(salt ^ 4, 100 << 10)),
            Some(b"err".to_vec()),
            -3,
            77,
        ),
    };
    let entry = CacheEntry {
        stdout,
        stderr,
        exit_code,
        duration_ms,
        ..tree.entry()
    };
    (tree, entry)
}

/// What one operation returned, in comparable form.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Stored,
    Lookup {
        hit: bool,
        exit_code: Option<i32>,
        duration_ms: Option<u64>,
    },
    Restored(Tree),
    Logs(LogBytes),
    Error(&'static str),
}

impl Outcome {
    fn is_miss(&self) -> bool {
        matches!(
            self,
            Outcome::Lookup { hit: false, .. }
                | Outcome::Error("action_not_found" | "blob_not_found")
        )
    }
}

fn outcome<T>(r: BackendResult<T>, ok: impl FnOnce(T) -> Outcome) -> Outcome {
    match r {
        Ok(v) => ok(v),
        Err(e) => Outcome::Error(e.kind()),
    }
}

struct Run {
    keys: Vec<String>,
    variants: Vec<(OutputTree, CacheEntry)>,
}

async fn apply(backend: &dyn CacheBackend, run: &Run, op: &Op) -> Outcome {
    let t = task();
    match *op {
        Op::Store {
            key,
            variant,
            policy,
        } => outcome(
            backend
                .store(&t, &run.keys[key], &run.variants[variant].1, policy)
                .await,
            |()| Outcome::Stored,
        ),
        Op::Check { key, policy } => {
            outcome(backend.check(&t, &run.keys[key], policy).await, |r| {
                Outcome::Lookup {
                    hit: r.hit,
                    exit_code: r.exit_code,
                    duration_ms: r.cached_duration_ms,
                }
            })
        }
        Op::Restore { key } => {
            let ws = TempWorkspace::new();
            let r = backend.restore_outputs(&t, &run.keys[key], ws.root()).await;
            let out = outcome(r, |_| Outcome::Restored(ws.tree()));
            ws.assert_outside_unchanged();
            out
        }
        Op::Logs { key } => outcome(
            backend.get_log_bytes(&t, &run.keys[key]).await,
            Outcome::Logs,
        ),
    }
}

/// The reference model: which variant each key holds.
fn predict(model: &mut HashMap<usize, usize>, run: &Run, op: &Op) -> Outcome {
    match *op {
        Op::Store {
            key,
            variant,
            policy,
        } => {
            if policy_allows_write(policy) {
                model.insert(key, variant);
            }
            Outcome::Stored
        }
        Op::Check { key, policy } => match model.get(&key) {
            Some(&v) if policy_allows_read(policy) => Outcome::Lookup {
                hit: true,
                exit_code: Some(run.variants[v].1.exit_code),
                duration_ms: Some(run.variants[v].1.duration_ms),
            },
            _ => Outcome::Lookup {
                hit: false,
                exit_code: None,
                duration_ms: None,
            },
        },
        Op::Restore { key } => match model.get(&key) {
            Some(&v) => Outcome::Restored(run.variants[v].0.expected().clone()),
            None => Outcome::Error("action_not_found"),
        },
        Op::Logs { key } => match model.get(&key) {
            Some(&v) => {
                let e = &run.variants[v].1;
                Outcome::Logs((e.stdout.clone(), e.stderr.clone()))
            }
            None => Outcome::Error("action_not_found"),
        },
    }
}

fn short(o: &Outcome) -> String {
    let mut s = format!("{o:?}");
    if s.len() > 400 {
        let mut end = 400;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

async fn run_sequence(
    backend: &dyn CacheBackend,
    ops: &[Op],
    symlinks: bool,
    eviction: bool,
) -> Result<(), String> {
    let salt = fresh_seed();
    let run = Run {
        keys: (0..KEYS).map(|_| fresh_key()).collect(),
        variants: (0..VARIANTS).map(|v| variant(salt, v, symlinks)).collect(),
    };
    let reference = MemoryBackend::new();
    let mut model = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        let want = predict(&mut model, &run, op);
        let reference_got = apply(&reference, &run, op).await;
        if reference_got != want {
            return Err(format!(
                "step {i} {op:?}: the reference MemoryBackend returned {}, the model {}",
                short(&reference_got),
                short(&want)
            ));
        }
        let got = apply(backend, &run, op).await;
        let evicted = eviction && got.is_miss() && !want.is_miss();
        if got != want && !evicted {
            return Err(format!(
                "step {i} {op:?}: the backend returned {}, the reference {}",
                short(&got),
                short(&want)
            ));
        }
    }
    Ok(())
}

/// Random sequences of `store`/`check`/`restore_outputs`/`get_log_bytes` over three
/// keys, four entries and every policy agree with a reference model and with a
/// [`MemoryBackend`] run in lockstep (a backend declaring eviction may miss where the
/// model hits, never return other data). A failure is shrunk to a minimal sequence.
pub async fn model_state_machine(h: Harness) {
    let backend = Arc::clone(&h.backend);
    let symlinks = h.capabilities.symlinks;
    let eviction = h.capabilities.eviction;
    let handle = tokio::runtime::Handle::current();
    let result = tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(Config {
            cases: CASES,
            failure_persistence: None,
            max_shrink_iters: 256,
            ..Config::default()
        });
        runner.run(&proptest::collection::vec(op(), 1..16), |ops| {
            handle
                .block_on(run_sequence(backend.as_ref(), &ops, symlinks, eviction))
                .map_err(TestCaseError::fail)
        })
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, ops)) => {
            panic!("the backend disagrees with the model: {reason}\nminimal sequence: {ops:#?}")
        }
        Err(TestError::Abort(reason)) => panic!("the model test gave up: {reason}"),
    }
}
