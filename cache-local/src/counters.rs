//! Hit/miss counters and the size estimate, shared by every process on the directory
//! without any lock: each event is one small `O_APPEND` write to `stats/log` (a single
//! `write` call, so concurrent appends never interleave inside a record, and a crash
//! leaves either the whole record or none of it).
//!
//! Records, one per line: `h` (a hit), `m` (a miss), `+N` (N bytes written),
//! `=N` (GC measured N bytes in the cache), and the compacted forms `H N` / `M N`.
//! Lines that do not parse (a record torn by power loss) are skipped, and sums
//! saturate. When the log grows past [`COMPACT_AT`] it is compacted (by the append or
//! the read that finds it so large): renamed away (so new appends start a new log),
//! summed, and its sums appended to the new log. An append racing that rename by
//! microseconds can be lost; the counters are statistics, not accounting.
//!
//! The log is in the cache directory, so it is handled as hostile: opened through the
//! `stats` handle without following a link or blocking on a FIFO, and read at most
//! [`MAX_LOG_BYTES`]. A link or special file in its place is ignored by reads and
//! replaced by the next append; nothing is ever written through it.

use crate::claim::STATS_TEMP_PREFIX;
use crate::fsat::{self, Access, FileAt};
use crate::layout::Layout;
use std::fs::File;
use std::io::{self, Read, Write};

/// Log size above which appending to or reading it also compacts it.
pub(crate) const COMPACT_AT: u64 = 256 << 10;

/// The most of a log that is ever read (and so held in memory): a larger one was
/// planted, and is counted up to here, then compacted.
pub(crate) const MAX_LOG_BYTES: u64 = 4 * COMPACT_AT;

const LOG: &str = "log";

/// What the log says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Totals {
    pub hits: u64,
    pub misses: u64,
    /// Last measured size plus bytes written since (an over-estimate: removals by
    /// other processes are only seen at the next GC).
    pub size_estimate: u64,
}

/// Appends one record (best effort: a failure is logged, never returned).
pub(crate) fn record(layout: &Layout, line: &str) {
    if let Err(e) = append(layout, line, true) {
        tracing::debug!(path = %layout.stats.join(LOG).display(), error = %e, "could not record cache statistics");
    }
}

pub(crate) fn hit(layout: &Layout) {
    record(layout, "h\n");
}

pub(crate) fn miss(layout: &Layout) {
    record(layout, "m\n");
}

pub(crate) fn added(layout: &Layout, bytes: u64) {
    if bytes > 0 {
        record(layout, &format!("+{bytes}\n"));
    }
}

pub(crate) fn measured(layout: &Layout, bytes: u64) {
    record(layout, &format!("={bytes}\n"));
}

/// One `O_APPEND` write of `line` to the log; a link or special file in its place is
/// removed (never followed) and a new log created.
fn append(layout: &Layout, line: &str, may_compact: bool) -> io::Result<()> {
    let stats = layout.stats_dir();
    for _ in 0..2 {
        match fsat::open_file_at(stats, LOG, Access::Append)? {
            FileAt::File(mut f, meta) => {
                f.write_all(line.as_bytes())?;
                if may_compact && meta.len > COMPACT_AT {
                    compact(layout)?;
                }
                return Ok(());
            }
            FileAt::Missing => {}
            FileAt::Other(what) => {
                tracing::warn!(path = %layout.stats.join(LOG).display(), "{what} is where the statistics log belongs: removed (never followed), a new log is started");
                fsat::remove_at(stats, LOG)?;
            }
        }
    }
    Ok(())
}

/// Reads at most [`MAX_LOG_BYTES`] of a log and sums it.
fn sum(file: File, len: u64) -> io::Result<Totals> {
    let cap = usize::try_from(len.min(MAX_LOG_BYTES)).unwrap_or(0);
    let mut text = Vec::with_capacity(cap);
    file.take(MAX_LOG_BYTES).read_to_end(&mut text)?;
    Ok(parse(&text))
}

/// Reads the totals, compacting the log when it has grown large. A log that is not a
/// regular file counts as empty.
pub(crate) fn read(layout: &Layout) -> io::Result<Totals> {
    let (totals, len) = match fsat::open_file_at(layout.stats_dir(), LOG, Access::Read)? {
        FileAt::File(f, meta) => (sum(f, meta.len)?, meta.len),
        FileAt::Missing => return Ok(Totals::default()),
        FileAt::Other(what) => {
            tracing::debug!(path = %layout.stats.join(LOG).display(), "{what} is where the statistics log belongs: ignored");
            return Ok(Totals::default());
        }
    };
    if len > COMPACT_AT {
        compact(layout)?;
    }
    Ok(totals)
}

fn compact(layout: &Layout) -> io::Result<()> {
    let claimed = format!(
        "{STATS_TEMP_PREFIX}{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let tmp = layout.tmp_dir();
    match fsat::rename_at(layout.stats_dir(), LOG, tmp, &claimed) {
        Ok(()) => {}
        // Another process compacted it first.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    let t = match fsat::open_file_at(tmp, &claimed, Access::Read) {
        Ok(FileAt::File(f, meta)) => sum(f, meta.len),
        Ok(FileAt::Missing | FileAt::Other(_)) => Ok(Totals::default()),
        Err(e) => Err(e),
    };
    let appended = t.and_then(|t| {
        append(
            layout,
            &format!("H {}\nM {}\n={}\n", t.hits, t.misses, t.size_estimate),
            false,
        )
    });
    let removed = fsat::remove_at(tmp, &claimed);
    appended.and(removed.map(drop))
}

fn parse(text: &[u8]) -> Totals {
    let mut t = Totals::default();
    let mut complete = text;
    // A last line without its newline may still be being written, or torn.
    if let Some(end) = text.iter().rposition(|&b| b == b'\n') {
        complete = &text[..=end];
    } else {
        complete = &complete[..0];
    }
    for line in complete.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let num = |s: &str| s.trim().parse::<u64>().ok();
        match line.as_bytes().first() {
            Some(b'h') if line == "h" => t.hits = t.hits.saturating_add(1),
            Some(b'm') if line == "m" => t.misses = t.misses.saturating_add(1),
            Some(b'H') => t.hits = t.hits.saturating_add(num(&line[1..]).unwrap_or(0)),
            Some(b'M') => t.misses = t.misses.saturating_add(num(&line[1..]).unwrap_or(0)),
            Some(b'+') => {
                t.size_estimate = t.size_estimate.saturating_add(num(&line[1..]).unwrap_or(0));
            }
            Some(b'=') => {
                if let Some(n) = num(&line[1..]) {
                    t.size_estimate = n;
                }
            }
            _ => {}
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_skips_torn_records() {
        let t = parse(b"h\nh\nm\n+10\nH 5\nxx\n=100\n+7\nM 2\nh\0\0\n+3");
        assert_eq!(
            t,
            Totals {
                hits: 7,
                misses: 3,
                size_estimate: 107
            }
        );
        assert_eq!(parse(b""), Totals::default());
    }
}
