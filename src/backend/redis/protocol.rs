//! The Redis backend's flavor-free half, compiled once: the Lua scripts, the commands
//! (built once, sent by either flavor), reply interpretation, URL handling and the
//! mapping of `redis` crate errors onto [`ErrorKind`].
//!
//! The flavor halves (`blocking.rs`, `nonblocking.rs` beside this file) only
//! send commands and listen on channels; `generic.rs` drives both.

// Parts serve only one flavor; a build may have either, both or (with only the
// `redis` feature) neither.
#![cfg_attr(not(all(feature = "blocking", feature = "async")), allow(dead_code))]

use std::time::{Duration, Instant};

use redis::{Cmd, ErrorKind as RedisKind, RedisError, Value, cmd};
use url::Url;

use crate::core::lease::deadline;
use crate::core::wait::Wake;
use crate::error::{Error, ErrorKind, Result};
use crate::value::Ttl;

/// A Lua script, sent by `EVALSHA` and, when the server does not know it yet
/// (`NOSCRIPT`), by `EVAL` (which also caches it on the server).
pub(crate) struct Lua {
    pub(crate) source: &'static str,
    sha: std::sync::LazyLock<String>,
}

macro_rules! lua {
    ($source:expr) => {
        Lua {
            source: $source,
            sha: std::sync::LazyLock::new(|| redis::Script::new($source).get_hash().to_owned()),
        }
    };
}

/// Owner-checked release: `KEYS[1]` the lock key, `ARGV[1]` the token, `ARGV[2]` the
/// channel. Deletes the key only if it holds the token, then publishes on the channel
/// so that waiters in every process wake. Returns 1 when it deleted, else 0.
pub(crate) static RELEASE: Lua = lua!(
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], '')
  return 1
end
return 0"
);

/// Delete that wakes lock waiters: `KEYS[1]` the key, `ARGV[1]` its channel.
/// Returns the number of keys deleted (0 or 1).
pub(crate) static DELETE: Lua = lua!(
    r"local n = redis.call('DEL', KEYS[1])
if n > 0 then
  redis.call('PUBLISH', ARGV[1], '')
end
return n"
);

/// Compare-and-set against the value read: `KEYS[1]` the key, `ARGV[1]` the value
/// read, `ARGV[2]` the new value, `ARGV[3]` a TTL in milliseconds or `''` for none.
/// Returns 1 when it wrote, else 0.
pub(crate) static CAS: Lua = lua!(
    r"if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1"
);

impl Lua {
    /// `EVALSHA sha 1 key args…`
    pub(crate) fn evalsha(&self, key: &[u8], args: &[&[u8]]) -> Cmd {
        let mut c = cmd("EVALSHA");
        c.arg(self.sha.as_str()).arg(1).arg(key).arg(args);
        c
    }

    /// `EVAL source 1 key args…`, for when the server answered `NOSCRIPT`.
    pub(crate) fn eval(&self, key: &[u8], args: &[&[u8]]) -> Cmd {
        let mut c = cmd("EVAL");
        c.arg(self.source).arg(1).arg(key).arg(args);
        c
    }
}

/// Whether the server does not have the script cached (after a restart or `SCRIPT FLUSH`).
pub(crate) fn is_noscript(e: &RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

/// The pub/sub channel a lock key's release is announced on.
pub(crate) fn channel(key: &[u8]) -> Vec<u8> {
    const PREFIX: &[u8] = b"aiolock:release:";
    let mut c = Vec::with_capacity(PREFIX.len() + key.len());
    c.extend_from_slice(PREFIX);
    c.extend_from_slice(key);
    c
}

/// A TTL in whole milliseconds for `PX`, rounded up so a lease is never shortened to 0.
pub(crate) fn millis(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// `SET key value [NX] [PX ms] [GET]`.
pub(crate) fn set_cmd(key: &[u8], value: &[u8], ttl: Option<Duration>, nx: bool, get: bool) -> Cmd {
    let mut c = cmd("SET");
    c.arg(key).arg(value);
    if nx {
        c.arg("NX");
    }
    if let Some(ttl) = ttl {
        c.arg("PX").arg(millis(ttl));
    }
    if get {
        c.arg("GET");
    }
    c
}

/// The reply of `SET … NX`: whether it stored the value.
pub(crate) fn stored(reply: &Value) -> Result<bool> {
    match reply {
        Value::Okay => Ok(true),
        Value::SimpleString(s) if s == "OK" => Ok(true),
        Value::Nil => Ok(false),
        other => Err(unexpected("SET NX", other)),
    }
}

/// The reply of the retry of an add, sent as `SET … NX GET`: the add took effect if the
/// key was absent (nil) or already holds exactly our value (the first attempt was
/// applied before the connection dropped).
pub(crate) fn stored_or_ours(reply: &Value, value: &[u8]) -> Result<bool> {
    match reply {
        Value::Nil | Value::Okay => Ok(true),
        Value::BulkString(old) => Ok(old == value),
        other => Err(unexpected("SET NX GET", other)),
    }
}

/// An integer reply (`EXISTS`, `PTTL`, the scripts).
pub(crate) fn int(what: &str, reply: &Value) -> Result<i64> {
    match reply {
        Value::Int(n) => Ok(*n),
        other => Err(unexpected(what, other)),
    }
}

/// A bulk string or nil (`GET`).
pub(crate) fn bytes(reply: Value) -> Result<Option<Vec<u8>>> {
    match reply {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(b)),
        Value::SimpleString(s) => Ok(Some(s.into_bytes())),
        other => Err(unexpected("GET", &other)),
    }
}

fn unexpected(what: &str, reply: &Value) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("unexpected reply to {what} from Redis: {reply:?}"),
    )
}

/// `PTTL` in milliseconds (-2: no key, -1: no expiry) as a [`Ttl`].
pub(crate) fn ttl(pttl: i64) -> Result<Ttl> {
    match pttl {
        -2 => Ok(Ttl::Missing),
        -1 => Ok(Ttl::Persistent),
        ms if ms >= 0 => Ok(Ttl::Expires(Duration::from_millis(ms.unsigned_abs()))),
        other => Err(Error::new(
            ErrorKind::Protocol,
            format!("unexpected PTTL reply from Redis: {other}"),
        )),
    }
}

/// What a waiter does once it is subscribed and has read the key's `PTTL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The key is already gone. It was held when the caller's add lost, so it was
    /// released in between: [`Wake::Released`].
    Gone,
    /// Listen for a release until `until`; `until_is_deadline` tells whether that is
    /// the caller's deadline (else the holder's lease end).
    Listen {
        until: Instant,
        until_is_deadline: bool,
    },
}

/// Plans a wait from the key's remaining time to live: never past the caller's
/// `deadline`, never past the holder's lease end (plus one millisecond, as `PTTL`
/// rounds down; an expiring lease publishes nothing).
pub(crate) fn plan(ttl: Ttl, deadline_at: Instant, now: Instant) -> Plan {
    match ttl {
        Ttl::Missing => Plan::Gone,
        Ttl::Persistent => Plan::Listen {
            until: deadline_at,
            until_is_deadline: true,
        },
        Ttl::Expires(left) => {
            let end = deadline(now, left + Duration::from_millis(1));
            if end < deadline_at {
                Plan::Listen {
                    until: end,
                    until_is_deadline: false,
                }
            } else {
                Plan::Listen {
                    until: deadline_at,
                    until_is_deadline: true,
                }
            }
        }
    }
}

/// What a subscription heard while it listened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heard {
    /// A release was announced on the channel.
    Message,
    /// Nothing until the end of the wait.
    Silence,
    /// The subscriber connection broke: a release may have been missed.
    Lost,
}

/// How a planned wait ended, as a [`Wake`]. A lost subscription reads as
/// [`Wake::Vacant`]: the caller tries the key again and, if it is still held,
/// waits again on a fresh subscription.
pub(crate) fn wake(heard: Heard, until_is_deadline: bool) -> Wake {
    match heard {
        Heard::Message => Wake::Released,
        Heard::Silence if until_is_deadline => Wake::Deadline,
        Heard::Silence | Heard::Lost => Wake::Vacant,
    }
}

/// Whether a pub/sub reply (RESP2 array or RESP3 push) is a message.
pub(crate) fn is_message(reply: &Value) -> bool {
    match reply {
        Value::Push { kind, .. } => *kind == redis::PushKind::Message,
        Value::Array(items) => {
            matches!(items.first(), Some(Value::BulkString(k)) if k == b"message")
        }
        _ => false,
    }
}

/// Whether a pub/sub reply confirms a `SUBSCRIBE` (`kind` = `b"subscribe"`) or an
/// `UNSUBSCRIBE` (`b"unsubscribe"`).
pub(crate) fn is_confirmation(reply: &Value, kind: &[u8]) -> bool {
    match reply {
        Value::Push { kind: k, .. } => match kind {
            b"subscribe" => *k == redis::PushKind::Subscribe,
            _ => *k == redis::PushKind::Unsubscribe,
        },
        Value::Array(items) => matches!(items.first(), Some(Value::BulkString(k)) if k == kind),
        _ => false,
    }
}

/// Whether a failed command may be sent once more on a fresh connection: the
/// connection dropped (killed, server restarted), not a timeout or an error reply.
pub(crate) fn is_dropped(e: &RedisError) -> bool {
    !e.is_timeout() && (e.is_connection_dropped() || e.is_io_error())
}

/// The Redis client for `url` (aiolock's own options already removed).
pub(crate) fn client(url: &Url) -> Result<redis::Client> {
    if url.scheme() == "rediss" && !cfg!(feature = "redis-tls") {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "rediss:// needs TLS: this build of aiolock lacks the `redis-tls` feature",
        ));
    }
    if matches!(url.scheme(), "redis" | "rediss") && url.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid_argument(format!(
            "{} names no host",
            redacted(url)
        )));
    }
    redis::Client::open(url.clone()).map_err(|e| {
        Error::invalid_argument(format!("{} is not a usable Redis URL", redacted(url)))
            .with_source(e)
    })
}

/// A client like [`client`] that speaks RESP3 (push messages on a multiplexed
/// connection), for the async flavor's shared subscriber.
#[cfg(feature = "async")]
pub(crate) fn resp3(client: &redis::Client) -> redis::RedisResult<redis::Client> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings))
}

/// The URL without its password (nor a unix socket URL's `pass=` option), for
/// messages.
pub(crate) fn redacted(url: &Url) -> String {
    crate::error::redact(url.as_str()).into_owned()
}

/// Maps a `redis` crate error onto an aiolock error; `what` says what was being done.
pub(crate) fn error(e: RedisError, what: &str) -> Error {
    let auth = e.kind() == RedisKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"));
    let (kind, message) = if e.is_timeout() {
        (
            ErrorKind::Timeout,
            format!("Redis did not answer in time ({what})"),
        )
    } else if auth {
        (
            ErrorKind::Backend,
            format!("Redis refused the credentials or the permission ({what})"),
        )
    } else if e.is_connection_refusal() {
        (
            ErrorKind::Connection,
            format!("cannot connect to Redis ({what})"),
        )
    } else if e.is_io_error() || e.is_connection_dropped() {
        (
            ErrorKind::Connection,
            format!("the connection to Redis failed ({what})"),
        )
    } else {
        match e.kind() {
            RedisKind::Parse | RedisKind::UnexpectedReturnType | RedisKind::Client => (
                ErrorKind::Protocol,
                format!("unexpected exchange with Redis ({what})"),
            ),
            RedisKind::InvalidClientConfig => (
                ErrorKind::InvalidArgument,
                format!("invalid Redis configuration ({what})"),
            ),
            _ => (
                ErrorKind::Backend,
                format!("Redis answered an error ({what})"),
            ),
        }
    };
    Error::new(kind, message).with_source(e)
}

/// The connection options a flavor needs, taken from [`Options`](crate::config::Options).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) response: Duration,
}

impl From<&crate::config::Options> for Timeouts {
    fn from(o: &crate::config::Options) -> Self {
        Timeouts {
            connect: o.connect_timeout,
            response: o.response_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_rounds_up_and_never_zero() {
        assert_eq!(millis(Duration::from_nanos(1)), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::from_secs(3)), 3000);
    }

    #[test]
    fn pttl_maps_to_ttl() {
        assert_eq!(ttl(-2).unwrap(), Ttl::Missing);
        assert_eq!(ttl(-1).unwrap(), Ttl::Persistent);
        assert_eq!(ttl(250).unwrap(), Ttl::Expires(Duration::from_millis(250)));
        assert_eq!(ttl(-3).unwrap_err().kind(), ErrorKind::Protocol);
    }

    #[test]
    fn plan_caps_at_lease_end_or_deadline() {
        let now = Instant::now();
        let d = now + Duration::from_secs(1);
        assert_eq!(plan(Ttl::Missing, d, now), Plan::Gone);
        assert_eq!(
            plan(Ttl::Persistent, d, now),
            Plan::Listen {
                until: d,
                until_is_deadline: true
            }
        );
        assert_eq!(
            plan(Ttl::Expires(Duration::from_millis(100)), d, now),
            Plan::Listen {
                until: now + Duration::from_millis(101),
                until_is_deadline: false
            }
        );
        assert_eq!(
            plan(Ttl::Expires(Duration::from_secs(5)), d, now),
            Plan::Listen {
                until: d,
                until_is_deadline: true
            }
        );
    }

    #[test]
    fn wake_reasons() {
        assert_eq!(wake(Heard::Message, false), Wake::Released);
        assert_eq!(wake(Heard::Silence, true), Wake::Deadline);
        assert_eq!(wake(Heard::Silence, false), Wake::Vacant);
        assert_eq!(wake(Heard::Lost, true), Wake::Vacant);
    }

    #[test]
    fn replies() {
        assert!(stored(&Value::Okay).unwrap());
        assert!(!stored(&Value::Nil).unwrap());
        assert_eq!(
            stored(&Value::Int(1)).unwrap_err().kind(),
            ErrorKind::Protocol
        );
        assert!(stored_or_ours(&Value::BulkString(b"t".to_vec()), b"t").unwrap());
        assert!(!stored_or_ours(&Value::BulkString(b"u".to_vec()), b"t").unwrap());
        assert!(stored_or_ours(&Value::Nil, b"t").unwrap());
        let msg = Value::Array(vec![
            Value::BulkString(b"message".to_vec()),
            Value::BulkString(b"c".to_vec()),
            Value::BulkString(vec![]),
        ]);
        assert!(is_message(&msg));
        assert!(!is_confirmation(&msg, b"subscribe"));
    }

    #[test]
    fn urls() {
        let u = Url::parse("redis://user:secret@127.0.0.1:6379/1").unwrap();
        assert!(!redacted(&u).contains("secret"));
        assert!(client(&u).is_ok());
        let u = Url::parse("redis+unix:///tmp/r.sock?user=u&pass=secret&db=2").unwrap();
        assert_eq!(
            redacted(&u),
            "redis+unix:///tmp/r.sock?user=u&pass=***&db=2"
        );
        let e = client(&Url::parse("redis://").unwrap()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let e = client(&Url::parse("redis:///nohost").unwrap()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        if !cfg!(feature = "redis-tls") {
            let e = client(&Url::parse("rediss://h").unwrap()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported);
        }
        assert!(client(&Url::parse("redis+unix:///tmp/x.sock").unwrap()).is_ok());
    }

    #[test]
    fn channel_is_derived_from_the_key() {
        assert_eq!(channel(b"ns:k-lock"), b"aiolock:release:ns:k-lock");
    }
}
