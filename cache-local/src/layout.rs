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
//!
//! The cache directory is opened, never followed ([`crate::fsat`]): `open` holds
//! handles on the root and its four directories, and every name below them is resolved
//! from those handles without following a link. Paths are kept for messages and for
//! the blob files handed to `cache-core`.

use crate::claim::{self, LAYOUT_FILE, LAYOUT_MAGIC, LAYOUT_VERSION};
use crate::fsat::{self, Access, DirAt, FileAt, Meta, Node};
use cache_core::{BackendError, BackendResult, BlobRef, Digest, DigestAlgorithm};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// The most of a layout file that is ever read (it holds one short line).
const MAX_LAYOUT_BYTES: u64 = 256;

/// Where a digest-named file lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Area {
    Blobs,
    Entries,
}

/// Handles and paths of one cache directory.
#[derive(Debug)]
pub(crate) struct Layout {
    pub root: PathBuf,
    pub blobs: PathBuf,
    pub entries: PathBuf,
    pub tmp: PathBuf,
    pub stats: PathBuf,
    pub durable: bool,
    root_fd: OwnedFd,
    blobs_fd: OwnedFd,
    entries_fd: OwnedFd,
    tmp_fd: OwnedFd,
    stats_fd: OwnedFd,
    /// `<area>/<algorithm>` handles, opened at first use (see [`Layout::algo_dir`]).
    algo_dirs: [OnceLock<OwnedFd>; 4],
}

fn ctx<'a>(operation: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BackendError + 'a {
    move |e| BackendError::io_with_context(operation, path, e)
}

fn refuse(file: &Path, msg: String) -> BackendError {
    BackendError::io_with_context(
        "open cache directory: layout file",
        file,
        io::Error::new(io::ErrorKind::InvalidData, msg),
    )
}

impl Layout {
    /// Creates the directory and its layout if needed; refuses another layout version,
    /// and a layout file that is not a regular file. A symbolic link or special file
    /// planted in place of one of the four directories is replaced by a directory.
    pub fn open(dir: &Path, durable: bool, create: bool) -> BackendResult<Layout> {
        claim::claim(dir, create)?;
        // The root is the caller's path (which may go through links of their own);
        // everything below it is resolved from this handle.
        let root_fd = rfs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| BackendError::io_with_context("open cache directory", dir, e.into()))?;
        let version_file = dir.join(LAYOUT_FILE);
        let version = read_version_file(root_fd.as_fd(), &version_file)?;
        // A damaged `LAYOUT` (a flipped bit, truncated, zeroed) in a directory that is
        // unmistakably a cache is written again: refusing would leave the cache unusable
        // for ever. A newer version's `LAYOUT`, or one in any other directory, is refused.
        let mut repair = false;
        if let Some(text) = &version {
            if let Err(e) = claim::check_version(&version_file, text) {
                if claim::parse_version(text) != claim::Version::Unreadable
                    || !claim::recognisable(dir)
                {
                    return Err(e);
                }
                tracing::warn!(
                    path = %version_file.display(),
                    "the cache's LAYOUT file is damaged (it says {:?}), but the directory is a \
                     taskcache cache: writing it again",
                    text.chars().take(60).collect::<String>()
                );
                repair = true;
            }
        }
        let sub = |name: &str| ensure_dir(root_fd.as_fd(), name, &dir.join(name), durable);
        let layout = Layout {
            blobs_fd: sub("blobs")?,
            entries_fd: sub("entries")?,
            tmp_fd: sub("tmp")?,
            stats_fd: sub("stats")?,
            blobs: dir.join("blobs"),
            entries: dir.join("entries"),
            tmp: dir.join("tmp"),
            stats: dir.join("stats"),
            root: dir.to_path_buf(),
            root_fd,
            algo_dirs: Default::default(),
            durable,
        };
        if version.is_none() {
            layout.create_version_file(&version_file)?;
        } else if repair {
            layout.replace_version_file(&version_file)?;
        }
        Ok(layout)
    }

    fn create_version_file(&self, version_file: &Path) -> BackendResult<()> {
        let mut tmp = self.temp()?;
        writeln!(tmp, "{LAYOUT_MAGIC} {LAYOUT_VERSION}").map_err(ctx("write", version_file))?;
        self.sync_file(&tmp, version_file)?;
        // A link never replaces anything: if another process created it meanwhile,
        // it must say the same.
        match rfs::linkat(
            self.tmp_fd.as_fd(),
            tmp.name.as_str(),
            self.root_fd.as_fd(),
            LAYOUT_FILE,
            AtFlags::empty(),
        ) {
            Ok(()) => self.sync_fd(self.root_fd.as_fd(), &self.root),
            Err(rustix::io::Errno::EXIST) => {
                match read_version_file(self.root_fd.as_fd(), version_file)? {
                    Some(text) => claim::check_version(version_file, &text),
                    None => Err(refuse(
                        version_file,
                        "it vanished while being created".into(),
                    )),
                }
            }
            Err(e) => Err(BackendError::io_with_context(
                "create",
                version_file,
                e.into(),
            )),
        }
    }

    /// Writes `LAYOUT` over a damaged one (temp + rename: readers see the old bytes or
    /// the new ones; two repairers write the same line).
    fn replace_version_file(&self, version_file: &Path) -> BackendResult<()> {
        let mut tmp = self.temp()?;
        writeln!(tmp, "{LAYOUT_MAGIC} {LAYOUT_VERSION}").map_err(ctx("write", version_file))?;
        self.sync_file(&tmp, version_file)?;
        rfs::renameat(
            self.tmp_fd.as_fd(),
            tmp.name.as_str(),
            self.root_fd.as_fd(),
            LAYOUT_FILE,
        )
        .map_err(|e| BackendError::io_with_context("replace", version_file, e.into()))?;
        tmp.kept = true;
        self.sync_fd(self.root_fd.as_fd(), &self.root)
    }

    /// Checks that the layout file is still a regular file (health checks).
    pub fn check_version_file(&self) -> BackendResult<()> {
        let path = self.root.join(LAYOUT_FILE);
        match fsat::lstat_at(self.root_fd.as_fd(), LAYOUT_FILE).map_err(ctx("inspect", &path))? {
            Node::File(_) => Ok(()),
            Node::Missing => Err(BackendError::io_with_context(
                "read",
                &path,
                io::ErrorKind::NotFound.into(),
            )),
            Node::Dir => Err(refuse(&path, not_regular("a directory"))),
            Node::Other(what) => Err(refuse(&path, not_regular(what))),
        }
    }

    fn area(&self, area: Area) -> (BorrowedFd<'_>, &Path) {
        match area {
            Area::Blobs => (self.blobs_fd.as_fd(), &self.blobs),
            Area::Entries => (self.entries_fd.as_fd(), &self.entries),
        }
    }

    /// The handle on `<dir>/tmp`.
    pub fn tmp_dir(&self) -> BorrowedFd<'_> {
        self.tmp_fd.as_fd()
    }

    /// The handle on `<dir>/stats`.
    pub fn stats_dir(&self) -> BorrowedFd<'_> {
        self.stats_fd.as_fd()
    }

    /// `<dir>/<area>/<algorithm>/<2 hex>/<64 hex>`.
    pub fn path(&self, area: Area, d: &Digest) -> PathBuf {
        let hex = d.hex();
        let mut p = self.area(area).1.join(d.algorithm().as_str());
        p.push(&hex[..2]);
        p.push(hex);
        p
    }

    /// `<dir>/blobs/<algorithm>/<2 hex>/<64 hex>`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.path(Area::Blobs, digest)
    }

    /// `<dir>/entries/<algorithm>/<2 hex>/<64 hex>`.
    pub fn entry_path(&self, key: &Digest) -> PathBuf {
        self.path(Area::Entries, key)
    }

    /// The fan-out directory of `d`, opened without following a link; `None` if it is
    /// missing or not a real directory (then nothing of the cache is stored there).
    fn fan(&self, area: Area, d: &Digest) -> io::Result<Option<OwnedFd>> {
        let Some(algo) = self.algo_dir(area, d.algorithm(), false)? else {
            return Ok(None);
        };
        match fsat::open_dir_at(algo, &d.hex()[..2])? {
            DirAt::Dir(fan) => Ok(Some(fan)),
            _ => Ok(None),
        }
    }

    /// The handle on `<area>/<algorithm>`, opened once (without following a link) and
    /// kept; with `create`, created if missing or replaced if a link or special file
    /// was planted in its place. `None` if there is none (and not `create`).
    fn algo_dir(
        &self,
        area: Area,
        algorithm: DigestAlgorithm,
        create: bool,
    ) -> io::Result<Option<BorrowedFd<'_>>> {
        let cell = &self.algo_dirs[match (area, algorithm) {
            (Area::Blobs, DigestAlgorithm::Blake3) => 0,
            (Area::Blobs, DigestAlgorithm::Sha256) => 1,
            (Area::Entries, DigestAlgorithm::Blake3) => 2,
            (Area::Entries, DigestAlgorithm::Sha256) => 3,
        }];
        if let Some(fd) = cell.get() {
            return Ok(Some(fd.as_fd()));
        }
        let (base, base_path) = self.area(area);
        let name = algorithm.as_str();
        let path = base_path.join(name);
        let fd = if create {
            let (fd, created) = fsat::ensure_dir_at(base, name, &path)?;
            if created && self.durable {
                fsat::fsync(base)?;
            }
            fd
        } else {
            match fsat::open_dir_at(base, name)? {
                DirAt::Dir(fd) => fd,
                _ => return Ok(None),
            }
        };
        // A concurrent first use may have set it: either handle is the same directory.
        let _ = cell.set(fd);
        Ok(cell.get().map(AsFd::as_fd))
    }

    /// The fan-out directory of `d`, created if missing and replaced if a link or a
    /// special file was planted in its place.
    fn fan_for_write(&self, area: Area, d: &Digest) -> BackendResult<OwnedFd> {
        let algo_path = self.area(area).1.join(d.algorithm().as_str());
        let algo = self
            .algo_dir(area, d.algorithm(), true)
            .map_err(ctx("create directory", &algo_path))?
            .expect("created when missing");
        let hex = d.hex();
        ensure_dir(algo, &hex[..2], &algo_path.join(&hex[..2]), self.durable)
    }

    /// What is stored at `d`, without following anything.
    pub fn lstat(&self, area: Area, d: &Digest) -> io::Result<Node> {
        match self.fan(area, d)? {
            Some(fan) => fsat::lstat_at(fan.as_fd(), &d.hex()),
            None => Ok(Node::Missing),
        }
    }

    /// Opens the file stored at `d` for reading if it is a regular file.
    pub fn open_file(&self, area: Area, d: &Digest) -> io::Result<FileAt> {
        match self.fan(area, d)? {
            Some(fan) => fsat::open_file_at(fan.as_fd(), &d.hex(), Access::Read),
            None => Ok(FileAt::Missing),
        }
    }

    /// Removes whatever is at `d` (a link itself, never its target). Gone: `Ok(false)`.
    pub fn remove(&self, area: Area, d: &Digest) -> io::Result<bool> {
        match self.fan(area, d)? {
            Some(fan) => fsat::remove_at(fan.as_fd(), &d.hex()),
            None => Ok(false),
        }
    }

    /// Removes `d` only if it is still the file `opened` (same device and inode), so a
    /// good copy that a concurrent store renamed into place is not removed by mistake.
    pub fn remove_if_same(&self, area: Area, d: &Digest, opened: &File) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let a = opened.metadata()?;
        let Some(fan) = self.fan(area, d)? else {
            return Ok(false);
        };
        match fsat::lstat_at(fan.as_fd(), &d.hex())? {
            Node::File(b) if a.dev() == b.dev && a.ino() == b.ino => {
                fsat::remove_at(fan.as_fd(), &d.hex())
            }
            _ => Ok(false),
        }
    }

    /// Sets the modification time of the regular file at `d` to now (recency and GC
    /// grace), through a handle opened without following. Returns the file's metadata
    /// from before, or `None` if there is no regular file there (nothing is touched).
    pub fn touch(&self, area: Area, d: &Digest) -> io::Result<Option<Meta>> {
        match self.open_file(area, d)? {
            FileAt::File(f, meta) => f.set_modified(SystemTime::now()).map(|()| Some(meta)),
            FileAt::Missing | FileAt::Other(_) => Ok(None),
        }
    }

    /// The blobs that are not stored as a regular file of their recorded size (a torn
    /// or truncated blob, a link or a special file counts as missing: its entry is a
    /// miss, and the next store replaces it). Nothing is followed or opened.
    pub fn missing_blobs(&self, blobs: impl IntoIterator<Item = BlobRef>) -> Vec<BlobRef> {
        let blobs: Vec<BlobRef> = blobs.into_iter().collect();
        // In digest order, so that one open fan-out directory serves its neighbours.
        let mut order: Vec<usize> = (0..blobs.len()).collect();
        order.sort_unstable_by_key(|&i| blobs[i].digest);
        let mut fan: Option<((DigestAlgorithm, String), Option<OwnedFd>)> = None;
        let mut missing = Vec::new();
        for i in order {
            let b = &blobs[i];
            let hex = b.digest.hex();
            let at = (b.digest.algorithm(), hex[..2].to_string());
            if fan.as_ref().is_none_or(|(k, _)| *k != at) {
                fan = Some((at, self.fan(Area::Blobs, &b.digest).ok().flatten()));
            }
            let dir = fan.as_ref().and_then(|(_, fd)| fd.as_ref());
            let present = dir.is_some_and(|fd| {
                matches!(fsat::lstat_at(fd.as_fd(), &hex), Ok(Node::File(m)) if m.len == b.size)
            });
            if !present {
                missing.push(i);
            }
        }
        missing.sort_unstable();
        missing.into_iter().map(|i| blobs[i]).collect()
    }

    /// A new temporary file in `<dir>/tmp` (removed on drop unless published).
    pub fn temp(&self) -> BackendResult<Temp<'_>> {
        for _ in 0..16 {
            let name = temp_name();
            let created = fsat::create_new_at(self.tmp_fd.as_fd(), &name).map_err(|e| {
                BackendError::io_with_context(
                    "create temporary file in cache directory",
                    &self.tmp,
                    e,
                )
            })?;
            if let Some(file) = created {
                return Ok(Temp {
                    layout: self,
                    name,
                    file,
                    kept: false,
                });
            }
        }
        Err(BackendError::io_with_context(
            "create temporary file in cache directory",
            &self.tmp,
            io::ErrorKind::AlreadyExists.into(),
        ))
    }

    /// fsyncs a file about to be published when the cache is durable.
    pub fn sync_file(&self, tmp: &Temp<'_>, dest: &Path) -> BackendResult<()> {
        if self.durable {
            tmp.file.sync_all().map_err(ctx("fsync", dest))?;
        }
        Ok(())
    }

    /// fsyncs a directory when the cache is durable.
    fn sync_fd(&self, dir: BorrowedFd<'_>, path: &Path) -> BackendResult<()> {
        if self.durable {
            fsat::fsync(dir).map_err(ctx("fsync directory", path))?;
        }
        Ok(())
    }

    /// Renames `tmp` to `d`'s name (replacing what is there: a planted link or special
    /// file is replaced, never written through), creating its fan-out directory when
    /// missing. With `durable`, the file and the directories it changed are fsynced.
    /// Inside a cache call that was cancelled nothing is renamed (the temporary file
    /// is dropped): a dropped or timed-out store publishes no blob and no entry.
    pub fn publish(&self, mut tmp: Temp<'_>, area: Area, d: &Digest) -> BackendResult<()> {
        let dest = self.path(area, d);
        self.sync_file(&tmp, &dest)?;
        let fan = self.fan_for_write(area, d)?;
        cache_core::cancel::CancelToken::current()
            .publish(|| fsat::rename_at(self.tmp_fd.as_fd(), &tmp.name, fan.as_fd(), &d.hex()))
            .map_err(ctx("rename into", &dest))?;
        tmp.kept = true;
        self.sync_fd(fan.as_fd(), dest.parent().unwrap_or(&dest))
    }

    /// Writes `bytes` to `d`'s name through a temporary file and a rename.
    pub fn write_atomic(&self, area: Area, d: &Digest, bytes: &[u8]) -> BackendResult<()> {
        let mut tmp = self.temp()?;
        tmp.write_all(bytes)
            .map_err(|e| BackendError::io_with_context("write", self.path(area, d), e))?;
        self.publish(tmp, area, d)
    }
}

/// [`fsat::ensure_dir_at`], with the parent fsynced when a directory was created in a
/// durable cache.
fn ensure_dir(
    parent: BorrowedFd<'_>,
    name: &str,
    path: &Path,
    durable: bool,
) -> BackendResult<OwnedFd> {
    let (fd, created) =
        fsat::ensure_dir_at(parent, name, path).map_err(ctx("create directory", path))?;
    if created && durable {
        fsat::fsync(parent).map_err(ctx("fsync directory", path.parent().unwrap_or(path)))?;
    }
    Ok(fd)
}

fn not_regular(what: &str) -> String {
    format!(
        "it is {what}, not a regular file (taskcache never follows or opens one in a cache \
         directory); remove it (taskcache writes a new one), or use another cache directory"
    )
}

/// Reads the layout file, at most [`MAX_LAYOUT_BYTES`]; `None` if there is none.
fn read_version_file(root: BorrowedFd<'_>, path: &Path) -> BackendResult<Option<String>> {
    let file =
        match fsat::open_file_at(root, LAYOUT_FILE, Access::Read).map_err(ctx("open", path))? {
            FileAt::File(f, _) => f,
            FileAt::Missing => return Ok(None),
            FileAt::Other(what) => return Err(refuse(path, not_regular(what))),
        };
    let mut bytes = Vec::new();
    file.take(MAX_LAYOUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(ctx("read", path))?;
    if bytes.len() as u64 > MAX_LAYOUT_BYTES {
        return Err(refuse(
            path,
            format!(
                "not a taskcache layout file (it is longer than {MAX_LAYOUT_BYTES} bytes); \
                 point taskcache at another directory"
            ),
        ));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// A temporary file in `<dir>/tmp`, removed on drop unless it was published.
pub(crate) struct Temp<'a> {
    layout: &'a Layout,
    name: String,
    file: File,
    kept: bool,
}

impl Temp<'_> {
    pub fn as_file(&self) -> &File {
        &self.file
    }

    pub fn as_file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// Its path (for messages).
    pub fn path(&self) -> PathBuf {
        self.layout.tmp.join(&self.name)
    }
}

impl Write for Temp<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        if !self.kept {
            let _ = fsat::remove_at(self.layout.tmp_fd.as_fd(), &self.name);
        }
    }
}

/// `w` and ten random letters and digits.
fn temp_name() -> String {
    const CHARS: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = RandomState::new().hash_one((n, std::process::id(), SystemTime::now()));
    let mut name = String::with_capacity(11);
    name.push('w');
    for _ in 0..10 {
        name.push(char::from(CHARS[usize::try_from(h % 62).unwrap_or(0)]));
        h /= 62;
    }
    name
}

/// A regular file found under `blobs/` or `entries/`.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub path: PathBuf,
    pub digest: Digest,
    pub len: u64,
    pub mtime: SystemTime,
}

/// What [`Layout::scan`] found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub found: Vec<Found>,
    /// Symbolic links and special files planted in the layout, removed.
    pub foreign_removed: u64,
}

impl Layout {
    /// Lists the digest-named regular files of `area`, following nothing. Names that
    /// are not the layout's are ignored; symbolic links and special files where the
    /// layout has its directories or files are removed when `remove_foreign` (GC and
    /// verify), else skipped.
    pub fn scan(&self, area: Area, remove_foreign: bool) -> BackendResult<Scan> {
        let (base, base_path) = self.area(area);
        let mut scan = Scan::default();
        for algorithm in [DigestAlgorithm::Blake3, DigestAlgorithm::Sha256] {
            let algo_path = base_path.join(algorithm.as_str());
            let Some(algo) = dir_or_foreign(
                base,
                algorithm.as_str(),
                &algo_path,
                remove_foreign,
                &mut scan,
            )?
            else {
                continue;
            };
            for fan in fsat::list_at(algo.as_fd()).map_err(ctx("list", &algo_path))? {
                if fan.len() != 2 || !fan.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    continue;
                }
                let fan_path = algo_path.join(&fan);
                let Some(dir) =
                    dir_or_foreign(algo.as_fd(), &fan, &fan_path, remove_foreign, &mut scan)?
                else {
                    continue;
                };
                scan_fan(
                    dir.as_fd(),
                    &fan,
                    &fan_path,
                    algorithm,
                    remove_foreign,
                    &mut scan,
                )?;
            }
        }
        Ok(scan)
    }
}

fn scan_fan(
    dir: BorrowedFd<'_>,
    fan: &str,
    fan_path: &Path,
    algorithm: DigestAlgorithm,
    remove_foreign: bool,
    scan: &mut Scan,
) -> BackendResult<()> {
    for name in fsat::list_at(dir).map_err(ctx("list", fan_path))? {
        if !name.starts_with(fan) {
            continue;
        }
        let Ok(digest) = Digest::parse(&format!("{}:{name}", algorithm.as_str())) else {
            continue;
        };
        let path = fan_path.join(&name);
        match fsat::lstat_at(dir, &name).map_err(ctx("inspect", &path))? {
            Node::File(m) => scan.found.push(Found {
                path,
                digest,
                len: m.len,
                mtime: m.mtime,
            }),
            Node::Other(what) => remove_foreign_at(dir, &name, &path, what, remove_foreign, scan),
            Node::Dir | Node::Missing => {}
        }
    }
    Ok(())
}

/// Opens a directory of the layout; a link or special file in its place is removed
/// (when `remove`) and `None` returned, as for anything else that is not a directory.
fn dir_or_foreign(
    parent: BorrowedFd<'_>,
    name: &str,
    path: &Path,
    remove: bool,
    scan: &mut Scan,
) -> BackendResult<Option<OwnedFd>> {
    match fsat::open_dir_at(parent, name).map_err(ctx("open directory", path))? {
        DirAt::Dir(fd) => Ok(Some(fd)),
        DirAt::Missing | DirAt::File => Ok(None),
        DirAt::Other(what) => {
            remove_foreign_at(parent, name, path, what, remove, scan);
            Ok(None)
        }
    }
}

fn remove_foreign_at(
    parent: BorrowedFd<'_>,
    name: &str,
    path: &Path,
    what: &str,
    remove: bool,
    scan: &mut Scan,
) {
    if !remove {
        return;
    }
    match fsat::remove_at(parent, name) {
        Ok(true) => {
            scan.foreign_removed += 1;
            tracing::warn!(path = %path.display(), "removed {what} planted in the cache directory (never followed)");
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not remove {what} planted in the cache directory");
        }
    }
}
