//! End-to-end tests: the real `taskcache` binary, a temporary workspace and cache
//! (the fixture is in `support/`).

#![cfg(unix)]

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use support::{COUNTING, Fixture, exec, find, walk};

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn miss_then_hit_restores_outputs_and_replays_logs_and_exit_code() {
    let f = Fixture::new();
    let script = "echo ran >> ../counter
        mkdir -p out/sub out/empty
        printf 'bin\\000ary\\377' > out/sub/data.bin
        printf '#!/bin/sh\\necho tool\\n' > out/tool && chmod 755 out/tool
        ln -s sub/data.bin out/link
        printf 'single' > single.txt
        printf 'to stdout\\n'; printf 'no newline'
        printf 'to stderr\\n' >&2
        exit 0";
    let opts = ["-o", "out", "-o", "single.txt"];
    let first = f.sh(&opts, script);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(first.stdout_str(), "to stdout\nno newline");
    assert_eq!(first.stderr, "to stderr\n", "quiet by default: {first:?}");
    assert_eq!(f.runs(), 1);

    let snapshot = |ws: &Path| {
        let mut v = Vec::new();
        for p in ["out/sub/data.bin", "out/tool", "single.txt"] {
            v.push((p, fs::read(ws.join(p)).unwrap(), mode(&ws.join(p))));
        }
        v
    };
    let before = snapshot(&f.ws);
    assert_eq!(before[1].2, 0o755);
    fs::remove_dir_all(f.ws.join("out")).unwrap();
    fs::remove_file(f.ws.join("single.txt")).unwrap();

    let second = f.sh(&opts, script);
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(second.stdout, first.stdout);
    assert_eq!(second.stderr, first.stderr);
    assert_eq!(f.runs(), 1, "the command ran again on a hit");
    assert_eq!(snapshot(&f.ws), before);
    assert_eq!(
        fs::read_link(f.ws.join("out/link")).unwrap(),
        Path::new("sub/data.bin")
    );
    assert!(f.ws.join("out/empty").is_dir());
}

#[test]
fn restoring_over_an_existing_tree_fixes_cached_files_and_keeps_others() {
    let f = Fixture::new();
    let script = "echo ran >> ../counter; mkdir -p dist; printf 'app' > dist/app.js";
    assert_eq!(f.sh(&["-o", "dist"], script).code, 0);
    f.write("dist/app.js", "tampered");
    f.write("dist/extra.txt", "mine");
    let hit = f.sh(&["-o", "dist"], script);
    assert_eq!(hit.code, 0, "{hit:?}");
    assert_eq!(f.runs(), 1);
    assert_eq!(fs::read_to_string(f.ws.join("dist/app.js")).unwrap(), "app");
    assert_eq!(
        fs::read_to_string(f.ws.join("dist/extra.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn a_changed_input_byte_misses() {
    let f = Fixture::new();
    f.write("src/a.txt", "hello");
    f.write("src/b.txt", "world");
    let opts = ["-i", "src/*.txt", "-o", "out.txt"];
    assert_eq!(f.sh(&opts, COUNTING).code, 0);
    assert_eq!(f.sh(&opts, COUNTING).code, 0);
    assert_eq!(f.runs(), 1);
    f.write("src/b.txt", "worle");
    assert_eq!(f.sh(&opts, COUNTING).code, 0);
    assert_eq!(f.runs(), 2);
    assert_eq!(f.sh(&opts, COUNTING).code, 0);
    assert_eq!(f.runs(), 2);
}

#[test]
fn only_declared_variables_join_the_key() {
    let f = Fixture::new();
    let go = |undeclared: &str, declared: Option<&str>| {
        let mut c = f.cmd();
        c.args([
            "run", "-e", "MODE", "-o", "out.txt", "--", "sh", "-c", COUNTING,
        ])
        .env("NOISE", undeclared);
        if let Some(v) = declared {
            c.env("MODE", v);
        }
        let o = exec(c);
        assert_eq!(o.code, 0, "{o:?}");
    };
    go("1", Some("fast"));
    go("2", Some("fast"));
    assert_eq!(f.runs(), 1, "an undeclared variable changed the key");
    go("2", Some("slow"));
    assert_eq!(f.runs(), 2, "a declared variable did not change the key");
    go("2", Some(""));
    assert_eq!(f.runs(), 3, "empty must differ from other values");
    go("2", None);
    assert_eq!(f.runs(), 4, "unset must differ from empty");
    go("3", None);
    assert_eq!(f.runs(), 4);
}

#[test]
fn policies_behave_as_named() {
    let f = Fixture::new();
    let opts = |p: &'static str| ["--policy", p, "-o", "out.txt"];

    // readonly on an empty cache: runs, stores nothing.
    assert_eq!(f.sh(&opts("readonly"), COUNTING).code, 0);
    assert_eq!(f.sh(&opts("readonly"), COUNTING).code, 0);
    assert_eq!(f.runs(), 2);
    // disabled: runs, stores nothing.
    assert_eq!(f.sh(&opts("disabled"), COUNTING).code, 0);
    assert_eq!(f.runs(), 3);
    // writeonly: runs and stores...
    assert_eq!(f.sh(&opts("writeonly"), COUNTING).code, 0);
    assert_eq!(f.runs(), 4);
    // ...and never reads, even with an entry present.
    assert_eq!(f.sh(&opts("writeonly"), COUNTING).code, 0);
    assert_eq!(f.runs(), 5);
    // readonly and normal now hit what writeonly stored.
    assert_eq!(f.sh(&opts("readonly"), COUNTING).code, 0);
    assert_eq!(f.sh(&opts("normal"), COUNTING).code, 0);
    assert_eq!(f.runs(), 5);
    // disabled ignores the entry.
    assert_eq!(f.sh(&opts("disabled"), COUNTING).code, 0);
    assert_eq!(f.runs(), 6);
    // The environment sets the default policy.
    let mut c = f.cmd();
    c.env("TASKCACHE_POLICY", "disabled")
        .args(["run", "-o", "out.txt", "--", "sh", "-c", COUNTING]);
    assert_eq!(exec(c).code, 0);
    assert_eq!(f.runs(), 7);
}

#[test]
fn failures_are_cached_only_when_asked() {
    let f = Fixture::new();
    let script = "echo ran >> ../counter; echo failing; echo why >&2; exit 3";
    let plain = f.sh(&[], script);
    assert_eq!(plain.code, 3, "{plain:?}");
    assert_eq!(f.sh(&[], script).code, 3);
    assert_eq!(f.runs(), 2, "a failure was cached without --cache-failures");

    let stored = f.sh(&["--cache-failures"], script);
    assert_eq!(stored.code, 3);
    let replayed = f.sh(&["--cache-failures"], script);
    assert_eq!(f.runs(), 3, "--cache-failures did not cache the failure");
    assert_eq!(replayed.code, 3);
    assert_eq!(replayed.stdout_str(), "failing\n");
    assert_eq!(replayed.stderr, "why\n");
    // A run without the flag does not accept a cached failure.
    assert_eq!(f.sh(&[], script).code, 3);
    assert_eq!(f.runs(), 4);
}

#[test]
fn a_command_killed_by_a_signal_exits_128_plus_n_and_is_not_cached() {
    let f = Fixture::new();
    let script = "echo ran >> ../counter; kill -TERM $$";
    assert_eq!(f.sh(&["--cache-failures"], script).code, 128 + 15);
    assert_eq!(f.sh(&["--cache-failures"], script).code, 128 + 15);
    assert_eq!(f.runs(), 2);
}

#[test]
fn two_tiers_hit_from_the_remote_and_fill_the_local_tier() {
    let f = Fixture::new();
    let remote = f.root.join("remote");
    let remote_url = format!("file://{}", remote.display());
    let opts = ["--remote", remote_url.as_str(), "-o", "out.txt"];
    assert_eq!(f.sh(&opts, COUNTING).code, 0);
    assert_eq!(f.runs(), 1);

    // Another machine: an empty local cache, the same remote.
    let other = f.root.join("other-local");
    let other_s = other.to_str().unwrap();
    fs::remove_file(f.ws.join("out.txt")).unwrap();
    let mut with_remote = vec!["--cache", other_s];
    with_remote.extend_from_slice(&opts);
    with_remote.push("-v");
    let hit = f.sh(&with_remote, COUNTING);
    assert_eq!(hit.code, 0, "{hit:?}");
    assert_eq!(f.runs(), 1, "the remote tier did not answer: {hit:?}");
    assert_eq!(hit.stdout_str(), "done\n");
    assert!(hit.stderr.contains("(remote tier)"), "{hit:?}");
    assert_eq!(
        fs::read_to_string(f.ws.join("out.txt")).unwrap(),
        "result\n"
    );

    // The hit was copied into that local cache: it now hits without the remote.
    let local_only = f.sh(&["--cache", other_s, "-o", "out.txt"], COUNTING);
    assert_eq!(local_only.code, 0, "{local_only:?}");
    assert_eq!(
        f.runs(),
        1,
        "the remote hit was not copied into the local tier"
    );
}

#[test]
fn readonly_with_a_remote_writes_no_tier() {
    let f = Fixture::new();
    let remote = f.root.join("remote");
    let remote_s = remote.to_str().unwrap();
    assert_eq!(
        f.sh(&["--cache", remote_s, "-o", "out.txt"], COUNTING).code,
        0
    );
    fs::remove_file(f.ws.join("out.txt")).unwrap();
    let local = f.root.join("fresh-local");
    let local_s = local.to_str().unwrap();
    let hit = f.sh(
        &[
            "--cache", local_s, "--remote", remote_s, "--policy", "readonly", "-o", "out.txt",
        ],
        COUNTING,
    );
    assert_eq!(hit.code, 0, "{hit:?}");
    assert_eq!(f.runs(), 1, "the remote answered: {hit:?}");
    assert_eq!(
        fs::read_to_string(f.ws.join("out.txt")).unwrap(),
        "result\n"
    );
    let s = f.run(&["stats", "--json", "--cache", local_s]);
    let v: serde_json::Value = serde_json::from_slice(&s.stdout).expect("stats --json is JSON");
    assert_eq!(
        (v["entries"].as_u64(), v["blobs"].as_u64()),
        (Some(0), Some(0)),
        "--policy readonly copied the remote hit into the local cache: {s:?}"
    );
}

#[test]
fn a_remote_that_cannot_be_used_only_costs_a_warning() {
    let f = Fixture::new();
    fs::write(f.root.join("not-a-dir"), "x").unwrap();
    let remote = f.root.join("not-a-dir/sub");
    let o = f.sh(
        &["--remote", remote.to_str().unwrap(), "-o", "out.txt"],
        COUNTING,
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout_str(), "done\n");
    assert!(o.stderr.contains("warning"), "{o:?}");
    assert_eq!(f.runs(), 1);
    // The local tier still works.
    assert_eq!(f.sh(&["-o", "out.txt"], COUNTING).code, 0);
    assert_eq!(f.runs(), 1);
}

#[test]
fn bad_input_exits_2_with_a_message_that_says_what_to_do() {
    let f = Fixture::new();
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--frobnicate", "--", "true"], "--frobnicate"),
        (
            &["run", "sh", "-c", "echo ran >> ../counter"],
            "put `--` before the command",
        ),
        (&["run"], "put `--` before the command"),
        (
            &["run", "-o", "../escape", "--", "true"],
            "inside the workspace",
        ),
        (
            &["run", "-o", "/etc/passwd", "--", "true"],
            "relative to the workspace",
        ),
        (&["run", "-e", "CC=gcc", "--", "true"], "name only"),
        (&["run", "--policy", "sometimes", "--", "true"], "readonly"),
        (
            &["run", "-i", "nothing/*.c", "--", "true"],
            "matched no files",
        ),
        (
            &["run", "--cache", "ftp://host/x", "--", "true"],
            "file:///",
        ),
        (
            &[
                "run",
                "--remote",
                "s3://AKIA:hunter2@my-bucket/ci",
                "--",
                "true",
            ],
            "do not belong in the URL",
        ),
        (
            &[
                "run",
                "--remote",
                "grpcs://user:pw@cache.internal/main",
                "--",
                "true",
            ],
            "--remote-header",
        ),
        (
            &["run", "--cache", "grpc://h:1", "--", "true"],
            "only be the shared tier",
        ),
        (&["run", "-C", "no-such-dir", "--", "true"], "-C"),
        (&["key", "-o", "..", "--", "true"], "`..`"),
        (&["gc", "--max-size", "lots"], "10GiB"),
        (&["gc", "--max-size", "5 parsecs"], "unit"),
        (
            &["verify", "--cache", "s3://bucket-name"],
            "local cache directory only",
        ),
        (
            &["gc", "--cache", "s3://bucket-name/ci", "--max-size", "1GiB"],
            "--unused-for DURATION",
        ),
        (
            &["gc", "--cache", "s3://bucket-name/ci"],
            "--unused-for DURATION",
        ),
        (&["gc", "--unused-for", "7d"], "for an object store"),
        (
            &["gc", "--cache", "s3://bucket-name/ci", "--unused-for", "7y"],
            "ms, s, m, h or d",
        ),
        (&["gc"], "--max-size SIZE"),
    ];
    for (args, hint) in cases {
        let o = f.run(args);
        assert_eq!(o.code, 2, "{args:?}: {o:?}");
        assert!(
            o.stderr.contains(hint),
            "{args:?} should mention {hint:?}: {o:?}"
        );
        assert!(o.stdout.is_empty(), "{args:?}: {o:?}");
    }
    assert_eq!(f.runs(), 0, "a command ran despite bad input");
}

#[test]
fn secrets_never_reach_the_output() {
    let f = Fixture::new();
    for remote in [
        "grpc://user:hunter2@h:80",
        "grpcs://h/x?token=hunter2",
        // Secrets pasted raw may hold `/`, `?` and `#`.
        "s3://AKIA:hun/ter2@bucket/x",
        "s3://AKIA:hu?nt#er2@bucket/x",
    ] {
        let o = f.run(&["run", "--remote", remote, "--", "true"]);
        assert_eq!(o.code, 2, "{o:?}");
        assert!(
            !o.stderr.contains("hunter2") && !o.stderr.contains("ter2"),
            "{o:?}"
        );
    }

    let mut c = f.cmd();
    c.env("TASKCACHE_REMOTE", "s3://AKIA:hunter2@bucket/x")
        .args(["run", "--", "true"]);
    let o = exec(c);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(!o.stderr.contains("hunter2"), "{o:?}");
}

/// Values whose password is `Qz1` + a separator + `Qz2`: neither half may be shown,
/// whatever the separator and wherever the value comes from, even with `-v`.
#[test]
fn url_secrets_are_redacted_in_every_form() {
    let f = Fixture::new();
    let values = [
        "grpc://user:Qz1/Qz2@h:80",
        "s3://AKIA:Qz1?Qz2@bucket/x",
        "s3://AKIA:Qz1#Qz2@bucket/x",
        "s3://AKIA:Qz1@Qz2@bucket/x",
        "s3://AKIA:Qz1%2FQz2%40@bucket/x",
        "s3://AKIA:12/Qz1Qz2@bucket/x",
        "grpcs://h/x?token=Qz1@Qz2",
        "grpcs://u:p@h/x?token=Qz1@Qz2",
        "grpcs://h/x#Qz1@Qz2",
        " s3://AKIA:Qz1/Qz2@bucket/x",
        "s3:AKIA:Qz1/Qz2@bucket",
        "s3:/AKIA:Qz1Qz2@bucket",
        "http:\\\\u:Qz1Qz2@h/x",
        "file://u:Qz1Qz2@localhost/x",
        "FILE://u:Qz1/Qz2@/x",
    ];
    let task = ["-v", "-o", "out.txt", "--", "sh", "-c", COUNTING];
    let mut shown = Vec::new();
    for value in values {
        let mut runs = Vec::new();
        for flag in ["--remote", "--cache"] {
            let mut c = f.cmd();
            c.args(["run", flag, value]).args(task);
            runs.push(exec(c));
        }
        let mut c = f.cmd();
        c.env("TASKCACHE_REMOTE", value).arg("run").args(task);
        runs.push(exec(c));
        let mut c = f.cmd();
        c.args(["stats", "--cache", value]);
        runs.push(exec(c));
        for o in runs {
            let all = format!("{}{}", o.stderr, String::from_utf8_lossy(&o.stdout));
            if all.contains("Qz1") || all.contains("Qz2") {
                shown.push(format!("{value:?}: {o:?}"));
            }
        }
    }
    assert!(shown.is_empty(), "secrets shown:\n{}", shown.join("\n"));
    let leaked: Vec<_> = walk(&f.root)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("Qz"))
        .collect();
    assert!(
        leaked.is_empty(),
        "directories named after a secret: {leaked:?}"
    );
}

#[test]
fn key_prints_the_digest_and_nothing_else() {
    let f = Fixture::new();
    f.write("in.txt", "v1");
    let key = |input: &str| {
        f.write("in.txt", input);
        let o = f.run(&[
            "key", "-i", "in.txt", "-o", "out.txt", "--", "sh", "-c", COUNTING,
        ]);
        assert_eq!(o.code, 0, "{o:?}");
        assert!(o.stderr.is_empty(), "{o:?}");
        let s = o.stdout_str().to_owned();
        let hex = s
            .strip_prefix("blake3:")
            .and_then(|r| r.strip_suffix('\n'))
            .unwrap_or_else(|| panic!("not a digest line: {s:?}"));
        assert!(
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{s:?}"
        );
        s
    };
    let a = key("v1");
    assert_eq!(key("v1"), a);
    assert_ne!(key("v2"), a);
    assert_eq!(f.runs(), 0, "`key` ran the command");
    assert!(!f.cache.exists(), "`key` touched the cache");
}

/// An executor that describes the same task as a `cache_core::Task` and keys it with
/// `TaskKeyBuilder::from_task` (nothing else: no salt, no platform of its own) gets the
/// key `taskcache key` prints, so the two share entries in one cache.
#[test]
fn the_library_key_of_the_same_task_is_the_cli_key() {
    use cache_core::{DigestAlgorithm, OutputType, Task, TaskKeyBuilder, TaskOutput};
    let f = Fixture::new();
    f.write("src/a.c", "int a;\n");
    f.write("src/sub/b.c", "int b;\n");
    f.write("Makefile", "all:\n");
    fs::set_permissions(f.ws.join("Makefile"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("a.c", f.ws.join("src/link.c")).unwrap();
    let script = "make all";
    let cli = |extra: &[&str]| {
        let mut c = f.cmd();
        c.env("CC", "gcc").arg("key").args(extra).args([
            "-e",
            "CC",
            "-e",
            "NEVER_SET",
            "-i",
            "src/**",
            "-i",
            "Makefile",
            "-o",
            "out.txt",
            "-o",
            "dist/",
            "--",
            "sh",
            "-c",
            script,
        ]);
        let o = exec(c);
        assert_eq!(o.code, 0, "{o:?}");
        o.stdout_str().trim_end().to_owned()
    };
    let mut task = Task::new("build", ["sh", "-c", script]);
    task.env.insert("CC".into(), "gcc".into());
    task.inputs = vec!["Makefile".into(), "src/**".into()];
    task.outputs = ["out.txt", "dist"]
        .map(|p| TaskOutput {
            path: p.into(),
            kind: OutputType::Cas,
        })
        .to_vec();
    let library = |task: &Task| {
        TaskKeyBuilder::from_task(task, DigestAlgorithm::Blake3)
            .build(&f.ws)
            .unwrap()
            .to_string()
    };
    assert_eq!(
        cli(&[]),
        library(&task),
        "the library's key is not the CLI's"
    );
    task.allow_absolute_symlinks = true;
    assert_eq!(
        cli(&["--allow-absolute-symlinks"]),
        library(&task),
        "with absolute symlinks allowed"
    );
    let explained = cli(&["--allow-absolute-symlinks", "--explain"]);
    assert_eq!(
        explained.lines().last(),
        Some(format!("key: {}", library(&task)).as_str()),
        "{explained}"
    );
}

#[test]
fn a_missing_output_is_not_cached_and_keeps_the_exit_code() {
    let f = Fixture::new();
    let script = "echo ran >> ../counter; exit 0";
    let o = f.sh(&["-o", "never-made.txt"], script);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stderr.contains("warning") && o.stderr.contains("never-made.txt"),
        "{o:?}"
    );
    assert_eq!(f.sh(&["-o", "never-made.txt"], script).code, 0);
    assert_eq!(f.runs(), 2, "a partial entry was stored");
}

#[test]
fn an_escaping_symlink_output_is_refused_clearly() {
    let f = Fixture::new();
    let script = "echo ran >> ../counter; mkdir -p out; ln -sf /etc/hostname out/abs";
    let o = f.sh(&["-o", "out"], script);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("out/abs"), "{o:?}");
    assert_eq!(f.sh(&["-o", "out"], script).code, 0);
    assert_eq!(f.runs(), 2);
}

#[test]
fn output_over_the_capture_limit_is_streamed_but_not_cached() {
    let f = Fixture::new();
    let script =
        "echo ran >> ../counter; i=0; while [ $i -lt 100 ]; do echo 0123456789; i=$((i+1)); done";
    let opts = ["--max-log-size", "500"];
    let o = f.sh(&opts, script);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout.len(), 1100, "the stream was cut");
    assert!(o.stderr.contains("capture limit"), "{o:?}");
    assert_eq!(f.sh(&opts, script).code, 0);
    assert_eq!(f.runs(), 2);
}

#[test]
fn stdin_is_passed_to_the_command() {
    let f = Fixture::new();
    let mut c = f.cmd();
    c.args([
        "run",
        "--policy",
        "disabled",
        "--",
        "sh",
        "-c",
        "tr a-z A-Z",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"quiet please")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.stdout, b"QUIET PLEASE");
    assert!(o.status.success());
}

#[test]
fn a_command_that_does_not_exist_exits_127() {
    let f = Fixture::new();
    let o = f.run(&["run", "--", "no-such-command-for-taskcache"]);
    assert_eq!(o.code, 127, "{o:?}");
    assert!(o.stderr.contains("not found"), "{o:?}");
}

#[test]
fn verbose_prints_one_line_per_decision_on_stderr_only() {
    let f = Fixture::new();
    let miss = f.sh(&["-v", "--id", "build", "-o", "out.txt"], COUNTING);
    assert_eq!(miss.stdout_str(), "done\n");
    let lines: Vec<&str> = miss.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{miss:?}");
    assert!(
        lines[0].starts_with("taskcache: miss blake3:")
            && lines[0].contains(", stored ")
            && lines[0].contains("(build, "),
        "{miss:?}"
    );
    let hit = f.sh(&["-v", "--id", "build", "-o", "out.txt"], COUNTING);
    assert_eq!(hit.stdout_str(), "done\n");
    let lines: Vec<&str> = hit.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{hit:?}");
    assert!(
        lines[0].starts_with("taskcache: hit blake3:")
            && lines[0].contains(", saved ")
            && lines[0].contains("(build, "),
        "{hit:?}"
    );
    assert!(lines[0].contains(&f.cache.display().to_string()), "{hit:?}");
}

#[test]
fn a_corrupt_cached_file_is_never_restored() {
    let f = Fixture::new();
    let payload = "unique payload 7f3a9c content that is easy to find in the cache\n";
    let script = format!(
        "echo ran >> ../counter; printf '{}' > out.txt",
        payload.trim_end()
    );
    assert_eq!(f.sh(&["-o", "out.txt"], &script).code, 0);
    // Flip a byte in every cache file holding the output's bytes (whatever the layout).
    let mut flipped = 0;
    for entry in walk(&f.cache) {
        let Ok(mut bytes) = fs::read(&entry) else {
            continue;
        };
        if let Some(pos) = find(&bytes, payload.trim_end().as_bytes()) {
            bytes[pos] ^= 0x20;
            let mut perms = fs::metadata(&entry).unwrap().permissions();
            perms.set_mode(0o644);
            fs::set_permissions(&entry, perms).unwrap();
            fs::write(&entry, &bytes).unwrap();
            flipped += 1;
        }
    }
    assert!(flipped > 0, "the blob was not found in the cache");
    fs::remove_file(f.ws.join("out.txt")).unwrap();
    let o = f.sh(&["-o", "out.txt"], &script);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(
        fs::read_to_string(f.ws.join("out.txt")).unwrap(),
        payload.trim_end()
    );
    assert_eq!(f.runs(), 2, "the corrupt entry was not re-run: {o:?}");
    // The re-run repaired the cache.
    fs::remove_file(f.ws.join("out.txt")).unwrap();
    assert_eq!(f.sh(&["-o", "out.txt"], &script).code, 0);
    assert_eq!(f.runs(), 2);
    assert_eq!(
        fs::read_to_string(f.ws.join("out.txt")).unwrap(),
        payload.trim_end()
    );
}

#[test]
fn stats_gc_and_verify_work_on_the_local_cache() {
    let f = Fixture::new();
    assert_eq!(f.sh(&["-o", "out.txt"], COUNTING).code, 0);
    assert_eq!(f.sh(&["-o", "out.txt"], COUNTING).code, 0);

    let s = f.run(&["stats", "--json"]);
    assert_eq!(s.code, 0, "{s:?}");
    let v: serde_json::Value = serde_json::from_slice(&s.stdout).expect("stats --json is JSON");
    assert!(v["entries"].as_u64().unwrap() >= 1, "{s:?}");
    assert!(v["bytes"].as_u64().unwrap() > 0, "{s:?}");
    // One miss (the first run) and one hit (the second), each counted once.
    assert_eq!(v["hits"].as_u64(), Some(1), "{s:?}");
    assert_eq!(v["misses"].as_u64(), Some(1), "{s:?}");
    let text = f.run(&["stats"]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(text.stdout_str().contains("entries:"), "{text:?}");

    let v = f.run(&["verify"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert!(v.stdout_str().contains("checked"), "{v:?}");

    let g = f.run(&["gc", "--max-size", "0"]);
    assert_eq!(g.code, 0, "{g:?}");
    assert_eq!(f.sh(&["-o", "out.txt"], COUNTING).code, 0);
    assert_eq!(f.runs(), 2, "gc to 0 bytes left the entry");
}

#[test]
fn the_default_cache_is_under_xdg_cache_home() {
    let f = Fixture::new();
    let mut c = f.cmd();
    c.env_remove("TASKCACHE_CACHE")
        .args(["run", "-o", "out.txt", "--", "sh", "-c", COUNTING]);
    assert_eq!(exec(c).code, 0);
    assert!(f.root.join("xdg/taskcache").is_dir());
}

#[test]
fn workspace_flag_and_file_url_cache() {
    let f = Fixture::new();
    let url = format!("file://{}", f.root.join("url%20cache").display());
    let go = || {
        let mut c = f.cmd();
        c.current_dir(&f.root).args([
            "run", "--cache", &url, "-C", "ws", "-o", "out.txt", "--", "sh", "-c", COUNTING,
        ]);
        exec(c)
    };
    let first = go();
    assert_eq!(first.code, 0, "{first:?}");
    assert!(
        f.ws.join("out.txt").is_file(),
        "the command did not run in -C"
    );
    fs::remove_file(f.ws.join("out.txt")).unwrap();
    assert_eq!(go().code, 0);
    assert_eq!(f.runs(), 1);
    assert!(f.ws.join("out.txt").is_file());
    assert!(f.root.join("url cache").is_dir(), "%20 was not decoded");
    assert!(
        !f.cache.exists(),
        "--cache did not override TASKCACHE_CACHE"
    );
}
