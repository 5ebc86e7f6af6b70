//! The async flavor's memcached connection, on tokio. The exchange logic is in
//! `generic.rs`.
//!
//! A request is one future that owns its connection: if the future is dropped before
//! the reply is read (cancelled, or timed out), the connection is dropped with it, so
//! a later request never reads an earlier request's reply.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::backend::memcached::meta::{Reply, ReplyBuffer};
use crate::backend::memcached::settings::{Addr, Failure, io_error, next_reply};
use crate::error::{Error, ErrorKind, Result};

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(buf).await,
            Stream::Unix(s) => s.write_all(buf).await,
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf).await,
            Stream::Unix(s) => s.read(buf).await,
        }
    }
}

/// One connection to the server. Dropping it closes it.
pub(crate) struct Conn {
    stream: Stream,
    addr: Addr,
    replies: ReplyBuffer,
    response_timeout: Duration,
}

/// Opens a connection by `deadline` (every address the host resolves to shares it).
pub(crate) async fn connect(
    addr: &Addr,
    deadline: Instant,
    response_timeout: Duration,
) -> Result<Conn> {
    let open = async {
        match addr {
            Addr::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Addr::Unix(path) => UnixStream::connect(path).await.map(Stream::Unix),
        }
    };
    let stream = match tokio::time::timeout_at(deadline.into(), open).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(io_error(addr, "cannot connect", e)),
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!("memcached at {addr}: no connection within the connect timeout"),
            ));
        }
    };
    Ok(Conn {
        stream,
        addr: addr.clone(),
        replies: ReplyBuffer::new(),
        response_timeout,
    })
}

impl Conn {
    /// Writes `request` (one command or several, pipelined), by `deadline`. After an
    /// error the connection is out of step: drop it.
    pub(crate) async fn send(&mut self, request: &[u8], deadline: Instant) -> Result<(), Failure> {
        match tokio::time::timeout_at(deadline.into(), self.stream.write_all(request)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::send(&self.addr, e)),
            Err(_) => Err(self.timeout()),
        }
    }

    /// Reads the next reply, by `deadline`. After an error the connection is out of
    /// step: drop it.
    pub(crate) async fn recv(&mut self, deadline: Instant) -> Result<Reply, Failure> {
        match tokio::time::timeout_at(deadline.into(), self.read_reply()).await {
            Ok(result) => result,
            Err(_) => Err(self.timeout()),
        }
    }

    /// Whether no byte beyond the replies read so far has arrived.
    pub(crate) fn drained(&self) -> bool {
        self.replies.is_empty()
    }

    fn timeout(&self) -> Failure {
        Failure::fatal(Error::new(
            ErrorKind::Timeout,
            format!(
                "memcached at {} did not answer within {:?}",
                self.addr, self.response_timeout
            ),
        ))
    }

    /// Gives up a connection inherited from the parent process by `fork`, without
    /// touching it: dropping it would deregister the socket from the reactor's epoll
    /// set, which the child shares with its parent, and so silence the parent's
    /// connection. The child's copy of the descriptor stays open (a few per fork).
    pub(crate) fn abandon(self) {
        std::mem::forget(self);
    }

    async fn read_reply(&mut self) -> Result<Reply, Failure> {
        // Bytes left over from the last read belong to this reply.
        let mut received = !self.replies.is_empty();
        loop {
            if let Some(reply) = next_reply(&mut self.replies)? {
                return Ok(reply);
            }
            let read = self.stream.read(self.replies.spare()).await;
            match read {
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
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(Failure::closed(&self.addr, received, Some(e)));
                    }
                }
            }
        }
    }
}
