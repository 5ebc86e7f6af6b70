// The backend-generic test bodies, written once and compiled into both flavors
// (see `tests/main.rs`). Each takes an [`Env`]: a fresh cache on the backend under
// test, and how late that backend may expire a key.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::maybe_async;
use super::rt::{concurrently, sleep, waiters};
use super::{Cache, OptimisticLock, RedLock};
use aiolock::{ErrorKind, Outcome, Ttl};

/// What a test body gets.
#[derive(Clone)]
pub struct Env {
    /// A cache on a fresh backend (empty store or server).
    pub cache: Cache,
    /// The shortest lease the backend honours well (memcached counts whole seconds).
    pub short_lease: Duration,
    /// How long after a TTL ends the backend may still hold the key.
    pub expiry_slack: Duration,
}

impl Env {
    fn after_expiry(&self, ttl: Duration) -> Duration {
        ttl + self.expiry_slack + Duration::from_millis(20)
    }

    /// The full lock key of `key` (namespace + key + `-lock`), as the event hook sees it.
    fn lock_key(&self, key: &str) -> String {
        let lock = RedLock::new(&self.cache, key, Duration::from_secs(1));
        String::from_utf8_lossy(lock.lock_key()).into_owned()
    }
}

/// "get; if missing, compute under a RedLock (checking the cache again) and set",
/// as in aiocache's own test. The holder computes once the `others` callers wait.
#[maybe_async]
async fn get_or_compute(env: &Env, key: &str, others: usize, computed: &AtomicUsize) -> Vec<u8> {
    let cache = &env.cache;
    if let Some(v) = cache.get(key).await.unwrap() {
        return v;
    }
    let guard = RedLock::new(cache, key, Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    if let Some(v) = cache.get(key).await.unwrap() {
        guard.release().await.unwrap();
        return v;
    }
    assert_eq!(guard.outcome(), Outcome::Acquired, "no waiter timed out");
    computed.fetch_add(1, Ordering::SeqCst);
    // Every other caller found the cache empty (nothing is stored before this) and
    // lost its claim: they all wait for this release.
    waiters(&env.lock_key(key), others).await;
    let value = b"expensive value".to_vec();
    cache.set(key, &value, None).await.unwrap();
    let removed = guard.release().await.unwrap();
    assert!(removed, "the lease was still ours");
    value
}

#[maybe_async]
async fn stampede(env: Env, callers: usize) {
    let computed = Arc::new(AtomicUsize::new(0));
    let values = concurrently(callers, |_| {
        let env = env.clone();
        let computed = Arc::clone(&computed);
        async move { get_or_compute(&env, "stampede", callers - 1, &computed).await }
    })
    .await;
    assert_eq!(values.len(), callers);
    assert!(values.iter().all(|v| v == b"expensive value"));
    assert_eq!(computed.load(Ordering::SeqCst), 1, "computed exactly once");
}

/// aiocache's acceptance oracle: four concurrent callers, one computation.
#[maybe_async]
pub async fn stampede_four_callers(env: Env) {
    stampede(env, 4).await;
}

/// Many callers (64 threads or 256 tasks), one computation.
#[maybe_async]
pub async fn stampede_many_callers(env: Env, callers: usize) {
    stampede(env, callers).await;
}

/// Waiters return `Released` as soon as the holder releases, long before the lease.
#[maybe_async]
pub async fn waiters_wake_on_release(env: Env) {
    let lease = Duration::from_secs(30);
    let holder = RedLock::new(&env.cache, "k", lease)
        .acquire()
        .await
        .unwrap();
    assert_eq!(holder.outcome(), Outcome::Acquired);
    let holder = Arc::new(std::sync::Mutex::new(Some(holder)));
    let released_at = Arc::new(std::sync::Mutex::new(None));
    let lock_key = env.lock_key("k");
    let results = concurrently(9, |i| {
        let cache = env.cache.clone();
        let holder = Arc::clone(&holder);
        let released_at = Arc::clone(&released_at);
        let lock_key = lock_key.clone();
        async move {
            if i == 0 {
                waiters(&lock_key, 8).await;
                let guard = holder.lock().unwrap().take().unwrap();
                *released_at.lock().unwrap() = Some(Instant::now());
                let removed = guard.release().await.unwrap();
                assert!(removed);
                return None;
            }
            let g = RedLock::new(&cache, "k", lease).acquire().await.unwrap();
            Some((g.outcome(), Instant::now()))
        }
    })
    .await;
    let released_at = released_at.lock().unwrap().expect("released");
    for (outcome, at) in results.into_iter().flatten() {
        assert_eq!(outcome, Outcome::Released);
        assert!(at >= released_at, "woken by the release, not before it");
        let after = at.duration_since(released_at);
        assert!(
            after < lease / 2,
            "woken by the release, not by the lease end: {after:?} after it"
        );
    }
}

/// A holder that never releases: after its lease exactly one waiter is re-elected,
/// the others keep waiting (within their bound) and are woken by its release.
#[maybe_async]
pub async fn lease_end_re_elects_one_waiter(env: Env) {
    // The six waiters must be waiting before this lease ends (a key already gone at a
    // waiter's first check counts as released): long enough for a loaded machine.
    let lease = env.short_lease.max(Duration::from_secs(1));
    let holder = RedLock::new(&env.cache, "k", lease)
        .acquire()
        .await
        .unwrap();
    assert!(holder.is_acquired());
    std::mem::forget(holder); // crashed: never releases
    let lock_key = env.lock_key("k");
    let outcomes = concurrently(6, |_| {
        let cache = env.cache.clone();
        let lock_key = lock_key.clone();
        async move {
            let guard = RedLock::new(&cache, "k", Duration::from_secs(30))
                .wait_at_most(Duration::from_secs(30))
                .acquire()
                .await
                .unwrap();
            let outcome = guard.outcome();
            if outcome == Outcome::Acquired {
                // Six waits on the crashed holder, then five on this one.
                waiters(&lock_key, 6 + 5).await;
                let removed = guard.release().await.unwrap();
                assert!(removed);
            }
            outcome
        }
    })
    .await;
    let acquired = outcomes.iter().filter(|o| **o == Outcome::Acquired).count();
    let released = outcomes.iter().filter(|o| **o == Outcome::Released).count();
    assert_eq!((acquired, released), (1, 5), "{outcomes:?}");
}

/// A waiter whose own bound passes first gets `TimedOut` and does not hold the lock.
#[maybe_async]
pub async fn bound_reached_times_out(env: Env) {
    let holder = RedLock::new(&env.cache, "k", Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    let guard = RedLock::new(&env.cache, "k", Duration::from_secs(30))
        .wait_at_most(Duration::from_millis(150))
        .acquire()
        .await
        .unwrap();
    assert_eq!(guard.outcome(), Outcome::TimedOut);
    assert!(!guard.is_acquired());
    let removed = guard.release().await.unwrap();
    assert!(!removed, "a waiter releases nothing");
    let exists = env.cache.exists("k-lock").await.unwrap();
    assert!(exists, "holder keeps it");
    let once = RedLock::new(&env.cache, "k", Duration::from_secs(30))
        .wait_at_most(Duration::ZERO)
        .acquire()
        .await
        .unwrap();
    assert_eq!(once.outcome(), Outcome::TimedOut, "a zero bound tries once");
    let removed = holder.release().await.unwrap();
    assert!(removed);
}

/// A stale guard (its lease ended, another caller holds the key) removes nothing.
#[maybe_async]
pub async fn stale_guard_removes_nothing(env: Env) {
    let lease = env.short_lease;
    let stale = RedLock::new(&env.cache, "k", lease)
        .acquire()
        .await
        .unwrap();
    assert!(stale.is_acquired());
    sleep(env.after_expiry(lease)).await;
    let current = RedLock::new(&env.cache, "k", Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    assert!(current.is_acquired(), "the ended lease is free again");
    let removed = stale.release().await.unwrap();
    assert!(!removed, "the stale guard says so");
    let value = env.cache.get("k-lock").await.unwrap();
    assert_eq!(
        value.as_deref(),
        Some(current.token().unwrap().as_bytes()),
        "the current holder's lock survives"
    );
    let removed = current.release().await.unwrap();
    assert!(removed);
    let exists = env.cache.exists("k-lock").await.unwrap();
    assert!(!exists);
}

/// Dropping a holding guard releases the lock (the async flavor on a spawned task for
/// network backends, which `flush` waits for).
#[maybe_async]
pub async fn dropped_guard_releases(env: Env) {
    let guard = RedLock::new(&env.cache, "k", Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    assert!(guard.is_acquired());
    drop(guard);
    env.cache.flush().await;
    assert_eq!(env.cache.skipped_releases(), 0);
    let next = RedLock::new(&env.cache, "k", Duration::from_secs(30))
        .wait_at_most(Duration::ZERO)
        .acquire()
        .await
        .unwrap();
    assert_eq!(
        next.outcome(),
        Outcome::Acquired,
        "the drop released the lock"
    );
}

/// The scoped form runs its body once with the outcome and releases afterwards.
#[maybe_async]
pub async fn scoped_run_releases(env: Env) {
    let cache = env.cache.clone();
    let outcome = RedLock::new(&env.cache, "k", Duration::from_secs(30))
        .run(|outcome| async move {
            let exists = cache.exists("k-lock").await.unwrap();
            assert!(exists, "held inside");
            outcome
        })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Acquired);
    let exists = env.cache.exists("k-lock").await.unwrap();
    assert!(!exists, "released after");
}

/// get/set/add/delete/exists/ttl and namespaces.
#[maybe_async]
pub async fn cache_operations(env: Env) {
    let c = &env.cache;
    let value = c.get("a").await.unwrap();
    assert_eq!(value, None);
    c.set("a", b"1", None).await.unwrap();
    let value = c.get("a").await.unwrap();
    assert_eq!(value.as_deref(), Some(&b"1"[..]));
    let ttl = c.ttl("a").await.unwrap();
    assert_eq!(ttl, Ttl::Persistent);
    let added = c.add("a", b"2", None).await.unwrap();
    assert!(!added);
    let added = c.add("b", b"\0\xff binary\r\n", None).await.unwrap();
    assert!(added);
    let value = c.get("b").await.unwrap();
    assert_eq!(value.as_deref(), Some(&b"\0\xff binary\r\n"[..]));
    let exists = c.exists("b").await.unwrap();
    assert!(exists);
    let deleted = c.delete("b").await.unwrap();
    assert!(deleted);
    let deleted = c.delete("b").await.unwrap();
    assert!(!deleted);
    let exists = c.exists("b").await.unwrap();
    assert!(!exists);
    let ttl = c.ttl("b").await.unwrap();
    assert_eq!(ttl, Ttl::Missing);

    c.set("t", b"x", Some(Duration::from_secs(100)))
        .await
        .unwrap();
    match c.ttl("t").await.unwrap() {
        Ttl::Expires(d) => {
            assert!(d > Duration::from_secs(90) && d <= Duration::from_secs(100) + env.expiry_slack)
        }
        other => panic!("{other:?}"),
    }
    let short = env.short_lease;
    c.set("s", b"x", Some(short)).await.unwrap();
    sleep(env.after_expiry(short)).await;
    let value = c.get("s").await.unwrap();
    assert_eq!(value, None, "expired");
    let added = c.add("s", b"y", None).await.unwrap();
    assert!(added, "an expired key can be added");

    let other = Cache::with_namespace(c.backend().clone(), "other:");
    let value = other.get("a").await.unwrap();
    assert_eq!(value, None, "namespaces do not mix");
    other.set("a", b"9", None).await.unwrap();
    let value = c.get("a").await.unwrap();
    assert_eq!(value.as_deref(), Some(&b"1"[..]));
}

/// Locks of different namespaces on one backend never collide.
#[maybe_async]
pub async fn namespaces_isolate_locks(env: Env) {
    let other = Cache::with_namespace(env.cache.backend().clone(), "other:");
    let a = env
        .cache
        .redlock("k", Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    let b = other
        .redlock("k", Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    assert!(a.is_acquired() && b.is_acquired());
    let removed_a = a.release().await.unwrap();
    let removed_b = b.release().await.unwrap();
    assert!(removed_a && removed_b);
}

/// OptimisticLock: no conflict when alone, conflict when another writer got in.
#[maybe_async]
pub async fn optimistic_cas(env: Env) {
    let c = &env.cache;
    c.set("o", b"1", None).await.unwrap();
    let lock = OptimisticLock::begin(c, "o").await.unwrap();
    assert_eq!(lock.value(), Some(&b"1"[..]));
    lock.cas(b"2", None).await.unwrap();
    let value = c.get("o").await.unwrap();
    assert_eq!(value.as_deref(), Some(&b"2"[..]));

    let lock = c.optimistic_lock("o").await.unwrap();
    c.set("o", b"3", None).await.unwrap();
    let err = lock.cas(b"4", None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.is_conflict());
    let value = c.get("o").await.unwrap();
    assert_eq!(value.as_deref(), Some(&b"3"[..]), "nothing written");

    let lock = c.optimistic_lock("o").await.unwrap();
    c.delete("o").await.unwrap();
    let err = lock.cas(b"5", None).await.unwrap_err();
    assert!(err.is_conflict(), "deleted meanwhile");
}

/// A key absent at `begin` must still be absent at `cas`.
#[maybe_async]
pub async fn optimistic_absent_key(env: Env) {
    let c = &env.cache;
    let lock = c.optimistic_lock("new").await.unwrap();
    assert_eq!(lock.value(), None);
    lock.cas(b"first", None).await.unwrap();
    let value = c.get("new").await.unwrap();
    assert_eq!(value.as_deref(), Some(&b"first"[..]));

    let lock = c.optimistic_lock("new2").await.unwrap();
    c.set("new2", b"someone", None).await.unwrap();
    let err = lock.cas(b"me", None).await.unwrap_err();
    assert!(err.is_conflict());
    let value = c.get("new2").await.unwrap();
    assert_eq!(value.as_deref(), Some(&b"someone"[..]));
}

/// `cas` honours its TTL.
#[maybe_async]
pub async fn optimistic_ttl(env: Env) {
    let c = &env.cache;
    let lock = c.optimistic_lock("ttl").await.unwrap();
    lock.cas(b"v", Some(env.short_lease)).await.unwrap();
    let exists = c.exists("ttl").await.unwrap();
    assert!(exists);
    sleep(env.after_expiry(env.short_lease)).await;
    let exists = c.exists("ttl").await.unwrap();
    assert!(!exists);
}

/// Bad input: clear errors, nothing stored, no panic.
#[maybe_async]
pub async fn bad_input(env: Env) {
    let c = &env.cache;
    let err = RedLock::new(c, "k", Duration::ZERO)
        .acquire()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let err = RedLock::new(c, "k", aiolock::MAX_DURATION * 2)
        .acquire()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let err = RedLock::new(c, "", Duration::from_secs(1))
        .acquire()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidKey);
    let exists = c.exists("k-lock").await.unwrap();
    assert!(!exists, "nothing was taken");
    let value = c.get("").await.unwrap_err();
    assert_eq!(value.kind(), ErrorKind::InvalidKey);
    let err = c.set("", b"v", None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidKey);
    let err = c.set("k", b"v", Some(Duration::ZERO)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let exists = c.exists("k").await.unwrap();
    assert!(!exists);
    let err = c.optimistic_lock("").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidKey);
    for secs in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let lease = aiolock::seconds(secs);
        let acquired = match lease {
            Ok(lease) => RedLock::new(c, "k", lease)
                .acquire()
                .await
                .map(|g| g.outcome()),
            Err(e) => Err(e),
        };
        assert_eq!(
            acquired.unwrap_err().kind(),
            ErrorKind::InvalidArgument,
            "{secs}"
        );
    }
}

/// The lock-key suffix is per cache: over one backend, a cache with another suffix
/// holds a lock on the same key at the same time (its lock key is `k:lk`, not
/// `k-lock`), and caches with the same suffix contend as ever.
#[maybe_async]
pub async fn lock_suffix_keeps_locks_apart(env: Env) {
    let other = env.cache.with_lock_suffix(":lk").unwrap();
    assert_eq!(other.namespace(), env.cache.namespace());
    let lease = Duration::from_secs(5);
    let a = RedLock::new(&env.cache, "k", lease)
        .acquire()
        .await
        .unwrap();
    assert_eq!(a.outcome(), Outcome::Acquired);
    let b = RedLock::new(&other, "k", lease)
        .wait_at_most(Duration::ZERO)
        .acquire()
        .await
        .unwrap();
    assert_eq!(b.outcome(), Outcome::Acquired, "another lock key");
    let c = RedLock::new(&other, "k", lease)
        .wait_at_most(Duration::ZERO)
        .acquire()
        .await
        .unwrap();
    assert_eq!(c.outcome(), Outcome::TimedOut, "the same lock key");
    let exists = env.cache.exists("k:lk").await.unwrap();
    assert!(exists, "stored under namespace + key + suffix");
    let token = env.cache.get("k:lk").await.unwrap();
    assert_eq!(
        token.as_deref().map(<[u8]>::len),
        Some(32),
        "the token, in hex"
    );
    let removed = b.release().await.unwrap();
    assert!(removed);
    let exists = env.cache.exists("k:lk").await.unwrap();
    assert!(!exists);
    let exists = env.cache.exists("k-lock").await.unwrap();
    assert!(exists, "the default-suffix lock is still held");
    let removed = a.release().await.unwrap();
    assert!(removed);
    let removed = c.release().await.unwrap();
    assert!(!removed, "it never held the lock");
}

/// `Cache::waiting` counts the callers that wait for a lock, seen from every clone of
/// the cache, only while they wait (a release and a bound that passes uncount them),
/// and only this cache's: another cache over the same backend counts its own.
#[maybe_async]
pub async fn waiting_counts_waiters(env: Env) {
    let cache = &env.cache;
    let lease = Duration::from_secs(30);
    assert_eq!(cache.waiting("k"), 0);
    let holder = RedLock::new(cache, "k", lease).acquire().await.unwrap();
    assert_eq!(holder.outcome(), Outcome::Acquired);
    assert_eq!(cache.waiting("k"), 0, "a holder does not wait");
    let holder = Arc::new(std::sync::Mutex::new(Some(holder)));
    let lock_key = env.lock_key("k");
    let outcomes = concurrently(4, |i| {
        let cache = cache.clone();
        let holder = Arc::clone(&holder);
        let lock_key = lock_key.clone();
        async move {
            if i == 0 {
                // Counted before the "waiting" event: all three are counted now.
                waiters(&lock_key, 3).await;
                assert_eq!(cache.waiting("k"), 3);
                assert_eq!(cache.clone().waiting("k"), 3, "clones share the count");
                assert_eq!(cache.waiting("other"), 0);
                assert_eq!(cache.waiting(""), 0, "no lock on an empty key");
                let same_backend = cache.with_lock_suffix("-lock").unwrap();
                assert_eq!(same_backend.waiting("k"), 0, "another cache counts its own");
                let guard = holder.lock().unwrap().take().unwrap();
                let removed = guard.release().await.unwrap();
                assert!(removed);
                return None;
            }
            let guard = RedLock::new(&cache, "k", lease).acquire().await.unwrap();
            Some(guard.outcome())
        }
    })
    .await;
    let outcomes: Vec<_> = outcomes.into_iter().flatten().collect();
    assert_eq!(outcomes, [Outcome::Released; 3]);
    assert_eq!(cache.waiting("k"), 0, "the woken waiters are uncounted");

    let holder = RedLock::new(cache, "k", lease).acquire().await.unwrap();
    let timed_out = RedLock::new(cache, "k", lease)
        .wait_at_most(Duration::from_millis(50))
        .acquire()
        .await
        .unwrap();
    assert_eq!(timed_out.outcome(), Outcome::TimedOut);
    assert_eq!(
        cache.waiting("k"),
        0,
        "a waiter whose bound passed is uncounted"
    );
    let removed = holder.release().await.unwrap();
    assert!(removed);
}

/// The exclusion oracle: `callers` callers × `entries` entries each on one exclusive
/// key. Inside, a shared count of callers in the critical section must be 0 on entry,
/// and a read-modify-write of a counter in the cache must lose no update.
#[maybe_async]
pub async fn exclusive_mutual_exclusion(env: Env) {
    let (callers, entries) = (6, 10);
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    env.cache.set("counter", b"0", None).await.unwrap();
    concurrently(callers, |_| {
        let cache = env.cache.clone();
        let inside = Arc::clone(&inside);
        let overlaps = Arc::clone(&overlaps);
        async move {
            for _ in 0..entries {
                let guard = cache
                    .lock("mutex", Duration::from_secs(30))
                    .wait_at_most(Duration::from_secs(60))
                    .acquire()
                    .await
                    .unwrap()
                    .expect("held within the bound");
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                let n: u64 = String::from_utf8(cache.get("counter").await.unwrap().unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                cache
                    .set("counter", (n + 1).to_string().as_bytes(), None)
                    .await
                    .unwrap();
                inside.fetch_sub(1, Ordering::SeqCst);
                let ok = guard.release().await.unwrap();
                assert!(ok, "the lease was still ours");
            }
        }
    })
    .await;
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "two callers were inside"
    );
    let total = env.cache.get("counter").await.unwrap().unwrap();
    assert_eq!(
        total,
        (callers * entries).to_string().as_bytes(),
        "no lost update"
    );
    let ok = env.cache.exists("mutex-lock").await.unwrap();
    assert!(!ok, "all released");
    assert_eq!(env.cache.waiting("mutex"), 0);
}

/// Exclusive waiters woken by a release claim again, until each holds the lock in
/// turn: none goes on without it (a RedLock waiter would, with `Released`).
#[maybe_async]
pub async fn exclusive_waits_through_releases(env: Env) {
    let lease = Duration::from_secs(30);
    let holder = env.cache.lock("k", lease).try_acquire().await.unwrap();
    let holder = Arc::new(std::sync::Mutex::new(holder));
    let lock_key = env.lock_key("k");
    let held = concurrently(4, |i| {
        let cache = env.cache.clone();
        let holder = Arc::clone(&holder);
        let lock_key = lock_key.clone();
        async move {
            if i == 0 {
                waiters(&lock_key, 3).await;
                let guard = holder.lock().unwrap().take().expect("the first holder");
                let ok = guard.release().await.unwrap();
                assert!(ok);
                return false;
            }
            let guard = cache
                .lock("k", lease)
                .wait_at_most(Duration::from_secs(60))
                .acquire()
                .await
                .unwrap();
            let Some(guard) = guard else { return false };
            let ok = guard.release().await.unwrap();
            assert!(ok);
            true
        }
    })
    .await;
    assert_eq!(
        held,
        [false, true, true, true],
        "every waiter held it in turn"
    );
}

/// A holder that never releases: an exclusive waiter takes the key at its lease end.
#[maybe_async]
pub async fn exclusive_waits_through_lease_end(env: Env) {
    let lease = env.short_lease.max(Duration::from_millis(300));
    let crashed = env.cache.lock("k", lease).try_acquire().await.unwrap();
    std::mem::forget(crashed.expect("uncontended"));
    let guard = env
        .cache
        .lock("k", Duration::from_secs(30))
        .wait_at_most(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap()
        .expect("held once the crashed holder's lease ended");
    let ok = guard.release().await.unwrap();
    assert!(ok);
}

/// An exclusive waiter whose bound passes returns `None` by it (and a little slack),
/// holds nothing, and is no longer counted; the holder keeps its lock.
#[maybe_async]
pub async fn exclusive_bound_returns_none(env: Env) {
    let holder = env
        .cache
        .lock("k", Duration::from_secs(30))
        .acquire()
        .await
        .unwrap()
        .expect("uncontended");
    let bound = Duration::from_millis(200);
    let start = Instant::now();
    let got = env
        .cache
        .lock("k", Duration::from_secs(30))
        .wait_at_most(bound)
        .acquire()
        .await
        .unwrap();
    let took = start.elapsed();
    assert!(got.is_none(), "held by the holder the whole bound");
    assert!(took >= bound, "waited the bound: {took:?}");
    assert!(
        took < bound + Duration::from_secs(2),
        "returned by it: {took:?}"
    );
    assert_eq!(env.cache.waiting("k"), 0, "uncounted");
    let ok = env.cache.exists("k-lock").await.unwrap();
    assert!(ok, "the holder keeps it");
    let ok = holder.release().await.unwrap();
    assert!(ok);
}

/// `try_acquire` claims once and never waits: no `"waiting"` event, `None` while held,
/// the lock once free; and a RedLock holder excludes an exclusive caller.
#[maybe_async]
pub async fn exclusive_try_never_waits(env: Env) {
    let lease = Duration::from_secs(30);
    let lock_key = env.lock_key("k");
    let redlock = RedLock::new(&env.cache, "k", lease)
        .acquire()
        .await
        .unwrap();
    assert!(redlock.is_acquired());
    for _ in 0..3 {
        let got = env.cache.lock("k", lease).try_acquire().await.unwrap();
        assert!(got.is_none(), "held by the RedLock holder");
    }
    assert_eq!(
        crate::support::events::waiting(&lock_key),
        0,
        "never waited"
    );
    let ok = redlock.release().await.unwrap();
    assert!(ok);
    let guard = env.cache.lock("k", lease).try_acquire().await.unwrap();
    let guard = guard.expect("free now");
    assert_eq!(guard.lock_key(), lock_key.as_bytes());
    let stored = env.cache.get("k-lock").await.unwrap();
    assert_eq!(stored.as_deref(), Some(guard.token().as_bytes()));
    let waiter = RedLock::new(&env.cache, "k", lease)
        .wait_at_most(Duration::ZERO)
        .acquire()
        .await
        .unwrap();
    assert_eq!(
        waiter.outcome(),
        Outcome::TimedOut,
        "and the other way round"
    );
    let ok = guard.release().await.unwrap();
    assert!(ok);
    let ok = env.cache.exists("k-lock").await.unwrap();
    assert!(!ok);
    let bad = env.cache.lock("", lease).try_acquire().await.unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidKey);
    let bad = env
        .cache
        .lock("k", Duration::ZERO)
        .acquire()
        .await
        .unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidArgument);
}

/// `extend` renews the lease of the holder: `lease_end` moves, the key's TTL follows,
/// and it is owner-checked: once the key is another caller's, `extend` fails with
/// `Lost` and leaves that caller's lock alone; a guard that never held fails alike.
#[maybe_async]
pub async fn extend_is_owner_checked(env: Env) {
    let cache = &env.cache;
    let short = env.short_lease;
    let mut guard = cache.lock("k", short).try_acquire().await.unwrap();
    let guard_ref = guard.as_mut().expect("uncontended");
    let first_end = guard_ref.lease_end().expect("held");
    assert!(
        first_end <= Instant::now() + short,
        "a lower bound of the lease end"
    );
    guard_ref.extend(Duration::from_secs(60)).await.unwrap();
    let end = guard_ref.lease_end().unwrap();
    assert!(end >= first_end + Duration::from_secs(60) - short);
    match cache.ttl("k-lock").await.unwrap() {
        Ttl::Expires(left) => assert!(left > Duration::from_secs(30), "{left:?}"),
        other => panic!("the lock key has a TTL: {other:?}"),
    }
    // The lock is taken from us (an operator deletes it, another caller claims it).
    let ok = cache.delete("k-lock").await.unwrap();
    assert!(ok);
    let other = cache.lock("k", Duration::from_secs(60)).try_acquire().await;
    let mut other = other.unwrap().expect("the key was free");
    let lost = guard_ref.extend(Duration::from_secs(60)).await.unwrap_err();
    assert_eq!(lost.kind(), ErrorKind::Lost, "{lost}");
    assert!(lost.is_lost());
    assert_eq!(
        guard_ref.lease_end(),
        Some(end),
        "unchanged by a failed renewal"
    );
    let guard = guard.unwrap();
    let ok = guard.release().await.unwrap();
    assert!(!ok, "not ours: left alone");
    let ok = cache.exists("k-lock").await.unwrap();
    assert!(ok, "the other caller's lock");
    // A RedLock waiter that went on without the lock holds nothing to extend.
    let mut timed_out = RedLock::new(cache, "k", short)
        .wait_at_most(Duration::ZERO)
        .acquire()
        .await
        .unwrap();
    assert_eq!(timed_out.outcome(), Outcome::TimedOut);
    assert_eq!(timed_out.lease_end(), None);
    let err = timed_out.extend(short).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Lost);
    other.extend(Duration::from_secs(60)).await.unwrap();
    let ok = other.release().await.unwrap();
    assert!(ok, "the other holder's lock was intact");
    for bad in [
        Duration::ZERO,
        aiolock::MAX_DURATION + Duration::from_secs(1),
    ] {
        let mut held = RedLock::new(cache, "other", short).acquire().await.unwrap();
        let err = held.extend(bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad:?}");
        let ok = held.release().await.unwrap();
        assert!(ok, "a refused extend changes nothing");
    }
}

/// Fenced acquisitions of one key get strictly growing fences, through releases,
/// a lease end and a deleted lock key, whichever lock type takes it; unfenced guards
/// and guards that do not hold the lock have none.
#[maybe_async]
pub async fn fences_grow_with_each_acquisition(env: Env) {
    let cache = &env.cache;
    let lease = Duration::from_secs(30);
    let mut last = 0;
    let mut next = |fence: Option<u64>| {
        let fence = fence.expect("a fenced, held lock has a fence");
        assert!(fence > last, "{fence} after {last}");
        last = fence;
    };
    for _ in 0..3 {
        let guard = cache.redlock("k", lease).fenced().acquire().await.unwrap();
        next(guard.fence());
        let ok = guard.release().await.unwrap();
        assert!(ok);
    }
    let guard = cache.lock("k", lease).fenced().try_acquire().await.unwrap();
    let guard = guard.expect("uncontended");
    next(guard.fence());
    // A waiter that goes on without the lock has no fence, nor does an unfenced lock.
    let waiter = RedLock::new(cache, "k", lease)
        .fenced()
        .wait_at_most(Duration::ZERO)
        .acquire()
        .await
        .unwrap();
    assert_eq!(
        (waiter.outcome(), waiter.fence()),
        (Outcome::TimedOut, None)
    );
    // The lock key deleted (as if expired) while held: the next holder's fence is
    // still larger.
    let ok = cache.delete("k-lock").await.unwrap();
    assert!(ok);
    let unfenced = cache.lock("k", lease).try_acquire().await.unwrap().unwrap();
    assert_eq!(unfenced.fence(), None);
    let ok = unfenced.release().await.unwrap();
    assert!(ok);
    let after = cache.lock("k", lease).fenced().try_acquire().await.unwrap();
    next(after.unwrap().fence());
    // The lease ended: the next holder is fenced higher too.
    let short = cache
        .redlock("s", env.short_lease)
        .fenced()
        .acquire()
        .await
        .unwrap();
    let first = short.fence().unwrap();
    std::mem::forget(short);
    sleep(env.after_expiry(env.short_lease)).await;
    let again = cache.redlock("s", lease).fenced().acquire().await.unwrap();
    assert_eq!(again.outcome(), Outcome::Acquired);
    assert!(again.fence().unwrap() > first);
    drop(guard);
}

/// A holder that extends its lease keeps its RedLock waiters waiting: at each lease
/// end it saw, a waiter may find the key still held and wait again (at worst a claim
/// that loses), but it neither reports a release nor takes the lock; the holder's
/// release then wakes it with `Released`. The holder renews a few times by one lease,
/// so that whenever the waiter looked, it saw a lease that ends before the release.
#[maybe_async]
pub async fn waiter_of_an_extended_holder_keeps_waiting(env: Env) {
    // Renewed every quarter lease: a loaded machine may be late by most of a lease.
    let lease = env.short_lease.max(Duration::from_secs(1));
    let holder = RedLock::new(&env.cache, "k", lease)
        .acquire()
        .await
        .unwrap();
    assert!(holder.is_acquired());
    let holder = Arc::new(std::sync::Mutex::new(Some(holder)));
    let released_at = Arc::new(std::sync::Mutex::new(None));
    let returned = Arc::new(AtomicUsize::new(0));
    let lock_key = env.lock_key("k");
    let results = concurrently(2, |i| {
        let env = env.clone();
        let holder = Arc::clone(&holder);
        let released_at = Arc::clone(&released_at);
        let returned = Arc::clone(&returned);
        let lock_key = lock_key.clone();
        async move {
            let long = Duration::from_secs(30);
            if i == 0 {
                let mut guard = holder.lock().unwrap().take().unwrap();
                waiters(&lock_key, 1).await;
                for _ in 0..6 {
                    sleep(lease / 4).await;
                    guard.extend(lease).await.unwrap();
                }
                // Past the last lease the waiter may have seen (a real TTL's end).
                guard.extend(long).await.unwrap();
                sleep(env.after_expiry(lease)).await;
                let waiting = returned.load(Ordering::SeqCst) == 0;
                assert!(
                    waiting,
                    "the waiter still waits past the renewed lease ends"
                );
                *released_at.lock().unwrap() = Some(Instant::now());
                let removed = guard.release().await.unwrap();
                assert!(removed, "the extended lease was still ours");
                return None;
            }
            let g = RedLock::new(&env.cache, "k", long)
                .wait_at_most(long)
                .acquire()
                .await
                .unwrap();
            returned.fetch_add(1, Ordering::SeqCst);
            Some((g.outcome(), Instant::now()))
        }
    })
    .await;
    let released_at = released_at.lock().unwrap().expect("released");
    let (outcome, at) = results.into_iter().flatten().next().unwrap();
    assert_eq!(outcome, Outcome::Released);
    assert!(at >= released_at, "woken by the release, not before it");
}

/// Polls `done` until it is set (every millisecond; fails after 30 s).
#[maybe_async]
async fn until_set(done: &std::sync::atomic::AtomicBool, what: &str) {
    let start = Instant::now();
    while !done.load(Ordering::SeqCst) {
        assert!(start.elapsed() < Duration::from_secs(30), "never: {what}");
        sleep(Duration::from_millis(1)).await;
    }
}

/// Each waiter of a cache's queue keeps its own deadline. The first (which leads: it
/// waits for the holder on the server) gives up by its deadline and the second leads
/// in its place: it takes the lock at the holder's release. A waiter queued while that
/// one holds (no claim: it waits for a hand-off in process) returns by its deadline
/// too, and the holder's release then finds nobody to hand the lock to.
#[maybe_async]
pub async fn exclusive_deadlines_in_the_queue(env: Env) {
    use std::sync::atomic::AtomicBool;
    let lease = Duration::from_secs(30);
    let bound = Duration::from_millis(300);
    let holder = env.cache.lock("k", lease).try_acquire().await.unwrap();
    let holder = Arc::new(std::sync::Mutex::new(holder));
    let lock_key = env.lock_key("k");
    let leader_done = Arc::new(AtomicBool::new(false));
    let second_holds = Arc::new(AtomicBool::new(false));
    let late_done = Arc::new(AtomicBool::new(false));
    let roles = concurrently(4, |i| {
        let cache = env.cache.clone();
        let holder = Arc::clone(&holder);
        let lock_key = lock_key.clone();
        let (leader_done, second_holds) = (Arc::clone(&leader_done), Arc::clone(&second_holds));
        let late_done = Arc::clone(&late_done);
        async move {
            let short = cache.lock("k", lease).wait_at_most(bound);
            let long = cache.lock("k", lease).wait_at_most(Duration::from_secs(60));
            match i {
                // The leader, with a short deadline.
                0 => {
                    let start = Instant::now();
                    let got = short.acquire().await.unwrap();
                    let took = start.elapsed();
                    leader_done.store(true, Ordering::SeqCst);
                    assert!(got.is_none(), "the holder held it the whole bound");
                    assert!(took >= bound, "waited its bound: {took:?}");
                    assert!(took < bound + Duration::from_secs(2), "by it: {took:?}");
                    "leader timed out"
                }
                // Second in the queue: leads once the leader left.
                1 => {
                    waiters(&lock_key, 1).await;
                    let guard = long.acquire().await.unwrap().expect("within its bound");
                    second_holds.store(true, Ordering::SeqCst);
                    until_set(&late_done, "the late waiter returned").await;
                    let ok = guard.release().await.unwrap();
                    assert!(ok, "still ours");
                    "second held"
                }
                // The holder's releaser: once the leader gave up.
                2 => {
                    waiters(&lock_key, 2).await;
                    until_set(&leader_done, "the leader returned").await;
                    let guard = holder.lock().unwrap().take().expect("the first holder");
                    let ok = guard.release().await.unwrap();
                    assert!(ok);
                    "released"
                }
                // Queued behind the second while it holds.
                _ => {
                    until_set(&second_holds, "the second held").await;
                    let start = Instant::now();
                    let got = short.acquire().await.unwrap();
                    let took = start.elapsed();
                    late_done.store(true, Ordering::SeqCst);
                    assert!(got.is_none(), "held by the second the whole bound");
                    assert!(took >= bound, "waited its bound: {took:?}");
                    assert!(took < bound + Duration::from_secs(2), "by it: {took:?}");
                    "late timed out"
                }
            }
        }
    })
    .await;
    assert_eq!(
        roles,
        [
            "leader timed out",
            "second held",
            "released",
            "late timed out"
        ]
    );
    assert_eq!(env.cache.waiting("k"), 0);
    env.cache.flush().await;
    let held = env.cache.exists("k-lock").await.unwrap();
    assert!(!held, "all released");
}

/// 64 exclusive waiters of one cache on one key, queued behind a holder, each
/// entering once: never two inside, every one enters, and the server sees at most
/// one claim from this process per release (the first waiter claims, the others wait
/// in process and are handed the lock) and no re-checks by the others: far fewer
/// releases than entries (a hand-off releases nothing), a few commands per release.
#[maybe_async]
pub async fn exclusive_64_waiters_one_key(
    env: Env,
    server: Arc<dyn crate::support::counts::Counted>,
) {
    exclusive_64_waiters_one_key_of(env.cache, server).await
}

/// [`exclusive_64_waiters_one_key`] on a cache of any backend.
#[maybe_async]
pub async fn exclusive_64_waiters_one_key_of<B: super::Backend>(
    cache: Cache<B>,
    server: Arc<dyn crate::support::counts::Counted>,
) {
    use crate::support::counts::Counts;
    const N: usize = 64;
    let lease = Duration::from_secs(30);
    let holder = cache.lock("hot", lease).try_acquire().await.unwrap();
    let lock_key = String::from_utf8_lossy(holder.as_ref().unwrap().lock_key()).into_owned();
    let holder = Arc::new(std::sync::Mutex::new(holder));
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let before: Arc<std::sync::Mutex<Option<Counts>>> = Arc::default();
    let entered = concurrently(N + 1, |i| {
        let cache = cache.clone();
        let holder = Arc::clone(&holder);
        let lock_key = lock_key.clone();
        let (inside, overlaps) = (Arc::clone(&inside), Arc::clone(&overlaps));
        let (server, before) = (Arc::clone(&server), Arc::clone(&before));
        async move {
            if i == N {
                // Every waiter queued (the first waits on the server).
                waiters(&lock_key, N).await;
                *before.lock().unwrap() = server.counts();
                let guard = holder.lock().unwrap().take().expect("the first holder");
                let ok = guard.release().await.unwrap();
                assert!(ok);
                return false;
            }
            let guard = cache
                .lock("hot", lease)
                .wait_at_most(Duration::from_secs(120))
                .acquire()
                .await
                .unwrap()
                .expect("entered within its bound");
            if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                overlaps.fetch_add(1, Ordering::SeqCst);
            }
            super::rt::yield_now().await;
            inside.fetch_sub(1, Ordering::SeqCst);
            let ok = guard.release().await.unwrap();
            assert!(ok, "the lease was still ours");
            true
        }
    })
    .await;
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "two callers were inside"
    );
    let entries = entered.iter().filter(|e| **e).count();
    assert_eq!(entries, N, "every waiter entered");
    assert_eq!(cache.waiting("hot"), 0);
    cache.flush().await;
    let held = cache.exists("hot-lock").await.unwrap();
    assert!(!held, "released");
    let before = *before.lock().unwrap();
    if let (Some(before), Some(after)) = (before, server.counts()) {
        let sent = after - before;
        eprintln!("{N} waiters, one entry each: {sent:?}");
        assert!(
            sent.claims <= sent.releases,
            "at most one claim per release: {sent:?}"
        );
        assert!(
            sent.releases <= N as u64 / 2,
            "handed off in process, mostly: {sent:?}"
        );
        assert!(
            sent.commands <= 12 * sent.releases,
            "no re-checks by the waiters in process: {sent:?}"
        );
    }
}

/// A lock handed over in process keeps its watchdog: the first guard (which won
/// through the cache's queue, watched) releases it to the next waiter (watched too),
/// which holds it for four leases, its watch reporting no loss and nobody else
/// getting it, then releases it.
#[maybe_async]
pub async fn exclusive_handed_off_guard_is_watched(env: Env) {
    let lease = env.short_lease.max(Duration::from_millis(300));
    let holder = env.cache.lock("k", lease).try_acquire().await.unwrap();
    let holder = Arc::new(std::sync::Mutex::new(holder));
    let lock_key = env.lock_key("k");
    let done = concurrently(3, |i| {
        let cache = env.cache.clone();
        let holder = Arc::clone(&holder);
        let lock_key = lock_key.clone();
        async move {
            let lock = cache
                .lock("k", lease)
                .wait_at_most(Duration::from_secs(60))
                .watchdog();
            match i {
                0 => {
                    let guard = lock.acquire().await.unwrap().expect("first");
                    let ok = guard.release().await.unwrap();
                    assert!(ok, "handed on");
                }
                1 => {
                    waiters(&lock_key, 1).await;
                    let guard = lock.acquire().await.unwrap().expect("second");
                    let watch = guard.watch().expect("watched");
                    sleep(lease * 4).await;
                    watch.check().expect("no loss");
                    let other = cache.lock("k", lease).try_acquire().await.unwrap();
                    assert!(other.is_none(), "still held through the renewals");
                    let ok = guard.release().await.unwrap();
                    assert!(ok, "still ours after four leases");
                }
                _ => {
                    waiters(&lock_key, 2).await;
                    let guard = holder.lock().unwrap().take().expect("the first holder");
                    let ok = guard.release().await.unwrap();
                    assert!(ok);
                }
            }
            i
        }
    })
    .await;
    assert_eq!(done, [0, 1, 2]);
    let spans = crate::support::events::spans();
    let handed = spans
        .iter()
        .any(|s| s.contains(&lock_key) && s.contains("handed_off"));
    assert!(handed, "the first released by a hand-off: {spans:?}");
    let held = env.cache.exists("k-lock").await.unwrap();
    assert!(!held, "released");
}
