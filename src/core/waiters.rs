//! The callers of one cache that wait for each lock key, right now
//! ([`Cache::waiting`](crate::Cache::waiting)), and how they take turns: a map
//! touched only by callers whose claim lost (and by the holders they queue behind),
//! never on the uncontended path.
//!
//! **RedLock waiters** share a *re-claim turn*: when a release (or a lease end) wakes
//! them all, the first takes the turn and claims; the others *follow*: they wait for
//! its result, take it for their own lost claim (the new holder is the claimer, or
//! whoever beat it) and wait again for that holder. At most one claim per cache is in
//! flight per key after a wake.
//!
//! **Exclusive waiters** queue, first come first served ([`Seat`]s). Only the first
//! of the queue deals with the server, and only while no guard of the cache holds the
//! key: it *leads* (waits for the holder's release on the server, then claims; one
//! attempt per release for the whole cache). The others wait in the queue, on their
//! own event, and send nothing. When the leader wins, the cache's guard holds the key
//! through the queue (a *hold*): a waiter that arrives then queues without a claim,
//! and when that guard is released with a waiter queued, the lock passes to the
//! first waiter in process, without a release and a claim on the server (a
//! *hand-off*, see `core::handoff` for the rules that keep the lease honest and the
//! other processes served). When the guard releases on the server instead (no waiter,
//! the streak is over, the first waiter wants a fence, the lease is in doubt), the
//! first waiter leads again once that release returned.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use event_listener::{Event, EventListener};
use parking_lot::{Mutex, MutexGuard};

use crate::core::fork;
use crate::core::handoff::{MAX_STREAK, streak_time};
use crate::core::token::Token;

#[derive(Debug, Default)]
struct Entry {
    /// RedLock callers inside a wait (the backend's, or following a claimer).
    count: usize,
    /// A RedLock waiter is claiming the key again after a wake.
    claiming: bool,
    /// Bumped when a re-claim ends (with a result or not).
    round: u64,
    /// The holder the last re-claim found: `Some(holder)` when it got an answer
    /// (`holder` the winner's token, `None` when the backend did not tell it).
    result: Option<Option<Vec<u8>>>,
    /// The exclusive waiters, in the order they came; the first leads when no guard
    /// of the cache holds the key.
    queue: VecDeque<Arc<Seat>>,
    /// The guard of this cache that holds the key through the queue.
    hold: Option<Hold>,
}

impl Entry {
    fn idle(&self) -> bool {
        self.count == 0 && !self.claiming && self.queue.is_empty() && self.hold.is_none()
    }

    fn is_head(&self, seat: &Arc<Seat>) -> bool {
        self.queue.front().is_some_and(|s| Arc::ptr_eq(s, seat))
    }

    /// The hold of `token`.
    fn hold_of(&mut self, token: &Token) -> Option<&mut Hold> {
        self.hold.as_mut().filter(|h| h.token == *token)
    }

    /// A claim of ours lost to `holder`: if that is not the token our hold says the
    /// key holds, the hold is in doubt (no hand-off from it).
    fn lost_to(&mut self, holder: Option<&[u8]>) {
        if let (Some(hold), Some(holder)) = (&mut self.hold, holder)
            && hold.token.as_bytes() != holder
        {
            hold.doubtful = true;
        }
    }
}

/// A guard of the cache that holds the lock key through the queue: the key holds
/// `token`, confirmed by the server until `lease_end` at least.
#[derive(Debug)]
struct Hold {
    token: Token,
    lease_end: Instant,
    /// Hand-offs since the claim that started the streak.
    handoffs: u32,
    /// When the streak must end (a release goes to the server then).
    streak_end: Instant,
    /// The guard's release on the server is under way.
    releasing: bool,
    /// That release ends a streak: the first waiter waits for it on the server before
    /// it claims, as waiters of other processes do.
    yielding: bool,
    /// Renewals of the watchdog in flight.
    renewing: u32,
    /// The lock may not be what the hold says (a renewal unconfirmed or refused, a
    /// claim of ours that found another holder, a lease seen ended): no hand-off.
    doubtful: bool,
}

/// One exclusive waiter in a key's queue.
#[derive(Debug)]
pub(crate) struct Seat {
    /// Wants a fencing token: never handed a lock (it claims its own).
    fenced: bool,
    /// Notified when `state` changes (or its bound may have).
    event: Event,
    /// Changed only under the map's lock.
    state: Mutex<SeatState>,
    /// The waiter's deadline, once it is known ([`Waiters::bound`]): a lock is never
    /// handed to a waiter whose deadline passed.
    deadline: Mutex<Option<Instant>>,
}

#[derive(Debug)]
enum SeatState {
    /// Waiting in the queue.
    Queued,
    /// First in the queue, with no guard of the cache holding the key: claims, after
    /// waiting on the server for `holder`'s release when `wait_first`.
    Lead {
        holder: Option<Vec<u8>>,
        wait_first: bool,
    },
    /// The lock was handed to this waiter.
    Handed(Grant),
    /// Out of the queue (left, or its grant taken).
    Gone,
}

/// A lock handed over in process: the key holds `token`, confirmed by the server
/// until `lease_end` at least.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grant {
    pub(crate) token: Token,
    pub(crate) lease_end: Instant,
}

/// What a queued waiter is to do now ([`Waiters::next`]).
#[derive(Debug)]
pub(crate) enum Next {
    /// The lock was handed to it: it holds it (after a renewal, if its lease is short).
    Take(Grant),
    /// Claim the key, after waiting on the server for `holder`'s release if
    /// `wait_first`; report with [`Waiters::lead_won`] or [`Waiters::lead_lost`].
    Lead {
        holder: Option<Vec<u8>>,
        wait_first: bool,
    },
    /// Wait for `listener`, at most until `until` (the holder's lease end), then ask
    /// again.
    Wait {
        listener: EventListener,
        until: Option<Instant>,
    },
}

/// How a guard that holds through the queue releases ([`Waiters::release`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Release {
    /// Handed to the first waiter: nothing to send.
    HandedOff,
    /// Release it on the server, then report [`Waiters::released`].
    Server,
}

/// How a renewal of the watchdog went ([`Waiters::renewal_done`]).
#[derive(Debug)]
pub(crate) enum Renewed {
    /// It was not sent.
    NotSent,
    /// The server confirmed the lease until then at least.
    Confirmed(Instant),
    /// Refused, failed or unanswered: the lock may not be ours, or a late renewal may
    /// still change its lease.
    Doubtful,
}

struct Map {
    entries: HashMap<Vec<u8>, Entry>,
    /// The process generation of `entries` ([`fork::generation`]).
    generation: u64,
}

/// The waiters of one cache, per full lock key. Keys with no waiter, no claim in
/// flight and no hold are removed, so the map holds only the locks being waited for.
pub(crate) struct Waiters {
    map: Mutex<Map>,
    /// How many keys `map` holds: read without the lock, so that an acquisition on
    /// a cache where nobody waits does not take it.
    keys: AtomicUsize,
    /// Notified when a RedLock re-claim ends.
    claimed: Event,
}

impl std::fmt::Debug for Waiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiters")
            .field("keys", &self.keys.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for Waiters {
    fn default() -> Self {
        Waiters {
            map: Mutex::new(Map {
                entries: HashMap::new(),
                generation: fork::generation(),
            }),
            keys: AtomicUsize::new(0),
            claimed: Event::new(),
        }
    }
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

impl Seat {
    fn new(fenced: bool, state: SeatState) -> Arc<Self> {
        Arc::new(Seat {
            fenced,
            event: Event::new(),
            state: Mutex::new(state),
            deadline: Mutex::new(None),
        })
    }

    /// Whether the waiter's deadline passed at `now` (it leaves the queue then).
    fn expired(&self, now: Instant) -> bool {
        self.deadline.lock().is_some_and(|d| now >= d)
    }

    /// A queued seat leads (it is first, and no guard of the cache holds the key).
    fn lead(&self, holder: Option<Vec<u8>>, wait_first: bool) {
        let mut state = self.state.lock();
        if matches!(*state, SeatState::Queued) {
            *state = SeatState::Lead { holder, wait_first };
        }
    }
}

impl Waiters {
    /// The map. In a forked child, what the parent's callers left there is dropped
    /// first (they do not exist here; the child's copies of the parent's guards
    /// neither release nor hand off: they know their process generation).
    fn lock(&self) -> MutexGuard<'_, Map> {
        let mut map = self.map.lock();
        let generation = fork::generation();
        if map.generation != generation {
            map.entries.clear();
            self.keys.store(0, Ordering::Relaxed);
            map.generation = generation;
        }
        map
    }

    /// The entry of `lock_key`, made if missing.
    fn entry<'m>(&self, map: &'m mut Map, lock_key: &[u8]) -> &'m mut Entry {
        if !map.entries.contains_key(lock_key) {
            map.entries.insert(lock_key.to_vec(), Entry::default());
            self.keys.fetch_add(1, Ordering::Relaxed);
        }
        map.entries.get_mut(lock_key).expect("inserted")
    }

    fn forget_if_idle(&self, map: &mut Map, lock_key: &[u8]) {
        if map.entries.get(lock_key).is_some_and(Entry::idle) {
            map.entries.remove(lock_key);
            self.keys.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether any key has waiters or a hold (no lock taken).
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.keys.load(Ordering::Relaxed) != 0
    }

    /// How many callers wait for `lock_key` now.
    pub(crate) fn count(&self, lock_key: &[u8]) -> usize {
        self.lock()
            .entries
            .get(lock_key)
            .map_or(0, |e| e.count + e.queue.len())
    }

    /// Counts one more RedLock waiter on `lock_key`, until the returned guard is
    /// dropped (when the wait ends, fails, or its future is dropped).
    pub(crate) fn enter<'a>(&'a self, lock_key: &'a [u8]) -> Waiting<'a> {
        let mut map = self.lock();
        self.entry(&mut map, lock_key).count += 1;
        Waiting {
            waiters: self,
            lock_key,
        }
    }

    /// A woken RedLock waiter's turn to claim `lock_key` again: its own, unless
    /// another waiter of this cache claims it right now.
    pub(crate) fn turn<'a>(&'a self, lock_key: &[u8]) -> Turn<'a> {
        let mut map = self.lock();
        let entry = self.entry(&mut map, lock_key);
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
        let map = self.lock();
        let entry = map.entries.get(lock_key)?;
        if entry.round == round {
            return None;
        }
        entry.result.clone()
    }

    // The exclusive queue: the waiters' side.

    /// A new exclusive acquisition of `lock_key` (one that waits): a seat at the back
    /// of the queue when the key has one, or a guard of the cache holds it through
    /// the queue; `None` when neither (claim it: nobody of the cache waits for it).
    pub(crate) fn arrive(&self, lock_key: &[u8], fenced: bool) -> Option<Arc<Seat>> {
        let mut map = self.lock();
        let entry = map.entries.get_mut(lock_key)?;
        if entry.queue.is_empty() && entry.hold.is_none() {
            return None;
        }
        let seat = Seat::new(fenced, SeatState::Queued);
        entry.queue.push_back(Arc::clone(&seat));
        Some(seat)
    }

    /// A claim of `lock_key` by a new exclusive acquisition lost to `holder`: a seat
    /// at the back of the queue, or at its head as the leader (waiting for `holder`'s
    /// release first) when nobody else waits and no guard of the cache holds the key.
    /// Whether it leads comes with it.
    pub(crate) fn queue_lost(
        &self,
        lock_key: &[u8],
        holder: Option<&[u8]>,
        fenced: bool,
    ) -> (Arc<Seat>, bool) {
        let mut map = self.lock();
        let entry = self.entry(&mut map, lock_key);
        entry.lost_to(holder);
        let leads = entry.queue.is_empty() && entry.hold.as_ref().is_none_or(|h| h.doubtful);
        let state = if leads {
            SeatState::Lead {
                holder: holder.map(<[u8]>::to_vec),
                wait_first: true,
            }
        } else {
            SeatState::Queued
        };
        let seat = Seat::new(fenced, state);
        entry.queue.push_back(Arc::clone(&seat));
        (seat, leads)
    }

    /// What `seat` (of `lock_key`) is to do at `now`.
    pub(crate) fn next(&self, lock_key: &[u8], seat: &Arc<Seat>, now: Instant) -> Next {
        let mut map = self.lock();
        let mut state = seat.state.lock();
        match &*state {
            SeatState::Handed(grant) => {
                let grant = *grant;
                *state = SeatState::Gone;
                return Next::Take(grant);
            }
            SeatState::Lead { holder, wait_first } => {
                return Next::Lead {
                    holder: holder.clone(),
                    wait_first: *wait_first,
                };
            }
            // Out of the queue (a fork dropped it): claim, on its own.
            SeatState::Gone => {
                return Next::Lead {
                    holder: None,
                    wait_first: false,
                };
            }
            SeatState::Queued => {}
        }
        let Some(entry) = map.entries.get_mut(lock_key) else {
            *state = SeatState::Gone;
            return Next::Lead {
                holder: None,
                wait_first: false,
            };
        };
        let head = entry.is_head(seat);
        match &mut entry.hold {
            None if head => {
                *state = SeatState::Lead {
                    holder: None,
                    wait_first: true,
                };
                return Next::Lead {
                    holder: None,
                    wait_first: true,
                };
            }
            // The holder's lease ended by our clock, and neither a release nor a
            // renewal came: lead (the lock may be free on the server).
            Some(hold) if head && now >= hold.lease_end => {
                hold.doubtful = true;
                let holder = Some(hold.token.as_bytes().to_vec());
                *state = SeatState::Lead {
                    holder: holder.clone(),
                    wait_first: true,
                };
                return Next::Lead {
                    holder,
                    wait_first: true,
                };
            }
            _ => {}
        }
        let until = entry
            .hold
            .as_ref()
            .map(|h| h.lease_end)
            .filter(|&e| e > now);
        Next::Wait {
            listener: seat.event.listen(),
            until,
        }
    }

    /// `seat`'s deadline is `deadline`: from then on no lock is handed to it.
    pub(crate) fn bound(&self, seat: &Seat, deadline: Instant) {
        let _map = self.lock();
        *seat.deadline.lock() = Some(deadline);
    }

    /// The leader `seat` won its claim of `lock_key` with `token`, its lease `lease`
    /// confirmed until `lease_end`: it leaves the queue and holds the key through it
    /// (true), unless the queue is gone (a fork).
    pub(crate) fn lead_won(
        &self,
        lock_key: &[u8],
        seat: &Arc<Seat>,
        token: Token,
        lease: Duration,
        lease_end: Instant,
        now: Instant,
    ) -> bool {
        let mut map = self.lock();
        *seat.state.lock() = SeatState::Gone;
        let Some(entry) = map.entries.get_mut(lock_key) else {
            return false;
        };
        if let Some(i) = entry.queue.iter().position(|s| Arc::ptr_eq(s, seat)) {
            entry.queue.remove(i);
        }
        entry.hold = Some(Hold {
            token,
            lease_end,
            handoffs: 0,
            streak_end: now + streak_time(lease),
            releasing: false,
            yielding: false,
            renewing: 0,
            doubtful: false,
        });
        // The next waiter takes up its bound (the holder's lease end).
        if let Some(head) = entry.queue.front() {
            head.event.notify(1);
        }
        true
    }

    /// The leader `seat`'s claim of `lock_key` lost to `holder`: it waits for that
    /// holder's release on the server, then claims again.
    pub(crate) fn lead_lost(&self, lock_key: &[u8], seat: &Arc<Seat>, holder: Option<&[u8]>) {
        let mut map = self.lock();
        {
            let mut state = seat.state.lock();
            if matches!(*state, SeatState::Lead { .. }) {
                *state = SeatState::Lead {
                    holder: holder.map(<[u8]>::to_vec),
                    wait_first: true,
                };
            }
        }
        if let Some(entry) = map.entries.get_mut(lock_key) {
            entry.lost_to(holder);
        }
    }

    /// `seat` leaves the queue of `lock_key` (its bound passed, it failed, its future
    /// was dropped). A lock handed to it and not taken comes back: the caller must
    /// release it as a holder would (hand it on, or release it on the server). When
    /// it was first, the next waiter leads if no guard of the cache holds the key.
    pub(crate) fn leave(&self, lock_key: &[u8], seat: &Arc<Seat>) -> Option<Grant> {
        let mut map = self.lock();
        let holder = match std::mem::replace(&mut *seat.state.lock(), SeatState::Gone) {
            SeatState::Handed(grant) => return Some(grant),
            SeatState::Gone => return None,
            SeatState::Queued => None,
            SeatState::Lead { holder, .. } => holder,
        };
        let entry = map.entries.get_mut(lock_key)?;
        let i = entry.queue.iter().position(|s| Arc::ptr_eq(s, seat))?;
        entry.queue.remove(i);
        if i == 0
            && let Some(head) = entry.queue.front()
        {
            if entry.hold.is_none() {
                head.lead(holder, true);
            }
            head.event.notify(1);
        }
        self.forget_if_idle(&mut map, lock_key);
        None
    }

    /// A lock handed to a waiter (`token`) turned out lost when the waiter renewed it:
    /// the hold ends, and the waiter queues again first, to lead (claim at once) unless
    /// another waiter already leads. Its new seat, and whether it leads.
    pub(crate) fn handed_lost(
        &self,
        lock_key: &[u8],
        token: &Token,
        fenced: bool,
    ) -> (Arc<Seat>, bool) {
        let mut map = self.lock();
        let entry = self.entry(&mut map, lock_key);
        if entry.hold.as_ref().is_some_and(|h| h.token == *token) {
            entry.hold = None;
        }
        let leading = entry
            .queue
            .front()
            .is_some_and(|s| matches!(*s.state.lock(), SeatState::Lead { .. }));
        if leading {
            let seat = Seat::new(fenced, SeatState::Queued);
            entry.queue.insert(1, Arc::clone(&seat));
            return (seat, false);
        }
        let state = SeatState::Lead {
            holder: None,
            wait_first: false,
        };
        let seat = Seat::new(fenced, state);
        entry.queue.push_front(Arc::clone(&seat));
        (seat, true)
    }

    // The exclusive queue: the holder's side.

    /// The guard holding `lock_key` with `token` through the queue releases it (or is
    /// dropped) at `now`; its lease is confirmed until `lease_end`, and `clean` says
    /// that no request of its own on the lock is unanswered (an extend cancelled or
    /// failed without an answer might still change the lease). Hands the lock to the
    /// first waiter when it can ([`Release::HandedOff`]), else says to release it on
    /// the server.
    pub(crate) fn release(
        &self,
        lock_key: &[u8],
        token: &Token,
        lease_end: Instant,
        clean: bool,
        now: Instant,
    ) -> Release {
        let mut map = self.lock();
        let Some(entry) = map.entries.get_mut(lock_key) else {
            return Release::Server;
        };
        let queued = !entry.queue.is_empty();
        let Some(hold) = entry
            .hold
            .as_mut()
            .filter(|h| h.token == *token && !h.releasing)
        else {
            return Release::Server;
        };
        let streak_over = hold.handoffs >= MAX_STREAK || now >= hold.streak_end;
        let sound = clean && !hold.doubtful && hold.renewing == 0 && lease_end > now;
        // The first waiter whose deadline has not passed (those before it are
        // leaving), unless it wants a fence of its own.
        let next = entry.queue.iter().position(|s| !s.expired(now));
        if sound
            && !streak_over
            && let Some(i) = next
            && !entry.queue[i].fenced
        {
            let mut state = entry.queue[i].state.lock();
            if matches!(*state, SeatState::Queued) {
                *state = SeatState::Handed(Grant {
                    token: *token,
                    lease_end,
                });
                drop(state);
                hold.handoffs += 1;
                hold.lease_end = lease_end;
                if let Some(seat) = entry.queue.remove(i) {
                    seat.event.notify(1);
                }
                return Release::HandedOff;
            }
        }
        hold.releasing = true;
        hold.yielding = streak_over && queued;
        Release::Server
    }

    /// The release of `token` on `lock_key` (whatever its result) returned: if it
    /// ended the cache's hold, the first waiter leads (claims at once, or first waits
    /// for the release on the server when it ended a streak).
    pub(crate) fn released(&self, lock_key: &[u8], token: &Token) {
        if !self.active() {
            return;
        }
        let mut map = self.lock();
        let Some(entry) = map.entries.get_mut(lock_key) else {
            return;
        };
        let Some(hold) = entry.hold_of(token) else {
            return;
        };
        let yielding = hold.yielding;
        entry.hold = None;
        if let Some(head) = entry.queue.front() {
            head.lead(Some(token.as_bytes().to_vec()), yielding);
            head.event.notify(1);
        }
        self.forget_if_idle(&mut map, lock_key);
    }

    /// The guard holding `lock_key` with `token` through the queue was given up
    /// unreleased (`let_expire`): the hold ends, and the first waiter leads, waiting
    /// for the key's expiry on the server before it claims.
    pub(crate) fn abandoned(&self, lock_key: &[u8], token: &Token) {
        let mut map = self.lock();
        let Some(entry) = map.entries.get_mut(lock_key) else {
            return;
        };
        if entry.hold_of(token).is_none() {
            return;
        }
        entry.hold = None;
        if let Some(head) = entry.queue.front() {
            head.lead(Some(token.as_bytes().to_vec()), true);
            head.event.notify(1);
        }
        self.forget_if_idle(&mut map, lock_key);
    }

    /// The guard holding `lock_key` with `token` extended its lease: confirmed until
    /// `lease_end` (`Some`), or found the lock no longer ours (`None`).
    pub(crate) fn extended(&self, lock_key: &[u8], token: &Token, lease_end: Option<Instant>) {
        let mut map = self.lock();
        let Some(hold) = map.entries.get_mut(lock_key).and_then(|e| e.hold_of(token)) else {
            return;
        };
        match lease_end {
            Some(end) => hold.lease_end = end,
            None => hold.doubtful = true,
        }
    }

    /// The watchdog is about to renew the lease of `token` on `lock_key`: while that
    /// renewal is in flight (until [`renewal_done`](Waiters::renewal_done), which
    /// must follow when this returns true), the lock is not handed off.
    pub(crate) fn renewing(&self, lock_key: &[u8], token: &Token) -> bool {
        if !self.active() {
            return false;
        }
        let mut map = self.lock();
        match map.entries.get_mut(lock_key).and_then(|e| e.hold_of(token)) {
            Some(hold) => {
                hold.renewing += 1;
                true
            }
            None => false,
        }
    }

    /// A renewal counted by [`renewing`](Waiters::renewing) ended.
    pub(crate) fn renewal_done(&self, lock_key: &[u8], token: &Token, renewed: Renewed) {
        let mut map = self.lock();
        let Some(hold) = map.entries.get_mut(lock_key).and_then(|e| e.hold_of(token)) else {
            return;
        };
        hold.renewing = hold.renewing.saturating_sub(1);
        match renewed {
            Renewed::NotSent => {}
            Renewed::Confirmed(end) => hold.lease_end = hold.lease_end.max(end),
            Renewed::Doubtful => hold.doubtful = true,
        }
    }
}

/// One RedLock caller counted as waiting (see [`Waiters::enter`]).
#[must_use = "the caller counts as waiting only while this lives"]
pub(crate) struct Waiting<'a> {
    waiters: &'a Waiters,
    /// Borrowed: no copy of the key per waiter.
    lock_key: &'a [u8],
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.lock();
        if let Some(e) = map.entries.get_mut(self.lock_key) {
            e.count -= 1;
        }
        self.waiters.forget_if_idle(&mut map, self.lock_key);
    }
}

/// The re-claim turn of one RedLock waiter ([`Turn::Claim`]); dropped, it ends the
/// turn (with the result given to [`done`](Claiming::done), else without one) and
/// wakes the followers.
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
        let mut map = self.waiters.lock();
        if let Some(e) = map.entries.get_mut(self.lock_key.as_slice()) {
            e.claiming = false;
            e.round += 1;
            e.result = self.result.take();
        }
        self.waiters.forget_if_idle(&mut map, &self.lock_key);
        drop(map);
        self.waiters.claimed.notify(usize::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_listener::Listener;

    fn at(ms: u64) -> Instant {
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *ORIGIN.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    const LEASE: Duration = Duration::from_secs(30);

    /// A token whose hex text starts with the letter `a + n` (n < 6).
    fn token(n: u8) -> Token {
        Token::from_u128(u128::from(0xa + n) << 124)
    }

    fn is_empty(waiters: &Waiters) -> bool {
        waiters.lock().entries.is_empty() && !waiters.active()
    }

    /// Who leads and with what, or whether it waits (and until when).
    fn next(waiters: &Waiters, seat: &Arc<Seat>, now: Instant) -> String {
        match waiters.next(b"k", seat, now) {
            Next::Take(g) => format!("take {}", g.token.as_bytes()[0] as char),
            Next::Lead { holder, wait_first } => {
                format!("lead {:?} {wait_first}", holder.map(|h| h[0] as char))
            }
            Next::Wait { until, .. } => format!("wait {:?}", until.map(|u| u - at(0))),
        }
    }

    /// A waiter that lost its claim to a foreign holder (`a`) and won it after that
    /// holder's release, with `others` queued behind it.
    fn held_with(waiters: &Waiters, others: usize) -> Vec<Arc<Seat>> {
        let (leader, leads) = waiters.queue_lost(b"k", Some(token(0).as_bytes()), false);
        assert!(leads, "the first lost claim leads");
        let queued: Vec<_> = (0..others)
            .map(|_| {
                waiters
                    .arrive(b"k", false)
                    .expect("queues behind the leader")
            })
            .collect();
        assert_eq!(next(waiters, &leader, at(0)), "lead Some('a') true");
        assert!(waiters.lead_won(b"k", &leader, token(1), LEASE, at(30_000), at(0)));
        queued
    }

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
        assert!(is_empty(&waiters), "no entry left at zero");
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
        assert!(listener.wait_timeout(Duration::ZERO).is_some());
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
        assert!(is_empty(&waiters), "no entry left when idle");
    }

    #[test]
    fn only_the_first_waiter_leads_the_others_queue_without_a_claim() {
        let waiters = Waiters::default();
        assert!(waiters.arrive(b"k", false).is_none(), "nobody waits: claim");
        let (first, leads) = waiters.queue_lost(b"k", Some(token(0).as_bytes()), false);
        assert!(leads);
        let second = waiters.arrive(b"k", false).expect("queues");
        let (third, leads) = waiters.queue_lost(b"k", Some(token(0).as_bytes()), false);
        assert!(!leads, "a claim that lost behind a leader queues");
        assert_eq!(waiters.count(b"k"), 3);
        assert_eq!(next(&waiters, &first, at(0)), "lead Some('a') true");
        assert_eq!(next(&waiters, &second, at(0)), "wait None");
        // The leader lost again, to another holder: it waits for that one.
        waiters.lead_lost(b"k", &first, Some(token(2).as_bytes()));
        assert_eq!(next(&waiters, &first, at(0)), "lead Some('c') true");
        // The leader leaves (its bound passed): the next one leads, woken.
        let Next::Wait { listener, .. } = waiters.next(b"k", &second, at(0)) else {
            panic!("waits");
        };
        assert!(waiters.leave(b"k", &first).is_none());
        assert!(listener.wait_timeout(Duration::ZERO).is_some(), "woken");
        assert_eq!(next(&waiters, &second, at(0)), "lead Some('c') true");
        assert!(waiters.leave(b"k", &third).is_none());
        assert!(waiters.leave(b"k", &second).is_none());
        assert!(is_empty(&waiters));
    }

    #[test]
    fn a_release_hands_the_lock_to_the_first_waiter_in_order() {
        let waiters = Waiters::default();
        let queued = held_with(&waiters, 2);
        let late = waiters
            .arrive(b"k", false)
            .expect("queues behind the holder");
        assert_eq!(
            next(&waiters, &queued[0], at(1)),
            "wait Some(30s)",
            "bounded by the holder's lease end"
        );
        let release = waiters.release(b"k", &token(1), at(30_000), true, at(1));
        assert_eq!(release, Release::HandedOff);
        assert_eq!(next(&waiters, &queued[0], at(1)), "take b");
        let again = waiters.release(b"k", &token(1), at(30_000), true, at(2));
        assert_eq!(
            again,
            Release::HandedOff,
            "the same token, now the next waiter's"
        );
        assert_eq!(next(&waiters, &queued[1], at(2)), "take b");
        assert_eq!(
            waiters.release(b"k", &token(1), at(30_000), true, at(3)),
            Release::HandedOff
        );
        assert_eq!(next(&waiters, &late, at(3)), "take b");
        // Nobody waits: released on the server.
        assert_eq!(
            waiters.release(b"k", &token(1), at(30_000), true, at(4)),
            Release::Server
        );
        assert!(
            waiters.arrive(b"k", false).is_some(),
            "queues while it releases"
        );
        waiters.released(b"k", &token(1));
    }

    #[test]
    fn no_hand_off_when_the_lease_is_in_doubt_or_the_waiter_wants_a_fence() {
        let hands = |setup: &dyn Fn(&Waiters), clean: bool, lease_end: u64| {
            let waiters = Waiters::default();
            let _queued = held_with(&waiters, 1);
            setup(&waiters);
            waiters.release(b"k", &token(1), at(lease_end), clean, at(5)) == Release::HandedOff
        };
        assert!(hands(&|_| {}, true, 30_000));
        assert!(!hands(&|_| {}, false, 30_000), "an unanswered extend");
        assert!(!hands(&|_| {}, true, 5), "its lease ended by our clock");
        let renewing = |w: &Waiters| assert!(w.renewing(b"k", &token(1)));
        assert!(!hands(&renewing, true, 30_000), "a renewal in flight");
        let renewed = |w: &Waiters| {
            assert!(w.renewing(b"k", &token(1)));
            w.renewal_done(b"k", &token(1), Renewed::Confirmed(at(40_000)));
        };
        assert!(hands(&renewed, true, 30_000), "a renewal confirmed");
        let refused = |w: &Waiters| {
            assert!(w.renewing(b"k", &token(1)));
            w.renewal_done(b"k", &token(1), Renewed::Doubtful);
        };
        assert!(
            !hands(&refused, true, 30_000),
            "a renewal refused or unanswered"
        );
        let lost = |w: &Waiters| w.extended(b"k", &token(1), None);
        assert!(!hands(&lost, true, 30_000), "an extend found it gone");
        let stolen = |w: &Waiters| {
            let (seat, leads) = w.queue_lost(b"k", Some(token(5).as_bytes()), false);
            assert!(!leads);
            w.leave(b"k", &seat);
        };
        assert!(
            !hands(&stolen, true, 30_000),
            "a claim found another holder"
        );
        // A fenced waiter gets a fence of its own: the holder releases, it claims.
        let waiters = Waiters::default();
        let _ = held_with(&waiters, 0);
        let fenced = waiters.arrive(b"k", true).unwrap();
        assert_eq!(
            waiters.release(b"k", &token(1), at(30_000), true, at(1)),
            Release::Server
        );
        assert_eq!(
            next(&waiters, &fenced, at(1)),
            "wait Some(30s)",
            "until it returned"
        );
        waiters.released(b"k", &token(1));
        assert_eq!(
            next(&waiters, &fenced, at(2)),
            "lead Some('b') false",
            "claims at once"
        );
    }

    #[test]
    fn a_streak_ends_by_count_and_by_time_and_then_the_first_waiter_yields() {
        let waiters = Waiters::default();
        let _ = held_with(&waiters, 0);
        for i in 0..MAX_STREAK {
            let seat = waiters.arrive(b"k", false).unwrap();
            let release = waiters.release(b"k", &token(1), at(30_000), true, at(1));
            assert_eq!(release, Release::HandedOff, "hand-off {i}");
            assert_eq!(next(&waiters, &seat, at(1)), "take b");
        }
        let seat = waiters.arrive(b"k", false).unwrap();
        let release = waiters.release(b"k", &token(1), at(30_000), true, at(1));
        assert_eq!(release, Release::Server, "the streak is over");
        waiters.released(b"k", &token(1));
        assert_eq!(
            next(&waiters, &seat, at(1)),
            "lead Some('b') true",
            "waits for the release on the server, as other processes' waiters do"
        );
        // By time: the streak of a 30 s lease lasts 10 ms.
        let waiters = Waiters::default();
        let queued = held_with(&waiters, 2);
        let release = waiters.release(b"k", &token(1), at(30_000), true, at(9));
        assert_eq!(release, Release::HandedOff);
        let release = waiters.release(b"k", &token(1), at(30_000), true, at(10));
        assert_eq!(release, Release::Server);
        waiters.released(b"k", &token(1));
        assert_eq!(next(&waiters, &queued[1], at(10)), "lead Some('b') true");
    }

    #[test]
    fn a_waiter_that_leaves_hands_back_what_it_was_handed() {
        let waiters = Waiters::default();
        let queued = held_with(&waiters, 2);
        assert_eq!(
            waiters.release(b"k", &token(1), at(30_000), true, at(1)),
            Release::HandedOff
        );
        let grant = waiters.leave(b"k", &queued[0]).expect("handed, not taken");
        assert_eq!(grant.token, token(1));
        // It releases as a holder would: on to the next.
        assert_eq!(
            waiters.release(b"k", &token(1), grant.lease_end, true, at(2)),
            Release::HandedOff
        );
        assert_eq!(next(&waiters, &queued[1], at(2)), "take b");
        assert!(waiters.leave(b"k", &queued[1]).is_none(), "taken: nothing");
        assert_eq!(
            waiters.release(b"k", &token(1), at(30_000), true, at(3)),
            Release::Server
        );
        waiters.released(b"k", &token(1));
        assert!(is_empty(&waiters));
    }

    #[test]
    fn the_first_waiter_leads_when_the_holders_lease_ends_without_a_word() {
        let waiters = Waiters::default();
        let queued = held_with(&waiters, 2);
        assert_eq!(
            next(&waiters, &queued[1], at(30_000)),
            "wait None",
            "only the first"
        );
        assert_eq!(
            next(&waiters, &queued[0], at(30_000)),
            "lead Some('b') true"
        );
        // The holder, if it comes back, releases on the server (the first waiter waits
        // for that release there).
        assert_eq!(
            waiters.release(b"k", &token(1), at(30_000), true, at(1)),
            Release::Server
        );
    }

    #[test]
    fn a_handed_lock_found_lost_ends_the_hold_and_its_waiter_leads() {
        let waiters = Waiters::default();
        let queued = held_with(&waiters, 2);
        assert_eq!(
            waiters.release(b"k", &token(1), at(30_000), true, at(1)),
            Release::HandedOff
        );
        assert_eq!(next(&waiters, &queued[0], at(1)), "take b");
        let (seat, leads) = waiters.handed_lost(b"k", &token(1), false);
        assert!(leads);
        assert_eq!(next(&waiters, &seat, at(1)), "lead None false");
        assert_eq!(next(&waiters, &queued[1], at(1)), "wait None");
        assert!(waiters.lead_won(b"k", &seat, token(3), LEASE, at(30_000), at(2)));
        assert_eq!(
            waiters.release(b"k", &token(3), at(30_000), true, at(3)),
            Release::HandedOff
        );
        assert_eq!(next(&waiters, &queued[1], at(3)), "take d");
    }

    #[test]
    fn a_release_of_another_token_changes_nothing() {
        let waiters = Waiters::default();
        let queued = held_with(&waiters, 1);
        assert_eq!(
            waiters.release(b"k", &token(7), at(30_000), true, at(1)),
            Release::Server
        );
        waiters.released(b"k", &token(7));
        assert_eq!(next(&waiters, &queued[0], at(1)), "wait Some(30s)");
        assert_eq!(
            waiters.release(b"x", &token(1), at(30_000), true, at(1)),
            Release::Server
        );
    }

    #[test]
    fn a_hold_given_up_unreleased_ends_and_the_first_waiter_waits_for_its_expiry() {
        let waiters = Waiters::default();
        let queued = held_with(&waiters, 1);
        waiters.abandoned(b"k", &token(1));
        assert_eq!(next(&waiters, &queued[0], at(1)), "lead Some('b') true");
        assert!(waiters.leave(b"k", &queued[0]).is_none());
        assert!(is_empty(&waiters), "nothing left of the key");
        // Nobody waits: the entry goes at once.
        let _ = held_with(&waiters, 0);
        waiters.abandoned(b"k", &token(1));
        assert!(is_empty(&waiters));
    }

    #[test]
    fn a_release_skips_the_waiters_whose_deadline_passed() {
        let waiters = Waiters::default();
        let queued = held_with(&waiters, 2);
        waiters.bound(&queued[0], at(5));
        waiters.bound(&queued[1], at(60_000));
        // The first has not left yet, but its deadline passed: the second is handed it.
        assert_eq!(
            waiters.release(b"k", &token(1), at(30_000), true, at(5)),
            Release::HandedOff
        );
        assert_eq!(next(&waiters, &queued[1], at(5)), "take b");
        assert!(waiters.leave(b"k", &queued[0]).is_none(), "handed nothing");
        // Only waiters whose deadline passed: released on the server.
        let late = waiters.arrive(b"k", false).unwrap();
        waiters.bound(&late, at(6));
        assert_eq!(
            waiters.release(b"k", &token(1), at(30_000), true, at(6)),
            Release::Server
        );
    }

    /// The exclusive queue of one key driven as the acquisitions drive it (claims on
    /// a model server, waits, hand-offs, releases, deadlines and cancellations in any
    /// order): never two holders, a lock handed only to an unfenced waiter whose
    /// deadline has not passed, at most one leader, and once the holders release,
    /// every waiter still waiting holds the lock in turn and the map is left empty.
    mod queue_model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Arrive { fenced: bool },
            Step(usize),
            Release,
            Leave(usize),
            Expire(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => any::<bool>().prop_map(|fenced| Op::Arrive { fenced }),
                6 => (0..8usize).prop_map(Op::Step),
                3 => Just(Op::Release),
                1 => (0..8usize).prop_map(Op::Leave),
                1 => (0..8usize).prop_map(Op::Expire),
            ]
        }

        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Owner {
            Nobody,
            /// A guard holds `token`, through the queue or not.
            Guard(Token, bool),
            /// Handed to seat `i`, not taken yet.
            Handed(usize),
        }

        struct Waiter {
            seat: Arc<Seat>,
            fenced: bool,
            expired: bool,
            /// Still in its acquisition.
            alive: bool,
            held: bool,
        }

        struct World {
            waiters: Waiters,
            server: Option<Token>,
            owner: Owner,
            seats: Vec<Waiter>,
            tokens: u128,
            ms: u64,
        }

        impl World {
            fn now(&self) -> Instant {
                at(self.ms)
            }

            fn token(&mut self) -> Token {
                self.tokens += 1;
                Token::from_u128(self.tokens)
            }

            fn hold(&mut self, token: Token, queued: bool, who: Option<usize>) {
                assert!(
                    matches!(self.owner, Owner::Nobody)
                        || matches!(self.owner, Owner::Handed(i) if Some(i) == who),
                    "two holders: {:?}",
                    self.owner
                );
                self.owner = Owner::Guard(token, queued);
                if let Some(i) = who {
                    self.seats[i].held = true;
                    self.seats[i].alive = false;
                }
            }

            fn arrive(&mut self, fenced: bool) {
                if self.seats.iter().filter(|w| w.alive).count() >= 8 {
                    return;
                }
                let seat = match self.waiters.arrive(b"k", fenced) {
                    Some(seat) => seat,
                    None => match self.server {
                        None => {
                            let t = self.token();
                            self.server = Some(t);
                            self.hold(t, false, None);
                            return;
                        }
                        Some(h) => self.waiters.queue_lost(b"k", Some(h.as_bytes()), fenced).0,
                    },
                };
                let alive = true;
                self.seats.push(Waiter {
                    seat,
                    fenced,
                    expired: false,
                    alive,
                    held: false,
                });
            }

            fn step(&mut self, i: usize) {
                let Some(w) = self.seats.get(i).filter(|w| w.alive) else {
                    return;
                };
                let (seat, expired) = (Arc::clone(&w.seat), w.expired);
                match self.waiters.next(b"k", &seat, self.now()) {
                    Next::Take(grant) => {
                        assert_eq!(self.owner, Owner::Handed(i), "taken as handed");
                        assert_eq!(self.server, Some(grant.token), "the key holds the token");
                        self.hold(grant.token, true, Some(i));
                    }
                    Next::Lead { .. } | Next::Wait { .. } if expired => self.leave(i),
                    Next::Lead { holder, wait_first } => {
                        let waits = wait_first
                            && self.server.is_some()
                            && holder.as_deref().is_none_or(|h| {
                                Some(h) == self.server.as_ref().map(|t| t.as_bytes())
                            });
                        if waits {
                            return;
                        }
                        match self.server {
                            None => {
                                let t = self.token();
                                self.server = Some(t);
                                let now = self.now();
                                let queued =
                                    self.waiters
                                        .lead_won(b"k", &seat, t, LEASE, at(30_000), now);
                                self.hold(t, queued, Some(i));
                            }
                            Some(h) => self.waiters.lead_lost(b"k", &seat, Some(h.as_bytes())),
                        }
                    }
                    Next::Wait { .. } => {}
                }
            }

            fn leave(&mut self, i: usize) {
                let Some(w) = self.seats.get_mut(i).filter(|w| w.alive) else {
                    return;
                };
                w.alive = false;
                let seat = Arc::clone(&w.seat);
                if let Some(grant) = self.waiters.leave(b"k", &seat) {
                    assert_eq!(
                        self.owner,
                        Owner::Handed(i),
                        "handed back what it was handed"
                    );
                    self.owner = Owner::Guard(grant.token, true);
                    self.release();
                }
            }

            fn release(&mut self) {
                let Owner::Guard(t, queued) = self.owner else {
                    return;
                };
                assert_eq!(self.server, Some(t), "the holder's token is the key's");
                let now = self.now();
                if queued
                    && self.waiters.release(b"k", &t, at(30_000), true, now) == Release::HandedOff
                {
                    let handed: Vec<usize> = (0..self.seats.len())
                        .filter(|&i| {
                            matches!(*self.seats[i].seat.state.lock(), SeatState::Handed(_))
                        })
                        .collect();
                    assert_eq!(handed.len(), 1, "handed to one waiter");
                    let w = &self.seats[handed[0]];
                    assert!(
                        w.alive && !w.fenced && !w.expired,
                        "handed to a live unfenced waiter in time"
                    );
                    self.owner = Owner::Handed(handed[0]);
                    return;
                }
                self.server = None;
                self.owner = Owner::Nobody;
                if queued {
                    self.waiters.released(b"k", &t);
                }
            }

            fn check(&self) {
                let leaders = self
                    .seats
                    .iter()
                    .filter(|w| w.alive && matches!(*w.seat.state.lock(), SeatState::Lead { .. }))
                    .count();
                assert!(leaders <= 1, "{leaders} leaders");
                if let Owner::Guard(t, _) = self.owner {
                    assert_eq!(self.server, Some(t));
                }
            }
        }

        proptest! {
            #[test]
            fn the_queue_against_a_model(ops in proptest::collection::vec(op(), 1..120)) {
                let mut world = World {
                    waiters: Waiters::default(),
                    server: None,
                    owner: Owner::Nobody,
                    seats: Vec::new(),
                    tokens: 0,
                    ms: 0,
                };
                for op in ops {
                    world.ms += 1;
                    match op {
                        Op::Arrive { fenced } => world.arrive(fenced),
                        Op::Step(i) => world.step(i),
                        Op::Release => world.release(),
                        Op::Leave(i) => world.leave(i),
                        Op::Expire(i) => {
                            if let Some(w) = world.seats.get_mut(i).filter(|w| w.alive) {
                                w.expired = true;
                                let seat = Arc::clone(&w.seat);
                                let now = world.now();
                                world.waiters.bound(&seat, now);
                            }
                        }
                    }
                    world.check();
                }
                // The holders release as they finish; every waiter still waiting holds
                // the lock in turn (the expired ones leave).
                for _ in 0..1_000 {
                    world.ms += 1;
                    world.release();
                    for i in 0..world.seats.len() {
                        world.step(i);
                        world.check();
                    }
                    if world.seats.iter().all(|w| !w.alive) && world.owner == Owner::Nobody {
                        break;
                    }
                }
                prop_assert!(world.seats.iter().all(|w| !w.alive), "a waiter starved");
                prop_assert_eq!(world.owner, Owner::Nobody);
                for w in &world.seats {
                    prop_assert!(w.held || w.expired || !w.alive);
                }
                prop_assert!(is_empty(&world.waiters), "the map is left empty");
            }
        }
    }
}
