//! The async flavor's Redis connections: one multiplexed, reconnecting connection for
//! commands, and one shared RESP3 subscriber connection for every waiter of the
//! backend, whose push messages a dispatcher task posts to the waiters' [`Hub`]; one
//! re-check task per waited-on key.
//!
//! The subscriber and its tasks live on the runtime of the wait that started them.
//! When that runtime has ended (the dispatcher is gone), the next wait starts a new
//! subscriber on its own runtime. A forked child opens connections of its own.

use std::sync::{Arc, Weak};
use std::time::Instant;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, PushInfo, PushKind, RedisError, RedisResult, Value};
use tokio::sync::mpsc;

use crate::backend::redis::hub::{Channel, Hub, Waiter};
use crate::backend::redis::protocol::{self as r, Timeouts};
use crate::config::Options;

/// The fan-out over a Redlock quorum's nodes.
#[path = "quorum_nonblocking.rs"]
pub(crate) mod quorum;

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
    subscriber: tokio::sync::Mutex<Option<Arc<Subscriber>>>,
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

fn timed_out(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        what.to_owned(),
    ))
}

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
        .unwrap_or_else(|_| Err(timed_out("connecting to Redis timed out")))
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
            subscriber: tokio::sync::Mutex::new(None),
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
            .unwrap_or_else(|_| Err(timed_out("the wait's deadline passed")))
    }

    /// Registers a waiter for `holder`'s release of lock `key` on channel `name` and
    /// subscribes the channel on the shared subscriber; returns once the server
    /// confirmed (or the channel was already subscribed on the current connection),
    /// `None` if `until` passed first.
    pub(crate) async fn subscribe(
        &self,
        name: &[u8],
        key: &[u8],
        holder: Option<&[u8]>,
        until: Instant,
    ) -> RedisResult<Option<Subscription>> {
        let subscribed = async {
            let subscriber = self.subscriber().await?;
            subscriber.join(self, name, key, holder).await
        };
        match tokio::time::timeout_at(until.into(), subscribed).await {
            Ok(subscription) => subscription.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The live subscriber, started on the current runtime if there is none, or if the
    /// runtime it ran on has ended, or if it is the parent's (after a fork).
    async fn subscriber(&self) -> RedisResult<Arc<Subscriber>> {
        let mut slot = self.subscriber.lock().await;
        if let Some(subscriber) = slot.as_ref() {
            if subscriber.is_alive() {
                return Ok(Arc::clone(subscriber));
            }
            if subscriber.generation != r::fork_generation() {
                // The parent's: its tasks belong to the parent's runtime.
                std::mem::forget(slot.take());
            }
        }
        // Boxed, as in `commands`: the set-up runs once, not in every waiter's future.
        let subscriber = Box::pin(Subscriber::start(&self.resp3, self.timeouts)).await?;
        *slot = Some(Arc::clone(&subscriber));
        Ok(subscriber)
    }
}

/// The shared subscriber connection and the waiters' registry.
struct Subscriber {
    manager: ConnectionManager,
    hub: Arc<Hub>,
    /// A sender of the dispatcher's channel: closed once the dispatcher task is gone
    /// (its runtime ended).
    pushes: mpsc::UnboundedSender<PushInfo>,
    generation: u64,
    /// SUBSCRIBE and UNSUBSCRIBE go one at a time, so that an unsubscribe of a
    /// channel nobody waits on cannot overtake a new waiter's subscribe.
    order: tokio::sync::Mutex<()>,
}

impl Subscriber {
    async fn start(client: &redis::Client, timeouts: Timeouts) -> RedisResult<Arc<Subscriber>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub::default());
        let manager = open(
            client,
            timeouts,
            config(timeouts)
                .set_push_sender(tx.clone())
                .set_automatic_resubscription(),
        )
        .await?;
        tokio::spawn(dispatch(Arc::downgrade(&hub), rx));
        Ok(Arc::new(Subscriber {
            manager,
            hub,
            pushes: tx,
            generation: r::fork_generation(),
            order: tokio::sync::Mutex::new(()),
        }))
    }

    fn is_alive(&self) -> bool {
        !self.pushes.is_closed() && self.generation == r::fork_generation()
    }

    async fn join(
        self: &Arc<Self>,
        conn: &Conn,
        name: &[u8],
        key: &[u8],
        holder: Option<&[u8]>,
    ) -> RedisResult<Subscription> {
        // Registered (and counting) before the subscription is confirmed.
        let (waiter, first) = self.hub.join(name, key, holder);
        let channel = Arc::clone(waiter.channel());
        let epoch = waiter.epoch();
        let subscription = Subscription {
            waiter: Some(waiter),
            subscriber: Arc::clone(self),
        };
        if first {
            tokio::spawn(recheck(Arc::downgrade(&channel), conn.commands().await?));
        }
        if !channel.is_subscribed(epoch) {
            let _order = self.order.lock().await;
            if !channel.is_subscribed(epoch) {
                let mut manager = self.manager.clone();
                if let Err(e) = manager.subscribe(name).await {
                    // Once more on a fresh connection if this one had dropped.
                    if !r::is_dropped(&e) {
                        return Err(e);
                    }
                    manager.subscribe(name).await?;
                }
                channel.confirm(epoch);
            }
        }
        Ok(subscription)
    }
}

/// Posts the subscriber's push messages to the hub.
async fn dispatch(hub: Weak<Hub>, mut rx: mpsc::UnboundedReceiver<PushInfo>) {
    while let Some(push) = rx.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        match push.kind {
            PushKind::Message => {
                if let [Value::BulkString(name), Value::BulkString(payload)] = push.data.as_slice()
                {
                    hub.message(name, payload);
                }
            }
            PushKind::Disconnection => hub.disconnected(),
            _ => {}
        }
    }
}

/// Re-checks a waited-on key while it has waiters, so that a release that publishes
/// nothing is noticed: one task per key and subscriber, whatever the number of
/// waiters; nothing when nobody waits.
async fn recheck(channel: Weak<Channel>, mut commands: ConnectionManager) {
    for attempt in 0.. {
        tokio::time::sleep(r::recheck_delay(attempt)).await;
        let Some(channel) = channel.upgrade() else {
            return;
        };
        if !channel.is_waited_on() {
            return;
        }
        let sent = channel.recheck_sent();
        let mut get = redis::cmd("GET");
        get.arg(channel.key());
        // A failed re-check changes nothing: the waiters' own bounds stand.
        if let Ok(Ok(value)) = get.query_async::<Value>(&mut commands).await.map(r::bytes) {
            channel.observed(sent, value.as_deref());
        }
    }
}

/// One waiter's registration on a channel. Dropping it unregisters; the last waiter
/// of a channel unsubscribes (on a spawned task).
pub(crate) struct Subscription {
    waiter: Option<Waiter>,
    subscriber: Arc<Subscriber>,
}

impl Subscription {
    /// The registration, to listen with.
    pub(crate) fn waiter(&self) -> &Waiter {
        self.waiter.as_ref().expect("present until dropped")
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        // Even when the subscription was never confirmed: a cancelled waiter may have
        // sent its SUBSCRIBE already.
        if !waiter.leave() {
            return;
        }
        let name = waiter.channel().name().to_vec();
        drop(waiter);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let subscriber = Arc::clone(&self.subscriber);
        runtime.spawn(async move {
            let _order = subscriber.order.lock().await;
            // A new waiter may have come meanwhile: it keeps the subscription.
            if !subscriber.hub.is_waited_on(&name) {
                let _ = subscriber.manager.clone().unsubscribe(&name).await;
            }
        });
    }
}
