//! Replaying a hit as an executor does: whether a cached run is replayed at all
//! ([`accepts_cached_exit`]), and its logs in the order the task wrote them
//! ([`replay_logs`], [`Hit::replay_logs`]). The `taskcache` command uses these; an
//! executor that does the same replays a hit exactly as the command would.

use crate::storage::LogChunk;
use crate::{BackendResult, Hit, LogStream};
use std::io::{self, Write};

/// Whether a hit whose cached run exited with `exit_code` is replayed: a success
/// always; a failure only when the executor caches failures (`accept_failures`, the
/// command's `--cache-failures`). Otherwise the task runs again, so a failure cached
/// by one job is never a later job's answer unless both opted in.
///
/// ```
/// assert!(cache_core::accepts_cached_exit(0, false));
/// assert!(!cache_core::accepts_cached_exit(3, false));
/// assert!(cache_core::accepts_cached_exit(3, true));
/// ```
#[must_use]
pub fn accepts_cached_exit(exit_code: i32, accept_failures: bool) -> bool {
    exit_code == 0 || accept_failures
}

/// How each stream of a [`replay_logs`] went: `Ok` when all of it was written. A
/// stream that failed was not written further; the other one went on.
#[derive(Debug)]
pub struct Replayed {
    /// The first error writing stdout, if any.
    pub stdout: io::Result<()>,
    /// The first error writing stderr, if any.
    pub stderr: io::Result<()>,
}

impl Replayed {
    /// Each stream's first error other than a closed pipe (`| head` closing stdout is
    /// how a reader says it has seen enough, not a failure), with the stream's name.
    pub fn errors(&self) -> impl Iterator<Item = (&'static str, &io::Error)> {
        [("stdout", &self.stdout), ("stderr", &self.stderr)]
            .into_iter()
            .filter_map(|(name, r)| r.as_ref().err().map(|e| (name, e)))
            .filter(|(_, e)| e.kind() != io::ErrorKind::BrokenPipe)
    }
}

/// Writes a cached run's logs as the task wrote them: chunk by chunk in `order` (a
/// hit's [`Hit::log_order`]), each chunk flushed so the two streams interleave on a
/// terminal as they did; stdout then stderr when no order was recorded (`order`
/// empty), and whatever `order` does not cover (nothing, for a valid record) last. A
/// stream whose writer fails is not written further, the other goes on.
///
/// ```
/// use cache_core::{LogStream, replay_logs, storage::LogChunk};
/// let order = [
///     LogChunk { stream: LogStream::Stdout, len: 2 },
///     LogChunk { stream: LogStream::Stderr, len: 2 },
///     LogChunk { stream: LogStream::Stdout, len: 2 },
/// ];
/// let (mut out, mut err) = (Vec::new(), Vec::new());
/// let r = replay_logs(b"o1o2", b"e1", &order, &mut out, &mut err);
/// assert!(r.stdout.is_ok() && r.stderr.is_ok());
/// assert_eq!((out.as_slice(), err.as_slice()), (&b"o1o2"[..], &b"e1"[..]));
/// ```
pub fn replay_logs(
    stdout: &[u8],
    stderr: &[u8],
    order: &[LogChunk],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Replayed {
    let logs = [stdout, stderr];
    let mut pos = [0usize; 2];
    let mut result = [Ok(()), Ok(())];
    let mut write = |i: usize, bytes: &[u8]| {
        if result[i].is_err() || bytes.is_empty() {
            return;
        }
        let w: &mut dyn Write = if i == 0 { &mut *out } else { &mut *err };
        result[i] = w.write_all(bytes).and_then(|()| w.flush());
    };
    for c in order {
        let i = usize::from(c.stream == LogStream::Stderr);
        let end = pos[i]
            .saturating_add(usize::try_from(c.len).unwrap_or(usize::MAX))
            .min(logs[i].len());
        write(i, &logs[i][pos[i]..end]);
        pos[i] = end;
    }
    for i in 0..2 {
        write(i, &logs[i][pos[i]..]);
    }
    let [stdout, stderr] = result;
    Replayed { stdout, stderr }
}

impl Hit {
    /// Whether an executor replays this hit ([`accepts_cached_exit`] of its exit code):
    /// when not, it runs the task as on a miss.
    #[must_use]
    pub fn is_accepted(&self, accept_failures: bool) -> bool {
        accepts_cached_exit(self.exit_code(), accept_failures)
    }

    /// Reads this hit's logs ([`Hit::logs_up_to`]: each stream verified and at most
    /// `limit` bytes, so memory stays bounded by twice `limit`) and writes them to `out`
    /// and `err` in the recorded order ([`replay_logs`]).
    ///
    /// A failed read is `Err` before anything is written, so an executor can still fall
    /// back to running the task; an executor that must also restore before showing
    /// anything reads the logs first, restores, then calls [`replay_logs`] itself.
    pub async fn replay_logs(
        &self,
        limit: u64,
        out: &mut (dyn Write + Send),
        err: &mut (dyn Write + Send),
    ) -> BackendResult<Replayed> {
        let (stdout, stderr) = self.logs_up_to(limit).await?;
        Ok(replay_logs(
            stdout.as_deref().unwrap_or_default(),
            stderr.as_deref().unwrap_or_default(),
            self.log_order(),
            out,
            err,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(stream: LogStream, len: u64) -> LogChunk {
        LogChunk { stream, len }
    }

    /// Both writers in one: what a terminal shows.
    #[derive(Clone, Default)]
    struct Screen(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Screen {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn logs_interleave_in_the_recorded_order() {
        use LogStream::{Stderr, Stdout};
        let order = [chunk(Stdout, 3), chunk(Stderr, 4), chunk(Stdout, 4)];
        let screen = Screen::default();
        let r = replay_logs(
            b"one\ntwo\n",
            b"err\n",
            &order,
            &mut screen.clone(),
            &mut screen.clone(),
        );
        assert!(r.stdout.is_ok() && r.stderr.is_ok());
        assert_eq!(screen.0.lock().unwrap().as_slice(), b"oneerr\n\ntwo\n");
    }

    #[test]
    fn without_an_order_stdout_comes_first_and_nothing_is_lost() {
        let screen = Screen::default();
        replay_logs(
            b"out",
            b"err",
            &[],
            &mut screen.clone(),
            &mut screen.clone(),
        );
        assert_eq!(screen.0.lock().unwrap().as_slice(), b"outerr");
        // An order that covers less than the logs: the rest still comes out.
        let screen = Screen::default();
        let short = [chunk(LogStream::Stderr, 1)];
        replay_logs(
            b"out",
            b"err",
            &short,
            &mut screen.clone(),
            &mut screen.clone(),
        );
        assert_eq!(screen.0.lock().unwrap().as_slice(), b"eoutrr");
    }

    #[test]
    fn a_failing_stream_stops_alone_and_a_closed_pipe_is_no_error() {
        struct Broken(io::ErrorKind, u32);
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                self.1 += 1;
                Err(self.0.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        use LogStream::{Stderr, Stdout};
        let order = [chunk(Stdout, 1), chunk(Stderr, 1), chunk(Stdout, 1)];
        let mut out = Broken(io::ErrorKind::BrokenPipe, 0);
        let mut err = Vec::new();
        let r = replay_logs(b"ab", b"e", &order, &mut out, &mut err);
        assert_eq!(out.1, 1, "a stream that failed is not written again");
        assert_eq!(err, b"e");
        assert!(r.stdout.is_err() && r.stderr.is_ok());
        assert_eq!(r.errors().count(), 0, "a closed pipe is not reported");
        let mut out = Broken(io::ErrorKind::StorageFull, 0);
        let r = replay_logs(b"ab", b"", &[], &mut out, &mut Vec::new());
        let errors: Vec<_> = r.errors().map(|(name, _)| name).collect();
        assert_eq!(errors, ["stdout"]);
    }

    #[test]
    fn only_successes_are_accepted_unless_failures_are() {
        assert!(accepts_cached_exit(0, false) && accepts_cached_exit(0, true));
        for code in [1, 2, 127, -1] {
            assert!(!accepts_cached_exit(code, false), "{code}");
            assert!(accepts_cached_exit(code, true), "{code}");
        }
    }
}
