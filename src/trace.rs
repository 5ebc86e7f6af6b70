//! The `tracing` feature's spans and events, compiled once for both flavors.
//!
//! With the feature on, the lock paths open a span per operation (`acquire`, `wait`,
//! `release`, `extend`, `cas`) with the fields `key` (lossy UTF-8), `backend` and `outcome`,
//! emit a `debug` event `"waiting"` right before a waiter waits, and a `warn` for every
//! release whose failure nobody sees (inside `run`, a dropped guard, a cleanup) and
//! every release that was skipped. With the feature off every item here is an empty
//! inline function or a zero-sized type: nothing is computed, nothing is linked.
//!
//! The flavor roots wrap a call in its span with `in_span!` (entered in the blocking
//! flavor, `Instrument`ed in the async one).

#[cfg(any(feature = "tracing", test))]
use std::fmt;

use crate::core::wait::{Outcome, Wake};
use crate::error::{Error, Result};

/// A lock key, written as lossy UTF-8 without allocating.
#[cfg(any(feature = "tracing", test))]
pub(crate) struct Lossy<'a>(pub(crate) &'a [u8]);

#[cfg(any(feature = "tracing", test))]
impl fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_str("\u{FFFD}")?;
            }
        }
        Ok(())
    }
}

/// The operations that get a span.
#[derive(Clone, Copy)]
pub(crate) enum Op {
    Acquire,
    Wait,
    Release,
    Extend,
    Cas,
}

/// A span of the `tracing` feature (a zero-sized stand-in without it).
#[cfg(feature = "tracing")]
pub(crate) type Span = tracing::Span;

/// A span of the `tracing` feature (a zero-sized stand-in without it).
#[cfg(not(feature = "tracing"))]
#[derive(Clone, Copy)]
pub(crate) struct Span;

/// The span of `op` on `key` of a `backend`; `outcome` is recorded when it ends.
#[inline]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn span(op: Op, key: &[u8], backend: &'static str) -> Span {
    #[cfg(feature = "tracing")]
    {
        use tracing::field::Empty;
        let key = Lossy(key);
        match op {
            Op::Acquire => {
                tracing::debug_span!("acquire", key = %key, backend, outcome = Empty)
            }
            Op::Wait => tracing::debug_span!("wait", key = %key, backend, outcome = Empty),
            Op::Release => {
                tracing::debug_span!("release", key = %key, backend, outcome = Empty)
            }
            Op::Extend => {
                tracing::debug_span!("extend", key = %key, backend, outcome = Empty)
            }
            Op::Cas => tracing::debug_span!("cas", key = %key, backend, outcome = Empty),
        }
    }
    #[cfg(not(feature = "tracing"))]
    Span
}

/// Records how the operation of `span` ended: `ok(value)`, or `"error"` (and the error).
#[inline]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn end<T>(span: &Span, result: &Result<T>, ok: impl FnOnce(&T) -> &'static str) {
    match result {
        #[cfg(feature = "tracing")]
        Ok(value) => {
            span.record("outcome", ok(value));
        }
        #[cfg(not(feature = "tracing"))]
        Ok(_) => {}
        Err(e) => failed(span, e),
    }
}

/// Ends `span` with an error (what [`end`] does with an `Err`).
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn failed(span: &Span, e: &Error) {
    #[cfg(feature = "tracing")]
    {
        span.record("outcome", "error");
        let _entered = span.enter();
        tracing::debug!(error = %e, "failed");
    }
}

/// The `outcome` field of an acquisition.
pub(crate) fn outcome(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Acquired => "acquired",
        Outcome::Released => "released",
        Outcome::TimedOut => "timed_out",
    }
}

/// The `outcome` field of a wait.
pub(crate) fn wake(wake: Wake) -> &'static str {
    match wake {
        Wake::Released => "released",
        Wake::Vacant => "vacant",
        Wake::Deadline => "deadline",
    }
}

/// The `outcome` field of a release.
pub(crate) fn released(removed: bool) -> &'static str {
    if removed { "released" } else { "not_held" }
}

/// The `outcome` of an extend span.
pub(crate) fn extended(renewed: bool) -> &'static str {
    if renewed { "extended" } else { "not_held" }
}

/// The `debug` event `"waiting"`: a claim on `key` lost and the caller is about to wait
/// for the holder's release (any release from now on wakes it with `Released`).
#[inline]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn waiting(key: &[u8]) {
    #[cfg(feature = "tracing")]
    tracing::debug!(key = %Lossy(key), "waiting");
}

/// A `warn`: the release of `key` (`what`: where it ran) failed and nobody will see the
/// error; the lock stays until its lease ends.
#[inline]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn discarded(what: &'static str, key: &[u8], backend: &'static str, error: &Error) {
    #[cfg(feature = "tracing")]
    tracing::warn!(key = %Lossy(key), backend, error = %error, "{what}: the release failed and its error was discarded; the lock stays until its lease ends");
}

/// A `warn`: the release of a dropped guard's lock on `key` was never sent (`why`); the
/// lock stays until its lease ends.
#[inline]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
#[cfg_attr(not(feature = "async"), allow(dead_code))]
pub(crate) fn skipped(key: &[u8], backend: &'static str, why: &'static str) {
    #[cfg(feature = "tracing")]
    tracing::warn!(key = %Lossy(key), backend, "the release of a dropped lock guard was skipped ({why}); the lock stays until its lease ends");
}

/// Enters `span` for the rest of the caller's scope (the blocking flavor's calls, and
/// code without an `.await` in both flavors).
#[inline]
pub(crate) fn enter(span: &Span) -> impl Sized + '_ {
    #[cfg(feature = "tracing")]
    return span.enter();
    #[cfg(not(feature = "tracing"))]
    span
}

/// `future` inside `span` (async flavor); `future` itself without the feature.
#[cfg(feature = "async")]
#[inline]
pub(crate) fn instrument<F: Future>(future: F, span: &Span) -> impl Future<Output = F::Output> {
    #[cfg(feature = "tracing")]
    return tracing::Instrument::instrument(future, span.clone());
    #[cfg(not(feature = "tracing"))]
    {
        let _ = span;
        future
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lossy_keys_replace_invalid_bytes() {
        assert_eq!(Lossy(b"app:k-lock").to_string(), "app:k-lock");
        assert_eq!(Lossy(b"a\xffb\xc3").to_string(), "a\u{FFFD}b\u{FFFD}");
    }

    #[cfg(not(feature = "tracing"))]
    #[test]
    fn spans_cost_nothing_without_the_feature() {
        assert_eq!(std::mem::size_of::<Span>(), 0);
    }
}
