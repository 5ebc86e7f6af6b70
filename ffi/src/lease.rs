//! What both lock handles (`aiolock_lock`, `aiolock_exclusive`) share past the
//! acquisition: the acquisition flags, the lease queries, extend, the watchdog's
//! lost-check, and the loss callbacks, made safe against a release or free of the
//! handle while the watchdog thread calls one.
//!
//! A callback registered with `aiolock_*_on_lost` lives in a [`Slot`] shared by the
//! handle and the closure given to [`Watch::on_lost`]. The watchdog thread runs the
//! closure; the handle's release or free disarms every slot first ([`Callbacks`]'s
//! drop), waiting for a call in progress on another thread to return. After a release
//! or free has returned, no callback of the handle runs or will run: the caller may
//! free its `user_data` then.

use std::cell::{Cell, RefCell};
use std::ffi::{CString, c_char, c_int, c_void};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use aiolock::blocking::{ExclusiveGuard, LockGuard, Watch};
use aiolock::{Error, ErrorKind, Result};

use crate::boundary::{invalid, status_of};

/// `flags` bit of `aiolock_acquire_ex` and `aiolock_exclusive_acquire_ex`: give the
/// acquisition a fencing token (`aiolock_lock_fence`, `aiolock_exclusive_fence`), a
/// number that grows with each acquisition of the key, in every process.
pub const AIOLOCK_FENCED: u32 = 1;

/// `flags` bit of `aiolock_acquire_ex` and `aiolock_exclusive_acquire_ex`: renew the
/// lease automatically while the handle lives (a watchdog), and report a loss through
/// `aiolock_lock_check` / `aiolock_exclusive_check` and the `*_on_lost` callback.
pub const AIOLOCK_WATCHDOG: u32 = 2;

const KNOWN_FLAGS: u32 = AIOLOCK_FENCED | AIOLOCK_WATCHDOG;

/// The options an acquisition's `flags` ask for.
#[derive(Clone, Copy, Default)]
pub(crate) struct Flags {
    pub(crate) fenced: bool,
    pub(crate) watchdog: bool,
}

/// Reads `flags`; an unknown bit is refused, so that a program asking an older library
/// for an option it lacks learns it at once instead of silently going without.
#[inline]
pub(crate) fn options(bits: u32, what: &str) -> Result<Flags> {
    let unknown = bits & !KNOWN_FLAGS;
    if unknown != 0 {
        return Err(invalid(format!(
            "{what}: unknown bits {unknown:#x} (known: AIOLOCK_FENCED {AIOLOCK_FENCED:#x}, \
             AIOLOCK_WATCHDOG {AIOLOCK_WATCHDOG:#x})"
        )));
    }
    Ok(Flags {
        fenced: bits & AIOLOCK_FENCED != 0,
        watchdog: bits & AIOLOCK_WATCHDOG != 0,
    })
}

/// The loss callback of `aiolock_lock_on_lost` and `aiolock_exclusive_on_lost`:
/// `user_data` as registered, the status (`AIOLOCK_LOST`) and the one-line message of
/// the loss (valid only during the call).
#[allow(non_camel_case_types)]
pub type aiolock_lost_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, status: c_int, message: *const c_char)>;

/// A guard of either lock, as the handle functions see it.
pub(crate) trait Held {
    fn held(&self) -> bool;
    fn lease_end(&self) -> Option<Instant>;
    fn fence(&self) -> Option<u64>;
    fn watch(&self) -> Option<Watch>;
}

impl Held for LockGuard {
    fn held(&self) -> bool {
        self.is_acquired() && self.token().is_some()
    }
    fn lease_end(&self) -> Option<Instant> {
        LockGuard::lease_end(self)
    }
    fn fence(&self) -> Option<u64> {
        LockGuard::fence(self)
    }
    fn watch(&self) -> Option<Watch> {
        LockGuard::watch(self)
    }
}

impl Held for ExclusiveGuard {
    fn held(&self) -> bool {
        true
    }
    fn lease_end(&self) -> Option<Instant> {
        ExclusiveGuard::lease_end(self)
    }
    fn fence(&self) -> Option<u64> {
        ExclusiveGuard::fence(self)
    }
    fn watch(&self) -> Option<Watch> {
        ExclusiveGuard::watch(self)
    }
}

/// The seconds left of a guard's lease on the blocking flavor's clock
/// (`std::time::Instant`, monotonic); 0 once it ended or when not held.
pub(crate) fn lease_remaining(guard: &impl Held) -> f64 {
    guard.lease_end().map_or(0.0, |end| {
        end.saturating_duration_since(Instant::now()).as_secs_f64()
    })
}

const NOT_HELD: &str = "this handle does not hold the lock";
const NOT_WATCHED: &str = "the lock was acquired without AIOLOCK_WATCHDOG: nothing watches it";

/// The watch of a held, watched guard: `Lost` when not held, `InvalidArgument` when
/// acquired without the watchdog.
fn watch_of(guard: &impl Held, watched: bool) -> Result<Watch> {
    if !guard.held() {
        return Err(Error::new(ErrorKind::Lost, NOT_HELD));
    }
    if !watched {
        return Err(invalid(NOT_WATCHED));
    }
    // Held and acquired with the watchdog: watched.
    guard
        .watch()
        .ok_or_else(|| Error::new(ErrorKind::Lost, NOT_HELD))
}

/// `aiolock_*_check`: `Ok` while held and renewed, `Lost` with the reason once lost.
pub(crate) fn check(guard: &impl Held, watched: bool) -> Result<()> {
    watch_of(guard, watched)?.check()
}

/// A C callback and its `user_data`, sent to the watchdog thread.
struct Callback {
    f: unsafe extern "C" fn(*mut c_void, c_int, *const c_char),
    user_data: *mut c_void,
}

// SAFETY: the registering caller promises that the callback may be called, with
// `user_data`, from the watchdog thread (the contract of `aiolock_*_on_lost`).
unsafe impl Send for Callback {}

enum State {
    /// Registered, not called yet.
    Armed(Callback),
    /// Being called on this thread ([`this_thread`]) of this process (its id).
    Running(usize, u32),
    /// Called, or disarmed: never called (again).
    Done,
}

/// One registered callback, shared by its handle and the watchdog's closure.
struct Slot {
    state: Mutex<State>,
    /// Notified when a call in progress returns.
    idle: Condvar,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The watchdog thread: calls the callback unless it was disarmed.
    fn call(&self, err: &Error) {
        let callback = {
            let mut state = self.lock();
            let running = State::Running(this_thread(), std::process::id());
            match std::mem::replace(&mut *state, running) {
                State::Armed(callback) => callback,
                other => {
                    *state = other;
                    return;
                }
            }
        };
        // Marks the slot done when the call returns, a panic on our side included.
        struct Finish<'a>(&'a Slot);
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                *self.0.lock() = State::Done;
                self.0.idle.notify_all();
            }
        }
        let _finish = Finish(self);
        let message = CString::new(err.to_string().replace('\0', "\u{FFFD}")).unwrap_or_default();
        let status = status_of(err.kind()) as c_int;
        // SAFETY: the registering caller's contract: `f` may be called with
        // `user_data` until the handle is released or freed, which disarms the slot
        // first and waits for this call to return.
        unsafe { (callback.f)(callback.user_data, status, message.as_ptr()) };
    }

    /// The handle is being released or freed: the callback is never called from now
    /// on, and a call in progress on another thread has returned when this does. (On
    /// the calling thread itself, inside the callback, it returns at once: the
    /// callback must not release its own handle, but that must not hang either. In a
    /// child forked during a call, too: the thread making it stayed in the parent.)
    fn disarm(&self) {
        let mut state = self.lock();
        loop {
            match &*state {
                State::Running(id, pid) if *id != this_thread() && *pid == std::process::id() => {
                    state = self
                        .idle
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                State::Running(..) | State::Done => return,
                State::Armed(_) => {
                    *state = State::Done;
                    return;
                }
            }
        }
    }
}

/// The callbacks registered on one handle. Dropped first when the handle is released
/// or freed (the field comes first in each handle): disarms them all.
#[derive(Default)]
pub(crate) struct Callbacks(Vec<Arc<Slot>>);

impl Callbacks {
    /// Disarms every callback (see [`Slot::disarm`]); the release paths call it before
    /// they release the guard, and the drop again (a no-op then).
    #[inline(always)]
    pub(crate) fn disarm(&mut self) {
        // The hot path of every release: no callback, nothing to do (a `drain` of the
        // empty vector cost 50 instructions per release).
        if !self.0.is_empty() {
            self.disarm_all();
        }
    }

    #[cold]
    #[inline(never)]
    fn disarm_all(&mut self) {
        for slot in std::mem::take(&mut self.0) {
            slot.disarm();
        }
    }
}

impl Drop for Callbacks {
    #[inline(always)]
    fn drop(&mut self) {
        self.disarm();
    }
}

/// An identity of the calling thread, unique among the threads alive: the address of
/// a thread-local. (`std::thread::current()` would allocate a handle on a thread made
/// by C, which outlives its last use on the main thread: a leak to valgrind.)
fn this_thread() -> usize {
    thread_local! {
        static ANCHOR: u8 = const { 0 };
    }
    ANCHOR.with(|anchor| std::ptr::from_ref(anchor) as usize)
}

thread_local! {
    /// Set while this thread registers a callback: [`Watch::on_lost`] calls a callback
    /// at once, on the registering thread, when the lock is lost already. The C ABI
    /// reports that as `AIOLOCK_LOST` instead, so that a C callback only ever runs on
    /// the watchdog thread.
    static REGISTERING: Cell<bool> = const { Cell::new(false) };
    /// The loss found while registering.
    static LOST_ALREADY: RefCell<Option<(ErrorKind, String)>> = const { RefCell::new(None) };
}

/// `aiolock_*_on_lost`: registers `f` to be called once, from the watchdog thread,
/// when the lock is lost. `Lost` (nothing registered, never called) when not held or
/// lost already; `InvalidArgument` when unwatched.
///
/// # Safety
///
/// `f` must be safe to call with `user_data` from another thread until the handle is
/// released or freed.
pub(crate) unsafe fn on_lost(
    guard: &impl Held,
    watched: bool,
    callbacks: &mut Callbacks,
    f: aiolock_lost_fn,
    user_data: *mut c_void,
) -> Result<()> {
    let f = f.ok_or_else(|| invalid("on_lost is NULL"))?;
    let watch = watch_of(guard, watched)?;
    let slot = Arc::new(Slot {
        state: Mutex::new(State::Armed(Callback { f, user_data })),
        idle: Condvar::new(),
    });
    let theirs = Arc::clone(&slot);
    callbacks.0.reserve(1);
    // Reset on every path out, a panic included.
    struct Registering;
    impl Drop for Registering {
        fn drop(&mut self) {
            REGISTERING.with(|r| r.set(false));
        }
    }
    REGISTERING.with(|r| r.set(true));
    let registering = Registering;
    watch.on_lost(move |err| {
        if REGISTERING.with(Cell::get) {
            // At once, on the registering thread: lost already.
            let lost = (err.kind(), err.message().to_owned());
            LOST_ALREADY.with(|l| *l.borrow_mut() = Some(lost));
            return;
        }
        theirs.call(err);
    });
    drop(registering);
    if let Some((kind, message)) = LOST_ALREADY.with(|l| l.borrow_mut().take()) {
        return Err(Error::new(kind, message));
    }
    callbacks.0.push(slot);
    Ok(())
}

/// Writes a guard's fence: `(fence, true)`, or `(0, false)` when it has none.
///
/// # Safety
///
/// The outputs must be NULL or valid for writes.
pub(crate) unsafe fn write_fence(
    guard: &impl Held,
    fence_out: *mut u64,
    has_fence_out: *mut bool,
) -> Result<()> {
    let fence_out = crate::boundary::out(fence_out, "fence_out")?;
    let has_fence_out = crate::boundary::out(has_fence_out, "has_fence_out")?;
    let fence = guard.fence();
    // SAFETY: checked non-NULL; valid for writes by the caller's contract.
    unsafe {
        fence_out.write(fence.unwrap_or(0));
        has_fence_out.write(fence.is_some());
    }
    Ok(())
}
