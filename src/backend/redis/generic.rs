//! [`RedisBackend`]: the [`Backend`] on a Redis server. The commands, scripts and reply
//! rules are in `protocol.rs` (compiled once); the flavor transports beside it
//! (`blocking.rs`, `nonblocking.rs`) send them and listen on channels.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{Cmd, Value};
use url::Url;

use super::backend::Backend;
use super::redis_conn::Conn;
use super::{maybe_async, rt};
use crate::backend::redis::protocol::{self as r, Lua};
use crate::config::{self, Endpoint, Options};
use crate::core::wait::{Claim, Wake};
use crate::error::{Error, ErrorKind, Result};
use crate::value::{CasToken, Ttl, Versioned};

/// The Redis backend (`redis://`, `redis+unix://`, `rediss://` with the `redis-tls`
/// feature).
///
/// - A lock is `SET key token NX PX lease` (one round trip); the release is one Lua
///   script (`EVALSHA`) that compares the token, deletes the key and publishes on a
///   channel named after the key, so waiters in every process wake at once.
/// - A waiter subscribes to that channel *before* it reads the key's `PTTL`, so no
///   release is missed, and waits at most until the holder's lease ends (an expiring
///   lease publishes nothing).
/// - The async flavor sends commands over one multiplexed, reconnecting connection and
///   listens for all of its waiters on one shared RESP3 subscriber connection. The
///   blocking flavor keeps a small pool of connections (`pool_size`); a waiting thread
///   borrows one of them as its subscriber.
/// - An [`OptimisticLock`](super::OptimisticLock)'s token is the value it read (Redis
///   keeps no version numbers); `cas` compares it and writes in one Lua script, or is
///   `SET … NX` when the key was absent. A write of the *same bytes* in between is not
///   seen (the ABA case): harmless when the value is all that matters, as for a cache
///   entry; put a version or timestamp inside the value when it is not.
/// - Keys and values are binary-safe; keys carry the cache's namespace, and a lock's
///   channel is `aiolock:release:` + its namespaced key.
/// - A command that is safe to repeat (reads, `SET`, the owner-checked scripts) is
///   sent once more when the connection dropped under it. A repeated add is sent as
///   `SET … NX GET` and counts as won when the key holds exactly our value. A repeated
///   delete or release whose first attempt was applied reports `false`.
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
            _ => Err(Error::invalid_argument(format!(
                "{url:?} is not a Redis URL (redis://, rediss:// or redis+unix://)"
            ))),
        }
    }

    #[maybe_async]
    pub(crate) async fn connect_with(url: &Url, options: &Options) -> Result<Self> {
        let client = r::client(url)?;
        let name = r::redacted(url);
        let conn = Conn::connect(client, options)
            .await
            .map_err(|e| r::error(e, &format!("connecting to {name}")))?;
        Ok(RedisBackend {
            inner: Arc::new(Inner { conn, name }),
        })
    }

    /// Sends `cmd`; once more on a fresh connection if `retry` and the connection
    /// dropped.
    #[maybe_async]
    async fn query(&self, cmd: &Cmd, retry: bool, what: &str) -> Result<Value> {
        let conn = &self.inner.conn;
        match conn.query(cmd).await {
            Err(e) if retry && r::is_dropped(&e) => conn.query(cmd).await,
            other => other,
        }
        .map_err(|e| self.fail(e, what))
    }

    /// An aiolock error for a failed `what`, naming the server (without password).
    fn fail(&self, e: redis::RedisError, what: &str) -> Error {
        r::error(e, &format!("{what} on {}", self.inner.name))
    }

    /// Runs a script by `EVALSHA`, falling back to `EVAL` on `NOSCRIPT`.
    #[maybe_async]
    async fn eval(&self, lua: &Lua, key: &[u8], args: &[&[u8]], what: &str) -> Result<i64> {
        let conn = &self.inner.conn;
        let mut result = conn.query(&lua.evalsha(key, args)).await;
        if matches!(&result, Err(e) if r::is_dropped(e)) {
            result = conn.query(&lua.evalsha(key, args)).await;
        }
        if matches!(&result, Err(e) if r::is_noscript(e)) {
            result = conn.query(&lua.eval(key, args)).await;
        }
        let reply = result.map_err(|e| self.fail(e, what))?;
        r::int(what, &reply)
    }

    #[maybe_async]
    async fn pttl(&self, key: &[u8]) -> Result<Ttl> {
        let mut c = redis::cmd("PTTL");
        c.arg(key);
        let reply = self.query(&c, true, "PTTL").await?;
        r::ttl(r::int("PTTL", &reply)?)
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
        r::bytes(self.query(&c, true, "GET").await?)
    }

    async fn set(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let c = r::set_cmd(key, value, ttl, false, false);
        match self.query(&c, true, "SET").await? {
            Value::Okay => Ok(()),
            Value::SimpleString(s) if s == "OK" => Ok(()),
            other => Err(Error::new(
                ErrorKind::Protocol,
                format!("unexpected reply to SET from Redis: {other:?}"),
            )),
        }
    }

    async fn add(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        let conn = &self.inner.conn;
        match conn.query(&r::set_cmd(key, value, ttl, true, false)).await {
            Ok(reply) => r::stored(&reply),
            Err(e) if r::is_dropped(&e) => {
                let retry = r::set_cmd(key, value, ttl, true, true);
                let reply = conn
                    .query(&retry)
                    .await
                    .map_err(|e| self.fail(e, "SET NX GET"))?;
                r::stored_or_ours(&reply, value)
            }
            Err(e) => Err(self.fail(e, "SET NX")),
        }
    }

    async fn delete(&self, key: &[u8]) -> Result<bool> {
        let channel = r::channel(key);
        let n = self.eval(&r::DELETE, key, &[&channel], "delete").await?;
        Ok(n > 0)
    }

    async fn exists(&self, key: &[u8]) -> Result<bool> {
        let mut c = redis::cmd("EXISTS");
        c.arg(key);
        let reply = self.query(&c, true, "EXISTS").await?;
        Ok(r::int("EXISTS", &reply)? > 0)
    }

    async fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        self.pttl(key).await
    }

    async fn release(&self, key: &[u8], token: &[u8]) -> Result<bool> {
        let channel = r::channel(key);
        let n = self
            .eval(&r::RELEASE, key, &[token, &channel], "release")
            .await?;
        Ok(n == 1)
    }

    async fn claim(&self, key: &[u8], token: &[u8], lease: Duration) -> Result<Claim> {
        Ok(if Backend::add(self, key, token, Some(lease)).await? {
            Claim::Won
        } else {
            Claim::Held { holder: None }
        })
    }

    async fn wait(&self, key: &[u8], _holder: Option<&[u8]>, deadline: Instant) -> Result<Wake> {
        let channel = r::channel(key);
        // Subscribed first: a release from now on is heard.
        let mut subscription = self
            .inner
            .conn
            .subscribe(&channel)
            .await
            .map_err(|e| self.fail(e, "SUBSCRIBE"))?;
        let ttl = self.pttl(key).await?;
        match r::plan(ttl, deadline, rt::now()) {
            // Held when our add lost, gone now: released in between.
            r::Plan::Gone => Ok(Wake::Released),
            r::Plan::Listen {
                until,
                until_is_deadline,
            } => {
                let heard = subscription.listen(until).await;
                Ok(r::wake(heard, until_is_deadline))
            }
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
            CasToken::Absent => {
                let c = r::set_cmd(key, value, ttl, true, false);
                let reply = self.query(&c, false, "SET NX").await?;
                r::stored(&reply)
            }
            CasToken::Value(read) => {
                let px = ttl.map(|d| r::millis(d).to_string()).unwrap_or_default();
                let n = self
                    .eval(
                        &r::CAS,
                        key,
                        &[read, value, px.as_bytes()],
                        "compare-and-set",
                    )
                    .await?;
                Ok(n == 1)
            }
            CasToken::Version(_) => Err(Error::invalid_argument(
                "this CAS token comes from another backend (Redis compares values)",
            )),
        }
    }
}
