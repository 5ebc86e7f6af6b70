//! Test fixtures: real servers started per test, stopped on drop.

#[cfg(feature = "memcached")]
pub mod memcached;
pub mod proxy;
#[cfg(feature = "redis")]
pub mod redis;
