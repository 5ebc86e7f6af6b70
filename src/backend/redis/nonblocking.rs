//! The async flavor's Redis connections: one multiplexed, reconnecting connection for
//! commands, and one shared RESP3 subscriber connection for every waiter of the
//! backend, whose push messages a dispatcher task fans out to per-channel events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use event_listener::{Event, EventListener};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, PushInfo, PushKind, RedisResult, Value};
use tokio::sync::{OnceCell, mpsc};

use crate::backend::redis::protocol::{Heard, Timeouts};
use crate::config::Options;

/// The backend's connections.
pub(crate) struct Conn {
    commands: ConnectionManager,
    /// The same server over RESP3, for the subscriber.
    resp3: redis::Client,
    timeouts: Timeouts,
    subscriber: OnceCell<Subscriber>,
}

fn config(t: Timeouts) -> ConnectionManagerConfig {
    // No reconnection retries inside a call: a call fails within its timeouts, and the
    // next call tries to reconnect again.
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(t.connect))
        .set_response_timeout(Some(t.response))
        .set_number_of_retries(0)
}

impl Conn {
    /// Connects the command connection at once (errors show now); the subscriber
    /// connects with the first wait.
    pub(crate) async fn connect(client: redis::Client, options: &Options) -> RedisResult<Self> {
        let timeouts = Timeouts::from(options);
        let resp3 = crate::backend::redis::protocol::resp3(&client)?;
        let commands = ConnectionManager::new_with_config(client, config(timeouts)).await?;
        // A command, so that wrong credentials show now (AUTH is sent only with them).
        redis::cmd("PING")
            .query_async::<()>(&mut commands.clone())
            .await?;
        Ok(Conn {
            commands,
            resp3,
            timeouts,
            subscriber: OnceCell::new(),
        })
    }

    /// Sends one command and reads its reply.
    pub(crate) async fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
        let mut con = self.commands.clone();
        cmd.query_async(&mut con).await
    }

    /// Subscribes to `channel` on the shared subscriber; returns once the server
    /// confirmed (or the channel was already subscribed on the current connection).
    pub(crate) async fn subscribe(&self, channel: &[u8]) -> RedisResult<Subscription> {
        let subscriber = self
            .subscriber
            .get_or_try_init(|| Subscriber::start(&self.resp3, self.timeouts))
            .await?;
        subscriber.join(channel).await
    }
}

/// The shared subscriber connection and the waiters' registry.
struct Subscriber {
    manager: ConnectionManager,
    hub: Arc<Hub>,
}

/// Per-channel events, and the subscriber connection's epoch.
struct Hub {
    channels: Mutex<HashMap<Vec<u8>, Entry>>,
    /// Bumped whenever the subscriber connection drops (its messages may be lost).
    epoch: AtomicU64,
    /// SUBSCRIBE and UNSUBSCRIBE go one at a time, so that an unsubscribe of a
    /// channel nobody waits on cannot overtake a new waiter's subscribe.
    order: tokio::sync::Mutex<()>,
}

struct Entry {
    channel: Arc<Channel>,
    waiters: usize,
}

struct Channel {
    event: Event,
    /// Messages received on the channel.
    messages: AtomicU64,
    /// The epoch in which the server confirmed the subscription (`u64::MAX`: never).
    subscribed: AtomicU64,
}

const NEVER: u64 = u64::MAX;

impl Subscriber {
    async fn start(client: &redis::Client, timeouts: Timeouts) -> RedisResult<Subscriber> {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub {
            channels: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            order: tokio::sync::Mutex::new(()),
        });
        let manager = ConnectionManager::new_with_config(
            client.clone(),
            config(timeouts)
                .set_push_sender(tx)
                .set_automatic_resubscription(),
        )
        .await?;
        tokio::spawn(dispatch(Arc::downgrade(&hub), rx));
        Ok(Subscriber { manager, hub })
    }

    async fn join(&self, name: &[u8]) -> RedisResult<Subscription> {
        // Registered (and listening) before the subscription is confirmed.
        let channel = {
            let mut channels = self.hub.channels.lock();
            let entry = channels.entry(name.to_vec()).or_insert_with(|| Entry {
                channel: Arc::new(Channel {
                    event: Event::new(),
                    messages: AtomicU64::new(0),
                    subscribed: AtomicU64::new(NEVER),
                }),
                waiters: 0,
            });
            entry.waiters += 1;
            Arc::clone(&entry.channel)
        };
        let messages = channel.messages.load(Ordering::SeqCst);
        let epoch = self.hub.epoch.load(Ordering::SeqCst);
        let subscription = Subscription {
            hub: Arc::clone(&self.hub),
            manager: self.manager.clone(),
            name: name.to_vec(),
            listener: Some(channel.event.listen()),
            messages,
            epoch,
            channel,
        };
        if subscription.channel.subscribed.load(Ordering::SeqCst) != epoch {
            let _order = self.hub.order.lock().await;
            if subscription.channel.subscribed.load(Ordering::SeqCst) != epoch {
                let mut manager = self.manager.clone();
                if let Err(e) = manager.subscribe(name).await {
                    // Once more on a fresh connection if this one had dropped.
                    if !crate::backend::redis::protocol::is_dropped(&e) {
                        return Err(e);
                    }
                    manager.subscribe(name).await?;
                }
                subscription
                    .channel
                    .subscribed
                    .store(epoch, Ordering::SeqCst);
            }
        }
        Ok(subscription)
    }
}

/// Fans the subscriber's push messages out to the waiters of each channel.
async fn dispatch(hub: Weak<Hub>, mut rx: mpsc::UnboundedReceiver<PushInfo>) {
    while let Some(push) = rx.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        match push.kind {
            PushKind::Message => {
                if let Some(Value::BulkString(name)) = push.data.first()
                    && let Some(entry) = hub.channels.lock().get(name.as_slice())
                {
                    entry.channel.messages.fetch_add(1, Ordering::SeqCst);
                    entry.channel.event.notify(usize::MAX);
                }
            }
            PushKind::Disconnection => {
                hub.epoch.fetch_add(1, Ordering::SeqCst);
                for entry in hub.channels.lock().values() {
                    entry.channel.event.notify(usize::MAX);
                }
            }
            _ => {}
        }
    }
}

/// One waiter's registration on a channel. Dropping it unregisters; the last waiter
/// of a channel unsubscribes (on a spawned task).
pub(crate) struct Subscription {
    hub: Arc<Hub>,
    manager: ConnectionManager,
    name: Vec<u8>,
    channel: Arc<Channel>,
    listener: Option<EventListener>,
    messages: u64,
    epoch: u64,
}

impl Subscription {
    /// Waits for a message on the channel until `until`.
    pub(crate) async fn listen(&mut self, until: Instant) -> Heard {
        loop {
            // Listening before the check: a notification after it is not missed.
            let listener = match self.listener.take() {
                Some(l) => l,
                None => self.channel.event.listen(),
            };
            if self.channel.messages.load(Ordering::SeqCst) != self.messages {
                return Heard::Message;
            }
            if self.hub.epoch.load(Ordering::SeqCst) != self.epoch {
                return Heard::Lost;
            }
            if !super::rt::wait_listener(listener, until).await {
                return Heard::Silence;
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let last = {
            let mut channels = self.hub.channels.lock();
            match channels.get_mut(&self.name) {
                Some(entry) if Arc::ptr_eq(&entry.channel, &self.channel) => {
                    entry.waiters -= 1;
                    if entry.waiters == 0 {
                        channels.remove(&self.name);
                        true
                    } else {
                        false
                    }
                }
                _ => false,
            }
        };
        // Even when the subscription was never confirmed: a cancelled waiter may have
        // sent its SUBSCRIBE already.
        if !last {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let hub = Arc::clone(&self.hub);
        let mut manager = self.manager.clone();
        let name = std::mem::take(&mut self.name);
        runtime.spawn(async move {
            let _order = hub.order.lock().await;
            // A new waiter may have come meanwhile: it keeps the subscription.
            if !hub.channels.lock().contains_key(&name) {
                let _ = manager.unsubscribe(&name).await;
            }
        });
    }
}
