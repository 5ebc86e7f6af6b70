//! Both flavors in one program, and the auto-trait facts users rely on.

use std::time::{Duration, Instant};

use aiolock::{MemoryBackend, Outcome};

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<aiolock::Cache>();
    send_sync::<aiolock::RedLock>();
    send_sync::<aiolock::LockGuard>();
    send_sync::<aiolock::OptimisticLock>();
    send_sync::<aiolock::ExclusiveLock>();
    send_sync::<aiolock::ExclusiveGuard>();
    send_sync::<aiolock::blocking::Cache>();
    send_sync::<aiolock::blocking::ExclusiveLock>();
    send_sync::<aiolock::blocking::ExclusiveGuard>();
    send_sync::<aiolock::blocking::LockGuard>();
    send_sync::<aiolock::blocking::OptimisticLock>();
    send_sync::<aiolock::Error>();

    // The async API's futures are Send, so they can be spawned.
    let cache = aiolock::Cache::memory();
    send(&cache.get("k"));
    send(&cache.set("k", b"v", None));
    send(&cache.redlock("k", Duration::from_secs(1)).acquire());
    send(&cache.optimistic_lock("k"));
    send(&cache.lock("k", Duration::from_secs(1)).acquire());
    send(&cache.lock("k", Duration::from_secs(1)).try_acquire());
    send(&cache.redlock("k", Duration::from_secs(1)).run(|_| async {}));
}

/// A task waiting for a lock carries the acquisition's future for as long as it waits
/// (up to a lease): 10,000 waiters should cost about 10 MB, not 30. The future was
/// 2.7 KB (a Redis round trip's and the connection set-up's state inline, the lock
/// stored three times over by nested `async fn`s); now the memory store's wait and
/// Redis's listening state are what it holds, whichever backend the build has.
#[test]
fn waiting_futures_stay_small() {
    let cache = aiolock::Cache::memory();
    let acquire = cache.redlock("k", Duration::from_secs(1)).acquire();
    let wait = aiolock::Backend::wait(cache.backend(), b"k-lock", None, Instant::now());
    let (acquire, wait) = (size_of_val(&acquire), size_of_val(&wait));
    eprintln!("acquire future {acquire} bytes, backend wait future {wait} bytes");
    assert!(acquire <= ACQUIRE_MAX, "{acquire} bytes");
    assert!(wait <= 400, "{wait} bytes");
}

/// With the `tracing` feature the acquisition also holds its spans. (A tokio task is
/// a multiple of 128 bytes: without `tracing`, this future (592 bytes) and a waiting
/// task's few captures fit in 768; at 736 bytes they took 896.)
const ACQUIRE_MAX: usize = if cfg!(feature = "tracing") { 760 } else { 600 };

/// An async holder and a blocking waiter on one memory store: the waiter wakes on the
/// release; then the reverse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_holder_blocking_waiter_and_back() {
    crate::support::events::install();
    let store = MemoryBackend::new();
    let async_cache = aiolock::Cache::new(store.clone());
    let sync_cache = aiolock::blocking::Cache::new(store);

    let holder = async_cache
        .redlock("k", Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    assert!(holder.is_acquired());
    let waiter = {
        let sync_cache = sync_cache.clone();
        tokio::task::spawn_blocking(move || {
            let g = sync_cache
                .redlock("k", Duration::from_secs(30))
                .acquire()
                .unwrap();
            (g.outcome(), Instant::now())
        })
    };
    crate::support::events::waiters("k-lock", 1).await;
    let released_at = Instant::now();
    assert!(holder.release().await.unwrap());
    let (outcome, woke_at) = waiter.await.unwrap();
    assert_eq!(outcome, Outcome::Released);
    assert!(woke_at >= released_at);

    // The reverse: a blocking holder, an async waiter.
    let holder = sync_cache
        .redlock("k", Duration::from_secs(30))
        .acquire()
        .unwrap();
    let waiter = tokio::spawn({
        let async_cache = async_cache.clone();
        async move {
            async_cache
                .redlock("k", Duration::from_secs(30))
                .acquire()
                .await
                .unwrap()
                .outcome()
        }
    });
    crate::support::events::waiters("k-lock", 2).await;
    tokio::task::spawn_blocking(move || assert!(holder.release().unwrap()))
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap(), Outcome::Released);
}

/// Two memory caches never share lock state (aiocache shares one global table).
#[test]
fn separate_caches_do_not_share_locks() {
    let a = aiolock::blocking::Cache::memory();
    let b = aiolock::blocking::Cache::memory();
    let ga = a.redlock("k", Duration::from_secs(30)).acquire().unwrap();
    let gb = b.redlock("k", Duration::from_secs(30)).acquire().unwrap();
    assert!(ga.is_acquired() && gb.is_acquired());
}

/// A dropped blocking guard releases synchronously: the key is gone at once.
#[test]
fn blocking_drop_releases_at_once() {
    let c = aiolock::blocking::Cache::memory();
    drop(c.redlock("k", Duration::from_secs(30)).acquire().unwrap());
    assert!(!c.exists("k-lock").unwrap());
}

/// Malformed URLs are clear errors in both flavors.
#[tokio::test]
async fn malformed_urls() {
    for url in ["", "memory", "nosuch://h", "memory://h", "memory://?x=1"] {
        let e = aiolock::blocking::Cache::from_url(url).unwrap_err();
        assert_eq!(e.kind(), aiolock::ErrorKind::InvalidArgument, "{url}: {e}");
        let e = aiolock::Cache::from_url(url).await.unwrap_err();
        assert_eq!(e.kind(), aiolock::ErrorKind::InvalidArgument, "{url}: {e}");
    }
}

/// `run` cannot return its release's error: with the `tracing` feature it is a `warn`
/// event naming the key and the backend.
#[cfg(feature = "redis")]
#[test]
fn run_warns_of_a_failed_release() {
    crate::support::events::install();
    let mut server = crate::support::redis::RedisServer::start();
    let cache = aiolock::blocking::Cache::builder()
        .connect_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(300))
        .build(&server.unix_url(""))
        .unwrap();
    let outcome = cache
        .redlock("k", Duration::from_secs(30))
        .run(|outcome| {
            server.kill();
            outcome
        })
        .unwrap();
    assert_eq!(outcome, Outcome::Acquired);
    let warnings = crate::support::events::warnings();
    assert!(
        warnings.iter().any(|w| w.starts_with("run:")
            && w.contains("key=k-lock")
            && w.contains("backend=redis")),
        "{warnings:?}"
    );
}

/// The `tracing` feature: one span per operation, with the key, the backend and the
/// outcome, and the `"waiting"` event before a wait.
#[tokio::test(flavor = "current_thread")]
async fn lock_operations_are_traced() {
    use crate::support::events;
    events::install();
    let cache = aiolock::Cache::with_namespace(MemoryBackend::new(), "traced:");
    let holder = cache
        .redlock("k", Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    let waiter = cache
        .redlock("k", Duration::from_secs(30))
        .wait_at_most(Duration::from_millis(1))
        .acquire()
        .await
        .unwrap();
    assert_eq!(waiter.outcome(), Outcome::TimedOut);
    assert_eq!(events::waiting("traced:k-lock"), 1);
    assert!(holder.release().await.unwrap());
    cache.set("o", b"1", None).await.unwrap();
    let lock = cache.optimistic_lock("o").await.unwrap();
    lock.cas(b"2", None).await.unwrap();
    let spans = events::spans();
    for want in [
        "acquire key=traced:k-lock backend=memory outcome=acquired",
        "acquire key=traced:k-lock backend=memory outcome=timed_out",
        "wait key=traced:k-lock backend=memory outcome=deadline",
        "release key=traced:k-lock backend=memory outcome=released",
        "cas key=traced:o backend=memory outcome=written",
    ] {
        assert!(
            spans.iter().any(|s| s == want),
            "{want:?} not in {spans:#?}"
        );
    }
}

/// An async acquisition dropped while it waits (an aborted task, a `select!` or a
/// `timeout` that fires) leaves `Cache::waiting`: the count is a drop guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_wait_is_uncounted() {
    let cache = aiolock::Cache::with_namespace(MemoryBackend::new(), "cancelled:");
    let lease = Duration::from_secs(30);
    let holder = cache.redlock("k", lease).acquire().await.unwrap();
    let waiter = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .redlock("k", lease)
                .acquire()
                .await
                .map(|g| g.outcome())
        }
    });
    let patience = Instant::now() + Duration::from_secs(30);
    while cache.waiting("k") < 1 {
        assert!(Instant::now() < patience, "the waiter never waited");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    assert_eq!(cache.waiting("k"), 0, "the dropped wait is uncounted");
    assert!(holder.release().await.unwrap());
}
