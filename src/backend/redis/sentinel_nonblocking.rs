//! The async flavor's I/O for a `redis+sentinel://` backend (the logic is in
//! `sentinel_generic.rs`): one command to a sentinel on a fresh connection, the
//! `+switch-master` subscription on a task (RESP3 pushes), and the lock that lets one
//! discovery run at a time.

use std::time::{Duration, Instant};

use redis::{Cmd, PushInfo, PushKind, RedisError, RedisResult, Value};
use tokio::sync::mpsc;

use crate::backend::redis::protocol as r;

fn timed_out(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        what.to_owned(),
    ))
}

/// Sends `cmd` to the sentinel `client` names, on a fresh connection, by `until`.
pub(crate) async fn ask(client: &redis::Client, cmd: &Cmd, until: Instant) -> RedisResult<Value> {
    let asked = async {
        let mut con = client.get_multiplexed_async_connection().await?;
        cmd.query_async::<Value>(&mut con).await
    };
    tokio::time::timeout_at(until.into(), asked)
        .await
        .unwrap_or_else(|_| Err(timed_out("a sentinel did not answer in time")))
}

/// A subscription to a sentinel's channel.
pub(crate) struct Messages {
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    /// Keeps the connection (and its driver task) alive.
    _con: redis::aio::MultiplexedConnection,
}

/// Subscribes `channel` at the sentinel `client` names (over RESP3), confirmed by
/// `until`.
pub(crate) async fn subscribe(
    client: &redis::Client,
    channel: &str,
    until: Instant,
) -> RedisResult<Messages> {
    let (tx, pushes) = mpsc::unbounded_channel();
    let client = r::resp3(client)?;
    let subscribed = async {
        let config = redis::AsyncConnectionConfig::new().set_push_sender(tx);
        let mut con = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        con.subscribe(channel).await?;
        Ok(con)
    };
    let con = tokio::time::timeout_at(until.into(), subscribed)
        .await
        .unwrap_or_else(|_| Err(timed_out("a sentinel did not confirm in time")))?;
    Ok(Messages { pushes, _con: con })
}

impl Messages {
    /// The next message's payload, `None` if none came within `wait`; an error when
    /// the subscription is lost.
    pub(crate) async fn next(&mut self, wait: Duration) -> RedisResult<Option<Vec<u8>>> {
        let lost = || RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        match tokio::time::timeout(wait, self.pushes.recv()).await {
            Err(_) => Ok(None),
            Ok(None) => Err(lost()),
            Ok(Some(push)) => match (push.kind, push.data.as_slice()) {
                (PushKind::Message, [_, Value::BulkString(payload)]) => Ok(Some(payload.clone())),
                (PushKind::Disconnection, _) => Err(lost()),
                _ => Ok(None),
            },
        }
    }
}

/// Runs the future `work` makes on a task of the current runtime; false without one.
pub(crate) fn spawn<F>(work: impl FnOnce() -> F) -> bool
where
    F: Future<Output = ()> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(work());
            true
        }
        Err(_) => false,
    }
}

/// One discovery at a time.
#[derive(Default)]
pub(crate) struct Switch(tokio::sync::Mutex<()>);

impl Switch {
    /// The lock, or `None` if `until` passed first.
    pub(crate) async fn lock(&self, until: Instant) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        tokio::time::timeout_at(until.into(), self.0.lock())
            .await
            .ok()
    }
}
