//! A fault-injecting proxy between a client and a real server, on a unix socket or a
//! loopback port, for every backend's tests. It forwards bytes both ways and, on
//! demand, delays the server's bytes, loses one reply after the server executed the
//! request, stalls, or cuts every connection. It also counts what clients sent, so a
//! test can wait until a request has passed (an ordering hook that needs no sleep).
//!
//! ```ignore
//! let proxy = Proxy::unix(server.socket());
//! let url = format!("redis+unix://{}", proxy.path().display());
//! proxy.lose_reply_after(b"EVALSHA");   // the next script runs, its reply is lost
//! ```
//!
//! Plain threads (three per connection), so blocking and async tests use it alike.

#![allow(dead_code)] // each backend's tests use a part

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// How long [`Proxy::wait_sent`] waits before it fails the test.
const PATIENCE: Duration = Duration::from_secs(30);

/// A running proxy; stops accepting and closes its connections on drop.
pub struct Proxy {
    shared: Arc<Shared>,
    local: Local,
    _dir: Option<tempfile::TempDir>,
}

enum Local {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

#[derive(Clone)]
enum Upstream {
    Unix(PathBuf),
    Tcp(String),
}

struct Shared {
    upstream: Upstream,
    state: Mutex<State>,
    changed: Condvar,
    stopping: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Delay for server→client bytes, on the connections whose client sent the tag
    /// (all connections when the tag is `None`).
    delay: Option<(Duration, Option<Vec<u8>>)>,
    /// Armed once: the next request containing this loses its reply.
    lose: Option<Vec<u8>>,
    stalled: bool,
    /// New connections are closed at once (as if the server were down).
    refusing: bool,
    conns: Vec<Conn>,
    next_id: u64,
}

struct Conn {
    id: u64,
    client: Stream,
    server: Stream,
    /// Everything the client sent on this connection.
    sent: Vec<u8>,
    /// How many reads of the client's bytes it took.
    reads: usize,
    /// The reply to the request forwarded at this offset of `sent` is to be lost.
    lose_from: Option<usize>,
    open: bool,
}

impl Proxy {
    /// A proxy on a unix socket in a temp dir, forwarding to the unix socket `upstream`.
    pub fn unix(upstream: impl AsRef<Path>) -> Proxy {
        let dir = tempfile::Builder::new()
            .prefix("aiolock-proxy-")
            .tempdir()
            .expect("a temp dir");
        let path = dir.path().join("proxy.sock");
        let listener = UnixListener::bind(&path).expect("bind the proxy socket");
        let shared = Shared::new(Upstream::Unix(upstream.as_ref().to_owned()));
        let s = Arc::clone(&shared);
        thread::spawn(move || {
            for client in listener.incoming() {
                if s.stopping.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(c) = client {
                    s.accept(Stream::Unix(c));
                }
            }
        });
        Proxy {
            shared,
            local: Local::Unix(path),
            _dir: Some(dir),
        }
    }

    /// A proxy on a loopback port, forwarding to `upstream` (`"127.0.0.1:6379"`).
    pub fn tcp(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Shared::new(Upstream::Tcp(upstream.to_owned()));
        let s = Arc::clone(&shared);
        thread::spawn(move || {
            for client in listener.incoming() {
                if s.stopping.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(c) = client {
                    let _ = c.set_nodelay(true);
                    s.accept(Stream::Tcp(c));
                }
            }
        });
        Proxy {
            shared,
            local: Local::Tcp(addr),
            _dir: None,
        }
    }

    /// The proxy's unix socket (of a proxy made by [`Proxy::unix`]).
    pub fn path(&self) -> &Path {
        match &self.local {
            Local::Unix(p) => p,
            Local::Tcp(_) => panic!("a TCP proxy has no path"),
        }
    }

    /// The proxy's `host:port` (of a proxy made by [`Proxy::tcp`]).
    pub fn addr(&self) -> String {
        match &self.local {
            Local::Tcp(a) => a.to_string(),
            Local::Unix(_) => panic!("a unix proxy has no port"),
        }
    }

    /// Delays every server→client byte by `by`, on the connections whose client has
    /// sent `tag` (every connection for `None`). Order is kept.
    pub fn delay_down(&self, by: Duration, tag: Option<&[u8]>) {
        self.shared.lock().delay = Some((by, tag.map(<[u8]>::to_vec)));
    }

    /// Once: the next request containing `pattern` is forwarded, the server's reply
    /// to it is swallowed, and that connection is cut — the server executed the
    /// command, the client never hears of it.
    pub fn lose_reply_after(&self, pattern: &[u8]) {
        self.shared.lock().lose = Some(pattern.to_vec());
    }

    /// Stops (`true`) or resumes forwarding in both directions; connections stay open.
    pub fn stall(&self, on: bool) {
        self.shared.lock().stalled = on;
        self.shared.changed.notify_all();
    }

    /// Closes every new connection at once (`true`), as if the server were down, or
    /// connects them again (`false`). Open connections are left as they are.
    pub fn refuse(&self, on: bool) {
        self.shared.lock().refusing = on;
    }

    /// Closes every open connection now (new ones are accepted as usual).
    pub fn cut(&self) {
        let mut state = self.shared.lock();
        for c in state.conns.iter_mut() {
            c.close();
        }
    }

    /// No fault: no delay, no reply to lose, not stalled, not refusing.
    pub fn clear(&self) {
        let mut state = self.shared.lock();
        state.delay = None;
        state.lose = None;
        state.stalled = false;
        state.refusing = false;
        drop(state);
        self.shared.changed.notify_all();
    }

    /// How many times clients have sent `pattern` so far (over all connections).
    pub fn sent(&self, pattern: &[u8]) -> usize {
        self.shared
            .lock()
            .conns
            .iter()
            .map(|c| count(&c.sent, pattern))
            .sum()
    }

    /// Blocks until clients have sent `pattern` at least `n` times; fails the test
    /// after 30 s.
    pub fn wait_sent(&self, pattern: &[u8], n: usize) {
        let until = Instant::now() + PATIENCE;
        let mut state = self.shared.lock();
        loop {
            let seen: usize = state.conns.iter().map(|c| count(&c.sent, pattern)).sum();
            if seen >= n {
                return;
            }
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "waited {PATIENCE:?} for {n} × {:?}, saw {seen}",
                String::from_utf8_lossy(pattern)
            );
            state = self.shared.changed.wait_timeout(state, left).unwrap().0;
        }
    }

    /// How many pieces clients' bytes came in so far (over all connections): for a
    /// client that waits for each reply before it writes again, its round trips (a
    /// small write arrives in one piece; pipelined requests in one write count once).
    pub fn reads(&self) -> usize {
        self.shared.lock().conns.iter().map(|c| c.reads).sum()
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.shared.lock().conns.iter().filter(|c| c.open).count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.clear();
        self.cut();
        // Wake the accept loop so that it sees `stopping`.
        match &self.local {
            Local::Unix(p) => drop(UnixStream::connect(p)),
            Local::Tcp(a) => drop(TcpStream::connect(a)),
        }
    }
}

impl Shared {
    fn new(upstream: Upstream) -> Arc<Shared> {
        Arc::new(Shared {
            upstream,
            state: Mutex::default(),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connects a new client to the server and starts forwarding.
    fn accept(self: &Arc<Self>, client: Stream) {
        if self.lock().refusing {
            client.shutdown();
            return;
        }
        let server = match &self.upstream {
            Upstream::Unix(p) => UnixStream::connect(p).map(Stream::Unix),
            Upstream::Tcp(a) => TcpStream::connect(a).map(|s| {
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
        };
        let Ok(server) = server else {
            // The server is down: the client sees its connection closed.
            client.shutdown();
            return;
        };
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            return;
        };
        let id = {
            let mut state = self.lock();
            state.next_id += 1;
            let id = state.next_id;
            state.conns.push(Conn {
                id,
                client,
                server,
                sent: Vec::new(),
                reads: 0,
                lose_from: None,
                open: true,
            });
            id
        };
        let me = Arc::clone(self);
        thread::spawn(move || me.up(id, c2, s2));
        let me = Arc::clone(self);
        thread::spawn(move || me.down(id, s3, c3));
    }

    /// Client → server: record, arm a lost reply, honour a stall, forward.
    fn up(&self, id: u64, mut client: Stream, mut server: Stream) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            {
                let mut state = self.stalled_wait();
                let lose = state.lose.clone();
                let Some(conn) = state.conn(id) else { break };
                let before = conn.sent.len();
                conn.sent.extend_from_slice(&buf[..n]);
                conn.reads += 1;
                if let Some(p) = &lose {
                    let from = before.saturating_sub(p.len() - 1);
                    if count(&conn.sent[from..], p) > 0 {
                        conn.lose_from = Some(before);
                        state.lose = None;
                    }
                }
            }
            self.changed.notify_all();
            if server.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        self.close(id);
    }

    /// Server → client: lose a reply, delay, honour a stall, forward. A second thread
    /// writes, so that a delay does not hold back reading.
    fn down(self: &Arc<Self>, id: u64, mut server: Stream, client: Stream) {
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        let me = Arc::clone(self);
        thread::spawn(move || me.deliver(id, rx, client));
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let due = {
                let mut state = self.lock();
                let delay = state.delay.clone();
                let Some(conn) = state.conn(id) else { break };
                if conn.lose_from.is_some() {
                    // The server answered the request: the client never hears it.
                    conn.close();
                    break;
                }
                match delay {
                    Some((by, None)) => Instant::now() + by,
                    Some((by, Some(tag))) if count(&conn.sent, &tag) > 0 => Instant::now() + by,
                    _ => Instant::now(),
                }
            };
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
        drop(tx);
    }

    fn deliver(&self, id: u64, rx: mpsc::Receiver<(Instant, Vec<u8>)>, mut client: Stream) {
        for (due, bytes) in rx {
            let wait = due.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                thread::sleep(wait); // the injected delay itself
            }
            drop(self.stalled_wait());
            if client.write_all(&bytes).is_err() {
                break;
            }
        }
        self.close(id);
    }

    /// The state, once forwarding is not stalled.
    fn stalled_wait(&self) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        while state.stalled && !self.stopping.load(Ordering::SeqCst) {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state
    }

    fn close(&self, id: u64) {
        if let Some(c) = self.lock().conn(id) {
            c.close();
        }
    }
}

impl State {
    fn conn(&mut self, id: u64) -> Option<&mut Conn> {
        self.conns.iter_mut().find(|c| c.id == id && c.open)
    }
}

impl Conn {
    fn close(&mut self) {
        self.open = false;
        self.client.shutdown();
        self.server.shutdown();
    }
}

/// Non-overlapping occurrences of `pattern` in `hay`.
fn count(hay: &[u8], pattern: &[u8]) -> usize {
    if pattern.is_empty() || hay.len() < pattern.len() {
        return 0;
    }
    let mut n = 0;
    let mut i = 0;
    while i + pattern.len() <= hay.len() {
        if &hay[i..i + pattern.len()] == pattern {
            n += 1;
            i += pattern.len();
        } else {
            i += 1;
        }
    }
    n
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The proxy's own tests, against a tiny echo server on a unix socket.
#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server: replies to each chunk with the same bytes.
    fn echo() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("echo.sock");
        let listener = UnixListener::bind(&path).unwrap();
        thread::spawn(move || {
            for c in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut c = c;
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = c.read(&mut buf) {
                        if c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (dir, path)
    }

    fn roundtrip(c: &mut UnixStream, msg: &[u8]) -> io::Result<Vec<u8>> {
        c.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn forwards_counts_and_waits() {
        let (_d, up) = echo();
        let proxy = Proxy::unix(&up);
        let mut c = UnixStream::connect(proxy.path()).unwrap();
        assert_eq!(roundtrip(&mut c, b"PING").unwrap(), b"PING");
        proxy.wait_sent(b"PING", 1);
        assert_eq!(proxy.sent(b"PING"), 1);
        assert_eq!(proxy.connections(), 1);
    }

    #[test]
    fn loses_one_reply_then_cuts() {
        let (_d, up) = echo();
        let proxy = Proxy::unix(&up);
        proxy.lose_reply_after(b"SET");
        let mut c = UnixStream::connect(proxy.path()).unwrap();
        assert_eq!(roundtrip(&mut c, b"GET").unwrap(), b"GET");
        assert!(roundtrip(&mut c, b"SET").is_err(), "the reply is lost");
        // Once only: a new connection works.
        let mut c = UnixStream::connect(proxy.path()).unwrap();
        assert_eq!(roundtrip(&mut c, b"SET").unwrap(), b"SET");
    }

    #[test]
    fn stall_holds_bytes_until_resumed() {
        let (_d, up) = echo();
        let proxy = Proxy::unix(&up);
        let mut c = UnixStream::connect(proxy.path()).unwrap();
        proxy.stall(true);
        c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        assert!(c.read(&mut b).is_err(), "nothing passes while stalled");
        proxy.stall(false);
        c.set_read_timeout(None).unwrap();
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
    }

    #[test]
    fn cut_closes_open_connections() {
        let (_d, up) = echo();
        let proxy = Proxy::unix(&up);
        let mut c = UnixStream::connect(proxy.path()).unwrap();
        assert_eq!(roundtrip(&mut c, b"a").unwrap(), b"a");
        proxy.cut();
        assert!(roundtrip(&mut c, b"b").is_err());
    }

    #[test]
    fn delays_only_tagged_connections() {
        let (_d, up) = echo();
        let proxy = Proxy::unix(&up);
        proxy.delay_down(Duration::from_secs(1), Some(b"SUBSCRIBE"));
        let mut plain = UnixStream::connect(proxy.path()).unwrap();
        let mut tagged = UnixStream::connect(proxy.path()).unwrap();
        let start = Instant::now();
        roundtrip(&mut tagged, b"SUBSCRIBE").unwrap();
        assert!(start.elapsed() >= Duration::from_secs(1));
        // An untagged connection's reply overtakes a delayed one sent before it.
        tagged.write_all(b"m").unwrap();
        assert_eq!(roundtrip(&mut plain, b"p").unwrap(), b"p");
        let mut b = [0u8; 1];
        tagged.set_nonblocking(true).unwrap();
        assert!(tagged.read(&mut b).is_err(), "still delayed");
    }
}
