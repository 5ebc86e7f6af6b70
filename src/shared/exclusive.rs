//! [`ExclusiveLock`]: a lease lock that waits until it holds the key.

use std::time::Duration;

use super::backend::Backend;
use super::cache::{AnyBackend, Cache};
use super::maybe_async;
use super::redlock::{LockGuard, RedLock};
use super::watchdog::Watch;
use crate::core::token::Token;
use crate::core::wait::Acquisition;
use crate::error::Result;

/// A lease lock for mutual exclusion: [`acquire`](ExclusiveLock::acquire) keeps
/// waiting through releases and lease ends until this caller holds the key, or its
/// wait bound passes.
///
/// It is stored like a [`RedLock`] (the key `namespace + key + lock_suffix` holding a
/// random token, owner-checked release), and waits with the same machinery: a waiter
/// wakes at the holder's release (Redis: its publish; memory: at once; memcached: by
/// polling) or when the holder's lease ends, then claims the key again. A `RedLock`
/// and an `ExclusiveLock` on the same key exclude each other.
///
/// Not getting the lock is not an error: `acquire` returns `Ok(None)` when the bound
/// passed with the key still held by another caller, and `try_acquire` when the key
/// is held now; `Err` means the backend failed (or the input is invalid), and then the
/// caller may or may not have been close to getting it.
///
/// # Mutual exclusion, and what a lease cannot promise
///
/// While the holder's lease lasts, no other caller of any process acquires the key.
/// But a lease lock alone cannot stop a holder that paused past its lease (GC,
/// `SIGSTOP`, a slow disk, a long page fault) from carrying on after a new holder
/// started: the first holder's [`release`](ExclusiveGuard::release) then reports
/// `false`, too late for the writes it made meanwhile. Choose a lease much longer than
/// the work, and when a stale write would be harmful, let the storage it writes to
/// refuse it: [`fenced`](ExclusiveLock::fenced) gives each acquisition a number that
/// grows, and the storage keeps the highest one it has seen and refuses older ones.
///
/// # Many waiters in one process
///
/// A release wakes every waiter of the cache, but only one of them claims the key
/// again; the others wait for its result and then for the holder it found (itself,
/// or a caller of another process). Measured on Redis with 16 callers of one cache
/// on one key: 1.9 claims per entry (one per waiter and release, 7.7, without that
/// turn), 27 commands per entry in all, most of them each re-waiting waiter's check
/// of the new holder; on memcached 2.0 claims per entry (4.3 without the turn).
/// Waiters of different caches (and processes) each claim.
///
/// ```
/// # #[cfg(feature = "blocking")] {
/// use std::time::Duration;
/// use aiolock::blocking::Cache;
///
/// let cache = Cache::memory();
/// let lease = Duration::from_secs(30);
/// let Some(guard) = cache.lock("account:42", lease).acquire()? else {
///     panic!("held by another caller for a whole lease");
/// };
/// // ... read, change and write the account ...
/// assert!(cache.lock("account:42", lease).try_acquire()?.is_none(), "held by us");
/// assert!(guard.release()?, "the lease was still ours");
/// # }
/// # Ok::<(), aiolock::Error>(())
/// ```
#[derive(Clone)]
pub struct ExclusiveLock<B = AnyBackend> {
    lock: RedLock<B>,
}

impl<B> std::fmt::Debug for ExclusiveLock<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.lock.debug_as("ExclusiveLock", f)
    }
}

impl<B: Backend> ExclusiveLock<B> {
    /// An exclusive lock on `key` of `cache`, held for at most `lease` once acquired.
    ///
    /// Nothing is checked or sent until [`acquire`](ExclusiveLock::acquire) or
    /// [`try_acquire`](ExclusiveLock::try_acquire).
    #[inline]
    pub fn new(cache: &Cache<B>, key: impl AsRef<[u8]>, lease: Duration) -> Self {
        ExclusiveLock {
            lock: RedLock::new(cache, key, lease),
        }
    }

    /// How long [`acquire`](ExclusiveLock::acquire) waits at most for the key, from
    /// its first lost claim. The default is the lease: there is no unbounded wait, as
    /// a lock that may never come should be a decision in the caller's code (pass
    /// [`MAX_DURATION`](crate::MAX_DURATION) for "as long as it takes").
    /// `Duration::ZERO` is [`try_acquire`](ExclusiveLock::try_acquire).
    pub fn wait_at_most(self, bound: Duration) -> Self {
        ExclusiveLock {
            lock: self.lock.wait_at_most(bound),
        }
    }

    /// Gives every acquisition a fencing token ([`ExclusiveGuard::fence`]), as
    /// [`RedLock::fenced`] describes: a number that grows with each acquisition of
    /// the key, for the protected resource to refuse the writes of a holder that
    /// paused past its lease.
    pub fn fenced(self) -> Self {
        ExclusiveLock {
            lock: self.lock.fenced(),
        }
    }

    /// Renews the lease automatically while the guard lives, and tells the work under
    /// the lock through [`ExclusiveGuard::watch`] when it is lost: see
    /// [`RedLock::watchdog`] (one worker per cache, renewals a third of the lease after
    /// each confirmed one, what bounds a renewal that gets no answer).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> aiolock::Result<()> {
    /// use std::time::Duration;
    ///
    /// let cache = aiolock::Cache::memory();
    /// let lease = Duration::from_millis(300);
    /// let guard = cache.lock("job", lease).watchdog().acquire().await?;
    /// let guard = guard.expect("free");
    /// let watch = guard.watch().expect("watched");
    /// let work = tokio::time::sleep(lease * 2); // longer than the lease
    /// tokio::select! {
    ///     () = work => {}
    ///     lost = watch.lost() => return Err(lost),
    /// }
    /// assert!(cache.lock("job", lease).try_acquire().await?.is_none(), "still ours");
    /// assert!(guard.release().await?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn watchdog(self) -> Self {
        ExclusiveLock {
            lock: self.lock.watchdog(),
        }
    }

    /// The key the lock is stored under: `namespace + key + lock_suffix`.
    pub fn lock_key(&self) -> &[u8] {
        self.lock.lock_key()
    }

    /// Takes the lock, waiting through other holders' releases and lease ends until
    /// it holds it or the wait bound ([`wait_at_most`](ExclusiveLock::wait_at_most),
    /// by default the lease) has passed: `Ok(Some(guard))` holds the lock, `Ok(None)`
    /// found it held until the bound.
    ///
    /// Errors: [`InvalidArgument`](crate::ErrorKind::InvalidArgument) for a zero or
    /// too long lease, [`InvalidKey`](crate::ErrorKind::InvalidKey) for an empty key,
    /// and the backend's errors. A claim that fails without an answer is cleaned up
    /// in the background, as for [`RedLock::acquire`].
    ///
    /// # Cancel safety
    ///
    /// (async flavor) Dropping the future before it completes leaves nothing behind:
    /// no lock key of ours (a claim that may have been applied is released,
    /// owner-checked) and no waiter counted in [`Cache::waiting`].
    #[maybe_async]
    pub fn acquire(self) -> impl Future<Output = Result<Option<ExclusiveGuard<B>>>> + Send {
        self.lock
            .acquire_in(Acquisition::exclusive, ExclusiveGuard::held)
    }

    /// Claims the lock once, never waiting: `Ok(Some(guard))` holds it, `Ok(None)`
    /// found it held by another caller. One round trip (memory: one mutex section).
    ///
    /// Errors and cancel safety as for [`acquire`](ExclusiveLock::acquire).
    #[maybe_async]
    pub fn try_acquire(self) -> impl Future<Output = Result<Option<ExclusiveGuard<B>>>> + Send {
        self.lock
            .wait_at_most(Duration::ZERO)
            .acquire_in(Acquisition::exclusive, ExclusiveGuard::held)
    }
}

/// A held [`ExclusiveLock`]; releases it on [`release`](ExclusiveGuard::release) or
/// drop, exactly like a [`LockGuard`] that holds its lock (owner-checked; a dropped
/// guard of a network backend releases on a spawned task in the async flavor).
#[must_use = "if unused the lock is released at once"]
pub struct ExclusiveGuard<B: Backend = AnyBackend> {
    /// Holds its token from `held` until `release` consumes it.
    guard: LockGuard<B>,
}

impl<B: Backend> std::fmt::Debug for ExclusiveGuard<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExclusiveGuard")
            .field("key", &String::from_utf8_lossy(self.guard.key()))
            .finish_non_exhaustive()
    }
}

impl<B: Backend> ExclusiveGuard<B> {
    fn held(guard: LockGuard<B>) -> Option<Self> {
        guard.token()?;
        Some(ExclusiveGuard { guard })
    }

    /// The token stored under the lock key.
    pub fn token(&self) -> &Token {
        // Always held (see `guard`): the fallback is never returned.
        self.guard.token().unwrap_or(&Token::NONE)
    }

    /// The key the lock is stored under.
    pub fn lock_key(&self) -> &[u8] {
        self.guard.key()
    }

    /// The instant by which the lease ends at the earliest (see
    /// [`LockGuard::lease_end`]); `None` once released.
    pub fn lease_end(&self) -> Option<std::time::Instant> {
        self.guard.lease_end()
    }

    /// The fencing token of this acquisition, when the lock was
    /// [`fenced`](ExclusiveLock::fenced).
    pub fn fence(&self) -> Option<u64> {
        self.guard.fence()
    }

    /// How many replicas confirmed the acquisition or the last extension, when the
    /// backend waits for replicas (see [`LockGuard::replication`]).
    pub fn replication(&self) -> Option<crate::Replication> {
        self.guard.replication()
    }

    /// The watch of a guard acquired with the [`watchdog`](ExclusiveLock::watchdog)
    /// on: it reports when the lock is lost (see [`Watch`]). `None` when unwatched.
    pub fn watch(&self) -> Option<Watch> {
        self.guard.watch()
    }

    /// Renews the lease, owner-checked: it now ends `lease` from now. Fails with
    /// [`Lost`](crate::ErrorKind::Lost) when the lock is no longer ours; see
    /// [`LockGuard::extend`].
    #[maybe_async]
    pub async fn extend(&mut self, lease: Duration) -> Result<()> {
        self.guard.extend(lease).await
    }

    /// Gives the guard up without releasing the lock: it stays held until its lease
    /// ends; nothing is sent, and a watched guard's renewals stop. See
    /// [`LockGuard::let_expire`].
    pub fn let_expire(self) {
        self.guard.let_expire()
    }

    /// Releases the lock: deletes the key only if it still holds our token
    /// (atomically) and wakes the waiters. Returns whether it removed the lock:
    /// `false` when the lease had already ended (another caller may hold it now, and
    /// its lock is left alone; see the fencing caveat on [`ExclusiveLock`]).
    ///
    /// # Cancel safety
    ///
    /// (async flavor) A release future dropped before the backend answered releases
    /// on drop, like a dropped guard.
    #[maybe_async]
    pub fn release(self) -> impl Future<Output = Result<bool>> + Send {
        self.guard.release()
    }
}
