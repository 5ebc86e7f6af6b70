//! Redis Cluster-only tests (the generic suite runs on a cluster through
//! `backend_suite!(redis_cluster, …)`).

use std::time::{Duration, Instant};

use aiolock::Outcome;

use crate::support::events;
use crate::support::redis_cluster::RedisCluster;

/// The release channel and fence key of a lock key, named as `src/backend/redis/cluster.rs`
/// documents (its tag rule), for keys without `}`.
fn companions(lock_key: &str) -> (String, String) {
    let tagged = lock_key
        .find('{')
        .and_then(|o| lock_key[o + 1..].find('}').filter(|&c| c > 0))
        .is_some();
    let anchor = if tagged {
        lock_key.to_owned()
    } else {
        format!("{{{lock_key}}}")
    };
    (
        format!("aiolock:release:{anchor}"),
        format!("{anchor}-fence"),
    )
}

/// Keys, with and without hash tags (and one with a `}` outside any tag), whose lock
/// keys sit on every master: each is locked (fenced), waited on across threads and
/// released, while its master is watched (`MONITOR`). The calls aiolock sends show
/// the channel and the fence key declared in `KEYS` beside the lock key, in its slot
/// (by the server's `CLUSTER KEYSLOT`), and the release script's own `SPUBLISH` goes
/// to that declared channel; the waiter hears the release.
#[test]
fn lock_channel_and_fence_share_a_slot_on_every_master() {
    events::install();
    let cluster = RedisCluster::start();
    let cache = aiolock::blocking::Cache::from_url(&cluster.url("namespace=slots:")).unwrap();
    let mut keys: Vec<String> = vec!["{user1}:report".into(), "a}b".into(), "{}x".into()];
    let mut owners = [false; 3];
    for i in 0.. {
        if owners.iter().all(|&o| o) && i >= 6 {
            break;
        }
        let key = format!("k{i}");
        let owner = cluster.owner(cluster.keyslot(&format!("slots:{key}-lock")));
        if !owners[owner] || i < 6 {
            owners[owner] = true;
            keys.push(key);
        }
    }
    for key in &keys {
        let lock_key = format!("slots:{key}-lock");
        let slot = cluster.keyslot(&lock_key);
        if !key.contains('}') || key.starts_with("{user1}") {
            let (channel, fence) = companions(&lock_key);
            assert_eq!(cluster.keyslot(&channel), slot, "{channel}");
            assert_eq!(cluster.keyslot(&fence), slot, "{fence}");
        }
        let mut monitor = cluster.monitor(cluster.owner(slot));
        let lease = Duration::from_secs(10);
        let guard = cache
            .redlock(key.as_str(), lease)
            .fenced()
            .acquire()
            .unwrap();
        assert!(
            guard.fence().is_some(),
            "{key}: a fence from the key's slot"
        );
        std::thread::scope(|s| {
            let waiter = s.spawn(|| cache.redlock(key.as_str(), lease).acquire().unwrap());
            events::wait_for_waiters(&lock_key, 1);
            assert!(guard.release().unwrap(), "{key}: released");
            let outcome = waiter.join().unwrap().outcome();
            assert!(
                matches!(outcome, Outcome::Released),
                "{key}: the waiter heard the release: {outcome:?}"
            );
        });
        let calls = script_calls(&mut monitor, lock_key.as_bytes());
        let second_keys: Vec<String> = calls
            .scripts
            .iter()
            .map(|keys| String::from_utf8_lossy(&keys[1]).into_owned())
            .collect();
        for second in &second_keys {
            assert_eq!(cluster.keyslot(second), slot, "{key}: {second}");
        }
        let channel = String::from_utf8_lossy(&calls.published).into_owned();
        assert!(
            second_keys.contains(&channel),
            "{key}: the release published on {channel}, declared in KEYS: {second_keys:?}"
        );
        assert!(
            second_keys.iter().any(|k| *k != channel),
            "{key}: the fenced claim's fence key: {second_keys:?}"
        );
    }
}

/// The script calls a master ran on `lock_key`.
struct ScriptCalls {
    /// The `KEYS` of each `EVAL`/`EVALSHA` that names `lock_key` with another key.
    scripts: Vec<Vec<Vec<u8>>>,
    /// The channel the release script's `SPUBLISH` published on.
    published: Vec<u8>,
}

/// Reads `monitor` until it saw the release: a script's `SPUBLISH`, and the client's
/// script call whose last argument (the token) it published (in either order).
fn script_calls(
    monitor: &mut crate::support::redis_cluster::Monitor,
    lock_key: &[u8],
) -> ScriptCalls {
    // Each script call's keys and last argument.
    let mut scripts: Vec<(Vec<Vec<u8>>, Vec<u8>)> = Vec::new();
    // The script's SPUBLISH: channel and message.
    let mut published: Option<(Vec<u8>, Vec<u8>)> = None;
    loop {
        if let Some((channel, message)) = &published
            && scripts.iter().any(|(_, last)| last == message)
        {
            return ScriptCalls {
                scripts: scripts.into_iter().map(|(keys, _)| keys).collect(),
                published: channel.clone(),
            };
        }
        let seen = monitor.next();
        let name = seen.args[0].to_ascii_uppercase();
        if seen.by_script && name == b"SPUBLISH" {
            published = Some((seen.args[1].clone(), seen.args[2].clone()));
        } else if !seen.by_script && (name == b"EVAL" || name == b"EVALSHA") {
            let n: usize = std::str::from_utf8(&seen.args[2]).unwrap().parse().unwrap();
            let keys = seen.args[3..3 + n].to_vec();
            if n >= 2 && keys[0] == lock_key {
                let last = seen.args.last().cloned().unwrap_or_default();
                scripts.push((keys, last));
            }
        }
    }
}

/// What the release script relies on, shown on the server: a channel of another slot
/// declared in `KEYS` is refused (`CROSSSLOT`), where one passed in `ARGV` would be
/// accepted and reach nobody. aiolock always declares it in `KEYS`.
#[test]
fn cross_slot_channel_is_refused_not_lost() {
    let cluster = RedisCluster::start();
    let lock_key = "x-lock";
    let owner = cluster.owner(cluster.keyslot(lock_key));
    let other = (0..)
        .map(|i| format!("aiolock:release:{{other{i}}}"))
        .find(|c| cluster.keyslot(c) != cluster.keyslot(lock_key))
        .unwrap();
    let script = "redis.call('SPUBLISH', KEYS[2], 'x') return 1";
    let reply = cluster.nodes[owner].admin(&["EVAL", script, "2", lock_key, &other]);
    assert!(reply.starts_with("-CROSSSLOT"), "{reply}");
    let (ours, _) = companions(lock_key);
    let reply = cluster.nodes[owner].admin(&["EVAL", script, "2", lock_key, &ours]);
    assert_eq!(reply.trim(), ":1", "{reply}");
}

/// The lock key's slot moves to another master (`CLUSTER SETSLOT … IMPORTING /
/// MIGRATING`, `MIGRATE`, `SETSLOT … NODE`) while a waiter waits: the holder's
/// release follows `MOVED` (no error), the waiter (bound: twice the lease) ends by
/// its holder's lease (`PTTL`) with the lock or the release, never timed out, and
/// the lock can be taken again on the new owner, in both flavors.
#[test]
fn slot_migration_during_a_wait() {
    events::install();
    let cluster = RedisCluster::start();
    let url = cluster.url("namespace=mig:");
    let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    let lock_key = "mig:job-lock";
    let slot = cluster.keyslot(lock_key);
    let from = cluster.owner(slot);
    let to = (from + 1) % 3;
    let lease = Duration::from_secs(3);
    let guard = cache.redlock("job", lease).acquire().unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let started = Instant::now();
            // A bound past the holder's lease: the wait must end by the holder's
            // PTTL (a release message may be missed while the slot moves).
            let guard = cache
                .redlock("job", lease)
                .wait_at_most(lease * 2)
                .acquire()
                .unwrap();
            (guard, started.elapsed())
        });
        events::wait_for_waiters(lock_key, 1);
        cluster.open_migration(slot, to);
        cluster.migrate_keys(from, to, &[lock_key]);
        cluster.close_migration(slot, to);
        // MOVED followed: the release reaches the new owner.
        assert!(guard.release().unwrap(), "released on the new owner");
        let (waiter, waited) = waiter.join().unwrap();
        let outcome = waiter.outcome();
        assert!(
            matches!(outcome, Outcome::Released | Outcome::Acquired),
            "{outcome:?}"
        );
        if outcome == Outcome::Acquired {
            assert!(waiter.release().unwrap());
        }
        assert!(
            waited < lease + Duration::from_millis(500),
            "the waiter stayed within its holder's lease: {waited:?}"
        );
    });
    // Claims and releases keep working after the move (MOVED on acquire followed), in
    // both flavors.
    let guard = cache.redlock("job", lease).acquire().unwrap();
    assert_eq!(guard.outcome(), Outcome::Acquired);
    assert!(guard.release().unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let cache = aiolock::Cache::from_url(&url).await.unwrap();
        let guard = cache.redlock("job", lease).acquire().await.unwrap();
        assert_eq!(guard.outcome(), Outcome::Acquired);
        assert!(guard.release().await.unwrap());
    });
}

/// Moves the slot of `lock_key` away from its master while `wait` waits on it, after
/// `wait_for_waiters(lock_key, 1)`; once the new owner has the waiter's subscription
/// (`PUBSUB SHARDNUMSUB`), `release` releases the holder's lock there.
fn move_slot_during_a_wait<T>(
    cluster: &RedisCluster,
    lock_key: &str,
    wait: impl FnOnce() -> T + Send,
    release: impl FnOnce(),
) -> T
where
    T: Send,
{
    let slot = cluster.keyslot(lock_key);
    let from = cluster.owner(slot);
    let to = (from + 1) % 3;
    std::thread::scope(|s| {
        let waiter = s.spawn(wait);
        events::wait_for_waiters(lock_key, 1);
        cluster.open_migration(slot, to);
        cluster.migrate_keys(from, to, &[lock_key]);
        cluster.close_migration(slot, to);
        // The old master dropped the waiter's subscription (`sunsubscribe`): the
        // waiter subscribes again, at the new owner.
        let (channel, _) = companions(lock_key);
        let subscribed = cluster.poll(Duration::from_secs(10), |c| {
            c.nodes[to]
                .admin(&["PUBSUB", "SHARDNUMSUB", &channel])
                .ends_with(":1\r\n")
        });
        assert!(subscribed, "the waiter never subscribed at the new owner");
        release();
        waiter.join().unwrap()
    })
}

/// A blocking waiter whose lock key's slot moves to another master while it waits
/// subscribes again at the new owner and hears the holder's release there:
/// `Released`, long before the holder's lease would end (at which it would take the
/// lock: `Acquired`).
#[test]
fn a_blocking_waiter_follows_its_slot_to_the_new_master() {
    events::install();
    let cluster = RedisCluster::start();
    let url = cluster.url("namespace=follow:");
    let holder = aiolock::blocking::Cache::from_url(&url).unwrap();
    let waiter = aiolock::blocking::Cache::from_url(&url).unwrap();
    let lease = Duration::from_secs(10);
    let guard = holder.redlock("job", lease).acquire().unwrap();
    let (outcome, waited) = move_slot_during_a_wait(
        &cluster,
        "follow:job-lock",
        || {
            let started = Instant::now();
            let outcome = waiter.redlock("job", lease).acquire().unwrap().outcome();
            (outcome, started.elapsed())
        },
        || assert!(guard.release().unwrap(), "released on the new owner"),
    );
    assert_eq!(outcome, Outcome::Released, "after {waited:?}");
}

/// [`a_blocking_waiter_follows_its_slot_to_the_new_master`] in the async flavor.
#[test]
fn an_async_waiter_follows_its_slot_to_the_new_master() {
    events::install();
    let cluster = RedisCluster::start();
    let url = cluster.url("namespace=follow:");
    let holder = aiolock::blocking::Cache::from_url(&url).unwrap();
    let lease = Duration::from_secs(10);
    let guard = holder.redlock("job", lease).acquire().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let waiter = runtime.block_on(aiolock::Cache::from_url(&url)).unwrap();
    let (outcome, waited) = move_slot_during_a_wait(
        &cluster,
        "follow:job-lock",
        || {
            runtime.block_on(async {
                let started = Instant::now();
                let guard = waiter.redlock("job", lease).acquire().await.unwrap();
                (guard.outcome(), started.elapsed())
            })
        },
        || assert!(guard.release().unwrap(), "released on the new owner"),
    );
    assert_eq!(outcome, Outcome::Released, "after {waited:?}");
}

/// The lock key's slot is held half-way through a migration (`MIGRATING` on its
/// master, `IMPORTING` on the next one) with its keys moved: the old master answers
/// `ASK` for each of them, and `TRYAGAIN` for a script that names several keys of
/// the slot when it lacks some (the release names the lock key and its channel, a
/// fenced claim the lock key and its fence key; the new master refuses them too).
/// Claims (lost to the holder, won, fenced), a wait and the release it hears, an
/// extension, a CAS and a delete all work, none surfaced as an error, in both
/// flavors; and again once the migration ended (`MOVED`).
#[test]
fn commands_follow_ask_while_the_slot_migrates() {
    events::install();
    let cluster = RedisCluster::start();
    let url = cluster.url("namespace=ask:");
    let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    let (key, lock_key, value_key) = ("{job}", "ask:{job}-lock", "ask:{job}");
    let lease = Duration::from_secs(10);
    cache.set(key, "v1", None).unwrap();
    let mut holder = cache.redlock(key, lease).fenced().acquire().unwrap();
    let first_fence = holder.fence().unwrap();
    let slot = cluster.keyslot(lock_key);
    let to = (cluster.owner(slot) + 1) % 3;
    let from = cluster.open_migration(slot, to);
    let fence_key = format!("{lock_key}-fence");
    cluster.migrate_keys(from, to, &[lock_key, value_key, &fence_key]);

    // Blocking: a claim lost to the holder and its wait, an extension, the release.
    let waiter_cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            waiter_cache
                .redlock(key, lease)
                .acquire()
                .unwrap()
                .outcome()
        });
        events::wait_for_waiters(lock_key, 1);
        holder.extend(lease).unwrap();
        assert!(holder.release().unwrap(), "released on the new master");
        assert_eq!(waiter.join().unwrap(), Outcome::Released);
    });
    let lock = cache.optimistic_lock(key).unwrap();
    assert_eq!(lock.value(), Some(&b"v1"[..]));
    lock.cas("v2", None).unwrap();
    assert_eq!(cache.get(key).unwrap().as_deref(), Some(&b"v2"[..]));
    let fenced = cache.redlock(key, lease).fenced().acquire().unwrap();
    assert_eq!(fenced.outcome(), Outcome::Acquired);
    let fence = fenced.fence().unwrap();
    assert!(fence > first_fence, "{fence} after {first_fence}");
    assert!(fenced.release().unwrap());
    let plain = cache.redlock(key, lease).acquire().unwrap();
    assert_eq!(plain.outcome(), Outcome::Acquired);
    assert!(plain.release().unwrap());

    // Async, the same.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let cache = aiolock::Cache::from_url(&url).await.unwrap();
        let waiter_cache = aiolock::Cache::from_url(&url).await.unwrap();
        let mut holder = cache.redlock(key, lease).fenced().acquire().await.unwrap();
        assert_eq!(holder.outcome(), Outcome::Acquired);
        assert!(holder.fence().unwrap() > fence);
        let seen = events::waiting(lock_key);
        let waiter = tokio::spawn(async move {
            let guard = waiter_cache.redlock(key, lease).acquire().await.unwrap();
            guard.outcome()
        });
        events::waiters(lock_key, seen + 1).await;
        holder.extend(lease).await.unwrap();
        assert!(holder.release().await.unwrap());
        assert_eq!(waiter.await.unwrap(), Outcome::Released);
        let lock = cache.optimistic_lock(key).await.unwrap();
        assert_eq!(lock.value(), Some(&b"v2"[..]));
        lock.cas("v3", None).await.unwrap();
        assert!(cache.delete(key).await.unwrap());
        let plain = cache.redlock(key, lease).acquire().await.unwrap();
        assert_eq!(plain.outcome(), Outcome::Acquired);
        assert!(plain.release().await.unwrap());
    });
    assert!(cache.get(key).unwrap().is_none(), "deleted");
    // Redirected and refused indeed (not served by a master that had the keys).
    let stats = |i: usize| cluster.nodes[i].admin(&["INFO", "errorstats"]);
    assert!(stats(from).contains("errorstat_ASK"), "{}", stats(from));
    assert!(stats(to).contains("errorstat_TRYAGAIN"), "{}", stats(to));

    // The migration ends: MOVED from the old master, followed.
    cluster.close_migration(slot, to);
    let guard = cache.redlock(key, lease).fenced().acquire().unwrap();
    assert_eq!(guard.outcome(), Outcome::Acquired);
    cache.set(key, "v4", None).unwrap();
    assert!(guard.release().unwrap());
    runtime.block_on(async {
        let cache = aiolock::Cache::from_url(&url).await.unwrap();
        let guard = cache.redlock(key, lease).acquire().await.unwrap();
        assert_eq!(guard.outcome(), Outcome::Acquired);
        assert!(guard.release().await.unwrap());
        assert!(cache.delete(key).await.unwrap());
    });
}

/// Whether `result` is a clear error for a slot without a master: a `Connection`
/// error, on one line.
fn is_ownerless_error<T>(result: &aiolock::Result<T>) -> bool {
    match result {
        Ok(_) => false,
        Err(e) => {
            let text = e.to_string();
            assert_eq!(
                e.kind(),
                aiolock::ErrorKind::Connection,
                "while the slot has no master: {text}"
            );
            assert!(!text.contains('\n'), "one line: {text:?}");
            true
        }
    }
}

/// A master is killed (SIGKILL) while waiters of both flavors wait for a lock it
/// holds, and its replica takes over. No waiter outlives its bound (each ends by it,
/// with an error while the slot has no master, or timed out); while the slot has no
/// master, calls fail with a one-line `Connection` error; nobody takes the lock while
/// its key survives on the promoted replica, its holder still releases it there,
/// and acquisitions work again in both flavors. The outage is followed in the
/// cluster's own view (`CLUSTER NODES` of a live master), never slept through.
#[test]
fn failover_during_a_wait() {
    events::install();
    let mut cluster = RedisCluster::with_replicas();
    let url = cluster.url("namespace=fo:");
    let (key, other, lock_key) = ("{fo}job", "{fo}other", "fo:{fo}job-lock");
    let slot = cluster.keyslot(lock_key);
    let master = cluster.owner(slot);
    let replica = cluster.replica_of(master);
    let viewer = (0..cluster.nodes.len())
        .find(|&i| i != master && i != replica && cluster.is_master(i))
        .unwrap();
    let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    let lease = Duration::from_secs(20);
    let holder = cache.redlock(key, lease).acquire().unwrap();
    assert_eq!(holder.outcome(), Outcome::Acquired);
    cluster.wait_replicated(master, replica);
    let bound = Duration::from_secs(6);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let async_cache = runtime.block_on(aiolock::Cache::from_url(&url)).unwrap();
    let waiter_cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    let slack = Duration::from_millis(1500);
    let (blocking_waiter, async_waiter) = std::thread::scope(|s| {
        let blocking = s.spawn(|| {
            let started = Instant::now();
            let result = waiter_cache
                .redlock(key, lease)
                .wait_at_most(bound)
                .acquire();
            (result.map(|g| g.outcome()), started.elapsed())
        });
        let asynchronous = s.spawn(|| {
            runtime.block_on(async {
                let started = Instant::now();
                let result = async_cache
                    .redlock(key, lease)
                    .wait_at_most(bound)
                    .acquire()
                    .await;
                (result.map(|g| g.outcome()), started.elapsed())
            })
        });
        events::wait_for_waiters(lock_key, 2);
        cluster.kill(master);

        // While the slot has no master: clear errors, in both flavors.
        let mut errors = 0;
        // Neither the promoted replica nor another master says the replica serves it.
        let ownerless = |c: &RedisCluster| {
            [viewer, replica]
                .iter()
                .all(|&i| c.owner_seen_by(i, slot) != Some(replica))
        };
        let failed_over = cluster.poll(Duration::from_secs(30), |c| {
            let before = ownerless(c);
            let claim = cache
                .redlock(other, lease)
                .wait_at_most(Duration::from_millis(100))
                .acquire();
            let asynchronous =
                runtime.block_on(async { async_cache.optimistic_lock(other).await.map(|_| ()) });
            let still = ownerless(c);
            if before && still {
                assert!(
                    is_ownerless_error(&claim),
                    "{:?}",
                    claim.map(|g| g.outcome())
                );
                assert!(is_ownerless_error(&asynchronous));
                errors += 1;
            }
            match claim {
                Ok(guard) => {
                    assert_eq!(guard.outcome(), Outcome::Acquired);
                    assert!(guard.release().unwrap());
                    !still
                }
                Err(_) => false,
            }
        });
        assert!(failed_over, "the replica took over and served the slot");
        assert!(
            errors > 0,
            "some calls were made while the slot had no master"
        );
        (blocking.join().unwrap(), asynchronous.join().unwrap())
    });
    for (flavor, (result, waited)) in [("blocking", blocking_waiter), ("async", async_waiter)] {
        assert!(
            waited < bound + slack,
            "{flavor} waiter past its bound: {waited:?}"
        );
        match result {
            Ok(outcome) => assert_eq!(outcome, Outcome::TimedOut, "{flavor} waiter"),
            Err(e) => assert_eq!(e.kind(), aiolock::ErrorKind::Connection, "{flavor}: {e}"),
        }
    }

    // The lock key survived on the promoted replica: nobody takes it, its holder
    // releases it there.
    let pttl = cluster.nodes[replica].admin(&["PTTL", lock_key]);
    assert!(!pttl.starts_with(":-"), "the lock key survived: {pttl}");
    let contender = waiter_cache
        .redlock(key, lease)
        .wait_at_most(Duration::from_millis(200))
        .acquire()
        .unwrap();
    assert_eq!(contender.outcome(), Outcome::TimedOut, "no second holder");
    assert!(
        holder.release().unwrap(),
        "released on the promoted replica"
    );
    let guard = cache.redlock(key, lease).acquire().unwrap();
    assert_eq!(guard.outcome(), Outcome::Acquired);
    assert!(guard.release().unwrap());
    runtime.block_on(async {
        let guard = async_cache.redlock(key, lease).acquire().await.unwrap();
        assert_eq!(guard.outcome(), Outcome::Acquired);
        assert!(guard.release().await.unwrap());
    });
}
