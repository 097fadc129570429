//! Maintenance: statistics, size-bounded GC and full verification. Blocking code, run
//! on the blocking pool by the async methods of [`crate::LocalStorage`].

use crate::counters::Counters;
use crate::layout::{self, Found, Layout};
use crate::{GcOptions, GcReport, LocalStats, VerifyReport};
use cache_core::storage::{ActionRecord, MAX_ENTRY_BYTES, hash_reader};
use cache_core::{BackendError, BackendResult, Digest};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, SystemTime};

pub(crate) fn stats(layout: &Layout, counters: &Counters) -> BackendResult<LocalStats> {
    let entries = layout::scan(&layout.entries)?;
    let blobs = layout::scan(&layout.blobs)?;
    let totals = counters
        .read(layout)
        .map_err(|e| BackendError::io_with_context("read statistics", &layout.stats, e))?;
    Ok(LocalStats {
        entries: entries.len() as u64,
        blobs: blobs.len() as u64,
        bytes: entries.iter().chain(&blobs).map(|f| f.len).sum(),
        hits: totals.hits,
        misses: totals.misses,
    })
}

/// Reads an entry file, refusing more than [`MAX_ENTRY_BYTES`]. `Ok(None)` if absent.
pub(crate) fn read_entry(path: &Path, key: &Digest) -> BackendResult<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BackendError::io_with_context("open cache entry", path, e)),
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(MAX_ENTRY_BYTES) + 1);
    file.take(MAX_ENTRY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| BackendError::io_with_context("read cache entry", path, e))?;
    if bytes.len() > MAX_ENTRY_BYTES {
        return Err(BackendError::CorruptEntry {
            key: *key,
            reason: format!(
                "the entry file {} is over the {MAX_ENTRY_BYTES}-byte limit",
                path.display()
            ),
        });
    }
    Ok(Some(bytes))
}

/// Removes temporary files not modified for `age` (left by crashed writers).
pub(crate) fn clean_temps(layout: &Layout, age: Duration) -> BackendResult<u64> {
    let now = SystemTime::now();
    let mut removed = 0;
    for e in layout::read_dir_or_empty(&layout.tmp)? {
        let Ok(meta) = e.metadata() else { continue };
        let idle = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if meta.is_file() && idle >= age {
            match layout::remove_quiet(&e.path()) {
                Ok(true) => removed += 1,
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(path = %e.path().display(), error = %err, "could not remove a stale temporary file");
                }
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, dir = %layout.tmp.display(), "removed stale temporary files of crashed writers");
    }
    Ok(removed)
}

fn age(now: SystemTime, mtime: SystemTime) -> Duration {
    now.duration_since(mtime).unwrap_or_default()
}

/// Loads an entry for GC/verify; a corrupt one is removed (and reported as `Err(())`).
/// The open file comes back with the record, to remove exactly that file later.
#[allow(clippy::type_complexity)]
fn load_or_remove(found: &Found) -> BackendResult<Result<Option<(File, ActionRecord)>, ()>> {
    let file = match File::open(&found.path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ok(None)),
        Err(e) => {
            return Err(BackendError::io_with_context(
                "open cache entry",
                &found.path,
                e,
            ));
        }
    };
    let mut bytes = Vec::new();
    (&file)
        .take(MAX_ENTRY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| BackendError::io_with_context("read cache entry", &found.path, e))?;
    match ActionRecord::decode(&found.digest, &bytes) {
        Ok(r) => Ok(Ok(Some((file, r)))),
        Err(err) => {
            let removed = layout::remove_if_same(&found.path, &file).map_err(|e| {
                BackendError::io_with_context("remove corrupt entry", &found.path, e)
            })?;
            tracing::warn!(key = %found.digest, path = %found.path.display(), removed, error = %err, "removed a corrupt cache entry");
            Ok(Err(()))
        }
    }
}

/// Removes a blob unless it is younger than the grace period; both count as freed in
/// `planned`, only a removal in `total`.
fn remove_blob(
    found: &Found,
    opts: GcOptions,
    report: &mut GcReport,
    total: &mut u64,
    planned: &mut u64,
) {
    // Fresh look: a store that reused the blob since the scan refreshed its mtime.
    let Ok(meta) = fs::symlink_metadata(&found.path) else {
        return;
    };
    let now = SystemTime::now();
    if age(now, meta.modified().unwrap_or(now)) < opts.blob_grace {
        report.blobs_kept_young += 1;
        *planned = planned.saturating_sub(found.len);
        return;
    }
    match layout::remove_quiet(&found.path) {
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

pub(crate) fn gc(
    layout: &Layout,
    counters: &Counters,
    max_bytes: u64,
    opts: GcOptions,
) -> BackendResult<GcReport> {
    let mut report = GcReport {
        temp_files_removed: clean_temps(layout, opts.temp_age)?,
        ..GcReport::default()
    };
    let mut entries = layout::scan(&layout.entries)?;
    let blobs: HashMap<Digest, Found> = layout::scan(&layout.blobs)?
        .into_iter()
        .map(|f| (f.digest, f))
        .collect();
    report.entries_before = entries.len() as u64;
    report.bytes_before =
        entries.iter().map(|f| f.len).sum::<u64>() + blobs.values().map(|f| f.len).sum::<u64>();
    let mut total = report.bytes_before;

    // Which blobs each entry needs; corrupt entries are garbage.
    let mut refs: HashMap<Digest, u32> = HashMap::new();
    let mut needs = Vec::with_capacity(entries.len());
    let mut live = Vec::with_capacity(entries.len());
    for e in entries.drain(..) {
        match load_or_remove(&e)? {
            Ok(Some((_, record))) => {
                let mut ds: Vec<Digest> = record.blobs().map(|b| b.digest).collect();
                ds.sort_unstable();
                ds.dedup();
                for d in &ds {
                    *refs.entry(*d).or_default() += 1;
                }
                needs.push(ds);
                live.push(e);
            }
            Ok(None) => total -= e.len,
            Err(()) => {
                report.corrupt_entries_removed += 1;
                total -= e.len;
            }
        }
    }

    // `total` is what is on disk; `planned` also counts as gone the blobs that are
    // unreferenced but kept for their grace period (a later GC removes them), so
    // entries are not evicted in vain for bytes that will be freed anyway.
    let mut planned = total;
    // Unreferenced blobs first: they serve no entry.
    for (d, found) in &blobs {
        if !refs.contains_key(d) {
            remove_blob(found, opts, &mut report, &mut total, &mut planned);
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
        match fs::symlink_metadata(&e.path) {
            // Used or replaced since the scan: no longer least recently used.
            Ok(m) if m.modified().ok() != Some(e.mtime) => continue,
            Ok(_) => {}
            Err(_) => continue,
        }
        match layout::remove_quiet(&e.path) {
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
                    remove_blob(found, opts, &mut report, &mut total, &mut planned);
                }
            }
        }
    }
    report.bytes_after = total;
    // The size estimate that triggers GC after stores: what remains once the kept
    // blobs age out (otherwise every store would re-run GC during their grace).
    counters.measured(planned);
    if report.entries_removed + report.blobs_removed > 0 {
        tracing::info!(
            entries = report.entries_removed,
            blobs = report.blobs_removed,
            freed = report.bytes_before - report.bytes_after,
            "local cache GC"
        );
    }
    Ok(report)
}

pub(crate) fn verify(layout: &Layout, opts: GcOptions) -> BackendResult<VerifyReport> {
    let mut report = VerifyReport {
        temp_files_removed: clean_temps(layout, opts.temp_age)?,
        ..VerifyReport::default()
    };
    for b in layout::scan(&layout.blobs)? {
        let mut file = match File::open(&b.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(BackendError::io_with_context("open blob", &b.path, e)),
        };
        let actual = hash_reader(&mut file, b.digest.algorithm())
            .map_err(|e| BackendError::io_with_context("read blob", &b.path, e))?;
        report.blobs_checked += 1;
        report.bytes_checked += actual.size;
        if actual.digest != b.digest {
            let removed = layout::remove_if_same(&b.path, &file)
                .map_err(|e| BackendError::io_with_context("remove corrupt blob", &b.path, e))?;
            tracing::warn!(blob = %b.digest, actual = %actual.digest, path = %b.path.display(), removed, "removed a corrupt blob");
            if removed {
                report.blobs_removed += 1;
            }
        }
    }
    for e in layout::scan(&layout.entries)? {
        report.entries_checked += 1;
        let (file, record) = match load_or_remove(&e)? {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(()) => {
                report.entries_removed += 1;
                continue;
            }
        };
        if let Some(b) = layout.missing_blobs(record.blobs()).first() {
            // It can only ever read as a miss; the next store of its key rewrites it.
            if layout::remove_if_same(&e.path, &file).unwrap_or(false) {
                report.entries_incomplete_removed += 1;
                tracing::warn!(key = %e.digest, blob = %b, "removed an entry whose blob is gone");
            }
        }
    }
    Ok(report)
}
