//! The async flavor's Redis connections: one pipelined connection for commands
//! (aiolock's own, `pipeline.rs`, reopened when it fails; the `redis` crate's
//! reconnecting multiplexed connection for TLS and RESP3 URLs), and one shared RESP3
//! subscriber connection for every waiter of the backend (`subscriber_nonblocking.rs`,
//! which the cluster's connections share). A forked child opens connections of its
//! own.

use std::sync::Arc;
use std::time::Instant;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, RedisError, RedisResult, Value};

use super::redis_subscriber::{Reader, Slot};
use crate::backend::redis::pipeline::{Opener, Pipe};
use crate::backend::redis::protocol::{self as r, Timeouts};
use crate::backend::redis::replication::Wait;
use crate::config::Options;

/// The fan-out over a Redlock quorum's nodes.
#[path = "quorum_nonblocking.rs"]
pub(crate) mod quorum;

/// The backend's connections.
pub(crate) struct Conn {
    /// The same server over RESP3, for the subscriber.
    resp3: redis::Client,
    timeouts: Timeouts,
    commands: Commands,
    subscriber: Slot<ConnectionManager>,
    /// Idle connections for a write followed by `WAIT` (the `wait_replicas` option),
    /// each used by one caller at a time (`WAIT` blocks its connection), and the fork
    /// generation that opened them.
    waited: parking_lot::Mutex<(u64, Vec<redis::aio::MultiplexedConnection>)>,
}

/// The command connection (shared with the re-check tasks).
#[derive(Clone)]
struct Commands(Arc<CommandsInner>);

struct CommandsInner {
    client: redis::Client,
    timeouts: Timeouts,
    kind: Kind,
    /// One reconnection at a time (after a fork, or a failed pipeline).
    reconnect: tokio::sync::Mutex<()>,
}

enum Kind {
    /// aiolock's own pipelined connection (`pipeline.rs`), for plain TCP and unix
    /// sockets over RESP2; with the fork generation that opened it.
    Pipe {
        opener: Opener,
        current: parking_lot::RwLock<(u64, Arc<Pipe>)>,
    },
    /// The `redis` crate's reconnecting multiplexed connection (TLS, RESP3).
    Manager(parking_lot::RwLock<(u64, ConnectionManager)>),
}

/// The most idle connections kept for writes followed by `WAIT`.
const WAITED_IDLE: usize = 16;

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

impl Commands {
    async fn connect(client: redis::Client, timeouts: Timeouts) -> RedisResult<Self> {
        let kind = match Opener::of(&client, timeouts.connect, timeouts.response) {
            Some(opener) => {
                let pipe = opener.open().await?;
                Kind::Pipe {
                    opener,
                    current: parking_lot::RwLock::new((r::fork_generation(), pipe)),
                }
            }
            None => {
                let manager = open(&client, timeouts, config(timeouts)).await?;
                Kind::Manager(parking_lot::RwLock::new((r::fork_generation(), manager)))
            }
        };
        Ok(Commands(Arc::new(CommandsInner {
            client,
            timeouts,
            kind,
            reconnect: tokio::sync::Mutex::new(()),
        })))
    }

    /// Sends one command and reads its reply (within the response timeout).
    async fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
        match &self.0.kind {
            Kind::Pipe { current, .. } => {
                let pipe = {
                    let current = current.read();
                    (current.0 == r::fork_generation() && !current.1.is_failed())
                        .then(|| Arc::clone(&current.1))
                };
                let pipe = match pipe {
                    Some(pipe) => pipe,
                    // Boxed: every command's future would otherwise carry the
                    // connection set-up's, and every waiting task with it.
                    None => Box::pin(self.reopen_pipe()).await?,
                };
                pipe.call(cmd).await
            }
            // Straight to the connection manager's own method: `Cmd::query_async`
            // goes through the `ConnectionLike` trait, which boxes a future per
            // command.
            Kind::Manager(_) => {
                let mut con = self.manager().await?;
                con.send_packed_command(cmd).await?.extract_error()
            }
        }
    }

    /// A fresh pipeline in place of a failed one, or of the parent's after a fork.
    async fn reopen_pipe(&self) -> RedisResult<Arc<Pipe>> {
        let Kind::Pipe { opener, current } = &self.0.kind else {
            unreachable!("a pipeline's connection")
        };
        let _one = self.0.reconnect.lock().await;
        let generation = r::fork_generation();
        {
            let current = current.read();
            if current.0 == generation && !current.1.is_failed() {
                return Ok(Arc::clone(&current.1));
            }
        }
        let fresh = opener.open().await?;
        let old = std::mem::replace(&mut *current.write(), (generation, Arc::clone(&fresh)));
        if old.0 != generation {
            // The parent's: its socket belongs to the parent's runtime.
            std::mem::forget(old);
        }
        Ok(fresh)
    }

    /// The connection manager of this process.
    async fn manager(&self) -> RedisResult<ConnectionManager> {
        let Kind::Manager(commands) = &self.0.kind else {
            unreachable!("a connection manager's connection")
        };
        let generation = r::fork_generation();
        {
            let commands = commands.read();
            if commands.0 == generation {
                return Ok(commands.1.clone());
            }
        }
        // Boxed: every command's future would otherwise carry the connection set-up's
        // (about 900 bytes), and every waiting task with it.
        Box::pin(self.reopen_manager(generation)).await
    }

    /// A forked child's command connection (the one it has is its parent's).
    async fn reopen_manager(&self, generation: u64) -> RedisResult<ConnectionManager> {
        let Kind::Manager(commands) = &self.0.kind else {
            unreachable!("a connection manager's connection")
        };
        let _one = self.0.reconnect.lock().await;
        {
            let commands = commands.read();
            if commands.0 == generation {
                return Ok(commands.1.clone());
            }
        }
        let inner = &self.0;
        let fresh = open(&inner.client, inner.timeouts, config(inner.timeouts)).await?;
        let parents = std::mem::replace(&mut *commands.write(), (generation, fresh.clone()));
        // Its task belongs to the parent's runtime: dropping it here could wake that.
        std::mem::forget(parents);
        Ok(fresh)
    }
}

impl Reader for Commands {
    fn get(&mut self, key: &[u8]) -> impl Future<Output = RedisResult<Value>> + Send {
        let mut get = redis::cmd("GET");
        get.arg(key);
        async move { self.query(&get).await }
    }
}

impl Conn {
    /// Connects the command connection at once (errors show now); the subscriber
    /// connects with the first wait.
    pub(crate) async fn connect(client: redis::Client, options: &Options) -> RedisResult<Self> {
        let timeouts = Timeouts::from(options);
        let resp3 = r::resp3(&client)?;
        let commands = Commands::connect(client, timeouts).await?;
        Ok(Conn {
            resp3,
            timeouts,
            commands,
            subscriber: Slot::default(),
            waited: parking_lot::Mutex::new((r::fork_generation(), Vec::new())),
        })
    }

    /// Like [`connect`](Conn::connect), by `until` if that comes first (a Sentinel
    /// discovery's deadline).
    pub(crate) async fn connect_until(
        client: redis::Client,
        options: &Options,
        until: Instant,
    ) -> RedisResult<Self> {
        tokio::time::timeout_at(until.into(), Self::connect(client, options))
            .await
            .unwrap_or_else(|_| Err(r::timed_out("connecting to Redis timed out")))
    }

    /// Sends `cmd` and then `wait`'s `WAIT` on a connection of their own (`WAIT`
    /// blocks it, and counts its own writes): the command's reply (an error reply as
    /// `Err`) and `WAIT`'s. A connection whose exchange did not complete is dropped.
    pub(crate) async fn query_waited(&self, cmd: &Cmd, wait: &Wait) -> RedisResult<(Value, Value)> {
        let generation = r::fork_generation();
        let idle = {
            let mut waited = self.waited.lock();
            if waited.0 != generation {
                // The parent's: their tasks belong to its runtime.
                std::mem::forget(std::mem::take(&mut waited.1));
                waited.0 = generation;
            }
            waited.1.pop()
        };
        let mut con = match idle {
            Some(con) => con,
            None => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeouts.connect))
                    .set_response_timeout(Some(self.timeouts.response + wait.timeout()));
                self.commands
                    .0
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?
            }
        };
        let mut pipe = redis::pipe();
        pipe.add_command(cmd.clone())
            .add_command(wait.cmd().clone());
        let mut replies = con.send_packed_commands(&pipe, 0, 2).await?.into_iter();
        let (Some(reply), Some(waited)) = (replies.next(), replies.next()) else {
            return Err(RedisError::from((
                redis::ErrorKind::Parse,
                "fewer replies than commands",
            )));
        };
        {
            let mut idle = self.waited.lock();
            if idle.0 == generation && idle.1.len() < WAITED_IDLE {
                idle.1.push(con);
            }
        }
        Ok((reply.extract_error()?, waited))
    }

    /// The server is no longer the one to talk to (a Sentinel master that moved):
    /// every waiter wakes as if the subscription had dropped, and re-checks its key.
    pub(crate) fn abandon(&self) {
        self.subscriber.disconnected();
    }

    /// Sends one command and reads its reply (within the response timeout).
    pub(crate) async fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
        self.commands.query(cmd).await
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
        let commands = || async { Ok(self.commands.clone()) };
        self.subscriber
            .subscribe(open, commands, name, key, holder, until)
            .await
    }
}

/// One waiter's registration on its channel.
pub(crate) type Subscription = super::redis_subscriber::Subscription<ConnectionManager>;
