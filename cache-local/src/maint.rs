//! Maintenance: statistics, size-bounded GC and full verification. Blocking code, run
//! on the blocking pool by the async methods of [`crate::LocalStorage`].

use crate::claim;
use crate::counters;
use crate::fsat::{self, FileAt, Node};
use crate::layout::{Area, Found, Layout};
use crate::{GcOptions, GcReport, LocalStats, VerifyReport};
use cache_core::storage::{ActionRecord, MAX_ENTRY_BYTES, hash_reader};
use cache_core::{BackendError, BackendResult, Digest};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::time::{Duration, SystemTime};

fn total_len<'a>(files: impl IntoIterator<Item = &'a Found>) -> u64 {
    files.into_iter().fold(0, |n, f| n.saturating_add(f.len))
}

pub(crate) fn stats(layout: &Layout) -> BackendResult<LocalStats> {
    let entries = layout.scan(Area::Entries, false)?.found;
    let blobs = layout.scan(Area::Blobs, false)?.found;
    let totals = counters::read(layout)
        .map_err(|e| BackendError::io_with_context("read statistics", &layout.stats, e))?;
    Ok(LocalStats {
        entries: entries.len() as u64,
        blobs: blobs.len() as u64,
        bytes: total_len(entries.iter().chain(&blobs)),
        hits: totals.hits,
        misses: totals.misses,
    })
}

/// Reads at most [`MAX_ENTRY_BYTES`] (and one more, to tell) of an open entry file.
fn read_bounded(file: &File, len: u64, path: &std::path::Path) -> BackendResult<Vec<u8>> {
    let cap = usize::try_from(len).unwrap_or(0).min(MAX_ENTRY_BYTES) + 1;
    let mut bytes = Vec::with_capacity(cap);
    file.take(MAX_ENTRY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| BackendError::io_with_context("read cache entry", path, e))?;
    Ok(bytes)
}

/// Reads the entry of `key`, refusing more than [`MAX_ENTRY_BYTES`]. `Ok(None)` if
/// absent; anything but a regular file there (a link, a FIFO, ...) is a corrupt entry,
/// never followed or opened.
pub(crate) fn read_entry(layout: &Layout, key: &Digest) -> BackendResult<Option<Vec<u8>>> {
    let path = layout.entry_path(key);
    let corrupt = |reason: String| BackendError::CorruptEntry { key: *key, reason };
    let (file, meta) = match layout
        .open_file(Area::Entries, key)
        .map_err(|e| BackendError::io_with_context("open cache entry", &path, e))?
    {
        FileAt::File(f, m) => (f, m),
        FileAt::Missing => return Ok(None),
        FileAt::Other(what) => {
            return Err(corrupt(format!(
                "the entry file {} is {what}, not a regular file",
                path.display()
            )));
        }
    };
    let bytes = read_bounded(&file, meta.len, &path)?;
    if bytes.len() > MAX_ENTRY_BYTES {
        return Err(corrupt(format!(
            "the entry file {} is over the {MAX_ENTRY_BYTES}-byte limit",
            path.display()
        )));
    }
    Ok(Some(bytes))
}

/// Removes this code's temporary files not modified for `age` (left by crashed
/// writers), and links and special files planted in `tmp`; anything else there is left
/// alone. Returns both counts.
pub(crate) fn clean_temps(layout: &Layout, age: Duration) -> BackendResult<(u64, u64)> {
    let now = SystemTime::now();
    let dir = layout.tmp_dir();
    let (mut removed, mut foreign) = (0, 0);
    let names =
        fsat::list_at(dir).map_err(|e| BackendError::io_with_context("list", &layout.tmp, e))?;
    for name in names {
        let path = layout.tmp.join(&name);
        let count = match fsat::lstat_at(dir, &name) {
            Ok(Node::File(m)) if claim::is_own_temp(&name) && self::age(now, m.mtime) >= age => {
                &mut removed
            }
            Ok(Node::Other(what)) => {
                tracing::warn!(path = %path.display(), "removing {what} planted among temporary files (never followed)");
                &mut foreign
            }
            _ => continue,
        };
        match fsat::remove_at(dir, &name) {
            Ok(true) => *count += 1,
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "could not remove a stale temporary file");
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, dir = %layout.tmp.display(), "removed stale temporary files of crashed writers");
    }
    Ok((removed, foreign))
}

fn age(now: SystemTime, mtime: SystemTime) -> Duration {
    now.duration_since(mtime).unwrap_or_default()
}

/// Loads an entry for GC/verify; a corrupt one (or anything but a regular file) is
/// removed (and reported as `Err(())`). The open file comes back with the record, to
/// remove exactly that file later.
#[allow(clippy::type_complexity)]
fn load_or_remove(
    layout: &Layout,
    found: &Found,
) -> BackendResult<Result<Option<(File, ActionRecord)>, ()>> {
    let path = &found.path;
    let opened = layout
        .open_file(Area::Entries, &found.digest)
        .map_err(|e| BackendError::io_with_context("open cache entry", path, e))?;
    let (file, meta) = match opened {
        FileAt::File(f, m) => (f, m),
        FileAt::Missing => return Ok(Ok(None)),
        FileAt::Other(what) => {
            // Replaced since the scan by something that is not an entry.
            let removed = layout
                .remove(Area::Entries, &found.digest)
                .map_err(|e| BackendError::io_with_context("remove corrupt entry", path, e))?;
            tracing::warn!(key = %found.digest, path = %path.display(), removed, "removed {what} planted as a cache entry (never followed)");
            return Ok(Err(()));
        }
    };
    let bytes = read_bounded(&file, meta.len, path)?;
    match ActionRecord::decode(&found.digest, &bytes) {
        Ok(r) => Ok(Ok(Some((file, r)))),
        // Written by a newer taskcache sharing this directory: not this version's to
        // judge, evict or delete.
        Err(BackendError::NewerEntryFormat { .. }) => Ok(Ok(None)),
        Err(err) => {
            let removed = layout
                .remove_if_same(Area::Entries, &found.digest, &file)
                .map_err(|e| BackendError::io_with_context("remove corrupt entry", path, e))?;
            tracing::warn!(key = %found.digest, path = %path.display(), removed, error = %err, "removed a corrupt cache entry");
            Ok(Err(()))
        }
    }
}

/// Removes a blob unless it is younger than the grace period; both count as freed in
/// `planned`, only a removal in `total`.
fn remove_blob(
    layout: &Layout,
    found: &Found,
    opts: GcOptions,
    report: &mut GcReport,
    (total, planned): (&mut u64, &mut u64),
) {
    // Fresh look: a store that reused the blob since the scan refreshed its mtime.
    let Ok(Node::File(meta)) = layout.lstat(Area::Blobs, &found.digest) else {
        return;
    };
    if age(SystemTime::now(), meta.mtime) < opts.blob_grace {
        report.blobs_kept_young += 1;
        report.bytes_kept_young = report.bytes_kept_young.saturating_add(found.len);
        *planned = planned.saturating_sub(found.len);
        return;
    }
    match layout.remove(Area::Blobs, &found.digest) {
        Ok(true) => {
            report.blobs_removed += 1;
            *total = total.saturating_sub(found.len);
            *planned = planned.saturating_sub(found.len);
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(path = %found.path.display(), error = %e, "GC could not remove a blob");
        }
    }
}

/// The entries GC keeps as candidates for eviction, which blobs each needs, and how
/// many entries need each blob. Corrupt entries are removed (counted in `report`) and
/// their bytes taken off `total`.
struct Live {
    entries: Vec<Found>,
    needs: Vec<Vec<Digest>>,
    refs: HashMap<Digest, u32>,
}

fn load_live(
    layout: &Layout,
    entries: Vec<Found>,
    report: &mut GcReport,
    total: &mut u64,
) -> BackendResult<Live> {
    let mut live = Live {
        needs: Vec::with_capacity(entries.len()),
        entries: Vec::with_capacity(entries.len()),
        refs: HashMap::new(),
    };
    for e in entries {
        match load_or_remove(layout, &e)? {
            Ok(Some((_, record))) => {
                let mut ds: Vec<Digest> = record.blobs().map(|b| b.digest).collect();
                ds.sort_unstable();
                ds.dedup();
                for d in &ds {
                    *live.refs.entry(*d).or_default() += 1;
                }
                live.needs.push(ds);
                live.entries.push(e);
            }
            Ok(None) => *total = total.saturating_sub(e.len),
            Err(()) => {
                report.corrupt_entries_removed += 1;
                *total = total.saturating_sub(e.len);
            }
        }
    }
    Ok(live)
}

pub(crate) fn gc(layout: &Layout, max_bytes: u64, opts: GcOptions) -> BackendResult<GcReport> {
    let (temp_files_removed, foreign_temps) = clean_temps(layout, opts.temp_age)?;
    let entries = layout.scan(Area::Entries, true)?;
    let blobs = layout.scan(Area::Blobs, true)?;
    let mut report = GcReport {
        temp_files_removed,
        foreign_removed: foreign_temps + entries.foreign_removed + blobs.foreign_removed,
        entries_before: entries.found.len() as u64,
        bytes_before: total_len(entries.found.iter().chain(&blobs.found)),
        ..GcReport::default()
    };
    let blobs: HashMap<Digest, Found> = blobs.found.into_iter().map(|f| (f.digest, f)).collect();
    let mut total = report.bytes_before;
    // Which blobs each entry needs; corrupt entries are garbage.
    let Live {
        entries: live,
        needs,
        mut refs,
    } = load_live(layout, entries.found, &mut report, &mut total)?;

    // `total` is what is on disk; `planned` also counts as gone the blobs that are
    // unreferenced but kept for their grace period (a later GC removes them), so
    // entries are not evicted in vain for bytes that will be freed anyway.
    let mut planned = total;
    // Unreferenced blobs first: they serve no entry.
    for (d, found) in &blobs {
        if !refs.contains_key(d) {
            remove_blob(layout, found, opts, &mut report, (&mut total, &mut planned));
        }
    }

    // Then least-recently-used entries (restores refresh an entry's mtime) and the
    // blobs that only they needed, until the cache fits.
    let mut order: Vec<usize> = (0..live.len()).collect();
    order.sort_by_key(|&i| live[i].mtime);
    for i in order {
        if planned <= max_bytes {
            break;
        }
        let e = &live[i];
        match layout.lstat(Area::Entries, &e.digest) {
            // Not used or replaced since the scan: still least recently used.
            Ok(Node::File(m)) if m.mtime == e.mtime => {}
            _ => continue,
        }
        match layout.remove(Area::Entries, &e.digest) {
            Ok(true) => {
                report.entries_removed += 1;
                total = total.saturating_sub(e.len);
                planned = planned.saturating_sub(e.len);
            }
            Ok(false) => continue,
            Err(err) => {
                tracing::warn!(path = %e.path.display(), error = %err, "GC could not remove an entry");
                continue;
            }
        }
        for d in &needs[i] {
            let n = refs.get_mut(d).expect("counted above");
            *n -= 1;
            if *n == 0 {
                if let Some(found) = blobs.get(d) {
                    remove_blob(layout, found, opts, &mut report, (&mut total, &mut planned));
                }
            }
        }
    }
    report.bytes_after = total;
    // The size estimate that triggers GC after stores: what remains once the kept
    // blobs age out (otherwise every store would re-run GC during their grace).
    counters::measured(layout, planned);
    if report.entries_removed + report.blobs_removed > 0 {
        tracing::info!(
            entries = report.entries_removed,
            blobs = report.blobs_removed,
            freed = report.bytes_before.saturating_sub(report.bytes_after),
            "local cache GC"
        );
    }
    Ok(report)
}

/// Re-hashes one blob found by the scan (reading at most its length when opened);
/// removes it if its bytes do not match its name.
fn verify_blob(layout: &Layout, b: &Found, report: &mut VerifyReport) -> BackendResult<()> {
    let opened = layout
        .open_file(Area::Blobs, &b.digest)
        .map_err(|e| BackendError::io_with_context("open blob", &b.path, e))?;
    // Gone, or replaced by a link since the scan (the next scan removes it).
    let FileAt::File(file, meta) = opened else {
        return Ok(());
    };
    // A file of mostly holes is damaged, told without reading it (it could claim a
    // terabyte and hold nothing).
    let mut damage = cache_core::storage::sparse_blob_reason(&file);
    if damage.is_none() {
        let actual = hash_reader(&mut (&file).take(meta.len), b.digest.algorithm())
            .map_err(|e| BackendError::io_with_context("read blob", &b.path, e))?;
        report.bytes_checked = report.bytes_checked.saturating_add(actual.size);
        damage =
            (actual.digest != b.digest).then(|| format!("its bytes hash to {}", actual.digest));
    }
    report.blobs_checked += 1;
    if let Some(reason) = damage {
        let removed = layout
            .remove_if_same(Area::Blobs, &b.digest, &file)
            .map_err(|e| BackendError::io_with_context("remove corrupt blob", &b.path, e))?;
        tracing::warn!(blob = %b.digest, reason, path = %b.path.display(), removed, "removed a corrupt blob");
        if removed {
            report.blobs_removed += 1;
        }
    }
    Ok(())
}

pub(crate) fn verify(layout: &Layout, opts: GcOptions) -> BackendResult<VerifyReport> {
    let (temp_files_removed, foreign_temps) = clean_temps(layout, opts.temp_age)?;
    let blobs = layout.scan(Area::Blobs, true)?;
    let mut report = VerifyReport {
        temp_files_removed,
        foreign_removed: foreign_temps + blobs.foreign_removed,
        ..VerifyReport::default()
    };
    for b in &blobs.found {
        verify_blob(layout, b, &mut report)?;
    }
    let entries = layout.scan(Area::Entries, true)?;
    report.foreign_removed += entries.foreign_removed;
    for e in entries.found {
        report.entries_checked += 1;
        let (file, record) = match load_or_remove(layout, &e)? {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(()) => {
                report.entries_removed += 1;
                continue;
            }
        };
        if let Some(b) = layout.missing_blobs(record.blobs()).first() {
            // It can only ever read as a miss; the next store of its key rewrites it.
            if layout
                .remove_if_same(Area::Entries, &e.digest, &file)
                .unwrap_or(false)
            {
                report.entries_incomplete_removed += 1;
                tracing::warn!(key = %e.digest, blob = %b, "removed an entry whose blob is gone");
            }
        }
    }
    Ok(report)
}
