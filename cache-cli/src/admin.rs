//! `taskcache stats`, `gc` and `verify`: housekeeping of the local cache. On an object
//! store, `stats` counts by listing and `gc` evicts by last use (`--unused-for`).

use crate::Failure;
use crate::backend;
use crate::cli::{CacheArgs, GcArgs, StatsArgs};
use crate::location::{Location, RawLocation};
use crate::size::format_size;
use cache_local::{LocalOptions, LocalStorage};
use std::io::Write;
use std::path::PathBuf;

fn open(args: &CacheArgs) -> Result<(tokio::runtime::Runtime, LocalStorage, PathBuf), Failure> {
    let dir = backend::cache_dir(args.cache.as_ref().map(RawLocation::as_str))?;
    // Housekeeping never creates a cache, nor takes over a directory that is not one.
    cache_local::check_cache_dir(&dir, false).map_err(|e| Failure::Usage(e.to_string()))?;
    let storage = LocalStorage::open_existing(&dir, LocalOptions::default())
        .map_err(|e| Failure::Fatal(format!("cannot open the cache at {}: {e}", dir.display())))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Fatal(format!("cannot start the async runtime: {e}")))?;
    Ok((rt, storage, dir))
}

fn print(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Fatal(format!("cannot write to stdout: {e}")))
}

/// The object store `--cache` names, if it names one.
fn object_store(args: &CacheArgs) -> Result<Option<(url::Url, String)>, Failure> {
    let raw = args
        .cache
        .as_ref()
        .map(RawLocation::as_str)
        .filter(|s| !s.is_empty());
    match raw
        .map(|r| backend::parse(r, backend::Role::Cache))
        .transpose()?
    {
        Some(Location::ObjectStore { url, shown }) => Ok(Some((url, shown))),
        _ => Ok(None),
    }
}

/// What `gc` says about an object store without `--unused-for`.
fn unused_for_needed(shown: &str) -> String {
    format!(
        "gc on an object store ({shown}) needs --unused-for DURATION (e.g. --unused-for 7d): \
         it removes entries neither stored nor restored for that long (and, with \
         --max-size, least recently used ones until the rest fits), then the packs and \
         blobs no entry references. See README (\"Shared cache on S3\")."
    )
}

/// `gc` of an object store: by last use, within `timeout` over all of it. Exit 3 when
/// it stopped early (a listing or read cut short: entries may have gone, but no pack or
/// blob was deleted) or could not sweep (entries of a newer format).
fn object_gc(
    url: &url::Url,
    shown: &str,
    args: &GcArgs,
    unused_for: std::time::Duration,
) -> Result<u8, Failure> {
    let timeout = args.timeout.cache_timeout;
    let options = backend::s3_options(cache_core::Deadlines::new(timeout));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Fatal(format!("cannot start the async runtime: {e}")))?;
    let mut gc = cache_s3::GcOptions::new(unused_for, cache_s3::ListLimits::new(timeout))
        .with_grace(args.grace);
    if let Some(max) = args.max_size {
        gc = gc.with_max_size(max);
    }
    let (report, endpoint) = rt
        .block_on(async {
            let storage = cache_s3::S3Storage::open(url, options)?;
            let report = storage.gc(gc).await?;
            Ok::<_, cache_core::BackendError>((report, storage.endpoint().to_owned()))
        })
        .map_err(|e| Failure::Fatal(format!("gc of the cache at {shown} failed: {e}")))?;
    print(&format!(
        "removed {} entries ({} unused for {}, {} for the size), {} packs, {} blobs and {} \
         use markers; kept {} entries; {} -> {}\n",
        report.entries_removed(),
        report.entries_removed_unused,
        crate::size::format_duration(unused_for),
        report.entries_removed_for_size,
        report.packs_removed,
        report.blobs_removed,
        report.markers_removed,
        report.entries_kept,
        format_size(report.bytes_before),
        format_size(report.bytes_after),
    ))?;
    if report.kept_young > 0 {
        print(&format!(
            "kept {} unreferenced objects written or claimed for reuse in the last {}s: a \
             store running now may need them (--grace)\n",
            report.kept_young,
            args.grace.as_secs()
        ))?;
    }
    if report.entries_unreadable > 0 {
        tracing::warn!(
            "{} entries in {shown} could not be read (corrupt): kept; a lookup removes them",
            report.entries_unreadable
        );
    }
    if let Some(why) = report.stopped {
        tracing::warn!(
            "gc of {shown} at {endpoint} stopped early: {why}; no pack or blob was deleted. \
             A large bucket may need a longer --cache-timeout"
        );
        print(&format!(
            "partial: stopped early ({why}); nothing was swept\n"
        ))?;
        return Ok(3);
    }
    if !report.swept {
        tracing::warn!(
            "{} entries in {shown} are of a newer format: no pack or blob was deleted \
             (upgrade taskcache)",
            report.entries_newer
        );
        print("partial: nothing was swept\n")?;
        return Ok(3);
    }
    Ok(0)
}

/// `stats` of an object store: by listing, within `timeout` over the whole listing
/// (and each request within it). A listing that stops early (the deadline, the page
/// limit, a server repeating itself) still prints what it counted, says so on stderr
/// and in the output, and exits 3: the counts are partial.
fn object_stats(
    url: &url::Url,
    shown: &str,
    json: bool,
    timeout: std::time::Duration,
) -> Result<u8, Failure> {
    let options = backend::s3_options(cache_core::Deadlines::new(timeout));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Fatal(format!("cannot start the async runtime: {e}")))?;
    let (stats, endpoint) = rt
        .block_on(async {
            let storage = cache_s3::S3Storage::open(url, options)?;
            let stats = storage.stats(cache_s3::ListLimits::new(timeout)).await?;
            Ok::<_, cache_core::BackendError>((stats, storage.endpoint().to_owned()))
        })
        .map_err(|e| Failure::Fatal(format!("cannot read the cache at {shown}: {e}")))?;
    let bytes = stats.bytes();
    let progress = format!(
        "listed {} objects in {} pages",
        stats.objects(),
        stats.pages
    );
    if let Some(why) = stats.stopped {
        tracing::warn!(
            "the listing of {shown} at {endpoint} stopped early: {why}; {progress}, so the \
             counts are partial (at least this many). A large bucket may need a longer \
             --cache-timeout"
        );
    }
    if json {
        let value = serde_json::json!({
            "cache": shown,
            "entries": stats.entries,
            "blobs": stats.blobs,
            "bytes": bytes,
            "entry_bytes": stats.entry_bytes,
            "blob_bytes": stats.blob_bytes,
            "packs": stats.packs,
            "pack_bytes": stats.pack_bytes,
            "pages": stats.pages,
            "complete": stats.is_complete(),
            "stopped": stats.stopped.map(|why| why.to_string()),
        });
        print(&format!("{value}\n"))?;
    } else {
        let partial = match stats.stopped {
            Some(why) => format!("partial: {progress}, then {why}\n"),
            None => String::new(),
        };
        print(&format!(
            "cache:   {shown}\nentries: {}\nblobs:   {}\npacks:   {}\nsize:    {} ({bytes} bytes)\n{partial}",
            stats.entries,
            stats.blobs,
            stats.packs,
            format_size(bytes),
        ))?;
    }
    Ok(if stats.is_complete() { 0 } else { 3 })
}

/// `taskcache stats [--json]`.
pub fn stats(args: &StatsArgs) -> Result<u8, Failure> {
    if let Some((url, shown)) = object_store(&args.cache)? {
        return object_stats(&url, &shown, args.json, args.timeout.cache_timeout);
    }
    let (rt, storage, dir) = open(&args.cache)?;
    let stats = rt
        .block_on(storage.stats())
        .map_err(|e| Failure::Fatal(format!("cannot read the cache at {}: {e}", dir.display())))?;
    if args.json {
        let mut value = serde_json::to_value(&stats)
            .map_err(|e| Failure::Fatal(format!("cannot encode the stats: {e}")))?;
        if let Some(map) = value.as_object_mut() {
            map.insert(
                "dir".into(),
                serde_json::Value::String(dir.display().to_string()),
            );
        }
        print(&format!("{value}\n"))?;
    } else {
        print(&format!(
            "cache:   {}\nentries: {}\nblobs:   {}\nsize:    {} ({} bytes)\nhits:    {}\nmisses:  {}\n",
            dir.display(),
            stats.entries,
            stats.blobs,
            format_size(stats.bytes),
            stats.bytes,
            stats.hits,
            stats.misses
        ))?;
    }
    Ok(0)
}

/// `taskcache gc --max-size SIZE`, or on an object store `--unused-for DURATION`.
pub fn gc(args: &GcArgs) -> Result<u8, Failure> {
    if let Some((url, shown)) = object_store(&args.cache)? {
        let Some(unused_for) = args.unused_for else {
            return Err(Failure::Usage(unused_for_needed(&shown)));
        };
        return object_gc(&url, &shown, args, unused_for);
    }
    if args.unused_for.is_some() {
        return Err(Failure::Usage(
            "--unused-for is for an object store (s3://, gs://, az://); a local cache \
             evicts least recently used entries with --max-size SIZE"
                .into(),
        ));
    }
    let Some(max_size) = args.max_size else {
        return Err(Failure::Usage(
            "gc needs --max-size SIZE for a local cache (e.g. --max-size 10GiB): it evicts \
             least recently used entries until the cache is under it"
                .into(),
        ));
    };
    let (rt, storage, dir) = open(&args.cache)?;
    let opts = cache_local::GcOptions {
        blob_grace: args.grace,
        ..cache_local::GcOptions::default()
    };
    let report = rt
        .block_on(storage.gc_with(max_size, opts))
        .map_err(|e| Failure::Fatal(format!("gc of the cache at {} failed: {e}", dir.display())))?;
    print(&format!(
        "removed {} entries and {} blobs; {} -> {} (limit {})\n",
        report.entries_removed,
        report.blobs_removed,
        format_size(report.bytes_before),
        format_size(report.bytes_after),
        format_size(max_size)
    ))?;
    if report.blobs_kept_young > 0 {
        print(&format!(
            "kept {} blobs ({}) written or used in the last {}s: a store running now may \
             need them (--grace; 0 when no other writer can be running)\n",
            report.blobs_kept_young,
            format_size(report.bytes_kept_young),
            args.grace.as_secs()
        ))?;
    }
    if report.foreign_removed > 0 {
        print(&format!(
            "removed {} symlinks or special files planted in the cache directory (never followed)\n",
            report.foreign_removed
        ))?;
    }
    Ok(0)
}

/// `taskcache verify`. Exits 1 when it found (and removed) corrupt data, like `fsck`,
/// so that a script notices; the cache is consistent again afterwards either way. A
/// cache it could not check at all is exit 3, so 1 always means "repaired".
pub fn verify(args: &CacheArgs) -> Result<u8, Failure> {
    if let Some((_, shown)) = object_store(args)? {
        return Err(Failure::Usage(format!(
            "verify runs on a local cache directory only; on an object store ({shown}) every \
             byte read is verified against its digest, and a corrupt object is removed when \
             it is found"
        )));
    }
    // Exit 1 says "damage was removed": a cache that could not be checked at all is 3.
    let unchecked = |f: Failure| match f {
        Failure::Fatal(msg) => Failure::Unchecked(format!("{msg}; nothing was checked or removed")),
        other => other,
    };
    let (rt, storage, dir) = open(args).map_err(unchecked)?;
    let report = rt.block_on(storage.verify()).map_err(|e| {
        Failure::Unchecked(format!(
            "verify of the cache at {} failed: {e}",
            dir.display()
        ))
    })?;
    print(&format!(
        "checked {} blobs and {} entries; removed {} corrupt blobs, {} corrupt entries, \
         {} entries whose blobs were gone and {} planted symlinks or special files\n",
        report.blobs_checked,
        report.entries_checked,
        report.blobs_removed,
        report.entries_removed,
        report.entries_incomplete_removed,
        report.foreign_removed
    ))?;
    Ok(u8::from(
        report.blobs_removed
            + report.entries_removed
            + report.entries_incomplete_removed
            + report.foreign_removed
            > 0,
    ))
}

/// `taskcache keygen`: a new Ed25519 key pair, as the two variables to set. The
/// secret goes to stdout only (to pipe into a CI secret store), never to a log.
pub fn keygen() -> Result<u8, Failure> {
    let key = cache_core::sign::SigningKey::generate()
        .map_err(|e| Failure::Fatal(format!("cannot make a key: {e}")))?;
    print(&format!(
        "{}={}\n{}={}\n",
        crate::backend::SIGNING_KEY_VAR,
        key.expose_secret(),
        crate::backend::TRUSTED_KEYS_VAR,
        key.public_key()
    ))?;
    Ok(0)
}
