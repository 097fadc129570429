//! `--backend remote`: a BuildGrid of the drill's own (`target/peers/buildgrid-drill`,
//! its own port) whose CAS is BuildGrid's disk storage, so the drill damages CAS blobs
//! (files of `storage/cas/objects/`) behind the server's back. `taskcache` reaches a
//! REAPI server only as `--remote` behind a local tier, so every `taskcache` process
//! gets a NEW empty local `--cache` directory: every hit really comes from the server.
//!
//! BuildGrid's action cache keeps each `ActionResult` as a CAS blob (so the drill
//! damages results too); the map from action to result lives in its memory and cannot
//! be emptied, so a fresh
//! cache is a new salt: a variable the key sees (`-e TASKCACHE_DRILL_SALT`), so keys of
//! earlier caches are never looked up again; their blobs are deleted from the disk.
//!
//! What BuildGrid does with damage (0.9.1, disk storage): it serves a blob's file as
//! it is (no check on read), and a write of a blob it has is a no-op (`os.link` onto
//! an existing name), so a damaged blob stays damaged until it is deleted. taskcache
//! must catch every damaged byte (cache-core verifies every blob it reads).

use super::taskcache::{Backend, copy_tree, walk};
use crate::peers::buildgrid;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The variable the key sees: a new value per fresh cache.
const SALT_VAR: &str = "TASKCACHE_DRILL_SALT";

/// A drill-owned BuildGrid with its CAS on disk.
pub struct Reapi {
    url: String,
    server: PathBuf,
    /// BuildGrid's `cas/objects`: one file per blob, `xx/yyyy...` by hash.
    objects: PathBuf,
    /// Where each run's empty local tier is made.
    locals: PathBuf,
    next_local: AtomicU64,
    salt: String,
    generation: u64,
}

impl Reapi {
    /// Installs BuildGrid (once, the same venv as `peers up`) and starts the drill's own
    /// server (or reuses one the drill left running); `root` holds the local tiers.
    pub fn start(root: &Path) -> Result<Self, String> {
        let venv = buildgrid::install(&crate::peers::root().join("buildgrid"))?;
        let server = crate::peers::root().join("buildgrid-drill");
        let disk = server.join("storage");
        std::fs::create_dir_all(&server)
            .map_err(|e| format!("create {}: {e}", server.display()))?;
        let opts = buildgrid::Options {
            disk: Some(disk.clone()),
            ..Default::default()
        };
        let vars =
            buildgrid::start(&server, &venv, &opts).map_err(|e| format!("buildgrid: {e}"))?;
        let url = vars
            .iter()
            .find(|(k, _)| *k == "TASKCACHE_TEST_REAPI")
            .map(|(_, v)| v.clone())
            .ok_or("buildgrid did not say its URL")?;
        let locals = root.join("reapi-locals");
        std::fs::create_dir_all(&locals).map_err(|e| e.to_string())?;
        let mut r = Reapi {
            url,
            server,
            objects: disk.join("cas/objects"),
            locals,
            next_local: AtomicU64::new(0),
            salt: String::new(),
            generation: 0,
        };
        r.fresh()?;
        Ok(r)
    }

    /// Deletes every blob file (BuildGrid's directories stay: it made them at start
    /// and writes into them).
    fn clear(&self) -> Result<(), String> {
        for name in self.objects()? {
            self.delete_object(&name)?;
        }
        Ok(())
    }
}

impl Drop for Reapi {
    fn drop(&mut self) {
        let _ = buildgrid::down(&self.server);
        let _ = std::fs::remove_dir_all(self.server.join("storage"));
        let _ = std::fs::remove_dir_all(&self.locals);
    }
}

impl Backend for Reapi {
    fn name(&self) -> &'static str {
        "remote"
    }

    fn run_args(&self) -> Vec<OsString> {
        // A new empty local tier per process. The drills run one `taskcache` at a time
        // (`many` is local only), so the ones before have exited: they go, or 100 MiB
        // restores would fill the disk.
        let n = self.next_local.fetch_add(1, Ordering::Relaxed);
        if n > 0 {
            let _ = std::fs::remove_dir_all(self.locals.join((n - 1).to_string()));
        }
        vec![
            "--cache".into(),
            self.locals.join(n.to_string()).into_os_string(),
            "--remote".into(),
            self.url.clone().into(),
            "-e".into(),
            SALT_VAR.into(),
        ]
    }

    /// Housekeeping works on a local directory only: the drills call none for this
    /// backend (`verify` does not exist for it; `many` and `disk` are local only).
    fn admin_args(&self) -> Vec<OsString> {
        vec!["--cache".into(), self.locals.join("admin").into_os_string()]
    }

    fn envs(&self) -> Vec<(String, String)> {
        vec![(SALT_VAR.to_owned(), self.salt.clone())]
    }

    fn verifies(&self) -> bool {
        false
    }

    fn repairs_damage(&self) -> bool {
        false
    }

    fn fresh(&mut self) -> Result<(), String> {
        self.clear()?;
        self.generation += 1;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.salt = format!("{}-{nanos}-{}", std::process::id(), self.generation);
        Ok(())
    }

    fn objects(&self) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        walk(&self.objects, "", &mut out)?;
        out.sort();
        Ok(out)
    }

    fn read_object(&self, name: &str) -> Result<Vec<u8>, String> {
        std::fs::read(self.objects.join(name)).map_err(|e| format!("read CAS {name}: {e}"))
    }

    fn write_object(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        std::fs::write(self.objects.join(name), bytes).map_err(|e| format!("write CAS {name}: {e}"))
    }

    fn delete_object(&self, name: &str) -> Result<(), String> {
        std::fs::remove_file(self.objects.join(name)).map_err(|e| format!("delete CAS {name}: {e}"))
    }

    fn save(&self, to: &Path) -> Result<(), String> {
        copy_tree(&self.objects, to)
    }

    /// The saved blobs back in place, under the same salt: the action cache (in the
    /// server's memory) still holds the saved cache's entries, so this restores it.
    fn load(&mut self, from: &Path) -> Result<(), String> {
        self.clear()?;
        let mut names = Vec::new();
        walk(from, "", &mut names)?;
        for name in names {
            std::fs::copy(from.join(&name), self.objects.join(&name))
                .map_err(|e| format!("restore CAS {name}: {e}"))?;
        }
        Ok(())
    }
}
