//! The many-small-files scenario of `cargo xtask bench s3`: a generated tree shaped like
//! a `node_modules` (10,000 text files of about 4 KiB in 100 directories, compressible
//! like source code), stored and restored by taskcache (packed entries) and by the
//! actions/cache method: `tar | zstd -T0` into one object sent with the AWS CLI, and
//! back with the AWS CLI, `zstd -d | tar -x`. Also what each leaves in the bucket.
//! The two sides' rounds ([`taskcache_round`], [`tar_round`]) serve the real steps
//! (`s3_real`) too.

use super::s3::{Clients, Samples, aws_cp, bucket, remove, taskcache, timed, timed_stderr};
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

/// A digest of everything below `dir` with its relative path (directories walked in
/// name order): a file's bytes and executable bit, a symlink's text (never followed).
pub(super) fn tree_digest(dir: &Path) -> Result<blake3::Hash, String> {
    use std::os::unix::fs::PermissionsExt;
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
            let meta =
                std::fs::symlink_metadata(&p).map_err(|e| format!("stat {}: {e}", p.display()))?;
            if meta.is_symlink() {
                let text =
                    std::fs::read_link(&p).map_err(|e| format!("readlink {}: {e}", p.display()))?;
                h.update(b"L");
                h.update(text.as_os_str().as_encoded_bytes());
            } else if meta.is_dir() {
                h.update(b"D");
                walk(base, &p, h)?;
            } else {
                let bytes = std::fs::read(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
                h.update(if meta.permissions().mode() & 0o100 == 0 {
                    b"F"
                } else {
                    b"X"
                });
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

/// Regular files below `dir` (symlinks not followed): how many, their bytes, and how
/// many are over `large` bytes.
pub(super) fn tree_files(dir: &Path, large: u64) -> (u64, u64, u64) {
    fn walk(dir: &Path, large: u64, acc: &mut (u64, u64, u64)) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.filter_map(Result::ok) {
            match std::fs::symlink_metadata(e.path()) {
                Ok(m) if m.is_dir() => walk(&e.path(), large, acc),
                Ok(m) if m.is_file() => {
                    acc.0 += 1;
                    acc.1 += m.len();
                    acc.2 += u64::from(m.len() > large);
                }
                _ => {}
            }
        }
    }
    let mut acc = (0, 0, 0);
    walk(dir, large, &mut acc);
    acc
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
    let ws = c.scratch.join("ws");
    let want = tree_digest(&ws.join("tree"))?;
    let mut run_ours = || -> Result<(), String> {
        let side = taskcache_round(c, &ws, "tree", &format!("tc-{tag}"), &[], want, false)?;
        ours.up.push(side.up);
        ours.down.push(side.down);
        footprint.ours = side.stored;
        Ok(())
    };
    let mut run_theirs = || -> Result<(), String> {
        let side = tar_round(c, &ws, "tree", &format!("tar-{tag}"), want)?;
        theirs.up.push(side.up);
        theirs.down.push(side.down);
        footprint.theirs = side.stored;
        Ok(())
    };
    if ours_first {
        run_ours()?;
        run_theirs()
    } else {
        run_theirs()?;
        run_ours()
    }
}

/// What one side measured in one round: (seconds, peak RSS MiB) up and down, the
/// objects and bytes it left in the bucket, and (taskcache only) the hit through an
/// empty local tier with the bucket as `--remote`.
pub(super) struct Side {
    pub(super) up: (f64, f64),
    pub(super) down: (f64, f64),
    pub(super) stored: (u64, u64),
    /// Objects by the prefix's top directory (`entries 1, packs 1`), taskcache only.
    pub(super) kinds: String,
    /// Its time, or why it did not restore the output (not fatal: reported).
    pub(super) tiered: Option<Result<(f64, f64), String>>,
}

/// taskcache stores `ws/output` into the empty prefix `prefix` (`--cache s3://...`,
/// no local tier), then, with the output moved away, restores it from there: the
/// shared hit of a runner with an empty local tier. With `tiered`, once more through a
/// fresh local directory as `--cache` and the bucket as `--remote`. Every restored
/// copy must digest to `want`; the prefix is deleted afterwards.
pub(super) fn taskcache_round(
    c: &Clients<'_>,
    ws: &Path,
    output: &str,
    prefix: &str,
    extra: &[&str],
    want: blake3::Hash,
    tiered: bool,
) -> Result<Side, String> {
    let original = ws.join(output);
    let kept = c.scratch.join(format!("{prefix}.orig"));
    let cmd = taskcache(c, ws, &bucket(c.server, prefix), output, extra);
    let up = timed(&cmd)?;
    std::fs::rename(&original, &kept).map_err(|e| e.to_string())?;
    let hit = |cmd: &Command, how: &str| -> Result<(f64, f64), String> {
        let (secs, rss, stderr) = timed_stderr(cmd)?;
        let same = original.exists() && tree_digest(&original)? == want;
        remove(&original)?;
        if same {
            Ok((secs, rss))
        } else {
            let said: String = stderr.lines().take(2).collect::<Vec<_>>().join(" / ");
            Err(format!(
                "taskcache ({how}, {secs:.1} s) did not restore {output}: {}",
                if said.is_empty() { "no warning" } else { &said }
            ))
        }
    };
    let down = hit(&cmd, "shared hit");
    let tiered = match (&down, tiered) {
        (Ok(_), true) => {
            let local = c.scratch.join(format!("{prefix}.local"));
            let mut tiers = vec!["--cache".to_owned(), local.display().to_string()];
            tiers.push("--remote".to_owned());
            tiers.push(bucket(c.server, prefix).remove(1));
            let sample = hit(&taskcache(c, ws, &tiers, output, extra), "tiered hit");
            remove(&local)?;
            Some(sample)
        }
        _ => None,
    };
    std::fs::rename(&kept, &original).map_err(|e| e.to_string())?;
    let data = c.server.data.join(&c.server.bucket).join(prefix);
    let stored = stored(&data);
    let mut kinds: Vec<String> = std::fs::read_dir(&data)
        .map_err(|e| format!("read {}: {e}", data.display()))?
        .filter_map(Result::ok)
        .map(|e| {
            let (n, bytes) = self::stored(&e.path());
            format!("{} {n}: {bytes} B", e.file_name().to_string_lossy())
        })
        .collect();
    kinds.sort();
    remove(&data)?;
    Ok(Side {
        up,
        down: down?,
        stored,
        kinds: kinds.join(", "),
        tiered,
    })
}

/// The actions/cache method on `ws/output`: `tar | zstd -T0` into one file and one
/// upload with the AWS CLI (timed together), then one download with the AWS CLI and
/// `zstd -d | tar -x` into a fresh directory (timed together), which must digest to
/// `want`. The prefix is deleted afterwards.
pub(super) fn tar_round(
    c: &Clients<'_>,
    ws: &Path,
    output: &str,
    prefix: &str,
    want: blake3::Hash,
) -> Result<Side, String> {
    let (server, scratch) = (c.server, c.scratch);
    let url = format!("s3://{}/{prefix}/{output}.tar.zst", server.bucket);
    let archive = scratch.join(format!("{prefix}.tar.zst"));
    let archive_s = archive.display().to_string();
    let up_cmd = aws_cp(c.aws, server, scratch, &archive_s, &url, false);
    let up = timed(&shell_then(
        &format!(
            "tar -C {} -cf - {} | zstd -q -T0 -o {}",
            sh_quote(ws),
            sh_quote(Path::new(output)),
            sh_quote(&archive)
        ),
        &up_cmd,
    ))?;
    remove(&archive)?;
    let back = scratch.join(format!("{prefix}.back"));
    std::fs::create_dir_all(&back).map_err(|e| e.to_string())?;
    let down_cmd = aws_cp(c.aws, server, scratch, &url, &archive_s, false);
    let down = timed(&then_shell(
        &down_cmd,
        &format!(
            "zstd -q -d -c {} | tar -C {} -xf -",
            sh_quote(&archive),
            sh_quote(&back)
        ),
    ))?;
    let same = tree_digest(&back.join(output))? == want;
    remove(&back)?;
    remove(&archive)?;
    let data = server.data.join(&server.bucket).join(prefix);
    let stored = stored(&data);
    remove(&data)?;
    if same {
        Ok(Side {
            up,
            down,
            stored,
            kinds: String::new(),
            tiered: None,
        })
    } else {
        Err(format!("tar + zstd brought back a different {output}"))
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
