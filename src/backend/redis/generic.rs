//! [`RedisBackend`]: the [`Backend`] on a Redis server. The commands, scripts and reply
//! rules are in `protocol.rs` (compiled once); the flavor transports beside it
//! (`blocking.rs`, `nonblocking.rs`) send them and listen on channels.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{Cmd, RedisResult, Value};
use url::Url;

use super::backend::Backend;
use super::redis_cluster_conn;
use super::redis_conn;
use super::redis_sentinel_conn;
use super::redis_transport::{Conn, Subscription};
use super::{maybe_async, rt};
use crate::backend::redis::cluster;
use crate::backend::redis::protocol::{self as r, Lua};
use crate::backend::redis::replication::Wait;
use crate::backend::redis::sentinel::Deployment;
use crate::config::{self, Endpoint, Options, SentinelEndpoint};
use crate::core::wait::{Claim, Wake};
use crate::error::{Error, ErrorKind, Result};
use crate::value::{CasToken, Replication, Ttl, Versioned};

/// The Redis backend (`redis://`, `redis+unix://`, `rediss://` with the `redis-tls`
/// feature).
///
/// - A lock is `SET key token NX PX lease GET` (one round trip): nil means we hold it,
///   else the reply is the holder's token. The release is one Lua script (`EVALSHA`)
///   that compares the token, deletes the key and publishes the released token on a
///   channel named after the key, so waiters in every process wake at once. An
///   uncontended lock cycle is exactly these two commands.
/// - A lease renewal ([`LockGuard::extend`](super::LockGuard::extend)) is one script
///   (`EVALSHA`): `PEXPIRE` only if the key holds our token, else it reports the lock
///   lost and changes nothing.
/// - A [`fenced`](super::RedLock::fenced) claim is one script instead of the `SET`
///   (still one round trip: an uncontended fenced cycle is two `EVALSHA`s): when the
///   key is held it answers the holder's token, as the `SET` does; else it increments
///   the fence key (`lock key + "-fence"`, a decimal without TTL) and sets the lock
///   key, atomically. Lock key and fence key are both declared as script keys. A
///   fence key that holds anything but a counter fails the claim with a
///   [`Backend`](crate::ErrorKind::Backend) error before anything is written.
/// - What survives a restart: with persistence (RDB/AOF) what was saved, the fence
///   counters included. Without it every lock and counter is gone: a holder's
///   `release` and `extend` then report the lock lost, and a missing fence key is
///   created from the server's clock in microseconds (`TIME`), so the fences still
///   grow unless the server's clock went back or more fenced claims were made than
///   microseconds passed since the lost counter was created. A replica promoted after
///   a failover may lack the last increments (Redis replicates asynchronously): it
///   may repeat a fence, as it may grant a lock twice. An evicted fence key (an
///   `allkeys-*` `maxmemory-policy`) is recreated from `TIME` like a lost one.
/// - A waiter subscribes to that channel *before* it re-checks the key (value and
///   `PTTL` in one script), so no release is missed; it counts only the release of
///   the holder it lost to (a late message of an earlier holder does not wake it) and
///   waits at most until that holder's lease ends (an expiring lease publishes
///   nothing) and its own bound. While it waits, the key is re-checked every few
///   milliseconds, backing off to every 100 ms (once per key and backend, whatever
///   the number of waiters), so that a release that publishes nothing (aiocache's,
///   an operator's `DEL`, an eviction, a lost message) is noticed within 100 ms.
/// - Every waiter of a backend listens on one shared subscriber connection (RESP3).
///   The async flavor sends every task's commands pipelined over one connection
///   (reopened by the next command when it fails; a reply later than the response
///   timeout fails the commands behind it too, and the connection is reopened);
///   its subscriber restarts on the current runtime when the runtime it ran on has
///   ended. The blocking flavor keeps a pool of at most `pool_size` command
///   connections (a caller waits for a free one within the response timeout) and one
///   subscriber connection served by a thread the backend starts with its first wait
///   and stops when it is dropped.
/// - After `fork()`, a child never uses its parent's connections (it would read the
///   parent's replies): a process that is not the one that opened them opens its own.
/// - An [`OptimisticLock`](super::OptimisticLock)'s token is the value it read (Redis
///   keeps no version numbers); `cas` compares it and writes in one Lua script, or is
///   `SET … NX` when the key was absent. A write of the *same bytes* in between is not
///   seen (the ABA case): harmless when the value is all that matters, as for a cache
///   entry; put a version or timestamp inside the value when it is not.
/// - Keys and values are binary-safe; keys carry the cache's namespace, and a lock's
///   channel is `aiolock:release:` + its namespaced key.
///
/// # When a connection drops under a command
///
/// A command whose connection dropped before its reply came is sent once more, on a
/// fresh connection, only when sending it twice cannot change the answer or the data:
/// reads (`GET`, `PTTL`, `EXISTS`, the waiter's re-check), a plain `SET`, and a lock
/// claim (`SET … NX GET` with a unique token: finding our own token means the first
/// attempt took the lock; a fenced claim that finds it returns the fence key's value,
/// the first attempt's fence, since nobody else increments it while we hold the
/// lock). Other writes are read back instead of guessed:
///
/// - `add` and a `cas` of an absent key are resent as `SET … NX GET`: our value under
///   the key means it was written (`true`);
/// - a release is resent (it is owner-checked): `true` if that deleted the key; if
///   the key is no longer ours, the first attempt may have released it or the lease
///   may have ended before — a [`Connection`](crate::ErrorKind::Connection) error
///   that says the outcome is unknown, never `false`;
/// - an `extend` is resent (it is owner-checked, and renewing twice only starts the
///   lease a little later): its answer is the truth, `false` (the lock is not ours)
///   included;
/// - a `cas` of a read value is resent: `true` if it writes or if the key already
///   holds exactly the new value; otherwise a `Connection` error (outcome unknown),
///   never a [`Conflict`](crate::ErrorKind::Conflict);
/// - `delete` is not resent (a second delete could remove a newer value): a
///   `Connection` error (outcome unknown).
///
/// A [`Timeout`](crate::ErrorKind::Timeout) is never resent: the command may still be
/// applied by a stalled server.
///
/// # Redis Cluster
///
/// `redis+cluster://[user:password@]host:port,host:port[?options]` (`rediss+cluster://`
/// with TLS) names seed nodes of a cluster (Redis >= 7). The lock key stays
/// `namespace + key + lock_suffix`; its release channel and its fence key are named
/// from it so that they hash to its slot: with the key's own hash tag when it has one
/// (`{user1}:report-lock` → `aiolock:release:{user1}:report-lock`,
/// `{user1}:report-lock-fence`), else with the whole key as the tag
/// (`report-lock` → `aiolock:release:{report-lock}`, `{report-lock}-fence`; a key that
/// holds a `}` outside any tag gets a numeric tag of its slot). The release script
/// declares the channel in `KEYS` and publishes with `SPUBLISH`, so a channel of
/// another slot cannot be published to nobody: the server would refuse the call
/// (`CROSSSLOT`). The uncontended cycle is still one `SET` and one `EVALSHA`, each
/// sent to the key's master; `MOVED` and `ASK` are followed by the `redis` crate
/// (at most 3 redirections or retries a command, waits of at most 100 ms between).
/// While the key's slot migrates (`MIGRATING` / `IMPORTING`), the scripts that name
/// two keys of the slot (the release: key and channel; a fenced claim: key and fence
/// key) are refused with `TRYAGAIN` by both masters: a release is then the
/// owner-checked delete of the key alone and a `SPUBLISH` of its own, a fenced claim
/// `SET … NX GET`, the fence increment and a read that the key is still ours (three
/// round trips), so that nothing fails for the migration.
/// Waiters subscribe with `SSUBSCRIBE`: the async flavor on one shared RESP3 cluster
/// connection, the blocking flavor on one subscriber connection per master (the slot
/// table read from `CLUSTER SLOTS`, refreshed when older than 250 ms at a wait's
/// start). A waiter whose slot moves to another master while it waits (the old
/// master drops the subscription) re-checks the key and subscribes again at the new
/// owner; a release in between is seen by that re-check, and the wait still ends by
/// its holder's lease (`PTTL`) and its own bound.
/// A fork-safe reconnection is not done for the cluster's connections yet: a forked
/// child must open its own cache.
///
/// # Sentinel and replication
///
/// `redis+sentinel://[user:password@]host[:port],host[:port]…/master_name[?options]`
/// names the sentinels of a deployment (port 26379 unless given) and the name of the
/// master they monitor; the credentials before the `@` are the data nodes', the
/// sentinels' own are `sentinel_user` and `sentinel_password`, the database is `db`.
/// The backend asks the sentinels in turn for the master's address and checks with
/// `ROLE` that the node is a master: when it connects, and again when the master may
/// have moved (a dropped connection, a timeout, a `READONLY` refusal, which is sent
/// once more to the new master, or a `+switch-master` announcement, whose address is
/// tried first). While no master is found, commands fail with a one-line
/// [`Connection`](crate::ErrorKind::Connection) error that tells what each sentinel
/// said (never a password). When the master changes, the old master's waiters re-check
/// their keys on the new one; a wait still ends by its holder's lease and its bound.
///
/// `wait_replicas=N` (with `wait_timeout`, seconds, default 0.05; also on `redis://`
/// URLs) sends `WAIT N timeout` after every write that takes or renews a lock (claims
/// and `extend`; not releases, not the watchdog's renewals), on a connection of its
/// own, and the guard tells the count ([`LockGuard::replication`](super::LockGuard::replication):
/// "replicated to 1 of 1 replicas"). The time `WAIT` takes comes out of the lease,
/// which starts when the claim is sent.
///
/// What a failover can do to a held lock: replication is asynchronous. A lock key the
/// promoted replica had not received is gone after the failover: another caller takes
/// the lock while its holder still holds a guard (whose `extend` then fails with
/// [`Lost`](crate::ErrorKind::Lost) and whose `release` returns `false`), and a fence
/// counter can go back, so that a fence is handed out twice. `WAIT` narrows this, it
/// does not close it: a complete count says the replicas had the write when the call
/// returned, but the sentinels may promote a replica that did not confirm, and an old
/// master that still runs keeps taking writes from clients that have not heard of the
/// switch until the sentinels turn it into a replica (seconds later), which discards
/// them. Check [`Replication::is_complete`](crate::Replication::is_complete) when it
/// matters, and let the protected resource check fences.
///
/// Clones share the connections. Build one with [`RedisBackend::connect`] or through
/// [`Cache::from_url`](super::Cache::from_url).
///
/// ```no_run
/// # #[cfg(all(feature = "blocking", feature = "redis"))] {
/// use std::time::Duration;
/// use aiolock::blocking::{Cache, RedisBackend};
///
/// let backend = RedisBackend::connect("redis://127.0.0.1:6379/0?connect_timeout=0.5")?;
/// let cache = Cache::with_namespace(backend, "app:");
/// let guard = cache.redlock("report", Duration::from_secs(5)).acquire()?;
/// guard.release()?;
/// # }
/// # Ok::<(), aiolock::Error>(())
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    /// The URL without its password, for messages.
    name: String,
    /// The `WAIT` after a lock's write (`wait_replicas`), if any.
    wait: Option<Wait>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.inner.name)
            .finish()
    }
}

impl RedisBackend {
    /// Connects to the server a `redis://`, `redis+unix://` or `rediss://` URL names,
    /// with the URL's `connect_timeout`, `response_timeout` and `pool_size` options.
    /// A `namespace` option is ignored here (it belongs to a [`Cache`](super::Cache)).
    ///
    /// Fails with [`ErrorKind::InvalidArgument`] for a malformed URL,
    /// [`ErrorKind::Connection`] or [`ErrorKind::Timeout`] when the server cannot be
    /// reached within the connect timeout, and [`ErrorKind::Backend`] when it refuses
    /// the credentials.
    ///
    /// ```no_run
    /// # #[cfg(all(feature = "blocking", feature = "redis"))] {
    /// let backend = aiolock::blocking::RedisBackend::connect("redis+unix:///run/redis.sock")?;
    /// # let _ = backend;
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    #[maybe_async]
    pub async fn connect(url: &str) -> Result<Self> {
        let (endpoint, options) = config::parse(url)?;
        match endpoint {
            Endpoint::Redis(url) => Self::connect_with(&url, &options).await,
            Endpoint::RedisSentinel(sentinel) => Self::connect_sentinel(&sentinel, &options).await,
            _ => Err(Error::invalid_argument(format!(
                "{url:?} is not a Redis URL (redis://, rediss:// or redis+unix://)"
            ))),
        }
    }

    #[maybe_async]
    pub(crate) async fn connect_with(url: &Url, options: &Options) -> Result<Self> {
        let client = r::client(url)?;
        let name = r::redacted(url);
        let conn = redis_conn::Conn::connect(client, options)
            .await
            .map_err(|e| r::error(e, &format!("connecting to {name}")))?;
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                conn: Conn::Single(conn),
                name,
                wait: Wait::of(options),
            }),
        })
    }

    /// Connects to the master the sentinels of `sentinel` name, as a
    /// `redis+sentinel://` URL names them. See
    /// [Sentinel and replication](RedisBackend#sentinel-and-replication).
    #[maybe_async]
    pub(crate) async fn connect_sentinel(
        sentinel: &SentinelEndpoint,
        options: &Options,
    ) -> Result<Self> {
        let deployment = Deployment::new(sentinel)?;
        let name = deployment.shown().to_owned();
        let conn = redis_sentinel_conn::Conn::connect(deployment, options)
            .await
            .map_err(|e| r::error(e, &format!("connecting to {name}")))?;
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                conn: Conn::Sentinel(Box::new(conn)),
                name,
                wait: Wait::of(options),
            }),
        })
    }

    /// Connects to the Redis Cluster that `seeds` belong to (any one reachable seed
    /// is enough), as a `redis+cluster://` URL names it. See
    /// [Redis Cluster](RedisBackend#redis-cluster).
    #[maybe_async]
    pub(crate) async fn connect_cluster(seeds: &[Url], options: &Options) -> Result<Self> {
        let shown: Vec<String> = seeds.iter().map(r::redacted).collect();
        let name = format!("the Redis Cluster of {}", shown.join(", "));
        let conn = redis_cluster_conn::Conn::connect(seeds, options)
            .await
            .map_err(|e| r::error(e, &format!("connecting to {name}")))?;
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                conn: Conn::Cluster(Box::new(conn)),
                name,
                wait: None,
            }),
        })
    }

    /// The channel a lock key's release is announced on: on a cluster, a sharded
    /// channel in the key's slot.
    fn channel(&self, key: &[u8]) -> Vec<u8> {
        if self.inner.conn.is_cluster() {
            cluster::channel(key)
        } else {
            r::channel(key)
        }
    }

    /// Runs the release (or delete, `token` `None`) script: on one server the channel
    /// is an argument and the script `PUBLISH`es; on a cluster it is the second key
    /// (in the lock key's slot) and the script `SPUBLISH`es.
    #[maybe_async]
    async fn announce(&self, key: &[u8], token: Option<&[u8]>, what: &str) -> Result<Option<i64>> {
        let channel = self.channel(key);
        if !self.inner.conn.is_cluster() {
            let (lua, args): (&Lua, &[&[u8]]) = match token {
                Some(t) => (&r::RELEASE, &[t, &channel]),
                None => (&r::DELETE, &[&channel]),
            };
            return self.script_int_keys(lua, &[key], args, what).await;
        }
        let (lua, args): (&Lua, &[&[u8]]) = match token {
            Some(t) => (&r::RELEASE_SHARDED, &[t]),
            None => (&r::DELETE_SHARDED, &[]),
        };
        match self.script(lua, &[key, &channel], args, None).await {
            Err(e) if r::is_migrating(&e) => {
                rt::boxed(self.announce_migrating(key, &channel, token, what)).await
            }
            result => self.int_reply(result, what),
        }
    }

    /// [`announce`](Self::announce) on a cluster whose key's slot migrates (the
    /// script that names the key and its channel is refused with `TRYAGAIN`): the key
    /// alone (an owner-checked delete, or `DEL`), whose `ASK` the `redis` crate
    /// follows, then the announcement from here (`SPUBLISH`, which goes by the
    /// channel to its slot's master, where the waiters subscribe). A lost
    /// announcement leaves the waiters to their re-checks of the key (within 100 ms).
    #[maybe_async]
    async fn announce_migrating(
        &self,
        key: &[u8],
        channel: &[u8],
        token: Option<&[u8]>,
        what: &str,
    ) -> Result<Option<i64>> {
        let done = match token {
            Some(t) => {
                self.script_int(&r::RELEASE_UNANNOUNCED, key, &[t], what)
                    .await?
            }
            None => {
                let mut del = redis::cmd("DEL");
                del.arg(key);
                let result = self.send(&del, None).await;
                self.int_reply(result, what)?
            }
        };
        if done.is_some_and(|n| n > 0) {
            let mut publish = redis::cmd("SPUBLISH");
            publish.arg(channel).arg(token.unwrap_or_default());
            let _ = self.send(&publish, None).await;
        }
        Ok(done)
    }

    /// Sends `cmd`, safe to repeat: once more on a fresh connection if the connection
    /// dropped.
    #[maybe_async]
    async fn query(&self, cmd: &Cmd, what: &str) -> Result<Value> {
        match self.send(cmd, None).await {
            Err(e) if r::is_dropped(&e) => self.send(cmd, None).await,
            other => other,
        }
        .map_err(|e| self.fail(e, what))
    }

    /// Sends `cmd` once, under the response timeout or, if sooner, `until`.
    #[maybe_async]
    async fn send(&self, cmd: &Cmd, until: Option<Instant>) -> RedisResult<Value> {
        let conn = &self.inner.conn;
        match until {
            Some(until) => conn.query_until(cmd, until).await,
            None => conn.query(cmd).await,
        }
    }

    /// An aiolock error for a failed `what`, naming the server (without password).
    fn fail(&self, e: redis::RedisError, what: &str) -> Error {
        r::error(e, &format!("{what} on {}", self.inner.name))
    }

    /// Runs a script once by `EVALSHA`, falling back to `EVAL` on `NOSCRIPT` (the
    /// script did not run).
    #[maybe_async]
    async fn script(
        &self,
        lua: &Lua,
        keys: &[&[u8]],
        args: &[&[u8]],
        until: Option<Instant>,
    ) -> RedisResult<Value> {
        let mut result = self.send(&lua.evalsha(keys, args), until).await;
        if matches!(&result, Err(e) if r::is_noscript(e)) {
            result = self.send(&lua.eval(keys, args), until).await;
        }
        result
    }

    /// Runs a script that is safe to repeat, once more if the connection dropped.
    #[maybe_async]
    async fn script_resent(
        &self,
        lua: &Lua,
        keys: &[&[u8]],
        args: &[&[u8]],
        until: Option<Instant>,
    ) -> RedisResult<Value> {
        match self.script(lua, keys, args, until).await {
            Err(e) if r::is_dropped(&e) => self.script(lua, keys, args, until).await,
            other => other,
        }
    }

    /// Runs a script whose integer reply tells what it did; `Ok(None)` when the
    /// connection dropped before the reply (it may or may not have run).
    #[maybe_async]
    async fn script_int(
        &self,
        lua: &Lua,
        key: &[u8],
        args: &[&[u8]],
        what: &str,
    ) -> Result<Option<i64>> {
        self.script_int_keys(lua, &[key], args, what).await
    }

    /// [`script_int`](Self::script_int) with several keys.
    #[maybe_async]
    async fn script_int_keys(
        &self,
        lua: &Lua,
        keys: &[&[u8]],
        args: &[&[u8]],
        what: &str,
    ) -> Result<Option<i64>> {
        let result = self.script(lua, keys, args, None).await;
        self.int_reply(result, what)
    }

    /// The integer reply of `what`; `Ok(None)` when the connection dropped before the
    /// reply (it may or may not have run).
    fn int_reply(&self, result: RedisResult<Value>, what: &str) -> Result<Option<i64>> {
        match result {
            Ok(reply) => r::int(what, &reply).map(Some),
            Err(e) if r::is_dropped(&e) => Ok(None),
            Err(e) => Err(self.fail(e, what)),
        }
    }

    /// A write whose reply was lost and whose effect cannot be read back for sure.
    fn unknown(&self, what: &str) -> Error {
        r::outcome_unknown(what, &self.inner.name)
    }

    /// `SET … NX` (with `GET` on the resend): whether `value` is stored now. A resend
    /// whose key holds another value cannot tell whether the first attempt wrote.
    #[maybe_async]
    async fn set_nx(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        what: &str,
    ) -> Result<bool> {
        match self
            .send(&r::set_cmd(key, value, ttl, true, false), None)
            .await
        {
            Ok(reply) => r::stored(&reply),
            Err(e) if r::is_dropped(&e) => {
                let resend = r::set_cmd(key, value, ttl, true, true);
                let reply = self
                    .send(&resend, None)
                    .await
                    .map_err(|e| self.fail(e, "SET NX GET"))?;
                if r::nx_get(reply)?.is_ours(value) {
                    Ok(true)
                } else {
                    Err(self.unknown(what))
                }
            }
            Err(e) => Err(self.fail(e, what)),
        }
    }

    /// The waiter's re-check of a lock key (value and `PTTL` in one round trip), under
    /// the response timeout and `deadline`; `None` when the deadline passed first.
    #[maybe_async]
    async fn probe(&self, key: &[u8], deadline: Instant) -> Result<Option<r::Probe>> {
        let result = self
            .script_resent(&r::PROBE, &[key], &[], Some(deadline))
            .await;
        match result {
            Ok(reply) => r::probe(reply).map(Some),
            Err(e) if e.is_timeout() && rt::now() >= deadline => Ok(None),
            Err(e) => Err(self.fail(e, "re-check")),
        }
    }
}

impl RedisBackend {
    /// The error of a fenced claim whose fence key holds no counter.
    fn not_a_fence(&self, fence_key: &[u8]) -> Error {
        Error::new(
            ErrorKind::Backend,
            format!(
                "the fence key {:?} on {} does not hold a fencing token (a decimal number): \
                 the lock was not taken",
                String::from_utf8_lossy(fence_key),
                self.inner.name
            ),
        )
    }

    /// A fenced claim on a cluster whose key's slot migrates (the script that names
    /// the lock key and the fence key is refused with `TRYAGAIN`), in three steps on
    /// one key each, whose `ASK` the `redis` crate follows: `SET … NX GET`; if won,
    /// the fence ([`FENCE`](r::FENCE)); then a read that the lock key still holds our
    /// token. The fence is ours only if it does: a later holder claims only after
    /// that read saw our key, so after our increment, and gets a larger fence. A
    /// lease that ended in between (shorter than these round trips) is claimed again,
    /// at most three times; a fence key that holds no counter releases the lock
    /// again and fails.
    #[maybe_async]
    async fn claim_fenced_migrating(
        &self,
        key: &[u8],
        token: &[u8],
        lease: Duration,
        fence_key: &[u8],
    ) -> Result<(Claim, Option<u64>)> {
        for _ in 0..3 {
            if let claim @ Claim::Held { .. } = Backend::claim(self, key, token, lease).await? {
                return Ok((claim, None));
            }
            let fence = match self.script(&r::FENCE, &[fence_key], &[], None).await {
                Ok(reply) => r::fence(&reply),
                Err(e) if e.code() == Some(r::FENCE_ERROR) => Err(self.not_a_fence(fence_key)),
                Err(e) => Err(self.fail(e, "fence")),
            };
            let fence = match fence {
                Ok(fence) => fence,
                Err(e) => {
                    let _ = Backend::release(self, key, token).await;
                    return Err(e);
                }
            };
            match Backend::get(self, key).await? {
                Some(held) if held == token => return Ok((Claim::Won, Some(fence))),
                Some(holder) => {
                    return Ok((
                        Claim::Held {
                            holder: Some(holder),
                        },
                        None,
                    ));
                }
                None => {}
            }
        }
        Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "the lease ended three times before a fenced claim on {} (its slot \
                 migrating) read its fence",
                self.inner.name
            ),
        ))
    }
}

/// Lock writes followed by `WAIT` (the `wait_replicas` option).
impl RedisBackend {
    /// Sends `cmd`, then `wait`'s `WAIT` on the same connection: the reply and the
    /// replication `WAIT` counted.
    #[maybe_async]
    async fn send_waited(&self, cmd: &Cmd, wait: &Wait) -> RedisResult<(Value, Replication)> {
        let (reply, waited) = self.inner.conn.query_waited(cmd, wait).await?;
        Ok((reply, wait.replication(&waited)))
    }

    /// [`send_waited`](Self::send_waited), once more if the connection dropped (for
    /// commands safe to repeat).
    #[maybe_async]
    async fn send_waited_resent(
        &self,
        cmd: &Cmd,
        wait: &Wait,
    ) -> RedisResult<(Value, Replication)> {
        match self.send_waited(cmd, wait).await {
            Err(e) if r::is_dropped(&e) => self.send_waited(cmd, wait).await,
            other => other,
        }
    }

    /// A script by `EVAL`, followed by `WAIT`. Not `EVALSHA`: the `WAIT` goes in the
    /// same pipeline, so a `NOSCRIPT` (a master restarted or newly promoted) would cost
    /// a `WAIT` for nothing, the whole `wait_timeout` when a replica does not answer,
    /// before the `EVAL` and its own `WAIT`. The script's text is a few hundred bytes
    /// more on an operation that waits for replicas anyway.
    #[maybe_async]
    async fn script_waited(
        &self,
        lua: &Lua,
        keys: &[&[u8]],
        args: &[&[u8]],
        wait: &Wait,
    ) -> RedisResult<(Value, Replication)> {
        self.send_waited(&lua.eval(keys, args), wait).await
    }

    /// A claim (fenced with `fence_key`) followed by `WAIT`; the replication only when
    /// it won. Resent once on a dropped connection, as [`claim`](Backend::claim) and
    /// [`claim_fenced`](Backend::claim_fenced) are.
    #[maybe_async]
    async fn claim_waited(
        &self,
        key: &[u8],
        token: &[u8],
        lease: Duration,
        fence_key: Option<&[u8]>,
        wait: &Wait,
    ) -> Result<(Claim, Option<u64>, Option<Replication>)> {
        let (claim, fence, replication) = match fence_key {
            None => {
                let c = r::set_cmd(key, token, Some(lease), true, true);
                let (reply, replication) = self
                    .send_waited_resent(&c, wait)
                    .await
                    .map_err(|e| self.fail(e, "SET NX GET"))?;
                (r::claim(reply, token)?, None, replication)
            }
            Some(fence_key) => {
                let px = r::millis(lease).to_string();
                let (keys, args): ([&[u8]; 2], [&[u8]; 2]) =
                    ([key, fence_key], [token, px.as_bytes()]);
                let mut result = self
                    .script_waited(&r::CLAIM_FENCED, &keys, &args, wait)
                    .await;
                if matches!(&result, Err(e) if r::is_dropped(e)) {
                    result = self
                        .script_waited(&r::CLAIM_FENCED, &keys, &args, wait)
                        .await;
                }
                let (reply, replication) = result.map_err(|e| self.fenced_failed(e, fence_key))?;
                let (claim, fence) = r::claim_fenced(reply)?;
                (claim, fence, replication)
            }
        };
        let replication = matches!(claim, Claim::Won).then_some(replication);
        Ok((claim, fence, replication))
    }

    /// An `extend` followed by `WAIT`; the replication only when it renewed. Resent
    /// once on a dropped connection, as [`extend`](Backend::extend) is.
    #[maybe_async]
    async fn extend_waited(
        &self,
        key: &[u8],
        token: &[u8],
        lease: Duration,
        wait: &Wait,
    ) -> Result<(bool, Option<Replication>)> {
        let px = r::millis(lease).to_string();
        let args: [&[u8]; 2] = [token, px.as_bytes()];
        let what = "extend";
        let (reply, replication) = match self.script_waited(&r::EXTEND, &[key], &args, wait).await {
            Err(e) if r::is_dropped(&e) => {
                match self.script_waited(&r::EXTEND, &[key], &args, wait).await {
                    Err(e) if r::is_dropped(&e) => return Err(self.unknown(what)),
                    other => other.map_err(|e| self.fail(e, what))?,
                }
            }
            other => other.map_err(|e| self.fail(e, what))?,
        };
        let renewed = r::int(what, &reply)? == 1;
        Ok((renewed, renewed.then_some(replication)))
    }

    /// The error of a fenced claim that failed with `e`.
    fn fenced_failed(&self, e: redis::RedisError, fence_key: &[u8]) -> Error {
        if e.code() == Some(r::FENCE_ERROR) {
            return self.not_a_fence(fence_key);
        }
        self.fail(e, "fenced claim")
    }
}

/// A wait's subscription and the plan of its listening: until when, and whether
/// that is the caller's deadline.
type Listen = (Subscription, Instant, bool);

impl RedisBackend {
    /// The first steps of [`Backend::wait`]: subscribes the key's channel, *then*
    /// re-checks the key (so that no release in between is missed). `Err(wake)` when
    /// the wait is over already.
    #[maybe_async]
    async fn prepare_wait(
        &self,
        key: &[u8],
        holder: Option<&[u8]>,
        deadline: Instant,
    ) -> Result<std::result::Result<Listen, Wake>> {
        let channel = self.channel(key);
        // Each step runs under the caller's deadline as well as the response timeout.
        let subscription = self
            .inner
            .conn
            .subscribe(&channel, key, holder, deadline)
            .await
            .map_err(|e| self.fail(e, "SUBSCRIBE"))?;
        let Some(subscription) = subscription else {
            return Ok(Err(Wake::Deadline));
        };
        let Some(probe) = self.probe(key, deadline).await? else {
            return Ok(Err(Wake::Deadline));
        };
        Ok(match r::plan(&probe, holder, deadline, rt::now()) {
            // Held by `holder` when our claim lost, not now: released in between.
            r::Plan::Gone => Err(Wake::Released),
            r::Plan::Listen {
                until,
                until_is_deadline,
            } => Ok((subscription, until, until_is_deadline)),
        })
    }
}

#[maybe_async(AFIT)]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut c = redis::cmd("GET");
        c.arg(key);
        r::bytes(self.query(&c, "GET").await?)
    }

    async fn set(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let c = r::set_cmd(key, value, ttl, false, false);
        match self.query(&c, "SET").await? {
            Value::Okay => Ok(()),
            Value::SimpleString(s) if s == "OK" => Ok(()),
            other => Err(Error::new(
                ErrorKind::Protocol,
                format!("unexpected reply to SET from Redis: {other:?}"),
            )),
        }
    }

    async fn add(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        self.set_nx(key, value, ttl, "SET NX").await
    }

    async fn delete(&self, key: &[u8]) -> Result<bool> {
        match self.announce(key, None, "delete").await? {
            Some(n) => Ok(n > 0),
            // Not resent: a second delete could remove a newer value.
            None => Err(self.unknown("delete")),
        }
    }

    async fn exists(&self, key: &[u8]) -> Result<bool> {
        let mut c = redis::cmd("EXISTS");
        c.arg(key);
        let reply = self.query(&c, "EXISTS").await?;
        Ok(r::int("EXISTS", &reply)? > 0)
    }

    async fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        let mut c = redis::cmd("PTTL");
        c.arg(key);
        let reply = self.query(&c, "PTTL").await?;
        r::ttl(r::int("PTTL", &reply)?)
    }

    async fn release(&self, key: &[u8], token: &[u8]) -> Result<bool> {
        if let Some(n) = self.announce(key, Some(token), "release").await? {
            return Ok(n == 1);
        }
        // Owner-checked, so safe to resend; but "not ours" now may mean that the lost
        // first attempt released it.
        match self.announce(key, Some(token), "release").await? {
            Some(1) => Ok(true),
            _ => Err(self.unknown("release")),
        }
    }

    async fn extend(&self, key: &[u8], token: &[u8], lease: Duration) -> Result<bool> {
        if let Some(wait) = &self.inner.wait {
            let extended = rt::boxed(self.extend_waited(key, token, lease, wait)).await;
            return extended.map(|(renewed, _)| renewed);
        }
        let px = r::millis(lease).to_string();
        let args: [&[u8]; 2] = [token, px.as_bytes()];
        let what = "extend";
        let renewed = match self.script_int(&r::EXTEND, key, &args, what).await? {
            Some(n) => n,
            // Owner-checked, and a second renewal only moves the lease end a little
            // later: resent. Not ours now means not ours, whatever the first did.
            None => self
                .script_int(&r::EXTEND, key, &args, what)
                .await?
                .ok_or_else(|| self.unknown(what))?,
        };
        Ok(renewed == 1)
    }

    async fn claim(&self, key: &[u8], token: &[u8], lease: Duration) -> Result<Claim> {
        if let Some(wait) = &self.inner.wait {
            let claimed = rt::boxed(self.claim_waited(key, token, lease, None, wait)).await;
            return claimed.map(|(claim, _, _)| claim);
        }
        // Unique token: a resend that finds it won the first time.
        let c = r::set_cmd(key, token, Some(lease), true, true);
        r::claim(self.query(&c, "SET NX GET").await?, token)
    }

    async fn claim_fenced(
        &self,
        key: &[u8],
        token: &[u8],
        lease: Duration,
        fence_key: &[u8],
    ) -> Result<(Claim, Option<u64>)> {
        if let Some(wait) = &self.inner.wait {
            let claimed = self.claim_waited(key, token, lease, Some(fence_key), wait);
            return rt::boxed(claimed)
                .await
                .map(|(claim, fence, _)| (claim, fence));
        }
        let px = r::millis(lease).to_string();
        // On a cluster the fence key must share the lock key's slot.
        let sharded;
        let fence_key = if self.inner.conn.is_cluster() {
            sharded = cluster::fence_key(key);
            &sharded[..]
        } else {
            fence_key
        };
        let (keys, args): ([&[u8]; 2], [&[u8]; 2]) = ([key, fence_key], [token, px.as_bytes()]);
        // Unique token: a resend that finds it won the first time, and reads the fence
        // that attempt took (nobody else increments it while we hold the lock).
        match self
            .script_resent(&r::CLAIM_FENCED, &keys, &args, None)
            .await
        {
            Ok(reply) => r::claim_fenced(reply),
            Err(e) if e.code() == Some(r::FENCE_ERROR) => Err(self.not_a_fence(fence_key)),
            Err(e) if self.inner.conn.is_cluster() && r::is_migrating(&e) => {
                rt::boxed(self.claim_fenced_migrating(key, token, lease, fence_key)).await
            }
            Err(e) => Err(self.fail(e, "fenced claim")),
        }
    }

    async fn claim_replicated(
        &self,
        key: &[u8],
        token: &[u8],
        lease: Duration,
        fence_key: Option<&[u8]>,
    ) -> Result<(Claim, Option<u64>, Option<Replication>)> {
        match (&self.inner.wait, fence_key) {
            (Some(wait), _) => {
                rt::boxed(self.claim_waited(key, token, lease, fence_key, wait)).await
            }
            (None, Some(fence_key)) => {
                let (claim, fence) =
                    Backend::claim_fenced(self, key, token, lease, fence_key).await?;
                Ok((claim, fence, None))
            }
            (None, None) => Ok((Backend::claim(self, key, token, lease).await?, None, None)),
        }
    }

    async fn extend_replicated(
        &self,
        key: &[u8],
        token: &[u8],
        lease: Duration,
    ) -> Result<(bool, Option<Replication>)> {
        match &self.inner.wait {
            Some(wait) => rt::boxed(self.extend_waited(key, token, lease, wait)).await,
            None => Ok((Backend::extend(self, key, token, lease).await?, None)),
        }
    }

    fn wait(
        &self,
        key: &[u8],
        holder: Option<&[u8]>,
        deadline: Instant,
    ) -> impl Future<Output = Result<Wake>> + Send {
        // Subscribed and re-checked first, in a boxed future: the two round trips'
        // state is freed before listening, and the wait's future (in every waiting
        // task, for up to a lease) keeps only what listening needs (not even the
        // arguments: a block, not an `async fn`, which would store them twice).
        let prepare = rt::boxed(self.prepare_wait(key, holder, deadline));
        async move {
            let (subscription, until, until_is_deadline) = match prepare.await? {
                Ok(listen) => listen,
                Err(wake) => return Ok(wake),
            };
            let waiter = subscription.waiter();
            let heard = loop {
                // A look first: woken by a release, the waiter ends here without
                // listening again (an allocation and a lock of the channel's event).
                if let Some(heard) = waiter.heard() {
                    break heard;
                }
                // Listening before the next look: a notification after it is not missed.
                let listener = waiter.listen();
                if let Some(heard) = waiter.heard() {
                    break heard;
                }
                if !rt::wait_listener(listener, until).await {
                    break r::Heard::Silence;
                }
            };
            Ok(r::wake(heard, until, until_is_deadline, rt::now()))
        }
    }

    async fn begin(&self, key: &[u8]) -> Result<Versioned> {
        let value = Backend::get(self, key).await?;
        let token = match &value {
            Some(v) => CasToken::Value(v.clone()),
            None => CasToken::Absent,
        };
        Ok(Versioned { value, token })
    }

    /// Redis has no version numbers: the token is the value read, compared in Lua. A
    /// write of the same bytes between `begin` and `cas` is not seen (the ABA case);
    /// harmless when the value is all that matters, as for a cache entry.
    async fn cas(
        &self,
        key: &[u8],
        token: &CasToken,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        match token {
            CasToken::Absent => self.set_nx(key, value, ttl, "compare-and-set").await,
            CasToken::Value(read) => {
                let px = ttl.map(|d| r::millis(d).to_string()).unwrap_or_default();
                let args: [&[u8]; 3] = [read, value, px.as_bytes()];
                let what = "compare-and-set";
                if let Some(n) = self.script_int(&r::CAS, key, &args, what).await? {
                    return Ok(n == 1);
                }
                // The first attempt may have written: resend (it compares), and if it
                // finds a change, see whether the change is ours.
                match self.script_int(&r::CAS, key, &args, what).await? {
                    Some(1) => return Ok(true),
                    Some(_) => {}
                    None => return Err(self.unknown(what)),
                }
                if Backend::get(self, key).await?.as_deref() == Some(value) {
                    Ok(true)
                } else {
                    Err(self.unknown(what))
                }
            }
            CasToken::Version(_) => Err(Error::invalid_argument(
                "this CAS token comes from another backend (Redis compares values)",
            )),
        }
    }
}
