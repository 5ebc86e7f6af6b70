//! The keeper: watches a held lock while the command runs, reports its loss, and
//! releases it (or leaves it held until `--min-hold` ends) when asked to finish.
//!
//! The library's watchdog renews the lease (the lock is acquired with
//! [`ExclusiveLock::watchdog`](aiolock::blocking::ExclusiveLock::watchdog): a third of
//! the lease after each confirmed renewal, on the cache's `aiolock-watchdog` thread).
//! The keeper's own thread waits on its [`Watch`] and declares the lock lost, once and
//! for good, when the watch reports a loss (a renewal failed, or found the lock gone or
//! another holder's), or when no renewal was confirmed while a third of the lease was
//! still left (a stopped or unreachable server: the renewal may hang up to the response
//! timeout, the watch does not): earlier than the watchdog's own margin, so that the
//! command gets SIGTERM with a third of the lease left. The loss goes to the caller's
//! event channel as [`Event::Lost`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use aiolock::ErrorKind;
use aiolock::blocking::{ExclusiveGuard, Watch};

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
    /// The backend did not answer the release in time; the lock expires by itself.
    NoAnswer,
}

/// Keeps a held lock; see the module docs.
pub struct Keeper {
    guard: ExclusiveGuard,
    /// Set by `finish`: the watch's end is the release, not a loss.
    finishing: Arc<AtomicBool>,
}

impl Keeper {
    /// Watches `guard` (acquired with `lease` and the watchdog); a loss is sent on
    /// `events`.
    pub fn start(guard: ExclusiveGuard, lease: Duration, events: Sender<Event>) -> Keeper {
        let watch = guard
            .watch()
            .expect("run acquires the lock with the watchdog");
        let finishing = Arc::new(AtomicBool::new(false));
        std::thread::Builder::new()
            .name("aiolock-watch".into())
            .spawn({
                let finishing = Arc::clone(&finishing);
                move || {
                    let why = lost(&watch, lease);
                    if !finishing.load(Ordering::SeqCst) {
                        let _ = events.send(Event::Lost(why));
                    }
                }
            })
            .expect("a thread");
        Keeper { guard, finishing }
    }

    /// Stops watching and releases the lock, or, with `hold_until` still ahead,
    /// renews it once to end then and leaves it. The backend's response timeout
    /// bounds the wait (at most a third of the lease, unless the URL sets it).
    pub fn finish(self, hold_until: Option<Instant>) -> Finished {
        self.finishing.store(true, Ordering::SeqCst);
        let mut guard = self.guard;
        let left = hold_until.map(|t| t.saturating_duration_since(Instant::now()));
        if let (Some(until), Some(left)) = (hold_until, left.filter(|d| !d.is_zero())) {
            return match guard.extend(left) {
                Ok(()) => {
                    guard.let_expire();
                    Finished::HeldUntil(until)
                }
                Err(e) if e.is_lost() => Finished::NotOurs,
                Err(e) => Finished::Failed(e),
            };
        }
        match guard.release() {
            Ok(true) => Finished::Released,
            Ok(false) => Finished::NotOurs,
            Err(e) if e.kind() == ErrorKind::Timeout => Finished::NoAnswer,
            Err(e) => Finished::Failed(e),
        }
    }
}

/// Waits until the lock counts as lost (see the module docs), or the guard is
/// released; why, in a few words.
fn lost(watch: &Watch, lease: Duration) -> String {
    let margin = lease / 3;
    loop {
        let end = watch.lease_end();
        let deadline = end.checked_sub(margin).unwrap_or(end);
        let wait = deadline.saturating_duration_since(Instant::now());
        if let Some(e) = watch.wait_lost(wait) {
            return e.message().to_owned();
        }
        let now = Instant::now();
        if now >= deadline && watch.lease_end() == end {
            let left = end.saturating_duration_since(now);
            return format!(
                "no renewal was confirmed in time; {:.1} s of its lease left",
                left.as_secs_f64()
            );
        }
    }
}
