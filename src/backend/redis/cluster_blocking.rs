//! The blocking flavor's Redis Cluster connections, with no async runtime:
//! - a pool of at most `pool_size` idle cluster connections for commands (the `redis`
//!   crate routes each command by its key's slot and follows `MOVED` and `ASK`);
//! - the `redis` crate's sync cluster client has no pub/sub, so a waiter subscribes
//!   (`SSUBSCRIBE`) on the master that serves its channel's slot (CRC16 of the hash
//!   tag, as `CLUSTER KEYSLOT`), read from `CLUSTER SLOTS`: one subscriber connection
//!   and thread per master (the single-server subscriber of `blocking.rs` in sharded
//!   mode), shared by every waiter of the backend.
//!
//! The slot table is read again when it is older than [`TABLE_AGE`] at a wait's start:
//! a waiter that subscribed at a master its slot moved away from waits no longer
//! than its holder's lease (its `PTTL`), as every waiter.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConnection};
use redis::{Cmd, RedisError, RedisResult, Value};

use super::redis_conn;
use crate::backend::redis::cluster::{self as c, SlotTable};
use crate::backend::redis::protocol::{self as r, Timeouts};
use crate::config::Options;

/// How old the slot table may be when a wait looks up its channel's master.
const TABLE_AGE: Duration = Duration::from_millis(250);

pub(crate) use redis_conn::Subscription;

/// The backend's cluster connections.
pub(crate) struct Conn {
    client: ClusterClient,
    /// A seed's URL, the template of a master's URL (credentials, TLS).
    seed: url::Url,
    options: Options,
    timeouts: Timeouts,
    idle: Mutex<Vec<ClusterConnection>>,
    /// The slot table and when it was read.
    table: Mutex<Option<(Instant, Arc<SlotTable>)>>,
    /// Each master's subscriber, by `host:port`.
    nodes: Mutex<HashMap<String, Arc<redis_conn::Conn>>>,
}

fn timed_out(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        what.to_owned(),
    ))
}

impl Conn {
    /// Connects to the cluster at once (errors show now).
    pub(crate) fn connect(seeds: &[url::Url], options: &Options) -> RedisResult<Self> {
        let timeouts = Timeouts::from(options);
        let client = ClusterClientBuilder::new(seeds.iter().map(url::Url::as_str))
            .connection_timeout(timeouts.connect)
            .response_timeout(timeouts.response)
            .build()?;
        let conn = Conn {
            client,
            seed: seeds[0].clone(),
            options: options.clone(),
            timeouts,
            idle: Mutex::new(Vec::new()),
            table: Mutex::new(None),
            nodes: Mutex::new(HashMap::new()),
        };
        let mut first = conn.open()?;
        redis::cmd("PING").query::<()>(&mut first)?;
        conn.idle.lock().push(first);
        Ok(conn)
    }

    fn open(&self) -> RedisResult<ClusterConnection> {
        let con = self.client.get_connection()?;
        con.set_read_timeout(Some(self.timeouts.response))?;
        con.set_write_timeout(Some(self.timeouts.response))?;
        Ok(con)
    }

    /// Sends one command and reads its reply (within the response timeout).
    pub(crate) fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
        self.send(cmd, None)
    }

    /// Like [`query`](Conn::query), but gives up at `until` if that comes first.
    pub(crate) fn query_until(&self, cmd: &Cmd, until: Instant) -> RedisResult<Value> {
        self.send(cmd, Some(until))
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
                return Err(timed_out("no time left for the command"));
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
        if idle.len() < self.options.pool_size.max(1) {
            idle.push(con);
        }
    }

    /// The slot table, read again if older than [`TABLE_AGE`].
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
        if let Some(node) = self.nodes.lock().get(owner) {
            return Ok(Arc::clone(node));
        }
        let url = c::node_url(&self.seed, owner).ok_or_else(|| {
            RedisError::from((
                redis::ErrorKind::Parse,
                "unusable node address in CLUSTER SLOTS",
            ))
        })?;
        let node = Arc::new(redis_conn::Conn::connect_sharded(
            redis::Client::open(url.as_str())?,
            &self.options,
        )?);
        let mut nodes = self.nodes.lock();
        let node = nodes.entry(owner.to_owned()).or_insert(node);
        Ok(Arc::clone(node))
    }

    /// Registers a waiter for `holder`'s release of lock `key` on sharded channel
    /// `name`, subscribed at the master of its slot; returns once that master
    /// confirmed, `None` if `until` passed first.
    pub(crate) fn subscribe(
        &self,
        name: &[u8],
        key: &[u8],
        holder: Option<&[u8]>,
        until: Instant,
    ) -> RedisResult<Option<Subscription>> {
        match self.node(name, false)?.subscribe(name, key, holder, until) {
            // The master refused the channel (its slot moved: `MOVED`) and never
            // confirmed: once more at the owner a fresh slot table names.
            Err(e) if e.is_timeout() && Instant::now() < until => {
                self.node(name, true)?.subscribe(name, key, holder, until)
            }
            other => other,
        }
    }
}
