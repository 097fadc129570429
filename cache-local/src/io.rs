//! The blocking halves of store and restore: one pass per file, few jobs per batch.

use crate::fsat::FileAt;
use crate::layout::{Area, Layout, Temp};
use cache_core::storage::{BlobSource, copy_hashing, kernel_copy_hashing, open_regular};
use cache_core::{BackendError, BackendResult, BlobRef, DigestAlgorithm};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

/// Blobs are addressed by BLAKE3 unless the caller asks for another algorithm (a
/// record imported from a SHA-256 store keeps its refs).
pub(crate) const ALGORITHM: DigestAlgorithm = DigestAlgorithm::Blake3;

/// Files up to this size are read into memory, hashed, and written only if their blob
/// is not stored yet; larger ones are streamed into a temporary file while hashing.
pub(crate) const SMALL_FILE: u64 = 1 << 20;

/// Files at least this large are copied by the kernel (`copy_file_range`) while a
/// second thread hashes what landed ([`cache_core::kernel_copy_hashing`]), on store and
/// on restore: smaller ones are not worth the thread.
pub(crate) const PIPELINE_MIN: u64 = 16 << 20;

/// Reusable state of one store job.
pub(crate) struct StoreJob<'a> {
    pub layout: &'a Layout,
    algorithm: DigestAlgorithm,
    buf: Vec<u8>,
    /// Bytes of blobs this job wrote (not the ones it found stored).
    pub written: u64,
}

impl<'a> StoreJob<'a> {
    pub fn new(layout: &'a Layout, algorithm: DigestAlgorithm) -> Self {
        StoreJob {
            layout,
            algorithm,
            buf: Vec::new(),
            written: 0,
        }
    }

    /// Stores one source and returns its ref.
    pub fn put(&mut self, source: BlobSource) -> BackendResult<BlobRef> {
        match source {
            BlobSource::Bytes(b) => self.put_bytes(&b, None),
            BlobSource::File(path) => self.put_file(&path),
            BlobSource::Reader(mut r) => {
                let mut tmp = self.layout.temp()?;
                let blob =
                    copy_hashing(&mut r, tmp.as_file_mut(), self.algorithm).map_err(|e| {
                        BackendError::io_with_context("copy a blob into", tmp.path(), e)
                    })?;
                self.publish_streamed(tmp, blob)
            }
        }
    }

    fn put_file(&mut self, path: &Path) -> BackendResult<BlobRef> {
        let mut file = open_regular(path)?;
        let meta = file
            .metadata()
            .map_err(|e| BackendError::io_with_context("inspect output", path, e))?;
        if meta.len() <= SMALL_FILE {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            let r = (&mut file)
                .take(SMALL_FILE + 1)
                .read_to_end(&mut buf)
                .map_err(|e| BackendError::io_with_context("read output", path, e));
            let result = match r {
                Ok(_) if buf.len() as u64 <= SMALL_FILE => Some(self.put_bytes(&buf, Some(path))),
                Ok(_) => None, // it grew meanwhile: stream it
                Err(e) => Some(Err(e)),
            };
            self.buf = buf;
            if let Some(r) = result {
                return r;
            }
            file.rewind()
                .map_err(|e| BackendError::io_with_context("read output", path, e))?;
        }
        self.put_stream(&mut file, path)
    }

    /// One pass: copy into a temporary file while hashing, then rename it to its digest
    /// name (or drop it if that blob is stored already).
    fn put_stream(&mut self, file: &mut File, path: &Path) -> BackendResult<BlobRef> {
        let mut tmp = self.layout.temp()?;
        let large = file.metadata().is_ok_and(|m| m.len() >= PIPELINE_MIN);
        let copied = if large {
            kernel_copy_hashing(file, tmp.as_file(), u64::MAX, self.algorithm)
        } else {
            copy_hashing(file, tmp.as_file_mut(), self.algorithm)
        };
        let blob = copied
            .map_err(|e| BackendError::io_with_context("copy output into the cache", path, e))?;
        self.publish_streamed(tmp, blob)
    }

    /// Renames a filled temporary file to its digest name, or drops it if that blob is
    /// stored already.
    fn publish_streamed(&mut self, tmp: Temp<'_>, blob: BlobRef) -> BackendResult<BlobRef> {
        if reuse(self.layout, &blob) {
            return Ok(blob);
        }
        self.layout.publish(tmp, Area::Blobs, &blob.digest)?;
        self.written += blob.size;
        Ok(blob)
    }

    fn put_bytes(&mut self, bytes: &[u8], origin: Option<&Path>) -> BackendResult<BlobRef> {
        let blob = BlobRef::of(self.algorithm, bytes);
        if reuse(self.layout, &blob) {
            return Ok(blob);
        }
        let mut tmp = self.layout.temp()?;
        tmp.write_all(bytes).map_err(|e| {
            let dest = self.layout.blob_path(&blob.digest);
            BackendError::io_with_context("write blob", origin.map_or(dest, Path::to_path_buf), e)
        })?;
        self.layout.publish(tmp, Area::Blobs, &blob.digest)?;
        self.written += blob.size;
        Ok(blob)
    }
}

/// Whether `blob` is stored as a regular file of the right size; if so its mtime is
/// refreshed, so a concurrent GC sees it as young and leaves it (its grace period).
/// Only a regular file opened without following a link is touched; anything else (a
/// torn blob, a link, a FIFO) is replaced by the caller (the rename repairs it).
fn reuse(layout: &Layout, blob: &BlobRef) -> bool {
    let Ok(FileAt::File(f, meta)) = layout.open_file(Area::Blobs, &blob.digest) else {
        return false;
    };
    if meta.len != blob.size {
        return false;
    }
    if let Err(e) = f.set_modified(std::time::SystemTime::now()) {
        // Still usable; only the GC grace is not refreshed.
        tracing::debug!(path = %layout.blob_path(&blob.digest).display(), error = %e, "could not refresh blob mtime");
    }
    true
}

/// Splits `n` items of the given weights into at most `parts` contiguous ranges of
/// similar total weight (each non-empty).
pub(crate) fn split_ranges(weights: &[u64], parts: usize) -> Vec<std::ops::Range<usize>> {
    let n = weights.len();
    if n == 0 {
        return Vec::new();
    }
    let parts = parts.clamp(1, n);
    // Items weigh their size plus a fixed cost per file (open, rename, ...).
    let cost = |w: u64| w.saturating_add(16 << 10);
    let total: u64 = weights.iter().map(|&w| cost(w)).sum();
    let target = total.div_ceil(parts as u64);
    let mut ranges = Vec::with_capacity(parts);
    let mut start = 0;
    let mut acc = 0u64;
    for (i, &w) in weights.iter().enumerate() {
        acc = acc.saturating_add(cost(w));
        let remaining_parts = parts - ranges.len() - 1;
        if acc >= target && remaining_parts > 0 && i + 1 < n {
            ranges.push(start..i + 1);
            start = i + 1;
            acc = 0;
        }
    }
    ranges.push(start..n);
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_everything_in_order() {
        for (weights, parts) in [
            (vec![1u64; 10], 3usize),
            (vec![1 << 30, 1, 1, 1], 2),
            (vec![5], 4),
            (vec![1, 2, 3, 4, 5, 6, 7], 7),
        ] {
            let r = split_ranges(&weights, parts);
            assert!(r.len() <= parts && !r.is_empty());
            assert_eq!(r.first().unwrap().start, 0);
            assert_eq!(r.last().unwrap().end, weights.len());
            for w in r.windows(2) {
                assert_eq!(w[0].end, w[1].start);
                assert!(!w[0].is_empty());
            }
        }
        assert!(split_ranges(&[], 2).is_empty());
        assert_eq!(split_ranges(&[1; 100], 2).len(), 2);
    }
}
