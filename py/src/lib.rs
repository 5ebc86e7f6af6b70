//! `aiolock_rs._native`: the extension module of the Python package `aiolock-rs`.
//!
//! Two flavors, as in Rust: the async classes (`Cache`, `LockGuard`,
//! `OptimisticLock`) drive aiolock's async flavor on a tokio runtime and return asyncio
//! awaitables (pyo3-async-runtimes); the `Sync*` classes (exported by
//! `aiolock_rs.sync` under the same names) drive the blocking flavor and release the
//! GIL around every call that can block. The context managers (`RedLock`,
//! `OptimisticLock`, the exclusive lock's `async with`) are thin Python classes in
//! `python/aiolock_rs`, over these.
//!
//! What is shared by both flavors lives here: argument conversion (keys, values,
//! seconds), the mapping of `aiolock::ErrorKind` to the package's exceptions (defined
//! in Python, `aiolock_rs/_types.py`, so that they can also derive from `ValueError`,
//! `TimeoutError`, `ConnectionError`), and the cache options.

use std::time::{Duration, Instant};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple, PyType};

mod aio;
mod bridge;
mod sync;

/// The module that defines the exceptions and `Outcome` (pure Python).
const TYPES: &str = "aiolock_rs._types";

/// A key or a value: `str` (stored as UTF-8) or `bytes`.
pub(crate) struct Bytes(pub Vec<u8>);

impl<'a, 'py> FromPyObject<'a, 'py> for Bytes {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(b) = obj.cast::<PyBytes>() {
            return Ok(Bytes(b.as_bytes().to_vec()));
        }
        if let Ok(s) = obj.cast::<PyString>() {
            return Ok(Bytes(s.to_cow()?.as_bytes().to_vec()));
        }
        Err(PyTypeError::new_err(format!(
            "expected str or bytes, not {}",
            obj.get_type().name()?
        )))
    }
}

/// A number of seconds (int or float) as a `Duration`, checked like aiolock's own
/// (`InvalidArgumentError` for negative, NaN, infinite, sub-nanosecond values).
pub(crate) fn secs(py: Python<'_>, s: f64) -> PyResult<Duration> {
    aiolock::seconds(s).map_err(|e| to_py(py, e))
}

/// An optional TTL: `None` never expires; zero is refused (as in Rust).
pub(crate) fn ttl_arg(py: Python<'_>, ttl: Option<f64>) -> PyResult<Option<Duration>> {
    ttl.map(|t| secs(py, t)).transpose()
}

/// aiolock's `Ttl` for Python: `None` (missing), `math.inf` (no expiry) or seconds.
pub(crate) fn ttl_out(ttl: aiolock::Ttl) -> Option<f64> {
    match ttl {
        aiolock::Ttl::Missing => None,
        aiolock::Ttl::Persistent => Some(f64::INFINITY),
        aiolock::Ttl::Expires(d) => Some(d.as_secs_f64()),
    }
}

/// Seconds left until `end` (0.0 once passed).
pub(crate) fn remaining(end: Instant) -> f64 {
    end.saturating_duration_since(Instant::now()).as_secs_f64()
}

/// The exception class of an `ErrorKind` (`aiolock_rs._types`).
fn exception_name(kind: aiolock::ErrorKind) -> &'static str {
    use aiolock::ErrorKind as K;
    match kind {
        K::InvalidArgument => "InvalidArgumentError",
        K::InvalidKey => "InvalidKeyError",
        K::Conflict => "OptimisticLockError",
        K::Timeout => "BackendTimeoutError",
        K::Connection => "BackendConnectionError",
        K::Protocol => "ProtocolError",
        K::Backend => "BackendError",
        K::Unsupported => "UnsupportedError",
        K::Lost => "LockLostError",
        _ => "AiolockError",
    }
}

/// An aiolock error as the package's exception of its kind (message: one line, no
/// password, as aiolock makes it).
pub(crate) fn to_py(py: Python<'_>, e: aiolock::Error) -> PyErr {
    match py
        .import(TYPES)
        .and_then(|m| m.getattr(exception_name(e.kind())))
        .and_then(|t| Ok(t.cast_into::<PyType>()?))
    {
        Ok(class) => PyErr::from_type(class, e.to_string()),
        Err(import_failed) => import_failed,
    }
}

/// `Outcome.ACQUIRED` / `RELEASED` / `TIMED_OUT` (an `enum.Enum` of `_types`).
pub(crate) fn outcome_py(py: Python<'_>, outcome: aiolock::Outcome) -> PyResult<Py<PyAny>> {
    static OUTCOME: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let class = OUTCOME.import(py, TYPES, "Outcome")?;
    let name = match outcome {
        aiolock::Outcome::Acquired => "ACQUIRED",
        aiolock::Outcome::Released => "RELEASED",
        aiolock::Outcome::TimedOut => "TIMED_OUT",
    };
    Ok(class.getattr(name)?.unbind())
}

/// `module.class(cache, *args, **kwargs)`: the lock classes are Python classes
/// (`aiolock_rs.RedLock`, ...), which `Cache.redlock()` / `lock()` /
/// `optimistic_lock()` build.
pub(crate) fn construct<'py>(
    cache: &Bound<'py, PyAny>,
    module: &str,
    class: &str,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = cache.py();
    let class = py.import(module)?.getattr(class)?;
    let all: Vec<_> = std::iter::once(cache.clone()).chain(args.iter()).collect();
    let args = PyTuple::new(py, all)?;
    class.call(args, kwargs)
}

/// The options of `Cache.from_url` beyond the URL (they win over the URL's).
#[derive(Clone, Default)]
pub(crate) struct Options {
    pub namespace: Option<Vec<u8>>,
    pub lock_suffix: Option<Vec<u8>>,
    pub connect_timeout: Option<Duration>,
    pub response_timeout: Option<Duration>,
    pub pool_size: Option<usize>,
}

impl Options {
    pub(crate) fn new(
        py: Python<'_>,
        namespace: Option<Bytes>,
        lock_suffix: Option<Bytes>,
        connect_timeout: Option<f64>,
        response_timeout: Option<f64>,
        pool_size: Option<usize>,
    ) -> PyResult<Self> {
        Ok(Options {
            namespace: namespace.map(|b| b.0),
            lock_suffix: lock_suffix.map(|b| b.0),
            connect_timeout: connect_timeout.map(|s| secs(py, s)).transpose()?,
            response_timeout: response_timeout.map(|s| secs(py, s)).transpose()?,
            pool_size,
        })
    }

    /// The async flavor's builder with these options.
    pub(crate) fn builder(&self) -> aiolock::CacheBuilder {
        configure!(aiolock::CacheBuilder::new(), self)
    }

    /// The blocking flavor's builder with these options.
    pub(crate) fn blocking_builder(&self) -> aiolock::blocking::CacheBuilder {
        configure!(aiolock::blocking::CacheBuilder::new(), self)
    }
}

/// Sets `options` on a builder of either flavor (the two builders are distinct types
/// with the same methods).
macro_rules! configure {
    ($builder:expr, $options:expr) => {{
        let (mut b, o) = ($builder, $options);
        if let Some(ns) = &o.namespace {
            b = b.namespace(ns.clone());
        }
        if let Some(s) = &o.lock_suffix {
            b = b.lock_suffix(s.clone());
        }
        if let Some(d) = o.connect_timeout {
            b = b.connect_timeout(d);
        }
        if let Some(d) = o.response_timeout {
            b = b.response_timeout(d);
        }
        if let Some(n) = o.pool_size {
            b = b.pool_size(n);
        }
        b
    }};
}
use configure;

/// The arguments of an acquisition, checked before anything is sent.
#[derive(Clone)]
pub(crate) struct LockArgs {
    pub key: Vec<u8>,
    pub lease: Duration,
    /// The caller's wait bound (default: the lease).
    pub wait: Option<Duration>,
    pub fenced: bool,
    pub exclusive: bool,
    /// Renew the lease in the background while held.
    pub watchdog: bool,
}

impl LockArgs {
    pub(crate) fn new(
        py: Python<'_>,
        key: Bytes,
        lease: f64,
        wait: Option<f64>,
        fenced: bool,
        exclusive: bool,
        watchdog: bool,
    ) -> PyResult<Self> {
        Ok(LockArgs {
            key: key.0,
            lease: secs(py, lease)?,
            wait: wait.map(|w| secs(py, w)).transpose()?,
            fenced,
            exclusive,
            watchdog,
        })
    }
}

/// The error of a second `cas` on one optimistic lock.
pub(crate) fn used_twice() -> aiolock::Error {
    aiolock::Error::new(
        aiolock::ErrorKind::Conflict,
        "this optimistic lock already called cas: begin a new one",
    )
}

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The async flavor's runtime (pyo3-async-runtimes' tokio runtime): multi-thread,
    // `AIOLOCK_RS_WORKER_THREADS` workers (default: one per core).
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name("aiolock-rs");
    if let Some(n) = std::env::var("AIOLOCK_RS_WORKER_THREADS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        runtime.worker_threads(n);
    }
    pyo3_async_runtimes::tokio::init(runtime);
    m.add_class::<aio::Cache>()?;
    m.add_class::<aio::LockGuard>()?;
    m.add_class::<aio::OptimisticLock>()?;
    let py = m.py();
    m.add("SyncCache", py.get_type::<sync::Cache>())?;
    m.add("SyncLockGuard", py.get_type::<sync::LockGuard>())?;
    m.add("SyncOptimisticLock", py.get_type::<sync::OptimisticLock>())?;
    m.add("SYNC_WAIT_SLICE", sync::WAIT_SLICE.as_secs_f64())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
