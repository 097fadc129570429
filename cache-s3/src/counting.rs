//! An object store wrapper that counts requests and the bytes sent and received:
//! how tests prove a warm store sends no blob bytes, and how the benchmark reports
//! what crossed the wire.

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a [`CountingStore`] saw: requests by kind, and payload bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestCounts {
    /// PUT requests (whole objects and multipart parts).
    pub puts: u64,
    /// GET requests (whole or ranged).
    pub gets: u64,
    /// HEAD requests.
    pub heads: u64,
    /// LIST requests.
    pub lists: u64,
    /// DELETE requests.
    pub deletes: u64,
    /// Other requests (multipart create/complete, copies).
    pub other: u64,
    /// Payload bytes sent (PUT bodies).
    pub bytes_sent: u64,
    /// Payload bytes received (GET bodies, as requested).
    pub bytes_received: u64,
}

impl RequestCounts {
    /// All requests.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.puts + self.gets + self.heads + self.lists + self.deletes + self.other
    }
}

impl std::fmt::Display for RequestCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests ({} PUT, {} GET, {} HEAD, {} LIST, {} DELETE, {} other), {} bytes sent, {} received",
            self.total(),
            self.puts,
            self.gets,
            self.heads,
            self.lists,
            self.deletes,
            self.other,
            self.bytes_sent,
            self.bytes_received
        )
    }
}

#[derive(Debug, Default)]
struct Counters {
    puts: AtomicU64,
    gets: AtomicU64,
    heads: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    other: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Wraps an [`ObjectStore`] and counts what passes through it.
#[derive(Debug, Clone)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counters: Arc<Counters>,
    no_suffix_ranges: bool,
}

impl CountingStore {
    /// Counts the requests made to `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        CountingStore {
            inner,
            counters: Arc::default(),
            no_suffix_ranges: false,
        }
    }

    /// Refuses suffix range GETs ("the last N bytes") as `NotSupported`, as Azure
    /// does: how tests prove a storage manages without them.
    #[must_use]
    pub fn without_suffix_ranges(mut self) -> Self {
        self.no_suffix_ranges = true;
        self
    }

    /// The counts so far.
    #[must_use]
    pub fn counts(&self) -> RequestCounts {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RequestCounts {
            puts: get(&c.puts),
            gets: get(&c.gets),
            heads: get(&c.heads),
            lists: get(&c.lists),
            deletes: get(&c.deletes),
            other: get(&c.other),
            bytes_sent: get(&c.sent),
            bytes_received: get(&c.received),
        }
    }
}

impl std::fmt::Display for CountingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[derive(Debug)]
struct CountingUpload {
    inner: Box<dyn MultipartUpload>,
    counters: Arc<Counters>,
}

#[async_trait]
impl MultipartUpload for CountingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        add(&self.counters.puts, 1);
        add(&self.counters.sent, data.content_length() as u64);
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        add(&self.counters.other, 1);
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        add(&self.counters.other, 1);
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        add(&self.counters.puts, 1);
        add(&self.counters.sent, payload.content_length() as u64);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        add(&self.counters.other, 1);
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountingUpload {
            inner,
            counters: Arc::clone(&self.counters),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if options.head {
            add(&self.counters.heads, 1);
            return self.inner.get_opts(location, options).await;
        }
        add(&self.counters.gets, 1);
        if self.no_suffix_ranges && matches!(options.range, Some(GetRange::Suffix(_))) {
            return Err(object_store::Error::NotSupported {
                source: "this store does not support suffix range requests".into(),
            });
        }
        let got = self.inner.get_opts(location, options).await?;
        add(&self.counters.received, got.range.end - got.range.start);
        Ok(got)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        add(&self.counters.gets, ranges.len() as u64);
        let got = self.inner.get_ranges(location, ranges).await?;
        add(
            &self.counters.received,
            got.iter().map(|b| b.len() as u64).sum(),
        );
        Ok(got)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let counters = Arc::clone(&self.counters);
        let counted = locations
            .inspect(move |_| add(&counters.deletes, 1))
            .boxed();
        self.inner.delete_stream(counted)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        add(&self.counters.lists, 1);
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        add(&self.counters.lists, 1);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        add(&self.counters.other, 1);
        self.inner.copy_opts(from, to, options).await
    }
}
