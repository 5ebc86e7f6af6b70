//! The one small boundary every export goes through: a panic guard, the per-thread
//! last error, and checked conversions of raw pointers.
//!
//! An export is written as a literal `unsafe extern "C" fn` whose body is
//! `guard(|| { ... })`: the closure checks its pointers with [`bytes`], [`utf8`],
//! [`out`] and [`handle`], does the work, and writes its outputs last, so a failure
//! leaves every output untouched.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

use aiolock::{Error, ErrorKind, Result};

use crate::aiolock_status;

thread_local! {
    /// The message of the last failed call on this thread (`None` after a success).
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Runs `f`, turning its error into a status code and a per-thread message, and a
/// panic into [`aiolock_status::AIOLOCK_PANIC`] (the host process goes on).
pub(crate) fn guard(f: impl FnOnce() -> Result<()>) -> aiolock_status {
    let (status, message) = match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            clear_last_error();
            return aiolock_status::AIOLOCK_OK;
        }
        Ok(Err(err)) => (status_of(err.kind()), err.to_string()),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            // One line and bounded, like every aiolock message.
            let message = format!("aiolock panicked (this is a bug in aiolock): {what}");
            let message = Error::new(ErrorKind::Backend, message).message().to_owned();
            drop_payload(payload);
            (aiolock_status::AIOLOCK_PANIC, message)
        }
    };
    set_last_error(message);
    status
}

/// The guard of the calls that must not touch the last error (the `*_free` functions,
/// the error and version getters): a panic returns `on_panic`, never unwinds into C.
pub(crate) fn guard_quiet<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(t) => t,
        Err(payload) => {
            drop_payload(payload);
            on_panic
        }
    }
}

/// Drops a panic payload without letting a panicking `Drop` unwind into C (such a
/// second payload is leaked: better than an abort).
fn drop_payload(payload: Box<dyn std::any::Any + Send>) {
    if let Err(again) = panic::catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

fn set_last_error(message: String) {
    // An interior NUL would cut the message; replace it rather than lose everything.
    let message = CString::new(message.replace('\0', "\u{FFFD}")).ok();
    // `try_with` fails only while the thread is being torn down: nothing to report to.
    let _ = LAST_ERROR.try_with(|cell| *cell.borrow_mut() = message);
}

/// After a success: no allocation, the hot path of every call.
fn clear_last_error() {
    let _ = LAST_ERROR.try_with(|cell| {
        if cell.borrow().is_some() {
            *cell.borrow_mut() = None;
        }
    });
}

/// A pointer to this thread's last error message, valid until the next aiolock call
/// on this thread.
pub(crate) fn last_error_ptr() -> *const c_char {
    const EMPTY: &CStr = c"";
    LAST_ERROR
        .try_with(|cell| cell.borrow().as_deref().unwrap_or(EMPTY).as_ptr())
        .unwrap_or(EMPTY.as_ptr())
}

/// A copy of this thread's last error message, without its NUL.
pub(crate) fn last_error_bytes() -> Vec<u8> {
    LAST_ERROR
        .try_with(|cell| cell.borrow().as_deref().map(|m| m.to_bytes().to_vec()))
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// The status code of an error kind. `ErrorKind` is non-exhaustive: kinds added later
/// map to [`aiolock_status::AIOLOCK_ERROR`] until they get a code of their own.
pub(crate) fn status_of(kind: ErrorKind) -> aiolock_status {
    match kind {
        ErrorKind::InvalidArgument => aiolock_status::AIOLOCK_INVALID_ARGUMENT,
        ErrorKind::InvalidKey => aiolock_status::AIOLOCK_INVALID_KEY,
        ErrorKind::Conflict => aiolock_status::AIOLOCK_CONFLICT,
        ErrorKind::Timeout => aiolock_status::AIOLOCK_TIMEOUT,
        ErrorKind::Connection => aiolock_status::AIOLOCK_CONNECTION,
        ErrorKind::Protocol => aiolock_status::AIOLOCK_PROTOCOL,
        ErrorKind::Backend => aiolock_status::AIOLOCK_BACKEND,
        ErrorKind::Unsupported => aiolock_status::AIOLOCK_UNSUPPORTED,
        ErrorKind::Lost => aiolock_status::AIOLOCK_LOST,
        _ => aiolock_status::AIOLOCK_ERROR,
    }
}

pub(crate) fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, message.into())
}

/// The bytes at `ptr .. ptr + len`. A NULL `ptr` is accepted with `len == 0` (the
/// empty string of bytes) and rejected otherwise.
///
/// # Safety
///
/// A non-NULL `ptr` must be valid for reads of `len` bytes for `'a`.
pub(crate) unsafe fn bytes<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a [u8]> {
    if ptr.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(invalid(format!("{what} is NULL with a length of {len}")))
        };
    }
    if len > isize::MAX as usize {
        return Err(invalid(format!("the length of {what} is too large: {len}")));
    }
    // SAFETY: non-NULL, length in range; validity is the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// The NUL-terminated UTF-8 string at `ptr`.
///
/// # Safety
///
/// A non-NULL `ptr` must point to a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn utf8<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL; NUL termination is the caller's contract.
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str()
        .map_err(|e| invalid(format!("{what} is not valid UTF-8 ({e})")))
}

/// Checks an output pointer; the caller writes it (with `ptr::write`) only once the
/// call has succeeded.
pub(crate) fn out<T>(ptr: *mut T, what: &str) -> Result<*mut T> {
    if ptr.is_null() {
        Err(invalid(format!("{what} is NULL")))
    } else {
        Ok(ptr)
    }
}

/// The object behind a borrowed handle.
///
/// # Safety
///
/// A non-NULL `ptr` must be a live handle of this type, not used mutably elsewhere.
pub(crate) unsafe fn handle<'a, T>(ptr: *const T, what: &str) -> Result<&'a T> {
    // SAFETY: the caller's contract.
    unsafe { ptr.as_ref() }.ok_or_else(|| invalid(format!("{what} is NULL")))
}

/// A duration given in seconds as a `double`, validated as [`aiolock::seconds`] does:
/// finite, not negative, not a positive number below one nanosecond (subnormals
/// included), at most [`aiolock::MAX_DURATION`]. `0.0` and `-0.0` are zero.
///
/// Every `double` argument of the C ABI goes through this, then its own rule for
/// zero and negatives ([`lease`], [`wait`], [`ttl`]).
pub(crate) fn secs(value: f64, what: &str) -> Result<Duration> {
    // The hot path of every acquire: whole seconds and nanoseconds by two float ops,
    // not `Duration::from_secs_f64`'s exact conversion, which costs more than the rest
    // of the boundary (a difference below a nanosecond). NaN fails the comparison.
    if (1e-9..=MAX_SECS).contains(&value) {
        let whole = value.trunc();
        let nanos = ((value - whole) * 1e9) as u32; // saturating cast, in 0..1e9
        let d = Duration::new(whole as u64, nanos.min(999_999_999));
        if !d.is_zero() {
            return Ok(d);
        }
    }
    aiolock::seconds(value).map_err(|e| invalid(format!("{what}: {}", e.message())))
}

const MAX_SECS: f64 = aiolock::MAX_DURATION.as_secs() as f64;

/// `lease_secs`: a duration longer than zero.
pub(crate) fn lease(value: f64, what: &str) -> Result<Duration> {
    let d = secs(value, what)?;
    if d.is_zero() {
        return Err(invalid(format!("{what} must be longer than zero")));
    }
    Ok(d)
}

/// `wait_secs`: `None` (one lease) for a negative finite number, as
/// `AIOLOCK_WAIT_DEFAULT`; 0 (or -0.0) for no wait; NaN and ±infinity are refused
/// (-infinity is not "any negative number": it is as invalid as +infinity).
pub(crate) fn wait(value: f64, what: &str) -> Result<Option<Duration>> {
    if value < 0.0 && value.is_finite() {
        return Ok(None);
    }
    secs(value, what).map(Some)
}

/// `wait_secs` of the exclusive lock: a bound checked like a lease, except that 0
/// (or -0.0) is allowed and means "claim once, do not wait". Negative numbers are
/// refused: an exclusive waiter has no default to fall back to, and a sign error in
/// the caller's arithmetic should not turn into some other wait.
pub(crate) fn bound(value: f64, what: &str) -> Result<Duration> {
    if value < 0.0 {
        return Err(invalid(format!(
            "{what} must not be negative (0 claims once without waiting): {value:e}"
        )));
    }
    secs(value, what)
}

/// `ttl_secs`: `None` (no expiry) for `AIOLOCK_NO_EXPIRY` (0, or -0.0), else a
/// duration longer than zero.
pub(crate) fn ttl(value: f64, what: &str) -> Result<Option<Duration>> {
    if value == 0.0 {
        return Ok(None);
    }
    secs(value, what).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secs_agrees_with_aiolock_seconds() {
        for v in [
            0.0,
            -0.0,
            1e-9,
            1.0000001e-9,
            2e-9,
            0.05,
            0.1,
            1.0,
            1.5,
            5.0,
            86_400.25,
            MAX_SECS,
        ] {
            let fast = secs(v, "t").unwrap();
            let exact = aiolock::seconds(v).unwrap();
            let diff = fast.abs_diff(exact);
            assert!(
                diff <= Duration::from_nanos(1),
                "{v}: {fast:?} vs {exact:?}"
            );
            assert_eq!(fast.is_zero(), v == 0.0, "{v}");
        }
    }

    /// The classes of `double` every duration argument of the C ABI can get, and what
    /// each argument makes of them.
    #[test]
    fn every_float_argument_is_checked_the_same_way() {
        const INFINITY: f64 = f64::INFINITY;
        const NEG_INFINITY: f64 = f64::NEG_INFINITY;
        const NAN: f64 = f64::NAN;
        const MIN_POSITIVE: f64 = f64::MIN_POSITIVE;
        const SUBNORMAL: f64 = 5e-324;
        // (value, lease, wait, ttl, exclusive bound): Err = AIOLOCK_INVALID_ARGUMENT.
        type Want = Option<&'static str>;
        let cases: [(f64, Want, Want, Want, Want); 13] = [
            (NAN, None, None, None, None),
            (INFINITY, None, None, None, None),
            (NEG_INFINITY, None, None, None, None),
            (-1.0, None, Some("default"), None, None),
            (-1e300, None, Some("default"), None, None),
            (-SUBNORMAL, None, Some("default"), None, None),
            (-0.0, None, Some("0ns"), Some("none"), Some("0ns")),
            (0.0, None, Some("0ns"), Some("none"), Some("0ns")),
            (SUBNORMAL, None, None, None, None),
            (MIN_POSITIVE, None, None, None, None),
            (1e-10, None, None, None, None),
            (1e-9, Some("1ns"), Some("1ns"), Some("1ns"), Some("1ns")),
            (1e300, None, None, None, None),
        ];
        for (value, want_lease, want_wait, want_ttl, want_bound) in cases {
            let got_lease = lease(value, "lease_secs").map(|d| format!("{d:?}"));
            let got_wait = wait(value, "wait_secs")
                .map(|w| w.map_or("default".to_owned(), |d| format!("{d:?}")));
            let got_ttl =
                ttl(value, "ttl_secs").map(|t| t.map_or("none".to_owned(), |d| format!("{d:?}")));
            let got_bound = bound(value, "bound_secs").map(|d| format!("{d:?}"));
            for (what, got, want) in [
                ("lease_secs", got_lease, want_lease),
                ("wait_secs", got_wait, want_wait),
                ("ttl_secs", got_ttl, want_ttl),
                ("bound_secs", got_bound, want_bound),
            ] {
                match (got, want) {
                    (Ok(got), Some(want)) => assert_eq!(got, want, "{what} = {value:e}"),
                    (Err(e), None) => {
                        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
                        let m = e.to_string();
                        assert!(m.starts_with(&format!("invalid argument: {what}")), "{m}");
                        assert!(m.len() < 160, "compact: {m}");
                    }
                    (got, want) => panic!("{what} = {value:e}: got {got:?}, want {want:?}"),
                }
            }
        }
    }
}
