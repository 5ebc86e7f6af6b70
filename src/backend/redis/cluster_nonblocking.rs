//! The async flavor's Redis Cluster connections: one multiplexed cluster connection
//! for commands (the `redis` crate routes each by its key's slot and follows `MOVED`
//! and `ASK`), and one shared RESP3 cluster connection for every waiter of the
//! backend, subscribed with `SSUBSCRIBE` (each channel on its slot's master; the crate
//! resubscribes after a reconnect), whose push messages a dispatcher task posts to the
//! waiters' [`Hub`]; one re-check task per waited-on key.
//!
//! The subscriber and its tasks live on the runtime of the wait that started them;
//! when that runtime has ended, the next wait starts a new subscriber on its own.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, PushInfo, PushKind, RedisError, RedisResult, Value};
use tokio::sync::mpsc;

use crate::backend::redis::cluster;
use crate::backend::redis::hub::{Channel, Hub, Waiter};
use crate::backend::redis::protocol::{self as r, Timeouts};
use crate::config::Options;

/// The backend's cluster connections.
pub(crate) struct Conn {
    /// RESP3, for the subscriber.
    resp3: ClusterClient,
    timeouts: Timeouts,
    commands: ClusterConnection,
    subscriber: tokio::sync::Mutex<Option<Arc<Subscriber>>>,
}

fn timed_out(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        what.to_owned(),
    ))
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
        .unwrap_or_else(|_| Err(timed_out("connecting to the Redis Cluster timed out")))
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
            subscriber: tokio::sync::Mutex::new(None),
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
            .unwrap_or_else(|_| Err(timed_out("the wait's deadline passed")))
    }

    /// Registers a waiter for `holder`'s release of lock `key` on sharded channel
    /// `name` and subscribes it; returns once the server confirmed (or the channel was
    /// subscribed already), `None` if `until` passed first.
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

    /// The live subscriber, started on the current runtime if there is none or the
    /// runtime it ran on has ended.
    async fn subscriber(&self) -> RedisResult<Arc<Subscriber>> {
        let mut slot = self.subscriber.lock().await;
        if let Some(subscriber) = slot.as_ref()
            && !subscriber.pushes.is_closed()
        {
            return Ok(Arc::clone(subscriber));
        }
        let subscriber = Box::pin(Subscriber::start(&self.resp3, self.timeouts)).await?;
        *slot = Some(Arc::clone(&subscriber));
        Ok(subscriber)
    }
}

/// The shared subscriber connection and the waiters' registry.
struct Subscriber {
    con: ClusterConnection,
    hub: Arc<Hub>,
    /// Closed once the dispatcher task is gone (its runtime ended).
    pushes: mpsc::UnboundedSender<PushInfo>,
    /// SSUBSCRIBE and SUNSUBSCRIBE go one at a time (an unsubscribe of a channel
    /// nobody waits on cannot overtake a new waiter's subscribe).
    order: tokio::sync::Mutex<()>,
    /// Our SUNSUBSCRIBEs not yet answered, by channel (an `sunsubscribe` that
    /// answers none is the server's own).
    unsubscribing: Unsubscribing,
}

type Unsubscribing = Arc<parking_lot::Mutex<HashMap<Vec<u8>, u32>>>;

impl Subscriber {
    async fn start(client: &ClusterClient, timeouts: Timeouts) -> RedisResult<Arc<Subscriber>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub::default());
        let con = open(
            client,
            timeouts,
            config(timeouts).set_push_sender(tx.clone()),
        )
        .await?;
        let unsubscribing = Unsubscribing::default();
        tokio::spawn(dispatch(
            Arc::downgrade(&hub),
            Arc::clone(&unsubscribing),
            rx,
        ));
        Ok(Arc::new(Subscriber {
            con,
            hub,
            pushes: tx,
            order: tokio::sync::Mutex::new(()),
            unsubscribing,
        }))
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
            tokio::spawn(recheck(Arc::downgrade(&channel), conn.commands.clone()));
        }
        if !channel.is_subscribed(epoch) {
            let _order = self.order.lock().await;
            if !channel.is_subscribed(epoch) {
                let mut con = self.con.clone();
                if let Err(e) = con.ssubscribe(name).await {
                    if !r::is_dropped(&e) {
                        return Err(e);
                    }
                    con.ssubscribe(name).await?;
                }
                channel.confirm(epoch);
            }
        }
        Ok(subscription)
    }
}

/// Posts the subscriber's push messages to the hub. A `sunsubscribe` the server sends
/// for a channel that still has waiters (its slot moved to another master) moves the
/// channel: its waiters re-check the key and subscribe again, at the new owner.
async fn dispatch(
    hub: Weak<Hub>,
    unsubscribing: Unsubscribing,
    mut rx: mpsc::UnboundedReceiver<PushInfo>,
) {
    while let Some(push) = rx.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        match (push.kind, push.data.as_slice()) {
            (PushKind::SMessage, [Value::BulkString(name), Value::BulkString(payload)]) => {
                hub.message(name, payload)
            }
            (PushKind::SUnsubscribe, [Value::BulkString(name), ..]) => {
                let ours = match unsubscribing.lock().get_mut(name.as_slice()) {
                    Some(n) => {
                        *n -= 1;
                        true
                    }
                    None => false,
                };
                if ours {
                    unsubscribing.lock().retain(|_, n| *n > 0);
                } else {
                    hub.moved(name, None);
                }
            }
            (PushKind::Disconnection, _) => hub.disconnected(),
            _ => {}
        }
    }
}

/// Re-checks a waited-on key while it has waiters (a release that publishes nothing
/// is noticed): one task per key and subscriber.
async fn recheck(channel: Weak<Channel>, mut commands: ClusterConnection) {
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
            if !subscriber.hub.is_waited_on(&name) {
                *subscriber
                    .unsubscribing
                    .lock()
                    .entry(name.clone())
                    .or_default() += 1;
                // A failed one keeps its count: a late answer finds it.
                let _ = subscriber.con.clone().sunsubscribe(&name).await;
            }
        });
    }
}
