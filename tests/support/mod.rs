//! Test fixtures: real servers started per test, stopped on drop.

#[cfg(feature = "memcached")]
pub mod memcached;
#[cfg(feature = "redis")]
pub mod redis;
