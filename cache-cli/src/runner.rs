//! Runs the task's command on a miss: no shell, stdin inherited, stdout and stderr
//! streamed live to ours and captured for the cache, within a bound.
//!
//! Each stream is copied by its own thread in chunks, flushed as they come (so
//! progress output without newlines still shows). The two threads write under one lock
//! and note each chunk's stream and length as they write it: the log order a hit
//! replays, so stdout and stderr interleave as they did on this run's terminal. Capture stops at the cap: the
//! stream keeps flowing to the terminal, the captured bytes are dropped, and the run
//! is marked as not cacheable, because an entry with a truncated log would replay
//! something the command did not print. The command never gets the variables holding
//! taskcache's own secrets ([`SECRET_VARS`]): what it prints is stored and shared.

use crate::backend::SECRET_VARS;
use cache_core::LogStream;
use cache_core::storage::{LogChunk, LogOrder, MAX_LOG_CHUNKS};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What one output stream produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Captured {
    /// The bytes, unless the stream went over the cap (then empty).
    pub bytes: Vec<u8>,
    /// The stream went over the cap; `bytes` is not the whole stream.
    pub overflowed: bool,
    /// How many bytes the stream carried in all.
    pub total: u64,
    /// Capturing failed (a read error, or the capture thread died): the bytes are not
    /// the stream, so the run must not be cached.
    pub failed: bool,
}

impl Captured {
    fn failed() -> Self {
        Captured {
            failed: true,
            ..Captured::default()
        }
    }
}

/// The outcome of running the command.
#[derive(Debug)]
pub struct Finished {
    /// Exit code; `128 + N` when killed by signal N (as shells report it).
    pub exit_code: i32,
    /// The signal that killed the command, if one did.
    pub signal: Option<i32>,
    /// Captured stdout.
    pub stdout: Captured,
    /// Captured stderr.
    pub stderr: Captured,
    /// Wall time from spawn to exit.
    pub duration: Duration,
    /// The order stdout and stderr chunks were written in (empty if there were more
    /// than [`MAX_LOG_CHUNKS`] alternations: a hit then replays stdout, then stderr).
    pub log_order: LogOrder,
    /// A signal taskcache received (SIGINT, SIGTERM, SIGHUP, SIGQUIT) and forwarded to
    /// the command: the run was cancelled, so nothing is stored and taskcache exits
    /// 128 + that signal, whatever the command did with it.
    pub forwarded: Option<i32>,
}

/// Why the command did not start.
#[derive(Debug)]
pub struct SpawnError {
    /// The exit code a shell would give (127 not found, 126 not executable).
    pub exit_code: u8,
    /// What happened, for the user.
    pub message: String,
}

/// Runs `command` in `cwd`, teeing its output (see the module docs).
pub fn run(command: &[OsString], cwd: &Path, cap: u64) -> Result<Finished, SpawnError> {
    let (program, args) = command.split_first().ok_or_else(|| SpawnError {
        exit_code: 2,
        message: "no command given after `--`".into(),
    })?;
    let started = Instant::now();
    let caught = Caught::catch();
    let mut child = command_for(program, args, cwd).spawn().map_err(|e| {
        let shown = program.to_string_lossy();
        match e.kind() {
            io::ErrorKind::NotFound => SpawnError {
                exit_code: 127,
                message: format!("command not found: {shown} (check the spelling and PATH)"),
            },
            io::ErrorKind::PermissionDenied => SpawnError {
                exit_code: 126,
                message: format!("cannot execute {shown}: permission denied"),
            },
            _ => SpawnError {
                exit_code: 126,
                message: format!("cannot start {shown}: {e}"),
            },
        }
    })?;
    let relay = Forwarder::start(caught, child.id());
    let out = child.stdout.take().expect("stdout is piped");
    let err = child.stderr.take().expect("stderr is piped");
    let order = Mutex::new(Order::default());
    let (stdout, stderr) = std::thread::scope(|s| {
        let order = &order;
        let o = s.spawn(move || tee(out, io::stdout(), cap, order, LogStream::Stdout));
        let e = s.spawn(move || tee(err, io::stderr(), cap, order, LogStream::Stderr));
        // A capture thread that died lost bytes: never stored as if the log were empty.
        let joined = |h: std::thread::ScopedJoinHandle<'_, Captured>, name: &str| {
            h.join().unwrap_or_else(|_| {
                tracing::warn!("capturing the command's {name} failed; not caching this run");
                Captured::failed()
            })
        };
        (joined(o, "stdout"), joined(e, "stderr"))
    });
    let status = child.wait().map_err(|e| SpawnError {
        exit_code: 1,
        message: format!("lost track of the command: {e}"),
    })?;
    let duration = started.elapsed();
    let forwarded = relay.finish();
    let (exit_code, signal) = exit_code_of(status);
    Ok(Finished {
        exit_code: forwarded.map_or(exit_code, |sig| 128 + sig),
        signal,
        stdout,
        stderr,
        duration,
        log_order: order
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .finish(),
        forwarded,
    })
}

/// The command as it is spawned: in `cwd`, stdin inherited, stdout and stderr piped,
/// and the environment without taskcache's own secrets ([`SECRET_VARS`]).
fn command_for(program: &OsString, args: &[OsString], cwd: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in SECRET_VARS {
        command.env_remove(var);
    }
    command
}

/// The chunks both streams wrote, in order (adjacent chunks of one stream merged).
#[derive(Debug, Default)]
pub struct Order {
    chunks: LogOrder,
    lost: bool,
}

impl Order {
    fn push(&mut self, stream: LogStream, n: usize) {
        if self.lost {
            return;
        }
        if let Some(last) = self.chunks.last_mut().filter(|l| l.stream == stream) {
            last.len += n as u64;
        } else if self.chunks.len() == MAX_LOG_CHUNKS {
            // Too chatty to keep: replayed one stream after the other instead.
            self.lost = true;
            self.chunks = Vec::new();
        } else {
            self.chunks.push(LogChunk {
                stream,
                len: n as u64,
            });
        }
    }

    fn finish(self) -> LogOrder {
        if self.lost { Vec::new() } else { self.chunks }
    }
}

/// While the command runs, the signals a CI runner sends on cancel or timeout
/// (SIGINT, SIGTERM, SIGHUP, SIGQUIT) are caught and passed on to the command, so it
/// is never orphaned; taskcache waits for it and then exits 128 + the signal.
#[cfg(unix)]
struct Forwarder {
    handle: Option<signal_hook::iterator::Handle>,
    thread: Option<std::thread::JoinHandle<Option<i32>>>,
}

/// The signals caught, from before the command starts (so one that comes the moment
/// it starts is queued, not taskcache's death) until it is forwarded.
#[cfg(unix)]
struct Caught(Option<signal_hook::iterator::Signals>);

#[cfg(unix)]
impl Caught {
    fn catch() -> Self {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
        let signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT]);
        if signals.is_err() {
            tracing::warn!("cannot catch signals; a cancelled run may leave its command running");
        }
        Caught(signals.ok())
    }
}

#[cfg(unix)]
impl Forwarder {
    fn start(caught: Caught, pid: u32) -> Self {
        let Some(mut signals) = caught.0 else {
            return Forwarder {
                handle: None,
                thread: None,
            };
        };
        let handle = signals.handle();
        let thread = std::thread::spawn(move || {
            let mut received = None;
            for sig in signals.forever() {
                received.get_or_insert(sig);
                let target = i32::try_from(pid)
                    .ok()
                    .and_then(rustix::process::Pid::from_raw);
                let signal = rustix::process::Signal::from_named_raw(sig);
                if let (Some(target), Some(signal)) = (target, signal) {
                    let _ = rustix::process::kill_process(target, signal);
                }
            }
            received
        });
        Forwarder {
            handle: Some(handle),
            thread: Some(thread),
        }
    }

    /// Stops forwarding (the command has exited) and says which signal came, if any.
    fn finish(mut self) -> Option<i32> {
        if let Some(h) = self.handle.take() {
            h.close();
        }
        self.thread.take().and_then(|t| t.join().ok().flatten())
    }
}

#[cfg(not(unix))]
struct Forwarder;

#[cfg(not(unix))]
struct Caught;

#[cfg(not(unix))]
impl Caught {
    fn catch() -> Self {
        Caught
    }
}

#[cfg(not(unix))]
impl Forwarder {
    fn start(_caught: Caught, _pid: u32) -> Self {
        Forwarder
    }
    fn finish(self) -> Option<i32> {
        None
    }
}

#[cfg(unix)]
fn exit_code_of(status: std::process::ExitStatus) -> (i32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => (c, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        (None, None) => (1, None),
    }
}

#[cfg(not(unix))]
fn exit_code_of(status: std::process::ExitStatus) -> (i32, Option<i32>) {
    (status.code().unwrap_or(1), None)
}

/// Copies `reader` to `writer` chunk by chunk (flushing each), capturing up to `cap`
/// bytes and noting each chunk in `order` as `stream` under the same lock as the write.
/// If `writer` fails (e.g. the terminal went away) the stream is still drained and
/// captured, so the command never blocks on a full pipe.
pub fn tee(
    mut reader: impl Read,
    mut writer: impl Write,
    cap: u64,
    order: &Mutex<Order>,
    stream: LogStream,
) -> Captured {
    let mut captured = Captured::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut writer_ok = true;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "reading the command's output failed; not caching this run");
                captured.failed = true;
                captured.bytes = Vec::new();
                break;
            }
        };
        let chunk = &buf[..n];
        {
            let mut order = order.lock().unwrap_or_else(PoisonError::into_inner);
            if writer_ok
                && writer
                    .write_all(chunk)
                    .and_then(|()| writer.flush())
                    .is_err()
            {
                writer_ok = false;
            }
            order.push(stream, n);
        }
        captured.total += n as u64;
        if !captured.overflowed {
            if captured.total <= cap {
                captured.bytes.extend_from_slice(chunk);
            } else {
                captured.overflowed = true;
                captured.bytes = Vec::new();
            }
        }
    }
    captured
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_error_makes_the_capture_failed_not_empty() {
        struct Breaks(u8);
        impl std::io::Read for Breaks {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.0 += 1;
                if self.0 == 1 {
                    buf[..3].copy_from_slice(b"abc");
                    Ok(3)
                } else {
                    Err(std::io::Error::other("pipe broke"))
                }
            }
        }
        let c = tee(
            Breaks(0),
            std::io::sink(),
            1 << 20,
            &Order::default().into(),
            LogStream::Stdout,
        );
        assert!(c.failed, "{c:?}");
        assert!(c.bytes.is_empty());
    }

    #[test]
    fn tee_copies_and_captures() {
        let mut out = Vec::new();
        let c = tee(
            &b"hello\nworld"[..],
            &mut out,
            100,
            &Order::default().into(),
            LogStream::Stdout,
        );
        assert_eq!(out, b"hello\nworld");
        assert_eq!(c.bytes, b"hello\nworld");
        assert!(!c.overflowed);
        assert_eq!(c.total, 11);
    }

    #[test]
    fn tee_stops_capturing_at_the_cap_but_keeps_streaming() {
        let data = vec![7u8; 200_000];
        let mut out = Vec::new();
        let c = tee(
            &data[..],
            &mut out,
            100_000,
            &Order::default().into(),
            LogStream::Stdout,
        );
        assert_eq!(out, data);
        assert!(c.overflowed);
        assert!(c.bytes.is_empty());
        assert_eq!(c.total, 200_000);
        let exact = tee(
            &data[..100_000],
            io::sink(),
            100_000,
            &Order::default().into(),
            LogStream::Stdout,
        );
        assert!(!exact.overflowed);
        assert_eq!(exact.bytes.len(), 100_000);
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn tee_drains_when_the_writer_breaks() {
        let data = vec![1u8; 300_000];
        let c = tee(
            &data[..],
            Broken,
            u64::MAX,
            &Order::default().into(),
            LogStream::Stdout,
        );
        assert_eq!(c.bytes, data);
    }

    #[test]
    fn the_command_never_gets_taskcaches_secrets() {
        let c = command_for(&"env".into(), &[], Path::new("."));
        let removed: Vec<_> = c.get_envs().filter(|(_, v)| v.is_none()).collect();
        for var in SECRET_VARS {
            assert!(
                removed.iter().any(|(k, _)| k == var),
                "{var} reaches the command"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn runs_and_reports_exit_codes_and_signals() {
        let dir = tempfile::tempdir().unwrap();
        let sh = |script: &str| vec![OsString::from("sh"), "-c".into(), script.into()];
        let f = run(&sh("printf out; printf err >&2; exit 3"), dir.path(), 1024).unwrap();
        assert_eq!(f.exit_code, 3);
        assert_eq!(f.stdout.bytes, b"out");
        assert_eq!(f.stderr.bytes, b"err");
        assert_eq!(f.signal, None);
        let f = run(&sh("kill -TERM $$"), dir.path(), 1024).unwrap();
        assert_eq!((f.exit_code, f.signal), (128 + 15, Some(15)));
        let f = run(&sh("pwd"), dir.path(), 1024).unwrap();
        let pwd = String::from_utf8(f.stdout.bytes).unwrap();
        assert_eq!(
            std::fs::canonicalize(pwd.trim()).unwrap(),
            std::fs::canonicalize(dir.path()).unwrap()
        );
        let e = run(&["definitely-not-a-command-xyz".into()], dir.path(), 1).unwrap_err();
        assert_eq!(e.exit_code, 127);
        assert!(e.message.contains("not found"));
    }
}
