//! Property tests: no generated path or pre-existing symlink layout lets a write land
//! outside the workspace, and refused writes leave no trace.
//!
//! The generators build paths that `RelPath::parse` accepts by construction (and
//! symlink targets that stay within the link's depth), so nearly every case reaches the
//! workspace writer's physical checks instead of stopping at the lexical ones; a small
//! share of raw, hostile paths and targets is still mixed in. Each property counts what
//! its cases exercised and fails if too few of them wrote anything, so it cannot pass
//! vacuously.

#![cfg(unix)]

use cache_core::{BlobRef, DigestAlgorithm, RelPath, Workspace};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Path pieces chosen to hit every rule: traversal, absolute, NUL, backslash, drive
/// prefixes, dots, and the names used by the planted symlinks.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just(String::new()),
        Just("/".to_string()),
        Just("C:".to_string()),
        Just("a\\b".to_string()),
        Just("nul\0".to_string()),
        Just("out_link".to_string()),
        Just("in_link".to_string()),
        Just("file".to_string()),
        Just("dir".to_string()),
        "[a-c]{1,2}",
    ]
}

/// A raw path, often lexically unsafe (most of these are refused by `RelPath::parse`).
fn raw_path() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 1..5).prop_map(|v| v.join("/"))
}

/// One safe path component: mostly fresh names (so most writes can succeed, and later
/// operations walk through what earlier ones made), some naming what [`sandbox`]
/// planted: a directory, a file, and symlinks leading inside and outside.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => "[a-c]{1,2}",
        2 => Just("dir".to_string()),
        2 => Just("in_link".to_string()),
        1 => Just("file".to_string()),
        1 => Just("out_link".to_string()),
        1 => Just("abs_link".to_string()),
    ]
}

/// A separator as a task might spell it; `RelPath::parse` normalizes all of them.
fn sep() -> impl Strategy<Value = &'static str> {
    prop_oneof![6 => Just("/"), 1 => Just("//"), 1 => Just("/./")]
}

/// A path that `RelPath::parse` accepts, by construction: 1 to 3 safe names, joined
/// with separators, maybe with a leading `./` and a trailing `/`.
fn valid_path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((name(), sep()), 1..4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(parts, dot, trailing)| {
            let mut s = if dot { "./".to_string() } else { String::new() };
            let n = parts.len();
            for (i, (name, sep)) in parts.into_iter().enumerate() {
                s.push_str(&name);
                if i + 1 < n || trailing {
                    s.push_str(sep);
                }
            }
            s
        })
}

/// An operation's path: nearly always valid, sometimes raw and hostile.
fn op_path() -> impl Strategy<Value = String> {
    prop_oneof![9 => valid_path(), 1 => raw_path()]
}

/// A symlink target, resolved against the link's path by [`Target::text`].
#[derive(Debug, Clone)]
enum Target {
    /// Up to this many leading `..` (never more than the link's depth), then names
    /// (`.` when there are none): lexically inside, though it may still lead out
    /// through a symlink on the way.
    Inside(usize, Vec<String>),
    /// One leading `..` more than the link's depth allows, then names.
    OneTooMany(Vec<String>),
    /// A fixed text: outside (relative), dangling, or climbing after a name.
    Fixed(&'static str),
    /// The absolute path of the outside directory.
    AbsOutside,
}

impl Target {
    fn text(&self, link: &str, outside: &Path) -> String {
        let depth = RelPath::parse(link).map_or(0, |r| r.components().count() - 1);
        let spelled = |ups: usize, names: &[String]| {
            let mut parts = vec![".."; ups];
            parts.extend(names.iter().map(String::as_str));
            if parts.is_empty() {
                ".".to_string()
            } else {
                parts.join("/")
            }
        };
        match self {
            Target::Inside(ups, names) => spelled((*ups).min(depth), names),
            Target::OneTooMany(names) => spelled(depth + 1, names),
            Target::Fixed(t) => (*t).to_string(),
            Target::AbsOutside => outside.display().to_string(),
        }
    }
}

fn target() -> impl Strategy<Value = Target> {
    let names = || prop::collection::vec(name(), 0..3);
    prop_oneof![
        6 => (0usize..3, names()).prop_map(|(u, n)| Target::Inside(u, n)),
        1 => names().prop_map(Target::OneTooMany),
        1 => prop_oneof![
            Just("../outside"),
            Just("../../outside"),
            Just("dir/../.."),
            Just("in_link/../../outside"),
            Just("missing"),
        ]
        .prop_map(Target::Fixed),
        1 => Just(Target::AbsOutside),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    File(String, bool),
    Dir(String),
    Link(String, Target),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (op_path(), any::<bool>()).prop_map(|(p, x)| Op::File(p, x)),
        2 => op_path().prop_map(Op::Dir),
        2 => (op_path(), target()).prop_map(|(p, t)| Op::Link(p, t)),
    ]
}

impl Op {
    fn path(&self) -> &str {
        match self {
            Op::File(p, _) | Op::Dir(p) | Op::Link(p, _) => p,
        }
    }

    /// Runs the operation through the workspace writer: `None` if `RelPath::parse`
    /// refused the path (the writer was never reached), else the writer's answer.
    fn apply(
        &self,
        ws: &Workspace,
        outside: &Path,
    ) -> Option<cache_core::BackendResult<std::path::PathBuf>> {
        let rel = RelPath::parse(self.path()).ok()?;
        let data = b"payload";
        let blob = BlobRef::of(DigestAlgorithm::Blake3, data);
        Some(match self {
            Op::File(_, x) => ws.write_file(&rel, blob, *x, &mut &data[..]),
            Op::Dir(_) => ws.create_dir(&rel),
            Op::Link(p, t) => ws.create_symlink(&rel, &t.text(p, outside)),
        })
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walk(dir);
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let meta = fs::symlink_metadata(&p).unwrap();
            let len = if meta.is_file() { meta.len() } else { 0 };
            out.push(format!("{}:{len}", p.display()));
            if meta.is_dir() {
                out.extend(walk(&p));
            }
        }
    }
    out
}

/// Lays out: sandbox/{outside/secret, ws/{dir/, file, out_link -> ../outside, in_link -> dir, abs_link -> /sandbox/outside}}.
fn sandbox() -> (tempfile::TempDir, Workspace) {
    let sb = tempfile::tempdir().unwrap();
    let outside = sb.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), "keep").unwrap();
    let ws = sb.path().join("ws");
    fs::create_dir_all(ws.join("dir")).unwrap();
    fs::write(ws.join("file"), "f").unwrap();
    symlink("../outside", ws.join("out_link")).unwrap();
    symlink("dir", ws.join("in_link")).unwrap();
    symlink(&outside, ws.join("abs_link")).unwrap();
    let w = Workspace::open(&ws).unwrap();
    (sb, w)
}

/// Runs a property over 256 generated cases, panicking with the minimal failing case.
fn run_property<S: Strategy>(
    name: &str,
    strategy: &S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 256,
        // Integration tests have no lib.rs beside them to persist failures next to.
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    if let Err(e) = runner.run(strategy, test) {
        panic!("{name}: {e}");
    }
}

/// Counts of what a property's cases exercised.
#[derive(Default)]
struct Tally {
    /// Generated cases run.
    cases: AtomicU64,
    /// Cases in which the workspace writer placed something.
    cases_wrote: AtomicU64,
    /// Workspace operations attempted.
    ops: AtomicU64,
    /// Operations whose path passed `RelPath::parse`, so the writer checked it.
    ops_reached: AtomicU64,
    /// Operations the writer carried out.
    ops_wrote: AtomicU64,
    /// Operations the writer refused after its physical checks.
    ops_refused: AtomicU64,
}

impl Tally {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Prints the fractions and fails unless at least `min.wrote` of the cases wrote
    /// something, at least `min.reached` of the operations got past `RelPath::parse` to
    /// the writer, and at least `min.refused` of those were refused by its physical
    /// checks (so both outcomes are exercised).
    #[allow(clippy::cast_precision_loss)]
    fn report_and_check(&self, name: &str, min: Floors) {
        let cases = Self::get(&self.cases);
        let ops = Self::get(&self.ops);
        let reached_n = Self::get(&self.ops_reached);
        let frac = |n: u64, of: u64| n as f64 / of.max(1) as f64;
        let wrote = frac(Self::get(&self.cases_wrote), cases);
        let reached = frac(reached_n, ops);
        let refused = frac(Self::get(&self.ops_refused), reached_n);
        println!(
            "{name}: {cases} cases, {:.1}% wrote something; {ops} operations, {:.1}% reached the \
             writer ({} written, {} refused by its physical checks)",
            wrote * 100.0,
            reached * 100.0,
            Self::get(&self.ops_wrote),
            Self::get(&self.ops_refused),
        );
        assert!(
            cases >= 256,
            "{name}: only {cases} cases ran; proptest must not skip"
        );
        assert!(
            wrote >= min.wrote,
            "{name}: only {:.1}% of cases wrote anything (want {:.0}%): the generators \
             mostly produce paths that never reach a real write",
            wrote * 100.0,
            min.wrote * 100.0
        );
        assert!(
            reached >= min.reached,
            "{name}: only {:.1}% of operations reached the workspace writer (want {:.0}%)",
            reached * 100.0,
            min.reached * 100.0
        );
        assert!(
            refused >= min.refused,
            "{name}: only {:.1}% of the operations that reached the writer were refused by its \
             physical checks (want {:.0}%): the unsafe layouts are not exercised",
            refused * 100.0,
            min.refused * 100.0
        );
    }
}

/// Lower bounds for [`Tally::report_and_check`], as fractions. Each is at least five
/// standard deviations below what 256 cases give (measured: see the properties), so
/// they do not fail by chance.
#[derive(Clone, Copy)]
struct Floors {
    wrote: f64,
    reached: f64,
    refused: f64,
}

/// Every write that succeeds lands inside the workspace, and nothing outside changes,
/// whatever sequence of files, directories and symlinks (inside, outside, dangling,
/// through planted links) is written first.
#[test]
fn nothing_lands_outside() {
    let tally = Tally::default();
    run_property(
        "nothing_lands_outside",
        &prop::collection::vec(op(), 1..8),
        |ops| {
            Tally::add(&tally.cases);
            let (sb, ws) = sandbox();
            let outside = sb.path().join("outside");
            let before = listing(&outside);
            let mut wrote = false;
            for op in ops {
                Tally::add(&tally.ops);
                let result = op.apply(&ws, &outside);
                match &result {
                    None => {}
                    Some(Ok(written)) => {
                        Tally::add(&tally.ops_reached);
                        Tally::add(&tally.ops_wrote);
                        wrote = true;
                        // What was written is inside the workspace once its parent is resolved.
                        let parent = fs::canonicalize(written.parent().unwrap()).unwrap();
                        prop_assert!(
                            parent.starts_with(ws.root()),
                            "{op:?} wrote under {}",
                            parent.display()
                        );
                    }
                    Some(Err(_)) => {
                        Tally::add(&tally.ops_reached);
                        Tally::add(&tally.ops_refused);
                    }
                }
                prop_assert_eq!(&listing(&outside), &before, "after {:?}", op);
            }
            if wrote {
                Tally::add(&tally.cases_wrote);
            }
            // Nothing new beside the workspace either.
            let mut top: Vec<_> = fs::read_dir(sb.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            top.sort();
            prop_assert_eq!(top, vec![std::ffi::OsString::from("outside"), "ws".into()]);
            Ok(())
        },
    );
    // Measured: about 95% of cases write something, 93% of operations reach the writer
    // and a quarter of those are refused (before the generators were rebuilt: 17-19% of
    // operations wrote anything, two thirds stopped at `RelPath::parse`, and half of the
    // cases wrote nothing).
    tally.report_and_check(
        "nothing_lands_outside",
        Floors {
            wrote: 0.8,
            reached: 0.8,
            refused: 0.1,
        },
    );
}

/// A workspace check that fails writes nothing; one that passes is followed by a
/// successful write. The layout is the sandbox after up to three random operations, and
/// the write is a file or a directory at a path `RelPath::parse` accepts.
#[test]
fn check_predicts_writes() {
    let tally = Tally::default();
    run_property(
        "check_predicts_writes",
        &(
            prop::collection::vec(op(), 0..4),
            valid_path(),
            any::<bool>(),
        ),
        |(setup, p, is_dir)| {
            Tally::add(&tally.cases);
            let (sb, ws) = sandbox();
            let outside = sb.path().join("outside");
            for op in &setup {
                // Any outcome: the operations only shape the layout.
                let _ = op.apply(&ws, &outside);
            }
            Tally::add(&tally.ops);
            let rel = RelPath::parse(&p);
            prop_assert!(rel.is_ok(), "valid_path() made {p:?}: {rel:?}");
            let rel = rel.unwrap();
            Tally::add(&tally.ops_reached);
            let before = listing(ws.root());
            let data = b"x".to_vec();
            let blob = BlobRef::of(DigestAlgorithm::Blake3, &data);
            let write = || {
                if is_dir {
                    ws.create_dir(&rel)
                } else {
                    ws.write_file(&rel, blob, false, &mut &data[..])
                }
            };
            if let Err(e) = ws.check(&rel, is_dir) {
                Tally::add(&tally.ops_refused);
                prop_assert!(
                    write().is_err(),
                    "check refused {rel:?} ({e}) but the write went through"
                );
                prop_assert_eq!(listing(ws.root()), before);
            } else {
                let written = write();
                prop_assert!(
                    written.is_ok(),
                    "check passed {rel:?} but the write failed: {written:?}"
                );
                Tally::add(&tally.ops_wrote);
                Tally::add(&tally.cases_wrote);
            }
            Ok(())
        },
    );
    // Every case reaches the check and the write (the path parses by construction; before,
    // 62-71% of cases returned early on a path `RelPath::parse` refused, and 21-27% wrote).
    // Measured: about 81% of cases write and 19% are refused, and both branches assert.
    tally.report_and_check(
        "check_predicts_writes",
        Floors {
            wrote: 0.6,
            reached: 1.0,
            refused: 0.05,
        },
    );
}

#[test]
fn refuses_symlink_escapes_with_clear_errors() {
    let (_sb, ws) = sandbox();
    let data = b"x".to_vec();
    let blob = BlobRef::of(DigestAlgorithm::Blake3, &data);
    for p in ["out_link/x", "abs_link/x", "out_link/deeper/x"] {
        let rel = RelPath::parse(p).unwrap();
        let err = ws
            .write_file(&rel, blob, false, &mut &data[..])
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the workspace"), "{p}: {err}");
        assert!(ws.check(&rel, false).is_err());
    }
    let rel = RelPath::parse("file/x").unwrap();
    let err = ws
        .write_file(&rel, blob, false, &mut &data[..])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a directory"), "{err}");
    // Through a symlink that stays inside: allowed, lands in `dir`.
    let rel = RelPath::parse("in_link/x").unwrap();
    let written = ws.write_file(&rel, blob, false, &mut &data[..]).unwrap();
    assert_eq!(fs::read(ws.root().join("dir/x")).unwrap(), data);
    assert!(written.starts_with(ws.root()));
}

#[test]
fn replaces_atomically_and_sets_and_clears_exec_bit() {
    use std::os::unix::fs::PermissionsExt;
    let (_sb, ws) = sandbox();
    let rel = RelPath::parse("bin/tool").unwrap();
    let v1 = b"#!/bin/sh\necho 1\n".to_vec();
    let v2 = b"data".to_vec();
    let p = ws
        .write_file(
            &rel,
            BlobRef::of(DigestAlgorithm::Blake3, &v1),
            true,
            &mut &v1[..],
        )
        .unwrap();
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let p = ws
        .write_file(
            &rel,
            BlobRef::of(DigestAlgorithm::Sha256, &v2),
            false,
            &mut &v2[..],
        )
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), v2);
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // Replacing a symlink replaces the link, not its target.
    let rel = RelPath::parse("in_link").unwrap();
    ws.write_file(
        &rel,
        BlobRef::of(DigestAlgorithm::Blake3, &v2),
        false,
        &mut &v2[..],
    )
    .unwrap();
    assert!(
        fs::symlink_metadata(ws.root().join("in_link"))
            .unwrap()
            .is_file()
    );
    assert!(ws.root().join("dir").is_dir());
}

#[test]
fn corrupt_bytes_leave_no_file_and_no_temp() {
    let (_sb, ws) = sandbox();
    let good = b"good bytes".to_vec();
    let blob = BlobRef::of(DigestAlgorithm::Blake3, &good);
    let rel = RelPath::parse("dir/out.bin").unwrap();
    let before = listing(ws.root());
    for bad in [
        &b"bad bytes!"[..],
        &b"good byte"[..],
        &b"good bytes and more"[..],
    ] {
        let err = ws.write_file(&rel, blob, false, &mut &bad[..]).unwrap_err();
        assert!(
            matches!(err, cache_core::BackendError::DigestMismatch { .. }),
            "{err}"
        );
        assert_eq!(
            listing(ws.root()),
            before,
            "no file and no temporary file may remain"
        );
    }
    // An existing good file survives a failed replacement.
    ws.write_file(&rel, blob, false, &mut &good[..]).unwrap();
    assert!(ws.write_file(&rel, blob, false, &mut &b"evil"[..]).is_err());
    assert_eq!(fs::read(ws.root().join("dir/out.bin")).unwrap(), good);
}

#[test]
fn directories_and_symlinks() {
    let (_sb, ws) = sandbox();
    ws.create_dir(&RelPath::parse("a/b/empty").unwrap())
        .unwrap();
    assert!(ws.root().join("a/b/empty").is_dir());
    ws.create_dir(&RelPath::parse("a/b/empty").unwrap())
        .unwrap(); // idempotent
    ws.create_symlink(&RelPath::parse("a/link").unwrap(), "b/empty")
        .unwrap();
    assert_eq!(
        fs::read_link(ws.root().join("a/link")).unwrap(),
        Path::new("b/empty")
    );
    ws.create_symlink(&RelPath::parse("a/link").unwrap(), "../dir")
        .unwrap(); // replace
    assert_eq!(
        fs::read_link(ws.root().join("a/link")).unwrap(),
        Path::new("../dir")
    );
    assert!(
        ws.create_symlink(&RelPath::parse("a/esc").unwrap(), "../../x")
            .is_err()
    );
    assert!(
        ws.create_symlink(&RelPath::parse("dir").unwrap(), "a")
            .is_err(),
        "a directory is in the way"
    );
    assert!(
        ws.create_dir(&RelPath::parse("file").unwrap()).is_err(),
        "a file is in the way"
    );
    assert!(
        ws.create_dir(&RelPath::parse("out_link").unwrap()).is_err(),
        "symlink leaving the workspace"
    );
}
