//! The many-small-files scenario of `cargo xtask bench s3`: a generated tree shaped like
//! a `node_modules` (10,000 text files of about 4 KiB in 100 directories, compressible
//! like source code), stored and restored by taskcache (packed entries) and by the
//! actions/cache method: `tar | zstd -T0` into one object sent with the AWS CLI, and
//! back with the AWS CLI, `zstd -d | tar -x`. Also what each leaves in the bucket.

use super::s3::{Clients, Samples, aws_cp, remove, taskcache, timed};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(super) const TREE_DIRS: usize = 100;
pub(super) const TREE_FILES_PER_DIR: usize = 100;

/// Words source files are made of: a small vocabulary, so the tree compresses about
/// as well as JavaScript does.
const WORDS: &[&str] = &[
    "const",
    "function",
    "return",
    "export",
    "import",
    "from",
    "require",
    "module",
    "exports",
    "this",
    "value",
    "options",
    "callback",
    "undefined",
    "null",
    "true",
    "false",
    "if",
    "else",
    "for",
    "let",
    "new",
    "Error",
    "throw",
    "typeof",
    "string",
    "object",
    "length",
    "push",
    "map",
    "filter",
    "reduce",
    "async",
    "await",
];

/// Writes the tree under `root/tree`.
pub(super) fn make_tree(root: &Path) -> Result<(), String> {
    let mut xof = blake3::Hasher::new().update(b"tree").finalize_xof();
    let mut pick = [0u8; 64];
    for d in 0..TREE_DIRS {
        let dir = root.join(format!("tree/pkg{d:03}/lib"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        for f in 0..TREE_FILES_PER_DIR {
            let mut text = format!("// pkg{d:03}/lib/m{f:03}.js\n");
            let mut line = 0usize;
            while text.len() < 4000 {
                xof.fill(&mut pick);
                let words: Vec<&str> = pick[..8]
                    .iter()
                    .map(|b| WORDS[usize::from(*b) % WORDS.len()])
                    .collect();
                let _ = writeln!(
                    text,
                    "{} v{line}_{:02x}{:02x} = {}({});",
                    words[0],
                    pick[8],
                    pick[9],
                    words[1..4].join("."),
                    words[4..].join(", ")
                );
                line += 1;
            }
            let path = dir.join(format!("m{f:03}.js"));
            std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// A digest of every file below `dir` with its relative path (directories walked in
/// name order).
pub(super) fn tree_digest(dir: &Path) -> Result<blake3::Hash, String> {
    fn walk(base: &Path, dir: &Path, h: &mut blake3::Hasher) -> Result<(), String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("read {}: {e}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        names.sort();
        for p in names {
            let rel = p.strip_prefix(base).map_err(|e| e.to_string())?;
            h.update(rel.as_os_str().as_encoded_bytes());
            h.update(b"\0");
            if p.is_dir() {
                walk(base, &p, h)?;
            } else {
                let bytes = std::fs::read(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
                h.update(&(bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
        }
        Ok(())
    }
    let mut h = blake3::Hasher::new();
    walk(dir, dir, &mut h)?;
    Ok(h.finalize())
}

/// Objects and bytes the server keeps under `dir` (its data directory for a prefix).
pub(super) fn stored(dir: &Path) -> (u64, u64) {
    fn walk(dir: &Path, acc: &mut (u64, u64)) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => walk(&p, acc),
                Ok(m) => {
                    acc.0 += 1;
                    acc.1 += m.len();
                }
                Err(_) => {}
            }
        }
    }
    let mut acc = (0, 0);
    walk(dir, &mut acc);
    acc
}

/// What each side left in the bucket (objects, bytes) in its last round.
#[derive(Default)]
pub(super) struct Footprint {
    pub(super) ours: (u64, u64),
    pub(super) theirs: (u64, u64),
}

/// One round of the tree scenario: taskcache stores and restores `tree`; the
/// actions/cache method packs, uploads, downloads and unpacks it.
pub(super) fn round(
    c: &Clients<'_>,
    tag: &str,
    ours_first: bool,
    ours: &mut Samples,
    theirs: &mut Samples,
    footprint: &mut Footprint,
) -> Result<(), String> {
    let (server, scratch) = (c.server, c.scratch);
    let ws = scratch.join("ws");
    let original = ws.join("tree");
    let want = tree_digest(&original)?;
    let run_ours = |ours: &mut Samples, footprint: &mut Footprint| -> Result<(), String> {
        let prefix = format!("tc-{tag}");
        ours.up
            .push(timed(&taskcache(c.bin, server, scratch, &prefix, "tree"))?);
        let kept = scratch.join("tree.orig");
        std::fs::rename(&original, &kept).map_err(|e| e.to_string())?;
        ours.down
            .push(timed(&taskcache(c.bin, server, scratch, &prefix, "tree"))?);
        let same = tree_digest(&original)? == want;
        remove(&original)?;
        std::fs::rename(&kept, &original).map_err(|e| e.to_string())?;
        let data = server.data.join(&server.bucket).join(&prefix);
        footprint.ours = stored(&data);
        remove(&data)?;
        if same {
            Ok(())
        } else {
            Err("taskcache restored a different tree".into())
        }
    };
    let run_theirs = |theirs: &mut Samples, footprint: &mut Footprint| -> Result<(), String> {
        let prefix = format!("tar-{tag}");
        let url = format!("s3://{}/{prefix}/tree.tar.zst", server.bucket);
        let archive = scratch.join("tree.tar.zst");
        let up = aws_cp(
            c.aws,
            server,
            scratch,
            &archive.display().to_string(),
            &url,
            false,
        );
        theirs.up.push(timed(&shell_then(
            &format!(
                "tar -C {} -cf - tree | zstd -q -T0 -o {}",
                sh_quote(&ws),
                sh_quote(&archive)
            ),
            &up,
        ))?);
        remove(&archive)?;
        let back = scratch.join("back");
        std::fs::create_dir_all(&back).map_err(|e| e.to_string())?;
        let down = aws_cp(
            c.aws,
            server,
            scratch,
            &url,
            &archive.display().to_string(),
            false,
        );
        theirs.down.push(timed(&then_shell(
            &down,
            &format!(
                "zstd -q -d -c {} | tar -C {} -xf -",
                sh_quote(&archive),
                sh_quote(&back)
            ),
        ))?);
        let same = tree_digest(&back.join("tree"))? == want;
        remove(&back)?;
        remove(&archive)?;
        let data = server.data.join(&server.bucket).join(&prefix);
        footprint.theirs = stored(&data);
        remove(&data)?;
        if same {
            Ok(())
        } else {
            Err("tar + zstd brought back a different tree".into())
        }
    };
    if ours_first {
        run_ours(ours, footprint)?;
        run_theirs(theirs, footprint)
    } else {
        run_theirs(theirs, footprint)?;
        run_ours(ours, footprint)
    }
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// `sh -c "SCRIPT && CMD"` with `cmd`'s environment and directory: one process tree,
/// timed as a whole.
fn shell_then(script: &str, cmd: &Command) -> Command {
    joined(cmd, &format!("{script} && \"$0\" \"$@\""))
}

/// `sh -c "CMD && SCRIPT"`.
fn then_shell(cmd: &Command, script: &str) -> Command {
    joined(cmd, &format!("\"$0\" \"$@\" && {script}"))
}

fn joined(cmd: &Command, script: &str) -> Command {
    super::s3::wrap(cmd, "sh", &["-c", script])
}

/// Prints the scenario's table and what each side left in the bucket.
pub(super) fn report(ours: &Samples, theirs: &Samples, footprint: &Footprint) {
    println!(
        "\n{} text files of ~4 KiB in {TREE_DIRS} directories (a node_modules-like tree), \
         against the actions/cache method (`tar | zstd -T0`, one object with the AWS CLI; \
         back with the AWS CLI, `zstd -d | tar -x`):\n",
        TREE_DIRS * TREE_FILES_PER_DIR
    );
    println!(
        "| what | taskcache | tar + zstd + AWS CLI | taskcache / theirs | taskcache peak RSS | theirs peak RSS |"
    );
    println!("|---|---|---|---|---|---|");
    super::s3::rows(
        &[
            ("tree, store", &ours.up, &theirs.up),
            ("tree, shared hit", &ours.down, &theirs.down),
        ],
        true,
    );
    let (o, t) = (footprint.ours, footprint.theirs);
    #[allow(clippy::cast_precision_loss)] // a ratio of byte counts, printed
    let ratio = o.1 as f64 / t.1.max(1) as f64;
    println!(
        "\nIn the bucket: taskcache {} objects, {} bytes; tar.zst {} object(s), {} bytes; taskcache / tar.zst {ratio:.2}x",
        o.0, o.1, t.0, t.1
    );
}
