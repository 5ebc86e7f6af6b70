//! The Redlock quorum (`redis+quorum+unix://`) on real servers: the bodies of
//! `body.rs` in both flavors, over three or five `redis-server`s started per test, with
//! nodes pre-locked by someone else, stopped (SIGSTOP), killed, slowed by the fault
//! proxy or flapping, and the nodes' keys and release messages read straight from the
//! servers.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::redis::RedisServer;

/// The blocking flavor of the bodies.
pub mod blocking {
    pub use aiolock::blocking::*;
    use maybe_async::must_be_sync as maybe_async;

    pub mod rt {
        pub use crate::blocking::rt::*;
    }

    pub mod body {
        include!("body.rs");
    }
}

/// The async flavor of the bodies.
pub mod nonblocking {
    pub use aiolock::*;
    use maybe_async::must_be_async as maybe_async;

    pub mod rt {
        pub use crate::nonblocking::rt::*;
    }

    pub mod body {
        include!("body.rs");
    }
}

/// Every body in both flavors.
macro_rules! bodies {
    ($($name:ident),* $(,)?) => {
        mod tests {
        mod blocking {
            $(
                #[test]
                fn $name() {
                    crate::support::events::install();
                    crate::quorum::blocking::body::$name();
                }
            )*
        }
        mod nonblocking {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::support::events::install();
                    crate::quorum::nonblocking::body::$name().await;
                }
            )*
        }
        }
    };
}

bodies!(
    every_prelocked_subset_of_three,
    every_prelocked_subset_of_five,
    a_stopped_node_costs_its_timeout,
    a_killed_node_costs_a_vote,
    no_validity_left_is_not_acquired,
    a_waiter_wakes_on_the_first_release,
    exclusion_while_a_node_flaps,
    extend_recreates_a_lost_copy,
    locks_only_and_no_fences,
);

/// The quorum's servers, each on its own unix socket.
pub struct Nodes {
    pub servers: Vec<RedisServer>,
}

impl Nodes {
    /// `n` fresh servers.
    pub fn start(n: usize) -> Nodes {
        Nodes {
            servers: (0..n).map(|_| RedisServer::start()).collect(),
        }
    }

    /// The sockets of the servers.
    pub fn sockets(&self) -> Vec<PathBuf> {
        self.servers.iter().map(RedisServer::socket).collect()
    }

    /// `redis+quorum+unix://` of every server, with `query`.
    pub fn url(&self, query: &str) -> String {
        url(&self.sockets(), query)
    }

    /// Node `i`'s value under `key` (a lock key: namespace, key and `-lock`).
    pub fn get(&self, i: usize, key: &str) -> Option<String> {
        bulk(&self.servers[i].admin(&["GET", key]))
    }

    /// Every node's value under `key`.
    pub fn values(&self, key: &str) -> Vec<Option<String>> {
        (0..self.servers.len()).map(|i| self.get(i, key)).collect()
    }

    /// Stores `value` under `key` on node `i` for 30 s (someone else's lock).
    pub fn set(&self, i: usize, key: &str, value: &str) {
        let reply = self.servers[i].admin(&["SET", key, value, "PX", "30000"]);
        assert_eq!(reply, "+OK\r\n");
    }

    /// Deletes `key` on node `i` (as a restart without persistence would).
    pub fn del(&self, i: usize, key: &str) {
        self.servers[i].admin(&["DEL", key]);
    }

    /// Node `i`'s `PTTL` of `key`, in milliseconds.
    pub fn pttl(&self, i: usize, key: &str) -> i64 {
        let reply = self.servers[i].admin(&["PTTL", key]);
        reply.trim_start_matches(':').trim_end().parse().unwrap()
    }

    /// Whether every node has a subscriber of `key`'s release channel (a waiter
    /// subscribed there).
    pub fn all_subscribed(&self, key: &str) -> bool {
        self.servers.iter().all(|s| {
            let reply = s.admin(&["PUBSUB", "NUMSUB", &channel(key)]);
            !reply.trim_end().ends_with(":0")
        })
    }

    /// What the release script does on node `i` alone: deletes `key`, publishes
    /// `token` on its release channel.
    pub fn release_on(&self, i: usize, key: &str, token: &str) {
        assert_eq!(self.servers[i].admin(&["DEL", key]), ":1\r\n");
        self.servers[i].admin(&["PUBLISH", &channel(key), token]);
    }
}

/// `redis+quorum+unix://` of `sockets`, with `query`.
pub fn url(sockets: &[PathBuf], query: &str) -> String {
    let list: Vec<String> = sockets.iter().map(|s| s.display().to_string()).collect();
    format!("redis+quorum+unix://{}?{query}", list.join(","))
}

/// A lock key's release channel.
pub fn channel(key: &str) -> String {
    format!("aiolock:release:{key}")
}

/// A RESP bulk string reply's text (`None` for the nil reply).
fn bulk(reply: &str) -> Option<String> {
    if reply.starts_with("$-1") {
        return None;
    }
    let (len, rest) = reply
        .strip_prefix('$')
        .and_then(|r| r.split_once("\r\n"))
        .unwrap_or_else(|| panic!("not a bulk string: {reply:?}"));
    let len: usize = len.parse().unwrap();
    Some(rest[..len].to_owned())
}

/// Stops (SIGSTOP) and thaws server `i` of `nodes` every `period` until `stop` is
/// set, from a thread of its own; thawed when it returns.
pub fn flap(
    nodes: &Nodes,
    i: usize,
    period: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> usize {
    let mut flaps = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        nodes.servers[i].pause();
        std::thread::sleep(period);
        nodes.servers[i].resume();
        flaps += 1;
        std::thread::sleep(period);
    }
    flaps
}
