//! The Redis backend: the protocol and the waiters' registry (compiled once), the
//! flavor-generic backend in `generic.rs`, and the transports `blocking.rs` /
//! `nonblocking.rs`.

pub(crate) mod cluster;
#[cfg(any(feature = "blocking", feature = "async"))]
pub(crate) mod hub;
#[cfg(feature = "async")]
pub(crate) mod pipeline;
pub(crate) mod protocol;
pub(crate) mod quorum;
pub(crate) mod replication;
#[cfg(feature = "async")]
pub(crate) mod resp;
pub(crate) mod sentinel;
