//! The memcached backend: the meta-protocol codec and the settings and reply helpers
//! (compiled once), the key-to-server routing of pools (compiled once), the waiters'
//! shared poll loops (compiled once), the flavor-generic backend in `generic.rs`, and
//! the transports `blocking.rs` / `nonblocking.rs`.

pub(crate) mod meta;
#[cfg(any(feature = "blocking", feature = "async"))]
pub(crate) mod polls;
pub(crate) mod routing;
pub(crate) mod settings;
