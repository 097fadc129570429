//! What the end-to-end tests share: the real `taskcache` binary, run in a temporary
//! workspace with a temporary cache.
//!
//! Every task under test appends a line to a counter file outside the workspace, so a
//! test can tell whether the command really ran or came from the cache.

#![allow(dead_code)] // each test crate uses its own part

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Fixture {
    _tmp: tempfile::TempDir,
    /// The temporary directory holding the others (and the run counter).
    pub root: PathBuf,
    /// The workspace, where commands run.
    pub ws: PathBuf,
    /// The cache directory (`TASKCACHE_CACHE`).
    pub cache: PathBuf,
}

/// Runs `c` to its end.
pub fn exec(mut c: Command) -> Out {
    let o = c.output().expect("run taskcache");
    Out {
        code: o.status.code().expect("taskcache exited normally"),
        stdout: o.stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// What a run of the binary gave.
pub struct Out {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: String,
}

impl Out {
    pub fn stdout_str(&self) -> &str {
        std::str::from_utf8(&self.stdout).expect("utf-8 stdout")
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        )
    }
}

/// A task that counts its runs in `../counter` and writes `out.txt`.
pub const COUNTING: &str = "echo ran >> ../counter; printf 'result\\n' > out.txt; echo done";

impl Fixture {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let ws = root.join("ws");
        fs::create_dir(&ws).unwrap();
        let cache = root.join("cache");
        Fixture {
            _tmp: tmp,
            root,
            ws,
            cache,
        }
    }

    /// The binary with a clean, hermetic environment: the cache from
    /// `TASKCACHE_CACHE`, HOME and XDG dirs inside the temp dir, no inherited
    /// taskcache settings.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_taskcache"));
        c.current_dir(&self.ws)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.root.join("home"))
            .env("XDG_CACHE_HOME", self.root.join("xdg"))
            .env("TASKCACHE_CACHE", &self.cache)
            .stdin(Stdio::null());
        c
    }

    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Out {
        let mut c = self.cmd();
        c.args(args);
        exec(c)
    }

    /// `taskcache run <opts> -- sh -c <script>`.
    pub fn sh(&self, opts: &[&str], script: &str) -> Out {
        let mut args: Vec<&str> = vec!["run"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        self.run(&args)
    }

    pub fn runs(&self) -> usize {
        fs::read_to_string(self.root.join("counter")).map_or(0, |s| s.lines().count())
    }

    pub fn write(&self, rel: &str, data: &str) {
        let p = self.ws.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
}

/// Every file below `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

/// Where `needle` is in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Runs `c`, failing the test if it has not ended after `limit` (a hang).
pub fn exec_within(mut c: Command, limit: Duration) -> Out {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run taskcache");
    let started = Instant::now();
    while child.try_wait().expect("wait for taskcache").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("taskcache hung for {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child
        .wait_with_output()
        .expect("collect taskcache's output");
    Out {
        code: o.status.code().expect("taskcache exited normally"),
        stdout: o.stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// The variables of servers started by `cargo xtask peers up`, in the order asked, or
/// `None` when one is unset: the test is then skipped with one line, or fails under
/// `TASKCACHE_REQUIRE_PEERS=1`.
pub fn peers(test: &str, vars: &[&str]) -> Option<Vec<String>> {
    let got: Option<Vec<String>> = vars
        .iter()
        .map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .collect();
    if got.is_none() {
        assert!(
            std::env::var("TASKCACHE_REQUIRE_PEERS").as_deref() != Ok("1"),
            "{test}: TASKCACHE_REQUIRE_PEERS=1 but one of {vars:?} is not set: run `cargo xtask peers up`"
        );
        eprintln!("skipped {test}: one of {vars:?} is not set (run `cargo xtask peers up`)");
    }
    got
}

impl Fixture {
    /// A key pair from `taskcache keygen`: (`TASKCACHE_SIGNING_KEY`, `TASKCACHE_TRUSTED_KEYS`).
    pub fn keygen(&self) -> (String, String) {
        let k = self.run(&["keygen"]);
        assert_eq!(k.code, 0, "{k:?}");
        let out = k.stdout_str();
        let var = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} in {out}"))
                .to_owned()
        };
        (var("TASKCACHE_SIGNING_KEY"), var("TASKCACHE_TRUSTED_KEYS"))
    }
}

/// Everything below `dir` (not following links) with its kind, size and modification
/// time: two listings are equal only if nothing was created, removed or written.
pub fn listing(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let meta = fs::symlink_metadata(&d).unwrap();
        out.push((
            d.strip_prefix(dir).unwrap().to_path_buf(),
            format!(
                "{:?} {} {:?}",
                meta.file_type(),
                meta.len(),
                meta.modified().unwrap()
            ),
        ));
        if meta.is_dir() {
            todo.extend(fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out.sort();
    out
}
