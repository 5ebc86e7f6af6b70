//! Redis Sentinel's flavor-free half, compiled once: the deployment a
//! `redis+sentinel://` URL names (its sentinels, in the order to ask them, and how to
//! reach a data node), the commands and replies of a master's discovery, and the
//! error while no master is reachable.
//!
//! A discovery follows the Sentinel client specification
//! (<https://redis.io/docs/latest/develop/reference/sentinel-clients/>): ask each
//! sentinel in turn for `SENTINEL get-master-addr-by-name <name>`; connect to the
//! address the first one names and check with `ROLE` that it is a master (a sentinel's
//! view may be stale); the sentinel that named it is asked first next time. The
//! flavors' `sentinel_*.rs` do the I/O, each step within the connect timeout.

// Parts serve only one flavor; a build may have either, both or neither.
#![cfg_attr(not(all(feature = "blocking", feature = "async")), allow(dead_code))]

use parking_lot::Mutex;
use redis::{Cmd, RedisError, Value};
use url::Url;

use super::protocol as r;
use crate::config::SentinelEndpoint;
use crate::error::Result;

/// The channel sentinels announce a failover's new master on.
pub(crate) const SWITCH_MASTER: &str = "+switch-master";

/// A Sentinel deployment: its sentinels and how to reach its data nodes.
pub(crate) struct Deployment {
    /// The master's name.
    name: String,
    sentinels: Vec<Sentinel>,
    /// The indices of `sentinels`, in the order to ask them: the one that last named
    /// a master first.
    order: Mutex<Vec<usize>>,
    /// A data node's URL (credentials, database, options); the host is replaced.
    node: Url,
    /// For messages: `the master "name" of the sentinels h:p, h:p`.
    shown: String,
}

struct Sentinel {
    client: redis::Client,
    /// `host:port`, for messages (no credentials).
    addr: String,
}

impl Deployment {
    /// The deployment `endpoint` names (clients are built, nothing is connected).
    pub(crate) fn new(endpoint: &SentinelEndpoint) -> Result<Self> {
        let mut sentinels = Vec::new();
        for url in &endpoint.sentinels {
            let addr = match (url.host_str(), url.port()) {
                (Some(host), Some(port)) => format!("{host}:{port}"),
                _ => r::redacted(url),
            };
            sentinels.push(Sentinel {
                client: r::client(url)?,
                addr,
            });
        }
        // The node's URL must make a client (its options are checked now).
        r::client(&endpoint.node)?;
        let addrs: Vec<&str> = sentinels.iter().map(|s| s.addr.as_str()).collect();
        Ok(Deployment {
            shown: format!(
                "the master {:?} of the sentinels {}",
                endpoint.master_name,
                addrs.join(", ")
            ),
            order: Mutex::new((0..sentinels.len()).collect()),
            name: endpoint.master_name.clone(),
            sentinels,
            node: endpoint.node.clone(),
        })
    }

    /// `the master "name" of the sentinels h:p, h:p`, for messages.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// The sentinels in the order to ask them.
    pub(crate) fn order(&self) -> Vec<usize> {
        self.order.lock().clone()
    }

    /// Sentinel `i`'s client.
    pub(crate) fn sentinel(&self, i: usize) -> &redis::Client {
        &self.sentinels[i].client
    }

    /// Sentinel `i` named the master: ask it first from now on.
    pub(crate) fn answered(&self, i: usize) {
        let mut order = self.order.lock();
        if let Some(at) = order.iter().position(|&s| s == i) {
            order[..=at].rotate_right(1);
        }
    }

    /// `SENTINEL get-master-addr-by-name <name>`.
    pub(crate) fn ask(&self) -> Cmd {
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("get-master-addr-by-name").arg(&self.name);
        cmd
    }

    /// The client of the data node at `host:port`.
    pub(crate) fn node(&self, host: &str, port: u16) -> redis::RedisResult<redis::Client> {
        let mut url = self.node.clone();
        let bracketed;
        let host = if host.contains(':') && !host.starts_with('[') {
            bracketed = format!("[{host}]");
            &bracketed
        } else {
            host
        };
        url.set_host(Some(host)).map_err(|_| {
            RedisError::from((
                redis::ErrorKind::Parse,
                "the sentinels named an unusable master address",
            ))
        })?;
        let _ = url.set_port(Some(port));
        redis::Client::open(url)
    }

    /// The new master's address a `+switch-master` message (`name old-ip old-port
    /// new-ip new-port`) announces, if it is about this deployment's master.
    pub(crate) fn switched(&self, payload: &[u8]) -> Option<(String, u16)> {
        let rest = std::str::from_utf8(payload)
            .ok()?
            .strip_prefix(self.name.as_str())?
            .strip_prefix(' ')?;
        let words: Vec<&str> = rest.split(' ').collect();
        let [_, _, host, port] = words[..] else {
            return None;
        };
        Some((host.to_owned(), port.parse().ok()?))
    }
}

/// The address in a `get-master-addr-by-name` reply (`None`: the sentinel does not
/// know the name, or answered something else).
pub(crate) fn master_addr(reply: &Value) -> Option<(String, u16)> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match reply {
        Value::Array(items) if items.len() == 2 => {
            let host = text(&items[0])?;
            let port = text(&items[1])?.parse().ok()?;
            Some((host, port))
        }
        _ => None,
    }
}

/// The role a `ROLE` reply names (`master`, `slave`, `sentinel`).
pub(crate) fn role(reply: &Value) -> Option<String> {
    match reply {
        Value::Array(items) => match items.first()? {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// `ROLE`.
pub(crate) fn role_cmd() -> Cmd {
    redis::cmd("ROLE")
}

/// What a discovery met on its way, to tell why it found no master.
#[derive(Default)]
pub(crate) struct Findings {
    /// Sentinels that could not be asked (down, too slow, refused the credentials).
    failed: usize,
    /// Sentinels that do not know the name.
    unknown: usize,
    /// The last master address a sentinel named, and what was wrong with it.
    master: Option<String>,
    /// No time was left to ask every sentinel.
    out_of_time: bool,
}

impl Findings {
    /// A sentinel could not be asked.
    pub(crate) fn sentinel_failed(&mut self) {
        self.failed += 1;
    }

    /// A sentinel does not know the master's name.
    pub(crate) fn unknown_name(&mut self) {
        self.unknown += 1;
    }

    /// The master at `host:port` a sentinel named could not be reached.
    pub(crate) fn unreachable(&mut self, host: &str, port: u16, e: &RedisError) {
        let why = if e.is_timeout() {
            "did not answer in time"
        } else if e.is_connection_refusal() {
            "refused the connection"
        } else if e.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
        {
            "refused the credentials"
        } else {
            "failed"
        };
        self.master = Some(format!("{host}:{port} {why}"));
    }

    /// The node at `host:port` a sentinel named is not a master (a stale view).
    pub(crate) fn not_master(&mut self, host: &str, port: u16, role: &str) {
        self.master = Some(format!("{host}:{port} is a {role}, not a master"));
    }

    /// The discovery's time ran out before every sentinel was asked.
    pub(crate) fn out_of_time(&mut self) {
        self.out_of_time = true;
    }

    /// The error of a discovery that found no master: one line, addresses only.
    pub(crate) fn error(&self, deployment: &Deployment) -> RedisError {
        let mut why = Vec::new();
        if let Some(master) = &self.master {
            why.push(format!("the master they name, {master}"));
        }
        if self.unknown > 0 {
            why.push(format!("{} do not know the name", self.unknown));
        }
        if self.failed > 0 {
            why.push(format!("{} could not be asked", self.failed));
        }
        if self.out_of_time {
            why.push("no time was left to ask the others".into());
        }
        let detail = format!(
            "no Redis master is reachable: {} ({})",
            deployment.shown,
            why.join("; ")
        );
        RedisError::from((
            redis::ErrorKind::MasterNameNotFoundBySentinel,
            "no master reachable",
            detail,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Deployment {
        let (endpoint, _) =
            crate::config::parse("redis+sentinel://:pw@a:1,b:2,c/mm?sentinel_password=spw&db=1")
                .unwrap();
        let crate::config::Endpoint::RedisSentinel(s) = endpoint else {
            panic!()
        };
        Deployment::new(&s).unwrap()
    }

    #[test]
    fn the_sentinel_that_answered_is_asked_first() {
        let d = deployment();
        assert_eq!(d.order(), [0, 1, 2]);
        d.answered(2);
        assert_eq!(d.order(), [2, 0, 1]);
        d.answered(0);
        assert_eq!(d.order(), [0, 2, 1]);
        d.answered(0);
        assert_eq!(d.order(), [0, 2, 1]);
        assert_eq!(
            d.shown(),
            "the master \"mm\" of the sentinels a:1, b:2, c:26379"
        );
    }

    #[test]
    fn replies_and_messages() {
        let d = deployment();
        let addr = Value::Array(vec![
            Value::BulkString(b"10.0.0.9".to_vec()),
            Value::BulkString(b"6380".to_vec()),
        ]);
        assert_eq!(master_addr(&addr), Some(("10.0.0.9".into(), 6380)));
        assert_eq!(master_addr(&Value::Nil), None);
        let role_reply = Value::Array(vec![Value::BulkString(b"slave".to_vec())]);
        assert_eq!(role(&role_reply).as_deref(), Some("slave"));
        assert_eq!(
            d.switched(b"mm 10.0.0.1 6379 10.0.0.2 6380"),
            Some(("10.0.0.2".into(), 6380))
        );
        assert_eq!(d.switched(b"mm2 10.0.0.1 6379 10.0.0.2 6379"), None);
        assert_eq!(d.switched(b"mm 10.0.0.1 6379 10.0.0.2"), None);
        assert_eq!(d.switched(b"mm"), None);
        let node = d.node("::1", 7000).unwrap();
        let info = node.get_connection_info();
        assert_eq!(info.redis_settings().db(), 1);
        assert_eq!(info.addr().to_string(), "::1:7000");
    }

    #[test]
    fn no_master_error_is_one_line_without_secrets() {
        let d = deployment();
        let mut f = Findings::default();
        f.sentinel_failed();
        f.unknown_name();
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        f.unreachable("10.0.0.9", 6380, &refused);
        let e = crate::backend::redis::protocol::error(f.error(&d), "SET NX GET");
        assert_eq!(e.kind(), crate::ErrorKind::Connection);
        let text = e.to_string();
        assert_eq!(
            text,
            "connection error: no Redis master is reachable: the master \"mm\" of the \
             sentinels a:1, b:2, c:26379 (the master they name, 10.0.0.9:6380 refused the \
             connection; 1 do not know the name; 1 could not be asked) (SET NX GET)"
        );
        assert!(!text.contains("pw"), "{text}");
    }
}
