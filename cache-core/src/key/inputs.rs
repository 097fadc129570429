//! Input collection for a key: the patterns expanded into the files, links and special
//! files that join it (the rules are in the parent module's docs, "Symlinks and special
//! files").

use super::InputFile;
use crate::error::truncate;
use crate::mode::is_executable;
use crate::{BackendError, BackendResult, DigestAlgorithm};
use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Every input `patterns` find under `workspace`, by path relative to it.
pub(super) fn collect(
    workspace: &Path,
    algorithm: DigestAlgorithm,
    patterns: &BTreeSet<String>,
) -> BackendResult<BTreeMap<String, InputFile>> {
    if patterns.is_empty() {
        return Ok(BTreeMap::new());
    }
    let real_workspace = std::fs::canonicalize(workspace)
        .map_err(|e| BackendError::io_with_context("open the workspace", workspace, e))?;
    let mut inputs = Inputs {
        workspace,
        real_workspace,
        algorithm,
        pattern: "",
        found: BTreeMap::new(),
        chain: Vec::new(),
        linked_entries: 0,
        warned: BTreeSet::new(),
    };
    for pattern in patterns {
        inputs.pattern = pattern;
        let before = inputs.found.len();
        let matched = inputs.expand()?;
        if !matched && inputs.found.len() == before {
            return Err(BackendError::InvalidInput {
                pattern: truncate(pattern),
                reason: format!(
                    "input pattern matched no files under {}; fix the pattern or remove it",
                    workspace.display()
                ),
            });
        }
    }
    Ok(inputs.found)
}

/// Directory symlinks followed inside one another, at most (the kernel's limit for
/// one path is 40 too).
const MAX_LINK_DEPTH: usize = 40;

/// Entries visited below followed directory symlinks, at most, per key: links that
/// each lead to the same tree again multiply it, and a key must not take forever.
const MAX_LINKED_ENTRIES: usize = 100_000;

/// The input collection of one key: see "Symlinks and special files" in the module docs.
struct Inputs<'a> {
    /// The workspace as given: entry paths start with it.
    workspace: &'a Path,
    /// The workspace with every symlink resolved.
    real_workspace: PathBuf,
    algorithm: DigestAlgorithm,
    /// The pattern being expanded, for errors.
    pattern: &'a str,
    found: BTreeMap<String, InputFile>,
    /// The real directories holding the directory links being followed, outermost first.
    chain: Vec<PathBuf>,
    /// Entries visited below followed directory links so far.
    linked_entries: usize,
    /// Paths already warned about (a link may be met by several patterns).
    warned: BTreeSet<String>,
}

fn bad_pattern(pattern: &str, reason: &str) -> BackendError {
    BackendError::InvalidInput {
        pattern: truncate(pattern),
        reason: format!("bad input pattern: {reason}"),
    }
}

fn has_glob_chars(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

impl Inputs<'_> {
    fn invalid(&self, reason: String) -> BackendError {
        BackendError::InvalidInput {
            pattern: truncate(self.pattern),
            reason,
        }
    }

    /// Expands the current pattern into `found`; returns whether it matched anything.
    fn expand(&mut self) -> BackendResult<bool> {
        let pattern = self.pattern;
        if pattern.starts_with('/') || pattern.contains('\\') || pattern.contains('\0') {
            return Err(bad_pattern(
                pattern,
                "give a relative pattern with `/` separators",
            ));
        }
        let parts: Vec<&str> = pattern
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        if parts.contains(&"..") {
            return Err(bad_pattern(
                pattern,
                "`..` is not allowed; inputs must be inside the workspace",
            ));
        }
        let literal: Vec<&str> = parts
            .iter()
            .take_while(|p| !has_glob_chars(p))
            .copied()
            .collect();
        let base_rel = literal.join("/");
        let base = literal
            .iter()
            .fold(self.workspace.to_path_buf(), |p, c| p.join(c));

        let Ok(meta) = std::fs::symlink_metadata(&base) else {
            return Ok(false);
        };
        let is_dir = || std::fs::metadata(&base).is_ok_and(|m| m.is_dir());
        if literal.len() == parts.len() {
            // No glob characters: a directory means all below it; anything else (a
            // file, a symlink, a special file) is one entry, as if a glob matched it.
            if meta.is_dir() {
                let real = self.walk_root(&base, &base_rel)?;
                return self.walk(&base, &real, None);
            }
            if meta.is_symlink() && is_dir() {
                self.walk_root(&base, &base_rel)?;
            }
            // A literal that is not a directory has a last component and a parent.
            let parent = base.parent().unwrap_or(self.workspace);
            let on_disk = std::fs::canonicalize(parent)
                .map_err(|e| BackendError::io_with_context("resolve input", &base, e))?
                .join(base.file_name().unwrap_or_default());
            self.visit(&base, &on_disk, base_rel, meta.file_type(), None)?;
            return Ok(true);
        }
        if !is_dir() {
            return Ok(false);
        }
        let real = self.walk_root(&base, &base_rel)?;
        let glob = globset::GlobBuilder::new(&parts.join("/"))
            .literal_separator(true)
            .build()
            .map_err(|e| bad_pattern(pattern, &e.to_string()))?
            .compile_matcher();
        self.walk(&base, &real, Some(&glob))
    }

    /// The real path of a pattern's base directory, which must be inside the
    /// workspace: directories outside it are not walked.
    fn walk_root(&self, base: &Path, base_rel: &str) -> BackendResult<PathBuf> {
        let real = std::fs::canonicalize(base)
            .map_err(|e| BackendError::io_with_context("resolve input directory", base, e))?;
        if real.starts_with(&self.real_workspace) {
            return Ok(real);
        }
        Err(self.invalid(format!(
            "the input directory {base_rel:?} leads outside the workspace through a symlink \
             (to {}); directories outside the workspace are not walked: name the files there \
             one by one, or copy them into the workspace",
            real.display()
        )))
    }

    /// Walks the real directory `real_root` without following links itself, keying
    /// what it holds under `seen_root` (the path the build uses, maybe through links);
    /// returns whether `glob` matched anything.
    fn walk(
        &mut self,
        seen_root: &Path,
        real_root: &Path,
        glob: Option<&globset::GlobMatcher>,
    ) -> BackendResult<bool> {
        let mut matched = false;
        for entry in walkdir::WalkDir::new(real_root)
            .follow_links(false)
            .sort_by_file_name()
        {
            let entry = entry.map_err(|e| {
                let path = e
                    .path()
                    .map_or_else(|| real_root.to_path_buf(), Path::to_path_buf);
                BackendError::io_with_context("read input", path, e.into())
            })?;
            if !self.chain.is_empty() {
                self.linked_entries += 1;
                if self.linked_entries > MAX_LINKED_ENTRIES {
                    return Err(self.invalid(format!(
                        "more than {MAX_LINKED_ENTRIES} entries are reached through directory \
                         symlinks (links leading to the same tree again and again?); name the \
                         on_disk directories as inputs instead"
                    )));
                }
            }
            if entry.file_type().is_dir() {
                continue;
            }
            let on_disk = entry.path();
            let seen = seen_root.join(on_disk.strip_prefix(real_root).unwrap_or(on_disk));
            let rel = rel_string(self.workspace, &seen)?;
            matched |= self.visit(&seen, on_disk, rel, entry.file_type(), glob)?;
        }
        Ok(matched)
    }

    /// One entry, at `seen` for the build and `on_disk` with its directories resolved: keyed
    /// if `glob` matches it (or there is none); a symlink to a directory is walked
    /// whether or not it matches, as a directory would be. Returns whether it matched.
    fn visit(
        &mut self,
        seen: &Path,
        on_disk: &Path,
        rel: String,
        ft: std::fs::FileType,
        glob: Option<&globset::GlobMatcher>,
    ) -> BackendResult<bool> {
        let wanted = glob.is_none_or(|g| g.is_match(&rel));
        if ft.is_symlink() {
            return self.link(seen, on_disk, rel, glob, wanted);
        }
        if wanted && !self.found.contains_key(&rel) {
            let input = if ft.is_file() {
                self.read_file(on_disk, &rel)?
            } else {
                self.special(&rel, ft)
            };
            self.found.insert(rel, input);
        }
        Ok(wanted)
    }

    fn link(
        &mut self,
        seen: &Path,
        on_disk: &Path,
        rel: String,
        glob: Option<&globset::GlobMatcher>,
        wanted: bool,
    ) -> BackendResult<bool> {
        let text = std::fs::read_link(on_disk)
            .map_err(|e| BackendError::io_with_context("read input symlink", seen, e))?
            .to_string_lossy()
            .into_owned();
        let (target, dir) = self.resolve(on_disk, &rel)?;
        let mut matched = wanted;
        if let Some(dir) = dir {
            if self.chain.len() >= MAX_LINK_DEPTH {
                return Err(self.invalid(format!(
                    "{rel}: directory symlinks are nested more than {MAX_LINK_DEPTH} deep; \
                     name the on_disk directories as inputs instead"
                )));
            }
            self.chain
                .push(on_disk.parent().unwrap_or(on_disk).to_path_buf());
            let walked = self.walk(seen, &dir, glob);
            self.chain.pop();
            matched |= walked?;
        }
        if wanted {
            let target = Box::new(target);
            self.found
                .entry(rel)
                .or_insert(InputFile::Symlink { text, target });
        }
        Ok(matched)
    }

    /// What the link at `on_disk` (its directories resolved) leads to, and the real
    /// directory to walk when it is one.
    fn resolve(
        &mut self,
        on_disk: &Path,
        rel: &str,
    ) -> BackendResult<(InputFile, Option<PathBuf>)> {
        let target = match std::fs::canonicalize(on_disk) {
            Ok(target) => target,
            Err(e) if is_dangling(&e) => {
                tracing::debug!("input {rel} is a dangling symlink: only its text joins the key");
                return Ok((InputFile::Unfollowed { reason: "dangling" }, None));
            }
            Err(e) => {
                return Err(BackendError::io_with_context(
                    "resolve input symlink",
                    on_disk,
                    e,
                ));
            }
        };
        let meta = std::fs::symlink_metadata(&target)
            .map_err(|e| BackendError::io_with_context("inspect input", &target, e))?;
        if meta.is_file() {
            return Ok((self.read_file(&target, rel)?, None));
        }
        if !meta.is_dir() {
            return Ok((self.special(rel, meta.file_type()), None));
        }
        if !target.starts_with(&self.real_workspace) {
            self.warn_once(rel, || {
                format!(
                    "input {rel} is a symlink to a directory outside the workspace ({}); it is \
                     not walked, so the key cannot see its files (name them one by one, or copy \
                     them into the workspace)",
                    target.display()
                )
            });
            let reason = "outside-workspace";
            return Ok((InputFile::Unfollowed { reason }, None));
        }
        let holder = on_disk.parent().unwrap_or(on_disk);
        if holder.starts_with(&target) || self.chain.iter().any(|h| h.starts_with(&target)) {
            tracing::debug!(
                "input {rel} is a symlink back to a directory being walked: not followed"
            );
            return Ok((InputFile::Unfollowed { reason: "cycle" }, None));
        }
        Ok((InputFile::Directory, Some(target)))
    }

    fn special(&mut self, rel: &str, ft: std::fs::FileType) -> InputFile {
        let kind = special_kind(ft);
        self.warn_once(rel, || {
            format!(
                "input {rel} is a {kind}, not a regular file: it is not read; only its kind and \
                 path join the key"
            )
        });
        InputFile::Special { kind }
    }

    fn warn_once(&mut self, rel: &str, message: impl FnOnce() -> String) {
        if self.warned.insert(rel.to_owned()) {
            tracing::warn!("{}", message());
        }
    }

    /// Hashes a regular file through a handle opened without following a final symlink
    /// and without blocking; a file that is no longer regular there is a special file.
    fn read_file(&mut self, path: &Path, rel: &str) -> BackendResult<InputFile> {
        let mut f =
            open_input(path).map_err(|e| BackendError::io_with_context("read input", path, e))?;
        let meta = f
            .metadata()
            .map_err(|e| BackendError::io_with_context("inspect input", path, e))?;
        if !meta.is_file() {
            return Ok(self.special(rel, meta.file_type()));
        }
        let blob = crate::digest::hash_reader(&mut f, self.algorithm)
            .map_err(|e| BackendError::io_with_context("read input", path, e))?;
        Ok(InputFile::File {
            blob,
            executable: is_executable(&meta),
        })
    }
}

#[cfg(unix)]
fn open_input(path: &Path) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    Ok(rustix::fs::open(path, flags, Mode::empty())?.into())
}

#[cfg(not(unix))]
fn open_input(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

/// A link whose target does not exist, runs through a non-directory, or loops.
fn is_dangling(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    let loops = e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error());
    #[cfg(not(unix))]
    let loops = false;
    loops || matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

#[cfg(unix)]
fn special_kind(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "char-device"
    } else if ft.is_block_device() {
        "block-device"
    } else {
        "unknown"
    }
}

#[cfg(not(unix))]
fn special_kind(_ft: std::fs::FileType) -> &'static str {
    "unknown"
}

fn rel_string(workspace: &Path, path: &Path) -> BackendResult<String> {
    let rel = path.strip_prefix(workspace).unwrap_or(path);
    let mut parts = Vec::new();
    for c in rel.components() {
        let s = c
            .as_os_str()
            .to_str()
            .ok_or_else(|| BackendError::InvalidInput {
                pattern: rel.display().to_string(),
                reason: "input file names must be valid UTF-8 to join the key".into(),
            })?;
        parts.push(s);
    }
    Ok(parts.join("/"))
}
