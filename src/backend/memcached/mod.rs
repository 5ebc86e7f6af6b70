//! The memcached backend: the meta-protocol codec and the settings and reply helpers
//! (compiled once), the flavor-generic backend in `generic.rs`, and the transports
//! `blocking.rs` / `nonblocking.rs`.

pub(crate) mod meta;
pub(crate) mod settings;
