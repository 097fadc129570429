//! A hit's blob files on a blocking thread: opened (regular files only; one gone since
//! the lookup is a missing blob, one of mostly holes is damaged and refused unread),
//! read whole and verified, or opened lazily on the reader's first read.

use crate::storage::{BlobSource, open_regular};
use crate::{BackendError, BackendResult, BlobRef};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A blob file opened on first read (so opening happens on the reader's thread).
pub(crate) struct LazyFile {
    pub(crate) path: PathBuf,
    pub(crate) blob: BlobRef,
    pub(crate) file: Option<std::fs::File>,
}

impl Read for LazyFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.file.is_none() {
            let f = open_blob_file(&self.path, &self.blob).map_err(std::io::Error::other)?;
            self.file = Some(f);
        }
        match &mut self.file {
            Some(f) => f.read(buf),
            None => Ok(0),
        }
    }
}

/// Reads a whole blob into memory, verified (blocking).
pub(crate) fn read_verified(source: BlobSource, blob: &BlobRef) -> BackendResult<Vec<u8>> {
    // The recorded size is only a hint for the allocation: never trust it past a few MiB.
    let hint = usize::try_from(blob.size.min(8 << 20)).unwrap_or(0);
    let mut bytes = Vec::with_capacity(hint);
    let mut reader = match source {
        BlobSource::File(path) => Box::new(open_blob_file(&path, blob)?),
        other => other.into_reader()?,
    };
    crate::digest::copy_verified(&mut reader, &mut bytes, blob)?;
    Ok(bytes)
}

/// Whether a blob file has far fewer allocated blocks than bytes (holes): its
/// length is no measure of what writing it out costs.
#[cfg(unix)]
pub(crate) fn looks_sparse(f: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    f.metadata()
        .is_ok_and(|m| m.len() > (1 << 20) && m.blocks().saturating_mul(512) < m.len() / 2)
}

#[cfg(not(unix))]
pub(crate) fn looks_sparse(_f: &std::fs::File) -> bool {
    false
}

/// Opens a blob's file; one gone since the lookup (evicted) is a missing blob, and
/// one of mostly holes is damaged, refused unread (its claimed length would cost a
/// read far beyond what it holds: [`crate::storage::sparse_blob_reason`]).
pub(crate) fn open_blob_file(path: &Path, blob: &BlobRef) -> BackendResult<std::fs::File> {
    let f = open_regular(path).map_err(|e| match &e {
        BackendError::IoWithContext { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            BackendError::BlobNotFound { digest: *blob }
        }
        _ => e,
    })?;
    match crate::storage::sparse_blob_reason(&f) {
        None => Ok(f),
        Some(reason) => Err(BackendError::DamagedBlob {
            digest: *blob,
            reason,
        }),
    }
}
