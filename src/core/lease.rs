//! Lease and deadline arithmetic.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The longest lease or TTL accepted: about 31 years, far below every backend's limit
/// (Redis `PX` takes an `i64` of milliseconds, `Instant` arithmetic must not overflow).
pub const MAX_DURATION: Duration = Duration::from_secs(1_000_000_000);

/// Converts seconds given as a float (as aiocache, C, Go and Ruby callers give them)
/// into a [`Duration`].
///
/// `0.0` (and `-0.0`) is [`Duration::ZERO`]. Rejected with
/// [`InvalidArgument`](crate::ErrorKind::InvalidArgument): NaN, ±infinity, negative
/// numbers, positive numbers shorter than one nanosecond (subnormals included: they
/// would silently become zero, which means something else wherever zero is special),
/// and more than [`MAX_DURATION`].
///
/// ```
/// use std::time::Duration;
///
/// assert_eq!(aiolock::seconds(1.5)?, Duration::from_millis(1500));
/// assert_eq!(aiolock::seconds(1e-9)?, Duration::from_nanos(1));
/// assert!(aiolock::seconds(f64::NAN).is_err());
/// assert!(aiolock::seconds(f64::NEG_INFINITY).is_err());
/// assert!(aiolock::seconds(-1.0).is_err());
/// assert!(aiolock::seconds(5e-324).is_err());
/// # Ok::<(), aiolock::Error>(())
/// ```
pub fn seconds(secs: f64) -> Result<Duration> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(Error::invalid_argument(format!(
            "{} is not a valid number of seconds (it must be finite and not negative)",
            Secs(secs)
        )));
    }
    if secs > 0.0 && secs < 1e-9 {
        return Err(Error::invalid_argument(format!(
            "{} s is shorter than one nanosecond (it would round to zero)",
            Secs(secs)
        )));
    }
    let d = Duration::from_secs_f64(secs.min(MAX_DURATION.as_secs_f64() + 1.0));
    check_bounded("duration", d)?;
    Ok(d)
}

/// A number of seconds for a message: short whatever the number (`1.5`, `5e-324`,
/// `1e300`), never hundreds of digits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Secs(pub f64);

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let x = self.0;
        if x == 0.0 || !x.is_finite() || (1e-6..1e15).contains(&x.abs()) {
            write!(f, "{x}")
        } else {
            write!(f, "{x:e}")
        }
    }
}

/// Checks a lease: more than zero and at most [`MAX_DURATION`].
#[inline]
pub fn check_lease(lease: Duration) -> Result<Duration> {
    if lease.is_zero() {
        return Err(Error::invalid_argument(
            "the lease must be longer than zero",
        ));
    }
    check_bounded("lease", lease)
}

/// Checks an optional TTL: `Some(0)` is rejected (ambiguous across backends: memcached
/// reads 0 as "never expires"); `None` means no expiry.
pub fn check_ttl(ttl: Option<Duration>) -> Result<Option<Duration>> {
    match ttl {
        None => Ok(None),
        Some(d) if d.is_zero() => Err(Error::invalid_argument(
            "a TTL must be longer than zero (use None for no expiry)",
        )),
        Some(d) => check_bounded("TTL", d).map(Some),
    }
}

#[inline]
fn check_bounded(what: &str, d: Duration) -> Result<Duration> {
    if d > MAX_DURATION {
        return Err(too_long(what, d));
    }
    Ok(d)
}

#[cold]
fn too_long(what: &str, d: Duration) -> Error {
    Error::invalid_argument(format!(
        "the {what} of {d:?} is longer than the maximum of {MAX_DURATION:?}"
    ))
}

/// `now + d`, for durations already checked against [`MAX_DURATION`].
#[inline]
pub fn deadline(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn seconds_rejects_nan_infinite_negative() {
        for bad in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.001,
            -1.0,
            1e300,
        ] {
            assert_eq!(
                seconds(bad).unwrap_err().kind(),
                ErrorKind::InvalidArgument,
                "{bad}"
            );
        }
        assert_eq!(seconds(0.25).unwrap(), Duration::from_millis(250));
        assert_eq!(seconds(0.0).unwrap(), Duration::ZERO);
        assert_eq!(seconds(-0.0).unwrap(), Duration::ZERO);
    }

    #[test]
    fn seconds_rejects_what_would_round_to_zero() {
        for bad in [5e-324, f64::MIN_POSITIVE, 1e-300, 1e-12, 9.99e-10] {
            let err = seconds(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}");
            assert!(err.message().contains("nanosecond"), "{err}");
        }
        assert_eq!(seconds(1e-9).unwrap(), Duration::from_nanos(1));
    }

    #[test]
    fn messages_print_numbers_compactly() {
        for (x, text) in [
            (5e-324, "5e-324"),
            (-5e-324, "-5e-324"),
            (1e300, "1e300"),
            (-1.5, "-1.5"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "NaN"),
            (0.001, "0.001"),
        ] {
            assert_eq!(Secs(x).to_string(), text);
        }
        for x in [5e-324, -5e-324, 1e300, -1e300, f64::MAX, -f64::MIN_POSITIVE] {
            let err = seconds(x).unwrap_err();
            assert!(err.to_string().len() < 150, "{err}");
        }
    }

    #[test]
    fn zero_and_huge_leases_are_rejected() {
        assert!(check_lease(Duration::ZERO).is_err());
        assert!(check_lease(MAX_DURATION + Duration::from_secs(1)).is_err());
        assert!(check_lease(Duration::from_nanos(1)).is_ok());
        assert!(check_ttl(Some(Duration::ZERO)).is_err());
        assert_eq!(check_ttl(None).unwrap(), None);
    }
}
