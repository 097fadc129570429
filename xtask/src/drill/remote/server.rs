//! A private server for `drill remote`: moto (S3) or BuildGrid (REAPI), installed by
//! the peers modules, started on a port of its own, and killed, frozen, thawed and
//! restarted on that same port while `taskcache` talks to it.

use crate::peers;
use rustix::process::{Pid, Signal, WaitOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    S3,
    Reapi,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::S3 => "s3",
            Kind::Reapi => "remote",
        }
    }

    /// What a restart keeps.
    pub fn restart_keeps(self) -> &'static str {
        match self {
            Kind::S3 => "nothing (moto is in memory)",
            Kind::Reapi => {
                "the CAS blobs on disk, no action-cache entry (BuildGrid's is in memory)"
            }
        }
    }
}

/// The access key the drill's S3 client signs with (moto accepts any).
const SECRET: &str = "drill-secret-access-key";

/// A server of the drill's own.
pub struct Server {
    pub kind: Kind,
    dir: PathBuf,
    venv: PathBuf,
    pub port: u16,
    pid: Option<u32>,
    frozen: bool,
    /// Starts so far (the first one included).
    pub starts: u32,
    /// How long the starts took, in all.
    pub start_time: Duration,
}

impl Server {
    /// Installs the server (once, as `peers up` does) and starts it on a free port,
    /// with its files under `dir`.
    pub fn new(kind: Kind, dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let venv = match kind {
            Kind::S3 => {
                let d = peers::root().join("moto");
                std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
                peers::moto::install(&d)?;
                d.join("venv")
            }
            Kind::Reapi => {
                let d = peers::root().join("buildgrid");
                std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
                peers::buildgrid::install(&d)?
            }
        };
        let mut s = Server {
            kind,
            dir: dir.to_path_buf(),
            venv,
            port: peers::net::free_port()?,
            pid: None,
            frozen: false,
            starts: 0,
            start_time: Duration::ZERO,
        };
        s.start()?;
        Ok(s)
    }

    /// Starts the server on its port and waits until it answers.
    pub fn start(&mut self) -> Result<(), String> {
        if self.pid.is_some() {
            return Err("the server is already running".into());
        }
        let t = Instant::now();
        let pid = match self.kind {
            Kind::S3 => peers::moto::start(&self.dir, &self.venv, self.port)?,
            Kind::Reapi => {
                let options = peers::buildgrid::Options {
                    disk: Some(self.dir.join("cas")),
                    port: Some(self.port),
                    ..Default::default()
                };
                peers::buildgrid::start(&self.dir, &self.venv, &options)?;
                std::fs::read_to_string(self.dir.join("pid"))
                    .ok()
                    .and_then(|p| p.trim().parse().ok())
                    .ok_or("BuildGrid started without a pid file")?
            }
        };
        self.pid = Some(pid);
        self.starts += 1;
        self.start_time += t.elapsed();
        Ok(())
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid.and_then(|p| Pid::from_raw(i32::try_from(p).ok()?)) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    /// SIGKILL, then reaps it (both servers are children of this process).
    pub fn kill(&mut self) {
        self.signal(Signal::KILL);
        if let Some(pid) = self
            .pid
            .take()
            .and_then(|p| Pid::from_raw(i32::try_from(p).ok()?))
        {
            let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
        }
        self.frozen = false;
    }

    /// SIGSTOP: connections stay open and nothing answers.
    pub fn freeze(&mut self) {
        self.signal(Signal::STOP);
        self.frozen = true;
    }

    /// SIGCONT.
    pub fn thaw(&mut self) {
        self.signal(Signal::CONT);
        self.frozen = false;
    }

    pub fn running(&self) -> bool {
        self.pid.is_some()
    }

    /// The `--remote` URL.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::S3 => format!("s3://{}/drill", peers::moto::BUCKET),
            Kind::Reapi => format!("grpc://127.0.0.1:{}", self.port),
        }
    }

    /// The variables an S3 client reads to find this server (none for REAPI).
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        if self.kind != Kind::S3 {
            return Vec::new();
        }
        vec![
            ("AWS_ACCESS_KEY_ID", "drill".into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_REGION", "us-east-1".into()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// What the client needs in its environment.
    pub fn env(&self, cmd: &mut Command) {
        cmd.envs(self.vars());
        for k in [
            "TASKCACHE_REMOTE_TIMEOUT",
            "TASKCACHE_CACHE_TIMEOUT",
            "TASKCACHE_LOG",
        ] {
            cmd.env_remove(k);
        }
    }

    /// The server's log, for a failure report.
    pub fn log_tail(&self) -> String {
        let name = match self.kind {
            Kind::S3 => "moto.log",
            Kind::Reapi => "bgd.log",
        };
        let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or_default().to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.frozen {
            self.thaw();
        }
        self.kill();
    }
}
