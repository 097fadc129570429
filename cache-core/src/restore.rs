//! One entry's outputs on their way into a workspace, in the one order that is safe.
//!
//! [`crate::Cache`] hands a [`Storage`] a [`Restore`]; the types fix the order of the
//! steps around the files: [`Restore::prepare`] (check every output against the
//! workspace, create directories, find files already in place) gives a [`Prepared`]
//! whose [`Prepared::take_files`] are the files the storage writes, and only
//! [`Prepared::finish`] (symlinks, last) yields the [`Restored`] a storage must return.
//! Writing every file taken, between the two, is the storage's contract (the
//! `cache-testkit` suite checks it; the types cannot).
//! [`restore_in_steps`] is the sequence for any storage; a storage whose blocking work
//! is cheap can run the same three steps in one blocking job instead.

use crate::record::OutputRecord;
use crate::storage::run_blocking_value;
use crate::{BackendResult, BlobRef, Digest, FileRestore, RelPath, Storage, Workspace};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The outputs of one entry, validated, to be restored under a workspace root.
#[derive(Debug)]
pub struct Restore {
    root: PathBuf,
    outputs: Vec<(RelPath, OutputRecord)>,
}

impl Restore {
    /// A restore of `outputs` (from a decoded [`crate::ActionRecord`]) under `root`.
    pub(crate) fn new(root: PathBuf, outputs: &[OutputRecord]) -> BackendResult<Self> {
        let outputs = outputs
            .iter()
            .map(|o| Ok((RelPath::parse(o.path())?, o.clone())))
            .collect::<BackendResult<_>>()?;
        Ok(Restore { root, outputs })
    }

    /// How many files the entry has (before any is found in place).
    #[must_use]
    pub fn file_count(&self) -> usize {
        self.files().count()
    }

    /// Total bytes of the entry's files (before any is found in place).
    #[must_use]
    pub fn file_bytes(&self) -> u64 {
        self.files().map(|(_, b, _)| b.size).sum()
    }

    fn files(&self) -> impl Iterator<Item = (&RelPath, BlobRef, bool)> {
        self.outputs.iter().filter_map(|(rel, o)| match o {
            OutputRecord::File {
                blob, executable, ..
            } => Some((rel, *blob, *executable)),
            _ => None,
        })
    }

    /// Step 1 (blocking): opens the workspace, checks every output against what is on
    /// disk before writing anything (a refused layout writes nothing), creates the
    /// directories, and leaves out files already in place with the right bytes and
    /// mode ([`Workspace::in_place`]).
    pub fn prepare(self) -> BackendResult<Prepared> {
        let ws = Arc::new(Workspace::open(&self.root)?);
        for (rel, o) in &self.outputs {
            ws.check(rel, matches!(o, OutputRecord::Directory { .. }))?;
        }
        let mut files = Vec::new();
        let mut links = Vec::new();
        for (rel, o) in self.outputs {
            match o {
                OutputRecord::Directory { .. } => drop(ws.create_dir(&rel)?),
                OutputRecord::File {
                    blob, executable, ..
                } => {
                    if !ws.in_place(&rel, blob, executable) {
                        files.push(FileRestore {
                            blob,
                            workspace: Arc::clone(&ws),
                            path: rel,
                            executable,
                        });
                    }
                }
                OutputRecord::Symlink { target, .. } => links.push((rel, target)),
            }
        }
        Ok(Prepared { ws, files, links })
    }
}

/// A restore whose workspace is checked and whose directories exist.
#[derive(Debug)]
pub struct Prepared {
    ws: Arc<Workspace>,
    files: Vec<FileRestore>,
    links: Vec<(RelPath, String)>,
}

impl Prepared {
    /// Step 2: the files to write (each through [`FileRestore::write_from`],
    /// [`FileRestore::copy_from_file`] or [`FileRestore::begin`]). Taking them leaves
    /// none behind.
    pub fn take_files(&mut self) -> Vec<FileRestore> {
        std::mem::take(&mut self.files)
    }

    /// Whether [`Prepared::finish`] touches the filesystem (it has symlinks to make).
    #[must_use]
    pub fn finish_blocks(&self) -> bool {
        !self.links.is_empty()
    }

    /// Step 3 (blocking when [`Prepared::finish_blocks`]): makes the symlinks, last, so
    /// none exists before the files it may point to.
    pub fn finish(self) -> BackendResult<Restored> {
        for (rel, target) in &self.links {
            self.ws.create_symlink(rel, target)?;
        }
        Ok(Restored {
            root: self.ws.root().to_path_buf(),
        })
    }
}

/// Proof that a restore ran to its end; carries the canonical workspace root.
#[derive(Debug)]
pub struct Restored {
    root: PathBuf,
}

impl Restored {
    /// The canonical workspace root the outputs were restored under.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The three steps for any storage: prepare and finish on its blocking pool, the files
/// through [`Storage::restore_files`], then [`Storage::touch`] for recency (a failure
/// there is logged, not returned: the outputs are in place).
pub async fn restore_in_steps<S: Storage + ?Sized>(
    storage: &S,
    key: &Digest,
    restore: Restore,
) -> BackendResult<Restored> {
    let mut prepared = run_blocking_value(storage, move || restore.prepare()).await?;
    let files = prepared.take_files();
    if !files.is_empty() {
        storage.restore_files(files).await?;
    }
    let restored = if prepared.finish_blocks() {
        run_blocking_value(storage, move || prepared.finish()).await?
    } else {
        prepared.finish()?
    };
    if let Err(e) = storage.touch(key).await {
        tracing::debug!(backend = storage.name(), %key, error = %e, "could not record recency");
    }
    Ok(restored)
}
