//! [`Cache`]: a namespaced handle over a backend, and the URL-chosen [`AnyBackend`].

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::backend::Backend;
use super::background::Background;
use super::exclusive::ExclusiveLock;
use super::maybe_async;
use super::optimistic::OptimisticLock;
#[cfg(feature = "redis")]
use super::redis_backend::RedisBackend;
#[cfg(feature = "redis")]
use super::redis_quorum::QuorumBackend;
use super::redlock::RedLock;
#[cfg(any(feature = "redis", feature = "memcached"))]
use super::rt;
use super::watchdog::Watchdog;
use crate::backend::memory::store::MemoryBackend;
use crate::config::{self, Endpoint, Options};
use crate::core::lease::check_ttl;
use crate::core::wait::{Claim, Wake};
use crate::core::waiters::{Waiters, Waiting};
use crate::error::{Error, ErrorKind, Result};
use crate::key::{self, KeyBuf};
use crate::value::{CasToken, Replication, Ttl, Versioned};

/// A cache: a backend and an optional namespace prefixed to every key.
///
/// Cloning is cheap and clones share the backend (and its connections).
///
/// ```
/// # #[cfg(feature = "blocking")] {
/// use std::time::Duration;
/// use aiolock::blocking::Cache;
///
/// let cache = Cache::from_url("memory://?namespace=app:")?;
/// cache.set("user:1", b"Ada", Some(Duration::from_secs(60)))?;
/// assert_eq!(cache.get("user:1")?.as_deref(), Some(&b"Ada"[..]));
/// assert!(!cache.add("user:1", b"Bob", None)?, "add only stores an absent key");
/// # }
/// # Ok::<(), aiolock::Error>(())
/// ```
pub struct Cache<B = AnyBackend> {
    inner: Arc<Inner<B>>,
}

struct Inner<B> {
    backend: B,
    namespace: Vec<u8>,
    lock_suffix: Vec<u8>,
    background: Background,
    waiters: Waiters,
    watchdog: Watchdog,
}

/// A [`Cache`] that does not keep it alive (the watchdog's worker holds one).
pub(crate) struct WeakCache<B> {
    inner: Weak<Inner<B>>,
}

impl<B> WeakCache<B> {
    /// The cache, unless it is gone.
    pub(crate) fn upgrade(&self) -> Option<Cache<B>> {
        self.inner.upgrade().map(|inner| Cache { inner })
    }
}

impl<B> Clone for Cache<B> {
    fn clone(&self) -> Self {
        Cache {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for Cache<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &String::from_utf8_lossy(&self.inner.namespace))
            .field(
                "lock_suffix",
                &String::from_utf8_lossy(&self.inner.lock_suffix),
            )
            .field("backend", &self.inner.backend)
            .finish()
    }
}

impl Cache<AnyBackend> {
    /// Opens the cache a URL names (see [`config`](crate::config) for the schemes and
    /// options): `memory://`, `redis://…`, `memcached://…`.
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// let cache = aiolock::blocking::Cache::from_url("memory://?namespace=app:")?;
    /// assert_eq!(cache.namespace(), b"app:");
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    #[maybe_async]
    pub async fn from_url(url: &str) -> Result<Self> {
        CacheBuilder::new().build(url).await
    }

    /// A new, empty in-process cache (`memory://`).
    pub fn memory() -> Self {
        Cache::new(AnyBackend::Memory(MemoryBackend::new()))
    }

    /// A builder, for options beyond the URL.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::new()
    }
}

impl<B: Backend> Cache<B> {
    /// A cache over `backend`, without a namespace.
    pub fn new(backend: B) -> Self {
        Self::with_namespace(backend, Vec::new())
    }

    /// A cache over `backend` whose keys are all prefixed with `namespace`.
    pub fn with_namespace(backend: B, namespace: impl Into<Vec<u8>>) -> Self {
        Cache {
            inner: Arc::new(Inner {
                backend,
                namespace: namespace.into(),
                lock_suffix: key::DEFAULT_LOCK_SUFFIX.to_vec(),
                background: Background::default(),
                waiters: Waiters::default(),
                watchdog: Watchdog::default(),
            }),
        }
    }

    /// A cache over the same backend (a clone: it shares the connections) and
    /// namespace, whose [`RedLock`]s are stored under `namespace + key + suffix`
    /// instead of `namespace + key + "-lock"`.
    ///
    /// Errors: [`InvalidArgument`](ErrorKind::InvalidArgument) for an empty suffix
    /// (the lock would overwrite the key it guards). On memcached the lock key as a
    /// whole must follow memcached's key rules: a key that breaks them is refused
    /// when the lock is acquired ([`InvalidKey`](ErrorKind::InvalidKey)).
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// use std::time::Duration;
    /// let cache = aiolock::blocking::Cache::memory().with_lock_suffix(":lock")?;
    /// let lock = cache.redlock("report", Duration::from_secs(5));
    /// assert_eq!(lock.lock_key(), b"report:lock");
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    pub fn with_lock_suffix(&self, suffix: impl Into<Vec<u8>>) -> Result<Self>
    where
        B: Clone,
    {
        let lock_suffix = suffix.into();
        config::check_lock_suffix(&lock_suffix)?;
        Ok(Cache {
            inner: Arc::new(Inner {
                backend: self.inner.backend.clone(),
                namespace: self.inner.namespace.clone(),
                lock_suffix,
                background: Background::default(),
                waiters: Waiters::default(),
                watchdog: Watchdog::default(),
            }),
        })
    }

    /// The prefix of every key.
    pub fn namespace(&self) -> &[u8] {
        &self.inner.namespace
    }

    /// What a [`RedLock`]'s key appends to its key: `-lock` (aiocache's) unless the
    /// cache was opened with another `lock_suffix`.
    pub fn lock_suffix(&self) -> &[u8] {
        &self.inner.lock_suffix
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.inner.backend
    }

    pub(crate) fn background(&self) -> &Background {
        &self.inner.background
    }

    /// The watchdog of this cache (renews the watched guards).
    pub(crate) fn watchdog(&self) -> &Watchdog {
        &self.inner.watchdog
    }

    /// A handle that does not keep the cache alive.
    pub(crate) fn downgrade(&self) -> WeakCache<B> {
        WeakCache {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// How many callers of this cache (of all its clones) are waiting for the
    /// [`RedLock`] on `key` right now: their claim lost to another holder, and they
    /// wait for its release, its lease end or their own bound. `key` is the key given
    /// to [`redlock`](Cache::redlock); the cache adds the namespace and the lock suffix.
    ///
    /// For stampede monitoring (how many requests are piled up behind one
    /// computation), and for tests that must release only once N callers wait. It
    /// counts this process's callers only (on a network backend, others may wait in
    /// other processes), and only those of this cache: another `Cache` over the same
    /// server, or one made by [`with_lock_suffix`](Cache::with_lock_suffix), counts
    /// its own. A caller that is re-elected after a lease end leaves the count while it
    /// claims the lock again. An acquisition that never waits costs nothing here.
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// use std::time::Duration;
    /// use aiolock::{Outcome, blocking::Cache};
    ///
    /// let cache = Cache::from_url("memory://?namespace=app:")?;
    /// let lease = Duration::from_secs(30);
    /// let holder = cache.redlock("report", lease).acquire()?;
    /// let waiter = std::thread::spawn({
    ///     let cache = cache.clone();
    ///     move || cache.redlock("report", lease).acquire().map(|g| g.outcome())
    /// });
    /// // Release only once the other caller waits (a fixed sleep would race).
    /// while cache.waiting("report") < 1 {
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// assert!(holder.release()?);
    /// assert_eq!(waiter.join().unwrap()?, Outcome::Released);
    /// assert_eq!(cache.waiting("report"), 0);
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    pub fn waiting(&self, key: impl AsRef<[u8]>) -> usize {
        let inner = &self.inner;
        match key::lock_key(&inner.namespace, key.as_ref(), &inner.lock_suffix) {
            Ok(lock_key) => inner.waiters.count(&lock_key),
            // An empty key: no RedLock can be taken on it, nobody waits.
            Err(_) => 0,
        }
    }

    /// The waiters of this cache (and their re-claim turns).
    pub(crate) fn waiters(&self) -> &Waiters {
        &self.inner.waiters
    }

    /// Counts a caller as waiting on `lock_key` (the full key) until the guard drops.
    pub(crate) fn enter_wait<'a>(&'a self, lock_key: &'a [u8]) -> Waiting<'a> {
        self.inner.waiters.enter(lock_key)
    }

    pub(crate) fn key(&self, key: &[u8]) -> Result<KeyBuf> {
        key::namespaced(&self.inner.namespace, key)
    }

    /// The value of `key`, if present.
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// # let cache = aiolock::blocking::Cache::memory();
    /// assert_eq!(cache.get("missing")?, None);
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    #[maybe_async]
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        let key = self.key(key.as_ref())?;
        self.backend().get(&key).await
    }

    /// Stores `value` under `key`; it expires after `ttl` (never, for `None`).
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// # let cache = aiolock::blocking::Cache::memory();
    /// use std::time::Duration;
    /// cache.set("session", b"data", Some(Duration::from_secs(30)))?;
    /// assert!(cache.exists("session")?);
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    #[maybe_async]
    pub async fn set(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let key = self.key(key.as_ref())?;
        let ttl = check_ttl(ttl)?;
        self.backend().set(&key, value.as_ref(), ttl).await
    }

    /// Stores `value` only if `key` is absent; returns whether it did.
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// # let cache = aiolock::blocking::Cache::memory();
    /// assert!(cache.add("k", b"first", None)?);
    /// assert!(!cache.add("k", b"second", None)?);
    /// assert_eq!(cache.get("k")?.as_deref(), Some(&b"first"[..]));
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    #[maybe_async]
    pub async fn add(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let key = self.key(key.as_ref())?;
        let ttl = check_ttl(ttl)?;
        self.backend().add(&key, value.as_ref(), ttl).await
    }

    /// Removes `key`; returns whether it was present.
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// # let cache = aiolock::blocking::Cache::memory();
    /// cache.set("k", b"v", None)?;
    /// assert!(cache.delete("k")?);
    /// assert!(!cache.delete("k")?);
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    #[maybe_async]
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        let key = self.key(key.as_ref())?;
        self.backend().delete(&key).await
    }

    /// Whether `key` is present.
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// # let cache = aiolock::blocking::Cache::memory();
    /// assert!(!cache.exists("k")?);
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    #[maybe_async]
    pub async fn exists(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        let key = self.key(key.as_ref())?;
        self.backend().exists(&key).await
    }

    /// The remaining time to live of `key`.
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// # let cache = aiolock::blocking::Cache::memory();
    /// use aiolock::Ttl;
    /// cache.set("k", b"v", None)?;
    /// assert_eq!(cache.ttl("k")?, Ttl::Persistent);
    /// assert_eq!(cache.ttl("nope")?, Ttl::Missing);
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    #[maybe_async]
    pub async fn ttl(&self, key: impl AsRef<[u8]>) -> Result<Ttl> {
        let key = self.key(key.as_ref())?;
        self.backend().ttl(&key).await
    }

    /// A [`RedLock`] on `key` with this lease (same as [`RedLock::new`]).
    #[inline]
    pub fn redlock(&self, key: impl AsRef<[u8]>, lease: Duration) -> RedLock<B> {
        RedLock::new(self, key, lease)
    }

    /// An [`ExclusiveLock`] on `key` with this lease (same as [`ExclusiveLock::new`]):
    /// a lock for mutual exclusion, whose `acquire` waits until it holds the key.
    #[inline]
    pub fn lock(&self, key: impl AsRef<[u8]>, lease: Duration) -> ExclusiveLock<B> {
        ExclusiveLock::new(self, key, lease)
    }

    /// Begins an [`OptimisticLock`] on `key` (same as [`OptimisticLock::begin`]).
    #[maybe_async]
    pub async fn optimistic_lock(&self, key: impl AsRef<[u8]>) -> Result<OptimisticLock<B>> {
        OptimisticLock::begin(self, key).await
    }
}

/// Builds a [`Cache`] from a URL and options set in code (which win over the URL's).
///
/// ```
/// # #[cfg(feature = "blocking")] {
/// use std::time::Duration;
///
/// let cache = aiolock::blocking::Cache::builder()
///     .namespace("app:")
///     .lock_suffix(":lock")
///     .response_timeout(Duration::from_millis(500))
///     .build("memory://")?;
/// assert_eq!(cache.namespace(), b"app:");
/// assert_eq!(cache.redlock("k", Duration::from_secs(1)).lock_key(), b"app:k:lock");
/// # }
/// # Ok::<(), aiolock::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct CacheBuilder {
    namespace: Option<Vec<u8>>,
    lock_suffix: Option<Vec<u8>>,
    connect_timeout: Option<Duration>,
    response_timeout: Option<Duration>,
    pool_size: Option<usize>,
}

impl CacheBuilder {
    /// A builder with nothing set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The prefix of every key.
    pub fn namespace(mut self, namespace: impl Into<Vec<u8>>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// What a lock key appends to its key (default `-lock`, as in aiocache; the URL
    /// option `lock_suffix`): the lock of `key` is stored under
    /// `namespace + key + suffix`. Give caches that must never contend for the same
    /// lock (two fleets; aiolock beside aiocache) different suffixes.
    ///
    /// Not empty; on memcached, no spaces or control bytes, and the whole lock key at
    /// most 250 bytes. [`build`](CacheBuilder::build) checks it
    /// ([`InvalidArgument`](ErrorKind::InvalidArgument)).
    pub fn lock_suffix(mut self, suffix: impl Into<Vec<u8>>) -> Self {
        self.lock_suffix = Some(suffix.into());
        self
    }

    /// How long to wait for a connection (network backends).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// How long to wait for the answer to one command (network backends).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = Some(timeout);
        self
    }

    /// The connection pool's size: memcached's in both flavors, Redis's blocking flavor
    /// (at most this many command connections, besides one shared subscriber; a caller
    /// waits for a free one within the response timeout). The Redis async flavor
    /// multiplexes one connection.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = Some(size);
        self
    }

    fn options(&self, mut options: Options) -> Result<Options> {
        let positive = |what: &str, d: Option<Duration>| match d {
            Some(d) if d.is_zero() => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("the {what} must be longer than zero"),
            )),
            _ => Ok(d),
        };
        if let Some(ns) = &self.namespace {
            options.namespace.clone_from(ns);
        }
        if let Some(suffix) = &self.lock_suffix {
            options.lock_suffix.clone_from(suffix);
        }
        if let Some(d) = positive("connect timeout", self.connect_timeout)? {
            options.connect_timeout = d;
        }
        if let Some(d) = positive("response timeout", self.response_timeout)? {
            options.response_timeout = d;
        }
        match self.pool_size {
            Some(0) => return Err(Error::invalid_argument("the pool size must be at least 1")),
            Some(n) => options.pool_size = n,
            None => {}
        }
        Ok(options)
    }

    /// Opens the cache `url` names, with these options.
    #[maybe_async]
    pub async fn build(&self, url: &str) -> Result<Cache> {
        let (endpoint, options) = config::parse(url)?;
        let options = self.options(options)?;
        config::check(&endpoint, &options)?;
        let backend = AnyBackend::connect(endpoint, &options).await?;
        Ok(Cache {
            inner: Arc::new(Inner {
                backend,
                namespace: options.namespace,
                lock_suffix: options.lock_suffix,
                background: Background::default(),
                waiters: Waiters::default(),
                watchdog: Watchdog::default(),
            }),
        })
    }
}

/// The backends a URL can name, chosen at run time.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnyBackend {
    /// `memory://`
    Memory(MemoryBackend),
    /// `redis://`, `redis+unix://`, `rediss://`, `redis+cluster://`, `redis+sentinel://`
    /// (feature `redis`)
    #[cfg(feature = "redis")]
    Redis(RedisBackend),
    /// `redis+quorum://h1:p1,h2:p2,h3:p3`, `redis+quorum+unix:///a.sock,/b.sock,/c.sock`
    /// (feature `redis`): a Redlock quorum of independent masters, for locks only (see
    /// [`QuorumBackend`]).
    #[cfg(feature = "redis")]
    RedisQuorum(QuorumBackend),
    /// `memcached://host[:port]`, `memcached+unix:///path` (feature `memcached`): see
    /// [`MemcachedBackend`](super::MemcachedBackend).
    ///
    /// ```no_run
    /// # #[cfg(feature = "blocking")] {
    /// use aiolock::blocking::{AnyBackend, Cache};
    ///
    /// let cache = Cache::from_url("memcached://127.0.0.1:11211?namespace=app:")?;
    /// assert!(matches!(cache.backend(), AnyBackend::Memcached(_)));
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    #[cfg(feature = "memcached")]
    Memcached(super::memcached::MemcachedBackend),
}

impl From<MemoryBackend> for AnyBackend {
    fn from(store: MemoryBackend) -> Self {
        AnyBackend::Memory(store)
    }
}

impl AnyBackend {
    #[maybe_async]
    #[cfg_attr(
        not(any(feature = "memcached", feature = "redis")),
        allow(unused_variables)
    )]
    async fn connect(endpoint: Endpoint, options: &Options) -> Result<Self> {
        match endpoint {
            Endpoint::Memory => Ok(AnyBackend::Memory(MemoryBackend::new())),
            #[cfg(feature = "redis")]
            Endpoint::Redis(url) => Ok(AnyBackend::Redis(
                RedisBackend::connect_with(&url, options).await?,
            )),
            #[cfg(feature = "redis")]
            Endpoint::RedisCluster(seeds) => Ok(AnyBackend::Redis(
                RedisBackend::connect_cluster(&seeds, options).await?,
            )),
            #[cfg(feature = "redis")]
            Endpoint::RedisQuorum {
                nodes,
                node_timeout,
            } => Ok(AnyBackend::RedisQuorum(
                QuorumBackend::connect_with(&nodes, node_timeout, options).await?,
            )),
            #[cfg(feature = "redis")]
            Endpoint::RedisSentinel(sentinel) => Ok(AnyBackend::Redis(
                RedisBackend::connect_sentinel(&sentinel, options).await?,
            )),
            #[cfg(not(feature = "redis"))]
            Endpoint::Redis(_)
            | Endpoint::RedisCluster(_)
            | Endpoint::RedisSentinel(_)
            | Endpoint::RedisQuorum { .. } => Err(not_built("redis")),
            #[cfg(feature = "memcached")]
            Endpoint::Memcached(url) => Ok(AnyBackend::Memcached(
                super::memcached::MemcachedBackend::from_endpoint(&[url], options).await?,
            )),
            #[cfg(feature = "memcached")]
            Endpoint::MemcachedPool(servers) => Ok(AnyBackend::Memcached(
                super::memcached::MemcachedBackend::from_endpoint(&servers, options).await?,
            )),
            #[cfg(not(feature = "memcached"))]
            Endpoint::Memcached(_) | Endpoint::MemcachedPool(_) => Err(not_built("memcached")),
        }
    }
}

#[cfg(not(all(feature = "redis", feature = "memcached")))]
fn not_built(feature: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!("this build of aiolock has no {feature} backend (enable the `{feature}` feature)"),
    )
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            AnyBackend::Memory($b) => maybe_await!($call),
            #[cfg(feature = "redis")]
            AnyBackend::Redis($b) => maybe_await!($call),
            #[cfg(feature = "redis")]
            AnyBackend::RedisQuorum($b) => maybe_await!($call),
            #[cfg(feature = "memcached")]
            AnyBackend::Memcached($b) => maybe_await!($call),
        }
    };
}

#[maybe_async(AFIT)]
impl Backend for AnyBackend {
    fn name(&self) -> &'static str {
        match self {
            AnyBackend::Memory(b) => Backend::name(b),
            #[cfg(feature = "redis")]
            AnyBackend::Redis(b) => Backend::name(b),
            #[cfg(feature = "redis")]
            AnyBackend::RedisQuorum(b) => Backend::name(b),
            #[cfg(feature = "memcached")]
            AnyBackend::Memcached(b) => Backend::name(b),
        }
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        dispatch!(self, b => Backend::get(b, key))
    }

    async fn set(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
        dispatch!(self, b => Backend::set(b, key, value, ttl))
    }

    async fn add(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        dispatch!(self, b => Backend::add(b, key, value, ttl))
    }

    async fn delete(&self, key: &[u8]) -> Result<bool> {
        dispatch!(self, b => Backend::delete(b, key))
    }

    async fn exists(&self, key: &[u8]) -> Result<bool> {
        dispatch!(self, b => Backend::exists(b, key))
    }

    async fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        dispatch!(self, b => Backend::ttl(b, key))
    }

    async fn claim(&self, key: &[u8], token: &[u8], lease: Duration) -> Result<Claim> {
        // (The acquisition keeps a claim's future on the heap.)
        dispatch!(self, b => Backend::claim(b, key, token, lease))
    }

    async fn claim_fenced(
        &self,
        key: &[u8],
        token: &[u8],
        lease: Duration,
        fence_key: &[u8],
    ) -> Result<(Claim, Option<u64>)> {
        dispatch!(self, b => Backend::claim_fenced(b, key, token, lease, fence_key))
    }

    async fn extend(&self, key: &[u8], token: &[u8], lease: Duration) -> Result<bool> {
        dispatch!(self, b => Backend::extend(b, key, token, lease))
    }

    #[inline]
    fn lease_validity(&self, lease: Duration) -> Duration {
        match self {
            #[cfg(feature = "redis")]
            AnyBackend::RedisQuorum(b) => Backend::lease_validity(b, lease),
            _ => lease,
        }
    }

    async fn claim_replicated(
        &self,
        key: &[u8],
        token: &[u8],
        lease: Duration,
        fence_key: Option<&[u8]>,
    ) -> Result<(Claim, Option<u64>, Option<Replication>)> {
        dispatch!(self, b => Backend::claim_replicated(b, key, token, lease, fence_key))
    }

    async fn extend_replicated(
        &self,
        key: &[u8],
        token: &[u8],
        lease: Duration,
    ) -> Result<(bool, Option<Replication>)> {
        dispatch!(self, b => Backend::extend_replicated(b, key, token, lease))
    }

    async fn release(&self, key: &[u8], token: &[u8]) -> Result<bool> {
        dispatch!(self, b => Backend::release(b, key, token))
    }

    #[inline(always)]
    fn try_begin_now(&self, key: &[u8], read: &mut dyn FnMut(Option<&[u8]>)) -> Option<CasToken> {
        match self {
            AnyBackend::Memory(b) => Backend::try_begin_now(b, key, read),
            #[cfg(feature = "redis")]
            AnyBackend::Redis(b) => Backend::try_begin_now(b, key, read),
            #[cfg(feature = "redis")]
            AnyBackend::RedisQuorum(b) => Backend::try_begin_now(b, key, read),
            #[cfg(feature = "memcached")]
            AnyBackend::Memcached(b) => Backend::try_begin_now(b, key, read),
        }
    }

    #[inline(always)]
    fn try_claim_now(
        &self,
        key: &[u8],
        token: &[u8],
        now: Instant,
        lease_end: Instant,
    ) -> Option<Claim> {
        match self {
            AnyBackend::Memory(b) => Backend::try_claim_now(b, key, token, now, lease_end),
            #[cfg(feature = "redis")]
            AnyBackend::Redis(b) => Backend::try_claim_now(b, key, token, now, lease_end),
            #[cfg(feature = "redis")]
            AnyBackend::RedisQuorum(b) => Backend::try_claim_now(b, key, token, now, lease_end),
            #[cfg(feature = "memcached")]
            AnyBackend::Memcached(b) => Backend::try_claim_now(b, key, token, now, lease_end),
        }
    }

    #[inline(always)]
    fn try_release_now(&self, key: &[u8], token: &[u8]) -> Option<bool> {
        match self {
            AnyBackend::Memory(b) => Backend::try_release_now(b, key, token),
            #[cfg(feature = "redis")]
            AnyBackend::Redis(b) => Backend::try_release_now(b, key, token),
            #[cfg(feature = "redis")]
            AnyBackend::RedisQuorum(b) => Backend::try_release_now(b, key, token),
            #[cfg(feature = "memcached")]
            AnyBackend::Memcached(b) => Backend::try_release_now(b, key, token),
        }
    }

    async fn wait(&self, key: &[u8], holder: Option<&[u8]>, deadline: Instant) -> Result<Wake> {
        // Redis's wait keeps its round trips on the heap itself and is no larger than
        // the memory store's while it listens; memcached's polls inline.
        match self {
            AnyBackend::Memory(b) => maybe_await!(Backend::wait(b, key, holder, deadline)),
            #[cfg(feature = "redis")]
            AnyBackend::Redis(b) => maybe_await!(Backend::wait(b, key, holder, deadline)),
            #[cfg(feature = "redis")]
            AnyBackend::RedisQuorum(b) => {
                maybe_await!(rt::boxed(Backend::wait(b, key, holder, deadline)))
            }
            #[cfg(feature = "memcached")]
            AnyBackend::Memcached(b) => {
                maybe_await!(rt::boxed(Backend::wait(b, key, holder, deadline)))
            }
        }
    }

    async fn begin(&self, key: &[u8]) -> Result<Versioned> {
        dispatch!(self, b => Backend::begin(b, key))
    }

    async fn cas(
        &self,
        key: &[u8],
        token: &CasToken,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        dispatch!(self, b => Backend::cas(b, key, token, value, ttl))
    }
}
