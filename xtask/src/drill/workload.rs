//! The work the drills cache: `xtask drill produce I CLASS`, run by `taskcache run` as the
//! step's command, writes the outputs of entry `I` into its working directory; the
//! checker knows every byte it must have written, so a restore can be compared with
//! what the step would have produced, byte for byte.
//!
//! Two variables the key does not see steer the producer: `TASKCACHE_DRILL_CHECK` makes
//! it exit [`CHECK_EXIT`] without writing anything (so a check run tells a miss from a
//! hit by its exit code: a hit replays 0), and `TASKCACHE_DRILL_MARK` names a file it
//! creates (so a drill counts how many runs really executed the step).

use std::io::Write;
use std::path::{Path, PathBuf};

/// The exit code of the producer in check mode: the step ran, so the lookup was a miss.
pub const CHECK_EXIT: i32 = 99;
/// Set (to anything) to make the producer write nothing and exit [`CHECK_EXIT`].
pub const CHECK_ENV: &str = "TASKCACHE_DRILL_CHECK";
/// Set to a path the producer creates when it runs.
pub const MARK_ENV: &str = "TASKCACHE_DRILL_MARK";
/// Set to a number: the producer writes its outputs, then exits with it.
pub const EXIT_ENV: &str = "TASKCACHE_DRILL_EXIT";

/// How big an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A few files of bytes to tens of KiB, a symlink, a directory.
    Small,
    /// Also a 20 MiB file (over the size where copies go through the kernel).
    Medium,
    /// Also a 100 MiB file.
    Large,
    /// The gc drill's: [`SHARED_SMALL`] small files and a 1.5 MiB file whose bytes are
    /// those of every entry of its group (`I % SHARED_GROUPS`), so entries share packs
    /// and blobs; every third entry also has a 1.1 MiB file of its own. No file of the
    /// other classes (they would make every pack unique), and a short stdout.
    Shared,
}

/// Groups of [`Class::Shared`] entries with the same files: entry `I` is in group
/// `I % SHARED_GROUPS`.
pub const SHARED_GROUPS: u64 = 4;
/// Small files of a [`Class::Shared`] entry (one pack).
pub const SHARED_SMALL: u64 = 120;

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Small => "small",
            Class::Medium => "medium",
            Class::Large => "large",
            Class::Shared => "shared",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "small" => Some(Class::Small),
            "medium" => Some(Class::Medium),
            "large" => Some(Class::Large),
            "shared" => Some(Class::Shared),
            _ => None,
        }
    }
}

/// One file of an entry: path under the workspace, length, executable bit.
#[derive(Debug, Clone)]
pub struct FileSpec {
    pub path: String,
    pub len: u64,
    pub executable: bool,
}

/// The files entry `i` of `class` has (besides the symlink `out/<i>/link -> small.txt`).
pub fn files(i: u64, class: Class) -> Vec<FileSpec> {
    if class == Class::Shared {
        return shared_files(i);
    }
    let mut out = vec![
        FileSpec {
            path: format!("out/{i}/small.txt"),
            len: 10 + i % 200,
            executable: false,
        },
        FileSpec {
            path: format!("out/{i}/bin/tool"),
            len: (8 << 10) + (i % 13) * 1000,
            executable: true,
        },
        FileSpec {
            path: format!("out/{i}/empty"),
            len: 0,
            executable: false,
        },
        // The same bytes in every entry: stores share one blob.
        FileSpec {
            path: format!("out/{i}/common.bin"),
            len: 50 << 10,
            executable: false,
        },
    ];
    match class {
        Class::Small | Class::Shared => {}
        Class::Medium => out.push(FileSpec {
            path: format!("out/{i}/medium.bin"),
            len: (20 << 20) + (i % 7) * 4096,
            executable: false,
        }),
        Class::Large => out.push(FileSpec {
            path: format!("out/{i}/large.bin"),
            len: 100 << 20,
            executable: false,
        }),
    }
    out
}

/// The files of [`Class::Shared`] entry `i`: `lib/NNN.js` (64 B to 8 KiB) and
/// `assets/group.bin` (1.5 MiB) with its group's bytes, and for every third entry
/// `assets/own.bin` (1.1 MiB and a little) with its own.
fn shared_files(i: u64) -> Vec<FileSpec> {
    let g = i % SHARED_GROUPS;
    let mut out: Vec<FileSpec> = (0..SHARED_SMALL)
        .map(|k| FileSpec {
            path: format!("out/{i}/lib/{k:03}.js"),
            len: 64 + (k * 997 + g * 131) % (8 << 10),
            executable: false,
        })
        .collect();
    out.push(FileSpec {
        path: format!("out/{i}/assets/group.bin"),
        len: (3 << 20) / 2,
        executable: false,
    });
    if i % 3 == 0 {
        out.push(FileSpec {
            path: format!("out/{i}/assets/own.bin"),
            len: (11 << 20) / 10 + (i % 5) * 4096,
            executable: false,
        });
    }
    out
}

/// The seed of a file's bytes: the shared file has the same bytes in every entry, the
/// files of a [`Class::Shared`] entry but `own.bin` those of every entry of its group.
fn seed(i: u64, path: &str) -> String {
    let rel = path.split_once('/').map_or(path, |(_, r)| r);
    let rel = rel.split_once('/').map_or(rel, |(_, r)| r);
    if path.ends_with("/common.bin") {
        "common".to_owned()
    } else if rel.starts_with("lib/") || rel == "assets/group.bin" {
        format!("group {} {rel}", i % SHARED_GROUPS)
    } else {
        format!("{i} {path}")
    }
}

/// Deterministic bytes, generated in 1 MiB blocks: a block of BLAKE3 output per file,
/// its block number stamped into each block (so a block from another position, or
/// another file, never compares equal).
pub struct Bytes {
    block: Vec<u8>,
    len: u64,
    pos: u64,
}

const BLOCK: u64 = 1 << 20;

impl Bytes {
    pub fn new(seed: &str, len: u64) -> Self {
        let n = usize::try_from(BLOCK.min(len)).unwrap_or(0);
        let mut block = vec![0u8; n];
        blake3::Hasher::new()
            .update(seed.as_bytes())
            .finalize_xof()
            .fill(&mut block);
        Bytes { block, len, pos: 0 }
    }

    /// The next chunk (at most 1 MiB), or `None` at the end.
    pub fn next_chunk(&mut self) -> Option<Vec<u8>> {
        if self.pos >= self.len {
            return None;
        }
        let n = usize::try_from((self.len - self.pos).min(BLOCK)).unwrap_or(0);
        let mut chunk = self.block[..n].to_vec();
        let stamp = (self.pos / BLOCK).to_le_bytes();
        let k = stamp.len().min(n);
        chunk[..k].copy_from_slice(&stamp[..k]);
        self.pos += n as u64;
        Some(chunk)
    }
}

/// The stdout entry `i` prints: over 64 KiB now and then, so logs are stored as blobs
/// too (never for [`Class::Shared`]: a log blob of its own would make its pack unique).
pub fn stdout(i: u64, class: Class) -> Vec<u8> {
    let len = if i % 5 == 0 && class != Class::Shared {
        70 << 10
    } else {
        100 + i % 50
    };
    let mut b = Bytes::new(&format!("{i} stdout"), len);
    let mut out = Vec::new();
    while let Some(c) = b.next_chunk() {
        out.extend_from_slice(&c);
    }
    out
}

/// `xtask drill produce I CLASS`: writes entry `I` into the current directory.
pub fn produce(args: &[String]) -> Result<(), String> {
    let (Some(i), Some(class)) = (
        args.first().and_then(|s| s.parse::<u64>().ok()),
        args.get(1).and_then(|s| Class::parse(s)),
    ) else {
        return Err("usage: xtask drill produce I small|medium|large|shared".into());
    };
    if let Some(mark) = std::env::var_os(MARK_ENV) {
        std::fs::write(&mark, b"ran")
            .map_err(|e| format!("mark {}: {e}", Path::new(&mark).display()))?;
    }
    if std::env::var_os(CHECK_ENV).is_some() {
        std::process::exit(CHECK_EXIT);
    }
    for f in files(i, class) {
        write_file(Path::new(&f.path), &seed(i, &f.path), f.len, f.executable)?;
    }
    let link = PathBuf::from(format!("out/{i}/link"));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("small.txt", &link).map_err(|e| format!("symlink: {e}"))?;
    std::fs::create_dir_all(format!("out/{i}/empty-dir")).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    out.write_all(&stdout(i, class))
        .map_err(|e| e.to_string())?;
    std::io::stderr()
        .write_all(format!("entry {i} produced\n").as_bytes())
        .map_err(|e| e.to_string())?;
    if let Some(code) = std::env::var(EXIT_ENV).ok().and_then(|c| c.parse().ok()) {
        std::process::exit(code);
    }
    Ok(())
}

fn write_file(path: &Path, seed: &str, len: u64, executable: bool) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Bytes::new(seed, len);
    while let Some(c) = bytes.next_chunk() {
        f.write_all(&c)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let mode = if executable { 0o755 } else { 0o644 };
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks that `ws` holds exactly entry `i` of `class` under `out/<i>`: every file with
/// its bytes and executable bit, the symlink, the empty directory, nothing else.
pub fn check(ws: &Path, i: u64, class: Class) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let specs = files(i, class);
    for f in &specs {
        let p = ws.join(&f.path);
        let meta =
            std::fs::symlink_metadata(&p).map_err(|e| format!("entry {i}: {}: {e}", f.path))?;
        if !meta.is_file() {
            return Err(format!("entry {i}: {} is not a regular file", f.path));
        }
        if meta.len() != f.len {
            return Err(format!(
                "entry {i}: {} has {} bytes, expected {}",
                f.path,
                meta.len(),
                f.len
            ));
        }
        if (meta.permissions().mode() & 0o111 != 0) != f.executable {
            return Err(format!(
                "entry {i}: {} has the wrong executable bit",
                f.path
            ));
        }
        compare(&p, &seed(i, &f.path), f.len).map_err(|e| format!("entry {i}: {}: {e}", f.path))?;
    }
    let link = ws.join(format!("out/{i}/link"));
    match std::fs::read_link(&link) {
        Ok(t) if t == Path::new("small.txt") => {}
        Ok(t) => return Err(format!("entry {i}: link points to {}", t.display())),
        Err(e) => return Err(format!("entry {i}: link: {e}")),
    }
    if !ws.join(format!("out/{i}/empty-dir")).is_dir() {
        return Err(format!("entry {i}: empty-dir is missing"));
    }
    // Nothing else: a restore must not add files the step did not produce.
    let mut found = Vec::new();
    list(&ws.join(format!("out/{i}")), "", &mut found)?;
    let mut expected: Vec<String> = specs
        .iter()
        .map(|f| f.path.trim_start_matches(&format!("out/{i}/")).to_owned())
        .chain(["link".to_owned(), "empty-dir".to_owned()])
        .collect();
    // The directories the files are in.
    let dirs: Vec<String> = expected
        .iter()
        .filter_map(|p| p.rsplit_once('/').map(|(d, _)| d.to_owned()))
        .collect();
    expected.extend(dirs);
    expected.sort();
    expected.dedup();
    found.sort();
    if found != expected {
        return Err(format!(
            "entry {i}: the output tree is {found:?}, expected {expected:?}"
        ));
    }
    Ok(())
}

fn compare(path: &Path, seed: &str, len: u64) -> Result<(), String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut expected = Bytes::new(seed, len);
    let mut got = vec![0u8; usize::try_from(BLOCK).unwrap_or(1 << 20)];
    let mut at = 0u64;
    while let Some(want) = expected.next_chunk() {
        f.read_exact(&mut got[..want.len()])
            .map_err(|e| format!("short at byte {at}: {e}"))?;
        if got[..want.len()] != want[..] {
            return Err(format!("wrong bytes in the MiB at {at}"));
        }
        at += want.len() as u64;
    }
    let mut extra = [0u8; 1];
    if f.read(&mut extra).map_err(|e| e.to_string())? != 0 {
        return Err("longer than expected".into());
    }
    Ok(())
}

fn list(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), String> {
    for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let e = e.map_err(|e| e.to_string())?;
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        let ty = e.file_type().map_err(|e| e.to_string())?;
        if ty.is_dir() && name != "empty-dir" {
            list(&e.path(), &format!("{name}/"), out)?;
        }
        out.push(name);
    }
    Ok(())
}
