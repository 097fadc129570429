//! `taskcache stats`, `gc` and `verify`: housekeeping of the local cache.

use crate::Failure;
use crate::backend;
use crate::cli::{CacheArgs, GcArgs, StatsArgs};
use crate::location::RawLocation;
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

/// `taskcache stats [--json]`.
pub fn stats(args: &StatsArgs) -> Result<u8, Failure> {
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

/// `taskcache gc --max-size SIZE`.
pub fn gc(args: &GcArgs) -> Result<u8, Failure> {
    let (rt, storage, dir) = open(&args.cache)?;
    let opts = cache_local::GcOptions {
        blob_grace: args.grace,
        ..cache_local::GcOptions::default()
    };
    let report = rt
        .block_on(storage.gc_with(args.max_size, opts))
        .map_err(|e| Failure::Fatal(format!("gc of the cache at {} failed: {e}", dir.display())))?;
    print(&format!(
        "removed {} entries and {} blobs; {} -> {} (limit {})\n",
        report.entries_removed,
        report.blobs_removed,
        format_size(report.bytes_before),
        format_size(report.bytes_after),
        format_size(args.max_size)
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
/// so that a script notices; the cache is consistent again afterwards either way.
pub fn verify(args: &CacheArgs) -> Result<u8, Failure> {
    let (rt, storage, dir) = open(args)?;
    let report = rt.block_on(storage.verify()).map_err(|e| {
        Failure::Fatal(format!(
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
