//! A spinner for cache transfers that take over a second, on a terminal only: never in
//! a captured log (CI output, a file, a pipe), where it would be noise in every hit.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;

/// How long a cache call runs before the spinner appears.
const AFTER: Duration = Duration::from_secs(1);

/// Awaits `work`; if it is still running after a second and stderr is a terminal,
/// shows `what` with a spinner and the elapsed time until it ends (then clears it).
pub async fn shown<T>(what: &str, work: impl Future<Output = T>) -> T {
    if !std::io::stderr().is_terminal() {
        return work.await;
    }
    let mut work = std::pin::pin!(work);
    tokio::select! {
        r = &mut work => return r,
        () = tokio::time::sleep(AFTER) => {}
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_elapsed(AFTER);
    if let Ok(style) = ProgressStyle::with_template("{spinner} taskcache: {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    let r = work.await;
    bar.finish_and_clear();
    r
}
