//! Backend URLs and connection options.
//!
//! | URL | backend |
//! |---|---|
//! | `memory://` | in-process memory (no server) |
//! | `redis://[user:password@]host[:port][/db]`, `rediss://…`, `redis+unix:///path.sock` | Redis |
//! | `memcached://host[:port]`, `memcached+unix:///path.sock` | memcached |
//!
//! Every scheme takes the query options `namespace`, `connect_timeout` and
//! `response_timeout` (seconds, e.g. `0.5`) and `pool_size`.

use std::time::Duration;

use url::Url;

use crate::core::lease::seconds;
use crate::error::{Error, Result};

/// Where a cache's data lives, parsed from a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Endpoint {
    /// `memory://`: in this process.
    Memory,
    /// `redis://`, `rediss://`, `redis+unix://`: the URL as the `redis` crate takes it,
    /// without aiolock's own query options.
    Redis(Url),
    /// `memcached://`, `memcached+unix://`, without aiolock's own query options.
    Memcached(Url),
}

/// Options common to every backend. Network backends honour the timeouts and the
/// pool size; the memory backend has nothing to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// Prefixed to every key of the cache (aiocache's `namespace`).
    pub namespace: Vec<u8>,
    /// How long to wait for a connection to be established.
    pub connect_timeout: Duration,
    /// How long to wait for the answer to one command.
    pub response_timeout: Duration,
    /// The connection pool's size: memcached's in both flavors, Redis's blocking flavor
    /// (its async flavor multiplexes one connection).
    pub pool_size: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            pool_size: 8,
        }
    }
}

/// Parses a cache URL into its endpoint and options.
pub fn parse(url: &str) -> Result<(Endpoint, Options)> {
    let mut parsed = Url::parse(url).map_err(|e| {
        Error::invalid_argument(format!("{url:?} is not a valid cache URL")).with_source(e)
    })?;
    let mut options = Options::default();
    let mut rest: Vec<(String, String)> = Vec::new();
    for (name, value) in parsed.query_pairs() {
        match &*name {
            "namespace" => options.namespace = value.as_bytes().to_vec(),
            "connect_timeout" => options.connect_timeout = positive(&name, &value)?,
            "response_timeout" => options.response_timeout = positive(&name, &value)?,
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
            _ => rest.push((name.into_owned(), value.into_owned())),
        }
    }
    if rest.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(&rest);
    }
    let endpoint = match parsed.scheme() {
        "memory" => {
            if let Some((name, _)) = rest.first() {
                return Err(Error::invalid_argument(format!(
                    "unknown option {name:?} for memory://"
                )));
            }
            if parsed.host_str().is_some_and(|h| !h.is_empty()) || parsed.path().len() > 1 {
                return Err(Error::invalid_argument(format!(
                    "{url:?}: memory:// takes no host or path"
                )));
            }
            Endpoint::Memory
        }
        "redis" | "rediss" | "redis+unix" | "unix" => {
            // The options the `redis` crate reads; it would ignore any other.
            let known: &[&str] = match parsed.scheme() {
                "redis" | "rediss" => &["protocol"],
                _ => &["db", "user", "pass", "protocol"],
            };
            if let Some((name, _)) = rest.iter().find(|(n, _)| !known.contains(&n.as_str())) {
                return Err(Error::invalid_argument(format!(
                    "unknown option {name:?} for {}://",
                    parsed.scheme()
                )));
            }
            Endpoint::Redis(parsed)
        }
        "memcached" | "memcached+unix" => Endpoint::Memcached(parsed),
        other => {
            return Err(Error::invalid_argument(format!(
                "unsupported scheme {other:?} in {url:?} (expected memory, redis, rediss, \
                 redis+unix, memcached or memcached+unix)"
            )));
        }
    };
    Ok((endpoint, options))
}

fn positive(name: &str, value: &str) -> Result<Duration> {
    let secs: f64 = value.parse().map_err(|_| {
        Error::invalid_argument(format!("{name}={value:?} is not a number of seconds"))
    })?;
    let d = seconds(secs)?;
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
            "redis://h?response_timeout=0",
            "redis://h?pool_size=0",
            "redis://h?pool_size=x",
            "http://[::1",
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}: {err}");
        }
    }
}
