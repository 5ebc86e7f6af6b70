//! The Redis backend: the protocol and the waiters' registry (compiled once), the
//! flavor-generic backend in `generic.rs`, and the transports `blocking.rs` /
//! `nonblocking.rs`.

#[cfg(any(feature = "blocking", feature = "async"))]
pub(crate) mod hub;
pub(crate) mod cluster;
pub(crate) mod protocol;
