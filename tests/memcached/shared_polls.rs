//! Shared polling: the waiters of one lock key in one process share one poll loop
//! (`src/backend/memcached/polls.rs`), whatever their number, flavor and cache. The
//! polls are counted by the server (`stats` `cmd_get`) or by a proxy, never timed.

use std::time::{Duration, Instant};

use aiolock::{ErrorKind, Outcome};

use super::{forked, proxied};
use crate::support::events;
use crate::support::memcached::{MemcachedPool, MemcachedServer};

/// The waiters of `lock_key` registered on its shared poll loop in this process.
fn polling(cache: &aiolock::Cache, lock_key: &str) -> usize {
    match cache.backend() {
        aiolock::AnyBackend::Memcached(b) => b.polling_waiters(lock_key),
        _ => unreachable!("a memcached cache"),
    }
}

fn polling_blocking(cache: &aiolock::blocking::Cache, lock_key: &str) -> usize {
    match cache.backend() {
        aiolock::blocking::AnyBackend::Memcached(b) => b.polling_waiters(lock_key),
        _ => unreachable!("a memcached cache"),
    }
}

/// Returns once `ready()` holds (observable state, polled), failing after 30 s.
fn until(what: &str, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(30), "never: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The polls a server ran so far (every `mg`; nothing else reads in these tests).
fn gets(server: &MemcachedServer) -> u64 {
    server.stat("cmd_get")
}

/// 1,000 tasks and 64 threads (two caches, two flavors) wait on one key of `servers`
/// (a single server, or a pool whose server `owner` holds the key). They are
/// registered on one loop; while they wait, the key's server gets the polls of one
/// waiter (a capped backoff: at least 2 ms apart at the 4 ms cap), the others none; a
/// waiter with a short bound returns by it (`TimedOut`) while the others keep waiting;
/// the release wakes every one (`Released`, each within its own 60 s bound), and no
/// registration is left.
async fn one_loop_for_every_waiter(
    url: &str,
    servers: &[MemcachedServer],
    owner_of: &(dyn Fn(&str) -> usize + Sync),
) {
    events::install();
    let lease = Duration::from_secs(60);
    let tasks = aiolock::Cache::from_url(url).await.unwrap();
    let threads = tokio::task::block_in_place(|| aiolock::blocking::Cache::from_url(url)).unwrap();
    let holder = aiolock::Cache::from_url(url).await.unwrap();
    let held = holder.redlock("job", lease).acquire().await.unwrap();
    assert_eq!(held.outcome(), Outcome::Acquired);
    let lock_key = String::from_utf8_lossy(holder.redlock("job", lease).lock_key()).into_owned();
    let owner = tokio::task::block_in_place(|| owner_of(&lock_key));

    let (n_tasks, n_threads) = (1000, 64);
    let task_waiters: Vec<_> = (0..n_tasks)
        .map(|_| {
            let cache = tasks.clone();
            tokio::spawn(async move {
                let g = cache.redlock("job", lease).acquire().await.unwrap();
                g.outcome()
            })
        })
        .collect();
    let thread_waiters: Vec<_> = (0..n_threads)
        .map(|_| {
            let cache = threads.clone();
            std::thread::spawn(move || cache.redlock("job", lease).acquire().unwrap().outcome())
        })
        .collect();
    let all = n_tasks + n_threads;
    events::waiters(&lock_key, all).await;
    tokio::task::block_in_place(|| {
        until("every waiter registered", || {
            polling(&tasks, &lock_key) == all
        });
        assert_eq!(
            polling_blocking(&threads, &lock_key),
            all,
            "one loop, both flavors"
        );
    });

    let before: Vec<u64> = tokio::task::block_in_place(|| servers.iter().map(gets).collect());
    let start = Instant::now();
    // A waiter with a short bound returns by it; the others keep waiting.
    let short = Duration::from_millis(300);
    let timed_out = tasks
        .redlock("job", lease)
        .wait_at_most(short)
        .acquire()
        .await
        .unwrap();
    let waited = start.elapsed();
    assert_eq!(timed_out.outcome(), Outcome::TimedOut);
    assert!(waited >= short, "returned after {waited:?}");
    assert_eq!(polling(&tasks, &lock_key), all, "the others still wait");
    let after: Vec<u64> = tokio::task::block_in_place(|| servers.iter().map(gets).collect());
    let elapsed = start.elapsed();
    let polls: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    // One loop sleeps at least half the 4 ms cap between polls (a handed-on poll
    // may come at once): a slower machine polls less, never more.
    let most = elapsed.as_millis() as u64 / 2 + 5;
    eprintln!(
        "{} waiters + 1: {polls:?} polls in {elapsed:?} (at most {most} for one loop)",
        all
    );
    assert!(
        polls[owner] <= most,
        "{polls:?} polls in {elapsed:?}: more than one loop"
    );
    assert!(polls[owner] > 0, "the loop polls the key's server");
    for (i, &p) in polls.iter().enumerate() {
        if i != owner {
            assert_eq!(p, 0, "server {i} does not own the key");
        }
    }

    assert!(held.release().await.unwrap());
    for t in task_waiters {
        assert_eq!(t.await.unwrap(), Outcome::Released);
    }
    for t in thread_waiters {
        assert_eq!(t.join().unwrap(), Outcome::Released);
    }
    assert_eq!(polling(&tasks, &lock_key), 0, "the loop ended");
    assert_eq!(tasks.waiting("job") + threads.waiting("job"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poll_loop_serves_1000_tasks_and_64_threads() {
    let server = tokio::task::spawn_blocking(MemcachedServer::start)
        .await
        .unwrap();
    let url = format!("{}?namespace=shared:", server.url());
    one_loop_for_every_waiter(&url, std::slice::from_ref(&server), &|_| 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_shared_loop_polls_the_keys_owner() {
    let pool = tokio::task::spawn_blocking(MemcachedPool::unix)
        .await
        .unwrap();
    let url = format!("{}&namespace=shared:", pool.url("ketama"));
    one_loop_for_every_waiter(&url, &pool.servers, &|key| pool.owner(key)).await;
}

/// Async waiters dropped mid-wait (their tasks aborted), the leader among them with
/// its poll in flight (the proxy holds the reply back): the loop passes to the waiter
/// left, which wakes on the release, and no registration is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_waiters_leave_no_registration() {
    events::install();
    let server = tokio::task::spawn_blocking(MemcachedServer::start)
        .await
        .unwrap();
    let (proxy, url) = proxied(&server, "namespace=cancel:");
    let via = aiolock::Cache::from_url(&url).await.unwrap();
    let direct = aiolock::Cache::from_url(&format!("{}?namespace=cancel:", server.url()))
        .await
        .unwrap();
    let lease = Duration::from_secs(60);
    let held = direct.redlock("job", lease).acquire().await.unwrap();
    assert_eq!(held.outcome(), Outcome::Acquired);
    let waiter = |bound| {
        let cache = via.clone();
        tokio::spawn(async move {
            cache
                .redlock("job", lease)
                .wait_at_most(bound)
                .acquire()
                .await
        })
    };
    // The first waiter leads (it is alone); the replies to its polls are held back
    // (on connections that sent a poll: its claim is answered): it is mid-poll.
    let poll = b"mg cancel:job-lock v t c";
    proxy.delay_down(Duration::from_secs(30), Some(b" v t c"));
    let leader = waiter(lease);
    events::waiters("cancel:job-lock", 1).await;
    tokio::task::block_in_place(|| proxy.wait_sent(poll, 1));
    assert_eq!(polling(&via, "cancel:job-lock"), 1);
    let left = waiter(Duration::from_secs(20));
    let other = waiter(lease);
    events::waiters("cancel:job-lock", 3).await;
    tokio::task::block_in_place(|| until("registered", || polling(&via, "cancel:job-lock") == 3));
    proxy.clear();
    for w in [&leader, &other] {
        w.abort();
    }
    for w in [leader, other] {
        assert!(w.await.unwrap_err().is_cancelled());
    }
    assert_eq!(
        polling(&via, "cancel:job-lock"),
        1,
        "the dropped waiters left"
    );
    assert_eq!(via.waiting("job"), 1);
    assert!(held.release().await.unwrap());
    let outcome = left.await.unwrap().unwrap().outcome();
    assert_eq!(outcome, Outcome::Released, "the loop was handed on");
    assert_eq!(polling(&via, "cancel:job-lock"), 0, "nothing left behind");
    assert_eq!(via.waiting("job"), 0);
}

/// A stopped server (SIGSTOP): each waiter, async or blocking, returns `TimedOut` by
/// its own bound (the leader's poll hangs, and ends by the leader's bound; the next
/// leader's by its own). A killed server: every waiter's poll fails, as its own poll
/// did before the loops were shared (a `Connection` error each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_dead_server_ends_every_waiter_by_its_own_bound() {
    events::install();
    let mut server = tokio::task::spawn_blocking(MemcachedServer::start)
        .await
        .unwrap();
    let url = format!("{}?namespace=stall:", server.url());
    let tasks = aiolock::Cache::from_url(&url).await.unwrap();
    let threads = tokio::task::block_in_place(|| aiolock::blocking::Cache::from_url(&url)).unwrap();
    let lease = Duration::from_secs(60);
    let held = tasks.redlock("job", lease).acquire().await.unwrap();
    assert_eq!(held.outcome(), Outcome::Acquired);

    let bounds = [400, 800, 1200].map(Duration::from_millis);
    let start = Instant::now();
    let task_waiters: Vec<_> = [bounds[0], bounds[2]]
        .into_iter()
        .map(|bound| {
            let cache = tasks.clone();
            tokio::spawn(async move {
                let g = cache
                    .redlock("job", lease)
                    .wait_at_most(bound)
                    .acquire()
                    .await;
                (g.map(|g| g.outcome()), start.elapsed(), bound)
            })
        })
        .collect();
    let thread_waiter = {
        let (cache, bound) = (threads.clone(), bounds[1]);
        std::thread::spawn(move || {
            let g = cache.redlock("job", lease).wait_at_most(bound).acquire();
            (g.map(|g| g.outcome()), start.elapsed(), bound)
        })
    };
    events::waiters("stall:job-lock", 3).await;
    tokio::task::block_in_place(|| {
        until("registered", || polling(&tasks, "stall:job-lock") == 3);
        server.pause();
    });
    let mut ended = Vec::new();
    for t in task_waiters {
        ended.push(t.await.unwrap());
    }
    ended.push(tokio::task::block_in_place(|| {
        thread_waiter.join().unwrap()
    }));
    for (outcome, waited, bound) in ended {
        assert_eq!(outcome.unwrap(), Outcome::TimedOut, "bound {bound:?}");
        assert!(
            waited >= bound && waited < bound + Duration::from_secs(1),
            "bound {bound:?}, returned after {waited:?}"
        );
    }
    server.resume();
    assert_eq!(polling(&tasks, "stall:job-lock"), 0);

    // Dead: every waiter's error.
    let task_waiters: Vec<_> = (0..3)
        .map(|_| {
            let cache = tasks.clone();
            tokio::spawn(async move {
                cache
                    .redlock("job", lease)
                    .acquire()
                    .await
                    .map(|g| g.outcome())
            })
        })
        .collect();
    let thread_waiters: Vec<_> = (0..2)
        .map(|_| {
            let cache = threads.clone();
            std::thread::spawn(move || cache.redlock("job", lease).acquire().map(|g| g.outcome()))
        })
        .collect();
    events::waiters("stall:job-lock", 3 + 5).await;
    tokio::task::block_in_place(|| {
        until("registered", || polling(&tasks, "stall:job-lock") == 5);
        server.stop();
    });
    for t in task_waiters {
        let err = t.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    }
    for t in thread_waiters {
        let err = t.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    }
    assert_eq!(polling(&tasks, "stall:job-lock"), 0);
    drop(held);
}

/// Exclusive waiters of two caches (8 async tasks, 8 blocking threads) take the lock
/// one after the other: each release costs this process exactly one claim (`ms`,
/// counted in `cmd_set`): the first claim after the loop saw the release claims, the
/// others take its result (the winner holds) and wait again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_waiters_of_two_caches_claim_once_per_release() {
    events::install();
    let server = tokio::task::spawn_blocking(MemcachedServer::start)
        .await
        .unwrap();
    let url = format!("{}?namespace=excl:", server.url());
    let tasks = aiolock::Cache::from_url(&url).await.unwrap();
    let threads = tokio::task::block_in_place(|| aiolock::blocking::Cache::from_url(&url)).unwrap();
    let lease = Duration::from_secs(60);
    let bound = Duration::from_secs(120);
    let first = tasks.lock("job", lease).try_acquire().await.unwrap();
    let first = first.expect("uncontended");

    enum Held {
        Task(aiolock::ExclusiveGuard),
        Thread(std::sync::mpsc::Sender<()>),
    }
    let (tx, rx) = std::sync::mpsc::channel::<Held>();
    let task_waiters: Vec<_> = (0..8)
        .map(|_| {
            let (cache, tx) = (tasks.clone(), tx.clone());
            tokio::spawn(async move {
                let g = cache.lock("job", lease).wait_at_most(bound).acquire().await;
                let g = g.unwrap().expect("held within the bound");
                tx.send(Held::Task(g)).unwrap();
            })
        })
        .collect();
    let thread_waiters: Vec<_> = (0..8)
        .map(|_| {
            let (cache, tx) = (threads.clone(), tx.clone());
            std::thread::spawn(move || {
                let g = cache.lock("job", lease).wait_at_most(bound).acquire();
                let g = g.unwrap().expect("held within the bound");
                let (release, released) = std::sync::mpsc::channel();
                tx.send(Held::Thread(release)).unwrap();
                released.recv().unwrap();
                assert!(g.release().unwrap());
            })
        })
        .collect();
    drop(tx);
    let waiters = 16;
    // (The "waiting" event comes just before a waiter registers on the loop.)
    events::waiters("excl:job-lock", waiters).await;
    let registered = |n| {
        tokio::task::block_in_place(|| {
            until("registered", || polling(&tasks, "excl:job-lock") == n);
        })
    };
    registered(waiters);
    let claims = || tokio::task::block_in_place(|| server.stat("cmd_set"));
    let mut waited = waiters;
    let mut previous = claims();
    assert!(first.release().await.unwrap());
    for left in (0..waiters).rev() {
        let winner = tokio::task::block_in_place(|| rx.recv().unwrap());
        // Every other waiter lost (a claim of its own, or the round's result) and
        // waits again: then its claims are all counted.
        waited += left;
        events::waiters("excl:job-lock", waited).await;
        registered(left);
        let now = claims();
        assert_eq!(
            now - previous,
            1,
            "one claim for the release, {left} still waiting"
        );
        previous = now;
        match winner {
            Held::Task(g) => assert!(g.release().await.unwrap()),
            Held::Thread(release) => release.send(()).unwrap(),
        }
    }
    for t in task_waiters {
        t.await.unwrap();
    }
    for t in thread_waiters {
        tokio::task::block_in_place(|| t.join().unwrap());
    }
}

/// A child forked while a parent's thread leads the key's loop must not wait for that
/// thread (it does not exist in the child): the child's waiter registers on a loop of
/// the child's own (it is the only waiter there) and wakes on the release.
#[test]
fn a_forked_child_polls_for_itself() {
    let server = MemcachedServer::start();
    let url = format!("{}?namespace=fork:", server.url());
    let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    let lease = Duration::from_secs(60);
    let held = cache.redlock("job", lease).acquire().unwrap();
    assert_eq!(held.outcome(), Outcome::Acquired);
    let parent_waiter = {
        let cache = cache.clone();
        std::thread::spawn(move || cache.redlock("job", lease).acquire().unwrap().outcome())
    };
    // The parent's waiter leads: it has polled.
    until("the parent's waiter polls", || gets(&server) > 0);
    assert_eq!(polling_blocking(&cache, "fork:job-lock"), 1);
    let (mut to_parent, mut from_child) = std::os::unix::net::UnixStream::pair().unwrap();
    let (child, _) = forked(
        || {
            use std::io::Write;
            // A cache of its own (the parent's pool may have been locked mid-poll).
            let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
            let waiter = {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    cache
                        .redlock("job", lease)
                        .wait_at_most(Duration::from_secs(10))
                        .acquire()
                        .unwrap()
                        .outcome()
                })
            };
            let start = Instant::now();
            let mut count = polling_blocking(&cache, "fork:job-lock");
            while count == 0 && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(1));
                count = polling_blocking(&cache, "fork:job-lock");
            }
            to_parent.write_all(b"R").unwrap();
            match (count, waiter.join().unwrap()) {
                (1, Outcome::Released) => 0,
                (1, _) => 1,
                _ => 2,
            }
        },
        || {
            use std::io::Read;
            let mut ready = [0u8; 1];
            from_child.read_exact(&mut ready).unwrap();
            assert!(held.release().unwrap());
            0
        },
    );
    assert_eq!(
        child, 0,
        "1: the child's waiter was not woken; 2: it joined the parent's loop"
    );
    assert_eq!(parent_waiter.join().unwrap(), Outcome::Released);
}
