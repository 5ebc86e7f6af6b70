//! The acquisition state machine of both lease locks, free of IO and clocks.
//!
//! A caller tries to add the lock key. If another holder has it, the caller waits
//! until the first of: the holder releases (→ [`Outcome::Released`]), the holder's
//! lease ends (→ try to add again: one waiter wins, the others go back to waiting),
//! or the caller's own bound passes (→ [`Outcome::TimedOut`]).
//!
//! The flavors drive it: [`Acquisition::start`] says what to do first, and each result
//! fed back ([`Acquisition::added`], [`Acquisition::woke`]) says what to do next.
//!
//! ```text
//!   start ─► Add ──won──► Finish(Acquired)
//!             │ lost, bound not reached
//!             ▼
//!           Wait(bound) ──Released──► Finish(Released)
//!             │  └───────Deadline──► Finish(TimedOut)
//!             └─Vacant (lease ended)─► Add
//! ```
//!
//! An *exclusive* acquisition ([`Acquisition::exclusive`], the driver of
//! `ExclusiveLock`) has another exit: a release does not end its wait but sends it
//! back to claim the key, like a lease end, so it finishes only holding the lock
//! ([`Outcome::Acquired`]) or when its deadline passes ([`Outcome::TimedOut`]), never
//! with [`Outcome::Released`].
//!
//! ```text
//!   start ─► Add ──won──► Finish(Acquired)
//!             │ lost, deadline not reached
//!             ▼
//!           Wait(deadline) ──Deadline──► Finish(TimedOut)
//!             └─Released or Vacant, deadline not reached─► Add
//! ```

use std::time::{Duration, Instant};

use crate::core::lease::deadline;

/// How an acquisition ended.
///
/// ```
/// # #[cfg(feature = "blocking")] {
/// use std::time::Duration;
/// use aiolock::{Outcome, blocking::Cache};
///
/// let cache = Cache::memory();
/// let guard = cache.redlock("report", Duration::from_secs(5)).acquire()?;
/// match guard.outcome() {
///     Outcome::Acquired => { /* compute, store, release */ }
///     Outcome::Released => { /* another caller stored it: read the cache */ }
///     Outcome::TimedOut => { /* go on without the lock */ }
/// }
/// assert!(guard.is_acquired());
/// # }
/// # Ok::<(), aiolock::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// This caller holds the lock: compute, store, then release.
    Acquired,
    /// Another holder released the lock while this caller waited: the value it
    /// computed should now be in the cache. This caller does not hold the lock.
    Released,
    /// The caller's wait bound passed first (by default: one lease after arrival).
    /// This caller does not hold the lock; go on without it, as aiocache does.
    TimedOut,
}

impl Outcome {
    /// Whether the caller holds the lock.
    pub fn is_acquired(self) -> bool {
        self == Outcome::Acquired
    }
}

/// How a backend's attempt to take a lock key ended ([`Backend::claim`](crate::Backend::claim)).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Claim {
    /// Our token is stored under the key: we hold the lock.
    Won,
    /// Another holder has the key. `holder` is its token when the backend learned it in
    /// the same round trip (memory, Redis), so that the wait counts only *that*
    /// holder's release; `None` when it did not (memcached learns it while polling).
    Held {
        /// The holder's token, when known.
        holder: Option<Vec<u8>>,
    },
}

/// Why a backend's wait for a held lock key returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wake {
    /// The holder released the lock (or the key was deleted) while we waited; or the
    /// key was already gone when the wait began: it was held when our add lost, so it
    /// was released in between (a lease that ended in that same instant is taken for
    /// a release too, the rarer and harmless mistake).
    Released,
    /// The holder's lease ended while we watched, without a release: try to add the
    /// key again (one waiter wins it).
    Vacant,
    /// The deadline passed and the key is still held.
    Deadline,
}

/// What the driver must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Add the lock key (if absent) with our token and the lease as TTL.
    Add,
    /// Wait for the key to be released, at most until this instant.
    Wait(Instant),
    /// Done.
    Finish(Outcome),
}

/// One caller's acquisition of one lock.
#[derive(Debug, Clone)]
pub struct Acquisition {
    wait: Duration,
    bound: Option<Instant>,
    exclusive: bool,
}

impl Acquisition {
    /// An acquisition that waits at most `wait` after its first add is lost.
    ///
    /// The bound is fixed when the first add returns, so an uncontended acquisition
    /// never reads the clock for it.
    #[inline]
    pub fn new(wait: Duration) -> Self {
        Acquisition {
            wait,
            bound: None,
            exclusive: false,
        }
    }

    /// An exclusive acquisition: it claims the key again after every release and
    /// lease end it sees, until it wins or `wait` has passed since its first claim
    /// was lost. `Duration::ZERO` claims once and never waits.
    pub fn exclusive(wait: Duration) -> Self {
        Acquisition {
            exclusive: true,
            ..Acquisition::new(wait)
        }
    }

    fn bound(&mut self, now: Instant) -> Instant {
        *self.bound.get_or_insert_with(|| deadline(now, self.wait))
    }

    /// The first action: always an add.
    #[inline]
    pub fn start(&mut self) -> Action {
        Action::Add
    }

    /// The add returned: `won` says whether our token is now stored. The clock is
    /// read only when the add was lost.
    #[inline]
    pub fn added(&mut self, won: bool, now: impl FnOnce() -> Instant) -> Action {
        if won {
            return Action::Finish(Outcome::Acquired);
        }
        let now = now();
        let bound = self.bound(now);
        if now >= bound {
            Action::Finish(Outcome::TimedOut)
        } else {
            Action::Wait(bound)
        }
    }

    /// The wait returned with `wake`.
    pub fn woke(&mut self, wake: Wake, now: Instant) -> Action {
        match wake {
            Wake::Released if !self.exclusive => Action::Finish(Outcome::Released),
            Wake::Deadline => Action::Finish(Outcome::TimedOut),
            Wake::Released | Wake::Vacant if now >= self.bound(now) => {
                Action::Finish(Outcome::TimedOut)
            }
            Wake::Released | Wake::Vacant => Action::Add,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: u64) -> Instant {
        // One fixed origin per test process; only differences matter.
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *ORIGIN.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    #[test]
    fn uncontended_add_acquires() {
        let mut a = Acquisition::new(Duration::from_secs(1));
        assert_eq!(a.start(), Action::Add);
        assert_eq!(a.added(true, || at(0)), Action::Finish(Outcome::Acquired));
    }

    #[test]
    fn lost_add_waits_until_own_bound() {
        let mut a = Acquisition::new(Duration::from_millis(1000));
        a.start();
        assert_eq!(a.added(false, || at(1)), Action::Wait(at(1001)));
        assert_eq!(
            a.woke(Wake::Released, at(50)),
            Action::Finish(Outcome::Released)
        );
    }

    #[test]
    fn vacant_key_is_re_elected_and_losers_wait_again() {
        let mut winner = Acquisition::new(Duration::from_millis(1000));
        let mut loser = Acquisition::new(Duration::from_millis(1000));
        for a in [&mut winner, &mut loser] {
            a.start();
            assert_eq!(a.added(false, || at(0)), Action::Wait(at(1000)));
            assert_eq!(a.woke(Wake::Vacant, at(300)), Action::Add);
        }
        assert_eq!(
            winner.added(true, || at(301)),
            Action::Finish(Outcome::Acquired)
        );
        assert_eq!(loser.added(false, || at(301)), Action::Wait(at(1000)));
        assert_eq!(
            loser.woke(Wake::Released, at(400)),
            Action::Finish(Outcome::Released)
        );
    }

    #[test]
    fn bound_reached_times_out() {
        let wait = Duration::from_millis(100);
        let mut a = Acquisition::new(wait);
        a.start();
        a.added(false, || at(0));
        assert_eq!(
            a.woke(Wake::Deadline, at(100)),
            Action::Finish(Outcome::TimedOut)
        );
        let mut b = Acquisition::new(Duration::from_nanos(0));
        b.start();
        assert_eq!(
            b.added(false, || at(100)),
            Action::Finish(Outcome::TimedOut)
        );
        let mut c = Acquisition::new(wait);
        c.start();
        c.added(false, || at(0));
        assert_eq!(
            c.woke(Wake::Vacant, at(150)),
            Action::Finish(Outcome::TimedOut)
        );
    }

    #[test]
    fn exclusive_claims_again_after_release_and_lease_end() {
        let mut a = Acquisition::exclusive(Duration::from_millis(1000));
        assert_eq!(a.start(), Action::Add);
        assert_eq!(a.added(false, || at(0)), Action::Wait(at(1000)));
        assert_eq!(a.woke(Wake::Released, at(100)), Action::Add);
        // Lost again to another waiter: the deadline stays the first one.
        assert_eq!(a.added(false, || at(101)), Action::Wait(at(1000)));
        assert_eq!(a.woke(Wake::Vacant, at(500)), Action::Add);
        assert_eq!(a.added(true, || at(501)), Action::Finish(Outcome::Acquired));
    }

    #[test]
    fn exclusive_deadline_times_out_even_after_a_release() {
        let mut a = Acquisition::exclusive(Duration::from_millis(100));
        a.start();
        a.added(false, || at(0));
        assert_eq!(
            a.woke(Wake::Released, at(100)),
            Action::Finish(Outcome::TimedOut),
            "a release at the deadline does not start another claim"
        );
        let mut b = Acquisition::exclusive(Duration::from_millis(100));
        b.start();
        b.added(false, || at(0));
        assert_eq!(
            b.woke(Wake::Deadline, at(100)),
            Action::Finish(Outcome::TimedOut)
        );
    }

    #[test]
    fn exclusive_zero_wait_claims_once() {
        let mut a = Acquisition::exclusive(Duration::ZERO);
        assert_eq!(a.start(), Action::Add);
        assert_eq!(
            a.added(false, || at(7)),
            Action::Finish(Outcome::TimedOut),
            "try: a lost claim never waits"
        );
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        /// What happens to a waiting caller next, `dt` ms after the previous step.
        #[derive(Debug, Clone)]
        enum Event {
            /// The claim (if one is due) returns; `won` says whether it won.
            Claim { won: bool, dt: u64 },
            /// The wait (if one is due) returns with this wake.
            Wake { wake: u8, dt: u64 },
        }

        fn event() -> impl Strategy<Value = Event> {
            prop_oneof![
                (any::<bool>(), 0..400u64).prop_map(|(won, dt)| Event::Claim { won, dt }),
                (0..3u8, 0..400u64).prop_map(|(wake, dt)| Event::Wake { wake, dt }),
            ]
        }

        proptest! {
            /// Drives the machine with any sequence of claim results, wakes and clock
            /// steps, and checks each action against a direct model: an exclusive
            /// acquisition finishes only by winning a claim (`Acquired`) or once its
            /// deadline (first lost claim + wait) is reached (`TimedOut`); a
            /// stampede acquisition also finishes on a release (`Released`). A wait
            /// is always bounded by that deadline.
            #[test]
            fn matches_the_model(
                exclusive in any::<bool>(),
                wait in 0..1000u64,
                events in proptest::collection::vec(event(), 0..40),
            ) {
                let mut a = if exclusive {
                    Acquisition::exclusive(Duration::from_millis(wait))
                } else {
                    Acquisition::new(Duration::from_millis(wait))
                };
                let mut now = 0u64;
                let mut deadline: Option<u64> = None;
                let mut action = a.start();
                prop_assert_eq!(action, Action::Add);
                for e in events {
                    let expected = match (action, e) {
                        (Action::Finish(_), _) => break,
                        (Action::Add, Event::Claim { won, dt }) => {
                            now += dt;
                            action = a.added(won, || at(now));
                            if won {
                                Action::Finish(Outcome::Acquired)
                            } else {
                                let d = *deadline.get_or_insert(now + wait);
                                if now >= d {
                                    Action::Finish(Outcome::TimedOut)
                                } else {
                                    Action::Wait(at(d))
                                }
                            }
                        }
                        (Action::Wait(until), Event::Wake { wake, dt }) => {
                            prop_assert_eq!(Some(until), deadline.map(at));
                            // A backend returns Deadline only once it is reached,
                            // and other wakes before it.
                            let d = deadline.unwrap();
                            let (wake, t) = match wake {
                                0 => (Wake::Released, (now + dt).min(d)),
                                1 => (Wake::Vacant, (now + dt).min(d)),
                                _ => (Wake::Deadline, d.max(now)),
                            };
                            now = t;
                            action = a.woke(wake, at(now));
                            match wake {
                                Wake::Deadline => Action::Finish(Outcome::TimedOut),
                                Wake::Released if !exclusive => {
                                    Action::Finish(Outcome::Released)
                                }
                                _ if now >= d => Action::Finish(Outcome::TimedOut),
                                _ => Action::Add,
                            }
                        }
                        // An event that does not fit the pending action: skip it.
                        _ => continue,
                    };
                    prop_assert_eq!(action, expected);
                    if exclusive {
                        prop_assert_ne!(action, Action::Finish(Outcome::Released));
                    }
                }
            }
        }
    }
}
