//! A real Redis Sentinel deployment per test: a master and a replica
//! ([`RedisServer`]s on loopback ports, persistence off, diskless replication without
//! delay) and three sentinels (`redis-server <conf> --sentinel`, loopback ports, each
//! in its own temp dir). Ready once the replica's link is up and every sentinel names
//! the master; [`Config::failover`] also waits until every sentinel knows the two
//! others and the replica (a failover needs them). Everything is polled, never slept
//! for. Stopped on drop (each process is killed), the logs shown when a test panics.
//!
//! The binary is `$REDIS_SERVER_BIN`, else `redis-server` on the `PATH`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::{Config as ServerConfig, RedisServer};

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "aiolock-master";

/// How a deployment is set up.
#[derive(Clone)]
pub struct Config {
    /// The data nodes' password (`requirepass`, `masterauth`, the sentinels'
    /// `auth-pass`).
    pub password: Option<String>,
    /// The sentinels' own password (`requirepass`, `sentinel sentinel-pass`).
    pub sentinel_password: Option<String>,
    /// `down-after-milliseconds`: how long a silent master takes to be failed over.
    pub down_after: Duration,
    /// Wait until a failover can happen (sentinels know each other and the replica).
    pub failover: bool,
}

impl Config {
    /// For tests that never fail over: a generous down-after, so that a loaded
    /// machine does not fail the master over by mistake.
    pub fn steady() -> Self {
        Config {
            password: None,
            sentinel_password: None,
            down_after: Duration::from_secs(20),
            failover: false,
        }
    }

    /// For failover tests: a master killed is failed over in about 2 s; passwords on
    /// the data nodes and the sentinels (the secrets the tests look for in messages).
    pub fn failover() -> Self {
        Config {
            password: Some("node-secret".into()),
            sentinel_password: Some("sentinel-secret".into()),
            down_after: Duration::from_millis(1000),
            failover: true,
        }
    }
}

/// A master, a replica and three sentinels.
pub struct RedisSentinel {
    /// The sentinels, killed first on drop.
    pub sentinels: Vec<Sentinel>,
    /// The data nodes: index 0 started as the master, 1 as its replica.
    pub nodes: Vec<RedisServer>,
    config: Config,
}

impl RedisSentinel {
    /// Starts a deployment and waits until it is ready (see the module docs).
    pub fn start(config: Config) -> Self {
        let mut args: Vec<String> = ["--repl-diskless-sync-delay", "0"]
            .map(String::from)
            .to_vec();
        if let Some(pw) = &config.password {
            args.extend(["--requirepass".into(), pw.clone()]);
            args.extend(["--masterauth".into(), pw.clone()]);
        }
        let master = RedisServer::with(ServerConfig {
            tcp: true,
            args: args.clone(),
        });
        let mut replica_args = args;
        replica_args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port().to_string(),
        ]);
        let replica = RedisServer::with(ServerConfig {
            tcp: true,
            args: replica_args,
        });
        let mut deployment = RedisSentinel {
            sentinels: Vec::new(),
            nodes: vec![master, replica],
            config,
        };
        let linked = deployment.poll(Duration::from_secs(30), |d| d.replica_linked(1));
        assert!(linked, "the replica did not sync with the master in 30 s");
        // Linked is not yet replicating: see `replicates`. (Each try waits on the
        // server, up to 100 ms.)
        let replicating = deployment.poll(Duration::from_secs(30), |d| d.replicates(0));
        assert!(replicating, "the replica acknowledged no write in 30 s");
        let master_port = deployment.nodes[0].port();
        for _ in 0..3 {
            let sentinel = Sentinel::start(&deployment.config, master_port);
            deployment.sentinels.push(sentinel);
        }
        let ready = deployment.poll(Duration::from_secs(30), |d| {
            d.sentinels.iter().all(|s| {
                if s.master_port() != Some(master_port) {
                    return false;
                }
                if !d.config.failover {
                    return true;
                }
                let master = s.fields(&["SENTINEL", "MASTER", MASTER_NAME]);
                let replicas = match s.command(&["SENTINEL", "REPLICAS", MASTER_NAME]) {
                    Reply::Array(replicas) => replicas,
                    _ => Vec::new(),
                };
                master.get("num-other-sentinels").map(String::as_str) == Some("2")
                    && master.get("num-slaves").map(String::as_str) == Some("1")
                    && replicas.first().is_some_and(|r| {
                        let r = pairs(r);
                        r.get("flags").map(String::as_str) == Some("slave")
                            && r.get("master-link-status").map(String::as_str) == Some("ok")
                    })
            })
        });
        assert!(ready, "the sentinels were not ready in 30 s");
        deployment
    }

    /// Polls `cond` every 5 ms until it holds; false after `limit`.
    pub fn poll(&self, limit: Duration, mut cond: impl FnMut(&Self) -> bool) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if cond(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// The cache URL: `redis+sentinel://[:pw@]127.0.0.1:p1,…/aiolock-master?…`, with
    /// `query` appended.
    pub fn url(&self, query: &str) -> String {
        let auth = match &self.config.password {
            Some(pw) => format!(":{pw}@"),
            None => String::new(),
        };
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let mut options = Vec::new();
        if let Some(pw) = &self.config.sentinel_password {
            options.push(format!("sentinel_password={pw}"));
        }
        if !query.is_empty() {
            options.push(query.to_owned());
        }
        format!(
            "redis+sentinel://{auth}{}/{MASTER_NAME}?{}",
            hosts.join(","),
            options.join("&")
        )
    }

    /// A `redis://` URL of data node `i` (with the password), `query` appended.
    pub fn node_url(&self, i: usize, query: &str) -> String {
        let auth = match &self.config.password {
            Some(pw) => format!(":{pw}@"),
            None => String::new(),
        };
        let sep = if query.is_empty() { "" } else { "?" };
        format!(
            "redis://{auth}127.0.0.1:{}{sep}{query}",
            self.nodes[i].port()
        )
    }

    /// Runs a command on data node `i` (its unix socket, authenticated): the reply.
    pub fn node(&self, i: usize, args: &[&str]) -> Reply {
        let Ok(stream) = UnixStream::connect(self.nodes[i].socket()) else {
            return Reply::Error("not listening".into());
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut con = Resp::new(stream);
        if let Some(pw) = &self.config.password {
            con.call(&["AUTH", pw]);
        }
        con.call(args)
    }

    /// What data node `i` says it is (`master`, `slave`), `None` if it is down.
    pub fn role(&self, i: usize) -> Option<String> {
        match self.node(i, &["ROLE"]) {
            Reply::Array(items) => items.first().and_then(Reply::text),
            _ => None,
        }
    }

    /// The index of the node every sentinel names as the master now, if they agree.
    pub fn master(&self) -> Option<usize> {
        let ports: Vec<Option<u16>> = self.sentinels.iter().map(Sentinel::master_port).collect();
        let first = ports[0]?;
        if ports.iter().any(|p| *p != Some(first)) {
            return None;
        }
        self.nodes.iter().position(|n| n.port() == first)
    }

    /// Whether node `i`'s replication link to its master is up (and its master sees
    /// it).
    pub fn replica_linked(&self, i: usize) -> bool {
        let info = self
            .node(i, &["INFO", "replication"])
            .text()
            .unwrap_or_default();
        info.contains("master_link_status:up")
    }

    /// Whether the replica acknowledges master `i`'s writes now: a write (undone at
    /// once) on one connection, then `WAIT 1 100` on it. A replica's link is up
    /// (`replica_linked`) before that: after a diskless full sync Redis 7 streams
    /// writes to the replica only from the replica's next `REPLCONF ACK`, which may
    /// come a second later, and until then every `WAIT` (the `wait_replicas` option)
    /// runs to its timeout.
    pub fn replicates(&self, i: usize) -> bool {
        let Ok(stream) = UnixStream::connect(self.nodes[i].socket()) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut con = Resp::new(stream);
        if let Some(pw) = &self.config.password {
            con.call(&["AUTH", pw]);
        }
        const PROBE: &str = "aiolock-fixture:replicated";
        con.call(&["SET", PROBE, "1"]);
        con.call(&["DEL", PROBE]);
        con.call(&["WAIT", "1", "100"]) == Reply::Int(1)
    }

    /// Waits until every sentinel names node `i` as the master and it says it is one.
    pub fn wait_master(&self, i: usize, limit: Duration) {
        let promoted = self.poll(limit, |d| {
            d.master() == Some(i) && d.role(i).as_deref() == Some("master")
        });
        assert!(
            promoted,
            "node {i} was not the master after {limit:?} (sentinels name {:?})",
            self.master()
        );
    }

    /// `SENTINEL FAILOVER` at the first sentinel; returns once every sentinel names
    /// the replica as the master and it says it is one.
    pub fn failover(&self) -> usize {
        let old = self.master().expect("the sentinels agree on a master");
        let new = 1 - old;
        let reply = self.sentinels[0].command(&["SENTINEL", "FAILOVER", MASTER_NAME]);
        assert_eq!(reply, Reply::Status("OK".into()), "SENTINEL FAILOVER");
        self.wait_master(new, Duration::from_secs(30));
        new
    }

    /// Kills the current master (SIGKILL); returns its index.
    pub fn kill_master(&mut self) -> usize {
        let old = self.master().expect("the sentinels agree on a master");
        self.nodes[old].kill();
        old
    }

    /// Cuts the replication link of the replica of node `master` so that writes from
    /// now on are not replicated: the replica gets a wrong `masterauth` and its link is
    /// killed (it cannot sync again). Returns once the replica's link is down.
    pub fn break_replication(&self, master: usize) {
        let replica = 1 - master;
        assert_eq!(
            self.node(
                replica,
                &["CONFIG", "SET", "masterauth", "wrong-on-purpose"]
            ),
            Reply::Status("OK".into())
        );
        self.node(master, &["CLIENT", "KILL", "TYPE", "replica"]);
        let down = self.poll(Duration::from_secs(10), |d| !d.replica_linked(replica));
        assert!(down, "the replica's link did not drop");
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.sentinels.iter().enumerate() {
            out.push_str(&format!("--- sentinel {i} log ---\n{}\n", s.log()));
        }
        out
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        // The sentinels first: they would only react to the nodes' ends.
        self.sentinels.clear();
    }
}

/// One sentinel process, killed on drop.
pub struct Sentinel {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Its loopback port.
    pub port: u16,
    password: Option<String>,
}

impl Sentinel {
    fn start(config: &Config, master_port: u16) -> Sentinel {
        let dir = tempfile::Builder::new()
            .prefix("aiolock-sentinel-")
            .tempdir()
            .expect("a temp dir");
        let mut sentinel = Sentinel {
            child: None,
            dir,
            port: 0,
            password: config.sentinel_password.clone(),
        };
        // "Pick a free port, then start" can race with another process: pick again.
        for attempt in 1..=5 {
            sentinel.port = free_port();
            match sentinel.spawn(config, master_port) {
                Ok(()) => return sentinel,
                Err(why) if attempt == 5 => {
                    panic!(
                        "a sentinel did not start: {why}\n--- log ---\n{}",
                        sentinel.log()
                    )
                }
                Err(_) => {}
            }
        }
        unreachable!()
    }

    fn spawn(&mut self, config: &Config, master_port: u16) -> Result<(), String> {
        let dir = self.dir.path();
        let mut conf = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} {down}\n\
             sentinel failover-timeout {MASTER_NAME} 2000\n",
            port = self.port,
            dir = dir.display(),
            log = self.log_path().display(),
            down = config.down_after.as_millis(),
        );
        if let Some(pw) = &config.password {
            conf.push_str(&format!("sentinel auth-pass {MASTER_NAME} {pw}\n"));
        }
        if let Some(pw) = &config.sentinel_password {
            conf.push_str(&format!("requirepass {pw}\nsentinel sentinel-pass {pw}\n"));
        }
        let path = dir.join("sentinel.conf");
        std::fs::write(&path, conf).map_err(|e| format!("writing {path:?}: {e}"))?;
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let mut child = Command::new(&bin)
            .arg(&path)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {bin:?} ({e}): install redis-server"))?;
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!("it exited with {status}: {err}"));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return Err("it did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("sentinel.log")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Runs a command (authenticated): the reply.
    pub fn command(&self, args: &[&str]) -> Reply {
        let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return Reply::Error("not listening".into());
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut con = Resp::new(stream);
        if let Some(pw) = &self.password {
            con.call(&["AUTH", pw]);
        }
        con.call(args)
    }

    /// A reply of field-value pairs (`SENTINEL MASTER`), as a map.
    pub fn fields(&self, args: &[&str]) -> std::collections::HashMap<String, String> {
        pairs(&self.command(args))
    }

    /// The port of the master it names now.
    pub fn master_port(&self) -> Option<u16> {
        match self.command(&["SENTINEL", "get-master-addr-by-name", MASTER_NAME]) {
            Reply::Array(items) => items.get(1)?.text()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port nothing listens on (now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Reply {
    /// The reply as text (a status or a bulk string).
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Status(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

fn pairs(reply: &Reply) -> std::collections::HashMap<String, String> {
    let Reply::Array(items) = reply else {
        return Default::default();
    };
    items
        .chunks(2)
        .filter_map(|kv| Some((kv.first()?.text()?, kv.get(1)?.text()?)))
        .collect()
}

/// A tiny RESP2 client for the fixture's own commands.
struct Resp<S: Read + Write> {
    reader: BufReader<S>,
}

impl<S: Read + Write> Resp<S> {
    fn new(stream: S) -> Self {
        Resp {
            reader: BufReader::new(stream),
        }
    }

    fn call(&mut self, args: &[&str]) -> Reply {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        if self.reader.get_mut().write_all(req.as_bytes()).is_err() {
            return Reply::Error("write failed".into());
        }
        self.read()
            .unwrap_or_else(|| Reply::Error("no reply".into()))
    }

    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        self.reader.read_line(&mut line).ok()?;
        let line = line.strip_suffix("\r\n")?;
        Some(line.to_owned())
    }

    fn read(&mut self) -> Option<Reply> {
        let line = self.line()?;
        let (kind, rest) = line.split_at(1);
        Some(match kind {
            "+" => Reply::Status(rest.into()),
            "-" => Reply::Error(rest.into()),
            ":" => Reply::Int(rest.parse().ok()?),
            "$" => {
                let n: i64 = rest.parse().ok()?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut buf = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut buf).ok()?;
                    buf.truncate(n as usize);
                    Reply::Bulk(Some(buf))
                }
            }
            "*" => {
                let n: i64 = rest.parse().ok()?;
                let mut items = Vec::new();
                for _ in 0..n.max(0) {
                    items.push(self.read()?);
                }
                Reply::Array(items)
            }
            _ => return None,
        })
    }
}

/// What `backend_suite!` needs: a fresh deployment, its URL with a namespace (and
/// `WAIT` for the replica after every lock write, so that the suite runs that path
/// too), the shortest lease worth testing (longer than a single server's: a lock
/// write's `WAIT`, up to 50 ms, takes from it) and the expiry slack.
pub fn env() -> (RedisSentinel, String, Duration, Duration) {
    let deployment = RedisSentinel::start(Config::steady());
    let url = deployment.url("namespace=test:&wait_replicas=1&wait_timeout=0.05");
    (
        deployment,
        url,
        Duration::from_millis(300),
        Duration::from_millis(10),
    )
}
