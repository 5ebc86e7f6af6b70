//! Waiting by polling, for stores without notifications (memcached): the backoff
//! schedule and the rules that tell a release from a lease end, for all the waiters
//! of one key at once. Pure functions of the instants and jitter they are given.
//!
//! One [`Poller`] per lock key and process reads the key (`mg v t c`) again and again
//! for every waiter of that key ([`Interest`]), sleeping a capped, jittered,
//! exponentially growing delay in between ([`delay`], [`Poller::next_sleep`]), and
//! waking right after the key's expiry is due; the schedule starts again from the
//! shortest delay when another holder appears (its hold may be short). The waiters
//! add nothing to the polls: 1 or 1,000, the key is read at the same rate. Who sends
//! the polls, and when a waiter gives up, is the caller's business
//! (`backend/memcached/polls.rs`); each waiter's deadline is its own.
//!
//! The server counts whole seconds, on a clock (`current_time`) that a one-second timer
//! sets to the whole seconds of its monotonic clock. The timer drifts (about 1 ms late
//! per tick, measured here), so its phase slowly moves through the second, and when
//! it crosses a whole second the clock steps by 2 in one tick (seen on memcached
//! 1.6.18: a tick 0.9999 s into a second, the next 0.0002 s into the second after
//! next). A key whose TTL read `t` at instant `r` is stored with the expiry
//! `clock + t` and expires at the first tick where the clock reaches it: no earlier
//! than `r + t - 1 s - (tick length)`, so with ticks up to [`TICK_MARGIN`] late, no
//! earlier than `r + t - 2 s - TICK_MARGIN`; and about `r + t` at the latest.
//! (memcached's `exptime` in `meta` turns a lease into a TTL from the same bound.)
//! These bounds are facts about one version of the key (its token and CAS unique),
//! whoever's poll learned them, so the waiters of a key share them.
//!
//! When the holder's token disappears (or is replaced by another token, which means
//! that holder is gone too) [`Observation::judge`] decides, for each waiter of that
//! holder:
//! - before the earliest possible expiry: the holder released it → [`Wake::Released`];
//! - at or after it: the lease may have ended → [`Wake::Vacant`], try to add (a
//!   release in the last 2.25 s of the key's TTL, which with memcached's TTL rule is
//!   the last moments of the lease and the slack after it, is taken for an expiry:
//!   the waiter then tries to add, which is safe, only slower).
//!
//! A waiter's holder is the token its claim lost to, when the claim learned it
//! ([`Poller::join`]), else the token of the first poll that counts for it. A poll
//! counts for the waiters that joined before it was sent ([`Poller::poll_sent`]): a
//! poll sent earlier may have read the key before the waiter's claim lost, and say
//! nothing about the holder it lost to.
//!
//! A holder that renews its lease (`extend`: the same token rewritten with a new TTL)
//! keeps its waiters waiting: its token is still there. The rewrite changes the key's
//! CAS unique, and the expiry bounds start again from the new TTL: a renewal may
//! shorten the lease, and a bound from before it would take the shortened lease's
//! end for a release.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::wait::Wake;

/// The first delay between two polls (before jitter).
pub const FIRST_DELAY: Duration = Duration::from_micros(200);

/// The longest delay between two polls (before jitter), unless set otherwise.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(4);

/// How late the server's one-second clock tick may fire (beyond the second): an expiry
/// is assumed possible this much before `r + t - 2 s`, and a lease is sent as a TTL
/// this much longer.
pub const TICK_MARGIN: Duration = Duration::from_millis(250);

/// The delay before poll number `attempt` (0-based): `FIRST_DELAY * 2^attempt`, at
/// most `max`, then scaled into its upper half by `jitter` in `[0, 1)` ("equal
/// jitter": loops that started together spread out, none polls faster than half the
/// schedule).
///
/// ```text
/// attempt   0     1     2     3      4      5      6      7 …
/// base      0.2   0.4   0.8   1.6    3.2    4      4      4 ms (max 4 ms)
/// ```
pub fn delay(attempt: u32, jitter: f64, max: Duration) -> Duration {
    let max = max.max(FIRST_DELAY);
    let base = FIRST_DELAY
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .map_or(max, |d| d.min(max));
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    base / 2 + base.mul_f64(jitter / 2.0)
}

/// What a poll of the lock key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen<'a> {
    /// The key is absent.
    Missing,
    /// The key holds `token` and has `ttl` seconds to live (`-1`: no expiry).
    Held {
        /// The value of the lock key: the holder's token.
        token: &'a [u8],
        /// The TTL the server reported, whole seconds, `-1` for none.
        ttl: i64,
        /// The key's CAS unique: it changes when the holder rewrites the key (renews
        /// its lease).
        cas: u64,
    },
}

/// One holder's key as the polls saw it: its token, and the bounds of its expiry.
#[derive(Debug, Clone)]
struct Version {
    token: Arc<[u8]>,
    /// The CAS unique at the last poll.
    cas: u64,
    /// The earliest instant the key may expire (`None`: never, or not known).
    earliest_expiry: Option<Instant>,
    /// The latest instant the key should expire.
    latest_expiry: Option<Instant>,
}

impl Version {
    fn note_ttl(&mut self, ttl: i64, cas: u64, sent: Instant, received: Instant) {
        if std::mem::replace(&mut self.cas, cas) != cas {
            // The holder rewrote its key (renewed its lease, maybe shorter): the
            // bounds of the key before say nothing about this one.
            self.earliest_expiry = None;
        }
        if ttl < 0 {
            self.earliest_expiry = None;
            self.latest_expiry = None;
            return;
        }
        let ttl = Duration::from_secs(ttl.unsigned_abs());
        let earliest = ttl
            .checked_sub(Duration::from_secs(2) + TICK_MARGIN)
            .map_or(sent, |d| crate::core::lease::deadline(sent, d));
        // Each poll bounds the expiry from below again; keep the tightest bound.
        self.earliest_expiry = Some(self.earliest_expiry.map_or(earliest, |e| e.max(earliest)));
        self.latest_expiry = Some(crate::core::lease::deadline(received, ttl));
    }
}

/// One lock key's polls, shared by all its waiters: the schedule and what the polls
/// saw.
#[derive(Debug, Clone, Default)]
pub struct Poller {
    attempt: u32,
    /// Orders joins and polls.
    seq: u64,
    /// The mark of the last poll observed.
    last_poll: u64,
    /// The mark of the last join.
    last_join: u64,
    /// The holder the last poll found.
    current: Option<Version>,
}

/// One waiter's part in a [`Poller`]: which polls count for it, and the holder it
/// waits for.
#[derive(Debug, Clone)]
pub struct Interest {
    joined: u64,
    holder: Option<Arc<[u8]>>,
}

impl Interest {
    /// The token of the holder this waiter waits for, once known.
    #[cfg(test)]
    pub fn holder(&self) -> Option<&[u8]> {
        self.holder.as_deref()
    }
}

/// A poll of the key, sent: pass it to [`Poller::observe`] with what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark(u64);

impl Mark {
    /// Whether the poll counts for `interest`: it joined before the poll was sent.
    pub fn counts_for(self, interest: &Interest) -> bool {
        interest.joined < self.0
    }
}

impl Poller {
    /// A key nobody has polled yet.
    pub fn new() -> Self {
        Poller::default()
    }

    /// A waiter joins, waiting for the release of `holder` (the token its claim lost
    /// to), or when that is unknown, of the token the first poll that counts for it
    /// finds. Polls sent before this call do not count for it.
    pub fn join(&mut self, holder: Option<&[u8]>) -> Interest {
        self.seq += 1;
        self.last_join = self.seq;
        let holder = holder.map(|h| match &self.current {
            // One copy of the token for a stampede's waiters.
            Some(v) if *v.token == *h => Arc::clone(&v.token),
            _ => Arc::from(h),
        });
        Interest {
            joined: self.seq,
            holder,
        }
    }

    /// A poll is about to be sent.
    pub fn poll_sent(&mut self) -> Mark {
        self.seq += 1;
        Mark(self.seq)
    }

    /// Feeds the result of the poll `mark`, sent at `sent`, whose reply came at
    /// `received` (polls are observed in the order they were sent). The
    /// [`Observation`] then judges each waiter.
    ///
    /// The server read the key somewhere in between, so a TTL bounds the expiry from
    /// `sent` (never later than the truth) and a disappearance is dated `received`
    /// (never earlier): a lease end is never taken for a release, however slow the
    /// round trip.
    pub fn observe(
        &mut self,
        mark: Mark,
        seen: Seen<'_>,
        sent: Instant,
        received: Instant,
    ) -> Observation {
        let previous_poll = std::mem::replace(&mut self.last_poll, mark.0);
        let before = self.current.take();
        let same = matches!(
            (&before, seen),
            (Some(v), Seen::Held { token, .. }) if *v.token == *token
        );
        self.current = match seen {
            Seen::Missing => None,
            Seen::Held { token, ttl, cas } => {
                let mut version = match (&before, same) {
                    (Some(v), true) => v.clone(),
                    _ => Version {
                        token: Arc::from(token),
                        cas,
                        earliest_expiry: None,
                        latest_expiry: None,
                    },
                };
                version.note_ttl(ttl, cas, sent, received);
                Some(version)
            }
        };
        if !same {
            // Another holder (or none): its hold may be short, poll fast again.
            self.attempt = 0;
        }
        Observation {
            mark,
            // Waiters judged by the previous poll wait for its token: only a change,
            // or waiters that joined since, need judging.
            anyone: !same || self.last_join > previous_poll,
            received,
            before,
            current: self.current.as_ref().map(|v| Arc::clone(&v.token)),
        }
    }

    /// How long to sleep after a poll whose reply came at `now`, before the next:
    /// [`delay`] of the polls so far, at most `max`, never past the instant the
    /// holder's key is due to expire (so a lease end is seen at once). `jitter` is
    /// uniform in `[0, 1)`.
    pub fn next_sleep(&mut self, now: Instant, jitter: f64, max: Duration) -> Duration {
        let mut sleep = delay(self.attempt, jitter, max);
        self.attempt = self.attempt.saturating_add(1);
        let due = self.current.as_ref().and_then(|v| v.latest_expiry);
        if let Some(due) = due.filter(|&due| due > now) {
            sleep = sleep.min(due - now + Duration::from_millis(1));
        }
        sleep
    }
}

/// What one poll means for each waiter ([`Poller::observe`]).
#[derive(Debug)]
pub struct Observation {
    mark: Mark,
    /// Whether any waiter may be concerned.
    anyone: bool,
    received: Instant,
    /// The holder's key as the polls before this one saw it.
    before: Option<Version>,
    /// The token this poll found.
    current: Option<Arc<[u8]>>,
}

impl Observation {
    /// Whether some waiter may be concerned: false when the poll found the token the
    /// poll before found and nobody joined since (every waiter still waits, and
    /// [`judge`](Observation::judge) would say so for each).
    pub fn concerns_anyone(&self) -> bool {
        self.anyone
    }

    /// The poll's verdict for one waiter: `Some(wake)` ends its wait. A waiter that did
    /// not know its holder learns it here (the token found).
    pub fn judge(&self, interest: &mut Interest) -> Option<Wake> {
        if !self.mark.counts_for(interest) {
            return None;
        }
        let Some(holder) = &interest.holder else {
            return match &self.current {
                // Held when its add lost, gone at the first look: released in between
                // (so is a known holder's token gone or replaced at the first look).
                None => Some(Wake::Released),
                Some(token) => {
                    interest.holder = Some(Arc::clone(token));
                    None
                }
            };
        };
        if self.current.as_deref() == Some(&**holder) {
            return None;
        }
        // Gone, or another holder's token: the holder it waited for is gone.
        let released = match &self.before {
            Some(v) if *v.token == **holder => {
                v.earliest_expiry.is_none_or(|at| self.received < at)
            }
            // Never seen under the key: released before any poll saw it.
            _ => true,
        };
        Some(if released {
            Wake::Released
        } else {
            Wake::Vacant
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *ORIGIN.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn schedule_doubles_from_below_a_millisecond_to_the_cap() {
        let max = DEFAULT_MAX_DELAY;
        let top: Vec<_> = (0..9).map(|a| delay(a, 0.999_999, max)).collect();
        assert!(top[0] <= Duration::from_micros(200) && top[0] > Duration::from_micros(199));
        for pair in top.windows(2) {
            assert!(pair[1] >= pair[0]);
        }
        assert!(top[8] <= max && top[8] > max - MS);
        assert_eq!(delay(0, 0.0, max), Duration::from_micros(100));
        assert_eq!(delay(1, 0.0, max), Duration::from_micros(200));
        assert_eq!(delay(u32::MAX, 0.0, max), max / 2);
        assert_eq!(delay(40, f64::NAN, max), max / 2);
        assert_eq!(delay(40, 7.0, max), max, "jitter is clamped");
        assert_eq!(delay(3, 0.0, Duration::ZERO), FIRST_DELAY / 2);
    }

    /// One waiter of its own poller: the single-waiter view of the rules.
    struct One {
        poller: Poller,
        interest: Interest,
    }

    impl One {
        fn new(holder: Option<&[u8]>) -> One {
            let mut poller = Poller::new();
            let interest = poller.join(holder);
            One { poller, interest }
        }

        /// A poll sent at `sent` and answered at `received` found `seen`.
        fn poll(&mut self, seen: Seen<'_>, sent: u64, received: u64) -> Option<Wake> {
            let mark = self.poller.poll_sent();
            let o = self.poller.observe(mark, seen, at(sent), at(received));
            o.judge(&mut self.interest)
        }

        /// A poll that found `token` with `ttl`, sent and answered at `ms`.
        fn held(&mut self, token: &[u8], ttl: i64, ms: u64) -> Option<Wake> {
            self.renewed(token, ttl, 1, ms)
        }

        /// A poll that found `token` with `ttl` and the CAS unique `cas`.
        fn renewed(&mut self, token: &[u8], ttl: i64, cas: u64, ms: u64) -> Option<Wake> {
            self.poll(Seen::Held { token, ttl, cas }, ms, ms)
        }

        fn gone(&mut self, ms: u64) -> Option<Wake> {
            self.poll(Seen::Missing, ms, ms)
        }
    }

    #[test]
    fn wakes_when_the_lease_is_due() {
        let mut w = One::new(None);
        let max = 20 * MS;
        assert_eq!(w.held(b"a", 2, 0), None);
        for _ in 0..20 {
            w.poller.next_sleep(at(0), 0.5, max);
        }
        // The same holder: the schedule goes on at the cap, cut at the key's expiry.
        assert_eq!(w.poller.next_sleep(at(1995), 0.99, max), 6 * MS);
        assert!(w.poller.next_sleep(at(2500), 0.99, max) > 10 * MS);
    }

    #[test]
    fn a_new_holder_starts_the_schedule_again() {
        let mut w = One::new(None);
        let max = DEFAULT_MAX_DELAY;
        assert_eq!(w.held(b"a", 30, 0), None);
        for _ in 0..20 {
            w.poller.next_sleep(at(0), 0.0, max);
        }
        assert_eq!(w.held(b"a", 30, 10), None);
        assert_eq!(
            w.poller.next_sleep(at(10), 0.0, max),
            max / 2,
            "the same holder"
        );
        // `a` released, `b` took the key: poll fast again (b's hold may be short).
        assert_eq!(w.held(b"b", 30, 20), Some(Wake::Released));
        assert_eq!(w.poller.next_sleep(at(20), 0.0, max), FIRST_DELAY / 2);
    }

    #[test]
    fn missing_at_first_poll_is_released() {
        let mut w = One::new(None);
        assert_eq!(w.gone(0), Some(Wake::Released));
    }

    #[test]
    fn gone_before_the_earliest_expiry_is_a_release() {
        let mut w = One::new(None);
        assert_eq!(w.held(b"a", 31, 0), None);
        assert_eq!(w.held(b"a", 31, 200), None);
        assert_eq!(w.gone(300), Some(Wake::Released));
    }

    #[test]
    fn gone_after_the_earliest_expiry_is_vacant() {
        let mut w = One::new(None);
        assert_eq!(w.held(b"a", 3, 0), None);
        // Earliest expiry: 3 s - 2 s (the clock may step by 2 in one tick) - margin
        // = 750 ms.
        assert_eq!(w.gone(760), Some(Wake::Vacant));
        let mut w = One::new(None);
        w.held(b"a", 3, 0);
        assert_eq!(w.gone(740), Some(Wake::Released));
        // A TTL of two seconds or less may end at any moment.
        let mut w = One::new(None);
        w.held(b"a", 2, 0);
        assert_eq!(w.gone(0), Some(Wake::Vacant));
    }

    #[test]
    fn slow_round_trips_never_turn_a_lease_end_into_a_release() {
        // The TTL counts from when the poll was sent, the disappearance from when
        // its answer came.
        let held = Seen::Held {
            token: b"a",
            ttl: 3,
            cas: 1,
        };
        let mut w = One::new(None);
        w.poll(held, 0, 500);
        assert_eq!(
            w.poll(Seen::Missing, 700, 800),
            Some(Wake::Vacant),
            "the expiry may have come at 750 ms"
        );
        let mut w = One::new(None);
        w.poll(held, 0, 500);
        assert_eq!(w.poll(Seen::Missing, 600, 700), Some(Wake::Released));
    }

    #[test]
    fn later_polls_tighten_the_bound() {
        let mut w = One::new(None);
        w.held(b"a", 3, 0);
        // Polled again 700 ms later, still 3 s: the expiry is no earlier than 1450 ms.
        w.held(b"a", 3, 700);
        assert_eq!(w.gone(1400), Some(Wake::Released));
    }

    #[test]
    fn a_renewed_lease_keeps_the_waiter_waiting_and_its_end_is_a_lease_end() {
        // Renewed to a longer lease (a new CAS, a larger TTL): still held, and the
        // bound moves later.
        let mut w = One::new(None);
        w.held(b"a", 3, 0);
        assert_eq!(w.renewed(b"a", 30, 2, 500), None);
        assert_eq!(w.gone(5_000), Some(Wake::Released));
        // Renewed to a shorter lease: the bound of the 30 s key no longer holds, its
        // end at 1.5 s is a lease end, not a release.
        let mut w = One::new(None);
        w.held(b"a", 30, 0);
        assert_eq!(w.renewed(b"a", 3, 2, 500), None);
        assert_eq!(w.gone(1_500), Some(Wake::Vacant));
        // The same CAS: the same key, whose bounds all hold (the tightest is kept).
        let mut w = One::new(None);
        w.held(b"a", 30, 0);
        w.held(b"a", 3, 500);
        assert_eq!(w.gone(1_500), Some(Wake::Released));
    }

    #[test]
    fn another_token_means_the_holder_is_gone() {
        let mut w = One::new(None);
        w.held(b"a", 30, 0);
        assert_eq!(w.held(b"b", 30, 5), Some(Wake::Released));
        let mut w = One::new(None);
        w.held(b"a", 2, 0);
        assert_eq!(w.held(b"b", 30, 900), Some(Wake::Vacant));
    }

    #[test]
    fn a_known_holder_replaced_at_the_first_look_was_released() {
        // The claim lost to "a"; the first poll finds "b": "a" released in between.
        let mut w = One::new(Some(b"a"));
        assert_eq!(w.held(b"b", 30, 0), Some(Wake::Released));
        let mut w = One::new(Some(b"a"));
        assert_eq!(w.gone(0), Some(Wake::Released));
        let mut w = One::new(Some(b"a"));
        assert_eq!(w.held(b"a", 30, 0), None);
        assert_eq!(w.held(b"b", 30, 5), Some(Wake::Released));
    }

    #[test]
    fn a_key_without_expiry_can_only_be_released() {
        let mut w = One::new(None);
        w.held(b"a", -1, 0);
        assert_eq!(
            w.poller.next_sleep(at(0), 0.0, DEFAULT_MAX_DELAY),
            FIRST_DELAY / 2
        );
        assert_eq!(w.gone(99_000), Some(Wake::Released));
    }

    #[test]
    fn a_poll_counts_only_for_the_waiters_that_joined_before_it_was_sent() {
        let mut p = Poller::new();
        let mut early = p.join(None);
        let sent = p.poll_sent();
        // Joined while the poll was on its way: it may have read the key before this
        // waiter's claim lost.
        let mut late = p.join(None);
        let o = p.observe(sent, Seen::Missing, at(0), at(1));
        assert_eq!(o.judge(&mut early), Some(Wake::Released));
        assert_eq!(o.judge(&mut late), None);
        assert_eq!(late.holder(), None, "still to learn its holder");
        let sent = p.poll_sent();
        let held = Seen::Held {
            token: b"b",
            ttl: 30,
            cas: 7,
        };
        let o = p.observe(sent, held, at(2), at(3));
        assert_eq!(o.judge(&mut late), None);
        assert_eq!(late.holder(), Some(&b"b"[..]));
    }

    #[test]
    fn many_waiters_share_one_view_and_each_keeps_its_holder() {
        let mut p = Poller::new();
        let held = |token| Seen::Held {
            token,
            ttl: 30,
            cas: 1,
        };
        // Two waiters of `a` (one knew it from its claim), one polled once.
        let mut knew = p.join(Some(b"a"));
        let mut learns = p.join(None);
        let m = p.poll_sent();
        let o = p.observe(m, held(b"a"), at(0), at(0));
        assert!(o.concerns_anyone(), "new waiters");
        assert_eq!((o.judge(&mut knew), o.judge(&mut learns)), (None, None));
        assert_eq!(knew.holder(), learns.holder());
        // The same holder again, nobody new: nobody to judge.
        let m = p.poll_sent();
        let o = p.observe(m, held(b"a"), at(4), at(4));
        assert!(!o.concerns_anyone());
        assert_eq!(o.judge(&mut knew), None);
        // A waiter that joins now shares the token's one copy.
        let joined = p.join(Some(b"a"));
        assert!(Arc::ptr_eq(
            joined.holder.as_ref().unwrap(),
            learns.holder.as_ref().unwrap()
        ));
        drop(joined);
        // A waiter that lost its claim to `c` (it joined after `a` released and `c`
        // took the key, before a poll saw `c`).
        let mut of_c = p.join(Some(b"c"));
        let m = p.poll_sent();
        let o = p.observe(m, held(b"c"), at(8), at(8));
        assert!(o.concerns_anyone());
        assert_eq!(o.judge(&mut knew), Some(Wake::Released));
        assert_eq!(o.judge(&mut learns), Some(Wake::Released));
        assert_eq!(o.judge(&mut of_c), None, "its holder holds");
    }
}
