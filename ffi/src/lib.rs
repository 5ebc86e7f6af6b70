//! The C ABI of aiolock: `libaiolock.so` / `libaiolock.a` and `include/aiolock.h`.
//!
//! It wraps the blocking flavor ([`aiolock::blocking`]): every call blocks the calling
//! thread, and no async runtime is linked in. The header is generated from this file
//! by cbindgen in `build.rs` (`ffi/gen-header.sh` refreshes the committed copy); the
//! doc comments below are the C documentation.
//!
//! # Conventions (the same for every function)
//!
//! - Every function that can fail returns an [`aiolock_status`]: `AIOLOCK_OK` (0) or
//!   an error code. The numbers are stable. [`aiolock_status_str`] gives the text of a
//!   code; [`aiolock_last_error_message`] (borrowed) or [`aiolock_last_error_copy`]
//!   (copied) the detailed message of the last failed call *on the calling thread*.
//! - Inputs come first, outputs (`*_out`) last. Outputs are written only when the call
//!   returns `AIOLOCK_OK`: a failed call leaves them untouched (no partial success).
//! - A NULL pointer where a pointer is required returns `AIOLOCK_INVALID_ARGUMENT`;
//!   so does a URL that is not UTF-8. Optional pointers say so on their function.
//! - Keys and values are bytes: a pointer and a length. A NULL pointer is allowed with
//!   a length of 0 (an empty string of bytes); an empty key is `AIOLOCK_INVALID_KEY`.
//! - Durations are `double` seconds, checked the same way for every argument: NaN,
//!   +infinity and -infinity, and a positive number below one nanosecond (subnormals
//!   included: it would round to zero) are `AIOLOCK_INVALID_ARGUMENT`; so is more
//!   than about 31 years. Then: a lease must be longer than zero; a TTL of 0 (or -0.0,
//!   `AIOLOCK_NO_EXPIRY`) means none and a negative TTL is refused; a wait of 0 means
//!   "do not wait" and a negative finite wait (`AIOLOCK_WAIT_DEFAULT`) one lease
//!   for `aiolock_acquire`, but is refused by `aiolock_exclusive_acquire` (an
//!   exclusive waiter has no default to fall back to).
//! - Error messages (`aiolock_last_error_message`) are one line of at most 300
//!   characters (control characters escaped, cut with `…`), and never contain a
//!   password given in a URL.
//! - Ownership: each function says what the caller owns and how to give it back.
//!   Every handle is consumed by one call (`aiolock_cache_free`, `aiolock_release`,
//!   `aiolock_exclusive_release` or `aiolock_exclusive_free`, `aiolock_cas` or
//!   `aiolock_optimistic_free`, `aiolock_buffer_free`); the `*_free` functions
//!   accept NULL and do nothing.
//! - "Not getting the lock" is not an error: `aiolock_acquire` says so in its
//!   outcome, `aiolock_exclusive_acquire` by a NULL handle, both with `AIOLOCK_OK`.
//!   A non-zero status always means the call failed (and sets the last error).
//! - Thread safety: an `aiolock_cache` may be used from many threads at once. A lock,
//!   exclusive-lock or optimistic-lock handle must not be used from two threads at
//!   the same time (it may move between threads).
//!   Handles are independent: freeing a cache does not invalidate its locks.
//!   Loss callbacks (`aiolock_lock_on_lost`, `aiolock_exclusive_on_lost`) are the one
//!   exception: aiolock calls them from its watchdog thread, and a release or free of
//!   the handle on any thread waits for a call in progress.
//! - Options of an acquisition are bits of a `flags` argument (`aiolock_acquire_ex`,
//!   `aiolock_exclusive_acquire_ex`): `AIOLOCK_FENCED`, `AIOLOCK_WATCHDOG`; 0 is the
//!   function without `_ex`, and an unknown bit is `AIOLOCK_INVALID_ARGUMENT`.
//! - A panic inside aiolock (a bug) is caught and returns `AIOLOCK_PANIC`; the
//!   process goes on.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(panic = "abort")]
compile_error!(
    "aiolock-ffi catches panics at the C boundary and must be built with panic = \"unwind\""
);

mod boundary;
mod lease;

use std::ffi::{c_char, c_int, c_void};

use aiolock::Outcome;
use aiolock::blocking::{Cache, ExclusiveGuard, LockGuard, OptimisticLock};

use crate::boundary::{
    bound, bytes, guard, guard_quiet, handle, invalid, lease, out, ttl, utf8, wait,
};
pub use crate::lease::{AIOLOCK_FENCED, AIOLOCK_WATCHDOG, aiolock_lost_fn};
use crate::lease::{Callbacks, Flags, options};

/// The result of a call: `AIOLOCK_OK` or what went wrong. The numbers are stable and
/// new codes may be added: treat an unknown non-zero code as a generic error.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum aiolock_status {
    /// Success: the outputs are written.
    AIOLOCK_OK = 0,
    /// An argument is out of range: a NULL pointer, a URL that is not UTF-8 or not
    /// valid, a zero, negative, NaN, infinite or sub-nanosecond duration, an unknown
    /// URL option. Nothing was sent.
    AIOLOCK_INVALID_ARGUMENT = 1,
    /// The backend cannot store this key (empty; for memcached longer than 250 bytes,
    /// namespace and lock suffix included, or containing a space or a control byte).
    /// Nothing was sent.
    AIOLOCK_INVALID_KEY = 2,
    /// `aiolock_cas`: the key changed since the optimistic lock began. Nothing was
    /// written.
    AIOLOCK_CONFLICT = 3,
    /// The backend did not answer in time. The outcome of a write is unknown (it may
    /// have been applied): read back before retrying.
    AIOLOCK_TIMEOUT = 4,
    /// The backend cannot be reached, or the connection broke. If it broke after the
    /// request was sent (the message says the outcome is unknown), the outcome of a
    /// write is unknown, as for `AIOLOCK_TIMEOUT`.
    AIOLOCK_CONNECTION = 5,
    /// The backend answered something this client does not understand. What the
    /// server did with the request is unknown.
    AIOLOCK_PROTOCOL = 6,
    /// The backend refused the command (an error reply, wrong credentials). Nothing
    /// was applied.
    AIOLOCK_BACKEND = 7,
    /// The URL names a backend this build of the library does not include. Nothing
    /// was sent.
    AIOLOCK_UNSUPPORTED = 8,
    /// An error of a kind this version of the C ABI has no code for yet.
    AIOLOCK_ERROR = 9,
    /// aiolock panicked (a bug in aiolock). The call did nothing the caller can rely
    /// on, but the process is intact.
    AIOLOCK_PANIC = 10,
    /// The lock is no longer this handle's: its lease ended (another caller may hold
    /// it now), it was deleted, or the handle never held it (`aiolock_lock_extend`,
    /// `aiolock_lock_check`, a watchdog's renewal, and their `aiolock_exclusive_*`
    /// twins). Nothing was written: another holder's lock is left alone. Stop the work
    /// that needed the lock and take it again.
    AIOLOCK_LOST = 11,
}

/// How `aiolock_acquire` ended.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum aiolock_outcome {
    /// This caller holds the lock: compute, store the value, then `aiolock_release`.
    AIOLOCK_ACQUIRED = 1,
    /// Another holder released the lock while this caller waited: its value should
    /// now be in the cache. This caller does not hold the lock.
    AIOLOCK_RELEASED = 2,
    /// The wait bound passed first. This caller does not hold the lock; it may go on
    /// without it (as aiocache does).
    AIOLOCK_TIMED_OUT = 3,
}

impl From<Outcome> for aiolock_outcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Acquired => aiolock_outcome::AIOLOCK_ACQUIRED,
            Outcome::Released => aiolock_outcome::AIOLOCK_RELEASED,
            Outcome::TimedOut => aiolock_outcome::AIOLOCK_TIMED_OUT,
        }
    }
}

/// `wait_secs` for `aiolock_acquire`: wait at most one lease (as aiocache does). Any
/// negative finite number means the same (-infinity is `AIOLOCK_INVALID_ARGUMENT`).
pub const AIOLOCK_WAIT_DEFAULT: f64 = -1.0;

/// `ttl_secs` for `aiolock_cache_set`, `aiolock_cache_add` and `aiolock_cas`: the value never
/// expires.
pub const AIOLOCK_NO_EXPIRY: f64 = 0.0;

/// A cache: a backend chosen by URL and an optional namespace. Thread-safe.
///
/// Created by `aiolock_cache_open`, freed by `aiolock_cache_free`.
#[allow(non_camel_case_types)]
pub struct aiolock_cache {
    cache: Cache,
}

/// The result of `aiolock_acquire` / `aiolock_acquire_ex`: holds the lock when the
/// outcome was `AIOLOCK_ACQUIRED`. Consumed by `aiolock_release`.
#[allow(non_camel_case_types)]
pub struct aiolock_lock {
    /// Dropped first: the loss callbacks are disarmed before the guard is released.
    callbacks: Callbacks,
    guard: LockGuard,
    /// Acquired with `AIOLOCK_WATCHDOG`.
    watched: bool,
}

/// A held exclusive lock: the key belongs to this handle until its lease ends or it
/// is released. Created by `aiolock_exclusive_acquire` or
/// `aiolock_exclusive_try_acquire` (only when they got the lock); consumed by
/// `aiolock_exclusive_release` or `aiolock_exclusive_free`.
///
/// An opaque type with functions of its own (`aiolock_exclusive_*`), so that what a
/// holder can do later (extend, fence, watchdog) is new functions on this handle.
#[allow(non_camel_case_types)]
pub struct aiolock_exclusive {
    /// Dropped first: the loss callbacks are disarmed before the guard is released.
    callbacks: Callbacks,
    guard: ExclusiveGuard,
    /// Acquired with `AIOLOCK_WATCHDOG`.
    watched: bool,
}

/// An optimistic lock on one key: the value and version read by
/// `aiolock_optimistic_begin`. Consumed by `aiolock_cas` or `aiolock_optimistic_free`.
#[allow(non_camel_case_types)]
pub struct aiolock_optimistic {
    lock: OptimisticLock,
}

/// Opens the cache `url` names: `memory://` (in this process), `redis://…` or
/// `memcached://…` when the library was built with those backends.
///
/// Query options of every scheme: `namespace` (prefixed to every key, byte for byte:
/// aiocache's Redis namespace `app` is `namespace=app:`, its memcached namespace `app`
/// is `namespace=app`), `lock_suffix` (default `-lock`: the lock of `key` is stored
/// under `namespace + key + lock_suffix`; not empty, and on memcached no spaces or
/// control bytes), `connect_timeout`, `response_timeout` (seconds), `pool_size`.
/// Redis also takes `protocol` (and on `redis+unix://` `db`, `user`, `pass`),
/// memcached `max_poll_interval`. An unknown option is `AIOLOCK_INVALID_ARGUMENT`,
/// and the message names it.
///
/// On success, `*cache_out` is a new cache: the caller owns it and must call
/// `aiolock_cache_free` on it. Each `memory://` cache is a separate store.
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT` (NULL, not UTF-8, not a valid cache URL, an
/// unknown or invalid option), `AIOLOCK_UNSUPPORTED` (backend not built in),
/// connection errors.
///
/// # Safety
///
/// `url` must be NULL or a NUL-terminated string; `cache_out` must be NULL or valid
/// for a write of a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_cache_open(
    url: *const c_char,
    cache_out: *mut *mut aiolock_cache,
) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let url = unsafe { utf8(url, "url") }?;
        let cache_out = out(cache_out, "cache_out")?;
        let cache = Cache::from_url(url)?;
        let cache = Box::into_raw(Box::new(aiolock_cache { cache }));
        // SAFETY: checked non-NULL; valid for writes by the caller's contract.
        unsafe { cache_out.write(cache) };
        Ok(())
    })
}

/// Frees a cache from `aiolock_cache_open`. NULL does nothing. Locks taken from it
/// stay valid (they share the backend, which lives until the last one is gone).
///
/// # Safety
///
/// `cache` must be NULL or a cache from `aiolock_cache_open` not yet freed, and no
/// other thread may be using it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_cache_free(cache: *mut aiolock_cache) {
    guard_quiet((), || {
        if !cache.is_null() {
            // SAFETY: the caller's contract: a live handle from Box::into_raw.
            drop(unsafe { Box::from_raw(cache) });
        }
    })
}

/// Takes the RedLock on `key`, or waits for its holder (aiocache's `RedLock`): the
/// lock key is `namespace + key + lock_suffix` (`lock_suffix` is `-lock` unless the
/// cache URL sets it), held for at most `lease_secs`.
///
/// - `lease_secs`: finite, at least one nanosecond, else `AIOLOCK_INVALID_ARGUMENT`.
/// - `wait_secs`: how long to wait at most when another caller holds the lock.
///   Negative and finite (`AIOLOCK_WAIT_DEFAULT`): one lease. 0: do not wait. NaN,
///   +infinity, -infinity or a positive number below one nanosecond:
///   `AIOLOCK_INVALID_ARGUMENT`.
///
/// On memcached the whole lock key must fit memcached's 250 bytes: with the default
/// suffix, `namespace + key` may be at most 245 bytes here (250 minus the length of
/// the suffix in general), although `aiolock_cache_get` and `aiolock_cache_set`
/// accept 250. A longer key is `AIOLOCK_INVALID_KEY`, and nothing is sent.
///
/// On success, `*outcome_out` says how it ended, and `*lock_out` is a new lock handle
/// whatever the outcome (it holds the lock only for `AIOLOCK_ACQUIRED`): the caller
/// owns it and must pass it to `aiolock_release`. Not getting the lock is not an
/// error.
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT`, `AIOLOCK_INVALID_KEY` (an empty key; on
/// memcached a lock key too long or with bytes memcached refuses), the backend's
/// errors.
///
/// # Safety
///
/// `cache` must be NULL or a live cache; `key` must be NULL or valid for reads of
/// `key_len` bytes; `lock_out` and `outcome_out` must be NULL or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_acquire(
    cache: *const aiolock_cache,
    key: *const u8,
    key_len: usize,
    lease_secs: f64,
    wait_secs: f64,
    lock_out: *mut *mut aiolock_lock,
    outcome_out: *mut aiolock_outcome,
) -> aiolock_status {
    // SAFETY: the same contract.
    unsafe {
        redlock_acquire(
            cache,
            key,
            key_len,
            lease_secs,
            wait_secs,
            0,
            lock_out,
            outcome_out,
        )
    }
}

/// `aiolock_acquire` with options: `flags` is 0 (then it is `aiolock_acquire`) or a
/// bitwise OR of
/// - `AIOLOCK_FENCED`: the acquisition gets a fencing token, read with
///   `aiolock_lock_fence`: a number larger than that of every earlier acquisition of
///   the key, in every process, kept under the key `lock key + "-fence"` (no TTL).
///   Send it with every write the lock protects, and let the storage keep the highest
///   fence it has seen and refuse writes carrying a lower one: a lease cannot stop a
///   holder that paused past its lease (GC, `SIGSTOP`, a slow disk) from writing after
///   the next holder started, a fence checked by the storage can. Redis: no extra
///   round trip; memcached: the fence key must fit 250 bytes too (6 more than the lock
///   key). What the counter survives (restarts, evictions) is described in the Rust
///   docs of `RedLock::fenced`.
/// - `AIOLOCK_WATCHDOG`: while the handle lives and holds the lock, its lease is
///   renewed (owner-checked) a third of the lease after the acquisition and after each
///   confirmed renewal, by the cache's watchdog thread (`aiolock-watchdog`, one per
///   cache, started by its first watched lock). A renewal that fails or finds the lock
///   gone or taken makes the lock lost: `aiolock_lock_check` returns `AIOLOCK_LOST`,
///   at once, and in any case before the lease would have ended; the callback of
///   `aiolock_lock_on_lost` is called. Releasing the handle stops its renewals. A
///   waiter that does not get the lock has nothing watched.
///
/// Any other bit is `AIOLOCK_INVALID_ARGUMENT` (a newer program asking this library
/// for an option it does not have). The other arguments, outputs and errors are
/// `aiolock_acquire`'s (`AIOLOCK_UNSUPPORTED` for a fence on a backend without one).
///
/// # Safety
///
/// As `aiolock_acquire`.
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_acquire_ex(
    cache: *const aiolock_cache,
    key: *const u8,
    key_len: usize,
    lease_secs: f64,
    wait_secs: f64,
    flags: u32,
    lock_out: *mut *mut aiolock_lock,
    outcome_out: *mut aiolock_outcome,
) -> aiolock_status {
    // SAFETY: the same contract.
    unsafe {
        redlock_acquire(
            cache,
            key,
            key_len,
            lease_secs,
            wait_secs,
            flags,
            lock_out,
            outcome_out,
        )
    }
}

/// `aiolock_acquire_ex`, inlined into both exports (`aiolock_acquire`'s flags are a
/// constant 0: nothing of them is left on its path).
///
/// # Safety
///
/// As `aiolock_acquire`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn redlock_acquire(
    cache: *const aiolock_cache,
    key: *const u8,
    key_len: usize,
    lease_secs: f64,
    wait_secs: f64,
    flags: u32,
    lock_out: *mut *mut aiolock_lock,
    outcome_out: *mut aiolock_outcome,
) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let cache = unsafe { handle(cache, "cache") }?;
        // SAFETY: the caller's contract.
        let key = unsafe { bytes(key, key_len, "key") }?;
        let lock_out = out(lock_out, "lock_out")?;
        let outcome_out = out(outcome_out, "outcome_out")?;
        let lease = lease(lease_secs, "lease_secs")?;
        let wait = wait(wait_secs, "wait_secs")?;
        let Flags { fenced, watchdog } = options(flags, "flags")?;
        let mut redlock = cache.cache.redlock(key, lease);
        if let Some(wait) = wait {
            redlock = redlock.wait_at_most(wait);
        }
        if fenced {
            redlock = redlock.fenced();
        }
        if watchdog {
            redlock = redlock.watchdog();
        }
        let guard = redlock.acquire()?;
        let outcome = guard.outcome().into();
        let lock = Box::into_raw(Box::new(aiolock_lock {
            callbacks: Callbacks::default(),
            guard,
            watched: watchdog,
        }));
        // SAFETY: checked non-NULL; valid for writes by the caller's contract.
        unsafe {
            lock_out.write(lock);
            outcome_out.write(outcome);
        }
        Ok(())
    })
}

/// Releases and frees a lock handle from `aiolock_acquire`.
///
/// If the handle holds the lock, deletes the lock key only if it still holds this
/// handle's token (atomically) and wakes the waiters. `*removed_out` says whether it
/// removed the lock: false when the lease had already ended (another caller may hold
/// the lock now, and it is left alone) or when the handle never held it.
/// `removed_out` is optional: NULL when the answer is not wanted.
///
/// **Consumes `lock` whatever the status** (unless it is NULL): the caller must not
/// use it again. On a backend error the lock is left to expire with its lease. A
/// watched handle's renewals stop, and its loss callbacks (`aiolock_lock_on_lost`)
/// are disarmed first: once this returns, none of them runs or will run (a call in
/// progress on the watchdog thread is waited for), and their `user_data` may be
/// freed.
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT` (`lock` is NULL), the backend's errors.
///
/// # Safety
///
/// `lock` must be NULL or a handle from `aiolock_acquire` or `aiolock_acquire_ex` not
/// yet released, not in use by another thread; `removed_out` must be NULL or valid
/// for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_release(
    lock: *mut aiolock_lock,
    removed_out: *mut bool,
) -> aiolock_status {
    guard(|| {
        if lock.is_null() {
            return Err(invalid("lock is NULL"));
        }
        // SAFETY: the caller's contract: a live handle from Box::into_raw. Taken first,
        // so the handle is consumed on every path, a panic included.
        let mut lock = unsafe { Box::from_raw(lock) };
        // No loss callback runs from here on.
        lock.callbacks.disarm();
        let removed = lock.guard.release()?;
        if !removed_out.is_null() {
            // SAFETY: non-NULL; valid for a write by the caller's contract.
            unsafe { removed_out.write(removed) };
        }
        Ok(())
    })
}

/// Renews the lease of a lock handle that holds the lock: if the lock key still holds
/// this handle's token, its lease now ends `lease_secs` from now (owner-checked and
/// atomic: Redis, one script; memcached, a write conditional on the key's CAS unique;
/// memory, under the store's mutex). `lease_secs` replaces the time left, as in
/// redsync and node-redlock: it may shorten it. It is checked like every lease
/// (finite, at least one nanosecond). A watched handle's renewals go on from here,
/// with this lease.
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT` (NULL, a bad `lease_secs`); `AIOLOCK_LOST` when
/// the lock is no longer ours (its lease ended and the key is gone or another
/// caller's) or this handle never held it (an outcome other than `AIOLOCK_ACQUIRED`):
/// nothing changed, and `aiolock_release` still works (it removes nothing then);
/// `AIOLOCK_TIMEOUT` or `AIOLOCK_CONNECTION` leave the renewal unknown, and
/// `aiolock_lock_lease_remaining` counts from the last renewal known. After a watched
/// handle's loss was reported, extend still asks the backend and reports the truth,
/// but the watchdog does not resume.
///
/// # Safety
///
/// `lock` must be NULL or a live handle from `aiolock_acquire` or
/// `aiolock_acquire_ex`, not in use by another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_lock_extend(
    lock: *mut aiolock_lock,
    lease_secs: f64,
) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract: a live handle, used by this thread only.
        let lock = unsafe { lock.as_mut() }.ok_or_else(|| invalid("lock is NULL"))?;
        lock.guard.extend(lease(lease_secs, "lease_secs")?)
    })
}

/// The fencing token of a lock handle: on success, `*has_fence_out` says whether it
/// has one (it was acquired with `AIOLOCK_FENCED` and holds the lock), and if so
/// `*fence_out` is the token, larger than that of every earlier acquisition of the
/// key; else `*fence_out` is 0. Sends nothing.
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT` (a NULL pointer).
///
/// # Safety
///
/// `lock` must be NULL or a live lock handle; the outputs must be NULL or valid for
/// writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_lock_fence(
    lock: *const aiolock_lock,
    fence_out: *mut u64,
    has_fence_out: *mut bool,
) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let lock = unsafe { handle(lock, "lock") }?;
        // SAFETY: the caller's contract.
        unsafe { lease::write_fence(&lock.guard, fence_out, has_fence_out) }
    })
}

/// How long the lease of a lock handle lasts at least from now: on success,
/// `*secs_out` is the seconds until the lease ends on this client's monotonic clock
/// (counted from just before the claim or the last confirmed renewal or extend was
/// sent, so the server's lease ends later), 0 once it ended or when the handle does
/// not hold the lock. A watched handle's lease moves with each renewal. Sends nothing.
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT` (a NULL pointer).
///
/// # Safety
///
/// `lock` must be NULL or a live lock handle; `secs_out` must be NULL or valid for a
/// write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_lock_lease_remaining(
    lock: *const aiolock_lock,
    secs_out: *mut f64,
) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let lock = unsafe { handle(lock, "lock") }?;
        let secs_out = out(secs_out, "secs_out")?;
        let secs = lease::lease_remaining(&lock.guard);
        // SAFETY: checked non-NULL; valid for a write by the caller's contract.
        unsafe { secs_out.write(secs) };
        Ok(())
    })
}

/// The watchdog's verdict on a handle acquired with `AIOLOCK_WATCHDOG`: `AIOLOCK_OK`
/// while it holds the lock and its renewals are confirmed; `AIOLOCK_LOST`, with the
/// reason as the last error message, once the lock is lost (a renewal failed or found
/// the key gone or another caller's, or no renewal was confirmed by a margin before
/// the lease end: a tenth of the lease, at most a second). A loss is final. Sends
/// nothing (a mutex and the clock): cheap enough to call between steps of the work.
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT` (NULL, or a handle acquired without
/// `AIOLOCK_WATCHDOG`); `AIOLOCK_LOST` as above, and for a handle that does not hold
/// the lock.
///
/// # Safety
///
/// `lock` must be NULL or a live lock handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_lock_check(lock: *const aiolock_lock) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let lock = unsafe { handle(lock, "lock") }?;
        lease::check(&lock.guard, lock.watched)
    })
}

/// Registers `on_lost` to be called once, with `user_data`, when the watched lock of
/// `lock` is lost (see `aiolock_lock_check`): `on_lost(user_data, AIOLOCK_LOST,
/// message)`. Several callbacks may be registered; each is called at most once.
///
/// - **Thread**: the call comes from the cache's watchdog thread (`aiolock-watchdog`),
///   never from the registering thread. The callback must be quick and must not block
///   (set a flag, write to a pipe, signal a condition variable), and must not call
///   aiolock on this lock (its renewals, and a release of this handle on another
///   thread, wait for it to return). It must not unwind (no C++ exception).
/// - **`message`** is a one-line, NUL-terminated description, valid only during the
///   call: copy it to keep it.
/// - **Release and free**: once `aiolock_release` (or `aiolock_exclusive_release` /
///   `_free` for the exclusive lock) is called, the callbacks are never called, and
///   that call returns only after a callback in progress on the watchdog thread has
///   returned: after it, `user_data` may be freed. A callback is never called after a
///   release, even one that failed.
/// - The watchdog learns of a loss when a renewal fails, or at the lock's lost instant
///   (a margin before its lease end); a renewal that hangs holds the watchdog thread
///   until the cache's response timeout, and the callback comes then
///   (`aiolock_lock_check` reads the clock and is on time).
///
/// Errors, with nothing registered (the callback is never called): NULL `lock` or
/// `on_lost`, or a handle acquired without `AIOLOCK_WATCHDOG`:
/// `AIOLOCK_INVALID_ARGUMENT`; a handle that does not hold the lock, or whose lock is
/// lost already: `AIOLOCK_LOST` (with the reason).
///
/// # Safety
///
/// `lock` must be NULL or a live lock handle, not in use by another thread;
/// `on_lost` must be NULL or safe to call with `user_data` from another thread until
/// the handle is released.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_lock_on_lost(
    lock: *mut aiolock_lock,
    on_lost: aiolock_lost_fn,
    user_data: *mut c_void,
) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract: a live handle, used by this thread only.
        let lock = unsafe { lock.as_mut() }.ok_or_else(|| invalid("lock is NULL"))?;
        // SAFETY: the caller's contract on `on_lost` and `user_data`.
        unsafe {
            lease::on_lost(
                &lock.guard,
                lock.watched,
                &mut lock.callbacks,
                on_lost,
                user_data,
            )
        }
    })
}

/// Takes the exclusive lock on `key`, waiting through other holders' releases and
/// lease ends until this caller holds it, or `wait_secs` has passed: a mutex with a
/// lease, where `aiolock_acquire` is a stampede lock (its waiters go on without the
/// lock). The lock key is the same as `aiolock_acquire`'s (`namespace + key +
/// lock_suffix`), and the two exclude each other.
///
/// - `lease_secs`: how long the lock is held at most once acquired; finite, at least
///   one nanosecond, else `AIOLOCK_INVALID_ARGUMENT`.
/// - `wait_secs`: how long to wait at most, from the first lost claim. 0 (or -0.0):
///   claim once, never wait (`aiolock_exclusive_try_acquire`). Unlike
///   `aiolock_acquire` there is no default: a negative number, NaN, ±infinity or a
///   positive number below one nanosecond is `AIOLOCK_INVALID_ARGUMENT`. For "as
///   long as it takes", pass a large number (at most about 31 years).
///
/// On success (`AIOLOCK_OK`), `*lock_out` is either
/// - a new handle: this caller holds the lock; the caller owns the handle and must
///   pass it to `aiolock_exclusive_release` (or `aiolock_exclusive_free`); or
/// - NULL: **not acquired**, the key was held by other callers until `wait_secs`
///   passed. Not getting the lock is not an error (no status, no last error
///   message): test the handle. `AIOLOCK_TIMEOUT` is something else, a backend that
///   did not answer.
///
/// A lease lock cannot stop a holder that paused past its lease (GC, `SIGSTOP`, a
/// slow disk) from writing after the next holder started: choose a lease much
/// longer than the work, and let the storage refuse stale writes where that harms.
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT`, `AIOLOCK_INVALID_KEY` (an empty key; on
/// memcached a lock key too long or with bytes memcached refuses), the backend's
/// errors. After an error the caller does not hold the lock (a claim whose answer
/// was lost is released in the background).
///
/// # Safety
///
/// `cache` must be NULL or a live cache; `key` must be NULL or valid for reads of
/// `key_len` bytes; `lock_out` must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_exclusive_acquire(
    cache: *const aiolock_cache,
    key: *const u8,
    key_len: usize,
    lease_secs: f64,
    wait_secs: f64,
    lock_out: *mut *mut aiolock_exclusive,
) -> aiolock_status {
    // SAFETY: the same contract.
    unsafe { exclusive_acquire(cache, key, key_len, lease_secs, wait_secs, 0, lock_out) }
}

/// `aiolock_exclusive_acquire` with options: `flags` is 0 (then it is
/// `aiolock_exclusive_acquire`; with a `wait_secs` of 0, `aiolock_exclusive_try_acquire`)
/// or a bitwise OR of `AIOLOCK_FENCED` (a fencing token, `aiolock_exclusive_fence`)
/// and `AIOLOCK_WATCHDOG` (automatic renewal while the handle lives, with
/// `aiolock_exclusive_check` and `aiolock_exclusive_on_lost`), as for
/// `aiolock_acquire_ex`, which describes both. Any other bit is
/// `AIOLOCK_INVALID_ARGUMENT`. The other arguments, outputs ("not acquired" is
/// `AIOLOCK_OK` with a NULL handle) and errors are `aiolock_exclusive_acquire`'s.
///
/// # Safety
///
/// As `aiolock_exclusive_acquire`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_exclusive_acquire_ex(
    cache: *const aiolock_cache,
    key: *const u8,
    key_len: usize,
    lease_secs: f64,
    wait_secs: f64,
    flags: u32,
    lock_out: *mut *mut aiolock_exclusive,
) -> aiolock_status {
    // SAFETY: the same contract.
    unsafe { exclusive_acquire(cache, key, key_len, lease_secs, wait_secs, flags, lock_out) }
}

/// `aiolock_exclusive_acquire_ex`, inlined into its three exports.
///
/// # Safety
///
/// As `aiolock_exclusive_acquire`.
#[inline(always)]
unsafe fn exclusive_acquire(
    cache: *const aiolock_cache,
    key: *const u8,
    key_len: usize,
    lease_secs: f64,
    wait_secs: f64,
    flags: u32,
    lock_out: *mut *mut aiolock_exclusive,
) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let cache = unsafe { handle(cache, "cache") }?;
        // SAFETY: the caller's contract.
        let key = unsafe { bytes(key, key_len, "key") }?;
        let lock_out = out(lock_out, "lock_out")?;
        let lease = lease(lease_secs, "lease_secs")?;
        let wait = bound(wait_secs, "wait_secs")?;
        let Flags { fenced, watchdog } = options(flags, "flags")?;
        let mut exclusive = cache.cache.lock(key, lease).wait_at_most(wait);
        if fenced {
            exclusive = exclusive.fenced();
        }
        if watchdog {
            exclusive = exclusive.watchdog();
        }
        let got = exclusive.acquire()?;
        let lock = got.map_or(std::ptr::null_mut(), |guard| {
            Box::into_raw(Box::new(aiolock_exclusive {
                callbacks: Callbacks::default(),
                guard,
                watched: watchdog,
            }))
        });
        // SAFETY: checked non-NULL; valid for a write by the caller's contract.
        unsafe { lock_out.write(lock) };
        Ok(())
    })
}

/// Claims the exclusive lock on `key` once, never waiting: `aiolock_exclusive_acquire`
/// with a `wait_secs` of 0. One round trip (memory: none).
///
/// On success, `*lock_out` is a new handle (held; the caller must pass it to
/// `aiolock_exclusive_release` or `aiolock_exclusive_free`), or NULL when another
/// caller holds the lock now (not acquired, not an error).
///
/// Errors: as `aiolock_exclusive_acquire`.
///
/// # Safety
///
/// As `aiolock_exclusive_acquire`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_exclusive_try_acquire(
    cache: *const aiolock_cache,
    key: *const u8,
    key_len: usize,
    lease_secs: f64,
    lock_out: *mut *mut aiolock_exclusive,
) -> aiolock_status {
    // SAFETY: the same contract.
    unsafe { exclusive_acquire(cache, key, key_len, lease_secs, 0.0, 0, lock_out) }
}

/// Releases and frees an exclusive lock handle: deletes the lock key only if it
/// still holds this handle's token (atomically) and wakes the waiters.
/// `*removed_out` (optional, NULL when the answer is not wanted) says whether it
/// removed the lock: false when the lease had already ended (another caller may hold
/// the lock now, and its lock is left alone; writes made after the lease ended were
/// not protected).
///
/// **Consumes `lock` whatever the status** (unless it is NULL): the caller must not
/// use it again. On a backend error the lock is left to expire with its lease. A
/// watched handle's renewals stop, and its loss callbacks are disarmed first, as for
/// `aiolock_release`: once this returns, none of them runs or will run.
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT` (`lock` is NULL, e.g. the "not acquired" NULL
/// of `aiolock_exclusive_acquire`), the backend's errors.
///
/// # Safety
///
/// `lock` must be NULL or a handle from `aiolock_exclusive_acquire`,
/// `aiolock_exclusive_acquire_ex` or `aiolock_exclusive_try_acquire` not yet consumed,
/// not in use by another thread;
/// `removed_out` must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_exclusive_release(
    lock: *mut aiolock_exclusive,
    removed_out: *mut bool,
) -> aiolock_status {
    guard(|| {
        if lock.is_null() {
            return Err(invalid("lock is NULL"));
        }
        // SAFETY: the caller's contract: a live handle from Box::into_raw. Taken first,
        // so the handle is consumed on every path, a panic included.
        let mut lock = unsafe { Box::from_raw(lock) };
        // No loss callback runs from here on.
        lock.callbacks.disarm();
        let removed = lock.guard.release()?;
        if !removed_out.is_null() {
            // SAFETY: non-NULL; valid for a write by the caller's contract.
            unsafe { removed_out.write(removed) };
        }
        Ok(())
    })
}

/// Frees an exclusive lock handle, releasing the lock as `aiolock_exclusive_release`
/// does but without reporting anything (for cleanup paths and finalizers; a release
/// that fails for a transient reason, such as a broken connection, is retried in the
/// background, and a lock that could not be released expires with its lease).
/// Like the release, it disarms the loss callbacks first and waits for one in progress.
/// NULL does nothing. Does not change the last error.
///
/// # Safety
///
/// `lock` must be NULL or a live exclusive lock handle, not in use by another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_exclusive_free(lock: *mut aiolock_exclusive) {
    guard_quiet((), || {
        if !lock.is_null() {
            // SAFETY: the caller's contract: a live handle from Box::into_raw.
            drop(unsafe { Box::from_raw(lock) });
        }
    })
}

/// Renews the lease of an exclusive lock, owner-checked: as `aiolock_lock_extend`
/// (its lease now ends `lease_secs` from now, if the key still holds our token).
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT` (NULL, a bad `lease_secs`), `AIOLOCK_LOST`
/// (the lock is no longer ours: nothing changed), the backend's errors (the renewal
/// is then unknown).
///
/// # Safety
///
/// `lock` must be NULL or a live exclusive lock handle, not in use by another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_exclusive_extend(
    lock: *mut aiolock_exclusive,
    lease_secs: f64,
) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract: a live handle, used by this thread only.
        let lock = unsafe { lock.as_mut() }.ok_or_else(|| invalid("lock is NULL"))?;
        lock.guard.extend(lease(lease_secs, "lease_secs")?)
    })
}

/// The fencing token of an exclusive lock: `*has_fence_out` says whether it has one
/// (acquired with `AIOLOCK_FENCED`), and if so `*fence_out` is the token (else 0). As
/// `aiolock_lock_fence`.
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT` (a NULL pointer).
///
/// # Safety
///
/// `lock` must be NULL or a live exclusive lock handle; the outputs must be NULL or
/// valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_exclusive_fence(
    lock: *const aiolock_exclusive,
    fence_out: *mut u64,
    has_fence_out: *mut bool,
) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let lock = unsafe { handle(lock, "lock") }?;
        // SAFETY: the caller's contract.
        unsafe { lease::write_fence(&lock.guard, fence_out, has_fence_out) }
    })
}

/// The seconds left of an exclusive lock's lease on this client's monotonic clock, 0
/// once it ended: as `aiolock_lock_lease_remaining`.
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT` (a NULL pointer).
///
/// # Safety
///
/// `lock` must be NULL or a live exclusive lock handle; `secs_out` must be NULL or
/// valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_exclusive_lease_remaining(
    lock: *const aiolock_exclusive,
    secs_out: *mut f64,
) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let lock = unsafe { handle(lock, "lock") }?;
        let secs_out = out(secs_out, "secs_out")?;
        let secs = lease::lease_remaining(&lock.guard);
        // SAFETY: checked non-NULL; valid for a write by the caller's contract.
        unsafe { secs_out.write(secs) };
        Ok(())
    })
}

/// The watchdog's verdict on an exclusive lock acquired with `AIOLOCK_WATCHDOG`:
/// `AIOLOCK_OK` while held and renewed, `AIOLOCK_LOST` (with the reason) once lost;
/// as `aiolock_lock_check`. Sends nothing.
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT` (NULL, or acquired without `AIOLOCK_WATCHDOG`),
/// `AIOLOCK_LOST`.
///
/// # Safety
///
/// `lock` must be NULL or a live exclusive lock handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_exclusive_check(lock: *const aiolock_exclusive) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let lock = unsafe { handle(lock, "lock") }?;
        lease::check(&lock.guard, lock.watched)
    })
}

/// Registers `on_lost` to be called once, with `user_data`, from the watchdog thread
/// when the watched exclusive lock is lost: exactly as `aiolock_lock_on_lost`
/// describes (the thread, must not block nor call aiolock on this lock, `message`
/// valid only during the call). Once `aiolock_exclusive_release` or
/// `aiolock_exclusive_free` is called, the callbacks are never called, and that call
/// returns only after a callback in progress has returned: then `user_data` may be
/// freed.
///
/// Errors, with nothing registered: `AIOLOCK_INVALID_ARGUMENT` (NULL `lock` or
/// `on_lost`, acquired without `AIOLOCK_WATCHDOG`), `AIOLOCK_LOST` (lost already).
///
/// # Safety
///
/// `lock` must be NULL or a live exclusive lock handle, not in use by another thread;
/// `on_lost` must be NULL or safe to call with `user_data` from another thread until
/// the handle is released or freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_exclusive_on_lost(
    lock: *mut aiolock_exclusive,
    on_lost: aiolock_lost_fn,
    user_data: *mut c_void,
) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract: a live handle, used by this thread only.
        let lock = unsafe { lock.as_mut() }.ok_or_else(|| invalid("lock is NULL"))?;
        // SAFETY: the caller's contract on `on_lost` and `user_data`.
        unsafe {
            lease::on_lost(
                &lock.guard,
                lock.watched,
                &mut lock.callbacks,
                on_lost,
                user_data,
            )
        }
    })
}

/// Begins an optimistic lock on `key` (aiocache's `OptimisticLock`): reads the value
/// and its version.
///
/// On success, `*lock_out` is a new handle: the caller owns it and must pass it to
/// `aiolock_cas` or `aiolock_optimistic_free`.
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT`, `AIOLOCK_INVALID_KEY`, the backend's errors.
///
/// # Safety
///
/// `cache` must be NULL or a live cache; `key` must be NULL or valid for reads of
/// `key_len` bytes; `lock_out` must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_optimistic_begin(
    cache: *const aiolock_cache,
    key: *const u8,
    key_len: usize,
    lock_out: *mut *mut aiolock_optimistic,
) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let cache = unsafe { handle(cache, "cache") }?;
        // SAFETY: the caller's contract.
        let key = unsafe { bytes(key, key_len, "key") }?;
        let lock_out = out(lock_out, "lock_out")?;
        let lock = cache.cache.optimistic_lock(key)?;
        let lock = Box::into_raw(Box::new(aiolock_optimistic { lock }));
        // SAFETY: checked non-NULL; valid for a write by the caller's contract.
        unsafe { lock_out.write(lock) };
        Ok(())
    })
}

/// The value an optimistic lock read when it began.
///
/// On success, `*found_out` says whether the key was present; if so `*value_out` and
/// `*len_out` give its bytes (`*value_out` may be NULL when the value is empty), else
/// they are NULL and 0. The bytes are borrowed from `lock`: valid until `lock` is
/// consumed; the caller must not free them.
///
/// # Safety
///
/// `lock` must be NULL or a live optimistic lock; the outputs must be NULL or valid
/// for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_optimistic_value(
    lock: *const aiolock_optimistic,
    value_out: *mut *const u8,
    len_out: *mut usize,
    found_out: *mut bool,
) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let lock = unsafe { handle(lock, "lock") }?;
        let value_out = out(value_out, "value_out")?;
        let len_out = out(len_out, "len_out")?;
        let found_out = out(found_out, "found_out")?;
        let (ptr, len) = match lock.lock.value() {
            Some(v) if !v.is_empty() => (v.as_ptr(), v.len()),
            _ => (std::ptr::null(), 0),
        };
        // SAFETY: checked non-NULL; valid for writes by the caller's contract.
        unsafe {
            value_out.write(ptr);
            len_out.write(len);
            found_out.write(lock.lock.value().is_some());
        }
        Ok(())
    })
}

/// Writes `value` under the optimistic lock's key (expiring after `ttl_secs`;
/// `AIOLOCK_NO_EXPIRY` for never) only if the key has not changed since
/// `aiolock_optimistic_begin`; otherwise writes nothing and returns
/// `AIOLOCK_CONFLICT`. A key that was absent must still be absent.
///
/// **Consumes `lock` whatever the status** (unless it is NULL): after a conflict,
/// begin again.
///
/// Errors: `AIOLOCK_CONFLICT`, `AIOLOCK_INVALID_ARGUMENT` (NULL, bad TTL), the
/// backend's errors.
///
/// # Safety
///
/// `lock` must be NULL or a live optimistic lock; `value` must be NULL or valid for
/// reads of `value_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_cas(
    lock: *mut aiolock_optimistic,
    value: *const u8,
    value_len: usize,
    ttl_secs: f64,
) -> aiolock_status {
    guard(|| {
        if lock.is_null() {
            return Err(invalid("lock is NULL"));
        }
        // SAFETY: the caller's contract: a live handle from Box::into_raw. Taken first,
        // so the handle is consumed on every path.
        let lock = unsafe { Box::from_raw(lock) };
        // SAFETY: the caller's contract.
        let value = unsafe { bytes(value, value_len, "value") }?;
        let ttl = ttl(ttl_secs, "ttl_secs")?;
        lock.lock.cas(value, ttl)
    })
}

/// Frees an optimistic lock without writing. NULL does nothing.
///
/// # Safety
///
/// `lock` must be NULL or a live optimistic lock, not used by another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_optimistic_free(lock: *mut aiolock_optimistic) {
    guard_quiet((), || {
        if !lock.is_null() {
            // SAFETY: the caller's contract: a live handle from Box::into_raw.
            drop(unsafe { Box::from_raw(lock) });
        }
    })
}

/// Reads `key`.
///
/// On success, `*found_out` says whether the key was present. If so, `*value_out` and
/// `*len_out` are a new buffer holding the value: the caller owns it and must call
/// `aiolock_buffer_free(*value_out, *len_out)` (an empty value gives NULL and 0,
/// which need no freeing). If absent, they are NULL and 0.
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT`, `AIOLOCK_INVALID_KEY`, the backend's errors.
///
/// # Safety
///
/// `cache` must be NULL or a live cache; `key` must be NULL or valid for reads of
/// `key_len` bytes; the outputs must be NULL or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_cache_get(
    cache: *const aiolock_cache,
    key: *const u8,
    key_len: usize,
    value_out: *mut *mut u8,
    len_out: *mut usize,
    found_out: *mut bool,
) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let cache = unsafe { handle(cache, "cache") }?;
        // SAFETY: the caller's contract.
        let key = unsafe { bytes(key, key_len, "key") }?;
        let value_out = out(value_out, "value_out")?;
        let len_out = out(len_out, "len_out")?;
        let found_out = out(found_out, "found_out")?;
        let value = cache.cache.get(key)?;
        let found = value.is_some();
        let (ptr, len) = match value {
            Some(v) if !v.is_empty() => {
                let len = v.len();
                (Box::into_raw(v.into_boxed_slice()).cast::<u8>(), len)
            }
            _ => (std::ptr::null_mut(), 0),
        };
        // SAFETY: checked non-NULL; valid for writes by the caller's contract.
        unsafe {
            value_out.write(ptr);
            len_out.write(len);
            found_out.write(found);
        }
        Ok(())
    })
}

/// Frees a buffer from `aiolock_cache_get`. `len` must be the length `aiolock_cache_get` gave.
/// NULL does nothing.
///
/// # Safety
///
/// `data` must be NULL or a buffer from `aiolock_cache_get` with this length, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_buffer_free(data: *mut u8, len: usize) {
    guard_quiet((), || {
        if !data.is_null() {
            let slice = std::ptr::slice_from_raw_parts_mut(data, len);
            // SAFETY: the caller's contract: a boxed slice of `len` bytes from aiolock_cache_get.
            drop(unsafe { Box::from_raw(slice) });
        }
    })
}

/// Stores `value` under `key`, expiring after `ttl_secs` (`AIOLOCK_NO_EXPIRY`: never).
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT` (NULL; a negative, NaN, infinite or
/// sub-nanosecond TTL), `AIOLOCK_INVALID_KEY`, the backend's errors.
///
/// # Safety
///
/// `cache` must be NULL or a live cache; `key` and `value` must be NULL or valid for
/// reads of their lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_cache_set(
    cache: *const aiolock_cache,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    ttl_secs: f64,
) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let cache = unsafe { handle(cache, "cache") }?;
        // SAFETY: the caller's contract.
        let key = unsafe { bytes(key, key_len, "key") }?;
        // SAFETY: the caller's contract.
        let value = unsafe { bytes(value, value_len, "value") }?;
        cache.cache.set(key, value, ttl(ttl_secs, "ttl_secs")?)
    })
}

/// Stores `value` under `key` only if the key is absent (expiring after `ttl_secs`,
/// `AIOLOCK_NO_EXPIRY`: never). On success, `*added_out` says whether it stored it.
///
/// Errors: as `aiolock_cache_set`.
///
/// # Safety
///
/// As `aiolock_cache_set`; `added_out` must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_cache_add(
    cache: *const aiolock_cache,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    ttl_secs: f64,
    added_out: *mut bool,
) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let cache = unsafe { handle(cache, "cache") }?;
        // SAFETY: the caller's contract.
        let key = unsafe { bytes(key, key_len, "key") }?;
        // SAFETY: the caller's contract.
        let value = unsafe { bytes(value, value_len, "value") }?;
        let added_out = out(added_out, "added_out")?;
        let added = cache.cache.add(key, value, ttl(ttl_secs, "ttl_secs")?)?;
        // SAFETY: checked non-NULL; valid for a write by the caller's contract.
        unsafe { added_out.write(added) };
        Ok(())
    })
}

/// Removes `key`. On success, `*deleted_out` says whether it was present.
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT`, `AIOLOCK_INVALID_KEY`, the backend's errors.
///
/// # Safety
///
/// `cache` must be NULL or a live cache; `key` must be NULL or valid for reads of
/// `key_len` bytes; `deleted_out` must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_cache_delete(
    cache: *const aiolock_cache,
    key: *const u8,
    key_len: usize,
    deleted_out: *mut bool,
) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let cache = unsafe { handle(cache, "cache") }?;
        // SAFETY: the caller's contract.
        let key = unsafe { bytes(key, key_len, "key") }?;
        let deleted_out = out(deleted_out, "deleted_out")?;
        let deleted = cache.cache.delete(key)?;
        // SAFETY: checked non-NULL; valid for a write by the caller's contract.
        unsafe { deleted_out.write(deleted) };
        Ok(())
    })
}

/// How many callers of `cache` in this process are waiting for the RedLock on `key`
/// right now: their `aiolock_acquire` found the lock held and waits for its release,
/// its lease end or its own bound. `key` is the key given to `aiolock_acquire` (the
/// cache adds the namespace and the lock suffix). For stampede monitoring, and for
/// tests that must release only once N callers wait (poll it; never sleep a fixed
/// time and hope).
///
/// Counts only this cache handle's callers in this process: callers in other
/// processes, or of another handle opened on the same server, are not counted. An
/// empty key has no waiters (0). Sends nothing to the backend.
///
/// On success, `*count_out` is the count.
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT` (NULL `cache` or `count_out`, NULL `key` with a
/// length other than 0).
///
/// # Safety
///
/// `cache` must be NULL or a live cache; `key` must be NULL or valid for reads of
/// `key_len` bytes; `count_out` must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_cache_waiting(
    cache: *const aiolock_cache,
    key: *const u8,
    key_len: usize,
    count_out: *mut usize,
) -> aiolock_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let cache = unsafe { handle(cache, "cache") }?;
        // SAFETY: the caller's contract.
        let key = unsafe { bytes(key, key_len, "key") }?;
        let count_out = out(count_out, "count_out")?;
        let count = cache.cache.waiting(key);
        // SAFETY: checked non-NULL; valid for a write by the caller's contract.
        unsafe { count_out.write(count) };
        Ok(())
    })
}

/// The library's version, e.g. `"0.1.0"`: a static string, never freed.
#[unsafe(no_mangle)]
pub extern "C" fn aiolock_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The text of a status code, e.g. `"optimistic lock conflict"` for
/// `AIOLOCK_CONFLICT`; `"unknown status"` for a number that is no code. A static
/// string, never freed.
#[unsafe(no_mangle)]
pub extern "C" fn aiolock_status_str(status: c_int) -> *const c_char {
    let text: &'static std::ffi::CStr = match status {
        0 => c"ok",
        1 => c"invalid argument",
        2 => c"invalid key",
        3 => c"optimistic lock conflict",
        4 => c"timed out",
        5 => c"connection error",
        6 => c"protocol error",
        7 => c"backend error",
        8 => c"unsupported",
        9 => c"error",
        10 => c"panic in aiolock",
        11 => c"lock lost",
        _ => c"unknown status",
    };
    text.as_ptr()
}

/// The detailed message of the last failed call on the calling thread (`""` when the
/// last call succeeded). Borrowed: valid until the next aiolock call on this thread;
/// the caller must not free it. Callers whose code can move between threads (Go)
/// must read it on the thread that made the failed call, or use
/// `aiolock_last_error_copy` there.
#[unsafe(no_mangle)]
pub extern "C" fn aiolock_last_error_message() -> *const c_char {
    guard_quiet(c"".as_ptr(), boundary::last_error_ptr)
}

/// Copies the message of the last failed call on the calling thread into `buf` (at
/// most `len` bytes, always NUL-terminated when `len` > 0, truncated if needed), and
/// sets `*needed_out` (optional, may be NULL) to the size the whole message needs,
/// NUL included. `buf` may be NULL when `len` is 0 (to ask for the size). Does not
/// change the last error.
///
/// Errors: `AIOLOCK_INVALID_ARGUMENT` when `buf` is NULL and `len` is not 0.
///
/// # Safety
///
/// `buf` must be NULL or valid for writes of `len` bytes; `needed_out` must be NULL or
/// valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aiolock_last_error_copy(
    buf: *mut c_char,
    len: usize,
    needed_out: *mut usize,
) -> aiolock_status {
    guard_quiet(aiolock_status::AIOLOCK_PANIC, || {
        if buf.is_null() && len != 0 {
            return aiolock_status::AIOLOCK_INVALID_ARGUMENT;
        }
        let message = boundary::last_error_bytes();
        if len > 0 {
            let n = message.len().min(len - 1);
            // SAFETY: `buf` is valid for `len` > n bytes by the caller's contract; the
            // message is a separate allocation.
            unsafe {
                std::ptr::copy_nonoverlapping(message.as_ptr(), buf.cast::<u8>(), n);
                buf.add(n).write(0);
            }
        }
        if !needed_out.is_null() {
            // SAFETY: non-NULL; valid for a write by the caller's contract.
            unsafe { needed_out.write(message.len() + 1) };
        }
        aiolock_status::AIOLOCK_OK
    })
}

/// Panics inside the boundary, to show that a panic returns `AIOLOCK_PANIC` and the
/// process goes on. Only in libraries built for tests (cargo feature `test-panic`).
#[cfg(feature = "test-panic")]
#[unsafe(no_mangle)]
pub extern "C" fn aiolock_test_panic() -> aiolock_status {
    guard(|| panic!("aiolock_test_panic was called"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last_error() -> String {
        // SAFETY: a valid NUL-terminated string until the next call on this thread.
        unsafe { CStr::from_ptr(aiolock_last_error_message()) }
            .to_string_lossy()
            .into_owned()
    }

    /// The committed header is the one ffi/build.rs generates from this source.
    #[test]
    fn header_is_fresh() {
        let generated = include_str!(concat!(env!("OUT_DIR"), "/aiolock.h"));
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../include/aiolock.h");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        if generated != committed {
            let line = generated
                .lines()
                .zip(committed.lines().chain(std::iter::repeat("")))
                .position(|(g, c)| g != c)
                .map_or(generated.lines().count() + 1, |i| i + 1);
            panic!(
                "include/aiolock.h is stale (first difference at line {line}): run ffi/gen-header.sh and commit it"
            );
        }
    }

    #[test]
    fn status_texts_match_the_error_kinds() {
        use aiolock::ErrorKind::*;
        for kind in [
            InvalidArgument,
            InvalidKey,
            Conflict,
            Timeout,
            Connection,
            Protocol,
            Backend,
            Unsupported,
            Lost,
        ] {
            let status = boundary::status_of(kind) as c_int;
            // SAFETY: static strings.
            let text = unsafe { CStr::from_ptr(aiolock_status_str(status)) };
            assert_eq!(text.to_str().unwrap(), kind.as_str());
        }
    }

    #[test]
    fn open_use_and_free() {
        let mut cache = std::ptr::null_mut();
        // SAFETY: valid pointers throughout.
        unsafe {
            assert_eq!(
                aiolock_cache_open(c"memory://".as_ptr(), &mut cache),
                aiolock_status::AIOLOCK_OK
            );
            let mut lock = std::ptr::null_mut();
            let mut outcome = aiolock_outcome::AIOLOCK_TIMED_OUT;
            let status =
                aiolock_acquire(cache, b"k".as_ptr(), 1, 1.0, -1.0, &mut lock, &mut outcome);
            assert_eq!(status, aiolock_status::AIOLOCK_OK);
            assert_eq!(outcome, aiolock_outcome::AIOLOCK_ACQUIRED);
            let mut removed = false;
            assert_eq!(
                aiolock_release(lock, &mut removed),
                aiolock_status::AIOLOCK_OK
            );
            assert!(removed);
            let status = aiolock_acquire(
                cache,
                b"k".as_ptr(),
                1,
                f64::NAN,
                -1.0,
                &mut lock,
                &mut outcome,
            );
            assert_eq!(status, aiolock_status::AIOLOCK_INVALID_ARGUMENT);
            assert!(last_error().contains("lease_secs"), "{}", last_error());
            // -infinity is not "a negative number": it is refused like +infinity.
            let status = aiolock_acquire(
                cache,
                b"k".as_ptr(),
                1,
                1.0,
                f64::NEG_INFINITY,
                &mut lock,
                &mut outcome,
            );
            assert_eq!(status, aiolock_status::AIOLOCK_INVALID_ARGUMENT);
            assert!(last_error().contains("wait_secs"), "{}", last_error());
            let status = aiolock_cache_set(cache, b"k".as_ptr(), 1, b"v".as_ptr(), 1, 5e-324);
            assert_eq!(status, aiolock_status::AIOLOCK_INVALID_ARGUMENT);
            assert!(last_error().contains("5e-324"), "{}", last_error());
            aiolock_cache_free(cache);
        }
    }

    #[test]
    fn exclusive_acquire_try_and_release() {
        let mut cache = std::ptr::null_mut();
        // SAFETY: valid pointers throughout.
        unsafe {
            assert_eq!(
                aiolock_cache_open(c"memory://".as_ptr(), &mut cache),
                aiolock_status::AIOLOCK_OK
            );
            let mut held = std::ptr::null_mut();
            let status = aiolock_exclusive_acquire(cache, b"k".as_ptr(), 1, 30.0, 1.0, &mut held);
            assert_eq!(status, aiolock_status::AIOLOCK_OK);
            assert!(!held.is_null(), "uncontended: held");
            // Not acquired: OK and a NULL handle, no last error.
            let mut other = std::ptr::dangling_mut::<aiolock_exclusive>();
            let status = aiolock_exclusive_try_acquire(cache, b"k".as_ptr(), 1, 30.0, &mut other);
            assert_eq!(status, aiolock_status::AIOLOCK_OK);
            assert!(other.is_null());
            assert_eq!(last_error(), "");
            let mut other = std::ptr::dangling_mut::<aiolock_exclusive>();
            let status = aiolock_exclusive_acquire(cache, b"k".as_ptr(), 1, 30.0, 0.01, &mut other);
            assert_eq!(status, aiolock_status::AIOLOCK_OK);
            assert!(other.is_null());
            // A negative wait is refused (no default), and the output is untouched.
            let mut untouched = std::ptr::dangling_mut::<aiolock_exclusive>();
            let status =
                aiolock_exclusive_acquire(cache, b"k".as_ptr(), 1, 30.0, -1.0, &mut untouched);
            assert_eq!(status, aiolock_status::AIOLOCK_INVALID_ARGUMENT);
            assert!(last_error().contains("wait_secs"), "{}", last_error());
            assert_eq!(untouched, std::ptr::dangling_mut::<aiolock_exclusive>());
            let mut removed = false;
            assert_eq!(
                aiolock_exclusive_release(held, &mut removed),
                aiolock_status::AIOLOCK_OK
            );
            assert!(removed);
            // Freed without a release: the lock is released all the same.
            let status = aiolock_exclusive_try_acquire(cache, b"k".as_ptr(), 1, 30.0, &mut held);
            assert_eq!(status, aiolock_status::AIOLOCK_OK);
            assert!(!held.is_null());
            aiolock_exclusive_free(held);
            aiolock_exclusive_free(std::ptr::null_mut());
            let status = aiolock_exclusive_try_acquire(cache, b"k".as_ptr(), 1, 30.0, &mut held);
            assert_eq!(status, aiolock_status::AIOLOCK_OK);
            assert!(!held.is_null(), "free released it");
            assert_eq!(
                aiolock_exclusive_release(held, std::ptr::null_mut()),
                aiolock_status::AIOLOCK_OK
            );
            aiolock_cache_free(cache);
        }
    }

    fn open_memory() -> *mut aiolock_cache {
        let mut cache = std::ptr::null_mut();
        // SAFETY: valid pointers.
        let status = unsafe { aiolock_cache_open(c"memory://".as_ptr(), &mut cache) };
        assert_eq!(status, aiolock_status::AIOLOCK_OK);
        cache
    }

    #[test]
    fn flags_fence_extend_and_remaining() {
        use aiolock_status::*;
        let cache = open_memory();
        // SAFETY: valid pointers throughout.
        unsafe {
            let mut lock = std::ptr::null_mut();
            let mut outcome = aiolock_outcome::AIOLOCK_TIMED_OUT;
            let bad = aiolock_acquire_ex(
                cache,
                b"k".as_ptr(),
                1,
                5.0,
                -1.0,
                4,
                &mut lock,
                &mut outcome,
            );
            assert_eq!(bad, AIOLOCK_INVALID_ARGUMENT);
            assert!(
                last_error().contains("flags: unknown bits 0x4"),
                "{}",
                last_error()
            );
            assert!(lock.is_null());
            let flags = AIOLOCK_FENCED;
            let status = aiolock_acquire_ex(
                cache,
                b"k".as_ptr(),
                1,
                5.0,
                -1.0,
                flags,
                &mut lock,
                &mut outcome,
            );
            assert_eq!(status, AIOLOCK_OK);
            let (mut fence, mut has) = (7, false);
            assert_eq!(aiolock_lock_fence(lock, &mut fence, &mut has), AIOLOCK_OK);
            assert!(has);
            let mut left = 0.0;
            assert_eq!(aiolock_lock_lease_remaining(lock, &mut left), AIOLOCK_OK);
            assert!(left > 4.0 && left <= 5.0, "{left}");
            assert_eq!(aiolock_lock_extend(lock, 60.0), AIOLOCK_OK);
            assert_eq!(aiolock_lock_lease_remaining(lock, &mut left), AIOLOCK_OK);
            assert!(left > 59.0, "{left}");
            assert_eq!(
                aiolock_lock_extend(lock, f64::NAN),
                AIOLOCK_INVALID_ARGUMENT
            );
            assert_eq!(aiolock_lock_check(lock), AIOLOCK_INVALID_ARGUMENT);
            assert!(
                last_error().contains("AIOLOCK_WATCHDOG"),
                "{}",
                last_error()
            );
            assert_eq!(aiolock_release(lock, std::ptr::null_mut()), AIOLOCK_OK);
            let mut ex = std::ptr::null_mut();
            let status =
                aiolock_exclusive_acquire_ex(cache, b"k".as_ptr(), 1, 5.0, 0.0, flags, &mut ex);
            assert_eq!(status, AIOLOCK_OK);
            let mut next = 0;
            assert_eq!(aiolock_exclusive_fence(ex, &mut next, &mut has), AIOLOCK_OK);
            assert!(has && next > fence, "{next} after {fence}");
            // The lock key is deleted behind its back: extend says Lost.
            let mut deleted = false;
            aiolock_cache_delete(cache, b"k-lock".as_ptr(), 6, &mut deleted);
            assert!(deleted);
            assert_eq!(aiolock_exclusive_extend(ex, 5.0), AIOLOCK_LOST);
            assert!(last_error().starts_with("lock lost: "), "{}", last_error());
            aiolock_exclusive_free(ex);
            aiolock_cache_free(cache);
        }
    }

    unsafe extern "C" fn count_loss(
        user_data: *mut std::ffi::c_void,
        status: c_int,
        message: *const c_char,
    ) {
        // SAFETY: the test passes a live channel sender; the message is valid now.
        let (sender, message) = unsafe {
            (
                &*user_data.cast::<std::sync::mpsc::Sender<(c_int, String)>>(),
                CStr::from_ptr(message),
            )
        };
        let _ = sender.send((status, message.to_string_lossy().into_owned()));
    }

    #[test]
    fn a_watched_loss_is_checked_and_called_back_from_the_watchdog_thread() {
        use aiolock_status::*;
        let cache = open_memory();
        let (sender, losses) = std::sync::mpsc::channel::<(c_int, String)>();
        let sender = Box::into_raw(Box::new(sender));
        // SAFETY: valid pointers throughout; the sender outlives the handle.
        unsafe {
            let mut ex = std::ptr::null_mut();
            let status = aiolock_exclusive_acquire_ex(
                cache,
                b"w".as_ptr(),
                1,
                0.3,
                0.0,
                AIOLOCK_WATCHDOG,
                &mut ex,
            );
            assert_eq!(status, AIOLOCK_OK);
            assert_eq!(aiolock_exclusive_check(ex), AIOLOCK_OK);
            assert_eq!(
                aiolock_exclusive_on_lost(ex, None, sender.cast()),
                AIOLOCK_INVALID_ARGUMENT
            );
            assert_eq!(
                aiolock_exclusive_on_lost(ex, Some(count_loss), sender.cast()),
                AIOLOCK_OK
            );
            let mut deleted = false;
            aiolock_cache_delete(cache, b"w-lock".as_ptr(), 6, &mut deleted);
            let (status, message) = losses
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("called");
            assert_eq!(status, AIOLOCK_LOST as c_int);
            assert!(message.contains("no longer ours"), "{message}");
            assert_eq!(aiolock_exclusive_check(ex), AIOLOCK_LOST);
            // Lost already: refused, and never called.
            assert_eq!(
                aiolock_exclusive_on_lost(ex, Some(count_loss), sender.cast()),
                AIOLOCK_LOST
            );
            let mut removed = true;
            assert_eq!(aiolock_exclusive_release(ex, &mut removed), AIOLOCK_OK);
            assert!(!removed);
            assert!(losses.try_recv().is_err(), "called once");
            drop(Box::from_raw(sender));
            aiolock_cache_free(cache);
        }
    }
}
