//! Releases that outlive their caller, cancel safety and the async flavor's clock: a
//! dropped guard's release (inline on memory, a task on network backends, flushed by
//! `Cache::flush`, reported when skipped), a release future dropped at its await, the
//! cleanup of an acquisition that failed against a stalled server, and waiters under
//! `tokio::time::pause()`.

use std::time::{Duration, Instant};

use aiolock::{ErrorKind, MemoryBackend, Outcome};

use crate::support::events;
use crate::support::probe::Probe;

const LEASE: Duration = Duration::from_secs(30);

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Asserts that the lock `k` of `cache` is free: one claim, no wait, takes it.
async fn assert_free<B: aiolock::Backend>(cache: &aiolock::Cache<B>, why: &str) {
    let next = cache
        .redlock("k", LEASE)
        .wait_at_most(Duration::ZERO)
        .acquire()
        .await
        .unwrap();
    assert_eq!(next.outcome(), Outcome::Acquired, "{why}");
}

/// Item 6: the memory store releases a dropped async guard inline, so the same task's
/// next acquisition takes the lock (a spawned release would run only once this task
/// waits, and the acquisition would end `Released`).
#[tokio::test(flavor = "current_thread")]
async fn memory_drop_then_acquire_in_one_task_acquires() {
    let cache = aiolock::Cache::memory();
    let guard = cache.redlock("k", LEASE).acquire().await.unwrap();
    assert!(guard.is_acquired());
    drop(guard);
    assert_free(&cache, "the dropped guard released inline").await;
}

/// Item 6: a memory guard dropped outside any runtime is released all the same.
#[test]
fn memory_guard_dropped_outside_a_runtime_is_released() {
    let cache = aiolock::Cache::memory();
    let guard = current_thread()
        .block_on(cache.redlock("k", LEASE).acquire())
        .unwrap();
    drop(guard);
    assert_eq!(cache.skipped_releases(), 0);
    let exists = current_thread().block_on(cache.exists("k-lock")).unwrap();
    assert!(!exists, "released inline");
}

/// Polls `future` once, then drops it (as a `select!` or a timeout that fires does);
/// whether it was pending, i.e. dropped at an await.
async fn poll_once_then_drop<F: Future>(future: F) -> bool {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx).is_pending())).await
}

/// Item 3: a release future dropped at its await (against a backend whose release
/// does not answer at the first poll) still releases the lock: the guard keeps its
/// token until the backend answered.
#[tokio::test(flavor = "current_thread")]
async fn release_dropped_at_its_await_still_releases_memory() {
    let probe = Probe::new(MemoryBackend::new());
    let cache = aiolock::Cache::new(probe.clone());
    let guard = cache.redlock("k", LEASE).acquire().await.unwrap();
    probe.pend_next_release();
    assert!(
        poll_once_then_drop(guard.release()).await,
        "the release was dropped at its await"
    );
    assert_free(&cache, "the dropped release released").await;
}

/// Item 7: under a paused tokio clock, an async waiter on a 300 ms lease sleeps until
/// the lease ends and claims once more (the store judges the lease by tokio's clock
/// too); with std's clock in the store it claimed in a loop until 300 ms of real time
/// had passed.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn paused_clock_waiter_does_not_spin() {
    let probe = Probe::new(MemoryBackend::new());
    let cache = aiolock::Cache::new(probe.clone());
    let lease = Duration::from_millis(300);
    let holder = cache.redlock("k", lease).acquire().await.unwrap();
    assert!(holder.is_acquired());
    std::mem::forget(holder); // never released: the lease must end
    let start = tokio::time::Instant::now();
    let waiter = cache.redlock("k", LEASE).acquire().await.unwrap();
    assert_eq!(
        waiter.outcome(),
        Outcome::Acquired,
        "re-elected at the lease end"
    );
    assert!(start.elapsed() >= lease, "{:?}", start.elapsed());
    assert!(
        probe.claims() <= 3,
        "{} claims for one lease expiry",
        probe.claims()
    );
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use crate::support::redis::RedisServer;

    /// Item 6: a guard dropped as a `#[tokio::main]`-like block ends is released when
    /// the block flushes the cache: the release task would otherwise never run.
    #[test]
    fn flush_runs_the_release_of_a_guard_dropped_as_the_runtime_ends() {
        events::install();
        let server = RedisServer::start();
        let url = server.unix_url("");
        current_thread().block_on(async {
            let cache = aiolock::Cache::from_url(&url).await.unwrap();
            let guard = cache.redlock("k", LEASE).acquire().await.unwrap();
            assert!(guard.is_acquired());
            drop(guard);
            cache.flush().await;
            assert_eq!(cache.skipped_releases(), 0);
        });
        let check = aiolock::blocking::Cache::from_url(&url).unwrap();
        assert!(!check.exists("k-lock").unwrap(), "released by the flush");
    }

    /// Item 6: without the flush, the release queued on a runtime that shuts down never
    /// runs: it is counted and warned of, not silent.
    #[test]
    fn a_release_the_runtime_never_ran_is_reported() {
        events::install();
        let server = RedisServer::start();
        let url = server.unix_url("");
        let cache = current_thread().block_on(async {
            let cache = aiolock::Cache::from_url(&url).await.unwrap();
            let guard = cache.redlock("k", LEASE).acquire().await.unwrap();
            drop(guard);
            cache
        });
        assert_eq!(cache.skipped_releases(), 1);
        let warnings = events::warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("runtime shut down") && w.contains("key=k-lock")),
            "{warnings:?}"
        );
    }

    /// Item 6: an async guard dropped outside any runtime cannot release (the Redis
    /// connection lives on the runtime): it is counted and warned of.
    #[test]
    fn a_network_guard_dropped_outside_a_runtime_is_reported() {
        events::install();
        let server = RedisServer::start();
        let url = server.unix_url("");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cache = rt.block_on(aiolock::Cache::from_url(&url)).unwrap();
        let guard = rt.block_on(cache.redlock("k", LEASE).acquire()).unwrap();
        drop(guard);
        assert_eq!(cache.skipped_releases(), 1);
        let warnings = events::warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("outside a tokio runtime") && w.contains("backend=redis")),
            "{warnings:?}"
        );
    }

    /// Item 3 on a real server: the release's reply cannot be there at its first poll.
    #[tokio::test(flavor = "current_thread")]
    async fn release_dropped_at_its_await_still_releases_redis() {
        let server = RedisServer::start();
        let cache = aiolock::Cache::from_url(&server.unix_url(""))
            .await
            .unwrap();
        let guard = cache.redlock("k", LEASE).acquire().await.unwrap();
        assert!(
            poll_once_then_drop(guard.release()).await,
            "the release was dropped at its await"
        );
        cache.flush().await;
        assert_free(&cache, "the dropped release released").await;
    }

    /// How long the server stays stopped after an acquisition failed.
    const STALL: Duration = Duration::from_secs(1);

    fn stalled_acquire_blocking(server: &RedisServer) -> Duration {
        let options = |b: aiolock::blocking::CacheBuilder| {
            b.connect_timeout(Duration::from_millis(300))
                .response_timeout(Duration::from_millis(300))
        };
        let url = server.unix_url("");
        let a = options(aiolock::blocking::Cache::builder())
            .build(&url)
            .unwrap();
        assert!(!a.exists("warm-up").unwrap());
        server.pause();
        let err = a
            .redlock("k", Duration::from_secs(10))
            .acquire()
            .unwrap_err();
        server.resume();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        // Another client (another process, in real life).
        let b = options(aiolock::blocking::Cache::builder())
            .build(&url)
            .unwrap();
        let start = Instant::now();
        let guard = b.redlock("k", Duration::from_secs(10)).acquire().unwrap();
        let took = start.elapsed();
        assert_ne!(guard.outcome(), Outcome::TimedOut);
        a.flush();
        took
    }

    /// Item 4 (blocking): an add sent to a stalled server times out, and the server
    /// applies it once it runs again. The cleanup release is retried until the server
    /// answers, so the next caller gets the lock at once, not after the 10 s lease.
    #[test]
    fn stalled_server_failed_acquire_is_cleaned_up_blocking() {
        let server = RedisServer::start();
        let took = stalled_acquire_blocking(&server);
        assert!(
            took < Duration::from_secs(3),
            "the next caller waited {took:?}"
        );
    }

    /// Item 4 (async).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stalled_server_failed_acquire_is_cleaned_up_async() {
        let server = RedisServer::start();
        let url = server.unix_url("");
        let options = |b: aiolock::CacheBuilder| {
            b.connect_timeout(Duration::from_millis(300))
                .response_timeout(Duration::from_millis(300))
        };
        let a = options(aiolock::Cache::builder())
            .build(&url)
            .await
            .unwrap();
        assert!(!a.exists("warm-up").await.unwrap());
        server.pause();
        let err = a
            .redlock("k", Duration::from_secs(10))
            .acquire()
            .await
            .unwrap_err();
        tokio::time::sleep(STALL).await;
        server.resume();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        let b = options(aiolock::Cache::builder())
            .build(&url)
            .await
            .unwrap();
        let start = Instant::now();
        let guard = b
            .redlock("k", Duration::from_secs(10))
            .acquire()
            .await
            .unwrap();
        let took = start.elapsed();
        assert_ne!(guard.outcome(), Outcome::TimedOut);
        assert!(
            took < Duration::from_secs(3),
            "the next caller waited {took:?}"
        );
        a.flush().await;
    }
}
