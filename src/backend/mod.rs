//! The backends, one folder each. Each folder holds the backend's flavor-free part
//! (compiled once, declared here), its flavor-generic part `generic.rs` (compiled into
//! both flavors from `shared/mod.rs`) and, for the network backends, its two transports
//! `blocking.rs` / `nonblocking.rs` (declared by the twin roots).

#[cfg(all(feature = "memcached", any(feature = "blocking", feature = "async")))]
pub(crate) mod memcached;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
