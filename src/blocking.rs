//! The blocking flavor: the same types as the crate root, whose methods block the
//! calling thread.
//!
//! Use it from threads, not from async code: calling it inside an async runtime
//! blocks the runtime's worker, and on a current-thread runtime starves the very task
//! that would release the lock. From async code, use the types at the crate root (or
//! `tokio::task::spawn_blocking`). This flavor needs no runtime and pulls none in.
//!
//! ```
//! use std::time::Duration;
//! use aiolock::{Outcome, blocking::Cache};
//!
//! let cache = Cache::from_url("memory://")?;
//! let value = match cache.get("report")? {
//!     Some(v) => v,
//!     None => cache.redlock("report", Duration::from_secs(5)).run(|outcome| {
//!         if outcome == Outcome::Acquired {
//!             let v = b"expensive".to_vec();
//!             cache.set("report", &v, None).map(|_| v)
//!         } else {
//!             cache.get("report").map(Option::unwrap_or_default)
//!         }
//!     })??,
//! };
//! assert_eq!(value, b"expensive");
//! # Ok::<(), aiolock::Error>(())
//! ```

use maybe_async::must_be_sync as maybe_async;

/// `maybe_await!(f())`: `f()` here, `f().await` in the async flavor. For calls inside
/// macros, which maybe-async does not rewrite.
macro_rules! maybe_await {
    ($e:expr) => {
        $e
    };
}

/// `in_span!(span, f())`: `f()` inside `span` (entered around the call here, attached to
/// the future in the async flavor). Nothing without the `tracing` feature.
macro_rules! in_span {
    ($span:expr, $e:expr) => {{
        let _entered = $crate::trace::enter(&$span);
        $e
    }};
}

// The same source is compiled into the other flavor too: that is the point.
#[allow(clippy::duplicate_mod)]
#[path = "shared/mod.rs"]
mod shared;

/// This flavor's memcached socket (the backend logic is in `backend/memcached/generic.rs`).
#[cfg(feature = "memcached")]
#[path = "backend/memcached/blocking.rs"]
mod memcached_io;
/// This flavor's Redis Cluster connections.
#[cfg(feature = "redis")]
#[path = "backend/redis/cluster_blocking.rs"]
mod redis_cluster_conn;
/// This flavor's Redis connections (the backend logic is in `backend/redis/generic.rs`).
#[cfg(feature = "redis")]
#[path = "backend/redis/blocking.rs"]
mod redis_conn;
/// This flavor's I/O for Redis Sentinel (the logic is in `backend/redis/sentinel_generic.rs`).
#[cfg(feature = "redis")]
#[path = "backend/redis/sentinel_blocking.rs"]
mod redis_sentinel_io;

pub use shared::*;

use crate::core::wait::Outcome;
use crate::error::Result;

impl<B: Backend> RedLock<B> {
    /// Runs `f` under the lock: acquires, calls `f` with the [`Outcome`], then
    /// releases (if acquired) and returns what `f` returned. A failed release is not
    /// returned (the lease bounds the damage; with the `tracing` feature it is a `warn`
    /// event); use [`acquire`](RedLock::acquire) and [`release`](LockGuard::release) to
    /// see it.
    ///
    /// # Panics
    ///
    /// If `f` panics, the lock is released while unwinding and the panic goes on.
    pub fn run<T>(self, f: impl FnOnce(Outcome) -> T) -> Result<T> {
        let guard = self.acquire()?;
        let value = f(guard.outcome());
        guard.release_or_warn("run");
        Ok(value)
    }
}

/// The blocking flavor's runtime seam.
mod rt {
    use std::time::Instant;

    use event_listener::{EventListener, Listener};

    use super::shared::background::Job;
    use super::shared::watchdog::{Renewal, WatchWorker};
    use super::{Backend, Cache};

    /// This flavor's clock: `Instant::now()`, from the time-stamp counter where the
    /// kernel keeps time by it too (see `crate::clock`).
    #[inline]
    pub(crate) fn now() -> Instant {
        crate::clock::now()
    }

    /// Parks the thread until `listener` is notified (true) or `until` passes (false).
    pub(crate) fn wait_listener(listener: EventListener, until: Instant) -> bool {
        listener.wait_deadline(until).is_some()
    }

    /// Parks the thread until `listener` is notified.
    pub(crate) fn park(listener: EventListener) {
        listener.wait();
    }

    /// A dropped guard releases at once, on the dropping thread.
    pub(crate) fn release_on_drop<B: Backend>(cache: Cache<B>, job: Job) {
        cache.release_dropped(job);
    }

    /// Starts the cache's background worker on a thread of its own; false if none
    /// could start.
    pub(crate) fn spawn_worker<B: Backend>(cache: Cache<B>) -> bool {
        std::thread::Builder::new()
            .name("aiolock-release".into())
            .spawn(move || cache.work())
            .is_ok()
    }

    /// Starts a cache's watchdog worker on a thread of its own (dropped, and so
    /// reporting its guards lost, if none can start).
    pub(crate) fn spawn_watchdog<B: Backend>(worker: WatchWorker<B>) {
        let _ = std::thread::Builder::new()
            .name("aiolock-watchdog".into())
            .spawn(move || worker.run());
    }

    /// Sends a renewal on the worker's thread: one after the other.
    pub(crate) fn renew<B: Backend>(cache: Cache<B>, renewal: Renewal) {
        cache.renew(renewal);
    }

    /// The answer of a call that already returned: this flavor cannot give a call up
    /// at an instant (the backend's response timeout bounds it).
    pub(crate) fn timeout_at<T>(_until: Instant, answer: T) -> Option<T> {
        Some(answer)
    }

    /// Sleeps the thread (memcached waiters poll, background retries pause).
    pub(crate) fn sleep(d: std::time::Duration) {
        std::thread::sleep(d);
    }

    /// `rt::boxed(f()).await`: the async flavor moves the future of `f` to the heap (so
    /// that a rarely suspended, large future does not grow every future that awaits
    /// it); here `f()` has already run: its value, unchanged.
    pub(crate) fn boxed<T>(value: T) -> T {
        value
    }
}
