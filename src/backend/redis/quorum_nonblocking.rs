//! The async flavor's fan-out over a Redlock quorum's nodes (a child of the async
//! transport): one command sent to every node at once, the replies awaited together,
//! so that the whole costs about one round trip (the slowest node's).

use std::time::Instant;

use futures_util::future::join_all;
use redis::{Cmd, RedisResult, Value};

use super::{Conn, Subscription};

/// Sends `cmd` to every node of `conns` and awaits their replies, all within `until`
/// (and each node's response timeout); the results in the order of `conns`.
pub(crate) async fn query_all(
    conns: &[&Conn],
    cmd: &Cmd,
    until: Instant,
) -> Vec<RedisResult<Value>> {
    join_all(conns.iter().map(|conn| conn.query_until(cmd, until))).await
}

/// Registers a waiter for `holder`'s release of lock `key` on channel `name` on every
/// node of `conns`, all at once, each within `until`; `Ok(None)` for a node whose
/// bound passed first.
pub(crate) async fn subscribe_all(
    conns: &[&Conn],
    name: &[u8],
    key: &[u8],
    holder: Option<&[u8]>,
    until: Instant,
) -> Vec<RedisResult<Option<Subscription>>> {
    join_all(
        conns
            .iter()
            .map(|conn| conn.subscribe(name, key, holder, until)),
    )
    .await
}

/// Connects to every node of `clients`, all at once.
pub(crate) async fn connect_all(
    clients: &[redis::Client],
    options: &crate::config::Options,
) -> Vec<RedisResult<Conn>> {
    join_all(
        clients
            .iter()
            .map(|client| Conn::connect(client.clone(), options)),
    )
    .await
}
