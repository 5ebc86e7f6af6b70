//! `redis+sentinel://` URLs: the sentinels of a Redis Sentinel deployment and the name
//! of the master they monitor.
//!
//! `redis+sentinel://[user:password@]host[:port][,host[:port]…]/master_name[?options]`
//!
//! - the hosts are the sentinels (port 26379 unless given);
//! - the credentials before the `@` are the data nodes' (the master's), as in
//!   `redis://`; the sentinels' own are the options `sentinel_user` and
//!   `sentinel_password` (none by default: sentinels often run without);
//! - the path is the master's name, the database is the option `db` (default 0);
//! - `protocol` goes to the data nodes; every other option is aiolock's own
//!   (`namespace`, the timeouts, `pool_size`, `wait_replicas`, `wait_timeout`).
//!
//! ```
//! use aiolock::config::{self, Endpoint};
//!
//! let url = "redis+sentinel://:s3cret@10.0.0.1,10.0.0.2:26380/mymaster?db=2&sentinel_password=x";
//! let (endpoint, _) = config::parse(url)?;
//! let Endpoint::RedisSentinel(sentinel) = endpoint else { unreachable!() };
//! assert_eq!(sentinel.master_name, "mymaster");
//! assert_eq!(sentinel.sentinels[0].as_str(), "redis://:x@10.0.0.1:26379");
//! assert_eq!(sentinel.sentinels[1].port(), Some(26380));
//! assert_eq!(sentinel.node.path(), "/2");
//! assert!(!format!("{sentinel:?}").contains("s3cret"));
//! # Ok::<(), aiolock::Error>(())
//! ```

use url::Url;

use super::{COMMON_OPTIONS, Endpoint, Options, WAIT_OPTIONS, backend_options, unknown_option};
use crate::error::{Error, Result, redact};

/// The port a sentinel listens on unless the URL says otherwise.
pub(crate) const DEFAULT_PORT: u16 = 26379;

/// A Redis Sentinel deployment, as a `redis+sentinel://` URL names it (see the
/// [module docs](super#)). Its `Debug` form shows no password.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentinelEndpoint {
    /// One `redis://host:port` URL per sentinel, in the URL's order, with the
    /// sentinels' credentials.
    pub sentinels: Vec<Url>,
    /// The name the sentinels know the master by.
    pub master_name: String,
    /// How to reach a data node: a `redis://` URL with the data nodes' credentials,
    /// database and the `redis` crate's options; its host and port are replaced by
    /// the address the sentinels name.
    pub node: Url,
}

impl std::fmt::Debug for SentinelEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sentinels: Vec<_> = self
            .sentinels
            .iter()
            .map(|u| redact(u.as_str()).into_owned())
            .collect();
        f.debug_struct("SentinelEndpoint")
            .field("sentinels", &sentinels)
            .field("master_name", &self.master_name)
            .field("node", &redact(self.node.as_str()))
            .finish()
    }
}

/// Parses `redis+sentinel://` + `rest` (`url` is the whole URL, for messages).
pub(super) fn parse(url: &str, rest: &str) -> Result<(Endpoint, Options)> {
    let shown = redact(url).into_owned();
    let bad = |why: &str| Error::invalid_argument(format!("{shown:?}: {why}"));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let (path, query) = match tail.find(['?', '#']) {
        Some(q) => tail.split_at(q),
        None => (tail, ""),
    };
    let name = path.strip_prefix('/').unwrap_or(path);
    if name.is_empty() || name.contains('/') {
        return Err(bad(
            "expected redis+sentinel://host:port[,host:port…]/master_name (the path is the \
             master's name; the database is the option db)",
        ));
    }
    let master_name = percent_decoded(name).ok_or_else(|| bad("the master's name is not UTF-8"))?;
    let query = query.strip_prefix('?').unwrap_or(query);
    let query = query.split('#').next().unwrap_or("");
    let own = backend_options("redis+sentinel").unwrap_or_default();
    let (mut sentinel_user, mut sentinel_password, mut db) = (None, None, None);
    let mut rest = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "sentinel_user" => sentinel_user = Some(value.into_owned()),
            "sentinel_password" => sentinel_password = Some(value.into_owned()),
            "db" => {
                let n: u32 = value.parse().map_err(|_| {
                    Error::invalid_argument(format!("db={value:?} is not a database number"))
                })?;
                db = Some(n);
            }
            k if COMMON_OPTIONS.contains(&k) || WAIT_OPTIONS.contains(&k) || own.contains(&k) => {
                rest.append_pair(k, &value);
            }
            k => return Err(unknown_option(k, "redis+sentinel", own)),
        }
    }
    // The data nodes' URL, parsed as a `redis://` one (its options and errors are
    // those of `redis://`); its host stands for the address the sentinels name.
    let node = format!(
        "redis://{userinfo}master/{}?{}",
        db.unwrap_or(0),
        rest.finish()
    );
    let (Endpoint::Redis(node), options) = super::parse(&node)? else {
        unreachable!("a redis:// URL")
    };
    let mut sentinels = Vec::new();
    for host in hosts.split(',') {
        if host.is_empty() {
            return Err(bad(
                "lists an empty sentinel (expected host[:port],host[:port])",
            ));
        }
        let mut sentinel = Url::parse(&format!("redis://{host}"))
            .ok()
            .filter(|u| u.host_str().is_some_and(|h| !h.is_empty()) && u.path().is_empty())
            .ok_or_else(|| bad(&format!("{host:?} is not a sentinel's host[:port]")))?;
        if sentinel.port().is_none() {
            let _ = sentinel.set_port(Some(DEFAULT_PORT));
        }
        if let Some(user) = &sentinel_user {
            let _ = sentinel.set_username(user);
        }
        if let Some(password) = &sentinel_password {
            let _ = sentinel.set_password(Some(password));
        }
        sentinels.push(sentinel);
    }
    let endpoint = SentinelEndpoint {
        sentinels,
        master_name,
        node,
    };
    Ok((Endpoint::RedisSentinel(endpoint), options))
}

fn percent_decoded(s: &str) -> Option<String> {
    url::form_urlencoded::parse(format!("n={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.contains('\u{FFFD}'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::config::parse;

    fn sentinel(url: &str) -> (SentinelEndpoint, Options) {
        match parse(url) {
            Ok((Endpoint::RedisSentinel(s), o)) => (s, o),
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn sentinels_master_and_node() {
        let (s, o) = sentinel(
            "redis+sentinel://u:p%40x@10.0.0.1,[::1]:26380/my%20master?db=3&protocol=resp3\
             &namespace=n&sentinel_user=su&sentinel_password=sp&wait_replicas=2&wait_timeout=0.2",
        );
        let sentinels: Vec<&str> = s.sentinels.iter().map(Url::as_str).collect();
        assert_eq!(
            sentinels,
            ["redis://su:sp@10.0.0.1:26379", "redis://su:sp@[::1]:26380"]
        );
        assert_eq!(s.master_name, "my master");
        assert_eq!(s.node.as_str(), "redis://u:p%40x@master/3?protocol=resp3");
        assert_eq!(o.namespace, b"n");
        assert_eq!(o.wait_replicas, 2);
        assert_eq!(o.wait_timeout, std::time::Duration::from_millis(200));
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("p%40x") && !debug.contains("sp@"),
            "{debug}"
        );
        // No credentials: none for the sentinels either.
        let (s, o) = sentinel("redis+sentinel://h/m");
        assert_eq!(s.sentinels[0].as_str(), "redis://h:26379");
        assert_eq!(s.node.as_str(), "redis://master/0");
        assert_eq!(o.wait_replicas, 0);
    }

    #[test]
    fn bad_sentinel_urls_are_clear_errors() {
        for bad in [
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel://h:1/m/2",
            "redis+sentinel://h:1,,h:2/m",
            "redis+sentinel:///m",
            "redis+sentinel://h:x/m",
            "redis+sentinel://h/m?db=x",
            "redis+sentinel://h/m?respone_timeout=1",
            "redis+sentinel://h/m?max_poll_interval=1",
            "redis+sentinel://h/m?wait_replicas=0",
            "redis+sentinel://h/m?wait_replicas=16",
            "redis+sentinel://h/m?wait_timeout=0",
            "redis+sentinel://:secret@h/m?sentinel_pasword=secret",
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}: {err}");
            let text = err.to_string();
            assert!(!text.contains('\n') && !text.contains("secret"), "{text}");
        }
        let err = parse("redis+sentinel://h/m?sentinel_pasword=1").unwrap_err();
        assert!(
            err.message().contains("did you mean \"sentinel_password\""),
            "{err}"
        );
        assert!(err.message().contains("wait_replicas"), "{err}");
    }
}
