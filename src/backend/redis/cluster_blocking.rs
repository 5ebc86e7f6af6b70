//! The blocking flavor's Redis Cluster connections, with no async runtime:
//! - a pool of at most `pool_size` idle cluster connections for commands (the `redis`
//!   crate routes each command by its key's slot and follows `MOVED` and `ASK`);
//! - the `redis` crate's sync cluster client has no pub/sub, so a waiter subscribes
//!   (`SSUBSCRIBE`) on the master that serves its channel's slot (CRC16 of the hash
//!   tag, as `CLUSTER KEYSLOT`), read from `CLUSTER SLOTS`: one subscriber connection
//!   and thread per master (the single-server subscriber of `blocking.rs` in sharded
//!   mode), shared by every waiter of the backend.
//!
//! The slot table is read again when it is older than [`TABLE_AGE`] at a wait's
//! start. A master that no longer serves a channel's slot refuses its `SSUBSCRIBE`
//! (`MOVED`, naming the owner) or, when the slot moves away during the wait, drops
//! the subscription (`sunsubscribe`): the waiter then subscribes at the new owner
//! (see [`Conn::subscribe`]). The subscriber threads re-check the waited-on keys
//! through the cluster connections, which follow `MOVED` and `ASK`.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::cluster::{ClusterClient, ClusterConnection};
use redis::{Cmd, RedisError, RedisResult, Value};

use super::redis_conn;
use crate::backend::redis::cluster::{self as c, SlotTable};
use crate::backend::redis::protocol::{self as r, Timeouts};
use crate::config::Options;

/// How old the slot table may be when a wait looks up its channel's master.
const TABLE_AGE: Duration = Duration::from_millis(250);

pub(crate) use redis_conn::Subscription;

/// How many times a subscription follows its channel to another master (the one
/// a `MOVED` names, or a fresh slot table's) before the wait takes what it has: a
/// subscription that reads as lost, so that the waiter claims the key again.
const HOPS: usize = 3;

/// The backend's cluster connections.
pub(crate) struct Conn {
    /// Commands, shared with the masters' subscriber threads (their re-checks).
    commands: Arc<Commands>,
    /// A seed's URL, the template of a master's URL (credentials, TLS).
    seed: url::Url,
    options: Options,
    /// The slot table and when it was read.
    table: Mutex<Option<(Instant, Arc<SlotTable>)>>,
    /// Each master's subscriber, by `host:port`.
    nodes: Mutex<HashMap<String, Arc<redis_conn::Conn>>>,
}

/// At most `pool_size` idle cluster connections for commands.
struct Commands {
    client: ClusterClient,
    timeouts: Timeouts,
    pool_size: usize,
    idle: Mutex<Vec<ClusterConnection>>,
}

impl Conn {
    /// Connects to the cluster at once (errors show now).
    pub(crate) fn connect(seeds: &[url::Url], options: &Options) -> RedisResult<Self> {
        let timeouts = Timeouts::from(options);
        let client = c::builder(seeds)
            .connection_timeout(timeouts.connect)
            .response_timeout(timeouts.response)
            .build()?;
        let commands = Commands {
            client,
            timeouts,
            pool_size: options.pool_size.max(1),
            idle: Mutex::new(Vec::new()),
        };
        let mut first = commands.open()?;
        redis::cmd("PING").query::<()>(&mut first)?;
        commands.idle.lock().push(first);
        Ok(Conn {
            commands: Arc::new(commands),
            seed: seeds[0].clone(),
            options: options.clone(),
            table: Mutex::new(None),
            nodes: Mutex::new(HashMap::new()),
        })
    }

    /// Sends one command and reads its reply (within the response timeout).
    pub(crate) fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
        self.commands.send(cmd, None)
    }

    /// Like [`query`](Conn::query), but gives up at `until` if that comes first.
    pub(crate) fn query_until(&self, cmd: &Cmd, until: Instant) -> RedisResult<Value> {
        self.commands.send(cmd, Some(until))
    }

    /// The slot table, read again if older than [`TABLE_AGE`] or if `fresh`.
    fn table(&self, fresh: bool) -> RedisResult<Arc<SlotTable>> {
        if !fresh
            && let Some((read, table)) = self.table.lock().as_ref()
            && read.elapsed() < TABLE_AGE
        {
            return Ok(Arc::clone(table));
        }
        let reply = self.query(&redis::cmd("CLUSTER").arg("SLOTS").clone())?;
        let table = Arc::new(SlotTable::parse(&reply).ok_or_else(|| {
            RedisError::from((redis::ErrorKind::Parse, "unexpected reply to CLUSTER SLOTS"))
        })?);
        *self.table.lock() = Some((Instant::now(), Arc::clone(&table)));
        Ok(table)
    }

    /// The subscriber of the master serving `channel`'s slot.
    fn node(&self, channel: &[u8], fresh: bool) -> RedisResult<Arc<redis_conn::Conn>> {
        let table = self.table(fresh)?;
        let Some(owner) = table.owner(c::slot(channel)) else {
            return Err(RedisError::from((
                redis::ErrorKind::ClusterConnectionNotFound,
                "no master serves the lock key's slot",
            )));
        };
        self.node_at(owner)
    }

    /// The subscriber of master `owner` (`host:port`).
    fn node_at(&self, owner: &str) -> RedisResult<Arc<redis_conn::Conn>> {
        if let Some(node) = self.nodes.lock().get(owner) {
            return Ok(Arc::clone(node));
        }
        let url = c::node_url(&self.seed, owner).ok_or_else(|| {
            RedisError::from((
                redis::ErrorKind::Parse,
                "unusable node address in CLUSTER SLOTS",
            ))
        })?;
        let rechecks = Arc::downgrade(&self.commands) as Weak<dyn redis_conn::Rechecks>;
        let node = Arc::new(redis_conn::Conn::connect_sharded(
            redis::Client::open(url.as_str())?,
            &self.options,
            rechecks,
        )?);
        let mut nodes = self.nodes.lock();
        let node = nodes.entry(owner.to_owned()).or_insert(node);
        Ok(Arc::clone(node))
    }

    /// Registers a waiter for `holder`'s release of lock `key` on sharded channel
    /// `name`, subscribed at the master of its slot; returns once that master
    /// confirmed, `None` if `until` passed first.
    ///
    /// A master that refuses the channel (`MOVED`: the slot table was stale) or drops
    /// it (its slot moved away) has the waiter subscribe at the owner it names, or a
    /// fresh slot table names, up to [`HOPS`] times; a subscription that moves later,
    /// while the waiter listens, reads as lost, and the waiter's next subscription
    /// goes to the new owner.
    pub(crate) fn subscribe(
        &self,
        name: &[u8],
        key: &[u8],
        holder: Option<&[u8]>,
        until: Instant,
    ) -> RedisResult<Option<Subscription>> {
        let mut node = self.node(name, false)?;
        let mut hops = 0;
        loop {
            let subscription = match node.subscribe(name, key, holder, until) {
                // A master that never confirmed (it may no longer serve the slot):
                // once more at the owner a fresh slot table names.
                Err(e) if e.is_timeout() && Instant::now() < until && hops == 0 => {
                    hops += 1;
                    node = self.node(name, true)?;
                    continue;
                }
                other => other?,
            };
            let Some(subscription) = subscription else {
                return Ok(None);
            };
            let Some(owner) = subscription.waiter().channel().moved_to() else {
                return Ok(Some(subscription));
            };
            // The table that sent us there is stale.
            *self.table.lock() = None;
            hops += 1;
            if hops > HOPS || Instant::now() >= until {
                return Ok(Some(subscription));
            }
            node = match owner {
                Some(owner) => self.node_at(owner)?,
                None => self.node(name, true)?,
            };
        }
    }
}

impl Commands {
    fn open(&self) -> RedisResult<ClusterConnection> {
        let con = self.client.get_connection()?;
        con.set_read_timeout(Some(self.timeouts.response))?;
        con.set_write_timeout(Some(self.timeouts.response))?;
        Ok(con)
    }

    fn send(&self, cmd: &Cmd, until: Option<Instant>) -> RedisResult<Value> {
        let taken = self.idle.lock().pop();
        let mut con = match taken {
            Some(con) => con,
            None => self.open()?,
        };
        let left = until.map(|u| u.saturating_duration_since(Instant::now()));
        let shortened = left.is_some_and(|l| l < self.timeouts.response);
        if shortened {
            let left = left.unwrap_or_default();
            if left.is_zero() {
                self.put(con);
                return Err(r::timed_out("no time left for the command"));
            }
            con.set_read_timeout(Some(left))?;
        }
        let result = cmd.query::<Value>(&mut con);
        match &result {
            // A late reply would be read as the next command's: not kept.
            Err(e) if e.is_timeout() || r::is_dropped(e) => {}
            _ => {
                if !shortened || con.set_read_timeout(Some(self.timeouts.response)).is_ok() {
                    self.put(con);
                }
            }
        }
        result
    }

    fn put(&self, con: ClusterConnection) {
        let mut idle = self.idle.lock();
        if idle.len() < self.pool_size {
            idle.push(con);
        }
    }
}

impl redis_conn::Rechecks for Commands {
    fn recheck(&self, cmd: &Cmd) -> RedisResult<Value> {
        self.send(cmd, None)
    }
}
