//! A temporary file created in an opened directory and renamed into place relative to
//! that directory (never by a path that a swapped symlink could redirect), or removed
//! when dropped unrenamed. Used by [`crate::Workspace`] for every file it writes.

use crate::cancel::{CancelToken, OnCancel};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The directory a [`DirTemp`] lives in: an opened handle on Unix (renames are
/// relative to it), a path elsewhere.
#[cfg(unix)]
pub(crate) type Dir = std::os::fd::OwnedFd;
#[cfg(not(unix))]
pub(crate) type Dir = PathBuf;

/// Removes the temporary file `name` from `dir` (already gone is fine).
#[cfg(unix)]
fn remove(dir: &Dir, name: &str) {
    let _ = rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty());
}

#[cfg(not(unix))]
fn remove(dir: &Dir, name: &str) {
    let _ = std::fs::remove_file(dir.join(name));
}

/// A temporary file created in an opened directory and renamed into place relative to
/// it, or removed when dropped unrenamed.
pub(crate) struct DirTemp {
    dir: Arc<Dir>,
    name: String,
    file: File,
    /// For messages: where the temporary file is.
    shown: PathBuf,
    armed: bool,
    /// Removes the file if the cache call writing it is cancelled.
    _on_cancel: OnCancel,
}

impl DirTemp {
    /// Creates a temporary file in `dir`, unless `cancel` is cancelled; removed when
    /// it is (by the cancel), or when this is dropped unrenamed.
    pub(crate) fn create(dir: Dir, shown_dir: &Path, cancel: &CancelToken) -> io::Result<Self> {
        let dir = Arc::new(dir);
        let temp = cancel.publish(|| Self::create_in(&dir, shown_dir))?;
        let (dir, name) = (Arc::clone(&temp.0), temp.1.clone());
        let on_cancel = cancel.on_cancel(move || remove(&dir, &name));
        let (dir, name, file, shown) = temp;
        Ok(DirTemp {
            dir,
            name,
            file,
            shown,
            armed: true,
            _on_cancel: on_cancel,
        })
    }

    fn create_in(
        dir: &Arc<Dir>,
        shown_dir: &Path,
    ) -> io::Result<(Arc<Dir>, String, File, PathBuf)> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        for _ in 0..16 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!(".taskcache-{}-{nanos:x}-{n}.tmp", std::process::id());
            match Self::create_new(dir, &name) {
                Ok(file) => {
                    let shown = shown_dir.join(&name);
                    return Ok((Arc::clone(dir), name, file, shown));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temporary name",
        ))
    }

    #[cfg(unix)]
    fn create_new(dir: &Dir, name: &str) -> io::Result<File> {
        use rustix::fs::{Mode, OFlags};
        let flags =
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))?;
        Ok(File::from(fd))
    }

    #[cfg(not(unix))]
    fn create_new(dir: &Dir, name: &str) -> io::Result<File> {
        File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join(name))
    }

    pub(crate) fn as_file(&self) -> &File {
        &self.file
    }

    pub(crate) fn as_file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    pub(crate) fn path(&self) -> &Path {
        &self.shown
    }

    /// Renames the file to `final_name` in its directory, replacing what is there
    /// (a file or a symlink, never followed).
    pub(crate) fn persist(mut self, final_name: &std::ffi::OsStr) -> io::Result<()> {
        #[cfg(unix)]
        rustix::fs::renameat(&*self.dir, self.name.as_str(), &*self.dir, final_name)?;
        #[cfg(not(unix))]
        fs::rename(self.dir.join(&self.name), self.dir.join(final_name))?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for DirTemp {
    fn drop(&mut self) {
        if self.armed {
            remove(&self.dir, &self.name);
        }
    }
}
