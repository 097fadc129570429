//! Diagnostics on stderr through `tracing`.
//!
//! Quiet by default: warnings and errors only. `-v` adds taskcache's own decision lines
//! (info level; for `stats`, `gc` and `verify`, the local cache's notes), `-vv` debug
//! logs from every crate, which include everything that went into a key. `TASKCACHE_LOG`
//! takes a full `tracing` filter (e.g. `debug`, `cache_core=trace`) and overrides both.
//!
//! Lines read `taskcache: warning: ...`, `taskcache: hit ...`: no timestamps or colours,
//! since CI logs add their own.

use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The environment variable holding a `tracing` filter.
pub const LOG_VAR: &str = "TASKCACHE_LOG";

/// Installs the stderr subscriber for verbosity `verbose` (the count of `-v`); `admin`:
/// for a housekeeping command, whose `-v` shows the local cache's notes.
pub fn init(verbose: u8, admin: bool) {
    let base = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(Line)
        .with_max_level(LevelFilter::TRACE)
        .finish();
    let custom = std::env::var(LOG_VAR).ok().filter(|v| !v.is_empty());
    let filter = custom.and_then(|f| match EnvFilter::try_new(&f) {
        Ok(filter) => Some(filter),
        Err(e) => {
            eprintln!("taskcache: warning: ignoring {LOG_VAR}={f:?}: {e}");
            None
        }
    });
    // `try_init` fails only if a subscriber is already installed: nothing to do then.
    let _ = match filter {
        Some(f) => base.with(f).try_init(),
        None => base.with(default_targets(verbose, admin)).try_init(),
    };
}

fn default_targets(verbose: u8, admin: bool) -> Targets {
    match verbose {
        0 => Targets::new().with_default(LevelFilter::WARN),
        1 if admin => Targets::new()
            .with_default(LevelFilter::WARN)
            .with_target("taskcache", LevelFilter::INFO)
            .with_target("cache_local", LevelFilter::INFO),
        1 => Targets::new()
            .with_default(LevelFilter::WARN)
            .with_target("taskcache", LevelFilter::INFO),
        _ => Targets::new().with_default(LevelFilter::DEBUG),
    }
}

/// `taskcache: <level word>: message field=value ...`.
struct Line;

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = *event.metadata().level();
        let word = if level == Level::ERROR {
            "error: "
        } else if level == Level::WARN {
            "warning: "
        } else if level == Level::INFO {
            ""
        } else {
            "debug: "
        };
        write!(writer, "taskcache: {word}")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
