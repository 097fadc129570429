//! `taskcache stats` on an object store: counts by listing the prefix.

use crate::S3Storage;
use cache_core::BackendResult;
use futures::TryStreamExt;
use object_store::path::Path;

/// What is stored under a cache's prefix.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BucketStats {
    /// Entry objects.
    pub entries: u64,
    /// Bytes of entry objects.
    pub entry_bytes: u64,
    /// Blob objects.
    pub blobs: u64,
    /// Bytes of blob objects.
    pub blob_bytes: u64,
}

pub(crate) async fn collect(storage: &S3Storage) -> BackendResult<BucketStats> {
    let mut stats = BucketStats::default();
    for kind in ["entries", "blobs"] {
        let mut parts: Vec<_> = storage.prefix().parts().collect();
        parts.push(kind.into());
        let prefix = Path::from_iter(parts);
        let mut listing = storage.store().list(Some(&prefix));
        while let Some(meta) = listing
            .try_next()
            .await
            .map_err(|e| storage.err("LIST", &prefix, &e))?
        {
            if kind == "entries" {
                stats.entries += 1;
                stats.entry_bytes += meta.size;
            } else {
                stats.blobs += 1;
                stats.blob_bytes += meta.size;
            }
        }
    }
    Ok(stats)
}
