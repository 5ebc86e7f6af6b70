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
