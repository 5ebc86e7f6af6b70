//! The blocking flavor's fan-out over a Redlock quorum's nodes (a child of the
//! blocking transport, whose pools it takes connections from).
//!
//! One command goes to every node from the calling thread without a thread per node:
//! it is written to a connection of each node first, and only then are the replies
//! read, one after the other. The nodes work on it at the same time, so the whole
//! costs about one round trip (the slowest node's), not one per node, and no other
//! thread is woken. A reply not read by the bound closes its connection (a late reply
//! would otherwise be read as the next command's).

use std::time::{Duration, Instant};

use redis::{Cmd, RedisResult, Value};

use super::{Conn, Pool, Taken};
use crate::backend::redis::protocol as r;

/// How long a reply read after the bound may still take to come in.
const LATE_READ: Duration = Duration::from_millis(1);

/// Sends `cmd` to every node of `conns` and reads their replies, all within `until`
/// (and each node's response timeout); the results in the order of `conns`.
pub(crate) fn query_all(conns: &[&Conn], cmd: &Cmd, until: Instant) -> Vec<RedisResult<Value>> {
    let packed = cmd.get_packed_command();
    let sent: Vec<RedisResult<Sent<'_>>> = conns
        .iter()
        .map(|conn| conn.pool.send(&packed, until))
        .collect();
    sent.into_iter()
        .map(|sent| sent.and_then(Sent::reply))
        .collect()
}

/// A command written to a connection of `pool`, its reply not read yet.
struct Sent<'a> {
    pool: &'a Pool,
    taken: Taken,
    limit: Instant,
}

impl Pool {
    /// Takes a connection (waiting for a free one until the bound) and writes `packed`
    /// to it.
    fn send(&self, packed: &[u8], until: Instant) -> RedisResult<Sent<'_>> {
        let limit = until.min(Instant::now() + self.timeouts.response);
        let mut taken = self.take(limit)?;
        match taken.con.send_packed_command(packed) {
            Ok(()) => Ok(Sent {
                pool: self,
                taken,
                limit,
            }),
            Err(e) => {
                self.discard(taken);
                if r::is_dropped(&e) {
                    self.clear_idle();
                }
                Err(e)
            }
        }
    }
}

impl Sent<'_> {
    /// Reads the reply, by the bound; the connection goes back to the pool unless it
    /// failed (or may still get the reply).
    fn reply(self) -> RedisResult<Value> {
        let Sent {
            pool,
            mut taken,
            limit,
        } = self;
        // A reply that came while an earlier node's was awaited is read even past the
        // bound (the replies are read one after the other, not as they come).
        let left = limit
            .saturating_duration_since(Instant::now())
            .max(LATE_READ);
        let shortened = left < pool.timeouts.response;
        if shortened && let Err(e) = taken.con.set_read_timeout(Some(left)) {
            pool.discard(taken);
            return Err(e);
        }
        match taken.con.recv_response() {
            Ok(value) => {
                if shortened
                    && taken
                        .con
                        .set_read_timeout(Some(pool.timeouts.response))
                        .is_err()
                {
                    pool.discard(taken);
                } else {
                    pool.put(taken);
                }
                // An error reply leaves the connection in a clean state.
                value.extract_error()
            }
            Err(e) => {
                pool.discard(taken);
                if r::is_dropped(&e) {
                    pool.clear_idle();
                }
                Err(e)
            }
        }
    }
}

/// Registers a waiter for `holder`'s release of lock `key` on channel `name` on every
/// node of `conns`, one after the other (each returns once its server confirmed),
/// each within `until`; `Ok(None)` for a node whose bound passed first.
pub(crate) fn subscribe_all(
    conns: &[&Conn],
    name: &[u8],
    key: &[u8],
    holder: Option<&[u8]>,
    until: Instant,
) -> Vec<RedisResult<Option<super::Subscription>>> {
    conns
        .iter()
        .map(|conn| conn.subscribe(name, key, holder, until))
        .collect()
}

/// Connects to every node of `clients`, one after the other.
pub(crate) fn connect_all(
    clients: &[redis::Client],
    options: &crate::config::Options,
) -> Vec<RedisResult<Conn>> {
    clients
        .iter()
        .map(|client| Conn::connect(client.clone(), options))
        .collect()
}
