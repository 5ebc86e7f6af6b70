//! memcached pools: keys spread over every server, the fence key beside its lock key,
//! and a server that is down failing its keys closed (never moving a lock). The
//! generic suite runs on pools too (`memcached_pool_*` in `tests/main.rs`); the
//! routing itself is compared with the real clients' golden vectors in
//! `src/backend/memcached/routing.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aiolock::{ErrorKind, Outcome};

use crate::support::memcached::MemcachedPool;

const NS: &str = "pool:";

/// The stored lock key of `key` in the tests' namespace.
fn lock_key(key: &str) -> String {
    format!("{NS}{key}-lock")
}

/// Every server owns some lock keys, each lock key is on exactly one server, each
/// server's `curr_items` counts the locks it owns; a fenced claim keeps its fence
/// counter on the lock key's server even where the fence key, routed by itself,
/// would go to another.
fn spreads_over_every_server(pool: &MemcachedPool, distribution: &str) {
    let url = format!("{}&namespace={NS}", pool.url(distribution));
    let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    let keys: Vec<String> = (0..60).map(|i| format!("job-{i}")).collect();

    // Where each fence key would go on its own (a plain set of that key).
    let mut own_route = BTreeMap::new();
    for key in &keys {
        let fence_key = format!("{key}-lock-fence");
        cache.set(&fence_key, b"probe", None).unwrap();
        own_route.insert(key.clone(), pool.owner(&format!("{NS}{fence_key}")));
        assert!(cache.delete(&fence_key).unwrap());
    }

    let guards: Vec<_> = keys
        .iter()
        .map(|key| {
            let g = cache
                .redlock(key, Duration::from_secs(30))
                .fenced()
                .acquire()
                .unwrap();
            assert_eq!(g.outcome(), Outcome::Acquired);
            assert!(g.fence().is_some());
            g
        })
        .collect();
    let mut owned = vec![0u64; pool.servers.len()];
    let mut moved_fences = 0;
    for key in &keys {
        let owner = pool.owner(&lock_key(key));
        owned[owner] += 1;
        let fence_owner = pool.owner(&format!("{}-fence", lock_key(key)));
        assert_eq!(fence_owner, owner, "{key}: the fence is beside its lock");
        if own_route[key] != owner {
            moved_fences += 1;
        }
    }
    assert!(owned.iter().all(|&n| n > 0), "{distribution}: {owned:?}");
    for (server, &n) in pool.servers.iter().zip(&owned) {
        // Each server holds its locks and their fence counters.
        assert_eq!(
            server.stat("curr_items"),
            2 * n,
            "{distribution}: {owned:?}"
        );
    }
    assert!(
        moved_fences > 0,
        "{distribution}: some fence keys route elsewhere on their own, so routing them by \
         the lock key is what keeps them together"
    );
    for g in guards {
        assert!(g.release().unwrap());
    }
}

#[test]
fn pool_spreads_lock_keys_over_every_server_ketama() {
    spreads_over_every_server(&MemcachedPool::unix(), "ketama");
}

#[test]
fn pool_spreads_lock_keys_over_every_server_rendezvous() {
    spreads_over_every_server(&MemcachedPool::tcp(), "rendezvous");
}

/// Holds `per_server` locks on every server of `pool`: the guards by owner.
fn hold_on_every_server(
    cache: &aiolock::blocking::Cache,
    pool: &MemcachedPool,
    per_server: usize,
) -> Vec<Vec<(String, aiolock::blocking::LockGuard)>> {
    let mut by_owner: Vec<Vec<_>> = (0..pool.servers.len()).map(|_| Vec::new()).collect();
    for i in 0.. {
        if by_owner.iter().all(|g| g.len() >= per_server) {
            break;
        }
        assert!(i < 1000, "keys never reached every server");
        let key = format!("k{i}");
        let g = cache
            .redlock(&key, Duration::from_secs(30))
            .acquire()
            .unwrap();
        assert_eq!(g.outcome(), Outcome::Acquired);
        let owner = pool.owner(&lock_key(&key));
        if by_owner[owner].len() < per_server {
            by_owner[owner].push((key, g));
        } else {
            assert!(g.release().unwrap());
        }
    }
    by_owner
}

/// A killed server fails its keys closed: acquiring, releasing and reading its keys
/// are `Connection` errors, and none of its locks appear on another server; the
/// others' locks keep working. Restarted (empty), its keys work again, and a guard
/// from before the restart never deletes the new holder's lock.
#[test]
fn a_killed_server_fails_its_keys_closed() {
    let mut pool = MemcachedPool::unix();
    let url = format!("{}&namespace={NS}", pool.url("ketama"));
    let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    let other = aiolock::blocking::Cache::from_url(&url).unwrap();
    let mut held = hold_on_every_server(&cache, &pool, 3);
    let down = 1;
    let mut on_down = std::mem::take(&mut held[down]);
    let (stale_key, stale) = on_down.pop().unwrap();
    let (free_key, free) = on_down.pop().unwrap();
    assert!(free.release().unwrap());
    let (failing_key, failing) = on_down.pop().unwrap();

    pool.servers[down].stop();

    let err = other
        .redlock(&free_key, Duration::from_secs(30))
        .acquire()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    let err = other
        .redlock(&failing_key, Duration::from_secs(30))
        .acquire()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    let err = failing.release().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    let err = cache.get(format!("{stale_key}-lock")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    for (i, server) in pool.servers.iter().enumerate() {
        if i != down {
            for key in [&free_key, &failing_key, &stale_key] {
                assert!(!server.holds(&lock_key(key)), "{key} moved to server {i}");
            }
        }
    }
    // The other servers' locks are unaffected.
    for (i, guards) in held.iter_mut().enumerate() {
        if i == down {
            continue;
        }
        for (key, g) in guards.drain(..) {
            assert!(g.release().unwrap(), "{key} on server {i}");
            let again = other
                .redlock(&key, Duration::from_secs(30))
                .acquire()
                .unwrap();
            assert_eq!(again.outcome(), Outcome::Acquired, "{key} on server {i}");
            assert!(again.release().unwrap());
        }
    }

    pool.servers[down].restart();
    let newer = other
        .redlock(&stale_key, Duration::from_secs(30))
        .acquire()
        .unwrap();
    assert_eq!(newer.outcome(), Outcome::Acquired);
    assert!(
        !stale.release().unwrap(),
        "the stale guard owns nothing now"
    );
    assert_eq!(
        other.get(format!("{stale_key}-lock")).unwrap().as_deref(),
        Some(newer.token().unwrap().as_bytes()),
        "the newer holder's lock survives"
    );
    assert!(pool.servers[down].holds(&lock_key(&stale_key)));
    assert!(newer.release().unwrap());
}

/// A stopped server (SIGSTOP) mid-hold and mid-wait: its waiter ends `TimedOut` by its
/// own bound (never `Acquired` elsewhere), a claim of its keys fails with `Timeout`,
/// the other servers' keys keep working meanwhile; resumed, the holder releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_fails_its_keys_closed_mid_wait() {
    crate::support::events::install();
    let pool = MemcachedPool::tcp();
    let url = format!("{}&namespace={NS}", pool.url("rendezvous"));
    let by_owner = tokio::task::block_in_place(|| {
        let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
        let held = hold_on_every_server(&cache, &pool, 2);
        held.into_iter()
            .map(|guards| {
                guards
                    .into_iter()
                    .map(|(key, g)| {
                        assert!(g.release().unwrap());
                        key
                    })
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    });
    let down = 2;
    let cache = aiolock::Cache::from_url(&url).await.unwrap();
    let quick = aiolock::Cache::from_url(&format!("{url}&response_timeout=0.3"))
        .await
        .unwrap();
    let key = by_owner[down][0].clone();
    let holder = cache
        .redlock(&key, Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    assert_eq!(holder.outcome(), Outcome::Acquired);

    let bound = Duration::from_millis(1500);
    let waiter = {
        let cache = cache.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let g = cache
                .redlock(&key, Duration::from_secs(30))
                .wait_at_most(bound)
                .acquire()
                .await;
            (g.map(|g| g.outcome()), start.elapsed())
        })
    };
    crate::support::events::waiters(&lock_key(&key), 1).await;
    pool.servers[down].pause();

    let err = quick
        .redlock(&by_owner[down][1], Duration::from_secs(30))
        .acquire()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    for (i, keys) in by_owner.iter().enumerate() {
        if i == down {
            continue;
        }
        for key in keys {
            let g = quick
                .redlock(key, Duration::from_secs(30))
                .acquire()
                .await
                .unwrap();
            assert_eq!(g.outcome(), Outcome::Acquired, "{key} on server {i}");
            assert!(g.release().await.unwrap());
        }
    }
    let (outcome, waited) = waiter.await.unwrap();
    assert_eq!(outcome.unwrap(), Outcome::TimedOut);
    assert!(
        waited >= bound && waited < bound + Duration::from_secs(1),
        "waited {waited:?}"
    );
    for (i, server) in pool.servers.iter().enumerate() {
        if i != down {
            assert!(!server.holds(&lock_key(&key)), "moved to server {i}");
        }
    }

    pool.servers[down].resume();
    assert!(holder.release().await.unwrap());
}

/// Connecting pings every server: a pool with one unreachable server is refused at
/// once, naming that server.
#[test]
fn connect_names_an_unreachable_server() {
    let mut pool = MemcachedPool::unix();
    pool.servers[1].stop();
    let url = pool.url("ketama");
    let err = aiolock::blocking::Cache::from_url(&url).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    let down = match pool.servers[1].listen() {
        crate::support::memcached::Listen::Unix(path) => path.display().to_string(),
        crate::support::memcached::Listen::Tcp(_) => unreachable!(),
    };
    assert!(err.to_string().contains(&down), "{err}");
}

/// Set in the child processes of [`cross_process_stampede_computes_once`]: the pool's
/// URL.
const STAMPEDE_URL: &str = "AIOLOCK_TEST_STAMPEDE_URL";
const STAMPEDE_PROCESSES: usize = 4;
const STAMPEDE_THREADS: usize = 16;

/// A protocol line of a stampede child (other lines on its stdout are the test
/// harness's).
fn stampede_line(line: &str) {
    println!("STAMPEDE {line}");
}

/// The child side of [`cross_process_stampede_computes_once`]; does nothing in a
/// normal run. Says `ready`, waits for `go`, then `STAMPEDE_THREADS` threads get or
/// compute `report` under a RedLock; the one that holds the lock says `computing`
/// and waits for `finish`; the local waiters are reported as they come (`waiting
/// N`), and at the end `done <acquired> <released> <timed out> <hits> <computed>
/// <wrong values>`.
#[test]
fn stampede_child() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    let Ok(url) = std::env::var(STAMPEDE_URL) else {
        return;
    };
    crate::support::events::install();
    let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    let lock_key = lock_key("report");
    let (finish_tx, finish_rx) = std::sync::mpsc::channel::<()>();
    let finish_rx = std::sync::Mutex::new(finish_rx);
    stampede_line("ready");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    assert_eq!(go.trim(), "go");
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            if line.unwrap() == "finish" {
                let _ = finish_tx.send(());
            }
        }
    });
    let counts: [AtomicUsize; 6] = Default::default();
    let [acquired, released, timed_out, hits, computed, wrong] = &counts;
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut reported = 0;
            while !done.load(SeqCst) {
                let n = crate::support::events::waiting(&lock_key);
                if n > reported {
                    reported = n;
                    stampede_line(&format!("waiting {n}"));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let callers: Vec<_> = (0..STAMPEDE_THREADS)
            .map(|_| {
                s.spawn(|| {
                    let value = match cache.get("report").unwrap() {
                        Some(v) => {
                            hits.fetch_add(1, SeqCst);
                            v
                        }
                        None => {
                            let guard = cache
                                .redlock("report", Duration::from_secs(10))
                                .acquire()
                                .unwrap();
                            match guard.outcome() {
                                Outcome::Acquired => acquired,
                                Outcome::Released => released,
                                Outcome::TimedOut => timed_out,
                            }
                            .fetch_add(1, SeqCst);
                            match cache.get("report").unwrap() {
                                Some(v) => {
                                    guard.release().unwrap();
                                    v
                                }
                                None => {
                                    computed.fetch_add(1, SeqCst);
                                    stampede_line("computing");
                                    finish_rx.lock().unwrap().recv().unwrap();
                                    cache.set("report", b"computed once", None).unwrap();
                                    assert!(guard.release().unwrap());
                                    b"computed once".to_vec()
                                }
                            }
                        }
                    };
                    if value != b"computed once" {
                        wrong.fetch_add(1, SeqCst);
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
        done.store(true, SeqCst);
    });
    let counts: Vec<String> = counts.iter().map(|c| c.load(SeqCst).to_string()).collect();
    stampede_line(&format!("done {}", counts.join(" ")));
}

/// The cache stampede across processes over a pool: 4 processes × 16 threads miss
/// `report` at once and ask for it through one RedLock (its key on one of the three
/// servers, the value maybe on another). The holder computes only once the 63 others
/// (in its process and the 3 others) wait; exactly one computation, and every other
/// caller returns `Released` and reads the value.
#[test]
fn cross_process_stampede_computes_once() {
    use std::io::{BufRead, BufReader, Write};
    let pool = MemcachedPool::unix();
    let url = format!("{}&namespace={NS}", pool.url("ketama"));
    let mut children: Vec<_> = (0..STAMPEDE_PROCESSES)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "memcached_specific::pool::stampede_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(STAMPEDE_URL, &url)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel::<(usize, String)>();
    for (i, child) in children.iter_mut().enumerate() {
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(std::result::Result::ok) {
                // (The harness's "test … " may come first on the line.)
                if let Some((_, line)) = line.split_once("STAMPEDE ") {
                    let _ = tx.send((i, line.to_owned()));
                }
            }
        });
    }
    drop(tx);
    let mut stdins: Vec<_> = children
        .iter_mut()
        .map(|c| c.stdin.take().unwrap())
        .collect();
    let patience = Duration::from_secs(60);
    let next = || {
        rx.recv_timeout(patience)
            .expect("a child said nothing for 60 s (or all exited)")
    };
    let mut ready = 0;
    while ready < STAMPEDE_PROCESSES {
        let (i, line) = next();
        assert_eq!(line, "ready", "child {i}");
        ready += 1;
    }
    for stdin in &mut stdins {
        stdin.write_all(b"go\n").unwrap();
    }
    let callers = STAMPEDE_PROCESSES * STAMPEDE_THREADS;
    let mut waiting = [0; STAMPEDE_PROCESSES];
    let mut computing = None;
    let mut finished = false;
    let mut done = Vec::new();
    while done.len() < STAMPEDE_PROCESSES {
        let (i, line) = next();
        let mut words = line.split(' ');
        match words.next() {
            Some("waiting") => waiting[i] = words.next().unwrap().parse().unwrap(),
            Some("computing") => {
                assert_eq!(computing, None, "a second computation, in child {i}");
                computing = Some(i);
            }
            Some("done") => done.push(
                words
                    .map(|w| w.parse::<usize>().unwrap())
                    .collect::<Vec<_>>(),
            ),
            _ => panic!("child {i}: {line}"),
        }
        if let Some(holder) = computing
            && !finished
            && waiting.iter().sum::<usize>() == callers - 1
        {
            // Every other caller, in every process, waits on the lock: now finish.
            stdins[holder].write_all(b"finish\n").unwrap();
            finished = true;
        }
    }
    drop(stdins);
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let total = |at: usize| done.iter().map(|d| d[at]).sum::<usize>();
    let (acquired, released, timed_out, hits, computed, wrong) =
        (total(0), total(1), total(2), total(3), total(4), total(5));
    assert_eq!(computed, 1, "computed exactly once");
    assert_eq!(
        (acquired, released, timed_out, hits, wrong),
        (1, callers - 1, 0, 0, 0),
        "(acquired, released, timed out, cache hits, wrong values)"
    );
}
