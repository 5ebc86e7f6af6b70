//! The flavor-generic code, compiled twice: into `aiolock::blocking` with
//! `must_be_sync` and into the crate root with `must_be_async`. Each backend's
//! flavor-generic part lives in its own folder under `backend/` and is compiled here.

#[cfg(feature = "memcached")]
use super::memcached_io;
use super::{maybe_async, rt};
#[cfg(feature = "redis")]
use super::{redis_cluster_conn, redis_conn, redis_sentinel_io};

mod backend;
pub(crate) mod background;
mod cache;
mod exclusive;
mod handoff;
#[cfg(feature = "memcached")]
#[path = "../backend/memcached/generic.rs"]
mod memcached;
#[path = "../backend/memory/generic.rs"]
mod memory;
mod optimistic;
#[cfg(feature = "redis")]
#[path = "../backend/redis/generic.rs"]
mod redis_backend;
#[cfg(feature = "redis")]
#[path = "../backend/redis/quorum_generic.rs"]
mod redis_quorum;
#[cfg(feature = "redis")]
#[path = "../backend/redis/sentinel_generic.rs"]
mod redis_sentinel_conn;
#[cfg(feature = "redis")]
#[path = "../backend/redis/transport.rs"]
mod redis_transport;
mod redlock;
pub(crate) mod watchdog;

pub use backend::Backend;
pub use cache::{AnyBackend, Cache, CacheBuilder};
pub use exclusive::{ExclusiveGuard, ExclusiveLock};
#[cfg(feature = "memcached")]
pub use memcached::MemcachedBackend;
pub use optimistic::OptimisticLock;
#[cfg(feature = "redis")]
pub use redis_backend::RedisBackend;
#[cfg(feature = "redis")]
pub use redis_quorum::QuorumBackend;
pub use redlock::{LockGuard, RedLock};
pub use watchdog::Watch;
