//! The keeper: renews a held lock while the command runs, reports its loss, and
//! releases it (or leaves it held until `--min-hold` ends) when asked to finish.
//!
//! This is the one place that knows how the lease is kept alive. It renews with
//! [`ExclusiveGuard::extend`] every third of the lease on a thread of its own; a
//! second thread watches the last confirmed lease end. The lock counts as lost, once
//! and for good, when a renewal fails (an error, or [`aiolock::ErrorKind::Lost`]: the
//! lock is gone or another holder's), or when no renewal was confirmed while a third
//! of the lease was still left (a stopped or unreachable server: the renewal may hang
//! up to the response timeout, the watch does not). The loss goes to the caller's
//! event channel as [`Event::Lost`]. When the library's watchdog lands, it replaces
//! the two threads here; [`Keeper::start`] and [`Keeper::finish`] stay.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aiolock::blocking::ExclusiveGuard;

/// What the `run` loop waits for.
#[derive(Debug)]
pub enum Event {
    /// aiolock got this signal.
    Signal(i32),
    /// The command ended (not reaped yet).
    ChildExited,
    /// The lock is lost: why, in a few words.
    Lost(String),
}

/// How the keeper finished.
#[derive(Debug)]
pub enum Finished {
    /// Released: the key was ours and is deleted.
    Released,
    /// The release found the lock no longer ours (its lease had ended).
    NotOurs,
    /// Left held until this instant (`--min-hold`), to expire by itself.
    HeldUntil(Instant),
    /// The release (or the min-hold renewal) failed.
    Failed(aiolock::Error),
    /// The backend did not answer before the lease ended; the lock expires by itself.
    NoAnswer,
}

/// Keeps a held lock alive; see the module docs.
pub struct Keeper {
    shared: Arc<Shared>,
    done: Receiver<Finished>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    lease: Duration,
}

struct State {
    /// The last confirmed lease end (on the library's clock, `Instant`).
    lease_end: Instant,
    lost: bool,
    /// Set by `finish`: what to do with the lock.
    stop: Option<Stop>,
    stopping: bool,
}

enum Stop {
    Release,
    HoldUntil(Instant),
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Keeper {
    /// Starts renewing `guard` (acquired with `lease`); a loss is sent on `events`.
    pub fn start(guard: ExclusiveGuard, lease: Duration, events: Sender<Event>) -> Keeper {
        let lease_end = guard.lease_end().unwrap_or_else(Instant::now);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                lease_end,
                lost: false,
                stop: None,
                stopping: false,
            }),
            changed: Condvar::new(),
            lease,
        });
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("aiolock-renew".into())
            .spawn({
                let shared = Arc::clone(&shared);
                let events = events.clone();
                move || {
                    let _ = done_tx.send(renew(&shared, guard, &events));
                }
            })
            .expect("a thread");
        std::thread::Builder::new()
            .name("aiolock-watch".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || watch(&shared, &events)
            })
            .expect("a thread");
        Keeper { shared, done }
    }

    /// Stops renewing and releases the lock, or, with `hold_until` still ahead,
    /// renews it once to end then and leaves it. Waits for the backend at most until
    /// the last confirmed lease end (after it, the lock has expired by itself).
    pub fn finish(self, hold_until: Option<Instant>) -> Finished {
        let bound = {
            let mut st = self.shared.lock();
            st.stopping = true;
            st.stop = Some(match hold_until {
                Some(t) if !st.lost && t > Instant::now() => Stop::HoldUntil(t),
                _ => Stop::Release,
            });
            self.shared.changed.notify_all();
            st.lease_end
        };
        let wait = bound
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        match self.done.recv_timeout(wait) {
            Ok(finished) => finished,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => Finished::NoAnswer,
        }
    }
}

/// The renewing thread: owns the guard until `finish`.
fn renew(shared: &Shared, mut guard: ExclusiveGuard, events: &Sender<Event>) -> Finished {
    let lease = shared.lease;
    let mut st = shared.lock();
    loop {
        if let Some(stop) = st.stop.take() {
            drop(st);
            return end(guard, stop);
        }
        if st.lost {
            // Nothing more to renew: wait for `finish`.
            st = shared.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            continue;
        }
        // The last renewal was sent at `lease_end - lease`: renew a third later.
        let next = st
            .lease_end
            .checked_sub(lease * 2 / 3)
            .unwrap_or(st.lease_end);
        let now = Instant::now();
        if now < next {
            st = shared
                .changed
                .wait_timeout(st, next - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            continue;
        }
        drop(st);
        let renewed = guard.extend(lease);
        st = shared.lock();
        match renewed {
            Ok(()) => {
                if !st.lost
                    && let Some(end) = guard.lease_end()
                {
                    st.lease_end = end;
                }
            }
            Err(e) if !st.lost && !st.stopping => {
                st.lost = true;
                let why = if e.is_lost() {
                    format!("the lock is gone or another holder's: {e}")
                } else {
                    format!("its renewal failed: {e}")
                };
                let _ = events.send(Event::Lost(why));
            }
            Err(_) => {}
        }
        shared.changed.notify_all();
    }
}

/// What `finish` asked for, done with the guard.
fn end(mut guard: ExclusiveGuard, stop: Stop) -> Finished {
    if let Stop::HoldUntil(until) = stop {
        let left = until.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            return match guard.extend(left) {
                Ok(()) => {
                    // Not released on drop: it expires when the hold ends.
                    std::mem::forget(guard);
                    Finished::HeldUntil(until)
                }
                Err(e) if e.is_lost() => Finished::NotOurs,
                Err(e) => Finished::Failed(e),
            };
        }
    }
    match guard.release() {
        Ok(true) => Finished::Released,
        Ok(false) => Finished::NotOurs,
        Err(e) => Finished::Failed(e),
    }
}

/// The watching thread: declares the loss when the last confirmed lease end comes
/// within a third of the lease without a newer confirmation.
fn watch(shared: &Shared, events: &Sender<Event>) {
    let margin = shared.lease / 3;
    let mut st = shared.lock();
    loop {
        if st.stopping || st.lost {
            return;
        }
        let deadline = st.lease_end.checked_sub(margin).unwrap_or(st.lease_end);
        let now = Instant::now();
        if now >= deadline {
            st.lost = true;
            shared.changed.notify_all();
            let left = st.lease_end.saturating_duration_since(now);
            let _ = events.send(Event::Lost(format!(
                "no renewal was confirmed in time; {:.1} s of its lease left",
                left.as_secs_f64()
            )));
            return;
        }
        st = shared
            .changed
            .wait_timeout(st, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}
