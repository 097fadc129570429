//! Mutation proof: deliberately broken variants of the reference backend must fail
//! specific, named conformance cases, and pass all the others.
//!
//! Each test runs every deterministic case against one mutant (each case in its own
//! tokio task, so its panic is caught as a `JoinError`) and compares the set of
//! failing cases with the expected one. Left out, because whether they catch a mutant
//! depends on timing or on random sequences: `concurrent_stores_and_readers` and
//! `model_state_machine`; and `round_trip_256mib_file_from_disk` and
//! `concurrent_transfers_stay_within_memory_bound`, for time.

use async_trait::async_trait;
use cache_core::storage::{ActionRecord, BlobSource, EntryKey, OutputRecord, Storage, StoredEntry};
use cache_core::{
    BackendError, BackendResult, BlobRef, CacheBackend, CacheEntry, CacheOutput, CachePolicy,
    Digest, Hit, LogBytes, OutputContent, Task, policy_allows_read,
};
use cache_testkit::fixtures::ENTRY_HEADER;
use cache_testkit::{Harness, MemoryBackend, MemoryStorage, cases};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// Cases not run against mutants (see the module docs).
const NOT_RUN: &[&str] = &[
    "concurrent_stores_and_readers",
    "model_state_machine",
    "round_trip_256mib_file_from_disk",
    "concurrent_transfers_stay_within_memory_bound",
];

/// Runs every deterministic case against a fresh harness from `make`; returns the
/// names of the cases that failed, with their messages.
fn failing_cases(make: fn() -> Harness) -> BTreeMap<&'static str, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut failed = BTreeMap::new();
    for case in cases::ALL.iter().filter(|c| !NOT_RUN.contains(&c.name)) {
        let outcome = rt.block_on(rt.spawn((case.run)(make())));
        if let Err(e) = outcome {
            assert!(e.is_panic(), "{}: the case was cancelled", case.name);
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failed.insert(case.name, msg);
        }
    }
    failed
}

#[track_caller]
fn assert_fails_exactly(make: fn() -> Harness, expected: &[&str]) {
    let failed = failing_cases(make);
    let got: BTreeSet<&str> = failed.keys().copied().collect();
    let want: BTreeSet<&str> = expected.iter().copied().collect();
    for name in &want {
        assert!(
            cases::by_name(name).is_some(),
            "{name} is not a case; fix the expectation"
        );
    }
    let details: Vec<String> = failed
        .iter()
        .map(|(n, m)| format!("{n}: {}", m.lines().next().unwrap_or("")))
        .collect();
    assert_eq!(
        got,
        want,
        "the mutant failed a different set of cases than expected:\n  {}",
        details.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------
// Storage-level mutants: a MemoryStorage with one behaviour broken.
//
// Mutants that the v1 table had and v2 cannot express: a storage that skips the digest
// check, ignores the exec bit, or writes the workspace itself (`fs::write`). A storage
// is never told where the workspace is and only hands `Cache` bytes, which `Cache`
// verifies and places; the compile-fail doctests in `cache_testkit`'s crate docs show
// that such a storage, and a wrapper that drops a method, do not compile.

#[derive(Debug, Clone, Copy)]
enum Break {
    /// Serves every non-empty blob with one byte flipped (a lying storage).
    ServesWrongBytes,
    /// Returns the refs of a store's blobs in reverse order (a storage whose digests
    /// cannot be trusted): entries then name the wrong content for each file.
    ReversesRefs,
    /// Keeps a blob that failed verification (ignores `remove_blob`).
    KeepCorruptBlob,
    /// Reports every blob present, so entries with evicted blobs read as hits.
    EvictionBlind,
    /// Never replaces an existing entry: the first write wins.
    FirstWriteWins,
    /// Reads the sources of a store on a blocking job it does not bind to the call
    /// (`spawn_blocking` without `cancel::bind`): a dropped store reads on for nobody.
    UnboundJobs,
}

#[derive(Debug)]
struct Broken {
    inner: MemoryStorage,
    fault: Break,
}

#[async_trait]
impl Storage for Broken {
    fn name(&self) -> &'static str {
        "broken-memory"
    }

    async fn get_entry(&self, key: &EntryKey) -> BackendResult<Option<StoredEntry>> {
        self.inner.get_entry(key).await
    }

    async fn put_entry(&self, key: &EntryKey, record: Arc<ActionRecord>) -> BackendResult<()> {
        if let Break::FirstWriteWins = self.fault {
            if self.inner.get_entry(key).await?.is_some() {
                return Ok(());
            }
        }
        self.inner.put_entry(key, record).await
    }

    async fn remove_entry(&self, key: &EntryKey) -> BackendResult<()> {
        self.inner.remove_entry(key).await
    }

    async fn find_missing_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<BlobRef>> {
        if let Break::EvictionBlind = self.fault {
            return Ok(Vec::new());
        }
        self.inner.find_missing_blobs(blobs).await
    }

    async fn put_blobs(
        &self,
        sources: Vec<BlobSource>,
        a: Option<cache_core::DigestAlgorithm>,
    ) -> BackendResult<Vec<BlobRef>> {
        let sources = if let Break::UnboundJobs = self.fault {
            let read = tokio::task::spawn_blocking(move || {
                sources
                    .into_iter()
                    .map(|s| {
                        let mut bytes = Vec::new();
                        std::io::Read::read_to_end(&mut s.into_reader()?, &mut bytes)
                            .map_err(BackendError::Io)?;
                        Ok(BlobSource::Bytes(bytes.into()))
                    })
                    .collect::<BackendResult<Vec<_>>>()
            });
            read.await.expect("the read job ran")?
        } else {
            sources
        };
        let mut refs = self.inner.put_blobs(sources, a).await?;
        if let Break::ReversesRefs = self.fault {
            refs.reverse();
        }
        Ok(refs)
    }

    async fn open_blobs(&self, blobs: Vec<BlobRef>) -> BackendResult<Vec<Option<BlobSource>>> {
        let opened = self.inner.open_blobs(blobs).await?;
        if !matches!(self.fault, Break::ServesWrongBytes) {
            return Ok(opened);
        }
        Ok(opened
            .into_iter()
            .map(|s| match s {
                Some(BlobSource::Bytes(b)) if !b.is_empty() => {
                    let mut v = b.to_vec();
                    v[0] ^= 1;
                    Some(BlobSource::Bytes(v.into()))
                }
                other => other,
            })
            .collect())
    }

    async fn remove_blob(&self, blob: &BlobRef) -> BackendResult<()> {
        if let Break::KeepCorruptBlob = self.fault {
            return Ok(());
        }
        self.inner.remove_blob(blob).await
    }

    async fn touch(&self, key: &EntryKey) -> BackendResult<()> {
        self.inner.touch(key).await
    }

    async fn health_check(&self) -> BackendResult<()> {
        self.inner.health_check().await
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, executable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _executable: bool) -> std::io::Result<()> {
    Ok(())
}

fn broken_storage(fault: Break) -> Harness {
    let inner = MemoryStorage::new();
    let tamper = Arc::new(inner.clone());
    Harness::from_storage(Broken { inner, fault }, tamper)
}

// ---------------------------------------------------------------------------------
// Backend-level mutants: MemoryBackend behind a wrapper that breaks one thing.

#[derive(Debug, Clone, Copy)]
enum Wrong {
    /// After a restore, puts back the modes files had before: the exec bit of a
    /// replaced file is neither set nor cleared.
    KeepExistingMode,
    /// `check` and `store` ignore the policy (always `Normal`).
    PolicyBlind,
    /// `Writeonly`/`Disabled` lookups answer "miss" correctly, but only after looking.
    LooksBeforeMissing,
    /// Logs are returned as lossy UTF-8.
    LossyLogs,
    /// Restores by decoding the entry itself, unvalidated, and writing with `std::fs`:
    /// `..`, absolute paths and symlinks are followed wherever they lead (the bytes
    /// are still verified).
    NaiveRestore,
    /// Stores whatever it is given, as for a task that declares no outputs: an entry
    /// with outputs the task does not declare, which its lookups then refuse forever.
    StoresUndeclared,
}

struct Wrapped {
    inner: MemoryBackend,
    fault: Wrong,
}

fn modes(root: &Path) -> BTreeMap<std::path::PathBuf, std::fs::Permissions> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                out.insert(e.path(), meta.permissions());
            }
        }
    }
    out
}

impl Wrapped {
    async fn naive_restore(&self, digest: &str, ws: &Path) -> BackendResult<Vec<CacheOutput>> {
        let key = Digest::parse(digest)?;
        let storage = self.inner.storage();
        let bytes = storage
            .raw_entry(&key)
            .ok_or(BackendError::ActionNotFound { digest: key })?;
        let corrupt = |reason: String| BackendError::CorruptEntry { key, reason };
        let payload = bytes
            .get(ENTRY_HEADER..)
            .ok_or_else(|| corrupt("short".into()))?;
        let record: ActionRecord =
            postcard::from_bytes(payload).map_err(|e| corrupt(e.to_string()))?;
        let mut restored = Vec::new();
        for out in &record.outputs {
            let path = ws.join(out.path());
            let io = |e| BackendError::io_with_context("naive restore", &path, e);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            match out {
                OutputRecord::Directory { path: rel } => {
                    std::fs::create_dir_all(&path).map_err(io)?;
                    restored.push(CacheOutput::directory(rel));
                }
                OutputRecord::File {
                    path: rel,
                    blob,
                    executable,
                } => {
                    let Some(Some(BlobSource::Bytes(bytes))) =
                        storage.open_blobs(vec![*blob]).await?.pop()
                    else {
                        return Err(BackendError::BlobNotFound { digest: *blob });
                    };
                    if BlobRef::of(blob.digest.algorithm(), &bytes) != *blob {
                        return Err(BackendError::DigestMismatch {
                            expected: *blob,
                            actual: BlobRef::of(blob.digest.algorithm(), &bytes),
                        });
                    }
                    let io = |e| BackendError::io_with_context("naive restore", &path, e);
                    std::fs::write(&path, &bytes).map_err(io)?;
                    set_mode(&path, *executable).map_err(io)?;
                    restored.push(CacheOutput {
                        path: rel.clone(),
                        content: OutputContent::File {
                            path: path.clone(),
                            blob: Some(*blob),
                            size: Some(blob.size),
                        },
                        is_executable: *executable,
                    });
                }
                OutputRecord::Symlink { path: rel, target } => {
                    let _ = std::fs::remove_file(&path);
                    #[cfg(unix)]
                    std::os::unix::fs::symlink(target, &path).map_err(io)?;
                    restored.push(CacheOutput::symlink(rel, target));
                }
            }
        }
        Ok(restored)
    }
}

#[async_trait]
impl CacheBackend for Wrapped {
    async fn lookup(
        &self,
        task: &Task,
        key: &Digest,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        match self.fault {
            Wrong::PolicyBlind => self.inner.lookup(task, key, CachePolicy::Normal).await,
            Wrong::LooksBeforeMissing if !policy_allows_read(policy) => {
                self.inner.lookup(task, key, CachePolicy::Normal).await?;
                Ok(None)
            }
            _ => self.inner.lookup(task, key, policy).await,
        }
    }

    async fn import(
        &self,
        task: &Task,
        hit: &Hit,
        policy: CachePolicy,
    ) -> BackendResult<Option<Hit>> {
        self.inner.import(task, hit, policy).await
    }

    async fn store(
        &self,
        task: &Task,
        digest: &str,
        entry: &CacheEntry,
        policy: CachePolicy,
    ) -> BackendResult<()> {
        let policy = match self.fault {
            Wrong::PolicyBlind => CachePolicy::Normal,
            _ => policy,
        };
        if let Wrong::StoresUndeclared = self.fault {
            let mut bare = task.clone();
            bare.outputs.clear();
            return self.inner.store(&bare, digest, entry, policy).await;
        }
        self.inner.store(task, digest, entry, policy).await
    }

    async fn restore_outputs(
        &self,
        task: &Task,
        digest: &str,
        workspace: &Path,
    ) -> BackendResult<Vec<CacheOutput>> {
        match self.fault {
            Wrong::KeepExistingMode => {
                let before = modes(workspace);
                let restored = self.inner.restore_outputs(task, digest, workspace).await?;
                for (path, mode) in before {
                    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                        std::fs::set_permissions(&path, mode)
                            .map_err(|e| BackendError::io_with_context("chmod", &path, e))?;
                    }
                }
                Ok(restored)
            }
            Wrong::NaiveRestore => self.naive_restore(digest, workspace).await,
            _ => self.inner.restore_outputs(task, digest, workspace).await,
        }
    }

    async fn get_log_bytes(&self, task: &Task, digest: &str) -> BackendResult<LogBytes> {
        let (out, err) = self.inner.get_log_bytes(task, digest).await?;
        if let Wrong::LossyLogs = self.fault {
            let lossy = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned().into_bytes();
            return Ok((out.map(lossy), err.map(lossy)));
        }
        Ok((out, err))
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn health_check(&self) -> BackendResult<()> {
        self.inner.health_check().await
    }
}

fn wrapped(fault: Wrong) -> Harness {
    let inner = MemoryBackend::new();
    let tamper = Arc::new(inner.storage().clone());
    let io = inner.io().clone();
    let brake = inner.brake().clone();
    let mut h = Harness::new(Arc::new(Wrapped { inner, fault }), tamper, io);
    h.brake = Some(brake);
    h
}

// ---------------------------------------------------------------------------------
// The table: mutant -> the cases it must fail (and it must pass all others).

#[test]
fn reference_backend_fails_nothing() {
    assert_fails_exactly(|| MemoryBackend::new().harness(), &[]);
}

/// `Cache` verifies every byte a storage serves: every case that restores or reads a
/// non-empty blob fails (with `DigestMismatch`), and none sees a wrong byte.
#[test]
fn mutant_serves_wrong_bytes() {
    assert_fails_exactly(
        || broken_storage(Break::ServesWrongBytes),
        &[
            "cancel_import_dropped_midway",
            "cancel_logs_dropped_midway",
            "cancel_restore_dropped_midway",
            "cancel_restore_timed_out_keeps_callers_outputs",
            "cancel_store_dropped_midway",
            "degradation_backend_as_shared_tier",
            "degradation_tiered_with_failing_shared_tier",
            "hostile_absolute_paths",
            "hostile_deleted_blob",
            "hostile_deleted_log_blob",
            "hostile_existing_symlink_to_outside",
            "hostile_flipped_big_blob_leaves_no_temp_file",
            "hostile_flipped_blob_byte",
            "hostile_flipped_blob_is_repaired_by_next_store",
            "hostile_flipped_blob_readonly_deletes_nothing",
            "hostile_flipped_log_blob",
            "hostile_huge_declared_blob_size",
            "hostile_huge_declared_log",
            "hostile_parent_dir_paths",
            "hostile_unsigned_and_forged_entries",
            "hostile_symlink_targets_leaving_workspace",
            "keys_algorithms_are_distinct",
            "keys_dedup_is_invisible",
            "keys_overwrite_last_write_wins",
            "policy_disabled",
            "policy_normal",
            "policy_readonly",
            "policy_writeonly",
            "restore_into_fresh_workspace",
            "restore_into_non_empty_workspace",
            "restore_over_matching_files",
            "restore_replaces_file_symlink_without_following",
            "restore_sets_and_clears_exec_bit",
            "restore_twice_is_idempotent",
            "round_trip_1000_small_files",
            "round_trip_every_output_kind",
            "round_trip_log_order",
            "round_trip_logs_8mib",
            "round_trip_logs_multiline_and_binary",
            "round_trip_returned_outputs",
        ],
    );
}

/// A storage whose refs cannot be trusted makes entries name the wrong content: the
/// round trips see it (the bytes are "verified", against the wrong digest).
#[test]
fn mutant_reverses_refs() {
    assert_fails_exactly(
        || broken_storage(Break::ReversesRefs),
        &[
            "cancel_import_dropped_midway",
            "cancel_restore_dropped_midway",
            "cancel_restore_timed_out_keeps_callers_outputs",
            "cancel_store_dropped_midway",
            "degradation_backend_as_shared_tier",
            "degradation_tiered_with_failing_shared_tier",
            "hostile_flipped_blob_is_repaired_by_next_store",
            "hostile_flipped_blob_readonly_deletes_nothing",
            "keys_dedup_is_invisible",
            "restore_into_fresh_workspace",
            "restore_into_non_empty_workspace",
            "restore_over_matching_files",
            "restore_replaces_file_symlink_without_following",
            "restore_sets_and_clears_exec_bit",
            "restore_twice_is_idempotent",
            "round_trip_1000_small_files",
            "round_trip_every_output_kind",
            "round_trip_logs_8mib",
            "round_trip_logs_multiline_and_binary",
            "round_trip_returned_outputs",
        ],
    );
}

#[test]
fn mutant_keep_corrupt_blob() {
    assert_fails_exactly(
        || broken_storage(Break::KeepCorruptBlob),
        &[
            "hostile_flipped_blob_is_repaired_by_next_store",
            "hostile_flipped_blob_readonly_deletes_nothing",
        ],
    );
}

#[test]
fn mutant_eviction_blind() {
    assert_fails_exactly(
        || broken_storage(Break::EvictionBlind),
        &[
            "hostile_deleted_blob",
            "hostile_deleted_log_blob",
            // Nothing seems missing, so nothing is copied: the import publishes at
            // once, an entry whose blobs this storage does not have.
            "cancel_import_dropped_midway",
            // After the corrupt blobs are dropped, the entry must read as a miss.
            "hostile_flipped_blob_is_repaired_by_next_store",
            "hostile_flipped_blob_readonly_deletes_nothing",
        ],
    );
}

#[test]
fn mutant_first_write_wins() {
    assert_fails_exactly(
        || broken_storage(Break::FirstWriteWins),
        &[
            "keys_overwrite_last_write_wins",
            "keys_dedup_is_invisible",
            "policy_normal",
            "policy_writeonly",
        ],
    );
}

/// A storage whose blocking jobs ignore the cancel signal: a dropped store or import
/// goes on reading the outputs for nobody.
#[test]
fn mutant_unbound_jobs() {
    assert_fails_exactly(
        || broken_storage(Break::UnboundJobs),
        &[
            "cancel_import_dropped_midway",
            "cancel_store_dropped_midway",
        ],
    );
}

#[test]
fn mutant_keep_existing_mode() {
    assert_fails_exactly(
        || wrapped(Wrong::KeepExistingMode),
        &[
            "restore_over_matching_files",
            "restore_sets_and_clears_exec_bit",
            "restore_into_non_empty_workspace",
        ],
    );
}

#[test]
fn mutant_policy_blind() {
    assert_fails_exactly(
        || wrapped(Wrong::PolicyBlind),
        &[
            "policy_readonly",
            "policy_writeonly",
            "policy_disabled",
            // A read-only lookup that looks like a normal one removes what it cannot verify.
            "hostile_flipped_blob_readonly_deletes_nothing",
        ],
    );
}

#[test]
fn mutant_looks_before_missing() {
    assert_fails_exactly(
        || wrapped(Wrong::LooksBeforeMissing),
        &["policy_writeonly", "policy_disabled"],
    );
}

#[test]
fn mutant_lossy_logs() {
    assert_fails_exactly(
        || wrapped(Wrong::LossyLogs),
        &[
            "round_trip_logs_multiline_and_binary",
            "round_trip_logs_8mib",
            "hostile_flipped_blob_is_repaired_by_next_store",
        ],
    );
}

#[test]
fn mutant_naive_restore() {
    assert_fails_exactly(
        || wrapped(Wrong::NaiveRestore),
        &[
            "hostile_parent_dir_paths",
            "hostile_absolute_paths",
            "hostile_symlink_targets_leaving_workspace",
            "hostile_symlink_chains_leaving_workspace",
            "hostile_existing_symlink_to_outside",
            "hostile_garbage_entries",
            // It decodes what it finds, whatever the version, and writes every path.
            "hostile_newer_format_entry_is_left_in_place",
            "hostile_undeclared_outputs",
            "hostile_oversized_entry",
            "restore_over_matching_files",
            "restore_replaces_file_symlink_without_following",
        ],
    );
}

#[test]
fn mutant_stores_undeclared() {
    assert_fails_exactly(
        || wrapped(Wrong::StoresUndeclared),
        &["store_refuses_undeclared_outputs"],
    );
}
