//! How many callers of one cache are waiting for each lock key, right now
//! ([`Cache::waiting`](crate::Cache::waiting)): a map touched only by callers whose
//! claim lost, never on the uncontended path.

use std::collections::HashMap;

use parking_lot::Mutex;

/// The callers inside the wait step of an acquisition, per full lock key. Keys with
/// no waiter are removed, so the map holds only the locks being waited for.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    counts: Mutex<HashMap<Vec<u8>, usize>>,
}

impl Waiters {
    /// How many callers wait for `lock_key` now.
    pub(crate) fn count(&self, lock_key: &[u8]) -> usize {
        self.counts.lock().get(lock_key).copied().unwrap_or(0)
    }

    /// Counts one more waiter on `lock_key`, until the returned guard is dropped (when
    /// the wait ends, fails, or its future is dropped).
    pub(crate) fn enter<'a>(&'a self, lock_key: &[u8]) -> Waiting<'a> {
        let mut counts = self.counts.lock();
        match counts.get_mut(lock_key) {
            Some(n) => *n += 1,
            None => {
                counts.insert(lock_key.to_vec(), 1);
            }
        }
        Waiting {
            waiters: self,
            lock_key: lock_key.to_vec(),
        }
    }
}

/// One caller counted as waiting (see [`Waiters::enter`]).
#[must_use = "the caller counts as waiting only while this lives"]
pub(crate) struct Waiting<'a> {
    waiters: &'a Waiters,
    lock_key: Vec<u8>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut counts = self.waiters.counts.lock();
        if let Some(n) = counts.get_mut(self.lock_key.as_slice()) {
            *n -= 1;
            if *n == 0 {
                counts.remove(self.lock_key.as_slice());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key_and_forgets_keys_at_zero() {
        let waiters = Waiters::default();
        assert_eq!(waiters.count(b"a-lock"), 0);
        let a1 = waiters.enter(b"a-lock");
        let a2 = waiters.enter(b"a-lock");
        let b = waiters.enter(b"b-lock");
        assert_eq!(waiters.count(b"a-lock"), 2);
        assert_eq!(waiters.count(b"b-lock"), 1);
        drop(a1);
        assert_eq!(waiters.count(b"a-lock"), 1);
        drop((a2, b));
        assert_eq!(waiters.count(b"a-lock"), 0);
        assert!(waiters.counts.lock().is_empty(), "no entry left at zero");
    }
}
