//! The synchronous classes (`aiolock_rs.sync`): aiolock's blocking flavor, with the
//! GIL released around every call that can block, so that other Python threads run
//! meanwhile.
//!
//! # Waits and `KeyboardInterrupt`
//!
//! A blocking wait of the Rust flavor cannot be interrupted. So an acquisition that
//! may wait longer than [`WAIT_SLICE`] waits in slices: each slice is one blocking
//! acquisition bounded by `min(slice, bound left)`; between two slices the GIL is
//! taken back and `PyErr_CheckSignals` runs the signal handlers, so Ctrl-C raises
//! `KeyboardInterrupt` within a slice (nothing is held then: a slice that ended
//! without the lock holds nothing). What the slices change, and why it is safe: a
//! RedLock release that falls in the microseconds between two slices is seen by the
//! next slice's claim as a free lock, so that caller gets `ACQUIRED` (it holds the
//! lock and computes, after re-reading the cache as aiocache's pattern does) rather
//! than `RELEASED`. Each slice costs one claim and one re-check of the holder (Redis:
//! a SET and a PTTL, every 100 ms per waiter).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use aiolock::blocking;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::{Bytes, LockArgs, Options, remaining, to_py, ttl_arg, ttl_out};

/// The longest blocking wait between two checks for signals.
pub const WAIT_SLICE: Duration = Duration::from_millis(100);

/// The synchronous cache (`aiolock_rs.sync.Cache`).
///
/// ```python
/// from aiolock_rs.sync import Cache
/// cache = Cache.from_url("memory://?namespace=app:")
/// cache.set("k", b"v", ttl=60)
/// assert cache.get("k") == b"v"
/// ```
#[pyclass(frozen, module = "aiolock_rs.sync", name = "Cache")]
pub struct Cache {
    pub(crate) inner: blocking::Cache,
}

#[pymethods]
impl Cache {
    /// Opens the cache a URL names (same URLs and options as aiolock in Rust);
    /// keyword options win over the URL's.
    #[staticmethod]
    #[pyo3(signature = (url, *, namespace=None, lock_suffix=None, connect_timeout=None, response_timeout=None, pool_size=None))]
    fn from_url(
        py: Python<'_>,
        url: String,
        namespace: Option<Bytes>,
        lock_suffix: Option<Bytes>,
        connect_timeout: Option<f64>,
        response_timeout: Option<f64>,
        pool_size: Option<usize>,
    ) -> PyResult<Self> {
        let options = Options::new(
            py,
            namespace,
            lock_suffix,
            connect_timeout,
            response_timeout,
            pool_size,
        )?;
        let inner = py
            .detach(|| options.blocking_builder().build(&url))
            .map_err(|e| to_py(py, e))?;
        Ok(Cache { inner })
    }

    /// A new, empty in-process cache (`memory://`).
    #[staticmethod]
    fn memory() -> Self {
        Cache {
            inner: blocking::Cache::memory(),
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
        blocking::Backend::name(self.inner.backend())
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
        crate::construct(slf.as_any(), "aiolock_rs.sync", "RedLock", args, kwargs)
    }

    /// `ExclusiveLock(self, key, lease, *, wait=None, fenced=False, watchdog=False)`:
    /// an exclusive lock.
    #[pyo3(signature = (*args, **kwargs))]
    fn lock<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::construct(
            slf.as_any(),
            "aiolock_rs.sync",
            "ExclusiveLock",
            args,
            kwargs,
        )
    }

    /// `OptimisticLock(self, key)`.
    #[pyo3(signature = (*args, **kwargs))]
    fn optimistic_lock<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::construct(
            slf.as_any(),
            "aiolock_rs.sync",
            "OptimisticLock",
            args,
            kwargs,
        )
    }

    /// How many callers of this cache (this process) wait for the lock on `key` now.
    fn waiting(&self, key: Bytes) -> usize {
        self.inner.waiting(key.0)
    }

    /// Waits until every release this cache runs in the background is done.
    fn flush(&self, py: Python<'_>) {
        py.detach(|| self.inner.flush());
    }

    /// The value of `key` (`bytes`), or `None`.
    fn get(&self, py: Python<'_>, key: Bytes) -> PyResult<Option<Vec<u8>>> {
        py.detach(|| self.inner.get(key.0))
            .map_err(|e| to_py(py, e))
    }

    /// Stores `value` under `key`, expiring after `ttl` seconds (never for `None`).
    #[pyo3(signature = (key, value, ttl=None))]
    fn set(&self, py: Python<'_>, key: Bytes, value: Bytes, ttl: Option<f64>) -> PyResult<()> {
        let ttl = ttl_arg(py, ttl)?;
        py.detach(|| self.inner.set(key.0, value.0, ttl))
            .map_err(|e| to_py(py, e))
    }

    /// Stores `value` only if `key` is absent; returns whether it did.
    #[pyo3(signature = (key, value, ttl=None))]
    fn add(&self, py: Python<'_>, key: Bytes, value: Bytes, ttl: Option<f64>) -> PyResult<bool> {
        let ttl = ttl_arg(py, ttl)?;
        py.detach(|| self.inner.add(key.0, value.0, ttl))
            .map_err(|e| to_py(py, e))
    }

    /// Removes `key`; returns whether it was present.
    fn delete(&self, py: Python<'_>, key: Bytes) -> PyResult<bool> {
        py.detach(|| self.inner.delete(key.0))
            .map_err(|e| to_py(py, e))
    }

    /// Whether `key` is present.
    fn exists(&self, py: Python<'_>, key: Bytes) -> PyResult<bool> {
        py.detach(|| self.inner.exists(key.0))
            .map_err(|e| to_py(py, e))
    }

    /// Seconds `key` has left: `None` when missing, `math.inf` when it never expires.
    fn ttl(&self, py: Python<'_>, key: Bytes) -> PyResult<Option<f64>> {
        let ttl = py
            .detach(|| self.inner.ttl(key.0))
            .map_err(|e| to_py(py, e))?;
        Ok(ttl_out(ttl))
    }

    /// Acquires a RedLock (`exclusive=False`: always a guard) or an exclusive lock (a
    /// guard holding it, or `None`), waiting in slices of `SYNC_WAIT_SLICE` seconds
    /// between which signals are handled (Ctrl-C raises `KeyboardInterrupt`).
    #[pyo3(signature = (key, lease, wait=None, fenced=false, exclusive=false, watchdog=false))]
    #[allow(clippy::too_many_arguments)]
    fn _acquire(
        &self,
        py: Python<'_>,
        key: Bytes,
        lease: f64,
        wait: Option<f64>,
        fenced: bool,
        exclusive: bool,
        watchdog: bool,
    ) -> PyResult<Option<LockGuard>> {
        let args = LockArgs::new(py, key, lease, wait, fenced, exclusive, watchdog)?;
        let bound = args.wait.unwrap_or(args.lease);
        let start = Instant::now();
        loop {
            let left = bound.saturating_sub(start.elapsed());
            let slice = left.min(WAIT_SLICE);
            let last = slice == left;
            let held = py
                .detach(|| acquire(&self.inner, &args, slice))
                .map_err(|e| to_py(py, e))?;
            let waited_in_vain = match &held {
                None => true,
                Some(Held::Red(g)) => g.outcome() == aiolock::Outcome::TimedOut,
                Some(Held::Exclusive(_)) => false,
            };
            if last || !waited_in_vain {
                return Ok(held.map(|h| LockGuard::new(h, args.exclusive)));
            }
            // Nothing is held here: a KeyboardInterrupt leaves nothing behind.
            drop(held);
            py.check_signals()?;
        }
    }

    /// Begins an optimistic lock on `key`. Used by `OptimisticLock`.
    fn _begin(&self, py: Python<'_>, key: Bytes) -> PyResult<OptimisticLock> {
        let lock = py
            .detach(|| self.inner.optimistic_lock(key.0))
            .map_err(|e| to_py(py, e))?;
        Ok(OptimisticLock {
            value: lock.value().map(<[u8]>::to_vec),
            lock: Mutex::new(Some(lock)),
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "<aiolock_rs.sync.Cache {} namespace={:?}>",
            self.backend(),
            String::from_utf8_lossy(self.inner.namespace())
        )
    }
}

/// What an acquisition holds: a RedLock's guard (any outcome) or an exclusive one.
enum Held {
    Red(blocking::LockGuard),
    Exclusive(blocking::ExclusiveGuard),
}

/// One blocking acquisition whose wait is bounded by `slice`.
fn acquire(
    cache: &blocking::Cache,
    args: &LockArgs,
    slice: Duration,
) -> aiolock::Result<Option<Held>> {
    if args.exclusive {
        let mut lock = cache.lock(&args.key, args.lease).wait_at_most(slice);
        if args.fenced {
            lock = lock.fenced();
        }
        if args.watchdog {
            lock = lock.watchdog();
        }
        Ok(lock.acquire()?.map(Held::Exclusive))
    } else {
        let mut lock = cache.redlock(&args.key, args.lease).wait_at_most(slice);
        if args.fenced {
            lock = lock.fenced();
        }
        if args.watchdog {
            lock = lock.watchdog();
        }
        Ok(Some(Held::Red(lock.acquire()?)))
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

    fn watch(&self) -> Option<blocking::Watch> {
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

    fn extend(&mut self, lease: Duration) -> aiolock::Result<()> {
        match self {
            Held::Red(g) => g.extend(lease),
            Held::Exclusive(g) => g.extend(lease),
        }
    }

    fn release(self) -> aiolock::Result<bool> {
        match self {
            Held::Red(g) => g.release(),
            Held::Exclusive(g) => g.release(),
        }
    }
}

/// The result of a synchronous acquisition (`aiolock_rs.sync`).
#[pyclass(frozen, module = "aiolock_rs.sync", name = "LockGuard")]
pub struct LockGuard {
    held: Mutex<Option<Held>>,
    outcome: aiolock::Outcome,
    token: Option<String>,
    fence: Option<u64>,
    lease_end: Mutex<Option<Instant>>,
    exclusive: bool,
    /// The watchdog's handle, when acquired with `watchdog=True`.
    watch: Option<blocking::Watch>,
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
            held: Mutex::new(acquired.then_some(held)),
            exclusive,
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // The blocking guard releases on drop, a round trip: not with the GIL held.
        if let Some(held) = self.held.get_mut().unwrap().take() {
            Python::attach(|py| py.detach(move || drop(held)));
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
    fn extend(&self, py: Python<'_>, lease: f64) -> PyResult<()> {
        let lease = crate::secs(py, lease)?;
        py.detach(|| {
            let mut held = self.held.lock().unwrap();
            let Some(h) = held.as_mut() else {
                return Err(aiolock::Error::new(
                    aiolock::ErrorKind::Lost,
                    "this guard does not hold the lock (released, or never acquired)",
                ));
            };
            let extended = h.extend(lease);
            *self.lease_end.lock().unwrap() = h.lease_end();
            extended
        })
        .map_err(|e| to_py(py, e))
    }

    /// Releases the lock if held (owner-checked). Returns whether it removed the lock
    /// key: `False` when the lease had already ended, or when not held.
    fn release(&self, py: Python<'_>) -> PyResult<bool> {
        py.detach(|| {
            let Some(held) = self.held.lock().unwrap().take() else {
                return Ok(false);
            };
            *self.lease_end.lock().unwrap() = None;
            held.release()
        })
        .map_err(|e| to_py(py, e))
    }

    fn __repr__(&self) -> String {
        format!("<aiolock_rs.sync.LockGuard {:?}>", self.outcome)
    }
}

/// An optimistic lock begun on a key (`aiolock_rs.sync`).
#[pyclass(frozen, module = "aiolock_rs.sync", name = "OptimisticLockState")]
pub struct OptimisticLock {
    lock: Mutex<Option<blocking::OptimisticLock>>,
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
    fn cas(&self, py: Python<'_>, value: Bytes, ttl: Option<f64>) -> PyResult<()> {
        let ttl = ttl_arg(py, ttl)?;
        let Some(lock) = self.lock.lock().unwrap().take() else {
            return Err(to_py(py, crate::used_twice()));
        };
        py.detach(|| lock.cas(value.0, ttl))
            .map_err(|e| to_py(py, e))
    }
}
