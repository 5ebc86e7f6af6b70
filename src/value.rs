//! The value types every backend shares: a key's time to live and the optimistic
//! lock's compare-and-set token.

use std::time::Duration;

/// Time to live of a key, as reported by `Cache::ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ttl {
    /// The key does not exist (or has expired).
    Missing,
    /// The key exists and never expires.
    Persistent,
    /// The key exists and expires after this long.
    Expires(Duration),
}

/// What an optimistic lock read on entry: the value and a token that changes
/// whenever the value is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value at the time of the read, `None` when the key was absent.
    pub value: Option<Vec<u8>>,
    /// The backend's token for that state of the key.
    pub token: CasToken,
}

/// A compare-and-set token: what a backend compares to tell whether a key changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CasToken {
    /// The key was absent; it must still be absent.
    Absent,
    /// A version number (memory: a counter; memcached: the CAS unique).
    Version(u64),
    /// The value itself, or a digest of it (Redis).
    Value(Vec<u8>),
}

/// How many replicas confirmed a lock's write before the backend answered: Redis's
/// `WAIT numreplicas timeout`, sent right after an acquisition's or an extension's
/// write on the connection that made it, when the cache URL asks for it
/// (`wait_replicas=1&wait_timeout=0.05`). See
/// [`LockGuard::replication`](crate::LockGuard::replication).
///
/// A confirmation makes the lock likelier, not certain, to survive a failover:
/// replication stays asynchronous, and a replica that confirmed may not be the one
/// promoted. See [Sentinel and replication](crate::RedisBackend#sentinel-and-replication).
///
/// ```
/// # fn show(r: aiolock::Replication) {
/// if !r.is_complete() {
///     eprintln!("lock {r}"); // "lock replicated to 0 of 1 replicas"
/// }
/// # }
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Replication(
    /// The replicas waited for (1 to 15) in the high four bits, those that confirmed
    /// (at most 15) in the low four: one byte, never zero, so that an
    /// `Option<Replication>` is one byte too and a guard stays within 128 bytes.
    std::num::NonZeroU8,
);

impl Replication {
    /// The most replicas `wait_replicas` may ask for, and the most counted.
    pub(crate) const MAX: u8 = 15;

    /// `WAIT`'s count (`acked`, clamped) of `wanted` replicas (clamped to 1..=15).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn new(acked: i64, wanted: u8) -> Self {
        let acked = u8::try_from(acked.clamp(0, Self::MAX.into())).unwrap_or(Self::MAX);
        let wanted = wanted.clamp(1, Self::MAX);
        // At least 16: `wanted` is at least 1.
        Replication(
            std::num::NonZeroU8::new(wanted << 4 | acked).unwrap_or(std::num::NonZeroU8::MIN),
        )
    }

    /// The replicas that confirmed the write within the timeout (all that did, which
    /// may be more than were waited for; at most 15).
    pub fn acked(&self) -> u32 {
        (self.0.get() & 0x0f).into()
    }

    /// The replicas waited for (the `wait_replicas` option).
    pub fn wanted(&self) -> u32 {
        (self.0.get() >> 4).into()
    }

    /// Whether at least [`wanted`](Replication::wanted) replicas confirmed.
    pub fn is_complete(&self) -> bool {
        self.acked() >= self.wanted()
    }
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("acked", &self.acked())
            .field("wanted", &self.wanted())
            .finish()
    }
}

impl std::fmt::Display for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replicated to {} of {} replicas",
            self.acked(),
            self.wanted()
        )
    }
}
