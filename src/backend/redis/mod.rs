//! The Redis backend: the protocol (compiled once), the flavor-generic backend in
//! `generic.rs`, and the transports `blocking.rs` / `nonblocking.rs`.

pub(crate) mod protocol;
