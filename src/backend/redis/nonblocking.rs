//! The async flavor's Redis connections: one multiplexed, reconnecting connection for
//! commands, and one shared RESP3 subscriber connection for every waiter of the
//! backend (`subscriber_nonblocking.rs`, which the cluster's connections share). A
//! forked child opens connections of its own.

use std::time::Instant;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, RedisResult, Value};

use super::redis_subscriber::Slot;
use crate::backend::redis::protocol::{self as r, Timeouts};
use crate::config::Options;

/// The backend's connections.
pub(crate) struct Conn {
    client: redis::Client,
    /// The same server over RESP3, for the subscriber.
    resp3: redis::Client,
    timeouts: Timeouts,
    /// The command connection, and the fork generation that opened it.
    commands: parking_lot::RwLock<(u64, ConnectionManager)>,
    /// One reconnection at a time (after a fork).
    reconnect: tokio::sync::Mutex<()>,
    subscriber: Slot<ConnectionManager>,
}

fn config(t: Timeouts) -> ConnectionManagerConfig {
    // No reconnection retries inside a call: a call fails within its timeouts, and the
    // next call tries to reconnect again.
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(t.connect))
        .set_response_timeout(Some(t.response))
        .set_number_of_retries(0)
        .set_pipeline_buffer_size(PIPELINE_BUFFER)
}

/// Commands that may queue for the connection's writer before a sender waits for room.
/// The `redis` crate's default (50) is below the number of tasks a busy process runs
/// on one connection: past it every sender parks and is woken again.
const PIPELINE_BUFFER: usize = 1024;

/// Opens a connection manager and checks it with a `PING` (wrong credentials show
/// now), the whole set-up within one connect timeout (the `redis` crate's own set-up
/// sends its commands each under the full response timeout).
async fn open(
    client: &redis::Client,
    timeouts: Timeouts,
    config: ConnectionManagerConfig,
) -> RedisResult<ConnectionManager> {
    let setup = async {
        let manager = ConnectionManager::new_with_config(client.clone(), config).await?;
        redis::cmd("PING")
            .query_async::<()>(&mut manager.clone())
            .await?;
        Ok(manager)
    };
    tokio::time::timeout(timeouts.connect, setup)
        .await
        .unwrap_or_else(|_| Err(r::timed_out("connecting to Redis timed out")))
}

impl Conn {
    /// Connects the command connection at once (errors show now); the subscriber
    /// connects with the first wait.
    pub(crate) async fn connect(client: redis::Client, options: &Options) -> RedisResult<Self> {
        let timeouts = Timeouts::from(options);
        let resp3 = r::resp3(&client)?;
        let commands = open(&client, timeouts, config(timeouts)).await?;
        Ok(Conn {
            client,
            resp3,
            timeouts,
            commands: parking_lot::RwLock::new((r::fork_generation(), commands)),
            reconnect: tokio::sync::Mutex::new(()),
            subscriber: Slot::default(),
        })
    }

    /// The command connection of this process.
    async fn commands(&self) -> RedisResult<ConnectionManager> {
        let generation = r::fork_generation();
        {
            let commands = self.commands.read();
            if commands.0 == generation {
                return Ok(commands.1.clone());
            }
        }
        // Boxed: every command's future would otherwise carry the connection set-up's
        // (about 900 bytes), and every waiting task with it.
        Box::pin(self.reopen(generation)).await
    }

    /// A forked child's command connection (the one it has is its parent's).
    async fn reopen(&self, generation: u64) -> RedisResult<ConnectionManager> {
        let _one = self.reconnect.lock().await;
        {
            let commands = self.commands.read();
            if commands.0 == generation {
                return Ok(commands.1.clone());
            }
        }
        let fresh = open(&self.client, self.timeouts, config(self.timeouts)).await?;
        let parents = std::mem::replace(&mut *self.commands.write(), (generation, fresh.clone()));
        // Its task belongs to the parent's runtime: dropping it here could wake that.
        std::mem::forget(parents);
        Ok(fresh)
    }

    /// Sends one command and reads its reply (within the response timeout).
    ///
    /// Straight to the connection manager's own method: `Cmd::query_async` goes
    /// through the `ConnectionLike` trait, which boxes a future per command.
    pub(crate) async fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
        let mut con = self.commands().await?;
        con.send_packed_command(cmd).await?.extract_error()
    }

    /// Like [`query`](Conn::query), but gives up at `until` if that comes first.
    pub(crate) async fn query_until(&self, cmd: &Cmd, until: Instant) -> RedisResult<Value> {
        tokio::time::timeout_at(until.into(), self.query(cmd))
            .await
            .unwrap_or_else(|_| Err(r::timed_out("the wait's deadline passed")))
    }

    /// Registers a waiter for `holder`'s release of lock `key` on channel `name` and
    /// subscribes the channel on the shared subscriber (see `subscriber_nonblocking.rs`);
    /// returns once the server confirmed (or the channel was already subscribed on the
    /// current connection), `None` if `until` passed first.
    pub(crate) async fn subscribe(
        &self,
        name: &[u8],
        key: &[u8],
        holder: Option<&[u8]>,
        until: Instant,
    ) -> RedisResult<Option<Subscription>> {
        let open = |pushes| {
            let config = config(self.timeouts)
                .set_push_sender(pushes)
                .set_automatic_resubscription();
            open(&self.resp3, self.timeouts, config)
        };
        self.subscriber
            .subscribe(open, || self.commands(), name, key, holder, until)
            .await
    }
}

/// One waiter's registration on its channel.
pub(crate) type Subscription = super::redis_subscriber::Subscription<ConnectionManager>;
