//! The async flavor's shared subscriber, written once for one server
//! (`nonblocking.rs`: a RESP3 connection manager, `SUBSCRIBE`) and a Redis Cluster
//! (`cluster_nonblocking.rs`: a RESP3 cluster connection, `SSUBSCRIBE` on each
//! channel's master): one connection for every waiter of a backend, whose push
//! messages a dispatcher task posts to the waiters' [`Hub`], and one re-check task
//! per waited-on key.
//!
//! The subscriber and its tasks live on the runtime of the wait that started them.
//! When that runtime has ended (the dispatcher is gone), or in a forked child, the
//! next wait starts a new subscriber on its own runtime.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc;

use crate::backend::redis::hub::{Channel, Hub, Waiter};
use crate::backend::redis::protocol as r;

/// A RESP3 connection that subscribes channels for a [`Subscriber`].
pub(crate) trait PubSub: Clone + Send + Sync + 'static {
    fn subscribe(&mut self, name: &[u8]) -> impl Future<Output = RedisResult<()>> + Send;
    fn unsubscribe(&mut self, name: &[u8]) -> impl Future<Output = RedisResult<()>> + Send;
}

/// One server: `SUBSCRIBE` (resubscribed by the manager after a reconnect).
/// What a channel's re-check task reads the key with: the backend's command
/// connection.
pub(crate) trait Reader: Send {
    fn get(&mut self, key: &[u8]) -> impl Future<Output = RedisResult<Value>> + Send;
}

impl Reader for ClusterConnection {
    fn get(&mut self, key: &[u8]) -> impl Future<Output = RedisResult<Value>> + Send {
        let mut get = redis::cmd("GET");
        get.arg(key);
        async move { get.query_async(self).await }
    }
}

impl PubSub for ConnectionManager {
    fn subscribe(&mut self, name: &[u8]) -> impl Future<Output = RedisResult<()>> + Send {
        ConnectionManager::subscribe(self, name)
    }

    fn unsubscribe(&mut self, name: &[u8]) -> impl Future<Output = RedisResult<()>> + Send {
        ConnectionManager::unsubscribe(self, name)
    }
}

/// A Redis Cluster: `SSUBSCRIBE`, sent to the channel's master (resubscribed by the
/// cluster connection after a reconnect).
impl PubSub for ClusterConnection {
    fn subscribe(&mut self, name: &[u8]) -> impl Future<Output = RedisResult<()>> + Send {
        self.ssubscribe(name)
    }

    fn unsubscribe(&mut self, name: &[u8]) -> impl Future<Output = RedisResult<()>> + Send {
        self.sunsubscribe(name)
    }
}

/// A backend's subscriber, started with its first wait.
pub(crate) struct Slot<C: PubSub>(tokio::sync::Mutex<Option<Arc<Subscriber<C>>>>);

impl<C: PubSub> Default for Slot<C> {
    fn default() -> Self {
        Slot(tokio::sync::Mutex::new(None))
    }
}

impl<C: PubSub> Slot<C> {
    /// Registers a waiter for `holder`'s release of lock `key` on channel `name` and
    /// subscribes the channel; returns once the server confirmed (or the channel was
    /// already subscribed on the current connection), `None` if `until` passed
    /// first. `open` opens a subscriber connection (given the push sender), for the
    /// first wait and after the subscriber's runtime ended; `commands` gives the
    /// connection the channel's re-check task reads the key on (for a channel's first
    /// waiter).
    pub(crate) async fn subscribe<O, F, R>(
        &self,
        open: impl FnOnce(mpsc::UnboundedSender<PushInfo>) -> O,
        commands: impl FnOnce() -> F,
        name: &[u8],
        key: &[u8],
        holder: Option<&[u8]>,
        until: Instant,
    ) -> RedisResult<Option<Subscription<C>>>
    where
        O: Future<Output = RedisResult<C>> + Send,
        F: Future<Output = RedisResult<R>>,
        R: Reader + 'static,
    {
        let subscribed = async {
            let subscriber = self.get(open).await?;
            subscriber.join(name, key, holder, commands).await
        };
        match tokio::time::timeout_at(until.into(), subscribed).await {
            Ok(subscription) => subscription.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Wakes every waiter as if the subscription had dropped (they re-check their
    /// keys): the server is no longer the one to talk to (a Sentinel master that
    /// moved). A subscriber being started now has no waiter to wake yet.
    pub(crate) fn disconnected(&self) {
        if let Ok(slot) = self.0.try_lock()
            && let Some(subscriber) = slot.as_ref()
        {
            subscriber.hub.disconnected();
        }
    }

    /// The live subscriber, started on the current runtime if there is none, or if the
    /// runtime it ran on has ended, or if it is the parent's (after a fork).
    async fn get<O>(
        &self,
        open: impl FnOnce(mpsc::UnboundedSender<PushInfo>) -> O,
    ) -> RedisResult<Arc<Subscriber<C>>>
    where
        O: Future<Output = RedisResult<C>> + Send,
    {
        let mut slot = self.0.lock().await;
        if let Some(subscriber) = slot.as_ref() {
            if subscriber.is_alive() {
                return Ok(Arc::clone(subscriber));
            }
            if subscriber.generation != r::fork_generation() {
                // The parent's: its tasks belong to the parent's runtime.
                std::mem::forget(slot.take());
            }
        }
        // Boxed: the set-up runs once, not in every waiter's future.
        let subscriber = Box::pin(Subscriber::start(open)).await?;
        *slot = Some(Arc::clone(&subscriber));
        Ok(subscriber)
    }
}

/// The shared subscriber connection and the waiters' registry.
pub(crate) struct Subscriber<C: PubSub> {
    con: C,
    hub: Arc<Hub>,
    /// A sender of the dispatcher's channel: closed once the dispatcher task is gone
    /// (its runtime ended).
    pushes: mpsc::UnboundedSender<PushInfo>,
    generation: u64,
    /// SUBSCRIBE and UNSUBSCRIBE go one at a time, so that an unsubscribe of a
    /// channel nobody waits on cannot overtake a new waiter's subscribe.
    order: tokio::sync::Mutex<()>,
    /// Our UNSUBSCRIBEs not yet answered, by channel: an `unsubscribe` that answers
    /// none is the server's own (a cluster master whose slot moved away).
    unsubscribing: Unsubscribing,
}

type Unsubscribing = Arc<parking_lot::Mutex<HashMap<Vec<u8>, u32>>>;

impl<C: PubSub> Subscriber<C> {
    async fn start<O>(
        open: impl FnOnce(mpsc::UnboundedSender<PushInfo>) -> O,
    ) -> RedisResult<Arc<Self>>
    where
        O: Future<Output = RedisResult<C>>,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub::default());
        let con = open(tx.clone()).await?;
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
            generation: r::fork_generation(),
            order: tokio::sync::Mutex::new(()),
            unsubscribing,
        }))
    }

    fn is_alive(&self) -> bool {
        !self.pushes.is_closed() && self.generation == r::fork_generation()
    }

    async fn join<F, R>(
        self: &Arc<Self>,
        name: &[u8],
        key: &[u8],
        holder: Option<&[u8]>,
        commands: impl FnOnce() -> F,
    ) -> RedisResult<Subscription<C>>
    where
        F: Future<Output = RedisResult<R>>,
        R: Reader + 'static,
    {
        // Registered (and counting) before the subscription is confirmed.
        let (waiter, first) = self.hub.join(name, key, holder);
        let channel = Arc::clone(waiter.channel());
        let epoch = waiter.epoch();
        let subscription = Subscription {
            waiter: Some(waiter),
            subscriber: Arc::clone(self),
        };
        if first {
            tokio::spawn(recheck(Arc::downgrade(&channel), commands().await?));
        }
        if !channel.is_subscribed(epoch) {
            let _order = self.order.lock().await;
            if !channel.is_subscribed(epoch) {
                let mut con = self.con.clone();
                if let Err(e) = con.subscribe(name).await {
                    // Once more on a fresh connection if this one had dropped.
                    if !r::is_dropped(&e) {
                        return Err(e);
                    }
                    con.subscribe(name).await?;
                }
                channel.confirm(epoch);
            }
        }
        Ok(subscription)
    }
}

/// Posts the subscriber's push messages to the hub. An `unsubscribe` the server sends
/// on its own for a channel (a cluster master whose slot moved away) moves the
/// channel: its waiters re-check the key and subscribe again, at the new owner.
async fn dispatch(
    hub: Weak<Hub>,
    unsubscribing: Unsubscribing,
    mut rx: mpsc::UnboundedReceiver<PushInfo>,
) {
    while let Some(push) = rx.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        match (push.kind, push.data.as_slice()) {
            (
                PushKind::Message | PushKind::SMessage,
                [Value::BulkString(name), Value::BulkString(payload)],
            ) => hub.message(name, payload),
            (PushKind::Unsubscribe | PushKind::SUnsubscribe, [Value::BulkString(name), ..]) => {
                let mut ours = unsubscribing.lock();
                match ours.get_mut(name.as_slice()) {
                    Some(1) => {
                        ours.remove(name.as_slice());
                    }
                    Some(n) => *n -= 1,
                    None => {
                        drop(ours);
                        hub.moved(name, None);
                    }
                }
            }
            (PushKind::Disconnection, _) => hub.disconnected(),
            _ => {}
        }
    }
}

/// Re-checks a waited-on key while it has waiters, so that a release that publishes
/// nothing is noticed: one task per key and subscriber, whatever the number of
/// waiters; nothing when nobody waits.
async fn recheck<R: Reader>(channel: Weak<Channel>, mut commands: R) {
    for attempt in 0.. {
        tokio::time::sleep(r::recheck_delay(attempt)).await;
        let Some(channel) = channel.upgrade() else {
            return;
        };
        if !channel.is_waited_on() {
            return;
        }
        let sent = channel.recheck_sent();
        // A failed re-check changes nothing: the waiters' own bounds stand.
        if let Ok(Ok(value)) = commands.get(channel.key()).await.map(r::bytes) {
            channel.observed(sent, value.as_deref());
        }
    }
}

/// One waiter's registration on a channel. Dropping it unregisters; the last waiter
/// of a channel unsubscribes (on a spawned task).
pub(crate) struct Subscription<C: PubSub> {
    waiter: Option<Waiter>,
    subscriber: Arc<Subscriber<C>>,
}

impl<C: PubSub> Subscription<C> {
    /// The registration, to listen with.
    pub(crate) fn waiter(&self) -> &Waiter {
        self.waiter.as_ref().expect("present until dropped")
    }
}

impl<C: PubSub> Drop for Subscription<C> {
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
                *subscriber
                    .unsubscribing
                    .lock()
                    .entry(name.clone())
                    .or_default() += 1;
                // A failed one keeps its count: a late answer finds it.
                let _ = subscriber.con.clone().unsubscribe(&name).await;
            }
        });
    }
}
