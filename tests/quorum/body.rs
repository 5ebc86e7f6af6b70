// The Redlock quorum's test bodies, written once and compiled into both flavors (see
// `tests/quorum/mod.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::maybe_async;
use super::rt::{concurrently, sleep, waiters};
use super::{Cache, RedLock};
use crate::quorum::{Nodes, flap, url};
use crate::support::proxy::Proxy;
use aiolock::{ErrorKind, Outcome};

const LEASE: Duration = Duration::from_secs(30);

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Every subset of `n` nodes pre-locked by someone else: acquired exactly when a
/// majority is free, then our token on every free node and the others' untouched; a
/// lost claim leaves nothing of ours on any node, a release neither.
#[maybe_async]
async fn every_prelocked_subset(n: usize) {
    let nodes = Nodes::start(n);
    let cache = Cache::from_url(&nodes.url("namespace=matrix:"))
        .await
        .unwrap();
    let majority = n / 2 + 1;
    for mask in 0..1usize << n {
        let pre = |i: usize| mask & (1 << i) != 0;
        let lock = cache.lock(format!("k{mask}"), LEASE);
        let key = text(lock.lock_key());
        for i in (0..n).filter(|&i| pre(i)) {
            nodes.set(i, &key, "other");
        }
        let free = (0..n).filter(|&i| !pre(i)).count();
        let theirs = |i: usize| pre(i).then(|| "other".to_owned());
        match lock.try_acquire().await.unwrap() {
            Some(guard) => {
                assert!(
                    free >= majority,
                    "{mask:0n$b}: acquired with {free} free of {n}"
                );
                let token = text(guard.token().as_bytes());
                for i in 0..n {
                    let expected = theirs(i).or_else(|| Some(token.clone()));
                    assert_eq!(nodes.get(i, &key), expected, "{mask:0n$b}: node {i}");
                }
                let done = guard.release().await.unwrap();
                assert!(done, "{mask:0n$b}");
            }
            None => assert!(
                free < majority,
                "{mask:0n$b}: not acquired with {free} free"
            ),
        }
        for i in 0..n {
            assert_eq!(
                nodes.get(i, &key),
                theirs(i),
                "{mask:0n$b}: node {i} afterwards"
            );
        }
    }
}

#[maybe_async]
pub async fn every_prelocked_subset_of_three() {
    every_prelocked_subset(3).await;
}

#[maybe_async]
pub async fn every_prelocked_subset_of_five() {
    every_prelocked_subset(5).await;
}

/// One node stopped (SIGSTOP): still acquired (and released) with the others, each
/// attempt bounded by the node timeout (the response timeout is 30 s); a second one
/// stopped: the claim fails, and nothing of ours is left on the one that answers.
#[maybe_async]
pub async fn a_stopped_node_costs_its_timeout() {
    let nodes = Nodes::start(3);
    let query = "namespace=stop:&node_timeout=0.2&response_timeout=30";
    let cache = Cache::from_url(&nodes.url(query)).await.unwrap();
    let bound = Duration::from_secs(10);
    nodes.servers[0].pause();
    let lock = cache.lock("a", LEASE);
    let key = text(lock.lock_key());
    let started = Instant::now();
    let guard = lock
        .try_acquire()
        .await
        .unwrap()
        .expect("a majority answers");
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
    let token = text(guard.token().as_bytes());
    assert_eq!(nodes.get(1, &key).as_deref(), Some(&*token));
    assert_eq!(nodes.get(2, &key).as_deref(), Some(&*token));
    let started = Instant::now();
    let done = guard.release().await.unwrap();
    assert!(done, "released on a majority");
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
    assert_eq!((nodes.get(1, &key), nodes.get(2, &key)), (None, None));

    nodes.servers[1].pause();
    let lock = cache.lock("b", LEASE);
    let key = text(lock.lock_key());
    let started = Instant::now();
    let e = lock.try_acquire().await.expect_err("never with a minority");
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.to_string().contains("2 of 3"), "{e}");
    assert_eq!(nodes.get(2, &key), None, "released where it answered");
    nodes.servers[0].resume();
    nodes.servers[1].resume();
    // Both answer again: acquired on all three.
    let guard = cache.lock("c", LEASE).try_acquire().await.unwrap().unwrap();
    let key = text(guard.lock_key());
    assert!(nodes.values(&key).iter().all(Option::is_some));
    let done = guard.release().await.unwrap();
    assert!(done);
}

/// A node killed: still acquired with the others; a second one killed: a connection
/// error, nothing of ours left on the last; restarted, the nodes count again.
#[maybe_async]
pub async fn a_killed_node_costs_a_vote() {
    let mut nodes = Nodes::start(3);
    let cache = Cache::from_url(&nodes.url("namespace=kill:"))
        .await
        .unwrap();
    nodes.servers[0].kill();
    let guard = cache.lock("a", LEASE).try_acquire().await.unwrap();
    let guard = guard.expect("a majority answers");
    let done = guard.release().await.unwrap();
    assert!(done);
    nodes.servers[1].kill();
    let lock = cache.lock("b", LEASE);
    let key = text(lock.lock_key());
    let e = lock.try_acquire().await.expect_err("never with a minority");
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");
    assert_eq!(nodes.get(2, &key), None, "released where it answered");
    nodes.servers[0].restart();
    nodes.servers[1].restart();
    // The restarted nodes are reconnected by the next calls.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(guard)) = cache.lock("c", LEASE).try_acquire().await {
            let key = text(guard.lock_key());
            if nodes.values(&key).iter().all(Option::is_some) {
                let done = guard.release().await.unwrap();
                assert!(done);
                break;
            }
            let done = guard.release().await.unwrap();
            assert!(done);
        }
        assert!(
            Instant::now() < until,
            "the restarted nodes never counted again"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// A claim whose validity (`lease − elapsed − drift`) runs out while one node's answer
/// is delayed (the proxy holds that connection's replies past the lease): not acquired
/// although two nodes of three stored the token at once, and the owner-checked release
/// script then ran on all three (counted by each server; by then the copies are within
/// the drift of their own expiry, so whether the script or the expiry removed them is
/// a matter of milliseconds), and nothing is left.
#[maybe_async]
pub async fn no_validity_left_is_not_acquired() {
    let nodes = Nodes::start(3);
    let proxy = Proxy::unix(nodes.servers[0].socket());
    let mut sockets = nodes.sockets();
    sockets[0] = proxy.path().to_owned();
    let lease = Duration::from_secs(1);
    let query = "namespace=validity:&node_timeout=30&response_timeout=30";
    let cache = Cache::from_url(&url(&sockets, query)).await.unwrap();
    let lock = cache.lock("v", lease);
    let key = text(lock.lock_key());
    // The claim's connection only (`SET … NX`: a fresh connection's `CLIENT SETINFO`
    // is not held back).
    proxy.delay_down(lease + Duration::from_millis(500), Some(b"\r\nNX\r\n"));
    let started = Instant::now();
    let got = lock.try_acquire().await.unwrap();
    assert!(got.is_none(), "too late");
    let drift = lease / 100 + Duration::from_millis(2);
    assert!(
        started.elapsed() >= lease - drift,
        "{:?}",
        started.elapsed()
    );
    for (i, server) in nodes.servers.iter().enumerate() {
        let stats = server.admin(&["INFO", "commandstats"]);
        let ran = |cmd: &str| stats.contains(&format!("cmdstat_{cmd}:calls="));
        assert!(ran("set"), "node {i} got the claim: {stats}");
        assert!(
            ran("evalsha") || ran("eval"),
            "node {i} got the release: {stats}"
        );
    }
    assert_eq!(nodes.values(&key), [None, None, None]);
    proxy.clear();
}

/// A holder released on one node only (as a release reaches the nodes one by one): its
/// waiter, subscribed on all three, wakes on that first release message (a RedLock's
/// `Released`), though the other two nodes still hold the key; the holder's release
/// then removes it everywhere.
#[maybe_async]
pub async fn a_waiter_wakes_on_the_first_release() {
    let nodes = Arc::new(Nodes::start(3));
    let url = nodes.url("namespace=wake:");
    let cache = Cache::from_url(&url).await.unwrap();
    let lock = RedLock::new(&cache, "w", LEASE);
    let key = text(lock.lock_key());
    let holder = lock.acquire().await.unwrap();
    assert_eq!(holder.outcome(), Outcome::Acquired);
    let token = text(holder.token().unwrap().as_bytes());
    let results = concurrently(2, |i| {
        let (nodes, url, key, token) =
            (Arc::clone(&nodes), url.clone(), key.clone(), token.clone());
        async move {
            if i == 0 {
                waiters(&key, 1).await;
                // Subscribed on every node (its re-checks may come before or after).
                let until = Instant::now() + Duration::from_secs(30);
                while !nodes.all_subscribed(&key) {
                    assert!(Instant::now() < until, "the waiter never subscribed");
                    sleep(Duration::from_millis(2)).await;
                }
                nodes.release_on(2, &key, &token);
                return None;
            }
            let other = Cache::from_url(&url).await.unwrap();
            let waiter = RedLock::new(&other, "w", LEASE)
                .wait_at_most(Duration::from_secs(60))
                .acquire()
                .await
                .unwrap();
            Some(waiter.outcome())
        }
    })
    .await;
    assert_eq!(results[1], Some(Outcome::Released));
    let held = Some(token);
    assert_eq!(nodes.values(&key), [held.clone(), held, None]);
    let done = holder.release().await.unwrap();
    assert!(done);
    assert_eq!(nodes.values(&key), [None, None, None]);
}

/// The exclusion oracle: four callers (each with a cache of its own) take turns on one
/// exclusive lock while node 0 is stopped and thawed every 40 ms: never two inside.
/// An acquire or release that fails (a loaded machine can make a second node miss
/// its timeout while node 0 is stopped) is no overlap: counted, and the caller goes
/// on (the key of a failed release expires with its lease).
#[maybe_async]
pub async fn exclusion_while_a_node_flaps() {
    let nodes = Arc::new(Nodes::start(3));
    let url = nodes.url("namespace=oracle:");
    let stop = Arc::new(AtomicBool::new(false));
    let flapper = {
        let (nodes, stop) = (Arc::clone(&nodes), Arc::clone(&stop));
        std::thread::spawn(move || flap(&nodes, 0, Duration::from_millis(40), &stop))
    };
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let entries = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    concurrently(4, |_| {
        let (url, inside, overlaps) = (url.clone(), Arc::clone(&inside), Arc::clone(&overlaps));
        let (entries, failures) = (Arc::clone(&entries), Arc::clone(&failures));
        async move {
            let cache = Cache::from_url(&url).await.unwrap();
            for _ in 0..40 {
                let lock = cache
                    .lock("mutex", Duration::from_secs(2))
                    .wait_at_most(Duration::from_secs(60));
                let guard = match lock.acquire().await {
                    Ok(guard) => guard.expect("held within the bound"),
                    Err(_) => {
                        failures.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                };
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                entries.fetch_add(1, Ordering::SeqCst);
                sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                let released = guard.release().await;
                if !matches!(released, Ok(true)) {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let flaps = flapper.join().unwrap();
    assert!(flaps > 0, "the node never flapped");
    let (entries, failures) = (
        entries.load(Ordering::SeqCst),
        failures.load(Ordering::SeqCst),
    );
    assert!(entries >= 100, "{entries} entries, {failures} failures");
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "two callers inside at once"
    );
}

/// `extend` re-creates the key on a node that lost it (deleted, as by a restart
/// without persistence) and renews it on the others; once a majority lost it, the
/// lock is lost (a copy re-created on one node does not revive it) and nothing of ours
/// is left anywhere.
#[maybe_async]
pub async fn extend_recreates_a_lost_copy() {
    let nodes = Nodes::start(3);
    let cache = Cache::from_url(&nodes.url("namespace=extend:"))
        .await
        .unwrap();
    let lease = Duration::from_secs(10);
    let mut guard = cache.lock("e", lease).try_acquire().await.unwrap().unwrap();
    let key = text(guard.lock_key());
    let token = Some(text(guard.token().as_bytes()));
    nodes.del(0, &key);
    guard.extend(Duration::from_secs(60)).await.unwrap();
    assert_eq!(nodes.values(&key), [token.clone(), token.clone(), token]);
    for i in 0..3 {
        assert!(nodes.pttl(i, &key) > 30_000, "node {i} renewed");
    }
    nodes.del(0, &key);
    nodes.del(1, &key);
    let e = guard.extend(Duration::from_secs(60)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Lost, "{e}");
    assert_eq!(nodes.values(&key), [None, None, None]);
}

/// The cache API and fencing tokens are refused, with one-line errors that say why.
#[maybe_async]
pub async fn locks_only_and_no_fences() {
    let nodes = Nodes::start(3);
    let cache = Cache::from_url(&nodes.url("namespace=refused:"))
        .await
        .unwrap();
    let e = cache.get("x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    let e = cache.set("x", b"v", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    let e = cache
        .lock("f", LEASE)
        .fenced()
        .acquire()
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("fencing"), "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");
    for bad in [
        "redis+quorum+unix:///a.sock,/b.sock",
        "redis+quorum+unix:///a.sock,/b.sock,/c.sock,/d.sock",
        "redis+quorum+unix:///a.sock,/b.sock,/a.sock",
        "redis+quorum+unix:///a.sock,/b.sock,/c.sock?bogus=1",
        "redis+quorum://:secret@a:1,b:2",
    ] {
        let e = Cache::from_url(bad).await.err().unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}: {e}");
        assert!(!e.to_string().contains('\n'), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
