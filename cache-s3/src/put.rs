//! The store path's first pass and the upload of blobs stored on their own, in bounded
//! memory: every source is hashed on one blocking thread (a file's bytes are not kept,
//! a reader is spooled to a temporary file), and a blob's bytes are read into memory
//! only once a HEAD has shown it missing, under the process's upload budget
//! ([`crate::memory`]).

use crate::pack::Small;
use crate::{EAGER_MAX, S3Storage, blocking, memory, transfer};
use bytes::Bytes;
use cache_core::storage::{BlobSource, copy_hashing, hash_reader, open_regular};
use cache_core::{BackendError, BackendResult, BlobRef, DigestAlgorithm};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::io::Read;
use std::path::PathBuf;

/// Where the bytes of a blob stored on its own are until it is sent.
pub(crate) enum Upload {
    /// Bytes the caller gave (already in memory).
    Bytes(Bytes),
    /// A file: the caller's, or a temporary file a reader was spooled to (kept until
    /// the upload is done).
    File(PathBuf, Option<tempfile::TempPath>),
}

/// What pass 1 made of a source: a small blob for a pack (hashed, a file's bytes not
/// kept), or a blob stored on its own.
pub(crate) enum Sorted {
    Small(BlobRef, Small),
    Alone(BlobRef, Upload),
}

/// Pass 1 (blocking): hashes every source in order, one at a time. With `packing`,
/// bytes and files up to 1 MiB are small (packed); everything else goes on its own.
pub(crate) fn sort_sources(
    sources: Vec<BlobSource>,
    algorithm: DigestAlgorithm,
    packing: bool,
) -> BackendResult<Vec<Sorted>> {
    sources
        .into_iter()
        .map(|source| match source {
            BlobSource::Bytes(b) => {
                let blob = BlobRef::of(algorithm, &b);
                Ok(if packing && blob.size <= EAGER_MAX {
                    Sorted::Small(blob, Small::Bytes(b))
                } else {
                    Sorted::Alone(blob, Upload::Bytes(Bytes::from_owner(b)))
                })
            }
            BlobSource::File(path) => {
                let mut file = open_regular(&path)?;
                let ctx = |e| BackendError::io_with_context("read", &path, e);
                let blob = hash_reader(&mut file, algorithm).map_err(ctx)?;
                Ok(if packing && blob.size <= EAGER_MAX {
                    Sorted::Small(blob, Small::File(path))
                } else {
                    Sorted::Alone(blob, Upload::File(path, None))
                })
            }
            BlobSource::Reader(mut reader) => {
                // Unknown length: spooled, never held (an import from another tier).
                let mut spool = tempfile::NamedTempFile::new().map_err(BackendError::Io)?;
                let blob = copy_hashing(&mut reader, spool.as_file_mut(), algorithm)
                    .map_err(BackendError::Io)?;
                let path = spool.into_temp_path();
                Ok(Sorted::Alone(
                    blob,
                    Upload::File(path.to_path_buf(), Some(path)),
                ))
            }
        })
        .collect()
}

/// Reads the file that hashed to `blob` into memory (blocking): the bytes sent must be
/// the bytes hashed, so a file that changed since is an error, never a wrong object.
fn read_again(path: &std::path::Path, blob: BlobRef) -> BackendResult<Bytes> {
    let file = open_regular(path)?;
    let mut bytes = Vec::with_capacity(usize::try_from(blob.size).unwrap_or(0));
    file.take(blob.size.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| BackendError::io_with_context("read", path, e))?;
    if BlobRef::of(blob.digest.algorithm(), &bytes) != blob {
        return Err(changed(path));
    }
    Ok(Bytes::from(bytes))
}

fn changed(path: &std::path::Path) -> BackendError {
    BackendError::io_with_context(
        "upload",
        path,
        std::io::Error::other("the file changed while it was being stored"),
    )
}

impl S3Storage {
    /// Stores one blob on its own unless it is there with its size.
    pub(crate) async fn put_one(&self, blob: BlobRef, upload: Upload) -> BackendResult<BlobRef> {
        let path = self.blob_path(&blob.digest);
        let mut stored = self.head_size(&path).await?;
        if stored == Some(blob.size) {
            // Reused, not sent: claimed first, so a gc sweeping it now keeps it (and if
            // it swept it already, it is sent again).
            stored = self.claim(&path).await?;
            if stored == Some(blob.size) {
                return Ok(blob);
            }
        }
        // A stored object of another size is not this blob (truncated, tampered):
        // it is replaced; otherwise the put is create-only, the race guard.
        let mode = if stored.is_some() {
            PutMode::Overwrite
        } else {
            PutMode::Create
        };
        match upload {
            Upload::Bytes(bytes) => self.put_small(&path, bytes, mode).await?,
            Upload::File(file, _spool) if blob.size < self.inner.options.multipart_threshold => {
                self.put_file_whole(&path, file, blob, mode).await?;
            }
            Upload::File(file, _spool) => self.put_file(&path, file, blob).await?,
        }
        Ok(blob)
    }

    /// Sends a file below the multipart threshold with one PUT, read into memory under
    /// the process's upload budget.
    pub(crate) async fn put_file_whole(
        &self,
        path: &Path,
        file: PathBuf,
        blob: BlobRef,
        mode: PutMode,
    ) -> BackendResult<()> {
        let _room = memory::upload(blob.size).await;
        let bytes = blocking(move || read_again(&file, blob)).await?;
        self.put_small(path, bytes, mode).await
    }

    /// Uploads the file `file`, which hashed to `blob`, as `path` in parts (one
    /// multipart upload at a time per process).
    pub(crate) async fn put_file(
        &self,
        path: &Path,
        file: PathBuf,
        blob: BlobRef,
    ) -> BackendResult<()> {
        let _turn = memory::multipart().await;
        let o = &self.inner.options;
        transfer::upload_file(
            &self.inner.store,
            path,
            file.clone(),
            blob,
            o.part_size,
            o.parallel_parts,
        )
        .await
        .map_err(|e| match e {
            transfer::UploadError::Store(e) => self.err("multipart upload", path, &e),
            transfer::UploadError::Read(e) => {
                BackendError::io_with_context("read for upload", &file, e)
            }
            transfer::UploadError::Changed => changed(&file),
        })
    }

    pub(crate) async fn put_small(
        &self,
        path: &Path,
        bytes: Bytes,
        mode: PutMode,
    ) -> BackendResult<()> {
        let opts = PutOptions {
            mode: mode.clone(),
            ..PutOptions::default()
        };
        let payload = PutPayload::from(bytes);
        match self.inner.store.put_opts(path, payload.clone(), opts).await {
            // Stored, or someone stored it first: the same bytes, by content address.
            Ok(_)
            | Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(()),
            // A store without create-only puts: overwriting with the same bytes is safe.
            Err(
                object_store::Error::NotImplemented { .. }
                | object_store::Error::NotSupported { .. },
            ) if matches!(mode, PutMode::Create) => self
                .inner
                .store
                .put(path, payload)
                .await
                .map(drop)
                .map_err(|e| self.err("PUT", path, &e)),
            Err(e) => Err(self.err("PUT", path, &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn sources_are_hashed_without_keeping_files_and_readers_are_spooled() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        let big = dir.path().join("big");
        std::fs::write(&small, b"small").unwrap();
        std::fs::write(&big, vec![3u8; (1 << 20) + 1]).unwrap();
        let reader: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(vec![5u8; 100]));
        let sources = vec![
            BlobSource::File(small.clone()),
            BlobSource::File(big.clone()),
            BlobSource::Reader(reader),
            BlobSource::Bytes(Arc::from(&b"bytes"[..])),
        ];
        let sorted = sort_sources(sources, DigestAlgorithm::Blake3, true).unwrap();
        assert!(
            matches!(&sorted[0], Sorted::Small(b, Small::File(p)) if b.size == 5 && *p == small)
        );
        assert!(
            matches!(&sorted[1], Sorted::Alone(b, Upload::File(p, None)) if b.size == EAGER_MAX + 1 && *p == big)
        );
        let Sorted::Alone(blob, Upload::File(spooled, Some(_guard))) = &sorted[2] else {
            panic!("a reader is spooled to a file");
        };
        assert_eq!(std::fs::read(spooled).unwrap(), vec![5u8; 100]);
        assert_eq!(*blob, BlobRef::of(DigestAlgorithm::Blake3, &[5u8; 100]));
        assert!(matches!(&sorted[3], Sorted::Small(b, Small::Bytes(_)) if b.size == 5));
        // Without packing nothing is small.
        let sorted = sort_sources(
            vec![BlobSource::File(small.clone())],
            DigestAlgorithm::Blake3,
            false,
        )
        .unwrap();
        assert!(matches!(&sorted[0], Sorted::Alone(_, Upload::File(..))));
        // A file read again must still be what was hashed.
        let blob = BlobRef::of(DigestAlgorithm::Blake3, b"small");
        assert_eq!(&read_again(&small, blob).unwrap()[..], b"small");
        std::fs::write(&small, b"smalL").unwrap();
        let e = read_again(&small, blob).unwrap_err().to_string();
        assert!(e.contains("changed"), "{e}");
    }
}
