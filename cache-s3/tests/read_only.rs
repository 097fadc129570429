//! A bucket that refuses writes by permission (a read-only token: object_store's
//! `PermissionDenied`, an HTTP 403) is a permission fault, and still read: the shared
//! check from cache-testkit, on a store that lets two handles share one bucket.

use async_trait::async_trait;
use cache_core::Cache;
use cache_s3::object_store::path::Path;
use cache_s3::object_store::{
    self, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use cache_s3::{S3Options, S3Storage};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::sync::Arc;

/// Reads pass through; every write is refused as a bucket policy refuses a read-only
/// token's (object_store maps an HTTP 403 to this very error).
#[derive(Debug)]
struct ReadOnly(Arc<dyn ObjectStore>);

impl std::fmt::Display for ReadOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadOnly({})", self.0)
    }
}

fn refused(path: &Path) -> object_store::Error {
    object_store::Error::PermissionDenied {
        path: path.to_string(),
        source: "403 Forbidden: AccessDenied".into(),
    }
}

#[async_trait]
impl ObjectStore for ReadOnly {
    async fn put_opts(
        &self,
        location: &Path,
        _: PutPayload,
        _: PutOptions,
    ) -> object_store::Result<PutResult> {
        Err(refused(location))
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(refused(location))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.0.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        locations.map(|p| Err(refused(&p?))).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, _: &Path, to: &Path, _: CopyOptions) -> object_store::Result<()> {
        Err(refused(to))
    }
}

fn cache(store: Arc<dyn ObjectStore>) -> Arc<Cache<S3Storage>> {
    let storage = S3Storage::from_store(store, "ci", "memory", S3Options::default());
    Arc::new(Cache::new(storage, cache_testkit::spawn_blocking))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_refuses_writes_is_still_read() {
    let bucket: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let writer = cache(Arc::clone(&bucket));
    let read_only = cache(Arc::new(ReadOnly(bucket)));
    cache_testkit::refusal::read_only_tier(writer, read_only).await;
}
