//! [`QuorumBackend`]: the [`Backend`] of a Redlock quorum over independent Redis
//! masters. Each node is a single server spoken to with the single-server protocol
//! (`protocol.rs`: the claim, the release and re-check scripts, the reply rules) and
//! reached through its flavor's transport (`blocking.rs`, `nonblocking.rs`: pools,
//! the shared subscriber, fork safety); the fan-out to every node is each
//! transport's `quorum` module; the counting is `quorum.rs` (compiled once).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use event_listener::Event;
use redis::{Cmd, RedisError, RedisResult, Value};
use url::Url;

use super::backend::Backend;
use super::redis_conn::{self, quorum as fan};
use super::{maybe_async, rt};
use crate::backend::redis::protocol::{self as r, Lua};
use crate::backend::redis::quorum::{self as q, Ack, Verdict, Vote, Watch};
use crate::config::{self, Endpoint, Options};
use crate::core::wait::{Claim, Wake};
use crate::error::{Error, ErrorKind, Result};
use crate::value::{CasToken, Ttl, Versioned};

/// How often a node that could not be reached is tried again (by the next operation
/// that finds it due; the others count it as failed meanwhile).
const RECONNECT: Duration = Duration::from_secs(1);

/// A Redlock quorum: locks over N independent Redis masters (N odd, 3 or 5 as a
/// rule), held while a majority of them hold them
/// (`redis+quorum://[user:password@]h1:p1,h2:p2,h3:p3[/db][?options]`,
/// `rediss+quorum://…`, `redis+quorum+unix:///a.sock,/b.sock,/c.sock[?options]`).
///
/// A lock that must survive the loss of a server without a replica's failover (and
/// its asynchronous replication, which can hand a lock to two holders) is kept on
/// several masters that know nothing of each other, as the Redlock algorithm of the
/// Redis documentation describes:
///
/// - **Acquire.** `SET key token NX PX lease GET` goes to every node at once, each
///   answer awaited at most `node_timeout` (URL option, default 0.1 s; never past the
///   response timeout, nor past the lease's validity). The lock is ours when a
///   majority stored our token and the *validity*, `lease − elapsed − drift`, is
///   positive, with `elapsed` measured on a monotonic clock from the first send to the
///   last answer and `drift = lease × 1 % + 2 ms` (the allowance for the servers'
///   clocks running faster than ours). The guard's
///   [`lease_end`](super::LockGuard::lease_end) is the instant before the claim was
///   sent plus `lease − drift`. Otherwise our token is released on every node that did
///   not answer with another holder's (those that failed too, owner-checked), and the
///   claim counts as lost: a lock mode that waits waits for the holder a majority
///   named, or, when no token holds a majority (a split between claimants, or a claim
///   that came too late), tries again after a random 5–50 ms. When fewer than a
///   majority answered while the validity lasted, `acquire` fails
///   ([`Timeout`](ErrorKind::Timeout) or [`Connection`](ErrorKind::Connection), naming
///   the first failure); a claim whose validity ran out first is lost, not failed (the
///   nodes are slow for this lease, not down).
/// - **Release** runs the single server's owner-checked script (compare, delete,
///   publish the token) on every node at once, and reports `true` when a majority
///   deleted our token, `false` when our token is on no majority (the lease ended); an
///   error when the nodes that did not answer could tip it either way.
/// - **Wait.** A waiter subscribes to the key's release channel on every node, with the
///   holder's token, *then* re-checks every node (value and `PTTL`), and wakes on the
///   first of: the holder's release heard on any node ([`Outcome::Released`](crate::Outcome)
///   for a [`RedLock`](super::RedLock); an [`ExclusiveLock`](super::ExclusiveLock)
///   claims again); the holder no longer holding a majority (its keys gone early: a
///   release; past their `PTTL`: its lease ended, claim again); its own bound. Each
///   node's subscriber re-checks the key every ≤ 100 ms, as on one server, so a
///   release that publishes nothing is seen there too.
/// - **Extend** renews on every node with one script that sets the TTL where the key
///   holds our token and re-creates the key where it is absent (a node that restarted
///   or missed the claim), leaving another holder's key alone; it holds when a majority
///   of the nodes still held our token (re-created copies do not count: a lease that
///   ended on a majority is not revived) and the validity is positive. A renewal that
///   does not hold gives the lock up on every node (owner-checked, the re-created
///   copies too) and reports it lost.
/// - **Node failures.** A node that is down, stopped or slow costs its `node_timeout`
///   and a vote; with the others a majority, locks work on. A node that cannot be
///   reached when the backend is opened is tried again at most once a second; opening
///   fails only when fewer than a majority answer (or a node refuses the
///   credentials). What a quorum cannot survive: a majority of nodes restarting
///   without persistence within a lease (their copies of a held lock are gone, and
///   another caller can take it); run the nodes with `appendonly yes` (and, as the
///   Redlock documentation advises, restart a crashed node only after a lease has
///   passed) where that matters.
///
/// # What the quorum refuses
///
/// - **The cache API** (`get`, `set`, `add`, `delete`, `exists`, `ttl`) and
///   **[`OptimisticLock`](super::OptimisticLock)** fail with
///   [`Unsupported`](ErrorKind::Unsupported): a value read from one node is no more
///   than that node's (another may hold a newer one), and values written to several
///   independent nodes without versions can disagree with no rule to tell which is
///   right. Keep cached values in a cache of their own (a `redis://` or memcached URL):
///   a [`RedLock`](super::RedLock)'s `Released` then means "read that cache".
/// - **Fencing tokens** ([`RedLock::fenced`](super::RedLock::fenced)) fail with
///   [`Unsupported`](ErrorKind::Unsupported). Martin Kleppmann's argument ("How to do
///   distributed locking", 2016) is why: Redlock's safety rests on timing assumptions
///   (bounded network delays, process pauses and clock drift), and a holder that pauses
///   past its validity (a GC pause, `SIGSTOP`) goes on writing after another caller
///   got the lock; only a fencing token checked by the storage makes that safe, and
///   Redlock has no way to make one: the nodes' counters are independent, and a
///   number that grows across acquisitions needs a single linearizable counter
///   (consensus). Where stale writes would do harm, use a fenced lock on one Redis
///   server (`redis://`, whose `INCR` is that counter) or a consensus store.
///
/// Clones share the connections: one pool (blocking) or multiplexed connection
/// (async) and one subscriber per node, as for one server.
///
/// # Sending to every node
///
/// The async flavor sends a command to every node at once and awaits the answers
/// together. The blocking flavor starts no thread for it: it writes the command to a
/// connection of every node first and reads the replies afterwards, so the nodes work
/// on it at the same time and an operation costs about one round trip (the slowest
/// node's). A blocking waiter subscribes to the nodes one after the other (each
/// subscription waits for its server's confirmation), then re-checks them all at once.
///
/// ```no_run
/// # #[cfg(all(feature = "blocking", feature = "redis"))] {
/// use std::time::Duration;
/// use aiolock::blocking::Cache;
///
/// let locks = Cache::from_url("redis+quorum://10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379?node_timeout=0.05")?;
/// let values = Cache::from_url("redis://10.0.0.1:6379")?;
/// if let Some(guard) = locks.lock("nightly-report", Duration::from_secs(30)).try_acquire()? {
///     values.set("nightly-report", b"...", None)?;
///     guard.release()?;
/// }
/// # }
/// # Ok::<(), aiolock::Error>(())
/// ```
#[derive(Clone)]
pub struct QuorumBackend {
    inner: Arc<Inner>,
}

struct Inner {
    nodes: Vec<Node>,
    node_timeout: Duration,
    /// The nodes' options (a node that was not reachable is connected with them).
    options: Options,
    /// The nodes without passwords, for messages.
    name: String,
}

/// One node: its connections, once it could be reached.
struct Node {
    client: redis::Client,
    name: String,
    conn: OnceLock<redis_conn::Conn>,
    /// One connection attempt at a time, at most once per [`RECONNECT`].
    connecting: AtomicBool,
    next_try: parking_lot::Mutex<Instant>,
}

impl std::fmt::Debug for QuorumBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorumBackend")
            .field("nodes", &self.inner.name)
            .field("node_timeout", &self.inner.node_timeout)
            .finish()
    }
}

/// What one fan-out got from each node (`None`: not sent to it).
type Replies = Vec<Option<RedisResult<Value>>>;

/// A wait ready to listen: its plan, and the nodes' subscriptions (`None` where the
/// subscription failed).
type Prepared = (Watch, Vec<Option<redis_conn::Subscription>>);

impl QuorumBackend {
    /// Connects to the nodes a `redis+quorum://`, `rediss+quorum://` or
    /// `redis+quorum+unix://` URL names (see [`config`](crate::config) for the options).
    ///
    /// Fails with [`ErrorKind::InvalidArgument`] for a malformed URL (an even number of
    /// nodes, fewer than 3 or more than 9, a node listed twice), with
    /// [`ErrorKind::Backend`] when a node refuses the credentials, and with
    /// [`ErrorKind::Connection`] or [`ErrorKind::Timeout`] when fewer than a majority
    /// of the nodes answer within the connect timeout.
    ///
    /// ```no_run
    /// # #[cfg(all(feature = "blocking", feature = "redis"))] {
    /// let backend = aiolock::blocking::QuorumBackend::connect(
    ///     "redis+quorum+unix:///run/r1.sock,/run/r2.sock,/run/r3.sock",
    /// )?;
    /// # let _ = backend;
    /// # }
    /// # Ok::<(), aiolock::Error>(())
    /// ```
    #[maybe_async]
    pub async fn connect(url: &str) -> Result<Self> {
        match config::parse(url)? {
            (
                Endpoint::RedisQuorum {
                    nodes,
                    node_timeout,
                },
                options,
            ) => Self::connect_with(&nodes, node_timeout, &options).await,
            _ => Err(Error::invalid_argument(format!(
                "{:?} is not a Redlock quorum URL (redis+quorum://, rediss+quorum:// or \
                 redis+quorum+unix://)",
                crate::error::redact(url)
            ))),
        }
    }

    #[maybe_async]
    pub(crate) async fn connect_with(
        urls: &[Url],
        node_timeout: Duration,
        options: &Options,
    ) -> Result<Self> {
        let clients = urls.iter().map(r::client).collect::<Result<Vec<_>>>()?;
        let names: Vec<String> = urls.iter().map(r::redacted).collect();
        let name = format!("the Redlock quorum of {}", names.join(", "));
        let connected = fan::connect_all(&clients, options).await;
        let mut failures = Vec::new();
        let now = rt::now();
        let mut nodes = Vec::with_capacity(urls.len());
        for ((client, name), result) in clients.into_iter().zip(names).zip(connected) {
            let conn = OnceLock::new();
            match result {
                Ok(c) => {
                    let _ = conn.set(c);
                }
                Err(e) => {
                    let e = r::error(e, &format!("connecting to {name}"));
                    if e.kind() == ErrorKind::Backend {
                        return Err(e);
                    }
                    failures.push(e);
                }
            }
            nodes.push(Node {
                client,
                name,
                conn,
                connecting: AtomicBool::new(false),
                next_try: parking_lot::Mutex::new(now + RECONNECT),
            });
        }
        let n = nodes.len();
        if n - failures.len() < q::majority(n) {
            let failed = failures.len();
            let first = failures.swap_remove(0);
            return Err(Error::new(
                first.kind(),
                format!(
                    "{name}: {failed} of {n} nodes cannot be reached, a majority is needed \
                     (first: {})",
                    first.message()
                ),
            )
            .with_source(first));
        }
        Ok(QuorumBackend {
            inner: Arc::new(Inner {
                nodes,
                node_timeout,
                options: options.clone(),
                name,
            }),
        })
    }

    /// How many nodes the quorum has.
    pub fn nodes(&self) -> usize {
        self.inner.nodes.len()
    }

    /// How many nodes make a majority.
    pub fn majority(&self) -> usize {
        q::majority(self.nodes())
    }

    /// The bound of one node's answer, from now (never past `cap`).
    fn node_bound(&self, cap: Option<Instant>) -> Instant {
        let until = rt::now()
            + self
                .inner
                .node_timeout
                .min(self.inner.options.response_timeout);
        cap.map_or(until, |cap| until.min(cap))
    }

    /// The nodes' connections; a node not reached yet is tried again if it is due
    /// (once per [`RECONNECT`], one caller at a time, within `until`).
    #[maybe_async]
    async fn conns(&self, until: Instant) -> Vec<Option<&redis_conn::Conn>> {
        let mut conns = Vec::with_capacity(self.inner.nodes.len());
        for node in &self.inner.nodes {
            if node.conn.get().is_none() {
                self.reconnect(node, until).await;
            }
            conns.push(node.conn.get());
        }
        conns
    }

    #[maybe_async]
    async fn reconnect(&self, node: &Node, until: Instant) {
        let now = rt::now();
        if now < *node.next_try.lock() || node.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let budget = until.saturating_duration_since(now);
        if !budget.is_zero() {
            let mut options = self.inner.options.clone();
            options.connect_timeout = options.connect_timeout.min(budget);
            if let Ok(conn) = redis_conn::Conn::connect(node.client.clone(), &options).await {
                let _ = node.conn.set(conn);
            }
        }
        *node.next_try.lock() = rt::now() + RECONNECT;
        node.connecting.store(false, Ordering::Release);
    }

    /// Sends `cmd` to the nodes `to` selects, all at once, each answer awaited for the
    /// node timeout from its send (never past `cap`). With
    /// `resend`, a node whose connection dropped before its reply gets it once more
    /// (for commands whose resend cannot change the answer).
    #[maybe_async]
    async fn fan(&self, cmd: &Cmd, to: &[bool], cap: Option<Instant>, resend: bool) -> Replies {
        let conns = self.conns(self.node_bound(cap)).await;
        let mut replies: Replies = to.iter().map(|_| None).collect();
        let first: Vec<usize> = (0..to.len()).filter(|&i| to[i]).collect();
        Self::send_to(&mut replies, &conns, &first, cmd, self.node_bound(cap)).await;
        if resend {
            let again: Vec<usize> = (0..to.len())
                .filter(|&i| matches!(&replies[i], Some(Err(e)) if r::is_dropped(e)))
                .collect();
            if !again.is_empty() {
                Self::send_to(&mut replies, &conns, &again, cmd, self.node_bound(cap)).await;
            }
        }
        replies
    }

    /// Sends `cmd` to the nodes `at` lists, into their places in `replies`.
    #[maybe_async]
    async fn send_to(
        replies: &mut Replies,
        conns: &[Option<&redis_conn::Conn>],
        at: &[usize],
        cmd: &Cmd,
        until: Instant,
    ) {
        let mut sent = Vec::with_capacity(at.len());
        let mut chosen = Vec::with_capacity(at.len());
        for &i in at {
            match conns[i] {
                Some(conn) => {
                    sent.push(i);
                    chosen.push(conn);
                }
                None => replies[i] = Some(Err(not_connected())),
            }
        }
        let got = fan::query_all(&chosen, cmd, until).await;
        for (i, reply) in sent.into_iter().zip(got) {
            replies[i] = Some(reply);
        }
    }

    /// Runs a script on the nodes `to` selects ([`fan`](Self::fan) of `EVALSHA`, then
    /// `EVAL` where a node answered `NOSCRIPT`).
    #[maybe_async]
    async fn fan_script(
        &self,
        lua: &Lua,
        keys: &[&[u8]],
        args: &[&[u8]],
        to: &[bool],
        cap: Option<Instant>,
        resend: bool,
    ) -> Replies {
        let mut replies = self.fan(&lua.evalsha(keys, args), to, cap, resend).await;
        let again: Vec<bool> = replies
            .iter()
            .map(|reply| matches!(reply, Some(Err(e)) if r::is_noscript(e)))
            .collect();
        if again.contains(&true) {
            // A fresh node timeout: the first answers may have taken the slowest
            // node's.
            let evaluated = self.fan(&lua.eval(keys, args), &again, cap, resend).await;
            for (reply, fresh) in replies.iter_mut().zip(evaluated) {
                if fresh.is_some() {
                    *reply = fresh;
                }
            }
        }
        replies
    }

    /// An aiolock error for node `i`'s failed `what`.
    fn fail(&self, i: usize, e: RedisError, what: &str) -> Error {
        r::error(e, &format!("{what} on {}", self.inner.nodes[i].name))
    }

    /// Releases `token` on the nodes `to` selects (owner-checked, publishing the
    /// release there); what each node answered.
    #[maybe_async]
    async fn release_on(&self, key: &[u8], token: &[u8], to: &[bool]) -> Vec<Ack> {
        let channel = r::channel(key);
        let args: [&[u8]; 2] = [token, &channel];
        // Not resent: a second attempt that finds the key gone cannot tell whether the
        // first one deleted it.
        let replies = self
            .fan_script(&r::RELEASE, &[key], &args, to, None, false)
            .await;
        replies
            .into_iter()
            .enumerate()
            .filter_map(|(i, reply)| {
                Some(match reply? {
                    Ok(Value::Int(1)) => Ack::Yes,
                    Ok(Value::Int(_)) => Ack::No,
                    Ok(other) => Ack::Unknown(Error::new(
                        ErrorKind::Protocol,
                        format!("unexpected reply to the release script from Redis: {other:?}"),
                    )),
                    Err(e) => Ack::Unknown(self.fail(i, e, "release")),
                })
            })
            .collect()
    }

    /// The lease as the commands take it, refused when no validity could be left of it.
    fn lease_budget(lease: Duration) -> Result<Duration> {
        let budget = q::sure_lease(lease);
        if budget.is_zero() {
            return Err(Error::invalid_argument(format!(
                "a lease of {lease:?} leaves no validity on a Redlock quorum (the clock \
                 drift allowance is 1 % of the lease plus 2 ms)"
            )));
        }
        Ok(budget)
    }

    /// The quorum's holder's subscriptions and re-checks: the plan of the wait, with
    /// the subscriptions of the nodes that hold it. `Err(wake)` when the wait is over
    /// already.
    #[maybe_async]
    async fn prepare_wait(
        &self,
        key: &[u8],
        holder: &[u8],
        deadline: Instant,
    ) -> Result<std::result::Result<Prepared, Wake>> {
        let n = self.inner.nodes.len();
        let channel = r::channel(key);
        let until = self.node_bound(Some(deadline));
        let conns = self.conns(until).await;
        let connected: Vec<&redis_conn::Conn> = conns.iter().flatten().copied().collect();
        let subscribed = fan::subscribe_all(&connected, &channel, key, Some(holder), until).await;
        let mut subs: Vec<Option<redis_conn::Subscription>> = (0..n).map(|_| None).collect();
        let mut failures = Vec::new();
        let mut results = subscribed.into_iter();
        for (i, conn) in conns.iter().enumerate() {
            if conn.is_none() {
                failures.push(Error::new(ErrorKind::Connection, "not connected"));
                continue;
            }
            match results.next().expect("one result per connected node") {
                Ok(Some(sub)) => subs[i] = Some(sub),
                Ok(None) => failures.push(Error::new(ErrorKind::Timeout, "no confirmation")),
                Err(e) => failures.push(self.fail(i, e, "SUBSCRIBE")),
            }
        }
        if rt::now() >= deadline {
            return Ok(Err(Wake::Deadline));
        }
        // Subscribed, *then* re-checked: no release in between is missed.
        let to: Vec<bool> = subs.iter().map(Option::is_some).collect();
        let replies = self
            .fan_script(&r::PROBE, &[key], &[], &to, Some(deadline), true)
            .await;
        let mut probes = Vec::with_capacity(n);
        for (i, reply) in replies.into_iter().enumerate() {
            probes.push(match reply {
                Some(Ok(value)) => match r::probe(value) {
                    Ok(probe) => Some(probe),
                    Err(e) => {
                        failures.push(e);
                        None
                    }
                },
                Some(Err(e)) => {
                    failures.push(self.fail(i, e, "re-check"));
                    None
                }
                None => None,
            });
        }
        let now = rt::now();
        if now >= deadline {
            return Ok(Err(Wake::Deadline));
        }
        let unknown = probes.iter().filter(|p| p.is_none()).count();
        if n - unknown < q::majority(n) {
            let first = failures.swap_remove(0);
            return Err(q::unreachable(unknown, n, first));
        }
        // A release heard already (on a node the re-check then found free, say) ends
        // the wait, as it would have a moment later.
        let heard = |s: &redis_conn::Subscription| s.waiter().heard() == Some(r::Heard::Message);
        if subs.iter().flatten().any(heard) {
            return Ok(Err(Wake::Released));
        }
        let watch = match Watch::plan(&probes, holder, deadline, now) {
            Ok(watch) => watch,
            Err(wake) => return Ok(Err(wake)),
        };
        // Listened to on every node subscribed, also those the re-check found free: a
        // release that reached one of them a moment ago may still be on its way from
        // the server to our subscriber.
        Ok(Ok((watch, subs)))
    }
}

fn not_connected() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "the node could not be reached yet",
    ))
}

fn refused(what: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "a Redlock quorum (redis+quorum://) holds locks only: {what} is refused (a value \
             on independent nodes has no majority rule); keep values in a cache of their own"
        ),
    )
}

#[maybe_async(AFIT)]
impl Backend for QuorumBackend {
    fn name(&self) -> &'static str {
        "redis-quorum"
    }

    fn lease_validity(&self, lease: Duration) -> Duration {
        q::sure_lease(lease)
    }

    async fn get(&self, _key: &[u8]) -> Result<Option<Vec<u8>>> {
        Err(refused("get"))
    }

    async fn set(&self, _key: &[u8], _value: &[u8], _ttl: Option<Duration>) -> Result<()> {
        Err(refused("set"))
    }

    async fn add(&self, _key: &[u8], _value: &[u8], _ttl: Option<Duration>) -> Result<bool> {
        Err(refused("add"))
    }

    async fn delete(&self, _key: &[u8]) -> Result<bool> {
        Err(refused("delete"))
    }

    async fn exists(&self, _key: &[u8]) -> Result<bool> {
        Err(refused("exists"))
    }

    async fn ttl(&self, _key: &[u8]) -> Result<Ttl> {
        Err(refused("ttl"))
    }

    async fn claim(&self, key: &[u8], token: &[u8], lease: Duration) -> Result<Claim> {
        let budget = Self::lease_budget(lease)?;
        let n = self.inner.nodes.len();
        // Elapsed on the monotonic clock (the servers' leases run in real time, even
        // under a paused test runtime).
        let start = Instant::now();
        let cap = Some(rt::now() + budget);
        // Unique token: a resend that finds it won the first time.
        let cmd = r::set_cmd(key, token, Some(lease), true, true);
        let replies = self.fan(&cmd, &vec![true; n], cap, true).await;
        let elapsed = start.elapsed();
        let votes: Vec<Vote> = replies
            .into_iter()
            .enumerate()
            .map(|(i, reply)| {
                let reply = reply.expect("sent to every node");
                match reply
                    .map_err(|e| self.fail(i, e, "claim"))
                    .and_then(|v| r::claim(v, token))
                {
                    Ok(Claim::Won) => Vote::Won,
                    Ok(Claim::Held { holder }) => Vote::Held(holder.unwrap_or_default()),
                    Err(e) => Vote::Failed(e),
                }
            })
            .collect();
        let valid = q::validity(lease, elapsed).is_some();
        let verdict = q::tally(votes, valid);
        if let Verdict::Acquired = verdict {
            return Ok(Claim::Won);
        }
        // Ours nowhere: released wherever it may be stored (every node that did not
        // name another holder, those that failed included).
        let to: Vec<bool> = match &verdict {
            Verdict::Lost(holders) => holders.iter().map(Option::is_none).collect(),
            _ => vec![true; n],
        };
        self.release_on(key, token, &to).await;
        match verdict {
            Verdict::Lost(holders) => Ok(Claim::Held {
                holder: Some(q::encode(&holders)),
            }),
            Verdict::Unreachable(failed, first) => Err(q::unreachable(failed, n, first)),
            Verdict::Acquired => unreachable!("returned above"),
        }
    }

    async fn claim_fenced(
        &self,
        _key: &[u8],
        _token: &[u8],
        _lease: Duration,
        _fence_key: &[u8],
    ) -> Result<(Claim, Option<u64>)> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "a Redlock quorum (redis+quorum://) offers no fencing tokens: its nodes' \
             counters are independent, and a token that grows across acquisitions needs \
             one linearizable counter (see QuorumBackend's docs); use a fenced lock on \
             one Redis server",
        ))
    }

    async fn release(&self, key: &[u8], token: &[u8]) -> Result<bool> {
        let acks = self
            .release_on(key, token, &vec![true; self.inner.nodes.len()])
            .await;
        q::count(acks, "release")
    }

    async fn extend(&self, key: &[u8], token: &[u8], lease: Duration) -> Result<bool> {
        let budget = Self::lease_budget(lease)?;
        let n = self.inner.nodes.len();
        let start = Instant::now();
        let cap = Some(rt::now() + budget);
        let px = r::millis(lease).to_string();
        let args: [&[u8]; 2] = [token, px.as_bytes()];
        // Owner-checked, and a second renewal only moves the lease end a little later:
        // resent.
        let replies = self
            .fan_script(
                &q::EXTEND_OR_CREATE,
                &[key],
                &args,
                &vec![true; n],
                cap,
                true,
            )
            .await;
        let elapsed = start.elapsed();
        let acks: Vec<Ack> = replies
            .into_iter()
            .enumerate()
            .map(|(i, reply)| match reply.expect("sent to every node") {
                // Only a node that still held our token counts: a majority of those
                // is a lock held without a break. A key re-created (2) restores a
                // node's copy, but a lease that ended on a majority stays ended (in
                // between, another caller may have taken and released the lock).
                Ok(Value::Int(1)) => Ack::Yes,
                Ok(Value::Int(_)) => Ack::No,
                Ok(other) => Ack::Unknown(Error::new(
                    ErrorKind::Protocol,
                    format!("unexpected reply to the renewal script from Redis: {other:?}"),
                )),
                Err(e) => Ack::Unknown(self.fail(i, e, "extend")),
            })
            .collect();
        match q::count(acks, "extend")? {
            true if q::validity(lease, elapsed).is_some() => Ok(true),
            _ => {
                // Not ours on a majority (or too late): given up everywhere, so that
                // the nodes where it was renewed do not keep it from the others.
                self.release_on(key, token, &vec![true; n]).await;
                Ok(false)
            }
        }
    }

    async fn wait(&self, key: &[u8], holder: Option<&[u8]>, deadline: Instant) -> Result<Wake> {
        let Some(holder) = q::holder_of(holder) else {
            // No token held a majority (a split between claimants, or a claim too
            // late): Redlock's retry after a random delay.
            let now = rt::now();
            let until = (now + q::retry_delay(rand::random::<u64>())).min(deadline);
            rt::sleep(until.saturating_duration_since(now)).await;
            return Ok(if rt::now() >= deadline {
                Wake::Deadline
            } else {
                Wake::Vacant
            });
        };
        let (mut watch, subs) = match rt::boxed(self.prepare_wait(key, &holder, deadline)).await? {
            Ok(prepared) => prepared,
            Err(wake) => return Ok(wake),
        };
        // One listener for every node's subscription.
        let event = Arc::new(Event::new());
        for sub in subs.iter().flatten() {
            sub.waiter().notify_also(Arc::clone(&event));
        }
        loop {
            // Listening before looking: a notification after the look is not missed.
            let listener = event.listen();
            let now = rt::now();
            let mut over = None;
            for (i, sub) in subs.iter().enumerate() {
                let Some(sub) = sub else { continue };
                match watch.heard(i, sub.waiter().heard(), now) {
                    Some(Wake::Released) => return Ok(Wake::Released),
                    Some(wake) => over = Some(wake),
                    None => {}
                }
            }
            if now >= deadline {
                return Ok(Wake::Deadline);
            }
            if let Some(wake) = over {
                return Ok(wake);
            }
            let until = watch.next_end().map_or(deadline, |end| end.min(deadline));
            rt::wait_listener(listener, until).await;
        }
    }

    async fn begin(&self, _key: &[u8]) -> Result<Versioned> {
        Err(refused("an OptimisticLock"))
    }

    async fn cas(
        &self,
        _key: &[u8],
        _token: &CasToken,
        _value: &[u8],
        _ttl: Option<Duration>,
    ) -> Result<bool> {
        Err(refused("an OptimisticLock"))
    }
}
