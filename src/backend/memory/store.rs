//! The in-process memory backend, compiled once and used by both flavors.
//!
//! One `parking_lot` mutex guards a hash map; expiry deadlines are checked on access
//! (no background thread), and expired entries are swept in amortized O(1). The store
//! reads no clock: every call is given `now` by its caller, the flavor's clock (std's
//! in the blocking flavor, tokio's in the async one, so that `tokio::time::pause()`
//! pauses the async flavor's leases too). Lock
//! waiters listen on a per-key [`event_listener::Event`], which a blocking thread can
//! park on and an async task can await, so a blocking waiter wakes on an async
//! holder's release and the reverse.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_listener::{Event, EventListener};
use hashbrown::{DefaultHashBuilder, HashTable, hash_table};
use parking_lot::Mutex;

use crate::core::lease::deadline;
use crate::core::wait::{Claim, Wake};
use crate::error::{Error, ErrorKind, Result};
use crate::key::same;
use crate::value::{CasToken, Ttl, Versioned};

/// The in-process backend of `memory://`: the embedded default, no server needed.
///
/// Clones share one store. The same `MemoryBackend` can serve a blocking and an async
/// [`Cache`](crate::Cache) at once, and their locks see each other.
///
/// Each flavor judges leases and TTLs by its own clock: the blocking flavor by std's,
/// the async flavor by tokio's. They agree, except in a program that pauses tokio's
/// clock (`tokio::time::pause()`, as tests do): then an entry written by the async
/// side expires by the blocking side's clock when the real time has passed, and the
/// reverse may hold an entry longer or shorter than its TTL for the other side.
///
/// ```
/// # #[cfg(all(feature = "blocking", feature = "async"))] {
/// use aiolock::MemoryBackend;
///
/// let store = MemoryBackend::new();
/// let sync_cache = aiolock::blocking::Cache::new(store.clone());
/// let async_cache = aiolock::Cache::new(store);
/// sync_cache.set("k", b"v", None)?;
/// # let _ = async_cache;
/// # }
/// # Ok::<(), aiolock::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct MemoryBackend {
    store: Arc<Store>,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("keys", &self.store.map.lock().entries.len())
            .finish()
    }
}

#[derive(Default)]
struct Store {
    map: Mutex<Map>,
}

/// Keys and values this short are stored inline (lock keys and tokens are), saving an
/// allocation each.
type Bytes = crate::key::KeyBuf;

/// The entries, each holding its own key: a [`HashTable`] rather than a `HashMap`, so
/// that every operation hashes the key once and probes once (a claim, a release, a
/// write; a map's lookup-then-insert or lookup-then-remove did both twice, and its
/// insert compared the key again).
#[derive(Default)]
struct Map {
    entries: HashTable<Entry>,
    hasher: DefaultHashBuilder,
    last_version: u64,
    sweep_above: usize,
}

struct Entry {
    key: Bytes,
    value: Bytes,
    expires: Expiry,
    version: u64,
    /// Created by the first waiter; notified when the key is released or deleted.
    waiters: Option<Arc<Event>>,
}

/// When an entry stops being live.
#[derive(Clone, Copy)]
enum Expiry {
    Never,
    At(Instant),
    /// A released lock: absent, but its slot (and key) stay until the next sweep, so
    /// that the next claim of the same key writes its value in place.
    Released,
}

impl Expiry {
    fn after(ttl: Option<Duration>, now: Instant) -> Self {
        match ttl {
            None => Expiry::Never,
            Some(d) => Expiry::At(deadline(now, d)),
        }
    }
}

impl Entry {
    #[inline]
    fn live(&self, now: Instant) -> bool {
        match self.expires {
            Expiry::Never => true,
            Expiry::At(at) => now < at,
            Expiry::Released => false,
        }
    }
}

const MIN_SWEEP: usize = 1024;

impl Map {
    #[inline(always)]
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    #[inline(always)]
    fn find_mut(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let hash = self.hash(key);
        self.entries.find_mut(hash, |e| same(&e.key, key))
    }

    #[inline]
    fn live(&self, key: &[u8], now: Instant) -> Option<&Entry> {
        self.entries
            .find(self.hash(key), |e| same(&e.key, key))
            .filter(|e| e.live(now))
    }

    /// The live entry of `key`, mutable.
    #[inline(always)]
    fn live_mut(&mut self, key: &[u8], now: Instant) -> Option<&mut Entry> {
        self.find_mut(key).filter(|e| e.live(now))
    }

    /// The slot of `key`, occupied (live or expired) or vacant: one hash, one probe.
    #[inline(always)]
    fn slot(&mut self, key: &[u8]) -> hash_table::Entry<'_, Entry> {
        let hash = self.hash(key);
        let Map {
            entries, hasher, ..
        } = self;
        entries.entry(hash, |e| same(&e.key, key), |e| hasher.hash_one(&*e.key))
    }

    /// Stores `value` if `allowed` says so given the live entry (`None`: absent or
    /// expired), keeping the waiters of a previous entry. One hash, one probe.
    #[inline(always)]
    fn write(
        &mut self,
        key: &[u8],
        value: &[u8],
        expires: Expiry,
        now: Instant,
        allowed: impl FnOnce(Option<&Entry>) -> bool,
    ) -> bool {
        self.sweep(now);
        let version = self.last_version + 1;
        match self.slot(key) {
            hash_table::Entry::Occupied(mut o) => {
                let e = o.get_mut();
                if !allowed(Some(&*e).filter(|e| e.live(now))) {
                    return false;
                }
                crate::key::assign(&mut e.value, value);
                e.expires = expires;
                e.version = version;
            }
            hash_table::Entry::Vacant(v) => {
                if !allowed(None) {
                    return false;
                }
                v.insert(Entry {
                    key: crate::key::buf(key),
                    value: crate::key::buf(value),
                    expires,
                    version,
                    waiters: None,
                });
            }
        }
        self.last_version = version;
        true
    }

    /// Removes `key` if `remove` says so of its entry (live or expired); returns the
    /// removed entry. One hash, one probe.
    fn remove_if(&mut self, key: &[u8], remove: impl FnOnce(&Entry) -> bool) -> Option<Entry> {
        let hash = self.hash(key);
        let found = self.entries.find_entry(hash, |e| same(&e.key, key)).ok()?;
        if !remove(found.get()) {
            return None;
        }
        Some(found.remove().0)
    }

    /// Drops expired entries once the map has doubled since the last sweep.
    #[inline]
    fn sweep(&mut self, now: Instant) {
        if self.entries.len() >= self.sweep_above {
            self.sweep_now(now);
        }
    }

    #[cold]
    #[inline(never)]
    fn sweep_now(&mut self, now: Instant) {
        self.entries
            .retain(|e| e.live(now) || e.waiters.as_ref().is_some_and(|w| w.total_listeners() > 0));
        self.sweep_above = (self.entries.len() * 2).max(MIN_SWEEP);
    }
}

#[inline]
fn wake(waiters: Option<Arc<Event>>) {
    if let Some(event) = waiters {
        event.notify(usize::MAX);
    }
}

/// What a lock waiter waits on, returned by [`MemoryBackend::listen`].
pub(crate) enum Listen {
    /// The key is not held (any more).
    Vacant,
    /// Wait on `listener` until `until`; a notification means the key was released.
    Held {
        listener: EventListener,
        until: Instant,
        /// Whether `until` is the caller's deadline (rather than the lease end).
        until_is_deadline: bool,
    },
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn get(&self, key: &[u8], now: Instant) -> Option<Vec<u8>> {
        self.store
            .map
            .lock()
            .live(key, now)
            .map(|e| e.value.to_vec())
    }

    pub(crate) fn set(&self, key: &[u8], value: &[u8], ttl: Option<Duration>, now: Instant) {
        let expires = Expiry::after(ttl, now);
        self.store
            .map
            .lock()
            .write(key, value, expires, now, |_| true);
    }

    pub(crate) fn add(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        now: Instant,
    ) -> bool {
        let expires = Expiry::after(ttl, now);
        let mut map = self.store.map.lock();
        map.write(key, value, expires, now, |live| live.is_none())
    }

    /// Adds `key` holding `token` for `lease`, or reports the live holder's token.
    pub(crate) fn claim(&self, key: &[u8], token: &[u8], lease: Duration, now: Instant) -> Claim {
        self.claim_until(key, token, now, deadline(now, lease))
    }

    /// Adds `key` holding `token` until `lease_end`, or reports the live holder's
    /// token (live at `now`).
    #[inline(always)]
    pub(crate) fn claim_until(
        &self,
        key: &[u8],
        token: &[u8],
        now: Instant,
        lease_end: Instant,
    ) -> Claim {
        let mut holder = None;
        let expires = Expiry::At(lease_end);
        let won = self
            .store
            .map
            .lock()
            .write(key, token, expires, now, |live| {
                holder = live.map(|e| e.value.to_vec());
                live.is_none()
            });
        if won {
            Claim::Won
        } else {
            Claim::Held { holder }
        }
    }

    /// Claims `key` like [`claim`](MemoryBackend::claim) and, when it wins, increments
    /// the counter under `fence_key` (created at 1, without TTL) in the same mutex
    /// section. A fence key holding something else than a decimal `u64` fails the
    /// claim before anything is written.
    pub(crate) fn claim_fenced(
        &self,
        key: &[u8],
        token: &[u8],
        lease: Duration,
        fence_key: &[u8],
        now: Instant,
    ) -> Result<(Claim, Option<u64>)> {
        let mut map = self.store.map.lock();
        if let Some(e) = map.live(key, now) {
            let holder = Some(e.value.to_vec());
            return Ok((Claim::Held { holder }, None));
        }
        let fence = match map.live(fence_key, now) {
            None => 1,
            Some(e) => std::str::from_utf8(&e.value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .and_then(|v| v.checked_add(1))
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Backend,
                        "the fence key does not hold a fencing token (a decimal number)",
                    )
                })?,
        };
        let (never, until) = (Expiry::Never, Expiry::after(Some(lease), now));
        map.write(fence_key, fence.to_string().as_bytes(), never, now, |_| {
            true
        });
        map.write(key, token, until, now, |_| true);
        Ok((Claim::Won, Some(fence)))
    }

    /// Renews the lock `key` if it still holds `token`: its lease now ends `lease`
    /// after `now`. Returns whether it did.
    pub(crate) fn extend(&self, key: &[u8], token: &[u8], lease: Duration, now: Instant) -> bool {
        let mut map = self.store.map.lock();
        match map.live_mut(key, now) {
            Some(e) if same(&e.value, token) => {
                e.expires = Expiry::At(deadline(now, lease));
                true
            }
            _ => false,
        }
    }

    pub(crate) fn delete(&self, key: &[u8], now: Instant) -> bool {
        let removed = self.store.map.lock().remove_if(key, |_| true);
        removed.is_some_and(|e| {
            let live = e.live(now);
            wake(e.waiters);
            live
        })
    }

    pub(crate) fn exists(&self, key: &[u8], now: Instant) -> bool {
        self.store.map.lock().live(key, now).is_some()
    }

    pub(crate) fn ttl(&self, key: &[u8], now: Instant) -> Ttl {
        match self.store.map.lock().live(key, now) {
            None => Ttl::Missing,
            Some(e) => match e.expires {
                Expiry::At(at) => Ttl::Expires(at.duration_since(now)),
                Expiry::Never => Ttl::Persistent,
                Expiry::Released => Ttl::Missing, // not live: not found above
            },
        }
    }

    /// Deletes `key` if it holds `token` and has not expired; wakes its waiters.
    ///
    /// The entry is marked released rather than removed: the next claim of the key
    /// (often the same key, taken again and again) writes into it in place, and the
    /// sweep drops it otherwise.
    #[inline(always)]
    pub(crate) fn release(&self, key: &[u8], token: &[u8], now: Instant) -> bool {
        let mut map = self.store.map.lock();
        let Some(e) = map.live_mut(key, now).filter(|e| same(&e.value, token)) else {
            return false;
        };
        e.expires = Expiry::Released;
        let waiters = e.waiters.take();
        drop(map);
        wake(waiters);
        true
    }

    /// Registers a waiter on `key` held by `holder` and says how long to wait:
    /// registration and the check happen under one lock, so no release between them
    /// is missed. A key gone, or held by another token, was released: `Vacant`.
    pub(crate) fn listen(
        &self,
        key: &[u8],
        holder: Option<&[u8]>,
        deadline: Instant,
        now: Instant,
    ) -> Listen {
        let mut map = self.store.map.lock();
        let Some(entry) = map
            .live_mut(key, now)
            .filter(|e| holder.is_none_or(|h| same(&e.value, h)))
        else {
            return Listen::Vacant;
        };
        let listener = entry
            .waiters
            .get_or_insert_with(|| Arc::new(Event::new()))
            .listen();
        let (until, until_is_deadline) = match entry.expires {
            Expiry::At(end) if end < deadline => (end, false),
            _ => (deadline, true),
        };
        Listen::Held {
            listener,
            until,
            until_is_deadline,
        }
    }

    /// Hands `read` the value of `key` (under the mutex) and returns the token of
    /// its state: [`begin`](MemoryBackend::begin) without a copy.
    #[inline]
    pub(crate) fn begin_with(
        &self,
        key: &[u8],
        now: Instant,
        read: &mut dyn FnMut(Option<&[u8]>),
    ) -> CasToken {
        match self.store.map.lock().live(key, now) {
            Some(e) => {
                read(Some(&e.value));
                CasToken::Version(e.version)
            }
            None => {
                read(None);
                CasToken::Absent
            }
        }
    }

    pub(crate) fn begin(&self, key: &[u8], now: Instant) -> Versioned {
        match self.store.map.lock().live(key, now) {
            Some(e) => Versioned {
                value: Some(e.value.to_vec()),
                token: CasToken::Version(e.version),
            },
            None => Versioned {
                value: None,
                token: CasToken::Absent,
            },
        }
    }

    /// Writes `value` if `key` is still in the state `token` describes.
    pub(crate) fn cas(
        &self,
        key: &[u8],
        token: &CasToken,
        value: &[u8],
        ttl: Option<Duration>,
        now: Instant,
    ) -> bool {
        let expires = Expiry::after(ttl, now);
        let mut map = self.store.map.lock();
        map.write(key, value, expires, now, |live| match (token, live) {
            (CasToken::Absent, None) => true,
            (CasToken::Version(v), Some(e)) => e.version == *v,
            _ => false,
        })
    }
}

/// Turns the end of a listener wait into a [`Wake`].
pub(crate) fn wake_reason(notified: bool, until_is_deadline: bool) -> Wake {
    match (notified, until_is_deadline) {
        (true, _) => Wake::Released,
        (false, true) => Wake::Deadline,
        (false, false) => Wake::Vacant,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_listener::Listener;
    use proptest::prelude::*;
    use std::cell::Cell;
    use std::collections::BTreeMap;

    /// A store on a hand-driven clock: every call is given `now()`.
    struct Manual {
        backend: MemoryBackend,
        origin: Instant,
        elapsed: Cell<Duration>,
    }

    impl std::ops::Deref for Manual {
        type Target = MemoryBackend;
        fn deref(&self) -> &MemoryBackend {
            &self.backend
        }
    }

    impl MemoryBackend {
        fn with_manual_clock() -> Manual {
            Manual {
                backend: MemoryBackend::new(),
                origin: Instant::now(),
                elapsed: Cell::new(Duration::ZERO),
            }
        }
    }

    impl Manual {
        fn now(&self) -> Instant {
            self.origin + self.elapsed.get()
        }
        fn advance(&self, d: Duration) {
            self.elapsed.set(self.elapsed.get() + d);
        }
        fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
            self.backend.get(k, self.now())
        }
        fn set(&self, k: &[u8], v: &[u8], ttl: Option<Duration>) {
            self.backend.set(k, v, ttl, self.now())
        }
        fn add(&self, k: &[u8], v: &[u8], ttl: Option<Duration>) -> bool {
            self.backend.add(k, v, ttl, self.now())
        }
        fn delete(&self, k: &[u8]) -> bool {
            self.backend.delete(k, self.now())
        }
        fn exists(&self, k: &[u8]) -> bool {
            self.backend.exists(k, self.now())
        }
        fn ttl(&self, k: &[u8]) -> Ttl {
            self.backend.ttl(k, self.now())
        }
        fn claim(&self, k: &[u8], token: &[u8], lease: Duration) -> Claim {
            self.backend.claim(k, token, lease, self.now())
        }
        fn release(&self, k: &[u8], token: &[u8]) -> bool {
            self.backend.release(k, token, self.now())
        }
        fn listen(&self, k: &[u8], holder: Option<&[u8]>, deadline: Instant) -> Listen {
            self.backend.listen(k, holder, deadline, self.now())
        }
        fn begin(&self, k: &[u8]) -> Versioned {
            self.backend.begin(k, self.now())
        }
        fn cas(&self, k: &[u8], t: &CasToken, v: &[u8], ttl: Option<Duration>) -> bool {
            self.backend.cas(k, t, v, ttl, self.now())
        }
    }

    #[test]
    fn ttl_is_honoured_to_the_millisecond() {
        let m = MemoryBackend::with_manual_clock();
        m.set(b"k", b"v", Some(Duration::from_millis(10)));
        m.advance(Duration::from_micros(9_999));
        assert_eq!(m.get(b"k").as_deref(), Some(&b"v"[..]));
        assert_eq!(m.ttl(b"k"), Ttl::Expires(Duration::from_micros(1)));
        m.advance(Duration::from_micros(1));
        assert_eq!(m.get(b"k"), None);
        assert_eq!(m.ttl(b"k"), Ttl::Missing);
        assert!(m.add(b"k", b"w", None), "an expired key can be added");
    }

    #[test]
    fn release_checks_the_owner_and_the_lease() {
        let m = MemoryBackend::with_manual_clock();
        assert!(m.add(b"l", b"a", Some(Duration::from_millis(5))));
        assert!(!m.release(b"l", b"b"), "not the owner");
        m.advance(Duration::from_millis(5));
        assert!(!m.release(b"l", b"a"), "the lease ended");
        assert!(m.add(b"l", b"b", Some(Duration::from_millis(5))));
        assert!(!m.release(b"l", b"a"), "a stale holder removes nothing");
        assert!(m.exists(b"l"));
        assert!(m.release(b"l", b"b"));
        assert!(!m.exists(b"l"));
    }

    #[test]
    fn listen_caps_the_wait_at_the_lease_end() {
        let m = MemoryBackend::with_manual_clock();
        let now = m.now();
        assert!(matches!(
            m.listen(b"l", None, now + Duration::from_secs(1)),
            Listen::Vacant
        ));
        m.add(b"l", b"a", Some(Duration::from_millis(100)));
        let Listen::Held {
            until,
            until_is_deadline,
            ..
        } = m.listen(b"l", None, now + Duration::from_secs(1))
        else {
            panic!("held")
        };
        assert_eq!(until, now + Duration::from_millis(100));
        assert!(!until_is_deadline);
        let Listen::Held {
            listener,
            until_is_deadline,
            ..
        } = m.listen(b"l", None, now + Duration::from_millis(50))
        else {
            panic!("held")
        };
        assert!(until_is_deadline);
        assert!(m.release(b"l", b"a"));
        assert!(
            listener.wait_timeout(Duration::from_secs(5)).is_some(),
            "release notifies"
        );
    }

    #[test]
    fn sweep_drops_expired_entries() {
        let m = MemoryBackend::with_manual_clock();
        for i in 0..2000u32 {
            m.set(&i.to_be_bytes(), b"v", Some(Duration::from_millis(1)));
        }
        m.advance(Duration::from_millis(1));
        for i in 0..2000u32 {
            m.set(&(i + 10_000).to_be_bytes(), b"v", None);
        }
        assert!(m.store.map.lock().entries.len() < 3000);
    }

    /// The model: key → (value, expiry in ms, version).
    #[derive(Debug, Clone)]
    enum Op {
        Get(u8),
        Set(u8, u8, Option<u8>),
        Add(u8, u8, Option<u8>),
        Delete(u8),
        Ttl(u8),
        Begin(u8),
        Cas(u8, u8, Option<u8>),
        Claim(u8, u8, u8),
        Release(u8, u8),
        Advance(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = 0u8..4;
        let ttl = proptest::option::of(1u8..20);
        prop_oneof![
            key.clone().prop_map(Op::Get),
            (key.clone(), any::<u8>(), ttl.clone()).prop_map(|(k, v, t)| Op::Set(k, v, t)),
            (key.clone(), any::<u8>(), ttl.clone()).prop_map(|(k, v, t)| Op::Add(k, v, t)),
            key.clone().prop_map(Op::Delete),
            key.clone().prop_map(Op::Ttl),
            key.clone().prop_map(Op::Begin),
            (key.clone(), any::<u8>(), ttl).prop_map(|(k, v, t)| Op::Cas(k, v, t)),
            (key.clone(), 0u8..3, 1u8..20).prop_map(|(k, v, t)| Op::Claim(k, v, t)),
            (key, 0u8..3).prop_map(|(k, v)| Op::Release(k, v)),
            (0u8..25).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_the_model(ops in proptest::collection::vec(op(), 1..80)) {
            let m = MemoryBackend::with_manual_clock();
            let ms = Duration::from_millis;
            // key -> (value, expires_at_ms, write count)
            let mut model: BTreeMap<u8, (u8, Option<u64>, u64)> = BTreeMap::new();
            let mut writes = 0u64;
            let mut now = 0u64;
            // Tokens from Begin, per key: the model's write count at the time.
            let mut begun: BTreeMap<u8, (CasToken, Option<u64>)> = BTreeMap::new();
            for op in ops {
                model.retain(|_, (_, exp, _)| exp.is_none_or(|e| now < e));
                match op {
                    Op::Get(k) => {
                        let want = model.get(&k).map(|(v, _, _)| vec![*v]);
                        prop_assert_eq!(m.get(&[k]), want);
                    }
                    Op::Set(k, v, t) => {
                        m.set(&[k], &[v], t.map(|t| ms(t.into())));
                        writes += 1;
                        model.insert(k, (v, t.map(|t| now + u64::from(t)), writes));
                    }
                    Op::Add(k, v, t) => {
                        let want = !model.contains_key(&k);
                        prop_assert_eq!(m.add(&[k], &[v], t.map(|t| ms(t.into()))), want);
                        if want {
                            writes += 1;
                            model.insert(k, (v, t.map(|t| now + u64::from(t)), writes));
                        }
                    }
                    Op::Delete(k) => {
                        prop_assert_eq!(m.delete(&[k]), model.remove(&k).is_some());
                    }
                    Op::Ttl(k) => {
                        let want = match model.get(&k) {
                            None => Ttl::Missing,
                            Some((_, None, _)) => Ttl::Persistent,
                            Some((_, Some(e), _)) => Ttl::Expires(ms(e - now)),
                        };
                        prop_assert_eq!(m.ttl(&[k]), want);
                    }
                    Op::Begin(k) => {
                        let v = m.begin(&[k]);
                        prop_assert_eq!(&v.value, &model.get(&k).map(|(v, _, _)| vec![*v]));
                        begun.insert(k, (v.token, model.get(&k).map(|(_, _, w)| *w)));
                    }
                    Op::Cas(k, v, t) => {
                        let Some((token, seen)) = begun.get(&k).cloned() else { continue };
                        let want = model.get(&k).map(|(_, _, w)| *w) == seen;
                        prop_assert_eq!(m.cas(&[k], &token, &[v], t.map(|t| ms(t.into()))), want);
                        if want {
                            writes += 1;
                            model.insert(k, (v, t.map(|t| now + u64::from(t)), writes));
                        }
                    }
                    Op::Claim(k, v, t) => {
                        let want = match model.get(&k) {
                            Some((holder, _, _)) => Claim::Held { holder: Some(vec![*holder]) },
                            None => Claim::Won,
                        };
                        prop_assert_eq!(m.claim(&[k], &[v], ms(t.into())), want.clone());
                        if want == Claim::Won {
                            writes += 1;
                            model.insert(k, (v, Some(now + u64::from(t)), writes));
                        }
                    }
                    Op::Release(k, v) => {
                        let want = model.get(&k).is_some_and(|(held, _, _)| *held == v);
                        prop_assert_eq!(m.release(&[k], &[v]), want);
                        if want {
                            model.remove(&k);
                        }
                    }
                    Op::Advance(d) => {
                        m.advance(ms(d.into()));
                        now += u64::from(d);
                    }
                }
            }
        }
    }
}
