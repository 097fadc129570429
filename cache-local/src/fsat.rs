//! Handle-relative filesystem calls: the cache directory is opened, never followed.
//!
//! Whoever can write the cache directory can plant anything in it. So every name is
//! resolved relative to an open directory handle, one component at a time, with
//! `O_NOFOLLOW`: no symlink anywhere below the cache root is ever followed. A file is
//! opened only after `lstat` says it is a regular file (a device is never opened), with
//! `O_NONBLOCK` (a FIFO swapped in meanwhile cannot block the open) and `O_CLOEXEC`, and
//! its type is checked again with `fstat` on the handle that was opened. Removal is
//! `unlinkat`, which removes a link itself, never its target.

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// What `lstat` says about a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub len: u64,
    pub mtime: SystemTime,
    pub dev: u64,
    pub ino: u64,
}

/// What a name in a directory is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Node {
    Missing,
    File(Meta),
    Dir,
    /// A symbolic link, FIFO, socket or device, described for messages.
    Other(&'static str),
}

/// A directory opened without following a link.
#[derive(Debug)]
pub(crate) enum DirAt {
    Dir(OwnedFd),
    Missing,
    /// A regular file where a directory was expected.
    File,
    /// A symbolic link, FIFO, socket or device, described for messages.
    Other(&'static str),
}

/// A file opened only if it is a regular file.
#[derive(Debug)]
pub(crate) enum FileAt {
    File(File, Meta),
    Missing,
    /// A directory, symbolic link, FIFO, socket or device, described for messages.
    Other(&'static str),
}

/// How [`open_file_at`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    /// Appending, created if missing (mode 0644).
    Append,
}

/// Describes a file type for messages ("a FIFO").
pub(crate) fn describe(ft: FileType) -> &'static str {
    match ft {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "a special file",
    }
}

/// `Stat` field widths differ between targets; these conversions are lossless on all.
#[allow(clippy::useless_conversion, clippy::unnecessary_fallible_conversions)]
fn meta(st: &rfs::Stat) -> Meta {
    let nanos = u32::try_from(st.st_mtime_nsec).unwrap_or(0);
    let mtime = u64::try_from(i64::from(st.st_mtime))
        .ok()
        .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::new(s, nanos)))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Meta {
        len: u64::try_from(st.st_size).unwrap_or(0),
        mtime,
        dev: u64::from(st.st_dev),
        ino: u64::from(st.st_ino),
    }
}

fn node_of(st: &rfs::Stat) -> Node {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Node::File(meta(st)),
        FileType::Directory => Node::Dir,
        ft => Node::Other(describe(ft)),
    }
}

/// `lstat` of `name` in `dir`.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Node> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(node_of(&st)),
        Err(Errno::NOENT) => Ok(Node::Missing),
        Err(e) => Err(e.into()),
    }
}

/// Opens the directory `name` in `dir`, never following a link.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<DirAt> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rfs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => Ok(DirAt::Dir(fd)),
        Err(Errno::NOENT) => Ok(DirAt::Missing),
        Err(Errno::LOOP | Errno::NOTDIR) => Ok(match lstat_at(dir, name)? {
            Node::Missing => DirAt::Missing,
            Node::File(_) => DirAt::File,
            Node::Dir => DirAt::Other("a directory replaced while being opened"),
            Node::Other(what) => DirAt::Other(what),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Opens (creating it if missing) the directory `name` in `dir`. A symbolic link or
/// special file in its place is removed (never followed) and replaced, with a warning;
/// a regular file there is an error (it is not the cache's to remove). `path` is for
/// messages. Returns the handle and whether a directory was created.
pub(crate) fn ensure_dir_at(
    dir: BorrowedFd<'_>,
    name: &str,
    path: &Path,
) -> io::Result<(OwnedFd, bool)> {
    let mut created = false;
    for _ in 0..3 {
        match open_dir_at(dir, name)? {
            DirAt::Dir(fd) => return Ok((fd, created)),
            DirAt::Missing => {}
            DirAt::File => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a regular file is where the cache keeps a directory; \
                     remove it, or use another cache directory",
                ));
            }
            DirAt::Other(what) => {
                tracing::warn!(path = %path.display(), "{what} was planted where the cache keeps a directory; removed (never followed) and replaced");
                remove_at(dir, name)?;
            }
        }
        match rfs::mkdirat(dir, name, Mode::from_raw_mode(0o755)) {
            Ok(()) => created = true,
            Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other(
        "the directory keeps being replaced while it is opened",
    ))
}

/// Opens the regular file `name` in `dir` (see the module docs): never a link, a FIFO,
/// a device or a directory, which come back as [`FileAt::Other`] unopened.
pub(crate) fn open_file_at(dir: BorrowedFd<'_>, name: &str, access: Access) -> io::Result<FileAt> {
    match lstat_at(dir, name)? {
        Node::File(_) => {}
        Node::Missing if access == Access::Append => {}
        Node::Missing => return Ok(FileAt::Missing),
        Node::Dir => return Ok(FileAt::Other("a directory")),
        Node::Other(what) => return Ok(FileAt::Other(what)),
    }
    let flags = OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let flags = match access {
        Access::Read => flags | OFlags::RDONLY,
        Access::Append => flags | OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE,
    };
    let fd = match rfs::openat(dir, name, flags, Mode::from_raw_mode(0o644)) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(FileAt::Missing),
        Err(Errno::LOOP) => return Ok(FileAt::Other("a symbolic link")),
        Err(Errno::ISDIR) => return Ok(FileAt::Other("a directory")),
        // Opening a FIFO without a reader for writing, or a socket.
        Err(Errno::NXIO) => return Ok(FileAt::Other("a special file")),
        Err(e) => return Err(e.into()),
    };
    let st = rfs::fstat(&fd)?;
    match node_of(&st) {
        Node::File(m) => Ok(FileAt::File(File::from(fd), m)),
        Node::Dir => Ok(FileAt::Other("a directory")),
        Node::Other(what) => Ok(FileAt::Other(what)),
        Node::Missing => Ok(FileAt::Missing),
    }
}

/// Creates the new regular file `name` in `dir` for reading and writing (mode 0600).
/// `Ok(None)` if the name is taken (by anything, a link included).
pub(crate) fn create_new_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Option<File>> {
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rfs::openat(dir, name, flags, Mode::from_raw_mode(0o600)) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(Errno::EXIST) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes the name `name` in `dir` (a link itself, never its target); not a directory.
/// `Ok(false)` if it was gone already.
pub(crate) fn remove_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<bool> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Renames `from` in `from_dir` to `to` in `to_dir`, replacing what is there (a link
/// or special file is replaced itself, never written through).
pub(crate) fn rename_at(
    from_dir: BorrowedFd<'_>,
    from: &str,
    to_dir: BorrowedFd<'_>,
    to: &str,
) -> io::Result<()> {
    rfs::renameat(from_dir, from, to_dir, to).map_err(Into::into)
}

/// The UTF-8 names in the directory `dir` (others are never the cache's own).
pub(crate) fn list_at(dir: BorrowedFd<'_>) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in rfs::Dir::read_from(dir)? {
        let entry = entry?;
        if let Ok(name) = entry.file_name().to_str() {
            if name != "." && name != ".." {
                names.push(name.to_owned());
            }
        }
    }
    Ok(names)
}

/// fsync of an open file or directory.
pub(crate) fn fsync(fd: impl AsFd) -> io::Result<()> {
    rfs::fsync(fd).map_err(Into::into)
}
