//! A real Redis Cluster per test: three masters (`redis-server --cluster-enabled yes`
//! on loopback ports, each in its own temp dir, persistence off), joined by
//! `redis-cli --cluster create … --cluster-replicas 0 --cluster-yes`, ready once every
//! node reports `cluster_state:ok` and the same slot table (polled, no sleeps in
//! between). Stopped on drop (each [`RedisServer`] kills itself), the logs shown when
//! a test panics. The binaries are `$REDIS_SERVER_BIN` / `$REDIS_CLI_BIN`, else
//! `redis-server` / `redis-cli` on the `PATH`.

use std::process::Command;
use std::time::{Duration, Instant};

use super::redis::{Config, RedisServer};

/// Three masters that share the 16384 slots.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three masters and joins them into a cluster.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::with(Config {
                    tcp: true,
                    args: ["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"]
                        .map(String::from)
                        .to_vec(),
                })
            })
            .collect();
        let cluster = RedisCluster { nodes };
        let addrs: Vec<String> = cluster.addrs();
        let cli = std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".into());
        let out = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cli:?} ({e}): install redis-tools"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ready = cluster.poll(Duration::from_secs(30), |c| {
            c.nodes.iter().all(|n| {
                n.admin(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
                    && n.admin(&["CLUSTER", "INFO"])
                        .contains("cluster_known_nodes:3")
            })
        });
        assert!(ready, "the cluster did not reach cluster_state:ok in 30 s");
        cluster
    }

    /// Polls `cond` every 2 ms until it holds; false after `limit`.
    pub fn poll(&self, limit: Duration, mut cond: impl FnMut(&Self) -> bool) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if cond(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    /// `127.0.0.1:port` of each master.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect()
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`, with `query` appended.
    pub fn url(&self, query: &str) -> String {
        let sep = if query.is_empty() { "" } else { "?" };
        format!("redis+cluster://{}{sep}{query}", self.addrs().join(","))
    }

    /// The slot of `key` as the server computes it (`CLUSTER KEYSLOT`).
    pub fn keyslot(&self, key: &str) -> u16 {
        let reply = self.nodes[0].admin(&["CLUSTER", "KEYSLOT", key]);
        reply
            .trim()
            .trim_start_matches(':')
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT: {reply:?}"))
    }

    /// The index of the master that serves `slot` now (by its own `CLUSTER SLOTS`
    /// view: the node that answers `CLUSTER COUNTKEYSINSLOT` without error is not
    /// enough, so each node is asked whether it owns the slot).
    pub fn owner(&self, slot: u16) -> usize {
        let id_of = |n: &RedisServer| {
            n.admin(&["CLUSTER", "MYID"])
                .lines()
                .nth(1)
                .unwrap_or("")
                .to_owned()
        };
        let nodes = self.nodes[0].admin(&["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 9 {
                continue;
            }
            for range in &fields[8..] {
                let (first, last) = match range.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap_or(u16::MAX), b.parse().unwrap_or(0)),
                    None => match range.parse::<u16>() {
                        Ok(s) => (s, s),
                        Err(_) => continue,
                    },
                };
                if (first..=last).contains(&slot) {
                    let id = fields[0].trim_start_matches(|c: char| !c.is_ascii_hexdigit());
                    return self
                        .nodes
                        .iter()
                        .position(|n| id_of(n) == id)
                        .unwrap_or_else(|| panic!("no node has id {id}"));
                }
            }
        }
        panic!("no master serves slot {slot}: {nodes}")
    }

    /// The node id of master `i`.
    pub fn id(&self, i: usize) -> String {
        self.nodes[i]
            .admin(&["CLUSTER", "MYID"])
            .lines()
            .nth(1)
            .unwrap_or_else(|| panic!("CLUSTER MYID"))
            .to_owned()
    }
}

/// What `backend_suite!` needs: a fresh cluster, its URL with a namespace, the shortest
/// lease worth testing and the expiry slack.
pub fn env() -> (RedisCluster, String, Duration, Duration) {
    let cluster = RedisCluster::start();
    let url = cluster.url("namespace=test:");
    (
        cluster,
        url,
        Duration::from_millis(150),
        Duration::from_millis(10),
    )
}
