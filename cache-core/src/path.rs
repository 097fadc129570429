//! Relative output paths and symlink targets: the lexical half of workspace safety.
//!
//! [`RelPath::parse`] is the only way to make a [`RelPath`], so every path that reaches
//! the workspace writer has passed these rules. The physical half (symlinks already in
//! the workspace) is checked by [`crate::Workspace`].

use crate::{BackendError, BackendResult};
use std::fmt;
use std::path::{Path, PathBuf};

/// A validated, normalized path relative to the workspace root.
///
/// Rules: not empty, no NUL byte, not absolute (`/x`, `\x`), no Windows drive or UNC
/// prefix (`C:`, `\\server`), no backslash (a Windows separator would mean something
/// else there), no `..` component. `.` components, repeated and trailing slashes are
/// dropped, so `./dist//app/` becomes `dist/app`.
///
/// ```
/// use cache_core::RelPath;
/// assert_eq!(RelPath::parse("./dist//app/").unwrap().as_str(), "dist/app");
/// for bad in ["", "/etc/passwd", "../x", "a/../../x", "C:\\x", "a\0b", "."] {
///     assert!(RelPath::parse(bad).is_err(), "{bad:?}");
/// }
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

/// Longest output path accepted, in bytes (Linux's `PATH_MAX`): bounds the work a
/// hostile entry can cause per path.
pub const MAX_PATH_BYTES: usize = 4096;

/// Most components an output path may have.
pub const MAX_PATH_DEPTH: usize = 256;

impl RelPath {
    /// Validates and normalizes `raw` (at most [`MAX_PATH_BYTES`] bytes and
    /// [`MAX_PATH_DEPTH`] components).
    pub fn parse(raw: &str) -> BackendResult<Self> {
        let refuse = |reason: &str| Err(BackendError::unsafe_path(raw, reason));
        if raw.len() > MAX_PATH_BYTES {
            return refuse("the path is longer than 4096 bytes");
        }
        if raw.is_empty() {
            return refuse("the path is empty; name a file or directory inside the workspace");
        }
        if raw.contains('\0') {
            return refuse("the path contains a NUL byte");
        }
        if raw.starts_with('/') || raw.starts_with('\\') {
            return refuse("absolute paths are not allowed; give a path relative to the workspace");
        }
        if raw.contains('\\') {
            return refuse("backslashes are not allowed; use `/` as the separator");
        }
        let bytes = raw.as_bytes();
        if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
            return refuse("Windows drive prefixes are not allowed; give a relative path");
        }
        let mut parts: Vec<&str> = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    return refuse("`..` is not allowed: outputs must stay inside the workspace");
                }
                p => parts.push(p),
            }
        }
        if parts.is_empty() {
            return refuse("the path names the workspace root itself; name something inside it");
        }
        if parts.len() > MAX_PATH_DEPTH {
            return refuse("the path is more than 256 levels deep");
        }
        Ok(RelPath(parts.join("/")))
    }

    /// The normalized path with `/` separators.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path's components.
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &str> {
        self.0.split('/')
    }

    /// The parent directory, or `None` for a top-level entry.
    #[must_use]
    pub fn parent(&self) -> Option<RelPath> {
        self.0.rsplit_once('/').map(|(p, _)| RelPath(p.to_owned()))
    }

    /// The last component.
    #[must_use]
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// Joins onto a directory on disk.
    #[must_use]
    pub fn to_path(&self, root: &Path) -> PathBuf {
        let mut p = root.to_path_buf();
        for c in self.components() {
            p.push(c);
        }
        p
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Checks that a symlink placed at `link` with text `target` points inside the workspace.
///
/// The target must be relative (no `/`, `\`, drive prefix, NUL, not empty) and, resolved
/// lexically from the link's directory, must never climb above the workspace root at any
/// step. (`a/b -> ../c` is fine; `a -> ../x` and `a -> b/../../x` are not.)
///
/// `..` may appear only at the start of the target (`../../lib/x`), never after a name
/// (`b/../x`): the kernel resolves `b/..` from wherever `b` really is, so if `b` is a
/// symlink (say `b -> .`, itself harmless) the lexical check above would be fooled and
/// the link would lead out of the workspace. [`crate::Workspace`] repeats the depth
/// check against the link's real directory, which rules out the other way round.
pub fn check_symlink_target(link: &RelPath, target: &str) -> BackendResult<()> {
    let refuse = |reason: String| Err(BackendError::unsafe_path(link.as_str(), reason));
    if target.is_empty() {
        return refuse("the symlink target is empty".into());
    }
    if target.contains('\0') {
        return refuse("the symlink target contains a NUL byte".into());
    }
    if target.starts_with('/') || target.starts_with('\\') || target.contains('\\') {
        return refuse(format!(
            "symlink target {:?} is absolute or uses backslashes; only relative targets inside the workspace are cached",
            crate::error::truncate(target)
        ));
    }
    let b = target.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return refuse("symlink target has a Windows drive prefix".into());
    }
    // Depth of the link's directory below the root.
    let mut depth = link.components().count() - 1;
    let mut named = false;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if named {
                    return refuse(format!(
                        "symlink target {:?} climbs with `..` after a name; only leading `..` is allowed (write it as `../x`, not `a/../../x`)",
                        crate::error::truncate(target)
                    ));
                }
                if depth == 0 {
                    return refuse(format!(
                        "symlink target {:?} leaves the workspace",
                        crate::error::truncate(target)
                    ));
                }
                depth -= 1;
            }
            _ => {
                named = true;
                depth += 1;
            }
        }
    }
    Ok(())
}

/// Checks the target of a symlink output that a task opted in to keep absolute
/// ([`crate::Task::allow_absolute_symlinks`]): an absolute Unix path, without NUL or
/// backslash, at most [`MAX_PATH_BYTES`]. Such a link is stored and restored as its
/// text; nothing ever follows it.
pub fn check_absolute_symlink_target(link: &RelPath, target: &str) -> BackendResult<()> {
    let refuse = |reason: &str| Err(BackendError::unsafe_path(link.as_str(), reason));
    if !cfg!(unix) {
        return refuse("absolute symlinks are restored on Unix only");
    }
    if !target.starts_with('/') {
        return refuse("an absolute symlink's target must start with /");
    }
    if target.contains('\0') || target.contains('\\') {
        return refuse("the symlink target contains a NUL byte or a backslash");
    }
    if target.len() > MAX_PATH_BYTES {
        return refuse("the symlink target is too long");
    }
    Ok(())
}

/// What kind of output a path names, for [`check_layout`].
#[derive(Debug, Clone, Copy)]
pub enum OutputKind<'a> {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symlink with this target.
    Symlink(&'a str),
}

/// Validates a whole set of outputs: every path ([`RelPath::parse`]), every symlink
/// target ([`check_symlink_target`]), no path twice, and nothing below a file or a
/// symlink (an entry with `a` as a file and `a/b` could never be restored whole).
/// Returns the parsed paths in order. `store` calls this before any I/O and entry
/// decoding calls it on every entry read.
pub fn check_layout<'a>(
    outputs: impl IntoIterator<Item = (&'a str, OutputKind<'a>)>,
) -> BackendResult<Vec<RelPath>> {
    let mut parsed = Vec::new();
    let mut leaves = Vec::new();
    for (raw, kind) in outputs {
        let rel = RelPath::parse(raw)?;
        if let OutputKind::Symlink(target) = kind {
            check_symlink_target(&rel, target)?;
        }
        if !matches!(kind, OutputKind::Directory) {
            leaves.push(parsed.len());
        }
        parsed.push(rel);
    }
    // Sorted once, checked by binary search: O(n log n) whatever the paths look like
    // (a hostile entry must not make validation quadratic).
    let mut sorted: Vec<&str> = parsed.iter().map(RelPath::as_str).collect();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(BackendError::InvalidOutput {
            path: crate::error::truncate(w[0]),
            reason: "the same path is listed twice".into(),
        });
    }
    for &i in &leaves {
        let leaf = parsed[i].as_str();
        let below = format!("{leaf}/");
        let at = sorted.partition_point(|p| *p < below.as_str());
        if let Some(p) = sorted.get(at).filter(|p| p.starts_with(&below)) {
            return Err(BackendError::InvalidOutput {
                path: crate::error::truncate(p),
                reason: format!(
                    "it lies below {}, which is a file or symlink output",
                    crate::error::truncate(leaf)
                ),
            });
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(RelPath::parse("a/./b//c/").unwrap().as_str(), "a/b/c");
        assert_eq!(RelPath::parse("a").unwrap().parent(), None);
        assert_eq!(
            RelPath::parse("a/b").unwrap().parent().unwrap().as_str(),
            "a"
        );
        assert_eq!(RelPath::parse("a/b").unwrap().file_name(), "b");
        assert!(RelPath::parse("héllo wörld/ファイル").is_ok());
        assert!(RelPath::parse("a..b/..c").is_ok());
    }

    #[test]
    fn layouts() {
        use OutputKind::{Directory, File, Symlink};
        assert!(check_layout([("a", Directory), ("a/b", File), ("l", Symlink("a/b"))]).is_ok());
        assert!(check_layout([("a", File), ("a/b", File)]).is_err());
        assert!(check_layout([("a/b/c", File), ("a", Symlink("x"))]).is_err());
        assert!(check_layout([("a", File), ("./a", Directory)]).is_err());
        assert!(check_layout([("ab", File), ("ab2/c", File)]).is_ok());
        assert!(check_layout([("x", Symlink("../y"))]).is_err());
        // Names that sort between `a` and `a/...` do not hide a path below a file.
        assert!(check_layout([("a", File), ("a-b", File), ("a.c", File), ("a/c", File)]).is_err());
        assert!(check_layout([("a", File), ("a-b/c", File), ("a.c/d", Directory)]).is_ok());
        assert!(check_layout([("x/y", Directory), ("x/y/z", File), ("x/y", File)]).is_err());
    }

    #[test]
    fn path_length_and_depth_are_bounded() {
        assert!(RelPath::parse(&"a".repeat(MAX_PATH_BYTES)).is_ok());
        assert!(RelPath::parse(&"a".repeat(MAX_PATH_BYTES + 1)).is_err());
        let deep = |n: usize| vec!["d"; n].join("/");
        assert!(RelPath::parse(&deep(MAX_PATH_DEPTH)).is_ok());
        assert!(RelPath::parse(&deep(MAX_PATH_DEPTH + 1)).is_err());
        // The shape that made validation quadratic (one long path, many slashes) is
        // refused by length before any prefix is examined.
        assert!(RelPath::parse(&"a/".repeat(500_000)).is_err());
    }

    #[test]
    fn symlink_targets() {
        let l = |p| RelPath::parse(p).unwrap();
        assert!(check_symlink_target(&l("a/b"), "../c").is_ok());
        assert!(check_symlink_target(&l("a/b/c"), "../../x/./y").is_ok());
        // `..` after a name could climb out through a symlink named by that name.
        assert!(check_symlink_target(&l("a/b"), "c/../../d").is_err());
        assert!(check_symlink_target(&l("l"), "b/../x").is_err());
        assert!(check_symlink_target(&l("a"), "../x").is_err());
        assert!(check_symlink_target(&l("a/b"), "../../x").is_err());
        assert!(check_symlink_target(&l("a"), "b/../../x").is_err());
        assert!(check_symlink_target(&l("a"), "/etc/passwd").is_err());
        assert!(check_symlink_target(&l("a"), "").is_err());
    }
}
