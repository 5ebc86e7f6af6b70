//! The blocking flavor's Redis connections, with no async runtime:
//! - a pool of at most `pool_size` command connections (a caller waits for a free one
//!   within the response timeout);
//! - one subscriber connection (RESP3) for every waiter of the backend, served by a
//!   thread the backend starts with its first wait: it sends SUBSCRIBE / UNSUBSCRIBE
//!   as waiters come and go, posts messages to the waiters' [`Hub`], re-checks each
//!   waited-on key (one loop for all keys), and exits when the backend is dropped.
//!   When its connection drops, the waiters re-check the key and it connects again.
//!
//! A forked child never uses its parent's connections or thread: it opens its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use event_listener::Listener as _;
use parking_lot::{Condvar, Mutex};
use redis::{Cmd, RedisError, RedisResult, Value};

use crate::backend::redis::cluster;
use crate::backend::redis::hub::{Hub, Waiter};
use crate::backend::redis::protocol::{self as r, Timeouts};
use crate::backend::redis::replication::Wait;
use crate::config::Options;

/// The fan-out over a Redlock quorum's nodes.
#[path = "quorum_blocking.rs"]
pub(crate) mod quorum;

/// The longest a new channel waits for the subscriber thread to send its SUBSCRIBE
/// while the thread listens on other channels (its read timeout).
const TICK: Duration = Duration::from_millis(2);

/// How long the subscriber thread waits before connecting again after a failure
/// (unless a new waiter comes).
const RETRY: Duration = Duration::from_millis(100);

/// The backend's connections.
pub(crate) struct Conn {
    pool: Arc<Pool>,
    /// The same server over RESP3, for the subscriber.
    resp3: redis::Client,
    listener: Mutex<Option<Arc<Listener>>>,
    /// A Redis Cluster node's subscriber: its channels are sharded (`SSUBSCRIBE`),
    /// and its re-checks go through the cluster's connections.
    sharded: Option<Weak<dyn Rechecks>>,
}

/// At most `size` command connections, idle or in use.
struct Pool {
    client: redis::Client,
    timeouts: Timeouts,
    size: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
}

struct PoolState {
    /// The fork generation the connections were opened in.
    generation: u64,
    idle: Vec<redis::Connection>,
    /// Connections open, idle or in use (or being opened).
    open: usize,
}

/// A connection taken from the pool; given back with [`Pool::put`] or dropped with
/// [`Pool::discard`].
struct Taken {
    con: redis::Connection,
    generation: u64,
}

impl Pool {
    /// Opens a connection, the whole set-up (connect, HELLO/AUTH/SELECT, `PING` if
    /// `ping`) within one connect timeout and before `until`.
    fn open(&self, until: Instant, ping: bool) -> RedisResult<redis::Connection> {
        open(&self.client, self.timeouts, until, ping)
    }

    /// A connection, waiting for one to be free until `until`.
    fn take(&self, until: Instant) -> RedisResult<Taken> {
        let generation = r::fork_generation();
        let mut state = self.state.lock();
        loop {
            if state.generation != generation {
                // A forked child: the parent's connections are not ours (closing our
                // copies leaves the parent's open).
                state.idle.clear();
                state.open = 0;
                state.generation = generation;
            }
            if let Some(con) = state.idle.pop() {
                return Ok(Taken { con, generation });
            }
            if state.open < self.size {
                state.open += 1;
                drop(state);
                return match self.open(until, false) {
                    Ok(con) => Ok(Taken { con, generation }),
                    Err(e) => {
                        self.forget(generation);
                        Err(e)
                    }
                };
            }
            if self.freed.wait_until(&mut state, until).timed_out() {
                return Err(r::timed_out("no free Redis connection in time"));
            }
        }
    }

    fn put(&self, taken: Taken) {
        use redis::ConnectionLike;
        if !taken.con.is_open() {
            return self.forget(taken.generation);
        }
        let mut state = self.state.lock();
        if state.generation == taken.generation {
            state.idle.push(taken.con);
            self.freed.notify_one();
        }
    }

    fn discard(&self, taken: Taken) {
        self.forget(taken.generation);
    }

    /// A connection of `generation` is gone.
    fn forget(&self, generation: u64) {
        let mut state = self.state.lock();
        if state.generation == generation {
            state.open -= 1;
            self.freed.notify_one();
        }
    }

    /// The idle connections are likely dead too (e.g. the server restarted).
    fn clear_idle(&self) {
        let mut state = self.state.lock();
        let closed = state.idle.len();
        state.idle.clear();
        state.open -= closed;
        self.freed.notify_all();
    }

    /// Sends one command and reads its reply, under the response timeout or, if
    /// sooner, `until`. A connection that failed is not kept; when it dropped, the
    /// idle ones are closed as well.
    fn query(&self, cmd: &Cmd, until: Option<Instant>) -> RedisResult<Value> {
        self.run(until, Duration::ZERO, |con| cmd.query::<Value>(con))
    }

    /// Sends `cmd` and `wait`'s `WAIT` right after it on one connection (the command's
    /// reply, an error reply included, and `WAIT`'s), allowing `WAIT` its timeout.
    fn query_waited(&self, cmd: &Cmd, wait: &Wait) -> RedisResult<(Value, Value)> {
        use redis::ConnectionLike;
        let mut packed = cmd.get_packed_command();
        packed.extend_from_slice(&wait.cmd().get_packed_command());
        self.run(None, wait.timeout(), |con| {
            let mut replies = con.req_packed_commands(&packed, 0, 2)?.into_iter();
            match (replies.next(), replies.next()) {
                (Some(reply), Some(waited)) => Ok((reply, waited)),
                _ => Err(RedisError::from((
                    redis::ErrorKind::Parse,
                    "fewer replies than commands",
                ))),
            }
        })
    }

    /// Runs `f` on a pooled connection, its reads bounded by the response timeout
    /// plus `extra` or, if sooner, `until`.
    fn run<T>(
        &self,
        until: Option<Instant>,
        extra: Duration,
        f: impl FnOnce(&mut redis::Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let now = Instant::now();
        let limit = match until {
            Some(until) => until.min(now + self.timeouts.response + extra),
            None => now + self.timeouts.response + extra,
        };
        let mut taken = self.take(limit)?;
        let left = limit.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.put(taken);
            return Err(r::timed_out("no time left for the command"));
        }
        let shortened = left != self.timeouts.response;
        if shortened && let Err(e) = taken.con.set_read_timeout(Some(left)) {
            self.discard(taken);
            return Err(e);
        }
        let result = f(&mut taken.con);
        match result {
            Ok(v) => {
                if shortened
                    && taken
                        .con
                        .set_read_timeout(Some(self.timeouts.response))
                        .is_err()
                {
                    self.discard(taken);
                } else {
                    self.put(taken);
                }
                Ok(v)
            }
            // A late reply would be read as the next command's: close it.
            Err(e) if e.is_timeout() => {
                self.discard(taken);
                // The socket's read timeout can fire before the clock says it
                // passed (seen on VMs): report the timeout only once it has, so that
                // a waiter's re-check bounded by its deadline ends the wait by it
                // instead of failing early.
                let early = limit.saturating_duration_since(Instant::now());
                if !early.is_zero() {
                    std::thread::sleep(early);
                }
                Err(e)
            }
            Err(e) if r::is_dropped(&e) => {
                self.discard(taken);
                self.clear_idle();
                Err(e)
            }
            Err(e) => {
                // An error reply leaves the connection in a clean state.
                self.put(taken);
                Err(e)
            }
        }
    }
}

/// Where a subscriber thread sends its re-checks of the waited-on keys: the server's
/// own command pool, or, for a Redis Cluster node's subscriber, the cluster's
/// connections (they follow `MOVED` and `ASK`: the key may be on another node while
/// its slot migrates).
pub(crate) trait Rechecks: Send + Sync {
    /// Sends one command and reads its reply (within the response timeout).
    fn recheck(&self, cmd: &Cmd) -> RedisResult<Value>;
}

impl Rechecks for Pool {
    fn recheck(&self, cmd: &Cmd) -> RedisResult<Value> {
        self.query(cmd, None)
    }
}

/// Opens a connection of `client`, the whole set-up within one connect timeout and
/// before `until`; sets the response timeout for reads and writes.
fn open(
    client: &redis::Client,
    timeouts: Timeouts,
    until: Instant,
    ping: bool,
) -> RedisResult<redis::Connection> {
    let start = Instant::now();
    let end = until.min(start + timeouts.connect);
    let budget = end.saturating_duration_since(start);
    if budget.is_zero() {
        return Err(r::timed_out("no time left to connect to Redis"));
    }
    // The crate's set-up (HELLO/AUTH/SELECT) runs within the remaining budget.
    let mut con = client.get_connection_with_timeout(budget)?;
    if ping {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(r::timed_out("connecting to Redis timed out"));
        }
        con.set_read_timeout(Some(left))?;
        con.set_write_timeout(Some(left))?;
        // A command, so that wrong credentials show now (AUTH is sent only with them).
        redis::cmd("PING").query::<()>(&mut con)?;
    }
    con.set_read_timeout(Some(timeouts.response))?;
    con.set_write_timeout(Some(timeouts.response))?;
    Ok(con)
}

impl Conn {
    /// Opens the first connection at once, so that an unreachable server or wrong
    /// credentials show now.
    pub(crate) fn connect(client: redis::Client, options: &Options) -> RedisResult<Self> {
        Self::open(client, options, None, None)
    }

    /// Like [`connect`](Conn::connect), by `until` if that comes first (a Sentinel
    /// discovery's deadline).
    pub(crate) fn connect_until(
        client: redis::Client,
        options: &Options,
        until: Instant,
    ) -> RedisResult<Self> {
        Self::open(client, options, None, Some(until))
    }

    /// Like [`connect`](Conn::connect), for the subscriber of one Redis Cluster node:
    /// its channels are sharded (`SSUBSCRIBE`), and it re-checks the waited-on keys
    /// through `rechecks`, the cluster's connections.
    pub(crate) fn connect_sharded(
        client: redis::Client,
        options: &Options,
        rechecks: Weak<dyn Rechecks>,
    ) -> RedisResult<Self> {
        Self::open(client, options, Some(rechecks), None)
    }

    fn open(
        client: redis::Client,
        options: &Options,
        sharded: Option<Weak<dyn Rechecks>>,
        until: Option<Instant>,
    ) -> RedisResult<Self> {
        let resp3 = r::resp3(&client)?;
        let pool = Pool {
            client,
            timeouts: Timeouts::from(options),
            size: options.pool_size.max(1),
            state: Mutex::new(PoolState {
                generation: r::fork_generation(),
                idle: Vec::new(),
                open: 1,
            }),
            freed: Condvar::new(),
        };
        let connect_by = Instant::now() + pool.timeouts.connect;
        let first = pool.open(until.map_or(connect_by, |u| u.min(connect_by)), true)?;
        pool.state.lock().idle.push(first);
        Ok(Conn {
            pool: Arc::new(pool),
            resp3,
            listener: Mutex::new(None),
            sharded,
        })
    }

    /// Sends one command and reads its reply (within the response timeout).
    pub(crate) fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
        self.pool.query(cmd, None)
    }

    /// Like [`query`](Conn::query), but gives up at `until` if that comes first.
    pub(crate) fn query_until(&self, cmd: &Cmd, until: Instant) -> RedisResult<Value> {
        self.pool.query(cmd, Some(until))
    }

    /// Sends `cmd` and then `wait`'s `WAIT` on one connection: the command's reply (an
    /// error reply as `Err`) and `WAIT`'s.
    pub(crate) fn query_waited(&self, cmd: &Cmd, wait: &Wait) -> RedisResult<(Value, Value)> {
        let (reply, waited) = self.pool.query_waited(cmd, wait)?;
        Ok((reply.extract_error()?, waited))
    }

    /// The server is no longer the one to talk to (a Sentinel master that moved):
    /// every waiter wakes as if the subscription had dropped, and re-checks its key.
    pub(crate) fn abandon(&self) {
        if let Some(listener) = self.listener.lock().as_ref() {
            listener.hub.disconnected();
        }
    }

    /// Registers a waiter for `holder`'s release of lock `key` on channel `name` and
    /// has the subscriber thread subscribe the channel; returns once the server
    /// confirmed (or the channel was already subscribed), `None` if `until` passed
    /// first. Waits at most the response timeout for the confirmation.
    pub(crate) fn subscribe(
        &self,
        name: &[u8],
        key: &[u8],
        holder: Option<&[u8]>,
        until: Instant,
    ) -> RedisResult<Option<Subscription>> {
        let listener = self.listener();
        let failures = listener.failures.load(Ordering::SeqCst);
        let (waiter, _first) = listener.hub.join(name, key, holder);
        listener.signal.wake();
        let limit = until.min(Instant::now() + self.pool.timeouts.response);
        loop {
            let notified = waiter.listen();
            if waiter.channel().is_subscribed(waiter.epoch()) || waiter.heard().is_some() {
                return Ok(Some(Subscription { waiter }));
            }
            if listener.failures.load(Ordering::SeqCst) != failures
                && let Some(e) = listener.failure.lock().clone()
            {
                return Err(e);
            }
            if notified.wait_deadline(limit).is_none() && Instant::now() >= limit {
                return if limit >= until {
                    Ok(None)
                } else {
                    Err(r::timed_out(
                        "Redis did not confirm the subscription in time",
                    ))
                };
            }
        }
    }

    /// The subscriber thread of this process, started if there is none (or it exited,
    /// or it is the parent's, after a fork).
    fn listener(&self) -> Arc<Listener> {
        let mut slot = self.listener.lock();
        if let Some(listener) = slot.as_ref()
            && listener.running.load(Ordering::SeqCst)
            && listener.generation == r::fork_generation()
        {
            return Arc::clone(listener);
        }
        let listener = Arc::new(Listener {
            hub: Arc::new(Hub::default()),
            signal: Signal::default(),
            generation: r::fork_generation(),
            running: AtomicBool::new(true),
            failures: AtomicU64::new(0),
            failure: Mutex::new(None),
        });
        let rechecks = match &self.sharded {
            Some(cluster) => Weak::clone(cluster),
            None => Arc::downgrade(&self.pool) as Weak<dyn Rechecks>,
        };
        let thread = Thread {
            listener: Arc::clone(&listener),
            pool: Arc::downgrade(&self.pool),
            rechecks,
            client: self.resp3.clone(),
            timeouts: self.pool.timeouts,
            sharded: self.sharded.is_some(),
        };
        let spawned = std::thread::Builder::new()
            .name("aiolock-redis-subscriber".into())
            .spawn(move || thread.run());
        if spawned.is_err() {
            listener.running.store(false, Ordering::SeqCst);
        }
        *slot = Some(Arc::clone(&listener));
        listener
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.get_mut().take() {
            listener.signal.stop();
        }
    }
}

/// What the subscriber thread shares with the waiters.
struct Listener {
    hub: Arc<Hub>,
    signal: Signal,
    generation: u64,
    /// False once the thread exited.
    running: AtomicBool,
    /// Bumped on every failure to connect; the last failure.
    failures: AtomicU64,
    failure: Mutex<Option<RedisError>>,
}

/// Wakes the subscriber thread: work to do (a new waiter), or stop.
#[derive(Default)]
struct Signal {
    state: Mutex<(bool, bool)>,
    cond: Condvar,
}

impl Signal {
    fn wake(&self) {
        self.state.lock().0 = true;
        self.cond.notify_one();
    }

    fn stop(&self) {
        self.state.lock().1 = true;
        self.cond.notify_one();
    }

    fn is_stopped(&self) -> bool {
        self.state.lock().1
    }

    /// Waits for work or stop (or `until`); consumes the work flag.
    fn wait(&self, until: Option<Instant>) {
        let mut state = self.state.lock();
        while !state.0 && !state.1 {
            match until {
                Some(until) => {
                    if self.cond.wait_until(&mut state, until).timed_out() {
                        break;
                    }
                }
                None => self.cond.wait(&mut state),
            }
        }
        state.0 = false;
    }
}

/// A channel as the subscriber connection knows it.
#[derive(Default)]
struct Subscribed {
    /// SUBSCRIBEs sent and not yet confirmed.
    pending: u32,
    /// Whether a waiter wants it (else an UNSUBSCRIBE was sent).
    wanted: bool,
    /// The re-check schedule of its key.
    attempt: u32,
    next_check: Option<Instant>,
}

/// The subscriber thread.
struct Thread {
    listener: Arc<Listener>,
    /// The backend's pool: the thread exits when it is gone.
    pool: Weak<Pool>,
    rechecks: Weak<dyn Rechecks>,
    client: redis::Client,
    timeouts: Timeouts,
    sharded: bool,
}

impl Thread {
    fn run(self) {
        let mut con: Option<redis::Connection> = None;
        let mut channels: HashMap<Vec<u8>, Subscribed> = HashMap::new();
        let hub = &self.listener.hub;
        loop {
            if self.listener.signal.is_stopped()
                || self.pool.strong_count() == 0
                || self.listener.generation != r::fork_generation()
            {
                break;
            }
            let waited = hub.channels();
            if waited.is_empty() && channels.values().all(|c| !c.wanted && c.pending == 0) {
                // Nobody waits: nothing to listen for until a waiter comes.
                channels.clear();
                self.listener.signal.wait(None);
                continue;
            }
            let Some(c) = con.as_mut() else {
                match open(
                    &self.client,
                    self.timeouts,
                    Instant::now() + self.timeouts.connect,
                    false,
                ) {
                    Ok(fresh) => con = Some(fresh),
                    Err(e) => {
                        *self.listener.failure.lock() = Some(e);
                        self.listener.failures.fetch_add(1, Ordering::SeqCst);
                        hub.notify_all();
                        self.listener.signal.wait(Some(Instant::now() + RETRY));
                    }
                }
                continue;
            };
            let epoch = hub.epoch();
            let now = Instant::now();
            // Subscribe what waiters want, unsubscribe what they left.
            let (sub, unsub) = if self.sharded {
                ("SSUBSCRIBE", "SUNSUBSCRIBE")
            } else {
                ("SUBSCRIBE", "UNSUBSCRIBE")
            };
            let mut subscribe = redis::cmd(sub);
            let mut unsubscribe = redis::cmd(unsub);
            // Sharded channels of different slots cannot share one command (CROSSSLOT).
            let mut packed = Vec::new();
            let (mut subs, mut unsubs) = (0, 0);
            for channel in &waited {
                let known = channels.entry(channel.name().to_vec()).or_default();
                if !known.wanted {
                    known.wanted = true;
                    known.pending += 1;
                    known.attempt = 0;
                    known.next_check = Some(now + r::recheck_delay(0));
                    if self.sharded {
                        packed.extend(redis::cmd(sub).arg(channel.name()).get_packed_command());
                    } else {
                        subscribe.arg(channel.name());
                        subs += 1;
                    }
                } else if known.pending == 0 && !channel.is_subscribed(epoch) {
                    // A new waiter of a channel the connection is subscribed to.
                    channel.confirm(epoch);
                }
            }
            channels.retain(|name, known| {
                if known.wanted && !hub.is_waited_on(name) {
                    known.wanted = false;
                    if self.sharded {
                        packed.extend(redis::cmd(unsub).arg(name.as_slice()).get_packed_command());
                    } else {
                        unsubscribe.arg(name.as_slice());
                        unsubs += 1;
                    }
                }
                known.wanted || known.pending > 0
            });
            let mut sent = Ok(());
            if !packed.is_empty() {
                sent = c.send_packed_command(&packed);
            }
            if subs > 0 && sent.is_ok() {
                sent = c.send_packed_command(&subscribe.get_packed_command());
            }
            if unsubs > 0 && sent.is_ok() {
                sent = c.send_packed_command(&unsubscribe.get_packed_command());
            }
            if sent.is_err() {
                con = None;
                channels.clear();
                hub.disconnected();
                continue;
            }
            // Re-check the keys that are due (one GET per key, whatever the number of
            // its waiters).
            let mut next_due = now + TICK;
            for channel in &waited {
                let Some(known) = channels.get_mut(channel.name()) else {
                    continue;
                };
                let Some(due) = known.next_check else {
                    continue;
                };
                if due <= now {
                    let Some(rechecks) = self.rechecks.upgrade() else {
                        break;
                    };
                    let sent = channel.recheck_sent();
                    let mut get = redis::cmd("GET");
                    get.arg(channel.key());
                    // A failed re-check changes nothing: the waiters' own bounds stand.
                    if let Ok(Ok(value)) = rechecks.recheck(&get).map(r::bytes) {
                        channel.observed(sent, value.as_deref());
                    }
                    known.attempt += 1;
                    let next = Instant::now() + r::recheck_delay(known.attempt);
                    known.next_check = Some(next);
                    next_due = next_due.min(next);
                } else {
                    next_due = next_due.min(due);
                }
            }
            drop(waited);
            // Listen until the next re-check is due, at most a tick (a new channel
            // waits at most that long for its SUBSCRIBE).
            let left = next_due
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let read = c
                .set_read_timeout(Some(left))
                .and_then(|()| c.recv_response());
            match read {
                Ok(reply) => {
                    if let Some((name, payload)) = r::message(&reply) {
                        hub.message(name, payload);
                    } else if let Some(name) = r::subscribed(&reply)
                        && let Some(known) = channels.get_mut(name)
                    {
                        known.pending = known.pending.saturating_sub(1);
                        if known.pending == 0 && known.wanted {
                            hub.confirmed(name, epoch);
                        }
                    } else if self.sharded {
                        moved(&reply, &mut channels, hub);
                    }
                }
                // RESP3 pushes are never taken for a late reply: a read timeout leaves
                // the connection usable.
                Err(e) if e.is_timeout() => {}
                Err(_) => {
                    con = None;
                    channels.clear();
                    hub.disconnected();
                }
            }
        }
        self.listener.running.store(false, Ordering::SeqCst);
        // Waiters still registered see the subscriber gone.
        hub.disconnected();
    }
}

/// What a cluster node's subscriber learns from a reply that moves channels
/// elsewhere: an `sunsubscribe` it did not ask for (a channel still wanted and
/// confirmed: the node dropped it because its slot moved away), or `MOVED` (an
/// `SSUBSCRIBE` refused: another node serves that slot, the reply names it, and every
/// pending channel of the slot is refused). Those channels leave the node's hub, and
/// their waiters subscribe again at the slot's owner.
fn moved(reply: &Value, channels: &mut HashMap<Vec<u8>, Subscribed>, hub: &Hub) {
    if let Some(name) = r::unsubscribed(reply) {
        if channels
            .get(name)
            .is_some_and(|known| known.wanted && known.pending == 0)
        {
            channels.remove(name);
            hub.moved(name, None);
        }
    } else if let Some((slot, owner)) = cluster::moved(reply) {
        let refused: Vec<Vec<u8>> = channels
            .iter()
            .filter(|(name, known)| known.pending > 0 && cluster::slot(name) == slot)
            .map(|(name, _)| name.clone())
            .collect();
        for name in refused {
            channels.remove(&name);
            hub.moved(&name, Some(owner));
        }
    }
}

/// One waiter's registration on a channel. Dropping it unregisters; the subscriber
/// thread unsubscribes a channel nobody waits on.
pub(crate) struct Subscription {
    waiter: Waiter,
}

impl Subscription {
    /// The registration, to listen with.
    pub(crate) fn waiter(&self) -> &Waiter {
        &self.waiter
    }
}
