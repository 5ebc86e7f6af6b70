//! The async flavor's Redis Cluster connections: one multiplexed cluster connection
//! for commands (the `redis` crate routes each by its key's slot and follows `MOVED`
//! and `ASK`), and one shared RESP3 cluster connection for every waiter of the
//! backend, subscribed with `SSUBSCRIBE` (each channel on its slot's master; the crate
//! resubscribes after a reconnect), served by the subscriber `nonblocking.rs` uses too
//! (`subscriber_nonblocking.rs`). A master that drops a channel because its slot
//! moved away (`sunsubscribe`) sends its waiters to subscribe again, at the new owner.

use std::time::Instant;

use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisResult, Value};

use super::redis_subscriber::Slot;
use crate::backend::redis::cluster;
use crate::backend::redis::protocol::{self as r, Timeouts};
use crate::config::Options;

/// The backend's cluster connections.
pub(crate) struct Conn {
    /// RESP3, for the subscriber.
    resp3: ClusterClient,
    timeouts: Timeouts,
    commands: ClusterConnection,
    subscriber: Slot<ClusterConnection>,
}

fn config(t: Timeouts) -> ClusterConfig {
    ClusterConfig::new()
        .set_connection_timeout(t.connect)
        .set_response_timeout(t.response)
}

/// Connects to the cluster and checks it with a `PING`, within one connect timeout.
async fn open(
    client: &ClusterClient,
    timeouts: Timeouts,
    config: ClusterConfig,
) -> RedisResult<ClusterConnection> {
    let setup = async {
        let mut con = client.get_async_connection_with_config(config).await?;
        redis::cmd("PING").query_async::<()>(&mut con).await?;
        Ok(con)
    };
    tokio::time::timeout(timeouts.connect, setup)
        .await
        .unwrap_or_else(|_| Err(r::timed_out("connecting to the Redis Cluster timed out")))
}

impl Conn {
    /// Connects the command connection at once (errors show now); the subscriber
    /// connects with the first wait.
    pub(crate) async fn connect(seeds: &[url::Url], options: &Options) -> RedisResult<Self> {
        let timeouts = Timeouts::from(options);
        let client = cluster::builder(seeds).build()?;
        let resp3 = cluster::builder(seeds)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .build()?;
        let commands = open(&client, timeouts, config(timeouts)).await?;
        Ok(Conn {
            resp3,
            timeouts,
            commands,
            subscriber: Slot::default(),
        })
    }

    /// Sends one command to its slot's master and reads its reply.
    pub(crate) async fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
        cmd.query_async(&mut self.commands.clone()).await
    }

    /// Like [`query`](Conn::query), but gives up at `until` if that comes first.
    pub(crate) async fn query_until(&self, cmd: &Cmd, until: Instant) -> RedisResult<Value> {
        tokio::time::timeout_at(until.into(), self.query(cmd))
            .await
            .unwrap_or_else(|_| Err(r::timed_out("the wait's deadline passed")))
    }

    /// Registers a waiter for `holder`'s release of lock `key` on sharded channel
    /// `name` and subscribes it (see `subscriber_nonblocking.rs`); returns once the
    /// server confirmed (or the channel was subscribed already), `None` if `until`
    /// passed first.
    pub(crate) async fn subscribe(
        &self,
        name: &[u8],
        key: &[u8],
        holder: Option<&[u8]>,
        until: Instant,
    ) -> RedisResult<Option<Subscription>> {
        let open = |pushes| {
            let config = config(self.timeouts).set_push_sender(pushes);
            open(&self.resp3, self.timeouts, config)
        };
        let commands = || async { Ok(self.commands.clone()) };
        self.subscriber
            .subscribe(open, commands, name, key, holder, until)
            .await
    }
}

/// One waiter's registration on its channel.
pub(crate) type Subscription = super::redis_subscriber::Subscription<ClusterConnection>;
