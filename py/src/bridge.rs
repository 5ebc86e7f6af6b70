//! asyncio awaitables over aiolock's futures, polled on the event loop's own thread.
//!
//! Each awaitable is a task of this bridge, not of tokio: its Rust future is polled
//! only on the thread of its event loop (with the GIL the loop holds, inside the tokio
//! runtime's context, so that timers, spawned helpers and sockets work as anywhere),
//! and its asyncio future is resolved there, in the same call that saw it complete.
//! Two things poll a pending task again:
//!
//! - **its waker**, from any thread (tokio's reactor, a timer, another task): it puts
//!   the task in its loop's ready queue; only the wake that finds the queue empty
//!   writes one byte to a pipe the loop watches (`add_reader`), and the loop's reader
//!   polls every queued task, so 64 wake-ups that come together cost one;
//! - **the socket it waits on**: a future waiting for a reply on aiolock's own Redis
//!   connection names that socket ([`take_read_interest`]); the bridge has the loop
//!   watch it too, and polls the task the moment the loop sees the reply, on the
//!   loop's thread: a round trip then costs no hand-off between threads at all (the
//!   reactor's wake-up that follows finds the task done, or polls it once more). The
//!   loop watches a duplicate of the descriptor, for as long as a task waits on it, so
//!   that a connection closed and a descriptor number reused never confuse its
//!   selector.
//!
//! A first poll happens inline, in the call that makes the awaitable: a memory-backend
//! call completes there, and a network call has written its request.
//!
//! Cancellation: the asyncio future's done-callback drops the Rust future when the
//! future was cancelled, on the loop's thread inside the runtime's context (aiolock is
//! cancel-safe: no lock key, no subscription, no waiter count is left). A result that
//! completes a cancelled future is dropped the same way, so a guard in it releases its
//! lock.

use std::collections::HashMap;
use std::future::Future;
use std::io::{PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use aiolock::__private::take_read_interest;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::{IntoPyObjectExt, intern};
use pyo3_async_runtimes::tokio::get_runtime;

/// Turns a finished future's output into the Python result, with the GIL.
type Deliver = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

type Job = Pin<Box<dyn Future<Output = Deliver> + Send>>;

/// One awaitable: its Rust future until it completes or is cancelled.
struct Task {
    job: Mutex<Option<Job>>,
    /// The asyncio future it resolves.
    future: Py<PyAny>,
    queue: Arc<Queue>,
    /// In the ready queue already.
    queued: AtomicBool,
    /// The descriptor the loop watches for it, or -1.
    watched: AtomicI32,
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.queue.post(Arc::clone(self));
        }
    }
}

/// The ready queue of one event loop.
struct Queue {
    ready: Mutex<Vec<Arc<Task>>>,
    wake: PipeWriter,
}

impl Queue {
    fn post(&self, task: Arc<Task>) {
        let was_empty = {
            let mut ready = self.ready.lock().unwrap();
            let was_empty = ready.is_empty();
            ready.push(task);
            was_empty
        };
        // One byte per empty-to-busy transition: the drain that follows takes every
        // task queued until then. (A full pipe cannot happen: the drain reads every
        // byte; and a byte that fails to go means a wake-up is pending anyway.)
        if was_empty {
            let _ = (&self.wake).write(&[1]);
        }
    }
}

/// A descriptor the loop watches for the tasks waiting on it.
struct Watch {
    /// The duplicate the loop's selector holds.
    dup: OwnedFd,
    /// The socket's identity (device, inode): a closed descriptor's number can come
    /// back for another socket.
    id: (u64, u64),
    tasks: Vec<Arc<Task>>,
}

/// The ready queue and the watched sockets of one asyncio event loop (stored on the
/// loop).
#[pyclass(frozen, module = "aiolock_rs._native")]
pub struct Bridge {
    queue: Arc<Queue>,
    reader: Mutex<PipeReader>,
    watches: Mutex<HashMap<RawFd, Watch>>,
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

/// The (device, inode) of an open descriptor.
fn identity(fd: RawFd) -> Option<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `stat` for any descriptor number, or fails.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: initialized by the successful fstat.
    let st = unsafe { st.assume_init() };
    Some((st.st_dev, st.st_ino))
}

/// The running loop (the bridge's callbacks run on it).
fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    GET_RUNNING_LOOP
        .import(py, "asyncio", "get_running_loop")?
        .call0()
}

impl Bridge {
    fn new() -> std::io::Result<Self> {
        let (reader, writer) = std::io::pipe()?;
        set_nonblocking(reader.as_raw_fd())?;
        set_nonblocking(writer.as_raw_fd())?;
        Ok(Bridge {
            queue: Arc::new(Queue {
                ready: Mutex::new(Vec::new()),
                wake: writer,
            }),
            reader: Mutex::new(reader),
            watches: Mutex::new(HashMap::new()),
        })
    }

    /// Polls `task` (on the loop's thread, in the runtime's context): resolves its
    /// future if it completed, has the loop watch the socket it waits on if it names
    /// one.
    fn run(slf: &Bound<'_, Bridge>, task: &Arc<Task>) {
        let py = slf.py();
        task.queued.store(false, Ordering::Release);
        let mut job = task.job.lock().unwrap();
        let Some(fut) = job.as_mut() else { return };
        take_read_interest(); // another future's, polled on this thread before
        let waker = Waker::from(Arc::clone(task));
        match fut.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(deliver) => {
                *job = None;
                drop(job);
                slf.get().unwatch(py, task);
                resolve(py, task.future.bind(py), deliver);
            }
            Poll::Pending => {
                drop(job);
                if let Some(fd) = take_read_interest() {
                    Bridge::watch(slf, fd, task);
                } else {
                    slf.get().unwatch(py, task);
                }
            }
        }
    }

    /// Has the loop watch `fd` for `task` (a watch of a socket that `fd` no longer is
    /// is replaced). Without a watch the task still completes, by its waker.
    fn watch(slf: &Bound<'_, Bridge>, fd: RawFd, task: &Arc<Task>) {
        let py = slf.py();
        let this = slf.get();
        let Some(id) = identity(fd) else { return };
        let previous = task.watched.swap(fd, Ordering::AcqRel);
        if previous != fd && previous >= 0 {
            this.forget(py, previous, task);
        }
        let stale = {
            let mut watches = this.watches.lock().unwrap();
            match watches.get_mut(&fd) {
                Some(w) if w.id == id => {
                    if !w.tasks.iter().any(|t| Arc::ptr_eq(t, task)) {
                        w.tasks.push(Arc::clone(task));
                    }
                    return;
                }
                _ => watches.remove(&fd),
            }
        };
        let Ok(event_loop) = running_loop(py) else {
            return;
        };
        if let Some(stale) = stale {
            let _ = event_loop.call_method1(intern!(py, "remove_reader"), (stale.dup.as_raw_fd(),));
        }
        // SAFETY: F_DUPFD_CLOEXEC on an open descriptor returns a new one we own.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return;
        }
        // SAFETY: `dup` is a fresh descriptor owned by nobody else.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        let readable = Readable {
            bridge: slf.clone().unbind(),
            fd,
        };
        if event_loop
            .call_method1(intern!(py, "add_reader"), (dup.as_raw_fd(), readable))
            .is_err()
        {
            return;
        }
        this.watches.lock().unwrap().insert(
            fd,
            Watch {
                dup,
                id,
                tasks: vec![Arc::clone(task)],
            },
        );
    }

    /// Stops watching for `task` (it completed, or waits on nothing the loop can see).
    fn unwatch(&self, py: Python<'_>, task: &Arc<Task>) {
        let fd = task.watched.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            self.forget(py, fd, task);
        }
    }

    /// Takes `task` off the watch of `fd`; the loop stops watching a socket nobody
    /// waits on.
    fn forget(&self, py: Python<'_>, fd: RawFd, task: &Arc<Task>) {
        let unwatched = {
            let mut watches = self.watches.lock().unwrap();
            let Some(w) = watches.get_mut(&fd) else {
                return;
            };
            w.tasks.retain(|t| !Arc::ptr_eq(t, task));
            if !w.tasks.is_empty() {
                return;
            }
            watches.remove(&fd)
        };
        if let (Some(w), Ok(event_loop)) = (unwatched, running_loop(py)) {
            let _ = event_loop.call_method1(intern!(py, "remove_reader"), (w.dup.as_raw_fd(),));
        }
    }

    /// Polls every queued task, until the queue stays empty.
    fn run_ready(slf: &Bound<'_, Bridge>) {
        loop {
            let ready = std::mem::take(&mut *slf.get().queue.ready.lock().unwrap());
            if ready.is_empty() {
                return;
            }
            for task in &ready {
                Bridge::run(slf, task);
            }
        }
    }
}

#[pymethods]
impl Bridge {
    /// The loop's reader callback of the wake-up pipe: polls every queued task.
    fn _drain(slf: &Bound<'_, Bridge>) {
        let mut buf = [0u8; 64];
        let mut reader = slf.get().reader.lock().unwrap();
        while let Ok(n) = reader.read(&mut buf) {
            if n < buf.len() {
                break;
            }
        }
        drop(reader);
        let _runtime = get_runtime().enter();
        Bridge::run_ready(slf);
    }
}

/// The loop's reader callback of a watched socket: polls the tasks waiting on it
/// (one of them reads the replies and wakes the others: they are polled too).
#[pyclass(frozen, module = "aiolock_rs._native")]
struct Readable {
    bridge: Py<Bridge>,
    fd: RawFd,
}

#[pymethods]
impl Readable {
    fn __call__(&self, py: Python<'_>) {
        let bridge = self.bridge.bind(py);
        let tasks: Vec<Arc<Task>> = match bridge.get().watches.lock().unwrap().get(&self.fd) {
            Some(w) => w.tasks.clone(),
            None => return,
        };
        let _runtime = get_runtime().enter();
        for task in &tasks {
            Bridge::run(bridge, task);
        }
        Bridge::run_ready(bridge);
    }
}

/// Completes the asyncio `future` with `deliver`'s value or exception; drops it (in
/// the runtime's context, which the caller entered) if the future was cancelled.
fn resolve(py: Python<'_>, future: &Bound<'_, PyAny>, deliver: Deliver) {
    let cancelled = future
        .call_method0(intern!(py, "cancelled"))
        .and_then(|c| c.is_truthy())
        .unwrap_or(true);
    if cancelled {
        return;
    }
    let _ = match deliver(py) {
        Ok(value) => future.call_method1(intern!(py, "set_result"), (value,)),
        Err(e) => future.call_method1(intern!(py, "set_exception"), (e.into_value(py),)),
    };
}

/// The asyncio future's done-callback: drops the Rust future if it was cancelled.
#[pyclass(frozen, module = "aiolock_rs._native")]
struct DropOnCancel {
    task: Arc<Task>,
    bridge: Py<Bridge>,
}

#[pymethods]
impl DropOnCancel {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = future.py();
        if future.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            let job = self.task.job.lock().unwrap().take();
            self.bridge.get().unwatch(py, &self.task);
            let _runtime = get_runtime().enter();
            drop(job);
        }
        Ok(())
    }
}

/// The running loop and its bridge (made and registered on first use).
fn bridge_for(py: Python<'_>) -> PyResult<(Bound<'_, PyAny>, Bound<'_, Bridge>)> {
    static FALLBACK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let event_loop = running_loop(py)?;
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
    let job: Job = Box::pin(async move {
        let result = fut.await;
        Box::new(move |py: Python<'_>| match result {
            Ok(value) => value.into_py_any(py),
            Err(e) => Err(crate::to_py(py, e)),
        }) as Deliver
    });
    let task = Arc::new(Task {
        job: Mutex::new(Some(job)),
        future: future.clone().unbind(),
        queue: Arc::clone(&bridge.get().queue),
        queued: AtomicBool::new(false),
        watched: AtomicI32::new(-1),
    });
    {
        let _runtime = get_runtime().enter();
        Bridge::run(&bridge, &task);
    }
    if task.job.lock().unwrap().is_some() {
        let on_done = DropOnCancel {
            task,
            bridge: bridge.unbind(),
        };
        future.call_method1(intern!(py, "add_done_callback"), (on_done,))?;
    }
    Ok(future)
}
