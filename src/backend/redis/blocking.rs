//! The blocking flavor's Redis connections: a small pool of sync connections with
//! read and write timeouts. A waiting thread borrows one of them as its subscriber.

use std::time::Instant;

use parking_lot::Mutex;
use redis::{Cmd, RedisResult, Value};

use crate::backend::redis::protocol::{self as r, Heard, Timeouts};
use crate::config::Options;

/// A pool of sync connections to one server.
pub(crate) struct Conn {
    client: redis::Client,
    timeouts: Timeouts,
    idle: Mutex<Vec<redis::Connection>>,
    keep: usize,
}

impl Conn {
    /// Opens the first connection at once, so that an unreachable server or wrong
    /// credentials show now.
    pub(crate) fn connect(client: redis::Client, options: &Options) -> RedisResult<Self> {
        let conn = Conn {
            client,
            timeouts: Timeouts::from(options),
            idle: Mutex::new(Vec::new()),
            keep: options.pool_size,
        };
        let mut first = conn.open()?;
        // A command, so that wrong credentials show now (AUTH is sent only with them).
        redis::cmd("PING").query::<()>(&mut first)?;
        conn.put(first);
        Ok(conn)
    }

    fn open(&self) -> RedisResult<redis::Connection> {
        let con = self
            .client
            .get_connection_with_timeout(self.timeouts.connect)?;
        con.set_read_timeout(Some(self.timeouts.response))?;
        con.set_write_timeout(Some(self.timeouts.response))?;
        Ok(con)
    }

    fn take(&self) -> RedisResult<redis::Connection> {
        let idle = self.idle.lock().pop();
        match idle {
            Some(con) => Ok(con),
            None => self.open(),
        }
    }

    fn put(&self, con: redis::Connection) {
        use redis::ConnectionLike;
        if !con.is_open() {
            return;
        }
        let mut idle = self.idle.lock();
        if idle.len() < self.keep {
            idle.push(con);
        }
    }

    /// Sends one command and reads its reply. A connection that failed is not kept;
    /// when it dropped, the idle ones (likely dropped too, e.g. by a server restart)
    /// are closed as well.
    pub(crate) fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
        let mut con = self.take()?;
        match cmd.query::<Value>(&mut con) {
            Ok(v) => {
                self.put(con);
                Ok(v)
            }
            // A late reply would be read as the next command's: close it.
            Err(e) if e.is_timeout() => Err(e),
            Err(e) if r::is_dropped(&e) => {
                self.idle.lock().clear();
                Err(e)
            }
            Err(e) => {
                // An error reply leaves the connection in a clean state.
                self.put(con);
                Err(e)
            }
        }
    }

    /// Subscribes a pooled connection to `channel`; returns once the server confirmed.
    /// Once more on a fresh connection if the pooled one had dropped.
    pub(crate) fn subscribe(&self, channel: &[u8]) -> RedisResult<Subscription<'_>> {
        match self.try_subscribe(channel) {
            Err(e) if r::is_dropped(&e) => {
                self.idle.lock().clear();
                self.try_subscribe(channel)
            }
            other => other,
        }
    }

    fn try_subscribe(&self, channel: &[u8]) -> RedisResult<Subscription<'_>> {
        let mut con = self.take()?;
        con.send_packed_command(&redis::cmd("SUBSCRIBE").arg(channel).get_packed_command())?;
        loop {
            let reply = con.recv_response()?;
            if r::is_confirmation(&reply, b"subscribe") {
                break;
            }
        }
        Ok(Subscription {
            pool: self,
            con: Some(con),
        })
    }
}

/// A connection subscribed to one channel. Dropping it unsubscribes and gives the
/// connection back to the pool (or closes it, if its state is unknown).
pub(crate) struct Subscription<'a> {
    pool: &'a Conn,
    con: Option<redis::Connection>,
}

impl Subscription<'_> {
    /// Waits for a message on the channel until `until`.
    pub(crate) fn listen(&mut self, until: Instant) -> Heard {
        let Some(con) = self.con.as_mut() else {
            return Heard::Lost;
        };
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || con.set_read_timeout(Some(left)).is_err() {
                // Pending replies would be out of step after a read timeout: close it.
                self.con = None;
                return Heard::Silence;
            }
            match con.recv_response() {
                Ok(reply) if r::is_message(&reply) => return Heard::Message,
                Ok(_) => continue,
                Err(e) if e.is_timeout() => {
                    self.con = None;
                    return Heard::Silence;
                }
                Err(_) => {
                    self.con = None;
                    return Heard::Lost;
                }
            }
        }
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        let Some(mut con) = self.con.take() else {
            return;
        };
        let unsubscribed = (|| -> RedisResult<()> {
            con.set_read_timeout(Some(self.pool.timeouts.response))?;
            con.send_packed_command(&redis::cmd("UNSUBSCRIBE").get_packed_command())?;
            loop {
                let reply = con.recv_response()?;
                if r::is_confirmation(&reply, b"unsubscribe") {
                    return Ok(());
                }
            }
        })();
        if unsubscribed.is_ok() {
            self.pool.put(con);
        }
    }
}
