//! A few results of recent lookups, kept for seconds so that the calls of one hit
//! (`check`, then `restore_outputs` and `get_log_bytes`) see the same answer. Small and
//! short-lived by design: it joins the calls of one hit, it is not a cache of its own.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Recent<K, V> {
    inner: Mutex<Inner<K, V>>,
}

#[derive(Debug)]
struct Inner<K, V> {
    items: Vec<(K, Instant, V)>,
    /// Bumped by every `forget`: a lookup keeps its result only if no store began or
    /// ended while it read (else it could keep an entry that was just replaced).
    epoch: u64,
}

impl<K, V> Default for Recent<K, V> {
    fn default() -> Self {
        Recent {
            inner: Mutex::new(Inner {
                items: Vec::new(),
                epoch: 0,
            }),
        }
    }
}

impl<K: PartialEq, V: Clone> Recent<K, V> {
    /// How many results are kept.
    pub(crate) const MAX: usize = 16;
    /// How long a result is reused after its lookup.
    pub(crate) const TTL: Duration = Duration::from_secs(5);

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The epoch to pass to [`Recent::keep`], taken before the lookup reads anything.
    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Keeps `value` for `key`, unless something was forgotten since `epoch`.
    pub(crate) fn keep(&self, key: K, value: V, epoch: u64) {
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        inner
            .items
            .retain(|(k, at, _)| *k != key && at.elapsed() < Self::TTL);
        if inner.items.len() >= Self::MAX {
            inner.items.remove(0);
        }
        inner.items.push((key, Instant::now(), value));
    }

    pub(crate) fn get(&self, key: &K) -> Option<V> {
        self.lock()
            .items
            .iter()
            .find(|(k, at, _)| k == key && at.elapsed() < Self::TTL)
            .map(|(_, _, v)| v.clone())
    }

    pub(crate) fn forget(&self, key: &K) {
        let mut inner = self.lock();
        inner.epoch = inner.epoch.wrapping_add(1);
        inner.items.retain(|(k, _, _)| k != key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_forgets_and_refuses_results_that_overlapped_a_forget() {
        let r: Recent<u32, &str> = Recent::default();
        let e = r.epoch();
        r.keep(1, "one", e);
        assert_eq!(r.get(&1), Some("one"));
        let e = r.epoch();
        r.forget(&1);
        assert_eq!(r.get(&1), None);
        r.keep(1, "stale", e);
        assert_eq!(
            r.get(&1),
            None,
            "a lookup that overlapped a forget keeps nothing"
        );
        let e = r.epoch();
        for i in 0..40 {
            r.keep(i, "x", e);
        }
        assert_eq!(r.get(&39), Some("x"));
        assert_eq!(r.get(&0), None, "at most MAX results");
    }
}
