//! The real `taskcache` binary as the drills drive it, and the backends it drives.
//!
//! A drill talks to a cache only through [`Backend`]: the arguments and variables that
//! point `taskcache run` at it, a fresh empty cache, whether `verify` exists for it,
//! and (for the corruption drill) its stored objects. `local` is a cache directory;
//! `s3` a bucket on moto ([`super::backend_s3`]); `remote` a BuildGrid of the drill's
//! own behind a new empty local tier per run ([`super::backend_reapi`]); [`super::backends`]
//! opens one by name.

use super::workload::{self, CHECK_ENV, CHECK_EXIT, Class};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The `taskcache` release binary and this program (the step's command).
pub struct Tc {
    pub bin: PathBuf,
    pub xtask: PathBuf,
}

impl Tc {
    /// Builds `taskcache` (release, quietly; a no-op when it is current) and finds it.
    pub fn build() -> Result<Self, String> {
        let target = crate::target_dir();
        crate::run(crate::cargo().args(["build", "--release", "-q", "-p", "cache-cli"]))?;
        let bin = target.join("release").join("taskcache");
        if !bin.is_file() {
            return Err(format!("{} was not built", bin.display()));
        }
        let xtask = std::env::current_exe().map_err(|e| format!("find this program: {e}"))?;
        Ok(Tc { bin, xtask })
    }

    /// `taskcache run` of entry `i` in `ws` against `backend` (not started).
    pub fn run_cmd(&self, backend: &dyn Backend, ws: &Path, i: u64, class: Class) -> Command {
        self.run_cmd_with(backend, ws, i, class, &[])
    }

    /// [`Tc::run_cmd`] with more `taskcache run` options (`--policy P`, ...).
    pub fn run_cmd_with(
        &self,
        backend: &dyn Backend,
        ws: &Path,
        i: u64,
        class: Class,
        opts: &[&str],
    ) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("run")
            .arg("-C")
            .arg(ws)
            .args(backend.run_args())
            .envs(backend.envs())
            .args(opts)
            .args(self.step_args(i, class))
            .env_remove(CHECK_ENV)
            .env_remove(workload::MARK_ENV)
            .env_remove("TASKCACHE_LOG")
            .stdin(Stdio::null());
        c
    }

    /// What follows the options of `taskcache run` or `key` for entry `i`: its
    /// output, its id and the step.
    fn step_args(&self, i: u64, class: Class) -> Vec<OsString> {
        let mut args: Vec<OsString> = [
            "-o".to_owned(),
            format!("out/{i}"),
            "--id".to_owned(),
            format!("drill-{i}"),
            "--".to_owned(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        args.push(self.xtask.clone().into_os_string());
        for a in ["drill", "produce", &i.to_string(), class.as_str()] {
            args.push(a.into());
        }
        args
    }

    /// The key of entry `i` as `taskcache key` prints it (`blake3:<hex>`).
    pub fn key(&self, i: u64, class: Class) -> Result<String, String> {
        let ws = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new(&self.bin)
            .arg("key")
            .arg("-C")
            .arg(ws.path())
            .args(self.step_args(i, class))
            .env_remove("TASKCACHE_LOG")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("start taskcache key: {e}"))?;
        let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || !key.contains(':') {
            return Err(format!(
                "taskcache key of entry {i} exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(key)
    }

    /// Runs entry `i` as a CI step would (a miss runs and stores it); the outputs in
    /// `ws` must then be exactly the entry's, whether restored or produced.
    pub fn run_step(
        &self,
        backend: &dyn Backend,
        ws: &Path,
        i: u64,
        class: Class,
    ) -> Result<Output, String> {
        let out = self
            .run_cmd(backend, ws, i, class)
            .output()
            .map_err(|e| format!("start taskcache: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "taskcache run of entry {i} exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        if out.stdout != workload::stdout(i, class) {
            return Err(format!("taskcache run of entry {i}: wrong stdout"));
        }
        workload::check(ws, i, class)?;
        Ok(out)
    }

    /// Looks entry `i` up read-only in a fresh workspace, without ever producing it: a
    /// miss, or a hit that restored exactly the entry's bytes and stdout. Anything else
    /// (a wrong byte, an error exit) is an `Err`.
    pub fn check_entry(
        &self,
        backend: &dyn Backend,
        i: u64,
        class: Class,
    ) -> Result<Checked, String> {
        self.check_entry_exit(backend, i, class, 0)
    }

    /// [`Tc::check_entry`] of an entry stored with `--cache-failures` and exit `code`.
    pub fn check_entry_exit(
        &self,
        backend: &dyn Backend,
        i: u64,
        class: Class,
        code: i32,
    ) -> Result<Checked, String> {
        let ws = tempfile::tempdir().map_err(|e| e.to_string())?;
        let opts: &[&str] = if code == 0 {
            &["--policy", "readonly"]
        } else {
            &["--policy", "readonly", "--cache-failures"]
        };
        let mut cmd = self.run_cmd_with(backend, ws.path(), i, class, opts);
        cmd.env(CHECK_ENV, "1");
        let out = cmd.output().map_err(|e| format!("start taskcache: {e}"))?;
        match out.status.code() {
            Some(CHECK_EXIT) => Ok(Checked::Miss),
            Some(c) if c == code => {
                if out.stdout != workload::stdout(i, class) {
                    return Err(format!("entry {i}: a hit replayed the wrong stdout"));
                }
                workload::check(ws.path(), i, class)?;
                Ok(Checked::Hit)
            }
            _ => Err(format!(
                "entry {i}: the check run exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }

    /// `taskcache <args> --cache ...` for housekeeping; its output.
    pub fn admin(&self, backend: &dyn Backend, args: &[&str]) -> Result<Output, String> {
        Command::new(&self.bin)
            .args(args)
            .args(backend.admin_args())
            .envs(backend.envs())
            .env_remove("TASKCACHE_LOG")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("start taskcache {}: {e}", args.join(" ")))
    }

    /// `taskcache verify`: what it found and removed.
    pub fn verify(&self, backend: &dyn Backend) -> Result<Verify, String> {
        let out = self.admin(backend, &["verify"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let code = out.status.code();
        if !matches!(code, Some(0 | 1)) {
            return Err(format!(
                "taskcache verify exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let v = Verify::parse(&text).ok_or_else(|| {
            format!(
                "taskcache verify exited {} without a report: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        if (code == Some(1)) != v.removed_any() {
            return Err(format!(
                "verify exited {} but reported {text:?}",
                out.status
            ));
        }
        Ok(v)
    }
}

/// What a check run found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    Hit,
    Miss,
}

/// What `taskcache verify` removed: corrupt blobs, corrupt entries, entries whose
/// blobs were gone, planted links or special files.
#[derive(Debug, Clone, Copy, Default)]
pub struct Verify {
    pub corrupt_blobs: u64,
    pub corrupt_entries: u64,
    pub incomplete_entries: u64,
    pub planted: u64,
}

impl Verify {
    /// "checked B blobs and E entries; removed X corrupt blobs, Y corrupt entries, Z
    /// entries whose blobs were gone and W planted ...".
    fn parse(text: &str) -> Option<Self> {
        let numbers: Vec<u64> = text
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect();
        let &[
            _blobs,
            _entries,
            corrupt_blobs,
            corrupt_entries,
            incomplete_entries,
            planted,
        ] = numbers.get(..6)?
        else {
            return None;
        };
        Some(Verify {
            corrupt_blobs,
            corrupt_entries,
            incomplete_entries,
            planted,
        })
    }

    pub fn removed_any(&self) -> bool {
        self.corrupt_blobs + self.corrupt_entries + self.incomplete_entries + self.planted > 0
    }
}

/// A cache the drills store into through `taskcache`.
pub trait Backend: Send + Sync {
    /// Its name in reports (`local`, `s3`, `remote`).
    fn name(&self) -> &'static str;
    /// What points `taskcache run` at it. Called once per `taskcache` process, so a
    /// backend may hand each run a new scratch directory.
    fn run_args(&self) -> Vec<OsString>;
    /// What points `taskcache verify|stats|gc` at it.
    fn admin_args(&self) -> Vec<OsString>;
    /// Variables every `taskcache` process it runs needs (endpoint, credentials, ...).
    fn envs(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Whether `taskcache verify` works on it (a local directory only). Without it the
    /// crash drill checks every key of the cache after each kill instead.
    fn verifies(&self) -> bool {
        true
    }
    /// Whether a damaged object is replaced by the next store. A REAPI server has no
    /// delete and BuildGrid never overwrites an object it has, so a damaged CAS blob
    /// stays damaged: the entries that need it must then stay misses.
    fn repairs_damage(&self) -> bool {
        true
    }
    /// Starts over with an empty cache.
    fn fresh(&mut self) -> Result<(), String>;
    /// The objects it stores (files of a directory, objects of a bucket), by name.
    fn objects(&self) -> Result<Vec<String>, String>;
    /// One object's bytes.
    fn read_object(&self, name: &str) -> Result<Vec<u8>, String>;
    /// Replaces one object's bytes behind the cache's back.
    fn write_object(&self, name: &str, bytes: &[u8]) -> Result<(), String>;
    /// Deletes one object behind the cache's back.
    fn delete_object(&self, name: &str) -> Result<(), String>;
    /// Copies the whole cache to `to`.
    fn save(&self, to: &Path) -> Result<(), String>;
    /// Starts over with a copy of what [`Backend::save`] saved.
    fn load(&mut self, from: &Path) -> Result<(), String>;
}

/// The local directory cache.
pub struct Local {
    root: PathBuf,
    dir: PathBuf,
    generation: u32,
}

impl Local {
    /// Caches under `root` (`root/cache-N`, a new one per [`Backend::fresh`]).
    pub fn new(root: &Path) -> Self {
        Local {
            root: root.to_path_buf(),
            dir: root.join("cache-0"),
            generation: 0,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Backend for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn run_args(&self) -> Vec<OsString> {
        vec!["--cache".into(), self.dir.clone().into_os_string()]
    }

    fn admin_args(&self) -> Vec<OsString> {
        self.run_args()
    }

    fn fresh(&mut self) -> Result<(), String> {
        let old = self.dir.clone();
        self.generation += 1;
        self.dir = self.root.join(format!("cache-{}", self.generation));
        // Old caches go, so a long drill does not fill the disk.
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| format!("remove {}: {e}", old.display()))?;
        }
        Ok(())
    }

    fn objects(&self) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        walk(&self.dir, "", &mut out)?;
        out.sort();
        Ok(out)
    }

    fn read_object(&self, name: &str) -> Result<Vec<u8>, String> {
        std::fs::read(self.dir.join(name)).map_err(|e| format!("read {name}: {e}"))
    }

    fn write_object(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        std::fs::write(self.dir.join(name), bytes).map_err(|e| format!("write {name}: {e}"))
    }

    fn delete_object(&self, name: &str) -> Result<(), String> {
        std::fs::remove_file(self.dir.join(name)).map_err(|e| format!("delete {name}: {e}"))
    }

    fn save(&self, to: &Path) -> Result<(), String> {
        copy_tree(&self.dir, to)
    }

    fn load(&mut self, from: &Path) -> Result<(), String> {
        self.fresh()?;
        copy_tree(from, &self.dir)
    }
}

/// `cp -a FROM TO`.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|e| format!("start cp: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cp -a {} {} failed", from.display(), to.display()))
    }
}

/// Every regular file below `dir`, as paths relative to it.
pub fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && prefix.is_empty() => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    for e in entries {
        let e = e.map_err(|e| e.to_string())?;
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        let ty = e.file_type().map_err(|e| e.to_string())?;
        if ty.is_dir() {
            walk(&e.path(), &format!("{name}/"), out)?;
        } else if ty.is_file() {
            out.push(name);
        }
    }
    Ok(())
}

/// Copies a failing cache's objects to `target/drill-failures/<what>` for inspection.
pub fn keep_evidence(backend: &dyn Backend, what: &str) {
    let dest = crate::workspace_root()
        .join("target/drill-failures")
        .join(format!("{}-{what}", backend.name()));
    let _ = std::fs::create_dir_all(dest.parent().unwrap_or(&dest));
    match backend.save(&dest) {
        Ok(()) => eprintln!("drill: kept the cache's objects in {}", dest.display()),
        Err(e) => eprintln!("drill: could not keep the cache's objects: {e}"),
    }
}
