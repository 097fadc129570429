//! The full cache-testkit suite against a real S3 server on 127.0.0.1 (moto, started
//! by `cargo xtask peers up`), each test under its own prefix.

mod common;

use cache_s3::{S3Options, S3Storage};
use cache_testkit::{Harness, MemoryBackend};
use std::sync::Arc;

async fn harness() -> Harness {
    let test = &common::current_test();
    let Some((endpoint, bucket)) = common::s3_peer(test) else {
        // Skipped: the case runs against the reference backend so it still passes
        // for the right reason (nothing about S3 is claimed).
        return MemoryBackend::new().harness();
    };
    let url = url::Url::parse(&format!("s3://{bucket}/{}", common::unique_prefix(test))).unwrap();
    let storage =
        S3Storage::open_with_env(&url, S3Options::default(), &common::s3_env(&endpoint)).unwrap();
    let tamper = common::S3Tamper(storage.clone());
    Harness::from_storage(storage, Arc::new(tamper)).with_capabilities(common::capabilities())
}

cache_testkit::conformance_suite!(harness);
