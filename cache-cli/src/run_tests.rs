use super::*;
use cache_core::Cache;
use cache_core::RelPath;
use cache_testkit::{
    BackendOp, FaultError, FaultPlan, FaultyBackend, FaultyStorage, MemoryBackend, MemoryStorage,
    StorageOp,
};
use std::sync::Arc;

/// A workspace, a task with one output, and a memory cache holding its result.
struct Setup {
    _dir: tempfile::TempDir,
    p: Prepared,
    task: Task,
    memory: Arc<dyn CacheBackend>,
    storage: MemoryStorage,
    /// Holds the memory cache's blob bytes on command.
    brake: cache_testkit::Brake,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let workspace = std::fs::canonicalize(dir.path()).unwrap();
    let spec = TaskSpec {
        command: vec!["make".into()],
        env: Vec::new(),
        inputs: Vec::new(),
        outputs: vec![RelPath::parse("out.txt").unwrap()],
        absolute_symlinks: false,
    };
    let (key, inputs) = task_key(&spec, &workspace, |_| None).unwrap();
    let digest = key;
    let key = key.to_string();
    let p = Prepared {
        workspace,
        spec,
        digest,
        key,
        inputs,
        id: "make".into(),
        cache: None,
        remote: None,
        max_log: 64 << 20,
        signing: backend::Signing::default(),
        deadlines: cache_core::Deadlines::default(),
        reapi: backend::ReapiSettings::default(),
    };
    let task = task_of(&p, CachePolicy::Normal);
    let backend = MemoryBackend::new();
    let storage = backend.storage().clone();
    let brake = backend.brake().clone();
    let memory: Arc<dyn CacheBackend> = Arc::new(backend);
    let entry = CacheEntry {
        outputs: vec![cache_core::CacheOutput::bytes(
            "out.txt",
            b"cached".to_vec(),
            false,
        )],
        stdout: Some(Vec::new()),
        stderr: Some(Vec::new()),
        ..CacheEntry::default()
    };
    runtime()
        .unwrap()
        .block_on(memory.store(&task, &p.key, &entry, CachePolicy::Normal))
        .unwrap();
    Setup {
        _dir: dir,
        p,
        task,
        memory,
        storage,
        brake,
    }
}

fn session(backend: Arc<dyn CacheBackend>) -> Session {
    Session {
        rt: runtime().unwrap(),
        opened: Opened {
            backend,
            describe: "test".into(),
            tiered: None,
            local: None,
        },
    }
}

fn hit(s: &Setup, session: &Session) -> Option<u8> {
    try_hit(
        &s.p,
        &s.task,
        CachePolicy::Normal,
        session,
        false,
        Instant::now(),
    )
    .ok()
}

#[test]
fn a_healthy_cache_hits_and_restores() {
    let s = setup();
    assert_eq!(hit(&s, &session(Arc::clone(&s.memory))), Some(0));
    let out = std::fs::read(s.p.workspace.join("out.txt")).unwrap();
    assert_eq!(out, b"cached");
}

#[test]
fn cache_errors_mean_running_the_command() {
    let s = setup();
    let lookup_fails = Arc::new(FaultyBackend::new(
        Arc::clone(&s.memory),
        FaultPlan::always(FaultError::Unavailable).only([BackendOp::Lookup]),
    ));
    assert_eq!(hit(&s, &session(lookup_fails.clone())), None);
    assert_eq!(lookup_fails.faults().injected(), 1);
    // Every storage call of a hit, failing with a cache fault.
    for (op, error) in [
        (StorageOp::GetEntry, FaultError::Unavailable),
        (
            StorageOp::GetEntry,
            FaultError::Io(std::io::ErrorKind::PermissionDenied),
        ),
        (StorageOp::FindMissingBlobs, FaultError::Connection),
        (StorageOp::OpenBlobs, FaultError::BlobNotFound),
        (StorageOp::OpenBlobs, FaultError::Connection),
    ] {
        let faulty = Arc::new(Cache::new(
            FaultyStorage::new(
                s.storage.clone(),
                FaultPlan::always(error.clone()).only([op]),
            ),
            cache_testkit::spawn_blocking,
        ));
        assert_eq!(
            hit(&s, &session(faulty.clone())),
            None,
            "{op:?} failing with {error:?} must fall back to running"
        );
        assert_eq!(faulty.storage().faults().injected(), 1, "{op:?} {error:?}");
    }
    // A blob whose bytes are wrong: refused, and the command runs.
    let blob = cache_core::BlobRef::of(cache_core::DigestAlgorithm::Blake3, b"cached");
    runtime()
        .unwrap()
        .block_on(cache_testkit::Tamper::flip_blob_byte(&s.storage, &blob))
        .unwrap();
    assert_eq!(hit(&s, &session(Arc::clone(&s.memory))), None);
    assert_ne!(
        std::fs::read(s.p.workspace.join("out.txt")).ok().as_deref(),
        Some(&b"cachef"[..]),
        "no wrong byte reaches the workspace"
    );
}

/// Issue 22: a restore that times out, then the command runs and writes its
/// output; whatever the abandoned restore does afterwards leaves that output (bytes
/// and time) alone. Through `try_hit` and the runner, as `run` does it, with the
/// cache under a `Deadline` as `backend::bounded` puts it, on a clock fired once the
/// restore is held (so the timeout never depends on the machine's speed).
#[test]
fn a_timed_out_restore_never_writes_over_the_commands_output() {
    let s = setup();
    let clock = cache_testkit::ManualClock::new();
    let bounded: Arc<dyn CacheBackend> = Arc::new(cache_core::Deadline::new(
        Arc::clone(&s.memory),
        cache_core::Deadlines::new(Duration::from_secs(1)),
        clock.sleep(),
    ));
    let session = session(bounded);
    // The restore's first blob read is held until released below; the deadline
    // passes once it is.
    s.brake.hold_after(0);
    let firing = {
        let (brake, clock) = (s.brake.clone(), clock.clone());
        std::thread::spawn(move || {
            let give_up = Instant::now() + Duration::from_secs(60);
            while brake.held() == 0 && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(2));
            }
            clock.fire();
        })
    };
    assert_eq!(hit(&s, &session), None, "a held restore times out");
    firing.join().unwrap();
    let command: Vec<OsString> = ["sh", "-c", "printf fresh > out.txt"]
        .iter()
        .map(OsString::from)
        .collect();
    let ran = crate::runner::run(&command, &s.p.workspace, 1 << 20).unwrap();
    assert_eq!(ran.exit_code, 0);
    let out = s.p.workspace.join("out.txt");
    let written = std::fs::metadata(&out).unwrap().modified().unwrap();
    s.brake.release();
    let give_up = Instant::now() + Duration::from_secs(60);
    while s.brake.live() > 0 {
        assert!(Instant::now() < give_up, "the restore's job never stopped");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        std::fs::read(&out).unwrap(),
        b"fresh",
        "the late restore wrote"
    );
    assert_eq!(
        std::fs::metadata(&out).unwrap().modified().unwrap(),
        written
    );
    let leftovers: Vec<_> = std::fs::read_dir(&s.p.workspace)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with(".taskcache-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn a_remote_that_is_down_costs_one_call_per_run() {
    let s = setup();
    for error in [FaultError::Unavailable, FaultError::Connection] {
        let down = Arc::new(FaultyBackend::new(
            Arc::new(MemoryBackend::new()),
            FaultPlan::always(error.clone()),
        ));
        let local: Arc<dyn CacheBackend> = Arc::new(MemoryBackend::new());
        let opened = crate::backend::tiered(
            local,
            down.clone(),
            "test".into(),
            cache_core::Deadlines::default(),
        );
        let session = Session {
            rt: runtime().unwrap(),
            opened,
        };
        // One run: the lookup meets the dead remote, and the store after the
        // command skips it (drill remote: a frozen server cost a run two deadlines
        // when only three failures in a row opened the breaker).
        assert_eq!(hit(&s, &session), None);
        let entry = CacheEntry::default();
        session
            .rt
            .block_on(
                session
                    .opened
                    .backend
                    .store(&s.task, &s.p.key, &entry, CachePolicy::Normal),
            )
            .unwrap();
        assert_eq!(
            down.faults().calls(),
            1,
            "the remote was called after the breaker opened ({error:?})"
        );
    }
}

#[test]
fn a_cached_failure_needs_cache_failures_to_replay() {
    let s = setup();
    let key = s.p.key.clone();
    let failed = CacheEntry {
        exit_code: 4,
        ..CacheEntry::default()
    };
    let b = Arc::clone(&s.memory);
    let session = session(b);
    session
        .rt
        .block_on(
            session
                .opened
                .backend
                .store(&s.task, &key, &failed, CachePolicy::Normal),
        )
        .unwrap();
    assert_eq!(hit(&s, &session), None);
    assert_eq!(
        try_hit(
            &s.p,
            &s.task,
            CachePolicy::Normal,
            &session,
            true,
            Instant::now()
        )
        .ok(),
        Some(4)
    );
}

#[test]
fn command_lines_are_quoted_readably() {
    let c = |v: &[&str]| command_line(&v.iter().map(OsString::from).collect::<Vec<_>>());
    assert_eq!(c(&["make", "-j4", "all"]), "make -j4 all");
    assert_eq!(c(&["sh", "-c", "echo hi"]), "sh -c 'echo hi'");
    assert_eq!(c(&["echo", "it's", ""]), r"echo 'it'\''s' ''");
}

#[test]
fn exit_codes_fit_a_byte() {
    assert_eq!(exit_byte(0), 0);
    assert_eq!(exit_byte(143), 143);
    assert_eq!(exit_byte(-1), 1);
    assert_eq!(exit_byte(256), 1);
}
