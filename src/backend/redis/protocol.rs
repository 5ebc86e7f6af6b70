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

use redis::{Cmd, ErrorKind as RedisKind, RedisError, Value};
use url::Url;

use crate::core::lease::deadline;
use crate::core::wait::{Claim, Wake};
use crate::error::{Error, ErrorKind, Result};
use crate::value::Ttl;

/// A Lua script, sent by `EVALSHA` and, when the server does not know it yet
/// (`NOSCRIPT`), by `EVAL` (which also caches it on the server).
pub(crate) struct Lua {
    pub(crate) source: &'static str,
    pub(crate) sha: std::sync::LazyLock<String>,
}

/// The Lua that increments the fence key `$key` into `fence` (see [`CLAIM_FENCED`]),
/// shared by [`CLAIM_FENCED`] and [`FENCE`].
macro_rules! fence_increment {
    ($key:literal) => {
        concat!(
            "local fence = redis.pcall('INCR', ",
            $key,
            r")
if type(fence) == 'table' then
  return redis.error_reply('AIOLOCK_FENCE not a fencing token')
end
if fence < 1 then
  redis.call('DECR', ",
            $key,
            r")
  return redis.error_reply('AIOLOCK_FENCE not a fencing token')
end
if fence == 1 then
  local t = redis.call('TIME')
  fence = t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
  redis.call('SET', ",
            $key,
            r", fence)
elseif fence >= 9007199254740992 then
  fence = redis.call('GET', ",
            $key,
            r")
end"
        )
    };
}

macro_rules! lua {
    ($source:expr) => {
        Lua {
            source: $source,
            sha: std::sync::LazyLock::new(|| redis::Script::new($source).get_hash().to_owned()),
        }
    };
}
pub(crate) use lua;

/// Owner-checked release: `KEYS[1]` the lock key, `ARGV[1]` the token, `ARGV[2]` the
/// channel. Deletes the key only if it holds the token, then publishes *the token* on
/// the channel, so that waiters in every process wake, each only for the holder it
/// lost to. Returns 1 when it deleted, else 0.
pub(crate) static RELEASE: Lua = lua!(
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[1])
  return 1
end
return 0"
);

/// [`RELEASE`] on a Redis Cluster: `KEYS[1]` the lock key, `KEYS[2]` its channel (in
/// the key's slot, see `cluster.rs`: a channel of another slot is refused with
/// `CROSSSLOT`, never published to nobody), `ARGV[1]` the token. Publishes with
/// `SPUBLISH` (Redis >= 7), to the slot's shard only.
pub(crate) static RELEASE_SHARDED: Lua = lua!(
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SPUBLISH', KEYS[2], ARGV[1])
  return 1
end
return 0"
);

/// [`RELEASE`] without its announcement: `KEYS[1]` the lock key, `ARGV[1]` the token.
/// Deletes the key only if it holds the token; 1 when it did, else 0. For a Redis
/// Cluster slot that migrates, where [`RELEASE_SHARDED`] is refused (`TRYAGAIN`: it
/// names the channel as a second key, which never exists) and the release is
/// published by a separate `SPUBLISH`.
pub(crate) static RELEASE_UNANNOUNCED: Lua = lua!(
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0"
);

/// [`DELETE`] on a Redis Cluster: `KEYS[1]` the key, `KEYS[2]` its channel.
pub(crate) static DELETE_SHARDED: Lua = lua!(
    r"local n = redis.call('DEL', KEYS[1])
if n > 0 then
  redis.call('SPUBLISH', KEYS[2], '')
end
return n"
);

/// Delete that wakes lock waiters: `KEYS[1]` the key, `ARGV[1]` its channel. Publishes
/// an empty message, which is never a token: a delete of a lock key releases whoever
/// held it. Returns the number of keys deleted (0 or 1).
pub(crate) static DELETE: Lua = lua!(
    r"local n = redis.call('DEL', KEYS[1])
if n > 0 then
  redis.call('PUBLISH', ARGV[1], '')
end
return n"
);

/// A waiter's re-check of a lock key, in one round trip: `{GET, PTTL}` of `KEYS[1]`
/// (a missing key reads as nil and -2).
pub(crate) static PROBE: Lua =
    lua!(r"return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}");

/// Owner-checked renewal: `KEYS[1]` the lock key, `ARGV[1]` the token, `ARGV[2]` the
/// new lease in milliseconds. Sets the key's TTL to the lease only if it holds the
/// token. Returns 1 when it did, else 0. Sending it twice renews twice, from the
/// second arrival: safe to resend.
pub(crate) static EXTEND: Lua = lua!(
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0"
);

/// A lock claim with a fencing token, in one round trip: `KEYS[1]` the lock key,
/// `KEYS[2]` its fence key, `ARGV[1]` the token, `ARGV[2]` the lease in milliseconds.
///
/// - The lock key holds another token: returns `{0, holder}`, nothing written.
/// - It holds ours (a resend whose first attempt ran): returns `{1, fence}`, the fence
///   key's value, which is ours (nobody increments it while we hold the lock).
/// - It is free: increments the fence key and sets the lock key, returning
///   `{1, fence}`. A fence key that was absent (`INCR` answers 1) is set from the
///   server's clock in microseconds (`TIME`), so that a counter lost by a restart
///   without persistence still grows.
///
/// A fence key that is not a counter (not an integer, another type, at the top of
/// the integers, or not positive: that `INCR` is undone) fails with an
/// `AIOLOCK_FENCE` error before the lock key is written (Redis does not roll a
/// script back: nothing may be written before a check that can fail). Three
/// commands on the uncontended path (`GET`, `INCR`, `SET`); the fence is an integer
/// reply while Lua's numbers are exact (below 2^53), else read back as a string.
pub(crate) static CLAIM_FENCED: Lua = lua!(concat!(
    r"local held = redis.call('GET', KEYS[1])
if held then
  if held ~= ARGV[1] then
    return {0, held}
  end
  return {1, redis.call('GET', KEYS[2]) or ''}
end
",
    fence_increment!("KEYS[2]"),
    r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, fence}"
));

/// The fence part of [`CLAIM_FENCED`] alone: increments the fence key `KEYS[1]` (set
/// from `TIME` when absent) and returns the fence, or fails with `AIOLOCK_FENCE`
/// before anything is written. For a Redis Cluster slot that migrates, where
/// [`CLAIM_FENCED`] is refused (`TRYAGAIN`: it names two keys of the slot, and one
/// is missing on each master): the claim is then a `SET … NX GET`, this script, and
/// a read that the lock key is still ours (see `generic.rs`).
pub(crate) static FENCE: Lua = lua!(concat!(fence_increment!("KEYS[1]"), "\nreturn fence"));

/// The error code [`CLAIM_FENCED`] answers for a fence key that is not a counter.
pub(crate) const FENCE_ERROR: &str = "AIOLOCK_FENCE";

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
    /// `EVALSHA sha <number of keys> keys… args…`
    pub(crate) fn evalsha(&self, keys: &[&[u8]], args: &[&[u8]]) -> Cmd {
        let mut c = sized("EVALSHA", keys, args, self.sha.len());
        c.arg(self.sha.as_str()).arg(keys.len()).arg(keys).arg(args);
        c
    }

    /// `EVAL source <number of keys> keys… args…`, for when the server answered
    /// `NOSCRIPT`.
    pub(crate) fn eval(&self, keys: &[&[u8]], args: &[&[u8]]) -> Cmd {
        let mut c = sized("EVAL", keys, args, self.source.len());
        c.arg(self.source).arg(keys.len()).arg(keys).arg(args);
        c
    }
}

/// An empty script command (`EVAL`, `EVALSHA`) with room for its arguments, so that
/// building it allocates once per buffer instead of growing them argument by argument
/// (on the hot path: each release is one).
fn sized(name: &str, keys: &[&[u8]], args: &[&[u8]], script: usize) -> Cmd {
    let bytes = keys.iter().chain(args).map(|a| a.len()).sum::<usize>();
    let mut c = Cmd::with_capacity(
        3 + keys.len() + args.len(),
        name.len() + script + 20 + bytes,
    );
    c.arg(name);
    c
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

/// `SET key value [NX] [PX ms] [GET]`, built with room for every argument (one
/// allocation per buffer: every lock claim is one).
pub(crate) fn set_cmd(key: &[u8], value: &[u8], ttl: Option<Duration>, nx: bool, get: bool) -> Cmd {
    let mut c = Cmd::with_capacity(7, 3 + key.len() + value.len() + 2 + 2 + 20 + 3);
    c.arg("SET").arg(key).arg(value);
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

/// What a `SET … NX GET` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NxGet {
    /// The key was absent: our value is stored now.
    Stored,
    /// The key held this value: nothing was written.
    Held(Vec<u8>),
}

impl NxGet {
    /// Whether `value` is under the key now: stored by this command, or found there.
    /// For a unique value (a lock token) finding it means an earlier attempt of ours
    /// was applied before its reply was lost.
    pub(crate) fn is_ours(&self, value: &[u8]) -> bool {
        match self {
            NxGet::Stored => true,
            NxGet::Held(old) => old == value,
        }
    }
}

/// The reply of `SET … NX GET` (Redis >= 7.0).
pub(crate) fn nx_get(reply: Value) -> Result<NxGet> {
    match reply {
        Value::Nil | Value::Okay => Ok(NxGet::Stored),
        Value::BulkString(old) => Ok(NxGet::Held(old)),
        other => Err(unexpected("SET NX GET", &other)),
    }
}

/// A lock claim's answer: `SET key token NX PX lease GET` (one round trip) stored our
/// token, or found another holder's, or found *ours* (a resent claim whose first
/// attempt was applied before its reply was lost: won).
pub(crate) fn claim(reply: Value, token: &[u8]) -> Result<Claim> {
    Ok(match nx_get(reply)? {
        NxGet::Held(holder) if holder != token => Claim::Held {
            holder: Some(holder),
        },
        NxGet::Stored | NxGet::Held(_) => Claim::Won,
    })
}

/// The reply of [`CLAIM_FENCED`]: the claim and, when won, the fence. A won reply
/// without a fence (the fence key was removed while we held the lock: only a resend
/// can see that) is an error: the lock is ours but its fence is unknown.
pub(crate) fn claim_fenced(reply: Value) -> Result<(Claim, Option<u64>)> {
    let what = "the fenced claim script";
    let Value::Array(items) = reply else {
        return Err(unexpected(what, &reply));
    };
    match <[Value; 2]>::try_from(items) {
        Ok([Value::Int(0), Value::BulkString(holder)]) => Ok((
            Claim::Held {
                holder: Some(holder),
            },
            None,
        )),
        Ok([Value::Int(1), Value::Int(fence)]) if fence > 0 => {
            Ok((Claim::Won, Some(fence.unsigned_abs())))
        }
        Ok([Value::Int(1), Value::BulkString(fence)]) => {
            let fence = std::str::from_utf8(&fence)
                .ok()
                .and_then(|f| f.parse::<u64>().ok())
                .filter(|f| *f > 0)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Protocol,
                        "the fence key was removed or changed while this claim held the \
                         lock: its fencing token is unknown",
                    )
                })?;
            Ok((Claim::Won, Some(fence)))
        }
        Ok(other) => Err(unexpected(what, &Value::Array(other.into()))),
        Err(items) => Err(unexpected(what, &Value::Array(items))),
    }
}

/// The error for a write whose reply was lost and whose effect cannot be read back
/// for sure: it may or may not have been applied.
pub(crate) fn outcome_unknown(what: &str, server: &str) -> Error {
    Error::new(
        ErrorKind::Connection,
        format!(
            "the connection to Redis dropped before the reply to {what} on {server}: \
             it may or may not have been applied (outcome unknown)"
        ),
    )
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

/// A waiter's re-check of the lock key ([`PROBE`]): its value and time to live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) ttl: Ttl,
}

/// The reply of [`PROBE`].
pub(crate) fn probe(reply: Value) -> Result<Probe> {
    let Value::Array(items) = reply else {
        return Err(unexpected("the re-check script", &reply));
    };
    let mut items = items.into_iter();
    let (Some(value), Some(pttl), None) = (items.next(), items.next(), items.next()) else {
        return Err(Error::new(
            ErrorKind::Protocol,
            "unexpected reply to the re-check script from Redis: not two items",
        ));
    };
    Ok(Probe {
        value: bytes(value)?,
        ttl: ttl(int("PTTL", &pttl)?)?,
    })
}

/// What a waiter does once it is subscribed and has re-checked the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The holder is already gone: the key is absent or holds another token. It was
    /// held when the caller's claim lost, so it was released in between:
    /// [`Wake::Released`].
    Gone,
    /// Listen for a release until `until`; `until_is_deadline` tells whether that is
    /// the caller's deadline (else the holder's lease end).
    Listen {
        until: Instant,
        until_is_deadline: bool,
    },
}

/// Plans a wait from the re-check: gone when the key no longer holds `holder` (any
/// value when the holder is unknown); else never past the caller's `deadline`, never
/// past the holder's lease end (plus one millisecond, as `PTTL` rounds down; an
/// expiring lease publishes nothing).
pub(crate) fn plan(
    probe: &Probe,
    holder: Option<&[u8]>,
    deadline_at: Instant,
    now: Instant,
) -> Plan {
    let held = match (&probe.value, holder) {
        (None, _) => false,
        (Some(value), Some(holder)) => value == holder,
        (Some(_), None) => true,
    };
    if !held {
        return Plan::Gone;
    }
    let listen_to_deadline = Plan::Listen {
        until: deadline_at,
        until_is_deadline: true,
    };
    match probe.ttl {
        Ttl::Missing => Plan::Gone,
        Ttl::Persistent => listen_to_deadline,
        Ttl::Expires(left) => {
            let end = deadline(now, left + Duration::from_millis(1));
            if end < deadline_at {
                Plan::Listen {
                    until: end,
                    until_is_deadline: false,
                }
            } else {
                listen_to_deadline
            }
        }
    }
}

/// Whether a message published on a lock's channel ends the wait for `holder`: the
/// release of that holder (its token), or a delete of the key (an empty message). A
/// release of an earlier holder heard late does not count. Any message counts when
/// the holder is unknown.
pub(crate) fn counts_message(payload: &[u8], holder: Option<&[u8]>) -> bool {
    holder.is_none_or(|h| payload.is_empty() || payload == h)
}

/// Whether a re-check of the lock key made while waiting for `holder` shows the holder
/// gone (the key absent, or holding another token): released without a message
/// (aiocache's release, an operator's `DEL`, an eviction, a lost message).
pub(crate) fn counts_observation(value: Option<&[u8]>, holder: Option<&[u8]>) -> bool {
    match (value, holder) {
        (None, _) => true,
        (Some(v), Some(h)) => v != h,
        (Some(_), None) => false,
    }
}

/// The longest pause between two re-checks of a waited-for key: a release that
/// publishes nothing is noticed within this.
pub(crate) const RECHECK_CAP: Duration = Duration::from_millis(100);

/// The pause before re-check number `attempt` (0-based) of a waited-for key: 5 ms,
/// doubling, at most [`RECHECK_CAP`] (5, 10, 20, 40, 80, 100, 100 … ms): a short
/// contention costs few commands, a long one 10 a second per key.
pub(crate) fn recheck_delay(attempt: u32) -> Duration {
    const FIRST: Duration = Duration::from_millis(5);
    FIRST
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .map_or(RECHECK_CAP, |d| d.min(RECHECK_CAP))
}

/// Tells a forked child from its parent: connections opened under another generation
/// belong to the parent (a child reusing them would read the parent's replies).
pub(crate) fn fork_generation() -> u64 {
    crate::core::fork::generation()
}

/// What a subscription heard while it listened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heard {
    /// The holder's release (or a delete of the key) was announced on the channel.
    Message,
    /// A re-check found the holder gone without a message.
    Gone,
    /// Nothing until the end of the wait.
    Silence,
    /// The subscriber connection broke: a release may have been missed.
    Lost,
}

/// How close to the holder's lease end a re-check that finds the holder gone is taken
/// for an expiry rather than a release (the lease end is known from `PTTL` to within a
/// round trip).
pub(crate) const EXPIRY_MARGIN: Duration = Duration::from_millis(10);

/// How a planned wait that listened until `until` ended, as a [`Wake`], at `now`. A
/// lost subscription reads as [`Wake::Vacant`]: the caller tries the key again and,
/// if it is still held, waits again on a fresh subscription. A holder found gone by a
/// re-check released its lock, unless its lease may have just ended (then the caller
/// claims the key again, which is safe: an expiry is never taken for a release).
pub(crate) fn wake(heard: Heard, until: Instant, until_is_deadline: bool, now: Instant) -> Wake {
    match heard {
        Heard::Message => Wake::Released,
        Heard::Gone if until_is_deadline || now + EXPIRY_MARGIN < until => Wake::Released,
        Heard::Silence if until_is_deadline => Wake::Deadline,
        Heard::Gone | Heard::Silence | Heard::Lost => Wake::Vacant,
    }
}

/// A pub/sub message (RESP2 array or RESP3 push): its channel and payload.
pub(crate) fn message(reply: &Value) -> Option<(&[u8], &[u8])> {
    let items = match reply {
        Value::Push {
            kind: redis::PushKind::Message | redis::PushKind::SMessage,
            data,
        } => data.as_slice(),
        Value::Array(items) => match items.split_first() {
            Some((Value::BulkString(k), rest)) if k == b"message" => rest,
            _ => return None,
        },
        _ => return None,
    };
    match items {
        [Value::BulkString(channel), Value::BulkString(payload)] => Some((channel, payload)),
        _ => None,
    }
}

/// The channel a pub/sub reply (RESP2 array or RESP3 push) confirms a `SUBSCRIBE` of.
pub(crate) fn subscribed(reply: &Value) -> Option<&[u8]> {
    let items = match reply {
        Value::Push {
            kind: redis::PushKind::Subscribe | redis::PushKind::SSubscribe,
            data,
        } => data.as_slice(),
        Value::Array(items) => match items.split_first() {
            Some((Value::BulkString(k), rest)) if k == b"subscribe" => rest,
            _ => return None,
        },
        _ => return None,
    };
    match items.first() {
        Some(Value::BulkString(channel)) => Some(channel),
        _ => None,
    }
}

/// The channel a pub/sub reply (RESP2 array or RESP3 push) says is unsubscribed now:
/// the answer to an `UNSUBSCRIBE`, or (a Redis Cluster node whose slot moved away)
/// the server's own.
pub(crate) fn unsubscribed(reply: &Value) -> Option<&[u8]> {
    let items = match reply {
        Value::Push {
            kind: redis::PushKind::Unsubscribe | redis::PushKind::SUnsubscribe,
            data,
        } => data.as_slice(),
        Value::Array(items) => match items.split_first() {
            Some((Value::BulkString(k), rest)) if k == b"unsubscribe" || k == b"sunsubscribe" => {
                rest
            }
            _ => return None,
        },
        _ => return None,
    };
    match items.first() {
        Some(Value::BulkString(channel)) => Some(channel),
        _ => None,
    }
}

/// Whether a Redis Cluster refused a command because its slot is migrating:
/// `TRYAGAIN` (a script that names several keys of the slot, some of them moved or
/// missing), or a redirection (`ASK`, `MOVED`) the `redis` crate had no retries left
/// to follow.
pub(crate) fn is_migrating(e: &RedisError) -> bool {
    matches!(e.code(), Some("TRYAGAIN" | "ASK" | "MOVED"))
}

/// Reads the fence [`FENCE`] answers (an integer, or a string past 2^53).
pub(crate) fn fence(reply: &Value) -> Result<u64> {
    let fence = match reply {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(s) => std::str::from_utf8(s).ok().and_then(|s| s.parse().ok()),
        _ => None,
    };
    fence
        .filter(|f| *f > 0)
        .ok_or_else(|| unexpected("the fence script", reply))
}

/// A timeout of the client's own (a deadline, a missing confirmation), as the `redis`
/// crate reports one: an I/O error of kind `TimedOut`.
pub(crate) fn timed_out(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        what.to_owned(),
    ))
}

/// Whether a failed command may be sent once more on a fresh connection: the
/// connection dropped (killed, server restarted), not a timeout or an error reply.
pub(crate) fn is_dropped(e: &RedisError) -> bool {
    !e.is_timeout() && (e.is_connection_dropped() || e.is_io_error())
}

/// Whether the server refused a write because it is a replica (`READONLY`): nothing
/// was applied, and the master is elsewhere now.
pub(crate) fn is_readonly(e: &RedisError) -> bool {
    e.code() == Some("READONLY")
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

/// A client like [`client`] that speaks RESP3 (push messages), for the shared
/// subscriber connection of either flavor.
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
    if e.kind() == RedisKind::MasterNameNotFoundBySentinel {
        // Our Sentinel client's own (see `sentinel.rs`): its detail is the whole story.
        let detail = e.detail().unwrap_or("no Redis master is reachable");
        return Error::new(ErrorKind::Connection, format!("{detail} ({what})"));
    }
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
    } else if matches!(e.code(), Some("CLUSTERDOWN" | "MASTERDOWN"))
        || e.kind() == RedisKind::ClusterConnectionNotFound
    {
        (
            ErrorKind::Connection,
            format!("no master of the Redis Cluster serves the key's slot now ({what})"),
        )
    } else if is_migrating(&e) {
        (
            ErrorKind::Connection,
            format!("the Redis Cluster kept moving the key's slot ({what})"),
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

    fn held(value: &[u8], ttl: Ttl) -> Probe {
        Probe {
            value: Some(value.to_vec()),
            ttl,
        }
    }

    #[test]
    fn plan_caps_at_lease_end_or_deadline() {
        let now = Instant::now();
        let d = now + Duration::from_secs(1);
        let h = Some(&b"h"[..]);
        let gone = Probe {
            value: None,
            ttl: Ttl::Missing,
        };
        assert_eq!(plan(&gone, h, d, now), Plan::Gone);
        assert_eq!(
            plan(&held(b"h", Ttl::Persistent), h, d, now),
            Plan::Listen {
                until: d,
                until_is_deadline: true
            }
        );
        let soon = held(b"h", Ttl::Expires(Duration::from_millis(100)));
        assert_eq!(
            plan(&soon, h, d, now),
            Plan::Listen {
                until: now + Duration::from_millis(101),
                until_is_deadline: false
            }
        );
        assert_eq!(
            plan(&held(b"h", Ttl::Expires(Duration::from_secs(5))), h, d, now),
            Plan::Listen {
                until: d,
                until_is_deadline: true
            }
        );
        // Another holder's token: ours is gone.
        assert_eq!(plan(&soon, Some(b"other"), d, now), Plan::Gone);
        // Holder unknown: any value is a holder.
        assert!(matches!(plan(&soon, None, d, now), Plan::Listen { .. }));
    }

    #[test]
    fn only_the_holders_release_counts() {
        assert!(counts_message(b"h", Some(b"h")));
        assert!(counts_message(b"", Some(b"h")), "a delete releases anyone");
        assert!(
            !counts_message(b"h0", Some(b"h")),
            "an earlier holder's release"
        );
        assert!(counts_message(b"h0", None));
        assert!(counts_observation(None, Some(b"h")));
        assert!(counts_observation(Some(b"h1"), Some(b"h")));
        assert!(!counts_observation(Some(b"h"), Some(b"h")));
        assert!(counts_observation(None, None));
        assert!(!counts_observation(Some(b"x"), None));
    }

    #[test]
    fn recheck_backs_off_to_its_cap() {
        let ms: Vec<u128> = (0..8).map(|a| recheck_delay(a).as_millis()).collect();
        assert_eq!(ms, [5, 10, 20, 40, 80, 100, 100, 100]);
        assert_eq!(recheck_delay(u32::MAX), RECHECK_CAP);
    }

    #[test]
    fn wake_reasons() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        assert_eq!(wake(Heard::Message, now, false, now), Wake::Released);
        assert_eq!(wake(Heard::Silence, later, true, later), Wake::Deadline);
        assert_eq!(wake(Heard::Silence, later, false, later), Wake::Vacant);
        assert_eq!(wake(Heard::Lost, later, true, now), Wake::Vacant);
        // A re-check found the holder gone: released, unless at its lease end.
        assert_eq!(wake(Heard::Gone, later, false, now), Wake::Released);
        assert_eq!(wake(Heard::Gone, later, true, later), Wake::Released);
        let at_end = later - Duration::from_millis(5);
        assert_eq!(wake(Heard::Gone, later, false, at_end), Wake::Vacant);
    }

    #[test]
    fn replies() {
        assert!(stored(&Value::Okay).unwrap());
        assert!(!stored(&Value::Nil).unwrap());
        assert_eq!(
            stored(&Value::Int(1)).unwrap_err().kind(),
            ErrorKind::Protocol
        );
        let t = b"t".to_vec();
        assert_eq!(claim(Value::Nil, &t).unwrap(), Claim::Won);
        assert_eq!(claim(Value::BulkString(t.clone()), &t).unwrap(), Claim::Won);
        assert_eq!(
            claim(Value::BulkString(b"u".to_vec()), &t).unwrap(),
            Claim::Held {
                holder: Some(b"u".to_vec())
            }
        );
        assert!(nx_get(Value::Int(0)).is_err());
        let p = probe(Value::Array(vec![Value::Nil, Value::Int(-2)])).unwrap();
        assert_eq!(
            p,
            Probe {
                value: None,
                ttl: Ttl::Missing
            }
        );
        assert!(probe(Value::Array(vec![Value::Nil])).is_err());
        let msg = Value::Array(vec![
            Value::BulkString(b"message".to_vec()),
            Value::BulkString(b"c".to_vec()),
            Value::BulkString(b"tok".to_vec()),
        ]);
        assert_eq!(message(&msg), Some((&b"c"[..], &b"tok"[..])));
        assert_eq!(subscribed(&msg), None);
        let push = Value::Push {
            kind: redis::PushKind::Subscribe,
            data: vec![Value::BulkString(b"c".to_vec()), Value::Int(1)],
        };
        assert_eq!(subscribed(&push), Some(&b"c"[..]));
        assert_eq!(message(&push), None);
    }

    #[test]
    fn fenced_claim_replies() {
        let won = Value::Array(vec![
            Value::Int(1),
            Value::BulkString(b"1796187926928641".to_vec()),
        ]);
        assert_eq!(
            claim_fenced(won).unwrap(),
            (Claim::Won, Some(1_796_187_926_928_641))
        );
        // Beyond 2^53 (where a Lua number would round): exact.
        let big = Value::Array(vec![
            Value::Int(1),
            Value::BulkString(b"9007199254740993".to_vec()),
        ]);
        assert_eq!(claim_fenced(big).unwrap().1, Some(9_007_199_254_740_993));
        let int = Value::Array(vec![Value::Int(1), Value::Int(42)]);
        assert_eq!(claim_fenced(int).unwrap(), (Claim::Won, Some(42)));
        let held = Value::Array(vec![Value::Int(0), Value::BulkString(b"h".to_vec())]);
        assert_eq!(
            claim_fenced(held).unwrap(),
            (
                Claim::Held {
                    holder: Some(b"h".to_vec())
                },
                None
            )
        );
        // Ours, but the fence key was removed meanwhile: the fence is unknown.
        let unknown = Value::Array(vec![Value::Int(1), Value::BulkString(Vec::new())]);
        assert_eq!(
            claim_fenced(unknown).unwrap_err().kind(),
            ErrorKind::Protocol
        );
        for bad in [
            Value::Int(1),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Int(2), Value::BulkString(b"1".to_vec())]),
            Value::Array(vec![Value::Int(1), Value::Int(0)]),
            Value::Array(vec![Value::Int(1), Value::BulkString(b"0".to_vec())]),
        ] {
            assert_eq!(claim_fenced(bad).unwrap_err().kind(), ErrorKind::Protocol);
        }
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
