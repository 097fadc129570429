//! Hit/miss counters and the size estimate, shared by every process on the directory
//! without any lock: each event is one small `O_APPEND` write to `stats/log` (a single
//! `write` call, so concurrent appends never interleave inside a record, and a crash
//! leaves either the whole record or none of it).
//!
//! Records, one per line: `h` (a hit), `m` (a miss), `+N` (N bytes written),
//! `=N` (GC measured N bytes in the cache), and the compacted forms `H N` / `M N`.
//! Lines that do not parse (a record torn by power loss) are skipped; sums saturate
//! (a planted huge count neither panics nor wraps). When the log
//! grows past [`COMPACT_AT`] it is compacted: renamed away (so new appends start a new
//! log), summed, and its sums appended to the new log. An append racing that rename
//! by microseconds can be lost; the counters are statistics, not accounting.

use crate::layout::Layout;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// Log size above which reading it also compacts it.
pub(crate) const COMPACT_AT: u64 = 256 << 10;

/// What the log says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Totals {
    pub hits: u64,
    pub misses: u64,
    /// Last measured size plus bytes written since (an over-estimate: removals by
    /// other processes are only seen at the next GC).
    pub size_estimate: u64,
}

#[derive(Debug)]
pub(crate) struct Counters {
    log: PathBuf,
}

impl Counters {
    pub fn new(layout: &Layout) -> Self {
        Counters {
            log: layout.stats.join("log"),
        }
    }

    /// Appends one record (best effort: a failure is logged, never returned).
    pub fn record(&self, line: &str) {
        let r = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = r {
            tracing::debug!(path = %self.log.display(), error = %e, "could not record cache statistics");
        }
    }

    pub fn hit(&self) {
        self.record("h\n");
    }

    pub fn miss(&self) {
        self.record("m\n");
    }

    pub fn added(&self, bytes: u64) {
        if bytes > 0 {
            self.record(&format!("+{bytes}\n"));
        }
    }

    pub fn measured(&self, bytes: u64) {
        self.record(&format!("={bytes}\n"));
    }

    /// Reads the totals, compacting the log when it has grown large.
    pub fn read(&self, layout: &Layout) -> io::Result<Totals> {
        let text = match fs::read(&self.log) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let totals = parse(&text);
        if text.len() as u64 > COMPACT_AT {
            self.compact(layout)?;
        }
        Ok(totals)
    }

    fn compact(&self, layout: &Layout) -> io::Result<()> {
        let claimed = layout.tmp.join(format!(
            "stats-log-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        match fs::rename(&self.log, &claimed) {
            Ok(()) => {}
            // Another process compacted it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut text = Vec::new();
        fs::File::open(&claimed)?.read_to_end(&mut text)?;
        let t = parse(&text);
        self.record(&format!(
            "H {}\nM {}\n={}\n",
            t.hits, t.misses, t.size_estimate
        ));
        fs::remove_file(&claimed)
    }
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
