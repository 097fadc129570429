//! Turns the declared `-o` paths into the outputs handed to `store`, after the command ran.
//!
//! * A file becomes [`CacheOutput::file`]: the storage streams it from disk; it is never
//!   read into memory here. Its executable bit is kept.
//! * A directory becomes [`CacheOutput::directory`] plus everything below it, walked
//!   without following links: subdirectories (empty ones too), files, symlinks.
//! * A symlink is kept as a link if its text is relative and stays inside the workspace
//!   (checked lexically from the link's own directory, as restore will); an absolute or
//!   escaping link is an error that names it, since restoring it could point outside.
//! * A declared path that does not exist is an error: caching a partial result would
//!   make later hits silently lack an output.
//! * A path whose parent directories lead outside the workspace through a symlink is
//!   refused, so nothing outside the workspace is ever read into the cache.
//!
//! Sockets, FIFOs and devices cannot be cached and are errors.

use cache_core::mode::is_executable;
use cache_core::{CacheOutput, RelPath, check_symlink_target};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Collects the outputs under `workspace` (canonical). The error says which output
/// and why.
pub fn collect(workspace: &Path, declared: &[RelPath]) -> Result<Vec<CacheOutput>, String> {
    let mut found: BTreeMap<String, CacheOutput> = BTreeMap::new();
    for rel in declared {
        let abs = rel.to_path(workspace);
        check_parents(workspace, rel, &abs)?;
        let meta = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "declared output {rel} was not produced by the command (no such file or directory); \
                     fix the command or the -o path"
                ));
            }
            Err(e) => return Err(format!("cannot inspect output {rel}: {e}")),
        };
        if meta.is_dir() {
            walk_dir(workspace, rel, &mut found)?;
        } else {
            add(rel.as_str(), &abs, &meta, &mut found)?;
        }
    }
    Ok(found.into_values().collect())
}

/// Refuses an output whose parent directory is not inside the workspace once symlinks
/// are resolved.
fn check_parents(workspace: &Path, rel: &RelPath, abs: &Path) -> Result<(), String> {
    let Some(parent) = abs.parent() else {
        return Ok(());
    };
    match fs::canonicalize(parent) {
        Ok(resolved) if resolved.starts_with(workspace) => Ok(()),
        Ok(resolved) => Err(format!(
            "output {rel} is reached through a symlink that leaves the workspace (to {}); \
             declare a path inside the workspace",
            resolved.display()
        )),
        // A missing parent means a missing output, reported by the caller.
        Err(_) => Ok(()),
    }
}

fn walk_dir(
    workspace: &Path,
    rel: &RelPath,
    found: &mut BTreeMap<String, CacheOutput>,
) -> Result<(), String> {
    let root = rel.to_path(workspace);
    for entry in walkdir::WalkDir::new(&root)
        .follow_links(false)
        .follow_root_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| format!("cannot read output directory {rel}: {e}"))?;
        let sub = entry
            .path()
            .strip_prefix(workspace)
            .map_err(|_| format!("output {rel}: walked outside the workspace"))?;
        let sub = sub.to_str().ok_or_else(|| {
            format!(
                "output {} has a name that is not UTF-8; such files cannot be cached",
                sub.display()
            )
        })?;
        let sub_rel = RelPath::parse(sub).map_err(|e| e.to_string())?;
        if entry.file_type().is_dir() {
            found
                .entry(sub_rel.to_string())
                .or_insert_with(|| CacheOutput::directory(sub_rel.as_str()));
            continue;
        }
        let meta = entry
            .metadata()
            .map_err(|e| format!("cannot inspect output {sub_rel}: {e}"))?;
        add(sub_rel.as_str(), entry.path(), &meta, found)?;
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
    let ft = meta.file_type();
    let out = if ft.is_file() {
        CacheOutput::file(rel, abs, is_executable(meta))
    } else if ft.is_symlink() {
        let target = fs::read_link(abs).map_err(|e| format!("cannot read symlink {rel}: {e}"))?;
        let target = target
            .to_str()
            .ok_or_else(|| format!("symlink {rel} has a target that is not UTF-8"))?;
        let link = RelPath::parse(rel).map_err(|e| e.to_string())?;
        check_symlink_target(&link, target).map_err(|e| {
            format!("{e}; make the link relative and inside the workspace, or do not declare it")
        })?;
        CacheOutput::symlink(rel, target)
    } else {
        return Err(format!(
            "output {rel} is not a regular file, directory or symlink (a socket, FIFO or device); it cannot be cached"
        ));
    };
    found.insert(rel.to_owned(), out);
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use cache_core::OutputContent;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn rels(v: &[&str]) -> Vec<RelPath> {
        v.iter().map(|p| RelPath::parse(p).unwrap()).collect()
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
            OutputContent::File { path, blob } => {
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
}
