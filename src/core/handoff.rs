//! The rules of the in-process hand-off of an exclusive lock, free of IO and clocks.
//!
//! While a guard of a cache holds an exclusive lock that it took through the cache's
//! queue of waiters (`core::waiters`), releasing it with a waiter of the same cache
//! and key queued passes the lock to that waiter without a release and a claim on the
//! server: the lock key keeps its token, and the waiter's guard holds it from then on.
//! Two rules keep that honest:
//!
//! - **The lease.** The new holder's lease is the one the server confirmed (the last
//!   claim or renewal of the token, sent at an instant we read before sending, plus its
//!   lease). It is handed over as it is while what is left of it is at least the new
//!   holder's own lease less the clock drift Redlock allows ([`drift`]:
//!   1 % of the lease + 2 ms), see [`lease_suffices`]; otherwise the new holder renews
//!   it first (one owner-checked extend), and if that finds the lock gone the lock was
//!   lost and the waiter goes back to claiming it on the server.
//! - **Fairness to other processes.** A cache keeps the lock by hand-offs for a
//!   *streak* of at most [`MAX_STREAK`] hand-offs and at most [`streak_time`] from the
//!   claim that started it; then it releases it on the server, and its first waiter
//!   waits for that release on the server like a waiter of any process, so that
//!   waiters of other processes (which hear the release at once) claim it first.
//!
//! And two exclusions. **Fences**: a `fenced()` waiter is never handed a lock (the
//! holder releases on the server and it claims): its fence must be larger than every
//! earlier holder's, which only the server's counter gives across processes, while a
//! handed lock keeps its token and would keep the last holder's fence. **Doubt**: no
//! hand-off while an extend or a watchdog renewal of the holder is unanswered (a late
//! one could still shorten the lease), after a claim of the cache found another
//! holder, past the holder's lease end, or to a waiter whose deadline passed.

use std::time::{Duration, Instant};

/// The most hand-offs in one streak: the next release goes to the server.
pub const MAX_STREAK: u32 = 256;

/// The longest streak, from the claim that started it (see [`streak_time`]).
pub const MAX_STREAK_TIME: Duration = Duration::from_millis(10);

/// How long a streak that starts with a claim of lease `lease` may last: half the
/// lease, at most [`MAX_STREAK_TIME`].
pub fn streak_time(lease: Duration) -> Duration {
    (lease / 2).min(MAX_STREAK_TIME)
}

/// The clock drift Redlock allows a lease: 1 % of it, plus 2 ms.
pub fn drift(lease: Duration) -> Duration {
    lease / 100 + Duration::from_millis(2)
}

/// Whether a lock whose lease is confirmed until `lease_end` may pass at `now` to a
/// holder of lease `lease` as it is: what is left is at least `lease` less its
/// [`drift`]. Otherwise the new holder renews it first.
pub fn lease_suffices(lease_end: Instant, now: Instant, lease: Duration) -> bool {
    lease_end.saturating_duration_since(now) >= lease.saturating_sub(drift(lease))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_is_one_percent_and_two_milliseconds() {
        assert_eq!(drift(Duration::ZERO), Duration::from_millis(2));
        assert_eq!(drift(Duration::from_secs(1)), Duration::from_millis(12));
    }

    #[test]
    fn a_lease_suffices_within_the_drift() {
        let now = Instant::now();
        let lease = Duration::from_secs(10);
        let end = |ms| now + Duration::from_millis(ms);
        assert!(lease_suffices(end(10_000), now, lease));
        assert!(
            lease_suffices(end(9_898), now, lease),
            "exactly lease - drift"
        );
        assert!(!lease_suffices(end(9_897), now, lease));
        assert!(
            !lease_suffices(now, now + Duration::from_secs(1), lease),
            "ended"
        );
        // A short lease: the drift may cover it all.
        let short = Duration::from_millis(1);
        assert!(lease_suffices(now, now, short));
        // A lease longer than the new holder's suffices, whatever is left of it.
        assert!(lease_suffices(end(60_000), now, lease));
    }

    #[test]
    fn a_streak_lasts_half_the_lease_at_most_ten_milliseconds() {
        assert_eq!(streak_time(Duration::from_secs(30)), MAX_STREAK_TIME);
        assert_eq!(
            streak_time(Duration::from_millis(8)),
            Duration::from_millis(4)
        );
    }
}
