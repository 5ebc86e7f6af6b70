//! Shared polling: the waiters of one lock key in one process share one poll loop,
//! whatever their number, their flavor (async tasks, blocking threads) and their
//! [`Cache`](crate::Cache) (of either flavor, on the same server). Compiled once; each
//! flavor's backend drives it from its own `wait` (`generic.rs`).
//!
//! # Design
//!
//! A process-wide registry maps (server, lock key) to one *loop*: a
//! [`Poller`](crate::core::poll::Poller) (the IO-free schedule and what the polls saw)
//! and the waiters registered on it, each with its own deadline, its own holder and
//! its own [`event_listener::Event`], which both flavors can wait on.
//!
//! There is no poller thread or task. One of the waiters *leads*: it sends the polls,
//! on its own backend's connections to the key's server (pools: the key's owner), in
//! its own flavor, each poll bounded by its own deadline, and sleeps between them on
//! the loop's schedule; the others only wait for their events, until their own
//! deadlines. Every poll's result is judged for every waiter (a release of their
//! holder wakes them, the same token keeps them waiting, see `core::poll`); an error
//! is every counted waiter's error, as each waiter's own poll's error was before.
//! When the leader leaves (woken, its deadline passed, its future dropped mid-poll or
//! mid-sleep, a panic), it hands the loop to the waiter with the latest deadline,
//! which goes on with the same schedule (a poll cancelled in flight is sent again at
//! once). The loop ends when its last waiter leaves: nothing is left behind.
//!
//! Why a leader rather than a thread: nothing to start, stop or find dead after a
//! `fork`, no runtime to borrow, and a poll always runs on a connection and in a
//! flavor that some waiter is in. A poll that hangs (a stalled server) holds up no
//! waiter past its own deadline: the leader's poll ends by the leader's deadline,
//! the others wait on their events by theirs.
//!
//! Fork: a child inherits the parent's registry, with loops led by threads or tasks
//! that do not exist in the child, and maybe with a lock held by another thread at
//! the time of the fork. The registry belongs to one process generation
//! (`core::fork`): the child's first use puts a fresh one in place without touching
//! the parent's (which stays allocated, unused), and a registration inherited from
//! the parent is forgotten, not unregistered, when the child drops it.
//!
//! # Claims after a wake
//!
//! A poll that wakes waiters (a release or a lease end seen) opens a *round* for the
//! key. When the poll found the key free, the first claim of this process on that key
//! after it is sent, and the others wait for its result and take it for their own
//! lost claim (the winner holds the key), without a round trip. When the poll found
//! another holder already in place (a waiter of the holder before), the round's
//! result is that holder, and no claim is sent at all (it would lose, unless that
//! holder released since: then the waiters see that release). So a release costs
//! one claim attempt per process, whatever the number of exclusive waiters and
//! caches. The result answers later claims while a loop polls the key (the losers
//! wait again, for the winner) and no poll sent after the result contradicts it (a
//! poll that finds the key gone or held by another holder ends the round; a release
//! of this process by the holder of the result ends it too), and in any case for
//! [`ROUND_FRESH`] after the wake. Fresh callers that claim in a round are answered
//! so too: their claims were concurrent with it, or the holder it found released
//! less than a poll interval before (they then wait, and see the release). No claim
//! is ever taken for a win: a result only ever says "held". The round opens before
//! the woken waiters are told, so their claims are all in it.
//!
//! Lock order: the loops' map, then a loop's state; the rounds' map, then the loops'
//! map. A loop's state is never held while the rounds' map is taken.

// Parts serve only one flavor; a build may have either, both or neither.
#![cfg_attr(not(all(feature = "blocking", feature = "async")), allow(dead_code))]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use event_listener::{Event, EventListener};
use hashbrown::HashMap;
use parking_lot::Mutex;

use crate::backend::memcached::settings::Addr;
use crate::core::fork;
use crate::core::poll::{Interest, Mark, Poller, Seen};
use crate::core::wait::Wake;
use crate::error::Result;

/// How long the result of a round's claim answers this process's other claims of the
/// key once no loop polls it any more (see the module docs).
pub(crate) const ROUND_FRESH: Duration = Duration::from_millis(250);

/// A lock key on one server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PollKey {
    server: Addr,
    key: Box<[u8]>,
}

impl PollKey {
    fn new(server: &Addr, key: &[u8]) -> Self {
        PollKey {
            server: server.clone(),
            key: key.into(),
        }
    }
}

/// Every loop and round of one process.
struct Registry {
    /// The process generation ([`fork::generation`]) this registry belongs to.
    generation: u64,
    loops: Mutex<HashMap<PollKey, Arc<Loop>>>,
    rounds: Mutex<HashMap<PollKey, Round>>,
    /// `rounds.len()`, read without the lock: a claim skips the map while it is 0.
    open_rounds: AtomicUsize,
    /// Orders the rounds, the polls and the rounds' results (a claim's ticket
    /// belongs to one round; a poll sent before a result cannot contradict it).
    ticks: AtomicU64,
}

/// The registry of this process, published once per process generation.
static CURRENT: AtomicPtr<Registry> = AtomicPtr::new(std::ptr::null_mut());

/// This process's registry: a fresh one after a fork (the parent's is left as it is:
/// its locks may be held by threads that do not exist here).
fn registry() -> &'static Registry {
    let generation = fork::generation();
    loop {
        let current = CURRENT.load(Ordering::Acquire);
        // SAFETY: a published registry is never freed (a child leaves its parent's
        // allocated), so the pointer, when not null, stays valid.
        if let Some(registry) = unsafe { current.as_ref() }
            && registry.generation == generation
        {
            return registry;
        }
        let fresh = Box::into_raw(Box::new(Registry {
            generation,
            loops: Mutex::default(),
            rounds: Mutex::default(),
            open_rounds: AtomicUsize::new(0),
            ticks: AtomicU64::new(0),
        }));
        match CURRENT.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
            // SAFETY: just published; never freed from now on.
            Ok(_) => return unsafe { &*fresh },
            // SAFETY: `fresh` was never published: ours to free.
            Err(_) => drop(unsafe { Box::from_raw(fresh) }),
        }
    }
}

/// One lock key's poll loop.
struct Loop {
    key: PollKey,
    state: Mutex<LoopState>,
}

struct LoopState {
    poller: Poller,
    waiters: HashMap<u64, Slot>,
    next_id: u64,
    /// The waiter that sends the polls.
    leader: Option<u64>,
    /// The leader's poll is in flight.
    polling: bool,
    /// The registry's tick when the last poll was sent.
    poll_tick: u64,
    /// When the next poll is due (`None`: at once).
    due: Option<Instant>,
    /// The waiters' longest sleeps between polls (caches may set their own): the
    /// loop sleeps at most the shortest. Counted per value.
    max_delays: BTreeMap<Duration, usize>,
}

impl LoopState {
    fn max_delay(&self) -> Duration {
        self.max_delays
            .keys()
            .next()
            .copied()
            .unwrap_or(crate::core::poll::DEFAULT_MAX_DELAY)
    }

    /// The next poll is due `received` plus the schedule's next sleep.
    fn schedule(&mut self, received: Instant, jitter: f64) {
        let max = self.max_delay();
        let sleep = self.poller.next_sleep(received, jitter, max);
        self.due = Some(received + sleep);
    }
}

/// One registered waiter.
struct Slot {
    interest: Interest,
    deadline: Instant,
    max_delay: Duration,
    /// Notified when `outcome` is set, or when the waiter is made the leader. (Shared
    /// so that many are notified with the loop's lock let go: a woken waiter steps
    /// at once, on another thread, while the rest are told.)
    event: Arc<Event>,
    /// How its wait ended, once the loop decided.
    outcome: Option<Result<Wake>>,
}

/// A waiter's registration on its key's loop; dropping it unregisters (and hands the
/// loop on, when it led).
pub(crate) struct Registration {
    registry: &'static Registry,
    poll_loop: Arc<Loop>,
    id: u64,
}

/// What a registered waiter does next ([`Registration::step`]).
pub(crate) enum Step {
    /// Its wait is over: return this.
    Done(Result<Wake>),
    /// Wait for the listener until the instant, then step again.
    Wait(EventListener, Instant),
    /// Send a poll now, and report it to [`polled`](Registration::polled) (or
    /// [`abandoned`](Registration::abandoned)).
    Poll(Mark),
}

/// Registers a waiter for the release of `holder` (or, unknown, of the holder the
/// first poll finds) on lock `key` of `server`, until `deadline`, asking for polls at
/// least every `max_delay` (before jitter).
pub(crate) fn join(
    server: &Addr,
    key: &[u8],
    holder: Option<&[u8]>,
    deadline: Instant,
    max_delay: Duration,
) -> Registration {
    let registry = registry();
    let mut loops = registry.loops.lock();
    let poll_key = PollKey::new(server, key);
    let poll_loop = Arc::clone(loops.entry(poll_key.clone()).or_insert_with(|| {
        Arc::new(Loop {
            key: poll_key,
            state: Mutex::new(LoopState {
                poller: Poller::new(),
                waiters: HashMap::new(),
                next_id: 0,
                leader: None,
                polling: false,
                poll_tick: 0,
                due: None,
                max_delays: BTreeMap::new(),
            }),
        })
    }));
    let id = {
        let mut state = poll_loop.state.lock();
        let id = state.next_id;
        state.next_id += 1;
        let interest = state.poller.join(holder);
        state.waiters.insert(
            id,
            Slot {
                interest,
                deadline,
                max_delay,
                event: Arc::new(Event::new()),
                outcome: None,
            },
        );
        *state.max_delays.entry(max_delay).or_default() += 1;
        id
    };
    drop(loops);
    Registration {
        registry,
        poll_loop,
        id,
    }
}

/// How many waiters of this process wait on lock `key` of `server` (all caches, both
/// flavors).
pub(crate) fn waiters(server: &Addr, key: &[u8]) -> usize {
    let registry = registry();
    let poll_loop = registry
        .loops
        .lock()
        .get(&PollKey::new(server, key))
        .cloned();
    poll_loop.map_or(0, |l| l.state.lock().waiters.len())
}

impl Registration {
    /// What to do at `now`: return (woken, or the deadline passed), wait, or poll
    /// (this waiter leads and a poll is due).
    pub(crate) fn step(&self, now: Instant) -> Step {
        let mut state = self.poll_loop.state.lock();
        let state = &mut *state;
        let Some(slot) = state.waiters.get_mut(&self.id) else {
            // Unreachable: a slot leaves with its registration.
            return Step::Done(Ok(Wake::Deadline));
        };
        if let Some(outcome) = slot.outcome.take() {
            return Step::Done(outcome);
        }
        let deadline = slot.deadline;
        if now >= deadline {
            return Step::Done(Ok(Wake::Deadline));
        }
        // Listening before the lock is let go: nothing set after this is missed.
        let listener = slot.event.listen();
        if state.leader.is_none() {
            state.leader = Some(self.id);
        }
        if state.leader != Some(self.id) || state.polling {
            return Step::Wait(listener, deadline);
        }
        match state.due {
            Some(due) if due > now => Step::Wait(listener, due.min(deadline)),
            _ => {
                state.polling = true;
                state.poll_tick = self.registry.ticks.fetch_add(1, Ordering::Relaxed);
                Step::Poll(state.poller.poll_sent())
            }
        }
    }

    /// The poll `mark` (sent at `sent`) found `seen` at `received`, or failed: every
    /// waiter it counts for is judged (woken with its wake, or given the error), and
    /// the next poll is scheduled. `jitter` is uniform in `[0, 1)`.
    pub(crate) fn polled(
        &self,
        mark: Mark,
        seen: Result<Seen<'_>>,
        sent: Instant,
        received: Instant,
        jitter: f64,
    ) {
        let mut guard = self.poll_loop.state.lock();
        let state = &mut *guard;
        state.polling = false;
        state.schedule(received, jitter);
        let tick = state.poll_tick;
        let seen = match seen {
            Ok(seen) => seen,
            Err(error) => {
                // Each waiter's poll would have failed so: the error is theirs (the
                // leader's poll always counts for the leader, which gets the error
                // itself).
                for (&id, slot) in state.waiters.iter_mut() {
                    if id != self.id && slot.outcome.is_none() && mark.counts_for(&slot.interest) {
                        slot.outcome = Some(Err(error.duplicate()));
                        slot.event.notify(usize::MAX);
                    }
                }
                if let Some(slot) = state.waiters.get_mut(&self.id) {
                    slot.outcome.get_or_insert(Err(error));
                }
                return;
            }
        };
        let observation = state.poller.observe(mark, seen, sent, received);
        let mut woken = Vec::new();
        if observation.concerns_anyone() {
            for (&id, slot) in state.waiters.iter_mut() {
                if slot.outcome.is_some() {
                    continue;
                }
                if let Some(wake) = observation.judge(&mut slot.interest) {
                    slot.outcome = Some(Ok(wake));
                    woken.push(id);
                }
            }
        }
        drop(guard);
        let current = match seen {
            Seen::Missing => None,
            Seen::Held { token, .. } => Some(token),
        };
        // The round opens before the woken claim (they claim in it), and the loop's
        // lock is let go meanwhile: the rounds' lock is never taken under it.
        let woke = !woken.is_empty();
        self.registry
            .observed(&self.poll_loop.key, current, tick, woke, received);
        if woke {
            let events: Vec<Arc<Event>> = {
                let state = self.poll_loop.state.lock();
                woken
                    .iter()
                    .filter_map(|id| state.waiters.get(id).map(|s| Arc::clone(&s.event)))
                    .collect()
            };
            for event in events {
                event.notify(usize::MAX);
            }
        }
    }

    /// The leader's poll ended without an answer by the leader's own deadline: the
    /// next leader sends one at once.
    pub(crate) fn abandoned(&self) {
        let mut state = self.poll_loop.state.lock();
        state.polling = false;
        state.due = None;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.registry.generation != fork::generation() {
            // Inherited by fork: the parent's registry, whose locks may be held by
            // threads that do not exist here. Forgotten.
            return;
        }
        let mut loops = self.registry.loops.lock();
        let empty = {
            let mut state = self.poll_loop.state.lock();
            let state = &mut *state;
            if let Some(slot) = state.waiters.remove(&self.id)
                && let Some(n) = state.max_delays.get_mut(&slot.max_delay)
            {
                *n -= 1;
                if *n == 0 {
                    state.max_delays.remove(&slot.max_delay);
                }
            }
            if state.leader == Some(self.id) {
                state.leader = None;
                if state.polling {
                    // Its poll was dropped in flight: the next leader sends one now.
                    state.polling = false;
                    state.due = None;
                }
                // The waiter with the latest deadline leads longest.
                let next = state
                    .waiters
                    .iter()
                    .filter(|(_, s)| s.outcome.is_none())
                    .max_by_key(|(_, s)| s.deadline);
                if let Some((&id, slot)) = next {
                    state.leader = Some(id);
                    slot.event.notify(usize::MAX);
                }
            }
            state.waiters.is_empty()
        };
        if empty
            && loops
                .get(&self.poll_loop.key)
                .is_some_and(|l| Arc::ptr_eq(l, &self.poll_loop))
        {
            loops.remove(&self.poll_loop.key);
        }
    }
}

/// The claims after one wake of a key ([`claim_turn`]).
struct Round {
    id: u64,
    opened: Instant,
    /// The registry's tick when the claim's result came.
    result_tick: u64,
    claim: RoundClaim,
    /// Notified when the claim in flight ends, and when the round ends.
    event: Event,
}

enum RoundClaim {
    /// Nobody has claimed since the wake.
    Open,
    /// A claim is in flight.
    Claiming,
    /// The claim found the key held by this token (the winner's; `None`: a holder
    /// whose token the claim did not learn).
    Held(Option<Arc<[u8]>>),
}

impl Registry {
    /// A poll of lock `key` sent at `tick` found `current` at `now`; `woke` says
    /// whether it woke waiters (a release or a lease end): then a round opens.
    /// Otherwise a round's result the poll contradicts (the key gone, or another
    /// holder's) ends, if the poll was sent after the result came (an earlier poll
    /// may have read the key before the claim).
    fn observed(&self, key: &PollKey, current: Option<&[u8]>, tick: u64, woke: bool, now: Instant) {
        if !woke && self.open_rounds.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut rounds = self.rounds.lock();
        if woke {
            // The key free: its first claim claims. Held by `t`: the woken waiters'
            // claims are answered "held by t" (what this poll saw; a claim would
            // lose, unless `t` released since: then they see that release).
            let (claim, result_tick) = match current {
                None => (RoundClaim::Open, u64::MAX),
                Some(t) => (RoundClaim::Held(Some(Arc::from(t))), tick),
            };
            let round = Round {
                id: self.ticks.fetch_add(1, Ordering::Relaxed),
                opened: now,
                result_tick,
                claim,
                event: Event::new(),
            };
            if let Some(old) = rounds.insert(key.clone(), round) {
                old.event.notify(usize::MAX);
            }
        } else if let Some(round) = rounds.get(key) {
            let contradicted = match &round.claim {
                RoundClaim::Held(holder) if tick > round.result_tick => {
                    current.is_none() || holder.as_deref().is_some_and(|h| Some(h) != current)
                }
                RoundClaim::Held(_) | RoundClaim::Open | RoundClaim::Claiming => false,
            };
            if contradicted && let Some(old) = rounds.remove(key) {
                old.event.notify(usize::MAX);
            }
        }
        self.open_rounds.store(rounds.len(), Ordering::Release);
    }
}

/// How a claim of this process goes in a round ([`claim_turn`]).
pub(crate) enum Turn {
    /// No round: claim as usual.
    Alone,
    /// The round's claim: make it and report with [`Ticket::done`].
    Claim(Ticket),
    /// Another claim of the round is in flight: wait for the listener (at most a
    /// response timeout), then ask again.
    Follow(EventListener),
    /// The round's claim found the key held by this holder: take it for this claim's
    /// result (lost), without a round trip.
    Held(Option<Vec<u8>>),
}

/// The right to make a round's claim. Dropped without [`done`](Ticket::done) (the
/// claim failed, or its future was dropped), the round is open again.
pub(crate) struct Ticket {
    registry: &'static Registry,
    key: PollKey,
    round: u64,
    done: bool,
}

/// The turn of a claim of lock `key` on `server` at `now` (see the module docs).
/// Without a round anywhere in the process, one atomic load.
pub(crate) fn claim_turn(server: &Addr, key: &[u8], now: Instant) -> Turn {
    let registry = registry();
    if registry.open_rounds.load(Ordering::Acquire) == 0 {
        return Turn::Alone;
    }
    let mut rounds = registry.rounds.lock();
    {
        // A round lasts while a loop polls its key (its polls keep the result honest:
        // they end the round when they contradict it), or ROUND_FRESH after it
        // opened. (Lock order: rounds, then loops; the loops' lock is never held
        // while the rounds' is taken.)
        let loops = registry.loops.lock();
        rounds.retain(|key, round| {
            let live = now < round.opened + ROUND_FRESH || loops.contains_key(key);
            if !live {
                round.event.notify(usize::MAX);
            }
            live
        });
    }
    registry.open_rounds.store(rounds.len(), Ordering::Release);
    let poll_key = PollKey::new(server, key);
    let Some(round) = rounds.get_mut(&poll_key) else {
        return Turn::Alone;
    };
    match &round.claim {
        RoundClaim::Open => {
            round.claim = RoundClaim::Claiming;
            Turn::Claim(Ticket {
                registry,
                key: poll_key,
                round: round.id,
                done: false,
            })
        }
        RoundClaim::Claiming => Turn::Follow(round.event.listen()),
        RoundClaim::Held(holder) => Turn::Held(holder.as_deref().map(<[u8]>::to_vec)),
    }
}

/// This process released lock `key` on `server`, which held `token`: a round's result
/// that the key is held by `token` no longer stands. (A round opened since, by a poll
/// that saw the key free, stands: its claims are after this release.)
pub(crate) fn released(server: &Addr, key: &[u8], token: &[u8]) {
    let registry = registry();
    if registry.open_rounds.load(Ordering::Acquire) == 0 {
        return;
    }
    let mut rounds = registry.rounds.lock();
    let poll_key = PollKey::new(server, key);
    let stale = rounds
        .get(&poll_key)
        .is_some_and(|r| matches!(&r.claim, RoundClaim::Held(Some(h)) if **h == *token));
    if stale && let Some(old) = rounds.remove(&poll_key) {
        old.event.notify(usize::MAX);
    }
    registry.open_rounds.store(rounds.len(), Ordering::Release);
}

impl Ticket {
    /// The round's claim found the key held by `holder` (our token when it won).
    pub(crate) fn done(mut self, holder: Option<&[u8]>) {
        self.done = true;
        self.end(RoundClaim::Held(holder.map(Arc::from)));
    }

    fn end(&self, claim: RoundClaim) {
        if self.registry.generation != fork::generation() {
            return;
        }
        let mut rounds = self.registry.rounds.lock();
        if let Some(round) = rounds.get_mut(&self.key)
            && round.id == self.round
            && matches!(round.claim, RoundClaim::Claiming)
        {
            round.result_tick = self.registry.ticks.fetch_add(1, Ordering::Relaxed);
            round.claim = claim;
            round.event.notify(usize::MAX);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            self.end(RoundClaim::Open);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_listener::Listener;

    fn server() -> Addr {
        Addr::Unix(format!("/test/{}", std::process::id()).into())
    }

    fn at(ms: u64) -> Instant {
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *ORIGIN.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    const MAX: Duration = crate::core::poll::DEFAULT_MAX_DELAY;

    fn held(token: &[u8]) -> Seen<'_> {
        Seen::Held {
            token,
            ttl: 30,
            cas: 1,
        }
    }

    fn poll_of(step: Step) -> Mark {
        match step {
            Step::Poll(mark) => mark,
            _ => panic!("a poll was due"),
        }
    }

    fn waits(step: Step) -> Instant {
        match step {
            Step::Wait(_, until) => until,
            Step::Done(r) => panic!("done: {:?}", r.map_err(|e| e.to_string())),
            Step::Poll(_) => panic!("polls"),
        }
    }

    fn done(step: Step) -> Wake {
        match step {
            Step::Done(Ok(wake)) => wake,
            _ => panic!("not done"),
        }
    }

    #[test]
    fn one_leader_polls_for_every_waiter_and_a_release_wakes_them_all() {
        let key = b"one-leader-lock";
        let waiters: Vec<_> = (0..100)
            .map(|i| join(&server(), key, None, at(10_000 + i), MAX))
            .collect();
        assert_eq!(super::waiters(&server(), key), 100);
        // The first to step leads; every other one only waits, until its deadline.
        let mark = poll_of(waiters[0].step(at(0)));
        for (i, w) in waiters.iter().enumerate().skip(1) {
            assert_eq!(waits(w.step(at(0))), at(10_000 + i as u64));
        }
        waiters[0].polled(mark, Ok(held(b"h")), at(0), at(0), 0.5);
        // The leader sleeps on the schedule, never past its deadline.
        let due = waits(waiters[0].step(at(0)));
        assert!(due > at(0) && due <= at(1));
        // Polls go on at the leader's pace: 1 waiter or 100, the same polls.
        let mark = poll_of(waiters[0].step(due));
        waiters[0].polled(mark, Ok(Seen::Missing), due, due, 0.5);
        for w in &waiters {
            assert_eq!(done(w.step(due)), Wake::Released);
        }
        drop(waiters);
        assert_eq!(super::waiters(&server(), key), 0, "the loop ended");
        assert!(
            registry()
                .loops
                .lock()
                .get(&PollKey::new(&server(), key))
                .is_none()
        );
    }

    #[test]
    fn a_leader_that_leaves_hands_the_loop_on_at_once() {
        let key = b"hand-on-lock";
        let short = join(&server(), key, None, at(100), MAX);
        let long = join(&server(), key, None, at(9_000), MAX);
        let middle = join(&server(), key, None, at(5_000), MAX);
        let mark = poll_of(short.step(at(0)));
        let listener = match long.step(at(0)) {
            Step::Wait(listener, _) => listener,
            _ => panic!("waits"),
        };
        waits(middle.step(at(0)));
        // Cancelled mid-poll (its future dropped): the latest deadline leads, told at
        // once, and polls at once (the dropped poll said nothing).
        let _ = mark;
        drop(short);
        assert!(listener.wait_timeout(Duration::ZERO).is_some(), "told");
        let mark = poll_of(long.step(at(1)));
        long.polled(mark, Ok(held(b"h")), at(1), at(1), 0.0);
        // A deadline passes: that waiter returns, the others keep waiting.
        assert_eq!(done(middle.step(at(5_000))), Wake::Deadline);
        drop(middle);
        assert!(matches!(long.step(at(5_000)), Step::Poll(_)));
    }

    #[test]
    fn a_poll_that_ends_by_the_leaders_deadline_is_sent_again_by_the_next() {
        let key = b"abandoned-lock";
        let leader = join(&server(), key, None, at(100), MAX);
        let other = join(&server(), key, None, at(9_000), MAX);
        let _mark = poll_of(leader.step(at(0)));
        leader.abandoned();
        assert_eq!(done(leader.step(at(100))), Wake::Deadline);
        drop(leader);
        assert!(matches!(other.step(at(100)), Step::Poll(_)));
    }

    #[test]
    fn an_error_is_the_error_of_every_waiter_the_poll_counted_for() {
        let key = b"error-lock";
        let early = join(&server(), key, None, at(9_000), MAX);
        let mark = poll_of(early.step(at(0)));
        let late = join(&server(), key, None, at(9_000), MAX);
        let e = crate::error::Error::new(crate::error::ErrorKind::Connection, "down");
        early.polled(mark, Err(e), at(0), at(1), 0.0);
        match early.step(at(1)) {
            Step::Done(Err(e)) => assert!(e.is_connection()),
            _ => panic!("the error"),
        }
        // Joined after the poll was sent: it waits for a poll of its own.
        drop(early);
        assert!(matches!(late.step(at(2)), Step::Poll(_)));
    }

    #[test]
    fn a_round_gives_one_claim_per_wake_and_its_result_to_the_others() {
        let key = b"round-lock";
        let a = join(&server(), key, None, at(9_000), MAX);
        assert!(matches!(claim_turn(&server(), key, at(0)), Turn::Alone));
        let mark = poll_of(a.step(at(0)));
        a.polled(mark, Ok(held(b"h")), at(0), at(0), 0.0);
        assert!(
            matches!(claim_turn(&server(), key, at(1)), Turn::Alone),
            "no wake, no round"
        );
        let mark = poll_of(a.step(at(10)));
        a.polled(mark, Ok(Seen::Missing), at(10), at(10), 0.0);
        assert_eq!(done(a.step(at(10))), Wake::Released);
        let Turn::Claim(ticket) = claim_turn(&server(), key, at(10)) else {
            panic!("the first claim after the wake claims");
        };
        let Turn::Follow(listener) = claim_turn(&server(), key, at(10)) else {
            panic!("the second follows");
        };
        ticket.done(Some(b"winner"));
        assert!(listener.wait_timeout(Duration::ZERO).is_some());
        let Turn::Held(Some(holder)) = claim_turn(&server(), key, at(11)) else {
            panic!("the result");
        };
        assert_eq!(holder, b"winner");
        // The loser waits for the winner; a poll that finds another holder ends the
        // round (and wakes nobody: a new waiter learns its holder).
        drop(a);
        let b = join(&server(), key, None, at(9_000), MAX);
        let mark = poll_of(b.step(at(11)));
        b.polled(mark, Ok(held(b"other")), at(11), at(11), 0.0);
        assert!(matches!(b.step(at(11)), Step::Wait(..)));
        assert!(matches!(claim_turn(&server(), key, at(12)), Turn::Alone));
        // A release of this process ends a round too; a failed claim opens it again.
        let mark = poll_of(b.step(at(20)));
        b.polled(mark, Ok(Seen::Missing), at(20), at(20), 0.0);
        drop(b);
        let Turn::Claim(ticket) = claim_turn(&server(), key, at(20)) else {
            panic!("a new round");
        };
        drop(ticket);
        let Turn::Claim(ticket) = claim_turn(&server(), key, at(20)) else {
            panic!("a failed claim opens the round again");
        };
        ticket.done(Some(b"ours"));
        released(&server(), key, b"not ours");
        assert!(matches!(claim_turn(&server(), key, at(21)), Turn::Held(_)));
        released(&server(), key, b"ours");
        assert!(matches!(claim_turn(&server(), key, at(21)), Turn::Alone));
        // A poll that wakes waiters while another holder has the key answers their
        // claims itself: held by that holder.
        let d = join(&server(), key, Some(b"gone"), at(9_000), MAX);
        let mark = poll_of(d.step(at(25)));
        d.polled(mark, Ok(held(b"new")), at(25), at(25), 0.0);
        assert_eq!(done(d.step(at(25))), Wake::Released);
        let Turn::Held(Some(holder)) = claim_turn(&server(), key, at(25)) else {
            panic!("held by the holder the poll saw");
        };
        assert_eq!(holder, b"new");
        drop(d);
        released(&server(), key, b"new");
        // Without a loop, a round lasts ROUND_FRESH.
        let c = join(&server(), key, None, at(9_000), MAX);
        let mark = poll_of(c.step(at(30)));
        c.polled(mark, Ok(Seen::Missing), at(30), at(30), 0.0);
        drop(c);
        assert!(matches!(claim_turn(&server(), key, at(31)), Turn::Claim(_)));
        assert!(matches!(
            claim_turn(&server(), key, at(30) + ROUND_FRESH),
            Turn::Alone
        ));
    }
}
