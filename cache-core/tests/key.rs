//! The task-digest builder: what joins the key, and that the encoding is deterministic.

use cache_core::{DigestAlgorithm, Task, TaskKeyBuilder};
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
/// encoding version in the module docs and the salt of callers.
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
    m.extend_from_slice(&1u64.to_le_bytes());
    m.push(b'A');
    s(&mut m, b"blake3");
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
