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
use crate::backend::memcached::polls::{self, Step, Ticket, Turn};
use crate::backend::memcached::routing::{Distribution, Router};
use crate::backend::memcached::settings::{
    Addr, Fate, Settings, cas_disabled, settings, settings_from_url, unexpected,
};
use crate::config::Options;
use crate::core::lease::deadline;
use crate::core::poll::Seen;
use crate::core::wait::{Claim, Wake};
use crate::error::{Error, ErrorKind, Result};
use crate::key::{DEFAULT_LOCK_SUFFIX, MEMCACHED_MAX_KEY};
use crate::value::{CasToken, Ttl, Versioned};

/// How many times a release reads the lock again when its CAS went stale between
/// the read and the delete (someone touched or rewrote the key meanwhile).
const RELEASE_TRIES: usize = 8;

/// How many times a fenced claim that won its add sends the increment and the
/// verification again after their replies were lost.
const FENCE_TRIES: usize = 3;

/// A memcached server (>= 1.6.10) over the meta protocol: `memcached://host[:port]`
/// (port 11211 by default) or `memcached+unix:///path/to/socket`, or a pool of them
/// (`memcached://h1,h2,h3`, see [Pools](#pools)).
///
/// - Locks: `ms <key> <len> ME T<ttl>` adds the lock; a release reads the token and
///   its CAS unique (`mg v c`) and deletes only that version (`md C<cas>`), so it never
///   removes another holder's lock, even across a server restart.
/// - Waiters poll the lock key (memcached has no notifications), all the waiters of a
///   key in one process together (see [Waiting](#waiting)).
/// - [`OptimisticLock`](super::OptimisticLock) compares the real CAS unique.
/// - A server run with CAS disabled (`-C`) is refused with
///   [`ErrorKind::Backend`] at the first release or optimistic lock.
///
/// # Waiting
///
/// The callers of one process that wait for one lock key share **one poll loop**,
/// however many they are, async tasks and blocking threads alike, of every cache on
/// the same server (the server the key routes to, in a pool): 1 waiter or 1,000, the
/// server sees the same `mg <key> v t c` polls, a capped, jittered exponential backoff
/// from 0.1–0.2 ms up to 4 ms by default (the shortest `max_poll_interval`, in
/// seconds, of the waiting caches), starting again from the shortest when a new
/// holder takes the key. A poll that finds the holder's token gone wakes every waiter
/// of that holder; each returns by its own bound (its deadline, the holder's lease
/// end) with its own outcome, and a poll that fails is the error of every waiter it
/// counted for. One of the waiters sends the polls, on its own cache's connections,
/// and hands that on when it leaves (woken, timed out, its future dropped): there is
/// no thread or task of its own, nothing left once the last waiter left, and nothing
/// a forked child could inherit half-done.
///
/// After a release or lease end the loop saw, the process claims the key once: the
/// first claim sends the add, claims made meanwhile wait for its result, and claims
/// after it take its result (held by the winner) without a round trip, while the
/// loop's polls still find that holder: exclusive waiters of several caches cost
/// one claim per release, not one per cache.
/// [`polling_waiters`](MemcachedBackend::polling_waiters) counts the waiters of a
/// loop.
///
/// # Keys
///
/// memcached keys are 1–250 bytes without spaces or control bytes; others fail with
/// [`ErrorKind::InvalidKey`] before anything is sent. The stored key is the cache's
/// namespace + the key, and for a lock namespace + key + the lock suffix (`"-lock"`
/// unless the cache sets `lock_suffix`): `get` and `set` take a namespace + key of 250
/// bytes, a lock with the default suffix at most 245.
///
/// # TTLs and leases
///
/// memcached counts whole seconds, on a clock a one-second timer updates; the timer
/// drifts through the second (about 1 ms a tick), and when its phase crosses a whole
/// second the clock steps by two seconds in one tick, shortening the life of every
/// key stored in the second before by about a second. A lease or TTL `d` is therefore
/// sent as `T = ceil(d + 0.25 s) + 2` seconds. The guarantee: **a lock key lives at
/// least its lease** after the server stored it (more than `T - 2 s - 0.25 s`), as
/// long as the server's clock timer fires at most 250 ms late; it lives at most
/// `T + 1.25 s` (less than `d + 4.5 s`: the time a holder that never releases blocks
/// the key). A server stopped as a whole (SIGSTOP, swapping) for longer can serve
/// a claim with a stale clock and shorten that lock by the stall.
///
/// # Renewals and fencing tokens
///
/// - [`extend`](super::LockGuard::extend): `mg <key> v c` reads the token and its
///   CAS unique, and only when it is ours `ms <key> <len> C<cas> T<ttl>` rewrites it
///   with the TTL the rule above gives the new lease: two round trips, a key the
///   server rewrote after the guard read its clock, so `lease_end` (that instant plus
///   the lease) stays a lower bound of the key's life, as for a claim. Waiters keep
///   waiting through a renewal: they poll `mg v t c`, and the holder's token under
///   a new CAS is a renewal (their bounds on its expiry start again from its TTL).
/// - A [`fenced`](super::RedLock::fenced) claim costs no extra round trip: its one
///   write carries the add, `ma <lock key>-fence N0 J<µs> v` (increment the counter,
///   creating it without TTL from the client's clock in microseconds when it is
///   missing) and `mg <lock key> v`, which memcached runs in that order; the fence
///   counts only when that read still finds our token (a holder that lost its lock
///   between the add and the increment never holds a fence larger than the next
///   holder's). An uncontended fenced cycle (acquire + release) is 3 round trips like
///   an unfenced one, and 5 server commands instead of 3: 1 set, 1 incr (none when it
///   creates the counter), 2 gets, 1 delete (measured by
///   `a_fenced_cycle_costs_no_extra_round_trip` in the tests). A waiter that claims
///   again increments too (fences skip numbers) and learns the holder's token from
///   the read.
/// - What the counter survives: it has no TTL, so it stays unless memcached evicts
///   it (an LRU under memory pressure; every claim refreshes it), `flush_all` clears
///   it or the server restarts (memcached keeps nothing). Then the next claim creates
///   it again from the client's clock in microseconds: fences still grow as long as
///   the lost counter had been incremented fewer times than microseconds passed
///   since it was created, and the clients' clocks agree within that margin. A fence
///   key that holds anything but a counter fails fenced claims with
///   [`ErrorKind::Backend`] (the lock is not taken).
///
/// # Faults
///
/// - Each request returns within `response_timeout` (waiting for a free connection
///   included); opening a connection has its own `connect_timeout` (every address of
///   the host within one); a waiter's polls end by its own deadline.
/// - A request on a connection the server closed before its reply is sent again only
///   when that is safe: reads and plain `set`s, or a request that surely never
///   reached the server. A lost reply to anything else is read back: an add or a
///   claim that finds its own value has won (another value: held by that holder; no
///   value: the add is sent once more); a compare-and-set that finds its value has
///   written; otherwise, and for a release whose lock is gone and a `delete` (never
///   sent twice: it could delete a newer value), a [`Connection`](ErrorKind::Connection)
///   error says that the outcome is unknown. A release never reports `Ok(true)`
///   unless the server said it deleted the lock.
/// - A [`Timeout`](ErrorKind::Timeout) leaves the outcome unknown too: the server may
///   run the request later.
///
/// # Pools
///
/// A URL that lists several servers is a pool, and each key lives on one of them,
/// the one the application's own memcached client picks:
///
/// - `memcached://host1[:port],host2[:port],…` (port 11211 when left out, IPv6 in
///   brackets), or `memcached+unix:///a.sock,/b.sock,…` (a comma inside a socket path
///   is written `%2C`); one kind per pool. No weights.
/// - `distribution=ketama` (the default): libmemcached's consistent hashing with
///   `MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED` (pylibmc's `ketama_weighted`; the MD5
///   continuum of 160 points per server, four per digest of `"host-i"` for port
///   11211 and `"host:port-i"` otherwise). twemproxy's and spymemcached's ketama use
///   the same points with point strings of their own: compare before relying on them.
/// - `distribution=rendezvous`: pymemcache's `HashClient` (murmur3_32, seed 0, of
///   `"host:port-key"`, the highest score wins, ties to the larger node string), for
///   keys given to pymemcache as `str` without its `key_prefix` (it hashes
///   the key without the prefix; aiolock hashes the whole stored key, namespace
///   included).
///
/// Both are checked against vectors the real clients computed
/// (`scripts/golden-memcached-routing.py`). A key is routed as stored (namespace +
/// key, a lock's namespace + key + lock suffix); a fenced claim's counter
/// (`lock key + "-fence"`) is routed **by its lock key**, not by its own name: its
/// `ms`/`ma`/`mg` batch must run on one connection, in order, for the fence to be
/// larger than every earlier holder's (see "Renewals and fencing tokens").
///
/// **Fail closed.** A server that is down or unreachable fails the keys it owns —
/// [`Connection`](ErrorKind::Connection) errors, [`Timeout`](ErrorKind::Timeout)
/// for a server that accepts but does not answer, and a waiter's bound ends its wait
/// as usual (`Outcome::TimedOut`) — and the other servers' keys
/// keep working. A key is never moved to another server (memcached clients that
/// eject dead servers do move them): a lock key that moved while its holder held it
/// on the old server would be claimed a second time on the new one, and two callers
/// would hold the same lock. For the same reason **every process must list the same
/// servers, as the same strings (`10.0.0.1` and `cache-1` hash differently; `host`
/// and `host:11211` are the same), in the same order**, with the same
/// `distribution`: a process with another list routes some keys elsewhere, and both
/// hold those locks. [`connect`](MemcachedBackend::connect) pings every server and
/// fails, naming it, when one does not answer.
///
/// Connections: a pool of at most `pool_size` (URL option, default 8) **per server**;
/// callers beyond that wait for a free one within the response timeout. A request that fails, times
/// out or is cancelled (async: its future dropped) discards its connection, so no
/// later request reads its reply. A process forked from one that used the pool
/// (preforking servers) does not touch the connections it inherited: the pool opens
/// its own (in the async flavor, the child needs a runtime of its own too: tokio's do
/// not survive `fork`).
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
    inner: Arc<Servers>,
}

/// A pool's servers, each with its own connections, and which one owns a key.
struct Servers {
    router: Router,
    /// One per server, in the URL's order (the router's indexes).
    pools: Box<[Pool]>,
    distribution: Distribution,
    max_poll_delay: Duration,
}

impl std::fmt::Debug for MemcachedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let servers: Vec<String> = self
            .inner
            .pools
            .iter()
            .map(|p| p.settings.addr.to_string())
            .collect();
        let mut d = f.debug_struct("MemcachedBackend");
        if let [one] = &servers[..] {
            d.field("addr", one);
        } else {
            d.field("servers", &servers)
                .field("distribution", &self.inner.distribution);
        }
        d.field("pool_size", &self.inner.pools[0].settings.pool_size)
            .finish()
    }
}

impl MemcachedBackend {
    /// Connects to the server (or the servers of a pool) a `memcached://` or
    /// `memcached+unix://` URL names, with the URL's options (`connect_timeout`,
    /// `response_timeout`, `pool_size`, `max_poll_interval`, `distribution`). One
    /// connection per server is opened (within `connect_timeout`) and pinged (within
    /// `response_timeout`) at once, so an unreachable server is reported here. A `namespace` option is ignored: namespaces belong to the
    /// [`Cache`](super::Cache).
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
    pub(crate) async fn from_endpoint(servers: &[Url], options: &Options) -> Result<Self> {
        Self::open(settings(servers, options)?).await
    }

    #[maybe_async]
    async fn open(settings: Settings) -> Result<Self> {
        let pools = settings
            .servers
            .iter()
            .map(|addr| Pool {
                settings: ServerSettings {
                    addr: addr.clone(),
                    connect_timeout: settings.connect_timeout,
                    response_timeout: settings.response_timeout,
                    pool_size: settings.pool_size,
                },
                state: Mutex::new(PoolState {
                    idle: Vec::new(),
                    open: 0,
                    generation: process_generation(),
                }),
                freed: Event::new(),
            })
            .collect();
        let backend = MemcachedBackend {
            inner: Arc::new(Servers {
                router: Router::new(settings.distribution, &settings.servers),
                pools,
                distribution: settings.distribution,
                max_poll_delay: settings.max_poll_delay,
            }),
        };
        backend.ping().await?;
        Ok(backend)
    }

    /// The connections of the server that owns `key`. Every command on a key goes
    /// there, and nowhere else: a down server fails its keys (never moves them).
    fn pool(&self, key: &[u8]) -> &Pool {
        &self.inner.pools[self.inner.router.route(key)]
    }

    /// One round trip that touches no key (`mn`, answered `MN`) to each server: a
    /// health check, and the unit of the benchmarks' round-trip ceiling.
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
        for pool in &self.inner.pools {
            match pool.call(&meta::noop()).await? {
                Reply::Mn => {}
                other => return Err(unexpected("mn", &other)),
            }
        }
        Ok(())
    }

    /// How many callers of this process wait for the lock stored under `lock_key`
    /// (as stored: namespace + key + lock suffix) through the shared poll loop of the
    /// key's server: the callers of every cache on that server, both flavors (see
    /// [Waiting](#waiting)). A diagnostic, beside [`Cache::waiting`](super::Cache::waiting),
    /// which counts the callers of one cache.
    ///
    /// ```no_run
    /// # #[cfg(feature = "blocking")] {
    /// use aiolock::blocking::MemcachedBackend;
    ///
    /// let backend = MemcachedBackend::connect("memcached://127.0.0.1")?;
    /// assert_eq!(backend.polling_waiters("report-lock"), 0);
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    pub fn polling_waiters(&self, lock_key: impl AsRef<[u8]>) -> usize {
        let key = lock_key.as_ref();
        polls::waiters(&self.pool(key).settings.addr, key)
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

/// The client's clock in microseconds since the Unix epoch: the value a fence counter
/// that memcached lost (evicted, flushed, restarted) is created with again, so that it
/// still grows.
fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// `ma <fence key> N0 J<now in µs> v`: increments the fence counter, creating it
/// without TTL, seeded from the clock, when it is missing.
fn fence_increment(fence_key: &[u8]) -> Result<Vec<u8>> {
    let seed = now_micros();
    meta::increment(
        fence_key,
        &[Flag::AutoCreate(0), Flag::Initial(seed), Flag::Value],
    )
}

/// What one server's connections need to know.
struct ServerSettings {
    addr: Addr,
    connect_timeout: Duration,
    response_timeout: Duration,
    pool_size: usize,
}

/// One server's connections: at most `pool_size` open, the idle ones kept for reuse.
struct Pool {
    settings: ServerSettings,
    state: Mutex<PoolState>,
    /// Notified when a connection is returned or closed.
    freed: Event,
}

struct PoolState {
    idle: Vec<Conn>,
    /// Connections open or being opened, idle or in use.
    open: usize,
    /// The process the connections belong to ([`process_generation`]).
    generation: u64,
}

/// Which process this is: changes in every child forked from it. A pool's connections
/// belong to the process that opened them; a forked child that used them would read
/// its parent's replies.
fn process_generation() -> u64 {
    crate::core::fork::generation()
}

/// The right to one of the pool's `pool_size` connections. Dropped without
/// [`give_back`](Permit::give_back) (an error, a timeout, a cancelled future), it
/// frees the place and the connection is closed.
struct Permit<'a> {
    pool: &'a Pool,
    generation: u64,
    returned: bool,
}

impl Permit<'_> {
    fn give_back(mut self, conn: Conn) {
        self.returned = true;
        let mut state = self.pool.state.lock();
        if state.generation == self.generation {
            state.idle.push(conn);
            drop(state);
            self.pool.freed.notify(1.additional());
        } else {
            drop(state);
            conn.abandon();
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.returned {
            let mut state = self.pool.state.lock();
            if state.generation == self.generation {
                state.open -= 1;
            }
            drop(state);
            self.pool.freed.notify(1.additional());
        }
    }
}

/// Whether a request may run twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Running it twice does what running it once does (reads, a plain `ms`): sent
    /// again once when a pooled connection turns out closed.
    Idempotent,
    /// It must not run twice (an add, a compare-and-set, a delete): sent again only
    /// when it surely never reached the server.
    Once,
}

/// How a single request that must not run twice went.
enum Sent {
    /// Its reply.
    Reply(Reply),
    /// It was written, then the server closed the connection before one byte of the
    /// reply: it may or may not have run. The caller reads the key back.
    Lost(Error),
}

impl Pool {
    /// A connection and the permit that owns its place: an idle one (`true`), or a
    /// new one when fewer than `pool_size` are open, connected by `connect_by`; else
    /// waits for one until `deadline`.
    #[maybe_async]
    async fn checkout(
        &self,
        deadline: Instant,
        connect_by: Instant,
    ) -> Result<(Permit<'_>, Conn, bool)> {
        loop {
            let generation = process_generation();
            let permit = || Permit {
                pool: self,
                generation,
                returned: false,
            };
            let listener = {
                let mut state = self.state.lock();
                if state.generation != generation {
                    // Inherited by fork: the parent's, not ours.
                    for conn in std::mem::take(&mut state.idle) {
                        conn.abandon();
                    }
                    state.open = 0;
                    state.generation = generation;
                }
                if let Some(conn) = state.idle.pop() {
                    return Ok((permit(), conn, true));
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
                    let permit = permit();
                    let s = &self.settings;
                    let conn = io::connect(&s.addr, connect_by, s.response_timeout).await?;
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
            if state.generation != process_generation() {
                return; // the next checkout forgets them
            }
            let idle = std::mem::take(&mut state.idle);
            state.open -= idle.len();
            idle
        };
        drop(closed);
        self.freed.notify(usize::MAX.additional());
    }

    /// Sends a request that is safe to repeat and reads its reply, within the response
    /// timeout.
    #[maybe_async]
    async fn call(&self, request: &[u8]) -> Result<Reply> {
        self.call_by(request, None).await
    }

    /// [`call`](Pool::call), and returns by `cap` at the latest (a waiter's deadline:
    /// then the error is a timeout).
    #[maybe_async]
    async fn call_by(&self, request: &[u8], cap: Option<Instant>) -> Result<Reply> {
        let batch = self.send(request, 1, Repeat::Idempotent, cap).await?;
        match batch.lost {
            Some(error) => Err(error),
            None => self.only_reply(batch.replies),
        }
    }

    /// Sends a request that must not run twice and reads its reply, within the
    /// response timeout; says so when the reply was lost.
    #[maybe_async]
    async fn call_once(&self, request: &[u8]) -> Result<Sent> {
        let batch = self.send(request, 1, Repeat::Once, None).await?;
        match batch.lost {
            Some(error) => Ok(Sent::Lost(error)),
            None => self.only_reply(batch.replies).map(Sent::Reply),
        }
    }

    /// Sends `count` requests in one write (`request` holds them all, in order) and
    /// reads their replies in order, within one response timeout: one round trip.
    /// None of them may run twice: a batch is sent again only when it surely never
    /// reached the server. Error lines are returned as replies ([`Batch`]).
    #[maybe_async]
    async fn pipeline(&self, request: &[u8], count: usize) -> Result<Batch> {
        self.send(request, count, Repeat::Once, None).await
    }

    /// The reply to a single request; an error line is an error.
    fn only_reply(&self, mut replies: Vec<Reply>) -> Result<Reply> {
        match replies.pop() {
            Some(Reply::Error(line, message)) => Err(self.refused(line, &message)),
            Some(reply) => Ok(reply),
            None => Err(Error::new(ErrorKind::Protocol, "memcached sent no reply")),
        }
    }

    /// The error for an error line (`ERROR`, `CLIENT_ERROR`, `SERVER_ERROR`).
    fn refused(&self, line: ErrorLine, message: &str) -> Error {
        let hint = if line == ErrorLine::Generic {
            " (the meta protocol needs memcached >= 1.6.10)"
        } else {
            ""
        };
        Error::new(
            ErrorKind::Backend,
            format!(
                "memcached at {} refused the command: {} {message}{hint}",
                self.settings.addr,
                Reply::Error(line, String::new()).code()
            ),
        )
    }

    /// Writes `request` (`count` commands) and reads `count` replies, by `cap` at the
    /// latest. An error line ends the batch (it is its last reply) and discards the
    /// connection, as do a failure and a cancellation. A batch whose connection the
    /// server closed before its first reply (a pooled connection of a server that
    /// restarted, or a connection lost on the way) is sent once more on a new one
    /// when it never reached the server, or when it may run twice ([`Repeat`]); else
    /// its caller is told which replies were lost ([`Batch::lost`]).
    ///
    /// Time: waiting for a free connection and the exchange share one response
    /// timeout; opening a connection has its own `connect_timeout`.
    #[maybe_async]
    async fn send(
        &self,
        request: &[u8],
        count: usize,
        repeat: Repeat,
        cap: Option<Instant>,
    ) -> Result<Batch> {
        let s = &self.settings;
        let capped = |at: Instant| cap.map_or(at, |cap| at.min(cap));
        let mut retried = false;
        loop {
            let start = rt::now();
            let answer_by = deadline(start, s.response_timeout);
            let connect_by = capped(deadline(start, s.connect_timeout));
            let (permit, mut conn, reused) = self.checkout(capped(answer_by), connect_by).await?;
            let answer_by = if reused {
                capped(answer_by)
            } else {
                // The time spent connecting counted against connect_timeout.
                capped(answer_by + (rt::now() - start))
            };
            let mut replies = Vec::with_capacity(count);
            let mut failure = conn.send(request, answer_by).await.err();
            while failure.is_none() && replies.len() < count {
                match conn.recv(answer_by).await {
                    Ok(reply) => {
                        let refused = matches!(reply, Reply::Error(..));
                        replies.push(reply);
                        if refused {
                            break;
                        }
                    }
                    Err(f) => failure = Some(f),
                }
            }
            let Some(failure) = failure else {
                if matches!(replies.last(), Some(Reply::Error(..))) {
                    // memcached may have read the rest of a rejected request as
                    // commands: the connection is out of step.
                    drop(conn);
                    drop(permit);
                } else if !conn.drained() {
                    drop(conn);
                    drop(permit);
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("memcached at {}: more bytes than the replies", s.addr),
                    ));
                } else {
                    permit.give_back(conn);
                }
                return Ok(Batch {
                    replies,
                    lost: None,
                });
            };
            drop(conn);
            drop(permit);
            let closed = matches!(failure.fate, Fate::Unsent | Fate::Unanswered);
            if closed && reused {
                self.close_idle();
            }
            let again = match failure.fate {
                Fate::Unsent => true,
                Fate::Unanswered => repeat == Repeat::Idempotent && replies.is_empty(),
                Fate::Unknown => false,
            };
            if again && !retried {
                retried = true;
                continue;
            }
            if failure.fate == Fate::Unanswered && repeat == Repeat::Once {
                return Ok(Batch {
                    replies,
                    lost: Some(failure.error),
                });
            }
            return Err(failure.error);
        }
    }
}

/// The replies to a batch of requests ([`Pool::pipeline`]).
struct Batch {
    /// The replies read, in the order of the requests. An error line, when one came,
    /// is the last (the connection was dropped after it).
    replies: Vec<Reply>,
    /// Set when the server closed the connection after `replies.len()` replies: the
    /// requests after those may or may not have run.
    lost: Option<Error>,
}

/// How an add (`ms ME`) went.
enum Added {
    /// Our value is stored.
    Stored,
    /// The key was there (`NS`).
    Exists,
    /// The reply was lost, and reading the key back found another value.
    Other(Vec<u8>),
}

/// The error for a request whose reply was lost when reading back cannot tell
/// whether it ran.
fn outcome_unknown(lost: Error, what: &str, key: &[u8], found: &str) -> Error {
    Error::new(
        ErrorKind::Connection,
        format!(
            "the outcome of {what} {:?} is unknown: the connection closed before its \
             reply, and {found} ({})",
            String::from_utf8_lossy(key),
            lost.message()
        ),
    )
}

impl MemcachedBackend {
    /// `ms <key> ME`: stores `value` only if `key` is absent. A lost reply is read
    /// back: our value there → stored, another value → [`Added::Other`], the key gone
    /// → the add did not run (or its key is already gone again): sent once more.
    #[maybe_async]
    async fn add_once(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<Added> {
        let request = meta::set(key, value, &[Flag::ModeAdd, exptime(ttl)])?;
        let read = meta::get(key, &[Flag::Value])?;
        let mut resent = false;
        loop {
            let lost = match self.pool(key).call_once(&request).await? {
                Sent::Reply(Reply::Hd(_)) => return Ok(Added::Stored),
                Sent::Reply(Reply::Ns(_)) => return Ok(Added::Exists),
                Sent::Reply(other) => return Err(unexpected("ms ME", &other)),
                Sent::Lost(lost) => lost,
            };
            match self.pool(key).call(&read).await? {
                Reply::Va(found, _) if found == value => return Ok(Added::Stored),
                Reply::Va(found, _) => return Ok(Added::Other(found)),
                Reply::En if !resent => resent = true,
                Reply::En => {
                    return Err(outcome_unknown(
                        lost,
                        "the add of",
                        key,
                        "the key is absent after a second try",
                    ));
                }
                other => return Err(unexpected("mg v", &other)),
            }
        }
    }
}

impl MemcachedBackend {
    /// This process's turn to claim `key` (`polls.rs`, "Claims after a wake"):
    /// `Ok(None)` claims as usual, `Ok(Some(ticket))` claims for the round (and
    /// reports its result on the ticket), `Err(holder)` is the round's result, taken
    /// for this claim's (the key is held by `holder`). Following a claim in flight
    /// waits at most a response timeout; then this claim goes on alone.
    #[maybe_async]
    async fn claim_turn(&self, key: &[u8]) -> std::result::Result<Option<Ticket>, Option<Vec<u8>>> {
        let pool = self.pool(key);
        let mut until = None;
        loop {
            let now = rt::now();
            match polls::claim_turn(&pool.settings.addr, key, now) {
                Turn::Alone => return Ok(None),
                Turn::Claim(ticket) => return Ok(Some(ticket)),
                Turn::Held(holder) => return Err(holder),
                Turn::Follow(listener) => {
                    let until =
                        *until.get_or_insert_with(|| deadline(now, pool.settings.response_timeout));
                    if !rt::wait_listener(listener, until).await {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// One fenced claim ([`Backend::claim_fenced`]), without the round.
    #[maybe_async]
    async fn claim_fenced_once(
        &self,
        key: &[u8],
        token: &[u8],
        lease: Duration,
        fence_key: &[u8],
    ) -> Result<(Claim, Option<u64>)> {
        let add = meta::set(key, token, &[Flag::ModeAdd, exptime(Some(lease))])?;
        let read = meta::get(key, &[Flag::Value])?;
        let mut resent = false;
        let (incremented, verified, lost) = loop {
            let mut request = add.clone();
            request.extend_from_slice(&fence_increment(fence_key)?);
            request.extend_from_slice(&read);
            let batch = self.pool(key).pipeline(&request, 3).await?;
            let mut replies = batch.replies.into_iter();
            let added = replies.next();
            let (incremented, verified) = (replies.next(), replies.next());
            match added {
                Some(Reply::Hd(_)) => break (incremented, verified, batch.lost),
                Some(Reply::Ns(_)) => {
                    // Losers need no fence, but learn of a broken counter.
                    if let Some(reply) = &incremented {
                        self.fence_of(key, fence_key, reply)?;
                    }
                    let holder = match verified {
                        Some(Reply::Va(holder, _)) => Some(holder),
                        _ => None,
                    };
                    return Ok((Claim::Held { holder }, None));
                }
                Some(Reply::Error(line, message)) => {
                    return Err(self.pool(key).refused(line, &message));
                }
                Some(other) => return Err(unexpected("ms ME", &other)),
                None => {}
            }
            // The add's reply was lost: read the lock back.
            let lost = batch.lost.unwrap_or_else(|| {
                Error::new(ErrorKind::Protocol, "memcached sent no reply to ms ME")
            });
            match self.pool(key).call(&read).await? {
                // Ours: won; the increment and the read after it are sent again.
                Reply::Va(found, _) if found == token => break (None, None, Some(lost)),
                Reply::Va(holder, _) => {
                    return Ok((
                        Claim::Held {
                            holder: Some(holder),
                        },
                        None,
                    ));
                }
                Reply::En if !resent => resent = true,
                Reply::En => {
                    return Err(outcome_unknown(
                        lost,
                        "the fenced claim of",
                        key,
                        "the lock is absent after a second try",
                    ));
                }
                other => return Err(unexpected("mg v", &other)),
            }
        };
        // Won the add: the fence counts once a read after the increment found our
        // token (see above).
        let fenced = self
            .verify_fence(key, token, fence_key, incremented, verified, lost)
            .await;
        match fenced {
            Err(e) if e.kind() == ErrorKind::Backend => {
                // Nothing applied, says a Backend error: give the lock back.
                self.release(key, token).await?;
                Err(e)
            }
            other => other,
        }
    }
}

impl MemcachedBackend {
    /// The fence a fenced claim that won its add holds, from the replies to its
    /// increment and to the read after it (`None`: lost with the connection, `lost`):
    /// sent again, both in one write, while replies are lost.
    #[maybe_async]
    async fn verify_fence(
        &self,
        key: &[u8],
        token: &[u8],
        fence_key: &[u8],
        mut incremented: Option<Reply>,
        mut verified: Option<Reply>,
        mut lost: Option<Error>,
    ) -> Result<(Claim, Option<u64>)> {
        let verify = meta::get(key, &[Flag::Value])?;
        let mut resent = 0;
        loop {
            let fence = match &incremented {
                Some(reply) => Some(self.fence_of(key, fence_key, reply)?),
                None => None,
            };
            match (fence, verified.take()) {
                (Some(fence), Some(Reply::Va(found, _))) if found == token => {
                    return Ok((Claim::Won, Some(fence)));
                }
                // Gone or another's after our increment: the claim is lost.
                (Some(_), Some(Reply::Va(holder, _))) => {
                    let holder = Some(holder);
                    return Ok((Claim::Held { holder }, None));
                }
                (Some(_), Some(Reply::En)) => return Ok((Claim::Held { holder: None }, None)),
                (Some(_), Some(other)) => return Err(unexpected("mg v", &other)),
                (_, None) | (None, _) => {}
            }
            if resent == FENCE_TRIES {
                break;
            }
            resent += 1;
            let mut request = fence_increment(fence_key)?;
            request.extend_from_slice(&verify);
            let batch = self.pool(key).pipeline(&request, 2).await?;
            let mut replies = batch.replies.into_iter();
            (incremented, verified, lost) = (replies.next(), replies.next(), batch.lost);
        }
        Err(outcome_unknown(
            lost.unwrap_or_else(|| Error::new(ErrorKind::Protocol, "memcached sent no reply")),
            "the fencing token of",
            key,
            "the replies to its increment were lost every time",
        ))
    }

    /// The fence an `ma <fence key> ... v` reply holds.
    fn fence_of(&self, key: &[u8], fence_key: &[u8], reply: &Reply) -> Result<u64> {
        let not_a_counter = |why: &str| {
            Error::new(
                ErrorKind::Backend,
                format!(
                    "the fence key {:?} does not hold a fencing token (a decimal number): \
                     {why}; the lock was not taken",
                    String::from_utf8_lossy(fence_key)
                ),
            )
        };
        match reply {
            Reply::Va(value, _) => match meta::counter(value) {
                Some(0) => Err(not_a_counter("it wrapped around 2^64 to 0")),
                Some(fence) => Ok(fence),
                None => Err(Error::new(
                    ErrorKind::Protocol,
                    "memcached answered ma with a value that is not a number",
                )),
            },
            Reply::Error(ErrorLine::Client, message) => Err(not_a_counter(&format!(
                "memcached refused to increment it ({message})"
            ))),
            Reply::Error(line, message) => Err(self.pool(key).refused(*line, message)),
            other => Err(unexpected("ma", other)),
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
        match self.pool(key).call(&request).await? {
            Reply::Va(value, _) => Ok(Some(value)),
            Reply::En => Ok(None),
            other => Err(unexpected("mg v", &other)),
        }
    }

    /// A plain `ms`: sent again after a lost reply (storing the same value twice is
    /// storing it once).
    async fn set(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let request = meta::set(key, value, &[exptime(ttl)])?;
        match self.pool(key).call(&request).await? {
            Reply::Hd(_) => Ok(()),
            other => Err(unexpected("ms", &other)),
        }
    }

    /// `ms ME`. After a lost reply it reads the key back: our value → `true`, another
    /// value → `false` (the key is taken), gone → the add is sent once more.
    async fn add(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        Ok(match self.add_once(key, value, ttl).await? {
            Added::Stored => true,
            Added::Exists | Added::Other(_) => false,
        })
    }

    /// `md`. Never sent twice (it could delete a newer value): after a lost reply, a
    /// [`Connection`](ErrorKind::Connection) error says the outcome is unknown.
    async fn delete(&self, key: &[u8]) -> Result<bool> {
        let request = meta::delete(key, &[])?;
        match self.pool(key).call_once(&request).await? {
            Sent::Reply(Reply::Hd(_)) => Ok(true),
            Sent::Reply(Reply::Nf(_)) => Ok(false),
            Sent::Reply(other) => Err(unexpected("md", &other)),
            Sent::Lost(lost) => Err(outcome_unknown(
                lost,
                "the delete of",
                key,
                "a delete is never sent twice (it could delete a newer value)",
            )),
        }
    }

    async fn exists(&self, key: &[u8]) -> Result<bool> {
        let request = meta::get(key, &[])?;
        match self.pool(key).call(&request).await? {
            Reply::Hd(_) => Ok(true),
            Reply::En => Ok(false),
            other => Err(unexpected("mg", &other)),
        }
    }

    async fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        let request = meta::get(key, &[Flag::Ttl])?;
        match self.pool(key).call(&request).await? {
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
    ///
    /// When the reply to the delete is lost, the lock is read again: still our token →
    /// the delete did not run, and is sent again; gone or another token → it may have
    /// run (or the lease ended, or another client deleted the key): a
    /// [`Connection`](ErrorKind::Connection) error says the outcome is unknown. Either
    /// way our token no longer holds the lock; `Ok(true)` is only said when the
    /// server said it.
    async fn release(&self, key: &[u8], token: &[u8]) -> Result<bool> {
        let read = meta::get(key, &[Flag::Value, Flag::Cas])?;
        // The error of a delete whose reply was lost, until a read shows it did not run.
        let mut lost = None;
        for _ in 0..RELEASE_TRIES {
            let cas = match self.pool(key).call(&read).await? {
                Reply::Va(value, flags) if value == token => {
                    lost = None;
                    Self::cas_of(key, &flags)?
                }
                Reply::En | Reply::Va(..) => {
                    return match lost {
                        None => Ok(false),
                        Some(lost) => Err(outcome_unknown(
                            lost,
                            "the release of",
                            key,
                            "the lock no longer holds our token (released by this call, \
                             or its lease ended, or another client deleted it)",
                        )),
                    };
                }
                other => return Err(unexpected("mg v c", &other)),
            };
            let delete = meta::delete(key, &[Flag::CompareCas(cas)])?;
            match self.pool(key).call_once(&delete).await? {
                Sent::Reply(Reply::Hd(_)) => {
                    // A round's "held by us" no longer stands.
                    polls::released(&self.pool(key).settings.addr, key, token);
                    return Ok(true);
                }
                Sent::Reply(Reply::Nf(_)) => return Ok(false),
                Sent::Reply(Reply::Ex(_)) => continue,
                Sent::Reply(other) => return Err(unexpected("md C", &other)),
                Sent::Lost(error) => lost = Some(error),
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

    /// Reads the token and its CAS unique (`mg v c`), compares the token, then
    /// rewrites the same token with the TTL a claim gives `lease` (`ms <len> C<cas>
    /// T<ttl>`, see "TTLs and leases" on [`MemcachedBackend`]) only if the CAS is
    /// unchanged: the key then lives at least `lease` from when the server applied
    /// the write. A CAS that went stale in between (another renewal of ours) is read
    /// again; a key gone in between (`NF`) is not ours any more. Never uses a CAS
    /// remembered from the acquisition.
    ///
    /// When the reply to the write is lost, the lock is read again: still our token →
    /// the write is sent again, against the CAS just read (renewing twice renews once,
    /// a little later; whether the first write ran cannot be told from the TTL, which
    /// memcached counts in whole seconds); gone or another token → a
    /// [`Connection`](ErrorKind::Connection) error says the outcome is unknown.
    async fn extend(&self, key: &[u8], token: &[u8], lease: Duration) -> Result<bool> {
        check_lock_key(key)?;
        let read = meta::get(key, &[Flag::Value, Flag::Cas])?;
        // The error of a write whose reply was lost, until a later write is answered.
        let mut lost = None;
        let not_ours = |lost: Option<Error>| match lost {
            None => Ok(false),
            Some(lost) => Err(outcome_unknown(
                lost,
                "the extension of",
                key,
                "the lock no longer holds our token (its lease ended, or another client \
                 deleted it)",
            )),
        };
        for _ in 0..RELEASE_TRIES {
            let cas = match self.pool(key).call(&read).await? {
                Reply::Va(value, flags) if value == token => Self::cas_of(key, &flags)?,
                Reply::En | Reply::Va(..) => return not_ours(lost),
                other => return Err(unexpected("mg v c", &other)),
            };
            let write = meta::set(key, token, &[Flag::CompareCas(cas), exptime(Some(lease))])?;
            match self.pool(key).call_once(&write).await? {
                Sent::Reply(Reply::Hd(_)) => return Ok(true),
                Sent::Reply(Reply::Nf(_)) => return not_ours(lost),
                Sent::Reply(Reply::Ex(_)) => continue,
                Sent::Reply(other) => return Err(unexpected("ms C", &other)),
                Sent::Lost(error) => lost = Some(error),
            }
        }
        Err(match lost {
            Some(lost) => outcome_unknown(
                lost,
                "the extension of",
                key,
                "the last write's reply was lost too",
            ),
            None => Error::new(
                ErrorKind::Backend,
                format!(
                    "the lock {:?} changed between read and write {RELEASE_TRIES} times in a \
                     row",
                    String::from_utf8_lossy(key)
                ),
            ),
        })
    }

    /// `ms <key> <len> ME T<ttl>`: `HD` → won, `NS` → held (the holder's token is
    /// learned by the wait's first poll). A lost reply is read back: our token → won,
    /// another token → held by it, gone → the add did not run: sent once more.
    ///
    /// After a release or lease end the shared poll loop saw, this process claims the
    /// key once: a claim while that one is in flight waits for its result, and a claim
    /// after it takes its result without a round trip ([`Claim::Held`] by the winner;
    /// see [`MemcachedBackend`], "Waiting").
    async fn claim(&self, key: &[u8], token: &[u8], lease: Duration) -> Result<Claim> {
        check_lock_key(key)?;
        let turn = match self.claim_turn(key).await {
            Ok(turn) => turn,
            Err(holder) => return Ok(Claim::Held { holder }),
        };
        let claim = match self.add_once(key, token, Some(lease)).await? {
            Added::Stored => Claim::Won,
            Added::Exists => Claim::Held { holder: None },
            Added::Other(holder) => Claim::Held {
                holder: Some(holder),
            },
        };
        if let Some(turn) = turn {
            turn.done(holder_after(&claim, token));
        }
        Ok(claim)
    }

    /// A claim with a fencing token, in one round trip: one write carries the add,
    /// the increment of the fence counter and a read of the lock key,
    ///
    /// ```text
    /// ms <key> <len> ME T<ttl>       HD (won) | NS (held)
    /// ma <fence key> N0 J<µs> v      VA <len> <fence>   (created from the clock if missing)
    /// mg <key> v                     VA <len> <token>   (still ours: the fence is valid)
    /// ```
    ///
    /// and memcached runs them in that order. Losers increment the counter too (a
    /// skipped number, which fences allow) and learn the holder's token from the read.
    ///
    /// Why the fence is larger than every earlier holder's: a winner's fence counts
    /// only once the read after its increment found the lock still holding its token.
    /// Take two winners A, then B. A's read ran while A held the key, and B's add ran
    /// when the key was free, so after A's lease ended or A released: after A's read,
    /// hence after A's increment. B's increment runs after B's add (the same
    /// connection, in order), so after A's increment: it returns a larger number. A
    /// holder that won the add and then stalled past its lease before its increment
    /// (a server stalled between the commands, or replies lost and sent again) finds
    /// the lock gone or another's at its read, and its claim is lost (`Held`, with
    /// the holder the read found): it never holds a fence larger than the next
    /// holder's. This needs the counter to survive between the two increments; when
    /// memcached lost it (evicted, `flush_all`, restarted), `J` creates it again from
    /// the client's clock in microseconds, larger than the lost counter unless that
    /// had been incremented more times than microseconds passed since it was created,
    /// or the clients' clocks disagree by more than that.
    ///
    /// Lost replies: an add whose reply was lost is read back as by
    /// [`claim`](Backend::claim) (our token → won, another → held, gone → the three
    /// are sent once more). After a won add, a lost increment or read is sent again,
    /// both in one write (an increment is not idempotent, but a second one only skips
    /// a number), at most three times more, then a
    /// [`Connection`](ErrorKind::Connection) error says the outcome is unknown (the
    /// caller releases the lock in the background).
    ///
    /// A fence key that holds something other than a decimal counter
    /// ([`Backend`](ErrorKind::Backend) error), or a counter that wrapped around
    /// 2^64 (to 0), fails the claim, and a lock it had won is released first.
    async fn claim_fenced(
        &self,
        key: &[u8],
        token: &[u8],
        lease: Duration,
        fence_key: &[u8],
    ) -> Result<(Claim, Option<u64>)> {
        check_lock_key(key)?;
        check_fence_key(fence_key)?;
        let turn = match self.claim_turn(key).await {
            Ok(turn) => turn,
            Err(holder) => return Ok((Claim::Held { holder }, None)),
        };
        let claimed = self.claim_fenced_once(key, token, lease, fence_key).await?;
        if let Some(turn) = turn {
            turn.done(holder_after(&claimed.0, token));
        }
        Ok(claimed)
    }

    /// Waits through the key's shared poll loop (`polls.rs`): the waiters of this
    /// process on this key, of every cache and both flavors, share one series of
    /// `mg v t c` polls with capped, jittered backoff (`core::poll`), sent by one of
    /// them. The holder's token (`holder`, else the first one a poll finds) gone or
    /// replaced before its lease could have ended is a release, after it a vacancy;
    /// the same token under a new CAS is the holder renewing its lease (it keeps the
    /// waiter waiting). Returns by `deadline` ([`Wake::Deadline`]): a poll this
    /// waiter sends ends by then, and the others' polls are not waited for past it;
    /// a poll that fails (within the response timeout) is the error of every waiter
    /// it counted for.
    async fn wait(&self, key: &[u8], holder: Option<&[u8]>, deadline: Instant) -> Result<Wake> {
        let request = meta::get(key, &[Flag::Value, Flag::Ttl, Flag::Cas])?;
        let pool = self.pool(key);
        let max_delay = self.inner.max_poll_delay;
        let registration = polls::join(&pool.settings.addr, key, holder, deadline, max_delay);
        loop {
            match registration.step(rt::now()) {
                Step::Done(result) => return result,
                Step::Wait(listener, until) => {
                    rt::wait_listener(listener, until).await;
                }
                Step::Poll(mark) => {
                    let sent = rt::now();
                    let reply = pool.call_by(&request, Some(deadline)).await;
                    let received = rt::now();
                    match reply {
                        Err(e) if e.is_timeout() && received >= deadline => {
                            registration.abandoned();
                        }
                        Ok(reply) => {
                            let jitter = rand::random::<f64>();
                            registration.polled(mark, seen(&reply), sent, received, jitter);
                        }
                        Err(e) => {
                            let jitter = rand::random::<f64>();
                            registration.polled(mark, Err(e), sent, received, jitter);
                        }
                    }
                }
            }
        }
    }

    async fn begin(&self, key: &[u8]) -> Result<Versioned> {
        let request = meta::get(key, &[Flag::Value, Flag::Cas])?;
        match self.pool(key).call(&request).await? {
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

    /// `ms C<cas>` (or `ms ME` for a key that was absent). After a lost reply it reads
    /// the key back: our value there → written; anything else → a
    /// [`Connection`](ErrorKind::Connection) error that says the outcome is unknown
    /// (never `false`: that would say nothing was written).
    async fn cas(
        &self,
        key: &[u8],
        token: &CasToken,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        crate::key::check_memcached(key)?;
        let cas = match token {
            CasToken::Absent => {
                return match self.add_once(key, value, ttl).await? {
                    Added::Stored => Ok(true),
                    Added::Exists => Ok(false),
                    Added::Other(_) => Err(Error::new(
                        ErrorKind::Connection,
                        format!(
                            "the outcome of the compare-and-set of {:?} is unknown: the \
                             connection closed before its reply, and the key now holds \
                             another value",
                            String::from_utf8_lossy(key)
                        ),
                    )),
                };
            }
            CasToken::Version(0) => return Err(cas_disabled(key)),
            CasToken::Version(cas) => *cas,
            // A token of another backend cannot describe this store's state.
            CasToken::Value(_) => return Ok(false),
        };
        let request = meta::set(key, value, &[Flag::CompareCas(cas), exptime(ttl)])?;
        let lost = match self.pool(key).call_once(&request).await? {
            Sent::Reply(Reply::Hd(_)) => return Ok(true),
            Sent::Reply(Reply::Ex(_) | Reply::Nf(_)) => return Ok(false),
            Sent::Reply(other) => return Err(unexpected("ms C", &other)),
            Sent::Lost(lost) => lost,
        };
        let read = meta::get(key, &[Flag::Value])?;
        match self.pool(key).call(&read).await? {
            Reply::Va(found, _) if found == value => Ok(true),
            Reply::Va(..) | Reply::En => Err(outcome_unknown(
                lost,
                "the compare-and-set of",
                key,
                "the key does not hold the value it wrote",
            )),
            other => Err(unexpected("mg v", &other)),
        }
    }
}

/// Who holds the key after `claim` of `token`: the token (won), or the holder it lost
/// to, when learned.
fn holder_after<'a>(claim: &'a Claim, token: &'a [u8]) -> Option<&'a [u8]> {
    match claim {
        Claim::Won => Some(token),
        Claim::Held { holder } => holder.as_deref(),
    }
}

/// What a poll (`mg v t c`) found.
fn seen(reply: &Reply) -> Result<Seen<'_>> {
    match reply {
        Reply::En => Ok(Seen::Missing),
        Reply::Va(token, flags @ meta::ReplyFlags { ttl: Some(ttl), .. }) => Ok(Seen::Held {
            token,
            ttl: *ttl,
            // 0 from a server without CAS (`-C`): renewals go unseen.
            cas: flags.cas.unwrap_or(0),
        }),
        other => Err(unexpected("mg v t c", other)),
    }
}

/// A lock key memcached can store, with a message that names the parts of a lock key.
fn check_lock_key(key: &[u8]) -> Result<()> {
    if key.len() > MEMCACHED_MAX_KEY {
        return Err(Error::invalid_key(format!(
            "memcached stores a lock under namespace + key + lock suffix ({default:?} unless \
             the cache sets lock_suffix) and takes keys of at most {MEMCACHED_MAX_KEY} bytes; \
             this lock key has {} bytes (with the default suffix, namespace + key may have \
             at most {} bytes)",
            key.len(),
            MEMCACHED_MAX_KEY - DEFAULT_LOCK_SUFFIX.len(),
            default = String::from_utf8_lossy(DEFAULT_LOCK_SUFFIX),
        )));
    }
    crate::key::check_memcached(key)
}

/// A fence key memcached can store (`lock key + "-fence"`), with a message that says
/// where its length comes from.
fn check_fence_key(key: &[u8]) -> Result<()> {
    if key.len() > MEMCACHED_MAX_KEY {
        let fence = crate::key::FENCE_SUFFIX;
        return Err(Error::invalid_key(format!(
            "a fenced lock keeps its fencing token under lock key + {suffix:?}, and memcached \
             takes keys of at most {MEMCACHED_MAX_KEY} bytes; this one has {} bytes (with the \
             default lock suffix, namespace + key may have at most {} bytes)",
            key.len(),
            MEMCACHED_MAX_KEY - DEFAULT_LOCK_SUFFIX.len() - fence.len(),
            suffix = String::from_utf8_lossy(fence),
        )));
    }
    crate::key::check_memcached(key)
}
