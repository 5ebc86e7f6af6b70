//! What both flavors of the memcached backend share and compile once: the server
//! address and settings from a URL, and the shape of a failed exchange.
//!
//! The protocol itself is in [`meta`](super::meta), the polling schedule
//! in [`core::poll`](crate::core::poll), the backend logic (written once for both
//! flavors) in `generic.rs`, and the sockets in the flavor transports
//! `blocking.rs` / `nonblocking.rs`.

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::backend::memcached::routing::Distribution;
use crate::config::{Endpoint, Options};
use crate::core::lease::seconds;
use crate::core::poll::DEFAULT_MAX_DELAY;
use crate::error::{Error, ErrorKind, Result};

/// The default memcached port.
pub(crate) const DEFAULT_PORT: u16 = 11211;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Addr {
    /// `memcached://host[:port]`
    Tcp { host: String, port: u16 },
    /// `memcached+unix:///path`
    Unix(PathBuf),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Addr::Tcp { host, port } => write!(f, "{host}:{port}"),
            Addr::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Everything a memcached backend needs to know, from its URL and options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// The pool's servers, in the URL's order (one for a plain URL).
    pub servers: Vec<Addr>,
    /// How keys are spread over `servers`.
    pub distribution: Distribution,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_size: usize,
    /// The longest sleep between two polls of a waiter.
    pub max_poll_delay: Duration,
}

/// Parses the servers of a memcached endpoint: one `memcached://` or
/// `memcached+unix://` URL per server (with the options
/// [`config::parse`](crate::config::parse) already took out of them; a pool's servers
/// share one query).
///
/// memcached's own query options: `max_poll_interval` (seconds, default 0.004): the
/// longest a waiter sleeps between two polls of a held lock; `distribution`
/// (`ketama`, the default, or `rendezvous`): which server of a pool owns a key.
pub(crate) fn settings(urls: &[Url], options: &Options) -> Result<Settings> {
    let Some(first) = urls.first() else {
        return Err(Error::invalid_argument("a memcached pool needs a server"));
    };
    let (max_poll_delay, distribution) = query_options(first)?;
    let mut servers: Vec<Addr> = Vec::with_capacity(urls.len());
    for url in urls {
        let addr = server(url)?;
        if servers.contains(&addr) {
            return Err(Error::invalid_argument(format!(
                "the memcached server {addr} is listed twice"
            )));
        }
        servers.push(addr);
    }
    Ok(Settings {
        servers,
        distribution,
        connect_timeout: options.connect_timeout,
        response_timeout: options.response_timeout,
        pool_size: options.pool_size.max(1),
        max_poll_delay,
    })
}

/// The options of a memcached URL's query: `max_poll_interval`, `distribution`.
fn query_options(url: &Url) -> Result<(Duration, Distribution)> {
    let bad = |what: &str| Error::invalid_argument(format!("{url}: {what}"));
    let mut max_poll_delay = DEFAULT_MAX_DELAY;
    let mut distribution = Distribution::default();
    for (name, value) in url.query_pairs() {
        match &*name {
            "max_poll_interval" => {
                let secs: f64 = value.parse().map_err(|_| {
                    bad(&format!(
                        "max_poll_interval={value:?} is not a number of seconds"
                    ))
                })?;
                max_poll_delay = seconds(secs)?;
                if max_poll_delay.is_zero() || max_poll_delay > Duration::from_secs(60) {
                    return Err(bad("max_poll_interval must be above 0 and at most 60 s"));
                }
            }
            "distribution" => {
                distribution = Distribution::parse(&value).ok_or_else(|| {
                    bad(&format!(
                        "distribution={value:?}: expected ketama (libmemcached's, the \
                         default) or rendezvous (pymemcache's HashClient)"
                    ))
                })?;
            }
            other => return Err(bad(&format!("unknown option {other:?} for memcached"))),
        }
    }
    Ok((max_poll_delay, distribution))
}

/// The address one server URL names.
fn server(url: &Url) -> Result<Addr> {
    let bad = |what: &str| Error::invalid_argument(format!("{url}: {what}"));
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("memcached takes no user name or password"));
    }
    if url.fragment().is_some() {
        return Err(bad("a memcached URL has no fragment"));
    }
    let addr = match url.scheme() {
        "memcached" => {
            let host = match url.host() {
                Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
                Some(url::Host::Ipv4(ip)) => ip.to_string(),
                Some(url::Host::Ipv6(ip)) => ip.to_string(),
                _ => return Err(bad("memcached:// needs a host")),
            };
            if !matches!(url.path(), "" | "/") {
                return Err(bad(
                    "memcached:// takes no path (for a unix socket use memcached+unix:///path)",
                ));
            }
            Addr::Tcp {
                host,
                port: url.port().unwrap_or(DEFAULT_PORT),
            }
        }
        "memcached+unix" => {
            if url.host_str().is_some_and(|h| !h.is_empty()) || url.port().is_some() {
                return Err(bad(
                    "memcached+unix:// takes a path only: memcached+unix:///path",
                ));
            }
            let path = url
                .to_file_path()
                .map_err(|()| bad("memcached+unix:// needs an absolute socket path"))?;
            if path.as_os_str().len() <= 1 {
                return Err(bad("memcached+unix:// needs a socket path"));
            }
            Addr::Unix(path)
        }
        other => return Err(bad(&format!("{other:?} is not a memcached scheme"))),
    };
    Ok(addr)
}

/// Parses a full cache URL that must name memcached.
pub(crate) fn settings_from_url(url: &str) -> Result<Settings> {
    match crate::config::parse(url)? {
        (Endpoint::Memcached(parsed), options) => settings(&[parsed], &options),
        (Endpoint::MemcachedPool(servers), options) => settings(&servers, &options),
        (other, _) => Err(Error::invalid_argument(format!(
            "{url:?} names {other:?}, not memcached"
        ))),
    }
}

/// A failed exchange on one connection.
#[derive(Debug)]
pub(crate) struct Failure {
    pub error: Error,
    /// What the failure tells about the request.
    pub fate: Fate,
}

/// What a failed exchange tells about its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Unknown, and nothing to learn soon (a timeout, a malformed reply): never sent
    /// again.
    Unknown,
    /// The request could not be written: the server had closed the connection, so
    /// it never read it. Safe to send again on a new connection, whatever it does.
    Unsent,
    /// The request was written, then the server closed the connection before one
    /// byte of the reply came: it may or may not have executed it (a server that
    /// restarted before reading it, or one that ran it and lost the connection).
    /// Only a request that is safe to repeat is sent again; another must be read
    /// back.
    Unanswered,
}

impl Failure {
    /// A failure after which the request must not be repeated.
    pub fn fatal(error: Error) -> Self {
        Failure {
            error,
            fate: Fate::Unknown,
        }
    }

    /// The request could not be written: unsent when the server had closed the
    /// connection.
    pub fn send(addr: &Addr, e: std::io::Error) -> Self {
        Failure {
            fate: if is_closed(&e) {
                Fate::Unsent
            } else {
                Fate::Unknown
            },
            error: io_error(addr, "cannot send the request", e),
        }
    }

    /// The server closed the connection (`e`: with an error); unanswered when nothing
    /// of the reply had been `received`.
    pub fn closed(addr: &Addr, received: bool, e: Option<std::io::Error>) -> Self {
        let fate = match &e {
            Some(e) if !is_closed(e) => Fate::Unknown,
            _ if received => Fate::Unknown,
            _ => Fate::Unanswered,
        };
        let error = match e {
            Some(e) => io_error(addr, "cannot read the reply", e),
            None => Error::new(
                ErrorKind::Connection,
                format!("memcached at {addr}: the server closed the connection"),
            ),
        };
        Failure { error, fate }
    }
}

/// Maps an IO error on `addr` to an aiolock error.
pub(crate) fn io_error(addr: &Addr, doing: &str, e: std::io::Error) -> Error {
    use std::io::ErrorKind as Io;
    let kind = match e.kind() {
        Io::TimedOut | Io::WouldBlock => ErrorKind::Timeout,
        _ => ErrorKind::Connection,
    };
    Error::new(kind, format!("memcached at {addr}: {doing}")).with_source(e)
}

/// Whether an IO error says the peer had closed the connection.
pub(crate) fn is_closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as Io;
    matches!(
        e.kind(),
        Io::BrokenPipe | Io::ConnectionReset | Io::ConnectionAborted | Io::UnexpectedEof
    )
}

/// The error for a reply the command does not expect.
pub(crate) fn unexpected(command: &str, reply: &crate::backend::memcached::meta::Reply) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("memcached answered {} to {command}", reply.code()),
    )
}

/// The error for a server that runs with CAS disabled.
pub(crate) fn cas_disabled(key: &[u8]) -> Error {
    Error::new(
        ErrorKind::Backend,
        format!(
            "memcached returned CAS 0 for {:?}: the server runs with CAS disabled (-C), \
             so an owner-checked release or a compare-and-set is impossible; restart it \
             without -C",
            String::from_utf8_lossy(key)
        ),
    )
}

/// The next reply in `replies`, once complete (a Protocol error for bytes that are
/// not a reply: drop the connection). Bytes after it are left for the next one.
pub(crate) fn next_reply(
    replies: &mut crate::backend::memcached::meta::ReplyBuffer,
) -> Result<Option<crate::backend::memcached::meta::Reply>, Failure> {
    replies.next_reply().map_err(Failure::fatal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Settings> {
        settings_from_url(url)
    }

    #[test]
    fn tcp_and_unix_urls() {
        let s = parse("memcached://cache.example:11311?namespace=x&pool_size=3").unwrap();
        assert_eq!(
            s.servers,
            [Addr::Tcp {
                host: "cache.example".into(),
                port: 11311
            }]
        );
        assert_eq!(s.pool_size, 3);
        assert_eq!(s.max_poll_delay, DEFAULT_MAX_DELAY);
        let s = parse("memcached://127.0.0.1").unwrap();
        assert_eq!(s.servers[0].to_string(), "127.0.0.1:11211");
        assert_eq!(s.distribution, Distribution::Ketama);
        let s = parse("memcached://[::1]:5/").unwrap();
        assert_eq!(s.servers[0].to_string(), "[::1]:5");
        let s = parse("memcached+unix:///tmp/mc.sock?max_poll_interval=0.005").unwrap();
        assert_eq!(s.servers, [Addr::Unix("/tmp/mc.sock".into())]);
        assert_eq!(s.max_poll_delay, Duration::from_millis(5));
    }

    #[test]
    fn pool_urls() {
        let s = parse("memcached://a,b:11212,[::1]?distribution=rendezvous&pool_size=2").unwrap();
        let names: Vec<String> = s.servers.iter().map(Addr::to_string).collect();
        assert_eq!(names, ["a:11211", "b:11212", "[::1]:11211"]);
        assert_eq!(s.distribution, Distribution::Rendezvous);
        assert_eq!(s.pool_size, 2);
        let s = parse("memcached+unix:///a.sock,/b%2Cc.sock?distribution=ketama").unwrap();
        assert_eq!(
            s.servers,
            [Addr::Unix("/a.sock".into()), Addr::Unix("/b,c.sock".into())]
        );
        assert_eq!(s.distribution, Distribution::Ketama);
    }

    #[test]
    fn bad_pool_urls() {
        for (url, says) in [
            ("memcached://a,b?distribution=modula", "distribution"),
            ("memcached://a,,b", "needs a host"),
            ("memcached://a,", "needs a host"),
            ("memcached://a,a:11211", "listed twice"),
            ("memcached://a,u@b", "no user name"),
            ("memcached+unix:///a.sock,b.sock", "a path only"),
            ("memcached+unix:///a.sock,/a.sock", "listed twice"),
            ("memcached://a,/b.sock", "takes no path"),
        ] {
            let err = parse(url).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{url}: {err}");
            assert!(err.message().contains(says), "{url}: {err}");
            assert!(!err.message().contains('\n'), "{url}: {err}");
        }
    }

    #[test]
    fn bad_urls() {
        for url in [
            "memcached://",
            "memcached://u:p@h",
            "memcached://h/path",
            "memcached://h?bogus=1",
            "memcached://h?max_poll_interval=0",
            "memcached://h?max_poll_interval=x",
            "memcached://h#frag",
            "memcached+unix://host/tmp/s",
            "memcached+unix:///",
            "memory://",
        ] {
            let err = parse(url).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{url}: {err}");
        }
    }
}
