//! [`RedLock`]: the lease lock against cache stampedes.

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backend::Backend;
use super::background::Job;
use super::cache::{AnyBackend, Cache};
use super::handoff::{Entered, acquire_queued};
use super::watchdog::Watch;
use super::{maybe_async, rt};
use crate::core::fork;
use crate::core::lease::{MAX_DURATION, check_lease, deadline};
use crate::core::token::Token;
use crate::core::wait::{Acquisition, Action, Claim, Outcome, Wake};
use crate::core::waiters::{Claiming, Release, Seat, Turn};
use crate::error::{Error, ErrorKind, Result};
use crate::key;
use crate::key::KeyBuf;
use crate::trace::{self, Op};
use crate::value::Replication;

/// A lease lock on one key, for cache-stampede protection (aiocache's `RedLock`).
///
/// The first caller to [`acquire`](RedLock::acquire) it holds it for at most the lease
/// and computes; every other caller waits until the holder releases it (then reads the
/// cache), at most until the holder's lease ends (then one of them is elected the new
/// holder) and at most its own bound (by default, one lease). It is stored as the key
/// `namespace + key + lock_suffix` holding a random token; only that token releases it.
/// The suffix is `-lock` (aiocache's) unless the cache was opened with another
/// ([`CacheBuilder::lock_suffix`](super::CacheBuilder::lock_suffix), the URL option
/// `lock_suffix`).
///
/// On memcached the lock key as a whole must fit memcached's 250 bytes: with the
/// default suffix, `namespace + key` may be at most 245 bytes for a lock (250 −
/// `lock_suffix.len()` in general), while `get`/`set` accept 250. A longer key fails
/// [`acquire`](RedLock::acquire) with [`InvalidKey`](crate::ErrorKind::InvalidKey).
///
/// ```
/// # #[cfg(feature = "blocking")] {
/// use std::time::Duration;
/// use aiolock::{Outcome, blocking::{Cache, RedLock}};
///
/// let cache = Cache::memory();
/// let guard = RedLock::new(&cache, "report", Duration::from_secs(5)).acquire()?;
/// assert_eq!(guard.outcome(), Outcome::Acquired);
/// cache.set("report", b"...", None)?;
/// assert!(guard.release()?, "the lock was still ours");
/// # }
/// # Ok::<(), aiolock::Error>(())
/// ```
#[derive(Clone)]
pub struct RedLock<B = AnyBackend> {
    cache: Cache<B>,
    key: KeyBuf,
    empty_key: bool,
    lease: Duration,
    wait: Option<Duration>,
    fenced: bool,
    watchdog: bool,
}

impl<B> std::fmt::Debug for RedLock<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.debug_as("RedLock", f)
    }
}

impl<B> RedLock<B> {
    pub(super) fn debug_as(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("lease", &self.lease)
            .field("wait", &self.wait)
            .field("fenced", &self.fenced)
            .field("watchdog", &self.watchdog)
            .finish()
    }
}

impl<B: Backend> RedLock<B> {
    /// A lock on `key` of `cache`, held for at most `lease` once acquired.
    ///
    /// Nothing is checked or sent until [`acquire`](RedLock::acquire).
    #[inline]
    pub fn new(cache: &Cache<B>, key: impl AsRef<[u8]>, lease: Duration) -> Self {
        let key = key.as_ref();
        let full = key::lock_key(cache.namespace(), key, cache.lock_suffix()).unwrap_or_default();
        RedLock {
            cache: cache.clone(),
            key: full,
            empty_key: key.is_empty(),
            lease,
            wait: None,
            fenced: false,
            watchdog: false,
        }
    }

    /// How long a caller that finds the lock held waits at most (default: the lease,
    /// as in aiocache). `Duration::ZERO` tries once and never waits.
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// use std::time::Duration;
    /// use aiolock::{Outcome, blocking::Cache};
    ///
    /// let cache = Cache::memory();
    /// let holder = cache.redlock("k", Duration::from_secs(30)).acquire()?;
    /// let other = cache
    ///     .redlock("k", Duration::from_secs(30))
    ///     .wait_at_most(Duration::from_millis(10))
    ///     .acquire()?;
    /// assert_eq!(other.outcome(), Outcome::TimedOut);
    /// # drop(holder);
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    pub fn wait_at_most(mut self, bound: Duration) -> Self {
        self.wait = Some(bound);
        self
    }

    /// Gives every acquisition a *fencing token* ([`LockGuard::fence`]): a number
    /// that grows with each acquisition of the key, in every process, kept under
    /// the key `lock key + "-fence"` (without TTL), incremented with the claim
    /// (Redis: in the same script, no extra round trip; memcached: in the claim's
    /// write, followed by a read that checks the lock is still ours, no extra round
    /// trip either; memory: the same mutex section).
    ///
    /// A lease cannot stop a holder that paused past its lease (a GC pause,
    /// `SIGSTOP`, a slow disk) from writing after the next holder started. A fence
    /// can: send it with every write to the resource the lock protects, and let
    /// the resource keep the highest fence it has seen and refuse writes carrying
    /// a lower one. The paused holder's late write then fails instead of
    /// overwriting the newer holder's.
    ///
    /// What the counter survives: it never expires; on memory it lives as long as
    /// the store; on Redis it survives a restart with persistence (RDB/AOF), and a
    /// counter lost by a restart without persistence is recreated from the server's
    /// clock in microseconds, so it still grows unless more acquisitions than
    /// microseconds passed since it was created; on memcached an evicted, flushed or
    /// restarted counter is recreated the same way from the client's clock, so
    /// there the guarantee also needs the clients' clocks to agree (within the time
    /// since the counter was created). A fenced lock key is 6 bytes longer
    /// (memcached: at most 250 bytes with it).
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// use std::time::Duration;
    /// use aiolock::blocking::Cache;
    ///
    /// let cache = Cache::memory();
    /// let lease = Duration::from_secs(30);
    /// let first = cache.redlock("report", lease).fenced().acquire()?;
    /// let fence = first.fence().expect("held, fenced");
    /// first.release()?;
    /// let second = cache.redlock("report", lease).fenced().acquire()?;
    /// assert!(second.fence().unwrap() > fence);
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    pub fn fenced(mut self) -> Self {
        self.fenced = true;
        self
    }

    /// Renews the lease automatically while the guard lives (a *watchdog*): a third of
    /// the lease after the acquisition and after each confirmed renewal, the lock's
    /// lease is renewed, owner-checked ([`LockGuard::extend`] with the lease), by the
    /// cache's watchdog worker. The work under the lock learns through the guard's
    /// [`Watch`] ([`LockGuard::watch`]) when a renewal fails or finds the lock taken:
    /// at once, and before the lease would have ended; the watchdog then stops
    /// renewing that guard. Releasing or dropping the guard stops its renewals at
    /// once.
    ///
    /// One worker per cache renews every watched guard of the cache: in the blocking
    /// flavor a thread (`aiolock-watchdog`), in the async flavor a task on the runtime
    /// of the first watched acquisition, which sends each renewal as a task of its
    /// own. It starts with the first watched guard and ends when the cache is dropped;
    /// a cache that never watches has none.
    ///
    /// Only an acquisition that holds the lock is watched (a `RedLock` waiter that goes
    /// on without the lock has nothing to renew).
    ///
    /// What bounds a renewal that gets no answer (a stalled server): in the async
    /// flavor, the guard's lost instant (its last confirmed lease end minus a margin of
    /// a tenth of the lease, at most a second): the renewal is given up then and the
    /// guard reported lost, and the other guards' renewals are not held up. In the
    /// blocking flavor the worker sends the renewals one after the other, and a renewal
    /// without an answer holds it up to the backend's response timeout
    /// ([`CacheBuilder::response_timeout`](super::CacheBuilder::response_timeout),
    /// 2 s by default): the other guards' renewals come late by as much. Choose a lease
    /// of at least three times the response timeout (6 s with the default), and one
    /// hung renewal delays no other guard's renewal past its lease end (a renewal is
    /// due more than half a lease before the guard would count as lost). The holder's [`Watch::check`] and
    /// [`Watch::wait_lost`] read the clock and report the hung guard's loss on time in
    /// both flavors.
    ///
    /// A watched lock is still a lease lock: a holder paused past its lease (`SIGSTOP`,
    /// a long GC pause) is not renewed meanwhile, and a renewal cannot stop a paused
    /// holder's late writes; see [`fenced`](RedLock::fenced). In a process forked
    /// from the holder's, nothing of the parent's is renewed: the parent's worker
    /// goes on renewing its guards, and the child's copies of their watches report a
    /// loss.
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// use std::time::Duration;
    /// use aiolock::blocking::Cache;
    ///
    /// let cache = Cache::memory();
    /// let lease = Duration::from_millis(300);
    /// let guard = cache.redlock("report", lease).watchdog().acquire()?;
    /// let watch = guard.watch().expect("acquired, watched");
    /// // Work for longer than the lease: the watchdog keeps the lock ours.
    /// assert!(watch.wait_lost(lease * 2).is_none(), "renewed all along");
    /// watch.check()?;
    /// assert!(guard.release()?, "still ours");
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    pub fn watchdog(mut self) -> Self {
        self.watchdog = true;
        self
    }

    /// The key the lock is stored under: `namespace + key + lock_suffix` (by default
    /// `namespace + key + "-lock"`).
    pub fn lock_key(&self) -> &[u8] {
        &self.key
    }

    /// Takes the lock, or waits for its holder (see [`Outcome`]).
    ///
    /// Errors: [`InvalidArgument`](crate::ErrorKind::InvalidArgument) for a zero or
    /// too long lease, [`InvalidKey`](crate::ErrorKind::InvalidKey) for an empty key,
    /// and the backend's errors. Not getting the lock is not an error.
    ///
    /// When the add fails without an answer (a [`Timeout`](crate::ErrorKind::Timeout),
    /// a broken [`Connection`](crate::ErrorKind::Connection), a garbled reply), the
    /// server may still apply it, later: the lock would then be held by nobody for a
    /// whole lease. The cache releases it (owner-checked, with this acquisition's
    /// token) in the background: one worker per cache (a thread in the blocking
    /// flavor, a task in the async one) retries with a short backoff (10 ms doubling
    /// to 200 ms) until the server answers, for at most one lease from the failure.
    /// The error is returned at once, without waiting for that cleanup;
    /// [`Cache::flush`] waits for it.
    ///
    /// # Cancel safety
    ///
    /// (async flavor) Dropping the future before it completes never leaves the lock
    /// held by nobody: if the add may have been applied, the dropped acquisition
    /// releases it (owner-checked) like a dropped guard.
    #[maybe_async]
    pub fn acquire(self) -> impl Future<Output = Result<LockGuard<B>>> + Send {
        self.acquire_in(Acquisition::new, |guard| guard)
    }

    /// The acquisition loop of both lease locks: `machine` makes the state machine
    /// from the wait bound (the lease unless set), [`Acquisition::new`] for a
    /// `RedLock`, [`Acquisition::exclusive`] for an
    /// [`ExclusiveLock`](super::ExclusiveLock)'s `try_acquire`. The claims, the waits
    /// with the holder's token, the `Cache::waiting` count, the spans and the cleanup
    /// of a failed claim are the same. `finish` makes the caller's result of the guard.
    /// (An exclusive acquisition that may wait takes
    /// [`acquire_queued_in`](RedLock::acquire_queued_in).)
    ///
    /// Not an `async fn`: one stores its arguments twice in its future, and a task
    /// waiting for a lock carries that future for as long as it waits. The lock's
    /// parts go into the guard at once, and the future holds them only there.
    #[maybe_async]
    pub(super) fn acquire_in<T>(
        self,
        machine: fn(Duration) -> Acquisition,
        finish: impl FnOnce(LockGuard<B>) -> T + Send,
    ) -> impl Future<Output = Result<T>> + Send {
        let RedLock {
            cache,
            key,
            empty_key,
            fenced,
            lease,
            wait,
            watchdog,
        } = self;
        // The guard is armed (holds the token) while an add is in flight, so a
        // cancelled or failed acquisition releases what it may have taken.
        let mut guard = LockGuard::unheld(cache, key, lease);
        async move {
            let span = trace::span(Op::Acquire, &guard.key, guard.cache.backend().name());
            // Checked, and claimed at once when the store is in process (memory): an
            // uncontended lock builds none of the futures of the wait machinery.
            // (In a block of its own, so that none of it is kept in the future
            // while it waits.)
            let first_lost = {
                let _entered = trace::enter(&span);
                match Self::start(&mut guard, empty_key, fenced, false) {
                    Ok(Started::Lost(holder)) => Some(holder),
                    Ok(Started::NotClaimed | Started::Queued(_)) => None,
                    // The guard moved once, straight into the result.
                    Ok(Started::Won) => {
                        trace::end(&span, &Ok(&guard), |g| trace::outcome(g.outcome));
                        if watchdog {
                            guard.start_watch();
                        }
                        return Ok(finish(guard));
                    }
                    Err(e) => {
                        trace::failed(&span, &e);
                        return Err(e);
                    }
                }
            };
            let run = Self::acquire_untraced(&mut guard, first_lost, fenced, wait, machine);
            let result = in_span!(span, run);
            if let Err(e) = result {
                trace::failed(&span, &e);
                return Err(e);
            }
            trace::end(&span, &Ok(&guard), |g| trace::outcome(g.outcome));
            if watchdog {
                guard.start_watch();
            }
            Ok(finish(guard))
        }
    }

    /// [`acquire_in`](RedLock::acquire_in) for an exclusive acquisition that may wait:
    /// it waits in the cache's queue (`super::handoff`; with a zero bound it claims
    /// once). A future of its own, the queue's states on the heap, so that neither a
    /// RedLock's acquisition nor this one holds them inline.
    #[maybe_async]
    pub(super) fn acquire_queued_in<T>(
        self,
        finish: impl FnOnce(LockGuard<B>) -> T + Send,
    ) -> impl Future<Output = Result<T>> + Send {
        let RedLock {
            cache,
            key,
            empty_key,
            fenced,
            lease,
            wait,
            watchdog,
        } = self;
        let queue = wait != Some(Duration::ZERO);
        let mut guard = LockGuard::unheld(cache, key, lease);
        async move {
            let span = trace::span(Op::Acquire, &guard.key, guard.cache.backend().name());
            let first = {
                let _entered = trace::enter(&span);
                match Self::start(&mut guard, empty_key, fenced, queue) {
                    Ok(Started::Lost(holder)) => Entered::Lost(holder),
                    Ok(Started::NotClaimed) => Entered::Claim,
                    Ok(Started::Queued(seat)) => Entered::Queued(seat),
                    Ok(Started::Won) => {
                        trace::end(&span, &Ok(&guard), |g| trace::outcome(g.outcome));
                        if watchdog {
                            guard.start_watch();
                        }
                        return Ok(finish(guard));
                    }
                    Err(e) => {
                        trace::failed(&span, &e);
                        return Err(e);
                    }
                }
            };
            let run = rt::boxed(acquire_queued(&mut guard, first, fenced, wait));
            if let Err(e) = in_span!(span, run) {
                trace::failed(&span, &e);
                return Err(e);
            }
            trace::end(&span, &Ok(&guard), |g| trace::outcome(g.outcome));
            if watchdog {
                guard.start_watch();
            }
            Ok(finish(guard))
        }
    }

    /// The checks and, on an in-process store (memory), the first claim, made at
    /// once; only a lost or unmade claim goes on to the claims and waits of
    /// [`acquire_untraced`](RedLock::acquire_untraced). With `queue`, an exclusive
    /// acquisition queues behind the cache's waiters of the key or its guard that
    /// holds the key through the queue, if any, without a claim.
    #[inline(always)]
    fn start(
        guard: &mut LockGuard<B>,
        empty_key: bool,
        fenced: bool,
        queue: bool,
    ) -> Result<Started> {
        if empty_key {
            return Err(Error::invalid_key("the key is empty"));
        }
        let lease = guard.lease.checked()?;
        if queue
            && guard.cache.waiters().active()
            && let Some(seat) = guard.cache.waiters().arrive(&guard.key, fenced)
        {
            return Ok(Started::Queued(seat));
        }
        if fenced {
            return Ok(Started::NotClaimed);
        }
        let token = Token::random();
        let sent = rt::now();
        let lease_end = deadline(sent, lease);
        let backend = guard.cache.backend();
        Ok(
            match backend.try_claim_now(&guard.key, token.as_bytes(), sent, lease_end) {
                Some(Claim::Won) => {
                    guard.token = Some(token);
                    guard.lease_end = Some(lease_end);
                    guard.outcome = Outcome::Acquired;
                    Started::Won
                }
                Some(Claim::Held { holder }) => Started::Lost(holder),
                None => Started::NotClaimed,
            },
        )
    }

    /// Drives `guard`'s acquisition to its outcome (`Ok`: in `guard.outcome`).
    ///
    /// Not an `async fn`, which would keep its arguments in its future next to the
    /// state made of them; the state is made at once (this is called where it is
    /// awaited), and the future keeps only what the loop needs.
    #[maybe_async]
    fn acquire_untraced(
        guard: &mut LockGuard<B>,
        first_lost: Option<Option<Vec<u8>>>,
        fenced: bool,
        wait: Option<Duration>,
        machine: fn(Duration) -> Acquisition,
    ) -> impl Future<Output = Result<()>> + Send + '_ {
        let mut machine = machine(wait.unwrap_or(guard.lease.get()));
        // The token of the holder our last claim lost to, when the backend told it.
        let mut holder = None;
        let mut action = machine.start();
        if let Some(h) = first_lost {
            holder = h;
            action = machine.added(false, rt::now);
        }
        async move {
            // The bound of our last wait: set once a wait woke us, when a claim again is
            // a re-claim that may follow another waiter's (see `core::waiters`).
            let mut woken = None;
            loop {
                action = match action {
                    Action::Add => {
                        // (Bound after the follow, so that the future does not keep its
                        // room while it waits.)
                        let turn = match woken.take() {
                            None => None,
                            Some(deadline) => {
                                match follow(&guard.cache, &guard.key, deadline).await {
                                    Followed::Claim(claiming) => Some(claiming),
                                    Followed::Lost(h) => {
                                        holder = h;
                                        action = machine.added(false, rt::now);
                                        continue;
                                    }
                                    Followed::Deadline => {
                                        action = machine.woke(Wake::Deadline, rt::now());
                                        continue;
                                    }
                                }
                            }
                        };
                        // Drawn for each claim, so that no token is kept while waiting (a
                        // lost claim stored nothing: a fresh token is as good).
                        let token = Token::random();
                        let lease = guard.lease.get();
                        guard.token = Some(token);
                        // Read before sending: the server's lease starts later.
                        let sent = rt::now();
                        let backend = guard.cache.backend();
                        // On the heap (async flavor): a network round trip's state is
                        // not kept in the future while it waits.
                        let claimed = rt::boxed(claim_once(
                            backend,
                            &guard.key,
                            token.as_bytes(),
                            lease,
                            fenced,
                        ));
                        let claim = claimed.await.map(|(claim, fence, replication)| {
                            // Fences start at 1.
                            guard.fence = fence.and_then(NonZeroU64::new);
                            guard.replication = replication;
                            claim
                        });
                        let claim = match claim {
                            Ok(claim) => claim,
                            Err(e) => {
                                // The followers take a turn of their own.
                                drop(turn);
                                guard.failed(&e);
                                return Err(e);
                            }
                        };
                        let won = match claim {
                            Claim::Won => {
                                if let Some(turn) = turn {
                                    turn.done(Some(token.as_bytes()));
                                }
                                let sure = guard.cache.backend().lease_validity(lease);
                                guard.lease_end = Some(deadline(sent, sure));
                                true
                            }
                            Claim::Held { holder: h } => {
                                if let Some(turn) = turn {
                                    turn.done(h.as_deref());
                                }
                                guard.token = None;
                                holder = h;
                                false
                            }
                        };
                        machine.added(won, rt::now)
                    }
                    Action::Wait(deadline) => {
                        let backend = guard.cache.backend();
                        // Counted (`Cache::waiting`) before the event, so that whoever saw
                        // the event sees the count; uncounted when the wait ends, fails or
                        // (async) its future is dropped.
                        let waiting = guard.cache.enter_wait(&guard.key);
                        trace::waiting(&guard.key);
                        let span = trace::span(Op::Wait, &guard.key, backend.name());
                        let wake =
                            in_span!(span, backend.wait(&guard.key, holder.as_deref(), deadline));
                        drop(waiting);
                        trace::end(&span, &wake, |w| trace::wake(*w));
                        woken = Some(deadline);
                        machine.woke(wake?, rt::now())
                    }
                    Action::Finish(outcome) => {
                        guard.outcome = outcome;
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// How [`RedLock::start`] left an acquisition.
enum Started {
    /// The in-process claim won: the guard holds the lock.
    Won,
    /// The in-process claim lost, to this holder (its token).
    Lost(Option<Vec<u8>>),
    /// No claim made yet (not in process, or fenced).
    NotClaimed,
    /// Queued behind the cache's waiters or holder of the key, without a claim.
    Queued(Arc<Seat>),
}

/// One claim of `key`, fenced or not, with the replication the backend confirmed. One
/// await point in the acquisition's future: what lives across two of them is kept in
/// the future also while it waits.
#[maybe_async]
pub(super) async fn claim_once<B: Backend>(
    backend: &B,
    key: &[u8],
    token: &[u8],
    lease: Duration,
    fenced: bool,
) -> Result<(Claim, Option<u64>, Option<Replication>)> {
    if fenced {
        let fence_key = key::fence_key(key);
        backend
            .claim_replicated(key, token, lease, Some(&fence_key))
            .await
    } else {
        backend.claim_replicated(key, token, lease, None).await
    }
}

/// How a woken waiter's turn to claim again went ([`follow`]).
enum Followed<'a> {
    /// This waiter claims (and reports the result to its followers).
    Claim(Claiming<'a>),
    /// Another waiter of the cache claimed and lost to this holder (its token, when
    /// known), or won: count it as our own lost claim.
    Lost(Option<Vec<u8>>),
    /// The deadline passed while following.
    Deadline,
}

/// A woken waiter's claim again: its own, or (when another waiter of the cache claims
/// the key right now) that one's result, waited for at most until `deadline`, so
/// that a release or lease end costs one claim per cache, not one per waiter. The
/// follower counts as waiting ([`Cache::waiting`]) meanwhile.
#[maybe_async]
async fn follow<'a, B: Backend>(
    cache: &'a Cache<B>,
    key: &[u8],
    deadline: Instant,
) -> Followed<'a> {
    loop {
        let (listener, round) = match cache.waiters().turn(key) {
            Turn::Claim(claiming) => return Followed::Claim(claiming),
            Turn::Follow { listener, round } => (listener, round),
        };
        let waiting = cache.enter_wait(key);
        let notified = rt::wait_listener(listener, deadline).await;
        drop(waiting);
        if let Some(holder) = cache.waiters().result(key, round) {
            return Followed::Lost(holder);
        }
        if !notified {
            return Followed::Deadline;
        }
    }
}

/// The result of [`RedLock::acquire`]: says how the acquisition ended and, when it
/// holds the lock, releases it.
///
/// Dropping a guard that holds the lock releases it: at once on the dropping thread in
/// the blocking flavor and, in the async flavor, inline on the memory backend and on a
/// spawned task on network backends ([`Cache::flush`] waits for those tasks, e.g. last
/// in `#[tokio::main]`). A release that gets no answer is retried in the background
/// while the lease may last. An async guard of a network backend dropped outside a
/// tokio runtime, or whose task the runtime drops unrun (it shut down), cannot
/// release: the lock stays until its lease ends, and the cache counts it
/// ([`Cache::skipped_releases`]; with the `tracing` feature, a `warn` event).
///
/// Prefer an explicit [`release`](LockGuard::release), which reports errors and
/// whether the lease was still ours.
///
/// A guard belongs to the process that acquired it. In a child made by `fork()`, the
/// copy of a parent's guard neither releases the lock (dropped, or
/// [`release`](LockGuard::release)d: `Ok(false)`, nothing sent) nor renews it
/// ([`extend`](LockGuard::extend): [`Lost`](crate::ErrorKind::Lost); the watchdog:
/// see [`Watch`]): the parent still holds the lock, and releases it.
#[must_use = "if unused the lock is released at once"]
pub struct LockGuard<B: Backend = AnyBackend> {
    pub(super) cache: Cache<B>,
    pub(super) key: KeyBuf,
    pub(super) token: Option<Token>,
    /// The lease (checked: at most `MAX_DURATION`), in nanoseconds, and the fence
    /// (they start at 1) without a zero: a guard of 128 bytes at most is moved
    /// without a call to `memcpy`.
    pub(super) lease: Nanos,
    /// While held: when the lease ends at the earliest (read before the claim or the
    /// last renewal was sent, plus the lease).
    pub(super) lease_end: Option<Instant>,
    pub(super) fence: Option<NonZeroU64>,
    /// The replicas that confirmed the claim or the last extension (`wait_replicas`).
    pub(super) replication: Option<Replication>,
    /// Watched by the cache's watchdog (which keeps its watch, by token: a guard that
    /// is not watched pays one flag).
    pub(super) watched: bool,
    /// Whether it holds the lock through the cache's queue of exclusive waiters (see
    /// `core::waiters`): its release may hand the lock to the first waiter.
    pub(super) queued: Queued,
    pub(super) outcome: Outcome,
    /// The process that made the guard ([`fork::generation16`]): a copy inherited by
    /// a forked child neither releases nor renews the parent's lock.
    pub(super) generation: u16,
}

/// How a guard holds the lock through the cache's queue of exclusive waiters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Queued {
    /// Not through the queue: its release goes to the server.
    No,
    /// Through the queue: its release may hand the lock to the first waiter.
    Yes,
    /// Through the queue, with a renewal of ours unanswered (cancelled or failed
    /// without an answer): it may still change the lease, so no hand-off.
    Unanswered,
}

impl Queued {
    #[inline(always)]
    pub(super) fn is(self) -> bool {
        self != Queued::No
    }
}

/// A checked lease, in nanoseconds.
#[derive(Clone, Copy)]
pub(super) struct Nanos(u64);

impl Nanos {
    pub(super) fn of(d: Duration) -> Self {
        Nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    pub(super) fn get(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// The lease, checked like [`check_lease`] (on the nanoseconds: an unchecked lease
    /// saturates at 584 years, still too long).
    #[inline]
    fn checked(self) -> Result<Duration> {
        const MAX: u64 = MAX_DURATION.as_nanos() as u64;
        if self.0 == 0 || self.0 > MAX {
            return check_lease(self.get());
        }
        Ok(self.get())
    }
}

impl<B: Backend> LockGuard<B> {
    /// A guard of `key` that holds nothing yet, for an acquisition with `lease`.
    #[inline(always)]
    fn unheld(cache: Cache<B>, key: KeyBuf, lease: Duration) -> Self {
        LockGuard {
            cache,
            key,
            token: None,
            // Checked in `start` (an unchecked one saturates at 584 years, still too long).
            lease: Nanos::of(lease),
            lease_end: None,
            fence: None,
            replication: None,
            watched: false,
            queued: Queued::No,
            outcome: Outcome::TimedOut,
            generation: fork::generation16(),
        }
    }
}

impl<B: Backend> std::fmt::Debug for LockGuard<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("outcome", &self.outcome)
            .finish()
    }
}

impl<B: Backend> LockGuard<B> {
    /// The full lock key.
    pub(super) fn key(&self) -> &[u8] {
        &self.key
    }

    /// How the acquisition ended.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Whether this guard holds the lock.
    pub fn is_acquired(&self) -> bool {
        self.outcome.is_acquired()
    }

    /// The token stored under the lock key, while held.
    pub fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    /// While held: the instant by which the lease ends at the earliest, on the
    /// flavor's clock (`std::time::Instant`; in the async flavor tokio's clock, which
    /// a paused test runtime pauses). It is the instant just before the claim (or the
    /// last successful [`extend`](LockGuard::extend)) was sent, plus the lease: the
    /// server started the lease later, so it ends later on its clock. `None` when
    /// this guard does not hold the lock.
    ///
    /// A watched guard's lease end moves with each confirmed renewal of the watchdog.
    pub fn lease_end(&self) -> Option<Instant> {
        let own = self.lease_end.filter(|_| self.token.is_some())?;
        match (self.watched, self.token) {
            (true, Some(token)) => self.cache.watched_lease_end(&token).or(Some(own)),
            _ => Some(own),
        }
    }

    /// The watch of a guard acquired with the [`watchdog`](RedLock::watchdog) on, while
    /// it holds the lock: a handle for the work done under the lock, which reports
    /// when the lock is lost. `None` for an unwatched guard or one that does not hold
    /// the lock.
    pub fn watch(&self) -> Option<Watch> {
        match (self.watched, self.token) {
            (true, Some(token)) => self.cache.watch_of(&token),
            _ => None,
        }
    }

    /// The fencing token of this acquisition, when the lock was
    /// [`fenced`](RedLock::fenced) and is held: larger than that of every earlier
    /// acquisition of the key. Send it with the writes the lock protects.
    pub fn fence(&self) -> Option<u64> {
        self.fence
            .filter(|_| self.token.is_some())
            .map(NonZeroU64::get)
    }

    /// How many replicas confirmed this acquisition's write, or the last successful
    /// [`extend`](LockGuard::extend)'s, while the guard holds the lock and the backend
    /// waits for replicas: Redis with the URL option `wait_replicas` (`WAIT` after the
    /// write, on its connection). `None` otherwise. The watchdog's renewals wait too
    /// but do not change it.
    ///
    /// A lock confirmed by its replicas is likelier to survive a failover, not sure to:
    /// see [Sentinel and replication](crate::RedisBackend#sentinel-and-replication).
    pub fn replication(&self) -> Option<Replication> {
        self.replication.filter(|_| self.token.is_some())
    }

    /// Renews the lease: if the lock still holds our token, it now ends `lease`
    /// from now (owner-checked and atomic: Redis, one script; memcached, a write
    /// conditional on the lock's CAS unique; memory, under the store's mutex), and
    /// [`lease_end`](LockGuard::lease_end) moves accordingly. `lease` replaces the
    /// remaining time, as in redsync and node-redlock: it may shorten it.
    ///
    /// Errors: [`Lost`](crate::ErrorKind::Lost) when the lock is no longer ours (the
    /// lease ended and the key is gone or another caller's) or this guard never held
    /// it, or in a forked child (the lock is the parent's); nothing changed, and the
    /// guard still releases (owner-checked, a no-op then). [`InvalidArgument`](crate::ErrorKind::InvalidArgument) for a zero or
    /// too long lease. A [`Timeout`](crate::ErrorKind::Timeout) or
    /// [`Connection`](crate::ErrorKind::Connection) error leaves the renewal
    /// unknown: `lease_end` stays at the last one known, still a safe bound.
    ///
    /// A [watched](RedLock::watchdog) guard's renewals go on from a successful
    /// `extend`, with its `lease`. After its [`Watch`] reported a loss, `extend` still
    /// asks the backend and reports the truth (a lock that was still ours is
    /// extended, and `lease_end` moves), but the watchdog does not resume: the loss
    /// stays reported.
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// use std::time::Duration;
    /// use aiolock::blocking::Cache;
    ///
    /// let cache = Cache::memory();
    /// let mut guard = cache.redlock("report", Duration::from_secs(5)).acquire()?;
    /// let first_end = guard.lease_end().unwrap();
    /// guard.extend(Duration::from_secs(60))?;
    /// assert!(guard.lease_end().unwrap() > first_end);
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    #[maybe_async]
    pub async fn extend(&mut self, lease: Duration) -> Result<()> {
        let lease = check_lease(lease)?;
        if self.inherited() {
            return Err(Error::new(ErrorKind::Lost, INHERITED));
        }
        let Some(token) = self.token else {
            return Err(Error::new(
                ErrorKind::Lost,
                "this guard does not hold the lock",
            ));
        };
        let sent = rt::now();
        let backend = self.cache.backend();
        let span = trace::span(Op::Extend, &self.key, backend.name());
        // Until answered (a cancelled or failed extend may still be applied later).
        let queued = self.queued;
        if queued.is() {
            self.queued = Queued::Unanswered;
        }
        let extended = in_span!(
            span,
            backend.extend_replicated(&self.key, token.as_bytes(), lease)
        );
        let extended = extended.map(|(renewed, replication)| {
            if renewed {
                self.replication = replication;
            }
            renewed
        });
        trace::end(&span, &extended, |r| trace::extended(*r));
        let extended = extended?;
        self.queued = queued;
        if !extended {
            if self.queued.is() {
                self.cache.waiters().extended(&self.key, &token, None);
            }
            return Err(Error::new(
                ErrorKind::Lost,
                "the lock is no longer ours: its lease ended (another caller may hold it)",
            ));
        }
        self.lease = Nanos::of(lease);
        let end = deadline(sent, self.cache.backend().lease_validity(lease));
        self.lease_end = Some(end);
        if self.watched {
            self.cache.watch_extended(&token, lease, end);
        }
        if self.queued.is() {
            self.cache.waiters().extended(&self.key, &token, Some(end));
        }
        Ok(())
    }

    /// Gives the guard up without releasing the lock: the key stays ours until its
    /// lease ends, and then expires by itself. Nothing is sent; a
    /// [watched](RedLock::watchdog) guard's renewals stop, and its [`Watch`] reports
    /// the guard released. For a lock that must outlive the work that took it, say to
    /// keep other hosts' runs of a job out for a minimum time:
    /// [`extend`](LockGuard::extend) it to the time wanted, then let it expire.
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// use std::time::Duration;
    /// use aiolock::blocking::Cache;
    ///
    /// let cache = Cache::memory();
    /// let lease = Duration::from_secs(60);
    /// let mut guard = cache.redlock("nightly", lease).watchdog().acquire()?;
    /// // ... the job ...
    /// guard.extend(Duration::from_secs(5))?; // held 5 s more, then by nobody
    /// guard.let_expire();
    /// assert!(cache.exists("nightly-lock")?, "not released");
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    pub fn let_expire(mut self) {
        if !self.inherited() {
            if self.watched {
                self.unwatch();
            }
            if self.queued.is()
                && let Some(token) = self.token
            {
                // The cache's waiters of the key wait for its expiry on the server.
                self.cache.waiters().abandoned(&self.key, &token);
            }
        }
        self.forget();
    }

    /// Releases the lock if this guard holds it: deletes the key only if it still holds
    /// our token (atomically) and wakes the waiters. Returns whether it removed the
    /// lock: `false` when the lease had already ended (another caller may hold it now,
    /// and its lock is left alone), when this guard never held it, or in a forked
    /// child (the lock is the parent's: nothing is sent).
    ///
    /// # Cancel safety
    ///
    /// (async flavor) The guard keeps its token until the backend has answered: a
    /// release future dropped before that releases on drop, like a dropped guard.
    #[maybe_async]
    pub fn release(self) -> impl Future<Output = Result<bool>> + Send {
        // Not an `async fn`, which would move the guard once more, from its
        // argument into its body, at the first poll.
        let mut guard = self;
        async move {
            // In process (memory): released here, with no inner future to build.
            if let Some(released) = guard.release_now() {
                return released;
            }
            guard.release_held().await
        }
    }

    /// Releases like [`release`](LockGuard::release); a failure is a `warn` event of the
    /// `tracing` feature (`what`: where), not an error.
    #[maybe_async]
    pub(crate) async fn release_or_warn(mut self, what: &'static str) {
        if let Err(e) = self.release_held().await {
            trace::discarded(what, &self.key, self.cache.backend().name(), &e);
        }
    }

    #[maybe_async]
    async fn release_held(&mut self) -> Result<bool> {
        if let Some(released) = self.release_now() {
            return released;
        }
        let Some(token) = self.token else {
            return Ok(false);
        };
        let backend = self.cache.backend();
        let span = trace::span(Op::Release, &self.key, backend.name());
        let released = in_span!(span, backend.release(&self.key, token.as_bytes()));
        trace::end(&span, &released, |r| trace::released(*r));
        // Answered: nothing is left for the drop to release.
        self.token = None;
        if self.queued.is() {
            self.cache.waiters().released(&self.key, &token);
        }
        released
    }

    /// Releases at once if that needs no I/O (the memory store, or nothing held):
    /// `None` when the backend must be asked.
    #[inline]
    fn release_now(&mut self) -> Option<Result<bool>> {
        if self.inherited() {
            return Some(Ok(self.forget()));
        }
        if self.watched {
            self.unwatch();
        }
        let Some(token) = self.token else {
            return Some(Ok(false));
        };
        if self.queued.is() && self.hand_off(token) {
            return Some(Ok(true));
        }
        let backend = self.cache.backend();
        let released = backend.try_release_now(&self.key, token.as_bytes())?;
        let span = trace::span(Op::Release, &self.key, backend.name());
        trace::end(&span, &Ok(released), |r| trace::released(*r));
        self.token = None;
        if self.queued.is() {
            self.cache.waiters().released(&self.key, &token);
        }
        Some(Ok(released))
    }

    /// Releases a guard that holds through the cache's queue without I/O when it can:
    /// hands the lock to the first waiter (true; the lock key keeps our token, now
    /// the waiter's); false: release it on the server (then report it to the queue
    /// with `Waiters::released`).
    #[cold]
    #[inline(never)]
    fn hand_off(&mut self, token: Token) -> bool {
        let now = rt::now();
        let lease_end = self.lease_end.unwrap_or(now);
        let clean = self.queued == Queued::Yes;
        let waiters = self.cache.waiters();
        if waiters.release(&self.key, &token, lease_end, clean, now) == Release::Server {
            return false;
        }
        let span = trace::span(Op::Release, &self.key, self.cache.backend().name());
        trace::end(&span, &Ok(()), |()| "handed_off");
        self.token = None;
        self.queued = Queued::No;
        true
    }
}

const INHERITED: &str =
    "inherited by fork: the lock is the parent process's, which renews and releases it";

impl<B: Backend> LockGuard<B> {
    /// Whether this is a forked child's copy of its parent's guard.
    #[inline(always)]
    fn inherited(&self) -> bool {
        self.generation != fork::generation16()
    }

    /// Gives the lock up without a word to the backend or the watchdog: for a forked
    /// child's copy of its parent's guard (the watchdog's state is the parent's, maybe
    /// locked by one of the parent's threads, which the child does not have: the
    /// parent holds the lock, renews and releases it), and after
    /// [`let_expire`](LockGuard::let_expire) unwatched it. Returns false: nothing was
    /// removed.
    #[cold]
    #[inline(never)]
    fn forget(&mut self) -> bool {
        self.token = None;
        self.watched = false;
        false
    }

    /// Watches the guard (acquired with the watchdog) if it holds the lock.
    #[cold]
    #[inline(never)]
    fn start_watch(&mut self) {
        if let (Some(token), Some(end)) = (self.token, self.lease_end) {
            self.cache.watch(&self.key, token, self.lease.get(), end);
            self.watched = true;
        }
    }

    /// Takes the watched guard out of the watchdog: no renewal from now on.
    #[cold]
    #[inline(never)]
    fn unwatch(&mut self) {
        self.watched = false;
        if let Some(token) = self.token
            && let Some(end) = self.cache.unwatch(&token)
        {
            self.lease_end = Some(end);
        }
    }

    /// The claim failed with `e`. When the server may have applied it anyway (no
    /// answer, a broken connection, a garbled reply), our token may be stored: the
    /// worker of the cache releases it once the server answers again, while the lease
    /// may last. Otherwise nothing was stored.
    pub(super) fn failed(&mut self, e: &Error) {
        let Some(token) = self.token.take() else {
            return;
        };
        if matches!(
            e.kind(),
            ErrorKind::Timeout | ErrorKind::Connection | ErrorKind::Protocol
        ) {
            let key = std::mem::take(&mut self.key).into_vec();
            let job = Job::new(key, token, self.lease.get(), "failed acquisition");
            self.cache.retry_later(job);
        }
    }
}

impl<B: Backend> Drop for LockGuard<B> {
    fn drop(&mut self) {
        if self.inherited() {
            self.forget();
            return;
        }
        if self.watched {
            self.unwatch();
        }
        let Some(token) = self.token else {
            return;
        };
        if self.queued.is() && self.hand_off(token) {
            return;
        }
        self.token = None;
        let backend = self.cache.backend();
        if let Some(released) = backend.try_release_now(&self.key, token.as_bytes()) {
            let span = trace::span(Op::Release, &self.key, backend.name());
            trace::end(&span, &Ok(released), |r| trace::released(*r));
            if self.queued.is() {
                self.cache.waiters().released(&self.key, &token);
            }
            return;
        }
        let key = std::mem::take(&mut self.key).into_vec();
        let job = Job::new(key, token, self.lease.get(), "dropped guard");
        rt::release_on_drop(self.cache.clone(), job);
    }
}

#[cfg(test)]
mod tests {
    /// Moved without a call to `memcpy` (LLVM inlines copies of up to 128 bytes).
    #[test]
    fn a_guard_is_at_most_128_bytes() {
        assert!(size_of::<super::LockGuard>() <= 128);
        assert!(size_of::<crate::Result<Option<super::super::ExclusiveGuard>>>() <= 128);
    }
}
