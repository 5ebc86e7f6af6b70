//! Waiting by polling, for stores without notifications (memcached): the backoff
//! schedule and the rules that tell a release from a lease end. Pure functions of the
//! instants and jitter they are given.
//!
//! A waiter reads the lock key (`mg v t`) again and again, sleeping a capped,
//! jittered, exponentially growing delay in between ([`delay`]), never past its own
//! deadline, and waking right after the key's expiry is due.
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
//!
//! When the holder's token disappears (or is replaced by another token, which means
//! that holder is gone too) the [`Watch`] decides:
//! - before the earliest possible expiry: the holder released it → [`Wake::Released`];
//! - at or after it: the lease may have ended → [`Wake::Vacant`], try to add (a
//!   release in the last 2.25 s of the key's TTL, which with memcached's TTL rule is
//!   the last moments of the lease and the slack after it, is taken for an expiry:
//!   the waiter then tries to add, which is safe, only slower).
//!
//! The holder is the token the waiter's claim lost to, when the claim learned it
//! ([`Watch::new`]), else the token of the first poll.
//!
//! A holder that renews its lease (`extend`: the same token rewritten with a new TTL)
//! keeps its waiters waiting: its token is still there. The rewrite changes the key's
//! CAS unique, and the expiry bounds start again from the new TTL: a renewal may
//! shorten the lease, and a bound from before it would take the shortened lease's
//! end for a release.

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
/// jitter": waiters that arrived together spread out, none polls faster than half the
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

/// One waiter's view of one lock key across its polls.
#[derive(Debug, Clone)]
pub struct Watch {
    max_delay: Duration,
    attempt: u32,
    holder: Option<Vec<u8>>,
    /// The earliest instant the holder's key may expire (`None`: never).
    earliest_expiry: Option<Instant>,
    /// The latest instant the holder's key should expire.
    latest_expiry: Option<Instant>,
    /// The CAS unique of the holder's key at the last poll.
    cas: Option<u64>,
}

impl Watch {
    /// A waiter that has polled nothing yet, sleeping at most `max_delay` between polls,
    /// waiting for the release of `holder` (the token its claim lost to), or when that is
    /// unknown, of the token its first poll finds.
    pub fn new(max_delay: Duration, holder: Option<&[u8]>) -> Self {
        Watch {
            max_delay,
            attempt: 0,
            holder: holder.map(<[u8]>::to_vec),
            earliest_expiry: None,
            latest_expiry: None,
            cas: None,
        }
    }

    /// Feeds the result of a poll sent at `sent` whose reply came at `received`;
    /// `Some(wake)` ends the wait.
    ///
    /// The server read the key somewhere in between, so a TTL bounds the expiry from
    /// `sent` (never later than the truth) and a disappearance is dated `received`
    /// (never earlier): a lease end is never taken for a release, however slow the
    /// round trip.
    pub fn observe(&mut self, seen: Seen<'_>, sent: Instant, received: Instant) -> Option<Wake> {
        match (seen, &self.holder) {
            // Held when our add lost, gone at the first look: released in between (so
            // is a known holder's token gone or replaced at the first look, below).
            (Seen::Missing, None) => Some(Wake::Released),
            (Seen::Held { token, ttl, cas }, None) => {
                self.holder = Some(token.to_vec());
                self.note_ttl(ttl, cas, sent, received);
                None
            }
            (Seen::Held { token, ttl, cas }, Some(holder)) if token == holder.as_slice() => {
                self.note_ttl(ttl, cas, sent, received);
                None
            }
            // Gone, or another holder's token: the holder we waited for is gone.
            (Seen::Missing | Seen::Held { .. }, Some(_)) => {
                let released = self.earliest_expiry.is_none_or(|at| received < at);
                Some(if released {
                    Wake::Released
                } else {
                    Wake::Vacant
                })
            }
        }
    }

    fn note_ttl(&mut self, ttl: i64, cas: u64, sent: Instant, received: Instant) {
        if self.cas.replace(cas).is_some_and(|before| before != cas) {
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

    /// How long to sleep before the next poll, at `now`, for a wait that ends at
    /// `deadline`; `None` when the deadline has passed. `jitter` is uniform in `[0, 1)`.
    ///
    /// Never sleeps past the deadline, nor past the instant the holder's key is due to
    /// expire (so a lease end is seen at once).
    pub fn next_sleep(&mut self, now: Instant, deadline: Instant, jitter: f64) -> Option<Duration> {
        if now >= deadline {
            return None;
        }
        let mut sleep = delay(self.attempt, jitter, self.max_delay).min(deadline - now);
        self.attempt = self.attempt.saturating_add(1);
        if let Some(due) = self.latest_expiry.filter(|&due| due > now) {
            sleep = sleep.min(due - now + Duration::from_millis(1));
        }
        Some(sleep)
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

    #[test]
    fn never_sleeps_past_the_deadline() {
        let mut w = Watch::new(DEFAULT_MAX_DELAY, None);
        for _ in 0..20 {
            w.next_sleep(at(0), at(10_000), 0.5);
        }
        assert_eq!(w.next_sleep(at(100), at(103), 0.9), Some(3 * MS));
        assert_eq!(w.next_sleep(at(103), at(103), 0.9), None);
        assert_eq!(w.next_sleep(at(104), at(103), 0.9), None);
    }

    /// A poll that found `token` with `ttl`, sent and answered at `ms`.
    fn held(w: &mut Watch, token: &[u8], ttl: i64, ms: u64) -> Option<Wake> {
        renewed(w, token, ttl, 1, ms)
    }

    /// A poll that found `token` with `ttl` and the CAS unique `cas`.
    fn renewed(w: &mut Watch, token: &[u8], ttl: i64, cas: u64, ms: u64) -> Option<Wake> {
        w.observe(Seen::Held { token, ttl, cas }, at(ms), at(ms))
    }

    fn gone(w: &mut Watch, ms: u64) -> Option<Wake> {
        w.observe(Seen::Missing, at(ms), at(ms))
    }

    #[test]
    fn wakes_when_the_lease_is_due() {
        let mut w = Watch::new(20 * MS, None);
        for _ in 0..20 {
            w.next_sleep(at(0), at(10_000), 0.5);
        }
        assert_eq!(held(&mut w, b"a", 2, 0), None);
        assert_eq!(w.next_sleep(at(1995), at(10_000), 0.99), Some(6 * MS));
        assert!(w.next_sleep(at(2500), at(10_000), 0.99).unwrap() > 10 * MS);
    }

    #[test]
    fn missing_at_first_poll_is_released() {
        let mut w = Watch::new(DEFAULT_MAX_DELAY, None);
        assert_eq!(gone(&mut w, 0), Some(Wake::Released));
    }

    #[test]
    fn gone_before_the_earliest_expiry_is_a_release() {
        let mut w = Watch::new(DEFAULT_MAX_DELAY, None);
        assert_eq!(held(&mut w, b"a", 31, 0), None);
        assert_eq!(held(&mut w, b"a", 31, 200), None);
        assert_eq!(gone(&mut w, 300), Some(Wake::Released));
    }

    #[test]
    fn gone_after_the_earliest_expiry_is_vacant() {
        let mut w = Watch::new(DEFAULT_MAX_DELAY, None);
        assert_eq!(held(&mut w, b"a", 3, 0), None);
        // Earliest expiry: 3 s - 2 s (the clock may step by 2 in one tick) - margin
        // = 750 ms.
        assert_eq!(gone(&mut w, 760), Some(Wake::Vacant));
        let mut w = Watch::new(DEFAULT_MAX_DELAY, None);
        held(&mut w, b"a", 3, 0);
        assert_eq!(gone(&mut w, 740), Some(Wake::Released));
        // A TTL of two seconds or less may end at any moment.
        let mut w = Watch::new(DEFAULT_MAX_DELAY, None);
        held(&mut w, b"a", 2, 0);
        assert_eq!(gone(&mut w, 0), Some(Wake::Vacant));
    }

    #[test]
    fn slow_round_trips_never_turn_a_lease_end_into_a_release() {
        // The TTL counts from when the poll was sent, the disappearance from when
        // its answer came.
        let mut w = Watch::new(DEFAULT_MAX_DELAY, None);
        w.observe(
            Seen::Held {
                token: b"a",
                ttl: 3,
                cas: 1,
            },
            at(0),
            at(500),
        );
        assert_eq!(
            w.observe(Seen::Missing, at(700), at(800)),
            Some(Wake::Vacant),
            "the expiry may have come at 750 ms"
        );
        let mut w = Watch::new(DEFAULT_MAX_DELAY, None);
        w.observe(
            Seen::Held {
                token: b"a",
                ttl: 3,
                cas: 1,
            },
            at(0),
            at(500),
        );
        assert_eq!(
            w.observe(Seen::Missing, at(600), at(700)),
            Some(Wake::Released)
        );
    }

    #[test]
    fn later_polls_tighten_the_bound() {
        let mut w = Watch::new(DEFAULT_MAX_DELAY, None);
        held(&mut w, b"a", 3, 0);
        // Polled again 700 ms later, still 3 s: the expiry is no earlier than 1450 ms.
        held(&mut w, b"a", 3, 700);
        assert_eq!(gone(&mut w, 1400), Some(Wake::Released));
    }

    #[test]
    fn a_renewed_lease_keeps_the_waiter_waiting_and_its_end_is_a_lease_end() {
        // Renewed to a longer lease (a new CAS, a larger TTL): still held, and the
        // bound moves later.
        let mut w = Watch::new(DEFAULT_MAX_DELAY, None);
        held(&mut w, b"a", 3, 0);
        assert_eq!(renewed(&mut w, b"a", 30, 2, 500), None);
        assert_eq!(gone(&mut w, 5_000), Some(Wake::Released));
        // Renewed to a shorter lease: the bound of the 30 s key no longer holds, its
        // end at 1.5 s is a lease end, not a release.
        let mut w = Watch::new(DEFAULT_MAX_DELAY, None);
        held(&mut w, b"a", 30, 0);
        assert_eq!(renewed(&mut w, b"a", 3, 2, 500), None);
        assert_eq!(gone(&mut w, 1_500), Some(Wake::Vacant));
        // The same CAS: the same key, whose bounds all hold (the tightest is kept).
        let mut w = Watch::new(DEFAULT_MAX_DELAY, None);
        held(&mut w, b"a", 30, 0);
        held(&mut w, b"a", 3, 500);
        assert_eq!(gone(&mut w, 1_500), Some(Wake::Released));
    }

    #[test]
    fn another_token_means_the_holder_is_gone() {
        let mut w = Watch::new(DEFAULT_MAX_DELAY, None);
        held(&mut w, b"a", 30, 0);
        assert_eq!(held(&mut w, b"b", 30, 5), Some(Wake::Released));
        let mut w = Watch::new(DEFAULT_MAX_DELAY, None);
        held(&mut w, b"a", 2, 0);
        assert_eq!(held(&mut w, b"b", 30, 900), Some(Wake::Vacant));
    }

    #[test]
    fn a_known_holder_replaced_at_the_first_look_was_released() {
        // The claim lost to "a"; the first poll finds "b": "a" released in between.
        let mut w = Watch::new(DEFAULT_MAX_DELAY, Some(b"a"));
        assert_eq!(held(&mut w, b"b", 30, 0), Some(Wake::Released));
        let mut w = Watch::new(DEFAULT_MAX_DELAY, Some(b"a"));
        assert_eq!(gone(&mut w, 0), Some(Wake::Released));
        let mut w = Watch::new(DEFAULT_MAX_DELAY, Some(b"a"));
        assert_eq!(held(&mut w, b"a", 30, 0), None);
        assert_eq!(held(&mut w, b"b", 30, 5), Some(Wake::Released));
    }

    #[test]
    fn a_key_without_expiry_can_only_be_released() {
        let mut w = Watch::new(DEFAULT_MAX_DELAY, None);
        held(&mut w, b"a", -1, 0);
        assert_eq!(w.next_sleep(at(0), at(100_000), 0.0), Some(FIRST_DELAY / 2));
        assert_eq!(gone(&mut w, 99_000), Some(Wake::Released));
    }
}
