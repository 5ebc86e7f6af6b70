//! asyncio awaitables over tokio futures, completed in batches on the event loop.
//!
//! pyo3-async-runtimes' `future_into_py` completes each future by taking the GIL on
//! a blocking-pool thread and calling `loop.call_soon_threadsafe`: per await a hop
//! to a blocking thread, a GIL hand-over and a self-pipe write. Here a completed
//! future posts its result to a queue of its event loop instead, and only the post
//! that finds the queue empty writes one byte to a pipe the loop watches
//! (`add_reader`); the loop's reader drains the whole queue with the GIL it already
//! holds. No tokio thread ever waits for the GIL, and 64 completions cost one wake-up
//! when they come together. The runtime is pyo3-async-runtimes' tokio runtime.
//!
//! Every future is first polled once inline, on the calling thread (inside the
//! runtime's context): a memory-backend call completes there without any thread
//! hop, and a network call has queued its request before the task is spawned.
//!
//! Cancellation: the asyncio future gets a done-callback that aborts the tokio task
//! when the future was cancelled, which drops the Rust future on the runtime (aiolock
//! is cancel-safe: no lock key, no subscription, no waiter count is left). A result
//! that arrives for a cancelled future is dropped inside the runtime's context, so a
//! guard in it releases its lock.

use std::future::Future;
use std::io::{PipeReader, PipeWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::{IntoPyObjectExt, intern};
use pyo3_async_runtimes::tokio::get_runtime;

/// Turns a finished future's output into the Python result, with the GIL.
type Deliver = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

struct Done {
    future: Py<PyAny>,
    deliver: Deliver,
}

struct Queue {
    done: Mutex<Vec<Done>>,
    wake: PipeWriter,
}

impl Queue {
    fn post(&self, done: Done) {
        let was_empty = {
            let mut queue = self.done.lock().unwrap();
            let was_empty = queue.is_empty();
            queue.push(done);
            was_empty
        };
        // One byte per empty-to-busy transition: the drain that follows takes every
        // result posted until then. (A full pipe cannot happen: the drain reads every
        // byte; and a byte that fails to go means a wake-up is pending anyway.)
        if was_empty {
            let _ = (&self.wake).write(&[1]);
        }
    }
}

/// The completion queue of one asyncio event loop (stored on the loop).
#[pyclass(frozen, module = "aiolock_rs._native")]
pub struct Bridge {
    queue: Arc<Queue>,
    reader: Mutex<PipeReader>,
}

fn set_nonblocking(fd: i32) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Bridge {
    fn new() -> std::io::Result<Self> {
        let (reader, writer) = std::io::pipe()?;
        set_nonblocking(reader.as_raw_fd())?;
        set_nonblocking(writer.as_raw_fd())?;
        Ok(Bridge {
            queue: Arc::new(Queue {
                done: Mutex::new(Vec::new()),
                wake: writer,
            }),
            reader: Mutex::new(reader),
        })
    }
}

#[pymethods]
impl Bridge {
    /// The loop's reader callback: completes every future whose result was posted.
    fn _drain(&self, py: Python<'_>) {
        let mut buf = [0u8; 64];
        let mut reader = self.reader.lock().unwrap();
        while let Ok(n) = reader.read(&mut buf) {
            if n < buf.len() {
                break;
            }
        }
        drop(reader);
        let done = std::mem::take(&mut *self.queue.done.lock().unwrap());
        // A result dropped here (its future was cancelled) may be a guard that
        // releases on drop: on aiolock's async flavor that needs the runtime.
        let _runtime = get_runtime().enter();
        for Done { future, deliver } in done {
            let future = future.bind(py);
            let cancelled = future
                .call_method0(intern!(py, "cancelled"))
                .and_then(|c| c.is_truthy())
                .unwrap_or(true);
            if cancelled {
                continue;
            }
            let _ = match deliver(py) {
                Ok(value) => future.call_method1(intern!(py, "set_result"), (value,)),
                Err(e) => future.call_method1(intern!(py, "set_exception"), (e.into_value(py),)),
            };
        }
    }
}

/// The asyncio future's done-callback: aborts the tokio task if it was cancelled.
#[pyclass(frozen, module = "aiolock_rs._native")]
struct AbortOnCancel {
    handle: tokio::task::AbortHandle,
}

#[pymethods]
impl AbortOnCancel {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future
            .call_method0(intern!(future.py(), "cancelled"))?
            .is_truthy()?
        {
            self.handle.abort();
        }
        Ok(())
    }
}

/// The running loop and its bridge (made and registered on first use).
fn bridge_for(py: Python<'_>) -> PyResult<(Bound<'_, PyAny>, Bound<'_, Bridge>)> {
    static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static FALLBACK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let event_loop = GET_RUNNING_LOOP
        .import(py, "asyncio", "get_running_loop")?
        .call0()?;
    let attr = intern!(py, "_aiolock_rs_bridge");
    if let Ok(bridge) = event_loop.getattr(attr)
        && let Ok(bridge) = bridge.cast_into::<Bridge>()
    {
        return Ok((event_loop, bridge));
    }
    // Loops without a __dict__ (uvloop's): a weak dictionary keyed by the loop.
    let fallback = FALLBACK.get_or_try_init(py, || -> PyResult<_> {
        Ok(py
            .import("weakref")?
            .getattr("WeakKeyDictionary")?
            .call0()?
            .unbind())
    })?;
    let fallback = fallback.bind(py);
    if let Ok(Some(bridge)) = fallback
        .call_method1("get", (&event_loop,))
        .map(|b| b.cast_into::<Bridge>().ok())
    {
        return Ok((event_loop, bridge));
    }
    let bridge = Bound::new(py, Bridge::new()?)?;
    let fd = bridge.get().reader.lock().unwrap().as_raw_fd();
    event_loop.call_method1("add_reader", (fd, bridge.getattr("_drain")?))?;
    if event_loop.setattr(attr, &bridge).is_err() {
        fallback.set_item(&event_loop, &bridge)?;
    }
    Ok((event_loop, bridge))
}

/// `fut` as an asyncio awaitable of the running loop: its `Ok` value converted to
/// Python, its error raised as the package's exception of its kind.
pub(crate) fn spawn<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = aiolock::Result<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let (event_loop, bridge) = bridge_for(py)?;
    let future = event_loop.call_method0(intern!(py, "create_future"))?;
    let runtime = get_runtime();
    let mut fut = Box::pin(fut);
    {
        let _runtime = runtime.enter();
        if let Poll::Ready(result) = fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            match result {
                Ok(value) => {
                    future.call_method1(intern!(py, "set_result"), (value.into_py_any(py)?,))?
                }
                Err(e) => future.call_method1(
                    intern!(py, "set_exception"),
                    (crate::to_py(py, e).into_value(py),),
                )?,
            };
            return Ok(future);
        }
    }
    let queue = Arc::clone(&bridge.get().queue);
    let target = future.clone().unbind();
    let task = runtime.spawn(async move {
        let result = fut.await;
        let deliver: Deliver = Box::new(move |py| match result {
            Ok(value) => value.into_py_any(py),
            Err(e) => Err(crate::to_py(py, e)),
        });
        queue.post(Done {
            future: target,
            deliver,
        });
    });
    let abort = AbortOnCancel {
        handle: task.abort_handle(),
    };
    future.call_method1(intern!(py, "add_done_callback"), (abort,))?;
    Ok(future)
}
