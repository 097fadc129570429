//! The key-encoder target: `TaskKeyBuilder` over crafted tasks and workspaces.

use super::Input;
use cache_core::{DigestAlgorithm, TaskKeyBuilder};
use std::path::Path;

const PATTERNS: [&str; 10] = [
    "**",
    "*",
    "a/*",
    "**/*.rs",
    "a",
    "b/**",
    "[",
    "{a,b}",
    "in_link/*",
    "out_link/**",
];

/// See the [module docs](super).
///
/// # Panics
///
/// When a property fails (a key that changes between two builds, or with where the
/// workspace is, or not with an argument; a file written).
pub fn key_inputs(data: &[u8]) {
    let mut input = Input::new(data);
    let sandbox = tempfile::tempdir().expect("a sandbox");
    let outside = sandbox.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("f"), b"outside").expect("outside");
    let ws = std::fs::canonicalize(sandbox.path())
        .expect("the sandbox")
        .join("workspace-5b07");
    std::fs::create_dir_all(ws.join("a")).expect("ws");
    let _ = std::os::unix::fs::symlink("a", ws.join("in_link"));
    let _ = std::os::unix::fs::symlink("../outside", ws.join("out_link"));
    plant(&mut input, &ws, &outside);
    let (b, command) = builder(&mut input);
    let before = super::place_snapshot(sandbox.path());
    let first = b
        .build(&ws)
        .map(|k| k.to_string())
        .map_err(|e| e.to_string());
    let second = b
        .build(&ws)
        .map(|k| k.to_string())
        .map_err(|e| e.to_string());
    assert_eq!(first, second, "two builds of one task gave two answers");
    // The costlier checks each on a share of the inputs (by a sum of their bytes).
    let sum = data.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    if sum % 4 == 0 {
        // Where the workspace is does not join the key.
        let moved = sandbox.path().join("elsewhere-5b07");
        std::fs::rename(&ws, &moved).expect("move the workspace");
        let there = b.build(&moved);
        if let Ok(k) = &first {
            let there =
                there.unwrap_or_else(|e| panic!("a key that built fails after a move: {e}"));
            assert_eq!(
                *k,
                there.to_string(),
                "the key depends on where the workspace is"
            );
        }
        std::fs::rename(&moved, &ws).expect("move the workspace back");
    }
    assert_eq!(
        super::place_snapshot(sandbox.path()),
        before,
        "computing a key changed files"
    );
    let Ok(key) = first else {
        return;
    };
    if sum % 2 == 1 {
        return;
    }
    // A different command is a different key, however its bytes are split.
    let mut longer = command.clone();
    longer.push(String::new());
    changes(&b, &ws, &key, longer, "an extra empty argument");
    if let Some(first_arg) = command
        .first()
        .filter(|a| a.len() >= 2 && a.is_char_boundary(1))
    {
        let mut split = vec![first_arg[..1].to_owned(), first_arg[1..].to_owned()];
        split.extend(command[1..].iter().cloned());
        changes(&b, &ws, &key, split, "an argument split in two");
    }
}

/// Files (some executable), directories and links (in, out, dangling) in `ws`.
fn plant(input: &mut Input<'_>, ws: &Path, outside: &Path) {
    for _ in 0..input.below(8) {
        let Ok(rel) = cache_core::RelPath::parse(&input.path()) else {
            continue;
        };
        let at = ws.join(rel.to_string());
        if !super::make_parent(ws, &at) {
            continue;
        }
        match input.below(5) {
            0 | 1 => {
                let _ = std::fs::write(&at, input.bytes(32));
                if input.below(2) == 1 {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755));
                }
            }
            2 => {
                let _ = std::fs::create_dir(&at);
            }
            3 => {
                let _ = std::os::unix::fs::symlink(outside.join("f"), &at);
            }
            _ => {
                let t = input.path();
                if !t.starts_with('/') {
                    let _ = std::os::unix::fs::symlink(&t, &at);
                }
            }
        }
    }
}

/// A builder over a crafted task, and its command.
fn builder(input: &mut Input<'_>) -> (TaskKeyBuilder, Vec<String>) {
    let algorithm = if input.below(2) == 0 {
        DigestAlgorithm::Blake3
    } else {
        DigestAlgorithm::Sha256
    };
    let command: Vec<String> = (0..=input.below(4))
        .map(|_| String::from_utf8_lossy(input.bytes(12)).into_owned())
        .collect();
    let mut b = TaskKeyBuilder::new(algorithm)
        .command(command.clone())
        .shell(input.below(2) == 1);
    for _ in 0..input.below(3) {
        let name = String::from_utf8_lossy(input.bytes(8)).into_owned();
        let value =
            (input.below(2) == 1).then(|| String::from_utf8_lossy(input.bytes(8)).into_owned());
        b = b.env(name, value.as_deref());
    }
    for _ in 0..input.below(3) {
        b = match input.below(3) {
            0 => b.input(input.path()),
            _ => b.input(PATTERNS[usize::from(input.below(10))]),
        };
    }
    for _ in 0..input.below(3) {
        b = b.output(input.path());
    }
    b = b.salt(input.bytes(8).to_vec());

    (b, command)
}

fn changes(b: &TaskKeyBuilder, ws: &Path, key: &str, command: Vec<String>, what: &str) {
    if let Ok(other) = b.clone().command(command).build(ws) {
        assert_ne!(other.to_string(), key, "{what} gives the same key");
    }
}
