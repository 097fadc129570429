//! `gc` on an object store: eviction by last use, then a sweep of what no surviving
//! entry references.
//!
//! Object stores keep no access time, so the last use of an entry is the later of its
//! own time (a store) and the time of its marker `used/<alg>/<hex>`, which `touch`
//! rewrites at most once per [`crate::S3Options::touch_interval`] after a hit.
//!
//! The algorithm, all within one deadline ([`ListLimits`]):
//!
//! 1. List `used/`, then `entries/`. Cut short: stop, nothing is deleted.
//! 2. Entries unused for longer than [`GcOptions::unused_for`] (and the grace) are
//!    removed, each after a HEAD of it and of its marker shows it was neither stored
//!    nor used again since the listing (then it is kept).
//! 3. Every surviving entry is read (bounded like `get_entry`) for the packs and blobs
//!    it references; `packs/` and `blobs/` are listed. A corrupt entry references
//!    what its wrapper names, if anything; an entry of a newer format, whose
//!    references cannot be read, keeps the sweep from running at all.
//! 4. With [`GcOptions::max_size`], least recently used entries (not used within the
//!    grace) are removed further until the entries and what they reference fit.
//! 5. `entries/` is listed again, and every entry stored or changed since the first
//!    listing is read too: a runner that published an entry meanwhile has its packs
//!    and blobs counted.
//! 6. Packs and blobs that nothing references and that are older than
//!    [`GcOptions::grace`] are deleted (a store in flight writes its packs and blobs
//!    before its entry: they are younger than the grace), each unless a store claimed
//!    it for reuse within the grace (below); then the markers of entries that are gone
//!    and of packs and blobs that are gone, older than the grace.
//!
//! **Reuse.** A store that finds a pack or blob already there sends nothing and names
//! it in its entry, and that object may be one no entry names any more, old enough
//! to be swept: the entries listing of step 5 may have been taken just before the
//! store published. So before it counts on such an object, a store writes its claim
//! marker (`used/packs/<hex>`, `used/blobs/<alg>/<hex>`, empty) and then checks that
//! the object is still there (if not, it sends it again). The sweep reads an
//! object's claim right before deleting it and keeps it when the claim is younger
//! than the grace; a claim stays while its object does and is deleted with it. What
//! is left is a store that claims and checks an object both between the sweep's read
//! of that claim and its deletion (one request apart): its entry is then a miss once,
//! and its next store sends the object again.
//!
//! A listing or read cut short by the deadline (or a page limit, or a server
//! repeating itself) stops the gc before step 6: the sweep never runs with a partial
//! view of the entries, which could delete a live pack. Times are the store's
//! `LastModified` against this machine's clock: the grace also absorbs clock skew,
//! and it must be longer than a store takes (from its first pack or blob written or
//! claimed to its entry published).

use crate::pack::{self, BadWrapper};
use crate::stats::{Listed, Stopped, list_kind};
use crate::{ListLimits, S3Storage, blocking, is_absent};
use cache_core::storage::{ActionRecord, MAX_ENTRY_BYTES};
use cache_core::{BackendError, BackendResult, Digest};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

/// What [`S3Storage::gc`] evicts, and within what bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcOptions {
    /// Entries neither stored nor used (hit) for longer than this are removed.
    pub unused_for: Duration,
    /// If set, least recently used entries are removed further until the entries and
    /// the packs and blobs they reference take at most this many bytes.
    pub max_size: Option<u64>,
    /// Nothing younger than this is deleted (entries by last use; packs, blobs and
    /// markers by their time, packs and blobs also by a store's claim to reuse them):
    /// a store running now may be about to publish the entry that needs them. Default
    /// 10 minutes.
    pub grace: Duration,
    /// The deadline and page limit over the whole gc (listings, reads, deletions).
    pub limits: ListLimits,
}

impl GcOptions {
    /// The default grace: 10 minutes, as the local cache's gc.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(600);

    /// Removes entries unused for `unused_for`, within `limits`, with the default grace
    /// and no size limit.
    #[must_use]
    pub fn new(unused_for: Duration, limits: ListLimits) -> Self {
        GcOptions {
            unused_for,
            max_size: None,
            grace: Self::DEFAULT_GRACE,
            limits,
        }
    }

    /// Sets [`GcOptions::max_size`].
    #[must_use]
    pub fn with_max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }

    /// Sets [`GcOptions::grace`].
    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
}

/// What [`S3Storage::gc`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcReport {
    /// Entries left in place.
    pub entries_kept: u64,
    /// Entries removed because they were unused for longer than `unused_for`.
    pub entries_removed_unused: u64,
    /// Entries removed further to fit `max_size`.
    pub entries_removed_for_size: u64,
    /// Entries that could not be read (corrupt): kept, referencing only the packs
    /// their wrapper names.
    pub entries_unreadable: u64,
    /// Entries of a newer format: their references cannot be read, so nothing was
    /// swept.
    pub entries_newer: u64,
    /// Packs deleted (no surviving entry named them).
    pub packs_removed: u64,
    /// Blobs deleted (no surviving entry named them).
    pub blobs_removed: u64,
    /// Markers deleted: the last use of removed or vanished entries, the claims of
    /// deleted or vanished packs and blobs.
    pub markers_removed: u64,
    /// Unreferenced packs, blobs and markers kept because they are younger than the
    /// grace, or (packs and blobs) claimed for reuse by a store within it.
    pub kept_young: u64,
    /// Bytes of entries, packs and blobs listed.
    pub bytes_before: u64,
    /// The same, less what was deleted.
    pub bytes_after: u64,
    /// Whether the sweep of packs, blobs and markers ran.
    pub swept: bool,
    /// `None` when the gc went to its end; else why a listing or read stopped early.
    /// Entries may have been removed before, but nothing was swept.
    pub stopped: Option<Stopped>,
}

impl GcReport {
    /// Entries removed, for either reason.
    #[must_use]
    pub fn entries_removed(&self) -> u64 {
        self.entries_removed_unused
            .saturating_add(self.entries_removed_for_size)
    }
}

/// One listed entry.
struct Entry {
    name: String,
    digest: Digest,
    meta: ObjectMeta,
    last: SystemTime,
}

/// What an entry references.
#[derive(Default)]
struct Refs {
    /// `packs/<hex>` and `blobs/<alg>/<hex>`, relative to the prefix.
    objects: Vec<String>,
    /// The same, by kind, with the blobs' sizes.
    named: EntryReferences,
    unreadable: bool,
    newer: bool,
}

enum Removal {
    Removed,
    /// Stored or used again since it was listed: kept.
    Changed,
    /// Already gone.
    Gone,
}

fn same(a: &ObjectMeta, b: &ObjectMeta) -> bool {
    a.last_modified == b.last_modified && a.e_tag == b.e_tag && a.size == b.size
}

fn digest_of(name: &str) -> Option<Digest> {
    let (alg, hex) = name.split_once('/')?;
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

struct Run<'a> {
    storage: &'a S3Storage,
    options: GcOptions,
    deadline: tokio::time::Instant,
    pages: u64,
    now: SystemTime,
    report: GcReport,
}

pub(crate) async fn run(storage: &S3Storage, options: GcOptions) -> BackendResult<GcReport> {
    let mut run = Run {
        storage,
        options,
        deadline: tokio::time::Instant::now() + options.limits.deadline,
        pages: 0,
        now: SystemTime::now(),
        report: GcReport::default(),
    };
    run.go().await?;
    let r = &mut run.report;
    r.bytes_after = r.bytes_after.min(r.bytes_before);
    Ok(run.report)
}

impl Run<'_> {
    fn age(&self, t: SystemTime) -> Duration {
        self.now.duration_since(t).unwrap_or_default()
    }

    fn stop(&mut self) {
        self.report.stopped = Some(Stopped::Deadline(self.options.limits.deadline));
    }

    /// Lists `<prefix>/<kind>/` by names relative to it; `None` (and `stopped` set)
    /// when the listing was cut short.
    async fn list(&mut self, kind: &str) -> BackendResult<Option<HashMap<String, ObjectMeta>>> {
        let mut parts: Vec<_> = self.storage.prefix().parts().collect();
        parts.push(kind.into());
        let base = format!("{}/", Path::from_iter(parts));
        let mut found = HashMap::new();
        let mut pages = self.pages;
        let mut visit = |item: Listed| match item {
            Listed::Page => pages += 1,
            Listed::Object(meta) => {
                if let Some(name) = meta.location.as_ref().strip_prefix(&base) {
                    found.insert(name.to_owned(), meta);
                }
            }
        };
        let listing = list_kind(
            self.storage,
            kind,
            self.options.limits.max_pages,
            self.pages,
            &mut visit,
        );
        let stopped = match tokio::time::timeout_at(self.deadline, listing).await {
            Ok(r) => r?,
            Err(_) => Some(Stopped::Deadline(self.options.limits.deadline)),
        };
        self.pages = pages;
        if let Some(why) = stopped {
            self.report.stopped = Some(why);
            return Ok(None);
        }
        Ok(Some(found))
    }

    /// Runs `stream` to its end within the deadline, collecting into `out`; `false`
    /// (and `stopped` set) when the deadline came first.
    async fn drain<T>(
        &mut self,
        stream: impl futures::Stream<Item = BackendResult<T>>,
        out: &mut Vec<T>,
    ) -> BackendResult<bool> {
        let mut stream = std::pin::pin!(stream);
        loop {
            match tokio::time::timeout_at(self.deadline, stream.next()).await {
                Ok(Some(r)) => out.push(r?),
                Ok(None) => return Ok(true),
                Err(_) => {
                    self.stop();
                    return Ok(false);
                }
            }
        }
    }

    // One pass in order, its steps numbered as in the module docs.
    #[allow(clippy::too_many_lines)]
    async fn go(&mut self) -> BackendResult<()> {
        let grace = self.options.grace;
        let Some(markers) = self.list("used").await? else {
            return Ok(());
        };
        let Some(listed) = self.list("entries").await? else {
            return Ok(());
        };
        let mut before: u64 = listed.values().map(|m| m.size).sum();
        // Objects under entries/ whose names are not digests are not ours: left alone.
        let entries: Vec<Entry> = listed
            .into_iter()
            .filter_map(|(name, meta)| {
                let digest = digest_of(&name)?;
                let mut last = SystemTime::from(meta.last_modified);
                if let Some(m) = markers.get(&name) {
                    last = last.max(SystemTime::from(m.last_modified));
                }
                Some(Entry {
                    name,
                    digest,
                    meta,
                    last,
                })
            })
            .collect();
        let unused_for = self.options.unused_for.max(grace);
        let (old, mut alive): (Vec<Entry>, Vec<Entry>) = entries
            .into_iter()
            .partition(|e| self.age(e.last) > unused_for);

        // 2. Unused entries.
        let mut removed_bytes = 0u64;
        let mut outcomes = Vec::new();
        let storage = self.storage;
        let concurrency = storage.inner.options.concurrency;
        let removals = futures::stream::iter(old)
            .map(|e| {
                let marker = markers.get(&e.name).cloned();
                async move {
                    let r = remove_entry(storage, &e, marker.as_ref()).await?;
                    Ok((e, r))
                }
            })
            .buffer_unordered(concurrency);
        let complete = self.drain(removals, &mut outcomes).await?;
        for (e, r) in outcomes {
            match r {
                Removal::Removed => {
                    self.report.entries_removed_unused += 1;
                    removed_bytes = removed_bytes.saturating_add(e.meta.size);
                }
                Removal::Changed => alive.push(e),
                Removal::Gone => {}
            }
        }
        self.report.bytes_before = before;
        self.report.bytes_after = before.saturating_sub(removed_bytes);
        if !complete {
            return Ok(());
        }

        // 3. What the survivors reference; the packs and blobs there are.
        let mut reads = Vec::new();
        let reading = futures::stream::iter(alive.iter().enumerate())
            .map(|(i, e)| async move { Ok((i, read_refs(storage, e.digest).await?)) })
            .buffer_unordered(concurrency);
        if !self.drain(reading, &mut reads).await? {
            return Ok(());
        }
        let Some(packs) = self.list("packs").await? else {
            return Ok(());
        };
        let Some(blobs) = self.list("blobs").await? else {
            return Ok(());
        };
        let sizes: HashMap<String, u64> = packs
            .iter()
            .map(|(n, m)| (format!("packs/{n}"), m.size))
            .chain(blobs.iter().map(|(n, m)| (format!("blobs/{n}"), m.size)))
            .collect();
        let listed_bytes: u64 = sizes.values().sum();
        before = before.saturating_add(listed_bytes);
        self.report.bytes_before = before;
        self.report.bytes_after = before.saturating_sub(removed_bytes);
        let mut refs: Vec<Refs> = (0..alive.len()).map(|_| Refs::default()).collect();
        let mut read_meta: Vec<Option<ObjectMeta>> = vec![None; alive.len()];
        for (i, read) in reads {
            if let Some((meta, r)) = read {
                read_meta[i] = Some(meta);
                refs[i] = r;
            }
        }
        let mut count: HashMap<&str, u32> = HashMap::new();
        for r in &refs {
            for o in &r.objects {
                *count.entry(o.as_str()).or_default() += 1;
            }
        }

        // 4. The size limit, least recently used first.
        let mut evicted = vec![false; alive.len()];
        if let Some(max) = self.options.max_size {
            let mut total: u64 = alive.iter().map(|e| e.meta.size).sum::<u64>()
                + count
                    .keys()
                    .filter_map(|k| sizes.get(*k))
                    .copied()
                    .sum::<u64>();
            let mut order: Vec<usize> = (0..alive.len()).collect();
            order.sort_by_key(|&i| alive[i].last);
            for i in order {
                if total <= max {
                    break;
                }
                if self.age(alive[i].last) <= grace {
                    break;
                }
                let marker = markers.get(&alive[i].name).cloned();
                let removal = remove_entry(storage, &alive[i], marker.as_ref());
                let Ok(r) = tokio::time::timeout_at(self.deadline, removal).await else {
                    self.stop();
                    return Ok(());
                };
                if !matches!(r?, Removal::Removed) {
                    continue;
                }
                evicted[i] = true;
                self.report.entries_removed_for_size += 1;
                total = total.saturating_sub(alive[i].meta.size);
                removed_bytes = removed_bytes.saturating_add(alive[i].meta.size);
                for o in &refs[i].objects {
                    let c = count.get_mut(o.as_str()).expect("counted above");
                    *c -= 1;
                    if *c == 0 {
                        total = total.saturating_sub(sizes.get(o.as_str()).copied().unwrap_or(0));
                    }
                }
            }
            self.report.bytes_after = before.saturating_sub(removed_bytes);
        }
        let mut referenced: HashSet<String> = count
            .into_iter()
            .filter(|(_, c)| *c > 0)
            .map(|(k, _)| k.to_owned())
            .collect();
        for (i, r) in refs.iter().enumerate() {
            // Evicted here, or gone (another gc, a lookup that removed it) before read.
            if evicted[i] || read_meta[i].is_none() {
                continue;
            }
            self.report.entries_kept += 1;
            self.report.entries_unreadable += u64::from(r.unreadable);
            self.report.entries_newer += u64::from(r.newer);
        }

        // 5. Entries stored or changed since: their references count too.
        let Some(again) = self.list("entries").await? else {
            return Ok(());
        };
        let known: HashMap<&str, &ObjectMeta> = alive
            .iter()
            .zip(&read_meta)
            .zip(&evicted)
            .filter(|(_, gone)| !**gone)
            .filter_map(|((e, m), _)| Some((e.name.as_str(), m.as_ref()?)))
            .collect();
        let fresh: Vec<Digest> = again
            .iter()
            .filter(|(name, meta)| known.get(name.as_str()).is_none_or(|m| !same(m, meta)))
            .filter_map(|(name, _)| digest_of(name))
            .collect();
        let mut reads = Vec::new();
        let reading = futures::stream::iter(fresh)
            .map(|d| read_refs(storage, d))
            .buffer_unordered(concurrency);
        if !self.drain(reading, &mut reads).await? {
            return Ok(());
        }
        for (_, r) in reads.into_iter().flatten() {
            self.report.entries_newer += u64::from(r.newer);
            referenced.extend(r.objects);
        }
        if self.report.entries_newer > 0 {
            tracing::warn!(
                entries = self.report.entries_newer,
                "entries of a newer format name objects this build cannot read: nothing is swept"
            );
            return Ok(());
        }

        // 6. The sweep: packs and blobs first, each unless a store claimed it for reuse
        // within the grace (its marker, read just before the deletion), then the
        // markers of entries that are gone and of packs and blobs that are gone.
        let mut doomed: Vec<(Path, u64, u8)> = Vec::new();
        for (kind, objects, tag) in [("packs", &packs, 0u8), ("blobs", &blobs, 1)] {
            for (name, meta) in objects {
                let rel = format!("{kind}/{name}");
                if referenced.contains(&rel) {
                    continue;
                }
                if self.age(SystemTime::from(meta.last_modified)) <= grace {
                    self.report.kept_young += 1;
                    continue;
                }
                doomed.push((meta.location.clone(), meta.size, tag));
            }
        }
        let now = self.now;
        let mut swept = Vec::new();
        let sweeping = futures::stream::iter(doomed)
            .map(|(path, size, tag)| async move {
                let swept = sweep_unclaimed(storage, &path, now, grace).await?;
                Ok((size, tag, swept))
            })
            .buffer_unordered(concurrency);
        let complete = self.drain(sweeping, &mut swept).await?;
        for (size, tag, outcome) in swept {
            match outcome {
                Swept::Claimed => self.report.kept_young += 1,
                Swept::Deleted { marker } => {
                    if tag == 0 {
                        self.report.packs_removed += 1;
                    } else {
                        self.report.blobs_removed += 1;
                    }
                    self.report.markers_removed += u64::from(marker);
                    removed_bytes = removed_bytes.saturating_add(size);
                }
            }
        }
        self.report.bytes_after = before.saturating_sub(removed_bytes);
        if !complete {
            return Ok(());
        }
        let mut doomed_markers = Vec::new();
        for (name, meta) in &markers {
            let gone = match name.split_once('/') {
                // A claim of a pack or blob: decided with it while it is there.
                Some(("packs", hex)) => !packs.contains_key(hex),
                Some(("blobs", rest)) => !blobs.contains_key(rest),
                // An entry's last use.
                _ => !again.contains_key(name),
            };
            if !gone {
                continue;
            }
            if self.age(SystemTime::from(meta.last_modified)) <= grace {
                self.report.kept_young += 1;
                continue;
            }
            doomed_markers.push(meta.location.clone());
        }
        let mut deleted = Vec::new();
        let deleting = futures::stream::iter(doomed_markers)
            .map(|path| async move { storage.delete(&path).await })
            .buffer_unordered(concurrency);
        let complete = self.drain(deleting, &mut deleted).await?;
        self.report.markers_removed += deleted.len() as u64;
        self.report.bytes_after = before.saturating_sub(removed_bytes);
        self.report.swept = complete;
        Ok(())
    }
}

/// What an entry references ([`S3Storage::entry_references`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryReferences {
    /// `packs/<hex>`: the packs its wrapper names (none for a plain entry).
    pub packs: Vec<String>,
    /// `blobs/<algorithm>/<hex>` and the size of every blob its record names. One over
    /// 1 MiB is always its own object; a smaller one is in one of `packs`, or its own
    /// object (entries from before packs, imports).
    pub blobs: Vec<(String, u64)>,
}

impl EntryReferences {
    /// The objects a hit of the entry needs for sure: its packs, and the blobs too
    /// large to be packed (every blob of a plain entry).
    pub fn required(&self) -> impl Iterator<Item = &str> {
        let plain = self.packs.is_empty();
        self.packs.iter().map(String::as_str).chain(
            self.blobs
                .iter()
                .filter(move |(_, size)| plain || *size > crate::EAGER_MAX)
                .map(|(name, _)| name.as_str()),
        )
    }
}

impl S3Storage {
    /// What the entry for `key` keeps alive: [`S3Storage::gc`] keeps every pack and
    /// blob named here. `None` if there is no entry; `CorruptEntry` if it cannot be
    /// read (corrupt, or of a newer format).
    pub async fn entry_references(&self, key: &Digest) -> BackendResult<Option<EntryReferences>> {
        let Some((_, refs)) = read_refs(self, *key).await? else {
            return Ok(None);
        };
        if refs.unreadable || refs.newer {
            return Err(BackendError::CorruptEntry {
                key: *key,
                reason: if refs.newer {
                    "an entry of a newer format".into()
                } else {
                    "the entry cannot be read".into()
                },
            });
        }
        Ok(Some(refs.named))
    }
}

/// What the sweep did with an unreferenced pack or blob.
enum Swept {
    /// A store claimed it for reuse within the grace: kept.
    Claimed,
    /// Deleted, and its claim marker too if it had one.
    Deleted { marker: bool },
}

/// Deletes the pack or blob at `path` unless its claim marker (written by a store
/// that found it there and is about to name it in an entry) is younger than `grace`
/// at `now`; then deletes that marker too. The marker is read right before the
/// deletion, so a store whose entry the listings missed has claimed it by then.
async fn sweep_unclaimed(
    storage: &S3Storage,
    path: &Path,
    now: SystemTime,
    grace: Duration,
) -> BackendResult<Swept> {
    let marker = storage.claim_path(path);
    let claimed = match storage.store().head(&marker).await {
        Ok(meta) => Some(SystemTime::from(meta.last_modified)),
        Err(e) if is_absent(&e) => None,
        Err(e) => return Err(storage.err("HEAD", &marker, &e)),
    };
    if claimed.is_some_and(|at| now.duration_since(at).unwrap_or_default() <= grace) {
        tracing::debug!(object = %path, "kept: claimed for reuse within the grace");
        return Ok(Swept::Claimed);
    }
    tracing::debug!(object = %path, claimed = claimed.is_some(), "sweeping");
    storage.delete(path).await?;
    if claimed.is_some() {
        storage.delete(&marker).await?;
    }
    Ok(Swept::Deleted {
        marker: claimed.is_some(),
    })
}

impl S3Storage {
    /// The claim marker of the pack or blob at `object` (`<prefix>/packs/<hex>` →
    /// `<prefix>/used/packs/<hex>`, `<prefix>/blobs/<alg>/<hex>` →
    /// `<prefix>/used/blobs/<alg>/<hex>`).
    pub(crate) fn claim_path(&self, object: &Path) -> Path {
        let prefix: Vec<_> = self.prefix().parts().collect();
        let mut parts = prefix.clone();
        parts.push("used".into());
        parts.extend(object.parts().skip(prefix.len()));
        Path::from_iter(parts)
    }

    /// Before a store names the pack or blob at `object`, found already stored, in an
    /// entry instead of sending it: writes its claim marker (which gc reads before
    /// deleting an object no entry names), then looks again. Its size if it is still
    /// there; `None` if gc deleted it in between (send it).
    pub(crate) async fn claim(&self, object: &Path) -> BackendResult<Option<u64>> {
        let marker = self.claim_path(object);
        self.store()
            .put(&marker, object_store::PutPayload::from_static(b""))
            .await
            .map_err(|e| self.err("PUT", &marker, &e))?;
        let size = self.head_size(object).await?;
        tracing::debug!(%object, there = size.is_some(), "claimed for reuse");
        Ok(size)
    }
}

/// Removes entry `e` and its marker unless either changed since they were listed.
async fn remove_entry(
    storage: &S3Storage,
    e: &Entry,
    marker: Option<&ObjectMeta>,
) -> BackendResult<Removal> {
    let store = storage.store();
    let path = storage.entry_path(&e.digest);
    match store.head(&path).await {
        Ok(now) if same(&now, &e.meta) => {}
        Ok(_) => return Ok(Removal::Changed),
        Err(err) if is_absent(&err) => return Ok(Removal::Gone),
        Err(err) => return Err(storage.err("HEAD", &path, &err)),
    }
    let marker_path = storage.marker_path(&e.digest);
    let has_marker = match store.head(&marker_path).await {
        Ok(now) if marker.is_some_and(|m| same(m, &now)) => true,
        Ok(_) => return Ok(Removal::Changed),
        Err(err) if is_absent(&err) => false,
        Err(err) => return Err(storage.err("HEAD", &marker_path, &err)),
    };
    storage.delete(&path).await?;
    if has_marker {
        storage.delete(&marker_path).await?;
    }
    Ok(Removal::Removed)
}

/// The packs and blobs the entry `digest` references, with the entry's metadata as
/// read; `None` if it is gone.
async fn read_refs(
    storage: &S3Storage,
    digest: Digest,
) -> BackendResult<Option<(ObjectMeta, Refs)>> {
    let path = storage.entry_path(&digest);
    let got = match storage.store().get(&path).await {
        Ok(got) => got,
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(storage.err("GET", &path, &e)),
    };
    let meta = got.meta.clone();
    let unreadable = Refs {
        unreadable: true,
        ..Refs::default()
    };
    if meta.size > MAX_ENTRY_BYTES as u64 {
        return Ok(Some((meta, unreadable)));
    }
    let bytes = got
        .bytes()
        .await
        .map_err(|e| storage.err("GET", &path, &e))?;
    let (packs, at) = match pack::unwrap_entry(&bytes) {
        Ok(None) => (Vec::new(), pack::RecordAt::Plain(0)),
        Ok(Some((packs, at))) => (
            packs
                .iter()
                .map(|p| format!("packs/{}", p.name.hex()))
                .collect(),
            at,
        ),
        Err(BadWrapper::Newer(_)) => {
            let newer = Refs {
                newer: true,
                ..Refs::default()
            };
            return Ok(Some((meta, newer)));
        }
        Err(BadWrapper::Corrupt(_)) => return Ok(Some((meta, unreadable))),
    };
    let decoded = blocking(move || {
        Ok(at
            .record(&bytes)
            .map_err(|reason| BackendError::CorruptEntry {
                key: digest,
                reason,
            })
            .and_then(|body| ActionRecord::decode(&digest, &body)))
    })
    .await?;
    let mut named = EntryReferences {
        packs,
        blobs: Vec::new(),
    };
    let (unreadable, newer) = match decoded {
        Ok(record) => {
            named.blobs = record
                .blobs()
                .map(|b| {
                    let name =
                        format!("blobs/{}/{}", b.digest.algorithm().as_str(), b.digest.hex());
                    (name, b.size)
                })
                .collect();
            (false, false)
        }
        Err(BackendError::NewerEntryFormat { .. }) => (false, true),
        // Corrupt: what its wrapper names still counts as referenced.
        Err(_) => (true, false),
    };
    let objects = named
        .packs
        .iter()
        .cloned()
        .chain(named.blobs.iter().map(|(n, _)| n.clone()))
        .collect();
    Ok(Some((
        meta,
        Refs {
            objects,
            named,
            unreadable,
            newer,
        },
    )))
}
