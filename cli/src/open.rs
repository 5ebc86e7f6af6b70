//! Opening the cache the URL names, refusing what cannot lock across processes.

use std::time::Duration;

use aiolock::blocking::Cache;
use aiolock::config::{self, Endpoint, Options};

use crate::{Global, code, fail};

/// The cache of `--url` / `AIOLOCK_URL`, or the exit status after a one-line message.
///
/// With `lease`, a URL without `response_timeout` gets one of at most a third of the
/// lease (a renewal must be answered within that to count), so that a stopped server
/// holds up a renewal or the final release no longer than that.
pub fn open(g: &Global, lease: Option<Duration>) -> Result<Cache, i32> {
    let Some(url) = g.url.as_deref().filter(|u| !u.trim().is_empty()) else {
        return Err(fail(
            code::USAGE,
            "no cache URL: pass --url or set AIOLOCK_URL (redis://HOST, redis+unix:///PATH, \
             memcached://HOST, memcached+unix:///PATH)",
        ));
    };
    let (endpoint, options) = config::parse(url).map_err(|e| fail(code::USAGE, e))?;
    if matches!(endpoint, Endpoint::Memory) {
        return Err(fail(
            code::USAGE,
            "memory:// lives inside one process and cannot lock across processes: give a \
             redis:// or memcached:// URL (--url or AIOLOCK_URL)",
        ));
    }
    let mut builder = Cache::builder();
    let default = Options::default().response_timeout;
    if let Some(lease) = lease
        && options.response_timeout == default
    {
        builder = builder.response_timeout(default.min(lease / 3).max(Duration::from_millis(1)));
    }
    builder.build(url).map_err(|e| failure(&e))
}

/// The exit status of a failed cache command, after its one-line message: 2 for
/// input the library refused before sending anything, 125 otherwise.
pub fn failure(e: &aiolock::Error) -> i32 {
    if e.is_invalid_input() {
        fail(code::USAGE, e)
    } else {
        fail(code::FAILED, e)
    }
}
