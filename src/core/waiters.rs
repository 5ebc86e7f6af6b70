//! How many callers of one cache are waiting for each lock key, right now
//! ([`Cache::waiting`](crate::Cache::waiting)), and who among them claims the key
//! again after a wake: a map touched only by callers whose claim lost, never on the
//! uncontended path.
//!
//! The re-claim turn keeps a cache's waiters from stampeding the server: when a
//! release (or a lease end) wakes them all, the first takes the turn and claims; the
//! others *follow*: they wait for its result, take it for their own lost claim (the
//! new holder is the claimer, or whoever beat it) and wait again for that holder. At
//! most one claim per cache is in flight per key after a wake.

use std::collections::HashMap;

use event_listener::{Event, EventListener};
use parking_lot::Mutex;

#[derive(Debug, Default)]
struct Entry {
    /// Callers inside a wait (the backend's, or following a claimer).
    count: usize,
    /// A waiter is claiming the key again after a wake.
    claiming: bool,
    /// Bumped when a re-claim ends (with a result or not).
    round: u64,
    /// The holder the last re-claim found: `Some(holder)` when it got an answer
    /// (`holder` the winner's token, `None` when the backend did not tell it).
    result: Option<Option<Vec<u8>>>,
}

/// The callers inside the wait step of an acquisition, per full lock key. Keys with
/// no waiter and no claim in flight are removed, so the map holds only the locks
/// being waited for.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    counts: Mutex<HashMap<Vec<u8>, Entry>>,
    /// Notified when a re-claim ends.
    claimed: Event,
}

/// Whose turn it is to claim again ([`Waiters::turn`]).
pub(crate) enum Turn<'a> {
    /// This caller claims; report the result with [`Claiming::done`].
    Claim(Claiming<'a>),
    /// Another caller of the cache claims now: wait for `listener`, then read its
    /// result with [`Waiters::result`]`(lock_key, round)`.
    Follow {
        /// Notified when the claim in flight ends.
        listener: EventListener,
        /// The round to pass to [`Waiters::result`].
        round: u64,
    },
}

impl Waiters {
    /// How many callers wait for `lock_key` now.
    pub(crate) fn count(&self, lock_key: &[u8]) -> usize {
        self.counts.lock().get(lock_key).map_or(0, |e| e.count)
    }

    /// Counts one more waiter on `lock_key`, until the returned guard is dropped (when
    /// the wait ends, fails, or its future is dropped).
    pub(crate) fn enter<'a>(&'a self, lock_key: &'a [u8]) -> Waiting<'a> {
        let mut counts = self.counts.lock();
        match counts.get_mut(lock_key) {
            Some(e) => e.count += 1,
            None => {
                let entry = Entry {
                    count: 1,
                    ..Entry::default()
                };
                counts.insert(lock_key.to_vec(), entry);
            }
        }
        Waiting {
            waiters: self,
            lock_key,
        }
    }

    /// A woken waiter's turn to claim `lock_key` again: its own, unless another
    /// waiter of this cache claims it right now.
    pub(crate) fn turn<'a>(&'a self, lock_key: &[u8]) -> Turn<'a> {
        let mut counts = self.counts.lock();
        let entry = counts.entry(lock_key.to_vec()).or_default();
        if entry.claiming {
            // Listening under the map's lock: the claimer's end cannot be missed.
            return Turn::Follow {
                listener: self.claimed.listen(),
                round: entry.round,
            };
        }
        entry.claiming = true;
        Turn::Claim(Claiming {
            waiters: self,
            lock_key: lock_key.to_vec(),
            result: None,
        })
    }

    /// The result of the re-claim that was in flight at `round`: `Some(holder)` once
    /// it ended with an answer, `None` while it runs or when it ended without one (it
    /// failed or was cancelled: take a turn again).
    pub(crate) fn result(&self, lock_key: &[u8], round: u64) -> Option<Option<Vec<u8>>> {
        let counts = self.counts.lock();
        let entry = counts.get(lock_key)?;
        if entry.round == round {
            return None;
        }
        entry.result.clone()
    }

    fn forget_if_idle(counts: &mut HashMap<Vec<u8>, Entry>, lock_key: &[u8]) {
        if counts
            .get(lock_key)
            .is_some_and(|e| e.count == 0 && !e.claiming)
        {
            counts.remove(lock_key);
        }
    }
}

/// One caller counted as waiting (see [`Waiters::enter`]).
#[must_use = "the caller counts as waiting only while this lives"]
pub(crate) struct Waiting<'a> {
    waiters: &'a Waiters,
    /// Borrowed: no copy of the key per waiter.
    lock_key: &'a [u8],
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut counts = self.waiters.counts.lock();
        if let Some(e) = counts.get_mut(self.lock_key) {
            e.count -= 1;
        }
        Waiters::forget_if_idle(&mut counts, self.lock_key);
    }
}

/// The re-claim turn of one waiter ([`Turn::Claim`]); dropped, it ends the turn (with
/// the result given to [`done`](Claiming::done), else without one) and wakes the
/// followers.
#[must_use = "the turn ends when this is dropped"]
pub(crate) struct Claiming<'a> {
    waiters: &'a Waiters,
    lock_key: Vec<u8>,
    result: Option<Option<Vec<u8>>>,
}

impl Claiming<'_> {
    /// The claim got an answer: `holder` now holds the key (our token when we won;
    /// `None` when the backend did not tell the holder).
    pub(crate) fn done(mut self, holder: Option<&[u8]>) {
        self.result = Some(holder.map(<[u8]>::to_vec));
    }
}

impl Drop for Claiming<'_> {
    fn drop(&mut self) {
        let mut counts = self.waiters.counts.lock();
        if let Some(e) = counts.get_mut(self.lock_key.as_slice()) {
            e.claiming = false;
            e.round += 1;
            e.result = self.result.take();
        }
        Waiters::forget_if_idle(&mut counts, &self.lock_key);
        drop(counts);
        self.waiters.claimed.notify(usize::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_listener::Listener;

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

    #[test]
    fn one_claimer_per_key_the_others_follow_its_result() {
        let waiters = Waiters::default();
        let follower_wait = waiters.enter(b"k");
        let Turn::Claim(claiming) = waiters.turn(b"k") else {
            panic!("the first takes the turn");
        };
        let Turn::Follow { listener, round } = waiters.turn(b"k") else {
            panic!("the second follows");
        };
        assert!(matches!(waiters.turn(b"other"), Turn::Claim(_)), "per key");
        assert_eq!(waiters.result(b"k", round), None, "still claiming");
        claiming.done(Some(b"winner"));
        assert!(listener.wait_timeout(std::time::Duration::ZERO).is_some());
        assert_eq!(waiters.result(b"k", round), Some(Some(b"winner".to_vec())));
        // A turn that ends without an answer gives the followers none.
        let Turn::Claim(failed) = waiters.turn(b"k") else {
            panic!("free again");
        };
        let Turn::Follow { round, .. } = waiters.turn(b"k") else {
            panic!("follows");
        };
        drop(failed);
        assert_eq!(waiters.result(b"k", round), None, "take a turn again");
        drop(follower_wait);
        assert!(waiters.counts.lock().is_empty(), "no entry left when idle");
    }
}
