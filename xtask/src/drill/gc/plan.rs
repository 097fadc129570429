//! When the gc drill's runners use which entry.
//!
//! Every entry is a [`Class::Shared`](super::super::workload::Class::Shared) one:
//! entries of one group (`id % SHARED_GROUPS`) have the same small files (one pack) and
//! the same 1.5 MiB file (one blob), so packs and blobs are shared. Group 0 is in use
//! all the time (two entries for the whole trial), and now and then one more entry of
//! it is used for a while and then dropped: it goes cold and is evicted while the pack
//! and blob it shares stay. The other groups come in episodes: one or two new entries
//! used for half to all of `unused_for`, then nothing of the group until about when gc
//! evicts them (the jitter spans the marker interval and a gc cycle on either side), when
//! the next episode's new entries store the same small files and group file again:
//! the store finds the pack and blob there, unreferenced and older than the grace,
//! while gc may be about to sweep them. The last episode of a group is used until
//! the runners stop (hot).

use super::super::Rng;
use super::super::workload::SHARED_GROUPS;
use std::time::Duration;

/// One entry and when it is in use.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: u64,
    /// From when the runners use it (since the trial started).
    pub from: Duration,
    /// Until when; `None`: until the runners stop (a hot entry).
    pub until: Option<Duration>,
}

impl Task {
    pub fn group(&self) -> u64 {
        self.id % SHARED_GROUPS
    }

    pub fn in_use(&self, at: Duration) -> bool {
        self.from <= at && self.until.is_none_or(|u| at < u)
    }

    pub fn hot(&self) -> bool {
        self.until.is_none()
    }
}

/// The times the drill runs with.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// `gc --unused-for`.
    pub unused_for: Duration,
    /// `gc --grace`.
    pub grace: Duration,
    /// `TASKCACHE_TOUCH_INTERVAL` of every process.
    pub touch: Duration,
    /// How long the runners run.
    pub activity: Duration,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn between(rng: &mut Rng, lo: Duration, hi: Duration) -> Duration {
    Duration::from_millis(rng.range(ms(lo), ms(hi).max(ms(lo) + 1)))
}

/// The entries of one trial, ids from `first` (a multiple of [`SHARED_GROUPS`]).
pub fn plan(first: u64, t: &Timing, rng: &mut Rng) -> Vec<Task> {
    let mut next = vec![0u64; usize::try_from(SHARED_GROUPS).unwrap_or(4)];
    let mut id = |g: u64| {
        let n = &mut next[usize::try_from(g).unwrap_or(0)];
        *n += 1;
        first + (*n - 1) * SHARED_GROUPS + g
    };
    let mut tasks = Vec::new();
    let u = t.unused_for;
    // Group 0: two hot entries, and one that comes and goes every half `unused_for`.
    for _ in 0..2 {
        tasks.push(Task {
            id: id(0),
            from: Duration::ZERO,
            until: None,
        });
    }
    let mut at = u / 4;
    while at + u < t.activity {
        let until = at + between(rng, u / 4, u / 2);
        tasks.push(Task {
            id: id(0),
            from: at,
            until: Some(until),
        });
        at += u / 2;
    }
    // The other groups: episodes, each starting about when the last one's entries
    // are evicted (their last use, plus `unused_for`, give or take the marker
    // interval, the granularity of the store's clock and a gc cycle).
    for g in 1..SHARED_GROUPS {
        let mut from = u * u32::try_from(g - 1).unwrap_or(0) / 3;
        loop {
            let until = from + between(rng, u / 2, u);
            let jitter = between(rng, Duration::ZERO, t.touch + Duration::from_secs(3));
            let next_from = (until + u + Duration::from_millis(1500)).saturating_sub(jitter);
            let last = next_from + Duration::from_secs(2) >= t.activity;
            for _ in 0..rng.range(1, 3) {
                tasks.push(Task {
                    id: id(g),
                    from,
                    until: (!last).then_some(until),
                });
            }
            if last {
                break;
            }
            from = next_from;
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_has_hot_entries_and_revived_groups_have_cold_ones() {
        let t = Timing {
            unused_for: Duration::from_secs(8),
            grace: Duration::from_secs(4),
            touch: Duration::from_secs(1),
            activity: Duration::from_secs(75),
        };
        for seed in 0..20 {
            let tasks = plan(100, &t, &mut Rng::from_seed(seed));
            let mut ids: Vec<u64> = tasks.iter().map(|t| t.id).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), tasks.len(), "ids are unique");
            for g in 0..SHARED_GROUPS {
                let of = |hot: bool| {
                    tasks
                        .iter()
                        .filter(|x| x.group() == g && x.hot() == hot)
                        .count()
                };
                assert!(of(true) >= 1, "group {g} has a hot entry");
                assert!(of(false) >= 2, "group {g} has cold entries");
            }
            for x in &tasks {
                assert!(x.from < t.activity);
                if let Some(u) = x.until {
                    assert!(u > x.from && u < t.activity, "{x:?}");
                }
            }
            // A revived group starts again after its entries went cold, about
            // `unused_for` later.
            for g in 1..SHARED_GROUPS {
                let mut starts: Vec<(Duration, Option<Duration>)> = tasks
                    .iter()
                    .filter(|x| x.group() == g)
                    .map(|x| (x.from, x.until))
                    .collect();
                starts.sort();
                starts.dedup();
                for w in starts.windows(2) {
                    let gap = w[1]
                        .0
                        .saturating_sub(w[0].1.expect("an earlier episode ends"));
                    assert!(
                        gap >= t.unused_for.saturating_sub(Duration::from_secs(3))
                            && gap <= t.unused_for * 2,
                        "{gap:?}"
                    );
                }
            }
        }
    }
}
