//! Test fixtures: real servers started per test, stopped on drop.

pub mod events;
#[cfg(feature = "memcached")]
pub mod memcached;
pub mod probe;
pub mod proxy;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
pub mod redis_cluster;
#[cfg(feature = "redis")]
pub mod redis_sentinel;
