//! [`PendingFile`]: one output file on its way into a workspace, written to a
//! temporary file beside its place, hashed on the way, verified and renamed. Made by
//! [`crate::Workspace::begin_file`].

use crate::cancel::CancelToken;
use crate::digest::check_blob;
use crate::dirtemp::DirTemp;
use crate::{BackendError, BackendResult, BlobRef};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A file being restored: bytes go to a temporary file beside its final place and are
/// hashed on the way; [`PendingFile::commit`] verifies and renames.
pub struct PendingFile {
    cancel: CancelToken,
    tmp: DirTemp,
    path: PathBuf,
    expected: BlobRef,
    executable: bool,
    hasher: crate::Hasher,
    written: u64,
}

impl std::fmt::Debug for PendingFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingFile")
            .field("path", &self.path)
            .field("expected", &self.expected)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl PendingFile {
    pub(crate) fn new(
        cancel: CancelToken,
        tmp: DirTemp,
        path: PathBuf,
        expected: BlobRef,
        executable: bool,
    ) -> Self {
        PendingFile {
            cancel,
            hasher: expected.digest.algorithm().hasher(),
            written: 0,
            expected,
            executable,
            path,
            tmp,
        }
    }

    /// The final path this file will have.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn io_error(&self, e: io::Error) -> BackendError {
        if e.kind() == io::ErrorKind::InvalidData {
            // The cached bytes ran past the blob's size (see `write`): the cache's.
            return BackendError::io_with_context("write", self.tmp.path(), e);
        }
        BackendError::workspace("write", self.tmp.path(), e)
    }

    /// Verifies the bytes written against the expected blob, sets the mode and renames
    /// the file into place. On a mismatch the temporary file is removed and the error
    /// is [`BackendError::DigestMismatch`].
    pub fn commit(self) -> BackendResult<PathBuf> {
        let PendingFile {
            cancel,
            tmp,
            path,
            expected,
            executable,
            hasher,
            written,
        } = self;
        let actual = BlobRef {
            digest: hasher.finalize(),
            size: written,
        };
        publish(&cancel, tmp, &path, &expected, &actual, executable)
    }

    /// Fills the (still empty) file from `src` with the kernel's file-to-file copy
    /// ([`crate::storage::kernel_copy_hashing`]: `copy_file_range`, or a reflink), hashing what
    /// landed in the temporary file on a second thread, then verifies and publishes it
    /// as [`PendingFile::commit`] does. The cheapest verified copy for large files on
    /// the same machine: the bytes never pass through user space on the copy side.
    #[cfg(unix)]
    pub fn copy_from_file(self, src: &File) -> BackendResult<PathBuf> {
        if self.written != 0 {
            return Err(BackendError::io_with_context(
                "copy into",
                self.tmp.path(),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "copy_from_file needs an empty pending file",
                ),
            ));
        }
        let actual = crate::digest::kernel_copy_hashing(
            src,
            self.tmp.as_file(),
            self.expected.size.saturating_add(1),
            self.expected.digest.algorithm(),
        )
        .map_err(|e| BackendError::io_with_context("copy the blob into", self.tmp.path(), e))?;
        publish(
            &self.cancel,
            self.tmp,
            &self.path,
            &self.expected,
            &actual,
            self.executable,
        )
    }
}

/// The last step of every verified write: compare, set the mode, rename into place. The
/// temporary file is removed (dropped) unless it is renamed.
fn publish(
    cancel: &CancelToken,
    tmp: DirTemp,
    path: &Path,
    expected: &BlobRef,
    actual: &BlobRef,
    executable: bool,
) -> BackendResult<PathBuf> {
    check_blob(expected, actual)?;
    set_mode(tmp.as_file(), executable)
        .map_err(|e| BackendError::workspace("set mode of", tmp.path(), e))?;
    let name = path
        .file_name()
        .ok_or_else(|| {
            BackendError::workspace(
                "rename into place",
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
            )
        })?
        .to_owned();
    cancel
        .publish(|| tmp.persist(&name))
        .map_err(|e| BackendError::workspace("rename into place", path, e))?;
    Ok(path.to_path_buf())
}

impl Write for PendingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A cancelled call stops filling its files; dropping this removes the temp file.
        self.cancel.check()?;
        // Refuse to grow past the promised size: a runaway source must not fill the disk.
        if self.written.saturating_add(buf.len() as u64) > self.expected.size.saturating_add(1) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {} is longer than its recorded size", self.expected),
            ));
        }
        self.tmp.as_file_mut().write_all(buf)?;
        self.hasher.update(buf);
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn set_mode(file: &File, executable: bool) -> io::Result<()> {
    match crate::mode::restored_permissions(executable) {
        Some(p) => file.set_permissions(p),
        None => Ok(()),
    }
}
