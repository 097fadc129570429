//! Large blobs both ways with bounded memory: multipart uploads read from a file part
//! by part, and lazy readers that fetch ranges ahead of the consumer.

use bytes::Bytes;
use cache_core::{BlobRef, DigestAlgorithm, Hasher};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    MultipartUpload, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutPayload, PutResult,
    UploadPart, WriteMultipart,
};
use std::io::Read;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What the reading thread hands the uploader: a part, or the digest of everything
/// read once the file ended.
enum Piece {
    Part(Bytes),
    Done(BlobRef),
}

/// Uploads the file `path` as `location` in parts of `part_size`, `parallel` at once,
/// hashing what it reads; completes only if what was read is `expected` (a file that
/// changed since it was hashed is aborted, never published under the wrong address).
pub(crate) async fn upload_file(
    store: &Arc<dyn ObjectStore>,
    location: &Path,
    path: std::path::PathBuf,
    expected: BlobRef,
    part_size: usize,
    parallel: usize,
) -> Result<(), UploadError> {
    let upload = store
        .put_multipart_opts(location, PutMultipartOptions::default())
        .await
        .map_err(UploadError::Store)?;
    let upload = Box::new(QuietAbort {
        inner: upload,
        location: location.clone(),
    });
    let mut write = WriteMultipart::new_with_chunk_size(upload, part_size);
    // Two parts queued between the reading thread and the uploader: the reader stays
    // ahead without holding more than a few parts.
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Piece>>(2);
    let algorithm = expected.digest.algorithm();
    let reader = tokio::task::spawn_blocking(cache_core::cancel::bind(move || {
        read_parts(&path, part_size, algorithm, &tx);
    }));
    let mut read = None;
    while let Some(piece) = rx.recv().await {
        match piece {
            Ok(Piece::Part(bytes)) => {
                if let Err(e) = write.wait_for_capacity(parallel).await {
                    let _ = write.abort().await;
                    return Err(UploadError::Store(e));
                }
                write.put(bytes);
            }
            Ok(Piece::Done(blob)) => read = Some(blob),
            Err(e) => {
                let _ = write.abort().await;
                return Err(UploadError::Read(e));
            }
        }
    }
    let _ = reader.await;
    if read != Some(expected) {
        let _ = write.abort().await;
        return Err(UploadError::Changed);
    }
    write.finish().await.map_err(UploadError::Store)?;
    Ok(())
}

/// An upload whose abort never fails: `WriteMultipart::finish` returns the abort's
/// error instead of the failure that caused it (a timed-out CompleteMultipartUpload
/// reported as NoSuchUpload), so the abort's outcome is logged here and the cause is
/// what the caller sees. An upload left behind is removed by the bucket's lifecycle
/// rule for incomplete uploads.
#[derive(Debug)]
struct QuietAbort {
    inner: Box<dyn MultipartUpload>,
    location: Path,
}

#[async_trait::async_trait]
impl MultipartUpload for QuietAbort {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        if let Err(e) = self.inner.abort().await {
            tracing::debug!(
                location = %self.location,
                error = %e,
                "could not abort a failed multipart upload; the bucket's lifecycle rule removes it"
            );
        }
        Ok(())
    }
}

fn read_parts(
    path: &std::path::Path,
    part_size: usize,
    algorithm: DigestAlgorithm,
    tx: &mpsc::Sender<std::io::Result<Piece>>,
) {
    let run = || -> std::io::Result<BlobRef> {
        let mut file = cache_core::storage::open_regular(path)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut hasher: Hasher = algorithm.hasher();
        let mut size = 0u64;
        let cancel = cache_core::cancel::CancelToken::current();
        loop {
            // A cancelled upload stops reading (the uploader is gone too).
            cancel.check()?;
            let mut buf = vec![0u8; part_size];
            let mut filled = 0;
            while filled < part_size {
                let n = file.read(&mut buf[filled..])?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            buf.truncate(filled);
            hasher.update(&buf);
            size += filled as u64;
            if tx.blocking_send(Ok(Piece::Part(Bytes::from(buf)))).is_err() {
                return Err(std::io::Error::other("upload stopped"));
            }
            if filled < part_size {
                break;
            }
        }
        Ok(BlobRef {
            digest: hasher.finalize(),
            size,
        })
    };
    let msg = run().map(Piece::Done);
    let _ = tx.blocking_send(msg);
}

/// Why a multipart upload failed.
#[derive(Debug)]
pub(crate) enum UploadError {
    /// The store refused or failed.
    Store(object_store::Error),
    /// The file could not be read.
    Read(std::io::Error),
    /// The file's bytes are not the ones hashed before (it changed while stored).
    Changed,
}

/// A blocking reader of a large blob that fetches `range_size` ranges, `parallel`
/// ahead of the consumer, on the runtime it was made on. Nothing is fetched before the
/// first read, and dropping it stops the fetching.
pub(crate) struct RangeReader {
    start: Option<Start>,
    rx: Option<mpsc::Receiver<std::io::Result<Bytes>>>,
    current: Bytes,
}

struct Start {
    handle: tokio::runtime::Handle,
    store: Arc<dyn ObjectStore>,
    location: Path,
    first: Bytes,
    size: u64,
    range_size: u64,
    parallel: usize,
}

impl RangeReader {
    /// A reader of the `size` bytes at `location`, whose first `first.len()` bytes are
    /// already here.
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        location: Path,
        first: Bytes,
        size: u64,
        range_size: u64,
        parallel: usize,
    ) -> Self {
        RangeReader {
            start: Some(Start {
                handle: tokio::runtime::Handle::current(),
                store,
                location,
                first,
                size,
                range_size: range_size.max(1),
                parallel: parallel.max(1),
            }),
            rx: None,
            current: Bytes::new(),
        }
    }

    fn begin(&mut self) {
        let Some(s) = self.start.take() else { return };
        self.current = s.first.clone();
        let offset = s.first.len() as u64;
        let (tx, rx) = mpsc::channel(2);
        self.rx = Some(rx);
        let ranges: Vec<std::ops::Range<u64>> = (offset..s.size)
            .step_by(usize::try_from(s.range_size).unwrap_or(usize::MAX))
            .map(|at| at..(at + s.range_size).min(s.size))
            .collect();
        let (store, location, parallel) = (s.store, s.location, s.parallel);
        s.handle.spawn(async move {
            let mut fetches = futures::stream::iter(ranges)
                .map(|r| {
                    let (store, location) = (Arc::clone(&store), location.clone());
                    async move { store.get_range(&location, r).await }
                })
                .buffered(parallel);
            while let Some(got) = fetches.next().await {
                let failed = got.is_err();
                if tx.send(got.map_err(std::io::Error::other)).await.is_err() || failed {
                    return;
                }
            }
        });
    }
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.begin();
        while self.current.is_empty() {
            let Some(rx) = self.rx.as_mut() else {
                return Ok(0);
            };
            match rx.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(e),
                None => {
                    self.rx = None;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_whose_bytes_are_not_the_ones_hashed_is_never_published() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big");
        std::fs::write(&file, vec![7u8; 6 << 20]).unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let at = Path::from("blobs/x");
        // As if the file changed after it was hashed: the digest does not match.
        let stale = BlobRef::of(DigestAlgorithm::Blake3, b"what it held before");
        let e = upload_file(&store, &at, file.clone(), stale, 5 << 20, 2).await;
        assert!(matches!(e, Err(UploadError::Changed)), "{e:?}");
        assert!(
            store.head(&at).await.is_err(),
            "published under the wrong address"
        );
        // The right digest goes through, in two parts.
        let right = BlobRef::of(DigestAlgorithm::Blake3, &std::fs::read(&file).unwrap());
        upload_file(&store, &at, file, right, 5 << 20, 2)
            .await
            .unwrap();
        assert_eq!(store.head(&at).await.unwrap().size, 6 << 20);
    }

    /// An upload whose completion fails and whose abort then fails too, as when a
    /// server times out in CompleteMultipartUpload and has already dropped the upload.
    #[derive(Debug)]
    struct FailingCompletion;

    #[async_trait::async_trait]
    impl MultipartUpload for FailingCompletion {
        fn put_part(&mut self, _data: PutPayload) -> UploadPart {
            Box::pin(async { Ok(()) })
        }

        async fn complete(&mut self) -> object_store::Result<PutResult> {
            Err(object_store::Error::Generic {
                store: "test",
                source: "CompleteMultipartUpload timed out".into(),
            })
        }

        async fn abort(&mut self) -> object_store::Result<()> {
            Err(object_store::Error::NotFound {
                path: "blobs/x".into(),
                source: "NoSuchUpload".into(),
            })
        }
    }

    #[tokio::test]
    async fn a_failed_completion_is_reported_not_the_abort_after_it() {
        let quiet = Box::new(QuietAbort {
            inner: Box::new(FailingCompletion),
            location: Path::from("blobs/x"),
        });
        let mut write = WriteMultipart::new_with_chunk_size(quiet, 5 << 20);
        write.put(Bytes::from_static(b"part"));
        let e = write.finish().await.unwrap_err().to_string();
        assert!(e.contains("CompleteMultipartUpload timed out"), "{e}");
        assert!(!e.contains("NoSuchUpload"), "{e}");
    }
}
