//! `drill disk`: the local cache on a 64 MiB tmpfs. Each trial stores three small
//! entries, fills the filesystem until a chosen amount is left (nothing to 24 MiB, so
//! the store fails in its big blob, its small blobs, or its entry, or fits), and runs a step
//! with a 20 MiB output (half of them exiting 3 with `--cache-failures`). That run must
//! exit with the step's own code and produce its outputs; a store that did not fit must
//! say so clearly and leave no entry and no temporary file; the earlier entries must
//! still hit; once the filler is gone the same step must store and hit.
//!
//! Needs `mount -t tmpfs` (root or CAP_SYS_ADMIN); elsewhere it is skipped, saying so.

use super::taskcache::{Backend, Checked, Local, Tc, keep_evidence};
use super::workload::{self, Class, EXIT_ENV};
use super::{Outcome, Rng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const SIZE_MIB: u64 = 64;

/// Left free before the big store: from nothing to more than it needs. Levels that fit
/// and levels that do not alternate at the start, so the CI-sized drill (4 trials)
/// sees both.
const FREE: [u64; 11] = [
    0,
    24 << 20,
    4 << 10,
    21 << 20,
    16 << 10,
    64 << 10,
    200 << 10,
    1 << 20,
    5 << 20,
    15 << 20,
    20 << 20,
];

/// A tmpfs mounted for the drill, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn new(at: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={SIZE_MIB}m"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Mount(at.to_path_buf()))
        } else {
            Err(format!(
                "cannot mount a {SIZE_MIB} MiB tmpfs here (needs root or CAP_SYS_ADMIN): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

pub fn run(
    tc: &Tc,
    backend: &mut dyn Backend,
    trials: u32,
    rng: &mut Rng,
) -> Result<Outcome, String> {
    let started = Instant::now();
    if backend.name() != "local" {
        return Ok(Outcome {
            skipped: Some(format!(
                "a full disk is a local-tier fault; backend {} has none",
                backend.name()
            )),
            ..Outcome::default()
        });
    }
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mount = match Mount::new(&scratch.path().join("small-fs")) {
        Ok(m) => m,
        Err(why) => {
            return Ok(Outcome {
                skipped: Some(why),
                ..Outcome::default()
            });
        }
    };
    let mut local = Local::new(&mount.0);
    let mut out = Outcome::default();
    let (mut refused, mut stored) = (0u32, 0u32);
    for n in 0..trials {
        local.fresh()?;
        let free = FREE[usize::try_from(u64::from(n) % FREE.len() as u64).unwrap_or(0)]
            + rng.range(0, 4096);
        let code = if rng.range(0, 2) == 0 { 0 } else { 3 };
        out.trials += 1;
        match trial(
            tc,
            &local,
            &mount.0,
            scratch.path(),
            u64::from(n) * 10,
            free,
            code,
        ) {
            Ok(true) => stored += 1,
            Ok(false) => refused += 1,
            Err(e) => {
                out.failures += 1;
                eprintln!("drill disk: trial {n} ({free} bytes free, exit {code}): FAILURE: {e}");
                keep_evidence(&local, &format!("disk-{n}"));
            }
        }
        let _ = std::fs::remove_file(mount.0.join("filler"));
    }
    out.note = format!(
        "{SIZE_MIB} MiB tmpfs: {refused} stores did not fit (clear warning, no entry), \
         {stored} fitted"
    );
    out.time = started.elapsed();
    Ok(out)
}

/// One trial; `Ok(stored)`: whether the big store fitted before space was freed.
fn trial(
    tc: &Tc,
    local: &Local,
    fs: &Path,
    scratch: &Path,
    base: u64,
    free: u64,
    code: i32,
) -> Result<bool, String> {
    for i in base..base + 3 {
        let ws = tempfile::tempdir_in(scratch).map_err(|e| e.to_string())?;
        tc.run_step(local, ws.path(), i, Class::Small)?;
    }
    fill(fs, free)?;
    let big = base + 3;
    let opts: &[&str] = if code == 0 {
        &[]
    } else {
        &["--cache-failures"]
    };
    let ws = tempfile::tempdir_in(scratch).map_err(|e| e.to_string())?;
    let run = tc
        .run_cmd_with(local, ws.path(), big, Class::Medium, opts)
        .env(EXIT_ENV, code.to_string())
        .output()
        .map_err(|e| format!("start taskcache: {e}"))?;
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    if run.status.code() != Some(code) {
        return Err(format!(
            "the step exits {code}, taskcache exited {}: {stderr}",
            run.status
        ));
    }
    workload::check(ws.path(), big, Class::Medium)?;
    let fitted = match tc.check_entry_exit(local, big, Class::Medium, code)? {
        Checked::Hit => true,
        Checked::Miss => {
            if !(stderr.contains("could not store") && stderr.contains("No space left")) {
                return Err(format!(
                    "the store failed without a clear message: {stderr:?}"
                ));
            }
            false
        }
    };
    let temps: Vec<_> = std::fs::read_dir(local.dir().join("tmp"))
        .map_err(|e| format!("tmp: {e}"))?
        .collect();
    if !temps.is_empty() {
        return Err(format!(
            "{} temporary files left in tmp/ after the store",
            temps.len()
        ));
    }
    // Still full: the earlier entries are served.
    for i in base..base + 3 {
        if tc.check_entry(local, i, Class::Small)? != Checked::Hit {
            return Err(format!(
                "entry {i}, stored before the disk filled, no longer hits"
            ));
        }
    }
    let v = tc.verify(local)?;
    if v.removed_any() {
        return Err(format!("verify found a partial or corrupt entry: {v:?}"));
    }
    // Space again: the same step stores.
    std::fs::remove_file(fs.join("filler")).map_err(|e| format!("remove the filler: {e}"))?;
    let ws = tempfile::tempdir_in(scratch).map_err(|e| e.to_string())?;
    let again = tc
        .run_cmd_with(local, ws.path(), big, Class::Medium, opts)
        .env(EXIT_ENV, code.to_string())
        .output()
        .map_err(|e| format!("start taskcache: {e}"))?;
    if again.status.code() != Some(code) {
        return Err(format!(
            "after freeing space the run exited {}",
            again.status
        ));
    }
    if tc.check_entry_exit(local, big, Class::Medium, code)? != Checked::Hit {
        return Err(format!(
            "after freeing space the store still does not hit: {}",
            String::from_utf8_lossy(&again.stderr)
        ));
    }
    Ok(fitted)
}

/// Writes `fs/filler` until about `free` bytes are left.
fn fill(fs: &Path, free: u64) -> Result<(), String> {
    let st = rustix::fs::statvfs(fs).map_err(|e| format!("statvfs: {e}"))?;
    let avail = st.f_bavail * st.f_frsize;
    let mut left = avail.saturating_sub(free);
    let mut f = std::fs::File::create(fs.join("filler")).map_err(|e| format!("filler: {e}"))?;
    let chunk = vec![0xa5u8; 1 << 20];
    while left > 0 {
        let n = usize::try_from(left.min(1 << 20)).unwrap_or(1 << 20);
        if let Err(e) = f.write_all(&chunk[..n]) {
            // A filesystem that counts blocks differently: full is full enough.
            if e.raw_os_error() == Some(28) {
                break;
            }
            return Err(format!("filler: {e}"));
        }
        left -= n as u64;
    }
    f.sync_all().map_err(|e| format!("filler: {e}"))
}
