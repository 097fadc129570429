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
    peer(
        test,
        "an S3 server",
        "TASKCACHE_TEST_S3_ENDPOINT",
        "TASKCACHE_TEST_S3_BUCKET",
    )
}

/// Azurite from `cargo xtask peers up`: blob endpoint and container (as [`s3_peer`]).
pub fn azurite_peer(test: &str) -> Option<(String, String)> {
    peer(
        test,
        "Azurite",
        "TASKCACHE_TEST_AZURITE_ENDPOINT",
        "TASKCACHE_TEST_AZURITE_CONTAINER",
    )
}

/// The GCS emulator from `cargo xtask peers up`: endpoint and bucket (as [`s3_peer`]).
pub fn gcs_peer(test: &str) -> Option<(String, String)> {
    peer(
        test,
        "the GCS emulator",
        "TASKCACHE_TEST_GCS_ENDPOINT",
        "TASKCACHE_TEST_GCS_BUCKET",
    )
}

/// A peer server's address and bucket from the variables `peers up` writes.
fn peer(test: &str, what: &str, endpoint: &str, bucket: &str) -> Option<(String, String)> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(e), Some(b)) = (get(endpoint), get(bucket)) {
        return Some((e, b));
    }
    assert!(
        std::env::var("TASKCACHE_REQUIRE_PEERS").as_deref() != Ok("1"),
        "{test}: TASKCACHE_REQUIRE_PEERS=1 but {endpoint}/{bucket} are unset"
    );
    eprintln!("skipped {test}: no {what} (run `cargo xtask peers up` and source target/peers/env)");
    None
}

/// The name of the test running on this thread (its last path segment).
pub fn current_test() -> String {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("test");
    name.rsplit("::").next().unwrap_or(name).to_owned()
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

/// The environment an Azure client needs for Azurite: its emulator mode (the
/// development account and its published key) at the peer's address, nothing else.
pub fn azurite_env(endpoint: &str) -> impl Fn(&str) -> Option<String> + use<> {
    let endpoint = endpoint.to_owned();
    move |k: &str| match k {
        "AZURE_STORAGE_USE_EMULATOR" => Some("true".into()),
        "AZURITE_BLOB_STORAGE_URL" => Some(endpoint.clone()),
        _ => None,
    }
}

/// A client of Azurite's development account (its published key) for `container`,
/// built here rather than through `S3Storage`: what a test asks of the emulator itself.
pub fn azurite_store(
    endpoint: &str,
    container: &str,
) -> cache_s3::object_store::azure::MicrosoftAzure {
    const ACCOUNT: &str = "devstoreaccount1";
    const KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    cache_s3::object_store::azure::MicrosoftAzureBuilder::new()
        .with_account(ACCOUNT)
        .with_access_key(KEY)
        .with_endpoint(format!("{endpoint}/{ACCOUNT}"))
        .with_allow_http(true)
        .with_container_name(container)
        .build()
        .unwrap()
}

/// The environment a GCS client needs for the emulator: its address, plain HTTP, and
/// a service account key that turns OAuth off (so no token is ever asked for, and no
/// metadata service).
pub fn gcs_env(endpoint: &str) -> impl Fn(&str) -> Option<String> + use<> {
    let endpoint = endpoint.to_owned();
    move |k: &str| {
        match k {
        "GOOGLE_BASE_URL" => Some(endpoint.clone()),
        "GOOGLE_ALLOW_HTTP" => Some("true".into()),
        "GOOGLE_SERVICE_ACCOUNT_KEY" => Some(
            r#"{"private_key": "", "private_key_id": "", "client_email": "test@127.0.0.1", "disable_oauth": true}"#
                .into(),
        ),
        _ => None,
    }
    }
}

/// What an S3 storage's harness declares: the memory bounds cache-s3 documents.
pub fn capabilities() -> cache_testkit::Capabilities {
    cache_testkit::Capabilities::default()
        .with_memory_bound(cache_s3::MEMORY_PER_PROCESS, cache_s3::MEMORY_PER_CALL)
}
