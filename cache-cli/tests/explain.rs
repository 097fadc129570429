//! End-to-end tests of what taskcache says about its decisions: `key --explain`, the
//! `-v` lines of a hit and a miss, `-vv`, the per-id manifests ("why did it miss?"),
//! and whether `--help` reads true.

#![cfg(unix)]

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use support::{COUNTING, Fixture, exec, walk};

/// Values no output, log or cache file may ever show.
const SECRET: &str = "Qsecret-7f3a";
const OTHER_SECRET: &str = "Qsecret-b21c";

fn blake3_of(bytes: &[u8]) -> String {
    cache_core::BlobRef::of(cache_core::DigestAlgorithm::Blake3, bytes)
        .digest
        .to_string()
}

/// The task flags the tests share (after `run` or `key`), with `extra` flags first.
fn task<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = extra.to_vec();
    args.extend_from_slice(&[
        "-e",
        "CC",
        "-e",
        "TOKEN",
        "-e",
        "NEVER_SET",
        "-i",
        "src/**",
        "-o",
        "out.txt",
        "--",
        "sh",
        "-c",
        COUNTING,
    ]);
    args
}

fn with_env(f: &Fixture, cc: &str, sub: &str, args: &[&str]) -> support::Out {
    let mut c = f.cmd();
    c.env("CC", cc).env("TOKEN", SECRET).arg(sub).args(args);
    exec(c)
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(SECRET) && !text.contains(OTHER_SECRET),
        "{what} shows a variable's value:\n{text}"
    );
}

/// Every file under the cache, as text, for searching.
fn cache_text(f: &Fixture) -> String {
    walk(&f.cache)
        .iter()
        .map(|p| String::from_utf8_lossy(&fs::read(p).unwrap()).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

fn sources(f: &Fixture) {
    f.write("src/a.c", "int a;\n");
    f.write("src/b.c", "int b;\n");
    f.write("src/build.sh", "#!/bin/sh\n");
    let script = f.ws.join("src/build.sh");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn key_explain_lists_everything_that_went_into_the_key_but_no_value() {
    let f = Fixture::new();
    sources(&f);
    let o = with_env(&f, OTHER_SECRET, "key", &task(&["--explain"]));
    assert_eq!(o.code, 0, "{o:?}");
    let text = o.stdout_str().to_owned();
    for needle in [
        "src/a.c",
        blake3_of(b"int a;\n").as_str(),
        "src/b.c",
        blake3_of(b"int b;\n").as_str(),
        "src/build.sh",
        "executable",
        "CC (set)",
        "TOKEN (set)",
        "NEVER_SET (unset)",
        "out.txt",
        "src/**",
        "\"sh\" \"-c\"",
        "no shell",
        "key format: taskcache-key/2, platform ",
        &format!(
            "platform {}/{}",
            std::env::consts::OS,
            std::env::consts::ARCH
        ),
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    assert_no_secret("key --explain", &format!("{text}{}", o.stderr));
    // Its last line is the key, the same `key` prints.
    let plain = with_env(&f, OTHER_SECRET, "key", &task(&[]));
    let last = text.lines().last().unwrap();
    assert_eq!(
        format!("{last}\n"),
        format!("key: {}", plain.stdout_str()),
        "{text}"
    );
    // Changing a value changes the key, never the listing's words about it.
    let other = with_env(&f, "gcc", "key", &task(&["--explain"]));
    assert_ne!(other.stdout_str(), text);
    assert_eq!(f.runs(), 0, "`key --explain` ran the command");
    assert!(!f.cache.exists(), "`key --explain` touched the cache");
}

#[test]
fn verbosity_levels_say_more_and_the_default_says_nothing() {
    let f = Fixture::new();
    sources(&f);
    let quiet = with_env(&f, OTHER_SECRET, "run", &task(&[]));
    assert_eq!((quiet.code, quiet.stderr.as_str()), (0, ""), "{quiet:?}");

    f.write("src/a.c", "int a2;\n");
    let v = with_env(&f, OTHER_SECRET, "run", &task(&["-v"]));
    f.write("src/a.c", "int a3;\n");
    let vv = with_env(&f, OTHER_SECRET, "run", &task(&["-vv"]));
    f.write("src/a.c", "int a4;\n");
    let mut c = f.cmd();
    c.env("CC", OTHER_SECRET)
        .env("TOKEN", SECRET)
        .env("TASKCACHE_LOG", "trace")
        .arg("run")
        .args(task(&[]));
    let trace = exec(c);
    assert_eq!(f.runs(), 4);
    for o in [&v, &vv, &trace] {
        assert_eq!(o.code, 0, "{o:?}");
        assert_no_secret("a verbose run", &o.stderr);
    }
    assert_eq!(v.stderr.lines().count(), 1, "{v:?}");
    let detail = blake3_of(b"int a3;\n");
    assert!(!v.stderr.contains("src/b.c"), "-v lists inputs: {v:?}");
    assert!(
        vv.stderr.contains(&detail)
            && vv.stderr.contains("src/b.c")
            && vv.stderr.contains("TOKEN (set)")
            && vv.stderr.lines().count() > v.stderr.lines().count(),
        "-vv does not show what went into the key: {vv:?}"
    );
    assert!(
        trace.stderr.contains(&blake3_of(b"int a4;\n")) && trace.stderr.contains("src/b.c"),
        "TASKCACHE_LOG=trace does not show what went into the key: {trace:?}"
    );
}

/// Rewrites the one stored entry so that the run it records took `ms`.
fn set_stored_duration(f: &Fixture, ms: u64) {
    use cache_core::storage::ActionRecord;
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
    record.duration_ms = ms;
    fs::write(&entries[0], record.encode().unwrap()).unwrap();
}

#[test]
fn verbose_says_hit_and_time_saved_or_miss_and_stored_in_one_line() {
    let f = Fixture::new();
    let key = f.run(&["key", "-o", "out.txt", "--", "sh", "-c", COUNTING]);
    let key = key.stdout_str().trim_end().to_owned();
    let miss = f.sh(&["-v", "-o", "out.txt"], COUNTING);
    assert_eq!((miss.code, miss.stdout_str()), (0, "done\n"), "{miss:?}");
    let lines: Vec<&str> = miss.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{miss:?}");
    assert!(
        lines[0].starts_with(&format!("taskcache: miss {key}, ran "))
            && lines[0].contains(", stored "),
        "{miss:?}"
    );

    set_stored_duration(&f, 73_000);
    let hit = f.sh(&["-v", "-o", "out.txt"], COUNTING);
    assert_eq!(f.runs(), 1, "{hit:?}");
    assert_eq!((hit.code, hit.stdout_str()), (0, "done\n"), "{hit:?}");
    let lines: Vec<&str> = hit.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{hit:?}");
    assert!(
        lines[0].starts_with(&format!("taskcache: hit {key}, saved 1m 13s")),
        "{hit:?}"
    );
    // Without -v a hit looks like a run: the same stdout, nothing on stderr.
    let silent = f.sh(&["-o", "out.txt"], COUNTING);
    assert_eq!(f.runs(), 1, "{silent:?}");
    assert_eq!(
        (silent.code, silent.stdout_str(), silent.stderr.as_str()),
        (0, "done\n", ""),
        "{silent:?}"
    );

    // A miss that is not stored says why, in its one line.
    let failed = f.sh(&["-v"], "echo ran >> ../counter; exit 3");
    assert_eq!(failed.code, 3, "{failed:?}");
    let lines: Vec<&str> = failed.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{failed:?}");
    assert!(
        lines[0].starts_with("taskcache: miss ")
            && lines[0].contains("not stored: exit 3 (pass --cache-failures"),
        "{failed:?}"
    );
    let readonly = f.sh(&["-v", "--policy", "readonly"], "echo ran >> ../counter");
    assert!(
        readonly.stderr.lines().count() == 1
            && readonly.stderr.contains("not stored: policy readonly"),
        "{readonly:?}"
    );
}

#[test]
fn a_miss_under_an_id_says_what_changed_since_its_last_stored_entry() {
    let f = Fixture::new();
    sources(&f);
    let build = task(&["--id", "build"]);
    assert_eq!(with_env(&f, SECRET, "run", &build).code, 0);
    // Another id's entry must not be what the build is compared with.
    f.write("src/a.c", "int other;\n");
    assert_eq!(
        with_env(&f, "gcc", "run", &task(&["--id", "other"])).code,
        0
    );

    f.write("src/a.c", "int a, changed;\n");
    fs::remove_file(f.ws.join("src/b.c")).unwrap();
    f.write("src/c.c", "int c;\n");
    let explained = with_env(
        &f,
        OTHER_SECRET,
        "key",
        &task(&["--explain", "--id", "build"]),
    );
    assert_eq!(explained.code, 0, "{explained:?}");
    let text = explained.stdout_str();
    for needle in [
        "since the last entry stored under --id \"build\"",
        "file changed: src/a.c",
        "file added: src/c.c",
        "file removed: src/b.c",
        "variable CC (value changed)",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    assert!(
        !text.contains("variable TOKEN"),
        "TOKEN did not change:\n{text}"
    );
    assert!(
        !text.contains(": src/build.sh"),
        "build.sh did not change:\n{text}"
    );
    assert_no_secret("key --explain --id", text);

    let run = with_env(&f, OTHER_SECRET, "run", &task(&["-v", "--id", "build"]));
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(f.runs(), 3);
    let changes = run
        .stderr
        .lines()
        .find(|l| l.contains("changed since its last stored entry"))
        .unwrap_or_else(|| panic!("no line on what changed: {run:?}"));
    for needle in [
        "taskcache: build:",
        "changed: src/a.c",
        "added: src/c.c",
        "removed: src/b.c",
        "CC (value changed)",
    ] {
        assert!(changes.contains(needle), "no {needle:?} in {changes:?}");
    }
    assert_no_secret("run -v --id", &run.stderr);
    // That run stored an entry: its manifest is now the one compared with.
    let again = with_env(
        &f,
        OTHER_SECRET,
        "key",
        &task(&["--explain", "--id", "build"]),
    );
    assert!(again.stdout_str().contains("nothing changed"), "{again:?}");
    assert_no_secret("the cache directory", &cache_text(&f));
}

#[test]
fn a_bad_manifest_is_ignored_and_never_followed() {
    let f = Fixture::new();
    sources(&f);
    let build = task(&["--id", "build"]);
    assert_eq!(with_env(&f, "gcc", "run", &build).code, 0);
    let ids = f.cache.join("ids");
    let manifests: Vec<PathBuf> = walk(&ids);
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let manifest = manifests[0].clone();
    let good = fs::read(&manifest).unwrap();

    let outside = f.root.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("planted.json"), &good).unwrap();
    let big = "x".repeat(9 << 20);
    let mut n = 0;
    for plant in ["garbage", "big", "other-format", "symlink"] {
        n += 1;
        let _ = fs::remove_file(&manifest);
        match plant {
            "garbage" => fs::write(&manifest, b"{\"format\": 7, \xff").unwrap(),
            "big" => fs::write(&manifest, &big).unwrap(),
            "other-format" => fs::write(&manifest, b"{\"format\":\"x\",\"id\":\"build\"}").unwrap(),
            _ => std::os::unix::fs::symlink(outside.join("planted.json"), &manifest).unwrap(),
        }
        f.write("src/a.c", &format!("int a{n};\n"));
        // Readonly: the run stores nothing, so the planted manifest stays for -vv.
        let o = with_env(
            &f,
            "gcc",
            "run",
            &task(&["-vv", "--id", "build", "--policy", "readonly"]),
        );
        assert_eq!(o.code, 0, "{plant}: {o:?}");
        assert!(!o.stderr.contains("warning"), "{plant}: {o:?}");
        assert!(
            !o.stderr.contains("changed since its last stored entry"),
            "{plant}: a bad manifest was used: {o:?}"
        );
        assert!(
            o.stderr.contains("ignoring the manifest of build"),
            "{plant}: {o:?}"
        );
    }
    // The next stored run replaces the planted link; the file it pointed to is intact.
    assert_eq!(with_env(&f, "gcc", "run", &build).code, 0);
    assert!(!fs::symlink_metadata(&manifest).unwrap().is_symlink());
    assert_eq!(fs::read(outside.join("planted.json")).unwrap(), good);

    // `ids` replaced by a link to another directory: nothing is written through it.
    fs::remove_dir_all(&ids).unwrap();
    std::os::unix::fs::symlink(&outside, &ids).unwrap();
    f.write("src/a.c", "int through_a_link;\n");
    let o = with_env(&f, "gcc", "run", &task(&["-v", "--id", "build"]));
    assert_eq!(o.code, 0, "{o:?}");
    let names: Vec<_> = fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["planted.json"], "written through a link: {names:?}");
}

/// The help of each command says what it does: usage lines do not make an option set
/// from the environment look required, `-v` is described per command, and no help
/// shows a value from the environment.
#[test]
fn help_reads_true() {
    let f = Fixture::new();
    let help = |args: &[&str]| {
        let mut c = f.cmd();
        c.env("TASKCACHE_POLICY", "readonly")
            .env("TASKCACHE_REMOTE", "file:///Qremote-dir")
            .env("TASKCACHE_CACHE", f.root.join("Qcache-dir"))
            .env("TASKCACHE_CACHE_TIMEOUT", "17s")
            .args(args);
        exec(c)
    };
    let gc = help(&["gc", "--no-such-flag"]);
    assert_eq!(gc.code, 2, "{gc:?}");
    let usage = gc.stderr.lines().find(|l| l.starts_with("Usage:")).unwrap();
    assert!(
        !usage.contains("--cache"),
        "gc's usage claims --cache is required: {gc:?}"
    );
    for sub in ["run", "key", "stats", "gc", "verify", "keygen"] {
        let o = help(&[sub, "--help"]);
        assert_eq!(o.code, 0, "{sub}: {o:?}");
        let text = o.stdout_str();
        for value in [
            "Qremote",
            "Qcache",
            "=readonly",
            "17s",
            "TASKCACHE_POLICY=",
            "_TIMEOUT=",
        ] {
            assert!(!text.contains(value), "{sub} --help shows {value}:\n{text}");
        }
        let usage = text.lines().find(|l| l.starts_with("Usage:")).unwrap();
        assert!(!usage.contains("--cache"), "{sub}: {usage}");
        // The -v entry: its line, and in the long format the lines below it.
        let verbose = text
            .lines()
            .skip_while(|l| !l.contains("--verbose"))
            .enumerate()
            .take_while(|(i, l)| *i == 0 || !(l.is_empty() || l.trim_start().starts_with('-')))
            .map(|(_, l)| l)
            .collect::<Vec<_>>()
            .join(" ");
        match sub {
            "run" => assert!(verbose.contains("hit"), "{text}"),
            "keygen" => {}
            _ => {
                let line = verbose;
                assert!(line.contains("-vv"), "{sub}: no -v help in\n{text}");
                assert!(
                    !line.contains("hit") && !line.contains("miss"),
                    "{sub}'s -v help describes hit/miss lines: {line}"
                );
            }
        }
    }
    let top = help(&["--help"]);
    let line = top
        .stdout_str()
        .lines()
        .find(|l| l.contains("--verbose"))
        .unwrap();
    assert!(!line.contains("hit"), "{line}");
    // `key --explain` is documented.
    assert!(help(&["key", "--help"]).stdout_str().contains("--explain"));
}
