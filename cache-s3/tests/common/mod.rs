//! Shared by the suite runs: a `Tamper` over the objects of an `S3Storage`, and the
//! peer-server environment.
#![allow(dead_code)]

use async_trait::async_trait;
use cache_core::{BackendError, BackendResult, BlobRef, Digest};
use cache_s3::S3Storage;
use cache_s3::object_store::{ObjectStoreExt, PutPayload};
use cache_testkit::Tamper;

/// Raw access to the objects of a storage, through its own client.
pub struct S3Tamper(pub S3Storage);

fn fault(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::unavailable(format!("tamper: {what}: {e}"))
}

#[async_trait]
impl Tamper for S3Tamper {
    async fn write_raw_entry(&self, key: &Digest, bytes: Vec<u8>) -> BackendResult<()> {
        self.0.write_raw_entry(key, bytes).await
    }

    async fn read_raw_entry(&self, key: &Digest) -> BackendResult<Option<Vec<u8>>> {
        Ok(self.0.raw_entry(key).await?.map(|b| b.to_vec()))
    }

    async fn flip_blob_byte(&self, blob: &BlobRef) -> BackendResult<()> {
        // A packed blob: its pack is rewritten with that member's byte flipped.
        if self.0.tamper_packed_blob(blob, true).await? > 0 {
            return Ok(());
        }
        let path = self.0.blob_path(&blob.digest);
        let store = self.0.store();
        let got = store.get(&path).await.map_err(|e| fault("get", e))?;
        let mut bytes = got.bytes().await.map_err(|e| fault("read", e))?.to_vec();
        if bytes.is_empty() {
            return Err(BackendError::InvalidOutput {
                path: blob.to_string(),
                reason: "an empty blob has no byte to flip".into(),
            });
        }
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        store
            .put(&path, PutPayload::from(bytes))
            .await
            .map(drop)
            .map_err(|e| fault("put", e))
    }

    async fn delete_blob(&self, blob: &BlobRef) -> BackendResult<()> {
        // A packed blob: its pack is rewritten without it.
        if self.0.tamper_packed_blob(blob, false).await? > 0 {
            return Ok(());
        }
        let path = self.0.blob_path(&blob.digest);
        let store = self.0.store();
        // The trait's contract: deleting what is not there is an error.
        store
            .head(&path)
            .await
            .map_err(|_| BackendError::BlobNotFound { digest: *blob })?;
        store.delete(&path).await.map_err(|e| fault("delete", e))
    }
}

/// The S3 server from `cargo xtask peers up`: endpoint and bucket, or `None` (after
/// saying why the test is skipped) when it is not up. With TASKCACHE_REQUIRE_PEERS=1 a
/// missing server fails the test instead.
pub fn s3_peer(test: &str) -> Option<(String, String)> {
    let endpoint = std::env::var("TASKCACHE_TEST_S3_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty());
    let bucket = std::env::var("TASKCACHE_TEST_S3_BUCKET")
        .ok()
        .filter(|v| !v.is_empty());
    if let (Some(e), Some(b)) = (endpoint, bucket) {
        return Some((e, b));
    }
    assert!(
        std::env::var("TASKCACHE_REQUIRE_PEERS").as_deref() != Ok("1"),
        "{test}: TASKCACHE_REQUIRE_PEERS=1 but TASKCACHE_TEST_S3_ENDPOINT/TASKCACHE_TEST_S3_BUCKET are unset"
    );
    eprintln!(
        "skipped {test}: no S3 server (run `cargo xtask peers up` and source target/peers/env)"
    );
    None
}

/// A prefix no other test uses.
pub fn unique_prefix(test: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "t/{test}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The environment an S3 client needs for the peer server.
pub fn s3_env(endpoint: &str) -> impl Fn(&str) -> Option<String> + use<> {
    let endpoint = endpoint.to_owned();
    move |k: &str| match k {
        "AWS_ACCESS_KEY_ID" => Some("testing".into()),
        "AWS_SECRET_ACCESS_KEY" => Some("testing-secret-key".into()),
        "AWS_REGION" => Some("us-east-1".into()),
        "AWS_ENDPOINT_URL" => Some(endpoint.clone()),
        "AWS_ALLOW_HTTP" => Some("true".into()),
        _ => None,
    }
}
