//! The async classes: aiolock's async flavor, its futures polled on the event loop's
//! thread (see `bridge`) inside pyo3-async-runtimes' tokio runtime's context. Every
//! method that talks to the backend returns an asyncio awaitable.
//!
//! Cancelling the asyncio task that awaits one drops the Rust future (inside the
//! runtime's context), and aiolock's async flavor is cancel-safe: a dropped acquisition leaves
//! no lock key and no subscription behind. A guard that reaches Python after its
//! awaitable was cancelled, or that Python drops while it holds the lock, releases on
//! drop: the drop enters the runtime first (aiolock's async guards release on a
//! spawned task and need a runtime to do so).

use std::sync::Mutex;
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3_async_runtimes::tokio::get_runtime;

use crate::{Bytes, LockArgs, Options, remaining, to_py, ttl_arg, ttl_out};

/// A cache (memory, Redis or memcached, chosen by URL) with an optional namespace.
///
/// ```python
/// cache = await Cache.from_url("redis://127.0.0.1:6379/0?namespace=app:")
/// await cache.set("k", b"v", ttl=60)
/// assert await cache.get("k") == b"v"
/// ```
#[pyclass(frozen, module = "aiolock_rs", name = "Cache")]
pub struct Cache {
    pub(crate) inner: aiolock::Cache,
}

#[pymethods]
impl Cache {
    /// Opens the cache a URL names (same URLs and options as aiolock in Rust);
    /// keyword options win over the URL's.
    #[staticmethod]
    #[pyo3(signature = (url, *, namespace=None, lock_suffix=None, connect_timeout=None, response_timeout=None, pool_size=None))]
    fn from_url<'py>(
        py: Python<'py>,
        url: String,
        namespace: Option<Bytes>,
        lock_suffix: Option<Bytes>,
        connect_timeout: Option<f64>,
        response_timeout: Option<f64>,
        pool_size: Option<usize>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = Options::new(
            py,
            namespace,
            lock_suffix,
            connect_timeout,
            response_timeout,
            pool_size,
        )?;
        crate::bridge::spawn(py, async move {
            let inner = options.builder().build(&url).await?;
            Ok(Cache { inner })
        })
    }

    /// A new, empty in-process cache (`memory://`).
    #[staticmethod]
    fn memory() -> Self {
        Cache {
            inner: aiolock::Cache::memory(),
        }
    }

    /// The prefix of every key.
    #[getter]
    fn namespace(&self) -> Vec<u8> {
        self.inner.namespace().to_vec()
    }

    /// What a lock key appends to its key (`-lock` unless set).
    #[getter]
    fn lock_suffix(&self) -> Vec<u8> {
        self.inner.lock_suffix().to_vec()
    }

    /// The backend's name: `"memory"`, `"redis"` or `"memcached"`.
    #[getter]
    fn backend(&self) -> &'static str {
        aiolock::Backend::name(self.inner.backend())
    }

    /// A cache over the same connections whose locks are stored under
    /// `namespace + key + suffix`.
    fn with_lock_suffix(&self, py: Python<'_>, suffix: Bytes) -> PyResult<Self> {
        let inner = self
            .inner
            .with_lock_suffix(suffix.0)
            .map_err(|e| to_py(py, e))?;
        Ok(Cache { inner })
    }

    /// `RedLock(self, key, lease, *, wait=None, fenced=False)`.
    #[pyo3(signature = (*args, **kwargs))]
    fn redlock<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::construct(slf.as_any(), "aiolock_rs", "RedLock", args, kwargs)
    }

    /// `ExclusiveLock(self, key, lease, *, wait=None, fenced=False, watchdog=False)`:
    /// an exclusive lock.
    #[pyo3(signature = (*args, **kwargs))]
    fn lock<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::construct(slf.as_any(), "aiolock_rs", "ExclusiveLock", args, kwargs)
    }

    /// `OptimisticLock(self, key)`.
    #[pyo3(signature = (*args, **kwargs))]
    fn optimistic_lock<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::construct(slf.as_any(), "aiolock_rs", "OptimisticLock", args, kwargs)
    }

    /// How many callers of this cache (this process) wait for the lock on `key` now.
    fn waiting(&self, key: Bytes) -> usize {
        self.inner.waiting(key.0)
    }

    /// Waits until every release this cache runs in the background is done.
    fn flush<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let cache = self.inner.clone();
        crate::bridge::spawn(py, async move {
            cache.flush().await;
            Ok::<_, aiolock::Error>(())
        })
    }

    /// The value of `key` (`bytes`), or `None`.
    fn get<'py>(&self, py: Python<'py>, key: Bytes) -> PyResult<Bound<'py, PyAny>> {
        let cache = self.inner.clone();
        crate::bridge::spawn(py, async move { cache.get(key.0).await })
    }

    /// Stores `value` under `key`, expiring after `ttl` seconds (never for `None`).
    #[pyo3(signature = (key, value, ttl=None))]
    fn set<'py>(
        &self,
        py: Python<'py>,
        key: Bytes,
        value: Bytes,
        ttl: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let ttl = ttl_arg(py, ttl)?;
        let cache = self.inner.clone();
        crate::bridge::spawn(py, async move { cache.set(key.0, value.0, ttl).await })
    }

    /// Stores `value` only if `key` is absent; returns whether it did.
    #[pyo3(signature = (key, value, ttl=None))]
    fn add<'py>(
        &self,
        py: Python<'py>,
        key: Bytes,
        value: Bytes,
        ttl: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let ttl = ttl_arg(py, ttl)?;
        let cache = self.inner.clone();
        crate::bridge::spawn(py, async move { cache.add(key.0, value.0, ttl).await })
    }

    /// Removes `key`; returns whether it was present.
    fn delete<'py>(&self, py: Python<'py>, key: Bytes) -> PyResult<Bound<'py, PyAny>> {
        let cache = self.inner.clone();
        crate::bridge::spawn(py, async move { cache.delete(key.0).await })
    }

    /// Whether `key` is present.
    fn exists<'py>(&self, py: Python<'py>, key: Bytes) -> PyResult<Bound<'py, PyAny>> {
        let cache = self.inner.clone();
        crate::bridge::spawn(py, async move { cache.exists(key.0).await })
    }

    /// Seconds `key` has left: `None` when missing, `math.inf` when it never expires.
    fn ttl<'py>(&self, py: Python<'py>, key: Bytes) -> PyResult<Bound<'py, PyAny>> {
        let cache = self.inner.clone();
        crate::bridge::spawn(py, async move {
            let ttl = cache.ttl(key.0).await?;
            Ok(ttl_out(ttl))
        })
    }

    /// Acquires a RedLock (`exclusive=False`: always a guard, whatever the outcome) or
    /// an exclusive lock (a guard holding it, or `None` when the bound passed). Used
    /// by `RedLock` and `ExclusiveLock`.
    #[pyo3(signature = (key, lease, wait=None, fenced=false, exclusive=false, watchdog=false))]
    #[allow(clippy::too_many_arguments)]
    fn _acquire<'py>(
        &self,
        py: Python<'py>,
        key: Bytes,
        lease: f64,
        wait: Option<f64>,
        fenced: bool,
        exclusive: bool,
        watchdog: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = LockArgs::new(py, key, lease, wait, fenced, exclusive, watchdog)?;
        let cache = self.inner.clone();
        crate::bridge::spawn(py, async move {
            let held = acquire(&cache, &args).await?;
            Ok(held.map(|held| LockGuard::new(held, args.exclusive)))
        })
    }

    /// Begins an optimistic lock on `key`. Used by `OptimisticLock`.
    fn _begin<'py>(&self, py: Python<'py>, key: Bytes) -> PyResult<Bound<'py, PyAny>> {
        let cache = self.inner.clone();
        crate::bridge::spawn(py, async move {
            let lock = cache.optimistic_lock(key.0).await?;
            Ok(OptimisticLock {
                value: lock.value().map(<[u8]>::to_vec),
                lock: Mutex::new(Some(lock)),
            })
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "<aiolock_rs.Cache {} namespace={:?}>",
            self.backend(),
            String::from_utf8_lossy(self.inner.namespace())
        )
    }
}

/// What an acquisition holds: a RedLock's guard (any outcome) or an exclusive one.
enum Held {
    Red(aiolock::LockGuard),
    Exclusive(aiolock::ExclusiveGuard),
}

async fn acquire(cache: &aiolock::Cache, args: &LockArgs) -> aiolock::Result<Option<Held>> {
    if args.exclusive {
        let mut lock = cache.lock(&args.key, args.lease);
        if let Some(w) = args.wait {
            lock = lock.wait_at_most(w);
        }
        if args.fenced {
            lock = lock.fenced();
        }
        if args.watchdog {
            lock = lock.watchdog();
        }
        Ok(lock.acquire().await?.map(Held::Exclusive))
    } else {
        let mut lock = cache.redlock(&args.key, args.lease);
        if let Some(w) = args.wait {
            lock = lock.wait_at_most(w);
        }
        if args.fenced {
            lock = lock.fenced();
        }
        if args.watchdog {
            lock = lock.watchdog();
        }
        Ok(Some(Held::Red(lock.acquire().await?)))
    }
}

impl Held {
    fn outcome(&self) -> aiolock::Outcome {
        match self {
            Held::Red(g) => g.outcome(),
            Held::Exclusive(_) => aiolock::Outcome::Acquired,
        }
    }

    fn token(&self) -> Option<String> {
        match self {
            Held::Red(g) => g.token().map(ToString::to_string),
            Held::Exclusive(g) => Some(g.token().to_string()),
        }
    }

    fn fence(&self) -> Option<u64> {
        match self {
            Held::Red(g) => g.fence(),
            Held::Exclusive(g) => g.fence(),
        }
    }

    fn watch(&self) -> Option<aiolock::Watch> {
        match self {
            Held::Red(g) => g.watch(),
            Held::Exclusive(g) => g.watch(),
        }
    }

    fn lease_end(&self) -> Option<Instant> {
        match self {
            Held::Red(g) => g.lease_end(),
            Held::Exclusive(g) => g.lease_end(),
        }
    }

    async fn extend(&mut self, lease: std::time::Duration) -> aiolock::Result<()> {
        match self {
            Held::Red(g) => g.extend(lease).await,
            Held::Exclusive(g) => g.extend(lease).await,
        }
    }

    async fn release(self) -> aiolock::Result<bool> {
        match self {
            Held::Red(g) => g.release().await,
            Held::Exclusive(g) => g.release().await,
        }
    }
}

/// The result of an acquisition: how it ended and, while it holds the lock, the
/// handle that extends and releases it. Made by `RedLock` and `ExclusiveLock`.
#[pyclass(frozen, module = "aiolock_rs", name = "LockGuard")]
pub struct LockGuard {
    /// `None` once released (or when it never held the lock).
    held: tokio::sync::Mutex<Option<Held>>,
    outcome: aiolock::Outcome,
    token: Option<String>,
    fence: Option<u64>,
    /// The lease end last known, `None` once released.
    lease_end: Mutex<Option<Instant>>,
    exclusive: bool,
    /// The watchdog's handle, when acquired with `watchdog=True`.
    watch: Option<aiolock::Watch>,
}

impl LockGuard {
    fn new(held: Held, exclusive: bool) -> Self {
        let acquired = held.outcome().is_acquired();
        LockGuard {
            outcome: held.outcome(),
            token: held.token(),
            fence: held.fence(),
            watch: held.watch(),
            lease_end: Mutex::new(held.lease_end()),
            held: tokio::sync::Mutex::new(acquired.then_some(held)),
            exclusive,
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // aiolock's async guard releases a dropped lock on a spawned task: give it the
        // runtime (Python drops this on its own thread).
        if let Some(held) = self.held.get_mut().take() {
            let _runtime = get_runtime().enter();
            drop(held);
        }
    }
}

#[pymethods]
impl LockGuard {
    /// How the acquisition ended: `Outcome.ACQUIRED`, `RELEASED` or `TIMED_OUT`.
    #[getter]
    fn outcome(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        crate::outcome_py(py, self.outcome)
    }

    /// Whether this caller acquired the lock.
    #[getter]
    fn acquired(&self) -> bool {
        self.outcome.is_acquired()
    }

    /// Whether this is an exclusive lock's guard.
    #[getter]
    fn exclusive(&self) -> bool {
        self.exclusive
    }

    /// The token stored under the lock key (hex), when acquired.
    #[getter]
    fn token(&self) -> Option<String> {
        self.token.clone()
    }

    /// The fencing token of this acquisition, when the lock was fenced and acquired.
    #[getter]
    fn fence(&self) -> Option<u64> {
        self.fence
    }

    /// With `watchdog=True`: whether the lock is lost (a renewal failed or found it
    /// another caller's, or none was confirmed in time), or released. `False` for a
    /// guard without watchdog.
    #[getter]
    fn lost(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| w.check().is_err())
    }

    /// With `watchdog=True`: raises `LockLostError` (with the reason) once the lock
    /// is lost or released; call it between steps of long work. No I/O. Does nothing
    /// for a guard without watchdog.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        match &self.watch {
            Some(w) => w.check().map_err(|e| to_py(py, e)),
            None => Ok(()),
        }
    }

    /// Seconds until the lease ends at the earliest, while held; `None` once
    /// released or when not acquired.
    #[getter]
    fn lease_remaining(&self) -> Option<f64> {
        let end = *self.lease_end.lock().unwrap();
        // A watched lease moves with each renewal the watchdog confirmed.
        end.map(|end| self.watch.as_ref().map_or(end, |w| w.lease_end().max(end)))
            .map(remaining)
    }

    /// Renews the lease, owner-checked: it now ends `lease` seconds from now.
    /// Raises `LockLostError` when the lock is no longer ours.
    fn extend<'py>(slf: Py<Self>, py: Python<'py>, lease: f64) -> PyResult<Bound<'py, PyAny>> {
        let lease = crate::secs(py, lease)?;
        crate::bridge::spawn(py, async move {
            let this = slf.get();
            let mut held = this.held.lock().await;
            let Some(h) = held.as_mut() else {
                return Err(aiolock::Error::new(
                    aiolock::ErrorKind::Lost,
                    "this guard does not hold the lock (released, or never acquired)",
                ));
            };
            let extended = h.extend(lease).await;
            *this.lease_end.lock().unwrap() = h.lease_end();
            extended
        })
    }

    /// Releases the lock if held (owner-checked). Returns whether it removed the lock
    /// key: `False` when the lease had already ended, or when not held.
    fn release<'py>(slf: Py<Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        crate::bridge::spawn(py, async move {
            let this = slf.get();
            let Some(held) = this.held.lock().await.take() else {
                return Ok(false);
            };
            *this.lease_end.lock().unwrap() = None;
            held.release().await
        })
    }

    fn __repr__(&self) -> String {
        format!("<aiolock_rs.LockGuard {:?}>", self.outcome)
    }
}

/// An optimistic lock begun on a key: the value read, and `cas`. Made by
/// `OptimisticLock`.
#[pyclass(frozen, module = "aiolock_rs", name = "OptimisticLockState")]
pub struct OptimisticLock {
    lock: Mutex<Option<aiolock::OptimisticLock>>,
    value: Option<Vec<u8>>,
}

#[pymethods]
impl OptimisticLock {
    /// The value read when the lock began (`None`: the key was absent).
    #[getter]
    fn value(&self) -> Option<Vec<u8>> {
        self.value.clone()
    }

    /// Writes `value` if the key has not changed since the lock began, else raises
    /// `OptimisticLockError`. Once only: a second call raises it too.
    #[pyo3(signature = (value, ttl=None))]
    fn cas<'py>(
        &self,
        py: Python<'py>,
        value: Bytes,
        ttl: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let ttl = ttl_arg(py, ttl)?;
        let Some(lock) = self.lock.lock().unwrap().take() else {
            return Err(crate::to_py(py, crate::used_twice()));
        };
        crate::bridge::spawn(py, async move { lock.cas(value.0, ttl).await })
    }
}
