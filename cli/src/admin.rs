//! The operator's and scripts' commands: `status`, `release --force`, `get`, `set`,
//! `delete`.

use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::time::Duration;

use aiolock::Ttl;
use aiolock::blocking::{Backend, Cache};

use crate::open::{failure, open};
use crate::{Global, code, fail};

/// What a fenced lock appends to its lock key to name its fencing-token counter
/// (see `aiolock::blocking::RedLock::fenced`).
const FENCE_SUFFIX: &[u8] = b"-fence";

/// A lock as the server has it.
struct Held {
    token: Vec<u8>,
    ttl: Ttl,
}

struct LockState {
    lock_key: Vec<u8>,
    held: Option<Held>,
    fence: Option<u64>,
}

fn lock_state(cache: &Cache, key: &str) -> aiolock::Result<LockState> {
    // The lease is not used: only the key.
    let lock_key = cache.lock(key, Duration::from_secs(1)).lock_key().to_vec();
    let backend = cache.backend();
    let token = Backend::get(backend, &lock_key)?;
    let held = match token {
        Some(token) => Some(Held {
            token,
            ttl: Backend::ttl(backend, &lock_key)?,
        }),
        None => None,
    };
    let mut fence_key = lock_key.clone();
    fence_key.extend_from_slice(FENCE_SUFFIX);
    let fence = Backend::get(backend, &fence_key)?
        .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse().ok());
    Ok(LockState {
        lock_key,
        held,
        fence,
    })
}

fn describe(key: &str, state: &LockState) -> String {
    let fence = match state.fence {
        Some(f) => format!("fence {f}"),
        None => "no fence yet".to_owned(),
    };
    match &state.held {
        None => format!("{key}: not held, {fence}"),
        Some(held) => {
            let lease = match held.ttl {
                Ttl::Expires(d) => format!("{:.1} s of its lease left", d.as_secs_f64()),
                Ttl::Persistent => "without expiry".to_owned(),
                // Expired between the two reads.
                Ttl::Missing => "its lease just ended".to_owned(),
            };
            format!(
                "{key}: held, {lease}, {fence}, token {}",
                String::from_utf8_lossy(&held.token)
            )
        }
    }
}

pub fn status(g: &Global, key: &str) -> i32 {
    let cache = match open(g, None) {
        Ok(c) => c,
        Err(status) => return status,
    };
    match lock_state(&cache, key) {
        Ok(state) => {
            println!("{}", describe(key, &state));
            if state.held.is_some() {
                0
            } else {
                code::CONFLICT
            }
        }
        Err(e) => failure(&e),
    }
}

pub fn release(g: &Global, key: &str, force: bool, yes: bool) -> i32 {
    if !force {
        return fail(
            code::USAGE,
            "release takes --force: it releases the lock whoever holds it, and its holder \
             stops its command (see aiolock release --help)",
        );
    }
    let cache = match open(g, None) {
        Ok(c) => c,
        Err(status) => return status,
    };
    let state = match lock_state(&cache, key) {
        Ok(s) => s,
        Err(e) => return failure(&e),
    };
    let Some(held) = &state.held else {
        if !g.quiet {
            eprintln!("aiolock: {}", describe(key, &state));
        }
        return code::CONFLICT;
    };
    if !yes && std::io::stdin().is_terminal() {
        eprint!("{}\nrelease it? [y/N] ", describe(key, &state));
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            eprintln!("aiolock: not released");
            return code::CONFLICT;
        }
    }
    // Owner-checked with the token just read: a lock that changed hands meanwhile is
    // left alone; the release wakes the waiters like the holder's own.
    match Backend::release(cache.backend(), &state.lock_key, &held.token) {
        Ok(true) => {
            if !g.quiet {
                eprintln!("aiolock: released {key}");
            }
            0
        }
        Ok(false) => {
            eprintln!("aiolock: {key} changed hands meanwhile: not released");
            code::CONFLICT
        }
        Err(e) => failure(&e),
    }
}

pub fn get(g: &Global, key: &str) -> i32 {
    let cache = match open(g, None) {
        Ok(c) => c,
        Err(status) => return status,
    };
    match cache.get(key) {
        Ok(Some(value)) => {
            let mut out = std::io::stdout().lock();
            match out.write_all(&value).and_then(|()| out.flush()) {
                Ok(()) => 0,
                Err(e) => fail(code::FAILED, format!("cannot write the value: {e}")),
            }
        }
        Ok(None) => code::CONFLICT,
        Err(e) => failure(&e),
    }
}

pub fn set(g: &Global, key: &str, value: Option<OsString>, ttl: Option<Duration>) -> i32 {
    let value = match value {
        Some(v) => std::os::unix::ffi::OsStringExt::into_vec(v),
        None => {
            let mut buf = Vec::new();
            if let Err(e) = std::io::stdin().lock().read_to_end(&mut buf) {
                return fail(code::FAILED, format!("cannot read standard input: {e}"));
            }
            buf
        }
    };
    let cache = match open(g, None) {
        Ok(c) => c,
        Err(status) => return status,
    };
    match cache.set(key, &value, ttl) {
        Ok(()) => 0,
        Err(e) => failure(&e),
    }
}

pub fn delete(g: &Global, key: &str) -> i32 {
    let cache = match open(g, None) {
        Ok(c) => c,
        Err(status) => return status,
    };
    match cache.delete(key) {
        Ok(true) => 0,
        Ok(false) => code::CONFLICT,
        Err(e) => failure(&e),
    }
}
