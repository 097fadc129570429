//! `taskcache stats` on an object store: counts by listing the prefix (`entries/`,
//! `blobs/`, `packs/`), within bounds.
//!
//! A listing is a conversation the server leads: a broken or hostile one may answer
//! "more results follow" forever (with a fresh continuation token each time, or the
//! same one again), or not answer at all. So a listing has a deadline over all of it,
//! a page limit, and stops at a repeated continuation token; the counts it
//! reached are returned with why it stopped, never lost.

use crate::S3Storage;
use cache_core::BackendResult;
use futures::TryStreamExt;
use object_store::ObjectMeta;
use object_store::list::PaginatedListOptions;
use object_store::path::Path;
use std::fmt;
use std::time::Duration;

/// Bounds on one listing of a cache's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListLimits {
    /// The whole listing (every page, request and retry) ends within this long.
    pub deadline: Duration,
    /// Pages requested at most, for stores listed by pages (S3, GCS, Azure: up to
    /// 1,000 objects a page). A directory or memory, listed without pages, is bounded
    /// by the deadline alone.
    pub max_pages: u64,
}

impl ListLimits {
    /// The default page limit: 100,000 pages (100 million objects on S3).
    pub const DEFAULT_MAX_PAGES: u64 = 100_000;

    /// A listing bounded by `deadline` and [`ListLimits::DEFAULT_MAX_PAGES`].
    #[must_use]
    pub fn new(deadline: Duration) -> Self {
        ListLimits {
            deadline,
            max_pages: Self::DEFAULT_MAX_PAGES,
        }
    }

    /// Sets [`ListLimits::max_pages`] (at least 1).
    #[must_use]
    pub fn with_max_pages(mut self, pages: u64) -> Self {
        self.max_pages = pages.max(1);
        self
    }
}

/// Why a listing stopped before the server said it was done: the counts are partial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stopped {
    /// [`ListLimits::deadline`] passed.
    Deadline(Duration),
    /// [`ListLimits::max_pages`] pages were listed and the server said more follow.
    MaxPages(u64),
    /// The server sent the continuation token it had just been given: it would
    /// answer the same page forever.
    RepeatedToken,
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stopped::Deadline(d) => write!(f, "the deadline ({d:?}) passed"),
            Stopped::MaxPages(n) => write!(f, "the limit of {n} pages was reached"),
            Stopped::RepeatedToken => {
                f.write_str("the server repeated its continuation token (it would never end)")
            }
        }
    }
}

/// What is stored under a cache's prefix, as far as the listing got.
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
    /// Pack objects (the small files of entries, compressed together).
    pub packs: u64,
    /// Bytes of pack objects.
    pub pack_bytes: u64,
    /// Pages listed (0 for a store listed without pages: a directory, memory).
    pub pages: u64,
    /// `None` when the listing went to its end; else why it stopped, and the counts
    /// above are what was listed until then.
    pub stopped: Option<Stopped>,
}

impl BucketStats {
    /// Whether the listing went to its end (the counts are whole).
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.stopped.is_none()
    }

    /// Objects listed.
    #[must_use]
    pub fn objects(&self) -> u64 {
        self.entries
            .saturating_add(self.blobs)
            .saturating_add(self.packs)
    }

    /// Bytes of all objects listed.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.entry_bytes
            .saturating_add(self.blob_bytes)
            .saturating_add(self.pack_bytes)
    }

    fn add(&mut self, kind: Kind, size: u64) {
        let (count, bytes) = match kind {
            Kind::Entries => (&mut self.entries, &mut self.entry_bytes),
            Kind::Blobs => (&mut self.blobs, &mut self.blob_bytes),
            Kind::Packs => (&mut self.packs, &mut self.pack_bytes),
        };
        *count = count.saturating_add(1);
        *bytes = bytes.saturating_add(size);
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Entries,
    Blobs,
    Packs,
}

pub(crate) async fn collect(storage: &S3Storage, limits: ListLimits) -> BackendResult<BucketStats> {
    let mut stats = BucketStats::default();
    // The counts live out here: when the deadline drops the listing, they stay.
    let listing = list_all(storage, limits, &mut stats);
    match tokio::time::timeout(limits.deadline, listing).await {
        Ok(result) => result?,
        Err(_) => stats.stopped = Some(Stopped::Deadline(limits.deadline)),
    }
    Ok(stats)
}

async fn list_all(
    storage: &S3Storage,
    limits: ListLimits,
    stats: &mut BucketStats,
) -> BackendResult<()> {
    let kinds = [
        (Kind::Entries, "entries"),
        (Kind::Blobs, "blobs"),
        (Kind::Packs, "packs"),
    ];
    for (kind, name) in kinds {
        let so_far = stats.pages;
        let mut visit = |item: Listed| match item {
            Listed::Page => stats.pages += 1,
            Listed::Object(meta) => stats.add(kind, meta.size),
        };
        let stopped = list_kind(storage, name, limits.max_pages, so_far, &mut visit).await?;
        stats.stopped = stopped;
        if stats.stopped.is_some() {
            break;
        }
    }
    Ok(())
}

/// What a listing hands its visitor.
pub(crate) enum Listed {
    /// One more page was listed.
    Page,
    /// An object.
    Object(ObjectMeta),
}

/// Lists `<prefix>/<name>/`, handing every object to `visit`: page by page when the
/// store pages (`pages` already listed, counted against `max_pages`, watching the
/// continuation tokens), else as a stream. `Some` says why it stopped before the end.
pub(crate) async fn list_kind(
    storage: &S3Storage,
    name: &str,
    max_pages: u64,
    mut pages: u64,
    visit: &mut (dyn FnMut(Listed) + Send),
) -> BackendResult<Option<Stopped>> {
    let mut parts: Vec<_> = storage.prefix().parts().collect();
    parts.push(name.into());
    let prefix = Path::from_iter(parts);
    let Some(lister) = storage.lister() else {
        let mut listing = storage.store().list(Some(&prefix));
        while let Some(meta) = listing
            .try_next()
            .await
            .map_err(|e| storage.err("LIST", &prefix, &e))?
        {
            visit(Listed::Object(meta));
        }
        return Ok(None);
    };
    // A paginated listing takes the prefix as it is: the delimiter makes it a directory.
    let wanted = format!("{prefix}/");
    let mut token: Option<String> = None;
    loop {
        if pages >= max_pages {
            return Ok(Some(Stopped::MaxPages(max_pages)));
        }
        let options = PaginatedListOptions {
            page_token: token.clone(),
            ..PaginatedListOptions::default()
        };
        let page = lister
            .list_paginated(Some(&wanted), options)
            .await
            .map_err(|e| storage.err("LIST", &prefix, &e))?;
        pages += 1;
        visit(Listed::Page);
        for meta in page.result.objects {
            visit(Listed::Object(meta));
        }
        match page.page_token.filter(|t| !t.is_empty()) {
            None => return Ok(None),
            Some(next) if token.as_ref() == Some(&next) => {
                return Ok(Some(Stopped::RepeatedToken));
            }
            next => token = next,
        }
    }
}
