//! The connections of a `redis+sentinel://` backend, compiled into both flavors: the
//! master the sentinels name, reached through this flavor's single-server connections
//! (`redis_conn`: its pool or multiplexed connection, its shared subscriber), and
//! replaced when the master moves.
//!
//! The master is looked for again (a *discovery*, see `sentinel.rs`) when a command
//! to it failed with a dropped connection or a timeout, when a write was refused with
//! `READONLY` (the node is a replica now: the write was not applied, so it is sent
//! once more to the master found), and when a sentinel announces `+switch-master`
//! (one subscription per backend: a thread or a task, started with the first command
//! and again after a fork or when its runtime ended). A discovery runs one at a time,
//! within the caller's deadline and at most twice the connect timeout; while it
//! finds no master, commands fail with a [`Connection`](crate::ErrorKind::Connection)
//! error that says so. When the master changes, the waiters of the old one are woken
//! as if their subscription had dropped: they re-check the key on the new master.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use redis::{Cmd, RedisError, RedisResult, Value};

use super::{maybe_async, redis_conn, redis_sentinel_io as io, rt};
use crate::backend::redis::protocol::{self as r, Timeouts};
use crate::backend::redis::replication::Wait;
use crate::backend::redis::sentinel::{self as s, Deployment, Findings};
use crate::config::Options;

/// How long the `+switch-master` subscriber waits before it asks the sentinels again
/// after none could be subscribed to.
const RETRY: Duration = Duration::from_millis(250);

/// How often the subscriber looks whether its backend is gone.
const POLL: Duration = Duration::from_millis(250);

/// The backend's connections: to the current master, and how to find the next.
pub(crate) struct Conn {
    shared: Arc<Shared>,
}

struct Shared {
    deployment: Deployment,
    options: Options,
    timeouts: Timeouts,
    current: RwLock<Arc<Master>>,
    /// The current master may no longer be one: look again before the next command.
    stale: AtomicBool,
    /// One discovery at a time.
    switch: io::Switch,
    /// The `+switch-master` subscriber: the fork generation it runs in and whether it
    /// still runs.
    watcher: Mutex<Option<(u64, Arc<AtomicBool>)>>,
}

/// A master the sentinels named and that said it is one.
struct Master {
    host: String,
    port: u16,
    conn: redis_conn::Conn,
}

fn timed_out(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        what.to_owned(),
    ))
}

/// Whether a failure of the master's connection may mean the master moved.
fn may_have_moved(e: &RedisError) -> bool {
    e.is_timeout() || r::is_dropped(e) || r::is_readonly(e)
}

impl Conn {
    /// Finds the master now (an unreachable one, or none, fails the connection).
    #[maybe_async]
    pub(crate) async fn connect(deployment: Deployment, options: &Options) -> RedisResult<Self> {
        let timeouts = Timeouts::from(options);
        let until = rt::now() + timeouts.connect * 2;
        let master = discover(&deployment, options, None, None, until).await?;
        let shared = Arc::new(Shared {
            deployment,
            options: options.clone(),
            timeouts,
            current: RwLock::new(master),
            stale: AtomicBool::new(false),
            switch: io::Switch::default(),
            watcher: Mutex::new(None),
        });
        Ok(Conn { shared })
    }

    /// Sends one command to the master and reads its reply (within the response
    /// timeout).
    #[maybe_async]
    pub(crate) async fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
        self.send(cmd, None).await
    }

    /// Like [`query`](Conn::query), but gives up at `until` if that comes first.
    #[maybe_async]
    pub(crate) async fn query_until(&self, cmd: &Cmd, until: Instant) -> RedisResult<Value> {
        self.send(cmd, Some(until)).await
    }

    #[maybe_async]
    async fn send(&self, cmd: &Cmd, until: Option<Instant>) -> RedisResult<Value> {
        let master = self.master(until).await?;
        let result = match until {
            Some(until) => master.conn.query_until(cmd, until).await,
            None => master.conn.query(cmd).await,
        };
        match result {
            Err(e) if r::is_readonly(&e) => {
                // A replica refused it (nothing was applied): once more at the master
                // the sentinels name now, if that is another node.
                self.shared.stale_if_current(&master);
                let fresh = self.master(until).await?;
                if Arc::ptr_eq(&fresh, &master) {
                    return Err(e);
                }
                match until {
                    Some(until) => fresh.conn.query_until(cmd, until).await,
                    None => fresh.conn.query(cmd).await,
                }
            }
            Err(e) => {
                if may_have_moved(&e) {
                    self.shared.stale_if_current(&master);
                }
                Err(e)
            }
            ok => ok,
        }
    }

    /// Sends `cmd` and then `wait`'s `WAIT` on one connection of the master: the
    /// command's reply and `WAIT`'s.
    #[maybe_async]
    pub(crate) async fn query_waited(&self, cmd: &Cmd, wait: &Wait) -> RedisResult<(Value, Value)> {
        let master = self.master(None).await?;
        match master.conn.query_waited(cmd, wait).await {
            Err(e) if r::is_readonly(&e) => {
                self.shared.stale_if_current(&master);
                let fresh = self.master(None).await?;
                if Arc::ptr_eq(&fresh, &master) {
                    return Err(e);
                }
                fresh.conn.query_waited(cmd, wait).await
            }
            Err(e) => {
                if may_have_moved(&e) {
                    self.shared.stale_if_current(&master);
                }
                Err(e)
            }
            ok => ok,
        }
    }

    /// Registers a waiter for `holder`'s release of lock `key` on channel `name` at the
    /// master, as the single server's [`subscribe`](redis_conn::Conn::subscribe) does.
    #[maybe_async]
    pub(crate) async fn subscribe(
        &self,
        name: &[u8],
        key: &[u8],
        holder: Option<&[u8]>,
        until: Instant,
    ) -> RedisResult<Option<redis_conn::Subscription>> {
        let master = match self.master(Some(until)).await {
            Ok(master) => master,
            Err(_) if rt::now() >= until => return Ok(None),
            Err(e) => return Err(e),
        };
        let result = master.conn.subscribe(name, key, holder, until).await;
        if let Err(e) = &result
            && may_have_moved(e)
        {
            self.shared.stale_if_current(&master);
        }
        result
    }

    /// The master to send to: looked for again first if the current one may have
    /// moved.
    #[maybe_async]
    async fn master(&self, until: Option<Instant>) -> RedisResult<Arc<Master>> {
        self.shared.watch();
        if !self.shared.stale.load(Ordering::SeqCst) {
            return Ok(Arc::clone(&self.shared.current.read()));
        }
        rt::boxed(self.shared.rediscover(until, None)).await
    }
}

impl Shared {
    /// The current master is `master` and may no longer be the master.
    fn stale_if_current(&self, master: &Arc<Master>) {
        if Arc::ptr_eq(&self.current.read(), master) {
            self.stale.store(true, Ordering::SeqCst);
        }
    }

    /// Looks for the master (one discovery at a time, within `until` and twice the
    /// connect timeout; at `announced` first, the address a `+switch-master` named),
    /// switches to it if it is another node, and returns it.
    #[maybe_async]
    async fn rediscover(
        &self,
        until: Option<Instant>,
        announced: Option<(String, u16)>,
    ) -> RedisResult<Arc<Master>> {
        let now = rt::now();
        let longest = now + self.timeouts.connect * 2;
        let until = until.map_or(longest, |u| u.min(longest));
        let Some(one) = self.switch.lock(until).await else {
            return Err(timed_out(
                "another discovery of the Redis master took the time",
            ));
        };
        let current = Arc::clone(&self.current.read());
        // Cleared before looking: a failure seen meanwhile marks it again.
        if !self.stale.swap(false, Ordering::SeqCst) {
            return Ok(current);
        }
        let found = discover(
            &self.deployment,
            &self.options,
            Some(&current),
            announced,
            until,
        );
        let found = match found.await {
            Ok(found) => found,
            Err(e) => {
                self.stale.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        if !Arc::ptr_eq(&found, &current) {
            *self.current.write() = Arc::clone(&found);
            // Its waiters re-check their keys, on the new master.
            current.conn.abandon();
        }
        drop(one);
        Ok(found)
    }

    /// Starts the `+switch-master` subscriber if it does not run in this process.
    fn watch(self: &Arc<Self>) {
        let mut watcher = self.watcher.lock();
        let generation = r::fork_generation();
        if let Some((g, running)) = watcher.as_ref()
            && *g == generation
            && running.load(Ordering::SeqCst)
        {
            return;
        }
        let running = Arc::new(AtomicBool::new(true));
        let beacon = Running(Arc::clone(&running));
        let weak = Arc::downgrade(self);
        if io::spawn(move || watch(weak, beacon)) {
            *watcher = Some((generation, running));
        }
    }
}

/// Cleared when the subscriber ends (its thread returns, its task is dropped).
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// The `+switch-master` subscriber: subscribed at the first sentinel that answers;
/// a switch of our master starts a discovery at once; a lost subscription (a switch
/// may have been missed) has the next command look again. Ends when the backend is
/// gone.
#[maybe_async]
async fn watch(weak: Weak<Shared>, running: Running) {
    let _running = running;
    let mut missed = false;
    loop {
        let subscribed = {
            let Some(shared) = weak.upgrade() else {
                return;
            };
            let mut subscribed = None;
            for i in shared.deployment.order() {
                let until = rt::now() + shared.timeouts.connect;
                let client = shared.deployment.sentinel(i);
                if let Ok(messages) = io::subscribe(client, s::SWITCH_MASTER, until).await {
                    subscribed = Some(messages);
                    break;
                }
            }
            // (A subscription always follows a lost one or none.)
            if subscribed.is_some() && missed {
                shared.stale.store(true, Ordering::SeqCst);
            }
            subscribed
        };
        let Some(mut messages) = subscribed else {
            missed = true;
            rt::sleep(RETRY).await;
            continue;
        };
        loop {
            let message = messages.next(POLL).await;
            let Some(shared) = weak.upgrade() else {
                return;
            };
            match message {
                Ok(Some(payload)) => {
                    if let Some(announced) = shared.deployment.switched(&payload) {
                        shared.stale.store(true, Ordering::SeqCst);
                        // Failures are the next command's to report.
                        let _ = shared.rediscover(None, Some(announced)).await;
                    }
                }
                Ok(None) => {}
                Err(_) => {
                    missed = true;
                    break;
                }
            }
        }
    }
}

/// Asks the sentinels in turn for the master and checks that the node they name is
/// one (`ROLE`), by `until`. `current` is the master used so far: when they name it
/// again, it is kept. `announced` (a `+switch-master`'s new master) is tried first:
/// while the news spreads, the other sentinels still name the old master, which
/// still says it is one until they turn it into a replica (some seconds later).
#[maybe_async]
async fn discover(
    deployment: &Deployment,
    options: &Options,
    current: Option<&Arc<Master>>,
    announced: Option<(String, u16)>,
    until: Instant,
) -> RedisResult<Arc<Master>> {
    let mut findings = Findings::default();
    let mut tried: Vec<(String, u16)> = Vec::new();
    if let Some((host, port)) = announced
        && let Ok(master) = candidate(deployment, options, current, host, port, until).await
    {
        let role = master.conn.query_until(&s::role_cmd(), until).await;
        if role.ok().and_then(|reply| s::role(&reply)).as_deref() == Some("master") {
            return Ok(master);
        }
        tried.push((master.host.clone(), master.port));
    }
    for i in deployment.order() {
        if rt::now() >= until {
            findings.out_of_time();
            break;
        }
        let step = until.min(rt::now() + Timeouts::from(options).connect);
        let Ok(reply) = io::ask(deployment.sentinel(i), &deployment.ask(), step).await else {
            findings.sentinel_failed();
            continue;
        };
        let Some((host, port)) = s::master_addr(&reply) else {
            findings.unknown_name();
            continue;
        };
        if tried.contains(&(host.clone(), port)) {
            continue;
        }
        tried.push((host.clone(), port));
        let master = match candidate(deployment, options, current, host, port, until).await {
            Ok(master) => master,
            Err(e) => {
                let (host, port) = tried.last().expect("pushed above");
                findings.unreachable(host, *port, &e);
                continue;
            }
        };
        match master.conn.query_until(&s::role_cmd(), until).await {
            Ok(reply) => match s::role(&reply) {
                Some(role) if role == "master" => {
                    deployment.answered(i);
                    return Ok(master);
                }
                role => findings.not_master(
                    &master.host,
                    master.port,
                    role.as_deref().unwrap_or("node of an unknown role"),
                ),
            },
            Err(e) => findings.unreachable(&master.host, master.port, &e),
        }
    }
    if rt::now() >= until {
        return Err(timed_out("no time was left to find the Redis master"));
    }
    Err(findings.error(deployment))
}

/// The data node at `host:port`: `current` if it is that one, else connected by
/// `until`.
#[maybe_async]
async fn candidate(
    deployment: &Deployment,
    options: &Options,
    current: Option<&Arc<Master>>,
    host: String,
    port: u16,
    until: Instant,
) -> RedisResult<Arc<Master>> {
    if let Some(master) = current.filter(|m| m.host == host && m.port == port) {
        return Ok(Arc::clone(master));
    }
    let client = deployment.node(&host, port)?;
    let conn = redis_conn::Conn::connect_until(client, options, until).await?;
    Ok(Arc::new(Master { host, port, conn }))
}
