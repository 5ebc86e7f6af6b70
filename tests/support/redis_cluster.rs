//! A real Redis Cluster per test: three masters (`redis-server --cluster-enabled yes`
//! on loopback ports, each in its own temp dir, persistence off), joined by
//! `redis-cli --cluster create … --cluster-yes`, ready once every node reports
//! `cluster_state:ok` and knows every other (polled, no sleeps in between); with
//! [`RedisCluster::with_replicas`], one replica per master as well (for the failover
//! tests only: twice the servers). Stopped on drop (each [`RedisServer`] kills
//! itself), the logs shown when a test panics. The binaries are `$REDIS_SERVER_BIN` /
//! `$REDIS_CLI_BIN`, else `redis-server` / `redis-cli` on the `PATH`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::{Config, RedisServer};

/// Three masters that share the 16384 slots (and their replicas).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    /// Each node's id (`CLUSTER MYID`).
    ids: Vec<String>,
    /// The nodes [`kill`](RedisCluster::kill)ed.
    down: Vec<bool>,
}

impl RedisCluster {
    /// Starts three masters and joins them into a cluster.
    pub fn start() -> Self {
        Self::start_with(0, 5000)
    }

    /// Three masters with one replica each (six servers). The node timeout is 1 s,
    /// so that the replica of a killed master takes over within a few seconds.
    pub fn with_replicas() -> Self {
        Self::start_with(1, 1000)
    }

    fn start_with(replicas: usize, node_timeout_ms: u32) -> Self {
        let count = 3 * (1 + replicas);
        let timeout = node_timeout_ms.to_string();
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                RedisServer::with(Config {
                    tcp: true,
                    args: [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-node-timeout",
                        &timeout,
                    ]
                    .map(String::from)
                    .to_vec(),
                })
            })
            .collect();
        let ids = nodes
            .iter()
            .map(|n| {
                n.admin(&["CLUSTER", "MYID"])
                    .lines()
                    .nth(1)
                    .unwrap_or_else(|| panic!("CLUSTER MYID"))
                    .to_owned()
            })
            .collect();
        let cluster = RedisCluster {
            nodes,
            ids,
            down: vec![false; count],
        };
        let addrs: Vec<String> = cluster.addrs();
        let cli = std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".into());
        let mut create = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cli:?} ({e}): install redis-tools"));
        let output = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_string(&mut text);
                }
                text
            })
        };
        let stdout = output(create.stdout.take().map(|p| Box::new(p) as _));
        let stderr = output(create.stderr.take().map(|p| Box::new(p) as _));
        // `redis-cli` waits without end for every node to know every other one. Now
        // and then a MEET handshake is lost (seen on a loaded machine: two nodes
        // that each knew only one of the others, for minutes), so the MEETs are sent
        // again, from every node to every other one, while it waits.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next_meet = Instant::now() + Duration::from_secs(3);
        let status = loop {
            if let Some(status) = create.try_wait().expect("redis-cli status") {
                break Some(status);
            }
            let now = Instant::now();
            if now >= deadline {
                let _ = create.kill();
                let _ = create.wait();
                break None;
            }
            // Only once redis-cli meets the nodes itself (before, it wants them alone).
            if now >= next_meet && cluster.meeting_began() {
                cluster.meet_all();
                next_meet = now + Duration::from_secs(3);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
        assert!(
            status.is_some_and(|s| s.success()),
            "redis-cli --cluster create failed or did not finish in 60 s: {stdout}\n{stderr}"
        );
        let known = format!("cluster_known_nodes:{count}");
        let ready = cluster.poll(Duration::from_secs(30), |c| {
            c.nodes.iter().all(|n| {
                let info = n.admin(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains(&known)
            }) && (0..count).filter(|&i| !c.is_master(i)).all(|i| {
                c.nodes[i]
                    .admin(&["INFO", "replication"])
                    .contains("master_link_status:up")
            })
        });
        assert!(ready, "the cluster did not reach cluster_state:ok in 30 s");
        cluster
    }

    /// Whether some node knows another one.
    fn meeting_began(&self) -> bool {
        self.nodes.iter().any(|n| {
            !n.admin(&["CLUSTER", "INFO"])
                .contains("cluster_known_nodes:1\r\n")
        })
    }

    /// Every node MEETs every other one (a no-op between nodes that know each other).
    fn meet_all(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            for (j, other) in self.nodes.iter().enumerate() {
                if i != j {
                    node.admin(&["CLUSTER", "MEET", "127.0.0.1", &other.port().to_string()]);
                }
            }
        }
    }

    /// A node that runs, to ask about the cluster.
    fn live(&self) -> usize {
        self.down.iter().position(|d| !d).expect("a node that runs")
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
        self.down[i] = true;
    }

    /// Whether node `i` is a master, as it says itself (`ROLE`).
    pub fn is_master(&self, i: usize) -> bool {
        self.nodes[i].admin(&["ROLE"]).contains("master")
    }

    /// The replica of master `i`, as the cluster sees it (`CLUSTER NODES`).
    pub fn replica_of(&self, master: usize) -> usize {
        let nodes = self.nodes[self.live()].admin(&["CLUSTER", "NODES"]);
        let id = &self.ids[master];
        nodes
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                (fields.len() > 3 && fields[2].contains("slave") && fields[3] == id)
                    .then(|| self.index(fields[0]))
            })
            .unwrap_or_else(|| panic!("master {master} has no replica: {nodes}"))
    }

    /// Returns once replica `replica` has every write its master `master` has
    /// (`INFO replication` offsets).
    pub fn wait_replicated(&self, master: usize, replica: usize) {
        let offset = |i: usize, field: &str| -> u64 {
            let info = self.nodes[i].admin(&["INFO", "replication"]);
            info.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let written = offset(master, "master_repl_offset:");
        let caught_up = self.poll(Duration::from_secs(10), |_| {
            offset(replica, "slave_repl_offset:") >= written
        });
        assert!(
            caught_up,
            "replica {replica} did not catch up with {master}"
        );
    }

    /// The index of the node with id `id`.
    fn index(&self, id: &str) -> usize {
        self.ids
            .iter()
            .position(|i| i == id)
            .unwrap_or_else(|| panic!("no node has id {id}"))
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

    /// `127.0.0.1:port` of each node.
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
        let reply = self.nodes[self.live()].admin(&["CLUSTER", "KEYSLOT", key]);
        reply
            .trim()
            .trim_start_matches(':')
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT: {reply:?}"))
    }

    /// The index of the master that serves `slot` now, as the first node that runs
    /// sees it.
    pub fn owner(&self, slot: u16) -> usize {
        self.owner_seen_by(self.live(), slot)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// The index of the node that serves `slot` as node `viewer` sees it (its
    /// `CLUSTER NODES`: the master whose slot ranges hold `slot`), `None` if no node
    /// serves it there.
    pub fn owner_seen_by(&self, viewer: usize, slot: u16) -> Option<usize> {
        let nodes = self.nodes[viewer].admin(&["CLUSTER", "NODES"]);
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
                    return Some(self.index(fields[0]));
                }
            }
        }
        None
    }

    /// Opens the move of `slot` to master `to`: `CLUSTER SETSLOT … IMPORTING` on `to`,
    /// `… MIGRATING` on the slot's owner, whose index it returns. Until
    /// [`close_migration`](Self::close_migration), a command on a key the owner no
    /// longer has is answered `ASK` (and `TRYAGAIN` when it names several keys and
    /// some are missing).
    pub fn open_migration(&self, slot: u16, to: usize) -> usize {
        let from = self.owner(slot);
        assert_ne!(from, to, "slot {slot} is on master {to} already");
        let s = slot.to_string();
        let ok = |reply: String| assert!(reply.starts_with("+OK"), "SETSLOT: {reply}");
        ok(self.nodes[to].admin(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &self.id(from)]));
        ok(self.nodes[from].admin(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &self.id(to)]));
        from
    }

    /// Moves `keys` from master `from` to master `to` (`MIGRATE … KEYS`), in a slot
    /// [`open_migration`](Self::open_migration) opened.
    pub fn migrate_keys(&self, from: usize, to: usize, keys: &[&str]) {
        let port = self.nodes[to].port().to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend_from_slice(keys);
        let reply = self.nodes[from].admin(&args);
        assert!(reply.starts_with("+OK"), "MIGRATE: {reply}");
    }

    /// Ends the move of `slot` to master `to` (`CLUSTER SETSLOT … NODE` on every
    /// master, the new owner first) and returns once every master names `to` as its
    /// owner.
    pub fn close_migration(&self, slot: u16, to: usize) {
        let s = slot.to_string();
        let id = self.id(to);
        let others = (0..self.nodes.len()).filter(|&i| i != to);
        for node in std::iter::once(to).chain(others) {
            let reply = self.nodes[node].admin(&["CLUSTER", "SETSLOT", &s, "NODE", &id]);
            assert!(reply.starts_with("+OK"), "SETSLOT NODE: {reply}");
        }
        let moved = self.poll(Duration::from_secs(10), |c| {
            (0..c.nodes.len()).all(|i| c.owner_seen_by(i, slot) == Some(to))
        });
        assert!(moved, "slot {slot} did not move to master {to} in 10 s");
    }

    /// The node id of node `i`.
    pub fn id(&self, i: usize) -> String {
        self.ids[i].clone()
    }
}

/// A `MONITOR` connection to one node: the commands it runs, in order, as they are
/// written (a script's own calls show with the source `lua`).
pub struct Monitor {
    reader: BufReader<UnixStream>,
}

/// One command a [`Monitor`] saw.
#[derive(Debug)]
pub struct Seen {
    /// Run by a script (`[0 lua]`), not sent by a client.
    pub by_script: bool,
    /// The command's name and arguments.
    pub args: Vec<Vec<u8>>,
}

impl RedisCluster {
    /// Starts monitoring master `i` (`MONITOR`): what it runs from now on.
    pub fn monitor(&self, i: usize) -> Monitor {
        let mut s = UnixStream::connect(self.nodes[i].socket()).expect("monitor connection");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"MONITOR\r\n").unwrap();
        let mut reader = BufReader::new(s);
        let mut ok = String::new();
        reader.read_line(&mut ok).unwrap();
        assert_eq!(ok, "+OK\r\n", "MONITOR");
        Monitor { reader }
    }
}

impl Monitor {
    /// The next command run (within 10 s).
    pub fn next(&mut self) -> Seen {
        let mut line = Vec::new();
        self.reader
            .read_until(b'\n', &mut line)
            .expect("MONITOR saw a command within 10 s");
        // `+<time> [<db> <source>] "arg" "arg" …`
        let text = String::from_utf8_lossy(&line).into_owned();
        let close = text
            .find("] ")
            .unwrap_or_else(|| panic!("MONITOR line {text:?}"));
        let by_script = text[..close].ends_with(" lua");
        Seen {
            by_script,
            args: unquote(&line[close + 2..]),
        }
    }
}

/// The arguments of a `MONITOR` line: `"…"` each, with `\\`, `\"`, `\n`, `\r`, `\t`,
/// `\a`, `\b` and `\xHH` escapes.
fn unquote(mut rest: &[u8]) -> Vec<Vec<u8>> {
    let mut args = Vec::new();
    while let Some(start) = rest.iter().position(|&b| b == b'"') {
        rest = &rest[start + 1..];
        let mut arg = Vec::new();
        loop {
            match rest {
                [b'"', tail @ ..] => {
                    rest = tail;
                    break;
                }
                [b'\\', b'x', h, l, tail @ ..] => {
                    let hex = std::str::from_utf8(&[*h, *l]).unwrap().to_owned();
                    arg.push(u8::from_str_radix(&hex, 16).unwrap());
                    rest = tail;
                }
                [b'\\', c, tail @ ..] => {
                    arg.push(match c {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'a' => 7,
                        b'b' => 8,
                        other => *other,
                    });
                    rest = tail;
                }
                [c, tail @ ..] => {
                    arg.push(*c);
                    rest = tail;
                }
                [] => panic!("an unterminated MONITOR argument"),
            }
        }
        args.push(arg);
    }
    args
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
