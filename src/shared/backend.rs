//! The backend trait: what a store must do for the cache and both locks.

use std::time::{Duration, Instant};

use super::maybe_async;
use crate::core::wait::{Claim, Wake};
use crate::error::{Error, ErrorKind, Result};
use crate::value::{CasToken, Replication, Ttl, Versioned};

/// A store the cache and the locks run on.
///
/// aiolock ships [`MemoryBackend`](crate::MemoryBackend) and, behind features, Redis and
/// memcached; implement this trait to bring another. Keys arrive fully namespaced and
/// non-empty; a backend rejects keys it cannot store with
/// [`ErrorKind::InvalidKey`](crate::ErrorKind::InvalidKey) before sending anything.
/// TTLs and leases arrive checked (non-zero, at most
/// [`MAX_DURATION`](crate::core::lease::MAX_DURATION)).
///
/// In the async flavor every method returns a `Send` future, so generic code can
/// `tokio::spawn` it.
#[maybe_async(AFIT)]
pub trait Backend: Send + Sync + 'static {
    /// A short name for diagnostics: the `backend` field of the `tracing` feature's
    /// spans (`"memory"`, `"redis"`, `"memcached"`; `"custom"` unless overridden).
    fn name(&self) -> &'static str {
        "custom"
    }

    /// The value of `key`, if present.
    fn get(&self, key: &[u8]) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;

    /// Stores `value` under `key`, expiring after `ttl` (never, for `None`).
    fn set(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Stores `value` only if `key` is absent; returns whether it did.
    fn add(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Removes `key`; returns whether it was present.
    fn delete(&self, key: &[u8]) -> impl Future<Output = Result<bool>> + Send;

    /// Whether `key` is present.
    fn exists(&self, key: &[u8]) -> impl Future<Output = Result<bool>> + Send;

    /// The remaining time to live of `key`.
    fn ttl(&self, key: &[u8]) -> impl Future<Output = Result<Ttl>> + Send;

    /// Takes the lock `key`: stores `token` with the TTL `lease` only if `key` is absent.
    /// This is how a [`RedLock`](super::RedLock) is taken. When another holder has the
    /// key, says so, with the holder's token if this round trip could learn it.
    fn claim(
        &self,
        key: &[u8],
        token: &[u8],
        lease: Duration,
    ) -> impl Future<Output = Result<Claim>> + Send;

    /// Deletes `key` only if it still holds `token`, atomically, and wakes the waiters
    /// of `key` (in every process). Returns whether it deleted the key.
    fn release(&self, key: &[u8], token: &[u8]) -> impl Future<Output = Result<bool>> + Send;

    /// Renews the lock `key` if it still holds `token`, owner-checked and atomically:
    /// its lease now ends `lease` after the backend applied this. Returns whether it
    /// did: `false` when the key is gone or holds another token (the lock is no longer
    /// ours, and nothing was changed).
    ///
    /// The default cannot ([`ErrorKind::Unsupported`]).
    fn extend(
        &self,
        key: &[u8],
        token: &[u8],
        lease: Duration,
    ) -> impl Future<Output = Result<bool>> + Send {
        let _ = (key, token, lease);
        async { Err(unsupported("extending a lease")) }
    }

    /// How much of `lease` a won claim or a renewal is sure to hold, counted from just
    /// before it was sent: what a guard's lease end is computed with. The whole lease
    /// (the default) where one server keeps the lease; less where the servers' clocks
    /// may drift from ours (a Redlock quorum: the lease minus 1 % and 2 ms).
    fn lease_validity(&self, lease: Duration) -> Duration {
        lease
    }

    /// Claims the lock `key` like [`claim`](Backend::claim) and, when it wins,
    /// increments the counter stored under `fence_key` in the same atomic step: the
    /// claim and, when won, the counter's new value, its *fencing token*. (A backend
    /// that cannot make it one atomic step increments, then checks that the lock
    /// still holds `token`, and reports a claim whose lock was lost in between as
    /// held, as `MemcachedBackend` does. Losers may increment too: fences skip
    /// numbers.)
    ///
    /// The counter is a decimal number without TTL, created on the first win
    /// (backends that may lose it, by a restart without persistence or an eviction,
    /// seed it from a clock in microseconds, so that it still grows after the loss).
    /// Every win of `key` gets a larger value than every earlier win. Fencing tokens
    /// are at least 1 (a 0 counts as no fencing token).
    ///
    /// The default cannot ([`ErrorKind::Unsupported`]).
    fn claim_fenced(
        &self,
        key: &[u8],
        token: &[u8],
        lease: Duration,
        fence_key: &[u8],
    ) -> impl Future<Output = Result<(Claim, Option<u64>)>> + Send {
        let _ = (key, token, lease, fence_key);
        async { Err(unsupported("fencing tokens")) }
    }

    /// Claims like [`claim`](Backend::claim) or, with a `fence_key`, like
    /// [`claim_fenced`](Backend::claim_fenced), and tells how many replicas confirmed
    /// the won claim's write when the backend waits for replicas (Redis with
    /// `wait_replicas`: `WAIT` after the write, on its connection). A lock's
    /// acquisition claims through this.
    ///
    /// The default claims and reports no replication (`None`).
    fn claim_replicated(
        &self,
        key: &[u8],
        token: &[u8],
        lease: Duration,
        fence_key: Option<&[u8]>,
    ) -> impl Future<Output = Result<(Claim, Option<u64>, Option<Replication>)>> + Send {
        async move {
            match fence_key {
                Some(fence_key) => {
                    let (claim, fence) = self.claim_fenced(key, token, lease, fence_key).await?;
                    Ok((claim, fence, None))
                }
                None => Ok((self.claim(key, token, lease).await?, None, None)),
            }
        }
    }

    /// Extends like [`extend`](Backend::extend), and tells how many replicas
    /// confirmed the renewal when the backend waits for replicas (as
    /// [`claim_replicated`](Backend::claim_replicated)). A guard's `extend` renews
    /// through this.
    ///
    /// The default extends and reports no replication (`None`).
    fn extend_replicated(
        &self,
        key: &[u8],
        token: &[u8],
        lease: Duration,
    ) -> impl Future<Output = Result<(bool, Option<Replication>)>> + Send {
        async move { Ok((self.extend(key, token, lease).await?, None)) }
    }

    /// Claims like [`claim`](Backend::claim), if that needs no I/O (the memory store):
    /// the lease ends at `lease_end`, and a holder counts if its lease lasts past
    /// `now` (the flavor's clock, read just before); `None` (the default) otherwise.
    /// A lock's claim tries it first, so an in-process claim builds no future and
    /// reads the clock once.
    fn try_claim_now(
        &self,
        key: &[u8],
        token: &[u8],
        now: Instant,
        lease_end: Instant,
    ) -> Option<Claim> {
        let _ = (key, token, now, lease_end);
        None
    }

    /// Releases like [`release`](Backend::release), if that needs no I/O (the memory
    /// store); `None` (the default) otherwise. A guard's release tries it first, and a
    /// dropped guard releases inline with it; without it, the async flavor releases a
    /// dropped guard on a spawned task (see [`Cache::flush`](super::Cache::flush)).
    fn try_release_now(&self, key: &[u8], token: &[u8]) -> Option<bool> {
        let _ = (key, token);
        None
    }

    /// Waits for `holder` (the token [`claim`](Backend::claim) reported, if any) to
    /// release `key`, at most until `deadline` and never past the holder's lease end.
    ///
    /// Registers for the release notification *before* checking the key, so that no
    /// release between the caller's lost claim and this wait is missed. A key already
    /// gone (or held by another token than `holder`) at that check was released in
    /// between: [`Wake::Released`]. Only the release of `holder` counts: an earlier
    /// holder's release heard late must not wake this waiter. Returns [`Wake::Vacant`]
    /// when the holder's lease ended while it watched (no release seen), so the
    /// caller claims the key again.
    fn wait(
        &self,
        key: &[u8],
        holder: Option<&[u8]>,
        deadline: Instant,
    ) -> impl Future<Output = Result<Wake>> + Send;

    /// Reads `key` like [`begin`](Backend::begin), if that needs no I/O (the memory
    /// store): hands `read` the value (`None`: absent) instead of returning a copy of
    /// it, and returns the token; `None` (the default) otherwise. An
    /// [`OptimisticLock`](super::OptimisticLock) tries it first, so that it copies a
    /// short value without an allocation.
    fn try_begin_now(&self, key: &[u8], read: &mut dyn FnMut(Option<&[u8]>)) -> Option<CasToken> {
        let _ = (key, read);
        None
    }

    /// Reads `key` and a token for its current state (start of an [`OptimisticLock`](super::OptimisticLock)).
    fn begin(&self, key: &[u8]) -> impl Future<Output = Result<Versioned>> + Send;

    /// Writes `value` only if `key` is still in the state `token` describes; returns
    /// whether it wrote.
    fn cas(
        &self,
        key: &[u8],
        token: &CasToken,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<bool>> + Send;
}

fn unsupported(what: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!("this backend does not support {what}"),
    )
}
