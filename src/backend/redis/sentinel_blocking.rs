//! The blocking flavor's I/O for a `redis+sentinel://` backend (the logic is in
//! `sentinel_generic.rs`): one command to a sentinel on a fresh connection, the
//! `+switch-master` subscription on a thread of its own, and the lock that lets one
//! discovery run at a time.

use std::time::{Duration, Instant};

use redis::{Cmd, RedisError, RedisResult, Value};

use crate::backend::redis::protocol as r;

fn timed_out(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        what.to_owned(),
    ))
}

/// A connection to `client`, set up by `until`, reads and writes bounded by it.
fn open(client: &redis::Client, until: Instant) -> RedisResult<redis::Connection> {
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timed_out("no time left to ask a sentinel"));
    }
    let con = client.get_connection_with_timeout(left)?;
    let left = until
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    con.set_read_timeout(Some(left))?;
    con.set_write_timeout(Some(left))?;
    Ok(con)
}

/// Sends `cmd` to the sentinel `client` names, on a fresh connection, by `until`.
pub(crate) fn ask(client: &redis::Client, cmd: &Cmd, until: Instant) -> RedisResult<Value> {
    cmd.query(&mut open(client, until)?)
}

/// A subscription to a sentinel's channel.
pub(crate) struct Messages {
    con: redis::Connection,
}

/// Subscribes `channel` at the sentinel `client` names (over RESP3), confirmed by
/// `until`.
///
/// RESP3: the `redis` crate takes a RESP2 message read after a read timeout for the
/// late reply of the read that timed out, and drops it; it never takes a push so.
pub(crate) fn subscribe(
    client: &redis::Client,
    channel: &str,
    until: Instant,
) -> RedisResult<Messages> {
    let mut con = open(&r::resp3(client)?, until)?;
    con.send_packed_command(&redis::cmd("SUBSCRIBE").arg(channel).get_packed_command())?;
    loop {
        let reply = con.recv_response()?;
        if r::subscribed(&reply).is_some() {
            return Ok(Messages { con });
        }
    }
}

impl Messages {
    /// The next message's payload, `None` if none came within `wait`; an error when
    /// the subscription is lost.
    pub(crate) fn next(&mut self, wait: Duration) -> RedisResult<Option<Vec<u8>>> {
        self.con.set_read_timeout(Some(wait))?;
        match self.con.recv_response() {
            Ok(reply) => Ok(r::message(&reply).map(|(_, payload)| payload.to_vec())),
            // A read timeout leaves a RESP3 connection usable (see `subscribe`).
            Err(e) if e.is_timeout() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Runs `work` on a thread of its own; false if none could start.
pub(crate) fn spawn(work: impl FnOnce() + Send + 'static) -> bool {
    std::thread::Builder::new()
        .name("aiolock-sentinel".into())
        .spawn(work)
        .is_ok()
}

/// One discovery at a time.
#[derive(Default)]
pub(crate) struct Switch(parking_lot::Mutex<()>);

impl Switch {
    /// The lock, or `None` if `until` passed first.
    pub(crate) fn lock(&self, until: Instant) -> Option<parking_lot::MutexGuard<'_, ()>> {
        self.0.try_lock_until(until)
    }
}
