//! The flavor-generic code, compiled twice: into `aiolock::blocking` with
//! `must_be_sync` and into the crate root with `must_be_async`.

#[cfg(feature = "memcached")]
use super::memcached_io;
#[cfg(feature = "redis")]
use super::redis_conn;
use super::{maybe_async, rt};

mod backend;
mod cache;
#[cfg(feature = "memcached")]
mod memcached;
mod memory;
mod optimistic;
#[cfg(feature = "redis")]
mod redis_backend;
mod redlock;

pub use backend::Backend;
pub use cache::{AnyBackend, Cache, CacheBuilder};
#[cfg(feature = "memcached")]
pub use memcached::MemcachedBackend;
pub use optimistic::OptimisticLock;
#[cfg(feature = "redis")]
pub use redis_backend::RedisBackend;
pub use redlock::{LockGuard, RedLock};
