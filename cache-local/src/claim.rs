//! Whether a directory is a cache this code may use, and what its `LAYOUT` file says.
//!
//! A cache must never take over someone else's directory (it would write its layout
//! there, and maintenance would clean its `tmp/`), so a directory is used only when it
//! is new or empty, carries a `LAYOUT` of this version, or is unmistakably a cache of
//! this code whose `LAYOUT` was lost or damaged ([`recognisable`]): then `LAYOUT` is
//! written again, with a warning, rather than leaving the cache unusable for ever.

use cache_core::{BackendError, BackendResult, DigestAlgorithm};
use std::io;
use std::path::Path;

/// Name of the layout version file.
pub const LAYOUT_FILE: &str = "LAYOUT";
/// The layout this code reads and writes.
pub const LAYOUT_VERSION: u32 = 1;
pub(crate) const LAYOUT_MAGIC: &str = "taskcache-local-layout";
/// Prefix of the statistics logs claimed for compaction in `tmp/`.
pub(crate) const STATS_TEMP_PREFIX: &str = "stats-log-";

/// Whether `dir` may be opened as a cache: one with a `LAYOUT` file is; so is one
/// that is recognisably a cache of this code whose `LAYOUT` is gone ([`recognisable`]);
/// with `create`, so is a directory that does not exist yet (it is created), is empty,
/// or holds an unfinished layout of this code ([`unfinished`]). Anything else is
/// someone else's directory.
pub(crate) fn claim(dir: &Path, create: bool) -> BackendResult<()> {
    let refuse = |reason: &str| {
        BackendError::io_with_context(
            "use as a cache",
            dir,
            io::Error::new(io::ErrorKind::InvalidInput, reason.to_owned()),
        )
    };
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !create {
                return Err(refuse(
                    "there is no cache there (a cached run creates one; check --cache)",
                ));
            }
            std::fs::create_dir_all(dir)
                .map_err(|e| BackendError::io_with_context("create cache directory", dir, e))
        }
        Err(e) => Err(BackendError::io_with_context("inspect", dir, e)),
        Ok(m) if !m.is_dir() => Err(refuse("it is not a directory")),
        Ok(_) => {
            if has_layout_file(dir) {
                return Ok(());
            }
            let empty = std::fs::read_dir(dir)
                .map_err(|e| BackendError::io_with_context("list", dir, e))?
                .next()
                .is_none();
            if create && (empty || unfinished(dir)) {
                return Ok(());
            }
            if recognisable(dir) {
                // Re-checked: another writer may have just finished or repaired it.
                if !has_layout_file(dir) {
                    tracing::warn!(
                        path = %dir.join(LAYOUT_FILE).display(),
                        "the cache's LAYOUT file is missing, but the directory is a taskcache cache: \
                         writing it again"
                    );
                }
                Ok(())
            } else if has_layout_file(dir) {
                // Another writer finished the layout while this one looked.
                Ok(())
            } else if create {
                Err(refuse(&format!(
                    "it is not empty and not a taskcache cache (no LAYOUT file): use a new or \
                     empty directory; {IF_DAMAGED}"
                )))
            } else {
                Err(refuse(&format!(
                    "it is not a taskcache cache (no LAYOUT file): check --cache; {IF_DAMAGED}"
                )))
            }
        }
    }
}

/// What to do with a directory that is refused but may have been a cache: one whose
/// `LAYOUT` is gone and that holds something a cache never does is not taken back, so
/// only its owner can say it may go.
const IF_DAMAGED: &str = "if it is a taskcache cache that was damaged or tampered with, \
                          delete it (a cache is only a cache: the next run starts a new one)";

fn has_layout_file(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join(LAYOUT_FILE)).is_ok()
}

/// Whether `dir` holds nothing but what [`crate::layout::Layout::open`] creates before
/// it writes `LAYOUT`: some of the four layout directories, as real directories, all
/// empty but for temporary files of this code in `tmp/`. That is a cache whose first
/// writer was killed (or is still creating it) before `LAYOUT` existed; refusing it
/// would leave the directory unusable for ever, and the first of two writers starting
/// on a new cache would make the second fail.
fn unfinished(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.into_iter().all(|e| {
        let Ok(e) = e else { return false };
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            return false;
        };
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            return false;
        }
        let Ok(inside) = std::fs::read_dir(e.path()) else {
            return false;
        };
        match name {
            "blobs" | "entries" | "stats" => inside.into_iter().next().is_none(),
            "tmp" => inside.into_iter().all(|t| {
                t.is_ok_and(|t| {
                    t.file_type().is_ok_and(|k| k.is_file())
                        && t.file_name().to_str().is_some_and(is_own_temp)
                })
            }),
            _ => false,
        }
    })
}

/// Whether `dir` is unmistakably a used cache of this code, whatever its `LAYOUT`
/// says: real directories `blobs/` and `entries/` holding nothing but digest-algorithm
/// directories, at least one of those (a store made it), and beside them only `tmp/`,
/// `stats/`, `ids/` (the CLI's per-id manifests) as real directories, and `LAYOUT`.
/// No other tool's directory looks like that, so writing `LAYOUT` again takes nothing
/// over.
pub(crate) fn recognisable(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let (mut areas, mut algorithms) = (0, 0);
    for e in entries {
        let Ok(e) = e else { return false };
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        match e.file_name().to_str() {
            Some(LAYOUT_FILE) => {}
            Some("blobs" | "entries") if is_dir => match algorithm_dirs(&e.path()) {
                Some(n) => {
                    areas += 1;
                    algorithms += n;
                }
                None => return false,
            },
            Some("tmp" | "stats" | "ids") if is_dir => {}
            _ => return false,
        }
    }
    areas == 2 && algorithms > 0
}

/// How many digest-algorithm directories `dir` holds; `None` if it holds anything else.
fn algorithm_dirs(dir: &Path) -> Option<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir).ok()? {
        let e = e.ok()?;
        let ours = e.file_type().is_ok_and(|t| t.is_dir())
            && [DigestAlgorithm::Blake3, DigestAlgorithm::Sha256]
                .iter()
                .any(|a| e.file_name().to_str() == Some(a.as_str()));
        if !ours {
            return None;
        }
        n += 1;
    }
    Some(n)
}

/// What a `LAYOUT` file says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Version {
    /// This code's layout.
    Current,
    /// A newer layout, written by a newer taskcache: never rewritten.
    Newer(u32),
    /// Not a layout line of any version (damaged, truncated, zeroed, or not ours).
    Unreadable,
}

/// Strict: exactly the line this code writes (`MAGIC N`, one space, no leading zero,
/// an optional final newline), so a damaged file never passes for a good one.
pub(crate) fn parse_version(text: &str) -> Version {
    let line = text.strip_suffix('\n').unwrap_or(text);
    let Some(digits) = line
        .strip_prefix(LAYOUT_MAGIC)
        .and_then(|r| r.strip_prefix(' '))
    else {
        return Version::Unreadable;
    };
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.starts_with('0') && digits.len() > 1)
    {
        return Version::Unreadable;
    }
    match digits.parse::<u32>() {
        Ok(LAYOUT_VERSION) => Version::Current,
        Ok(v) if v > LAYOUT_VERSION => Version::Newer(v),
        _ => Version::Unreadable,
    }
}

/// Refuses a layout file that is not this code's, saying what to do.
pub(crate) fn check_version(file: &Path, text: &str) -> BackendResult<()> {
    let msg = match parse_version(text) {
        Version::Current => return Ok(()),
        Version::Newer(v) => format!(
            "the cache uses layout version {v}, but this taskcache understands version \
             {LAYOUT_VERSION} only; upgrade taskcache, or use (or empty) another cache directory"
        ),
        Version::Unreadable => format!(
            "not a taskcache layout file (it says {:?}); point taskcache at another directory",
            text.chars().take(60).collect::<String>()
        ),
    };
    Err(BackendError::io_with_context(
        "open cache directory: layout file",
        file,
        io::Error::new(io::ErrorKind::InvalidData, msg),
    ))
}

/// Whether `name` in `<dir>/tmp` is a temporary file of this code: a writer's (`w` and
/// 6 to 16 letters or digits, as written now or by earlier versions) or a statistics
/// log claimed for compaction.
pub(crate) fn is_own_temp(name: &str) -> bool {
    let writer = name.strip_prefix('w').is_some_and(|r| {
        (6..=16).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    let stats = name
        .strip_prefix(STATS_TEMP_PREFIX)
        .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit() || b == b'-'));
    writer || stats
}
