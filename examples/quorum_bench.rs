//! The Redlock quorum's benchmark table: starts its own 3 and 5 `redis-server`s (unix
//! sockets), then measures in one run, for each quorum, aiolock (`redis+quorum+unix://`)
//! beside the crate `rslock`'s multi-instance `LockManager` on the same servers:
//! - uncontended acquire+release cycles/s: one caller (aiolock also in the blocking
//!   flavor), and 64 async tasks on one cache / one `LockManager`, each on a key of
//!   its own;
//! - the hand-off: a waiter (another cache / `LockManager` of this process, an async
//!   task) holds the lock after the holder's release: p50 and p99 from the holder's
//!   call to `release` to the waiter's acquire returning. aiolock's waiter is woken by
//!   the first node's release message; rslock has no waiting, its `acquire_no_guard`
//!   loops over `lock` (3 tries, a random delay of up to 200 ms before each retry).
//!
//! ```text
//! cargo run --release --example quorum_bench --features redis -- [SECONDS [TRIALS]]
//! ```
//!
//! SECONDS (default 2) per throughput row, TRIALS (default 100) hand-offs per row;
//! then the c=64 comparison again as the median ratio of 11 alternating pairs of
//! SECONDS/4 slices.
//! Async rows on a tokio runtime of 2 worker threads.

#[path = "../tests/support/redis.rs"]
#[allow(dead_code)]
mod fixture;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fixture::RedisServer;

const LEASE: Duration = Duration::from_secs(10);
const TASKS: usize = 64;

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let trials: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100);
    let per_row = Duration::from_secs_f64(secs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "Redlock quorum: {secs} s per throughput row, {trials} hand-offs per row, \
         {TASKS} tasks at c={TASKS}; async rows on 2 tokio worker threads"
    );
    println!();
    println!(
        "| nodes | client | c=1 cycles/s (blocking) | c=1 cycles/s (async) | c=64 cycles/s | hand-off p50 | hand-off p99 |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for n in [3, 5] {
        let servers: Vec<RedisServer> = (0..n).map(|_| RedisServer::start()).collect();
        let sockets: Vec<String> = servers
            .iter()
            .map(|s| s.socket().display().to_string())
            .collect();
        let url = format!("redis+quorum+unix://{}?namespace=bench:", sockets.join(","));
        let rslock_urls: Vec<String> = sockets
            .iter()
            .map(|s| format!("redis+unix://{s}"))
            .collect();

        let blocking = blocking_cycles(&url, per_row);
        let async1 = rt.block_on(aiolock_cycles(&url, 1, per_row));
        let async64 = rt.block_on(aiolock_cycles(&url, TASKS, per_row));
        let (p50, p99) = rt.block_on(aiolock_handoff(&url, &servers, trials));
        println!(
            "| {n} | aiolock | {blocking:.0} | {async1:.0} | {async64:.0} | {} | {} |",
            micros(p50),
            micros(p99)
        );
        let r1 = rt.block_on(rslock_cycles(&rslock_urls, 1, per_row));
        let r64 = rt.block_on(rslock_cycles(&rslock_urls, TASKS, per_row));
        let (p50, p99) = rt.block_on(rslock_handoff(&rslock_urls, trials));
        println!(
            "| {n} | rslock 0.10 `LockManager` | | {r1:.0} | {r64:.0} | {} | {} |",
            micros(p50),
            micros(p99)
        );
        // The c=64 comparison again in alternating short slices (aiolock, rslock,
        // rslock, aiolock, ...): the median of the per-pair ratios moves less with a
        // shared machine's changing load.
        let slice = per_row / 4;
        let mut ratios: Vec<f64> = (0..PAIRS)
            .map(|i| {
                let a = || rt.block_on(aiolock_cycles(&url, TASKS, slice));
                let b = || rt.block_on(rslock_cycles(&rslock_urls, TASKS, slice));
                let (a, b) = if i % 2 == 0 {
                    let a = a();
                    (a, b())
                } else {
                    let b = b();
                    (a(), b)
                };
                a / b
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "| {n} | aiolock / rslock at c={TASKS}: median of {PAIRS} alternating pairs of {:?} slices | | | {:.2} | | |",
            slice,
            ratios[PAIRS / 2]
        );
    }
}

/// Alternating pairs of the c=64 comparison.
const PAIRS: usize = 11;

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// Uncontended cycles/s, one blocking caller.
fn blocking_cycles(url: &str, per_row: Duration) -> f64 {
    let cache = aiolock::blocking::Cache::from_url(url).unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < per_row {
        let guard = cache.lock("b", LEASE).try_acquire().unwrap().expect("free");
        assert!(guard.release().unwrap());
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Uncontended cycles/s of `tasks` async tasks on one cache, each on a key of its own.
async fn aiolock_cycles(url: &str, tasks: usize, per_row: Duration) -> f64 {
    let cache = aiolock::Cache::from_url(url).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let (cache, done, count) = (cache.clone(), done.clone(), count.clone());
            tokio::spawn(async move {
                let key = format!("a{tasks}-{i}");
                while !done.load(Ordering::Relaxed) {
                    let lock = cache.lock(&key, LEASE);
                    let guard = lock.try_acquire().await.unwrap().expect("free");
                    assert!(guard.release().await.unwrap());
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(per_row).await;
    done.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// The same with rslock's `lock` + `unlock` on one `LockManager`.
async fn rslock_cycles(urls: &[String], tasks: usize, per_row: Duration) -> f64 {
    let manager = rslock::LockManager::new(urls.to_vec());
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let (manager, done, count) = (manager.clone(), done.clone(), count.clone());
            tokio::spawn(async move {
                let key = format!("r{tasks}-{i}");
                while !done.load(Ordering::Relaxed) {
                    let lock = manager.lock(key.as_bytes(), LEASE).await.unwrap();
                    manager.unlock(&lock).await;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(per_row).await;
    done.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Whether every server has a subscriber of `lock_key`'s release channel.
fn subscribed(servers: &[RedisServer], lock_key: &str) -> bool {
    let channel = format!("aiolock:release:{lock_key}");
    servers.iter().all(|s| {
        let reply = s.admin(&["PUBSUB", "NUMSUB", &channel]);
        !reply.trim_end().ends_with(":0")
    })
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    (pct(0.5), pct(0.99))
}

/// aiolock's hand-off: the waiter (an exclusive lock of another cache) is subscribed
/// on every node before the holder releases.
async fn aiolock_handoff(
    url: &str,
    servers: &[RedisServer],
    trials: usize,
) -> (Duration, Duration) {
    let holder = aiolock::Cache::from_url(url).await.unwrap();
    let waiter = aiolock::Cache::from_url(url).await.unwrap();
    let mut samples = Vec::with_capacity(trials);
    for i in 0..trials {
        let key = format!("handoff{i}");
        let lock = holder.lock(&key, LEASE);
        let lock_key = String::from_utf8(lock.lock_key().to_vec()).unwrap();
        let guard = lock.try_acquire().await.unwrap().expect("free");
        let w = waiter.clone();
        let task = tokio::spawn(async move {
            let lock = w.lock(&key, LEASE).wait_at_most(LEASE);
            let guard = lock
                .acquire()
                .await
                .unwrap()
                .expect("held within the lease");
            let at = Instant::now();
            assert!(guard.release().await.unwrap());
            at
        });
        while !subscribed(servers, &lock_key) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let released = Instant::now();
        assert!(guard.release().await.unwrap());
        samples.push(task.await.unwrap() - released);
    }
    percentiles(samples)
}

/// rslock's hand-off: the waiter loops on `acquire_no_guard` (started 20 ms before the
/// release: rslock's waiter has no state to observe).
async fn rslock_handoff(urls: &[String], trials: usize) -> (Duration, Duration) {
    let holder = rslock::LockManager::new(urls.to_vec());
    let waiter = rslock::LockManager::new(urls.to_vec());
    let mut samples = Vec::with_capacity(trials);
    for i in 0..trials {
        let key = format!("rhandoff{i}");
        let lock = holder.lock(key.as_bytes(), LEASE).await.unwrap();
        let w = waiter.clone();
        let task = tokio::spawn(async move {
            let lock = w.acquire_no_guard(key.as_bytes(), LEASE).await.unwrap();
            let at = Instant::now();
            w.unlock(&lock).await;
            at
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let released = Instant::now();
        holder.unlock(&lock).await;
        samples.push(task.await.unwrap() - released);
    }
    percentiles(samples)
}
