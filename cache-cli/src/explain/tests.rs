//! Unit tests of the explanation of keys and of the per-id manifests.

use super::*;
use cache_core::RelPath;

fn manifest(files: &[(&str, &str)], cc: Option<&str>) -> Manifest {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        std::fs::write(dir.path().join(path), content).unwrap();
    }
    let spec = TaskSpec {
        command: vec!["cc".into(), "main.c".into()],
        env: vec!["CC".into()],
        inputs: vec!["*.c".into()],
        outputs: vec![RelPath::parse("a.out").unwrap()],
        absolute_symlinks: false,
    };
    let var = |n: &str| (n == "CC").then(|| cc.map(OsString::from)).flatten();
    let (key, inputs) = crate::key::task_key(&spec, dir.path(), var).unwrap();
    Manifest::new(&spec, &key.to_string(), &inputs, var)
}

#[test]
fn changes_name_files_and_variables_never_values() {
    let last = manifest(&[("a.c", "1"), ("b.c", "2")], Some("gcc-secret-value"));
    let now = manifest(&[("a.c", "1!"), ("c.c", "3")], Some("clang-secret-value"));
    let c = Changes::between(&last, &now);
    assert_eq!(c.changed, ["a.c"]);
    assert_eq!(c.added, ["c.c"]);
    assert_eq!(c.removed, ["b.c"]);
    assert_eq!(c.env, ["CC (value changed)"]);
    assert!(c.other.is_empty(), "{c:?}");
    let all = format!("{}\n{}\n{:?}", c.summary(), c.lines().join("\n"), now);
    assert!(!all.contains("secret"), "{all}");
    let unset = manifest(&[("a.c", "1"), ("b.c", "2")], None);
    assert_eq!(Changes::between(&last, &unset).env, ["CC (now unset)"]);
    assert!(Changes::between(&last, &last).is_empty());
}

#[test]
fn the_summary_names_a_few_files_and_counts_the_rest() {
    let mut last = manifest(&[("a.c", "1")], None);
    let mut now = last.clone();
    for i in 0..7 {
        last.files.insert(format!("f{i}.c"), "old".into());
        now.files.insert(format!("f{i}.c"), "new".into());
    }
    now.outputs = vec!["b.out".into()];
    let summary = Changes::between(&last, &now).summary();
    assert!(
        summary.starts_with("changed: f0.c, f1.c, f2.c, f3.c, f4.c and 2 more; outputs changed"),
        "{summary}"
    );
}

#[test]
fn a_manifest_round_trips_and_a_bad_one_is_refused() {
    let m = manifest(&[("a.c", "1")], Some("gcc"));
    let bytes = m.to_json("build").unwrap();
    assert_eq!(Manifest::from_json(&bytes, "build").unwrap(), m);
    assert!(Manifest::from_json(&bytes, "test").is_err(), "another id");
    assert!(Manifest::from_json(b"{}", "build").is_err());
    assert!(Manifest::from_json(b"\xff\xfe", "build").is_err());
    let mut v: Value = serde_json::from_slice(&bytes).unwrap();
    v["files"]["a.c"] = json!(7);
    let bad = serde_json::to_vec(&v).unwrap();
    assert!(Manifest::from_json(&bad, "build").is_err());
}

/// A manifest kept before keys named their platform themselves (its `"salt"` was the
/// command's: `taskcache-cli-key/2`, OS, architecture) still reads, and the change it
/// shows is the key format, which is why that run missed.
#[test]
fn a_manifest_from_the_salted_key_format_says_the_format_changed() {
    let now = manifest(&[("a.c", "1")], Some("gcc"));
    assert!(
        now.format.starts_with("taskcache-key/2, platform "),
        "{}",
        now.format
    );
    let mut v: Value = serde_json::from_slice(&now.to_json("build").unwrap()).unwrap();
    v["salt"] = json!("taskcache-cli-key/2 linux x86_64");
    let last = Manifest::from_json(&serde_json::to_vec(&v).unwrap(), "build").unwrap();
    let c = Changes::between(&last, &now);
    assert_eq!(
        c.other,
        ["key format or platform changed; it was: taskcache-cli-key/2 linux x86_64"]
    );
    assert!(c.added.is_empty() && c.changed.is_empty() && c.env.is_empty());
}

#[test]
fn too_many_files_are_counted_not_listed() {
    let mut m = manifest(&[("a.c", "1")], None);
    for i in 0..=MAX_FILES {
        m.files.insert(format!("f{i}"), "x".into());
    }
    let back = Manifest::from_json(&m.to_json("x").unwrap(), "x").unwrap();
    assert!(back.files.is_empty());
    assert_eq!(back.files_omitted, m.files.len() as u64);
    assert!(Changes::between(&back, &m).files_unknown);
}

#[test]
fn saved_only_in_a_cache_and_loaded_back() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(&[("a.c", "1")], None);
    save(dir.path(), "build", &m);
    assert!(
        !dir.path().join(IDS_DIR).exists(),
        "wrote into a directory that is not a cache"
    );
    std::fs::write(dir.path().join(cache_local::LAYOUT_FILE), "x").unwrap();
    save(dir.path(), "build", &m);
    assert_eq!(load(dir.path(), "build"), Some(m));
    assert_eq!(load(dir.path(), "other"), None);
    let names: Vec<_> = std::fs::read_dir(dir.path().join(IDS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "a temporary file was left: {names:?}");
    std::fs::write(manifest_path(dir.path(), "build"), b"{not json").unwrap();
    assert_eq!(load(dir.path(), "build"), None);
}

#[test]
fn names_with_control_characters_are_escaped_and_keys_checked() {
    let mut last = manifest(&[("a.c", "1")], None);
    last.files
        .insert("x\ntaskcache: hit forged\x1b[2J".into(), "x".into());
    last.env.insert("E\rV".into(), None);
    let now = manifest(&[("a.c", "1")], None);
    let c = Changes::between(&last, &now);
    let text = format!("{}|{}", c.summary(), c.lines().join("|"));
    assert!(
        !text.contains('\n') && !text.contains('\x1b') && !text.contains('\r'),
        "{text:?}"
    );
    assert!(text.contains("removed: \"x\\ntaskcache"), "{text}");
    let mut v: Value = serde_json::from_slice(&last.to_json("b").unwrap()).unwrap();
    v["key"] = json!("blake3:not-hex\u{1b}");
    let bad = serde_json::to_vec(&v).unwrap();
    assert!(Manifest::from_json(&bad, "b").is_err());
}

#[test]
fn stale_temporary_manifests_are_swept_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(cache_local::LAYOUT_FILE), "x").unwrap();
    let ids = dir.path().join(IDS_DIR);
    std::fs::create_dir(&ids).unwrap();
    let old = std::time::SystemTime::now() - 2 * STALE_TEMP;
    let age = |name: &str| {
        let f = std::fs::File::create(ids.join(name)).unwrap();
        f.set_modified(old).unwrap();
    };
    age(".dead.json.1.2.tmp");
    age("someone-elses.txt");
    std::fs::write(ids.join(".fresh.json.3.4.tmp"), "x").unwrap();
    save(dir.path(), "build", &manifest(&[("a.c", "1")], None));
    let mut names: Vec<String> = std::fs::read_dir(&ids)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[0], ".fresh.json.3.4.tmp");
    let manifest_name = manifest_path(dir.path(), "build");
    let manifest_name = manifest_name.file_name().unwrap().to_string_lossy();
    assert_eq!(names[1..], [&*manifest_name, "someone-elses.txt"]);
}

#[test]
fn the_least_recently_written_manifests_go_beyond_the_caps_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join(IDS_DIR);
    std::fs::create_dir(&ids).unwrap();
    let start = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let at = |n: u64| start + std::time::Duration::from_secs(60 * n);
    for n in 0..6u64 {
        let f = std::fs::File::create(ids.join(format!("m{n}.json"))).unwrap();
        std::io::Write::write_all(&mut &f, &[b'x'; 100]).unwrap();
        f.set_modified(at(n)).unwrap();
    }
    // Older than every manifest, but not manifests: kept, and the link not followed.
    let outside = dir.path().join("outside.json");
    std::fs::write(&outside, "keep").unwrap();
    std::os::unix::fs::symlink(&outside, ids.join("link.json")).unwrap();
    let notes = std::fs::File::create(ids.join("notes.txt")).unwrap();
    notes.set_modified(at(0)).unwrap();
    let names = || {
        let mut v: Vec<String> = std::fs::read_dir(&ids)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };

    sweep_with(&ids, 10, u64::MAX);
    assert_eq!(names().len(), 8, "under both caps nothing goes");

    sweep_with(&ids, 3, u64::MAX);
    assert_eq!(
        names(),
        ["link.json", "m3.json", "m4.json", "m5.json", "notes.txt"]
    );

    sweep_with(&ids, 10, 200);
    assert_eq!(names(), ["link.json", "m4.json", "m5.json", "notes.txt"]);

    // The newest is kept even alone over the byte cap.
    sweep_with(&ids, 10, 1);
    assert_eq!(names(), ["link.json", "m5.json", "notes.txt"]);
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
}
