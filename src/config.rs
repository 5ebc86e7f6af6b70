//! Backend URLs and connection options.
//!
//! | URL | backend |
//! |---|---|
//! | `memory://` | in-process memory (no server) |
//! | `redis://[user:password@]host[:port][/db]`, `rediss://…`, `redis+unix:///path.sock` | Redis |
//! | `memcached://host[:port]`, `memcached+unix:///path.sock` | memcached |
//! | `redis+cluster://[user:password@]host:port,host:port[,…]`, `rediss+cluster://…` | Redis Cluster (seed nodes; any one reachable is enough) |
//! | `redis+sentinel://[user:password@]host[:port][,host[:port]…]/master_name` | the master a Redis Sentinel deployment names (sentinels' addresses; the credentials are the data nodes'; see [`SentinelEndpoint`]) |
//! | `memcached://host1[:port],host2[:port],…`, `memcached+unix:///a.sock,/b.sock,…` | a memcached pool, each key on one server ([`MemcachedBackend`](crate::MemcachedBackend#pools)) |
//! | `redis+quorum://[user:password@]h1:p1,h2:p2,h3:p3[/db]`, `rediss+quorum://…`, `redis+quorum+unix:///a.sock,/b.sock,/c.sock` | a Redlock quorum of 3, 5, 7 or 9 independent Redis masters, locks only ([`QuorumBackend`](crate::QuorumBackend)) |
//!
//! Every scheme takes these query options ([`Options`]):
//!
//! | option | default | what |
//! |---|---|---|
//! | `namespace` | none | prefixed to every key (see below for aiocache's namespaces) |
//! | `lock_suffix` | `-lock` | appended to a key to name its RedLock: the lock key is `namespace + key + lock_suffix` |
//! | `connect_timeout` | 2 | seconds to wait for a connection |
//! | `response_timeout` | 2 | seconds to wait for the answer to one command |
//! | `pool_size` | 8 | connections kept per cache (a memcached pool: per server) |
//!
//! and each backend its own:
//!
//! | scheme | its own options |
//! |---|---|
//! | `memory://` | none |
//! | `redis://`, `rediss://` | `protocol` (`resp2`, `resp3`; read by the `redis` crate), the database as the path (`/2`), `wait_replicas`, `wait_timeout` |
//! | `redis+unix://` | `protocol`, `db`, `user`, `pass` (read by the `redis` crate), `wait_replicas`, `wait_timeout` |
//! | `redis+sentinel://` | `db`, `protocol` (for the data nodes), `sentinel_user`, `sentinel_password` (the sentinels' own credentials, none by default), `wait_replicas`, `wait_timeout` |
//! | `redis+cluster://`, `rediss+cluster://` | `protocol` (every seed gets the credentials and options written once; a cluster has no databases and its nodes announce TCP addresses, so there is no path and no unix variant) |
//! | `redis+quorum://`, `rediss+quorum://`, `redis+quorum+unix://` | `node_timeout` (seconds, default 0.1): the longest wait for one node's answer (never past the response timeout, nor, for a claim, past the lease's validity); `protocol` (and on unix sockets `db`, `user`, `pass`), given once for every node |
//! | `memcached://`, `memcached+unix://` | `max_poll_interval` (seconds, default 0.004): the longest sleep between two polls of a waiter; `distribution` (`ketama`, the default, or `rendezvous`): how a pool routes keys |
//!
//! `wait_replicas=N` (1 to 15; with `wait_timeout`, seconds, default 0.05) has every lock
//! acquisition and lease extension followed by `WAIT N timeout` on the connection
//! that wrote it; the guard tells how many replicas confirmed
//! ([`Replication`](crate::Replication)). See [Sentinel and
//! replication](crate::RedisBackend#sentinel-and-replication) for what it does and does
//! not guarantee.
//!
//! Any other option is an [`InvalidArgument`](crate::ErrorKind::InvalidArgument) error
//! that names it and the options the scheme knows: a misspelt option
//! (`respone_timeout=0.2`) never falls back silently to a default.
//!
//! ```
//! let err = aiolock::config::parse("redis://h?respone_timeout=0.2").unwrap_err();
//! assert!(err.message().contains("respone_timeout"));
//! assert!(err.message().contains("response_timeout"));
//! ```
//!
//! # Namespaces and aiocache
//!
//! `namespace` is prefixed as it is, byte for byte. aiocache builds its keys
//! differently per backend: its Redis cache puts a `:` between the namespace and the
//! key (`namespace="app"` stores `app:key`), its memcached and memory caches do not
//! (`appkey`). To share keys with an aiocache Redis cache of namespace `app`, use
//! `namespace=app:`; with an aiocache memcached cache of namespace `app`,
//! `namespace=app`.
//!
//! # The lock suffix
//!
//! `lock_suffix` must not be empty (the lock key would be the key itself, and a lock
//! would overwrite the cached value it guards). It is stored as part of every lock key,
//! so each backend's key rules apply to `namespace + key + lock_suffix` as a whole: on
//! memcached that is at most 250 bytes without spaces or control bytes (a suffix that
//! breaks these rules is refused when the cache is opened; a key that makes the lock
//! key too long, when the lock is acquired, with
//! [`InvalidKey`](crate::ErrorKind::InvalidKey)). Callers that should never contend for
//! the same lock (two fleets, or aiolock beside aiocache) can use different suffixes.

use std::time::Duration;

use url::Url;

use crate::core::lease::seconds;
use crate::error::{Error, Result};
use crate::key::{self, DEFAULT_LOCK_SUFFIX};

mod sentinel;
pub use sentinel::SentinelEndpoint;

/// Where a cache's data lives, parsed from a URL. Its `Debug` form shows the URL
/// without its password.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Endpoint {
    /// `memory://`: in this process.
    Memory,
    /// `redis://`, `rediss://`, `redis+unix://`: the URL as the `redis` crate takes it,
    /// without aiolock's own query options.
    Redis(Url),
    /// `memcached://`, `memcached+unix://`, without aiolock's own query options.
    Memcached(Url),
    /// `redis+cluster://h1:p1,h2:p2`, `rediss+cluster://…`: one `redis://` (or
    /// `rediss://`) URL per seed node, each with the credentials and the `redis`
    /// crate's options, without aiolock's own.
    RedisCluster(Vec<Url>),
    /// `redis+sentinel://s1:26379,s2:26379/mymaster`: the sentinels to ask for the
    /// master of a name, and how to reach the data nodes.
    RedisSentinel(SentinelEndpoint),
    /// A memcached pool (`memcached://h1,h2:11212,…`, `memcached+unix:///a.sock,/b.sock`):
    /// one single-server URL per server, in the order the pool URL lists them, each
    /// with the pool URL's memcached options.
    MemcachedPool(Vec<Url>),
    /// A Redlock quorum (`redis+quorum://h1:p1,h2:p2,h3:p3`,
    /// `redis+quorum+unix:///a.sock,/b.sock,/c.sock`): one single-server `redis://`
    /// (`rediss://`, `redis+unix://`) URL per node, in the order the URL lists them,
    /// each with the credentials, the database and the `redis` crate's options; an odd
    /// number of distinct nodes, 3 to 9.
    RedisQuorum {
        /// The nodes.
        nodes: Vec<Url>,
        /// The longest wait for one node's answer (`node_timeout`).
        node_timeout: Duration,
    },
}

/// The default `node_timeout` of a Redlock quorum.
pub(crate) const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(100);

/// The most nodes a Redlock quorum may have.
pub(crate) const MAX_QUORUM_NODES: usize = 9;

impl std::fmt::Debug for Endpoint {
    /// `Url`'s own `Debug` lists the password as a field: print the redacted URL.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, url) = match self {
            Endpoint::Memory => return f.write_str("Memory"),
            Endpoint::RedisCluster(seeds) => {
                let seeds: Vec<_> = seeds
                    .iter()
                    .map(|u| crate::error::redact(u.as_str()).into_owned())
                    .collect();
                return f.debug_tuple("RedisCluster").field(&seeds).finish();
            }
            Endpoint::RedisQuorum {
                nodes,
                node_timeout,
            } => {
                let nodes: Vec<_> = nodes
                    .iter()
                    .map(|u| crate::error::redact(u.as_str()).into_owned())
                    .collect();
                return f
                    .debug_struct("RedisQuorum")
                    .field("nodes", &nodes)
                    .field("node_timeout", node_timeout)
                    .finish();
            }
            Endpoint::RedisSentinel(sentinel) => {
                return f.debug_tuple("RedisSentinel").field(sentinel).finish();
            }
            Endpoint::Redis(url) => ("Redis", url),
            Endpoint::Memcached(url) => ("Memcached", url),
            Endpoint::MemcachedPool(urls) => {
                let urls: Vec<_> = urls
                    .iter()
                    .map(|u| crate::error::redact(u.as_str()))
                    .collect();
                return f.debug_tuple("MemcachedPool").field(&urls).finish();
            }
        };
        f.debug_tuple(name)
            .field(&crate::error::redact(url.as_str()))
            .finish()
    }
}

/// Options common to every backend. Network backends honour the timeouts and the
/// pool size; the memory backend has nothing to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// Prefixed, byte for byte, to every key of the cache. aiocache's Redis cache puts
    /// a `:` after its namespace, its memcached cache does not: see
    /// [Namespaces and aiocache](self#namespaces-and-aiocache).
    pub namespace: Vec<u8>,
    /// Appended to a key to name its RedLock (default `-lock`, as in aiocache); never
    /// empty.
    pub lock_suffix: Vec<u8>,
    /// How long to wait for a connection to be established.
    pub connect_timeout: Duration,
    /// How long to wait for the answer to one command.
    pub response_timeout: Duration,
    /// The connection pool's size: memcached's in both flavors, Redis's blocking flavor
    /// (its async flavor multiplexes one connection).
    pub pool_size: usize,
    /// Redis: the number of replicas a lock's acquisition or extension waits for
    /// (`WAIT`, 1 to 15); 0 (the default) sends no `WAIT`.
    pub wait_replicas: u8,
    /// Redis: how long that `WAIT` may block (default 50 ms; used only with
    /// `wait_replicas`).
    pub wait_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: Vec::new(),
            lock_suffix: DEFAULT_LOCK_SUFFIX.to_vec(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            pool_size: 8,
            wait_replicas: 0,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
        }
    }
}

/// How long a `WAIT` blocks unless `wait_timeout` says otherwise.
const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_millis(50);

/// The options aiolock reads itself for the Redis schemes whose writes it can follow
/// by `WAIT` (one server, or the master of a Sentinel deployment).
const WAIT_OPTIONS: &[&str] = &["wait_replicas", "wait_timeout"];

/// Whether `scheme` takes the [`WAIT_OPTIONS`].
fn waits(scheme: &str) -> bool {
    matches!(scheme, "redis" | "rediss" | "redis+unix" | "unix")
}

/// aiolock's own options: every scheme takes them, and they are taken out of the URL
/// before a backend sees it.
const COMMON_OPTIONS: &[&str] = &[
    "namespace",
    "lock_suffix",
    "connect_timeout",
    "response_timeout",
    "pool_size",
];

/// The one table of the options each scheme's backend reads itself (they stay in the
/// URL the backend gets), or `None` for a scheme aiolock does not know.
fn backend_options(scheme: &str) -> Option<&'static [&'static str]> {
    Some(match scheme {
        "memory" => &[],
        // Read by the `redis` crate (`parse_protocol`; the database is the path).
        "redis" | "rediss" => &["protocol"],
        // The `redis` crate reads the database and the credentials of a unix socket
        // from the query.
        "redis+unix" | "unix" => &["protocol", "db", "user", "pass"],
        "memcached" | "memcached+unix" => &["max_poll_interval", "distribution"],
        // Read by aiolock's Sentinel client (the data nodes get `db` and `protocol`).
        "redis+sentinel" => &["db", "protocol", "sentinel_user", "sentinel_password"],
        _ => return None,
    })
}

/// Parses a cache URL into its endpoint and options.
///
/// Errors ([`InvalidArgument`](crate::ErrorKind::InvalidArgument)): not a URL, an
/// unknown scheme, an unknown option (the message names it and the known ones), an
/// option out of range. Messages never show the URL's password.
pub fn parse(url: &str) -> Result<(Endpoint, Options)> {
    for (quorum, node) in [
        ("redis+quorum+unix://", "redis+unix://"),
        ("redis+quorum://", "redis://"),
        ("rediss+quorum://", "rediss://"),
    ] {
        if let Some(rest) = url.strip_prefix(quorum) {
            return parse_quorum(url, quorum, node, rest);
        }
    }
    for (cluster, node) in [
        ("redis+cluster://", "redis://"),
        ("rediss+cluster://", "rediss://"),
    ] {
        if let Some(rest) = url.strip_prefix(cluster) {
            return parse_cluster(url, node, rest);
        }
    }
    if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        return sentinel::parse(url, rest);
    }
    let pool = split_memcached_pool(url);
    let first = pool.as_ref().map_or(url, |servers| servers[0].as_str());
    let mut parsed = Url::parse(first).map_err(|e| {
        Error::invalid_argument(format!("{url:?} is not a valid cache URL")).with_source(e)
    })?;
    let scheme = parsed.scheme().to_owned();
    let Some(own) = backend_options(&scheme) else {
        return Err(Error::invalid_argument(format!(
            "unsupported scheme {scheme:?} in {url:?} (expected memory, redis, rediss, \
             redis+unix, redis+cluster, rediss+cluster, redis+sentinel, redis+quorum, \
             rediss+quorum, redis+quorum+unix, memcached or memcached+unix)"
        )));
    };
    let mut options = Options::default();
    let mut rest: Vec<(String, String)> = Vec::new();
    for (name, value) in parsed.query_pairs() {
        match &*name {
            "namespace" => options.namespace = value.as_bytes().to_vec(),
            "lock_suffix" => options.lock_suffix = value.as_bytes().to_vec(),
            "connect_timeout" => options.connect_timeout = positive(&name, &value)?,
            "response_timeout" => options.response_timeout = positive(&name, &value)?,
            "wait_replicas" if waits(&scheme) => {
                let replicas = 1..=crate::Replication::MAX;
                options.wait_replicas = value
                    .parse()
                    .ok()
                    .filter(|n| replicas.contains(n))
                    .ok_or_else(|| {
                        Error::invalid_argument(format!(
                            "wait_replicas={value:?} is not a number of replicas from 1 to 15"
                        ))
                    })?
            }
            "wait_timeout" if waits(&scheme) => options.wait_timeout = positive(&name, &value)?,
            "pool_size" => {
                options.pool_size =
                    value
                        .parse()
                        .ok()
                        .filter(|&n: &usize| n > 0)
                        .ok_or_else(|| {
                            Error::invalid_argument(format!(
                                "pool_size={value:?} is not a positive whole number"
                            ))
                        })?
            }
            name if own.contains(&name) => rest.push((name.to_owned(), value.into_owned())),
            name => return Err(unknown_option(name, &scheme, own)),
        }
    }
    if rest.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(&rest);
    }
    let endpoint = match &*scheme {
        "memory" => {
            if parsed.host_str().is_some_and(|h| !h.is_empty()) || parsed.path().len() > 1 {
                return Err(Error::invalid_argument(format!(
                    "{url:?}: memory:// takes no host or path"
                )));
            }
            Endpoint::Memory
        }
        "memcached" | "memcached+unix" => match pool {
            None => Endpoint::Memcached(parsed),
            Some(servers) => Endpoint::MemcachedPool(
                servers
                    .iter()
                    .map(|server| {
                        let mut one = Url::parse(server).map_err(|e| {
                            Error::invalid_argument(format!(
                                "{url:?}: {server:?} is not a valid memcached server"
                            ))
                            .with_source(e)
                        })?;
                        one.set_query(parsed.query());
                        Ok(one)
                    })
                    .collect::<Result<_>>()?,
            ),
        },
        _ => Endpoint::Redis(parsed),
    };
    check(&endpoint, &options)?;
    Ok((endpoint, options))
}

/// A `redis+cluster://[userinfo@]h1:p1,h2:p2[/][?query]` URL: each seed is parsed as
/// `node_scheme + userinfo@hN:pN/?query` (so the options and their errors are those of
/// `redis://`).
fn parse_cluster(url: &str, node_scheme: &str, rest: &str) -> Result<(Endpoint, Options)> {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let shown = crate::error::redact(url).into_owned();
    if !matches!(tail.split(['?', '#']).next(), Some("" | "/")) {
        return Err(Error::invalid_argument(format!(
            "{shown:?}: a Redis Cluster URL takes no path (a cluster has only database 0)"
        )));
    }
    let query = tail.find('?').map(|q| &tail[q..]).unwrap_or("");
    let mut seeds = Vec::new();
    let mut options = None;
    for host in hosts.split(',') {
        if host.is_empty() {
            return Err(Error::invalid_argument(format!(
                "{shown:?} lists an empty seed node (expected host:port,host:port)"
            )));
        }
        let (endpoint, o) = parse(&format!("{node_scheme}{userinfo}{host}/{query}"))?;
        let Endpoint::Redis(seed) = endpoint else {
            unreachable!("a redis:// URL")
        };
        seeds.push(seed);
        options = Some(o);
    }
    let options = options.expect("split yields at least one seed");
    if options.wait_replicas > 0 {
        return Err(Error::invalid_argument(format!(
            "{shown:?}: wait_replicas is not supported on a Redis Cluster (WAIT must follow \
             the write on its connection, which the cluster client does not expose)"
        )));
    }
    Ok((Endpoint::RedisCluster(seeds), options))
}

/// A Redlock quorum URL: `redis+quorum://[userinfo@]h1:p1,h2:p2[/db][?query]`
/// (`rediss+quorum://` alike) or `redis+quorum+unix:///a.sock,/b.sock[?query]` (a
/// comma inside a path is `%2C`). Each node is parsed as a URL of `node_scheme`
/// (`userinfo@hN:pN/db?query`, `/x.sock?query`), so the options and their errors are
/// those of one Redis server; `node_timeout` is the quorum's own.
fn parse_quorum(
    url: &str,
    scheme: &str,
    node_scheme: &str,
    rest: &str,
) -> Result<(Endpoint, Options)> {
    let shown = crate::error::redact(url).into_owned();
    let unix = node_scheme == "redis+unix://";
    let (nodes_part, query) = match rest.find(['?', '#']) {
        Some(q) => rest.split_at(q),
        None => (rest, ""),
    };
    let (nodes_part, tail, userinfo) = if unix {
        (nodes_part, "", "")
    } else {
        let end = nodes_part.find('/').unwrap_or(nodes_part.len());
        let (authority, path) = nodes_part.split_at(end);
        match authority.rfind('@') {
            Some(at) => (&authority[at + 1..], path, &authority[..=at]),
            None => (authority, path, ""),
        }
    };
    // The quorum's own option, taken out before the nodes are parsed.
    let scheme_name = scheme.trim_end_matches("://");
    let mut node_timeout = DEFAULT_NODE_TIMEOUT;
    let mut kept = Vec::new();
    if let Some(q) = query.strip_prefix('?') {
        for (name, value) in
            url::form_urlencoded::parse(q.split('#').next().unwrap_or("").as_bytes())
        {
            if name == "node_timeout" {
                node_timeout = positive(&name, &value)?;
                continue;
            }
            let own = backend_options(node_scheme.trim_end_matches("://")).unwrap_or(&[]);
            if !COMMON_OPTIONS.contains(&&*name) && !own.contains(&&*name) {
                let mut known: Vec<&str> = own.to_vec();
                known.push("node_timeout");
                return Err(unknown_option(&name, scheme_name, &known));
            }
            kept.push((name.into_owned(), value.into_owned()));
        }
    }
    let query = if kept.is_empty() {
        String::new()
    } else {
        let mut q = url::form_urlencoded::Serializer::new(String::from("?"));
        q.extend_pairs(&kept);
        q.finish()
    };
    let mut nodes: Vec<Url> = Vec::new();
    let mut options = None;
    for node in nodes_part.split(',') {
        if node.is_empty() {
            return Err(Error::invalid_argument(format!(
                "{shown:?} lists an empty node (expected {})",
                if unix {
                    "/a.sock,/b.sock,/c.sock"
                } else {
                    "host:port,host:port,host:port"
                }
            )));
        }
        let one = if unix {
            format!("{node_scheme}{node}{query}")
        } else {
            let path = if tail.is_empty() { "/" } else { tail };
            format!("{node_scheme}{userinfo}{node}{path}{query}")
        };
        let (endpoint, o) = parse(&one)?;
        let Endpoint::Redis(parsed) = endpoint else {
            unreachable!("a single Redis server's URL")
        };
        let same = |a: &Url| {
            a.host_str() == parsed.host_str()
                && a.port_or_known_default() == parsed.port_or_known_default()
                && a.path() == parsed.path()
        };
        if nodes.iter().any(same) {
            return Err(Error::invalid_argument(format!(
                "{shown:?} lists the node {node:?} twice (a quorum counts distinct servers)"
            )));
        }
        nodes.push(parsed);
        options = Some(o);
    }
    let n = nodes.len();
    if n < 3 || n.is_multiple_of(2) || n > MAX_QUORUM_NODES {
        return Err(Error::invalid_argument(format!(
            "{shown:?} lists {n} node{}: a Redlock quorum takes an odd number of \
             independent servers, 3 to {MAX_QUORUM_NODES} (3 or 5 as a rule)",
            if n == 1 { "" } else { "s" }
        )));
    }
    let options = options.expect("at least three nodes");
    Ok((
        Endpoint::RedisQuorum {
            nodes,
            node_timeout,
        },
        options,
    ))
}

/// Checks options against the backend they are for (after a builder changed them).
pub(crate) fn check(endpoint: &Endpoint, options: &Options) -> Result<()> {
    check_lock_suffix(&options.lock_suffix)?;
    if let Endpoint::Memcached(_) | Endpoint::MemcachedPool(_) = endpoint {
        // The suffix is part of every lock key: memcached's key rules apply to it (the
        // length of a whole key is checked when a lock is taken).
        key::check_memcached(&options.lock_suffix)
            .map_err(|e| Error::invalid_argument(format!("lock_suffix: {}", e.message())))?;
    }
    Ok(())
}

/// The servers of a memcached pool URL, each as a single-server URL with the pool
/// URL's path, query and fragment (`memcached://a,b:2/?q` → `memcached://a/?q`,
/// `memcached://b:2/?q`; `memcached+unix:///x.sock,/y.sock?q` → `memcached+unix:///x.sock?q`,
/// `memcached+unix:///y.sock?q`), or `None` for any other URL. A comma inside a socket
/// path is written `%2C`.
fn split_memcached_pool(url: &str) -> Option<Vec<String>> {
    let (scheme, rest) = url.split_once("://")?;
    let end = |s: &str, stops: &[char]| s.find(stops).unwrap_or(s.len());
    if scheme.eq_ignore_ascii_case("memcached") {
        let at = end(rest, &['/', '?', '#']);
        let (authority, tail) = rest.split_at(at);
        authority.contains(',').then(|| {
            authority
                .split(',')
                .map(|server| format!("{scheme}://{server}{tail}"))
                .collect()
        })
    } else if scheme.eq_ignore_ascii_case("memcached+unix") {
        let at = end(rest, &['?', '#']);
        let (path, tail) = rest.split_at(at);
        path.contains(',').then(|| {
            path.split(',')
                .map(|socket| format!("{scheme}://{socket}{tail}"))
                .collect()
        })
    } else {
        None
    }
}

/// The rule every backend shares: a lock suffix is not empty.
pub(crate) fn check_lock_suffix(suffix: &[u8]) -> Result<()> {
    if suffix.is_empty() {
        return Err(Error::invalid_argument(
            "lock_suffix must not be empty (a lock would overwrite the key it guards)",
        ));
    }
    Ok(())
}

fn unknown_option(name: &str, scheme: &str, own: &[&str]) -> Error {
    let waiting = if waits(scheme) || scheme == "redis+sentinel" {
        WAIT_OPTIONS
    } else {
        &[]
    };
    let known: Vec<&str> = COMMON_OPTIONS
        .iter()
        .chain(own)
        .chain(waiting)
        .copied()
        .collect();
    let hint = known
        .iter()
        .filter(|k| edit_distance(k, name) <= 2)
        .min_by_key(|k| edit_distance(k, name))
        .map(|k| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default();
    Error::invalid_argument(format!(
        "unknown option {name:?} for {scheme}://{hint}; it takes {}",
        known.join(", ")
    ))
}

/// Levenshtein distance, for the hint on a misspelt option.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

fn positive(name: &str, value: &str) -> Result<Duration> {
    let secs: f64 = value.parse().map_err(|_| {
        Error::invalid_argument(format!("{name}={value:?} is not a number of seconds"))
    })?;
    let d =
        seconds(secs).map_err(|e| Error::invalid_argument(format!("{name}: {}", e.message())))?;
    if d.is_zero() {
        return Err(Error::invalid_argument(format!(
            "{name} must be longer than zero"
        )));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn memory_with_namespace() {
        let (e, o) = parse("memory://?namespace=app:").unwrap();
        assert_eq!(e, Endpoint::Memory);
        assert_eq!(o.namespace, b"app:");
        let (_, o) = parse("memory://").unwrap();
        assert!(o.namespace.is_empty());
    }

    #[test]
    fn network_options_are_taken_and_the_rest_is_kept() {
        let (e, o) = parse(
            "redis://u:p@127.0.0.1:6380/2?namespace=n&connect_timeout=0.5&pool_size=3&protocol=resp3",
        )
        .unwrap();
        assert_eq!(o.connect_timeout, Duration::from_millis(500));
        assert_eq!(o.pool_size, 3);
        assert_eq!(o.namespace, b"n");
        let Endpoint::Redis(u) = e else {
            panic!("{e:?}")
        };
        assert_eq!(u.as_str(), "redis://u:p@127.0.0.1:6380/2?protocol=resp3");
    }

    #[test]
    fn bad_urls_are_clear_errors() {
        for bad in [
            "",
            "memory",
            "nosuch://x",
            "memory://host",
            "memory://?bogus=1",
            "redis://h?respone_timeout=0.2",
            "redis+unix:///s.sock?bogus=1",
            "redis://h?connect_timeout=-1",
            "redis://h?connect_timeout=NaN",
            "redis://h?connect_timeout=5e-324",
            "redis://h?response_timeout=0",
            "redis://h?pool_size=0",
            "redis://h?pool_size=x",
            "redis://h?lock_suffix=",
            "memcached://h?lock_suffix=a%20b",
            "memcached://h?lock_suffix=a%0Ab",
            "http://[::1",
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}: {err}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }

    /// Every scheme refuses an option it does not know, naming it and the options it
    /// takes; the options its backend reads itself stay in the URL it gets.
    #[test]
    fn unknown_options_are_refused_on_every_scheme() {
        for scheme in [
            "memory://",
            "redis://h",
            "rediss://h",
            "redis+unix:///r.sock",
            "unix:///r.sock",
            "memcached://h",
            "memcached+unix:///m.sock",
        ] {
            let url = format!("{scheme}?respone_timeout=0.2");
            let err = parse(&url).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{url}: {err}");
            let m = err.message();
            assert!(m.contains("\"respone_timeout\""), "{m}");
            assert!(m.contains("did you mean \"response_timeout\""), "{m}");
            assert!(m.contains("namespace, lock_suffix, connect_timeout"), "{m}");
            // An option of another scheme is unknown here too.
            let other = if scheme.starts_with("memcached") {
                "protocol=resp3"
            } else {
                "max_poll_interval=1"
            };
            let err = parse(&format!("{scheme}?{other}")).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{scheme}: {err}");
        }
        let err = parse("redis+unix:///r.sock?nonsense=1").unwrap_err();
        assert!(
            err.message().ends_with(
                "it takes namespace, lock_suffix, connect_timeout, response_timeout, \
                 pool_size, protocol, db, user, pass, wait_replicas, wait_timeout"
            ),
            "{err}"
        );
        assert!(!err.message().contains("did you mean"), "{err}");
    }

    #[test]
    fn cluster_urls_list_seeds() {
        let (e, o) =
            parse("redis+cluster://u:p%40x@10.0.0.1:7000,h2:7001/?namespace=n&protocol=resp3")
                .unwrap();
        let Endpoint::RedisCluster(seeds) = &e else {
            panic!("{e:?}")
        };
        let seeds: Vec<&str> = seeds.iter().map(Url::as_str).collect();
        assert_eq!(
            seeds,
            [
                "redis://u:p%40x@10.0.0.1:7000/?protocol=resp3",
                "redis://u:p%40x@h2:7001/?protocol=resp3"
            ]
        );
        assert_eq!(o.namespace, b"n");
        assert!(!format!("{e:?}").contains("p%40x"), "{e:?}");
        let (e, _) = parse("rediss+cluster://h:1").unwrap();
        assert!(matches!(&e, Endpoint::RedisCluster(s) if s[0].scheme() == "rediss"));
        for bad in [
            "redis+cluster://h:1,,h:2",
            "redis+cluster://h:1/2",
            "redis+cluster://h:1?respone_timeout=1",
            "redis+cluster://",
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}: {err}");
        }
    }

    #[test]
    fn quorum_urls_list_nodes() {
        let nodes = |url: &str| match parse(url).unwrap() {
            (
                Endpoint::RedisQuorum {
                    nodes,
                    node_timeout,
                },
                o,
            ) => (
                nodes.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
                node_timeout,
                o,
            ),
            other => panic!("{url}: {other:?}"),
        };
        let (urls, timeout, o) = nodes(
            "redis+quorum://u:s%40x@a:1,b:2,[::1]:3/2?namespace=n&node_timeout=0.25&protocol=resp3",
        );
        assert_eq!(
            urls,
            [
                "redis://u:s%40x@a:1/2?protocol=resp3",
                "redis://u:s%40x@b:2/2?protocol=resp3",
                "redis://u:s%40x@[::1]:3/2?protocol=resp3",
            ]
        );
        assert_eq!(timeout, Duration::from_millis(250));
        assert_eq!(o.namespace, b"n");
        let (urls, timeout, _) =
            nodes("redis+quorum+unix:///r/a.sock,/r/b%2Cc.sock,/r/c.sock?db=1");
        assert_eq!(
            urls,
            [
                "redis+unix:///r/a.sock?db=1",
                "redis+unix:///r/b%2Cc.sock?db=1",
                "redis+unix:///r/c.sock?db=1",
            ]
        );
        assert_eq!(timeout, DEFAULT_NODE_TIMEOUT);
        let (urls, _, _) = nodes("rediss+quorum://a,b,c,d,e");
        assert_eq!(urls.len(), 5);
        assert!(urls[4].starts_with("rediss://e"), "{urls:?}");
        let (e, _) = parse("redis+quorum://:secret@a,b,c").unwrap();
        assert!(!format!("{e:?}").contains("secret"), "{e:?}");
        for bad in [
            "redis+quorum://a,b",
            "redis+quorum://a,b,c,d",
            "redis+quorum://a",
            "redis+quorum://a,b,c,d,e,f,g,h,i,j,k",
            "redis+quorum://a,,c",
            "redis+quorum://a:1,b:2,a:1",
            "redis+quorum+unix:///a.sock,/b.sock,/a.sock",
            "redis+quorum://a,b,c?node_timeout=0",
            "redis+quorum://a,b,c?node_timeout=x",
            "redis+quorum://a,b,c?nodetimeout=1",
            "redis+quorum://:secret@a,b,c?bogus=1",
            "redis+quorum://a,b,c?max_poll_interval=1",
            "redis+quorum://a,b,c?wait_replicas=1",
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}: {err}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
        let err = parse("redis+quorum://a,b,c?nodetimeout=1").unwrap_err();
        assert!(
            err.message().contains("did you mean \"node_timeout\""),
            "{err}"
        );
    }

    #[test]
    fn backend_options_stay_in_the_backend_url() {
        let kept = |url: &str| match parse(url).unwrap().0 {
            Endpoint::Redis(u) | Endpoint::Memcached(u) => u.query().map(str::to_owned),
            Endpoint::MemcachedPool(urls) => urls[0].query().map(str::to_owned),
            Endpoint::RedisQuorum { nodes, .. } => nodes[0].query().map(str::to_owned),
            Endpoint::Memory | Endpoint::RedisCluster(_) | Endpoint::RedisSentinel(_) => None,
        };
        assert_eq!(
            kept("redis://h/3?protocol=resp3&namespace=n").as_deref(),
            Some("protocol=resp3")
        );
        assert_eq!(kept("rediss://h?protocol=2").as_deref(), Some("protocol=2"));
        assert_eq!(
            kept("redis+unix:///r.sock?db=2&user=u&pass=p&protocol=resp3&pool_size=2").as_deref(),
            Some("db=2&user=u&pass=p&protocol=resp3")
        );
        assert_eq!(
            kept("memcached://h?max_poll_interval=0.002&lock_suffix=.l").as_deref(),
            Some("max_poll_interval=0.002")
        );
        assert_eq!(kept("memcached+unix:///m.sock?namespace=x"), None);
    }

    #[test]
    fn memcached_pools_split_into_one_url_per_server() {
        let servers = |url: &str| match parse(url).unwrap() {
            (Endpoint::MemcachedPool(urls), _) => {
                urls.iter().map(|u| u.to_string()).collect::<Vec<_>>()
            }
            other => panic!("{url}: {other:?}"),
        };
        assert_eq!(
            servers("memcached://a,b:11212,[::1]:5?namespace=n&distribution=rendezvous"),
            [
                "memcached://a?distribution=rendezvous",
                "memcached://b:11212?distribution=rendezvous",
                "memcached://[::1]:5?distribution=rendezvous",
            ]
        );
        assert_eq!(
            servers("memcached+unix:///run/a.sock,/run/b%2Cc.sock?max_poll_interval=0.002"),
            [
                "memcached+unix:///run/a.sock?max_poll_interval=0.002",
                "memcached+unix:///run/b%2Cc.sock?max_poll_interval=0.002",
            ]
        );
        // One server stays a plain memcached endpoint.
        assert!(matches!(
            parse("memcached://a:1?distribution=ketama").unwrap().0,
            Endpoint::Memcached(_)
        ));
        let err = parse("memcached://a,b:x").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    }

    #[test]
    fn lock_suffix_option() {
        assert_eq!(parse("memory://").unwrap().1.lock_suffix, b"-lock");
        let (_, o) = parse("redis://h?lock_suffix=%3Alock%20x").unwrap();
        assert_eq!(o.lock_suffix, b":lock x", "Redis keys may hold any byte");
        let (_, o) = parse("memcached://h?lock_suffix=.lk").unwrap();
        assert_eq!(o.lock_suffix, b".lk");
        let err = parse("memory://?lock_suffix=").unwrap_err();
        assert!(err.message().contains("lock_suffix"), "{err}");
    }

    /// A URL's password never reaches a message, whatever is wrong with the URL.
    #[test]
    fn passwords_stay_out_of_parse_errors() {
        for bad in [
            "redis://:secret@[::1",
            "redis://user:secret@[::1",
            "redis://:secret@h?bogus=1",
            "redis://user:secret@h?connect_timeout=x",
            "redis+unix:///r.sock?pass=secret&bogus=1",
            "nosuch://user:secret@h",
            "memory://user:secret@h",
            "memcached://user:secret@h?bogus=1",
            "memcached://:secret@h?lock_suffix=",
        ] {
            let err = parse(bad).unwrap_err();
            for text in [err.to_string(), format!("{err:?}")] {
                assert!(!text.contains("secret"), "{bad}: {text}");
            }
        }
        for url in [
            "redis://:secret@h",
            "redis+unix:///r.sock?pass=secret",
            "memcached://h",
        ] {
            let (endpoint, _) = parse(url).unwrap();
            let debug = format!("{endpoint:?}");
            assert!(!debug.contains("secret"), "{debug}");
            assert!(debug.contains("://"), "{debug}");
        }
    }
}
