//! Output collection: turns a task's declared output paths into the outputs handed to
//! [`crate::CacheBackend::store`], after the command ran. The one implementation every
//! executor (and the `taskcache` command) uses.
//!
//! * A file becomes [`CacheOutput::file`]: the storage streams it from disk; it is never
//!   read into memory here. Its executable bit is kept. The path handed on is the
//!   file's real one (its directories resolved).
//! * A directory becomes [`CacheOutput::directory`] plus everything below it:
//!   subdirectories (empty ones too), files, symlinks.
//! * A symlink is kept as a link if its text is relative and stays inside the workspace
//!   (checked lexically from the link's own directory, as restore will); an absolute or
//!   escaping link is an error that names it, since restoring it could point outside.
//! * A declared path that does not exist is an error: caching a partial result would
//!   make later hits silently lack an output.
//! * A path whose parent directories lead outside the workspace through a symlink is
//!   refused, so nothing outside the workspace is ever read into the cache.
//! * A socket, FIFO or device cannot be cached: an error names it and its kind.
//!
//! The command that just ran may have left a process behind that keeps changing the
//! tree. So on Unix the walk goes through directory handles: each directory is opened
//! relative to its parent's handle, starting from the workspace, without following a
//! symlink (`O_NOFOLLOW`), and each entry's type is read relative to the handle without
//! following one. A directory swapped for a symlink while the walk runs is never
//! entered (the walk fails, or sees the link and keeps it as a link); a tree that
//! changes under the walk is an error, never a walk outside the workspace.

use crate::{BackendError, BackendResult, CacheOutput, RelPath, check_symlink_target};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Collects the outputs declared as `declared` under `workspace` (see the module docs),
/// sorted by path, ready for [`crate::CacheBackend::store`]. Files are named, never read:
/// the storage streams them.
///
/// Blocking filesystem work: call it on a blocking thread from async code. An error is
/// [`BackendError::InvalidOutput`] naming the declared output and what is wrong with it
/// (the caller's fault: the task did not produce what it declares).
///
/// ```
/// use cache_core::{collect_outputs, OutputContent, RelPath};
/// let ws = tempfile::tempdir()?;
/// let ws = ws.path().canonicalize()?;
/// std::fs::create_dir_all(ws.join("dist/empty"))?;
/// std::fs::write(ws.join("dist/app.js"), b"console.log(1)")?;
/// let outs = collect_outputs(&ws, &[RelPath::parse("dist")?])?;
/// let paths: Vec<&str> = outs.iter().map(|o| o.path.as_str()).collect();
/// assert_eq!(paths, ["dist", "dist/app.js", "dist/empty"]);
/// assert!(matches!(outs[1].content, OutputContent::File { size: Some(14), .. }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn collect_outputs(workspace: &Path, declared: &[RelPath]) -> BackendResult<Vec<CacheOutput>> {
    collect_outputs_with(workspace, declared, false)
}

/// [`collect_outputs`], keeping symlinks with absolute targets when
/// `absolute_symlinks` (a task that opted in: [`crate::Task::allow_absolute_symlinks`]),
/// as link text, never followed.
pub fn collect_outputs_with(
    workspace: &Path,
    declared: &[RelPath],
    absolute_symlinks: bool,
) -> BackendResult<Vec<CacheOutput>> {
    let mut found: BTreeMap<String, CacheOutput> = BTreeMap::new();
    for rel in declared {
        let invalid = |reason: String| BackendError::InvalidOutput {
            path: rel.to_string(),
            reason,
        };
        let real_parent = real_parent(workspace, rel).map_err(invalid)?;
        walk::collect_one(workspace, rel, &real_parent, &mut found).map_err(invalid)?;
        // The walk keeps absolute links as found; only an opted-in task may store them.
        let below = format!("{rel}/");
        let this_root = found
            .range(rel.to_string()..)
            .take_while(|(p, _)| *p == rel.as_str() || p.starts_with(&below));
        for (path, out) in this_root {
            if let crate::OutputContent::Symlink { target } = &out.content {
                if target.starts_with('/') {
                    absolute_link(path, target, absolute_symlinks).map_err(invalid)?;
                }
            }
        }
    }
    Ok(found.into_values().collect())
}

fn absolute_link(path: &str, target: &str, allowed: bool) -> Result<(), String> {
    let link = RelPath::parse(path).map_err(|e| e.to_string())?;
    if allowed {
        return crate::path::check_absolute_symlink_target(&link, target)
            .map_err(|e| e.to_string());
    }
    let e = check_symlink_target(&link, target)
        .err()
        .map_or_else(String::new, |e| e.to_string());
    Err(format!(
        "{e}; make the link relative and inside the workspace, do not declare it, or opt in \
         to absolute symlinks (--allow-absolute-symlinks)"
    ))
}

fn not_produced(rel: &RelPath) -> String {
    format!(
        "declared output {rel} was not produced by the command (no such file or directory); \
         fix the command or the -o path"
    )
}

/// The real directory holding output `rel`, which must be inside the workspace once
/// symlinks are resolved.
fn real_parent(workspace: &Path, rel: &RelPath) -> Result<PathBuf, String> {
    let parent = rel.to_path(workspace);
    let parent = parent.parent().unwrap_or(workspace);
    match fs::canonicalize(parent) {
        Ok(resolved) if resolved.starts_with(workspace) => Ok(resolved),
        Ok(resolved) => Err(format!(
            "output {rel} is reached through a symlink that leaves the workspace (to {}); \
             declare a path inside the workspace",
            resolved.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(not_produced(rel)),
        Err(e) => Err(format!("cannot inspect output {rel}: {e}")),
    }
}

/// A symlink output, if its text is safe to restore.
fn symlink_output(rel: &str, target: &Path) -> Result<CacheOutput, String> {
    let target = target
        .to_str()
        .ok_or_else(|| format!("symlink {rel} has a target that is not UTF-8"))?;
    if target.starts_with('/') {
        // Judged by the caller, who knows whether the task opted in.
        return Ok(CacheOutput::symlink(rel, target));
    }
    let link = RelPath::parse(rel).map_err(|e| e.to_string())?;
    check_symlink_target(&link, target).map_err(|e| {
        format!("{e}; make the link relative and inside the workspace, or do not declare it")
    })?;
    Ok(CacheOutput::symlink(rel, target))
}

fn special_file(rel: &str, kind: &str) -> String {
    format!(
        "output {rel} is a {kind}, not a regular file, directory or symlink; it cannot be \
         cached: remove it before the command ends, or do not declare it"
    )
}

#[cfg(unix)]
mod walk {
    //! The walk through directory handles (see the module docs).

    use super::{not_produced, special_file, symlink_output};
    use crate::{CacheOutput, RelPath};
    use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
    use std::collections::BTreeMap;
    use std::ffi::{OsStr, OsString};
    use std::os::fd::OwnedFd;
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};
    use std::rc::Rc;

    const DIR: OFlags = OFlags::RDONLY
        .union(OFlags::DIRECTORY)
        .union(OFlags::NOFOLLOW)
        .union(OFlags::CLOEXEC);

    /// A directory still to walk: opened when its turn comes, relative to its parent's
    /// handle, so at most one handle per level of the tree is open.
    struct Pending {
        parent: Rc<OwnedFd>,
        name: OsString,
        rel: String,
        on_disk: PathBuf,
    }

    /// Opens `real_dir` (canonical, inside `workspace`) one component at a time from
    /// the workspace, following no symlink: one swapped in since it was resolved fails.
    fn open_dir(workspace: &Path, real_dir: &Path) -> std::io::Result<OwnedFd> {
        let mut fd = rustix::fs::open(workspace, DIR.difference(OFlags::NOFOLLOW), Mode::empty())?;
        for c in real_dir
            .strip_prefix(workspace)
            .unwrap_or(Path::new(""))
            .components()
        {
            fd = rustix::fs::openat(&fd, c.as_os_str(), DIR, Mode::empty())?;
        }
        Ok(fd)
    }

    pub fn collect_one(
        workspace: &Path,
        rel: &RelPath,
        real_parent: &Path,
        found: &mut BTreeMap<String, CacheOutput>,
    ) -> Result<(), String> {
        let parent = open_dir(workspace, real_parent)
            .map_err(|e| format!("cannot open the directory of output {rel}: {e}"))?;
        let name = OsStr::new(rel.file_name());
        let st = match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Err(not_produced(rel)),
            Err(e) => return Err(format!("cannot inspect output {rel}: {e}")),
        };
        let on_disk = real_parent.join(name);
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return add(&parent, name, rel.as_str(), &on_disk, &st, found);
        }
        let mut stack = vec![Pending {
            parent: Rc::new(parent),
            name: name.to_owned(),
            rel: rel.to_string(),
            on_disk,
        }];
        while let Some(dir) = stack.pop() {
            let fd = rustix::fs::openat(&*dir.parent, &dir.name, DIR, Mode::empty()).map_err(|e| {
                format!(
                    "cannot open output directory {} (did it change while being collected?): {e}",
                    dir.rel
                )
            })?;
            read_dir(fd, &dir.rel, &dir.on_disk, found, &mut stack)?;
        }
        Ok(())
    }

    /// Records the directory `rel` and what it holds; its subdirectories go on `stack`.
    fn read_dir(
        fd: OwnedFd,
        rel: &str,
        on_disk: &Path,
        found: &mut BTreeMap<String, CacheOutput>,
        stack: &mut Vec<Pending>,
    ) -> Result<(), String> {
        found
            .entry(rel.to_owned())
            .or_insert_with(|| CacheOutput::directory(rel));
        let unreadable = |e: rustix::io::Errno| format!("cannot read output directory {rel}: {e}");
        let mut names = Vec::new();
        for entry in Dir::read_from(&fd).map_err(unreadable)? {
            let name = entry.map_err(unreadable)?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(OsString::from(OsStr::from_bytes(&name)));
            }
        }
        names.sort();
        let fd = Rc::new(fd);
        for name in names {
            let sub = Path::new(rel).join(&name);
            let sub = sub.to_str().ok_or_else(|| {
                format!(
                    "output {} has a name that is not UTF-8; such files cannot be cached",
                    sub.display()
                )
            })?;
            let sub = RelPath::parse(sub).map_err(|e| e.to_string())?.to_string();
            let st = rustix::fs::statat(&*fd, &name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| format!("cannot inspect output {sub}: {e}"))?;
            let on_disk = on_disk.join(&name);
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                let parent = Rc::clone(&fd);
                stack.push(Pending {
                    parent,
                    name,
                    rel: sub,
                    on_disk,
                });
            } else {
                add(&fd, &name, &sub, &on_disk, &st, found)?;
            }
        }
        Ok(())
    }

    /// A file, symlink or special file named `name` in the directory `dir`, as `st`
    /// (read without following a link) describes it.
    fn add(
        dir: &OwnedFd,
        name: &OsStr,
        rel: &str,
        on_disk: &Path,
        st: &Stat,
        found: &mut BTreeMap<String, CacheOutput>,
    ) -> Result<(), String> {
        if found.contains_key(rel) {
            return Ok(());
        }
        let out = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => CacheOutput::file_with_size(
                rel,
                on_disk,
                u64::try_from(st.st_size).unwrap_or(0),
                st.st_mode & 0o111 != 0,
            ),
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(dir, name, Vec::new())
                    .map_err(|e| format!("cannot read symlink {rel}: {e}"))?;
                symlink_output(rel, Path::new(OsStr::from_bytes(target.as_bytes())))?
            }
            FileType::Fifo => return Err(special_file(rel, "FIFO")),
            FileType::Socket => return Err(special_file(rel, "socket")),
            FileType::CharacterDevice => return Err(special_file(rel, "character device")),
            FileType::BlockDevice => return Err(special_file(rel, "block device")),
            _ => return Err(special_file(rel, "special file")),
        };
        found.insert(rel.to_owned(), out);
        Ok(())
    }
}

#[cfg(not(unix))]
mod walk {
    //! Without Unix handles: a path-based walk that does not follow links.

    use super::{not_produced, special_file, symlink_output};
    use crate::mode::is_executable;
    use crate::{CacheOutput, RelPath};
    use std::collections::BTreeMap;
    use std::fs;
    use std::path::Path;

    pub fn collect_one(
        _workspace: &Path,
        rel: &RelPath,
        real_parent: &Path,
        found: &mut BTreeMap<String, CacheOutput>,
    ) -> Result<(), String> {
        let root = real_parent.join(rel.file_name());
        let meta = match fs::symlink_metadata(&root) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_produced(rel)),
            Err(e) => return Err(format!("cannot inspect output {rel}: {e}")),
        };
        if !meta.is_dir() {
            return add(rel.as_str(), &root, &meta, found);
        }
        for entry in walkdir::WalkDir::new(&root)
            .follow_links(false)
            .follow_root_links(false)
            .sort_by_file_name()
        {
            let entry = entry.map_err(|e| format!("cannot read output directory {rel}: {e}"))?;
            let sub = entry.path().strip_prefix(&root).unwrap_or(entry.path());
            let sub = Path::new(rel.as_str()).join(sub);
            let sub = sub
                .to_str()
                .ok_or_else(|| format!("output {} has a name that is not UTF-8", sub.display()))?;
            let sub = RelPath::parse(sub).map_err(|e| e.to_string())?.to_string();
            if entry.file_type().is_dir() {
                found
                    .entry(sub.clone())
                    .or_insert_with(|| CacheOutput::directory(sub.as_str()));
                continue;
            }
            let meta = entry
                .metadata()
                .map_err(|e| format!("cannot inspect output {sub}: {e}"))?;
            add(&sub, entry.path(), &meta, found)?;
        }
        Ok(())
    }

    fn add(
        rel: &str,
        abs: &Path,
        meta: &fs::Metadata,
        found: &mut BTreeMap<String, CacheOutput>,
    ) -> Result<(), String> {
        if found.contains_key(rel) {
            return Ok(());
        }
        let out = if meta.is_file() {
            CacheOutput::file_with_size(rel, abs, meta.len(), is_executable(meta))
        } else if meta.file_type().is_symlink() {
            let target =
                fs::read_link(abs).map_err(|e| format!("cannot read symlink {rel}: {e}"))?;
            symlink_output(rel, &target)?
        } else {
            return Err(special_file(rel, "special file"));
        };
        found.insert(rel.to_owned(), out);
        Ok(())
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::OutputContent;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn rels(v: &[&str]) -> Vec<RelPath> {
        v.iter().map(|p| RelPath::parse(p).unwrap()).collect()
    }

    fn collect(root: &Path, declared: &[RelPath]) -> Result<Vec<CacheOutput>, String> {
        collect_outputs(root, declared).map_err(|e| {
            assert_eq!(e.kind(), "invalid_output", "{e}");
            e.to_string()
        })
    }

    fn ws() -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(d.path()).unwrap();
        (d, root)
    }

    #[test]
    fn walks_directories_files_links_and_empty_dirs() {
        let (_d, root) = ws();
        fs::create_dir_all(root.join("dist/empty")).unwrap();
        fs::create_dir_all(root.join("dist/sub")).unwrap();
        fs::write(root.join("dist/sub/tool"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(
            root.join("dist/sub/tool"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        fs::write(root.join("dist/a.txt"), "a").unwrap();
        symlink("sub/tool", root.join("dist/link")).unwrap();
        fs::write(root.join("top.bin"), "x").unwrap();
        let outs = collect(&root, &rels(&["dist", "top.bin", "dist/a.txt"])).unwrap();
        let summary: Vec<(String, String, bool)> = outs
            .iter()
            .map(|o| {
                let kind = match &o.content {
                    OutputContent::File { .. } => "file".to_owned(),
                    OutputContent::Directory => "dir".to_owned(),
                    OutputContent::Symlink { target } => format!("link:{target}"),
                    OutputContent::Bytes(_) => "bytes".to_owned(),
                };
                (o.path.clone(), kind, o.is_executable)
            })
            .collect();
        let expect = |p: &str, k: &str, x: bool| (p.to_owned(), k.to_owned(), x);
        assert_eq!(
            summary,
            vec![
                expect("dist", "dir", false),
                expect("dist/a.txt", "file", false),
                expect("dist/empty", "dir", false),
                expect("dist/link", "link:sub/tool", false),
                expect("dist/sub", "dir", false),
                expect("dist/sub/tool", "file", true),
                expect("top.bin", "file", false),
            ]
        );
        match &outs[1].content {
            OutputContent::File { path, blob, .. } => {
                assert_eq!(path, &root.join("dist/a.txt"));
                assert!(blob.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_output_is_an_error() {
        let (_d, root) = ws();
        let err = collect(&root, &rels(&["nope/x"])).unwrap_err();
        assert!(
            err.contains("nope/x") && err.contains("not produced"),
            "{err}"
        );
    }

    #[test]
    fn escaping_and_absolute_links_are_refused() {
        let (_d, root) = ws();
        fs::create_dir(root.join("d")).unwrap();
        symlink("/etc/passwd", root.join("d/abs")).unwrap();
        let err = collect(&root, &rels(&["d"])).unwrap_err();
        assert!(err.contains("d/abs") && err.contains("absolute"), "{err}");
        fs::remove_file(root.join("d/abs")).unwrap();
        symlink("../../x", root.join("d/up")).unwrap();
        let err = collect(&root, &rels(&["d/up"])).unwrap_err();
        assert!(err.contains("leaves the workspace"), "{err}");
    }

    #[test]
    fn outputs_behind_an_escaping_directory_link_are_refused() {
        let (_d, root) = ws();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "s").unwrap();
        symlink(outside.path(), root.join("out")).unwrap();
        let err = collect(&root, &rels(&["out/secret"])).unwrap_err();
        assert!(err.contains("leaves the workspace"), "{err}");
        // The link itself, declared as an output, is an absolute link: refused too.
        assert!(collect(&root, &rels(&["out"])).is_err());
    }

    #[test]
    fn special_files_are_reported_by_name_and_kind() {
        let (_d, root) = ws();
        fs::create_dir(root.join("dist")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(root.join("dist/pipe"))
            .status()
            .unwrap();
        assert!(fifo.success());
        let err = collect(&root, &rels(&["dist"])).unwrap_err();
        assert!(err.contains("dist/pipe is a FIFO"), "{err}");
        let _socket = std::os::unix::net::UnixListener::bind(root.join("app.sock")).unwrap();
        let err = collect(&root, &rels(&["app.sock"])).unwrap_err();
        assert!(err.contains("app.sock is a socket"), "{err}");
        symlink("/dev/null", root.join("null")).unwrap();
        assert!(
            collect(&root, &rels(&["null"]))
                .unwrap_err()
                .contains("absolute")
        );
    }

    /// A declared output reached through a symlink to a directory inside the workspace
    /// is collected from its real directory.
    #[test]
    fn outputs_behind_a_link_inside_the_workspace_are_collected_by_their_real_path() {
        let (_d, root) = ws();
        fs::create_dir_all(root.join("real/sub")).unwrap();
        fs::write(root.join("real/sub/f"), "f").unwrap();
        symlink("real", root.join("build")).unwrap();
        let outs = collect(&root, &rels(&["build/sub"])).unwrap();
        let paths: Vec<&str> = outs.iter().map(|o| o.path.as_str()).collect();
        assert_eq!(paths, ["build/sub", "build/sub/f"]);
        match &outs[1].content {
            OutputContent::File { path, .. } => assert_eq!(path, &root.join("real/sub/f")),
            other => panic!("{other:?}"),
        }
    }

    /// A directory swapped for a symlink (which is itself a valid output: relative,
    /// inside the workspace lexically) while the collection walks: the walk never
    /// enters the link, so nothing from outside the workspace is ever collected.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_directory_swapped_for_a_link_during_the_walk_is_never_entered() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (_d, root) = ws();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("stolen"), "secret").unwrap();
        symlink(outside.path(), root.join("gate")).unwrap();
        fs::create_dir_all(root.join("dist/sub")).unwrap();
        fs::write(root.join("dist/sub/mine"), "mine").unwrap();
        symlink("../gate", root.join("dist/swap")).unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let swapper = {
            let (stop, a, b) = (stop.clone(), root.join("dist/sub"), root.join("dist/swap"));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let flags = rustix::fs::RenameFlags::EXCHANGE;
                    rustix::fs::renameat_with(rustix::fs::CWD, &a, rustix::fs::CWD, &b, flags)
                        .unwrap();
                }
            })
        };
        let started = std::time::Instant::now();
        let (mut collected, mut stolen) = (0, Vec::new());
        while started.elapsed() < std::time::Duration::from_secs(2) && stolen.is_empty() {
            let Ok(outs) = collect(&root, &rels(&["dist"])) else {
                continue;
            };
            collected += 1;
            stolen.extend(outs.into_iter().filter(|o| o.path.contains("stolen")));
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        assert!(
            stolen.is_empty(),
            "collected from outside the workspace: {stolen:?}"
        );
        assert!(
            collected > 0,
            "no collection succeeded while the tree changed"
        );
    }
}
