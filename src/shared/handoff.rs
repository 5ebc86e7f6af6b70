//! An exclusive acquisition that waits in its cache's queue for the key
//! (`core::waiters`): only the first waiter of a cache deals with the server, the
//! others wait in process, and a guard that holds the key through the queue hands it
//! to the first waiter when it is released (`core::handoff`).

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backend::Backend;
use super::cache::Cache;
use super::redlock::{LockGuard, Nanos, Queued, claim_once};
use super::{maybe_async, rt};
use crate::core::fork;
use crate::core::handoff::lease_suffices;
use crate::core::lease::deadline;
use crate::core::token::Token;
use crate::core::wait::{Acquisition, Action, Claim, Outcome, Wake};
use crate::core::waiters::{Grant, Next, Seat};
use crate::error::Result;
use crate::key::KeyBuf;
use crate::trace::{self, Op};

/// How an exclusive acquisition came to the queue.
pub(super) enum Entered {
    /// Queued at once, behind the cache's waiters or holder of the key.
    Queued(Arc<Seat>),
    /// Its first claim (in process) lost to this holder.
    Lost(Option<Vec<u8>>),
    /// Nothing claimed yet: claim first.
    Claim,
}

/// A seat in the queue, left when dropped (the acquisition ends, fails, or its
/// future is dropped). A lock handed to it and not taken is then released as its
/// holder would release it: handed on, or released on the server.
struct Seated<B: Backend> {
    cache: Cache<B>,
    key: KeyBuf,
    seat: Arc<Seat>,
    lease: Duration,
}

impl<B: Backend> Seated<B> {
    /// Leaves the queue now: a lock handed to it meanwhile comes back.
    fn leave(&mut self) -> Option<Grant> {
        self.cache.waiters().leave(&self.key, &self.seat)
    }
}

impl<B: Backend> Drop for Seated<B> {
    fn drop(&mut self) {
        if let Some(grant) = self.leave() {
            drop(LockGuard::granted(
                &self.cache,
                &self.key,
                grant,
                self.lease,
            ));
        }
    }
}

impl<B: Backend> LockGuard<B> {
    /// The holder of a lock handed over in process: its release or drop hands it on
    /// or releases it.
    fn granted(cache: &Cache<B>, key: &[u8], grant: Grant, lease: Duration) -> Self {
        LockGuard {
            cache: cache.clone(),
            key: KeyBuf::from_slice(key),
            token: Some(grant.token),
            lease: Nanos::of(lease),
            lease_end: Some(grant.lease_end),
            fence: None,
            // The replicas confirmed the previous holder's write, not ours.
            replication: None,
            watched: false,
            queued: Queued::Yes,
            outcome: Outcome::Acquired,
            generation: fork::generation16(),
        }
    }

    /// One claim with `token`: `None` when it won (the guard holds the lock),
    /// `Some(holder)` when it lost to `holder`. A claim that fails is cleaned up.
    #[maybe_async]
    async fn claim(&mut self, token: Token, fenced: bool) -> Result<Option<Option<Vec<u8>>>> {
        let lease = self.lease.get();
        // Armed while in flight: a claim dropped or failed may have been applied.
        self.token = Some(token);
        let sent = rt::now();
        let claimed = claim_once(
            self.cache.backend(),
            &self.key,
            token.as_bytes(),
            lease,
            fenced,
        );
        match claimed.await {
            Ok((Claim::Won, fence, replication)) => {
                // Fences start at 1.
                self.fence = fence.and_then(NonZeroU64::new);
                self.replication = replication;
                self.lease_end = Some(deadline(sent, lease));
                self.outcome = Outcome::Acquired;
                Ok(None)
            }
            Ok((Claim::Held { holder }, ..)) => {
                self.token = None;
                Ok(Some(holder))
            }
            Err(e) => {
                self.failed(&e);
                Err(e)
            }
        }
    }

    /// Takes a lock handed over: the guard holds `grant`'s token through the queue,
    /// with the lease the server confirmed, or renewed first when that is shorter than
    /// our lease less the drift (`core::handoff`). False: the renewal found the lock
    /// lost (nothing held). A renewal that fails leaves the guard holding (in doubt):
    /// dropped, it releases on the server.
    #[maybe_async]
    async fn take(&mut self, grant: Grant) -> Result<bool> {
        let lease = self.lease.get();
        self.token = Some(grant.token);
        self.lease_end = Some(grant.lease_end);
        self.queued = Queued::Yes;
        self.fence = None;
        if lease_suffices(grant.lease_end, rt::now(), lease) {
            self.outcome = Outcome::Acquired;
            return Ok(true);
        }
        self.queued = Queued::Unanswered;
        let sent = rt::now();
        let backend = self.cache.backend();
        let span = trace::span(Op::Extend, &self.key, backend.name());
        let extend = backend.extend_replicated(&self.key, grant.token.as_bytes(), lease);
        let extended = in_span!(span, extend).map(|(renewed, replication)| {
            self.replication = replication;
            renewed
        });
        trace::end(&span, &extended, |r| trace::extended(*r));
        let extended = extended?;
        self.queued = Queued::Yes;
        if !extended {
            self.token = None;
            self.queued = Queued::No;
            return Ok(false);
        }
        let end = deadline(sent, lease);
        self.lease_end = Some(end);
        self.cache
            .waiters()
            .extended(&self.key, &grant.token, Some(end));
        self.outcome = Outcome::Acquired;
        Ok(true)
    }
}

/// Drives an exclusive acquisition that waits in the cache's queue to its outcome
/// (`Ok`: in `guard.outcome`): claims (only while first in the queue, with no
/// guard of the cache holding the key), waits on the server (the same), waits in
/// the queue, takes the lock when it is handed over.
#[maybe_async]
pub(super) async fn acquire_queued<B: Backend>(
    guard: &mut LockGuard<B>,
    entered: Entered,
    fenced: bool,
    wait: Option<Duration>,
) -> Result<()> {
    let lease = guard.lease.get();
    let mut machine = Acquisition::exclusive(wait.unwrap_or(lease));
    machine.start();
    // (A claim lost in `start` stored nothing: a fresh token is as good.)
    let token = Token::random();
    let (seat, leads) = match entered {
        Entered::Queued(seat) => (seat, false),
        Entered::Lost(holder) => queue_lost(guard, holder.as_deref(), fenced),
        Entered::Claim => match guard.claim(token, fenced).await? {
            None => return Ok(()),
            Some(holder) => queue_lost(guard, holder.as_deref(), fenced),
        },
    };
    let mut seated = Seated {
        cache: guard.cache.clone(),
        key: guard.key.clone(),
        seat,
        lease,
    };
    if !leads {
        trace::waiting(&guard.key);
    }
    let deadline = match machine.added(false, rt::now) {
        Action::Wait(deadline) => deadline,
        Action::Finish(outcome) => {
            guard.outcome = outcome;
            return Ok(());
        }
        // (Never: a lost claim waits or finishes.)
        Action::Add => rt::now(),
    };
    guard.cache.waiters().bound(&seated.seat, deadline);
    let mut handed = None;
    loop {
        let next = match handed.take() {
            Some(grant) => Next::Take(grant),
            None => guard
                .cache
                .waiters()
                .next(&guard.key, &seated.seat, rt::now()),
        };
        match next {
            Next::Take(grant) => {
                if guard.take(grant).await? {
                    return Ok(());
                }
                // Lost before we could renew it: first in the queue again.
                let waiters = guard.cache.waiters();
                let (seat, leads) = waiters.handed_lost(&guard.key, &grant.token, fenced);
                drop(std::mem::replace(&mut seated.seat, seat));
                waiters.bound(&seated.seat, deadline);
                if !leads {
                    trace::waiting(&guard.key);
                }
            }
            Next::Lead { holder, wait_first } => {
                if rt::now() >= deadline {
                    guard.outcome = Outcome::TimedOut;
                    return Ok(());
                }
                if wait_first {
                    let wake = wait_on_server(guard, holder.as_deref(), deadline).await?;
                    // (A wake claims or finishes, never waits again.)
                    if let Action::Finish(outcome) = machine.woke(wake, rt::now()) {
                        guard.outcome = outcome;
                        return Ok(());
                    }
                }
                match guard.claim(token, fenced).await? {
                    None => {
                        let end = guard.lease_end.unwrap_or_else(rt::now);
                        let waiters = guard.cache.waiters();
                        let seat = &seated.seat;
                        let held = waiters.lead_won(&guard.key, seat, token, lease, end, rt::now());
                        guard.queued = if held { Queued::Yes } else { Queued::No };
                        return Ok(());
                    }
                    Some(holder) => {
                        let waiters = guard.cache.waiters();
                        waiters.lead_lost(&guard.key, &seated.seat, holder.as_deref());
                        if let Action::Finish(outcome) = machine.added(false, rt::now) {
                            guard.outcome = outcome;
                            return Ok(());
                        }
                    }
                }
            }
            Next::Wait { listener, until } => {
                if rt::now() >= deadline {
                    // A lock handed over meanwhile is ours: take it.
                    match seated.leave() {
                        Some(grant) => handed = Some(grant),
                        None => {
                            guard.outcome = Outcome::TimedOut;
                            return Ok(());
                        }
                    }
                    continue;
                }
                let until: Instant = until.map_or(deadline, |u| u.min(deadline));
                rt::wait_listener(listener, until).await;
            }
        }
    }
}

/// Queues an acquisition whose claim lost to `holder`: its seat, and whether it leads.
fn queue_lost<B: Backend>(
    guard: &LockGuard<B>,
    holder: Option<&[u8]>,
    fenced: bool,
) -> (Arc<Seat>, bool) {
    let waiters = guard.cache.waiters();
    waiters.queue_lost(&guard.key, holder, fenced)
}

/// The leader's wait for `holder`'s release on the server, at most until `deadline`.
#[maybe_async]
async fn wait_on_server<B: Backend>(
    guard: &LockGuard<B>,
    holder: Option<&[u8]>,
    deadline: Instant,
) -> Result<Wake> {
    let backend = guard.cache.backend();
    trace::waiting(&guard.key);
    let span = trace::span(Op::Wait, &guard.key, backend.name());
    let wake = in_span!(span, backend.wait(&guard.key, holder, deadline));
    trace::end(&span, &wake, |w| trace::wake(*w));
    wake
}
