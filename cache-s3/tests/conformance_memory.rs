//! The full cache-testkit suite on object_store's in-memory store.

mod common;

use cache_s3::{S3Options, S3Storage};
use cache_testkit::Harness;
use std::sync::Arc;

async fn harness() -> Harness {
    let store = Arc::new(cache_s3::object_store::memory::InMemory::new());
    let storage = S3Storage::from_store(store, "ci/cache", "memory", S3Options::default());
    let tamper = common::S3Tamper(storage.clone());
    // object_store's InMemory keeps what is stored in this process.
    Harness::from_storage(storage, Arc::new(tamper))
        .with_capabilities(common::capabilities().with_in_process_data(true))
}

cache_testkit::conformance_suite!(harness);
