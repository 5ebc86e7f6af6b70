// The watchdog's test bodies, written once and compiled into both flavors (see
// `tests/watchdog/mod.rs`). Behaviour runs on real servers; `Observed` wraps a real
// backend to count renewals per key and to make one key's renewals hang.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::maybe_async;
use super::rt::{hang, sleep};
use super::{AnyBackend, Backend, Cache};
use crate::support::proxy::Proxy;
use aiolock::{CasToken, Claim, Error, ErrorKind, Outcome, Result, Ttl, Versioned, Wake};

/// How long a test waits for what must come within milliseconds.
const PATIENCE: Duration = Duration::from_secs(30);

/// What a body gets.
pub struct Env {
    /// The holder's cache.
    pub cache: Cache,
    /// Another caller's cache on the same store (the same cache on memory).
    pub other: Cache,
    /// The lease of the watched locks.
    pub lease: Duration,
}

/// A network backend's cache through a proxy, and another one straight to the server.
pub struct NetEnv {
    pub proxy: Arc<Proxy>,
    pub cache: Cache,
    pub other: Cache,
    pub lease: Duration,
}

/// The caches of an [`Env`] on `url`.
#[maybe_async]
pub async fn env(url: &str, lease: Duration) -> Env {
    let cache = Cache::from_url(url).await.unwrap();
    let other = if url.starts_with("memory:") {
        cache.clone()
    } else {
        Cache::from_url(url).await.unwrap()
    };
    Env {
        cache,
        other,
        lease,
    }
}

/// The caches of a [`NetEnv`].
#[maybe_async]
pub async fn net_env(proxy: Arc<Proxy>, proxied: &str, direct: &str, lease: Duration) -> NetEnv {
    NetEnv {
        proxy,
        cache: Cache::from_url(proxied).await.unwrap(),
        other: Cache::from_url(direct).await.unwrap(),
        lease,
    }
}

/// A real backend, observed: renewals counted per key; the renewals of one key can be
/// made to hang for a while (a server that does not answer them) and then fail.
#[derive(Clone)]
pub struct Observed<B> {
    inner: B,
    state: Arc<std::sync::Mutex<ObservedState>>,
}

#[derive(Default)]
struct ObservedState {
    /// When each renewal of a key reached the backend.
    extends: std::collections::HashMap<Vec<u8>, Vec<Instant>>,
    hang: Option<(Vec<u8>, Duration)>,
}

impl<B> Observed<B> {
    pub fn new(inner: B) -> Self {
        Observed {
            inner,
            state: Arc::default(),
        }
    }

    /// How many renewals of the lock key `key` reached the backend.
    pub fn extends(&self, key: &[u8]) -> usize {
        self.extends_at(key).len()
    }

    /// When each renewal of the lock key `key` reached the backend.
    pub fn extends_at(&self, key: &[u8]) -> Vec<Instant> {
        let state = self.state.lock().unwrap();
        state.extends.get(key).cloned().unwrap_or_default()
    }

    /// From now on, renewals of `key` get no answer for `d`, then fail (a timeout).
    pub fn hang_extends_of(&self, key: &[u8], d: Duration) {
        self.state.lock().unwrap().hang = Some((key.to_vec(), d));
    }
}

#[maybe_async(AFIT)]
impl<B: Backend> Backend for Observed<B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key).await
    }

    async fn set(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.inner.set(key, value, ttl).await
    }

    async fn add(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        self.inner.add(key, value, ttl).await
    }

    async fn delete(&self, key: &[u8]) -> Result<bool> {
        self.inner.delete(key).await
    }

    async fn exists(&self, key: &[u8]) -> Result<bool> {
        self.inner.exists(key).await
    }

    async fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        self.inner.ttl(key).await
    }

    async fn claim(&self, key: &[u8], token: &[u8], lease: Duration) -> Result<Claim> {
        self.inner.claim(key, token, lease).await
    }

    async fn extend(&self, key: &[u8], token: &[u8], lease: Duration) -> Result<bool> {
        let hang = {
            let mut state = self.state.lock().unwrap();
            state
                .extends
                .entry(key.to_vec())
                .or_default()
                .push(Instant::now());
            state
                .hang
                .as_ref()
                .filter(|(k, _)| k == key)
                .map(|(_, d)| *d)
        };
        if let Some(d) = hang {
            sleep(d).await;
            return Err(Error::new(ErrorKind::Timeout, "test: no answer"));
        }
        self.inner.extend(key, token, lease).await
    }

    async fn release(&self, key: &[u8], token: &[u8]) -> Result<bool> {
        self.inner.release(key, token).await
    }

    fn try_release_now(&self, key: &[u8], token: &[u8]) -> Option<bool> {
        self.inner.try_release_now(key, token)
    }

    async fn wait(&self, key: &[u8], holder: Option<&[u8]>, deadline: Instant) -> Result<Wake> {
        self.inner.wait(key, holder, deadline).await
    }

    async fn begin(&self, key: &[u8]) -> Result<Versioned> {
        self.inner.begin(key).await
    }

    async fn cas(
        &self,
        key: &[u8],
        token: &CasToken,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        self.inner.cas(key, token, value, ttl).await
    }
}

/// `env`'s cache, observed (same backend, same namespace).
fn observed(env: &Env) -> (Observed<AnyBackend>, Cache<Observed<AnyBackend>>) {
    let observed = Observed::new(env.cache.backend().clone());
    let ns = env.cache.namespace().to_vec();
    (observed.clone(), Cache::with_namespace(observed, ns))
}

/// The full lock key of `key` in `env`'s caches.
fn lock_key(env: &Env, key: &str) -> Vec<u8> {
    env.cache.redlock(key, env.lease).lock_key().to_vec()
}

/// Sleeps in small steps until `cond` holds (state polled, not a guess at timing).
#[maybe_async]
async fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < until, "never: {what}");
        sleep(Duration::from_millis(5)).await;
    }
}

/// A channel the loss callback reports to: when it ran, and the error.
fn on_lost_channel(watch: &super::Watch) -> mpsc::Receiver<(Instant, Error)> {
    let (tx, rx) = mpsc::channel();
    watch.on_lost(move |e| {
        let copy = Error::new(e.kind(), e.message().to_owned());
        let _ = tx.send((Instant::now(), copy));
    });
    rx
}

/// A holder whose work lasts 10 leases keeps the lock the whole time: every try of
/// another caller fails, the watch stays fine, the lease end moves; then the release
/// finds the lock still ours. A watched RedLock likewise for 3 leases.
#[maybe_async]
pub async fn keeps_the_lock(env: Env) {
    let lease = env.lease;
    let guard = env.cache.lock("k", lease).watchdog().acquire().await;
    let guard = guard.unwrap().expect("free");
    let watch = guard.watch().expect("watched");
    let first_end = guard.lease_end().unwrap();
    let start = Instant::now();
    let mut tries = 0;
    while start.elapsed() < lease * 10 {
        let other = env.other.lock("k", lease).try_acquire().await.unwrap();
        assert!(
            other.is_none(),
            "another caller took the lock after {:?}",
            start.elapsed()
        );
        watch.check().unwrap();
        tries += 1;
        sleep(lease / 8).await;
    }
    assert!(tries >= 40, "{tries} tries");
    let end = guard.lease_end().unwrap();
    assert!(
        end >= first_end + lease * 8,
        "renewed: {:?}",
        end - first_end
    );
    assert_eq!(watch.lease_end(), end);
    let ok = guard.release().await.unwrap();
    assert!(ok, "ours all along");

    let guard = env.cache.redlock("r", lease).watchdog().acquire().await;
    let guard = guard.unwrap();
    assert_eq!(guard.outcome(), Outcome::Acquired);
    let start = Instant::now();
    while start.elapsed() < lease * 3 {
        let other = env.other.redlock("r", lease).wait_at_most(Duration::ZERO);
        let other = other.acquire().await.unwrap();
        assert_eq!(other.outcome(), Outcome::TimedOut, "{:?}", start.elapsed());
        sleep(lease / 8).await;
    }
    guard.watch().unwrap().check().unwrap();
    let ok = guard.release().await.unwrap();
    assert!(ok);
    // An unwatched guard, and one that does not hold the lock, have no watch.
    let unwatched = env.cache.lock("u", lease).try_acquire().await.unwrap();
    assert!(unwatched.unwrap().watch().is_none());
    let holder = env.cache.redlock("h", lease).acquire().await.unwrap();
    let waiter = env.cache.redlock("h", lease).watchdog();
    let waiter = waiter.wait_at_most(Duration::ZERO).acquire().await.unwrap();
    assert_eq!(waiter.outcome(), Outcome::TimedOut);
    assert!(waiter.watch().is_none());
    drop(holder);
}

/// The renewals come a third of the lease after each other (when they reach the
/// backend): the median gap is a third of the lease, not more (a worker that sleeps
/// past them) nor less.
#[maybe_async]
pub async fn renews_every_third_of_the_lease(env: Env) {
    let lease = env.lease;
    let (observed, cache) = observed(&env);
    let key = lock_key(&env, "k");
    let guard = cache.lock("k", lease).watchdog().acquire().await;
    let guard = guard.unwrap().expect("free");
    let watch = guard.watch().unwrap();
    let ten = || observed.extends(&key) >= 10 || watch.check().is_err();
    poll_until("ten renewals", ten).await;
    watch.check().expect("renewed");
    let at = observed.extends_at(&key);
    let mut gaps: Vec<_> = at.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        median >= lease * 3 / 10 && median <= lease * 4 / 10,
        "{median:?} between renewals of a {lease:?} lease: {gaps:?}"
    );
    let ok = guard.release().await.unwrap();
    assert!(ok);
}

/// The lock is taken from a watched holder (its key deleted, another caller claims
/// it): the next renewal finds it another caller's and the watch reports it at once,
/// by `lost`, `check` and the callback, before the lease would have ended. The guard's
/// `extend` and `release` then tell the truth: not ours.
#[maybe_async]
pub async fn reports_a_taken_lock(env: Env) {
    let lease = env.lease;
    let guard = env.cache.redlock("k", lease).watchdog().acquire().await;
    let mut guard = guard.unwrap();
    let watch = guard.watch().unwrap();
    let called = on_lost_channel(&watch);
    let ok = env.other.delete("k-lock").await.unwrap();
    assert!(ok, "held");
    let other = env.other.lock("k", Duration::from_secs(60)).try_acquire();
    let other = other.await.unwrap().expect("free now");
    let err = watch.lost().await;
    let at = Instant::now();
    assert_eq!(err.kind(), ErrorKind::Lost, "{err}");
    assert!(err.message().contains("no longer ours"), "{err}");
    let end = watch.lease_end();
    assert!(at < end, "reported {:?} after the lease end", at - end);
    let (called_at, called_with) = called.recv_timeout(PATIENCE).expect("the callback ran");
    assert!(called_at < end, "the callback came after the lease end");
    assert_eq!(called_with.message(), err.message());
    assert_eq!(watch.check().unwrap_err().message(), err.message());
    // Registered after the loss: called at once.
    let late = on_lost_channel(&watch);
    assert!(late.try_recv().is_ok(), "called at once");
    let err = guard.extend(lease).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Lost, "{err}");
    let ok = guard.release().await.unwrap();
    assert!(!ok, "another caller's lock: left alone");
    let ok = other.release().await.unwrap();
    assert!(ok, "the other caller's lock was intact");
}

/// A watched guard given up with `let_expire` leaves its lock held, unreleased, and
/// renews it no more: another caller finds it held until its lease ends, then free;
/// no renewal reaches the backend after it (but one already on its way); its watch
/// reports the guard released, and its callback is never called.
#[maybe_async]
pub async fn let_expire_leaves_the_lock_to_its_lease(env: Env) {
    let lease = env.lease;
    let (observed, cache) = observed(&env);
    let key = lock_key(&env, "k");
    let guard = cache.lock("k", lease).watchdog().acquire().await;
    let guard = guard.unwrap().expect("free");
    let watch = guard.watch().unwrap();
    let called = on_lost_channel(&watch);
    let one = || observed.extends(&key) >= 1 || watch.check().is_err();
    poll_until("a renewal", one).await;
    watch.check().expect("renewed");
    let end = guard.lease_end().unwrap();
    guard.let_expire();
    let given_up = observed.extends(&key);
    let err = watch.check().unwrap_err();
    assert!(err.message().contains("released"), "{err}");
    let until = Instant::now() + PATIENCE;
    let other = loop {
        let other = env.other.lock("k", lease).try_acquire().await.unwrap();
        if let Some(other) = other {
            break other;
        }
        assert!(Instant::now() < until, "never expired: still renewed?");
        sleep(lease / 8).await;
    };
    assert!(
        Instant::now() >= end,
        "taken before its lease end: released"
    );
    let after = observed.extends(&key);
    assert!(after <= given_up + 1, "renewed: {given_up} then {after}");
    assert!(called.try_recv().is_err(), "no loss callback");
    let ok = other.release().await.unwrap();
    assert!(ok);
}

/// A released or dropped guard leaves the schedule: its renewals stop (counted where
/// they reach the backend), while another watched guard's go on. Its watch reports
/// the release; its callback is never called.
#[maybe_async]
pub async fn renewals_stop_at_release(env: Env) {
    let lease = env.lease;
    let (observed, cache) = observed(&env);
    let keep = cache.lock("keep", lease).watchdog().acquire().await;
    let keep = keep.unwrap().expect("free");
    for how in ["released", "dropped"] {
        let key = lock_key(&env, how);
        let guard = cache.lock(how, lease).watchdog().acquire().await;
        let guard = guard.unwrap().expect("free");
        let watch = guard.watch().unwrap();
        let called = on_lost_channel(&watch);
        let two = || observed.extends(&key) >= 2 || watch.check().is_err();
        poll_until("two renewals", two).await;
        watch.check().expect("renewed");
        if how == "released" {
            let ok = guard.release().await.unwrap();
            assert!(ok);
        } else {
            drop(guard);
        }
        let at_release = observed.extends(&key);
        let kept = observed.extends(&lock_key(&env, "keep"));
        // Six renewal periods.
        sleep(lease * 2).await;
        // A renewal already on its way when the release began may still arrive;
        // nothing after.
        let after = observed.extends(&key);
        assert!(after <= at_release + 1, "{how}: {at_release} then {after}");
        let kept_after = observed.extends(&lock_key(&env, "keep"));
        assert!(
            kept_after >= kept + 4,
            "the other guard: {kept} then {kept_after} ({:?})",
            keep.watch().unwrap().check()
        );
        let err = watch.check().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Lost);
        assert!(err.message().contains("released"), "{err}");
        assert!(called.try_recv().is_err(), "no loss callback for a release");
    }
    keep.watch().unwrap().check().unwrap();
    let ok = keep.release().await.unwrap();
    assert!(ok);
}

/// One guard's renewal hangs (a server that does not answer it): that guard is
/// reported lost by its lease end at the latest, and the other watched guard of the
/// cache goes on being renewed on time. Async flavor: the hung renewal hangs for 20
/// leases, and is given up at the guard's lost instant. Blocking flavor: it hangs for
/// a quarter of the lease, as if the response timeout were that (the documented
/// bound: a lease of at least three times the response timeout). The lease is at
/// least 0.9 s: on a loaded machine the loss must be seen within the margin (a tenth
/// of it), and the other guard's renewal, behind the hung one, before its own.
#[maybe_async]
pub async fn one_hung_renewal_holds_up_no_other(env: Env) {
    let lease = env.lease.max(Duration::from_millis(900));
    let (observed, cache) = observed(&env);
    let a = cache.lock("a", lease).watchdog().acquire().await;
    let a = a.unwrap().expect("free");
    let b = cache.lock("b", lease).watchdog().acquire().await;
    let b = b.unwrap().expect("free");
    let (wa, wb) = (a.watch().unwrap(), b.watch().unwrap());
    observed.hang_extends_of(&lock_key(&env, "a"), hang(lease));
    let err = wa.lost().await;
    let at = Instant::now();
    assert_eq!(err.kind(), ErrorKind::Lost, "{err}");
    assert!(err.message().starts_with("renewal failed"), "{err}");
    let end = wa.lease_end();
    assert!(at <= end, "reported {:?} after the lease end", at - end);
    let before = observed.extends(&lock_key(&env, "b"));
    let lost = wb.wait_lost(lease * 4).await;
    assert!(lost.is_none(), "b renewed all along: {lost:?}");
    let after = observed.extends(&lock_key(&env, "b"));
    assert!(after >= before + 8, "b: {before} then {after} renewals");
    let other = env.other.lock("b", lease).try_acquire().await.unwrap();
    assert!(other.is_none(), "b is still held");
    let ok = b.release().await.unwrap();
    assert!(ok, "b ours all along");
    drop(a);
}

/// The server becomes unreachable for the holder (its connections cut, new ones
/// refused): the next renewal fails and the loss is reported at once, the lease end
/// still ahead. The server comes back: the lock was in fact still ours, and the
/// guard's `extend` and `release` say so; the watch stays lost.
#[maybe_async]
pub async fn loss_when_cut(env: NetEnv) {
    let lease = env.lease;
    let guard = env.cache.redlock("k", lease).watchdog().acquire().await;
    let mut guard = guard.unwrap();
    assert!(guard.is_acquired());
    let watch = guard.watch().unwrap();
    let called = on_lost_channel(&watch);
    env.proxy.refuse(true);
    env.proxy.cut();
    let err = watch.lost().await;
    let at = Instant::now();
    let end = watch.lease_end();
    assert!(
        at < end,
        "reported {:?} after the lease end: {err}",
        at - end
    );
    assert_eq!(err.kind(), ErrorKind::Lost);
    assert!(err.message().starts_with("renewal failed: "), "{err}");
    let (called_at, _) = called.recv_timeout(PATIENCE).expect("the callback ran");
    assert!(called_at < end, "the callback came after the lease end");
    env.proxy.refuse(false);
    guard.extend(lease).await.unwrap();
    assert!(guard.lease_end().unwrap() > end, "the extend's lease end");
    assert_eq!(watch.lease_end(), guard.lease_end().unwrap());
    assert!(watch.check().is_err(), "a loss stays reported");
    let other = env.other.lock("k", lease).try_acquire().await.unwrap();
    assert!(other.is_none(), "extended: still ours");
    let ok = guard.release().await.unwrap();
    assert!(ok, "still ours: released");
}

/// The server stops answering the holder (the proxy stalls): the renewal in flight
/// gets no answer, and the loss is reported by the lease end at the latest, while the
/// request still hangs. The lease then ends and another caller takes the lock: when
/// the server answers again, the guard's `extend` fails with `Lost` and its release
/// removes nothing.
#[maybe_async]
pub async fn loss_when_stalled(env: NetEnv) {
    let lease = env.lease;
    let guard = env.cache.redlock("k", lease).watchdog().acquire().await;
    let mut guard = guard.unwrap();
    let watch = guard.watch().unwrap();
    let called = on_lost_channel(&watch);
    env.proxy.stall(true);
    let err = watch.lost().await;
    let at = Instant::now();
    let end = watch.lease_end();
    assert!(
        at <= end,
        "reported {:?} after the lease end: {err}",
        at - end
    );
    assert_eq!(err.kind(), ErrorKind::Lost);
    assert!(err.message().starts_with("renewal failed: "), "{err}");
    // Another caller waits through the lease end and takes the lock.
    let other = env.other.lock("k", Duration::from_secs(60));
    let other = other.wait_at_most(PATIENCE).acquire().await.unwrap();
    let other = other.expect("the holder's lease ended");
    env.proxy.clear();
    let (_, called_with) = called.recv_timeout(PATIENCE).expect("the callback ran");
    assert_eq!(called_with.message(), err.message());
    let err = guard.extend(lease).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Lost, "{err}");
    let ok = guard.release().await.unwrap();
    assert!(!ok, "another caller's lock: left alone");
    let ok = other.release().await.unwrap();
    assert!(ok, "the other caller's lock was intact");
}
