//! The one audited routine that places outputs in a workspace.
//!
//! Every backend restores through [`Workspace`]: paths are [`RelPath`]s (lexically
//! safe by construction), and here each existing component on the way is checked
//! physically: a directory is entered, a symlink is followed only if its real target is
//! a directory inside the workspace, anything else is refused. Files are written to a
//! temporary file in their target directory, verified against their digest, given their
//! mode, and renamed into place, so a reader sees the old file or the whole new one and
//! a corrupt blob never becomes a workspace file.
//!
//! Every write is made relative to its parent directory opened beneath the workspace
//! root (`openat2` with `RESOLVE_BENEATH`), so a process that swaps directories for
//! symlinks *during* a restore cannot redirect it outside (see
//! `tests/placement_race.rs`).
//!
//! Times: a restore gives every output it wrote or kept (files, directories, symlinks)
//! one modification time, taken after its last write ([`Workspace::set_mtime`]), so
//! tools that compare times (cargo, make, npm's hidden lockfile) see a consistent tree.
//!
//! Cancellation: a workspace opened inside a cache call (or one of its blocking jobs)
//! belongs to that call ([`crate::cancel`]). Once the call is cancelled (dropped, timed
//! out) no directory, temporary file, rename, symlink or time set is started, a file
//! being filled stops at its next write and its temporary file is removed, and the
//! cancel waits for a step already under way: nothing it does is visible afterwards.
//!
//! All of it is blocking filesystem work: async callers run it on a blocking thread.

use crate::cancel::CancelToken;
use crate::dirtemp::DirTemp;
use crate::path::check_symlink_target;
pub use crate::pending::PendingFile;
use crate::{BackendError, BackendResult, BlobRef, RelPath};

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// A workspace root into which outputs are restored.
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
    /// The root, opened: files are created and renamed relative to directories opened
    /// beneath it, so a symlink swapped into the path meanwhile cannot redirect them.
    #[cfg(unix)]
    root_fd: std::sync::Arc<std::os::fd::OwnedFd>,
    /// The cache call this workspace is written for: every visible step is gated on it.
    cancel: CancelToken,
}

impl Workspace {
    /// Opens an existing directory as a workspace (the path is canonicalized). Opened
    /// inside a cache call, it stops writing when the call is cancelled (see the module
    /// docs).
    pub fn open(root: &Path) -> BackendResult<Self> {
        let root = fs::canonicalize(root)
            .map_err(|e| BackendError::workspace("open workspace", root, e))?;
        if !root.is_dir() {
            return Err(BackendError::workspace(
                "open workspace",
                &root,
                io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        #[cfg(unix)]
        let root_fd = {
            use rustix::fs::{Mode, OFlags};
            let fd = rustix::fs::open(
                &root,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| BackendError::workspace("open workspace", &root, e.into()))?;
            std::sync::Arc::new(fd)
        };
        Ok(Workspace {
            root,
            #[cfg(unix)]
            root_fd,
            cancel: CancelToken::current(),
        })
    }

    /// Creates directory `path` (an absolute path under the root, as the walk found
    /// it) relative to its parent opened beneath the root, so a symlink swapped into
    /// the path cannot make it land outside.
    #[cfg(unix)]
    fn mkdir_beneath(&self, path: &Path) -> io::Result<()> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let rel = path
            .strip_prefix(&self.root)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "outside the workspace"))?;
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no directory name"))?;
        let parent = rel.parent().filter(|p| !p.as_os_str().is_empty());
        let parent = parent.unwrap_or_else(|| Path::new("."));
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        let dir = match rustix::fs::openat2(&*self.root_fd, parent, flags, Mode::empty(), resolve) {
            Err(rustix::io::Errno::NOSYS) => {
                // Old kernel: no symlink followed at all on the way.
                let mut dir = rustix::io::dup(&*self.root_fd)?;
                for comp in parent.components() {
                    dir = rustix::fs::openat(
                        &dir,
                        comp.as_os_str(),
                        flags | OFlags::NOFOLLOW,
                        Mode::empty(),
                    )?;
                }
                dir
            }
            other => other?,
        };
        self.cancel
            .publish(|| Ok(rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o777))?))
    }

    #[cfg(not(unix))]
    fn mkdir_beneath(&self, path: &Path) -> io::Result<()> {
        self.cancel.publish(|| fs::create_dir(path))
    }

    /// Opens the directory that holds `rel`, resolved beneath the workspace root by
    /// the kernel (`openat2` with `RESOLVE_BENEATH`): symlinks inside the workspace are
    /// followed, any step that would leave it is refused, and once opened the
    /// directory cannot be swapped for another by renaming paths above it.
    #[cfg(unix)]
    fn open_parent(&self, rel: &RelPath) -> BackendResult<std::os::fd::OwnedFd> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let parent = rel
            .parent()
            .map_or_else(|| ".".to_owned(), |p| p.to_string());
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(&*self.root_fd, &parent, flags, Mode::empty(), resolve) {
            Ok(fd) => Ok(fd),
            Err(rustix::io::Errno::XDEV | rustix::io::Errno::LOOP) => {
                Err(BackendError::unsafe_path(
                    rel.as_str(),
                    "a directory on its way leads outside the workspace (it changed during the restore?); refusing to write through it",
                ))
            }
            Err(rustix::io::Errno::NOSYS) => self.open_parent_strict(&parent, rel),
            Err(e) => Err(BackendError::workspace(
                "open the directory of",
                rel.to_path(&self.root),
                e.into(),
            )),
        }
    }

    /// Without `openat2` (Linux before 5.6): component by component, following no
    /// symlink at all (stricter than `RESOLVE_BENEATH`, never looser).
    #[cfg(unix)]
    fn open_parent_strict(
        &self,
        parent: &str,
        rel: &RelPath,
    ) -> BackendResult<std::os::fd::OwnedFd> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let mut dir = rustix::io::dup(&*self.root_fd)
            .map_err(|e| BackendError::workspace("open", &self.root, e.into()))?;
        for comp in parent.split('/').filter(|c| *c != ".") {
            dir = rustix::fs::openat(&dir, comp, flags, Mode::empty()).map_err(|_| {
                BackendError::unsafe_path(
                    rel.as_str(),
                    format!("{comp} on the way is not a plain directory (this kernel cannot resolve symlinks safely)"),
                )
            })?;
        }
        Ok(dir)
    }

    /// The canonical root.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks, without writing anything, that writing `rel` (a directory if `is_dir`,
    /// else a file or symlink) would stay inside the workspace and find nothing in its
    /// way, given what is on disk now. Restores call this for every output first, so a
    /// refused layout writes nothing at all.
    pub fn check(&self, rel: &RelPath, is_dir: bool) -> BackendResult<()> {
        if let Some(parent) = self.walk_parent(rel, Missing::Stop)? {
            let last = parent.join(rel.file_name());
            if let (Last::Dir, false) = (self.check_last(rel, &last, is_dir)?, is_dir) {
                return Err(BackendError::unsafe_path(
                    rel.as_str(),
                    "a directory is in the way of this file or symlink; remove it first",
                ));
            }
        }
        Ok(())
    }

    /// Checks, without writing anything, that no two of `outputs` (files and symlinks)
    /// would land on one place, given what is on disk now: a symlink inside the
    /// workspace can join two paths (`b/a` and `a` with `b -> .`), and the later write
    /// would replace the earlier one, leaving an output the entry does not hold.
    pub fn check_distinct<'a>(
        &self,
        outputs: impl IntoIterator<Item = &'a RelPath>,
    ) -> BackendResult<()> {
        use std::collections::HashMap;
        let mut landed: HashMap<PathBuf, &RelPath> = HashMap::new();
        // Outputs share parents: each is resolved once.
        let mut dirs: HashMap<Option<RelPath>, PathBuf> = HashMap::new();
        for rel in outputs {
            let parent = rel.parent();
            let dir = if let Some(dir) = dirs.get(&parent) {
                dir.clone()
            } else {
                // `Missing::Name` always reaches the parent.
                let dir = self.walk_parent(rel, Missing::Name)?.ok_or_else(|| {
                    BackendError::unsafe_path(rel.as_str(), "its directory cannot be found")
                })?;
                dirs.insert(parent, dir.clone());
                dir
            };
            if let Some(other) = landed.insert(dir.join(rel.file_name()), rel) {
                return Err(BackendError::unsafe_path(
                    rel.as_str(),
                    format!(
                        "{other} and {rel} are one path in this workspace (a symlink on the \
                         way joins them); remove the link"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Creates directory `rel` (and its parents) inside the workspace.
    pub fn create_dir(&self, rel: &RelPath) -> BackendResult<PathBuf> {
        let parent = self.parent_dir(rel)?;
        let path = parent.join(rel.file_name());
        match self.check_last(rel, &path, true)? {
            Last::Dir => Ok(path),
            Last::Missing | Last::Replaceable => {
                match self.mkdir_beneath(&path) {
                    Ok(()) => {}
                    // Another writer made it meanwhile: fine if it is a directory.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
                    Err(e) => {
                        return Err(BackendError::workspace("create directory", &path, e));
                    }
                }
                Ok(path)
            }
        }
    }

    /// Creates (or atomically replaces) symlink `rel` pointing to the relative `target`,
    /// which must stay inside the workspace.
    pub fn create_symlink(&self, rel: &RelPath, target: &str) -> BackendResult<PathBuf> {
        check_symlink_target(rel, target)?;
        self.place_symlink(rel, target, true)
    }

    /// Creates (or atomically replaces) symlink `rel` with an absolute `target`, for a
    /// task that opted in ([`crate::Task::allow_absolute_symlinks`]). The link is made
    /// beneath the workspace like any output and never followed.
    pub fn create_absolute_symlink(&self, rel: &RelPath, target: &str) -> BackendResult<PathBuf> {
        crate::path::check_absolute_symlink_target(rel, target)?;
        self.place_symlink(rel, target, false)
    }

    fn place_symlink(&self, rel: &RelPath, target: &str, relative: bool) -> BackendResult<PathBuf> {
        let parent = self.parent_dir(rel)?;
        // The link's real directory may be shallower than `rel` says (`rel` = `a/l` with
        // `a -> .`): check the target's `..` against where the link really goes.
        let real_link = parent
            .strip_prefix(&self.root)
            .ok()
            .and_then(|dir| {
                dir.join(rel.file_name())
                    .to_str()
                    .and_then(|p| RelPath::parse(p).ok())
            })
            .ok_or_else(|| {
                BackendError::unsafe_path(
                    rel.as_str(),
                    "the link's directory is outside the workspace",
                )
            })?;
        if relative {
            check_symlink_target(&real_link, target)?;
        }
        let path = parent.join(rel.file_name());
        if let Last::Dir = self.check_last(rel, &path, false)? {
            return Err(BackendError::unsafe_path(
                rel.as_str(),
                "a directory is in the way of this symlink; remove it first",
            ));
        }
        #[cfg(unix)]
        let dir = self.open_parent(rel)?;
        self.cancel
            .publish(|| -> io::Result<BackendResult<()>> {
                #[cfg(unix)]
                return Ok(make_symlink_atomically(
                    target,
                    &dir,
                    rel.file_name(),
                    &path,
                ));
                #[cfg(not(unix))]
                Ok(make_symlink_atomically(target, &parent, &path))
            })
            .map_err(|e| BackendError::workspace("create symlink", &path, e))??;
        Ok(path)
    }

    /// Whether file `rel` is already in place: a regular file (not a symlink, not
    /// hard-linked elsewhere) with exactly `expected`'s bytes, checked by hashing it, and
    /// the mode a restore would give it. If so the caller can skip rewriting it (a
    /// restore then gives it the same time as every other output, see
    /// [`Workspace::set_mtime`], so it looks as freshly restored as a rewritten file). Replacing a file costs far more than reading it on
    /// common filesystems (ext4 flushes the new file's data on a rename over an old one),
    /// and a remote backend saves the download. Anything unexpected answers `false`: the
    /// file is then rewritten through the verified path.
    #[cfg(unix)]
    pub fn in_place(&self, rel: &RelPath, expected: BlobRef, executable: bool) -> bool {
        use rustix::fs::{Mode, OFlags};
        use std::os::unix::fs::MetadataExt;
        // Opened relative to its directory opened beneath the root, without following
        // a final symlink and without blocking: what is inspected, hashed and touched
        // is the file in the workspace, whatever is swapped around it meanwhile.
        let Ok(dir) = self.open_parent(rel) else {
            return false;
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let Ok(fd) = rustix::fs::openat(&dir, rel.file_name(), flags, Mode::empty()) else {
            return false;
        };
        let file = File::from(fd);
        let Ok(meta) = file.metadata() else {
            return false;
        };
        let mode = crate::mode::restored_mode(executable);
        if !meta.is_file()
            || meta.nlink() != 1
            || meta.len() != expected.size
            || meta.mode() & 0o7777 != mode
        {
            return false;
        }
        let mut limited = (&file).take(expected.size.saturating_add(1));
        let hashed = crate::digest::copy_hashing_with(
            &mut limited,
            &mut io::sink(),
            expected.digest.algorithm(),
            &mut crate::digest::buffer_for(expected.size),
        );
        // Kept: its time is set with every other output's at the end of the restore.
        matches!(hashed, Ok(actual) if actual == expected)
    }

    /// Sets the modification (and access) time of output `rel`, a file, directory or
    /// symlink (the link itself, never its target), relative to its directory opened
    /// beneath the root. Used by a restore to give all its outputs one time.
    #[cfg(unix)]
    pub fn set_mtime(&self, rel: &RelPath, time: std::time::SystemTime) -> BackendResult<()> {
        use rustix::fs::{AtFlags, Timespec, Timestamps};
        let since = time
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let ts = Timespec {
            tv_sec: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(since.subsec_nanos()),
        };
        let dir = self.open_parent(rel)?;
        let times = Timestamps {
            last_access: ts,
            last_modification: ts,
        };
        self.cancel
            .publish(|| -> io::Result<()> {
                Ok(rustix::fs::utimensat(
                    &dir,
                    rel.file_name(),
                    &times,
                    AtFlags::SYMLINK_NOFOLLOW,
                )?)
            })
            .map_err(|e| BackendError::workspace("set the time of", rel.to_path(&self.root), e))
    }

    /// Without Unix calls, by path (following nothing is not available there).
    #[cfg(not(unix))]
    pub fn set_mtime(&self, rel: &RelPath, time: std::time::SystemTime) -> BackendResult<()> {
        let path = rel.to_path(&self.root);
        self.cancel
            .publish(|| {
                File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(time))
            })
            .map_err(|e| BackendError::workspace("set the time of", &path, e))
    }

    /// On platforms without Unix modes every file is rewritten.
    #[cfg(not(unix))]
    pub fn in_place(&self, _rel: &RelPath, _expected: BlobRef, _executable: bool) -> bool {
        false
    }

    /// Starts writing file `rel`: a temporary file is created in its target directory.
    /// Feed it with [`Write`] and call [`PendingFile::commit`]; dropping it instead
    /// removes the temporary file and leaves the workspace as it was.
    pub fn begin_file(
        &self,
        rel: &RelPath,
        expected: BlobRef,
        executable: bool,
    ) -> BackendResult<PendingFile> {
        let parent = self.parent_dir(rel)?;
        let path = parent.join(rel.file_name());
        if let Last::Dir = self.check_last(rel, &path, false)? {
            return Err(BackendError::unsafe_path(
                rel.as_str(),
                "a directory is in the way of this file; remove it first",
            ));
        }
        #[cfg(unix)]
        let dir = self.open_parent(rel)?;
        #[cfg(not(unix))]
        let dir = parent.clone();
        let tmp = DirTemp::create(dir, &parent, &self.cancel)
            .map_err(|e| BackendError::workspace("create temporary file in", &parent, e))?;
        Ok(PendingFile::new(
            self.cancel.clone(),
            tmp,
            path,
            expected,
            executable,
        ))
    }

    /// Writes file `rel` from `reader`, verifying it is exactly `expected` before it
    /// replaces anything. Returns the absolute path written.
    pub fn write_file(
        &self,
        rel: &RelPath,
        expected: BlobRef,
        executable: bool,
        reader: &mut dyn Read,
    ) -> BackendResult<PathBuf> {
        let mut pending = self.begin_file(rel, expected, executable)?;
        let mut buf = crate::digest::buffer_for(expected.size);
        let mut limited = reader.take(expected.size.saturating_add(1));
        loop {
            let n = match limited.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(BackendError::io_with_context(
                        "read the cached bytes of",
                        pending.path(),
                        e,
                    ));
                }
            };
            pending
                .write_all(&buf[..n])
                .map_err(|e| pending.io_error(e))?;
        }
        pending.commit()
    }

    fn parent_dir(&self, rel: &RelPath) -> BackendResult<PathBuf> {
        Ok(self
            .walk_parent(rel, Missing::Create)?
            .expect("walk_parent with Missing::Create always reaches the parent"))
    }

    /// Walks the parent directories of `rel`, a link inside the workspace followed;
    /// `missing` says what to do at the first one that does not exist.
    fn walk_parent(&self, rel: &RelPath, missing: Missing) -> BackendResult<Option<PathBuf>> {
        let mut cur = self.root.clone();
        let Some(parent) = rel.parent() else {
            return Ok(Some(cur));
        };
        let mut named = false;
        for comp in parent.components() {
            let next = cur.join(comp);
            if named {
                cur = next;
                continue;
            }
            match fs::symlink_metadata(&next) {
                Ok(m) if m.is_dir() => cur = next,
                Ok(m) if m.file_type().is_symlink() => cur = self.follow_dir_link(rel, &next)?,
                Ok(_) => {
                    return Err(BackendError::unsafe_path(
                        rel.as_str(),
                        format!(
                            "{} exists and is not a directory; remove it",
                            next.display()
                        ),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match missing {
                        Missing::Stop => return Ok(None),
                        Missing::Name => {
                            named = true;
                            cur = next;
                            continue;
                        }
                        Missing::Create => {}
                    }
                    match self.mkdir_beneath(&next) {
                        Ok(()) => cur = next,
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                            // Raced with another writer: look again, strictly.
                            let m = fs::symlink_metadata(&next)
                                .map_err(|e| BackendError::workspace("inspect", &next, e))?;
                            if m.is_dir() {
                                cur = next;
                            } else {
                                return Err(BackendError::unsafe_path(
                                    rel.as_str(),
                                    format!("{} appeared as a non-directory", next.display()),
                                ));
                            }
                        }
                        Err(e) => {
                            return Err(BackendError::workspace("create directory", &next, e));
                        }
                    }
                }
                Err(e) => return Err(BackendError::workspace("inspect", &next, e)),
            }
        }
        Ok(Some(cur))
    }

    /// A symlink on the way is entered only if it resolves to a directory in the workspace.
    fn follow_dir_link(&self, rel: &RelPath, link: &Path) -> BackendResult<PathBuf> {
        let resolved = fs::canonicalize(link).map_err(|_| {
            BackendError::unsafe_path(
                rel.as_str(),
                format!("{} is a dangling symlink; remove it", link.display()),
            )
        })?;
        if !resolved.starts_with(&self.root) {
            return Err(BackendError::unsafe_path(
                rel.as_str(),
                format!(
                    "{} is a symlink to {}, outside the workspace; refusing to write through it",
                    link.display(),
                    resolved.display()
                ),
            ));
        }
        if !resolved.is_dir() {
            return Err(BackendError::unsafe_path(
                rel.as_str(),
                format!(
                    "{} is a symlink to a non-directory; remove it",
                    link.display()
                ),
            ));
        }
        Ok(resolved)
    }

    fn check_last(&self, rel: &RelPath, path: &Path, follow_dir_link: bool) -> BackendResult<Last> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Ok(Last::Dir),
            Ok(m) if m.file_type().is_symlink() && follow_dir_link => {
                // An existing link standing for a directory output is kept if it is safe.
                match fs::canonicalize(path) {
                    Ok(resolved) if resolved.starts_with(&self.root) && resolved.is_dir() => {
                        Ok(Last::Dir)
                    }
                    _ => Err(BackendError::unsafe_path(
                        rel.as_str(),
                        format!(
                            "{} is a symlink that does not lead to a directory in the workspace; remove it",
                            path.display()
                        ),
                    )),
                }
            }
            Ok(m) if !m.file_type().is_symlink() && follow_dir_link => {
                Err(BackendError::unsafe_path(
                    rel.as_str(),
                    format!(
                        "{} exists and is not a directory; remove it",
                        path.display()
                    ),
                ))
            }
            Ok(_) => Ok(Last::Replaceable),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Last::Missing),
            Err(e) => Err(BackendError::workspace("inspect", path, e)),
        }
    }
}

/// What [`Workspace::walk_parent`] does at a parent directory that does not exist.
#[derive(Clone, Copy)]
enum Missing {
    /// Stop: the walk returns `None`.
    Stop,
    /// Create it (and the rest).
    Create,
    /// Take it, and the rest, as named: where a restore would create them.
    Name,
}

enum Last {
    Missing,
    Dir,
    /// A file or symlink, which rename replaces without following.
    Replaceable,
}

/// Makes the link under a temporary name in the opened directory `dir` and renames it
/// over `name` there (relative to the handle: nothing above it can redirect it).
#[cfg(unix)]
fn make_symlink_atomically(
    target: &str,
    dir: &std::os::fd::OwnedFd,
    name: &str,
    path: &Path,
) -> BackendResult<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = format!(".taskcache-{}-{n}.lnk", std::process::id());
        match rustix::fs::symlinkat(target, dir, tmp.as_str()) {
            Ok(()) => {
                return rustix::fs::renameat(dir, tmp.as_str(), dir, name).map_err(|e| {
                    let _ = rustix::fs::unlinkat(dir, tmp.as_str(), rustix::fs::AtFlags::empty());
                    BackendError::workspace("rename symlink into place", path, e.into())
                });
            }
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => {
                return Err(BackendError::workspace("create symlink", path, e.into()));
            }
        }
    }
    Err(BackendError::workspace(
        "create symlink",
        path,
        io::Error::new(io::ErrorKind::AlreadyExists, "no free temporary name"),
    ))
}

#[cfg(not(unix))]
fn make_symlink_atomically(_target: &str, _dir: &Path, path: &Path) -> BackendResult<()> {
    Err(BackendError::workspace(
        "create symlink",
        path,
        io::Error::new(
            io::ErrorKind::Unsupported,
            "symlinks are restored on Unix only",
        ),
    ))
}

#[cfg(all(test, unix))]
#[path = "workspace_tests.rs"]
mod tests;
