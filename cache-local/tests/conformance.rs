//! The full cache-testkit conformance suite against the local backend.

use async_trait::async_trait;
use cache_core::{BackendError, BackendResult, BlobRef, Digest};
use cache_local::{LocalOptions, LocalStorage};
use cache_testkit::{Harness, Tamper};
use std::sync::Arc;

/// Raw access to the local layout, through a second handle on the same directory.
struct LocalTamper(LocalStorage);

#[async_trait]
impl Tamper for LocalTamper {
    async fn write_raw_entry(&self, key: &Digest, bytes: Vec<u8>) -> BackendResult<()> {
        // Published the way a writer publishes: a whole file renamed into place.
        let path = self.0.entry_path(key);
        let ctx = |e| BackendError::io_with_context("plant an entry at", &path, e);
        let dir = path.parent().expect("entries live in a fan-out directory");
        std::fs::create_dir_all(dir).map_err(ctx)?;
        let tmp = dir.join(format!(".planted-{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(ctx)?;
        std::fs::rename(&tmp, &path).map_err(ctx)
    }

    async fn read_raw_entry(&self, key: &Digest) -> BackendResult<Option<Vec<u8>>> {
        let path = self.0.entry_path(key);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BackendError::io_with_context("read", &path, e)),
        }
    }

    async fn flip_blob_byte(&self, blob: &BlobRef) -> BackendResult<()> {
        use std::os::unix::fs::FileExt;
        let path = self.0.blob_path(&blob.digest);
        let ctx = |e| BackendError::io_with_context("tamper with", &path, e);
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(ctx)?;
        let at = f.metadata().map_err(ctx)?.len() / 2;
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).map_err(ctx)?;
        b[0] ^= 0x01;
        f.write_all_at(&b, at).map_err(ctx)
    }

    async fn delete_blob(&self, blob: &BlobRef) -> BackendResult<()> {
        let path = self.0.blob_path(&blob.digest);
        std::fs::remove_file(&path).map_err(|e| BackendError::io_with_context("delete", &path, e))
    }
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let storage = LocalStorage::open(&cache_dir, LocalOptions::default()).unwrap();
    let tamper = LocalTamper(LocalStorage::open(&cache_dir, LocalOptions::default()).unwrap());
    Harness::from_storage(storage, Arc::new(tamper))
        .with_capabilities(
            cache_testkit::Capabilities::default()
                .with_memory_bound(0, cache_local::MEMORY_PER_CALL),
        )
        .with_guard(dir)
}

cache_testkit::conformance_suite!(harness);
