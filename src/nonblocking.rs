//! The async flavor, on tokio, re-exported at the crate root.

use maybe_async::must_be_async as maybe_async;

/// `maybe_await!(f())`: `f().await` here, `f()` in the blocking flavor. For calls
/// inside macros, which maybe-async does not rewrite.
macro_rules! maybe_await {
    ($e:expr) => {
        $e.await
    };
}

/// `in_span!(span, f())`: `f().await` inside `span` (the span is attached to the future;
/// the blocking flavor enters it around the call). Nothing without the `tracing` feature.
macro_rules! in_span {
    ($span:expr, $e:expr) => {
        $crate::trace::instrument($e, &$span).await
    };
}

// The same source is compiled into the other flavor too: that is the point.
#[allow(clippy::duplicate_mod)]
#[path = "shared/mod.rs"]
mod shared;

/// This flavor's memcached socket (the backend logic is in `backend/memcached/generic.rs`).
#[cfg(feature = "memcached")]
#[path = "backend/memcached/nonblocking.rs"]
mod memcached_io;
/// This flavor's Redis Cluster connections.
#[cfg(feature = "redis")]
#[path = "backend/redis/cluster_nonblocking.rs"]
mod redis_cluster_conn;
/// This flavor's Redis connections (the backend logic is in `backend/redis/generic.rs`).
#[cfg(feature = "redis")]
#[path = "backend/redis/nonblocking.rs"]
mod redis_conn;
#[cfg(feature = "redis")]
#[path = "backend/redis/sentinel_nonblocking.rs"]
mod redis_sentinel_io;
/// This flavor's shared subscriber, for one Redis server and a Redis Cluster.
#[cfg(feature = "redis")]
#[path = "backend/redis/subscriber_nonblocking.rs"]
mod redis_subscriber;

pub use shared::*;

use crate::core::wait::Outcome;
use crate::error::Result;

impl<B: Backend> RedLock<B> {
    /// Runs the future `f` makes under the lock: acquires, awaits `f(outcome)`, then
    /// releases (if acquired) and returns its output. A failed release is not returned
    /// (the lease bounds the damage; with the `tracing` feature it is a `warn` event); use
    /// [`acquire`](RedLock::acquire) and [`release`](LockGuard::release) to see it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> aiolock::Result<()> {
    /// use std::time::Duration;
    /// use aiolock::{Cache, Outcome};
    ///
    /// let cache = Cache::memory();
    /// let computed = cache
    ///     .redlock("report", Duration::from_secs(5))
    ///     .run(|outcome| async move { outcome == Outcome::Acquired })
    ///     .await?;
    /// assert!(computed);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future releases the lock like a dropped [`LockGuard`].
    pub async fn run<F, Fut, T>(self, f: F) -> Result<T>
    where
        F: FnOnce(Outcome) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self.acquire().await?;
        let value = f(guard.outcome()).await;
        guard.release_or_warn("run").await;
        Ok(value)
    }
}

/// The async flavor's runtime seam.
mod rt {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Instant;

    use event_listener::EventListener;

    use super::shared::background::Job;
    use super::shared::watchdog::{Renewal, WatchWorker};
    use super::{Backend, Cache};

    /// This flavor's clock: tokio's, so that a paused runtime (`tokio::time::pause`)
    /// pauses every deadline of this flavor too.
    pub(crate) fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    /// Waits until `listener` is notified (true) or `until` passes (false).
    ///
    /// Not an `async fn`, which would keep `listener` and `until` a second time beside
    /// the timer made of them, in every task waiting for a lock. (Called where it is
    /// awaited, in a task: the timer takes the runtime's handle when made.)
    pub(crate) fn wait_listener(listener: EventListener, until: Instant) -> Bounded {
        Bounded(tokio::time::timeout_at(until.into(), listener))
    }

    /// The future of [`wait_listener`].
    pub(crate) struct Bounded(tokio::time::Timeout<EventListener>);

    impl Future for Bounded {
        type Output = bool;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
            // SAFETY: the one field is pinned with `self` (structural pinning): it is
            // never moved out, and `Bounded` has no `Drop` of its own.
            let timeout = unsafe { self.map_unchecked_mut(|b| &mut b.0) };
            timeout.poll(cx).map(|r| r.is_ok())
        }
    }

    /// Waits until `listener` is notified.
    pub(crate) async fn park(listener: EventListener) {
        listener.await;
    }

    /// A dropped guard releases on a spawned task, counted by the cache's background
    /// (for `Cache::flush`). Without a runtime, or when the runtime shuts down before
    /// the task ran, the release is skipped: counted and warned of.
    pub(crate) fn release_on_drop<B: Backend>(cache: Cache<B>, job: Job) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            let backend = cache.backend().name();
            cache
                .background()
                .skip(&job.key, backend, "dropped outside a tokio runtime");
            return;
        };
        cache.background().start();
        let mut ticket = Ticket {
            cache,
            job: Some(job),
        };
        handle.spawn(async move {
            if let Some(job) = ticket.job.take() {
                ticket.cache.release_dropped(job).await;
            }
            drop(ticket);
        });
    }

    /// A spawned release: counted until it ends; one dropped before it ran (the runtime
    /// shut down) is a skipped release.
    struct Ticket<B: Backend> {
        cache: Cache<B>,
        job: Option<Job>,
    }

    impl<B: Backend> Drop for Ticket<B> {
        fn drop(&mut self) {
            let background = self.cache.background();
            if let Some(job) = self.job.take() {
                let backend = self.cache.backend().name();
                background.skip(&job.key, backend, "its runtime shut down before it ran");
            }
            background.done();
        }
    }

    /// Starts the cache's background worker on a task; false without a runtime.
    pub(crate) fn spawn_worker<B: Backend>(cache: Cache<B>) -> bool {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(cache.work());
                true
            }
            Err(_) => false,
        }
    }

    /// Starts a cache's watchdog worker on a task (dropped, and so reporting its
    /// guards lost, without a runtime).
    pub(crate) fn spawn_watchdog<B: Backend>(worker: WatchWorker<B>) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(worker.run());
        }
    }

    /// Sends a renewal on a task of its own (from the worker, on its runtime), so that
    /// one that hangs holds up no other.
    pub(crate) fn renew<B: Backend>(cache: Cache<B>, renewal: Renewal) {
        tokio::spawn(cache.renew(renewal));
    }

    /// `future`'s output, or `None` if `until` passes first (then it is dropped).
    pub(crate) async fn timeout_at<F: Future>(until: Instant, future: F) -> Option<F::Output> {
        tokio::time::timeout_at(until.into(), future).await.ok()
    }

    /// Sleeps the task (memcached waiters poll, background retries pause).
    pub(crate) async fn sleep(d: std::time::Duration) {
        tokio::time::sleep(d).await;
    }

    /// `rt::boxed(f()).await`: awaits the future of `f` from the heap, so that a large
    /// future suspended only briefly (a network round trip, a subscription) does not
    /// grow every future that awaits it, such as a task waiting for a lock for as long
    /// as the lease lasts. The blocking flavor's `boxed` returns the value unchanged.
    pub(crate) fn boxed<F: Future>(future: F) -> std::pin::Pin<Box<F>> {
        Box::pin(future)
    }
}
