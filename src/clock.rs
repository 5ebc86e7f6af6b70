//! The blocking flavor's clock: [`now`] is `std::time::Instant::now()`, read from the
//! CPU's time-stamp counter where the kernel itself keeps time by it.
//!
//! A lock cycle reads the clock two or three times (the lease end before a claim, the
//! store's deadline, the release's lease check). `clock_gettime` costs about 25 ns on
//! a VM (and is a system call wherever there is no vDSO); an `rdtsc` and a multiply
//! cost about half of that, with no system call ever on the fast path.
//!
//! The counter is trusted only on Linux x86-64 with the kernel's clocksource
//! `tsc` (`/sys/devices/system/clocksource/clocksource0/current_clocksource`): the
//! kernel chose it because it found the counter invariant and synchronized across
//! CPUs, and it stops using it (switching to `hpet` or `acpi_pm`) when it finds
//! otherwise. Everywhere else, and while the counter is not calibrated yet, [`now`]
//! is `Instant::now()`. There is one clock per process.
//!
//! The values are `std::time::Instant`s and stay close to `Instant::now()`: the
//! counter is re-anchored to std's clock at least every [`REANCHOR`] it is used (one
//! `clock_gettime` then), its rate measured against std's over the whole time since
//! calibration, so the offset from std's clock stays within microseconds (the
//! counter's rate error over one re-anchoring period), and a re-anchoring may step the
//! clock back by that much at most. A re-anchoring that finds the counter off by more
//! than [`MAX_ERROR`] (a suspended machine, a migrated VM) calibrates again, on std's
//! clock meanwhile; the clocksource is checked again every [`RECHECK`] re-anchorings.

use std::time::{Duration, Instant};

/// How long the counter is used between two re-anchorings to std's clock.
const REANCHOR: Duration = Duration::from_millis(10);

/// The shortest calibration: std's clock until the counter has been measured against
/// it for this long.
const CALIBRATION: Duration = Duration::from_millis(10);

/// A re-anchoring that finds the counter's time this far from std's calibrates again.
const MAX_ERROR: Duration = Duration::from_micros(200);

/// The clocksource is read again every this many re-anchorings (about once a second
/// while the clock is in use).
const RECHECK: u32 = 100;

/// The kernel's current clocksource on Linux.
const CLOCKSOURCE: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";

/// Whether the contents of [`CLOCKSOURCE`] let us trust the time-stamp counter.
fn trusts(clocksource: &str) -> bool {
    clocksource.trim() == "tsc"
}

/// `Instant::now()`, from the time-stamp counter where it can be trusted.
#[inline]
pub(crate) fn now() -> Instant {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        tsc::now()
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        Instant::now()
    }
}

/// Whether [`now`] reads the time-stamp counter (calibrated, and trusted).
#[cfg(test)]
fn counting() -> bool {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        tsc::counting()
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        false
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod tsc {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering, fence};
    use std::time::Instant;

    use parking_lot::Mutex;

    use super::{CALIBRATION, CLOCKSOURCE, MAX_ERROR, REANCHOR, RECHECK, trusts};

    /// The process's clock: `None` where the counter is not trusted.
    static CLOCK: OnceLock<Option<Tsc>> = OnceLock::new();

    #[inline]
    fn clock() -> Option<&'static Tsc> {
        match CLOCK.get() {
            Some(clock) => clock.as_ref(),
            None => init(),
        }
    }

    #[cold]
    #[inline(never)]
    fn init() -> Option<&'static Tsc> {
        CLOCK
            .get_or_init(|| {
                let source = std::fs::read_to_string(CLOCKSOURCE).unwrap_or_default();
                trusts(&source).then(Tsc::new)
            })
            .as_ref()
    }

    #[inline]
    pub(super) fn now() -> Instant {
        match clock() {
            Some(tsc) => tsc.now(),
            None => Instant::now(),
        }
    }

    #[cfg(test)]
    pub(super) fn counting() -> bool {
        clock().is_some_and(|tsc| {
            // Nobody re-anchors while we hold the state.
            let _state = tsc.state.lock();
            tsc.anchor().is_some()
        })
    }

    #[inline]
    fn ticks() -> u64 {
        // SAFETY: `rdtsc` exists on every x86-64 CPU and has no side effect.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    /// The counter's scale and its last anchor, written under a sequence lock (odd
    /// `seq`: being written) so that a reader never mixes two anchors.
    struct Tsc {
        /// The origin of the nanoseconds below.
        origin: Instant,
        seq: AtomicU64,
        /// Nanoseconds per tick, as a 32.32 fixed-point number.
        mult: AtomicU64,
        /// The counter at the last anchor, and std's time then (ns since `origin`).
        anchor_ticks: AtomicU64,
        anchor_ns: AtomicU64,
        /// How many ticks after the anchor it may be used; 0 while not calibrated.
        window: AtomicU64,
        /// The re-anchoring state; whoever takes it re-anchors.
        state: Mutex<State>,
    }

    #[derive(Default)]
    struct State {
        /// The calibration's start: the counter and std's time (ns since `origin`).
        base: Option<(u64, u64)>,
        /// Re-anchorings since the clocksource was last read.
        since_check: u32,
        /// The counter is not trusted any more (the kernel left `tsc`).
        disabled: bool,
    }

    /// A 32.32 fixed-point product, for `ticks` well below 2^32 (a window).
    #[inline]
    fn scale(ticks: u64, mult: u64) -> u64 {
        ((u128::from(ticks) * u128::from(mult)) >> 32) as u64
    }

    fn nanos(d: std::time::Duration) -> u64 {
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    }

    impl Tsc {
        fn new() -> Self {
            Tsc {
                origin: Instant::now(),
                seq: AtomicU64::new(0),
                mult: AtomicU64::new(0),
                anchor_ticks: AtomicU64::new(0),
                anchor_ns: AtomicU64::new(0),
                window: AtomicU64::new(0),
                state: Mutex::new(State::default()),
            }
        }

        /// `(mult, anchor ticks, anchor ns, window)`, consistent; `None` while
        /// calibrating or being re-anchored.
        #[inline]
        fn anchor(&self) -> Option<(u64, u64, u64, u64)> {
            let seq = self.seq.load(Ordering::Acquire);
            let read = (
                self.mult.load(Ordering::Relaxed),
                self.anchor_ticks.load(Ordering::Relaxed),
                self.anchor_ns.load(Ordering::Relaxed),
                self.window.load(Ordering::Relaxed),
            );
            fence(Ordering::Acquire);
            let consistent = seq & 1 == 0 && self.seq.load(Ordering::Relaxed) == seq;
            (consistent && read.3 != 0).then_some(read)
        }

        #[inline]
        fn now(&self) -> Instant {
            let t = ticks();
            if let Some((mult, at, ns, window)) = self.anchor() {
                // Also out of the window when the counter is behind the anchor.
                let elapsed = t.wrapping_sub(at);
                if elapsed < window {
                    return self.origin
                        + std::time::Duration::from_nanos(ns + scale(elapsed, mult));
                }
            }
            self.reanchor()
        }

        /// std's clock, read together with the counter: the counter halfway through
        /// the narrowest of three reads.
        fn sample(&self) -> (Instant, u64) {
            let mut best = (Instant::now(), ticks(), u64::MAX);
            for _ in 0..3 {
                let before = ticks();
                let now = Instant::now();
                let after = ticks();
                let width = after.wrapping_sub(before);
                if width < best.2 {
                    best = (now, before + width / 2, width);
                }
            }
            (best.0, best.1)
        }

        /// Out of the window, or not calibrated: reads std's clock, and re-anchors the
        /// counter to it (unless another thread is doing so).
        #[cold]
        fn reanchor(&self) -> Instant {
            let Some(mut state) = self.state.try_lock() else {
                return Instant::now();
            };
            if state.disabled {
                return Instant::now();
            }
            if let Some((_, base_ns)) = state.base {
                // Calibrating: std's clock until CALIBRATION has passed.
                let now = Instant::now();
                let ns = nanos(now.duration_since(self.origin));
                if self.anchor().is_none() && ns.saturating_sub(base_ns) < nanos(CALIBRATION) {
                    return now;
                }
            }
            let (now, t) = self.sample();
            state.since_check += 1;
            if state.since_check >= RECHECK {
                state.since_check = 0;
                let source = std::fs::read_to_string(CLOCKSOURCE).unwrap_or_default();
                if !trusts(&source) {
                    state.disabled = true;
                    self.publish(0, 0, 0, 0);
                    return now;
                }
            }
            let ns = nanos(now.duration_since(self.origin));
            // How far the counter's time is from std's, by the current anchor.
            let off = match self.anchor() {
                Some((mult, at, at_ns, _)) if t >= at => {
                    Some((at_ns + scale(t - at, mult)).abs_diff(ns))
                }
                Some(_) => None, // the counter went back
                None => Some(0),
            };
            let base = match (state.base, off) {
                (Some((b_ticks, b_ns)), Some(off)) if t > b_ticks && off <= nanos(MAX_ERROR) => {
                    (b_ticks, b_ns)
                }
                _ => {
                    // Calibrate (again) from here, on std's clock meanwhile.
                    state.base = Some((t, ns));
                    self.publish(0, 0, 0, 0);
                    return now;
                }
            };
            let (span_ticks, span_ns) = (t - base.0, ns.saturating_sub(base.1));
            if span_ns < nanos(CALIBRATION) {
                return now;
            }
            let mult =
                u64::try_from((u128::from(span_ns) << 32) / u128::from(span_ticks)).unwrap_or(0);
            // The window: REANCHOR's worth of ticks (and far below 2^32).
            let window = ((u128::from(nanos(REANCHOR)) << 32) / u128::from(mult.max(1)))
                .min(u128::from(u32::MAX)) as u64;
            self.publish(mult, t, ns, if mult == 0 { 0 } else { window });
            now
        }

        fn publish(&self, mult: u64, at: u64, ns: u64, window: u64) {
            let seq = self.seq.load(Ordering::Relaxed);
            self.seq.store(seq + 1, Ordering::Relaxed);
            fence(Ordering::Release);
            self.mult.store(mult, Ordering::Relaxed);
            self.anchor_ticks.store(at, Ordering::Relaxed);
            self.anchor_ns.store(ns, Ordering::Relaxed);
            self.window.store(window, Ordering::Relaxed);
            self.seq.store(seq + 2, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tsc_clocksource_is_trusted() {
        assert!(trusts("tsc\n"));
        assert!(trusts("tsc"));
        for other in ["hpet\n", "acpi_pm\n", "kvm-clock\n", "", "tsc hpet\n"] {
            assert!(!trusts(other), "{other:?}");
        }
    }

    /// Read for 100 ms (10 re-anchorings, calibration included): every reading lies
    /// between std's readings taken just before and just after it, give or take
    /// 100 µs, and the clock never steps back by more than that.
    #[test]
    fn stays_with_std_clock() {
        let slack = Duration::from_micros(100);
        let start = Instant::now();
        let mut last = now();
        let mut reads = 0u64;
        while start.elapsed() < Duration::from_millis(100) {
            let before = Instant::now();
            let t = now();
            let after = Instant::now();
            assert!(t + slack >= before, "{:?} behind std", before - t);
            assert!(t <= after + slack, "{:?} ahead of std", t - after);
            assert!(t + slack >= last, "stepped back by {:?}", last - t);
            last = t;
            reads += 1;
        }
        assert!(reads > 1000);
        let tsc = std::fs::read_to_string(CLOCKSOURCE).is_ok_and(|s| trusts(&s));
        assert_eq!(counting(), tsc && cfg!(target_arch = "x86_64"));
    }
}
