//! The watchdog: opt-in automatic renewal of held leases
//! ([`RedLock::watchdog`](super::RedLock::watchdog),
//! [`ExclusiveLock::watchdog`](super::ExclusiveLock::watchdog)), and [`Watch`], the
//! handle that tells the holder's work when its lock is lost.
//!
//! One worker per cache (a thread in the blocking flavor, a task in the async one),
//! started by the first watched guard and gone with the cache, keeps the schedule of
//! the cache's watched guards (`core::watchdog`: a timer heap) and renews each one a
//! third of its lease after its last confirmed renewal. Blocking flavor: the worker
//! sends the renewals itself, one after the other. Async flavor: it spawns each
//! renewal as a task of its own, bounded by the guard's lost instant, so that one
//! stalled renewal delays no other.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use event_listener::Event;
use hashbrown::HashMap;
use parking_lot::{Mutex, MutexGuard};

use super::backend::Backend;
use super::cache::{Cache, WeakCache};
use super::{maybe_async, rt};
use crate::core::fork;
use crate::core::lease::deadline;
use crate::core::token::Token;
use crate::core::waiters::Renewed;
use crate::core::watchdog::{Due, Schedule, lost_at, renew_at};
use crate::error::{Error, ErrorKind, Result};
use crate::key::KeyBuf;
use crate::trace::{self, Op};

const NOT_OURS: &str =
    "the lock is no longer ours: a renewal found its key gone or another caller's";
const NO_ANSWER: &str = "renewal failed: no answer before the lease was about to end";
const STOPPED: &str = "renewal failed: the watchdog could not run (no thread or no tokio runtime \
                       to run it on, or its runtime shut down)";
const FORKED: &str = "inherited by fork: the watchdog renews this lock in the parent process only";
const RELEASED: &str = "the guard was released or dropped";

/// The watchdog of one cache, a field of the cache: nothing until a guard is watched.
#[derive(Default)]
pub(crate) struct Watchdog {
    shared: OnceLock<Arc<Shared>>,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // The cache is gone (and with it every guard, which held a clone): the worker
        // ends.
        if let Some(shared) = self.shared.get() {
            shared.lock().closed = true;
            shared.changed.notify(usize::MAX);
        }
    }
}

/// What the cache and its worker share.
struct Shared {
    state: Mutex<State>,
    /// Notified when the worker must look again (an earlier renewal, the cache gone).
    changed: Event,
}

struct State {
    schedule: Schedule<Arc<WatchState>>,
    /// The watched guards' watches, by token, from their acquisition to their release
    /// (lost ones too: their watch still answers).
    guards: HashMap<Token, Arc<WatchState>>,
    /// Whether a worker runs.
    worker: bool,
    /// Whether the worker waits for `changed` until `until` (forever for `None`), and
    /// must be notified of an earlier renewal.
    asleep: bool,
    until: Option<Instant>,
    /// The cache is gone.
    closed: bool,
    /// The process generation of the schedule ([`fork::generation`]).
    generation: u64,
}

impl Shared {
    fn new() -> Self {
        Shared {
            state: Mutex::new(State {
                schedule: Schedule::default(),
                guards: HashMap::new(),
                worker: false,
                asleep: false,
                until: None,
                closed: false,
                generation: fork::generation(),
            }),
            changed: Event::new(),
        }
    }

    /// The state. In a forked child, the schedule inherited from the parent is
    /// dropped first, unrenewed: those guards are the parent's, renewed by the
    /// parent's worker (which did not come along: a child has only the forking thread).
    fn lock(&self) -> MutexGuard<'_, State> {
        let mut state = self.state.lock();
        let generation = fork::generation();
        if state.generation != generation {
            // Ids keep counting: an inherited guard's id names none of the child's.
            drop(state.schedule.drain());
            state.worker = false;
            state.asleep = false;
            state.generation = generation;
        }
        state
    }
}

impl State {
    /// Whether the worker must be notified of a renewal due at `due`.
    fn wakes_for(&self, due: Instant) -> bool {
        self.asleep && self.until.is_none_or(|until| due < until)
    }
}

impl Watchdog {
    fn shared(&self) -> &Arc<Shared> {
        self.shared.get_or_init(|| Arc::new(Shared::new()))
    }
}

/// One renewal to send: what the worker took from the schedule.
pub(crate) struct Renewal {
    id: u64,
    seq: u64,
    lease: Duration,
    lost_at: Instant,
    watch: Arc<WatchState>,
}

impl<B: Backend> Cache<B> {
    /// Watches a held lock: `key` holds `token` with a lease `lease` that ends at
    /// `lease_end` at the earliest. Starts the cache's worker if none runs; when none
    /// can start, the guards it would renew are lost at once.
    pub(crate) fn watch(&self, key: &[u8], token: Token, lease: Duration, lease_end: Instant) {
        let shared = self.watchdog().shared();
        let (start, wake) = {
            let mut s = shared.lock();
            let mut state = None;
            let make = |id| {
                let watch = Arc::new(WatchState::new(id, key, token, lease, lease_end));
                state = Some(Arc::clone(&watch));
                watch
            };
            let (_, due) = s.schedule.insert_with(make, lease, lease_end);
            if let Some(state) = state {
                s.guards.insert(token, state);
            }
            let start = !std::mem::replace(&mut s.worker, true);
            (start, s.wakes_for(due))
        };
        if wake {
            shared.changed.notify(usize::MAX);
        }
        if start {
            // On failure the worker's drop reports the loss of every watched guard.
            rt::spawn_watchdog(WatchWorker {
                cache: self.downgrade(),
                shared: Arc::clone(shared),
                finished: false,
            });
        }
    }

    /// The watch state of the watched guard holding `token`.
    fn watched(&self, token: &Token) -> Option<Arc<WatchState>> {
        let shared = self.watchdog().shared.get()?;
        shared.state.lock().guards.get(token).cloned()
    }

    /// A handle on the watch of the watched guard holding `token`.
    pub(crate) fn watch_of(&self, token: &Token) -> Option<Watch> {
        self.watched(token).map(|state| Watch { state })
    }

    /// The last confirmed lease end of the watched guard holding `token`.
    pub(crate) fn watched_lease_end(&self, token: &Token) -> Option<Instant> {
        self.watched(token)
            .map(|state| state.status.lock().lease_end)
    }

    /// The watched guard holding `token` was released or dropped: it leaves the
    /// schedule now (no renewal is sent for it from now on) and its watch reports it.
    /// Its last confirmed lease end.
    pub(crate) fn unwatch(&self, token: &Token) -> Option<Instant> {
        let shared = self.watchdog().shared.get()?;
        let state = {
            let mut s = shared.lock();
            let state = s.guards.remove(token)?;
            s.schedule.remove(state.id);
            state
        };
        state.release();
        let end = state.status.lock().lease_end;
        Some(end)
    }

    /// The watched guard holding `token` was extended by hand: its watch knows the new
    /// lease end (even after a loss), and renewals go on from there, with its lease,
    /// unless lost.
    pub(crate) fn watch_extended(&self, token: &Token, lease: Duration, lease_end: Instant) {
        let Some(state) = self.watched(token) else {
            return;
        };
        let Some(shared) = self.watchdog().shared.get() else {
            return;
        };
        let watching = state.extended(lease, lease_end);
        let mut s = shared.lock();
        if !watching {
            // Lost already (the holder saw its lost instant pass): the watchdog does
            // not resume; the worker has the callbacks run, or here if it is gone.
            let gone = s.schedule.remove(state.id);
            drop(s);
            if gone.is_some() {
                state.lose(NO_ANSWER.into());
            }
            return;
        }
        if !s.schedule.extended(state.id, lease, lease_end) {
            return;
        }
        let wake = s.wakes_for(renew_at(lease_end, lease));
        drop(s);
        if wake {
            shared.changed.notify(usize::MAX);
        }
    }

    /// Sends one renewal and reports its answer to the schedule and the watch.
    #[maybe_async]
    pub(crate) async fn renew(self, renewal: Renewal) {
        let Some(shared) = self.watchdog().shared.get() else {
            return;
        };
        let (key, token) = (&renewal.watch.key, &renewal.watch.token);
        // A lock held through the queue of exclusive waiters is not handed off while
        // this renewal is unanswered (counted before the check below: a guard
        // released meanwhile finds it counted, or this finds the guard gone).
        let queued = self.waiters().renewing(key, token);
        if !shared.lock().schedule.awaits(renewal.id, renewal.seq) {
            if queued {
                self.waiters().renewal_done(key, token, Renewed::NotSent);
            }
            return; // released or dropped since it was due
        }
        let backend = self.backend();
        let sent = rt::now();
        let span = trace::span(Op::Extend, key, backend.name());
        // Async: given up at the lost instant (then the guard is lost anyway). Blocking:
        // bounded by the backend's response timeout.
        let answer = in_span!(
            span,
            rt::timeout_at(
                renewal.lost_at,
                backend.extend(key, token.as_bytes(), renewal.lease)
            )
        );
        let answer = answer.unwrap_or_else(|| Err(Error::new(ErrorKind::Timeout, NO_ANSWER)));
        trace::end(&span, &answer, |r| trace::extended(*r));
        let late = rt::now() >= renewal.lost_at;
        if queued {
            let renewed = match answer {
                Ok(true) => Renewed::Confirmed(deadline(sent, renewal.lease)),
                _ => Renewed::Doubtful,
            };
            self.waiters().renewal_done(key, token, renewed);
        }
        let mut s = shared.lock();
        let why: Cow<'static, str> = match answer {
            // An answer after the lost instant comes too late: the holder may already
            // have been told (by `Watch::check`, from the clock).
            _ if late => match s.schedule.remove(renewal.id) {
                Some(_) => NO_ANSWER.into(),
                None => return,
            },
            Ok(true) => {
                let lease_end = deadline(sent, backend.lease_validity(renewal.lease));
                if !s.schedule.renewed(renewal.id, renewal.seq, lease_end) {
                    return; // stale: released, or extended by hand meanwhile
                }
                if renewal.watch.renewed(renewal.lease, lease_end) {
                    // The worker may sleep until this guard's lost instant (async
                    // flavor: renewals answer while it sleeps): wake it for the next.
                    let wake = s.wakes_for(renew_at(lease_end, renewal.lease));
                    drop(s);
                    if wake {
                        shared.changed.notify(usize::MAX);
                    }
                    return;
                }
                s.schedule.remove(renewal.id);
                NO_ANSWER.into()
            }
            Ok(false) => match s.schedule.failed(renewal.id, renewal.seq) {
                Some(_) => NOT_OURS.into(),
                None => return,
            },
            Err(e) => match s.schedule.failed(renewal.id, renewal.seq) {
                Some(_) => format!("renewal failed: {e}").into(),
                None => return,
            },
        };
        drop(s);
        renewal.watch.lose(why);
    }
}

/// The worker of one cache's watchdog: renews what is due, waits for the next.
pub(crate) struct WatchWorker<B> {
    /// Weak: the worker does not keep the cache alive.
    cache: WeakCache<B>,
    shared: Arc<Shared>,
    /// Returned normally (the cache is gone).
    finished: bool,
}

impl<B: Backend> WatchWorker<B> {
    #[maybe_async]
    pub(crate) async fn run(mut self) {
        loop {
            let listener = self.shared.changed.listen();
            let mut renewals = Vec::new();
            let mut lost = Vec::new();
            let wake = {
                let mut s = self.shared.lock();
                if s.closed {
                    s.worker = false;
                    self.finished = true;
                    return;
                }
                let now = rt::now();
                while let Some(due) = s.schedule.next(now) {
                    match due {
                        Due::Renew {
                            id,
                            seq,
                            lease,
                            lost_at,
                        } => {
                            if let Some(watch) = s.schedule.get(id) {
                                renewals.push(Renewal {
                                    id,
                                    seq,
                                    lease,
                                    lost_at,
                                    watch: Arc::clone(watch),
                                });
                            }
                        }
                        Due::Lost { value, .. } => lost.push(value),
                    }
                }
                let idle = renewals.is_empty() && lost.is_empty();
                s.asleep = idle;
                s.until = s.schedule.wake_at();
                s.until
            };
            let idle = renewals.is_empty() && lost.is_empty();
            for watch in lost {
                watch.lose(NO_ANSWER.into());
            }
            if !renewals.is_empty() {
                let Some(cache) = self.cache.upgrade() else {
                    // The cache is being dropped: its drop closes the schedule.
                    self.shared.lock().worker = false;
                    self.finished = true;
                    return;
                };
                for renewal in renewals {
                    rt::renew(cache.clone(), renewal);
                }
            }
            if !idle {
                continue;
            }
            match wake {
                Some(until) => {
                    rt::wait_listener(listener, until).await;
                }
                None => rt::park(listener).await,
            }
        }
    }
}

impl<B> Drop for WatchWorker<B> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Never started, or stopped (its runtime shut down, a panic): nobody renews
        // the watched guards any more.
        let entries = {
            let mut s = self.shared.lock();
            s.worker = false;
            s.asleep = false;
            s.schedule.drain()
        };
        for watch in entries {
            watch.lose(STOPPED.into());
        }
    }
}

type Callback = Box<dyn FnOnce(&Error) + Send + 'static>;

/// What a guard and its [`Watch`]es share.
pub(crate) struct WatchState {
    /// The guard's id in the schedule.
    id: u64,
    /// The lock key and our token in it.
    key: KeyBuf,
    token: Token,
    status: Mutex<Status>,
    /// Notified when the watch ends (lost or released).
    changed: Event,
}

struct Status {
    lease: Duration,
    /// The last confirmed lease end.
    lease_end: Instant,
    end: Option<End>,
    /// Registered by [`Watch::on_lost`], taken when lost.
    callbacks: Vec<Callback>,
    /// The process generation that watches ([`fork::generation`]).
    generation: u64,
}

enum End {
    Lost(Cow<'static, str>),
    Released,
}

impl Status {
    /// See [`WatchState::poll`]; also whether this call ended the watch.
    fn poll(&mut self, now: Instant) -> (std::result::Result<Instant, Error>, bool) {
        if self.generation != fork::generation() {
            return (Err(Error::new(ErrorKind::Lost, FORKED)), false);
        }
        if let Some(end) = &self.end {
            return (Err(end.error()), false);
        }
        let lost = lost_at(self.lease_end, self.lease);
        if now < lost {
            return (Ok(lost), false);
        }
        let end = End::Lost(NO_ANSWER.into());
        let err = end.error();
        self.end = Some(end);
        (Err(err), true)
    }
}

impl End {
    fn error(&self) -> Error {
        match self {
            End::Lost(why) => Error::new(ErrorKind::Lost, why.clone()),
            End::Released => Error::new(ErrorKind::Lost, RELEASED),
        }
    }
}

impl WatchState {
    fn new(id: u64, key: &[u8], token: Token, lease: Duration, lease_end: Instant) -> Self {
        WatchState {
            id,
            key: KeyBuf::from_slice(key),
            token,
            status: Mutex::new(Status {
                lease,
                lease_end,
                end: None,
                callbacks: Vec::new(),
                generation: fork::generation(),
            }),
            changed: Event::new(),
        }
    }

    /// `Err` once the watch ended at `now`; else the instant it counts as lost
    /// without a confirmed renewal. Reaching that instant ends it (the loss is final).
    fn poll(&self, now: Instant) -> std::result::Result<Instant, Error> {
        let mut status = self.status.lock();
        let (polled, ended_now) = status.poll(now);
        drop(status);
        if ended_now {
            // The worker runs the callbacks when it gets to this guard.
            self.changed.notify(usize::MAX);
        }
        polled
    }

    /// A renewal confirmed the lease to end at `lease_end`; false if the watch had
    /// ended before.
    fn renewed(&self, lease: Duration, lease_end: Instant) -> bool {
        let mut status = self.status.lock();
        if status.end.is_some() {
            return false;
        }
        status.lease = lease;
        status.lease_end = lease_end;
        true
    }

    /// A manual extend confirmed the lease to end at `lease_end`: known even after the
    /// watch ended. Whether it is still watched (not ended).
    fn extended(&self, lease: Duration, lease_end: Instant) -> bool {
        let mut status = self.status.lock();
        status.lease = lease;
        status.lease_end = lease_end;
        status.end.is_none()
    }

    /// The lock is lost (`why`, unless it was already): wakes the watchers and runs
    /// the callbacks, here. Nothing after a release.
    fn lose(&self, why: Cow<'static, str>) {
        let mut status = self.status.lock();
        let err = match &status.end {
            Some(End::Released) => return,
            Some(end) => end.error(),
            None => {
                let end = End::Lost(why);
                let err = end.error();
                status.end = Some(end);
                err
            }
        };
        let callbacks = std::mem::take(&mut status.callbacks);
        drop(status);
        self.changed.notify(usize::MAX);
        for callback in callbacks {
            run_callback(callback, &err);
        }
    }

    /// The guard was released or dropped: the watch ends, its callbacks are dropped
    /// uncalled.
    fn release(&self) {
        let mut status = self.status.lock();
        if status.end.is_none() {
            status.end = Some(End::Released);
        }
        let callbacks = std::mem::take(&mut status.callbacks);
        drop(status);
        self.changed.notify(usize::MAX);
        drop(callbacks);
    }
}

/// Runs a loss callback; a panic in it is caught (it must not stop the worker).
fn run_callback(callback: Callback, err: &Error) {
    let call = std::panic::AssertUnwindSafe(move || callback(err));
    let _ = std::panic::catch_unwind(call);
}

/// Tells the work done under a watched lock when the lock is lost: a handle on a
/// guard's watchdog ([`LockGuard::watch`](super::LockGuard::watch),
/// [`ExclusiveGuard::watch`](super::ExclusiveGuard::watch)), cheap to clone and to
/// send to the threads or tasks doing the work while the guard stays with its owner.
///
/// The watch reports a loss ([`Lost`](ErrorKind::Lost), with a one-line reason) as
/// soon as it is known, and before the lease would have ended:
/// - a renewal failed (`"renewal failed: <cause>"`: the server refused it, the
///   connection broke) or found the lock gone or another caller's: at once;
/// - no renewal was confirmed before the last confirmed lease end, minus a margin (a
///   tenth of the lease, at most a second), because the server does not answer: at
///   that instant, even while the renewal is still in flight. [`check`](Watch::check)
///   reads the clock for this, so it needs no worker to be on time.
///
/// A loss is final: the watchdog stops renewing that guard. The guard itself still
/// asks the backend: its [`extend`](super::LockGuard::extend) and
/// [`release`](super::LockGuard::release) report the truth (a lock that was in fact
/// still ours, say after a short network cut, can still be extended and released).
///
/// Once the guard is released or dropped, the watch reports that too (a `Lost` error,
/// "the guard was released or dropped"); its callbacks are then never called.
///
/// In a child process made by `fork()`, a watch inherited from the parent reports a
/// loss at once: the parent's worker renews that lock in the parent, the child renews
/// nothing of the parent's.
///
/// ```
/// # #[cfg(feature = "blocking")] {
/// use std::time::Duration;
/// use aiolock::blocking::Cache;
///
/// let cache = Cache::memory();
/// let guard = cache.lock("job", Duration::from_secs(10)).watchdog().acquire()?;
/// let guard = guard.expect("free");
/// let watch = guard.watch().expect("watched");
/// let worker = std::thread::spawn(move || {
///     for _step in 0..3 {
///         watch.check()?; // no I/O: Err(Lost) once the lock is lost
///         // ... one step of the work ...
///     }
///     Ok::<(), aiolock::Error>(())
/// });
/// worker.join().unwrap()?;
/// assert!(guard.release()?);
/// # }
/// # Ok::<(), aiolock::Error>(())
/// ```
#[derive(Clone)]
pub struct Watch {
    state: Arc<WatchState>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("lost", &self.check().is_err())
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// `Ok` while the lock is held and renewed; `Err` ([`Lost`](ErrorKind::Lost), with
    /// the reason) once it is lost or the guard was released. No I/O: a mutex and the
    /// flavor's clock.
    pub fn check(&self) -> Result<()> {
        self.state.poll(rt::now()).map(|_| ())
    }

    /// The last confirmed lease end, on the flavor's clock (see
    /// [`LockGuard::lease_end`](super::LockGuard::lease_end)): the lock is ours until
    /// then at least, renewed or not.
    pub fn lease_end(&self) -> Instant {
        self.state.status.lock().lease_end
    }

    /// Waits until the lock is lost (or the guard released) and returns why.
    ///
    /// In the async flavor, a future to race against the work:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> aiolock::Result<()> {
    /// use std::time::Duration;
    ///
    /// let cache = aiolock::Cache::memory();
    /// let lease = Duration::from_secs(10);
    /// let guard = cache.redlock("report", lease).watchdog().acquire().await?;
    /// let watch = guard.watch().expect("acquired and watched");
    /// let work = async { "done" };
    /// let done = tokio::select! {
    ///     done = work => done,
    ///     lost = watch.lost() => return Err(lost),
    /// };
    /// assert_eq!(done, "done");
    /// guard.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// In the blocking flavor it blocks the thread until then.
    ///
    /// # Cancel safety
    ///
    /// (async flavor) Dropping the future changes nothing.
    #[maybe_async]
    pub async fn lost(&self) -> Error {
        loop {
            let listener = self.state.changed.listen();
            match self.state.poll(rt::now()) {
                Err(e) => return e,
                Ok(lost_at) => {
                    rt::wait_listener(listener, lost_at).await;
                }
            }
        }
    }

    /// Waits at most `timeout` for the lock to be lost (or the guard released):
    /// `Some(why)`, or `None` if it was still held and renewed when `timeout` passed.
    #[maybe_async]
    pub async fn wait_lost(&self, timeout: Duration) -> Option<Error> {
        let until = deadline(rt::now(), timeout);
        loop {
            let listener = self.state.changed.listen();
            let now = rt::now();
            match self.state.poll(now) {
                Err(e) => return Some(e),
                Ok(_) if now >= until => return None,
                Ok(lost_at) => {
                    rt::wait_listener(listener, lost_at.min(until)).await;
                }
            }
        }
    }

    /// Calls `f` once, with the reason, when the lock is lost: from the watchdog's
    /// worker (blocking flavor: the cache's `aiolock-watchdog` thread; async flavor: a
    /// task on the runtime that ran the acquisition), so `f` must be quick and must
    /// not block (signal the work, e.g. set a flag or send on a channel). A panic in
    /// `f` is caught. If the lock is lost already, `f` is called now, on this thread.
    /// Never called once the guard was released or dropped (then `f` is dropped).
    ///
    /// The worker learns of a loss when a renewal fails, or at the guard's lost
    /// instant; in the blocking flavor a renewal that hangs holds the worker until the
    /// backend's response timeout, and `f` comes then ([`check`](Watch::check) and
    /// [`wait_lost`](Watch::wait_lost) read the clock and are on time).
    pub fn on_lost(&self, f: impl FnOnce(&Error) + Send + 'static) {
        let mut status = self.state.status.lock();
        let (polled, ended_now) = status.poll(rt::now());
        let released = matches!(status.end, Some(End::Released));
        match polled {
            Ok(_) => status.callbacks.push(Box::new(f)),
            Err(_) if released => {}
            Err(e) => {
                drop(status);
                if ended_now {
                    self.state.changed.notify(usize::MAX);
                }
                run_callback(Box::new(f), &e);
            }
        }
    }
}
