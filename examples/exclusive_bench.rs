//! The exclusive lock's benchmark table: starts its own redis-server (unix socket) and
//! memcached (loopback TCP), then measures in one run, on each backend:
//! - the cross-process hand-off: a holder here releases, a waiter in another process
//!   (`cache.lock(..).acquire()`, blocking flavor) holds the lock: p50/p99 from the
//!   holder's call to `release` to the waiter's `acquire` returning;
//! - contended throughput: 64 async tasks of one cache take turns on one key
//!   (acquire, release), entries/s, server commands per entry and the fewest
//!   entries of one worker; on Redis beside the crate `rslock`'s `acquire` loop
//!   (default retries) on the same server; the memory store too (no server);
//! - the uncontended cycle (acquire + release, blocking flavor, one caller): plain
//!   and fenced.
//!
//! ```text
//! cargo run --release --features redis,memcached --example exclusive_bench [-- SECONDS TRIALS]
//! ```
//!
//! SECONDS (default 2) per throughput row, TRIALS (default 100) hand-offs per backend.

#[path = "../tests/support/memcached.rs"]
mod memcached;
#[path = "../tests/support/redis.rs"]
#[allow(dead_code)]
mod redis;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LEASE: Duration = Duration::from_secs(30);
const WORKERS: usize = 64;

fn unix_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("--waiter") {
        return waiter(&args.next().expect("a URL"));
    }
    let secs: f64 = first.and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let trials: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100);
    let per_row = Duration::from_secs_f64(secs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let redis = redis::RedisServer::start();
    let redis_url = redis.unix_url("namespace=bench:");
    let mc = memcached::MemcachedServer::tcp();
    let mc_url = format!("{}?namespace=bench:&pool_size={WORKERS}", mc.url());
    let redis_commands =
        || info_field(&redis.admin(&["INFO", "stats"]), "total_commands_processed");
    let mc_commands = || memcached_commands(&mc);

    println!(
        "exclusive lock: {WORKERS} workers, {secs} s per throughput row, {trials} hand-offs per backend; \
         async rows on 2 tokio worker threads"
    );
    println!();
    println!(
        "| backend | hand-off p50 | hand-off p99 | 64 workers: entries/s | commands/entry | fewest entries of a worker | uncontended cycles/s | fenced cycles/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, url, commands) in [
        ("Redis", &redis_url, &redis_commands as &dyn Fn() -> f64),
        ("memcached", &mc_url, &mc_commands),
    ] {
        let (p50, p99) = handoff(url, trials);
        let before = commands();
        let (entries, rate, fewest) = rt.block_on(contended(url, per_row));
        let per_entry = (commands() - before) / entries as f64;
        let plain = uncontended(url, per_row, false);
        let fenced = uncontended(url, per_row, true);
        println!(
            "| {name} | {:.0} µs | {:.0} µs | {rate:.0} | {per_entry:.3} | {fewest} | {plain:.0} | {fenced:.0} |",
            p50 / 1e3,
            p99 / 1e3
        );
    }
    let memory = "memory://?namespace=bench:";
    let (_, rate, fewest) = rt.block_on(contended(memory, per_row));
    let plain = uncontended(memory, per_row, false);
    let fenced = uncontended(memory, per_row, true);
    println!("| memory | | | {rate:.0} | | {fewest} | {plain:.0} | {fenced:.0} |");
    let before = redis_commands();
    let (entries, rate, fewest) = rt.block_on(rslock_contended(&redis.unix_url(""), per_row));
    let per_entry = (redis_commands() - before) / entries.max(1) as f64;
    println!("| Redis, rslock 0.10 `acquire` | | | {rate:.0} | {per_entry:.1} | {fewest} | | |");
}

/// A field of a Redis `INFO` section.
fn info_field(info: &str, field: &str) -> f64 {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in INFO"))
}

/// Requests memcached served so far: the sum of its per-command counters (`stats`).
fn memcached_commands(server: &memcached::MemcachedServer) -> f64 {
    let memcached::Listen::Tcp(port) = server.listen() else {
        unreachable!("a TCP server")
    };
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", *port)).unwrap();
    conn.write_all(b"stats\r\n").unwrap();
    let mut total = 0.0;
    for line in BufReader::new(conn).lines() {
        let line = line.unwrap();
        if line == "END" {
            break;
        }
        let mut parts = line.split_whitespace().skip(1);
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let counted = matches!(name, "cmd_get" | "cmd_set" | "cmd_touch")
            || name.starts_with("delete_")
            || name.starts_with("incr_")
            || name.starts_with("decr_");
        if counted {
            total += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    total
}

/// The waiter process: for each `wait <key>` line, says `ready`, takes the exclusive
/// lock, says `held <unix nanos>` and releases.
fn waiter(url: &str) {
    let cache = aiolock::blocking::Cache::from_url(url).unwrap();
    let mut out = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let Some(key) = line.strip_prefix("wait ") else {
            break;
        };
        writeln!(out, "ready").unwrap();
        let lock = cache.lock(key, LEASE).wait_at_most(LEASE);
        let guard = lock.acquire().unwrap().expect("held within the lease");
        let at = unix_nanos();
        guard.release().unwrap();
        writeln!(out, "held {at}").unwrap();
    }
}

/// p50 and p99 (ns) of the hand-off to an exclusive waiter in another process.
fn handoff(url: &str, trials: usize) -> (f64, f64) {
    let cache = aiolock::blocking::Cache::from_url(url).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--waiter", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_child = child.stdin.take().unwrap();
    let mut from_child = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut samples = Vec::with_capacity(trials);
    for i in 0..trials {
        let key = format!("handoff{i}");
        let guard = cache.lock(&key, LEASE).try_acquire().unwrap().unwrap();
        writeln!(to_child, "wait {key}").unwrap();
        assert_eq!(from_child.next().unwrap().unwrap(), "ready");
        // Time for the waiter to lose its claim and wait (a benchmark, not a test).
        std::thread::sleep(Duration::from_millis(20));
        let released = unix_nanos();
        assert!(guard.release().unwrap());
        let line = from_child.next().unwrap().unwrap();
        let held: i128 = line.strip_prefix("held ").unwrap().parse().unwrap();
        samples.push((held - released) as f64);
    }
    drop(to_child);
    let _ = child.wait();
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    (pct(0.5), pct(0.99))
}

/// 64 tasks take turns on one exclusive key: (entries, entries/s, the fewest entries
/// of one task).
async fn contended(url: &str, per_row: Duration) -> (u64, f64, u64) {
    let cache = aiolock::Cache::from_url(url).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (cache, done) = (cache.clone(), done.clone());
            tokio::spawn(async move {
                let mut entries = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let lock = cache.lock("contended", LEASE).wait_at_most(LEASE * 4);
                    let guard = lock.acquire().await.unwrap().expect("held");
                    entries += 1;
                    assert!(guard.release().await.unwrap());
                }
                entries
            })
        })
        .collect();
    tokio::time::sleep(per_row).await;
    done.store(true, Ordering::Relaxed);
    finish(tasks, start).await
}

/// Joins the workers: (entries, entries/s since `start`, the fewest of one worker).
async fn finish(tasks: Vec<tokio::task::JoinHandle<u64>>, start: Instant) -> (u64, f64, u64) {
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap());
    }
    let n = counts.iter().sum::<u64>();
    let fewest = counts.iter().copied().min().unwrap_or(0);
    (n, n as f64 / start.elapsed().as_secs_f64(), fewest)
}

/// The same with rslock's `acquire` (a retry loop: up to 3 tries per `lock`, each
/// after a random delay of up to 200 ms).
async fn rslock_contended(url: &str, per_row: Duration) -> (u64, f64, u64) {
    let manager = Arc::new(rslock::LockManager::new(vec![url.to_owned()]));
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (manager, done) = (manager.clone(), done.clone());
            tokio::spawn(async move {
                let mut entries = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let lock = manager.acquire_no_guard(&b"contended"[..], LEASE).await;
                    let lock = lock.unwrap();
                    entries += 1;
                    manager.unlock(&lock).await;
                }
                entries
            })
        })
        .collect();
    tokio::time::sleep(per_row).await;
    done.store(true, Ordering::Relaxed);
    finish(tasks, start).await
}

/// Uncontended exclusive cycles/s, one blocking caller.
fn uncontended(url: &str, per_row: Duration, fenced: bool) -> f64 {
    let cache = aiolock::blocking::Cache::from_url(url).unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < per_row {
        let lock = cache.lock("uncontended", LEASE);
        let lock = if fenced { lock.fenced() } else { lock };
        let guard = lock.try_acquire().unwrap().expect("uncontended");
        assert!(guard.release().unwrap());
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}
