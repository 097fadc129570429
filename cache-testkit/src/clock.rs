//! A timer a test fires by hand, so a deadline expires exactly when the test says and
//! never because the machine is slow.

use std::sync::Arc;
use std::time::Duration;

/// The longest a [`ManualClock`] timer waits for [`ManualClock::fire`]: a test that
/// never fires it still ends.
const FALLBACK: Duration = Duration::from_secs(120);

/// A [`cache_core::Sleep`] for [`cache_core::Deadline`] whose timers, whatever their
/// duration, complete only while the clock is fired ([`ManualClock::fire`]; each waits
/// at most two minutes). Until then every call is free to take as long as it needs;
/// a test fires the clock once the call is where it wants it to time out, then
/// [`ManualClock::reset`]s it.
///
/// ```
/// use cache_testkit::ManualClock;
/// let clock = ManualClock::new();
/// let sleep = clock.sleep(); // give it to `Deadline::new`
/// clock.fire(); // every timer, running or new, completes now
/// clock.reset(); // new timers wait again
/// # let _ = sleep;
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    fired: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock that has not fired.
    #[must_use]
    pub fn new() -> Self {
        ManualClock {
            fired: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// The timer: a future per call that completes once the clock is fired.
    #[must_use]
    pub fn sleep(&self) -> cache_core::Sleep {
        let fired = Arc::clone(&self.fired);
        Arc::new(move |_| {
            let mut rx = fired.subscribe();
            Box::pin(async move {
                let _ = tokio::time::timeout(FALLBACK, rx.wait_for(|f| *f)).await;
            })
        })
    }

    /// Completes every timer, those waiting and those made until [`ManualClock::reset`].
    pub fn fire(&self) {
        self.fired.send_replace(true);
    }

    /// New timers wait for the next [`ManualClock::fire`] again.
    pub fn reset(&self) {
        self.fired.send_replace(false);
    }
}
