//! End-to-end tests of the trust boundary and housekeeping: undeclared paths, planted
//! links, signed entries, someone else's directory, GC's grace, signals.

#![cfg(unix)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use support::{COUNTING, Fixture, exec, walk};

/// A hit writes only the declared outputs: an entry in the cache that also lists an
/// executable git hook and a Makefile (a cache writer's attack) is refused whole, the
/// command runs, and neither file is written.
#[test]
fn a_hit_never_writes_an_undeclared_path() {
    use cache_core::storage::{ActionRecord, OutputRecord};
    let f = Fixture::new();
    assert_eq!(f.sh(&["-o", "out.txt"], COUNTING).code, 0);
    assert_eq!(f.runs(), 1);
    // Rewrite the stored entry: the same, plus two paths the task never declared.
    let entries: Vec<PathBuf> = walk(&f.cache.join("entries"));
    assert_eq!(entries.len(), 1, "{entries:?}");
    let name = entries[0].file_name().unwrap().to_str().unwrap().to_owned();
    let alg = entries[0]
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let key = cache_core::Digest::parse(&format!("{alg}:{name}")).unwrap();
    let mut record = ActionRecord::decode(&key, &fs::read(&entries[0]).unwrap()).unwrap();
    let Some(OutputRecord::File { blob, .. }) = record
        .outputs
        .iter()
        .find(|o| o.path() == "out.txt")
        .cloned()
    else {
        panic!("out.txt is a file output: {record:?}")
    };
    for path in [".git/hooks/post-checkout", "Makefile"] {
        record.outputs.push(OutputRecord::File {
            path: path.into(),
            blob,
            executable: true,
        });
    }
    fs::write(&entries[0], record.encode().unwrap()).unwrap();

    fs::remove_file(f.ws.join("out.txt")).unwrap();
    let o = f.sh(&["-o", "out.txt", "-v"], COUNTING);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(f.runs(), 2, "the tampered entry must not be a hit: {o:?}");
    assert!(!f.ws.join(".git").exists(), "a git hook was written");
    assert!(!f.ws.join("Makefile").exists(), "a Makefile was written");
    assert!(o.stderr.contains("does not declare"), "{o:?}");
}

/// `verify` reports links planted in the cache's layout, removes them without
/// following them, and exits 1 like fsck.
#[test]
fn verify_reports_and_removes_planted_links() {
    let f = Fixture::new();
    assert_eq!(f.sh(&["-o", "out.txt"], COUNTING).code, 0);
    let outside = f.root.join("precious.txt");
    fs::write(&outside, "keep me").unwrap();
    let blob_dir = walk(&f.cache.join("blobs"))[0]
        .parent()
        .unwrap()
        .to_path_buf();
    let fan = blob_dir.file_name().unwrap().to_str().unwrap().to_owned();
    let planted = blob_dir.join(format!("{fan}{}", "0".repeat(62)));
    std::os::unix::fs::symlink(&outside, &planted).unwrap();
    let v = f.run(&["verify"]);
    assert_eq!(v.code, 1, "{v:?}");
    assert!(v.stdout_str().contains("1 planted"), "{v:?}");
    assert!(
        fs::symlink_metadata(&planted).is_err(),
        "the link was removed"
    );
    assert_eq!(fs::read_to_string(&outside).unwrap(), "keep me");
    assert_eq!(f.run(&["verify"]).code, 0, "clean afterwards");
}

/// Signed entries end to end: `keygen`, a trusted writer signs, a reader that trusts
/// its key hits; an unsigned entry is a miss for that reader (the command runs); a
/// malformed key is a usage error that does not echo it.
#[test]
fn signed_entries_with_keygen_signing_and_trusted_keys() {
    let f = Fixture::new();
    let (secret, public) = f.keygen();
    assert!(secret.starts_with("taskcache-sk-") && public.starts_with("taskcache-pk-"));

    let run = |env: &[(&str, &str)], opts: &[&str]| {
        let mut c = f.cmd();
        for (k, v) in env {
            c.env(k, v);
        }
        c.arg("run").args(opts).args(["--", "sh", "-c", COUNTING]);
        exec(c)
    };
    let trusted = [("TASKCACHE_TRUSTED_KEYS", public.as_str())];
    // Unsigned entry (no key): the trusting reader does not use it.
    assert_eq!(run(&[], &["-o", "out.txt"]).code, 0);
    assert_eq!(f.runs(), 1);
    let o = run(&trusted, &["-o", "out.txt", "-v"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(
        f.runs(),
        2,
        "an unsigned entry must not be a hit for a trusting reader"
    );
    // A trusted writer (it signs, and trusts its own key, so the unsigned entry is a
    // miss for it too): it runs and stores a signed entry; now the reader hits.
    let writer = [
        ("TASKCACHE_SIGNING_KEY", secret.as_str()),
        ("TASKCACHE_TRUSTED_KEYS", public.as_str()),
    ];
    assert_eq!(run(&writer, &["-o", "out.txt"]).code, 0);
    assert_eq!(f.runs(), 3);
    fs::remove_file(f.ws.join("out.txt")).unwrap();
    let o = run(&trusted, &["-o", "out.txt"]);
    assert_eq!((o.code, f.runs()), (0, 3), "{o:?}");
    assert_eq!(
        fs::read_to_string(f.ws.join("out.txt")).unwrap(),
        "result\n"
    );
    // Malformed keys: exit 2, named, never echoed.
    for (name, value) in [
        ("TASKCACHE_SIGNING_KEY", format!("{}x", &secret[..40])),
        ("TASKCACHE_TRUSTED_KEYS", secret.clone()),
    ] {
        let o = run(&[(name, value.as_str())], &["-o", "out.txt"]);
        assert_eq!(o.code, 2, "{name}: {o:?}");
        assert!(o.stderr.contains(name), "{o:?}");
        assert!(
            !o.stderr.contains(&secret[13..40]),
            "{name} was echoed: {o:?}"
        );
    }
    assert_eq!(f.runs(), 3);
}

/// No command takes over a directory that is not a cache: housekeeping on a missing
/// cache says so and creates nothing; housekeeping refuses a non-empty directory
/// without `LAYOUT` (exit 2), a run does not use it (a warning; the command runs
/// uncached), and nothing touches anything in it; a run may start a cache only in a new
/// or empty directory.
#[test]
fn no_command_takes_over_someone_elses_directory() {
    let f = Fixture::new();
    let missing = f.root.join("no-cache-here");
    for cmd in [&["stats"][..], &["verify"], &["gc", "--max-size", "1MiB"]] {
        let mut args = cmd.to_vec();
        args.extend(["--cache", missing.to_str().unwrap()]);
        let o = f.run(&args);
        assert_ne!(o.code, 0, "{args:?}: {o:?}");
        assert!(o.stderr.contains("no cache"), "{args:?}: {o:?}");
        assert!(!missing.exists(), "{args:?} created a cache");
    }
    // Someone's project, with an old file under tmp/.
    let theirs = f.root.join("project");
    fs::create_dir_all(theirs.join("tmp")).unwrap();
    fs::write(theirs.join("tmp/notes.txt"), "two hours of notes").unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    fs::File::options()
        .write(true)
        .open(theirs.join("tmp/notes.txt"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let t = theirs.to_str().unwrap();
    for args in [
        vec!["stats", "--cache", t],
        vec!["verify", "--cache", t],
        vec!["gc", "--max-size", "0", "--cache", t],
    ] {
        let o = f.run(&args);
        assert_eq!(o.code, 2, "{args:?}: {o:?}");
        assert!(
            o.stderr.contains("not a taskcache cache"),
            "{args:?}: {o:?}"
        );
    }
    assert_eq!(f.runs(), 0, "the command ran");
    let o = f.sh(&["--cache", t, "-o", "out.txt"], COUNTING);
    assert_eq!((o.code, f.runs()), (0, 1), "{o:?}");
    assert!(o.stderr.contains("not a taskcache cache"), "{o:?}");
    assert_eq!(
        fs::read_to_string(theirs.join("tmp/notes.txt")).unwrap(),
        "two hours of notes"
    );
    assert!(!theirs.join("LAYOUT").exists() && !theirs.join("blobs").exists());
    // An empty directory may become a cache.
    let empty = f.root.join("empty");
    fs::create_dir(&empty).unwrap();
    let o = f.sh(
        &["--cache", empty.to_str().unwrap(), "-o", "out.txt"],
        COUNTING,
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert!(empty.join("LAYOUT").exists());
}

/// A used cache whose `LAYOUT` was deleted and that got a stray file no longer looks
/// like a cache: it is not used, but that never fails the step. `run` warns (what is
/// wrong, what to do), runs the command with its own exit code and writes nothing into
/// it (no `LAYOUT`, statistics, manifest, entry or blob), also when it is the
/// `--remote`; `key --explain` still explains; `stats`, `verify` and `gc` refuse it
/// (exit 2), also without writing.
#[test]
fn a_tampered_cache_directory_never_fails_the_step() {
    let f = Fixture::new();
    let task = ["--id", "t", "-o", "out.txt"];
    assert_eq!(f.sh(&task, COUNTING).code, 0);
    assert_eq!(f.runs(), 1);
    fs::remove_file(f.cache.join("LAYOUT")).unwrap();
    fs::write(f.cache.join("stray.txt"), "planted").unwrap();
    fs::remove_file(f.ws.join("out.txt")).unwrap();
    let before = support::listing(&f.cache);

    let failing = "echo ran >> ../counter; printf 'result\\n' > out.txt; exit 3";
    let o = f.sh(&task, failing);
    assert_eq!((o.code, f.runs()), (3, 2), "{o:?}");
    let warned = |o: &support::Out| {
        o.stderr.contains(f.cache.to_str().unwrap())
            && o.stderr.contains("not a taskcache cache")
            && o.stderr.contains("uncached")
            && o.stderr.contains("delete it")
    };
    assert!(warned(&o), "{o:?}");
    // A successful run, -v, --cache-failures: still nothing stored there.
    let o = f.sh(
        &["-v", "--cache-failures", "--id", "t", "-o", "out.txt"],
        COUNTING,
    );
    assert_eq!((o.code, f.runs()), (0, 3), "{o:?}");
    assert!(warned(&o), "{o:?}");
    assert_eq!(support::listing(&f.cache), before, "a run wrote into it");

    // As the shared tier: the local cache works, the damaged one is left alone.
    let local = f.root.join("fresh");
    let remote = ["--cache", local.to_str().unwrap(), "--remote"];
    let mut args = remote.to_vec();
    args.extend([f.cache.to_str().unwrap(), "-o", "out.txt"]);
    let o = f.sh(&args, COUNTING);
    assert_eq!((o.code, f.runs()), (0, 4), "{o:?}");
    assert!(o.stderr.contains("not a taskcache cache"), "{o:?}");
    assert_eq!(f.sh(&args, COUNTING).code, 0);
    assert_eq!(f.runs(), 4, "the local tier was not used");
    assert_eq!(support::listing(&f.cache), before, "a run wrote into it");

    let mut c = f.cmd();
    c.args([
        "key",
        "--explain",
        "--id",
        "t",
        "-o",
        "out.txt",
        "--",
        "true",
    ]);
    let o = exec(c);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout_str().contains("key: "), "{o:?}");
    for cmd in [&["stats"][..], &["verify"], &["gc", "--max-size", "0"]] {
        let o = f.run(cmd);
        assert_eq!(o.code, 2, "{cmd:?}: {o:?}");
        assert!(o.stderr.contains("not a taskcache cache"), "{cmd:?}: {o:?}");
    }
    assert_eq!(
        support::listing(&f.cache),
        before,
        "something wrote into it"
    );
}

/// `gc` says what its grace window kept and why; `--grace 0` empties the cache.
/// `verify` counts an entry whose blob was gone. Help shows no environment values.
#[test]
fn gc_reports_its_grace_and_verify_counts_incomplete_entries() {
    let f = Fixture::new();
    assert_eq!(f.sh(&["-o", "out.txt"], COUNTING).code, 0);
    let gc = f.run(&["gc", "--max-size", "0"]);
    assert_eq!(gc.code, 0, "{gc:?}");
    assert!(
        gc.stdout_str().contains("kept 1 blobs") && gc.stdout_str().contains("--grace"),
        "{gc:?}"
    );
    let gc = f.run(&["gc", "--max-size", "0", "--grace", "0"]);
    assert_eq!(gc.code, 0, "{gc:?}");
    assert!(gc.stdout_str().contains("-> 0 B"), "{gc:?}");
    assert!(f.run(&["gc", "--max-size", "0", "--grace", "ten"]).code == 2);

    assert_eq!(f.sh(&["-o", "out.txt"], COUNTING).code, 0);
    for blob in walk(&f.cache.join("blobs")) {
        fs::remove_file(blob).unwrap();
    }
    let verify = f.run(&["verify"]);
    assert_eq!(verify.code, 1, "{verify:?}");
    assert!(
        verify
            .stdout_str()
            .contains("1 entries whose blobs were gone"),
        "{verify:?}"
    );

    let mut c = f.cmd();
    c.env("TASKCACHE_POLICY", "readonly")
        .args(["run", "--help"]);
    let help = exec(c);
    assert!(
        !help.stdout_str().contains("TASKCACHE_POLICY=readonly"),
        "{help:?}"
    );
}

/// A CI runner cancelling a step signals taskcache alone: the signal is passed on to
/// the command (which is never orphaned), taskcache waits for it, stores nothing and
/// exits 128 + the signal.
#[test]
fn signals_to_taskcache_reach_the_command_and_nothing_is_stored() {
    use rustix::process::{Pid, Signal, kill_process};
    use std::time::{Duration, Instant};
    let f = Fixture::new();
    for (signal, number) in [
        (Signal::TERM, 15),
        (Signal::INT, 2),
        (Signal::HUP, 1),
        (Signal::QUIT, 3),
    ] {
        let _ = fs::remove_file(f.root.join("started"));
        let _ = fs::remove_file(f.root.join("trapped"));
        // The command traps the signal, notes it, and exits 0 as if it had finished.
        let script = "trap 'echo got > ../trapped; printf r > out.txt; exit 0' INT TERM HUP QUIT; \
                      echo up > ../started; while :; do sleep 0.02; done";
        let mut c = f.cmd();
        c.args(["run", "-o", "out.txt", "--", "sh", "-c", script])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f.root.join("started").exists() {
            assert!(Instant::now() < deadline, "the command never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
        kill_process(pid, signal).unwrap();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "taskcache did not exit after {signal:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(128 + number), "{signal:?}");
        assert!(
            f.root.join("trapped").exists(),
            "{signal:?} did not reach the command"
        );
    }
    // The command exited 0 each time, with its output: still nothing was stored.
    let s = f.run(&["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&s.stdout).expect("stats --json is JSON");
    assert_eq!(
        v["entries"].as_u64(),
        Some(0),
        "a cancelled run was stored: {s:?}"
    );
}

/// A damaged `LAYOUT` in a used cache is written again by the next run, which hits
/// (with a warning); `verify` repairs one too. A `LAYOUT` of a newer version is left
/// alone: the run goes on uncached, and `verify` exits 3 (could not check), never 1
/// (damage removed).
#[test]
fn a_damaged_layout_is_repaired_and_verify_says_when_it_could_not_check() {
    let f = Fixture::new();
    assert_eq!(f.sh(&["-o", "out.txt"], COUNTING).code, 0);
    let layout = f.cache.join("LAYOUT");
    let good = fs::read(&layout).unwrap();

    fs::write(&layout, b"taskcache-local-lay\0\0\0\0\0\0").unwrap();
    fs::remove_file(f.ws.join("out.txt")).unwrap();
    let o = f.sh(&["-o", "out.txt"], COUNTING);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(f.runs(), 1, "the run after the damage was not a hit: {o:?}");
    assert!(
        o.stderr.contains("LAYOUT") && o.stderr.contains("damaged"),
        "{o:?}"
    );
    assert_eq!(fs::read(&layout).unwrap(), good);

    fs::remove_file(&layout).unwrap();
    let v = f.run(&["verify"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(fs::read(&layout).unwrap(), good);

    fs::write(&layout, b"taskcache-local-layout 9\n").unwrap();
    let v = f.run(&["verify"]);
    assert_eq!(v.code, 3, "{v:?}");
    assert!(
        v.stderr.contains("layout version 9") && v.stderr.contains("nothing was checked"),
        "{v:?}"
    );
    let o = f.sh(&["-o", "out.txt"], COUNTING);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(f.runs(), 2, "a newer cache was used: {o:?}");
    assert_eq!(fs::read(&layout).unwrap(), b"taskcache-local-layout 9\n");
}
