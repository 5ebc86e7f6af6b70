//! A real `memcached` per test, stopped on drop.
//!
//! The binary is `$MEMCACHED_BIN`, else `memcached` on the PATH (Debian package
//! `memcached`; `scripts/test` installs it). A missing binary or a server that does not
//! come up fails the test with the reason and the server's log: nothing is skipped.
//! By default the server listens on a unix socket in a fresh temporary directory (no
//! free-port race); [`MemcachedServer::tcp`] listens on a loopback port.
//!
//! This file is also included by the memcached benchmark and example.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the server listens.
#[derive(Debug, Clone)]
pub enum Listen {
    /// A unix socket (the default).
    Unix(PathBuf),
    /// 127.0.0.1 and a port.
    Tcp(u16),
}

/// A running memcached; killed (and its temporary directory removed) on drop.
pub struct MemcachedServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    listen: Listen,
    log: PathBuf,
    args: Vec<String>,
    /// The log was already shown in a panic message.
    log_shown: std::sync::atomic::AtomicBool,
}

impl MemcachedServer {
    /// A server on a unix socket in a fresh temporary directory.
    pub fn start() -> Self {
        Self::with_args(&[])
    }

    /// A server on a unix socket, with extra command-line arguments (e.g. `-C`).
    pub fn with_args(args: &[&str]) -> Self {
        let dir = temp_dir();
        let socket = dir.path().join("memcached.sock");
        let mut server = MemcachedServer {
            child: None,
            log: dir.path().join("memcached.log"),
            dir,
            listen: Listen::Unix(socket),
            args: args.iter().map(|s| s.to_string()).collect(),
            log_shown: Default::default(),
        };
        server.spawn().unwrap_or_else(|why| server.fail(&why));
        server
    }

    /// A server on 127.0.0.1 and a free port (retried on another port if taken).
    pub fn tcp() -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free loopback port");
            let dir = temp_dir();
            let mut server = MemcachedServer {
                child: None,
                log: dir.path().join("memcached.log"),
                dir,
                listen: Listen::Tcp(port),
                args: Vec::new(),
                log_shown: Default::default(),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(why) => last = format!("{why}\n--- log ---\n{}", server.log()),
            }
        }
        panic!("memcached did not start on a loopback port: {last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = std::env::var_os("MEMCACHED_BIN").unwrap_or_else(|| "memcached".into());
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("cannot open the log {}: {e}", self.log.display()))?;
        let mut cmd = Command::new(&bin);
        match &self.listen {
            Listen::Unix(path) => {
                cmd.arg("-s").arg(path).args(["-a", "0700"]);
            }
            Listen::Tcp(port) => {
                cmd.args(["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0"]);
            }
        }
        cmd.args(["-m", "64", "-t", "2", "-v"]);
        if is_root() {
            cmd.args(["-u", "root"]);
        }
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let child = cmd.spawn().map_err(|e| {
            format!(
                "cannot run {bin:?} ({e}); install the Debian package `memcached` \
                 (scripts/test does) or set MEMCACHED_BIN"
            )
        })?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("memcached exited at start ({status})"));
            }
            if self.answers_ping() {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err("memcached did not answer within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn answers_ping(&self) -> bool {
        fn ping(mut s: impl Read + Write) -> bool {
            let mut reply = [0u8; 4];
            s.write_all(b"mn\r\n").is_ok()
                && s.read_exact(&mut reply).is_ok()
                && &reply == b"MN\r\n"
        }
        let timeout = Some(Duration::from_secs(1));
        match &self.listen {
            Listen::Unix(path) => UnixStream::connect(path)
                .is_ok_and(|s| s.set_read_timeout(timeout).is_ok() && ping(s)),
            Listen::Tcp(port) => TcpStream::connect(("127.0.0.1", *port))
                .is_ok_and(|s| s.set_read_timeout(timeout).is_ok() && ping(s)),
        }
    }

    fn fail(&self, why: &str) -> ! {
        self.log_shown
            .store(true, std::sync::atomic::Ordering::Relaxed);
        panic!(
            "{why}\n--- memcached log ({}) ---\n{}",
            self.log.display(),
            self.log()
        )
    }

    /// The cache URL of this server, without options.
    pub fn url(&self) -> String {
        match &self.listen {
            Listen::Unix(path) => format!("memcached+unix://{}", path.display()),
            Listen::Tcp(port) => format!("memcached://127.0.0.1:{port}"),
        }
    }

    /// Where the server listens.
    pub fn listen(&self) -> &Listen {
        &self.listen
    }

    /// The temporary directory the server's socket and log live in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server as a whole (`SIGSTOP`): connections stay open, nothing is
    /// answered, its clock stops ticking, until [`resume`](MemcachedServer::resume).
    /// Returns once the process is stopped (a signal is delivered asynchronously).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
        let pid = self.child.as_ref().expect("the server runs").id();
        let start = Instant::now();
        // /proc/<pid>/stat: "pid (comm) state ...": `T` once stopped.
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit(')')
                    .next()
                    .map(|rest| rest.trim_start().starts_with('T'))
            })
            != Some(true)
        {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "memcached (pid {pid}) did not stop"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Lets a [`pause`](MemcachedServer::pause)d server run again (`SIGCONT`).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("the server runs");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        // SAFETY: sends a signal to our own child process.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
    }

    /// Kills the server (its data is lost).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Listen::Unix(path) = &self.listen {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Kills the server and starts a new, empty one at the same address.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn().unwrap_or_else(|why| self.fail(&why));
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }
}

impl Drop for MemcachedServer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() && !self.log_shown.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!(
                "--- memcached log ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("aiolock-memcached-")
        .tempdir()
        .expect("a temporary directory")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// The generic suite's environment: a fresh server, its URL with a namespace, the
/// shortest lease memcached honours well (it counts whole seconds) and how late a key
/// may expire: a TTL `d` is sent as `ceil(d + 0.25 s) + 2` seconds so that it is a
/// floor on a clock that can step by two seconds in one tick, and the key lives at
/// most one tick (1.25 s) longer than that: for the 0.75 s lease, 3 s + 1.25 s.
pub fn env() -> (MemcachedServer, String, Duration, Duration) {
    let server = MemcachedServer::start();
    let url = format!("{}?namespace=test:", server.url());
    (
        server,
        url,
        Duration::from_millis(750),
        Duration::from_millis(3500),
    )
}

impl MemcachedServer {
    /// Sends one raw command and returns the reply up to `until` (included), e.g.
    /// `"END\r\n"` for `stats`, `"\r\n"` for a meta command without value.
    pub fn raw(&self, command: &str, until: &str) -> String {
        fn exchange(mut s: impl Read + Write, command: &str, until: &str) -> String {
            s.write_all(command.as_bytes()).expect("send to memcached");
            let mut reply = Vec::new();
            let mut buf = [0u8; 4096];
            while !reply.ends_with(until.as_bytes()) {
                let n = s.read(&mut buf).expect("read from memcached");
                assert!(n > 0, "memcached closed the connection");
                reply.extend_from_slice(&buf[..n]);
            }
            String::from_utf8_lossy(&reply).into_owned()
        }
        let timeout = Some(Duration::from_secs(5));
        match &self.listen {
            Listen::Unix(path) => {
                let s = UnixStream::connect(path).expect("connect to memcached");
                s.set_read_timeout(timeout).unwrap();
                exchange(s, command, until)
            }
            Listen::Tcp(port) => {
                let s = TcpStream::connect(("127.0.0.1", *port)).expect("connect to memcached");
                s.set_read_timeout(timeout).unwrap();
                exchange(s, command, until)
            }
        }
    }

    /// One number of the server's `stats` (e.g. `curr_items`, `cmd_set`).
    pub fn stat(&self, name: &str) -> u64 {
        let reply = self.raw("stats\r\n", "END\r\n");
        reply
            .lines()
            .find_map(|l| l.strip_prefix(&format!("STAT {name} ")))
            .unwrap_or_else(|| panic!("no stat {name} in {reply}"))
            .trim()
            .parse()
            .expect("a number")
    }

    /// Whether the server holds `key` (`mg <key>`: `HD` or `EN`).
    pub fn holds(&self, key: &str) -> bool {
        match self.raw(&format!("mg {key}\r\n"), "\r\n").as_str() {
            "HD\r\n" => true,
            "EN\r\n" => false,
            other => panic!("mg {key}: {other:?}"),
        }
    }
}

/// Three memcached servers, one pool; stopped on drop.
pub struct MemcachedPool {
    pub servers: Vec<MemcachedServer>,
}

impl MemcachedPool {
    /// Three servers on unix sockets.
    pub fn unix() -> Self {
        MemcachedPool {
            servers: (0..3).map(|_| MemcachedServer::start()).collect(),
        }
    }

    /// Three servers on loopback ports.
    pub fn tcp() -> Self {
        MemcachedPool {
            servers: (0..3).map(|_| MemcachedServer::tcp()).collect(),
        }
    }

    /// The pool's URL, with `distribution=<distribution>`: `memcached+unix:///a,/b,/c`
    /// or `memcached://127.0.0.1:p1,127.0.0.1:p2,...`.
    pub fn url(&self, distribution: &str) -> String {
        let servers: Vec<String> = self
            .servers
            .iter()
            .map(|s| match s.listen() {
                Listen::Unix(path) => path.display().to_string(),
                Listen::Tcp(port) => format!("127.0.0.1:{port}"),
            })
            .collect();
        let scheme = match self.servers[0].listen() {
            Listen::Unix(_) => "memcached+unix://",
            Listen::Tcp(_) => "memcached://",
        };
        format!("{scheme}{}?distribution={distribution}", servers.join(","))
    }

    /// The index of the server that holds `key` (exactly one must).
    pub fn owner(&self, key: &str) -> usize {
        let holders: Vec<usize> = (0..self.servers.len())
            .filter(|&i| self.servers[i].holds(key))
            .collect();
        assert_eq!(holders.len(), 1, "{key} is on servers {holders:?}");
        holders[0]
    }
}

/// The generic suite's environment on a pool of three servers (unix sockets for
/// ketama, loopback TCP for rendezvous, so that both URL forms run the suite).
pub fn pool_env(distribution: &str) -> (MemcachedPool, String, Duration, Duration) {
    let pool = match distribution {
        "ketama" => MemcachedPool::unix(),
        _ => MemcachedPool::tcp(),
    };
    let url = format!("{}&namespace=test:", pool.url(distribution));
    (
        pool,
        url,
        Duration::from_millis(750),
        Duration::from_millis(3500),
    )
}
