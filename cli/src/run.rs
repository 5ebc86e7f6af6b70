//! `aiolock run`: take the lock, run the command under it, release.

use std::io::{IsTerminal, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use aiolock::Ttl;
use aiolock::blocking::{Backend, Cache, ExclusiveGuard, ExclusiveLock};
use signal_hook::consts::signal::{
    SIGALRM, SIGCONT, SIGHUP, SIGINT, SIGKILL, SIGQUIT, SIGSTOP, SIGTERM, SIGTSTP, SIGUSR1, SIGUSR2,
};
use signal_hook::iterator::Signals;

use crate::keeper::{Event, Finished, Keeper};
use crate::open::{failure, open};
use crate::{Global, RunArgs, code, fail};

/// Forwarded to the command's process group while it runs. Their default action
/// would end aiolock and leave the lock until its lease ends.
const FORWARDED: &[i32] = &[SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM];

/// How long one wait for the lock lasts at most, between which aiolock looks at the
/// signals it got and refreshes the live status line.
const SLICE: Duration = Duration::from_millis(500);

pub fn run(g: &Global, args: RunArgs) -> i32 {
    // First of all, so that no signal ends aiolock between its claim and the command.
    let (events, rx) = mpsc::channel();
    if let Err(e) = listen(&events) {
        return fail(code::FAILED, format!("cannot handle signals: {e}"));
    }
    let wait = if args.nonblock {
        Some(Duration::ZERO)
    } else {
        args.wait
    };
    let cache = match open(g, Some(args.lease)) {
        Ok(cache) => cache,
        Err(status) => return status,
    };
    let lock = cache.lock(&args.key, args.lease).fenced().watchdog();
    let lock_key = lock.lock_key().to_vec();
    let mut status_line = StatusLine::new(g);
    let guard = match acquire(
        &cache,
        &lock,
        &lock_key,
        wait,
        &rx,
        g,
        &args.key,
        &mut status_line,
    ) {
        Got::Held(guard) => guard,
        Got::Conflict => {
            if !g.quiet {
                match wait {
                    Some(d) if !d.is_zero() => eprintln!(
                        "aiolock: {} is still held by another holder after {:.1} s",
                        args.key,
                        d.as_secs_f64()
                    ),
                    _ => eprintln!("aiolock: {} is held by another holder", args.key),
                }
            }
            return i32::from(args.conflict_exit_code);
        }
        Got::Signalled(sig) => return code::SIGNAL_BASE + sig,
        Got::Failed(status) => return status,
    };
    let acquired = Instant::now();
    let Some(fence) = guard.fence() else {
        let _ = guard.release();
        return fail(code::FAILED, "the backend gave no fencing token");
    };
    if g.verbose {
        eprintln!(
            "aiolock: acquired {} (fence {fence}, lease {:.1} s)",
            args.key,
            args.lease.as_secs_f64()
        );
    }
    let mut command = Command::new(&args.command[0]);
    command
        .args(&args.command[1..])
        .process_group(0)
        .env("AIOLOCK_KEY", &args.key)
        .env("AIOLOCK_TOKEN", guard.token().to_string())
        .env("AIOLOCK_FENCE", fence.to_string());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = guard.release();
            let name = args.command[0].to_string_lossy();
            return if e.kind() == std::io::ErrorKind::NotFound {
                fail(code::NOT_FOUND, format!("{name}: command not found"))
            } else {
                fail(code::CANNOT_EXECUTE, format!("{name}: {e}"))
            };
        }
    };
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    watch_child(pid, events.clone());
    let keeper = Keeper::start(guard, args.lease, events);
    let kill_after = args.kill_after.unwrap_or(args.lease / 4);

    let mut lost = false;
    let mut kill_at: Option<Instant> = None;
    loop {
        let event = match kill_at {
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match event {
            Ok(Event::ChildExited) | Err(RecvTimeoutError::Disconnected) => break,
            // Ctrl-Z: a stopped aiolock could not renew the lease.
            Ok(Event::Signal(SIGTSTP | SIGCONT)) => {}
            Ok(Event::Signal(sig)) => signal_group(pid, sig),
            Ok(Event::Lost(why)) => {
                if !lost {
                    lost = true;
                    eprintln!(
                        "aiolock: lost the lock on {} ({why}); sending SIGTERM to the command",
                        args.key
                    );
                    signal_group(pid, SIGTERM);
                    kill_at = Some(Instant::now() + kill_after);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                signal_group(pid, SIGKILL);
                kill_at = None;
            }
        }
    }
    let exit = match child.wait() {
        Ok(status) => status
            .code()
            .or_else(|| status.signal().map(|s| code::SIGNAL_BASE + s))
            .unwrap_or(code::FAILED),
        Err(e) => fail(code::FAILED, format!("cannot wait for the command: {e}")),
    };
    let hold_until = args.min_hold.map(|d| acquired + d);
    match keeper.finish(hold_until.filter(|_| !lost)) {
        Finished::Released if g.verbose => eprintln!("aiolock: released {}", args.key),
        Finished::HeldUntil(until) if g.verbose => eprintln!(
            "aiolock: {} stays held for {:.1} s more (--min-hold)",
            args.key,
            until
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
        ),
        Finished::NotOurs if !lost => eprintln!(
            "aiolock: {} was no longer ours when the command ended",
            args.key
        ),
        Finished::Failed(e) if !lost => {
            eprintln!("aiolock: could not release {}: {e}", args.key);
        }
        Finished::NoAnswer if !lost => eprintln!(
            "aiolock: the cache did not answer the release of {}; it expires with its lease",
            args.key
        ),
        _ => {}
    }
    if lost { code::LOST } else { exit }
}

enum Got {
    Held(ExclusiveGuard),
    Conflict,
    Signalled(i32),
    Failed(i32),
}

/// Waits for the lock in slices of at most [`SLICE`], until `wait` (forever for
/// `None`) has passed, a signal came, or it holds the lock.
#[allow(clippy::too_many_arguments)]
fn acquire(
    cache: &Cache,
    lock: &ExclusiveLock,
    lock_key: &[u8],
    wait: Option<Duration>,
    rx: &Receiver<Event>,
    g: &Global,
    key: &str,
    status_line: &mut StatusLine,
) -> Got {
    let deadline = wait.map(|w| Instant::now() + w);
    let mut first = true;
    loop {
        while let Ok(event) = rx.try_recv() {
            match event {
                Event::Signal(SIGCONT) => {}
                Event::Signal(SIGTSTP) => {
                    // Nothing held: stopping is safe.
                    status_line.clear();
                    // SAFETY: raise(2) with a valid signal number.
                    unsafe { libc::raise(SIGSTOP) };
                }
                Event::Signal(sig) => {
                    status_line.clear();
                    return Got::Signalled(sig);
                }
                Event::ChildExited | Event::Lost(_) => {}
            }
        }
        let slice = if first {
            Duration::ZERO
        } else {
            match deadline {
                None => SLICE,
                Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
            }
        };
        let got = if slice.is_zero() {
            lock.clone().try_acquire()
        } else {
            lock.clone().wait_at_most(slice).acquire()
        };
        match got {
            Ok(Some(guard)) => {
                status_line.clear();
                return Got::Held(guard);
            }
            Ok(None) => {}
            Err(e) => {
                status_line.clear();
                return Got::Failed(failure(&e));
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            status_line.clear();
            return Got::Conflict;
        }
        if first && g.verbose {
            status_line.clear();
            eprintln!("aiolock: waiting for {key}: held by another holder");
        }
        first = false;
        if status_line.on {
            let ttl = Backend::ttl(cache.backend(), lock_key);
            status_line.show(&match ttl {
                Ok(Ttl::Expires(d)) => format!(
                    "waiting for {key} \u{2014} held, {:.1} s of its lease left",
                    d.as_secs_f64()
                ),
                Ok(Ttl::Persistent) => format!("waiting for {key} \u{2014} held, without expiry"),
                Ok(Ttl::Missing) => format!("waiting for {key} \u{2014} free, claiming it"),
                Err(e) => format!("waiting for {key} \u{2014} {e}"),
            });
        }
    }
}

/// The one-line live status while waiting, on a terminal only (stderr).
struct StatusLine {
    on: bool,
    shown: bool,
}

impl StatusLine {
    fn new(g: &Global) -> Self {
        StatusLine {
            on: !g.quiet && std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn show(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{text}");
        let _ = err.flush();
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}

/// Catches the forwarded signals (and TSTP, CONT) from now on, as [`Event::Signal`].
fn listen(events: &Sender<Event>) -> std::io::Result<()> {
    let mut caught = FORWARDED.to_vec();
    caught.extend([SIGTSTP, SIGCONT]);
    let mut signals = Signals::new(caught)?;
    let events = events.clone();
    std::thread::Builder::new()
        .name("aiolock-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if events.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        })?;
    Ok(())
}

/// Sends [`Event::ChildExited`] when the child `pid` has ended, without reaping it:
/// until `wait` reaps it, its pid (the group's id) cannot be reused, so signalling
/// the group stays safe.
fn watch_child(pid: libc::pid_t, events: Sender<Event>) {
    std::thread::Builder::new()
        .name("aiolock-child".into())
        .spawn(move || {
            loop {
                // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid(2).
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                // SAFETY: waitid(2) on our own child, WNOWAIT leaves it unreaped.
                let rc = unsafe {
                    libc::waitid(
                        libc::P_PID,
                        pid as libc::id_t,
                        &mut info,
                        libc::WEXITED | libc::WNOWAIT,
                    )
                };
                if rc == 0
                    || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    break;
                }
            }
            let _ = events.send(Event::ChildExited);
        })
        .expect("a thread");
}

/// Sends `sig` to the command's process group (its id is the command's pid).
fn signal_group(pgid: libc::pid_t, sig: i32) {
    // SAFETY: killpg(2) on the group we created, which the unreaped leader keeps.
    unsafe { libc::killpg(pgid, sig) };
}
