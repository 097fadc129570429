//! The task-digest builder: what joins the key, and that the encoding is deterministic.

use cache_core::{DigestAlgorithm, InputFile, KEY_FORMAT_VERSION, Platform, Task, TaskKeyBuilder};
use std::fs;
use std::path::Path;

fn tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("src/nested")).unwrap();
    fs::write(d.path().join("src/a.rs"), "fn a() {}").unwrap();
    fs::write(d.path().join("src/nested/b.rs"), "fn b() {}").unwrap();
    fs::write(d.path().join("src/notes.txt"), "notes").unwrap();
    fs::write(d.path().join("Cargo.toml"), "[package]").unwrap();
    d
}

fn base() -> TaskKeyBuilder {
    TaskKeyBuilder::default()
        .command(["cargo", "build"])
        .env("PROFILE", Some("release"))
        .input("src/**/*.rs")
        .input("Cargo.toml")
        .output("target/app")
}

fn key(b: &TaskKeyBuilder, ws: &Path) -> String {
    b.build(ws).unwrap().to_string()
}

#[test]
fn deterministic_and_location_independent() {
    let a = tree();
    let b = tree();
    assert_eq!(key(&base(), a.path()), key(&base(), a.path()));
    assert_eq!(
        key(&base(), a.path()),
        key(&base(), b.path()),
        "workspace location must not matter"
    );
}

#[test]
fn each_declared_thing_changes_the_key() {
    let ws = tree();
    let k = key(&base(), ws.path());
    let variants = [
        base().command(["cargo", "build", "--release"]),
        base().command(["cargo build"]),
        base().shell(true),
        base().env("PROFILE", Some("debug")),
        base().env("PROFILE", None),
        base().env("PROFILE", Some("")),
        base().env("EXTRA", Some("1")),
        base().output("target/other"),
        base().input("src/notes.txt"),
        base().salt("v2"),
        base().portable(),
        base().platform(Platform::new("plan9", "mips")),
    ];
    let mut seen = std::collections::HashSet::new();
    seen.insert(k.clone());
    for (i, v) in variants.iter().enumerate() {
        assert!(seen.insert(key(v, ws.path())), "variant {i} collided");
    }
    let sha = TaskKeyBuilder::from_task(&Task::new("t", ["x"]), DigestAlgorithm::Sha256);
    assert!(key(&sha, ws.path()).starts_with("sha256:"));
}

#[test]
fn argument_boundaries_are_unambiguous() {
    let ws = tree();
    let a = key(&TaskKeyBuilder::default().command(["ab", "c"]), ws.path());
    let b = key(&TaskKeyBuilder::default().command(["a", "bc"]), ws.path());
    assert_ne!(a, b);
}

#[test]
fn input_contents_names_and_mode_join_the_key() {
    let ws = tree();
    let k = key(&base(), ws.path());

    fs::write(ws.path().join("src/nested/b.rs"), "fn b() { }").unwrap();
    let k2 = key(&base(), ws.path());
    assert_ne!(k, k2, "a changed byte must change the key");

    fs::write(ws.path().join("src/notes.txt"), "changed but not an input").unwrap();
    assert_eq!(
        k2,
        key(&base(), ws.path()),
        "files outside the globs do not matter"
    );

    fs::rename(ws.path().join("src/a.rs"), ws.path().join("src/c.rs")).unwrap();
    let k3 = key(&base(), ws.path());
    assert_ne!(k2, k3, "a renamed input must change the key");

    fs::write(ws.path().join("src/nested/new.rs"), "").unwrap();
    let k4 = key(&base(), ws.path());
    assert_ne!(k3, k4, "a new matching file must change the key");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(
            ws.path().join("src/c.rs"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert_ne!(
            k4,
            key(&base(), ws.path()),
            "the exec bit must change the key"
        );
    }
}

#[test]
fn globs_follow_directory_rules() {
    let ws = tree();
    let (_, inputs) = TaskKeyBuilder::default()
        .input("src/*.rs")
        .build_with_inputs(ws.path())
        .unwrap();
    assert_eq!(
        inputs.keys().collect::<Vec<_>>(),
        ["src/a.rs"],
        "`*` must not cross `/`"
    );
    let (_, inputs) = TaskKeyBuilder::default()
        .input("src")
        .build_with_inputs(ws.path())
        .unwrap();
    assert_eq!(inputs.len(), 3, "a directory means everything below it");
    let (_, inputs) = TaskKeyBuilder::default()
        .input("./src/**/*.rs")
        .build_with_inputs(ws.path())
        .unwrap();
    assert_eq!(inputs.len(), 2);
}

#[test]
fn bad_patterns_are_clear_errors() {
    let ws = tree();
    for (pattern, needle) in [
        ("nothing/*.rs", "matched no files"),
        ("../outside", "`..`"),
        ("/etc/passwd", "relative"),
        ("src/[", "bad input pattern"),
    ] {
        let err = TaskKeyBuilder::default()
            .input(pattern)
            .build(ws.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{pattern}: {err}");
    }
    let err = TaskKeyBuilder::default()
        .output("../x")
        .build(ws.path())
        .unwrap_err();
    assert!(err.to_string().contains(".."));
}

/// Pins the encoding: if this changes, every existing cache key changes, so bump the
/// encoding version (`KEY_FORMAT_VERSION`, in the module docs too).
#[test]
fn encoding_is_pinned() {
    let ws = tempfile::tempdir().unwrap();
    fs::write(ws.path().join("in.txt"), "hello").unwrap();
    let k = TaskKeyBuilder::default()
        .command(["echo", "hi"])
        .env("A", Some("1"))
        .input("in.txt")
        .output("out")
        .salt("s")
        .build(ws.path())
        .unwrap();
    // Recompute by hand from the documented encoding.
    let mut m: Vec<u8> = Vec::new();
    let s = |m: &mut Vec<u8>, x: &[u8]| {
        m.extend_from_slice(&(x.len() as u64).to_le_bytes());
        m.extend_from_slice(x);
    };
    m.extend_from_slice(b"taskcache-key\0");
    m.extend_from_slice(&2u64.to_le_bytes());
    m.push(b'A');
    s(&mut m, b"blake3");
    // By default a key names the platform it is computed on.
    m.push(b'P');
    m.push(1);
    s(&mut m, std::env::consts::OS.as_bytes());
    s(&mut m, std::env::consts::ARCH.as_bytes());
    m.push(b'C');
    m.extend_from_slice(&2u64.to_le_bytes());
    s(&mut m, b"echo");
    s(&mut m, b"hi");
    m.push(b'S');
    m.push(0);
    m.push(b'E');
    m.extend_from_slice(&1u64.to_le_bytes());
    s(&mut m, b"A");
    m.push(1);
    s(&mut m, b"1");
    m.push(b'O');
    m.extend_from_slice(&1u64.to_le_bytes());
    s(&mut m, b"out");
    m.push(b'G');
    m.extend_from_slice(&1u64.to_le_bytes());
    s(&mut m, b"in.txt");
    m.push(b'I');
    m.extend_from_slice(&1u64.to_le_bytes());
    s(&mut m, b"in.txt");
    m.push(b'f');
    m.push(0);
    m.extend_from_slice(blake3::hash(b"hello").as_bytes());
    m.extend_from_slice(&5u64.to_le_bytes());
    m.push(b'T');
    s(&mut m, b"s");
    assert_eq!(
        k.to_string(),
        format!("blake3:{}", blake3::hash(&m).to_hex())
    );
}

/// A key names its platform: the same task on another OS or CPU has another key (a
/// tier shared by Linux and macOS runners never hands one the other's binaries), by
/// default the current platform, and a portable key is none of them.
#[test]
fn platforms_have_keys_of_their_own() {
    let ws = tree();
    let task = {
        let mut t = Task::new("build", ["cargo", "build"]);
        t.inputs.push("src/**/*.rs".into());
        t
    };
    let of = |b: TaskKeyBuilder| key(&b, ws.path());
    let from_task = || TaskKeyBuilder::from_task(&task, DigestAlgorithm::Blake3);
    let on = |os: &str, arch: &str| of(from_task().platform(Platform::new(os, arch)));
    let keys = [
        on("linux", "x86_64"),
        on("linux", "aarch64"),
        on("macos", "aarch64"),
        on("macos", "x86_64"),
        on("windows", "x86_64"),
        of(from_task().portable()),
    ];
    let unique: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "{keys:#?}");
    let here = Platform::current();
    assert_eq!(of(from_task()), on(here.os(), here.arch()));
    assert_eq!(from_task().key_platform(), Some(&here));
    assert_eq!(TaskKeyBuilder::default().key_platform(), Some(&here));
    assert_eq!(from_task().portable().key_platform(), None);
    // A platform is a pair: the boundary between its names is unambiguous.
    assert_ne!(on("linu", "xx86_64"), on("linux", "x86_64"));
    assert_eq!(here.to_string(), format!("{}/{}", here.os(), here.arch()));
    assert_eq!(KEY_FORMAT_VERSION, 2);
}

/// Builds in a thread: a key computation that blocks (a FIFO opened for reading, a
/// device read to its end) fails the test instead of hanging it.
#[cfg(unix)]
fn build_within(
    b: &TaskKeyBuilder,
    ws: &Path,
) -> cache_core::BackendResult<(
    cache_core::Digest,
    std::collections::BTreeMap<String, cache_core::InputFile>,
)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (b, ws) = (b.clone(), ws.to_path_buf());
    std::thread::spawn(move || {
        let _ = tx.send(b.build_with_inputs(&ws));
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the key computation hung")
}

#[cfg(unix)]
fn key_of(pattern: &str, ws: &Path) -> String {
    let b = TaskKeyBuilder::default().input(pattern);
    build_within(&b, ws)
        .unwrap_or_else(|e| panic!("{pattern}: {e}"))
        .0
        .to_string()
}

/// `-i src` where `src` is a symlink to a directory, `-i config.json` a symlink to a
/// file, and globs reaching them: changing the real file changes the key.
#[cfg(unix)]
#[test]
fn inputs_reached_through_symlinks_key_their_targets() {
    use std::os::unix::fs::symlink;
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path();
    fs::create_dir_all(w.join("real/sub")).unwrap();
    fs::write(w.join("real/sub/a.rs"), "fn a() {}").unwrap();
    fs::write(w.join("real/config.json"), "{}").unwrap();
    symlink("real", w.join("src")).unwrap();
    symlink("real/config.json", w.join("config.json")).unwrap();
    let patterns = ["src", "src/**/*.rs", "**/*.rs", "config.json", "*.json"];
    let before: Vec<String> = patterns.iter().map(|p| key_of(p, w)).collect();
    fs::write(w.join("real/sub/a.rs"), "fn a() { changed }").unwrap();
    fs::write(w.join("real/config.json"), "{\"changed\": 1}").unwrap();
    for (p, k) in patterns.iter().zip(&before) {
        assert_ne!(&key_of(p, w), k, "{p}: the target changed, the key did not");
    }
    // Files below a linked directory are keyed under the path through the link.
    let (_, inputs) = build_within(&TaskKeyBuilder::default().input("src"), w).unwrap();
    assert!(inputs.contains_key("src/sub/a.rs"), "{inputs:?}");
    // The link text joins the key too: a link to another file with the same bytes.
    fs::write(w.join("real/other.json"), "{\"changed\": 1}").unwrap();
    let k = key_of("config.json", w);
    fs::remove_file(w.join("config.json")).unwrap();
    symlink("real/other.json", w.join("config.json")).unwrap();
    assert_ne!(key_of("config.json", w), k);
}

/// A literal path and a glob matching the same symlink key it the same way.
#[cfg(unix)]
#[test]
fn a_symlink_keys_alike_through_a_glob_and_a_literal_path() {
    use std::os::unix::fs::symlink;
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path();
    fs::create_dir(w.join("real")).unwrap();
    fs::write(w.join("real/f.txt"), "x").unwrap();
    symlink("real/f.txt", w.join("link.txt")).unwrap();
    let inputs = |p: &str| {
        build_within(&TaskKeyBuilder::default().input(p), w)
            .unwrap()
            .1
    };
    assert_eq!(inputs("link.txt"), inputs("link.*"));
    assert_eq!(inputs("link.txt"), inputs("*.txt"));
    assert_eq!(
        inputs("link.txt")["link.txt"],
        InputFile::Symlink {
            text: "real/f.txt".into(),
            target: Box::new(inputs("real/f.txt")["real/f.txt"].clone()),
        }
    );
    symlink("real", w.join("dir")).unwrap();
    let through_link = inputs("dir");
    assert_eq!(
        through_link["dir"],
        InputFile::Symlink {
            text: "real".into(),
            target: Box::new(InputFile::Directory),
        }
    );
    assert_eq!(through_link["dir/f.txt"], inputs("real")["real/f.txt"]);
    assert_eq!(inputs("dir/*")["dir/f.txt"], through_link["dir/f.txt"]);
}

/// A FIFO, a socket or a device under an input pattern is never opened (opening a FIFO
/// blocks; reading `/dev/zero` never ends): the key is computed, and the special file
/// joins it by its kind and path only, so adding or removing one changes the key.
#[cfg(unix)]
#[test]
fn special_files_are_keyed_without_being_opened() {
    use std::os::unix::fs::symlink;
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path();
    fs::create_dir(w.join("src")).unwrap();
    fs::write(w.join("src/a.c"), "int a;").unwrap();
    let plain = key_of("src", w);
    let status = std::process::Command::new("mkfifo")
        .arg(w.join("src/fifo"))
        .status()
        .unwrap();
    assert!(status.success());
    let with_fifo = key_of("src", w);
    assert_ne!(with_fifo, plain, "a FIFO must join the key");
    assert_ne!(key_of("src/fifo", w), key_of("src/a.c", w));
    let _socket = std::os::unix::net::UnixListener::bind(w.join("src/dev.sock")).unwrap();
    let with_socket = key_of("src/*", w);
    assert_ne!(with_socket, key_of("src/*.c", w));
    symlink("/dev/zero", w.join("src/zero")).unwrap();
    symlink("/dev/null", w.join("src/null")).unwrap();
    let with_devices = key_of("src", w);
    assert_ne!(with_devices, with_fifo);
    let (_, inputs) = build_within(&TaskKeyBuilder::default().input("src"), w).unwrap();
    let special = |kind| InputFile::Special { kind };
    assert_eq!(inputs["src/fifo"], special("fifo"));
    assert_eq!(inputs["src/dev.sock"], special("socket"));
    assert_eq!(
        inputs["src/zero"],
        InputFile::Symlink {
            text: "/dev/zero".into(),
            target: Box::new(special("char-device")),
        }
    );
    fs::remove_file(w.join("src/fifo")).unwrap();
    assert_ne!(
        key_of("src", w),
        with_devices,
        "removing a FIFO must change the key"
    );
}

/// Link cycles and links out of the workspace end: no hang, no walk of an outside tree.
#[cfg(unix)]
#[test]
fn link_cycles_and_links_out_of_the_workspace_terminate() {
    use std::os::unix::fs::symlink;
    let ws = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let w = ws.path();
    fs::create_dir_all(w.join("src/deep")).unwrap();
    fs::write(w.join("src/deep/a.rs"), "a").unwrap();
    symlink("..", w.join("src/deep/up")).unwrap();
    symlink("../..", w.join("src/deep/top")).unwrap();
    symlink("self", w.join("src/self")).unwrap();
    symlink("ping", w.join("src/pong")).unwrap();
    symlink("pong", w.join("src/ping")).unwrap();
    fs::create_dir(w.join("x")).unwrap();
    fs::create_dir(w.join("y")).unwrap();
    symlink("../y", w.join("x/to_y")).unwrap();
    symlink("../x", w.join("y/to_x")).unwrap();
    fs::write(outside.path().join("big.txt"), "outside").unwrap();
    symlink(outside.path(), w.join("src/out")).unwrap();
    symlink(outside.path().join("big.txt"), w.join("src/out.txt")).unwrap();
    for p in ["src", "**/*", "src/**/*.rs", "x", "y/**"] {
        key_of(p, w);
    }
    let (_, inputs) = build_within(&TaskKeyBuilder::default().input("**/*"), w).unwrap();
    assert!(
        !inputs.keys().any(|k| k.starts_with("src/out/")),
        "walked a directory outside the workspace: {inputs:?}"
    );
    let link = |text: &str, reason| InputFile::Symlink {
        text: text.into(),
        target: Box::new(InputFile::Unfollowed { reason }),
    };
    assert_eq!(inputs["src/deep/up"], link("..", "cycle"));
    assert_eq!(inputs["src/deep/top"], link("../..", "cycle"));
    assert_eq!(inputs["x/to_y/to_x"], link("../x", "cycle"));
    assert_eq!(inputs["src/self"], link("self", "dangling"));
    assert_eq!(inputs["src/ping"], link("pong", "dangling"));
    let out = outside.path().to_str().unwrap();
    assert_eq!(inputs["src/out"], link(out, "outside-workspace"));
    // Naming such a link, or walking through it, is an error: nothing could be keyed.
    for p in ["src/out", "src/out/*", "src/out/"] {
        let err = TaskKeyBuilder::default().input(p).build(w).unwrap_err();
        assert!(
            err.to_string().contains("outside the workspace"),
            "{p}: {err}"
        );
    }
    // A file outside the workspace reached through a link still joins by its content.
    let k = key_of("src/out.txt", w);
    fs::write(outside.path().join("big.txt"), "changed").unwrap();
    assert_ne!(key_of("src/out.txt", w), k);
}

/// Links that multiply a tree, or nest very deep, end in an error, not a walk of
/// millions of paths.
#[cfg(unix)]
#[test]
fn link_walks_are_bounded() {
    use std::os::unix::fs::symlink;
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path();
    // l0/{a,b} -> l1, l1/{a,b} -> l2, ...: 2^18 paths without a cycle.
    for i in 0..18 {
        fs::create_dir(w.join(format!("l{i}"))).unwrap();
        fs::write(w.join(format!("l{i}/f")), "f").unwrap();
        symlink(format!("../l{}", i + 1), w.join(format!("l{i}/a"))).unwrap();
        symlink(format!("../l{}", i + 1), w.join(format!("l{i}/b"))).unwrap();
    }
    fs::create_dir(w.join("l18")).unwrap();
    let err = build_within(&TaskKeyBuilder::default().input("l0"), w).unwrap_err();
    assert!(
        err.to_string().contains("entries are reached through"),
        "{err}"
    );
    // n0/next -> n1, n1/next -> n2, ...: 45 deep.
    for i in 0..45 {
        fs::create_dir(w.join(format!("n{i}"))).unwrap();
        symlink(format!("../n{}", i + 1), w.join(format!("n{i}/next"))).unwrap();
    }
    fs::create_dir(w.join("n45")).unwrap();
    fs::write(w.join("n45/f"), "f").unwrap();
    let err = build_within(&TaskKeyBuilder::default().input("n0"), w).unwrap_err();
    assert!(err.to_string().contains("nested more than"), "{err}");
    assert!(build_within(&TaskKeyBuilder::default().input("n10"), w).is_ok());
}

/// Pins the encoding of symlinks and special files (see `encoding_is_pinned`).
#[cfg(unix)]
#[test]
fn symlink_and_special_file_encoding_is_pinned() {
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path();
    fs::create_dir(w.join("d")).unwrap();
    fs::write(w.join("d/in.txt"), "hello").unwrap();
    std::os::unix::fs::symlink("in.txt", w.join("d/link")).unwrap();
    std::os::unix::fs::symlink("nowhere", w.join("d/zlink")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(w.join("d/p"))
        .status()
        .unwrap();
    assert!(fifo.success());
    let key = build_within(&TaskKeyBuilder::default().portable().input("d"), w)
        .unwrap()
        .0;
    let mut m: Vec<u8> = Vec::new();
    let s = |m: &mut Vec<u8>, x: &[u8]| {
        m.extend_from_slice(&(x.len() as u64).to_le_bytes());
        m.extend_from_slice(x);
    };
    let num = |m: &mut Vec<u8>, n: u64| m.extend_from_slice(&n.to_le_bytes());
    m.extend_from_slice(b"taskcache-key\0");
    num(&mut m, 2);
    m.push(b'A');
    s(&mut m, b"blake3");
    m.extend_from_slice(b"P\0"); // portable: no platform
    m.push(b'C');
    num(&mut m, 0);
    m.extend_from_slice(b"S\0E");
    num(&mut m, 0);
    m.push(b'O');
    num(&mut m, 0);
    m.push(b'G');
    num(&mut m, 1);
    s(&mut m, b"d");
    m.push(b'I');
    num(&mut m, 4);
    let hello = |m: &mut Vec<u8>| {
        m.extend_from_slice(b"f\0");
        m.extend_from_slice(blake3::hash(b"hello").as_bytes());
        m.extend_from_slice(&5u64.to_le_bytes());
    };
    s(&mut m, b"d/in.txt");
    hello(&mut m);
    s(&mut m, b"d/link");
    m.push(b'L');
    s(&mut m, b"in.txt");
    hello(&mut m);
    s(&mut m, b"d/p");
    m.push(b's');
    s(&mut m, b"fifo");
    s(&mut m, b"d/zlink");
    m.push(b'L');
    s(&mut m, b"nowhere");
    m.push(b'n');
    s(&mut m, b"dangling");
    m.push(b'T');
    num(&mut m, 0);
    assert_eq!(
        key.to_string(),
        format!("blake3:{}", blake3::hash(&m).to_hex())
    );
}

#[test]
fn opting_in_to_absolute_symlinks_gives_the_task_a_key_of_its_own() {
    let ws = tempfile::tempdir().unwrap();
    let mut task = Task::new("venv", ["python3", "-m", "venv", ".venv"]);
    let plain = TaskKeyBuilder::from_task(&task, DigestAlgorithm::Blake3)
        .build(ws.path())
        .unwrap();
    task.allow_absolute_symlinks = true;
    let opted = TaskKeyBuilder::from_task(&task, DigestAlgorithm::Blake3)
        .build(ws.path())
        .unwrap();
    assert_ne!(plain, opted);
}
