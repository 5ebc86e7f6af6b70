//! The connections a [`RedisBackend`](super::RedisBackend) sends through, compiled
//! into both flavors: one server (`blocking.rs` / `nonblocking.rs`) or a Redis Cluster
//! (`cluster_blocking.rs` / `cluster_nonblocking.rs`). The cluster's calls are boxed,
//! so that the single server's futures keep their size.

use std::time::Instant;

use redis::{Cmd, RedisResult, Value};

use super::{maybe_async, redis_cluster_conn, redis_conn, redis_sentinel_conn, rt};
use crate::backend::redis::hub::Waiter;
use crate::backend::redis::replication::Wait;

/// One server's connections or a cluster's. The single server's stay inline (its
/// commands are the hot path), the cluster's are boxed.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Conn {
    Single(redis_conn::Conn),
    Cluster(Box<redis_cluster_conn::Conn>),
    /// The master of a Sentinel deployment, followed through failovers.
    Sentinel(Box<redis_sentinel_conn::Conn>),
}

/// A waiter's registration on its channel.
pub(crate) enum Subscription {
    Single(redis_conn::Subscription),
    Cluster(redis_cluster_conn::Subscription),
}

impl Conn {
    /// Whether this is a cluster (sharded channels in the key's slot, `SPUBLISH`).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Sends one command and reads its reply (within the response timeout).
    #[maybe_async]
    pub(crate) async fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => c.query(cmd).await,
            Conn::Cluster(c) => rt::boxed(c.query(cmd)).await,
            Conn::Sentinel(c) => rt::boxed(c.query(cmd)).await,
        }
    }

    /// Like [`query`](Conn::query), but gives up at `until` if that comes first.
    #[maybe_async]
    pub(crate) async fn query_until(&self, cmd: &Cmd, until: Instant) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => c.query_until(cmd, until).await,
            Conn::Cluster(c) => rt::boxed(c.query_until(cmd, until)).await,
            Conn::Sentinel(c) => rt::boxed(c.query_until(cmd, until)).await,
        }
    }

    /// Sends `cmd` and then `wait`'s `WAIT` on one connection that nobody else uses
    /// meanwhile: the command's reply (an error reply as `Err`) and `WAIT`'s.
    #[maybe_async]
    pub(crate) async fn query_waited(&self, cmd: &Cmd, wait: &Wait) -> RedisResult<(Value, Value)> {
        match self {
            Conn::Single(c) => rt::boxed(c.query_waited(cmd, wait)).await,
            Conn::Sentinel(c) => rt::boxed(c.query_waited(cmd, wait)).await,
            // Refused when the URL is parsed.
            Conn::Cluster(_) => Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "WAIT is not supported on a Redis Cluster",
            ))),
        }
    }

    /// Registers a waiter for `holder`'s release of lock `key` on channel `name` and
    /// subscribes it (`None` if `until` passed first).
    #[maybe_async]
    pub(crate) async fn subscribe(
        &self,
        name: &[u8],
        key: &[u8],
        holder: Option<&[u8]>,
        until: Instant,
    ) -> RedisResult<Option<Subscription>> {
        Ok(match self {
            Conn::Single(c) => c
                .subscribe(name, key, holder, until)
                .await?
                .map(Subscription::Single),
            Conn::Cluster(c) => rt::boxed(c.subscribe(name, key, holder, until))
                .await?
                .map(Subscription::Cluster),
            Conn::Sentinel(c) => rt::boxed(c.subscribe(name, key, holder, until))
                .await?
                .map(Subscription::Single),
        })
    }
}

impl Subscription {
    /// The registration, to listen with.
    pub(crate) fn waiter(&self) -> &Waiter {
        match self {
            Subscription::Single(s) => s.waiter(),
            Subscription::Cluster(s) => s.waiter(),
        }
    }
}
