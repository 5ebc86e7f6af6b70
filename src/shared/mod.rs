//! The flavor-generic code, compiled twice: into `aiolock::blocking` with
//! `must_be_sync` and into the crate root with `must_be_async`.

use super::{maybe_async, rt};

mod backend;
mod cache;
mod memory;
mod optimistic;
mod redlock;

pub use backend::Backend;
pub use cache::{AnyBackend, Cache, CacheBuilder};
pub use optimistic::OptimisticLock;
pub use redlock::{LockGuard, RedLock};
