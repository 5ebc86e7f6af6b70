// The Sentinel bodies, written once: `include!`d into `blocking::body` and
// `nonblocking::body` (see `mod.rs`), where `super::*` is the flavor's API and `rt`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aiolock::{ErrorKind, Outcome};

use super::{Cache, ExclusiveGuard, maybe_async, rt};
use crate::support::redis_sentinel::{Config, RedisSentinel, Reply, free_port};

/// How far past its bound a waiter may return on a loaded machine (a round trip, a
/// scheduling delay; never a failover's duration).
const SLACK: Duration = Duration::from_millis(750);

/// `WAIT` for the replica, long enough for a loaded machine's replica to confirm
/// (`WAIT` returns as soon as it does).
const CONFIRMED: &str = "wait_replicas=1&wait_timeout=5";

#[maybe_async]
async fn open(url: &str) -> Cache {
    Cache::from_url(url).await.unwrap()
}

/// Starts a deployment (off the runtime's workers in the async flavor).
#[maybe_async]
async fn deployment(config: Config) -> Arc<RedisSentinel> {
    Arc::new(rt::unblock(move || RedisSentinel::start(config)).await)
}

/// Polls until `cache`'s writes land on node `i`: the backend follows the master
/// there. A marker written through the cache is read back on the node. Within 5 s:
/// sooner than the sentinels turn a failed-over master that still runs into a
/// replica (8 s after they see it still says it is a master), so that the backend
/// must have followed the sentinels' `+switch-master`, not a `READONLY` refusal.
#[maybe_async]
async fn follows(cache: &Cache, d: &RedisSentinel, i: usize, namespace: &str) {
    let until = Instant::now() + Duration::from_secs(5);
    let key = format!("{namespace}follow");
    for n in 0u64.. {
        let marker = n.to_string();
        // Errors while the backend looks for the master are expected here.
        let set = cache.set("follow", marker.as_bytes(), None).await;
        if set.is_ok() && d.node(i, &["GET", &key]) == Reply::Bulk(Some(marker.into_bytes())) {
            return;
        }
        assert!(
            Instant::now() < until,
            "the cache did not follow the master to node {i}"
        );
        rt::sleep(Duration::from_millis(5)).await;
    }
}

/// An exclusive waiter: its guard (if it got the lock) and how long it took.
#[maybe_async]
async fn wait_exclusive(
    cache: Cache,
    bound: Duration,
) -> (aiolock::Result<Option<ExclusiveGuard>>, Duration) {
    let started = Instant::now();
    let got = cache
        .lock("k", Duration::from_secs(30))
        .wait_at_most(bound)
        .acquire()
        .await;
    (got, started.elapsed())
}

/// A RedLock waiter with a short bound: its outcome and how long it took.
#[maybe_async]
async fn wait_redlock(cache: Cache, bound: Duration) -> (aiolock::Result<Outcome>, Duration) {
    let started = Instant::now();
    let got = cache
        .redlock("k", Duration::from_secs(30))
        .wait_at_most(bound)
        .acquire()
        .await;
    let outcome = got.map(|g| {
        let outcome = g.outcome();
        drop(g);
        outcome
    });
    (outcome, started.elapsed())
}

/// The value of `key` on node `i`.
fn on_node(d: &RedisSentinel, i: usize, key: &str) -> Option<Vec<u8>> {
    match d.node(i, &["GET", key]) {
        Reply::Bulk(value) => value,
        other => panic!("GET {key} on node {i}: {other:?}"),
    }
}

/// `SENTINEL FAILOVER` while one caller holds the lock (replicated, `WAIT` says so)
/// and two wait: both caches follow the new master; the holder's release finds its
/// key there; the long waiter then takes the lock on the new master; the short one
/// returns by its bound.
#[maybe_async]
pub async fn failover_during_hold_and_waits() {
    let d = deployment(Config::failover()).await;
    // Only the holder waits for the replica: after a failover the sentinels turn the
    // old master into a replica only some seconds later (they wait for its role to
    // show), and until then a waited write waits out the timeout.
    let a_cache = open(&d.url(&format!("namespace=fo:&{CONFIRMED}"))).await;
    let b_cache = open(&d.url("namespace=fo:")).await;
    let a = a_cache.lock("k", Duration::from_secs(30)).acquire().await;
    let a = a.unwrap().expect("the lock is free");
    let replicated = a.replication().expect("wait_replicas asks for it");
    assert_eq!((replicated.acked(), replicated.wanted()), (1, 1));
    let long = Duration::from_secs(20);
    let short = Duration::from_millis(800);
    let b = {
        let cache = b_cache.clone();
        rt::spawn(move || wait_exclusive(cache, long))
    };
    let c = {
        let cache = b_cache.clone();
        rt::spawn(move || wait_redlock(cache, short))
    };
    rt::waiters("fo:k-lock", 2).await;
    let new = {
        let d = Arc::clone(&d);
        rt::unblock(move || d.failover()).await
    };
    follows(&a_cache, &d, new, "fo:").await;
    follows(&b_cache, &d, new, "fo:").await;
    let token = a.token().as_bytes().to_vec();
    assert_eq!(on_node(&d, new, "fo:k-lock"), Some(token), "replicated");
    let released = a.release().await.unwrap();
    assert!(released, "released on the new master");
    let (b, waited) = rt::join(b).await;
    let b = b.unwrap().expect("the long waiter takes the lock");
    assert!(waited < long, "{waited:?}");
    let b_token = b.token().as_bytes().to_vec();
    assert_eq!(
        on_node(&d, new, "fo:k-lock"),
        Some(b_token),
        "on the new master"
    );
    let (c, waited) = rt::join(c).await;
    let c = c.unwrap();
    assert!(
        matches!(c, Outcome::TimedOut | Outcome::Released),
        "the short waiter: {c:?}"
    );
    assert!(waited < short + SLACK, "past its bound: {waited:?}");
    let released = b.release().await.unwrap();
    assert!(released);
}

/// The master killed (SIGKILL) while one caller holds the lock and another waits:
/// while no master is reachable, commands fail at once with a one-line
/// `Connection` error that names no secret, and so does the waiter's next claim (it
/// does not wait out its bound on a dead server); once the replica is promoted, the
/// holder's release finds its replicated key there and a new acquisition works.
#[maybe_async]
pub async fn master_killed_during_hold_and_wait() {
    let mut d = deployment(Config::failover()).await;
    // Only the holder waits for the replica: once the master is dead, no replica is
    // left to confirm, and every waited write would wait out the timeout.
    let a_cache = open(&d.url(&format!("namespace=kill:&{CONFIRMED}"))).await;
    let b_cache = open(&d.url("namespace=kill:")).await;
    let a = a_cache.lock("k", Duration::from_secs(30)).acquire().await;
    let a = a.unwrap().expect("the lock is free");
    assert!(a.replication().unwrap().is_complete());
    let bound = Duration::from_secs(20);
    let b = {
        let cache = b_cache.clone();
        rt::spawn(move || wait_exclusive(cache, bound))
    };
    rt::waiters("kill:k-lock", 1).await;
    let old = Arc::get_mut(&mut d).expect("not shared").kill_master();
    let new = 1 - old;
    let err = a_cache.get("x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(
        !text.contains("secret"),
        "a password in the message: {text}"
    );
    let (b, waited) = rt::join(b).await;
    match b {
        // Woken by the lost subscription, its claim found no master.
        Err(e) => assert_eq!(e.kind(), ErrorKind::Connection, "{e}"),
        // Or (a slow wake-up) it claimed on the new master and still waits for `a`:
        // impossible here, `a` has not released yet.
        Ok(got) => panic!("the waiter returned {:?} before the release", got.is_some()),
    }
    assert!(waited < bound, "{waited:?}");
    {
        let d = Arc::clone(&d);
        rt::unblock(move || d.wait_master(new, Duration::from_secs(30))).await;
    }
    let released = a.release().await.unwrap();
    assert!(released, "the replicated key, released on the new master");
    let c = b_cache
        .lock("k", Duration::from_secs(30))
        .try_acquire()
        .await;
    let c = c.unwrap().expect("free after the release");
    let c_token = c.token().as_bytes().to_vec();
    assert_eq!(on_node(&d, new, "kill:k-lock"), Some(c_token));
    let released = c.release().await.unwrap();
    assert!(released);
}

/// A lock written while the replica was cut off is lost when the master dies: `WAIT`
/// told the holder (0 of 1 replicas); after the failover its `extend` reports the
/// loss, its `release` reports `false` (the truth: the lock was no longer ours), and
/// another caller takes the lock at once. The fence is lost too: the new master
/// still has the counter of the last replicated acquisition, so the next fence
/// repeats the lost one (what `WAIT`'s count warns of).
#[maybe_async]
pub async fn lock_lost_by_a_failover_is_reported() {
    let mut d = deployment(Config::failover()).await;
    let url = d.url("namespace=lost:&wait_replicas=1&wait_timeout=0.1");
    let (a_cache, b_cache) = (open(&url).await, open(&url).await);
    // A first, replicated acquisition sets the fence counter on both nodes.
    let first = a_cache
        .lock("k", Duration::from_secs(30))
        .fenced()
        .acquire()
        .await;
    let first = first.unwrap().expect("the lock is free");
    assert!(first.replication().unwrap().is_complete());
    let first_fence = first.fence().unwrap();
    let released = first.release().await.unwrap();
    assert!(released);
    let master = d.master().expect("a master");
    {
        let d = Arc::clone(&d);
        rt::unblock(move || d.break_replication(master)).await;
    }
    let a = a_cache
        .lock("k", Duration::from_secs(30))
        .fenced()
        .acquire()
        .await;
    let mut a = a.unwrap().expect("the lock is free");
    let replicated = a.replication().unwrap();
    assert_eq!(
        (replicated.acked(), replicated.wanted()),
        (0, 1),
        "{replicated}"
    );
    assert!(!replicated.is_complete());
    assert_eq!(a.fence(), Some(first_fence + 1));
    let new = 1 - Arc::get_mut(&mut d).expect("not shared").kill_master();
    {
        let d = Arc::clone(&d);
        rt::unblock(move || d.wait_master(new, Duration::from_secs(30))).await;
    }
    follows(&a_cache, &d, new, "lost:").await;
    assert_eq!(
        on_node(&d, new, "lost:k-lock"),
        None,
        "the lock key was lost"
    );
    let err = a.extend(Duration::from_secs(30)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Lost, "{err}");
    let b = b_cache
        .lock("k", Duration::from_secs(30))
        .fenced()
        .try_acquire()
        .await;
    let b = b.unwrap().expect("free on the new master");
    assert_eq!(
        b.fence(),
        a.fence(),
        "the lost increment: the fence repeats"
    );
    let released = a.release().await.unwrap();
    assert!(!released, "not ours any more");
    let released = b.release().await.unwrap();
    assert!(released);
}

/// `wait_replicas`: the guard tells how many replicas confirmed the acquisition and
/// each extension, on the Sentinel URL and on a `redis://` URL of the master alike;
/// without the option, nothing (`None`).
#[maybe_async]
pub async fn wait_counts_the_replicas() {
    let d = deployment(Config::steady()).await;
    let master = d.master().expect("a master");
    for url in [
        d.url(&format!("namespace=w:&{CONFIRMED}")),
        d.node_url(master, &format!("namespace=w2:&{CONFIRMED}")),
    ] {
        let cache = open(&url).await;
        let guard = cache.lock("k", Duration::from_secs(30)).acquire().await;
        let mut guard = guard.unwrap().expect("the lock is free");
        let r = guard.replication().expect("counted");
        assert_eq!((r.acked(), r.wanted()), (1, 1), "{url}");
        guard.extend(Duration::from_secs(20)).await.unwrap();
        assert!(guard.replication().unwrap().is_complete());
        let redlock = cache
            .redlock("r", Duration::from_secs(30))
            .acquire()
            .await
            .unwrap();
        assert_eq!(redlock.replication().map(|r| r.acked()), Some(1));
        // A waiter that did not get the lock has no count.
        let waiter = cache
            .redlock("r", Duration::from_secs(30))
            .wait_at_most(Duration::ZERO)
            .acquire()
            .await
            .unwrap();
        assert_eq!(waiter.replication(), None);
        let released = redlock.release().await.unwrap();
        assert!(released);
        let released = guard.release().await.unwrap();
        assert!(released);
    }
    let plain = open(&d.url("namespace=p:")).await;
    let guard = plain
        .redlock("k", Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    assert!(guard.is_acquired());
    assert_eq!(guard.replication(), None, "no WAIT without wait_replicas");
    let released = guard.release().await.unwrap();
    assert!(released);
}

/// The `WAIT` calls node `i` has served.
fn waits(d: &RedisSentinel, i: usize) -> u64 {
    let stats = d
        .node(i, &["INFO", "commandstats"])
        .text()
        .unwrap_or_default();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// A replicated script (a fenced claim, an extension) on a master that lost its
/// scripts (a restart, a failover to a replica that never ran them) sends one `WAIT`,
/// for the script that ran: none after the refused `EVALSHA` (with a replica that
/// does not answer, each `WAIT` costs the whole `wait_timeout`).
#[maybe_async]
pub async fn one_wait_per_replicated_script() {
    let d = deployment(Config::steady()).await;
    let master = d.master().expect("a master");
    let cache = open(&d.url(&format!("namespace=ws:&{CONFIRMED}"))).await;
    d.node(master, &["SCRIPT", "FLUSH"]);
    let before = waits(&d, master);
    let guard = cache
        .lock("k", Duration::from_secs(30))
        .fenced()
        .acquire()
        .await
        .unwrap();
    let mut guard = guard.expect("the lock is free");
    assert_eq!(waits(&d, master) - before, 1, "WAITs of one fenced claim");
    assert!(guard.replication().unwrap().is_complete());
    d.node(master, &["SCRIPT", "FLUSH"]);
    let before = waits(&d, master);
    guard.extend(Duration::from_secs(20)).await.unwrap();
    assert_eq!(waits(&d, master) - before, 1, "WAITs of one extension");
    assert!(guard.replication().unwrap().is_complete());
    let released = guard.release().await.unwrap();
    assert!(released);
}

/// Opening a cache fails with a one-line `Connection` error that names no secret
/// when no master can be found: the sentinels do not know the name, or none answers.
#[maybe_async]
pub async fn no_master_is_a_clear_error() {
    let d = deployment(Config::failover()).await;
    let unknown = d.url("").replace("/aiolock-master?", "/no-such-master?");
    let err = Cache::from_url(&unknown).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    let text = err.to_string();
    assert!(text.contains("3 do not know the name"), "{text}");
    assert!(!text.contains('\n') && !text.contains("secret"), "{text}");
    // No sentinel listens there.
    let ports: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let gone = format!(
        "redis+sentinel://:node-secret@{}/aiolock-master?sentinel_password=sentinel-secret",
        ports.join(",")
    );
    let err = Cache::from_url(&gone).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    let text = err.to_string();
    assert!(text.contains("3 could not be asked"), "{text}");
    assert!(!text.contains('\n') && !text.contains("secret"), "{text}");
}
