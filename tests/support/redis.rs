//! A real `redis-server` per test: a temp dir, a unix socket in it (or a loopback
//! port), persistence off, a log file, killed on drop. The binary is
//! `$REDIS_SERVER_BIN`, else `redis-server` on the `PATH`. A missing binary or a
//! server that does not start fails the test, with the log in the message.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`, killed (and its directory removed) on drop.
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    args: Vec<String>,
    port: Option<u16>,
}

/// The server options of a test.
#[derive(Default, Clone)]
pub struct Config {
    /// Also listen on a loopback TCP port (else the unix socket only).
    pub tcp: bool,
    /// Extra `redis-server` arguments (`--requirepass x`, `--user …`).
    pub args: Vec<String>,
}

impl RedisServer {
    /// A server on a unix socket, no password.
    pub fn start() -> Self {
        Self::with(Config::default())
    }

    /// A server with these options.
    pub fn with(config: Config) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("aiolock-redis-")
            .tempdir()
            .expect("a temp dir");
        let mut server = RedisServer {
            child: None,
            dir,
            args: config.args,
            port: None,
        };
        // "Pick a free port, then start" can race with another process: on a failed
        // start, pick again.
        let tries = if config.tcp { 5 } else { 1 };
        for attempt in 1..=tries {
            if config.tcp {
                server.port = Some(free_port());
            }
            match server.spawn() {
                Ok(()) => return server,
                Err(why) if attempt == tries => {
                    panic!(
                        "redis-server did not start: {why}\n--- log ---\n{}",
                        server.log()
                    )
                }
                Err(_) => {}
            }
        }
        unreachable!()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let mut cmd = Command::new(&bin);
        cmd.arg("--port")
            .arg(self.port.unwrap_or(0).to_string())
            .args(["--bind", "127.0.0.1"])
            .arg("--unixsocket")
            .arg(self.socket())
            .args(["--unixsocketperm", "700"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(["--daemonize", "no"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            format!("cannot run {bin:?} ({e}); install the Debian package redis-server or set REDIS_SERVER_BIN")
        })?;
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!("it exited with {status}: {err}"));
            }
            if self.answers() {
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return Err("it did not answer PING within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the server answers on its socket (`+PONG`, or `-NOAUTH` with a password).
    fn answers(&self) -> bool {
        let Ok(mut s) = UnixStream::connect(self.socket()) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(n) if n > 0)
    }

    /// The unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// `redis+unix:///…/redis.sock`, with `query` (e.g. `namespace=t:`) appended.
    pub fn unix_url(&self, query: &str) -> String {
        let sep = if query.is_empty() { "" } else { "?" };
        format!("redis+unix://{}{sep}{query}", self.socket().display())
    }

    /// The loopback TCP port (servers started with `tcp: true`).
    pub fn port(&self) -> u16 {
        self.port.expect("started with tcp: true")
    }

    /// The server's process id (to stop it with SIGSTOP, for instance).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    /// Kills the server (SIGKILL): every connection breaks, every key is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws a [`pause`](RedisServer::pause)d server (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("the server runs");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// Starts it again on the same socket (and port).
    pub fn restart(&mut self) {
        self.kill();
        if let Err(why) = self.spawn() {
            panic!(
                "redis-server did not restart: {why}\n--- log ---\n{}",
                self.log()
            );
        }
    }

    /// Runs one command on a fresh admin connection (no auth) and returns the raw
    /// RESP reply, e.g. `admin(&["CLIENT", "KILL", "TYPE", "pubsub"])`.
    pub fn admin(&self, args: &[&str]) -> String {
        admin(&self.socket(), args)
    }
}

fn admin(socket: &Path, args: &[&str]) -> String {
    let mut s = UnixStream::connect(socket).expect("admin connection");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- redis-server log ---\n{}", self.log());
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// What `backend_suite!` needs: a fresh server, its URL with a namespace, the
/// shortest lease worth testing and the expiry slack (Redis expires to the
/// millisecond and on access).
pub fn env() -> (RedisServer, String, Duration, Duration) {
    let server = RedisServer::start();
    let url = server.unix_url("namespace=test:");
    (
        server,
        url,
        Duration::from_millis(150),
        Duration::from_millis(10),
    )
}
