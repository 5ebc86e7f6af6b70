//! [`MemcachedBackend`]: the meta-protocol backend, written once for both flavors.
//! Only the socket differs per flavor (`blocking.rs` / `nonblocking.rs` here); the codec is in
//! `meta.rs`, the polling rules in `core::poll`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use event_listener::{Event, IntoNotification};
use parking_lot::Mutex;
use url::Url;

use super::backend::Backend;
use super::memcached_io::{self as io, Conn};
use super::{maybe_async, rt};
use crate::backend::memcached::meta::{self, ErrorLine, Flag, Reply};
use crate::backend::memcached::settings::{
    Settings, cas_disabled, settings, settings_from_url, unexpected,
};
use crate::config::Options;
use crate::core::lease::deadline;
use crate::core::poll::{Seen, Watch};
use crate::core::wait::{Claim, Wake};
use crate::error::{Error, ErrorKind, Result};
use crate::value::{CasToken, Ttl, Versioned};

/// How many times a release reads the lock again when its CAS went stale between
/// the read and the delete (someone touched or rewrote the key meanwhile).
const RELEASE_TRIES: usize = 8;

/// A memcached server (>= 1.6.10) over the meta protocol: `memcached://host[:port]`
/// (port 11211 by default) or `memcached+unix:///path/to/socket`.
///
/// - Locks: `ms <key> <len> ME T<ttl>` adds the lock; a release reads the token and
///   its CAS unique (`mg v c`) and deletes only that version (`md C<cas>`), so it never
///   removes another holder's lock, even across a server restart.
/// - Waiters poll the lock key (memcached has no notifications) with a capped,
///   jittered exponential backoff starting at 0.1–0.2 ms, up to 4 ms by default
///   (URL option `max_poll_interval`, in seconds), and never sleep past their deadline.
/// - TTLs count whole seconds: a TTL or lease `d` is sent as `ceil(d) + 1` seconds,
///   so a key never expires early, and lives at most two seconds longer.
/// - [`OptimisticLock`](super::OptimisticLock) compares the real CAS unique.
/// - A server run with CAS disabled (`-C`) is refused with
///   [`ErrorKind::Backend`] at the first release or optimistic lock.
///
/// Connections: a pool of at most `pool_size` (URL option, default 8); callers beyond
/// that wait for a free one within the response timeout. A request that fails, times
/// out or is cancelled (async: its future dropped) discards its connection, so no
/// later request reads its reply.
///
/// Clones share the pool. Usually reached through [`Cache::from_url`](super::Cache::from_url):
///
/// ```no_run
/// # #[cfg(feature = "blocking")] {
/// use std::time::Duration;
/// use aiolock::blocking::Cache;
///
/// let cache = Cache::from_url("memcached://127.0.0.1:11211?namespace=app:")?;
/// let guard = cache.redlock("report", Duration::from_secs(5)).acquire()?;
/// guard.release()?;
/// # }
/// # Ok::<(), aiolock::Error>(())
/// ```
#[derive(Clone)]
pub struct MemcachedBackend {
    pool: Arc<Pool>,
}

impl std::fmt::Debug for MemcachedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemcachedBackend")
            .field("addr", &self.pool.settings.addr.to_string())
            .field("pool_size", &self.pool.settings.pool_size)
            .finish()
    }
}

impl MemcachedBackend {
    /// Connects to the server a `memcached://` or `memcached+unix://` URL names, with
    /// the URL's options (`connect_timeout`, `response_timeout`, `pool_size`,
    /// `max_poll_interval`). One connection is opened at once, so an unreachable
    /// server is reported here. A `namespace` option is ignored: namespaces belong to
    /// the [`Cache`](super::Cache).
    ///
    /// ```no_run
    /// # #[cfg(feature = "blocking")] {
    /// use aiolock::blocking::{Cache, MemcachedBackend};
    ///
    /// let backend = MemcachedBackend::connect("memcached+unix:///run/memcached.sock?pool_size=4")?;
    /// let cache = Cache::with_namespace(backend, "app:");
    /// cache.set("k", b"v", None)?;
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    #[maybe_async]
    pub async fn connect(url: &str) -> Result<Self> {
        Self::open(settings_from_url(url)?).await
    }

    #[maybe_async]
    pub(crate) async fn from_endpoint(url: &Url, options: &Options) -> Result<Self> {
        Self::open(settings(url, options)?).await
    }

    #[maybe_async]
    async fn open(settings: Settings) -> Result<Self> {
        let backend = MemcachedBackend {
            pool: Arc::new(Pool {
                settings,
                state: Mutex::new(PoolState::default()),
                freed: Event::new(),
            }),
        };
        backend.ping().await?;
        Ok(backend)
    }

    /// One round trip that touches no key (`mn`, answered `MN`): a health check, and
    /// the unit of the benchmarks' round-trip ceiling.
    ///
    /// ```no_run
    /// # #[cfg(feature = "blocking")] {
    /// let backend = aiolock::blocking::MemcachedBackend::connect("memcached://127.0.0.1")?;
    /// backend.ping()?;
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    #[maybe_async]
    pub async fn ping(&self) -> Result<()> {
        match self.pool.call(&meta::noop()).await? {
            Reply::Mn => Ok(()),
            other => Err(unexpected("mn", &other)),
        }
    }

    /// The CAS unique of a hit, refusing a server that runs with CAS disabled.
    fn cas_of(key: &[u8], flags: &meta::ReplyFlags) -> Result<u64> {
        match flags.cas {
            Some(0) => Err(cas_disabled(key)),
            Some(cas) => Ok(cas),
            None => Err(Error::new(
                ErrorKind::Protocol,
                "memcached sent no CAS unique (c flag) for mg c",
            )),
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn exptime(ttl: Option<Duration>) -> Flag {
    Flag::SetExptime(meta::exptime(ttl, now_unix()))
}

/// The connections: at most `pool_size` open, the idle ones kept for reuse.
struct Pool {
    settings: Settings,
    state: Mutex<PoolState>,
    /// Notified when a connection is returned or closed.
    freed: Event,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Conn>,
    /// Connections open or being opened, idle or in use.
    open: usize,
}

/// The right to one of the pool's `pool_size` connections. Dropped without
/// [`give_back`](Permit::give_back) (an error, a timeout, a cancelled future), it
/// frees the place and the connection is closed.
struct Permit<'a> {
    pool: &'a Pool,
    returned: bool,
}

impl Permit<'_> {
    fn give_back(mut self, conn: Conn) {
        self.pool.state.lock().idle.push(conn);
        self.returned = true;
        self.pool.freed.notify(1.additional());
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.returned {
            self.pool.state.lock().open -= 1;
            self.pool.freed.notify(1.additional());
        }
    }
}

impl Pool {
    /// A connection and the permit that owns its place: an idle one (`true`), or a
    /// new one when fewer than `pool_size` are open; else waits for one until
    /// `deadline`.
    #[maybe_async]
    async fn checkout(&self, deadline: Instant) -> Result<(Permit<'_>, Conn, bool)> {
        loop {
            let listener = {
                let mut state = self.state.lock();
                if let Some(conn) = state.idle.pop() {
                    let permit = Permit {
                        pool: self,
                        returned: false,
                    };
                    return Ok((permit, conn, true));
                }
                if state.open < self.settings.pool_size {
                    state.open += 1;
                    None
                } else {
                    Some(self.freed.listen())
                }
            };
            match listener {
                None => {
                    let permit = Permit {
                        pool: self,
                        returned: false,
                    };
                    let s = &self.settings;
                    let conn = io::connect(&s.addr, s.connect_timeout, s.response_timeout).await?;
                    return Ok((permit, conn, false));
                }
                Some(listener) => {
                    if !rt::wait_listener(listener, deadline).await {
                        return Err(Error::new(
                            ErrorKind::Timeout,
                            format!(
                                "memcached at {}: all {} connections stayed busy for {:?} \
                                 (raise pool_size?)",
                                self.settings.addr,
                                self.settings.pool_size,
                                self.settings.response_timeout
                            ),
                        ));
                    }
                }
            }
        }
    }

    /// Closes every idle connection (after one turned out dead: the server restarted
    /// or dropped its clients, the others are most likely dead too).
    fn close_idle(&self) {
        let closed = {
            let mut state = self.state.lock();
            let idle = std::mem::take(&mut state.idle);
            state.open -= idle.len();
            idle
        };
        drop(closed);
        self.freed.notify(usize::MAX.additional());
    }

    /// Sends one request and reads its reply. An error reply, a failure or a
    /// cancellation discards the connection. A pooled connection the server had
    /// closed before reading the request is replaced and the request sent once more.
    #[maybe_async]
    async fn call(&self, request: &[u8]) -> Result<Reply> {
        let deadline = deadline(rt::now(), self.settings.response_timeout);
        let mut retried = false;
        loop {
            let (permit, mut conn, reused) = self.checkout(deadline).await?;
            match conn.call(request, deadline).await {
                Ok(Reply::Error(line, message)) => {
                    drop(conn);
                    drop(permit);
                    let hint = if line == ErrorLine::Generic {
                        " (the meta protocol needs memcached >= 1.6.10)"
                    } else {
                        ""
                    };
                    return Err(Error::new(
                        ErrorKind::Backend,
                        format!(
                            "memcached at {} refused the command: {} {message}{hint}",
                            self.settings.addr,
                            Reply::Error(line, String::new()).code()
                        ),
                    ));
                }
                Ok(reply) => {
                    permit.give_back(conn);
                    return Ok(reply);
                }
                Err(failure) if failure.stale && reused && !retried => {
                    retried = true;
                    drop(conn);
                    drop(permit);
                    self.close_idle();
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }
}

#[maybe_async(AFIT)]
impl Backend for MemcachedBackend {
    fn name(&self) -> &'static str {
        "memcached"
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let request = meta::get(key, &[Flag::Value])?;
        match self.pool.call(&request).await? {
            Reply::Va(value, _) => Ok(Some(value)),
            Reply::En => Ok(None),
            other => Err(unexpected("mg v", &other)),
        }
    }

    async fn set(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let request = meta::set(key, value, &[exptime(ttl)])?;
        match self.pool.call(&request).await? {
            Reply::Hd(_) => Ok(()),
            other => Err(unexpected("ms", &other)),
        }
    }

    async fn add(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        let request = meta::set(key, value, &[Flag::ModeAdd, exptime(ttl)])?;
        match self.pool.call(&request).await? {
            Reply::Hd(_) => Ok(true),
            Reply::Ns(_) => Ok(false),
            other => Err(unexpected("ms ME", &other)),
        }
    }

    async fn delete(&self, key: &[u8]) -> Result<bool> {
        let request = meta::delete(key, &[])?;
        match self.pool.call(&request).await? {
            Reply::Hd(_) => Ok(true),
            Reply::Nf(_) => Ok(false),
            other => Err(unexpected("md", &other)),
        }
    }

    async fn exists(&self, key: &[u8]) -> Result<bool> {
        let request = meta::get(key, &[])?;
        match self.pool.call(&request).await? {
            Reply::Hd(_) => Ok(true),
            Reply::En => Ok(false),
            other => Err(unexpected("mg", &other)),
        }
    }

    async fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        let request = meta::get(key, &[Flag::Ttl])?;
        match self.pool.call(&request).await? {
            Reply::Hd(meta::ReplyFlags { ttl: Some(-1), .. }) => Ok(Ttl::Persistent),
            Reply::Hd(meta::ReplyFlags { ttl: Some(t), .. }) => {
                Ok(Ttl::Expires(Duration::from_secs(t.unsigned_abs())))
            }
            Reply::En => Ok(Ttl::Missing),
            other => Err(unexpected("mg t", &other)),
        }
    }

    /// Reads the token and the CAS unique (`mg v c`), compares the token, then
    /// deletes that version only (`md C<cas>`); a CAS that went stale in between is
    /// read again. Never uses a CAS remembered from the acquisition.
    async fn release(&self, key: &[u8], token: &[u8]) -> Result<bool> {
        let read = meta::get(key, &[Flag::Value, Flag::Cas])?;
        for _ in 0..RELEASE_TRIES {
            let cas = match self.pool.call(&read).await? {
                Reply::En => return Ok(false),
                Reply::Va(value, _) if value != token => return Ok(false),
                Reply::Va(_, flags) => Self::cas_of(key, &flags)?,
                other => return Err(unexpected("mg v c", &other)),
            };
            let delete = meta::delete(key, &[Flag::CompareCas(cas)])?;
            match self.pool.call(&delete).await? {
                Reply::Hd(_) => return Ok(true),
                Reply::Nf(_) => return Ok(false),
                Reply::Ex(_) => continue,
                other => return Err(unexpected("md C", &other)),
            }
        }
        Err(Error::new(
            ErrorKind::Backend,
            format!(
                "the lock {:?} changed between read and delete {RELEASE_TRIES} times in a row",
                String::from_utf8_lossy(key)
            ),
        ))
    }

    /// Polls `mg v t` with capped, jittered backoff: the holder's token
    /// gone (or replaced) before its lease could have ended is a release, after it a
    /// vacancy.
    async fn claim(&self, key: &[u8], token: &[u8], lease: Duration) -> Result<Claim> {
        Ok(if Backend::add(self, key, token, Some(lease)).await? {
            Claim::Won
        } else {
            Claim::Held { holder: None }
        })
    }

    async fn wait(&self, key: &[u8], _holder: Option<&[u8]>, deadline: Instant) -> Result<Wake> {
        let request = meta::get(key, &[Flag::Value, Flag::Ttl])?;
        let mut watch = Watch::new(self.pool.settings.max_poll_delay);
        loop {
            let sent = rt::now();
            let reply = self.pool.call(&request).await?;
            let now = rt::now();
            let seen = match &reply {
                Reply::En => Seen::Missing,
                Reply::Va(token, meta::ReplyFlags { ttl: Some(ttl), .. }) => {
                    Seen::Held { token, ttl: *ttl }
                }
                other => return Err(unexpected("mg v t", other)),
            };
            if let Some(wake) = watch.observe(seen, sent, now) {
                return Ok(wake);
            }
            match watch.next_sleep(now, deadline, rand::random::<f64>()) {
                Some(pause) => rt::sleep(pause).await,
                None => return Ok(Wake::Deadline),
            }
        }
    }

    async fn begin(&self, key: &[u8]) -> Result<Versioned> {
        let request = meta::get(key, &[Flag::Value, Flag::Cas])?;
        match self.pool.call(&request).await? {
            Reply::Va(value, flags) => Ok(Versioned {
                value: Some(value),
                token: CasToken::Version(Self::cas_of(key, &flags)?),
            }),
            Reply::En => Ok(Versioned {
                value: None,
                token: CasToken::Absent,
            }),
            other => Err(unexpected("mg v c", &other)),
        }
    }

    async fn cas(
        &self,
        key: &[u8],
        token: &CasToken,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        crate::key::check_memcached(key)?;
        let request = match token {
            CasToken::Absent => meta::set(key, value, &[Flag::ModeAdd, exptime(ttl)])?,
            CasToken::Version(0) => return Err(cas_disabled(key)),
            CasToken::Version(cas) => {
                meta::set(key, value, &[Flag::CompareCas(*cas), exptime(ttl)])?
            }
            // A token of another backend cannot describe this store's state.
            CasToken::Value(_) => return Ok(false),
        };
        match self.pool.call(&request).await? {
            Reply::Hd(_) => Ok(true),
            Reply::Ns(_) | Reply::Ex(_) | Reply::Nf(_) => Ok(false),
            other => Err(unexpected("ms C", &other)),
        }
    }
}
