//! Waiting at scale: N callers wait on one held lock key, the holder releases once, and
//! the harness measures, per backend (memory, Redis) and flavor (async tasks, blocking
//! threads):
//! - the time from the release (the holder's `release` call starting) to the *last*
//!   waiter's `acquire` returning, p50 and p99 over the rounds;
//! - Redis: the commands the server ran per round (`INFO commandstats` deltas), the
//!   connections open while the N wait (`INFO clients`, less the harness's own) and
//!   the subscribers of the lock's channel (`PUBSUB NUMSUB`);
//! - the heap bytes per waiter: live bytes (a counting global allocator in this
//!   binary) once all N wait, less those before they were started, over N. For
//!   threads this leaves out their stacks.
//!
//! It starts its own `redis-server` on a unix socket in a temp dir, unless
//! `AIOLOCK_BENCH_REDIS_URL` names one.
//!
//! ```text
//! cargo run --release --example waiters_bench --features redis -- [--rounds R] [--only memory|redis]
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aiolock::Outcome;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
#[path = "../tests/support/redis.rs"]
#[allow(dead_code)]
mod fixture;

#[global_allocator]
static ALLOC: counting_alloc::Counting = counting_alloc::Counting;

/// Long enough that no lease ends in a round: every waiter must be woken by the release.
const LEASE: Duration = Duration::from_secs(60);
const NAMESPACE: &str = "bench:";
const TASKS: [usize; 3] = [1, 100, 10_000];
const THREADS: [usize; 3] = [1, 100, 1_000];

/// How a round's waiters run.
#[derive(Clone, Copy, PartialEq)]
enum Flavor {
    Tasks,
    Threads,
}

/// What one round measured.
struct Round {
    /// Release call started → last waiter returned.
    last: Duration,
    /// Heap bytes live per waiter while all waited.
    bytes_per_waiter: f64,
    /// Commands the server ran in the round, by name (Redis).
    commands: BTreeMap<String, u64>,
    /// Connections open while they waited (Redis, less the harness's).
    connections: u64,
    /// Subscribers of the lock's channel while they waited (Redis).
    subscribers: u64,
}

/// The Redis server's side of a round.
struct Stats {
    con: redis::Connection,
}

impl Stats {
    fn connect(url: &str) -> Stats {
        // The aiolock options (namespace, ...) are not the redis crate's.
        let plain = url.split('?').next().unwrap_or(url);
        let client = redis::Client::open(plain).expect("a Redis URL");
        Stats {
            con: client.get_connection().expect("an admin connection"),
        }
    }

    fn info(&mut self, section: &str) -> String {
        redis::cmd("INFO")
            .arg(section)
            .query(&mut self.con)
            .expect("INFO")
    }

    /// Calls per command so far, without the harness's own (INFO, PUBSUB).
    fn commands(&mut self) -> BTreeMap<String, u64> {
        self.info("commandstats")
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((name.to_uppercase(), calls))
            })
            .filter(|(name, _)| !name.starts_with("INFO") && !name.starts_with("PUBSUB"))
            .collect()
    }

    fn connections(&mut self) -> u64 {
        let clients: u64 = self
            .info("clients")
            .lines()
            .find_map(|l| l.strip_prefix("connected_clients:")?.trim().parse().ok())
            .expect("connected_clients");
        clients - 1
    }

    fn subscribers(&mut self, channel: &str) -> u64 {
        let reply: Vec<redis::Value> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query(&mut self.con)
            .expect("PUBSUB NUMSUB");
        match reply.get(1) {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        }
    }
}

/// The Redis channel a lock key's releases are published on.
fn channel(lock_key: &[u8]) -> String {
    format!("aiolock:release:{}", String::from_utf8_lossy(lock_key))
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Waits until `ready` holds (polled), at most 60 s.
fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not ready after 60 s: {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Where the waiters' return times go (ns since `base`), and how many were released.
struct Marks {
    /// The key the waiters wait on (here, so that a task holds only its index).
    key: String,
    base: Instant,
    at: Vec<AtomicU64>,
    released: AtomicUsize,
}

impl Marks {
    fn new(n: usize, key: &str) -> Arc<Marks> {
        Arc::new(Marks {
            key: key.to_owned(),
            base: Instant::now(),
            at: (0..n).map(|_| AtomicU64::new(0)).collect(),
            released: AtomicUsize::new(0),
        })
    }

    fn mark(&self, i: usize, outcome: Outcome) {
        self.at[i].store(self.base.elapsed().as_nanos() as u64, Ordering::SeqCst);
        if outcome == Outcome::Released {
            self.released.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// From `released` (the release call starting) to the last return.
    fn last_after(&self, released: Instant) -> Duration {
        let last = self.at.iter().map(|a| a.load(Ordering::SeqCst)).max();
        let last = self.base + Duration::from_nanos(last.unwrap_or(0));
        last.saturating_duration_since(released)
    }
}

/// The backend of a section.
enum Target<'a> {
    Memory,
    Redis { url: &'a str },
}

impl Target<'_> {
    fn name(&self) -> &'static str {
        match self {
            Target::Memory => "memory",
            Target::Redis { .. } => "redis",
        }
    }

    fn url(&self) -> String {
        match self {
            Target::Memory => format!("memory://?namespace={NAMESPACE}"),
            Target::Redis { url } => (*url).to_owned(),
        }
    }
}

/// One round of `n` async waiters on `key`.
fn async_round(
    rt: &tokio::runtime::Runtime,
    cache: &aiolock::Cache,
    stats: &mut Option<Stats>,
    n: usize,
    key: &str,
) -> Round {
    let before = stats.as_mut().map(Stats::commands);
    let holder = rt
        .block_on(cache.redlock(key, LEASE).acquire())
        .expect("acquire");
    assert!(holder.is_acquired());
    let marks = Marks::new(n, key);
    let mut tasks = Vec::with_capacity(n);
    let heap = counting_alloc::live();
    for i in 0..n {
        let (cache, marks) = (cache.clone(), Arc::clone(&marks));
        tasks.push(rt.spawn(async move {
            let lock = cache.redlock(&marks.key, LEASE);
            let guard = lock.acquire().await.expect("acquire");
            marks.mark(i, guard.outcome());
        }));
    }
    let channel = channel(cache.redlock(key, LEASE).lock_key());
    let (heap, connections, subscribers) = ready(n, &channel, stats, heap, || cache.waiting(key));
    let released = Instant::now();
    assert!(rt.block_on(holder.release()).expect("release"));
    rt.block_on(async {
        for t in tasks {
            t.await.expect("a waiter");
        }
    });
    finish(
        marks,
        released,
        n,
        heap,
        before,
        stats,
        connections,
        subscribers,
    )
}

/// One round of `n` blocking waiters (threads) on `key`.
fn blocking_round(
    cache: &aiolock::blocking::Cache,
    stats: &mut Option<Stats>,
    n: usize,
    key: &str,
) -> Round {
    let before = stats.as_mut().map(Stats::commands);
    let holder = cache.redlock(key, LEASE).acquire().expect("acquire");
    assert!(holder.is_acquired());
    let marks = Marks::new(n, key);
    let mut threads = Vec::with_capacity(n);
    // Threads that returned wait here until all have: a thread's exit (its stack
    // unmapped) would otherwise compete for the CPU with the waiters still waking.
    let all_returned = Arc::new(std::sync::Barrier::new(n + 1));
    let heap = counting_alloc::live();
    for i in 0..n {
        let (cache, marks, all) = (cache.clone(), Arc::clone(&marks), all_returned.clone());
        threads.push(std::thread::spawn(move || {
            let guard = cache.redlock(&marks.key, LEASE).acquire().expect("acquire");
            marks.mark(i, guard.outcome());
            drop(guard);
            all.wait();
        }));
    }
    let channel = channel(cache.redlock(key, LEASE).lock_key());
    let (heap, connections, subscribers) = ready(n, &channel, stats, heap, || cache.waiting(key));
    let released = Instant::now();
    assert!(holder.release().expect("release"));
    all_returned.wait();
    for t in threads {
        t.join().expect("a waiter");
    }
    finish(
        marks,
        released,
        n,
        heap,
        before,
        stats,
        connections,
        subscribers,
    )
}

/// Waits until the `n` waiters of `key` wait (counted by the cache and, on Redis,
/// past their re-check of the key: one `EVALSHA` each), then a little longer; returns
/// the heap growth since `heap` and the server's connections and channel subscribers.
fn ready(
    n: usize,
    channel: &str,
    stats: &mut Option<Stats>,
    heap: isize,
    waiting: impl Fn() -> usize,
) -> (isize, u64, u64) {
    until("every waiter counted", || waiting() >= n);
    let mut connections = 0;
    let mut subscribers = 0;
    if let Some(stats) = stats.as_mut() {
        let probes = |c: &BTreeMap<String, u64>| {
            c.get("EVALSHA").copied().unwrap_or(0) + c.get("EVAL").copied().unwrap_or(0)
        };
        let start = probes(&stats.commands());
        // The holder's claim was a SET; each waiter's probe is one script call. Some
        // may have run before `start` was read: wait for the count to stop moving.
        let mut last = start;
        let mut still = 0;
        until("every waiter's re-check", || {
            let now = probes(&stats.commands());
            if now == last {
                still += 1;
            } else {
                still = 0;
                last = now;
            }
            still >= 20
        });
        connections = stats.connections();
        subscribers = stats.subscribers(channel);
    } else {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(waiting(), n, "still waiting before the release");
    (counting_alloc::live() - heap, connections, subscribers)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    marks: Arc<Marks>,
    released: Instant,
    n: usize,
    heap: isize,
    before: Option<BTreeMap<String, u64>>,
    stats: &mut Option<Stats>,
    connections: u64,
    subscribers: u64,
) -> Round {
    let last = marks.last_after(released);
    assert_eq!(
        marks.released.load(Ordering::SeqCst),
        n,
        "every waiter woke by the release"
    );
    let commands = match (before, stats.as_mut()) {
        (Some(before), Some(stats)) => delta(&stats.commands(), &before),
        _ => BTreeMap::new(),
    };
    Round {
        last,
        bytes_per_waiter: heap as f64 / n as f64,
        commands,
        connections,
        subscribers,
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn rounds_for(n: usize, scale: f64) -> usize {
    let base = match n {
        1 => 50,
        2..=100 => 30,
        101..=1000 => 15,
        _ => 10,
    };
    ((base as f64 * scale).round() as usize).max(1)
}

/// Prints one row of the table.
fn row(target: &Target, flavor: Flavor, n: usize, rounds: &[Round], extra: &str) {
    let mut lat: Vec<Duration> = rounds.iter().map(|r| r.last).collect();
    lat.sort();
    let mut bytes: Vec<f64> = rounds.iter().map(|r| r.bytes_per_waiter).collect();
    bytes.sort_by(f64::total_cmp);
    let bytes = bytes[bytes.len() / 2];
    let kind = match flavor {
        Flavor::Tasks => "async tasks",
        Flavor::Threads => "blocking threads",
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let server = if matches!(target, Target::Redis { .. }) {
        let mut total: BTreeMap<String, u64> = BTreeMap::new();
        for r in rounds {
            for (k, v) in &r.commands {
                *total.entry(k.clone()).or_default() += v;
            }
        }
        let per_round = total
            .iter()
            .map(|(k, v)| format!("{k} {:.0}", *v as f64 / rounds.len() as f64))
            .collect::<Vec<_>>()
            .join(", ");
        let connections = rounds.iter().map(|r| r.connections).max().unwrap_or(0);
        let subscribers = rounds.iter().map(|r| r.subscribers).max().unwrap_or(0);
        format!("{per_round} | {connections}{extra} | {subscribers}")
    } else {
        "– | – | –".to_owned()
    };
    println!(
        "| {} | {kind} | {n} | {} | {:.2} | {:.2} | {bytes:.0} | {server} |",
        target.name(),
        rounds.len(),
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
    );
}

fn section(target: &Target, scale: f64, rt: &tokio::runtime::Runtime) {
    let url = target.url();
    let mut stats = match target {
        Target::Memory => None,
        Target::Redis { url } => Some(Stats::connect(url)),
    };
    {
        let cache = rt
            .block_on(aiolock::Cache::from_url(&url))
            .expect("a cache");
        // Warm up (script cache, connections, the subscriber).
        async_round(rt, &cache, &mut stats, 4, "warm");
        for n in TASKS {
            let rounds: Vec<Round> = (0..rounds_for(n, scale))
                .map(|i| async_round(rt, &cache, &mut stats, n, &format!("t{n}-{i}")))
                .collect();
            row(target, Flavor::Tasks, n, &rounds, "");
        }
    }
    {
        let cache = aiolock::blocking::Cache::from_url(&url).expect("a cache");
        blocking_round(&cache, &mut stats, 4, "warm");
        for n in THREADS {
            let rounds: Vec<Round> = (0..rounds_for(n, scale))
                .map(|i| blocking_round(&cache, &mut stats, n, &format!("b{n}-{i}")))
                .collect();
            row(target, Flavor::Threads, n, &rounds, " (pool 8)");
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut scale = 1.0;
    let mut only: Option<String> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => {
                scale = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--rounds takes a factor (1 = the default rounds)")
            }
            "--only" => only = args.next(),
            other => panic!("unknown argument {other:?} (--rounds F, --only memory|redis)"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let memory_cache = aiolock::Cache::memory();
    let future = memory_cache.redlock("k", LEASE).acquire();
    println!(
        "size of an acquire future: {} bytes",
        std::mem::size_of_val(&future)
    );
    drop(future);
    println!(
        "release → last waiter's return over rounds (ms); heap bytes per waiter while all wait; async: tokio multi-thread runtime, 2 workers"
    );
    println!();
    println!(
        "| backend | waiters | N | rounds | p50 ms | p99 ms | heap B/waiter | commands per round | connections | channel subscribers |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---|---:|---:|");
    if only.as_deref() != Some("redis") {
        section(&Target::Memory, scale, &rt);
    }
    if only.as_deref() != Some("memory") {
        let server;
        let url = match std::env::var("AIOLOCK_BENCH_REDIS_URL") {
            Ok(url) => url,
            Err(_) => {
                server = fixture::RedisServer::start();
                server.unix_url(&format!("namespace={NAMESPACE}"))
            }
        };
        section(&Target::Redis { url: &url }, scale, &rt);
    }
}
