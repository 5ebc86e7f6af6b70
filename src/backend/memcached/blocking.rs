//! The blocking flavor's memcached connection: `std::net` and unix sockets, with
//! socket timeouts. The exchange logic is in `generic.rs`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::backend::memcached::meta::{Reply, ReplyBuffer};
use crate::backend::memcached::settings::{Addr, Failure, io_error, next_reply};
use crate::error::{Error, ErrorKind, Result};

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_read_timeout(&self, d: Duration) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(d)),
            Stream::Unix(s) => s.set_read_timeout(Some(d)),
        }
    }

    fn set_write_timeout(&self, d: Duration) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(Some(d)),
            Stream::Unix(s) => s.set_write_timeout(Some(d)),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(buf),
            Stream::Unix(s) => s.write_all(buf),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

/// One connection to the server. Dropping it closes it.
pub(crate) struct Conn {
    stream: Stream,
    addr: Addr,
    replies: ReplyBuffer,
    /// The socket's read timeout now.
    read_timeout: Duration,
    response_timeout: Duration,
}

/// A read timeout may exceed the time left by this much before it is set again
/// (saves a system call per request).
const TIMEOUT_SLACK: Duration = Duration::from_millis(10);

/// Opens a connection by `deadline` (every address the host resolves to shares it).
pub(crate) fn connect(addr: &Addr, deadline: Instant, response_timeout: Duration) -> Result<Conn> {
    let stream = match addr {
        Addr::Tcp { host, port } => {
            let candidates = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| io_error(addr, "cannot resolve the host", e))?;
            let mut last = None;
            let mut found = None;
            for candidate in candidates {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    last = Some(std::io::Error::from(std::io::ErrorKind::TimedOut));
                    break;
                }
                match TcpStream::connect_timeout(&candidate, left) {
                    Ok(s) => {
                        found = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let stream = match (found, last) {
                (Some(s), _) => s,
                (None, Some(e)) => return Err(io_error(addr, "cannot connect", e)),
                (None, None) => {
                    return Err(Error::new(
                        ErrorKind::Connection,
                        format!("memcached at {addr}: the host has no address"),
                    ));
                }
            };
            stream
                .set_nodelay(true)
                .map_err(|e| io_error(addr, "cannot set TCP_NODELAY", e))?;
            Stream::Tcp(stream)
        }
        Addr::Unix(path) => Stream::Unix(
            UnixStream::connect(path).map_err(|e| io_error(addr, "cannot connect", e))?,
        ),
    };
    stream
        .set_read_timeout(response_timeout)
        .and_then(|()| stream.set_write_timeout(response_timeout))
        .map_err(|e| io_error(addr, "cannot set the socket timeouts", e))?;
    Ok(Conn {
        stream,
        addr: addr.clone(),
        replies: ReplyBuffer::new(),
        read_timeout: response_timeout,
        response_timeout,
    })
}

impl Conn {
    /// Writes `request` (one command or several, pipelined), by `deadline` (the
    /// socket's write timeout is the response timeout). After an error the connection
    /// is out of step: drop it.
    pub(crate) fn send(&mut self, request: &[u8], _deadline: Instant) -> Result<(), Failure> {
        if self.read_timeout < self.response_timeout {
            self.set_read_timeout(self.response_timeout)?;
        }
        self.stream
            .write_all(request)
            .map_err(|e| Failure::send(&self.addr, e))
    }

    /// Reads the next reply, by `deadline`. After an error the connection is out of
    /// step: drop it.
    pub(crate) fn recv(&mut self, deadline: Instant) -> Result<Reply, Failure> {
        // Bytes left over from the last read belong to this reply.
        let mut received = !self.replies.is_empty();
        loop {
            if let Some(reply) = next_reply(&mut self.replies)? {
                return Ok(reply);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure::fatal(self.timeout()));
            }
            if left + TIMEOUT_SLACK < self.read_timeout {
                self.set_read_timeout(left)?;
            }
            match self.stream.read(self.replies.spare()) {
                Ok(0) => {
                    self.replies.filled(0);
                    return Err(Failure::closed(&self.addr, received, None));
                }
                Ok(n) => {
                    self.replies.filled(n);
                    received = true;
                }
                Err(e) => {
                    self.replies.filled(0);
                    match e.kind() {
                        std::io::ErrorKind::Interrupted => {}
                        // The socket's read timeout can fire before the clock says
                        // it passed (seen on VMs): read on until `deadline` really
                        // passed, or a waiter's poll would fail instead of ending
                        // its wait by its deadline.
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            if Instant::now() < deadline => {}
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                            return Err(Failure::fatal(self.timeout()));
                        }
                        _ => return Err(Failure::closed(&self.addr, received, Some(e))),
                    }
                }
            }
        }
    }

    /// Whether no byte beyond the replies read so far has arrived.
    pub(crate) fn drained(&self) -> bool {
        self.replies.is_empty()
    }

    /// Gives up a connection inherited from the parent process by `fork`: closing the
    /// child's copy of the socket leaves the parent's connection open.
    pub(crate) fn abandon(self) {}

    fn set_read_timeout(&mut self, d: Duration) -> Result<(), Failure> {
        let d = d.max(Duration::from_millis(1));
        self.stream
            .set_read_timeout(d)
            .map_err(|e| Failure::fatal(io_error(&self.addr, "cannot set the read timeout", e)))?;
        self.read_timeout = d;
        Ok(())
    }

    fn timeout(&self) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "memcached at {} did not answer within {:?}",
                self.addr, self.response_timeout
            ),
        )
    }
}
