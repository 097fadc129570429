//! Where things live under the cache directory, and the two primitives every write
//! goes through: a temporary file inside the cache (so the rename is atomic) and its
//! publication by rename, with fsyncs when the cache is durable.
//!
//! ```text
//! <dir>/LAYOUT                          "taskcache-local-layout 1"
//! <dir>/blobs/<algorithm>/<2 hex>/<64 hex>     file contents, by content digest
//! <dir>/entries/<algorithm>/<2 hex>/<64 hex>   encoded ActionRecords, by task digest
//! <dir>/tmp/                            temporary files of writers (stale ones: GC)
//! <dir>/stats/log                       append-only hit/miss/size log
//! ```

use cache_core::{BackendError, BackendResult, BlobRef, Digest, DigestAlgorithm};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use tempfile::NamedTempFile;

/// Name of the layout version file.
pub const LAYOUT_FILE: &str = "LAYOUT";
/// The layout this code reads and writes.
pub const LAYOUT_VERSION: u32 = 1;
const LAYOUT_MAGIC: &str = "taskcache-local-layout";

/// Paths of one cache directory.
#[derive(Debug)]
pub(crate) struct Layout {
    pub root: PathBuf,
    pub blobs: PathBuf,
    pub entries: PathBuf,
    pub tmp: PathBuf,
    pub stats: PathBuf,
    pub durable: bool,
}

fn ctx<'a>(operation: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BackendError + 'a {
    move |e| BackendError::io_with_context(operation, path, e)
}

impl Layout {
    /// Creates the directory and its layout if needed; refuses another layout version.
    pub fn open(dir: &Path, durable: bool) -> BackendResult<Layout> {
        fs::create_dir_all(dir).map_err(ctx("create cache directory", dir))?;
        let layout = Layout {
            blobs: dir.join("blobs"),
            entries: dir.join("entries"),
            tmp: dir.join("tmp"),
            stats: dir.join("stats"),
            root: dir.to_path_buf(),
            durable,
        };
        let version_file = dir.join(LAYOUT_FILE);
        match fs::read_to_string(&version_file) {
            Ok(text) => check_version(&version_file, &text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(BackendError::io_with_context("read", &version_file, e)),
        }
        for d in [&layout.blobs, &layout.entries, &layout.tmp, &layout.stats] {
            match fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(BackendError::io_with_context("create directory", d, e)),
            }
        }
        if !version_file.exists() {
            let mut tmp = layout.temp()?;
            writeln!(tmp, "{LAYOUT_MAGIC} {LAYOUT_VERSION}")
                .map_err(ctx("write", &version_file))?;
            layout.sync_file(&tmp, &version_file)?;
            match tmp.persist_noclobber(&version_file) {
                Ok(_) => layout.sync_dir(dir)?,
                // Another process created it meanwhile: it must say the same.
                Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                    let text =
                        fs::read_to_string(&version_file).map_err(ctx("read", &version_file))?;
                    check_version(&version_file, &text)?;
                }
                Err(e) => {
                    return Err(BackendError::io_with_context(
                        "create",
                        &version_file,
                        e.error,
                    ));
                }
            }
        }
        Ok(layout)
    }

    /// `<dir>/blobs/<algorithm>/<2 hex>/<64 hex>`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        fanned(&self.blobs, digest)
    }

    /// `<dir>/entries/<algorithm>/<2 hex>/<64 hex>`.
    pub fn entry_path(&self, key: &Digest) -> PathBuf {
        fanned(&self.entries, key)
    }

    /// The blobs that are not stored as a regular file of their recorded size (a torn
    /// or truncated blob counts as missing: its entry is a miss, and the next store
    /// replaces it).
    pub fn missing_blobs(&self, blobs: impl IntoIterator<Item = BlobRef>) -> Vec<BlobRef> {
        blobs
            .into_iter()
            .filter(|b| {
                !fs::symlink_metadata(self.blob_path(&b.digest))
                    .is_ok_and(|m| m.is_file() && m.len() == b.size)
            })
            .collect()
    }

    /// A new temporary file in `<dir>/tmp` (removed on drop unless published).
    pub fn temp(&self) -> BackendResult<NamedTempFile> {
        tempfile::Builder::new()
            .prefix("w")
            .tempfile_in(&self.tmp)
            .map_err(|e| {
                BackendError::io_with_context(
                    "create temporary file in cache directory",
                    &self.tmp,
                    e,
                )
            })
    }

    /// fsyncs a file about to be published when the cache is durable.
    pub fn sync_file(&self, tmp: &NamedTempFile, dest: &Path) -> BackendResult<()> {
        if self.durable {
            tmp.as_file().sync_all().map_err(ctx("fsync", dest))?;
        }
        Ok(())
    }

    /// fsyncs a directory when the cache is durable.
    pub fn sync_dir(&self, dir: &Path) -> BackendResult<()> {
        if self.durable {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(ctx("fsync directory", dir))?;
        }
        Ok(())
    }

    /// Renames `tmp` to `dest` (replacing it), creating `dest`'s fan-out directory when
    /// missing. With `durable`, the file and the directories it changed are fsynced.
    pub fn publish(&self, tmp: NamedTempFile, dest: &Path) -> BackendResult<()> {
        self.sync_file(&tmp, dest)?;
        let parent = dest.parent().expect("cache paths have a parent");
        let tmp = match tmp.persist(dest) {
            Ok(_) => return self.sync_dir(parent),
            Err(e) if e.error.kind() == io::ErrorKind::NotFound => e.file,
            Err(e) => return Err(BackendError::io_with_context("rename into", dest, e.error)),
        };
        self.create_dirs(parent)?;
        tmp.persist(dest)
            .map_err(|e| BackendError::io_with_context("rename into", dest, e.error))?;
        self.sync_dir(parent)
    }

    /// Writes `bytes` to `dest` through a temporary file and a rename.
    pub fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> BackendResult<()> {
        let mut tmp = self.temp()?;
        tmp.write_all(bytes).map_err(ctx("write", dest))?;
        self.publish(tmp, dest)
    }

    /// Creates `dir` and missing parents below the cache root (fsyncing the parents
    /// that gained a directory when durable).
    fn create_dirs(&self, dir: &Path) -> BackendResult<()> {
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && dir != self.root => {
                self.create_dirs(dir.parent().expect("below the root"))?;
                match fs::create_dir(dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
                    Err(e) => {
                        return Err(BackendError::io_with_context("create directory", dir, e));
                    }
                }
            }
            Err(e) => return Err(BackendError::io_with_context("create directory", dir, e)),
        }
        self.sync_dir(dir.parent().expect("below the root"))
    }
}

fn fanned(base: &Path, d: &Digest) -> PathBuf {
    let hex = d.hex();
    let mut p = base.join(d.algorithm().as_str());
    p.push(&hex[..2]);
    p.push(hex);
    p
}

fn check_version(file: &Path, text: &str) -> BackendResult<()> {
    let refuse = |msg: String| {
        Err(BackendError::io_with_context(
            "open cache directory: layout file",
            file,
            io::Error::new(io::ErrorKind::InvalidData, msg),
        ))
    };
    let Some(rest) = text.trim().strip_prefix(LAYOUT_MAGIC) else {
        return refuse(format!(
            "not a taskcache layout file (it says {:?}); point taskcache at another directory",
            text.chars().take(60).collect::<String>()
        ));
    };
    match rest.trim().parse::<u32>() {
        Ok(LAYOUT_VERSION) => Ok(()),
        Ok(v) => refuse(format!(
            "the cache uses layout version {v}, but this taskcache understands version {LAYOUT_VERSION} only; \
             upgrade taskcache, or use (or empty) another cache directory"
        )),
        Err(_) => refuse(format!("unreadable layout version {:?}", rest.trim())),
    }
}

/// A file found under `blobs/` or `entries/`.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub path: PathBuf,
    pub digest: Digest,
    pub len: u64,
    pub mtime: SystemTime,
}

/// Lists the digest-named files under `base` (`blobs` or `entries`). Files that vanish
/// while listing are skipped; names that are not digests are ignored.
pub(crate) fn scan(base: &Path) -> BackendResult<Vec<Found>> {
    let mut out = Vec::new();
    for algo in read_dir_or_empty(base)? {
        let algorithm = match algo.file_name().to_str() {
            Some("blake3") => DigestAlgorithm::Blake3,
            Some("sha256") => DigestAlgorithm::Sha256,
            _ => continue,
        };
        for fan in read_dir_or_empty(&algo.path())? {
            for file in read_dir_or_empty(&fan.path())? {
                let name = file.file_name();
                let Some(hex) = name.to_str() else { continue };
                let Ok(digest) = Digest::parse(&format!("{}:{hex}", algorithm.as_str())) else {
                    continue;
                };
                let meta = match file.metadata() {
                    Ok(m) if m.is_file() => m,
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(BackendError::io_with_context("inspect", file.path(), e)),
                };
                out.push(Found {
                    path: file.path(),
                    digest,
                    len: meta.len(),
                    mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
    }
    Ok(out)
}

pub(crate) fn read_dir_or_empty(dir: &Path) -> BackendResult<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter(|e| !matches!(e, Err(e) if e.kind() == io::ErrorKind::NotFound))
            .collect::<io::Result<Vec<_>>>()
            .map_err(ctx("list", dir)),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(BackendError::io_with_context("list", dir, e)),
    }
}

/// Sets a file's modification time to now (recency and GC grace). Missing: `Ok(false)`.
pub(crate) fn touch(path: &Path) -> io::Result<bool> {
    match File::open(path) {
        Ok(f) => f.set_modified(SystemTime::now()).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes `path` only if it is still the file `opened` (same device and inode), so a
/// good copy that a concurrent store renamed into place is not removed by mistake.
pub(crate) fn remove_if_same(path: &Path, opened: &File) -> io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let a = opened.metadata()?;
        match fs::symlink_metadata(path) {
            Ok(b) if a.dev() == b.dev() && a.ino() == b.ino() => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    #[cfg(not(unix))]
    let _ = opened;
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes a file, treating "already gone" as success.
pub(crate) fn remove_quiet(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
