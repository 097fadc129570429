//! The full cache-testkit suite on object_store's local filesystem store, opened by
//! a `file://` URL.

mod common;

use cache_s3::{S3Options, S3Storage};
use cache_testkit::Harness;
use std::sync::Arc;

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let url = url::Url::from_directory_path(dir.path().join("bucket")).unwrap();
    let storage = S3Storage::open(&url, S3Options::default()).unwrap();
    let tamper = common::S3Tamper(storage.clone());
    Harness::from_storage(storage, Arc::new(tamper))
        .with_capabilities(common::capabilities())
        .with_guard(dir)
}

cache_testkit::conformance_suite!(harness);
