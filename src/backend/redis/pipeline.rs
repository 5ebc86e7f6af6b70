//! The async flavor's own command connection to one Redis server (plain TCP or a unix
//! socket, RESP2): commands of every task pipelined on one socket, without a task of
//! its own.
//!
//! The `redis` crate's multiplexed connection runs a driver task: each command goes
//! to it through a channel, comes back through a oneshot, and carries a timer of its
//! own; on a multi-threaded runtime the two hand-offs per command are wake-ups across
//! workers. Here a command is written into the socket by the task that sends it, and
//! one of the waiting tasks (the *driver*, the oldest unanswered one that was polled)
//! watches the socket: it reads every reply that came, hands each to its task and
//! wakes it, and when its own reply came passes the watch to the next waiting task.
//! Replies come in the order the commands went, so the n-th reply is the n-th
//! command's. A command written while others wait for replies is not written at once:
//! the first such command's task yields to the runtime's other ready tasks and then
//! writes every command they added, in one write. One task per connection, rather
//! than a timer per command, enforces the response timeout.
//!
//! What differs from the crate's connection:
//! - a command without a reply for the response timeout (checked every quarter of it:
//!   after 1 to 1.25 timeouts) fails *with every command behind it* on the connection
//!   (they cannot be answered before it), with a timeout; the connection is then given
//!   up, and the next command opens another;
//! - a lost connection fails every command waiting on it (an I/O error, as the
//!   crate's); the next command opens another;
//! - the driver's task must poll its command's future until it is done or dropped
//!   (as every executor and combinator does): a future polled once and then kept
//!   aside unpolled holds up the replies of the others until the timeout.
//!
//! A command whose future is dropped before its reply keeps its place: its reply is
//! read and dropped.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use redis::{Cmd, RedisError, RedisResult, Value};
use smallvec::SmallVec;
use tokio::net::{TcpStream, UnixStream};

use super::resp;

thread_local! {
    /// The socket whose replies the last future polled on this thread waits for.
    static READ_INTEREST: Cell<RawFd> = const { Cell::new(-1) };
}

/// The descriptor of the socket whose replies the future last polled on this thread
/// waits for (and forgets it), if it waits for one: an executor that watches
/// descriptors itself (the Python package's asyncio bridge) can then poll the future
/// again as soon as the socket is readable, without waiting for the tokio reactor's
/// wake-up, which comes too (readable and not readable, the future is correct either
/// way: this is only a hint). Only this module's connection gives it.
pub fn take_read_interest() -> Option<RawFd> {
    let fd = READ_INTEREST.replace(-1);
    (fd >= 0).then_some(fd)
}

/// The socket, TCP or unix.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read(buf),
            Stream::Unix(s) => s.try_read(buf),
        }
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            Stream::Unix(s) => s.try_write(buf),
        }
    }

    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            Stream::Unix(s) => s.poll_read_ready(cx),
        }
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_write_ready(cx),
            Stream::Unix(s) => s.poll_write_ready(cx),
        }
    }
}

/// The read buffer's first size (grown for a longer reply).
const READ_BUF: usize = 16 * 1024;

/// One connection.
pub(crate) struct Pipe {
    stream: Stream,
    /// Set once the connection failed (also in `State::failed`): read without the lock.
    failed: AtomicBool,
    state: Mutex<State>,
}

struct State {
    /// Bytes of commands not written yet.
    out: Vec<u8>,
    /// Bytes read: replies not parsed yet are `input[start..filled]`.
    input: Vec<u8>,
    start: usize,
    filled: usize,
    /// The commands sent and not yet done with, oldest first: the first is number
    /// `first`.
    slots: VecDeque<Slot>,
    first: u64,
    /// The number of the next command to be answered.
    answered: u64,
    /// The command whose task watches the socket (reads, and writes what is left).
    driver: Option<u64>,
    /// The command whose task writes `out` when it comes back (see [`Call`]).
    flusher: Option<u64>,
    /// Why the connection failed: every command on it fails so.
    failed: Option<RedisError>,
}

struct Slot {
    reply: Option<RedisResult<Value>>,
    waker: Option<Waker>,
    /// Its future is gone (it took its reply, or was dropped).
    gone: bool,
}

/// Wakers collected under the lock, woken after it.
type Wakers = SmallVec<[Waker; 8]>;

fn closed() -> RedisError {
    io::Error::new(io::ErrorKind::UnexpectedEof, "Redis closed the connection").into()
}

fn timed_out() -> RedisError {
    io::Error::new(io::ErrorKind::TimedOut, "Redis did not answer in time").into()
}

impl Pipe {
    /// A connection over `stream`, watched (on a task of the current runtime) so that
    /// a command without a reply for `timeout` fails.
    pub(crate) fn new(stream: Stream, timeout: Duration) -> Arc<Self> {
        let pipe = Arc::new(Pipe {
            stream,
            failed: AtomicBool::new(false),
            state: Mutex::new(State {
                out: Vec::with_capacity(1024),
                input: vec![0; READ_BUF],
                start: 0,
                filled: 0,
                slots: VecDeque::with_capacity(64),
                first: 0,
                answered: 0,
                driver: None,
                flusher: None,
                failed: None,
            }),
        });
        tokio::spawn(watch(Arc::downgrade(&pipe), timeout));
        pipe
    }

    /// Whether the connection failed (its commands fail; open another).
    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Sends `cmd` and reads its reply (an error reply is an `Err`, as the crate's
    /// `extract_error` makes it).
    pub(crate) fn call<'a>(&'a self, cmd: &'a Cmd) -> Call<'a> {
        Call {
            pipe: self,
            cmd,
            id: None,
            done: false,
        }
    }

    /// Marks the connection failed with `e`: every unanswered command gets it.
    fn fail(&self, st: &mut State, e: RedisError, wake: &mut Wakers) {
        self.failed.store(true, Ordering::Relaxed);
        let unanswered = (st.answered - st.first) as usize;
        for slot in st.slots.iter_mut().skip(unanswered) {
            if !slot.gone {
                slot.reply = Some(Err(e.clone()));
                wake.extend(slot.waker.take());
            }
        }
        st.answered = st.first + st.slots.len() as u64;
        st.failed = Some(e);
        st.driver = None;
        st.flusher = None;
        st.out.clear();
    }

    /// Writes what it can of the queued commands.
    fn flush(&self, st: &mut State) -> RedisResult<()> {
        while !st.out.is_empty() {
            match self.stream.try_write(&st.out) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => {
                    st.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads every reply that came and hands each to its command (`me`'s is not woken:
    /// it is being polled).
    fn read(&self, st: &mut State, me: u64, wake: &mut Wakers) -> RedisResult<()> {
        loop {
            if st.filled == st.input.len() {
                if st.start > 0 {
                    st.input.copy_within(st.start..st.filled, 0);
                    st.filled -= st.start;
                    st.start = 0;
                } else {
                    // A reply longer than the buffer.
                    let len = st.input.len() * 2;
                    st.input.resize(len, 0);
                }
            }
            let filled = st.filled;
            match self.stream.try_read(&mut st.input[filled..]) {
                Ok(0) => return Err(closed()),
                Ok(n) => st.filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            while let Some((value, used)) = resp::parse(&st.input[st.start..st.filled])? {
                st.start += used;
                let at = (st.answered - st.first) as usize;
                let id = st.answered;
                let Some(slot) = st.slots.get_mut(at) else {
                    return Err(RedisError::from((
                        redis::ErrorKind::Parse,
                        "a reply from Redis to no command",
                    )));
                };
                st.answered += 1;
                if slot.gone {
                    continue;
                }
                slot.reply = Some(value.extract_error());
                if id != me {
                    wake.extend(slot.waker.take());
                }
            }
            if st.start == st.filled {
                st.start = 0;
                st.filled = 0;
            }
        }
    }

    /// The command `id` is done with (its reply taken, or its future dropped): its slot
    /// goes, and if its task was the driver, the next waiting task is woken to drive.
    fn leave(&self, st: &mut State, id: u64, wake: &mut Wakers) {
        if st.flusher == Some(id) {
            // Dropped before it came back to write: written now.
            st.flusher = None;
            if let Err(e) = self.flush(st) {
                self.fail(st, e, wake);
            }
        }
        if let Some(slot) = st.slots.get_mut((id - st.first) as usize) {
            slot.gone = true;
            slot.reply = None;
        }
        while st.first < st.answered && st.slots.front().is_some_and(|s| s.gone) {
            st.slots.pop_front();
            st.first += 1;
        }
        if st.driver == Some(id) {
            st.driver = None;
            let at = (st.answered - st.first) as usize;
            if let Some(next) = st.slots.iter().skip(at).find(|s| !s.gone) {
                wake.extend(next.waker.clone());
            }
        }
    }
}

/// Checks of the oldest unanswered command per response timeout.
const TICKS: u32 = 4;

/// Fails `pipe` when its oldest unanswered command got no reply for `timeout`: one
/// task per connection, looking every quarter timeout (a command fails after between
/// 1 and 1.25 timeouts without a reply), rather than a timer per command. It ends with
/// the connection, or with its runtime (whose I/O driver the connection's socket is
/// registered with: the connection fails then too).
async fn watch(pipe: Weak<Pipe>, timeout: Duration) {
    let period = timeout / TICKS;
    // The oldest unanswered command when last looked at, and how many looks it stayed.
    let mut last: Option<(u64, u32)> = None;
    loop {
        tokio::time::sleep(period).await;
        let Some(pipe) = pipe.upgrade() else { return };
        let mut wake = Wakers::new();
        {
            let mut st = pipe.state.lock();
            if st.failed.is_some() {
                return;
            }
            let head = st.answered;
            let waiting = head < st.first + st.slots.len() as u64;
            last = match last {
                _ if !waiting => None,
                Some((h, looks)) if h == head && looks + 1 >= TICKS => {
                    pipe.fail(&mut st, timed_out(), &mut wake);
                    None
                }
                Some((h, looks)) if h == head => Some((h, looks + 1)),
                _ => Some((head, 0)),
            };
        }
        wake.into_iter().for_each(Waker::wake);
    }
}

/// The future of [`Pipe::call`].
pub(crate) struct Call<'a> {
    pipe: &'a Pipe,
    cmd: &'a Cmd,
    /// Its number once sent.
    id: Option<u64>,
    done: bool,
}

impl Call<'_> {
    fn poll_locked(
        &mut self,
        st: &mut State,
        cx: &mut Context<'_>,
        wake: &mut Wakers,
    ) -> Poll<RedisResult<Value>> {
        let pipe = self.pipe;
        let id = match self.id {
            Some(id) => id,
            None => {
                if let Some(e) = &st.failed {
                    self.done = true;
                    return Poll::Ready(Err(e.clone()));
                }
                let id = st.first + st.slots.len() as u64;
                self.cmd.write_packed_command(&mut st.out);
                st.slots.push_back(Slot {
                    reply: None,
                    waker: None,
                    gone: false,
                });
                self.id = Some(id);
                let busy = st.answered < id;
                if !busy {
                    // Alone on the connection: written at once.
                    if let Err(e) = pipe.flush(st) {
                        pipe.fail(st, e, wake);
                    }
                } else if st.flusher.is_none() {
                    // Others wait for replies: the tasks that run before this one
                    // comes back (deferred by the runtime until its other tasks ran)
                    // add theirs, and one write sends them all.
                    st.flusher = Some(id);
                    st.slots[(id - st.first) as usize].waker = Some(cx.waker().clone());
                    let yielded = std::pin::pin!(tokio::task::yield_now()).poll(cx);
                    debug_assert!(yielded.is_pending());
                    return Poll::Pending;
                }
                id
            }
        };
        if st.flusher == Some(id) {
            st.flusher = None;
            if let Err(e) = pipe.flush(st) {
                pipe.fail(st, e, wake);
            }
        }
        loop {
            let at = (id - st.first) as usize;
            if let Some(reply) = st.slots[at].reply.take() {
                self.done = true;
                pipe.leave(st, id, wake);
                return Poll::Ready(reply);
            }
            let driving = st.driver.is_none_or(|d| d == id);
            if driving {
                st.driver = Some(id);
                let io = pipe.flush(st).and_then(|()| pipe.read(st, id, wake));
                if let Err(e) = io {
                    pipe.fail(st, e, wake);
                    continue;
                }
                if st.slots[at].reply.is_some() {
                    continue;
                }
            }
            let slot = &mut st.slots[at];
            match &slot.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => slot.waker = Some(cx.waker().clone()),
            }
            if !driving {
                return Poll::Pending;
            }
            // The driver: woken by a reply or by room to write.
            match pipe.stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => {
                    pipe.fail(st, e.into(), wake);
                    continue;
                }
                Poll::Pending => READ_INTEREST.set(pipe.stream.as_raw_fd()),
            }
            if !st.out.is_empty() {
                match pipe.stream.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => {
                        pipe.fail(st, e.into(), wake);
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            return Poll::Pending;
        }
    }
}

impl Future for Call<'_> {
    type Output = RedisResult<Value>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut wake = Wakers::new();
        let polled = {
            let mut st = this.pipe.state.lock();
            this.poll_locked(&mut st, cx, &mut wake)
        };
        wake.into_iter().for_each(Waker::wake);
        polled
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        let Some(id) = self.id.filter(|_| !self.done) else {
            return;
        };
        let mut wake = Wakers::new();
        self.pipe.leave(&mut self.pipe.state.lock(), id, &mut wake);
        wake.into_iter().for_each(Waker::wake);
    }
}

/// Where and how [`Opener::open`] connects: the `redis` crate's connection info, for
/// what this connection serves (plain TCP or a unix socket, RESP2).
pub(crate) struct Opener {
    addr: Addr,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    connect_timeout: Duration,
    response_timeout: Duration,
}

enum Addr {
    Tcp(String, u16),
    Unix(std::path::PathBuf),
}

impl Opener {
    /// How to open `client`'s connections, unless they need what only the crate's
    /// connection does (TLS, RESP3).
    pub(crate) fn of(
        client: &redis::Client,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Option<Self> {
        let info = client.get_connection_info();
        let settings = info.redis_settings();
        if settings.protocol() != redis::ProtocolVersion::RESP2 {
            return None;
        }
        let addr = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => Addr::Tcp(host.clone(), *port),
            redis::ConnectionAddr::Unix(path) => Addr::Unix(path.clone()),
            _ => return None,
        };
        Some(Opener {
            addr,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            db: settings.db(),
            connect_timeout,
            response_timeout,
        })
    }

    /// A new connection, authenticated (`AUTH`), on its database (`SELECT`) and
    /// checked (`PING`: wrong credentials show now), all within the connect timeout.
    pub(crate) async fn open(&self) -> RedisResult<Arc<Pipe>> {
        let setup = async {
            let stream = match &self.addr {
                Addr::Tcp(host, port) => {
                    let s = TcpStream::connect((host.as_str(), *port)).await?;
                    s.set_nodelay(true)?;
                    Stream::Tcp(s)
                }
                Addr::Unix(path) => Stream::Unix(UnixStream::connect(path).await?),
            };
            let pipe = Pipe::new(stream, self.response_timeout);
            if let Some(password) = &self.password {
                let mut auth = redis::cmd("AUTH");
                if let Some(user) = &self.username {
                    auth.arg(user);
                }
                auth.arg(password);
                pipe.call(&auth).await?;
            }
            if self.db != 0 {
                let mut select = redis::cmd("SELECT");
                select.arg(self.db);
                pipe.call(&select).await?;
            }
            pipe.call(&redis::cmd("PING")).await?;
            Ok(pipe)
        };
        tokio::time::timeout(self.connect_timeout, setup)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(io::ErrorKind::TimedOut, "connecting to Redis timed out").into())
            })
    }
}
